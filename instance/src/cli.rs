//! Flags, each with the environment variable the controller sets in the pod.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::error::Error;
use crate::settings::{self, Settings, Timeouts};
use crate::shutdown::{RestartPolicy, ShutdownTimeouts};

/// Default PGDATA: a directory inside the volume, so the volume's own root
/// (with its lost+found) is never the data directory.
pub const DEFAULT_PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// Default location of the mounted credentials Secret.
pub const DEFAULT_SECRET_DIR: &str = "/etc/stead/credentials";
/// Preferred run directory (socket, pgpass).
pub const DEFAULT_RUN_DIR: &str = "/run/stead";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "stead-instance",
    version,
    about = "The stead instance manager: runs PostgreSQL in a database pod and answers the controller over HTTPS"
)]
pub struct Cli {
    /// `install <path>`: copy this binary to `path` and exit (the pod's init container).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Cluster name; default: the pod name without its ordinal.
    #[arg(long, env = "STEAD_CLUSTER")]
    pub cluster: Option<String>,
    /// Namespace of the pod (used in the certificate's names).
    #[arg(long, env = "STEAD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Pod name, e.g. orders-1; default: $HOSTNAME.
    #[arg(long, env = "STEAD_POD_NAME")]
    pub pod_name: Option<String>,
    /// The pod's IP address, added to a generated certificate's names.
    #[arg(long, env = "STEAD_POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// The data directory.
    #[arg(long, env = "STEAD_PGDATA", default_value = DEFAULT_PGDATA)]
    pub pgdata: PathBuf,
    /// The port postgres listens on (and replicas' default upstream port).
    #[arg(long, env = "STEAD_PG_PORT", default_value_t = 5432)]
    pub pg_port: u16,
    /// Directory with postgres, initdb, pg_basebackup, pg_rewind, pg_controldata;
    /// default: `pg_config --bindir`, else the newest `/usr/lib/postgresql/<major>/bin`, else PATH.
    #[arg(long, env = "STEAD_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// The mounted credentials Secret (files username, password, replication-password,
    /// controller-token; tls.crt and tls.key, when present, are the API's certificate).
    #[arg(long, env = "STEAD_SECRET_DIR", default_value = DEFAULT_SECRET_DIR)]
    pub secret_dir: PathBuf,
    /// Host replicas stream from unless the controller named another (the cluster's -rw Service).
    #[arg(long, env = "STEAD_PRIMARY_HOST")]
    pub primary_host: Option<String>,
    /// User postgresql.conf parameters, a JSON object of names to string values.
    #[arg(long, env = "STEAD_PARAMETERS", default_value = "{}")]
    pub parameters: String,
    /// Address of the HTTPS API; default: the pod's address (STEAD_POD_IP), else every address, on port 8000.
    #[arg(long, env = "STEAD_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Private run directory (unix socket, pgpass); default /run/stead when
    /// writable, else stead-run beside PGDATA.
    #[arg(long, env = "STEAD_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Seconds a smart shutdown (SIGTERM) may take before a fast one.
    #[arg(long, env = "STEAD_SMART_SHUTDOWN_SECONDS", default_value_t = 5)]
    pub smart_shutdown_seconds: u64,
    /// Seconds a fast shutdown (SIGINT) may take before an immediate one.
    #[arg(long, env = "STEAD_FAST_SHUTDOWN_SECONDS", default_value_t = 10)]
    pub fast_shutdown_seconds: u64,
    /// Seconds an immediate shutdown (SIGQUIT) may take before SIGKILL.
    #[arg(long, env = "STEAD_IMMEDIATE_SHUTDOWN_SECONDS", default_value_t = 5)]
    pub immediate_shutdown_seconds: u64,
    /// Consecutive crashes after which postgres is not restarted (liveness fails); 0: never give up.
    #[arg(long, env = "STEAD_RESTART_LIMIT", default_value_t = 10)]
    pub restart_limit: u32,
    /// Seconds a query to the local postgres may take.
    #[arg(long, env = "STEAD_QUERY_TIMEOUT_SECONDS", default_value_t = 5)]
    pub query_timeout_seconds: u64,
    /// Seconds initdb may take.
    #[arg(long, env = "STEAD_INITDB_TIMEOUT_SECONDS", default_value_t = 300)]
    pub initdb_timeout_seconds: u64,
    /// Seconds pg_basebackup may take.
    #[arg(long, env = "STEAD_BASEBACKUP_TIMEOUT_SECONDS", default_value_t = 6 * 3600)]
    pub basebackup_timeout_seconds: u64,
    /// Seconds pg_rewind may take.
    #[arg(long, env = "STEAD_REWIND_TIMEOUT_SECONDS", default_value_t = 3600)]
    pub rewind_timeout_seconds: u64,
    /// Seconds an operation waits for postgres to accept connections after starting it.
    #[arg(long, env = "STEAD_READY_TIMEOUT_SECONDS", default_value_t = 120)]
    pub ready_timeout_seconds: u64,
    /// Seconds a backup may stay started without POST /backup/stop: then a hot
    /// one is aborted and a cold one's postgres started again.
    #[arg(long, env = "STEAD_BACKUP_TIMEOUT_SECONDS", default_value_t = 3600)]
    pub backup_timeout_seconds: u64,
}

/// What to do instead of running an instance.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Copy this executable to PATH (mode 0755), so a container of another image can run it.
    Install {
        /// Where to put the copy, e.g. /stead/bin/stead-instance.
        path: PathBuf,
    },
}

impl Cli {
    /// Resolves the flags into settings; every error names the flag's variable.
    pub fn into_settings(self) -> Result<Settings, Error> {
        let pod_name = self
            .pod_name
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|name| !name.is_empty())
            .ok_or(Error::Setting { setting: "STEAD_POD_NAME", reason: "is required (or HOSTNAME)".to_owned() })?;
        let cluster = match self.cluster.filter(|c| !c.is_empty()) {
            Some(cluster) => cluster,
            None => settings::cluster_of(&pod_name).map(str::to_owned).ok_or_else(|| Error::Setting {
                setting: "STEAD_CLUSTER",
                reason: format!("is required when the pod name {pod_name:?} has no -<ordinal> suffix"),
            })?,
        };
        let pg_bin = match self.pg_bin {
            Some(dir) => dir,
            None => settings::discover_pg_bin().ok_or(Error::Setting {
                setting: "STEAD_PG_BIN",
                reason: "no postgres binary found (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH); set it"
                    .to_owned(),
            })?,
        };
        if !pg_bin.join("postgres").is_file() {
            return Err(Error::Setting {
                setting: "STEAD_PG_BIN",
                reason: format!("{} has no postgres binary", pg_bin.display()),
            });
        }
        if !self.pgdata.is_absolute() {
            return Err(Error::Setting {
                setting: "STEAD_PGDATA",
                reason: format!("{} must be an absolute path", self.pgdata.display()),
            });
        }
        let parameters = crate::conf::parse_parameters(&self.parameters)?;
        let run_dir = self.run_dir.unwrap_or_else(|| default_run_dir(&self.pgdata));
        let owner = std::fs::metadata(&run_dir).ok().map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        let run_dir = settings::private_run_dir(run_dir, owner, rustix::process::geteuid().as_raw());
        if !settings::socket_path_fits(&run_dir, self.pg_port) {
            return Err(Error::Setting {
                setting: "STEAD_RUN_DIR",
                reason: format!(
                    "{} is too long: postgres's unix socket path in it must fit in {} bytes",
                    run_dir.display(),
                    settings::MAX_SOCKET_PATH
                ),
            });
        }
        let secs = Duration::from_secs;
        let defaults = Timeouts::default();
        Ok(Settings {
            ordinal: settings::ordinal(&pod_name),
            cluster,
            namespace: self.namespace,
            pod_name,
            pod_ip: self.pod_ip,
            pgdata: self.pgdata,
            pg_port: self.pg_port,
            pg_bin,
            secret_dir: self.secret_dir,
            primary_host: self.primary_host.filter(|h| !h.trim().is_empty()),
            parameters,
            api_listen: self.api_listen.unwrap_or_else(|| {
                let ip = self.pod_ip.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
                SocketAddr::new(ip, stead_crds::names::INSTANCE_API_PORT)
            }),
            run_dir,
            shutdown: ShutdownTimeouts {
                smart: secs(self.smart_shutdown_seconds),
                fast: secs(self.fast_shutdown_seconds),
                immediate: secs(self.immediate_shutdown_seconds),
            },
            restart: RestartPolicy { limit: self.restart_limit, ..RestartPolicy::default() },
            timeouts: Timeouts {
                query: secs(self.query_timeout_seconds.max(1)),
                initdb: secs(self.initdb_timeout_seconds),
                basebackup: secs(self.basebackup_timeout_seconds),
                rewind: secs(self.rewind_timeout_seconds),
                ready: secs(self.ready_timeout_seconds),
                backup: secs(self.backup_timeout_seconds.max(1)),
                ..defaults
            },
        })
    }
}

/// `/run/stead` when it exists or can be made, else `stead-run` beside PGDATA.
fn default_run_dir(pgdata: &Path) -> PathBuf {
    let preferred = PathBuf::from(DEFAULT_RUN_DIR);
    let usable = std::fs::create_dir_all(&preferred).is_ok() && tempfile_probe(&preferred);
    if usable {
        return preferred;
    }
    pgdata.parent().unwrap_or(Path::new("/tmp")).join("stead-run")
}

fn tempfile_probe(dir: &Path) -> bool {
    let probe = dir.join(".stead-write-probe");
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn flags_resolve_with_defaults() {
        let cli = Cli::try_parse_from([
            "stead-instance",
            "--pod-name",
            "orders-2",
            "--pg-bin",
            "/usr/lib/postgresql/15/bin",
            "--run-dir",
            "/tmp/x",
            "--parameters",
            r#"{"work_mem":"8MB"}"#,
        ])
        .unwrap();
        if !Path::new("/usr/lib/postgresql/15/bin/postgres").is_file() {
            return;
        }
        let settings = cli.into_settings().unwrap();
        assert_eq!(settings.cluster, "orders");
        assert_eq!(settings.ordinal, Some(2));
        assert_eq!(settings.pgdata, PathBuf::from(DEFAULT_PGDATA));
        assert_eq!(settings.api_listen.port(), stead_crds::names::INSTANCE_API_PORT);
        assert_eq!(settings.parameters.get("work_mem").map(String::as_str), Some("8MB"));
        assert_eq!(settings.shutdown, ShutdownTimeouts::default());
        assert_eq!(settings.timeouts.backup, Duration::from_secs(3600));
    }

    #[test]
    fn bad_settings_name_their_variable() {
        let parse = |args: &[&str]| {
            let mut all = vec!["stead-instance", "--pg-bin", "/nonexistent"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().into_settings().unwrap_err().to_string()
        };
        assert!(parse(&["--pod-name", "orders"]).starts_with("STEAD_CLUSTER"));
        assert!(parse(&["--pod-name", "orders-0"]).starts_with("STEAD_PG_BIN"));
    }
}
