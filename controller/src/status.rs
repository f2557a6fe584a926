//! Pure computation of a cluster's `.status` from what the controller saw.
//!
//! Conditions follow the Deployment vocabulary (Available, Progressing,
//! Degraded). Each is proposed afresh on every reconcile, then merged with the
//! stored ones so that `lastTransitionTime` moves only when a condition's
//! status flips. The result is compared with the stored status and written
//! only when different, which keeps the steady state free of writes.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use stead_crds::names::selector_string;
use stead_crds::{DatabaseCluster, DatabaseClusterStatus, Endpoints, InstanceReport, Verdict};

use crate::children::ChildKind;
use crate::replication::FailoverState;
use crate::topology::Topology;

use crate::error::Error;

/// Condition types, in the order they are listed.
pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const REPLICATION_HEALTHY: &str = "ReplicationHealthy";

/// Reason of Degraded=True when a child's name is taken by an object stead did not create.
pub const FOREIGN_CHILD: &str = "ForeignChild";
/// Reason of Degraded=True for every other failure.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

/// Message of Progressing=False/Paused.
pub const PAUSED_MESSAGE: &str = "reconciliation is paused (spec.paused=true); children are left as they are";

/// Longest condition message the API accepts.
const MAX_MESSAGE: usize = 32 * 1024;

/// What the reconcile did with the children, as far as the status is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Children were checked (and applied where needed), or left alone because paused.
    Reconciled,
    /// The spec breaks the admission rules; no child was touched.
    Invalid(&'a Verdict),
    /// Applying the children failed; the error gives the reason and the message.
    Failed(&'a Error),
}

/// The status the cluster should have now.
///
/// `now` is truncated to whole seconds, the precision `metav1.Time` is
/// stored with, so a status read back compares equal to the one written.
/// `credentials` is the Secret this reconcile ensured; when `None`, the one
/// the stored status names (if any) is kept: the Secret outlives everything.
pub fn compute_status(
    cluster: &DatabaseCluster,
    sts: Option<&StatefulSet>,
    outcome: Outcome<'_>,
    now: Timestamp,
    credentials: Option<&str>,
    replication: Option<&Replication<'_>>,
) -> DatabaseClusterStatus {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let observed = Observed::of(sts);
    let health = replication.map(|r| ReplicationHealth::of(r, cluster.spec.max_lag_bytes()));
    let mut proposed = vec![
        available(name, &observed, outcome, health.as_ref()),
        progressing(cluster, name, &observed, outcome, health.as_ref()),
        degraded(outcome, health.as_ref()),
    ];
    if let Some(health) = &health {
        proposed.push(replication_healthy(health));
    }
    if let Some((ok, reason, message)) = replication.and_then(|r| r.backups).and_then(|b| b.condition.clone()) {
        proposed.push(self::proposed(stead_crds::cluster::CONDITION_LAST_BACKUP_SUCCEEDED, ok, reason, message));
    }
    let stored = cluster.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    let ours: Vec<&str> = proposed.iter().map(|p| p.type_).collect();
    let mut conditions: Vec<Condition> = proposed.into_iter().map(|p| merge(p, stored, generation, &now)).collect();
    // The status is written as a merge patch, which replaces the whole list:
    // conditions other tools set (e.g. a backup operator) are carried over.
    conditions.extend(stored.iter().filter(|c| !ours.contains(&c.type_.as_str())).cloned());
    DatabaseClusterStatus {
        observed_generation: generation,
        replicas: Some(observed.replicas),
        ready_replicas: Some(observed.ready),
        selector: Some(selector_string(name)),
        conditions,
        credentials_secret: credentials
            .map(str::to_owned)
            .or_else(|| cluster.status.as_ref().and_then(|s| s.credentials_secret.clone())),
        ..replication_status(cluster, replication, health.as_ref())
    }
}

/// What the instance managers reported this reconcile, for the status.
#[derive(Debug, Clone, Copy)]
pub struct Replication<'a> {
    pub topology: &'a Topology,
    /// What failover decided; `None` where it was not asked (tests of roles alone).
    pub failover: Option<&'a FailoverState>,
    /// What a rolling update or a re-clone does or waits for, as the
    /// Progressing reason and message; `None` when there is none.
    pub rollout: Option<(&'static str, &'a str)>,
    /// What the cluster's backups report; `None` keeps what is stored.
    pub backups: Option<&'a crate::backups::BackupReport>,
    /// `<name>` and `<namespace>` for the endpoints' DNS names.
    pub namespace: &'a str,
    pub port: i32,
}

/// Replication as the conditions judge it.
#[derive(Debug, Default)]
struct ReplicationHealth {
    /// What a rolling update or a re-clone does or waits for: reason, message.
    rollout: Option<(&'static str, String)>,
    /// The failover phase when it is not `Healthy`, and why.
    failover: Option<(&'static str, String)>,
    primary: Option<String>,
    primary_ready: bool,
    ready: usize,
    instances: usize,
    /// Replicas past their bootstrap that do not stream, with why.
    not_streaming: Vec<String>,
    /// Replicas streaming beyond the lag bound.
    lagging: Vec<String>,
    /// Instances still getting their data, or without a pod IP yet.
    starting: Vec<String>,
    reports: Vec<InstanceReport>,
}

impl ReplicationHealth {
    fn of(replication: &Replication<'_>, max_lag_bytes: i64) -> Self {
        let topology = replication.topology;
        let mut health = Self { primary: topology.current_primary.clone(), ..Self::default() };
        health.rollout = replication.rollout.map(|(reason, message)| (reason, message.to_owned()));
        health.failover = replication
            .failover
            .filter(|f| f.phase != "Healthy")
            .map(|f| (f.phase, f.reason.clone().unwrap_or_else(|| f.phase.to_owned())));
        health.instances = topology.instances.len();
        for instance in &topology.instances {
            let is_primary = health.primary.as_deref() == Some(instance.pod.as_str()) && instance.role == "primary";
            let lag = instance.lag_bytes.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
            let lagging = lag.is_some_and(|l| l > max_lag_bytes);
            if instance.ready {
                health.ready += 1;
            }
            if is_primary {
                health.primary_ready = instance.ready;
            } else {
                match instance.role.as_str() {
                    "bootstrapping" | "pending" => health.starting.push(instance.pod.clone()),
                    "unknown" if instance.starting => health.starting.push(instance.pod.clone()),
                    "replica" if instance.streaming && lagging => health.lagging.push(format!(
                        "{} lags by {} bytes (spec.replication.maxLagBytes is {max_lag_bytes})",
                        instance.pod,
                        lag.unwrap_or_default()
                    )),
                    "replica" if instance.streaming || instance.fenced_for_backup => {}
                    "unknown" => health.not_streaming.push(format!(
                        "{} does not answer ({})",
                        instance.pod,
                        instance.problem.as_deref().unwrap_or("no status")
                    )),
                    _ => health.not_streaming.push(format!(
                        "{} is not streaming ({})",
                        instance.pod,
                        instance.problem.as_deref().unwrap_or(instance.role.as_str())
                    )),
                }
            }
            let replica = instance.role == "replica";
            health.reports.push(InstanceReport {
                name: instance.pod.clone(),
                role: instance.role.clone(),
                ready: instance.ready,
                streaming: replica.then_some(instance.streaming),
                lagging: replica.then_some(lagging),
                lag_bytes: if replica { lag } else { None },
                lsn: instance.lsn.clone(),
                timeline: instance.timeline,
                message: instance.problem.clone(),
            });
        }
        health
    }

    fn replicas_healthy(&self) -> bool {
        self.not_streaming.is_empty() && self.lagging.is_empty() && self.starting.is_empty()
    }
}

fn replication_status(
    cluster: &DatabaseCluster,
    replication: Option<&Replication<'_>>,
    health: Option<&ReplicationHealth>,
) -> DatabaseClusterStatus {
    let stored = cluster.status.clone().unwrap_or_default();
    let (Some(replication), Some(health)) = (replication, health) else {
        // Nothing was asked this time (paused, invalid, failed early): keep what was known.
        return DatabaseClusterStatus {
            current_primary: stored.current_primary,
            target_primary: stored.target_primary,
            instances: stored.instances,
            endpoints: stored.endpoints,
            phase: stored.phase,
            primary_failing_since: stored.primary_failing_since,
            last_failover_time: stored.last_failover_time,
            failover_count: stored.failover_count,
            last_successful_backup: stored.last_successful_backup,
            last_failed_backup: stored.last_failed_backup,
            next_scheduled_backup: stored.next_scheduled_backup,
            last_schedule_time: stored.last_schedule_time,
            ..DatabaseClusterStatus::default()
        };
    };
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let address = |kind: ChildKind| format!("{}.{}.svc:{}", kind.name(name), replication.namespace, replication.port);
    let failover = replication.failover;
    let time = |t: Option<Timestamp>| t.map(|t| Time(Timestamp::from_second(t.as_second()).unwrap_or(t)));
    DatabaseClusterStatus {
        current_primary: health.primary.clone(),
        target_primary: failover.and_then(|f| f.target_primary.clone()).or_else(|| health.primary.clone()),
        phase: failover.map(|f| f.phase.to_owned()),
        primary_failing_since: time(failover.and_then(|f| f.failing_since)),
        last_failover_time: time(failover.and_then(|f| f.last_failover_time)),
        failover_count: failover.and_then(|f| f.failover_count),
        instances: health.reports.clone(),
        endpoints: Some(Endpoints {
            read_write: address(ChildKind::PrimaryService),
            read_only: address(ChildKind::ReplicaService),
            any: address(ChildKind::AnyService),
        }),
        last_successful_backup: match replication.backups {
            Some(b) => time(b.last_successful),
            None => stored.last_successful_backup,
        },
        last_failed_backup: match replication.backups {
            Some(b) => time(b.last_failed),
            None => stored.last_failed_backup,
        },
        next_scheduled_backup: match replication.backups {
            Some(b) => time(b.next_scheduled),
            None => stored.next_scheduled_backup,
        },
        last_schedule_time: match replication.backups {
            Some(b) => time(b.last_schedule_time),
            None => stored.last_schedule_time,
        },
        ..DatabaseClusterStatus::default()
    }
}

fn replication_healthy(health: &ReplicationHealth) -> Proposed {
    if !health.not_streaming.is_empty() {
        return proposed(REPLICATION_HEALTHY, false, "ReplicaNotStreaming", health.not_streaming.join("; "));
    }
    if !health.lagging.is_empty() {
        return proposed(REPLICATION_HEALTHY, false, "ReplicaLagging", health.lagging.join("; "));
    }
    if !health.starting.is_empty() {
        return proposed(
            REPLICATION_HEALTHY,
            false,
            "ReplicasStarting",
            format!("waiting for {} to get their data", health.starting.join(", ")),
        );
    }
    let replicas = health.instances.saturating_sub(1);
    proposed(
        REPLICATION_HEALTHY,
        true,
        "AllReplicasStreaming",
        format!("{replicas} replica(s) streaming from the primary within the lag bound"),
    )
}

/// Whether `computed` must be written: any difference a user would notice.
///
/// WAL positions and byte lags move with every write to the database; they
/// are carried along when something else changed (a role, readiness, the
/// lag bound being crossed) but never cause a write on their own, so a busy
/// cluster in a steady state still causes no writes.
pub fn needs_write(stored: Option<&DatabaseClusterStatus>, computed: &DatabaseClusterStatus) -> bool {
    let Some(stored) = stored else { return true };
    without_positions(stored) != without_positions(computed)
}

fn without_positions(status: &DatabaseClusterStatus) -> DatabaseClusterStatus {
    let mut status = status.clone();
    for instance in &mut status.instances {
        instance.lsn = None;
        instance.lag_bytes = None;
    }
    status
}

/// The numbers the StatefulSet reports; all zero when it does not exist.
#[derive(Debug, Default)]
struct Observed {
    exists: bool,
    /// `spec.replicas` of the StatefulSet: what it is asked to run.
    want: i32,
    replicas: i32,
    ready: i32,
    updated: i32,
    rolling: bool,
    spec_unobserved: bool,
}

impl Observed {
    fn of(sts: Option<&StatefulSet>) -> Self {
        let Some(sts) = sts else { return Self::default() };
        let want = sts.spec.replicas.unwrap_or(1);
        let status = sts.status.clone().unwrap_or_default();
        // With `OnDelete` (stead's StatefulSets) the StatefulSet controller
        // never moves `currentRevision` to the update revision, even once
        // every pod runs it; only the count of updated pods tells.
        let on_delete = sts.spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()) == Some("OnDelete");
        let rolling = !on_delete
            && matches!(
                (&status.current_revision, &status.update_revision),
                (Some(current), Some(update)) if current != update
            );
        let spec_unobserved = match (sts.metadata.generation, status.observed_generation) {
            (Some(generation), Some(observed)) => observed < generation,
            (Some(_), None) => true,
            _ => false,
        };
        Self {
            exists: true,
            want,
            replicas: status.replicas,
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            rolling,
            spec_unobserved,
        }
    }
}

/// A condition before merging: type, status, reason, message.
pub(crate) struct Proposed {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

pub(crate) fn proposed(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> Proposed {
    Proposed { type_, status, reason, message: message.into() }
}

fn available(name: &str, seen: &Observed, outcome: Outcome<'_>, health: Option<&ReplicationHealth>) -> Proposed {
    if let Some(health) = health {
        let ratio = format!("{}/{} instances ready", health.ready, health.instances);
        return match &health.primary {
            Some(primary) if health.primary_ready => {
                proposed(AVAILABLE, true, "PrimaryReady", format!("{primary} is the primary and ready; {ratio}"))
            }
            Some(primary) => proposed(
                AVAILABLE,
                false,
                "PrimaryNotReady",
                format!("{primary} is the primary but not ready; {ratio}"),
            ),
            None => proposed(AVAILABLE, false, "NoPrimary", format!("no instance is the primary yet; {ratio}")),
        };
    }
    if !seen.exists {
        return match outcome {
            Outcome::Invalid(_) => proposed(
                AVAILABLE,
                false,
                "InvalidSpec",
                "the spec is invalid, so no StatefulSet was created (see the Degraded condition)",
            ),
            _ => proposed(AVAILABLE, false, "StatefulSetMissing", format!("StatefulSet {name} does not exist yet")),
        };
    }
    // Pods that exist keep serving whatever the spec says now; report them.
    let ratio = format!("{}/{} replicas are ready", seen.ready, seen.want);
    if seen.ready >= seen.want {
        proposed(AVAILABLE, true, "AllReplicasReady", ratio)
    } else {
        proposed(AVAILABLE, false, "ReplicasNotReady", ratio)
    }
}

fn progressing(
    cluster: &DatabaseCluster,
    name: &str,
    seen: &Observed,
    outcome: Outcome<'_>,
    health: Option<&ReplicationHealth>,
) -> Proposed {
    if let Outcome::Invalid(_) = outcome {
        return proposed(
            PROGRESSING,
            false,
            "InvalidSpec",
            "reconciliation is stopped until the spec is valid (see the Degraded condition)",
        );
    }
    if cluster.spec.is_paused() {
        return proposed(PROGRESSING, false, "Paused", PAUSED_MESSAGE);
    }
    let reconciling = |message: String| proposed(PROGRESSING, true, "Reconciling", message);
    if !seen.exists {
        return reconciling(format!("creating StatefulSet {name}"));
    }
    if seen.spec_unobserved {
        return reconciling(format!("StatefulSet {name} has not yet observed its latest spec"));
    }
    if seen.replicas != seen.want {
        return reconciling(format!("scaling from {} to {} replicas", seen.replicas, seen.want));
    }
    if let Some((reason, message)) = health.and_then(|h| h.rollout.clone()) {
        return proposed(PROGRESSING, true, reason, message);
    }
    if seen.rolling || seen.updated < seen.want {
        return reconciling(format!("rolling update: {}/{} replicas updated", seen.updated, seen.want));
    }
    if seen.ready < seen.want {
        return reconciling(format!("waiting for replicas to become ready: {}/{} ready", seen.ready, seen.want));
    }
    if let Some(health) = health.filter(|h| !h.starting.is_empty()) {
        return reconciling(format!("waiting for {} to get their data", health.starting.join(", ")));
    }
    proposed(
        PROGRESSING,
        false,
        "Reconciled",
        format!("StatefulSet {name} is up to date with {} ready replicas", seen.ready),
    )
}

fn degraded(outcome: Outcome<'_>, health: Option<&ReplicationHealth>) -> Proposed {
    if let (Outcome::Reconciled, Some(failover)) = (outcome, health.and_then(|h| h.failover.as_ref()))
        && matches!(failover.0, "FailoverBlocked" | "PrimaryFailing" | "FailingOver")
    {
        return proposed(DEGRADED, true, failover.0, failover.1.clone());
    }
    if let (Outcome::Reconciled, Some(health)) = (outcome, health)
        && !health.replicas_healthy()
        && (!health.not_streaming.is_empty() || !health.lagging.is_empty())
    {
        let mut problems = health.not_streaming.clone();
        problems.extend(health.lagging.iter().cloned());
        let reason = if health.not_streaming.is_empty() { "ReplicaLagging" } else { "ReplicaNotStreaming" };
        return proposed(DEGRADED, true, reason, problems.join("; "));
    }
    match outcome {
        Outcome::Invalid(verdict) => {
            let messages: Vec<String> = verdict.errors.iter().map(ToString::to_string).collect();
            proposed(DEGRADED, true, "InvalidSpec", messages.join("; "))
        }
        Outcome::Failed(error) => proposed(DEGRADED, true, error.reason(), error.to_string()),
        Outcome::Reconciled => proposed(DEGRADED, false, "AsExpected", "no problems found"),
    }
}

/// Turns a proposal into a condition, keeping the stored transition time unless the status flipped.
pub(crate) fn merge(p: Proposed, stored: &[Condition], generation: Option<i64>, now: &Time) -> Condition {
    let status = if p.status { "True" } else { "False" };
    let last_transition_time = stored
        .iter()
        .find(|c| c.type_ == p.type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: p.type_.to_owned(),
        status: status.to_owned(),
        reason: p.reason.to_owned(),
        message: truncate(p.message, MAX_MESSAGE),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Shortens `text` to at most `max` bytes, on a character boundary, marking
/// the cut with `...`; the API server refuses longer condition messages and
/// event notes.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use stead_crds::{DatabaseClusterSpec, FieldError, StorageSpec};

    use super::*;

    fn cluster(generation: i64, replicas: i32) -> DatabaseCluster {
        let mut c = DatabaseCluster::new(
            "orders",
            DatabaseClusterSpec {
                image: "postgres:17.2".into(),
                replicas: Some(replicas),
                storage: StorageSpec { size: "10Gi".into(), storage_class_name: None },
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("shop".into());
        c.metadata.generation = Some(generation);
        c
    }

    /// A StatefulSet asked for `want` pods, with the given observed numbers.
    fn sts(want: i32, replicas: i32, ready: i32, updated: i32) -> StatefulSet {
        StatefulSet {
            metadata: kube::api::ObjectMeta { generation: Some(2), ..Default::default() },
            spec: StatefulSetSpec { replicas: Some(want), ..Default::default() },
            status: Some(StatefulSetStatus {
                observed_generation: Some(2),
                replicas,
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                current_revision: Some("r1".into()),
                update_revision: Some("r1".into()),
                ..Default::default()
            }),
        }
    }

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn condition<'a>(status: &'a DatabaseClusterStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    /// (status, reason, message) of one condition.
    fn srm(status: &DatabaseClusterStatus, type_: &str) -> (String, String, String) {
        let c = condition(status, type_);
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn row(s: &str, r: &str, m: &str) -> (String, String, String) {
        (s.to_owned(), r.to_owned(), m.to_owned())
    }

    #[test]
    fn conditions_table() {
        let invalid = Verdict {
            errors: vec![
                FieldError::invalid("spec.storage.size", "10GB", "must be a Kubernetes quantity such as 10Gi"),
                FieldError::invalid("spec.replicas", 12, "must be between 1 and 9, inclusive"),
            ],
            warnings: vec![],
        };
        let rolling = {
            let mut s = sts(3, 3, 3, 1);
            if let Some(st) = s.status.as_mut() {
                st.update_revision = Some("r2".into());
            }
            s
        };
        let on_delete_done = {
            let mut s = sts(3, 3, 3, 3);
            s.spec.update_strategy = Some(k8s_openapi::api::apps::v1::StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            });
            if let Some(st) = s.status.as_mut() {
                st.current_revision = Some("r1".into());
                st.update_revision = Some("r2".into());
            }
            s
        };
        let unobserved = {
            let mut s = sts(3, 3, 3, 3);
            s.metadata.generation = Some(3);
            s
        };
        let mut paused = cluster(4, 3);
        paused.spec.paused = Some(true);
        let invalid_degraded = row(
            "True",
            "InvalidSpec",
            "spec.storage.size: Invalid value: \"10GB\": must be a Kubernetes quantity such as 10Gi; \
             spec.replicas: Invalid value: 12: must be between 1 and 9, inclusive",
        );
        let ok = row("False", "AsExpected", "no problems found");
        let forbidden = Error::kube(
            "apply StatefulSet shop/orders",
            kube::Error::Api(Box::new(
                kube::core::Status::failure("statefulsets.apps \"orders\" is forbidden", "Forbidden").with_code(403),
            )),
        );
        let foreign = Error::ForeignChild {
            kind: "Service",
            namespace: "shop".into(),
            name: "orders".into(),
            owner_kind: crate::apply::OwnerKind::DatabaseCluster,
            owner: "orders".into(),
            found: "it has no controller".into(),
        };
        let done = row("False", "Reconciled", "StatefulSet orders is up to date with 3 ready replicas");
        // (case, cluster, sts, outcome, Available, Progressing, Degraded)
        let rows = [
            (
                "all ready",
                cluster(4, 3),
                Some(sts(3, 3, 3, 3)),
                Outcome::Reconciled,
                row("True", "AllReplicasReady", "3/3 replicas are ready"),
                done.clone(),
                ok.clone(),
            ),
            (
                "one of three ready",
                cluster(4, 3),
                Some(sts(3, 3, 1, 3)),
                Outcome::Reconciled,
                row("False", "ReplicasNotReady", "1/3 replicas are ready"),
                row("True", "Reconciling", "waiting for replicas to become ready: 1/3 ready"),
                ok.clone(),
            ),
            (
                "no StatefulSet yet",
                cluster(1, 3),
                None,
                Outcome::Reconciled,
                row("False", "StatefulSetMissing", "StatefulSet orders does not exist yet"),
                row("True", "Reconciling", "creating StatefulSet orders"),
                ok.clone(),
            ),
            (
                "scaling up",
                cluster(4, 5),
                Some(sts(5, 3, 3, 3)),
                Outcome::Reconciled,
                row("False", "ReplicasNotReady", "3/5 replicas are ready"),
                row("True", "Reconciling", "scaling from 3 to 5 replicas"),
                ok.clone(),
            ),
            (
                "OnDelete: every pod updated, currentRevision left behind by the StatefulSet controller",
                cluster(4, 3),
                Some(on_delete_done),
                Outcome::Reconciled,
                row("True", "AllReplicasReady", "3/3 replicas are ready"),
                row("False", "Reconciled", "StatefulSet orders is up to date with 3 ready replicas"),
                ok.clone(),
            ),
            (
                "rolling update",
                cluster(4, 3),
                Some(rolling),
                Outcome::Reconciled,
                row("True", "AllReplicasReady", "3/3 replicas are ready"),
                row("True", "Reconciling", "rolling update: 1/3 replicas updated"),
                ok.clone(),
            ),
            (
                "StatefulSet spec not observed yet",
                cluster(4, 3),
                Some(unobserved),
                Outcome::Reconciled,
                row("True", "AllReplicasReady", "3/3 replicas are ready"),
                row("True", "Reconciling", "StatefulSet orders has not yet observed its latest spec"),
                ok.clone(),
            ),
            (
                "paused",
                paused,
                Some(sts(3, 3, 3, 3)),
                Outcome::Reconciled,
                row("True", "AllReplicasReady", "3/3 replicas are ready"),
                row("False", "Paused", PAUSED_MESSAGE),
                ok,
            ),
            (
                "invalid, nothing created",
                cluster(1, 12),
                None,
                Outcome::Invalid(&invalid),
                row(
                    "False",
                    "InvalidSpec",
                    "the spec is invalid, so no StatefulSet was created (see the Degraded condition)",
                ),
                row(
                    "False",
                    "InvalidSpec",
                    "reconciliation is stopped until the spec is valid (see the Degraded condition)",
                ),
                invalid_degraded.clone(),
            ),
            (
                "invalid, old pods keep serving",
                cluster(5, 12),
                Some(sts(3, 3, 3, 3)),
                Outcome::Invalid(&invalid),
                row("True", "AllReplicasReady", "3/3 replicas are ready"),
                row(
                    "False",
                    "InvalidSpec",
                    "reconciliation is stopped until the spec is valid (see the Degraded condition)",
                ),
                invalid_degraded,
            ),
            (
                "apply failed",
                cluster(4, 3),
                Some(sts(3, 3, 3, 3)),
                Outcome::Failed(&forbidden),
                row("True", "AllReplicasReady", "3/3 replicas are ready"),
                done.clone(),
                row(
                    "True",
                    "ReconcileFailed",
                    "apply StatefulSet shop/orders failed: the API server refused (403 Forbidden): statefulsets.apps \
                     \"orders\" is forbidden; stead-controller is not allowed to do this: check its ClusterRole \
                     (manifests/rbac) and any admission policy that refused the request; it retries every few minutes",
                ),
            ),
            (
                "foreign child",
                cluster(4, 3),
                Some(sts(3, 3, 3, 3)),
                Outcome::Failed(&foreign),
                row("True", "AllReplicasReady", "3/3 replicas are ready"),
                done,
                row(
                    "True",
                    "ForeignChild",
                    "Service shop/orders already exists and is not controlled by DatabaseCluster shop/orders (it has \
                     no controller); stead-controller never changes an object it did not create, so it left it as it \
                     is. To fix this, rename the DatabaseCluster, or delete or rename Service shop/orders",
                ),
            ),
        ];
        for (case, cluster, sts, outcome, want_a, want_p, want_d) in rows {
            let status = compute_status(&cluster, sts.as_ref(), outcome, t(0), None, None);
            assert_eq!(srm(&status, AVAILABLE), want_a, "{case}: Available");
            assert_eq!(srm(&status, PROGRESSING), want_p, "{case}: Progressing");
            assert_eq!(srm(&status, DEGRADED), want_d, "{case}: Degraded");
            let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
            assert_eq!(types, [AVAILABLE, PROGRESSING, DEGRADED], "{case}");
            for c in &status.conditions {
                assert_eq!(c.observed_generation, cluster.metadata.generation, "{case}: {}", c.type_);
            }
            assert_eq!(status.observed_generation, cluster.metadata.generation, "{case}");
        }
    }

    #[test]
    fn numbers_and_selector() {
        let status = compute_status(&cluster(7, 3), Some(&sts(3, 3, 2, 3)), Outcome::Reconciled, t(0), None, None);
        assert_eq!(status.observed_generation, Some(7));
        assert_eq!(status.replicas, Some(3));
        assert_eq!(status.ready_replicas, Some(2));
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/instance=orders,app.kubernetes.io/name=databasecluster")
        );
        let none = compute_status(&cluster(1, 3), None, Outcome::Reconciled, t(0), None, None);
        assert_eq!((none.replicas, none.ready_replicas), (Some(0), Some(0)));
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = cluster(1, 3);
        // t0: one of three ready.
        let s0 = compute_status(&c, Some(&sts(3, 3, 1, 3)), Outcome::Reconciled, t(0), None, None);
        c.status = Some(s0.clone());
        // t10: two of three: reason/message change, statuses do not: times stay.
        let s1 = compute_status(&c, Some(&sts(3, 3, 2, 3)), Outcome::Reconciled, t(10), None, None);
        for type_ in [AVAILABLE, PROGRESSING, DEGRADED] {
            assert_eq!(
                condition(&s1, type_).last_transition_time,
                condition(&s0, type_).last_transition_time,
                "{type_}"
            );
        }
        assert_eq!(condition(&s1, AVAILABLE).message, "2/3 replicas are ready");
        c.status = Some(s1);
        // t20: all ready: Available and Progressing flip, Degraded does not.
        let s2 = compute_status(&c, Some(&sts(3, 3, 3, 3)), Outcome::Reconciled, t(20), None, None);
        assert_eq!(condition(&s2, AVAILABLE).last_transition_time, Time(t(20)));
        assert_eq!(condition(&s2, PROGRESSING).last_transition_time, Time(t(20)));
        assert_eq!(condition(&s2, DEGRADED).last_transition_time, Time(t(0)));
        c.status = Some(s2.clone());
        // t30: nothing changed: the computed status equals the stored one, nothing to write.
        let s3 = compute_status(&c, Some(&sts(3, 3, 3, 3)), Outcome::Reconciled, t(30), None, None);
        assert_eq!(s3, s2);
        assert!(!needs_write(c.status.as_ref(), &s3));
        // A new generation alone is a change to write.
        c.metadata.generation = Some(2);
        let s4 = compute_status(&c, Some(&sts(3, 3, 3, 3)), Outcome::Reconciled, t(40), None, None);
        assert!(needs_write(c.status.as_ref(), &s4));
        assert_eq!(condition(&s4, AVAILABLE).last_transition_time, Time(t(20)));
    }

    #[test]
    fn now_is_truncated_to_seconds() {
        let now = Timestamp::from_millisecond(1_700_000_000_750).unwrap();
        let status = compute_status(&cluster(1, 1), None, Outcome::Reconciled, now, None, None);
        let written = serde_json::to_value(&status).unwrap();
        let read_back: DatabaseClusterStatus = serde_json::from_value(written).unwrap();
        assert_eq!(read_back, status);
    }

    #[test]
    fn credentials_secret_is_set_once_then_kept() {
        let fresh = cluster(1, 1);
        assert_eq!(compute_status(&fresh, None, Outcome::Reconciled, t(0), None, None).credentials_secret, None);
        let ensured = compute_status(&fresh, None, Outcome::Reconciled, t(0), Some("orders-credentials"), None);
        assert_eq!(ensured.credentials_secret.as_deref(), Some("orders-credentials"));
        // Later reconciles that ensure nothing (invalid, paused, failed early) keep what is stored.
        let mut stored = fresh;
        stored.status = Some(ensured);
        let verdict = Verdict::default();
        let failed = Error::MissingMetadata { object: "shop/orders".into(), field: "metadata.uid" };
        for outcome in [Outcome::Reconciled, Outcome::Failed(&failed), Outcome::Invalid(&verdict)] {
            let next = compute_status(&stored, None, outcome, t(0), None, None);
            assert_eq!(next.credentials_secret.as_deref(), Some("orders-credentials"));
        }
        assert!(!needs_write(
            stored.status.as_ref(),
            &compute_status(&stored, None, Outcome::Reconciled, t(0), None, None)
        ));
    }

    #[test]
    fn no_stored_status_needs_a_write() {
        let status = compute_status(&cluster(1, 1), None, Outcome::Reconciled, t(0), None, None);
        assert!(needs_write(None, &status));
    }

    #[test]
    fn long_messages_are_cut() {
        let long = Error::kube(
            "apply Service shop/orders",
            kube::Error::Api(Box::new(kube::core::Status::failure(&"x".repeat(40_000), "Invalid").with_code(422))),
        );
        let status = compute_status(&cluster(1, 1), None, Outcome::Failed(&long), t(0), None, None);
        let message = &condition(&status, DEGRADED).message;
        assert_eq!(message.len(), MAX_MESSAGE);
        assert!(message.ends_with("..."));
    }

    #[test]
    fn conditions_of_other_tools_are_kept() {
        let mut with_foreign = cluster(1, 1);
        let mut stored = compute_status(&with_foreign, None, Outcome::Reconciled, t(0), None, None);
        let backup = Condition {
            type_: "example.com/BackupReady".into(),
            status: "True".into(),
            reason: "Scheduled".into(),
            message: "nightly".into(),
            observed_generation: Some(1),
            last_transition_time: Time(t(0)),
        };
        stored.conditions.push(backup.clone());
        with_foreign.status = Some(stored.clone());
        let next = compute_status(&with_foreign, None, Outcome::Reconciled, t(60), None, None);
        assert_eq!(next.conditions.len(), 4);
        assert_eq!(next.conditions[3], backup);
        assert!(!needs_write(Some(&stored), &next), "carrying a foreign condition over is not a change");
    }
}
