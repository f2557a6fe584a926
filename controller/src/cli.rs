//! Command-line flags, each with an environment fallback for Deployments.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// How often every cluster is reconciled even when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often the instance managers of every cluster are asked for their status.
pub const POLL: Duration = Duration::from_secs(10);

/// stead-controller: reconciles DatabaseClusters into StatefulSets, Services and PodDisruptionBudgets.
#[derive(Debug, Clone, Parser)]
#[command(name = "stead-controller", version, about)]
pub struct Cli {
    /// Clusters reconciled in parallel (different clusters; one cluster is never reconciled twice at once).
    #[arg(long, env = "STEAD_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Watch only this namespace instead of all namespaces.
    #[arg(long, env = "STEAD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Reconcile only while holding the Lease `stead-controller` in the pod's namespace
    /// (POD_NAMESPACE; identity POD_NAME or the hostname), so several replicas can run.
    #[arg(long, env = "STEAD_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,

    /// Address of /healthz and /readyz.
    #[arg(long, env = "STEAD_HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    pub health_listen: SocketAddr,

    /// Address of /metrics (Prometheus text format).
    #[arg(long, env = "STEAD_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,

    /// The stead image the database pods copy stead-instance from (their init container).
    #[arg(long, env = "STEAD_INSTANCE_IMAGE", default_value = crate::children::DEFAULT_INSTANCE_IMAGE)]
    pub instance_image: String,

    /// Seconds between two status polls of every cluster's instance managers.
    #[arg(long, env = "STEAD_POLL_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll_seconds: u64,

    /// Namespace of the controller's key Secret (stead-controller-keys); default: POD_NAMESPACE, else the
    /// client's namespace.
    #[arg(long, env = "STEAD_KEYS_NAMESPACE")]
    pub keys_namespace: Option<String>,

    /// Seconds a VolumeSnapshot may report an error (snapshotters retry transient ones) before its
    /// backup fails.
    #[arg(long, env = "STEAD_SNAPSHOT_ERROR_GRACE_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub snapshot_error_grace_seconds: u64,
}

/// What the reconciler needs to know from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: u16,
    pub namespace: Option<String>,
    pub resync: Duration,
    /// How often a cluster with pods is polled.
    pub poll: Duration,
    pub instance_image: String,
    /// How long a snapshot error may last before its backup fails.
    pub snapshot_error_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            namespace: None,
            resync: RESYNC,
            poll: POLL,
            instance_image: crate::children::DEFAULT_INSTANCE_IMAGE.to_owned(),
            snapshot_error_grace: crate::backups::SNAPSHOT_ERROR_GRACE,
        }
    }
}

impl From<&Cli> for Settings {
    fn from(cli: &Cli) -> Self {
        Self {
            concurrency: cli.concurrency,
            namespace: cli.namespace.clone(),
            resync: RESYNC,
            poll: Duration::from_secs(cli.poll_seconds),
            instance_image: cli.instance_image.clone(),
            snapshot_error_grace: Duration::from_secs(cli.snapshot_error_grace_seconds),
        }
    }
}

/// Identity in the Lease: POD_NAME, else the hostname, else a fixed name with the pid.
pub fn lease_identity() -> String {
    let from_env = |key: &str| std::env::var(key).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    from_env("POD_NAME")
        .or_else(|| from_env("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("stead-controller-{}", std::process::id()))
}

/// Namespace of the Lease: POD_NAMESPACE, else the client's default namespace.
pub fn lease_namespace(client_default: &str) -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| client_default.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["stead-controller"]).unwrap();
        assert_eq!(cli.concurrency, 4);
        assert_eq!(cli.namespace, None);
        assert!(!cli.leader_elect);
        assert_eq!(cli.health_listen.to_string(), "0.0.0.0:8081");
        assert_eq!(cli.metrics_listen.to_string(), "0.0.0.0:8080");
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "stead-controller",
            "--concurrency",
            "16",
            "--namespace",
            "shop",
            "--leader-elect",
            "--health-listen",
            "127.0.0.1:9001",
            "--metrics-listen",
            "[::1]:9002",
        ])
        .unwrap();
        let settings = Settings::from(&cli);
        assert_eq!(settings.concurrency, 16);
        assert_eq!(settings.namespace.as_deref(), Some("shop"));
        assert!(cli.leader_elect);
        assert_eq!(cli.metrics_listen.port(), 9002);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = Cli::try_parse_from(["stead-controller", "--concurrency", "0"]).unwrap_err().to_string();
        assert!(err.contains("--concurrency"), "{err}");
        let err = Cli::try_parse_from(["stead-controller", "--health-listen", "nope"]).unwrap_err().to_string();
        assert!(err.contains("--health-listen"), "{err}");
    }
}
