//! Writing children, for every kind that has them (a DatabaseCluster's
//! Services, StatefulSet and PDB; an App's Deployment, Service and Ingress).
//!
//! The rules are the same for every owner: a missing child is created with
//! a plain POST; a child that exists and is ours is server-side-applied only
//! when it lacks a field we own; an object of the same name that we did not
//! create is never written; a child the plan no longer lists is deleted only
//! when we control it. What a reconcile wrote is published as one event.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use stead_crds::names::FIELD_MANAGER;
use tracing::{info, warn};

use crate::context::Context;
use crate::diff::is_subset;
use crate::error::{Error, foreign_owner, has_code, is_not_found};
use crate::managed_fields;

/// Longest event note the API accepts.
pub const MAX_NOTE: usize = 1024;

/// The kinds that own children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    DatabaseCluster,
    App,
}

impl std::fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DatabaseCluster => "DatabaseCluster",
            Self::App => "App",
        })
    }
}

/// The object children belong to.
#[derive(Debug, Clone)]
pub struct Owner<'a> {
    pub kind: OwnerKind,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The uid every child's controller ownerReference carries.
    pub uid: &'a str,
    /// Where events about its children go.
    pub reference: ObjectReference,
}

impl Owner<'_> {
    /// Publishes an event about the owner; a failure to publish is logged, never fatal.
    pub async fn publish(&self, ctx: &Context, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(crate::status::truncate(note, MAX_NOTE)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &self.reference).await {
            warn!(owner = %self.name, reason, error = %crate::error::describe(&e), "could not publish event");
        }
    }
}

/// One child: its kind (for messages and metrics) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub kind: &'static str,
    pub name: String,
}

/// Deletes the children this owner controls that the plan no longer lists
/// (the PDB of a cluster scaled to one replica, the all-pods Service of
/// stead 0.1). The candidates are the names stead ever gave a child of this
/// kind, looked up in the cache by name: the cost is per owner, not per
/// cached object. Only objects controlled by this owner (their controller
/// reference carries its uid) are deleted, and the delete is conditional on
/// the uid, so a recreated object of the same name is never hit.
pub async fn remove_unplanned<K>(
    ctx: &Context,
    owner: &Owner<'_>,
    store: &Store<K>,
    candidates: &[String],
    planned: &[(&str, String)],
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let kind = K::kind(&()).into_owned();
    let orphans: Vec<Arc<K>> = candidates
        .iter()
        .filter(|name| !planned.iter().any(|(k, n)| *k == kind && n == *name))
        .filter_map(|name| store.get(&kube::runtime::reflector::ObjectRef::new(name).within(owner.namespace)))
        .filter(|o| is_controlled_by(o.meta(), owner))
        .collect();
    for orphan in orphans {
        let name = orphan.name_any();
        let api: Api<K> = Api::namespaced(ctx.client.clone(), owner.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: orphan.meta().uid.clone(), resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) || has_code(&e, &[409]) => continue,
            Err(e) => return Err(Error::kube(format!("delete {kind} {}/{name}", owner.namespace), e)),
        }
        ctx.metrics.count_apply(&kind);
        info!(owner = %owner.name, namespace = %owner.namespace, child = %name, kind = %kind, "deleted child the plan no longer lists");
        let why =
            if kind == "PodDisruptionBudget" { "a single replica needs none" } else { "the owner no longer needs it" };
        let note = format!("deleted {kind} {name}: {why}");
        owner.publish(ctx, EventType::Normal, "Deleted", "Delete", note).await;
    }
    Ok(())
}

fn is_controlled_by(meta: &kube::api::ObjectMeta, owner: &Owner<'_>) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == owner.uid)
}

/// Brings one child to `desired`: creates it when it is not in the cache,
/// applies it when the cached child lacks a field we own, and otherwise
/// makes no call.
///
/// stead writes only to objects it created. The caches hold only objects
/// with our managed-by label, so a child missing from them is normally
/// absent, and a plain create (POST) makes it. But the user's own object of
/// the same name (say the Service `orders` they had before the cluster) is
/// invisible to the caches too; server-side apply would merge into it
/// wherever no other manager set a conflicting value, add our
/// ownerReference, and the garbage collector would delete it with the
/// cluster. A create never touches an existing object: its 409 means the
/// name is taken, and unless the object turns out to be ours (created a
/// moment ago, not yet in the cache) the cluster reports Degraded/ForeignChild
/// and nothing is written. A cached child without our controller
/// ownerReference is refused the same way. Only children we own are
/// server-side-applied, forced, which takes back fields someone edited.
pub async fn ensure<K>(
    ctx: &Context,
    owner: &Owner<'_>,
    child: Child,
    desired: Value,
    live: Option<Arc<K>>,
) -> Result<(Arc<K>, Option<Change>), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let child = &child;
    let name = child.name.clone();
    let live = match live {
        Some(live) => live,
        None => match create::<K>(ctx, owner, child, &desired).await? {
            Created::New(created) => {
                ctx.metrics.count_apply(child.kind);
                info!(owner = %owner.name, namespace = %owner.namespace, child = %name, kind = child.kind, "created child");
                return Ok((created, Some(Change::Created(child.kind, name))));
            }
            Created::Exists(ours) => ours,
        },
    };
    if let Some(foreign) = foreign(live.meta(), owner, child) {
        return Err(foreign);
    }
    let holds = match crate::cached_children::holds(live.meta(), &desired) {
        // Judged when this version reached the cache (a StatefulSet, kept without its template).
        Some(holds) => holds,
        None => {
            let live_json = serde_json::to_value(live.as_ref()).map_err(|source| Error::Serialize {
                what: format!("the cached {} {}/{name}", child.kind, owner.namespace),
                source,
            })?;
            is_subset(&desired, &live_json)
        }
    };
    if holds {
        return Ok((live, None));
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), owner.namespace);
    // Fields our create recorded as an update first become fields of our
    // apply, or a field we stop applying would stay on the child forever.
    // The cache keeps no field sets, so the patch comes from a fresh read.
    if managed_fields::handover_pending(live.meta(), FIELD_MANAGER) {
        let fresh = look_up::<K>(ctx, owner, child).await?;
        if let Some(foreign) = fresh.as_ref().and_then(|f| foreign(f.meta(), owner, child)) {
            return Err(foreign);
        }
        if let Some(handover) = fresh.as_ref().and_then(|f| managed_fields::handover_patch(f.meta(), FIELD_MANAGER)) {
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
            api.patch(&name, &params, &Patch::Merge(handover)).await.map_err(|e| {
                Error::kube(
                    format!("hand the created fields of {} {}/{name} to its apply", child.kind, owner.namespace),
                    e,
                )
            })?;
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&name, &params, &Patch::Apply(&desired))
        .await
        .map_err(|e| Error::kube(format!("apply {} {}/{name}", child.kind, owner.namespace), e))?;
    ctx.metrics.count_apply(child.kind);
    info!(owner = %owner.name, namespace = %owner.namespace, child = %name, kind = child.kind, "updated child");
    Ok((Arc::new(applied), Some(Change::Updated(child.kind, name))))
}

/// A write [`ensure`] made, for the one event a reconcile publishes about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created(&'static str, String),
    Updated(&'static str, String),
}

/// One Normal event for everything a reconcile created, and one for what it
/// updated, instead of one per child: a new cluster costs one event, not six.
pub async fn publish_changes(ctx: &Context, owner: &Owner<'_>, changes: &[Change]) {
    let list = |created: bool| -> Vec<String> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Created(kind, name) if created => Some(format!("{kind} {name}")),
                Change::Updated(kind, name) if !created => Some(format!("{kind} {name}")),
                _ => None,
            })
            .collect()
    };
    let created = list(true);
    if !created.is_empty() {
        let note = format!("created {}", created.join(", "));
        owner.publish(ctx, EventType::Normal, "Created", "Create", note).await;
    }
    let updated = list(false);
    if !updated.is_empty() {
        let note = format!("updated {} to match the DatabaseCluster", updated.join(", "));
        owner.publish(ctx, EventType::Normal, "Updated", "Apply", note).await;
    }
}

/// What creating a child found.
enum Created<K> {
    /// The create made it.
    New(Arc<K>),
    /// It exists already and is controlled by this cluster (our cache has not seen it yet).
    Exists(Arc<K>),
}

/// Creates a child with a plain POST of exactly the apply body, so that
/// later applies name the same fields.
///
/// A 409 means the name is taken. The object is then looked up (by name, a
/// list: the controller may list children but not get them) to tell our own
/// child, created by an earlier reconcile and not yet in the cache, from
/// someone else's, which is refused without a write.
async fn create<K>(ctx: &Context, owner: &Owner<'_>, child: &Child, desired: &Value) -> Result<Created<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let name = child.name.clone();
    let action = || format!("create {} {}/{name}", child.kind, owner.namespace);
    let body = serde_json::to_vec(desired).map_err(|source| Error::Serialize {
        what: format!("the desired {} {}/{name}", child.kind, owner.namespace),
        source,
    })?;
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
    let request = kube::core::Request::new(K::url_path(&(), Some(owner.namespace)))
        .create(&params, body)
        .map_err(|e| Error::kube(action(), kube::Error::BuildRequest(e)))?;
    let refused = match ctx.client.request::<K>(request).await {
        Ok(created) => return Ok(Created::New(Arc::new(created))),
        Err(e) if has_code(&e, &[409]) => e,
        Err(e) => return Err(Error::kube(action(), e)),
    };
    match look_up::<K>(ctx, owner, child).await? {
        Some(existing) => match foreign(existing.meta(), owner, child) {
            None => Ok(Created::Exists(Arc::new(existing))),
            Some(foreign) => {
                info!(owner = %owner.name, namespace = %owner.namespace, child = %name, kind = child.kind,
                    "the child's name is taken by an object stead did not create; not touching it");
                Err(foreign)
            }
        },
        // Deleted between the create and the look-up: a conflict, retried soon.
        None => Err(Error::kube(action(), refused)),
    }
}

/// The object under a child's name as the API server has it now, by a list
/// by name (the controller may list children but not get them).
async fn look_up<K>(ctx: &Context, owner: &Owner<'_>, child: &Child) -> Result<Option<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let name = &child.name;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), owner.namespace);
    let found = api
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .map_err(|e| Error::kube(format!("look up {} {}/{name}", child.kind, owner.namespace), e))?;
    Ok(found.items.into_iter().next())
}

/// The error for an object under a child's name that this cluster does not
/// control; `None` when it is ours. We never take over someone else's object.
fn foreign(meta: &kube::api::ObjectMeta, owner: &Owner<'_>, child: &Child) -> Option<Error> {
    let controller = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    if controller.is_some_and(|reference| reference.uid == owner.uid) {
        return None;
    }
    Some(Error::ForeignChild {
        kind: child.kind,
        namespace: owner.namespace.to_owned(),
        name: child.name.clone(),
        owner_kind: owner.kind,
        owner: owner.name.to_owned(),
        found: foreign_owner(meta),
    })
}
