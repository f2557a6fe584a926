//! Re-cloning a broken replica, on request only.
//!
//! `kubectl annotate dbc/orders stead.dev/reclone=orders-1` asks the
//! controller to throw away the volume of `orders-1` and clone it afresh from
//! the primary: its claim and its pod are deleted (each conditional on the
//! uid that was judged), the StatefulSet creates an empty claim and a new pod,
//! and the instance manager on the empty volume is bootstrapped as a replica.
//!
//! Volumes are never deleted automatically; this is the one place where the
//! controller deletes a claim, and only the claim the user named. The
//! primary's claim is never deleted: a request for the primary, or for the
//! pod a failover or switchover is promoting, is refused. A request waits
//! while a promotion is under way or while another instance does not serve,
//! so a re-clone never takes a second instance down.

use crate::topology::Observed;

/// The annotation that asks for a re-clone of the pod it names.
pub const RECLONE: &str = "stead.dev/reclone";

/// What to do about a re-clone request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delete the claim `claim`, then the pod `pod`.
    Reclone { pod: String, claim: String },
    /// Not now; the request stays and is carried out later.
    Wait(String),
    /// Never: say why and remove the request.
    Refuse(String),
}

/// What the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    pub name: &'a str,
    /// The `currentPrimary` and `targetPrimary` of the status.
    pub current_primary: Option<&'a str>,
    pub target_primary: Option<&'a str>,
    /// `status.phase`; anything but `Healthy` is a promotion or a failure under way.
    pub phase: &'a str,
    /// Every instance, by ordinal.
    pub instances: &'a [Observed],
}

/// The name of the data claim of `pod` (the StatefulSet's `data` template).
pub fn claim_of(pod: &str) -> String {
    format!("data-{pod}")
}

/// Decides what to do with a request to re-clone `requested`.
pub fn decide(requested: &str, cluster: Cluster<'_>) -> Decision {
    let names: Vec<&str> = cluster.instances.iter().map(|i| i.pod.as_str()).collect();
    if !names.contains(&requested) {
        return Decision::Refuse(format!(
            "{RECLONE}={requested:?} names no instance of {}; its instances are {}",
            cluster.name,
            names.join(", ")
        ));
    }
    if cluster.current_primary == Some(requested) || cluster.target_primary == Some(requested) {
        return Decision::Refuse(format!(
            "{requested} is the primary, and the primary's volume is never deleted; switch over first \
             (kubectl annotate dbc/{} stead.dev/switchover-to=<replica>), then ask again",
            cluster.name
        ));
    }
    if cluster.phase != "Healthy" {
        return Decision::Wait(format!(
            "re-clone of {requested} waits: the cluster is {} (it clones from a serving primary)",
            cluster.phase
        ));
    }
    let primary_serves = cluster
        .instances
        .iter()
        .any(|i| Some(i.pod.as_str()) == cluster.current_primary && i.role == "primary" && i.ready);
    if !primary_serves {
        return Decision::Wait(format!("re-clone of {requested} waits for a ready primary to clone from"));
    }
    if let Some(down) =
        cluster.instances.iter().find(|i| i.pod != requested && !(i.ready && (i.role == "primary" || i.streaming)))
    {
        return Decision::Wait(format!(
            "re-clone of {requested} waits for {} to be ready and streaming, so that only one instance is down",
            down.pod
        ));
    }
    Decision::Reclone { pod: requested.to_owned(), claim: claim_of(requested) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(ordinal: i32, role: &str, ready: bool, streaming: bool) -> Observed {
        Observed {
            pod: format!("orders-{ordinal}"),
            role: role.to_owned(),
            ready,
            streaming,
            lag_bytes: None,
            lsn: None,
            timeline: None,
            problem: None,
            starting: false,
            fenced_for_backup: false,
        }
    }

    fn healthy() -> Vec<Observed> {
        vec![
            observed(0, "primary", true, false),
            observed(1, "replica", true, true),
            observed(2, "replica", true, true),
        ]
    }

    #[test]
    fn reclone_table() {
        let broken = vec![
            observed(0, "primary", true, false),
            observed(1, "stopped", false, false),
            observed(2, "replica", true, true),
        ];
        let two_down = vec![
            observed(0, "primary", true, false),
            observed(1, "stopped", false, false),
            observed(2, "replica", false, false),
        ];
        let no_primary = vec![
            observed(0, "unknown", false, false),
            observed(1, "stopped", false, false),
            observed(2, "replica", true, true),
        ];
        // (case, request, instances, phase, target primary, decision)
        type Row = (&'static str, &'static str, Vec<Observed>, &'static str, &'static str, Decision);
        let reclone = |pod: &str| Decision::Reclone { pod: pod.to_owned(), claim: format!("data-{pod}") };
        let rows: Vec<Row> = vec![
            ("a healthy replica", "orders-2", healthy(), "Healthy", "orders-0", reclone("orders-2")),
            ("the broken replica itself may be down", "orders-1", broken, "Healthy", "orders-0", reclone("orders-1")),
            (
                "never the primary",
                "orders-0",
                healthy(),
                "Healthy",
                "orders-0",
                Decision::Refuse(
                    "orders-0 is the primary, and the primary's volume is never deleted; switch over first (kubectl \
                     annotate dbc/orders stead.dev/switchover-to=<replica>), then ask again"
                        .to_owned(),
                ),
            ),
            (
                "never the pod being promoted",
                "orders-1",
                healthy(),
                "Switchover",
                "orders-1",
                Decision::Refuse(
                    "orders-1 is the primary, and the primary's volume is never deleted; switch over first (kubectl \
                     annotate dbc/orders stead.dev/switchover-to=<replica>), then ask again"
                        .to_owned(),
                ),
            ),
            (
                "not an instance",
                "orders-7",
                healthy(),
                "Healthy",
                "orders-0",
                Decision::Refuse(
                    "stead.dev/reclone=\"orders-7\" names no instance of orders; its instances are orders-0, \
                     orders-1, orders-2"
                        .to_owned(),
                ),
            ),
            (
                "waits out a failover",
                "orders-2",
                healthy(),
                "FailingOver",
                "orders-0",
                Decision::Wait(
                    "re-clone of orders-2 waits: the cluster is FailingOver (it clones from a serving primary)"
                        .to_owned(),
                ),
            ),
            (
                "waits for a primary to clone from",
                "orders-1",
                no_primary,
                "Healthy",
                "orders-0",
                Decision::Wait("re-clone of orders-1 waits for a ready primary to clone from".to_owned()),
            ),
            (
                "never a second instance down",
                "orders-1",
                two_down,
                "Healthy",
                "orders-0",
                Decision::Wait(
                    "re-clone of orders-1 waits for orders-2 to be ready and streaming, so that only one instance \
                     is down"
                        .to_owned(),
                ),
            ),
        ];
        for (case, request, instances, phase, target, want) in rows {
            let cluster = Cluster {
                name: "orders",
                current_primary: Some("orders-0"),
                target_primary: Some(target),
                phase,
                instances: &instances,
            };
            assert_eq!(decide(request, cluster), want, "{case}");
        }
    }
}
