//! stead's instance manager: PID 1 of every database pod.
//!
//! It runs `postgres` as a supervised child, bootstraps PGDATA when the
//! controller says how (`initdb`, a clone of the primary, or a restore of
//! data from a backup's snapshot), promotes and demotes on request, readies
//! PGDATA for backups, and reports what it sees over an HTTPS API. The
//! controller decides; this process only acts, and never guesses a role or
//! touches data it did not create.
//!
//! Pure cores (table-tested without a server):
//! - [`conf`]: postgresql.conf, pg_hba.conf, pgpass and conninfo text, and
//!   the stead-owned parameters ([`OWNED_PARAMETERS`]);
//! - [`status`]: `/status`, `/readyz` and `/healthz` from observations;
//! - [`lsn`]: WAL positions and their distance;
//! - [`shutdown`]: the staged shutdown plan and the crash-restart policy;
//! - [`datadir`]: what PGDATA holds and which role it starts in, and whose
//!   backup marker it carries (restored data is never started by itself).
//!
//! Around them: [`process`] (spawning and reaping, as PID 1 must),
//! [`supervisor`] (the postmaster's lifecycle), [`pg`] (queries over the
//! unix socket), [`instance`] (the operations, backups and restore among
//! them), [`api`] and [`server`] (the
//! HTTPS API), [`cli`] and [`settings`] (configuration), [`mod@error`].

pub mod api;
pub mod cli;
pub mod conf;
pub mod datadir;
pub mod error;
pub mod instance;
pub mod lsn;
pub mod pg;
pub mod process;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod status;
pub mod supervisor;

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use conf::OWNED_PARAMETERS;
pub use error::Error;
pub use instance::Instance;
pub use settings::Settings;
pub use status::Status;

/// Copies the running executable to `path` (mode 0755): the database pod's
/// init container, from the stead image, puts stead-instance where the
/// user's PostgreSQL image can run it. The copy is written beside `path`
/// and renamed, so a reader never sees half a binary.
pub fn install(path: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let io = |action: &'static str, path: &std::path::Path| {
        let path = path.to_owned();
        move |cause| Error::Io { action, path, cause }
    };
    let me = std::env::current_exe().map_err(io("find", std::path::Path::new("/proc/self/exe")))?;
    let partial = path.with_extension("partial");
    std::fs::copy(&me, &partial).map_err(io("copy the instance manager to", &partial))?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
        .map_err(io("make executable", &partial))?;
    std::fs::rename(&partial, path).map_err(io("move the instance manager into", path))
}

/// postgres refuses to run as root, and so does the manager, before it starts anything.
pub fn refuse_root() -> Result<(), Error> {
    if rustix::process::geteuid().is_root() {
        return Err(Error::Setting {
            setting: "user",
            reason: "stead-instance must not run as root (postgres refuses to); run it as the postgres user, \
                     e.g. securityContext.runAsUser: 999, or `setpriv --reuid=postgres --regid=postgres --init-groups`"
                .to_owned(),
        });
    }
    Ok(())
}

/// Runs the manager until SIGTERM or SIGINT, then stops postgres in stages
/// and returns once it has exited.
pub async fn run(settings: Settings) -> Result<(), Error> {
    // An incomplete Secret is a deployment error: say which key, before anything starts.
    settings.secrets().check()?;
    let reaper = process::Reaper::start().map_err(Error::io("watch SIGCHLD for", "child processes"))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::io("handle SIGTERM for", "the manager"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::io("handle SIGINT for", "the manager"))?;
    let listener = std::net::TcpListener::bind(settings.api_listen).map_err(|cause| Error::Setting {
        setting: "STEAD_API_LISTEN",
        reason: format!("cannot listen on {}: {cause}", settings.api_listen),
    })?;
    let tls = server::tls_config(&settings)?;
    info!(
        pod = %settings.pod_name,
        cluster = %settings.cluster,
        ordinal = ?settings.ordinal,
        pgdata = %settings.pgdata.display(),
        pg_bin = %settings.pg_bin.display(),
        run_dir = %settings.run_dir.display(),
        "stead-instance starting"
    );
    let instance = Instance::new(settings, reaper)?;
    let stop_api = CancellationToken::new();
    let mut api = tokio::spawn(server::serve(listener, tls, api::router(Arc::clone(&instance)), stop_api.clone()));

    let started = instance.start_existing().await;
    let outcome = match started {
        Err(err) => Err(err),
        Ok(()) => {
            tokio::spawn(Arc::clone(&instance).watch_roles());
            tokio::select! {
                _ = terminate.recv() => { info!("SIGTERM: shutting down"); Ok(()) }
                _ = interrupt.recv() => { info!("SIGINT: shutting down"); Ok(()) }
                served = &mut api => Err(Error::Postmaster(match served {
                    Ok(Ok(())) => "the API server stopped".to_owned(),
                    Ok(Err(err)) => format!("the API server failed: {err}"),
                    Err(join) => format!("the API server stopped: {join}"),
                })),
            }
        }
    };
    if let Err(err) = &outcome {
        error!(error = %err, "stopping");
    }
    instance.shutdown().await;
    stop_api.cancel();
    if !api.is_finished() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), api).await;
    }
    info!("stead-instance stopped");
    outcome
}
