//! Prints the DatabaseCluster CRD as YAML; `make crds` redirects it into manifests/.

fn main() -> std::process::ExitCode {
    match stead_crds::crd::crd_yaml() {
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
