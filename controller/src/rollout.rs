//! Role-aware rolling updates: which pod to restart next, if any.
//!
//! The StatefulSet uses `updateStrategy: OnDelete`, so a new pod template
//! (image, resources, parameters) reaches a pod only when the controller
//! deletes it and the StatefulSet recreates it on the new revision, on the
//! same volume. The controller restarts one pod at a time: replicas first,
//! from the highest ordinal, each only once every instance is ready and every
//! replica streams again; the primary last, so it restarts once, when every
//! replica already runs the new revision. By default
//! (`primaryUpdateMethod: switchover`) the primary role first moves to the
//! most advanced updated replica by a switchover, so the old primary restarts
//! as a replica and clients see a handover instead of a restart; with
//! `restart` the primary restarts in place. With `primaryUpdateStrategy:
//! supervised` it stops before the primary until the user approves.

/// One instance as the rollout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub pod: String,
    pub ordinal: i32,
    /// The pod's `controller-revision-hash` label.
    pub revision: Option<String>,
    /// The pod is Ready and, for a replica, streaming.
    pub serving: bool,
    pub primary: bool,
    /// How much WAL it has replayed (a replica) or written (the primary).
    pub position: u64,
}

/// How the primary takes the update revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryUpdate<'a> {
    /// `primaryUpdateStrategy: supervised`.
    pub supervised: bool,
    /// The revision the user approved with [`APPROVE_PRIMARY_UPDATE`].
    pub approved: Option<&'a str>,
    /// `primaryUpdateMethod: switchover` (else `restart`).
    pub switchover: bool,
}

/// The next step of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every pod runs the update revision (or it is not known yet).
    Done,
    /// Wait: restarting now would take a second instance down.
    Wait(String),
    /// Delete this pod so the StatefulSet recreates it on the new revision.
    Restart { pod: String, why: String },
    /// Only the primary is left, and the user must approve its restart.
    AwaitApproval { pod: String },
    /// Only the primary is left: hand its role to `to`, an updated replica,
    /// so that it restarts as a replica afterwards.
    Switchover { from: String, to: String },
}

/// The annotation that approves the restart of the primary in a supervised
/// rollout; its value must be the update revision it approves.
pub const APPROVE_PRIMARY_UPDATE: &str = "stead.dev/approve-primary-update";

/// Decides the next restart for `instances` (one per ordinal that has a pod).
pub fn next(update_revision: Option<&str>, instances: &[Instance], primary_update: PrimaryUpdate<'_>) -> Step {
    let Some(revision) = update_revision else { return Step::Done };
    let outdated: Vec<&Instance> = instances.iter().filter(|i| i.revision.as_deref() != Some(revision)).collect();
    if outdated.is_empty() {
        return Step::Done;
    }
    if let Some(down) = instances.iter().find(|i| !i.serving) {
        return Step::Wait(format!(
            "rolling update: waiting for {} to be ready{} before restarting the next instance ({} of {} to go)",
            down.pod,
            if down.primary { "" } else { " and streaming" },
            outdated.len(),
            instances.len()
        ));
    }
    if let Some(replica) = outdated.iter().filter(|i| !i.primary).max_by_key(|i| i.ordinal) {
        return Step::Restart {
            pod: replica.pod.clone(),
            why: format!(
                "replica {} runs an old revision; replicas restart first, from the highest ordinal",
                replica.pod
            ),
        };
    }
    let Some(primary) = outdated.iter().find(|i| i.primary) else { return Step::Done };
    if primary_update.supervised && primary_update.approved != Some(revision) {
        return Step::AwaitApproval { pod: primary.pod.clone() };
    }
    let updated = instances.iter().filter(|i| !i.primary && i.revision.as_deref() == Some(revision));
    let most_advanced = updated.min_by(|a, b| b.position.cmp(&a.position).then(a.ordinal.cmp(&b.ordinal)));
    if primary_update.switchover
        && let Some(replica) = most_advanced
    {
        return Step::Switchover { from: primary.pod.clone(), to: replica.pod.clone() };
    }
    Step::Restart {
        pod: primary.pod.clone(),
        why: format!(
            "every replica runs revision {revision}; the primary {} restarts last (its clients reconnect)",
            primary.pod
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(ordinal: i32, revision: &str, serving: bool, primary: bool) -> Instance {
        Instance {
            pod: format!("orders-{ordinal}"),
            ordinal,
            revision: Some(revision.to_owned()),
            serving,
            primary,
            position: 100,
        }
    }

    fn at(position: u64, instance: Instance) -> Instance {
        Instance { position, ..instance }
    }

    const RESTART: PrimaryUpdate<'static> = PrimaryUpdate { supervised: false, approved: None, switchover: false };
    const SWITCHOVER: PrimaryUpdate<'static> = PrimaryUpdate { supervised: false, approved: None, switchover: true };
    const SUPERVISED: PrimaryUpdate<'static> = PrimaryUpdate { supervised: true, approved: None, switchover: false };

    fn kind(step: &Step) -> String {
        match step {
            Step::Done => "done".into(),
            Step::Wait(why) => format!("wait: {why}"),
            Step::Restart { pod, .. } => format!("restart {pod}"),
            Step::AwaitApproval { pod } => format!("await approval of {pod}"),
            Step::Switchover { from, to } => format!("switch over from {from} to {to}"),
        }
    }

    #[test]
    fn rollout_table() {
        // (case, instances, how the primary updates, step)
        type Row = (&'static str, Vec<Instance>, PrimaryUpdate<'static>, &'static str);
        let approved = |revision| PrimaryUpdate { approved: Some(revision), ..SUPERVISED };
        let rows: Vec<Row> = vec![
            (
                "all on the new revision",
                vec![instance(0, "new", true, true), instance(1, "new", true, false)],
                SWITCHOVER,
                "done",
            ),
            (
                "replicas first, highest ordinal first",
                vec![instance(0, "old", true, true), instance(1, "old", true, false), instance(2, "old", true, false)],
                SWITCHOVER,
                "restart orders-2",
            ),
            (
                "then the next replica",
                vec![instance(0, "old", true, true), instance(1, "old", true, false), instance(2, "new", true, false)],
                SWITCHOVER,
                "restart orders-1",
            ),
            (
                "never a second instance down",
                vec![instance(0, "old", true, true), instance(1, "old", true, false), instance(2, "new", false, false)],
                SWITCHOVER,
                "wait: rolling update: waiting for orders-2 to be ready and streaming before restarting the next instance (2 of 3 to go)",
            ),
            (
                "the primary last, by restart",
                vec![instance(0, "old", true, true), instance(1, "new", true, false), instance(2, "new", true, false)],
                RESTART,
                "restart orders-0",
            ),
            (
                "the primary last, by switchover to the most advanced updated replica",
                vec![
                    instance(0, "old", true, true),
                    at(90, instance(1, "new", true, false)),
                    at(95, instance(2, "new", true, false)),
                ],
                SWITCHOVER,
                "switch over from orders-0 to orders-2",
            ),
            (
                "switchover: equally advanced replicas, the lowest ordinal",
                vec![instance(0, "old", true, true), instance(1, "new", true, false), instance(2, "new", true, false)],
                SWITCHOVER,
                "switch over from orders-0 to orders-1",
            ),
            (
                "switchover waits for every replica to serve",
                vec![instance(0, "old", true, true), instance(1, "new", true, false), instance(2, "new", false, false)],
                SWITCHOVER,
                "wait: rolling update: waiting for orders-2 to be ready and streaming before restarting the next instance (1 of 3 to go)",
            ),
            (
                "one instance: restart in place whatever the method",
                vec![instance(0, "old", true, true)],
                SWITCHOVER,
                "restart orders-0",
            ),
            (
                "the old primary, a replica after the switchover, restarts next",
                vec![instance(0, "old", true, false), instance(1, "new", true, true)],
                SWITCHOVER,
                "restart orders-0",
            ),
            (
                "the primary is not ordinal 0 after a failover: still last",
                vec![instance(0, "old", true, false), instance(1, "old", true, true)],
                RESTART,
                "restart orders-0",
            ),
            (
                "supervised: stop before the primary",
                vec![instance(0, "old", true, true), instance(1, "new", true, false)],
                SUPERVISED,
                "await approval of orders-0",
            ),
            (
                "supervised: an approval of another revision does not count",
                vec![instance(0, "old", true, true), instance(1, "new", true, false)],
                approved("older"),
                "await approval of orders-0",
            ),
            (
                "supervised and approved for this revision",
                vec![instance(0, "old", true, true), instance(1, "new", true, false)],
                approved("new"),
                "restart orders-0",
            ),
            (
                "supervised, approved, by switchover",
                vec![instance(0, "old", true, true), instance(1, "new", true, false)],
                PrimaryUpdate { switchover: true, ..approved("new") },
                "switch over from orders-0 to orders-1",
            ),
        ];
        for (case, instances, primary_update, want) in rows {
            assert_eq!(kind(&next(Some("new"), &instances, primary_update)), want, "{case}");
        }
        assert_eq!(next(None, &[instance(0, "old", true, true)], SWITCHOVER), Step::Done, "no revision known yet");
    }
}
