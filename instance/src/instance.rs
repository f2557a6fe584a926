//! The instance: the supervised postmaster plus the operations the
//! controller asks for (bootstrap, promote, demote), one at a time.
//!
//! Safety rules:
//! - a bootstrap never runs over a directory that holds anything: it builds
//!   the new PGDATA in a sibling staging directory and renames it into place,
//!   so PGDATA appears complete (with `standby.signal` already in it for a
//!   clone) or not at all. Only that staging directory is ever removed;
//! - a demote writes `standby.signal` before it stops postgres, so whatever
//!   happens next the old primary never comes back as a primary;
//! - the replication role's and superuser's passwords are set from the
//!   Secret whenever this instance runs as primary;
//! - data restored from another pod's backup (its marker, see
//!   [`datadir::MarkerVerdict`]) is never started, initdb'd or cloned over
//!   until `POST /bootstrap {"mode":"restore"}` (see `instance/backup.rs`).

mod backup;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use stead_crds::names::REPLICATION_USER;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::conf::{self, Upstream};
use crate::datadir::{self, ControlData, DataDir, MarkerVerdict};
use crate::error::Error;
use crate::pg::{Db, Probe};
use crate::process::{self, Reaper};
use crate::settings::Settings;
use crate::shutdown::Mode;
use crate::status::{self, Derived, Observation};
use crate::supervisor::{Launch, Phase, Supervisor};

/// pg_controldata only reads one file; it runs inside a status request.
const CONTROLDATA_TIMEOUT: Duration = Duration::from_secs(3);

/// The bodies of `POST /bootstrap` and `POST /demote`, defined once for both
/// sides in [`stead_crds::instance_api`].
pub use stead_crds::instance_api::{Bootstrap, Demote};

/// The running instance; shared by the API and the manager's main task.
pub struct Instance {
    settings: Arc<Settings>,
    reaper: Reaper,
    supervisor: Supervisor,
    db: Db,
    operation: Arc<tokio::sync::Mutex<()>>,
    bootstrapping: AtomicBool,
    shutting_down: AtomicBool,
    cancel: CancellationToken,
    /// Generation of the postmaster whose roles were checked (see [`Instance::watch_roles`]).
    roles_checked: Mutex<Option<u64>>,
    /// The backup started and not stopped, and the last one finished.
    backups: backup::Backups,
    /// A restore brings postgres up: restored data may start, TCP is refused.
    restoring: Arc<AtomicBool>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("pod", &self.settings.pod_name).finish_non_exhaustive()
    }
}

impl Instance {
    /// Prepares the run directory and the supervisor; starts nothing.
    pub fn new(settings: Settings, reaper: Reaper) -> Result<Arc<Self>, Error> {
        prepare_run_dir(&settings.run_dir)?;
        let settings = Arc::new(settings);
        let restoring = Arc::new(AtomicBool::new(false));
        let launch: Launch = {
            let settings = Arc::clone(&settings);
            let restoring = Arc::clone(&restoring);
            Arc::new(move || {
                postmaster_command(&settings, restoring.load(Ordering::SeqCst)).map_err(|err| err.to_string())
            })
        };
        let supervisor = Supervisor::spawn(reaper.clone(), launch, settings.restart, settings.shutdown);
        let db = Db::new(settings.run_dir.clone(), settings.pg_port, settings.timeouts.query);
        Ok(Arc::new(Self {
            settings,
            reaper,
            supervisor,
            db,
            operation: Arc::new(tokio::sync::Mutex::new(())),
            bootstrapping: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            roles_checked: Mutex::new(None),
            backups: backup::Backups::default(),
            restoring,
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Starts postgres if PGDATA holds a database; otherwise waits for `/bootstrap`.
    ///
    /// A backup marker of this pod is stale (a backup interrupted by a
    /// restart of the manager): it is removed and the data starts as usual.
    /// Another pod's marker means restored data, which waits for a restore.
    pub async fn start_existing(&self) -> Result<(), Error> {
        let pgdata = &self.settings.pgdata;
        match self.marker() {
            MarkerVerdict::Absent => {}
            MarkerVerdict::Ours(marker) => {
                warn!(label = %marker.label, mode = %marker.mode, since = %marker.created_at.0, "removing the marker of an interrupted backup of this instance; starting as usual");
                datadir::remove_if_present(pgdata, datadir::BACKUP_MARKER)
                    .map_err(Error::io("remove the stale backup marker in", pgdata))?;
            }
            MarkerVerdict::Restored(marker) => {
                info!(label = %marker.label, namespace = %marker.namespace, pod = %marker.pod, begin_lsn = %marker.begin_lsn, "PGDATA holds data restored from another instance's backup; not starting postgres, waiting for POST /bootstrap {{\"mode\":\"restore\"}}");
                return Ok(());
            }
            MarkerVerdict::Unreadable(reason) => {
                error!(%reason, "PGDATA has a backup marker that cannot be read; not starting postgres");
                return Ok(());
            }
        }
        match self.data_dir() {
            DataDir::Initialized { standby } => {
                info!(pgdata = %self.settings.pgdata.display(), role = if standby { "replica" } else { "primary" }, "starting postgres on the existing data");
                self.supervisor.start().await.map(drop).map_err(Error::Postmaster)
            }
            DataDir::Missing | DataDir::Empty => {
                info!(pgdata = %self.settings.pgdata.display(), "no database yet; waiting for POST /bootstrap");
                Ok(())
            }
            DataDir::Foreign { sample } => {
                error!(pgdata = %self.settings.pgdata.display(), files = ?sample, "PGDATA holds files but no PG_VERSION; not starting postgres and never bootstrapping over it");
                Ok(())
            }
        }
    }

    fn data_dir(&self) -> DataDir {
        datadir::inspect(&self.settings.pgdata)
            .unwrap_or_else(|err| DataDir::Foreign { sample: vec![format!("unreadable: {err}")] })
    }

    /// Whose backup marker PGDATA holds, if any.
    fn marker(&self) -> MarkerVerdict {
        marker_verdict(&self.settings)
    }

    fn superuser(&self) -> String {
        self.settings.secrets().superuser().unwrap_or_else(|_| stead_crds::names::DEFAULT_SUPERUSER.to_owned())
    }

    /// The supervisor's crash phase, for `/healthz`.
    pub fn liveness(&self) -> Result<(), String> {
        status::liveness(&self.supervisor.snapshot().phase)
    }

    /// Looks at everything and derives the status.
    pub async fn status(&self) -> Derived {
        let snapshot = self.supervisor.snapshot();
        let data = self.data_dir();
        let probe = match snapshot.phase {
            Phase::Running { .. } => Some(self.db.probe(&self.superuser()).await),
            _ => None,
        };
        let answered = matches!(probe, Some(Ok(_)));
        let control =
            if !answered && matches!(data, DataDir::Initialized { .. }) { self.controldata().await } else { None };
        let upstream = match data {
            DataDir::Initialized { standby: true } => self.upstream(),
            _ => None,
        };
        let marker = self.marker();
        let backup = self.backups.current();
        status::derive(&Observation {
            pod_name: &self.settings.pod_name,
            data: &data,
            phase: &snapshot.phase,
            restarts: snapshot.restarts,
            probe: probe.as_ref(),
            upstream: upstream.as_ref(),
            control: control.as_ref(),
            bootstrapping: self.bootstrapping.load(Ordering::SeqCst),
            shutting_down: self.shutting_down.load(Ordering::SeqCst),
            backup: backup.as_ref(),
            restorable: marker.restored(),
            marker_problem: match &marker {
                MarkerVerdict::Unreadable(reason) => Some(reason.as_str()),
                _ => None,
            },
        })
    }

    /// Where a replica streams from: what the controller last said, else STEAD_PRIMARY_HOST.
    fn upstream(&self) -> Option<Upstream> {
        recorded_upstream(&self.settings)
    }

    async fn controldata(&self) -> Option<ControlData> {
        let mut command = Command::new(self.settings.program("pg_controldata"));
        command.arg("-D").arg(&self.settings.pgdata).env("LC_ALL", "C");
        match process::run(&self.reaper, command, CONTROLDATA_TIMEOUT, &self.cancel).await {
            Ok(output) if output.exit.success() => Some(ControlData::parse(&output.stdout)),
            Ok(output) => {
                warn!(exit = %output.exit, stderr = %process::tail(&output.stderr, 3), "pg_controldata failed");
                None
            }
            Err(err) => {
                warn!(error = %err, "pg_controldata did not run");
                None
            }
        }
    }

    /// Takes the operation lock, or says why not.
    fn begin(&self, what: &'static str) -> Result<OwnedMutexGuard<()>, Error> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        Arc::clone(&self.operation).try_lock_owned().map_err(|_| {
            Error::Conflict(format!(
                "another operation is in progress; {what} was not started. Retry when GET /status shows it finished"
            ))
        })
    }

    /// `POST /bootstrap`: creates PGDATA by initdb or clone, then starts postgres.
    ///
    /// Idempotent: with a database already there nothing is touched. The answer
    /// is the status when that database matches the mode asked for (a primary's
    /// for initdb, a replica's for clone) and a conflict otherwise.
    pub async fn bootstrap(&self, request: Bootstrap) -> Result<Derived, Error> {
        let _guard = self.begin("the bootstrap")?;
        match (self.marker(), &request) {
            (MarkerVerdict::Restored(marker), Bootstrap::Restore) => {
                self.bootstrapping.store(true, Ordering::SeqCst);
                let result = self.restore(&marker).await;
                self.bootstrapping.store(false, Ordering::SeqCst);
                result?;
                return Ok(self.status().await);
            }
            (MarkerVerdict::Restored(marker), _) => {
                return Err(Error::Conflict(format!(
                    "PGDATA holds data restored from backup {} of {}/{}; {} would overwrite it, so it was not run: \
                     POST /bootstrap {{\"mode\":\"restore\"}} starts that data as the primary",
                    marker.label,
                    marker.namespace,
                    marker.pod,
                    request.name()
                )));
            }
            (MarkerVerdict::Unreadable(reason), _) => {
                return Err(Error::Conflict(format!(
                    "PGDATA has a backup marker that cannot be read ({reason}); {} was not run: move the file \
                     away to start the data as it is",
                    request.name()
                )));
            }
            (_, Bootstrap::Restore) => {
                return Err(Error::Conflict(format!(
                    "PGDATA {} holds no data restored from another instance's backup (no {} written by another \
                     pod), so there is nothing to restore; restore starts a data directory created from a \
                     backup's VolumeSnapshot. Use initdb or clone for an empty one",
                    self.settings.pgdata.display(),
                    datadir::BACKUP_MARKER
                )));
            }
            (MarkerVerdict::Absent | MarkerVerdict::Ours(_), _) => {}
        }
        match (self.data_dir(), &request) {
            (DataDir::Initialized { standby: false }, Bootstrap::Initdb)
            | (DataDir::Initialized { standby: true }, Bootstrap::Clone { .. }) => {
                info!(mode = request.name(), "bootstrap asked for, but the database exists; nothing to do");
                return Ok(self.status().await);
            }
            (DataDir::Initialized { standby }, _) => {
                return Err(Error::Conflict(format!(
                    "PGDATA already holds {} database; stead never bootstraps over existing data, so \
                     {} was not run (use /promote or /demote to change the role)",
                    if standby { "a replica's (standby.signal)" } else { "a primary's" },
                    request.name()
                )));
            }
            (DataDir::Foreign { sample }, _) => {
                return Err(Error::Conflict(format!(
                    "PGDATA {} holds files but no PG_VERSION ({}); stead never bootstraps over or deletes \
                     them: move them away first",
                    self.settings.pgdata.display(),
                    sample.join(", ")
                )));
            }
            (DataDir::Missing | DataDir::Empty, _) => {}
        }
        // Resolve the inputs before anything is written.
        let upstream = match &request {
            Bootstrap::Initdb => None,
            Bootstrap::Clone { primary_host, primary_port } => {
                Some(self.resolve_upstream(primary_host, *primary_port)?)
            }
            Bootstrap::Restore => {
                return Err(Error::Conflict("there is no restored data to start".to_owned()));
            }
        };
        self.bootstrapping.store(true, Ordering::SeqCst);
        let result = self.bootstrap_empty(&request, upstream.as_ref()).await;
        self.bootstrapping.store(false, Ordering::SeqCst);
        result?;
        Ok(self.status().await)
    }

    async fn bootstrap_empty(&self, request: &Bootstrap, upstream: Option<&Upstream>) -> Result<(), Error> {
        let staging = staging_dir(&self.settings.pgdata)?;
        info!(mode = request.name(), staging = %staging.display(), "bootstrapping into a staging directory");
        let built = match upstream {
            None => self.initdb(&staging).await,
            Some(upstream) => self.clone_from(&staging, upstream).await,
        };
        if let Err(err) = built.and_then(|()| install(&staging, &self.settings.pgdata)) {
            if let Err(cleanup) = remove_staging(&staging) {
                warn!(error = %cleanup, "cannot remove the staging directory; the next bootstrap retries");
            }
            return Err(err);
        }
        info!(pgdata = %self.settings.pgdata.display(), "PGDATA is in place; starting postgres");
        self.supervisor.start().await.map_err(Error::Postmaster)?;
        let probe = self.wait_accepting().await?;
        if !probe.in_recovery {
            self.ensure_roles().await?;
        }
        Ok(())
    }

    async fn initdb(&self, staging: &Path) -> Result<(), Error> {
        let secrets = self.settings.secrets();
        let superuser = secrets.superuser()?;
        let password = secrets.superuser_password()?;
        // Checked now so a cluster is never created that replicas cannot clone.
        secrets.replication_password()?;
        let pwfile = self.settings.run_dir.join("initdb.pwfile");
        datadir::write_atomic(&pwfile, format!("{password}\n").as_bytes(), 0o600)
            .map_err(Error::io("write", &pwfile))?;
        let mut command = Command::new(self.settings.program("initdb"));
        command
            .arg("--pgdata")
            .arg(staging)
            .arg(format!("--username={superuser}"))
            .arg("--pwfile")
            .arg(&pwfile)
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--data-checksums",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .env("LC_ALL", "C");
        let result = self.run_tool("initdb", command, self.settings.timeouts.initdb).await;
        let _ = fs::remove_file(&pwfile);
        result
    }

    async fn clone_from(&self, staging: &Path, upstream: &Upstream) -> Result<(), Error> {
        self.write_pgpass()?;
        info!(host = %upstream.host, port = upstream.port, "cloning the primary with pg_basebackup");
        let mut command = Command::new(self.settings.program("pg_basebackup"));
        command
            .arg("--pgdata")
            .arg(staging)
            .arg("--host")
            .arg(&upstream.host)
            .arg("--port")
            .arg(upstream.port.to_string())
            .arg("--username")
            .arg(REPLICATION_USER)
            .args(["--no-password", "--wal-method=stream", "--checkpoint=fast"])
            .env("PGPASSFILE", self.settings.pgpass())
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", format!("{} (stead clone)", self.settings.pod_name))
            .env("LC_ALL", "C");
        self.run_tool("pg_basebackup", command, self.settings.timeouts.basebackup).await?;
        datadir::write_standby_signal(staging).map_err(Error::io("write standby.signal in", staging))?;
        datadir::write_upstream(staging, upstream).map_err(Error::io("record the upstream in", staging))?;
        Ok(())
    }

    /// Runs a PostgreSQL program; a non-zero exit is an error quoting its stderr.
    async fn run_tool(&self, program: &'static str, command: Command, timeout: Duration) -> Result<(), Error> {
        let output = process::run(&self.reaper, command, timeout, &self.cancel).await?;
        if output.exit.success() {
            let said = process::tail(&format!("{}\n{}", output.stdout, output.stderr), 4);
            info!(program, output = %said, "finished");
            Ok(())
        } else {
            let mut text = process::tail(&output.stderr, 6);
            if text.is_empty() {
                text = process::tail(&output.stdout, 6);
            }
            Err(Error::Tool { program, exit: output.exit, output: text })
        }
    }

    fn write_pgpass(&self) -> Result<(), Error> {
        let text = self.settings.secrets().pgpass()?;
        let path = self.settings.pgpass();
        datadir::write_atomic(&path, text.as_bytes(), 0o600).map_err(Error::io("write", &path))
    }

    fn resolve_upstream(&self, host: &Option<String>, port: Option<u16>) -> Result<Upstream, Error> {
        let host = match host.as_deref().map(str::trim) {
            Some("") | None => self.settings.primary_host.clone().ok_or_else(|| {
                Error::BadRequest(
                    "no primaryHost in the request and STEAD_PRIMARY_HOST is unset: name the primary to stream from"
                        .to_owned(),
                )
            })?,
            Some(host) => host.to_owned(),
        };
        if host.len() > 253 || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::BadRequest(format!(
                "primaryHost {host:?} is not a host name or address (at most 253 characters, no spaces)"
            )));
        }
        let port = port.unwrap_or(self.settings.pg_port);
        if port == 0 {
            return Err(Error::BadRequest("primaryPort must be 1..=65535".to_owned()));
        }
        Ok(Upstream { host, port })
    }

    /// Polls until postgres accepts connections.
    async fn wait_accepting(&self) -> Result<Probe, Error> {
        let limit = self.settings.timeouts.ready;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Phase::GaveUp { last_exit, .. } = self.supervisor.snapshot().phase {
                return Err(Error::Postmaster(format!("postgres did not come up: it keeps exiting ({last_exit})")));
            }
            let last = match self.db.probe(&self.superuser()).await {
                Ok(probe) => return Ok(probe),
                Err(err) => err,
            };
            tokio::select! {
                () = self.cancel.cancelled() => return Err(Error::ShuttingDown),
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Postmaster(format!(
                        "postgres did not accept connections within {}s (last: {last})",
                        limit.as_secs()
                    )));
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Sets the roles' passwords from the Secret (creating the replication role).
    async fn ensure_roles(&self) -> Result<(), Error> {
        let secrets = self.settings.secrets();
        let superuser = secrets.superuser()?;
        self.db
            .ensure_roles(
                &superuser,
                &secrets.superuser_password()?,
                REPLICATION_USER,
                &secrets.replication_password()?,
            )
            .await?;
        *self.roles_checked.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(self.supervisor.snapshot().generation);
        info!(replication_user = REPLICATION_USER, "roles and passwords match the credentials Secret");
        Ok(())
    }

    /// Keeps the roles in line with the Secret on every postmaster that comes
    /// up as primary (after a crash restart, a manual promotion, …).
    pub async fn watch_roles(self: Arc<Self>) {
        let mut changes = self.supervisor.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = changes.changed() => {}
                _ = tick.tick() => {}
            }
            let snapshot = self.supervisor.snapshot();
            let checked = *self.roles_checked.lock().unwrap_or_else(PoisonError::into_inner);
            if !matches!(snapshot.phase, Phase::Running { .. })
                || checked == Some(snapshot.generation)
                || self.bootstrapping.load(Ordering::SeqCst)
            {
                continue;
            }
            match self.db.probe(&self.superuser()).await {
                Ok(probe) if probe.in_recovery => {
                    *self.roles_checked.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot.generation);
                }
                Ok(_) => {
                    if let Err(err) = self.ensure_roles().await {
                        warn!(error = %err, "cannot set the roles from the credentials Secret; retrying");
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// `POST /promote`: makes this replica the primary. Idempotent.
    pub async fn promote(&self) -> Result<Derived, Error> {
        let _guard = self.begin("the promotion")?;
        self.backup_yields_to("the promotion").await?;
        if !matches!(self.data_dir(), DataDir::Initialized { .. }) {
            return Err(Error::Conflict("there is no database to promote; POST /bootstrap first".to_owned()));
        }
        if !matches!(self.supervisor.snapshot().phase, Phase::Running { .. }) {
            return Err(Error::Conflict(
                "postgres is not running; cannot promote now (GET /status says why), retry later".to_owned(),
            ));
        }
        let probe = self.db.probe(&self.superuser()).await.map_err(|err| {
            Error::Conflict(format!("postgres is not answering ({err}); cannot promote now, retry later"))
        })?;
        if probe.in_recovery {
            info!("promoting");
            let wait = self.settings.timeouts.promote;
            if !self.db.promote(&self.superuser(), wait).await? {
                return Err(Error::Timeout { what: "the promotion", after: wait });
            }
            info!("promoted; this instance is the primary");
        } else {
            info!("promotion asked for, but this instance is already the primary");
        }
        datadir::remove_upstream(&self.settings.pgdata)
            .map_err(Error::io("remove the upstream record in", &self.settings.pgdata))?;
        // Also when already primary: a retry after a failed checkpoint must still make it.
        self.db.checkpoint(&self.superuser(), self.settings.timeouts.checkpoint).await?;
        self.ensure_roles().await?;
        Ok(self.status().await)
    }

    /// `POST /demote`: makes this instance a replica of `upstream`, rewinding
    /// its data to the new primary's timeline first. Idempotent: a replica
    /// already streaming from that primary is left as it is.
    pub async fn demote(&self, request: Demote) -> Result<Derived, Error> {
        let _guard = self.begin("the demotion")?;
        let upstream = self.resolve_upstream(&request.primary_host, request.primary_port)?;
        if let Some(marker) = self.marker().restored() {
            return Err(Error::Conflict(format!(
                "PGDATA holds data restored from backup {} of {}/{}; it is started only by POST /bootstrap \
                 {{\"mode\":\"restore\"}}, never demoted",
                marker.label, marker.namespace, marker.pod
            )));
        }
        self.backup_yields_to("the demotion").await?;
        let pgdata = self.settings.pgdata.clone();
        match self.data_dir() {
            DataDir::Initialized { .. } => {}
            DataDir::Missing | DataDir::Empty => {
                return Err(Error::Conflict(
                    "there is no database to demote yet; use POST /bootstrap with mode clone".to_owned(),
                ));
            }
            DataDir::Foreign { .. } => {
                return Err(Error::Conflict("PGDATA holds files but no PG_VERSION; nothing to demote".to_owned()));
            }
        }
        if matches!(self.supervisor.snapshot().phase, Phase::Running { .. })
            && let Ok(probe) = self.db.probe(&self.superuser()).await
            && probe.in_recovery
            && probe.receiver_status.as_deref() == Some("streaming")
            && self.upstream().as_ref() == Some(&upstream)
        {
            info!(host = %upstream.host, port = upstream.port, "already a replica streaming from this primary");
            return Ok(self.status().await);
        }

        // From here on, any start (a crash restart too) comes up as a replica;
        // postgres reads standby.signal only when it starts.
        self.write_pgpass()?;
        datadir::write_standby_signal(&pgdata).map_err(Error::io("write standby.signal in", &pgdata))?;
        datadir::write_upstream(&pgdata, &upstream).map_err(Error::io("record the upstream in", &pgdata))?;
        info!(host = %upstream.host, port = upstream.port, "demoting: stopping postgres (fast)");
        self.supervisor.stop(Mode::Fast).await.map_err(Error::Postmaster)?;
        // The postmaster we supervise is gone; a postmaster.pid left by one
        // that was killed (its PID since reused, in a container often by a
        // process of ours) would make pg_rewind's single-user run refuse.
        let lock = pgdata.join("postmaster.pid");
        if lock.exists() {
            warn!(path = %lock.display(), "removing the postmaster.pid of a postmaster that is not running");
            fs::remove_file(&lock).map_err(Error::io("remove", &lock))?;
        }

        let superuser = self.settings.secrets().superuser()?;
        let source =
            conf::conninfo(&upstream, &superuser, &self.settings.pgpass(), &self.settings.pod_name, "postgres");
        let mut command = Command::new(self.settings.program("pg_rewind"));
        command
            .arg(format!("--target-pgdata={}", pgdata.display()))
            .arg(format!("--source-server={source}"))
            .env("PGPASSFILE", self.settings.pgpass())
            .env("LC_ALL", "C");
        // pg_rewind first finishes a crash recovery of a target that was not
        // shut down cleanly (its postgres was killed), in single-user mode,
        // which refuses to run in standby mode: standby.signal is taken away
        // for pg_rewind alone (postgres is stopped, nothing else starts it
        // while this operation runs), and put back whatever happens.
        let signal = pgdata.join("standby.signal");
        if signal.exists() {
            fs::remove_file(&signal).map_err(Error::io("remove", &signal))?;
        }
        info!(host = %upstream.host, port = upstream.port, "running pg_rewind against the new primary");
        let rewound = self.run_tool("pg_rewind", command, self.settings.timeouts.rewind).await;
        datadir::write_standby_signal(&pgdata).map_err(Error::io("write standby.signal in", &pgdata))?;
        if let Err(err) = rewound {
            return Err(Error::Postmaster(format!(
                "{err}; postgres is left stopped as a replica (standby.signal is written): retry POST /demote \
                 once the new primary is reachable"
            )));
        }
        // pg_rewind mirrors the source's files: standby.signal and the record are gone again.
        datadir::write_standby_signal(&pgdata).map_err(Error::io("write standby.signal in", &pgdata))?;
        datadir::write_upstream(&pgdata, &upstream).map_err(Error::io("record the upstream in", &pgdata))?;
        self.supervisor.start().await.map_err(Error::Postmaster)?;
        self.wait_accepting().await?;
        info!(host = %upstream.host, port = upstream.port, "demoted; running as a replica");
        Ok(self.status().await)
    }

    /// Stops everything: running operations are cancelled (their tools
    /// killed), then postgres is stopped in stages (smart, fast, immediate).
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        let bound = self.settings.shutdown.bound(Mode::Smart);
        let guard = tokio::time::timeout(Duration::from_secs(15), Arc::clone(&self.operation).lock_owned()).await;
        if guard.is_err() {
            warn!("an operation did not stop within 15s; stopping postgres anyway");
        }
        // A held backup session would delay the smart shutdown; the marker must not outlive the backup.
        self.abandon_backup("the instance manager is shutting down");
        info!(bound_s = bound.as_secs(), "stopping postgres");
        if let Err(err) = self.supervisor.stop(Mode::Smart).await {
            warn!(error = %err, "cannot stop postgres");
        }
        // No operation starts after this: `begin` refuses once shutting_down is set.
        drop(guard);
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// The upstream recorded in PGDATA, else the default one.
fn recorded_upstream(settings: &Settings) -> Option<Upstream> {
    match datadir::read_upstream(&settings.pgdata) {
        Ok(Some(upstream)) => Some(upstream),
        Ok(None) => settings.default_upstream(),
        Err(reason) => {
            warn!(%reason, "ignoring the upstream record; using STEAD_PRIMARY_HOST");
            settings.default_upstream()
        }
    }
}

/// Whose backup marker PGDATA holds, judged for this pod.
fn marker_verdict(settings: &Settings) -> MarkerVerdict {
    datadir::judge_marker(datadir::read_marker(&settings.pgdata), &settings.namespace, &settings.pod_name)
}

/// Writes stead's files and builds the postmaster's command (see [`conf`]).
/// Restored data starts only while `restoring`, and then refuses TCP.
fn postmaster_command(settings: &Settings, restoring: bool) -> Result<Command, Error> {
    let pgdata = &settings.pgdata;
    let DataDir::Initialized { standby } = datadir::inspect(pgdata).map_err(Error::io("read", pgdata))? else {
        return Err(Error::Postmaster(format!("PGDATA {} holds no database; nothing to start", pgdata.display())));
    };
    match marker_verdict(settings) {
        MarkerVerdict::Restored(marker) if !restoring => {
            return Err(Error::Postmaster(format!(
                "PGDATA holds data restored from backup {} of {}/{}; it starts only with POST /bootstrap \
                 {{\"mode\":\"restore\"}}",
                marker.label, marker.namespace, marker.pod
            )));
        }
        MarkerVerdict::Unreadable(reason) => {
            return Err(Error::Postmaster(format!("PGDATA has a backup marker that cannot be read ({reason})")));
        }
        _ => {}
    }
    let user_conf = conf::render_user_conf(&settings.parameters);
    if !user_conf.ignored.is_empty() {
        warn!(parameters = ?user_conf.ignored, "ignoring parameters that stead sets itself");
    }
    let conf_path = pgdata.join(conf::USER_CONF_FILE);
    datadir::write_atomic(&conf_path, user_conf.text.as_bytes(), 0o600).map_err(Error::io("write", &conf_path))?;
    keep_wal_for_rewind(pgdata)?;
    write_hba(pgdata, restoring)?;
    let pgpass = settings.pgpass();
    let primary_conninfo = if standby {
        // The pgpass file is needed by the WAL receiver; without the Secret's
        // keys the replica still starts (and reports why it cannot stream).
        match settings.secrets().pgpass() {
            Ok(text) => datadir::write_atomic(&pgpass, text.as_bytes(), 0o600).map_err(Error::io("write", &pgpass))?,
            Err(err) => warn!(error = %err, "cannot write the pgpass file; the replica cannot authenticate"),
        }
        recorded_upstream(settings)
            .map(|upstream| conf::conninfo(&upstream, REPLICATION_USER, &pgpass, &settings.pod_name, "postgres"))
    } else {
        None
    };
    let owned = conf::Owned {
        pgdata,
        port: settings.pg_port,
        run_dir: &settings.run_dir,
        instance_name: &settings.pod_name,
        primary_conninfo,
        pod_ip: settings.pod_ip,
    };
    let mut command = Command::new(settings.program("postgres"));
    command.args(conf::postmaster_args(&owned));
    Ok(command)
}

/// Writes [`conf::HBA_FILE`]: the usual rules, or the unix socket alone while restoring.
fn write_hba(pgdata: &Path, local_only: bool) -> Result<(), Error> {
    let text = if local_only { conf::render_hba_local_only() } else { conf::render_hba(REPLICATION_USER) };
    let hba_path = pgdata.join(conf::HBA_FILE);
    datadir::write_atomic(&hba_path, text.as_bytes(), 0o600).map_err(Error::io("write", &hba_path))
}

/// The line stead keeps in initdb's `postgresql.conf`.
const KEEP_WAL_LINE: &str = "wal_keep_size = '512MB'  # stead: also for pg_rewind's single-user recovery";

/// Makes `wal_keep_size` hold in `postgresql.conf` itself, not only on the
/// postmaster's command line: pg_rewind finishes the crash recovery of a
/// killed primary in single-user mode with that file alone, and with the
/// default of 0 its end-of-recovery checkpoint removes the WAL back to the
/// point of divergence that pg_rewind then needs.
fn keep_wal_for_rewind(pgdata: &Path) -> Result<(), Error> {
    let path = pgdata.join("postgresql.conf");
    let text = fs::read_to_string(&path).unwrap_or_default();
    if text.lines().any(|line| line == KEEP_WAL_LINE) {
        return Ok(());
    }
    let mut text = text;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(KEEP_WAL_LINE);
    text.push('\n');
    datadir::write_atomic(&path, text.as_bytes(), 0o600).map_err(Error::io("write", &path))
}

/// Creates the run directory (mode 0700, ours) or checks an existing one.
fn prepare_run_dir(dir: &Path) -> Result<(), Error> {
    match fs::metadata(dir) {
        Ok(meta) => {
            if meta.uid() != rustix::process::geteuid().as_raw() {
                return Err(Error::Setting {
                    setting: "STEAD_RUN_DIR",
                    reason: format!(
                        "{} belongs to uid {}, not to this process; postgres could not use it",
                        dir.display(),
                        meta.uid()
                    ),
                });
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(Error::io("set mode 0700 on", dir))
        }
        Err(_) => fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(Error::io("create", dir)),
    }
}

/// The staging directory beside PGDATA, emptied of any earlier failed attempt.
fn staging_dir(pgdata: &Path) -> Result<PathBuf, Error> {
    let parent = pgdata.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = pgdata.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pgdata".to_owned());
    let staging = parent.join(format!(".{name}.stead-bootstrap"));
    fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(Error::io("create", parent))?;
    remove_staging(&staging)?;
    fs::DirBuilder::new().mode(0o700).create(&staging).map_err(Error::io("create", &staging))?;
    Ok(staging)
}

fn remove_staging(staging: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(staging) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", staging)(err)),
        _ => Ok(()),
    }
}

/// Moves the finished staging directory to PGDATA. An empty PGDATA directory
/// is removed first (`rmdir` fails on anything that is not empty).
fn install(staging: &Path, pgdata: &Path) -> Result<(), Error> {
    if datadir::inspect(staging).map_err(Error::io("read", staging))?.role().is_none() {
        return Err(Error::Postmaster(format!("the bootstrap left no database in {}", staging.display())));
    }
    match fs::remove_dir(pgdata) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) if err.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
            return Err(Error::Setting {
                setting: "STEAD_PGDATA",
                reason: format!(
                    "{} is a mount point; stead builds PGDATA beside it and renames it into place, so PGDATA \
                     must be a directory inside the volume (the default /var/lib/postgresql/data/pgdata is)",
                    pgdata.display()
                ),
            });
        }
        Err(err) => return Err(Error::io("remove the empty directory", pgdata)(err)),
    }
    fs::rename(staging, pgdata).map_err(Error::io("move the staging directory to", pgdata))?;
    if let Some(parent) = pgdata.parent()
        && let Ok(dir) = fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}
