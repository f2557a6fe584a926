//! Prints a CRD as YAML; `make crds` redirects it into manifests/.
//!
//! `crdgen` (or `crdgen databaseclusters`) prints the DatabaseCluster CRD,
//! `crdgen databasebackups` the DatabaseBackup CRD, `crdgen apps` the App CRD.

fn main() -> std::process::ExitCode {
    let which = std::env::args().nth(1).unwrap_or_else(|| "databaseclusters".to_owned());
    let rendered = match which.as_str() {
        "databaseclusters" => stead_crds::crd::crd_yaml(),
        "databasebackups" => stead_crds::crd::backup_crd_yaml(),
        "apps" => stead_crds::crd::app_crd_yaml(),
        other => {
            eprintln!("crdgen: unknown CRD {other:?}; use databaseclusters, databasebackups or apps");
            return std::process::ExitCode::from(2);
        }
    };
    match rendered {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("crdgen: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
