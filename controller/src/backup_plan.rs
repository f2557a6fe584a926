//! Backup decisions, free of I/O and with the clock as a parameter: when
//! the schedule wants a backup, which instance is backed up and how, and
//! which backups retention lets go.
//!
//! **How a backup is made consistent.** A backup is one VolumeSnapshot of
//! one instance's data volume (PGDATA, WAL included, on one claim).
//! - A streaming *replica* is backed up **cold**: its instance manager runs a
//!   restartpoint, stops postgres cleanly and keeps it stopped ("fenced")
//!   until the snapshot is cut, then starts it again and it catches up. The
//!   snapshot is a cleanly shut-down data directory: it needs no WAL archive
//!   and no recovery to be consistent, and the primary does no extra work.
//!   The replica is out of `-ro` for the seconds the cut takes.
//! - The *primary* (target `primary`, or no replica streams) is backed up
//!   **hot**: `pg_backup_start(fast)` on a session the instance manager holds,
//!   the snapshot, then `pg_backup_stop`. Postgres serves throughout. Without
//!   a WAL archive the snapshot is made consistent by crash recovery from its
//!   own `pg_control` checkpoint (the snapshot of one volume is atomic, and
//!   `pg_backup_start` forced that checkpoint and full-page writes), which is
//!   what a restore does; `backup_label` is kept as an annotation for a
//!   future WAL archive.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use stead_crds::schedule::Schedule;

use crate::topology::Observed;

/// How a snapshot of one instance is made consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A fenced (cleanly stopped) replica.
    Cold,
    /// `pg_backup_start` / `pg_backup_stop` around the snapshot.
    Hot,
}

/// Which instance to back up for `target` (`prefer-replica` or `primary`):
/// the streaming, ready replica with the least lag (ties: the highest
/// ordinal, so ordinal 0 is disturbed last), else the ready primary.
pub fn choose(target: &str, primary: Option<&str>, instances: &[Observed]) -> Result<(String, Mode), String> {
    if target != stead_crds::backup::TARGET_PRIMARY {
        let replica = instances
            .iter()
            .filter(|i| i.role == "replica" && i.ready && i.streaming && Some(i.pod.as_str()) != primary)
            .min_by(|a, b| {
                let lag = |i: &Observed| i.lag_bytes.unwrap_or(u64::MAX);
                lag(a).cmp(&lag(b)).then_with(|| b.pod.cmp(&a.pod))
            });
        if let Some(replica) = replica {
            return Ok((replica.pod.clone(), Mode::Cold));
        }
    }
    match primary.and_then(|p| instances.iter().find(|i| i.pod == p)) {
        Some(p) if p.role == "primary" && p.ready => Ok((p.pod.clone(), Mode::Hot)),
        _ => Err(match primary {
            Some(p) => format!("neither a streaming replica nor the primary {p} is ready to be backed up"),
            None => "the cluster has no primary yet".to_owned(),
        }),
    }
}

/// What the schedule asks for at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheduled {
    /// Take the backup of `slot` now, named `name`.
    Take { slot: Timestamp, name: String },
    /// Nothing due; the next slot, if the schedule ever fires again.
    Idle { next: Option<Timestamp> },
    /// A slot is due but another backup of the cluster is still running: it
    /// is taken once that one finishes (the slot stays due, so at most one
    /// catch-up backup follows, never a storm).
    Busy { running: String, next: Option<Timestamp> },
    /// `spec.backup.suspend: true`.
    Suspended,
}

/// Decides for a cluster `cluster` whose schedule is `schedule`.
///
/// `since` is `status.lastScheduleTime`, or the cluster's creation before
/// the first scheduled backup: only the latest slot in `(since, now]` is
/// due, however many passed while the controller was away.
pub fn scheduled(
    cluster: &str,
    schedule: &Schedule,
    suspended: bool,
    since: Timestamp,
    now: Timestamp,
    running: Option<&str>,
) -> Scheduled {
    if suspended {
        return Scheduled::Suspended;
    }
    let next = schedule.next_after(now).map(|z| z.timestamp());
    match (schedule.due(since, now), running) {
        (None, _) => Scheduled::Idle { next },
        (Some(_), Some(running)) => Scheduled::Busy { running: running.to_owned(), next },
        (Some(slot), None) => {
            let slot = slot.timestamp();
            Scheduled::Take { slot, name: stead_crds::names::scheduled_backup_name(cluster, slot) }
        }
    }
}

/// One backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub name: String,
    /// `Completed` or `Failed`; backups still under way are never judged.
    pub phase: String,
    /// Made by the scheduler; backups made by hand are never deleted.
    pub scheduled: bool,
    /// When it finished (else when it was created).
    pub at: Timestamp,
}

/// The scheduled backups retention deletes, each with why.
///
/// Completed backups beyond the newest `keep_last` or older than `max_age`
/// go, but never the newest completed one. A failed scheduled backup holds
/// no usable snapshot and goes once a newer backup completed.
pub fn expired(
    backups: &[Kept],
    keep_last: Option<u32>,
    max_age: Option<Duration>,
    now: Timestamp,
) -> Vec<(String, String)> {
    let mut completed: Vec<&Kept> = backups.iter().filter(|b| b.phase == stead_crds::backup::PHASE_COMPLETED).collect();
    completed.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| b.name.cmp(&a.name)));
    let newest = completed.first().map(|b| (b.name.clone(), b.at));
    let mut out = Vec::new();
    for (rank, backup) in completed.iter().enumerate() {
        if rank == 0 || !backup.scheduled {
            continue;
        }
        let age = now.duration_since(backup.at).unsigned_abs();
        if let Some(keep) = keep_last
            && rank >= usize::try_from(keep).unwrap_or(usize::MAX)
        {
            out.push((backup.name.clone(), format!("beyond spec.backup.retention.keepLast ({keep})")));
        } else if let Some(max) = max_age
            && age > max
        {
            out.push((
                backup.name.clone(),
                format!("older than spec.backup.retention.maxAge ({}s; it is {}s old)", max.as_secs(), age.as_secs()),
            ));
        }
    }
    if keep_last.is_some() || max_age.is_some() {
        for failed in backups.iter().filter(|b| b.phase == stead_crds::backup::PHASE_FAILED && b.scheduled) {
            if let Some((name, at)) = &newest
                && *at > failed.at
            {
                out.push((failed.name.clone(), format!("failed, and the newer backup {name} completed")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn observed(ordinal: i32, role: &str, ready: bool, streaming: bool, lag: Option<u64>) -> Observed {
        Observed {
            pod: format!("orders-{ordinal}"),
            role: role.to_owned(),
            ready,
            streaming,
            lag_bytes: lag,
            lsn: None,
            timeline: None,
            problem: None,
            starting: false,
            fenced_for_backup: false,
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn instance_choice_table() {
        let healthy = vec![
            observed(0, "primary", true, false, None),
            observed(1, "replica", true, true, Some(0)),
            observed(2, "replica", true, true, Some(0)),
        ];
        let lagging = vec![
            observed(0, "primary", true, false, None),
            observed(1, "replica", true, true, Some(10)),
            observed(2, "replica", true, true, Some(4096)),
        ];
        let no_replica = vec![observed(0, "primary", true, false, None), observed(1, "stopped", false, false, None)];
        let nothing = vec![observed(0, "unknown", false, false, None)];
        type Row = (&'static str, &'static str, Vec<Observed>, Result<(String, Mode), String>);
        let rows: Vec<Row> = vec![
            (
                "a replica, the highest of equals",
                "prefer-replica",
                healthy.clone(),
                Ok(("orders-2".into(), Mode::Cold)),
            ),
            ("the replica that lags least", "prefer-replica", lagging, Ok(("orders-1".into(), Mode::Cold))),
            (
                "no streaming replica: the primary, hot",
                "prefer-replica",
                no_replica,
                Ok(("orders-0".into(), Mode::Hot)),
            ),
            ("target primary", "primary", healthy, Ok(("orders-0".into(), Mode::Hot))),
            (
                "nothing ready",
                "prefer-replica",
                nothing,
                Err("neither a streaming replica nor the primary orders-0 is ready to be backed up".into()),
            ),
        ];
        for (case, target, instances, want) in rows {
            assert_eq!(choose(target, Some("orders-0"), &instances), want, "{case}");
        }
        assert_eq!(choose("prefer-replica", None, &[]), Err("the cluster has no primary yet".into()));
    }

    #[test]
    fn schedule_table() {
        let daily = Schedule::parse("0 3 * * *", Some("Europe/Berlin")).unwrap();
        let created = at("2026-03-01T00:00:00Z");
        type Row = (&'static str, Timestamp, Timestamp, Option<&'static str>, bool, Scheduled);
        let rows: Vec<Row> = vec![
            (
                "before the first slot",
                created,
                at("2026-03-01T01:00:00Z"),
                None,
                false,
                Scheduled::Idle { next: Some(at("2026-03-01T02:00:00Z")) },
            ),
            (
                "the first slot (03:00 in Berlin is 02:00 UTC in winter)",
                created,
                at("2026-03-01T02:00:30Z"),
                None,
                false,
                Scheduled::Take { slot: at("2026-03-01T02:00:00Z"), name: "orders-202603010200".into() },
            ),
            (
                "served: idle until tomorrow",
                at("2026-03-01T02:00:00Z"),
                at("2026-03-01T09:00:00Z"),
                None,
                false,
                Scheduled::Idle { next: Some(at("2026-03-02T02:00:00Z")) },
            ),
            (
                "ten days of downtime: one catch-up backup, for the latest slot",
                at("2026-03-01T02:00:00Z"),
                at("2026-03-11T12:00:00Z"),
                None,
                false,
                Scheduled::Take { slot: at("2026-03-11T02:00:00Z"), name: "orders-202603110200".into() },
            ),
            (
                "due while another backup runs: later",
                created,
                at("2026-03-01T02:00:30Z"),
                Some("orders-manual"),
                false,
                Scheduled::Busy { running: "orders-manual".into(), next: Some(at("2026-03-02T02:00:00Z")) },
            ),
            ("suspended", created, at("2026-03-01T02:00:30Z"), None, true, Scheduled::Suspended),
        ];
        for (case, since, now, running, suspended, want) in rows {
            assert_eq!(scheduled("orders", &daily, suspended, since, now, running), want, "{case}");
        }
    }

    fn kept(name: &str, phase: &str, scheduled: bool, when: &str) -> Kept {
        Kept { name: name.into(), phase: phase.into(), scheduled, at: at(when) }
    }

    #[test]
    fn retention_table() {
        let now = at("2026-03-10T00:00:00Z");
        let backups = vec![
            kept("b1", "Completed", true, "2026-03-01T00:00:00Z"),
            kept("b2", "Completed", true, "2026-03-05T00:00:00Z"),
            kept("manual", "Completed", false, "2026-03-06T00:00:00Z"),
            kept("b3", "Failed", true, "2026-03-07T00:00:00Z"),
            kept("b4", "Completed", true, "2026-03-09T00:00:00Z"),
            kept("b5", "Running", true, "2026-03-09T12:00:00Z"),
        ];
        let names = |out: Vec<(String, String)>| out.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(
            names(expired(&backups, Some(2), None, now)),
            ["b2", "b1", "b3"],
            "keepLast 2: b4 and manual rank first"
        );
        assert_eq!(
            names(expired(&backups, None, Some(Duration::from_secs(6 * 86400)), now)),
            ["b1", "b3"],
            "maxAge 6d"
        );
        assert!(expired(&backups, None, None, now).is_empty(), "no retention keeps everything");
        // The newest completed backup stays even when it is too old.
        let old = vec![kept("only", "Completed", true, "2025-01-01T00:00:00Z")];
        assert!(expired(&old, Some(0), Some(Duration::from_secs(1)), now).is_empty());
        let (_, why) = expired(&backups, Some(1), None, now).into_iter().next().unwrap();
        assert_eq!(why, "beyond spec.backup.retention.keepLast (1)");
    }
}
