//! Backups and restore, the instance manager's half.
//!
//! The controller takes a backup as a VolumeSnapshot of an instance's data
//! volume. Between `POST /backup/start` and `POST /backup/stop` the data
//! directory is ready for that snapshot:
//!
//! - **cold** (a streaming replica only): `CHECKPOINT` (a restartpoint), then
//!   a fast shutdown; postgres stays stopped ("fenced": nothing restarts it)
//!   until the stop, which starts it again as the same replica. The stopped
//!   directory is consistent by itself at `beginLsn`.
//! - **hot** (the primary, or a replica when asked): `pg_backup_start(label,
//!   fast => true)` on a dedicated session that is held until the stop, where
//!   `pg_backup_stop(wait_for_archive => false)` ends it; postgres serves on.
//!
//! Both write [`datadir::BACKUP_MARKER`] before answering, so the snapshot
//! carries it, and remove it from the live directory at the stop. One backup
//! runs at a time. A backup not stopped within `STEAD_BACKUP_TIMEOUT_SECONDS`
//! (default one hour) is ended: a hot one's session is closed (which aborts
//! it), a cold one's postgres started again, the marker removed.
//!
//! Restore: a data directory created from such a snapshot holds the marker
//! of the pod it was taken on. It is not started until `POST /bootstrap
//! {"mode":"restore"}`, which starts it as a new primary by **crash
//! recovery** from its own `pg_control` checkpoint. The snapshot is atomic,
//! so that recovery alone makes it consistent (for a cold backup there is
//! nothing to recover). `backup_label` is deliberately not used: recovery
//! from it must replay WAL up to the backup's end, which `pg_backup_stop`
//! writes only after the snapshot was cut, so without a WAL archive that
//! recovery cannot finish. The label file `pg_backup_stop` returns is handed
//! to the controller to keep, for a future archive-based restore.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use stead_crds::instance_api::{
    BackupInProgress, BackupMarker, BackupMode, BackupStart, BackupStarted, BackupStop, BackupStopped,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Instance, write_hba};
use crate::datadir::{self, DataDir};
use crate::error::Error;
use crate::lsn::Lsn;
use crate::pg::{BackupSession, Probe};
use crate::shutdown::Mode;
use crate::supervisor::Phase;

/// Longest backup label accepted (a DatabaseBackup name is at most 63).
pub const MAX_LABEL_LEN: usize = 253;

/// The backup that runs, and the one that ended last.
#[derive(Default)]
pub(super) struct Backups {
    running: Mutex<Option<Running>>,
    finished: Mutex<Option<Finished>>,
    next_id: AtomicU64,
}

struct Running {
    id: u64,
    info: BackupInProgress,
    begin_lsn: Lsn,
    /// The hot backup's session; `None` for a cold one.
    session: Option<BackupSession>,
    /// Cancels the bound's timer.
    timer: CancellationToken,
}

/// How the last backup ended: its answer, or why it was aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub label: String,
    pub outcome: Result<BackupStopped, String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Backups {
    /// The backup that runs, as `/status` reports it.
    pub(super) fn current(&self) -> Option<BackupInProgress> {
        lock(&self.running).as_ref().map(|r| r.info.clone())
    }

    fn take_if(&self, keep: impl FnOnce(&Running) -> bool) -> Option<Running> {
        let mut running = lock(&self.running);
        if running.as_ref().is_some_and(keep) { running.take() } else { None }
    }

    fn finish(&self, label: &str, outcome: Result<BackupStopped, String>) {
        *lock(&self.finished) = Some(Finished { label: label.to_owned(), outcome });
    }
}

/// Checks a label (pure): it ends up in `backup_label` as one line.
pub fn check_label(label: &str) -> Result<(), Error> {
    let printable = label.chars().all(|c| !c.is_control());
    if label.trim().is_empty() || label.len() > MAX_LABEL_LEN || !printable {
        return Err(Error::BadRequest(format!(
            "backup label {label:?} is not accepted: it must be 1 to {MAX_LABEL_LEN} printable characters without \
             line breaks, such as the DatabaseBackup's name (orders-202501010200)"
        )));
    }
    Ok(())
}

/// What a stop for `label` gets when that backup is not the one running (pure).
pub fn stop_without_running(
    label: &str,
    pod: &str,
    running: Option<&BackupInProgress>,
    finished: Option<&Finished>,
) -> Result<BackupStopped, Error> {
    match finished {
        Some(Finished { label: done, outcome: Ok(stopped) }) if done == label => Ok(stopped.clone()),
        Some(Finished { label: done, outcome: Err(reason) }) if done == label => Err(Error::Conflict(format!(
            "backup {label} on {pod} was aborted before this stop ({reason}); fail it and take a new backup"
        ))),
        _ => Err(Error::NotFound(match running {
            Some(other) => format!(
                "no backup {label} runs on {pod}: the one running is {} ({}, since {})",
                other.label, other.mode, other.since.0
            ),
            None => format!("no backup {label} runs on {pod}, and none ended last under that label"),
        })),
    }
}

impl Instance {
    /// `POST /backup/start`: prepares PGDATA for a snapshot (see the module
    /// comment). Starting the backup that runs again (same label and mode)
    /// answers as the first start did.
    pub async fn backup_start(self: &Arc<Self>, request: BackupStart) -> Result<BackupStarted, Error> {
        check_label(&request.label)?;
        let _guard = self.begin("the backup")?;
        let BackupStart { mode, label } = request;
        if let Some(running) = lock(&self.backups.running).as_ref() {
            if running.info.label == label && running.info.mode == mode {
                return Ok(BackupStarted { mode, label, begin_lsn: running.begin_lsn });
            }
            return Err(Error::Conflict(format!(
                "backup {} ({}) runs on {} since {}; one backup at a time, so {label} was not started: \
                 POST /backup/stop {{\"label\":\"{}\"}} first",
                running.info.label, running.info.mode, self.settings.pod_name, running.info.since.0, running.info.label
            )));
        }
        if let Some(marker) = self.marker().restored() {
            return Err(Error::Conflict(format!(
                "PGDATA holds data restored from backup {} and is not started; POST /bootstrap \
                 {{\"mode\":\"restore\"}} before backing it up",
                marker.label
            )));
        }
        if !matches!(self.data_dir(), DataDir::Initialized { .. }) {
            return Err(Error::Conflict(format!(
                "there is no database to back up on {} yet; POST /bootstrap first",
                self.settings.pod_name
            )));
        }
        if !matches!(self.supervisor.snapshot().phase, Phase::Running { .. }) {
            return Err(Error::Conflict(format!(
                "postgres is not running on {}; backup {label} was not started (GET /status says why), retry later",
                self.settings.pod_name
            )));
        }
        let probe = self.db.probe(&self.superuser()).await.map_err(|err| {
            Error::Conflict(format!("postgres is not answering ({err}); backup {label} was not started, retry later"))
        })?;
        let since = Time(k8s_openapi::jiff::Timestamp::now());
        let (begin_lsn, session) = match mode {
            BackupMode::Cold if !probe.in_recovery => {
                return Err(Error::Conflict(format!(
                    "a cold backup stops postgres; only a replica is fenced for one, and {} is the primary: \
                     use mode hot here, or back up a replica",
                    self.settings.pod_name
                )));
            }
            BackupMode::Cold => (self.start_cold(&label, &since, &probe).await?, None),
            BackupMode::Hot => {
                let (lsn, session) = self.start_hot(&label, &since, &probe).await?;
                (lsn, Some(session))
            }
        };
        let id = self.backups.next_id.fetch_add(1, Ordering::SeqCst);
        let timer = CancellationToken::new();
        let info = BackupInProgress { mode, label: label.clone(), since };
        *lock(&self.backups.running) = Some(Running { id, info, begin_lsn, session, timer: timer.clone() });
        let bound = self.settings.timeouts.backup;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::select! {
                () = timer.cancelled() => {}
                () = me.cancel.cancelled() => {}
                () = tokio::time::sleep(bound) => me.expire(id, bound).await,
            }
        });
        info!(%label, %mode, %begin_lsn, bound_s = bound.as_secs(), "backup started; PGDATA may be snapshotted");
        Ok(BackupStarted { mode, label, begin_lsn })
    }

    /// Checkpoint, fast shutdown, marker; postgres is started again if any step fails.
    async fn start_cold(&self, label: &str, since: &Time, probe: &Probe) -> Result<Lsn, Error> {
        info!(label, "cold backup: CHECKPOINT (a restartpoint), then a fast shutdown; postgres stays stopped");
        self.db.checkpoint(&self.superuser(), self.settings.timeouts.checkpoint).await?;
        self.supervisor.stop(Mode::Fast).await.map_err(Error::Postmaster)?;
        let prepared = async {
            let control = self.controldata().await.ok_or_else(|| {
                Error::Postmaster("pg_controldata could not read the stopped data directory".to_owned())
            })?;
            if control.state.as_deref() != Some(datadir::SHUT_DOWN_IN_RECOVERY) {
                return Err(Error::Postmaster(format!(
                    "postgres did not shut down cleanly as a standby (pg_controldata says {:?}, expected {:?})",
                    control.state.as_deref().unwrap_or("nothing"),
                    datadir::SHUT_DOWN_IN_RECOVERY
                )));
            }
            let lsn = control.consistent_at().ok_or_else(|| {
                Error::Postmaster("pg_controldata reported no checkpoint or minimum recovery location".to_owned())
            })?;
            let system_identifier = control.system_identifier.or_else(|| probe.system_identifier.clone());
            self.write_marker(label, BackupMode::Cold, system_identifier, lsn, since)?;
            Ok(lsn)
        }
        .await;
        if let Err(err) = &prepared {
            warn!(label, error = %err, "cold backup not started; starting postgres again");
            if let Err(start) = self.supervisor.start().await {
                warn!(error = %start, "cannot start postgres again after the failed cold backup");
            }
            return Err(Error::Postmaster(format!("cold backup {label} was not started: {err}")));
        }
        prepared
    }

    /// `pg_backup_start` on a held session, then the marker; the session is
    /// closed (aborting the backup) if the marker cannot be written.
    async fn start_hot(&self, label: &str, since: &Time, probe: &Probe) -> Result<(Lsn, BackupSession), Error> {
        info!(label, standby = probe.in_recovery, "hot backup: pg_backup_start with a fast checkpoint");
        let (session, lsn) = self.db.backup_start(&self.superuser(), label, self.settings.timeouts.checkpoint).await?;
        self.write_marker(label, BackupMode::Hot, probe.system_identifier.clone(), lsn, since)?;
        Ok((lsn, session))
    }

    fn write_marker(
        &self,
        label: &str,
        mode: BackupMode,
        system_identifier: Option<String>,
        begin_lsn: Lsn,
        since: &Time,
    ) -> Result<(), Error> {
        let pgdata = &self.settings.pgdata;
        let system_identifier = system_identifier.ok_or_else(|| {
            Error::Postmaster("the data directory's system identifier is unknown; no marker written".to_owned())
        })?;
        let marker = BackupMarker {
            label: label.to_owned(),
            mode,
            namespace: self.settings.namespace.clone(),
            pod: self.settings.pod_name.clone(),
            system_identifier,
            begin_lsn,
            created_at: since.clone(),
        };
        datadir::write_marker(pgdata, &marker).map_err(Error::io("write the backup marker into", pgdata))
    }

    fn remove_marker(&self, label: &str) {
        let pgdata = &self.settings.pgdata;
        if let Err(err) = datadir::remove_if_present(pgdata, datadir::BACKUP_MARKER) {
            // Harmless: this pod's own marker is removed at the next start.
            warn!(label, error = %err, pgdata = %pgdata.display(), "cannot remove the backup marker");
        }
    }

    /// `POST /backup/stop`: ends the backup `label`. A stop of the backup
    /// that ended last answers as it did then (or 409 when it was aborted);
    /// any other label is 404.
    pub async fn backup_stop(&self, request: BackupStop) -> Result<BackupStopped, Error> {
        let _guard = self.begin("the backup stop")?;
        let label = request.label;
        let Some(running) = self.backups.take_if(|r| r.info.label == label) else {
            let current = self.backups.current();
            let finished = lock(&self.backups.finished).clone();
            return stop_without_running(&label, &self.settings.pod_name, current.as_ref(), finished.as_ref());
        };
        running.timer.cancel();
        match running.session {
            Some(session) => {
                let ended = session.stop().await;
                self.remove_marker(&label);
                match ended {
                    Ok(end) => {
                        let stopped = BackupStopped {
                            label: label.clone(),
                            end_lsn: end.lsn,
                            backup_label: Some(end.label_file),
                        };
                        info!(%label, begin_lsn = %running.begin_lsn, end_lsn = %end.lsn, "hot backup stopped");
                        self.backups.finish(&label, Ok(stopped.clone()));
                        Ok(stopped)
                    }
                    Err(err) => {
                        warn!(%label, error = %err, "the hot backup could not be stopped; it is aborted");
                        self.backups.finish(&label, Err(err.to_string()));
                        Err(err)
                    }
                }
            }
            None => {
                self.remove_marker(&label);
                let stopped = BackupStopped { label: label.clone(), end_lsn: running.begin_lsn, backup_label: None };
                self.backups.finish(&label, Ok(stopped.clone()));
                info!(%label, "cold backup stopped; starting postgres again as the replica it was");
                let restarted = async {
                    self.supervisor.start().await.map_err(Error::Postmaster)?;
                    self.wait_accepting().await.map(drop)
                };
                restarted.await.map_err(|err| {
                    Error::Postmaster(format!(
                        "cold backup {label} is over (a retried stop answers 200), but postgres did not come back: {err}"
                    ))
                })?;
                Ok(stopped)
            }
        }
    }

    /// The bound passed: the backup `id`, if it still runs, is ended.
    async fn expire(self: Arc<Self>, id: u64, bound: Duration) {
        let _guard = Arc::clone(&self.operation).lock_owned().await;
        let Some(running) = self.backups.take_if(|r| r.id == id) else { return };
        let reason = format!("not stopped within {}s of its start (STEAD_BACKUP_TIMEOUT_SECONDS)", bound.as_secs());
        warn!(label = %running.info.label, mode = %running.info.mode, %reason, "ending the backup");
        self.end_aborted(running, reason).await;
    }

    /// Ends a backup that is not stopped: a hot one's session is closed, a
    /// cold one's postgres started again; the marker goes.
    async fn end_aborted(&self, running: Running, reason: String) {
        running.timer.cancel();
        let label = running.info.label;
        // Closing the session ends a non-exclusive backup ("aborting backup due to backend exiting").
        drop(running.session);
        self.remove_marker(&label);
        self.backups.finish(&label, Err(reason));
        if running.info.mode == BackupMode::Cold {
            info!(%label, "starting postgres again after the aborted cold backup");
            if let Err(err) = self.supervisor.start().await {
                warn!(%label, error = %err, "cannot start postgres again");
            }
        }
    }

    /// Before a promotion or demotion: a hot backup is aborted (the role
    /// change would end its session anyway); a cold one refuses, because
    /// its postgres is fenced.
    pub(super) async fn backup_yields_to(&self, what: &str) -> Result<(), Error> {
        let Some(info) = self.backups.current() else { return Ok(()) };
        if info.mode == BackupMode::Cold {
            return Err(Error::Conflict(format!(
                "postgres is stopped for the cold backup {}; {what} was not started: POST /backup/stop \
                 {{\"label\":\"{}\"}} first (the backup ends by itself {}s after its start at the latest)",
                info.label,
                info.label,
                self.settings.timeouts.backup.as_secs()
            )));
        }
        if let Some(running) = self.backups.take_if(|r| r.info.label == info.label) {
            warn!(label = %info.label, what, "aborting the hot backup: the role change ends its session");
            self.end_aborted(running, format!("{what} ended it")).await;
        }
        Ok(())
    }

    /// At shutdown: a running backup is given up (session closed, marker removed).
    pub(super) fn abandon_backup(&self, why: &str) {
        let Some(running) = self.backups.take_if(|_| true) else { return };
        running.timer.cancel();
        warn!(label = %running.info.label, mode = %running.info.mode, why, "giving up the running backup");
        let label = running.info.label.clone();
        drop(running.session);
        self.remove_marker(&label);
        self.backups.finish(&label, Err(why.to_owned()));
    }

    /// `POST /bootstrap {"mode":"restore"}` on restored data: starts it as
    /// the new primary with this instance's settings and passwords.
    ///
    /// Until the passwords are this cluster's, the postmaster refuses every
    /// TCP connection (only the private socket is open), so the source
    /// cluster's passwords never work here. The marker goes last: a restore
    /// that fails before leaves the data restorable, and can be retried.
    pub(super) async fn restore(&self, marker: &BackupMarker) -> Result<(), Error> {
        let secrets = self.settings.secrets();
        secrets.superuser_password()?;
        secrets.replication_password()?;
        let pgdata = &self.settings.pgdata;
        info!(
            label = %marker.label, source = %format!("{}/{}", marker.namespace, marker.pod), mode = %marker.mode,
            begin_lsn = %marker.begin_lsn, "restoring: starting the restored data as the new primary"
        );
        if !matches!(self.supervisor.snapshot().phase, Phase::Running { .. }) {
            // What made the source a replica, a recovery target or a backup in progress.
            for name in [
                datadir::STANDBY_SIGNAL,
                datadir::RECOVERY_SIGNAL,
                datadir::UPSTREAM_FILE,
                datadir::BACKUP_LABEL_FILE,
                datadir::TABLESPACE_MAP,
                datadir::POSTMASTER_PID,
            ] {
                if datadir::remove_if_present(pgdata, name).map_err(Error::io("clean the restored data in", pgdata))? {
                    info!(file = name, "removed from the restored data");
                }
            }
        }
        self.restoring.store(true, Ordering::SeqCst);
        let brought_up = async {
            self.supervisor.start().await.map_err(Error::Postmaster)?;
            let probe = self.wait_accepting().await?;
            if probe.in_recovery {
                return Err(Error::Postmaster("the restored data came up in recovery, not as a primary".to_owned()));
            }
            self.ensure_roles().await.map_err(|err| {
                Error::Postmaster(format!(
                    "{err} (the restored data must have the superuser named by this cluster's credentials Secret)"
                ))
            })?;
            self.restoring.store(false, Ordering::SeqCst);
            write_hba(pgdata, false)?;
            self.db.reload(&self.superuser()).await
        }
        .await;
        self.restoring.store(false, Ordering::SeqCst);
        if let Err(err) = brought_up {
            warn!(error = %err, "the restore failed; stopping postgres, the data stays restorable");
            if let Err(stop) = self.supervisor.stop(Mode::Fast).await {
                warn!(error = %stop, "cannot stop postgres");
            }
            return Err(Error::Postmaster(format!(
                "restore of backup {} failed: {err}; postgres is stopped and the data is still restorable: retry \
                 POST /bootstrap {{\"mode\":\"restore\"}}",
                marker.label
            )));
        }
        datadir::remove_if_present(pgdata, datadir::BACKUP_MARKER)
            .map_err(Error::io("remove the backup marker of the restored data in", pgdata))?;
        info!(label = %marker.label, "restored; this instance is the primary, with this cluster's passwords");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn labels_are_one_printable_line() {
        for ok in ["orders-202501010200", "a", &"x".repeat(MAX_LABEL_LEN), "on demand: before the upgrade"] {
            assert!(check_label(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "  ", "two\nlines", "tab\there", &"x".repeat(MAX_LABEL_LEN + 1)] {
            let err = check_label(bad).unwrap_err().to_string();
            assert!(err.contains("printable characters") && err.contains("orders-202501010200"), "{err}");
        }
    }

    fn info(label: &str) -> BackupInProgress {
        BackupInProgress {
            mode: BackupMode::Hot,
            label: label.to_owned(),
            since: Time("2025-01-01T02:00:00Z".parse().unwrap()),
        }
    }

    #[test]
    fn a_stop_of_what_does_not_run() {
        let stopped = BackupStopped { label: "b1".into(), end_lsn: Lsn(7), backup_label: Some("START".into()) };
        let done = Finished { label: "b1".into(), outcome: Ok(stopped.clone()) };
        assert_eq!(stop_without_running("b1", "orders-0", None, Some(&done)).unwrap(), stopped, "a retry: 200");

        let aborted = Finished { label: "b1".into(), outcome: Err("not stopped within 2s".into()) };
        let err = stop_without_running("b1", "orders-0", None, Some(&aborted)).unwrap_err();
        assert!(
            matches!(err, Error::Conflict(_))
                && err.to_string().contains("aborted before this stop (not stopped within 2s)")
        );

        let err = stop_without_running("b2", "orders-0", Some(&info("b3")), Some(&done)).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert!(err.to_string().contains("no backup b2 runs on orders-0: the one running is b3 (hot"), "{err}");
        let err = stop_without_running("b2", "orders-0", None, None).unwrap_err();
        assert!(err.to_string().contains("none ended last"), "{err}");
    }
}
