//! Carries out the topology decision: asks every instance manager for its
//! status, labels pods with their role, and sends the bootstraps and
//! repoints [`crate::topology`] decided.
//!
//! Reading is free of API calls: pods come from the cache, and the
//! instance managers are asked over HTTPS. Writes happen only when the
//! decision differs from what is there, so a steady cluster costs one
//! `GET /status` per pod per poll and no API request at all.

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use stead_crds::DatabaseCluster;
use stead_crds::instance_api::{Bootstrap, Demote};
use stead_crds::names::FIELD_MANAGER;
use tracing::{debug, info, warn};

use crate::children::{ChildKind, ClusterView};
use crate::context::Context;
use crate::error::Error;
use crate::failover::{self, Decision, Policy, Recorded, SWITCHOVER_TO};
use crate::instances::{CallError, Target};
use crate::keys::ControllerKeys;
use crate::reclone::RECLONE;
use crate::rollout::{self, Step};
use crate::topology::{Call, Member, ROLE_LABEL, Report, Topology, decide};

/// What this reconcile decided about replication, for the status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Convergence {
    pub topology: Topology,
    pub failover: FailoverState,
    /// The cluster as the API server returned it after a failover step was
    /// recorded; later writes of this reconcile are conditional on it.
    pub recorded: Option<DatabaseCluster>,
}

/// Failover as the status reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FailoverState {
    /// `Healthy`, `PrimaryFailing`, `FailoverBlocked` or `FailingOver`.
    pub phase: &'static str,
    pub failing_since: Option<Timestamp>,
    pub target_primary: Option<String>,
    pub last_failover_time: Option<Timestamp>,
    pub failover_count: Option<i32>,
    /// Why the primary fails, or why the failover is blocked.
    pub reason: Option<String>,
}

/// Observes the instances of `view`, fails over when the primary has
/// failed, decides roles, and acts; returns the decisions for the status.
pub async fn converge(
    cluster: &DatabaseCluster,
    ctx: &Arc<Context>,
    view: &ClusterView,
    sts_uid: Option<&str>,
) -> Result<Convergence, Error> {
    let pods: Vec<Option<Arc<Pod>>> = (0..view.replicas())
        .map(|i| ctx.stores.pods.get(&ObjectRef::new(&format!("{}-{i}", view.name)).within(&view.namespace)))
        .collect();
    let token = ctx.keys.token(&view.namespace, &view.name);
    let server_name = ControllerKeys::server_name(&view.namespace, &view.name);
    let target_of = |ordinal: usize, ip: String| Target {
        pod: format!("{}-{ordinal}", view.name),
        ip,
        server_name: server_name.clone(),
        token: token.clone(),
    };
    let mut members = join_all(pods.iter().enumerate().map(|(ordinal, pod)| {
        let target = pod.as_deref().and_then(pod_ip).map(|ip| target_of(ordinal, ip));
        observe(ctx, view, ordinal, pod.as_deref(), target)
    }))
    .await;

    let stored = cluster.status.clone().unwrap_or_default();
    let mut state = FailoverState {
        phase: "Healthy",
        failing_since: None,
        target_primary: stored.current_primary.clone(),
        last_failover_time: stored.last_failover_time.as_ref().map(|t| t.0),
        failover_count: stored.failover_count,
        reason: None,
    };
    let mut current = stored.current_primary.clone();
    let mut recorded_cluster = None;
    let recorded = Recorded {
        current_primary: stored.current_primary.clone(),
        target_primary: stored.target_primary.clone(),
        failing_since: stored.primary_failing_since.as_ref().map(|t| t.0),
    };
    let policy = Policy {
        delay: view.spec.failover_delay().unwrap_or(stead_crds::defaults::DEFAULT_FAILOVER_DELAY),
        max_lag_bytes: view.spec.failover_max_lag_bytes(),
        allow_data_loss: view.spec.failover_allows_data_loss(),
    };
    let now = (ctx.now)();
    let mut decision = failover::decide(&recorded, &members, policy, now);
    // A switchover is asked for with an annotation; it runs only while the primary is healthy.
    let requested = cluster.annotations().get(SWITCHOVER_TO).cloned();
    let switching = match (&decision, requested.as_deref()) {
        (Decision::Healthy, Some(target)) => match failover::switchover(target, &recorded, &members) {
            Ok(()) => {
                decision = Decision::Promote {
                    target: target.to_owned(),
                    reason: format!("switchover to {target} requested with {SWITCHOVER_TO}"),
                };
                true
            }
            Err(why) => {
                let note = format!("switchover to {target} refused: {why}; the request is removed");
                publish(ctx, cluster, EventType::Warning, "SwitchoverRefused", note).await;
                recorded_cluster = clear_annotation(ctx, cluster, SWITCHOVER_TO).await?;
                false
            }
        },
        (Decision::Promote { .. }, _) => stored.phase.as_deref() == Some("Switchover"),
        _ => false,
    };
    match decision {
        Decision::Healthy => {}
        Decision::Failing { since, reason } => {
            if recorded.failing_since.is_none() {
                let note = format!(
                    "primary {} is failing: {reason}; a replica is promoted if it still fails after {}s \
                     (spec.failoverDelay)",
                    current.as_deref().unwrap_or("?"),
                    policy.delay.as_secs()
                );
                publish(ctx, cluster, EventType::Warning, "PrimaryFailing", note).await;
            }
            state =
                FailoverState { phase: "PrimaryFailing", failing_since: Some(since), reason: Some(reason), ..state };
        }
        Decision::Blocked { since, reason } => {
            if stored.phase.as_deref() != Some("FailoverBlocked") {
                publish(ctx, cluster, EventType::Warning, "FailoverBlocked", reason.clone()).await;
            }
            state =
                FailoverState { phase: "FailoverBlocked", failing_since: Some(since), reason: Some(reason), ..state };
        }
        Decision::Promote { target, reason } => {
            // 1. Recorded before anything is done: a controller that restarts from here resumes this promotion.
            let since = recorded.failing_since.unwrap_or(now);
            let phase = if switching { "Switchover" } else { "FailingOver" };
            let mut status = json!({ "targetPrimary": target, "phase": phase });
            if !switching {
                status["primaryFailingSince"] = json!(Time(since));
            }
            let step =
                json!({ "metadata": { "resourceVersion": cluster.metadata.resource_version }, "status": status });
            let written = record(ctx, cluster, step).await?;
            if recorded.target_primary.as_deref() != Some(target.as_str()) {
                let (kind, reason_kind, note) = if switching {
                    let note =
                        format!("switching over: {target} takes over from {}", current.as_deref().unwrap_or("?"));
                    (EventType::Normal, "Switchover", note)
                } else {
                    (EventType::Warning, "FailingOver", format!("failing over: promoting {target} ({reason})"))
                };
                publish(ctx, cluster, kind, reason_kind, note).await;
            }
            state = FailoverState {
                phase,
                failing_since: (!switching).then_some(since),
                target_primary: Some(target.clone()),
                reason: Some(reason.clone()),
                ..state
            };
            recorded_cluster = Some(written);
            // 2. Fence the old primary: out of -rw at once, whatever it does next.
            if let Some(old) = current.as_deref()
                && let Some(pod) = pods.iter().flatten().find(|p| p.name_any() == old)
                && pod.labels().get(ROLE_LABEL).is_some()
            {
                label(ctx, view, pod, sts_uid, None).await?;
                if let Some(member) = members.iter_mut().find(|m| m.pod == old) {
                    member.role_label = None;
                }
            }
            // A switchover hands over cleanly: the old primary stops (its last WAL
            // reaches the target) and follows it; the target must have replayed
            // everything before it is promoted, so no committed row is lost.
            let handed_over = if switching {
                hand_over(ctx, cluster, view, &mut members, current.as_deref(), &target, &target_of).await
            } else {
                true
            };
            // 3. Promote the target through its instance manager (idempotent).
            if !handed_over {
                // Resumed at the next poll (phase Switchover, targetPrimary recorded).
            } else if let Some(member) = members.iter_mut().find(|m| m.pod == target)
                && let Some(ip) = member.ip.clone()
            {
                match ctx.instances.promote(&target_of(usize::try_from(member.ordinal).unwrap_or(0), ip)).await {
                    Ok(promoted) if promoted.role == stead_crds::instance_api::Role::Primary => {
                        member.report = Report::Status(Box::new(promoted));
                        if switching {
                            let note = format!("{target} is the primary now: switchover done, no transaction lost");
                            publish(ctx, cluster, EventType::Normal, "SwitchedOver", note).await;
                            let base = recorded_cluster.as_ref().unwrap_or(cluster);
                            if base.annotations().contains_key(SWITCHOVER_TO)
                                && let Some(updated) = clear_annotation(ctx, base, SWITCHOVER_TO).await?
                            {
                                recorded_cluster = Some(updated);
                            }
                            state = FailoverState {
                                phase: "Healthy",
                                failing_since: None,
                                target_primary: Some(target.clone()),
                                reason: None,
                                ..state
                            };
                        } else {
                            let count = stored.failover_count.unwrap_or(0).saturating_add(1);
                            let note = format!("{target} is the primary now (failover {count}): {reason}");
                            publish(ctx, cluster, EventType::Normal, "FailedOver", note).await;
                            state = FailoverState {
                                phase: "Healthy",
                                failing_since: None,
                                target_primary: Some(target.clone()),
                                last_failover_time: Some(now),
                                failover_count: Some(count),
                                reason: None,
                            };
                        }
                        current = Some(target.clone());
                    }
                    Ok(other) => {
                        let note = format!("promoting {target}: it still reports itself {}", other.role.as_str());
                        publish(ctx, cluster, EventType::Warning, "FailingOver", note).await;
                    }
                    Err(e) => {
                        publish(
                            ctx,
                            cluster,
                            EventType::Warning,
                            "FailingOver",
                            format!("promoting {target} failed: {e}"),
                        )
                        .await;
                    }
                }
            }
        }
    }

    let port = u16::try_from(view.port()).unwrap_or(5432);
    let topology = decide(current.as_deref(), &members, port);
    for (pod_name, role) in &topology.labels {
        let Some(pod) = pods.iter().flatten().find(|p| p.name_any() == *pod_name) else { continue };
        label(ctx, view, pod, sts_uid, *role).await?;
        if *role == Some("primary") {
            let note = format!(
                "{pod_name} is the primary: Service {} routes to it",
                ChildKind::PrimaryService.name(&view.name)
            );
            publish(ctx, cluster, EventType::Normal, "PrimaryLabelled", note).await;
        }
    }
    // No instance is told anything while a promotion is unfinished, and
    // repoints are paced so that at most one instance restarts at a time.
    if !matches!(state.phase, "FailingOver" | "Switchover") {
        for call in crate::topology::paced(topology.calls.clone(), &members) {
            start(cluster, ctx, &view.namespace, &call, &token, &server_name).await;
        }
    }
    Ok(Convergence { topology, failover: state, recorded: recorded_cluster })
}

/// Carries the rolling update one step further (see [`crate::rollout`]):
/// restarts at most one pod, and only while no failover is under way.
/// Returns what the rollout waits for, for the Progressing condition.
///
/// A switchover of the primary (`primaryUpdateMethod: switchover`) is
/// recorded in the status here, as a failover step is, and carried out by
/// [`converge`] at the next poll, through the same path as a requested one.
pub async fn roll(
    cluster: &DatabaseCluster,
    ctx: &Context,
    view: &ClusterView,
    sts: &k8s_openapi::api::apps::v1::StatefulSet,
    converged: &mut Convergence,
) -> Result<Option<String>, Error> {
    if converged.failover.phase != "Healthy" {
        return Ok(None);
    }
    // An instance busy with an operation (a clone, a repoint, a rejoin) may be down: wait for it.
    if let Some(busy) =
        converged.topology.instances.iter().find(|i| ctx.operation_under_way(&format!("{}/{}", view.namespace, i.pod)))
    {
        return Ok(Some(format!(
            "rolling update: waiting for the operation under way on {} to finish before restarting the next instance",
            busy.pod
        )));
    }
    let update_revision = sts.status.as_ref().and_then(|s| s.update_revision.as_deref());
    let primary = converged.topology.current_primary.as_deref();
    let mut instances = Vec::new();
    let mut pods = Vec::new();
    let mut missing = Vec::new();
    for observed in &converged.topology.instances {
        let Some(pod) = ctx.stores.pods.get(&ObjectRef::new(&observed.pod).within(&view.namespace)) else {
            missing.push(observed.pod.clone());
            continue;
        };
        let is_primary = primary == Some(observed.pod.as_str());
        instances.push(rollout::Instance {
            pod: observed.pod.clone(),
            ordinal: observed.pod.rsplit('-').next().and_then(|o| o.parse().ok()).unwrap_or(0),
            revision: pod.labels().get("controller-revision-hash").cloned(),
            serving: observed.ready && (is_primary || observed.streaming),
            primary: is_primary,
            position: u64::MAX - observed.lag_bytes.unwrap_or(u64::MAX),
        });
        pods.push(pod);
    }
    // A pod deleted a moment ago and not recreated yet is down: while a
    // rollout is under way, nothing else restarts until it is back.
    let rolling = update_revision.is_some_and(|rev| instances.iter().any(|i| i.revision.as_deref() != Some(rev)));
    if rolling && let Some(pod) = missing.first() {
        return Ok(Some(format!(
            "rolling update: waiting for {pod} to be recreated and ready before restarting the next instance"
        )));
    }
    let primary_update = rollout::PrimaryUpdate {
        supervised: view.spec.primary_update_is_supervised(),
        approved: cluster.annotations().get(rollout::APPROVE_PRIMARY_UPDATE).map(String::as_str),
        switchover: view.spec.primary_update_by_switchover(),
    };
    match rollout::next(update_revision, &instances, primary_update) {
        Step::Done => Ok(None),
        Step::Switchover { from, to } => {
            let base = converged.recorded.as_ref().unwrap_or(cluster);
            let step = json!({
                "metadata": { "resourceVersion": base.metadata.resource_version },
                "status": { "targetPrimary": to, "phase": "Switchover" },
            });
            converged.recorded = Some(record(ctx, base, step).await?);
            converged.failover.phase = "Switchover";
            converged.failover.target_primary = Some(to.clone());
            let note = format!(
                "rolling update: every replica runs revision {rev}; switching over from {from} to {to}, which runs \
                 it, so that {from} restarts as a replica",
                rev = update_revision.unwrap_or("?")
            );
            converged.failover.reason = Some(note.clone());
            publish(ctx, cluster, EventType::Normal, "Switchover", note.clone()).await;
            Ok(Some(note))
        }
        Step::Wait(why) => Ok(Some(why)),
        Step::AwaitApproval { pod } => Ok(Some(format!(
            "rolling update: every replica runs revision {rev}; the primary {pod} restarts once approved: kubectl \
             annotate dbc/{name} {key}={rev} --overwrite",
            rev = update_revision.unwrap_or("?"),
            name = view.name,
            key = rollout::APPROVE_PRIMARY_UPDATE
        ))),
        Step::Restart { pod: name, why } => {
            let Some(pod) = pods.iter().find(|p| p.name_any() == name) else { return Ok(None) };
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &view.namespace);
            delete_judged(&api, &name, pod.metadata.uid.clone())
                .await
                .map_err(|e| Error::kube(format!("restart Pod {}/{name} for the rolling update", view.namespace), e))?;
            ctx.metrics.count_apply("Pod");
            let note = format!("restarting {name} on revision {}: {why}", update_revision.unwrap_or("?"));
            info!(cluster = %view.name, namespace = %view.namespace, pod = %name, "rolling update: restarting pod");
            publish(ctx, cluster, EventType::Normal, "RollingUpdate", note.clone()).await;
            Ok(Some(format!("rolling update: {note}")))
        }
    }
}

/// Carries out a `stead.dev/reclone` request (see [`crate::reclone`]):
/// deletes the named replica's claim, then its pod, each conditional on the
/// uid judged, and removes the request. Returns what the request waits for,
/// or what was done, for the Progressing condition; `None` without a request.
pub async fn reclone(
    cluster: &DatabaseCluster,
    ctx: &Context,
    view: &ClusterView,
    converged: &mut Convergence,
) -> Result<Option<String>, Error> {
    let Some(requested) = cluster.annotations().get(RECLONE).cloned() else { return Ok(None) };
    let facts = crate::reclone::Cluster {
        name: &view.name,
        current_primary: converged.topology.current_primary.as_deref(),
        target_primary: converged.failover.target_primary.as_deref(),
        phase: converged.failover.phase,
        instances: &converged.topology.instances,
    };
    let (pod_name, claim_name) = match crate::reclone::decide(&requested, facts) {
        crate::reclone::Decision::Wait(why) => return Ok(Some(why)),
        crate::reclone::Decision::Refuse(why) => {
            let note = format!("re-clone refused: {why}; the request is removed");
            publish(ctx, cluster, EventType::Warning, "RecloneRefused", note).await;
            let base = converged.recorded.as_ref().unwrap_or(cluster);
            if let Some(updated) = clear_annotation(ctx, base, RECLONE).await? {
                converged.recorded = Some(updated);
            }
            return Ok(None);
        }
        crate::reclone::Decision::Reclone { pod, claim } => (pod, claim),
    };
    let in_cluster =
        |meta: &kube::api::ObjectMeta| crate::controller::cluster_of_labels(meta).is_some_and(|c| c.name == view.name);
    // The claim first: it stays (Terminating) while the pod uses it, and the
    // StatefulSet creates neither pod nor claim until it is gone, so the new
    // pod gets a new, empty volume.
    let claim = ctx.stores.claims.get(&ObjectRef::new(&claim_name).within(&view.namespace));
    if let Some(claim) = claim.filter(|c| c.metadata.deletion_timestamp.is_none() && in_cluster(&c.metadata)) {
        let api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(ctx.client.clone(), &view.namespace);
        delete_judged(&api, &claim_name, claim.metadata.uid.clone()).await.map_err(|e| {
            Error::kube(
                format!("delete PersistentVolumeClaim {}/{claim_name} to re-clone {pod_name}", view.namespace),
                e,
            )
        })?;
        ctx.metrics.count_apply("PersistentVolumeClaim");
    }
    let pod = ctx.stores.pods.get(&ObjectRef::new(&pod_name).within(&view.namespace));
    if let Some(pod) = pod.filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &view.namespace);
        delete_judged(&api, &pod_name, pod.metadata.uid.clone())
            .await
            .map_err(|e| Error::kube(format!("delete Pod {}/{pod_name} to re-clone it", view.namespace), e))?;
        ctx.metrics.count_apply("Pod");
    }
    let note = format!(
        "re-cloning {pod_name} as {RECLONE} asks: its claim {claim_name} and its pod are deleted; the StatefulSet \
         recreates both, and the new instance on the empty volume is cloned from the primary {}",
        converged.topology.current_primary.as_deref().unwrap_or("?")
    );
    info!(cluster = %view.name, namespace = %view.namespace, pod = %pod_name, "re-cloning on request");
    publish(ctx, cluster, EventType::Normal, "Recloning", note.clone()).await;
    let base = converged.recorded.as_ref().unwrap_or(cluster);
    if let Some(updated) = clear_annotation(ctx, base, RECLONE).await? {
        converged.recorded = Some(updated);
    }
    Ok(Some(note))
}

/// Deletes `name` only if it is still the object of `uid` that was judged;
/// an object already gone or replaced is not an error.
async fn delete_judged<K>(api: &Api<K>, name: &str, uid: Option<String>) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid, resource_version: None }),
        ..kube::api::DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if crate::error::is_not_found(&e) || crate::error::has_code(&e, &[409]) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The clean handover of a switchover: the old primary is demoted to a
/// replica of the target (a fast shutdown sends its last WAL to the
/// streaming target; pg_rewind finds nothing to undo), then the target is
/// awaited until it has replayed all of it. `false` when that did not
/// happen yet; the switchover resumes at the next poll.
async fn hand_over(
    ctx: &Context,
    cluster: &DatabaseCluster,
    view: &ClusterView,
    members: &mut [Member],
    old: Option<&str>,
    target: &str,
    target_of: &impl Fn(usize, String) -> Target,
) -> bool {
    let ordinal = |m: &Member| usize::try_from(m.ordinal).unwrap_or(0);
    let Some(new) = members.iter().find(|m| m.pod == target).cloned() else { return false };
    let Some(new_ip) = new.ip.clone() else { return false };
    let port = u16::try_from(view.port()).unwrap_or(5432);
    let mut last_lsn = None;
    if let Some(old) = members.iter_mut().find(|m| Some(m.pod.as_str()) == old)
        && let (Some(ip), Report::Status(status)) = (old.ip.clone(), &old.report)
        && status.role == stead_crds::instance_api::Role::Primary
    {
        last_lsn = status.current_lsn;
        let request = Demote { primary_host: Some(new_ip.clone()), primary_port: Some(port) };
        match ctx.instances.demote(&target_of(ordinal(old), ip), &request).await {
            Ok(demoted) => old.report = Report::Status(Box::new(demoted)),
            Err(e) => {
                let note = format!("switching over to {target}: demoting {} failed: {e}; retrying", old.pod);
                publish(ctx, cluster, EventType::Warning, "Switchover", note).await;
                return false;
            }
        }
    }
    // The target has replayed what the old primary last reported, and more.
    let target_call = target_of(ordinal(&new), new_ip);
    for _ in 0..40 {
        match ctx.instances.status(&target_call).await {
            Ok(status) if last_lsn.is_none_or(|lsn| status.replayed_lsn.or(status.current_lsn) >= Some(lsn)) => {
                return true;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
    let note = format!("switching over to {target}: it has not replayed the old primary's last WAL yet; retrying");
    publish(ctx, cluster, EventType::Warning, "Switchover", note).await;
    false
}

/// Removes a request annotation (`stead.dev/switchover-to`,
/// `stead.dev/reclone`) once it is done or refused; returns the cluster as
/// stored afterwards, for the writes that follow.
async fn clear_annotation(
    ctx: &Context,
    cluster: &DatabaseCluster,
    key: &str,
) -> Result<Option<DatabaseCluster>, Error> {
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    let api: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    let patch = json!({ "metadata": { "annotations": { key: null } } });
    match api.patch(&name, &params, &Patch::Merge(patch)).await {
        Ok(updated) => Ok(Some(updated)),
        Err(e) if crate::error::is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::kube(format!("remove {key} from DatabaseCluster {namespace}/{name}"), e)),
    }
}

/// Writes one failover step into the status before it is acted on,
/// conditional on the version that was judged.
async fn record(ctx: &Context, cluster: &DatabaseCluster, step: serde_json::Value) -> Result<DatabaseCluster, Error> {
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    let api: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    let precondition = step.pointer("/metadata/resourceVersion").and_then(serde_json::Value::as_str).map(str::to_owned);
    let written = api
        .patch_status(&name, &params, &Patch::Merge(step))
        .await
        .map_err(|e| Error::kube(format!("record the failover of DatabaseCluster {namespace}/{name}"), e))?;
    ctx.metrics.status_writes.inc();
    if let Some(version) = precondition {
        ctx.note_superseded(&kube::runtime::reflector::ObjectRef::from_obj(cluster), &version);
    }
    Ok(written)
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty())
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn observe(
    ctx: &Context,
    view: &ClusterView,
    ordinal: usize,
    pod: Option<&Pod>,
    target: Option<Target>,
) -> Member {
    let report = match &target {
        None => Report::NotAsked,
        Some(target) => match ctx.instances.status(target).await {
            Ok(status) => Report::Status(Box::new(status)),
            Err(e) => Report::Unreachable(e.to_string()),
        },
    };
    Member {
        pod: format!("{}-{ordinal}", view.name),
        ordinal: i32::try_from(ordinal).unwrap_or(i32::MAX),
        ip: target.map(|t| t.ip),
        pod_ready: pod.is_some_and(pod_ready),
        terminating: pod.is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        role_label: pod.and_then(|p| p.labels().get(ROLE_LABEL).cloned()),
        container_problem: pod.and_then(|p| crate::pod_problem::of(p, (ctx.now)())),
        report,
    }
}

/// Sets (or removes) the role label of a pod of our StatefulSet; a pod
/// controlled by anything else is never written.
async fn label(
    ctx: &Context,
    view: &ClusterView,
    pod: &Pod,
    sts_uid: Option<&str>,
    role: Option<&str>,
) -> Result<(), Error> {
    let name = pod.name_any();
    let ours = pod
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "StatefulSet" && Some(o.uid.as_str()) == sts_uid);
    if !ours {
        warn!(cluster = %view.name, namespace = %view.namespace, pod = %name, "pod is not controlled by the cluster's StatefulSet; not labelling it");
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &view.namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    // A merge patch: `null` removes the label. It is conditional on the
    // version that was judged, so a pod recreated under the same name in the
    // meantime is judged afresh at the next poll instead of getting a stale role.
    let patch =
        json!({ "metadata": { "resourceVersion": pod.metadata.resource_version, "labels": { ROLE_LABEL: role } } });
    match api.patch(&name, &params, &Patch::Merge(patch)).await {
        Ok(_) => {
            ctx.metrics.count_apply("Pod");
            info!(cluster = %view.name, namespace = %view.namespace, pod = %name, role = role.unwrap_or("<none>"), "labelled pod");
            Ok(())
        }
        Err(e) if crate::error::is_not_found(&e) || crate::error::has_code(&e, &[409]) => Ok(()),
        Err(e) => Err(Error::kube(format!("label Pod {}/{name} with {ROLE_LABEL}", view.namespace), e)),
    }
}

/// Sends one instruction in the background: a bootstrap or a rewind can
/// take hours, and answers only when done. At most one operation per pod is
/// under way; polls go on meanwhile (the instance reports `bootstrapping`).
/// The outcome is an event; a failure is retried at the next poll. A 409
/// means the instance is busy with an operation already (a controller that
/// restarted lost track of it), which is not worth a warning.
async fn start(
    cluster: &DatabaseCluster,
    ctx: &Arc<Context>,
    namespace: &str,
    call: &Call,
    token: &str,
    server_name: &str,
) {
    let pod = match call {
        Call::Bootstrap { pod, .. } | Call::Repoint { pod, .. } | Call::Rejoin { pod, .. } => pod.clone(),
    };
    let key = format!("{namespace}/{pod}");
    if !ctx.start_operation(&key) {
        debug!(pod = %key, "an operation is under way; not asking again");
        return;
    }
    let (reason, note) = describe_call(call);
    publish(ctx, cluster, EventType::Normal, reason, note).await;
    let (ctx, cluster, call) = (Arc::clone(ctx), cluster.clone(), call.clone());
    let (token, server_name) = (token.to_owned(), server_name.to_owned());
    tokio::spawn(async move {
        act(&cluster, &ctx, &call, &token, &server_name).await;
        ctx.finish_operation(&key);
    });
}

async fn act(cluster: &DatabaseCluster, ctx: &Context, call: &Call, token: &str, server_name: &str) {
    let target = |pod: &str, ip: &str| Target {
        pod: pod.to_owned(),
        ip: ip.to_owned(),
        server_name: server_name.to_owned(),
        token: token.to_owned(),
    };
    let (reason, note) = describe_call(call);
    let result = match call {
        Call::Bootstrap { pod, ip, request } => ctx.instances.bootstrap(&target(pod, ip), request).await,
        Call::Repoint { pod, ip, request } | Call::Rejoin { pod, ip, request } => {
            ctx.instances.demote(&target(pod, ip), request).await
        }
    };
    match result {
        Ok(_) => info!(cluster = %cluster.name_any(), reason, note = %note, "instance manager done"),
        Err(CallError::Refused { status: 409, message, .. }) => {
            debug!(cluster = %cluster.name_any(), reason, message = %message, "instance manager is busy");
        }
        Err(e) => {
            warn!(cluster = %cluster.name_any(), reason, error = %e, "instance manager refused");
            publish(ctx, cluster, EventType::Warning, reason, format!("{note} failed: {e}")).await;
        }
    }
}

/// The event reason and note announcing a call.
fn describe_call(call: &Call) -> (&'static str, String) {
    match call {
        Call::Bootstrap { pod, request: Bootstrap::Initdb, .. } => {
            ("Bootstrapping", format!("initialising {pod} as the first primary"))
        }
        Call::Bootstrap { pod, request: Bootstrap::Restore, .. } => (
            "Restoring",
            format!("starting {pod} as the first primary from the data restored from spec.bootstrap.fromBackup"),
        ),
        Call::Bootstrap { pod, request: Bootstrap::Clone { primary_host, .. }, .. } => (
            "Bootstrapping",
            format!(
                "cloning {pod} from the primary at {} and starting it as a replica",
                primary_host.as_deref().unwrap_or("?")
            ),
        ),
        Call::Repoint { pod, request, .. } => (
            "Repointing",
            format!("pointing replica {pod} at the primary at {}", request.primary_host.as_deref().unwrap_or("?")),
        ),
        Call::Rejoin { pod, request, .. } => (
            "Rejoining",
            format!(
                "{pod} claims to be primary but is not: rewinding it onto the primary at {} to stream as a replica",
                request.primary_host.as_deref().unwrap_or("?")
            ),
        ),
    }
}

async fn publish(ctx: &Context, cluster: &DatabaseCluster, type_: EventType, reason: &str, note: String) {
    crate::reconciler::publish(ctx, cluster, type_, reason, "Replicate", note).await;
}
