//! One reconcile of one DatabaseCluster: finalizer, guard, children, status.
//!
//! The steady state is silent: children are read from the informer caches,
//! applied only when the live object lacks a field we own (see `diff`), and
//! the status is written only when it differs from the stored one. Events
//! accompany writes, so a quiet cluster produces no events either.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use stead_crds::names::{FIELD_MANAGER, FINALIZER, credentials_secret_name};
use stead_crds::validation::validate_create;
use stead_crds::{DatabaseCluster, Verdict};
use tracing::{debug, info, warn};

use crate::apply::{Change, Child, Owner, ensure, publish_changes, remove_unplanned};
use crate::children::{self, ChildKind, ClusterView};
use crate::context::Context;
use crate::credentials::{Credentials, credentials_secret, system_password};
use crate::error::{Error, backoff, has_code, is_not_found};
use crate::replication::converge;
use crate::status::{Outcome, Replication, compute_status, needs_write};
use crate::storage::{expansion_patch, expansions};

/// Longest event note the API accepts.
const MAX_NOTE: usize = 1024;

/// When an object whose cached copy missed our last write is looked at again.
pub const CACHE_CATCH_UP: std::time::Duration = std::time::Duration::from_millis(200);

/// Reconciles one cluster; the entry point handed to the applier.
pub async fn reconcile(cluster: Arc<DatabaseCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured(cluster.as_ref(), &ctx, reconcile_inner(&cluster, &ctx)).await
}

/// Runs one reconcile of `object` (of any kind): counted and timed in the
/// metrics, and its failure count forgotten once it succeeds.
pub async fn measured<K>(
    object: &K,
    ctx: &Context,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
{
    if ctx.cache_behind(object) {
        // Our own write has not reached the cache yet; its watch event is
        // moments away. Judging the old copy would repeat the write (a 409).
        ctx.metrics.cache_behind.inc();
        debug!(object = %ObjectRef::from_obj(object), "the cache has not seen our last write yet; soon again");
        return Ok(Action::requeue(CACHE_CATCH_UP));
    }
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile.await;
    ctx.metrics.observe_duration(started.elapsed());
    if result.is_ok() {
        ctx.reset_failures(&ObjectRef::from_obj(object));
    }
    result
}

async fn reconcile_inner(cluster: &Arc<DatabaseCluster>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let namespace = cluster.namespace().ok_or_else(|| Error::MissingMetadata {
        object: children::display_name(cluster.meta()),
        field: "metadata.namespace",
    })?;
    let api: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let finalizing = cluster.meta().deletion_timestamp.is_some() && cluster.finalizers().iter().any(|f| f == FINALIZER);
    let outcome = finalizer::finalizer(&api, FINALIZER, cluster.clone(), |event| async {
        match event {
            Finalizer::Apply(cluster) => apply(&cluster, ctx).await,
            Finalizer::Cleanup(cluster) => cleanup(&cluster, ctx).await,
        }
    })
    .await;
    match outcome {
        Ok(action) => {
            if finalizing {
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    "FinalizerRemoved",
                    "Delete",
                    format!("cleanup done; removed finalizer {FINALIZER}"),
                )
                .await;
            }
            Ok(action)
        }
        // Deleted while we worked on it: nothing is left to do.
        Err(finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e)) if is_not_found(&e) => {
            debug!(cluster = %ObjectRef::from_obj(cluster.as_ref()), "cluster is already gone");
            Ok(Action::await_change())
        }
        Err(err) => Err(Error::Finalizer { cluster: children::display_name(cluster.meta()), source: Box::new(err) }),
    }
}

/// Requeues a failed object (of any kind) with exponential backoff (per object) and counts the error.
#[allow(clippy::needless_pass_by_value)] // the signature the applier calls
pub fn error_policy<K: Resource<DynamicType = ()>>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let kind = error.kind();
    ctx.metrics.count_error(kind.as_str());
    let obj = ObjectRef::from_obj(object.as_ref());
    let failures = ctx.record_failure(&obj);
    let delay = backoff(failures, kind);
    warn!(object = %obj, error = %error, kind = kind.as_str(), failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The cluster exists and carries our finalizer.
async fn apply(cluster: &DatabaseCluster, ctx: &Arc<Context>) -> Result<Action, Error> {
    let mut view = ClusterView::new(cluster)?;
    view.instance_image.clone_from(&ctx.settings.instance_image);
    let resync = Action::requeue(ctx.settings.resync);
    let live_sts = cached(&ctx.stores.stateful_sets, &view, ChildKind::StatefulSet);

    // Guard: the webhook may be bypassed or absent. Judge as it would, touch nothing.
    let verdict = validate_create(cluster);
    if !verdict.is_allowed() {
        let written = write_status(cluster, ctx, live_sts.as_deref(), Outcome::Invalid(&verdict), None, None).await?;
        // Once per change of the verdict (and so once per generation), not on every resync.
        if written == StatusWrite::Written {
            publish(ctx, cluster, EventType::Warning, "InvalidSpec", "Validate", invalid_note(&verdict)).await;
        }
        return Ok(if written == StatusWrite::Gone { Action::await_change() } else { resync });
    }

    if view.spec.is_paused() {
        let written = write_status(cluster, ctx, live_sts.as_deref(), Outcome::Reconciled, None, None).await?;
        return Ok(if written == StatusWrite::Gone { Action::await_change() } else { resync });
    }

    // A cluster restored from a backup: ordinal 0's claim comes from the snapshot, before the StatefulSet.
    let stored_credentials = cluster.status.as_ref().and_then(|s| s.credentials_secret.clone());
    match crate::backups::ensure_restore_claim(ctx, &view, live_sts.is_some()).await {
        Ok(None) => {}
        Ok(Some(why)) => {
            let err = Error::RestorePending { cluster: format!("{}/{}", view.namespace, view.name), why };
            return failed(cluster, ctx, &view, stored_credentials.as_deref(), err).await;
        }
        Err(err) => return failed(cluster, ctx, &view, stored_credentials.as_deref(), err).await,
    }
    // The credentials Secret and every child; the StatefulSet last (its pods read the Secret).
    let (credentials, sts) = match apply_children(cluster, &view, ctx, live_sts).await {
        Ok(applied) => applied,
        Err((secret, err)) => {
            return failed(cluster, ctx, &view, secret.or(stored_credentials).as_deref(), err).await;
        }
    };
    // The instances: roles, labels, bootstraps. Polled again soon, since
    // replication health changes without any Kubernetes object changing.
    let sts_uid = sts.as_ref().and_then(|s| s.metadata.uid.clone());
    let mut converged = match converge(cluster, ctx, &view, sts_uid.as_deref()).await {
        Ok(converged) => converged,
        Err(err) => return failed(cluster, ctx, &view, Some(&credentials), err).await,
    };
    // A requested re-clone comes before the rollout: the broken replica it
    // repairs is what a rollout would wait for. Never both in one pass.
    let rolling = match crate::replication::reclone(cluster, ctx, &view, &mut converged).await {
        Ok(Some(recloning)) => Some(("Recloning", recloning)),
        Ok(None) => match sts.as_deref() {
            Some(sts) => match crate::replication::roll(cluster, ctx, &view, sts, &mut converged).await {
                Ok(rolling) => rolling.map(|message| ("RollingUpdate", message)),
                Err(err) => return failed(cluster, ctx, &view, Some(&credentials), err).await,
            },
            None => None,
        },
        Err(err) => return failed(cluster, ctx, &view, Some(&credentials), err).await,
    };
    // Backups: the one under way, the schedule, retention. None starts while the primary moves or pods roll.
    let quiet = rolling.is_some() || converged.failover.phase != "Healthy";
    let backups = match crate::backups::drive(cluster, ctx, &view, &converged, quiet).await {
        Ok(backups) => backups,
        Err(err) => return failed(cluster, ctx, &view, Some(&credentials), err).await,
    };
    let replication = Replication {
        topology: &converged.topology,
        failover: Some(&converged.failover),
        rollout: rolling.as_ref().map(|(reason, message)| (*reason, message.as_str())),
        backups: Some(&backups),
        namespace: &view.namespace,
        port: view.port(),
    };
    // After a recorded failover step, the status write is conditional on that version.
    let cluster = converged.recorded.as_ref().unwrap_or(cluster);
    let written =
        write_status(cluster, ctx, sts.as_deref(), Outcome::Reconciled, Some(&credentials), Some(&replication)).await?;
    let poll = if backups.active { ctx.settings.poll.min(crate::backups::ACTIVE_POLL) } else { ctx.settings.poll };
    Ok(if written == StatusWrite::Gone { Action::await_change() } else { Action::requeue(poll) })
}

/// Records a failed apply in the status (and an event, once per change), then returns the error.
async fn failed(
    cluster: &DatabaseCluster,
    ctx: &Context,
    view: &ClusterView,
    credentials: Option<&str>,
    err: Error,
) -> Result<Action, Error> {
    let sts = cached(&ctx.stores.stateful_sets, view, ChildKind::StatefulSet);
    match write_status(cluster, ctx, sts.as_deref(), Outcome::Failed(&err), credentials, None).await {
        Ok(StatusWrite::Written) => {
            publish(ctx, cluster, EventType::Warning, err.reason(), "Reconcile", err.to_string()).await;
        }
        Ok(_) => {}
        Err(status_err) => warn!(error = %status_err, "could not record the failure in the status"),
    }
    Err(err)
}

/// Creates the credentials Secret unless the status says it was ensured;
/// returns its name.
///
/// Create-only by design: the controller may not read Secrets. 409 means the
/// Secret exists (the user brought their own, or an earlier reconcile made
/// it before its status write was lost), which is just as good. Once the
/// status names the Secret, no call is made at all.
async fn ensure_credentials(
    cluster: &DatabaseCluster,
    ctx: &Context,
    view: &ClusterView,
) -> Result<(String, Option<Change>), Error> {
    let name = credentials_secret_name(&view.name);
    if cluster.status.as_ref().and_then(|s| s.credentials_secret.as_deref()) == Some(name.as_str()) {
        return Ok((name, None));
    }
    let random = || {
        system_password().map_err(|source| Error::Password {
            namespace: view.namespace.clone(),
            name: name.clone(),
            source,
        })
    };
    let serving = ctx
        .keys
        .serving_certificate(&view.namespace, &view.name)
        .map_err(|e| Error::Keys { cluster: format!("{}/{}", view.namespace, view.name), why: e.to_string() })?;
    let credentials = Credentials {
        password: random()?,
        replication_password: random()?,
        controller_token: ctx.keys.token(&view.namespace, &view.name),
        serving,
        ca_pem: ctx.keys.ca_pem(),
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &view.namespace);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
    match api.create(&params, &credentials_secret(view, credentials)).await {
        Ok(_) => {
            ctx.metrics.count_apply("Secret");
            info!(cluster = %view.name, namespace = %view.namespace, secret = %name, "created credentials Secret");
            let what = format!("{name} (user postgres, a generated password; kept when the cluster is deleted)");
            Ok((name, Some(Change::Created("Secret", what))))
        }
        Err(e) if has_code(&e, &[409]) => {
            debug!(cluster = %view.name, namespace = %view.namespace, secret = %name, "credentials Secret exists");
            Ok((name, None))
        }
        Err(e) => Err(Error::kube(format!("create Secret {}/{name}", view.namespace), e)),
    }
}

/// Brings every child to the desired state; returns the StatefulSet as it now is.
async fn apply_children(
    cluster: &DatabaseCluster,
    view: &ClusterView,
    ctx: &Context,
    live_sts: Option<Arc<StatefulSet>>,
) -> Result<(String, Option<Arc<StatefulSet>>), (Option<String>, Error)> {
    let stores = &ctx.stores;
    let owner = owner_of(cluster, view);
    let plan = match children::plan(view, live_sts.as_deref()) {
        Ok(plan) => plan,
        Err(e) => return Err((None, e)),
    };
    // The credentials Secret, the Services and the PDB do not depend on each
    // other: written together. The StatefulSet after them, because its pods
    // read the Secret and are found through the headless Service.
    let services = plan.iter().filter(|c| c.kind.is_service()).map(|child| {
        let live = cached(&stores.services, view, child.kind);
        ensure::<Service>(ctx, &owner, child_of(view, child.kind), child.body.clone(), live)
    });
    let pdb = plan.iter().find(|c| c.kind == ChildKind::PodDisruptionBudget).map(|child| {
        let live = cached(&stores.pdbs, view, child.kind);
        ensure::<PodDisruptionBudget>(ctx, &owner, child_of(view, child.kind), child.body.clone(), live)
    });
    let (credentials, services, pdb) =
        futures::join!(ensure_credentials(cluster, ctx, view), futures::future::join_all(services), async {
            match pdb {
                Some(pdb) => pdb.await.map(|(_, change)| change),
                None => Ok(None),
            }
        });
    let mut changes = Vec::new();
    let mut first_error: Option<Error> = None;
    let secret = credentials.map(|(name, change)| {
        changes.extend(change);
        name
    });
    for result in services {
        match result {
            Ok((_, change)) => changes.extend(change),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match pdb {
        Ok(change) => changes.extend(change),
        Err(e) => {
            first_error.get_or_insert(e);
        }
    }
    // Without the Secret and the Services, the StatefulSet is not written.
    let mut sts = live_sts;
    if first_error.is_none()
        && secret.is_ok()
        && let Some(child) = plan.iter().find(|c| c.kind == ChildKind::StatefulSet)
    {
        let live = cached(&stores.stateful_sets, view, child.kind);
        match ensure::<StatefulSet>(ctx, &owner, child_of(view, child.kind), child.body.clone(), live).await {
            Ok((written, change)) => {
                sts = Some(written);
                changes.extend(change);
            }
            Err(e) => first_error = Some(e),
        }
    }
    publish_changes(ctx, &owner, &changes).await;
    let secret = match (secret, first_error) {
        (Ok(secret), None) => secret,
        (Ok(secret), Some(e)) => return Err((Some(secret), e)),
        (Err(e), _) => return Err((None, e)),
    };
    let planned: Vec<(&str, String)> = plan.iter().map(|c| (c.kind.kind(), c.kind.name(&view.name))).collect();
    let rest = async {
        remove_unplanned(ctx, &owner, &stores.services, &children::service_names_ever(&view.name), &planned).await?;
        let pdb = [ChildKind::PodDisruptionBudget.name(&view.name)];
        remove_unplanned(ctx, &owner, &stores.pdbs, &pdb, &planned).await?;
        expand_volumes(cluster, ctx, view).await
    };
    match rest.await {
        Ok(()) => Ok((secret, sts)),
        Err(e) => Err((Some(secret), e)),
    }
}

/// The cluster as the owner of its children.
fn owner_of<'a>(cluster: &DatabaseCluster, view: &'a ClusterView) -> Owner<'a> {
    Owner {
        kind: crate::apply::OwnerKind::DatabaseCluster,
        namespace: &view.namespace,
        name: &view.name,
        uid: &view.uid,
        reference: cluster.object_ref(&()),
    }
}

/// A child of the cluster, by its kind in the plan.
fn child_of(view: &ClusterView, kind: ChildKind) -> Child {
    Child { kind: kind.kind(), name: kind.name(&view.name) }
}

/// Grows the claims the StatefulSet's immutable template cannot.
async fn expand_volumes(cluster: &DatabaseCluster, ctx: &Context, view: &ClusterView) -> Result<(), Error> {
    // Look the claims up by name: cost per cluster, not per claim in the cluster.
    let claims: Vec<Arc<PersistentVolumeClaim>> = view
        .volume_claim_names()
        .iter()
        .filter_map(|name| ctx.stores.claims.get(&ObjectRef::new(name).within(&view.namespace)))
        .collect();
    let todo = expansions(view, claims.iter().map(AsRef::as_ref));
    if todo.is_empty() {
        return Ok(());
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &view.namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    for expansion in todo {
        // 403 (the StorageClass does not allow expansion), 400 and 422 are answers
        // about this claim, not outages: they surface in the status with what
        // to fix, and are retried with the backoff of refused requests.
        api.patch(&expansion.claim, &params, &Patch::Merge(expansion_patch(&expansion))).await.map_err(|e| {
            if has_code(&e, &[400, 403, 422]) {
                Error::ExpansionRefused {
                    namespace: view.namespace.clone(),
                    claim: expansion.claim.clone(),
                    from: expansion.from.clone(),
                    to: expansion.to.clone(),
                    source: Box::new(e),
                }
            } else {
                Error::kube(format!("expand PersistentVolumeClaim {}/{}", view.namespace, expansion.claim), e)
            }
        })?;
        ctx.metrics.count_apply("PersistentVolumeClaim");
        let note =
            format!("expanding PersistentVolumeClaim {} from {} to {}", expansion.claim, expansion.from, expansion.to);
        let claim = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("PersistentVolumeClaim".to_owned()),
            name: Some(expansion.claim.clone()),
            namespace: Some(view.namespace.clone()),
            ..ObjectReference::default()
        };
        publish_about(ctx, cluster, EventType::Normal, "ExpandingVolume", "Expand", note, Some(claim)).await;
    }
    Ok(())
}

/// The cluster is being deleted. Children go with it through their
/// ownerReferences (honouring the propagation policy the user chose); the
/// volumes and the credentials Secret stay, and the user is told which.
async fn cleanup(cluster: &DatabaseCluster, ctx: &Context) -> Result<Action, Error> {
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "Deleting",
        "Delete",
        format!(
            "deleting DatabaseCluster {name}: the garbage collector removes its StatefulSet, Services and \
             PodDisruptionBudget"
        ),
    )
    .await;
    let selector = stead_crds::names::selector_labels(&name);
    let mut retained: Vec<String> = ctx
        .stores
        .claims
        .state()
        .iter()
        .filter(|c| c.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|c| selector.iter().all(|(k, v)| c.labels().get(k) == Some(v)))
        .map(|c| c.name_any())
        .collect();
    retained.sort();
    if !retained.is_empty() {
        let note = format!(
            "kept {} PersistentVolumeClaim(s) with the data: {}; delete them to release the storage",
            retained.len(),
            retained.join(", ")
        );
        publish(ctx, cluster, EventType::Normal, "VolumesRetained", "Delete", note).await;
    }
    // Only a Secret the status names is known to exist: the controller cannot read Secrets.
    if let Some(secret) = cluster.status.as_ref().and_then(|s| s.credentials_secret.as_deref()) {
        let note = format!(
            "kept Secret {secret} with the password of the retained data: a DatabaseCluster recreated with the same \
             name uses it; delete it together with the volumes"
        );
        publish(ctx, cluster, EventType::Normal, "CredentialsRetained", "Delete", note).await;
    }
    Ok(Action::await_change())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusWrite {
    Unchanged,
    Written,
    /// The cluster disappeared (404): nothing left to report on.
    Gone,
}

/// Computes the status and writes it through `/status` only when it differs
/// from the stored one; `credentials` as in [`compute_status`].
async fn write_status(
    cluster: &DatabaseCluster,
    ctx: &Context,
    sts: Option<&StatefulSet>,
    outcome: Outcome<'_>,
    credentials: Option<&str>,
    replication: Option<&Replication<'_>>,
) -> Result<StatusWrite, Error> {
    let status = compute_status(cluster, sts, outcome, (ctx.now)(), credentials, replication);
    if !needs_write(cluster.status.as_ref(), &status) {
        return Ok(StatusWrite::Unchanged);
    }
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    let api: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    // The whole conditions list is replaced, so the write is conditional on
    // the version it was computed from: a condition another tool wrote in the
    // meantime makes it a 409 (retried soon, from fresh data), never a loss.
    let mut body = json!({ "status": crate::diff::status_merge_patch(cluster.status.as_ref(), &status) });
    if let Some(version) = cluster.metadata.resource_version.as_deref() {
        body["metadata"] = json!({ "resourceVersion": version });
    }
    match api.patch_status(&name, &params, &Patch::Merge(body)).await {
        Ok(_) => {
            ctx.metrics.status_writes.inc();
            if let Some(version) = cluster.metadata.resource_version.as_deref() {
                ctx.note_superseded(&ObjectRef::from_obj(cluster), version);
            }
            debug!(cluster = %name, namespace = %namespace, "status written");
            Ok(StatusWrite::Written)
        }
        Err(e) if is_not_found(&e) => Ok(StatusWrite::Gone),
        Err(e) => Err(Error::kube(format!("write status of DatabaseCluster {namespace}/{name}"), e)),
    }
}

fn cached<K>(store: &Store<K>, view: &ClusterView, child: ChildKind) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(&child.name(&view.name)).within(&view.namespace))
}

fn invalid_note(verdict: &Verdict) -> String {
    let messages: Vec<String> = verdict.errors.iter().map(ToString::to_string).collect();
    format!("spec is invalid; no child was changed: {}", messages.join("; "))
}

/// Publishes an event about the cluster (also for the other reconcile modules).
pub(crate) async fn publish(
    ctx: &Context,
    cluster: &DatabaseCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_about(ctx, cluster, type_, reason, action, note, None).await;
}

/// Publishes an event about the cluster; a failure to publish is logged, never fatal.
async fn publish_about(
    ctx: &Context,
    cluster: &DatabaseCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    secondary: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(crate::status::truncate(note, MAX_NOTE)),
        action: action.to_owned(),
        secondary,
    };
    if let Err(e) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        warn!(cluster = %cluster.name_any(), reason, error = %crate::error::describe(&e), "could not publish event");
    }
}
