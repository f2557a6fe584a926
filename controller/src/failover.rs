//! When the primary has failed, and whom to promote: a pure function of the
//! members, what the status recorded, the spec's policy and the clock.
//!
//! The primary counts as failing when its instance manager reports postgres
//! not running, or cannot be reached, or its pod is not Ready or is gone.
//! Only once it has been failing for longer than `spec.failoverDelay`
//! (measured from `status.primaryFailingSince`, which the controller records
//! the first time it sees the failure) is a replica promoted: a primary that
//! is merely slow for a poll or two is never replaced.
//!
//! The candidate is the reachable replica that has received the most WAL
//! (ties: the lowest ordinal). It is promoted only when its lag is within
//! `spec.failover.maxLagBytes`, unless the user opted into data loss. One
//! failover at a time: while `status.targetPrimary` differs from
//! `currentPrimary`, the recorded target is promoted again (the promotion is
//! idempotent), never a second candidate.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use stead_crds::instance_api::{Postmaster, Role};

use crate::topology::{Member, Report};

/// What the spec allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub delay: Duration,
    pub max_lag_bytes: i64,
    pub allow_data_loss: bool,
}

/// What the stored status says about the primary.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recorded {
    pub current_primary: Option<String>,
    pub target_primary: Option<String>,
    pub failing_since: Option<Timestamp>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing is recorded yet, or the primary serves: no failover.
    Healthy,
    /// The primary fails, but not for long enough yet; record `since` (the
    /// first time the failure was seen) and wait.
    Failing { since: Timestamp, reason: String },
    /// Promote `target`; the old primary is fenced first.
    Promote { target: String, reason: String },
    /// The primary has failed for longer than the delay but no replica may
    /// be promoted; say why, with the numbers.
    Blocked { since: Timestamp, reason: String },
}

/// Why the member that is the recorded primary does not serve; `None` when it does.
pub fn primary_failure(member: Option<&Member>) -> Option<String> {
    let Some(member) = member else { return Some("its pod does not exist".to_owned()) };
    if member.terminating {
        return Some(format!("pod {} is being deleted", member.pod));
    }
    match &member.report {
        Report::NotAsked => Some(format!("pod {} has no IP address", member.pod)),
        Report::Unreachable(why) => Some(format!("its instance manager does not answer: {why}")),
        Report::Status(status) if status.role != Role::Primary => {
            Some(format!("{} reports itself {}, not primary", member.pod, status.role.as_str()))
        }
        Report::Status(status) if status.postmaster != Postmaster::Running => {
            Some(format!("postgres on {} is {:?}", member.pod, status.postmaster).to_lowercase())
        }
        Report::Status(_) if !member.pod_ready => Some(format!("pod {} is not Ready", member.pod)),
        Report::Status(_) => None,
    }
}

/// Decides for `members` at `now`.
pub fn decide(recorded: &Recorded, members: &[Member], policy: Policy, now: Timestamp) -> Decision {
    let Some(current) = recorded.current_primary.as_deref() else { return Decision::Healthy };
    // A promotion was recorded and may not have finished: carry it out, never pick another.
    if let Some(target) = recorded.target_primary.as_deref().filter(|t| *t != current) {
        return Decision::Promote { target: target.to_owned(), reason: format!("resuming the promotion of {target}") };
    }
    let Some(reason) = primary_failure(members.iter().find(|m| m.pod == current)) else {
        return Decision::Healthy;
    };
    let since = recorded.failing_since.unwrap_or(now);
    let failing_for = now.duration_since(since).unsigned_abs();
    if failing_for < policy.delay {
        return Decision::Failing { since, reason };
    }
    let reason = format!("primary {current} has been failing for {}s: {reason}", failing_for.as_secs());
    match candidate(current, members) {
        None => Decision::Blocked { since, reason: format!("{reason}; no replica answers, so none can be promoted") },
        Some((pod, lag)) => {
            let lag = i64::try_from(lag.unwrap_or(u64::MAX)).unwrap_or(i64::MAX);
            if lag > policy.max_lag_bytes && !policy.allow_data_loss {
                let shown = if lag == i64::MAX { "an unknown number of".to_owned() } else { lag.to_string() };
                Decision::Blocked {
                    since,
                    reason: format!(
                        "{reason}; the most advanced replica, {pod}, lags by {shown} bytes, beyond \
                         spec.failover.maxLagBytes ({}); promoting it would lose committed transactions. Bring the \
                         primary back, or set spec.failover.allowDataLoss: true to promote it anyway",
                        policy.max_lag_bytes
                    ),
                }
            } else {
                Decision::Promote { target: pod, reason }
            }
        }
    }
}

/// The annotation that asks for a switchover to the pod it names.
pub const SWITCHOVER_TO: &str = "stead.dev/switchover-to";

/// Whether a requested switchover to `target` can start now; `Err` says why not.
///
/// Only a healthy primary hands over (a failing one is failover's), and only
/// to a replica that streams from it: the switchover waits until the target
/// has replayed everything the old primary wrote, so no committed row is lost.
pub fn switchover(target: &str, recorded: &Recorded, members: &[Member]) -> Result<(), String> {
    let Some(current) = recorded.current_primary.as_deref() else {
        return Err("no primary is recorded yet".to_owned());
    };
    if target == current {
        return Err(format!("{target} is the primary already"));
    }
    if let Some(reason) = primary_failure(members.iter().find(|m| m.pod == current)) {
        return Err(format!("the primary {current} is failing ({reason}); failover, not switchover, replaces it"));
    }
    let Some(member) = members.iter().find(|m| m.pod == target) else {
        let names: Vec<&str> = members.iter().map(|m| m.pod.as_str()).collect();
        return Err(format!("{target} is not an instance of this cluster; its instances are {}", names.join(", ")));
    };
    match &member.report {
        Report::Status(s) if s.role == Role::Replica && s.streaming && member.pod_ready => Ok(()),
        Report::Status(s) => Err(format!(
            "{target} is {} and {}streaming; only a ready, streaming replica can take over",
            s.role.as_str(),
            if s.streaming { "" } else { "not " }
        )),
        _ => Err(format!("{target} does not answer; only a ready, streaming replica can take over")),
    }
}

/// The reachable replica that received the most WAL (ties: the lowest
/// ordinal), with its lag.
fn candidate(current: &str, members: &[Member]) -> Option<(String, Option<u64>)> {
    members
        .iter()
        .filter(|m| m.pod != current && !m.terminating)
        .filter_map(|m| match &m.report {
            Report::Status(s) if s.role == Role::Replica && s.postmaster == Postmaster::Running => {
                Some((m, s.received_lsn.or(s.replayed_lsn).map_or(0, |l| l.0), s.lag_bytes))
            }
            _ => None,
        })
        .min_by(|(a, a_lsn, _), (b, b_lsn, _)| b_lsn.cmp(a_lsn).then(a.ordinal.cmp(&b.ordinal)))
        .map(|(m, _, lag)| (m.pod.clone(), lag))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use stead_crds::instance_api::{InstanceStatus, Lsn};

    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn status(role: Role, received: u64, lag: Option<u64>) -> InstanceStatus {
        InstanceStatus {
            pod_name: String::new(),
            role,
            postmaster: Postmaster::Running,
            ready: true,
            timeline: Some(1),
            system_identifier: None,
            current_lsn: Some(Lsn(received)),
            received_lsn: (role == Role::Replica).then_some(Lsn(received)),
            replayed_lsn: (role == Role::Replica).then_some(Lsn(received)),
            lag_bytes: lag,
            streaming: role == Role::Replica,
            primary_host: None,
            restarts: 0,
            pending_restart: false,
            backup: None,
            restorable: None,
        }
    }

    fn member(ordinal: i32, report: Report) -> Member {
        Member {
            pod: format!("orders-{ordinal}"),
            ordinal,
            ip: Some(format!("10.0.0.{ordinal}")),
            pod_ready: true,
            terminating: false,
            role_label: None,
            container_problem: None,
            report,
        }
    }

    fn reports(role: Role, received: u64, lag: u64) -> Report {
        Report::Status(Box::new(status(role, received, Some(lag))))
    }

    const POLICY: Policy = Policy { delay: Duration::from_secs(30), max_lag_bytes: 1024, allow_data_loss: false };

    fn recorded(primary: &str, since: Option<i64>) -> Recorded {
        Recorded {
            current_primary: Some(primary.to_owned()),
            target_primary: Some(primary.to_owned()),
            failing_since: since.map(at),
        }
    }

    fn kind(d: &Decision) -> String {
        match d {
            Decision::Healthy => "healthy".into(),
            Decision::Failing { since, .. } => format!("failing since {}", since.as_second() - 1_700_000_000),
            Decision::Promote { target, .. } => format!("promote {target}"),
            Decision::Blocked { .. } => "blocked".into(),
        }
    }

    #[test]
    fn decisions_table() {
        let down = || member(0, Report::Unreachable("connection refused".into()));
        let replica = |i, received, lag| member(i, reports(Role::Replica, received, lag));
        // (case, recorded, members, policy, now, decision)
        type Row = (&'static str, Recorded, Vec<Member>, Policy, i64, &'static str);
        let rows: Vec<Row> = vec![
            (
                "a serving primary is never replaced",
                recorded("orders-0", None),
                vec![member(0, reports(Role::Primary, 100, 0)), replica(1, 100, 0)],
                POLICY,
                0,
                "healthy",
            ),
            (
                "nothing recorded yet: no failover",
                Recorded::default(),
                vec![down(), replica(1, 100, 0)],
                POLICY,
                0,
                "healthy",
            ),
            (
                "first seen failing: the clock starts",
                recorded("orders-0", None),
                vec![down(), replica(1, 100, 0)],
                POLICY,
                5,
                "failing since 5",
            ),
            (
                "within the delay: wait",
                recorded("orders-0", Some(0)),
                vec![down(), replica(1, 100, 0)],
                POLICY,
                29,
                "failing since 0",
            ),
            (
                "past the delay: promote",
                recorded("orders-0", Some(0)),
                vec![down(), replica(1, 100, 0)],
                POLICY,
                30,
                "promote orders-1",
            ),
            (
                "the most advanced replica wins",
                recorded("orders-0", Some(0)),
                vec![down(), replica(1, 100, 10), replica(2, 200, 0)],
                POLICY,
                60,
                "promote orders-2",
            ),
            (
                "a tie goes to the lowest ordinal",
                recorded("orders-0", Some(0)),
                vec![down(), replica(2, 200, 0), replica(1, 200, 0)],
                POLICY,
                60,
                "promote orders-1",
            ),
            (
                "delay 0 fails over at the first failed poll",
                recorded("orders-0", None),
                vec![down(), replica(1, 100, 0)],
                Policy { delay: Duration::ZERO, ..POLICY },
                0,
                "promote orders-1",
            ),
            (
                "beyond the lag bound: blocked",
                recorded("orders-0", Some(0)),
                vec![down(), replica(1, 100, 4096)],
                POLICY,
                60,
                "blocked",
            ),
            (
                "beyond the lag bound with data loss allowed: promoted",
                recorded("orders-0", Some(0)),
                vec![down(), replica(1, 100, 4096)],
                Policy { allow_data_loss: true, ..POLICY },
                60,
                "promote orders-1",
            ),
            (
                "no reachable replica: blocked",
                recorded("orders-0", Some(0)),
                vec![down(), member(1, Report::Unreachable("timeout".into()))],
                POLICY,
                60,
                "blocked",
            ),
            (
                "a recorded promotion resumes after a restart, even if another replica is ahead now",
                Recorded { target_primary: Some("orders-1".into()), ..recorded("orders-0", Some(0)) },
                vec![down(), replica(1, 100, 0), replica(2, 900, 0)],
                POLICY,
                60,
                "promote orders-1",
            ),
            (
                "a primary whose pod is gone fails",
                recorded("orders-0", Some(0)),
                vec![replica(1, 100, 0)],
                POLICY,
                31,
                "promote orders-1",
            ),
            (
                "a primary whose postgres crashed fails",
                recorded("orders-0", Some(0)),
                vec![
                    member(
                        0,
                        Report::Status(Box::new(InstanceStatus {
                            postmaster: Postmaster::Crashed,
                            ..status(Role::Primary, 100, None)
                        })),
                    ),
                    replica(1, 100, 0),
                ],
                POLICY,
                31,
                "promote orders-1",
            ),
        ];
        for (case, recorded, members, policy, now, want) in rows {
            assert_eq!(kind(&decide(&recorded, &members, policy, at(now))), want, "{case}");
        }
    }

    #[test]
    fn switchover_table() {
        let healthy = || member(0, reports(Role::Primary, 100, 0));
        let replica = |i| member(i, reports(Role::Replica, 100, 0));
        type Row = (&'static str, &'static str, Vec<Member>, Result<(), &'static str>);
        let rows: Vec<Row> = vec![
            ("to a streaming replica", "orders-1", vec![healthy(), replica(1)], Ok(())),
            ("to the primary itself", "orders-0", vec![healthy(), replica(1)], Err("orders-0 is the primary already")),
            (
                "to a pod that does not exist",
                "orders-7",
                vec![healthy(), replica(1)],
                Err("orders-7 is not an instance of this cluster; its instances are orders-0, orders-1"),
            ),
            (
                "to a replica that does not stream",
                "orders-1",
                vec![
                    healthy(),
                    member(
                        1,
                        Report::Status(Box::new(InstanceStatus { streaming: false, ..status(Role::Replica, 1, None) })),
                    ),
                ],
                Err("orders-1 is replica and not streaming; only a ready, streaming replica can take over"),
            ),
            (
                "while the primary fails",
                "orders-1",
                vec![member(0, Report::Unreachable("timeout".into())), replica(1)],
                Err(
                    "the primary orders-0 is failing (its instance manager does not answer: timeout); failover, not switchover, replaces it",
                ),
            ),
        ];
        for (case, target, members, want) in rows {
            assert_eq!(
                switchover(target, &recorded("orders-0", None), &members),
                want.map_err(str::to_owned),
                "{case}"
            );
        }
    }

    #[test]
    fn a_blocked_failover_says_why_with_the_numbers() {
        let members =
            [member(0, Report::Unreachable("connection refused".into())), member(1, reports(Role::Replica, 100, 4096))];
        let Decision::Blocked { reason, .. } = decide(&recorded("orders-0", Some(0)), &members, POLICY, at(45)) else {
            panic!("not blocked");
        };
        assert_eq!(
            reason,
            "primary orders-0 has been failing for 45s: its instance manager does not answer: connection refused; the \
             most advanced replica, orders-1, lags by 4096 bytes, beyond spec.failover.maxLagBytes (1024); promoting \
             it would lose committed transactions. Bring the primary back, or set spec.failover.allowDataLoss: true \
             to promote it anyway"
        );
    }
}
