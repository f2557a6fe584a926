//! `stead-webhook`: parses flags and wires the library together.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use stead_webhook::cli::{Cli, Command, ServeArgs};
use stead_webhook::{check, server};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => {
            let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
            check::run(&args.paths, &mut stdout.lock(), &mut stderr.lock())
                .map(|summary| if summary.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
                .context("cannot write the report")
        }
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    })
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
        server::serve(tls, metrics, server::Settings::new(args.cert_dir), shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
