//! The manager's configuration, resolved once at start, and the credentials
//! it reads from the mounted Secret whenever it needs them (so a rotated
//! Secret is picked up without a restart).

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stead_crds::names::{
    CONTROLLER_TOKEN_KEY, DEFAULT_SUPERUSER, PASSWORD_KEY, REPLICATION_PASSWORD_KEY, REPLICATION_USER, USERNAME_KEY,
};

use crate::conf::Upstream;
use crate::error::Error;
use crate::shutdown::{RestartPolicy, ShutdownTimeouts};

/// Bounds on everything that can hang.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// One connection + query to the local postgres.
    pub query: Duration,
    pub initdb: Duration,
    pub basebackup: Duration,
    pub rewind: Duration,
    /// How long `pg_promote` waits for the promotion to finish.
    pub promote: Duration,
    /// The checkpoint after a promotion (it writes what is dirty, so it can take a while).
    pub checkpoint: Duration,
    /// How long an operation waits for postgres to accept connections after starting it.
    pub ready: Duration,
    /// Quick API requests (status, probes).
    pub request: Duration,
    /// How long a backup may stay started: a hot one is then aborted, a
    /// cold one unfenced (postgres started again).
    pub backup: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            query: Duration::from_secs(5),
            initdb: Duration::from_secs(300),
            basebackup: Duration::from_secs(6 * 3600),
            rewind: Duration::from_secs(3600),
            promote: Duration::from_secs(60),
            checkpoint: Duration::from_secs(600),
            ready: Duration::from_secs(120),
            request: Duration::from_secs(10),
            backup: Duration::from_secs(3600),
        }
    }
}

/// Everything the manager runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: String,
    pub namespace: String,
    pub pod_name: String,
    /// The StatefulSet ordinal from the pod name's `-<n>` suffix.
    pub ordinal: Option<u32>,
    pub pod_ip: Option<std::net::IpAddr>,
    pub pgdata: PathBuf,
    pub pg_port: u16,
    pub pg_bin: PathBuf,
    pub secret_dir: PathBuf,
    /// Default upstream host of replicas (the cluster's read-write Service).
    pub primary_host: Option<String>,
    /// User parameters (validated, lower-case names).
    pub parameters: BTreeMap<String, String>,
    pub api_listen: SocketAddr,
    pub run_dir: PathBuf,
    pub shutdown: ShutdownTimeouts,
    pub restart: RestartPolicy,
    pub timeouts: Timeouts,
}

impl Settings {
    /// The upstream a replica uses when the controller named none.
    pub fn default_upstream(&self) -> Option<Upstream> {
        self.primary_host.as_ref().map(|host| Upstream { host: host.clone(), port: self.pg_port })
    }

    /// A PostgreSQL program, e.g. `pg_basebackup`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.pg_bin.join(name)
    }

    /// The pgpass file in the run directory.
    pub fn pgpass(&self) -> PathBuf {
        self.run_dir.join(crate::conf::PGPASS_FILE)
    }

    pub fn secrets(&self) -> Secrets {
        Secrets { dir: self.secret_dir.clone() }
    }
}

/// Longest unix socket path Linux accepts (`sun_path` minus its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Whether postgres's socket (and its lock file) fits in `run_dir`.
pub fn socket_path_fits(run_dir: &Path, port: u16) -> bool {
    // `.s.PGSQL.<port>.lock` is the longest name postgres puts there.
    run_dir.as_os_str().len() + format!("/.s.PGSQL.{port}.lock").len() <= MAX_SOCKET_PATH
}

/// The run directory to use inside `dir`, which belongs to `owner` (`None`:
/// it does not exist yet): `dir` itself when it is ours or new, else a
/// private `stead` directory in it. A kubelet makes an emptyDir owned by
/// root, group-writable for the pod's fsGroup (mode 2777 or 0777); postgres
/// wants its socket directory private, and the manager keeps a pgpass file
/// there, so it takes a subdirectory of its own (0700) instead.
pub fn private_run_dir(dir: PathBuf, owner: Option<u32>, me: u32) -> PathBuf {
    match owner {
        Some(owner) if owner != me => dir.join("stead"),
        _ => dir,
    }
}

/// The ordinal of a StatefulSet pod name (`orders-1` → 1).
pub fn ordinal(pod_name: &str) -> Option<u32> {
    let (_, suffix) = pod_name.rsplit_once('-')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// The cluster name of a StatefulSet pod name (`orders-1` → `orders`).
pub fn cluster_of(pod_name: &str) -> Option<&str> {
    ordinal(pod_name)?;
    pod_name.rsplit_once('-').map(|(cluster, _)| cluster)
}

/// Finds the directory with the PostgreSQL programs: `pg_config --bindir`,
/// else the highest `/usr/lib/postgresql/<major>/bin`, else `postgres` on `PATH`.
pub fn discover_pg_bin() -> Option<PathBuf> {
    let has_postgres = |dir: &Path| dir.join("postgres").is_file();
    // Runs before the reaper starts, so std may wait for this child itself.
    if let Ok(output) = std::process::Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_postgres(&dir) {
            return Some(dir);
        }
    }
    let root = Path::new("/usr/lib/postgresql");
    if let Ok(entries) = fs::read_dir(root) {
        let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        for major in crate::datadir::versions_highest_first(&names) {
            let dir = root.join(major.to_string()).join("bin");
            if has_postgres(&dir) {
                return Some(dir);
            }
        }
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|dir| has_postgres(dir)))
}

/// The mounted credentials Secret.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn read(&self, key: &'static str) -> Result<String, Error> {
        let path = self.dir.join(key);
        let text = fs::read_to_string(&path).map_err(|source| Error::Secret {
            key,
            path: path.clone(),
            reason: source.to_string(),
        })?;
        // A trailing newline is almost always an editing accident.
        let value = text.trim_end_matches(['\n', '\r']).to_owned();
        if value.is_empty() {
            return Err(Error::Secret { key, path, reason: "the file is empty".to_owned() });
        }
        Ok(value)
    }

    /// The superuser's name (`username`, default `postgres`).
    pub fn superuser(&self) -> Result<String, Error> {
        if !self.dir.join(USERNAME_KEY).exists() {
            return Ok(DEFAULT_SUPERUSER.to_owned());
        }
        self.read(USERNAME_KEY)
    }

    pub fn superuser_password(&self) -> Result<String, Error> {
        self.read(PASSWORD_KEY)
    }

    pub fn replication_password(&self) -> Result<String, Error> {
        self.read(REPLICATION_PASSWORD_KEY)
    }

    pub fn controller_token(&self) -> Result<String, Error> {
        self.read(CONTROLLER_TOKEN_KEY)
    }

    /// Every key the manager needs is there and not empty (`username` may be
    /// absent); the error names the first one missing.
    pub fn check(&self) -> Result<(), Error> {
        self.superuser()?;
        self.superuser_password()?;
        self.replication_password()?;
        self.controller_token()?;
        Ok(())
    }

    /// The pgpass file's text: replication role and superuser, any host.
    pub fn pgpass(&self) -> Result<String, Error> {
        let superuser = self.superuser()?;
        let su_password = self.superuser_password()?;
        // A replica-only deployment still needs the superuser for pg_rewind,
        // and a primary without a replication password cannot be cloned: both are required.
        let replication = self.replication_password()?;
        crate::conf::render_pgpass(&[
            crate::conf::PassEntry { user: REPLICATION_USER, password: &replication },
            crate::conf::PassEntry { user: &superuser, password: &su_password },
        ])
        .map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn socket_paths_must_fit() {
        assert!(socket_path_fits(Path::new("/run/stead"), 5432));
        assert!(socket_path_fits(Path::new(&format!("/{}", "r".repeat(MAX_SOCKET_PATH - 20))), 5432));
        assert!(!socket_path_fits(Path::new(&format!("/{}", "r".repeat(MAX_SOCKET_PATH - 19))), 5432));
    }

    #[test]
    fn ordinal_table() {
        let rows = [
            ("orders-1", Some(1), Some("orders")),
            ("orders-12", Some(12), Some("orders")),
            ("my-db-0", Some(0), Some("my-db")),
            ("orders", None, None),
            ("orders-", None, None),
            ("orders-a1", None, None),
            ("orders-+1", None, None),
        ];
        for (pod, ordinal_expected, cluster) in rows {
            assert_eq!(ordinal(pod), ordinal_expected, "{pod}");
            assert_eq!(cluster_of(pod), cluster, "{pod}");
        }
    }

    #[test]
    fn secrets_are_trimmed_and_required() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::new(dir.path());
        assert_eq!(secrets.superuser().unwrap(), "postgres");
        assert!(secrets.check().unwrap_err().to_string().contains("the password key"));
        let err = secrets.superuser_password().unwrap_err().to_string();
        assert!(err.contains("password") && err.contains("credentials Secret"), "{err}");
        fs::write(dir.path().join("password"), "s3cret\n").unwrap();
        fs::write(dir.path().join("replication-password"), "r:pl\r\n").unwrap();
        fs::write(dir.path().join("controller-token"), "").unwrap();
        assert_eq!(secrets.superuser_password().unwrap(), "s3cret");
        assert!(secrets.controller_token().unwrap_err().to_string().contains("empty"));
        assert_eq!(secrets.pgpass().unwrap(), "*:*:*:streaming_replica:r\\:pl\n*:*:*:postgres:s3cret\n");
        assert!(secrets.check().unwrap_err().to_string().contains("the controller-token key"));
        fs::write(dir.path().join("controller-token"), "t").unwrap();
        secrets.check().unwrap();
    }
}

#[cfg(test)]
mod run_dir_tests {
    use std::path::PathBuf;

    use super::private_run_dir;

    #[test]
    fn a_run_dir_of_someone_else_gets_a_private_subdirectory() {
        let dir = PathBuf::from("/run/stead");
        assert_eq!(private_run_dir(dir.clone(), Some(101), 101), dir, "ours: used as it is");
        assert_eq!(private_run_dir(dir.clone(), None, 101), dir, "missing: created, ours");
        assert_eq!(private_run_dir(dir, Some(0), 101), PathBuf::from("/run/stead/stead"), "a kubelet's emptyDir");
    }
}
