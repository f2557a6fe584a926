//! Command line of `stead-webhook`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Admission webhook for stead's DatabaseCluster, DatabaseBackup and App: defaults and validates at `kubectl apply` time.
#[derive(Debug, Parser)]
#[command(name = "stead-webhook", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve /mutate and /validate over HTTPS, /metrics over plain HTTP.
    Serve(ServeArgs),
    /// Run the admission rules on manifests as a GitOps pipeline step: offline,
    /// or against a running webhook with --server.
    ///
    /// Exits 1 when any DatabaseCluster, DatabaseBackup or App is refused or a file cannot be read.
    Check(CheckArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTPS admission endpoint.
    #[arg(long, env = "STEAD_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Directory holding tls.crt and tls.key (the mounted cert-manager Secret); reloaded on change.
    #[arg(long, env = "STEAD_CERT_DIR", default_value = "/etc/stead/tls")]
    pub cert_dir: PathBuf,

    /// Address of the plain-HTTP /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "STEAD_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// Kubeconfig for the API reads of admission (does a backup's cluster
    /// exist, is a restored backup complete) and the watch of Apps behind the
    /// App Ingress route rule. In a cluster the pod's ServiceAccount is used
    /// without it; with neither, those reads are skipped and the answers say
    /// so in a warning.
    #[arg(long, env = "STEAD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Manifest files or directories (*.yaml, *.yml, *.json; multi-document YAML).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub paths: Vec<PathBuf>,

    /// Send the reviews to a running webhook (https://host:port) instead of judging them in-process.
    #[arg(long, env = "STEAD_CHECK_SERVER", requires = "ca_file")]
    pub server: Option<String>,

    /// CA certificate (PEM) that signed the server's certificate; required with --server.
    #[arg(long, env = "STEAD_CHECK_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// How long to wait for --server to accept connections, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub wait_seconds: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults() {
        let cli = Cli::try_parse_from(["stead-webhook", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        assert_eq!(args.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(args.cert_dir, PathBuf::from("/etc/stead/tls"));
        assert_eq!(args.metrics_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(args.kubeconfig, None);
    }

    #[test]
    fn check_takes_several_paths() {
        let cli = Cli::try_parse_from(["stead-webhook", "check", "-f", "a.yaml", "dir", "-f", "b.yaml"]).unwrap();
        let Command::Check(args) = cli.command else { panic!("not check") };
        assert_eq!(args.paths, vec![PathBuf::from("a.yaml"), PathBuf::from("dir"), PathBuf::from("b.yaml")]);
        assert!(Cli::try_parse_from(["stead-webhook", "check"]).is_err());
    }
}
