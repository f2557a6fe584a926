//! `stead-webhook`: parses flags and wires the library together.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use stead_webhook::cli::{CheckArgs, Cli, Command, ServeArgs};
use stead_webhook::lookup::KubeResolver;
use stead_webhook::{check, server};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => run_check(&args),
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    })
}

fn run_check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let mut webhook: Box<dyn check::Webhook> = match (&args.server, &args.ca_file) {
        (Some(url), Some(ca_file)) => {
            let ca_pem = std::fs::read_to_string(ca_file)
                .with_context(|| format!("cannot read --ca-file {}", ca_file.display()))?;
            Box::new(check::Remote::connect(url, &ca_pem, Duration::from_secs(args.wait_seconds))?)
        }
        _ => Box::new(check::InProcess),
    };
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let summary = check::run(&args.paths, webhook.as_mut(), &mut stdout.lock(), &mut stderr.lock())
        .context("cannot write the report")?;
    Ok(if summary.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn resolver_timeout() -> Duration {
    stead_webhook::lookup::LOOKUP_TIMEOUT
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let tls = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on --listen {} (STEAD_LISTEN)", args.listen))?;
    let metrics = std::net::TcpListener::bind(args.metrics_listen)
        .with_context(|| format!("cannot listen on --metrics-listen {} (STEAD_METRICS_LISTEN)", args.metrics_listen))?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async {
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            server::shutdown_signal().await;
            let _ = stop.send(true);
        });
        let mut settings = server::Settings::new(args.cert_dir);
        match KubeResolver::from_environment(args.kubeconfig.as_deref()).await? {
            Some(resolver) => {
                tracing::info!(
                    "admission lookups read the Kubernetes API (GET by name, {:?} timeout)",
                    resolver_timeout()
                );
                let apps = stead_webhook::app_cache::AppCache::start(resolver.client().clone());
                tracing::info!(
                    "the App route rule reads the webhook's own watch of Apps (list and watch apps.stead.dev)"
                );
                settings = settings.with_resolver(std::sync::Arc::new(resolver)).with_app_cache(apps);
            }
            None => tracing::info!(
                "no Kubernetes API access (not in a cluster, no --kubeconfig): admission lookups and the App route \
                 rule are skipped"
            ),
        }
        anyhow::Ok(server::serve(tls, metrics, settings, shutdown).await?)
    })?;
    Ok(ExitCode::SUCCESS)
}
