//! `/status`, `/readyz` and `/healthz` derived from what was observed: pure.
//!
//! Field meanings (the controller's contract):
//!
//! - `role`: `bootstrapping` while PGDATA is empty (waiting for `POST
//!   /bootstrap`) or a bootstrap runs; otherwise what postgres answers
//!   (`pg_is_in_recovery()`), or, when it does not answer, what the data says
//!   (`standby.signal` → `replica`); `stopped` when the manager stopped
//!   postgres on purpose (during `/demote`, at shutdown) or PGDATA holds
//!   something that is not a database.
//! - `postmaster`: `running` (alive and answering, or alive and failing
//!   queries for another reason), `starting` (alive but not accepting
//!   connections yet, e.g. crash recovery; or waiting for a crash restart),
//!   `stopped` (on purpose), `crashed` (exited too often; no more restarts).
//! - `currentLsn`: a primary's `pg_current_wal_lsn()`; a replica's replay
//!   position (the point its data has reached), so instances compare directly.
//! - `receivedLsn` / `replayedLsn`: a replica's `pg_last_wal_receive_lsn()` /
//!   `pg_last_wal_replay_lsn()`; null on a primary.
//! - `lagBytes` (replica only): the WAL the primary has that this replica has
//!   not replayed, as far as the replica knows: `max(latest_end_lsn of
//!   pg_stat_wal_receiver (the end of WAL the primary last reported),
//!   receivedLsn) − replayedLsn`, never negative. Null on a primary, or when
//!   either side is unknown.
//! - `streaming`: the WAL receiver's status is `streaming`.
//! - `timeline`: a primary's current timeline; a replica's received
//!   timeline; else the latest checkpoint's (also when postgres is down).
//! - `backup`: the backup started and not yet stopped. While a cold one
//!   fences a replica, `role` stays `replica`, `postmaster` is `stopped` and
//!   the instance is not ready.
//! - `restorable`: PGDATA holds data restored from another pod's backup
//!   (its marker): `role` is `bootstrapping`, postgres is not started, and
//!   the instance waits for `POST /bootstrap {"mode":"restore"}`.

use stead_crds::instance_api::{BackupInProgress, BackupMarker, BackupMode};

use crate::conf::Upstream;
use crate::datadir::{ControlData, DataDir, DataRole};
use crate::pg::{Probe, ProbeError};
use crate::supervisor::Phase;

/// The body of `GET /status` (and of successful operations), defined once
/// for both sides in [`stead_crds::instance_api`].
pub use stead_crds::instance_api::{InstanceStatus as Status, Postmaster, Role};

/// Everything the status is derived from.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub pod_name: &'a str,
    pub data: &'a DataDir,
    pub phase: &'a Phase,
    pub restarts: u32,
    /// `None` when postgres was not asked (it is not running).
    pub probe: Option<&'a Result<Probe, ProbeError>>,
    pub upstream: Option<&'a Upstream>,
    /// `pg_controldata`, read when postgres does not answer.
    pub control: Option<&'a ControlData>,
    /// A bootstrap (initdb, clone or restore) is running.
    pub bootstrapping: bool,
    pub shutting_down: bool,
    /// The backup started and not yet stopped.
    pub backup: Option<&'a BackupInProgress>,
    /// The marker of another pod's backup: the data is restored data.
    pub restorable: Option<&'a BackupMarker>,
    /// A backup marker that cannot be read.
    pub marker_problem: Option<&'a str>,
}

/// The status and, when not ready, the one-line reason `/readyz` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub status: Status,
    pub not_ready: Option<String>,
}

/// Derives `/status` and readiness.
pub fn derive(obs: &Observation<'_>) -> Derived {
    let answer = obs.probe.and_then(|probe| probe.as_ref().ok());
    let fenced = obs.backup.is_some_and(|b| b.mode == BackupMode::Cold);
    let role = if obs.bootstrapping || obs.data.is_empty() || obs.restorable.is_some() {
        Role::Bootstrapping
    } else if let Some(probe) = answer {
        if probe.in_recovery { Role::Replica } else { Role::Primary }
    } else if obs.marker_problem.is_some() {
        Role::Stopped
    } else {
        match (obs.phase, obs.data.role()) {
            (Phase::Stopped, Some(DataRole::Replica)) if fenced => Role::Replica,
            (Phase::Stopped, _) | (_, None) => Role::Stopped,
            (_, Some(DataRole::Replica)) => Role::Replica,
            (_, Some(DataRole::Primary)) => Role::Primary,
        }
    };
    let postmaster = match obs.phase {
        Phase::Stopped => Postmaster::Stopped,
        Phase::GaveUp { .. } => Postmaster::Crashed,
        Phase::Restarting { .. } => Postmaster::Starting,
        Phase::Running { .. } => match obs.probe {
            Some(Ok(_)) | Some(Err(ProbeError::Failed(_))) => Postmaster::Running,
            Some(Err(ProbeError::NotAccepting(_))) | None => Postmaster::Starting,
        },
    };
    let replica = role == Role::Replica;
    let streaming = answer.is_some_and(|p| p.receiver_status.as_deref() == Some("streaming"));

    let (current_lsn, received_lsn, replayed_lsn, lag_bytes) = match answer {
        Some(p) if p.in_recovery => {
            let sent = match (p.latest_end_lsn, p.receive_lsn) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let lag = sent.zip(p.replay_lsn).map(|(sent, replayed)| sent.bytes_after(replayed));
            (p.replay_lsn, p.receive_lsn, p.replay_lsn, lag)
        }
        Some(p) => (p.current_lsn, None, None, None),
        None => (None, None, None, None),
    };
    let timeline = match answer {
        Some(p) if p.in_recovery => p.received_timeline.or(p.checkpoint_timeline),
        Some(p) => p.current_timeline.or(p.checkpoint_timeline),
        None => obs.control.and_then(|c| c.timeline),
    };
    let system_identifier = answer
        .and_then(|p| p.system_identifier.clone())
        .or_else(|| obs.control.and_then(|c| c.system_identifier.clone()));

    let status = Status {
        pod_name: obs.pod_name.to_owned(),
        role,
        postmaster,
        ready: false,
        timeline,
        system_identifier,
        current_lsn,
        received_lsn,
        replayed_lsn,
        lag_bytes,
        streaming,
        primary_host: if replica { obs.upstream.map(|u| u.host.clone()) } else { None },
        restarts: obs.restarts,
        pending_restart: answer.is_some_and(|p| p.pending_restart),
        backup: obs.backup.cloned(),
        restorable: obs.restorable.cloned(),
    };
    let not_ready = not_ready_reason(obs, &status);
    Derived { status: Status { ready: not_ready.is_none(), ..status }, not_ready }
}

fn not_ready_reason(obs: &Observation<'_>, status: &Status) -> Option<String> {
    if obs.shutting_down {
        return Some("the instance manager is shutting down".to_owned());
    }
    if obs.bootstrapping {
        return Some("a bootstrap is in progress".to_owned());
    }
    if let Some(marker) = obs.restorable {
        return Some(format!(
            "PGDATA holds data restored from backup {} of {}/{} (consistent at WAL {}): waiting for \
             POST /bootstrap {{\"mode\":\"restore\"}} to start it as the primary",
            marker.label, marker.namespace, marker.pod, marker.begin_lsn
        ));
    }
    if let Some(problem) = obs.marker_problem {
        return Some(format!(
            "PGDATA has a backup marker that cannot be read ({problem}); postgres is not started: \
             move the file away to start the data as it is"
        ));
    }
    match obs.data {
        DataDir::Missing | DataDir::Empty => {
            return Some("no database yet: waiting for POST /bootstrap".to_owned());
        }
        DataDir::Foreign { sample } => {
            return Some(format!(
                "PGDATA holds files but no PG_VERSION ({}); stead never touches such a directory: \
                 move it away or point STEAD_PGDATA elsewhere",
                sample.join(", ")
            ));
        }
        DataDir::Initialized { .. } => {}
    }
    match obs.phase {
        Phase::Stopped if obs.backup.is_some_and(|b| b.mode == BackupMode::Cold) => {
            let label = obs.backup.map(|b| b.label.as_str()).unwrap_or_default();
            return Some(format!(
                "postgres is stopped for the cold backup {label}: POST /backup/stop {{\"label\":\"{label}\"}} \
                 starts it again"
            ));
        }
        Phase::Stopped => return Some("postgres is stopped by the instance manager".to_owned()),
        Phase::GaveUp { attempts, last_exit } => {
            return Some(format!(
                "postgres exited {attempts} times in a row (last: {last_exit}) and is not restarted any more"
            ));
        }
        Phase::Restarting { attempt, last_exit } => {
            return Some(format!("postgres exited unexpectedly ({last_exit}); restart {attempt} is pending"));
        }
        Phase::Running { .. } => {}
    }
    match obs.probe {
        None => return Some("postgres has not been asked yet".to_owned()),
        Some(Err(ProbeError::NotAccepting(reason))) => {
            return Some(format!("postgres is not accepting connections yet: {reason}"));
        }
        Some(Err(ProbeError::Failed(reason))) => return Some(format!("postgres does not answer: {reason}")),
        Some(Ok(_)) => {}
    }
    if status.role == Role::Replica && !status.streaming {
        let receiver = obs
            .probe
            .and_then(|p| p.as_ref().ok())
            .and_then(|p| p.receiver_status.clone())
            .unwrap_or_else(|| "not running".to_owned());
        return Some(match obs.upstream {
            Some(upstream) => format!(
                "the replica is not streaming from {}:{} (WAL receiver: {receiver})",
                upstream.host, upstream.port
            ),
            None => "the replica has no primary to stream from: STEAD_PRIMARY_HOST is unset and no \
                     /bootstrap clone or /demote named one"
                .to_owned(),
        });
    }
    None
}

/// Liveness: `Err(reason)` only when postgres crashed and is not being restarted.
pub fn liveness(phase: &Phase) -> Result<(), String> {
    match phase {
        Phase::GaveUp { attempts, last_exit } => Err(format!(
            "postgres exited {attempts} times in a row (last: {last_exit}); the instance manager stopped \
             restarting it, so the container must be restarted"
        )),
        Phase::Stopped | Phase::Running { .. } | Phase::Restarting { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::lsn::Lsn;

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    fn primary_probe() -> Probe {
        Probe {
            in_recovery: false,
            current_lsn: Some(lsn("0/3000060")),
            current_timeline: Some(2),
            checkpoint_timeline: Some(1),
            system_identifier: Some("42".to_owned()),
            ..Probe::default()
        }
    }

    fn replica_probe(status: Option<&str>) -> Probe {
        Probe {
            in_recovery: true,
            receive_lsn: Some(lsn("0/5000000")),
            replay_lsn: Some(lsn("0/4000000")),
            latest_end_lsn: Some(lsn("0/6000000")),
            receiver_status: status.map(str::to_owned),
            received_timeline: Some(3),
            checkpoint_timeline: Some(2),
            system_identifier: Some("42".to_owned()),
            ..Probe::default()
        }
    }

    struct Case {
        name: &'static str,
        data: DataDir,
        phase: Phase,
        probe: Option<Result<Probe, ProbeError>>,
        upstream: Option<Upstream>,
        bootstrapping: bool,
        shutting_down: bool,
        role: Role,
        postmaster: Postmaster,
        reason: Option<&'static str>,
    }

    fn case(name: &'static str, data: DataDir, phase: Phase, probe: Option<Result<Probe, ProbeError>>) -> Case {
        Case {
            name,
            data,
            phase,
            probe,
            upstream: None,
            bootstrapping: false,
            shutting_down: false,
            role: Role::Stopped,
            postmaster: Postmaster::Stopped,
            reason: None,
        }
    }

    fn running() -> Phase {
        Phase::Running { pid: 7 }
    }

    const PRIMARY: DataDir = DataDir::Initialized { standby: false };
    const REPLICA: DataDir = DataDir::Initialized { standby: true };

    fn upstream() -> Option<Upstream> {
        Some(Upstream { host: "orders-rw".to_owned(), port: 5432 })
    }

    #[test]
    fn role_postmaster_and_readiness_table() {
        let cases = vec![
            Case {
                role: Role::Bootstrapping,
                reason: Some("waiting for POST /bootstrap"),
                ..case("empty waits for bootstrap", DataDir::Empty, Phase::Stopped, None)
            },
            Case {
                role: Role::Bootstrapping,
                reason: Some("waiting for POST /bootstrap"),
                ..case("missing waits for bootstrap", DataDir::Missing, Phase::Stopped, None)
            },
            Case {
                role: Role::Bootstrapping,
                postmaster: Postmaster::Starting,
                bootstrapping: true,
                reason: Some("bootstrap is in progress"),
                ..case("clone finishing", REPLICA, running(), Some(Err(ProbeError::NotAccepting("x".into()))))
            },
            Case {
                role: Role::Stopped,
                reason: Some("no PG_VERSION (lost+found)"),
                ..case(
                    "foreign data is left alone",
                    DataDir::Foreign { sample: vec!["lost+found".into()] },
                    Phase::Stopped,
                    None,
                )
            },
            Case {
                role: Role::Primary,
                postmaster: Postmaster::Running,
                ..case("primary answering", PRIMARY, running(), Some(Ok(primary_probe())))
            },
            Case {
                role: Role::Primary,
                postmaster: Postmaster::Starting,
                reason: Some("not accepting connections yet: the database system is starting up"),
                ..case(
                    "primary in crash recovery",
                    PRIMARY,
                    running(),
                    Some(Err(ProbeError::NotAccepting("the database system is starting up".into()))),
                )
            },
            Case {
                role: Role::Primary,
                postmaster: Postmaster::Running,
                reason: Some("does not answer: too many clients"),
                ..case(
                    "alive but failing",
                    PRIMARY,
                    running(),
                    Some(Err(ProbeError::Failed("too many clients".into()))),
                )
            },
            Case {
                role: Role::Replica,
                postmaster: Postmaster::Running,
                upstream: upstream(),
                ..case("replica streaming", REPLICA, running(), Some(Ok(replica_probe(Some("streaming")))))
            },
            Case {
                role: Role::Replica,
                postmaster: Postmaster::Running,
                upstream: upstream(),
                reason: Some("not streaming from orders-rw:5432 (WAL receiver: not running)"),
                ..case("replica without receiver", REPLICA, running(), Some(Ok(replica_probe(None))))
            },
            Case {
                role: Role::Replica,
                postmaster: Postmaster::Running,
                reason: Some("no primary to stream from"),
                ..case("replica without upstream", REPLICA, running(), Some(Ok(replica_probe(Some("waiting")))))
            },
            Case {
                role: Role::Primary,
                postmaster: Postmaster::Running,
                ..case("the probe wins over the data", REPLICA, running(), Some(Ok(primary_probe())))
            },
            Case {
                role: Role::Stopped,
                reason: Some("stopped by the instance manager"),
                ..case("stopped on purpose", REPLICA, Phase::Stopped, None)
            },
            Case {
                role: Role::Replica,
                postmaster: Postmaster::Starting,
                reason: Some("restart 2 is pending"),
                ..case(
                    "restarting keeps the data's role",
                    REPLICA,
                    Phase::Restarting { attempt: 2, last_exit: "signal 9 (SIGKILL)".into() },
                    None,
                )
            },
            Case {
                role: Role::Primary,
                postmaster: Postmaster::Crashed,
                reason: Some("not restarted any more"),
                ..case("gave up", PRIMARY, Phase::GaveUp { attempts: 10, last_exit: "exit code 1".into() }, None)
            },
            Case {
                role: Role::Primary,
                postmaster: Postmaster::Running,
                shutting_down: true,
                reason: Some("shutting down"),
                ..case("shutting down is never ready", PRIMARY, running(), Some(Ok(primary_probe())))
            },
        ];
        for c in cases {
            let obs = Observation {
                pod_name: "orders-1",
                data: &c.data,
                phase: &c.phase,
                restarts: 0,
                probe: c.probe.as_ref(),
                upstream: c.upstream.as_ref(),
                control: None,
                bootstrapping: c.bootstrapping,
                shutting_down: c.shutting_down,
                backup: None,
                restorable: None,
                marker_problem: None,
            };
            let derived = derive(&obs);
            assert_eq!(derived.status.role, c.role, "{}", c.name);
            assert_eq!(derived.status.postmaster, c.postmaster, "{}", c.name);
            match (c.reason, &derived.not_ready) {
                (None, None) => assert!(derived.status.ready, "{}", c.name),
                (Some(part), Some(reason)) => {
                    assert!(reason.contains(part), "{}: {reason:?} lacks {part:?}", c.name);
                    assert!(!derived.status.ready, "{}", c.name);
                    assert!(!reason.contains('\n'), "{}: one line", c.name);
                }
                (expected, got) => unreachable!("{}: expected {expected:?}, got {got:?}", c.name),
            }
        }
    }

    #[test]
    fn replica_positions_and_lag() {
        let probe = Ok(replica_probe(Some("streaming")));
        let upstream = upstream();
        let obs = Observation {
            pod_name: "orders-2",
            data: &REPLICA,
            phase: &running(),
            restarts: 3,
            probe: Some(&probe),
            upstream: upstream.as_ref(),
            control: None,
            bootstrapping: false,
            shutting_down: false,
            backup: None,
            restorable: None,
            marker_problem: None,
        };
        let status = derive(&obs).status;
        assert_eq!(status.received_lsn, Some(lsn("0/5000000")));
        assert_eq!(status.replayed_lsn, Some(lsn("0/4000000")));
        assert_eq!(status.current_lsn, Some(lsn("0/4000000")));
        // latest_end_lsn (0/6000000) is ahead of what was received: lag counts from it.
        assert_eq!(status.lag_bytes, Some(0x0200_0000));
        assert_eq!(status.timeline, Some(3));
        assert_eq!(status.primary_host.as_deref(), Some("orders-rw"));
        assert_eq!(status.restarts, 3);
        assert!(status.streaming && status.ready);
    }

    #[test]
    fn lag_uses_received_when_the_primary_reported_nothing_newer() {
        let mut probe = replica_probe(Some("streaming"));
        probe.latest_end_lsn = None;
        let probe = Ok(probe);
        let obs = Observation {
            pod_name: "orders-2",
            data: &REPLICA,
            phase: &running(),
            restarts: 0,
            probe: Some(&probe),
            upstream: None,
            control: None,
            bootstrapping: false,
            shutting_down: false,
            backup: None,
            restorable: None,
            marker_problem: None,
        };
        assert_eq!(derive(&obs).status.lag_bytes, Some(0x0100_0000));
    }

    #[test]
    fn primary_positions_and_json_shape() {
        let probe = Ok(primary_probe());
        let upstream = upstream();
        let obs = Observation {
            pod_name: "orders-0",
            data: &PRIMARY,
            phase: &running(),
            restarts: 0,
            probe: Some(&probe),
            upstream: upstream.as_ref(),
            control: None,
            bootstrapping: false,
            shutting_down: false,
            backup: None,
            restorable: None,
            marker_problem: None,
        };
        let status = derive(&obs).status;
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "podName": "orders-0", "role": "primary", "postmaster": "running", "ready": true,
                "timeline": 2, "systemIdentifier": "42", "currentLsn": "0/3000060",
                "receivedLsn": null, "replayedLsn": null, "lagBytes": null, "streaming": false,
                "primaryHost": null, "restarts": 0, "pendingRestart": false
            })
        );
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn a_stopped_instance_reports_pg_controldata() {
        let control = ControlData {
            system_identifier: Some("42".into()),
            timeline: Some(4),
            state: Some("shut down".into()),
            ..ControlData::default()
        };
        let obs = Observation {
            pod_name: "orders-0",
            data: &PRIMARY,
            phase: &Phase::Stopped,
            restarts: 0,
            probe: None,
            upstream: None,
            control: Some(&control),
            bootstrapping: false,
            shutting_down: false,
            backup: None,
            restorable: None,
            marker_problem: None,
        };
        let status = derive(&obs).status;
        assert_eq!((status.timeline, status.system_identifier.as_deref()), (Some(4), Some("42")));
        assert_eq!(status.current_lsn, None);
    }

    fn observe<'a>(
        data: &'a DataDir,
        phase: &'a Phase,
        probe: Option<&'a Result<Probe, ProbeError>>,
    ) -> Observation<'a> {
        Observation {
            pod_name: "orders-1",
            data,
            phase,
            restarts: 0,
            probe,
            upstream: None,
            control: None,
            bootstrapping: false,
            shutting_down: false,
            backup: None,
            restorable: None,
            marker_problem: None,
        }
    }

    fn backup(mode: BackupMode) -> BackupInProgress {
        BackupInProgress {
            mode,
            label: "orders-202501010200".into(),
            since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2025-01-01T02:00:00Z".parse().unwrap()),
        }
    }

    #[test]
    fn a_cold_backup_fences_a_replica_that_keeps_its_role() {
        let cold = backup(BackupMode::Cold);
        let derived = derive(&Observation { backup: Some(&cold), ..observe(&REPLICA, &Phase::Stopped, None) });
        assert_eq!((derived.status.role, derived.status.postmaster), (Role::Replica, Postmaster::Stopped));
        assert!(!derived.status.ready);
        let reason = derived.not_ready.unwrap();
        assert!(reason.contains("cold backup orders-202501010200") && reason.contains("/backup/stop"), "{reason}");
        let json = serde_json::to_value(&derived.status).unwrap();
        assert_eq!(
            json["backup"],
            serde_json::json!({"mode":"cold","label":"orders-202501010200","since":"2025-01-01T02:00:00Z"})
        );

        // A hot backup changes nothing but the field.
        let hot = backup(BackupMode::Hot);
        let probe = Ok(primary_probe());
        let derived = derive(&Observation { backup: Some(&hot), ..observe(&PRIMARY, &running(), Some(&probe)) });
        assert_eq!(derived.status.role, Role::Primary);
        assert!(derived.status.ready, "{:?}", derived.not_ready);
        assert_eq!(derived.status.backup.map(|b| b.mode), Some(BackupMode::Hot));
        // Without a backup the field is absent, not null.
        let derived = derive(&observe(&PRIMARY, &running(), Some(&probe)));
        assert!(serde_json::to_value(&derived.status).unwrap().get("backup").is_none());
    }

    #[test]
    fn restored_data_waits_for_a_restore_and_an_unreadable_marker_stops_everything() {
        let marker = BackupMarker {
            label: "orders-202501010200".into(),
            mode: BackupMode::Cold,
            namespace: "shop".into(),
            pod: "orders-2".into(),
            system_identifier: "42".into(),
            begin_lsn: "0/6000110".parse().unwrap(),
            created_at: backup(BackupMode::Cold).since,
        };
        let derived = derive(&Observation { restorable: Some(&marker), ..observe(&REPLICA, &Phase::Stopped, None) });
        assert_eq!((derived.status.role, derived.status.postmaster), (Role::Bootstrapping, Postmaster::Stopped));
        let reason = derived.not_ready.unwrap();
        assert!(reason.contains("restored from backup orders-202501010200 of shop/orders-2"), "{reason}");
        assert!(reason.contains(r#"{"mode":"restore"}"#), "{reason}");
        assert_eq!(derived.status.restorable.as_ref(), Some(&marker));

        let derived =
            derive(&Observation { marker_problem: Some("bad json"), ..observe(&PRIMARY, &Phase::Stopped, None) });
        assert_eq!(derived.status.role, Role::Stopped);
        assert!(derived.not_ready.unwrap().contains("cannot be read (bad json)"));
    }

    #[test]
    fn liveness_fails_only_after_giving_up() {
        assert!(liveness(&Phase::Stopped).is_ok());
        assert!(liveness(&Phase::Running { pid: 1 }).is_ok());
        assert!(liveness(&Phase::Restarting { attempt: 1, last_exit: "x".into() }).is_ok());
        let err = liveness(&Phase::GaveUp { attempts: 3, last_exit: "exit code 1".into() }).unwrap_err();
        assert!(err.contains("3 times") && err.contains("exit code 1"), "{err}");
    }
}
