//! Who is primary, who replicates from whom, and what to ask each instance
//! manager to do next: a pure function of what the pods and their instance
//! managers report.
//!
//! Roles come from the instance managers, never from ordinals alone:
//! ordinal 0 is only where the *first* primary is created. After that the
//! primary is the one recorded in `status.currentPrimary` that still
//! reports itself primary. The pod label `stead.dev/role` carries the
//! decision to the Services (`-rw` selects `primary`, `-ro` selects
//! `replica`), and a pod that is neither the recorded primary nor a healthy
//! replica carries no role label at all, so no client reaches it by role.
//!
//! One decision per call, and only ones that are safe to repeat: a
//! bootstrap is asked for only of an instance that reports itself empty, a
//! repoint only of a replica that streams from the wrong host. A second
//! primary is never labelled primary.

use std::collections::BTreeMap;

use stead_crds::instance_api::{BackupMode, Bootstrap, Demote, InstanceStatus, Postmaster, Role};

/// The label that routes clients by role.
pub const ROLE_LABEL: &str = "stead.dev/role";

/// One ordinal of the cluster, as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The pod name, `<cluster>-<ordinal>`.
    pub pod: String,
    pub ordinal: i32,
    /// The pod's IP, once it has one.
    pub ip: Option<String>,
    /// The pod's Ready condition.
    pub pod_ready: bool,
    /// The pod is being deleted.
    pub terminating: bool,
    /// The current value of the `stead.dev/role` label.
    pub role_label: Option<String>,
    /// What the pod's `database` container is stuck on (CrashLoopBackOff and
    /// the like), as `kubectl describe` would tell it.
    pub container_problem: Option<String>,
    /// What its instance manager answered.
    pub report: Report,
}

/// What one instance manager answered to `GET /status`.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// The pod has no IP yet, or is gone: nothing was asked.
    NotAsked,
    /// It could not be reached, or answered with an error.
    Unreachable(String),
    Status(Box<InstanceStatus>),
}

impl Member {
    fn status(&self) -> Option<&InstanceStatus> {
        match &self.report {
            Report::Status(status) => Some(status),
            _ => None,
        }
    }

    fn reports(&self, role: Role) -> bool {
        self.status().is_some_and(|s| s.role == role)
    }
}

/// An instruction to one instance manager.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `POST /bootstrap`.
    Bootstrap { pod: String, ip: String, request: Bootstrap },
    /// `POST /demote`: stream from the primary at this address (a repoint of a replica).
    Repoint { pod: String, ip: String, request: Demote },
    /// `POST /demote` of an instance that still claims to be primary (the old
    /// primary, back after a failover): rewind it onto the primary and stream.
    Rejoin { pod: String, ip: String, request: Demote },
}

/// The decision for one cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Topology {
    /// The primary to record in `status.currentPrimary`.
    pub current_primary: Option<String>,
    /// Pods whose `stead.dev/role` label must change: `None` removes it.
    pub labels: BTreeMap<String, Option<&'static str>>,
    /// What to ask the instance managers, in order.
    pub calls: Vec<Call>,
    /// What each ordinal is, for `status.instances` and the conditions.
    pub instances: Vec<Observed>,
}

/// One instance as the status reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub pod: String,
    /// What it is in the cluster: `primary`, `replica`, or why it is neither.
    pub role: String,
    pub ready: bool,
    pub streaming: bool,
    pub lag_bytes: Option<u64>,
    pub lsn: Option<String>,
    pub timeline: Option<u32>,
    /// Why it is not serving, for people (`kubectl describe` in one line).
    pub problem: Option<String>,
    /// Its pod is starting: not Ready yet, its manager not answering yet, and
    /// no container stuck. Such an instance is progress, not a problem.
    pub starting: bool,
    /// A replica fenced (stopped) for a cold backup: expected, not a problem.
    pub fenced_for_backup: bool,
}

/// The members of a cluster none of whose pods has an IP yet (nothing to ask).
pub fn members_without_pods(cluster: &str, replicas: i32) -> Vec<Member> {
    (0..replicas)
        .map(|ordinal| Member {
            pod: format!("{cluster}-{ordinal}"),
            ordinal,
            ip: None,
            pod_ready: false,
            terminating: false,
            role_label: None,
            container_problem: None,
            report: Report::NotAsked,
        })
        .collect()
}

/// Decides roles, labels and instance calls for `members` (ordinals
/// `0..replicas`, in order), given the primary recorded so far.
///
/// `port` is the PostgreSQL port replicas stream from.
pub fn decide(recorded_primary: Option<&str>, members: &[Member], port: u16) -> Topology {
    let mut topology = Topology::default();
    let primary = elect(recorded_primary, members);
    topology.current_primary = primary.map(|m| m.pod.clone()).or_else(|| recorded_primary.map(str::to_owned));
    let primary_serving = primary.filter(|m| m.ip.is_some() && m.status().is_some_and(serving));

    for member in members {
        let is_primary = primary.is_some_and(|p| p.pod == member.pod);
        let wanted: Option<&'static str> = if is_primary {
            Some(Role::Primary.as_str())
        } else if member.reports(Role::Replica) && !member.terminating {
            Some(Role::Replica.as_str())
        } else {
            None
        };
        if member.role_label.as_deref() != wanted {
            topology.labels.insert(member.pod.clone(), wanted);
        }
        if let Some(call) = next_call(member, is_primary, recorded_primary.is_none(), primary_serving, port) {
            topology.calls.push(call);
        }
        topology.instances.push(observe(member, is_primary, primary));
    }
    topology
}

/// The primary: the recorded one while it still reports primary; before
/// any is recorded, the one instance that reports primary (a status that
/// was lost), preferring the lowest ordinal. A recorded primary that
/// reports something else is not replaced here: that is a failover.
fn elect<'a>(recorded: Option<&str>, members: &'a [Member]) -> Option<&'a Member> {
    match recorded {
        Some(name) => members.iter().find(|m| m.pod == name && m.reports(Role::Primary)),
        None => members.iter().find(|m| m.reports(Role::Primary)),
    }
}

fn serving(status: &InstanceStatus) -> bool {
    status.role == Role::Primary && status.postmaster == Postmaster::Running && status.ready
}

/// Paces the repoints of `calls` so that at most one instance is down at a
/// time: pointing a replica at another primary restarts its postgres. A
/// replica that streams (from the old primary, now itself a standby that
/// passes WAL on) is repointed only while every other instance that answers
/// is Ready, and only one such replica per pass; one that does not stream
/// serves no fresh reads anyway and is repointed at once. Bootstraps and
/// rejoins are never held back.
pub fn paced(calls: Vec<Call>, members: &[Member]) -> Vec<Call> {
    let streaming = |pod: &str| members.iter().any(|m| m.pod == pod && m.status().is_some_and(|s| s.streaming));
    // An instance that answers as primary or replica but is not Ready yet is
    // coming back (the old primary restarting as a replica): wait for it. One
    // that does not answer is down for another reason, and waiting for it
    // could wait for ever.
    let others_ready = |pod: &str| {
        members
            .iter()
            .filter(|m| m.pod != pod && (m.reports(Role::Primary) || m.reports(Role::Replica)))
            .all(|m| m.pod_ready)
    };
    let mut repointed = false;
    calls
        .into_iter()
        .filter(|call| match call {
            Call::Repoint { pod, .. } if streaming(pod) => {
                let go = !repointed && others_ready(pod);
                repointed |= go;
                go
            }
            _ => true,
        })
        .collect()
}

/// What to ask `member` next, if anything.
fn next_call(
    member: &Member,
    is_primary: bool,
    first_primary: bool,
    primary: Option<&Member>,
    port: u16,
) -> Option<Call> {
    let (ip, status) = (member.ip.clone()?, member.status()?);
    if member.terminating {
        return None;
    }
    match status.role {
        // The very first primary is created on ordinal 0, once, while no
        // instance anywhere reports data of its own.
        // Data restored from a backup (spec.bootstrap.fromBackup) starts as
        // that first primary instead; it is never overwritten by a clone.
        Role::Bootstrapping if status.restorable.is_some() => (first_primary
            && member.ordinal == 0
            && primary.is_none())
        .then(|| Call::Bootstrap { pod: member.pod.clone(), ip, request: Bootstrap::Restore }),
        Role::Bootstrapping if first_primary && member.ordinal == 0 && primary.is_none() => {
            Some(Call::Bootstrap { pod: member.pod.clone(), ip, request: Bootstrap::Initdb })
        }
        Role::Bootstrapping if !is_primary => {
            let source = primary?.ip.clone()?;
            Some(Call::Bootstrap {
                pod: member.pod.clone(),
                ip,
                request: Bootstrap::Clone { primary_host: Some(source), primary_port: Some(port) },
            })
        }
        Role::Replica => {
            let source = primary?.ip.clone()?;
            (status.primary_host.as_deref() != Some(source.as_str())).then(|| Call::Repoint {
                pod: member.pod.clone(),
                ip,
                request: Demote { primary_host: Some(source), primary_port: Some(port) },
            })
        }
        // A second primary (the old one, back after a failover) while the
        // recorded one serves: it is rewound onto the primary and streams.
        Role::Primary if !is_primary => {
            let source = primary?.ip.clone()?;
            Some(Call::Rejoin {
                pod: member.pod.clone(),
                ip,
                request: Demote { primary_host: Some(source), primary_port: Some(port) },
            })
        }
        _ => None,
    }
}

fn observe(member: &Member, is_primary: bool, primary: Option<&Member>) -> Observed {
    let status = member.status();
    let (role, problem) = match (&member.report, status) {
        _ if member.terminating => ("terminating".to_owned(), Some("the pod is being deleted".to_owned())),
        (Report::NotAsked, _) => ("pending".to_owned(), Some("the pod has no IP address yet".to_owned())),
        (Report::Unreachable(why), _) => ("unknown".to_owned(), Some(why.clone())),
        (_, Some(s)) if s.role == Role::Primary && !is_primary => (
            "fenced".to_owned(),
            Some(format!(
                "reports itself primary, but {} is the primary; it gets no role label until it is demoted",
                primary.map_or("another instance", |p| p.pod.as_str())
            )),
        ),
        (_, Some(s)) => {
            let problem = match s.role {
                Role::Bootstrapping => Some("waiting for its data (initdb or a copy of the primary)".to_owned()),
                Role::Stopped => Some("postgres is stopped".to_owned()),
                Role::Replica if s.backup.as_ref().is_some_and(|b| b.mode == BackupMode::Cold) => Some(format!(
                    "fenced for the cold backup {}: postgres is stopped until its snapshot is cut",
                    s.backup.as_ref().map_or("?", |b| b.label.as_str())
                )),
                Role::Replica if !s.streaming => Some("not streaming from the primary".to_owned()),
                _ if s.postmaster == Postmaster::Crashed => {
                    Some(format!("postgres crashed {} times and is no longer restarted", s.restarts))
                }
                _ => None,
            };
            (s.role.as_str().to_owned(), problem)
        }
        (_, None) => ("unknown".to_owned(), None),
    };
    let problem = member.container_problem.clone().or(problem);
    Observed {
        pod: member.pod.clone(),
        role,
        ready: member.pod_ready && status.is_some_and(|s| s.ready),
        streaming: status.is_some_and(|s| s.streaming),
        lag_bytes: status.and_then(|s| s.lag_bytes),
        lsn: status.and_then(|s| s.current_lsn).map(|l| l.to_string()),
        timeline: status.and_then(|s| s.timeline),
        problem,
        starting: matches!(member.report, Report::Unreachable(_))
            && !member.pod_ready
            && member.container_problem.is_none()
            && !member.terminating,
        fenced_for_backup: status.and_then(|s| s.backup.as_ref()).is_some_and(|b| b.mode == BackupMode::Cold),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use stead_crds::instance_api::Lsn;

    use super::*;

    fn status(role: Role) -> InstanceStatus {
        InstanceStatus {
            pod_name: String::new(),
            role,
            postmaster: if role == Role::Bootstrapping { Postmaster::Stopped } else { Postmaster::Running },
            ready: role != Role::Bootstrapping,
            timeline: Some(1),
            system_identifier: Some("7300000000000000001".into()),
            current_lsn: Some(Lsn(0x0300_0060)),
            received_lsn: None,
            replayed_lsn: None,
            lag_bytes: (role == Role::Replica).then_some(0),
            streaming: role == Role::Replica,
            primary_host: (role == Role::Replica).then(|| "10.0.0.10".to_owned()),
            restarts: 0,
            pending_restart: false,
            backup: None,
            restorable: None,
        }
    }

    fn member(ordinal: i32, report: Report, label: Option<&str>) -> Member {
        Member {
            pod: format!("orders-{ordinal}"),
            ordinal,
            ip: (!matches!(report, Report::NotAsked)).then(|| format!("10.0.0.{}", 10 + ordinal)),
            pod_ready: matches!(&report, Report::Status(s) if s.ready),
            terminating: false,
            role_label: label.map(str::to_owned),
            container_problem: None,
            report,
        }
    }

    fn reports(role: Role) -> Report {
        Report::Status(Box::new(status(role)))
    }

    fn replica_of(host: &str, streaming: bool) -> Report {
        Report::Status(Box::new(InstanceStatus {
            primary_host: Some(host.to_owned()),
            streaming,
            ready: streaming,
            ..status(Role::Replica)
        }))
    }

    #[test]
    fn a_new_cluster_initialises_ordinal_0_and_clones_the_rest_from_it() {
        // Nothing has data: only ordinal 0 is initialised, the others wait for a primary.
        let empty = [0, 1, 2].map(|i| member(i, reports(Role::Bootstrapping), None));
        let t = decide(None, &empty, 5432);
        assert_eq!(
            t.calls,
            vec![Call::Bootstrap { pod: "orders-0".into(), ip: "10.0.0.10".into(), request: Bootstrap::Initdb }]
        );
        assert_eq!(t.current_primary, None);
        assert!(t.labels.is_empty());

        // Ordinal 0 is primary and serving: the others clone from its address.
        let first = [member(0, reports(Role::Primary), None), member(1, reports(Role::Bootstrapping), None)];
        let t = decide(None, &first, 5432);
        assert_eq!(t.current_primary.as_deref(), Some("orders-0"));
        assert_eq!(t.labels, BTreeMap::from([("orders-0".to_owned(), Some("primary"))]));
        assert_eq!(
            t.calls,
            vec![Call::Bootstrap {
                pod: "orders-1".into(),
                ip: "10.0.0.11".into(),
                request: Bootstrap::Clone { primary_host: Some("10.0.0.10".into()), primary_port: Some(5432) },
            }]
        );
    }

    #[test]
    fn repoints_of_streaming_replicas_go_one_at_a_time_while_the_others_are_ready() {
        let repoint = |ordinal: i32| Call::Repoint {
            pod: format!("orders-{ordinal}"),
            ip: format!("10.0.0.{}", 10 + ordinal),
            request: Demote { primary_host: Some("10.0.0.11".into()), primary_port: Some(5432) },
        };
        let lost = || Report::Status(Box::new(InstanceStatus { streaming: false, ..status(Role::Replica) }));
        let calls = vec![repoint(0), repoint(2)];
        // Both stream (from the old primary, a standby now): one at a time.
        let all_ready = [
            member(0, replica_of("10.0.0.10", true), Some("replica")),
            member(1, reports(Role::Primary), Some("primary")),
            member(2, replica_of("10.0.0.10", true), Some("replica")),
        ];
        assert_eq!(paced(calls.clone(), &all_ready), vec![repoint(0)]);
        // The old primary restarting as a replica is not Ready yet: wait.
        let mut restarting = all_ready.clone();
        restarting[0].pod_ready = false;
        assert_eq!(paced(vec![repoint(2)], &restarting), vec![]);
        // The old primary does not answer (it failed): it holds nothing back.
        let mut failed = all_ready;
        failed[0] = member(0, Report::Unreachable("connection refused".into()), None);
        failed[0].pod_ready = false;
        assert_eq!(paced(vec![repoint(2)], &failed), vec![repoint(2)]);
        // A replica that lost its upstream (after a failover) is repointed at once, all of them.
        let orphaned = [
            member(0, lost(), Some("replica")),
            member(1, reports(Role::Primary), Some("primary")),
            member(2, lost(), Some("replica")),
        ];
        assert_eq!(paced(calls, &orphaned), vec![repoint(0), repoint(2)]);
    }

    #[test]
    fn restored_data_starts_as_the_first_primary_and_is_never_cloned_over() {
        let marker = stead_crds::instance_api::BackupMarker {
            label: "orders-202603010200".into(),
            mode: stead_crds::instance_api::BackupMode::Cold,
            namespace: "shop".into(),
            pod: "orders-2".into(),
            system_identifier: "7000000000000000001".into(),
            begin_lsn: Lsn(0x0300_0060),
            created_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-03-01T02:00:00Z".parse().unwrap()),
        };
        let restored = || {
            Report::Status(Box::new(InstanceStatus { restorable: Some(marker.clone()), ..status(Role::Bootstrapping) }))
        };
        let members = [member(0, restored(), None), member(1, reports(Role::Bootstrapping), None)];
        let t = decide(None, &members, 5432);
        assert_eq!(
            t.calls,
            vec![Call::Bootstrap { pod: "orders-0".into(), ip: "10.0.0.10".into(), request: Bootstrap::Restore }]
        );
        // Restored data on another ordinal, with a primary serving: left alone, never cloned over.
        let members = [member(0, reports(Role::Primary), None), member(1, restored(), None)];
        assert!(decide(None, &members, 5432).calls.is_empty());
    }

    #[test]
    fn decisions_table() {
        struct Row {
            case: &'static str,
            recorded: Option<&'static str>,
            members: Vec<Member>,
            primary: Option<&'static str>,
            labels: Vec<(&'static str, Option<&'static str>)>,
            calls: Vec<&'static str>,
        }
        let call_names = |t: &Topology| -> Vec<String> {
            t.calls
                .iter()
                .map(|c| match c {
                    Call::Bootstrap { pod, request, .. } => format!("{} {pod}", request.name()),
                    Call::Repoint { pod, request, .. } => {
                        format!("repoint {pod} to {}", request.primary_host.as_deref().unwrap_or("?"))
                    }
                    Call::Rejoin { pod, request, .. } => {
                        format!("rejoin {pod} to {}", request.primary_host.as_deref().unwrap_or("?"))
                    }
                })
                .collect()
        };
        let rows = vec![
            Row {
                case: "steady: labels match, replicas stream from the primary: nothing to do",
                recorded: Some("orders-0"),
                members: vec![
                    member(0, reports(Role::Primary), Some("primary")),
                    member(1, replica_of("10.0.0.10", true), Some("replica")),
                    member(2, replica_of("10.0.0.10", true), Some("replica")),
                ],
                primary: Some("orders-0"),
                labels: vec![],
                calls: vec![],
            },
            Row {
                case: "the primary is not ordinal 0 after a failover; roles follow the reports",
                recorded: Some("orders-2"),
                members: vec![
                    member(0, replica_of("10.0.0.12", true), Some("primary")),
                    member(1, replica_of("10.0.0.10", false), Some("replica")),
                    member(2, reports(Role::Primary), Some("replica")),
                ],
                primary: Some("orders-2"),
                labels: vec![("orders-0", Some("replica")), ("orders-2", Some("primary"))],
                calls: vec!["repoint orders-1 to 10.0.0.12"],
            },
            Row {
                case: "two report primary: only the recorded one is labelled, the other loses its label and rejoins",
                recorded: Some("orders-1"),
                members: vec![
                    member(0, reports(Role::Primary), Some("primary")),
                    member(1, reports(Role::Primary), Some("primary")),
                ],
                primary: Some("orders-1"),
                labels: vec![("orders-0", None)],
                calls: vec!["rejoin orders-0 to 10.0.0.11"],
            },
            Row {
                case: "the recorded primary is unreachable: nobody is promoted here, nobody is labelled primary",
                recorded: Some("orders-0"),
                members: vec![
                    member(0, Report::Unreachable("connection refused".into()), Some("primary")),
                    member(1, replica_of("10.0.0.10", false), Some("replica")),
                ],
                primary: Some("orders-0"),
                labels: vec![("orders-0", None)],
                calls: vec![],
            },
            Row {
                case: "a recorded primary never becomes initdb's target again, even when its volume is empty",
                recorded: Some("orders-0"),
                members: vec![
                    member(0, reports(Role::Bootstrapping), Some("primary")),
                    member(1, replica_of("10.0.0.10", false), Some("replica")),
                ],
                primary: Some("orders-0"),
                labels: vec![("orders-0", None)],
                calls: vec![],
            },
            Row {
                case: "a pod without an IP is not asked, and clones wait for a serving primary",
                recorded: None,
                members: vec![member(0, Report::NotAsked, None), member(1, reports(Role::Bootstrapping), None)],
                primary: None,
                labels: vec![],
                calls: vec![],
            },
            Row {
                case: "an instance with data of its own when none was recorded is adopted, not initialised over",
                recorded: None,
                members: vec![member(0, reports(Role::Bootstrapping), None), member(1, reports(Role::Primary), None)],
                primary: Some("orders-1"),
                labels: vec![("orders-1", Some("primary"))],
                calls: vec!["clone orders-0"],
            },
        ];
        for row in rows {
            let t = decide(row.recorded, &row.members, 5432);
            assert_eq!(t.current_primary.as_deref(), row.primary, "{}", row.case);
            let labels: BTreeMap<String, Option<&str>> =
                row.labels.into_iter().map(|(p, l)| (p.to_owned(), l)).collect();
            assert_eq!(t.labels, labels, "{}", row.case);
            assert_eq!(call_names(&t), row.calls, "{}", row.case);
        }
    }

    #[test]
    fn a_stuck_container_is_reported_as_the_kubelet_says_it() {
        let mut looping = member(1, Report::Unreachable("connection refused".into()), Some("replica"));
        looping.container_problem = Some(
            "CrashLoopBackOff: back-off 40s restarting failed container; last exit code 1 (Error); 4 restarts".into(),
        );
        let t = decide(Some("orders-0"), &[member(0, reports(Role::Primary), Some("primary")), looping], 5432);
        assert_eq!(
            t.instances[1].problem.as_deref(),
            Some("CrashLoopBackOff: back-off 40s restarting failed container; last exit code 1 (Error); 4 restarts")
        );
        assert_eq!(t.labels, BTreeMap::from([("orders-1".to_owned(), None)]), "out of -ro while it does not answer");
    }

    #[test]
    fn the_status_says_why_an_instance_does_not_serve() {
        let members = [
            member(0, reports(Role::Primary), Some("primary")),
            member(1, replica_of("10.0.0.10", false), Some("replica")),
            member(2, Report::Unreachable("GET https://10.0.0.12:8000/status: connection refused".into()), None),
        ];
        let t = decide(Some("orders-0"), &members, 5432);
        let rows: Vec<(&str, &str, bool, Option<&str>)> =
            t.instances.iter().map(|i| (i.pod.as_str(), i.role.as_str(), i.ready, i.problem.as_deref())).collect();
        assert_eq!(
            rows,
            vec![
                ("orders-0", "primary", true, None),
                ("orders-1", "replica", false, Some("not streaming from the primary")),
                ("orders-2", "unknown", false, Some("GET https://10.0.0.12:8000/status: connection refused")),
            ]
        );
        assert_eq!(t.instances[0].lsn.as_deref(), Some("0/3000060"));
    }
}
