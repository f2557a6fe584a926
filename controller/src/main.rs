//! Entry point: parse flags, build the parts, run until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::Api;
use stead_controller::cli::{Cli, Settings, lease_identity, lease_namespace};
use stead_controller::context::{Context, stores};
use stead_controller::controller::{Informers, check_crd, run};
use stead_controller::http;
use stead_controller::instances::HttpsInstances;
use stead_controller::keys::ControllerKeys;
use stead_controller::leader::Leadership;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// How long in-flight reconciles may take to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let cli = Cli::parse();

    let client = kube::Client::try_default().await.context(
        "cannot configure a Kubernetes client from KUBECONFIG/~/.kube/config or the in-cluster service account",
    )?;
    check_crd(&client, cli.namespace.as_deref()).await?;

    let health_listener = http::bind(cli.health_listen, "--health-listen").await?;
    let metrics_listener = http::bind(cli.metrics_listen, "--metrics-listen").await?;

    let identity = lease_identity();
    let keys_namespace = cli.keys_namespace.clone().unwrap_or_else(|| lease_namespace(client.default_namespace()));
    let keys = ControllerKeys::load_or_create(&Api::namespaced(client.clone(), &keys_namespace), &keys_namespace)
        .await
        .context("cannot load the controller's keys")?;
    let instances = HttpsInstances::new(&keys.ca_pem()).context("cannot build the instance managers' client")?;
    let (stores, writers) = stores();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Settings::from(&cli),
        stores,
        Some(identity.clone()),
        Arc::new(keys),
        Arc::new(instances),
    ));
    let informers = Informers::new(&client, cli.namespace.as_deref(), writers, &ctx.settings.instance_image);

    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let health = tokio::spawn(http::serve(
        health_listener,
        http::health_router(ctx.clone()),
        shutdown.clone().cancelled_owned(),
    ));
    let metrics = tokio::spawn(http::serve(
        metrics_listener,
        http::metrics_router(ctx.clone()),
        shutdown.clone().cancelled_owned(),
    ));

    let leadership = if cli.leader_elect {
        let namespace = lease_namespace(client.default_namespace());
        Leadership::elect(client.clone(), &namespace, &identity).await?
    } else {
        Leadership::always()
    };
    info!(namespace = cli.namespace.as_deref().unwrap_or("<all>"), leader_elect = cli.leader_elect, "starting");

    // SIGTERM closes the reconcile queue; `run` returns once the reconciles in
    // flight have finished, so nothing writes any more. Only then is the lease
    // released, and a standby takes over at its next read (about a second)
    // without ever working alongside this replica.
    let controller = run(ctx, informers, leadership.subscribe(), shutdown.clone().cancelled_owned());
    let (outcome, drained) = tokio::select! {
        r = controller => (r, true),
        () = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN).await } => (Ok(()), false),
    };
    shutdown.cancel();
    if drained {
        leadership.release().await;
    } else {
        // A request of a reconcile we just dropped may still land: let the lease run out instead.
        warn!(after = ?DRAIN, "reconciles did not finish in time; stopping without releasing the lease");
        leadership.abandon();
    }
    for server in [health, metrics] {
        if let Ok(Err(e)) = server.await {
            warn!(error = %e, "HTTP server failed");
        }
    }
    info!("stopped");
    outcome.map_err(Into::into)
}

/// Cancels `token` on SIGTERM (Kubernetes) or Ctrl-C (a terminal).
async fn on_signal(token: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    info!("shutdown requested");
    token.cancel();
}
