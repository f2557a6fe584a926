//! Reconciles one App into its Deployment, Service and (while
//! `spec.ingress` is set) Ingress, through the machinery every kind shares
//! ([`crate::apply`]): nothing is written when the children are as planned,
//! a foreign object of a child's name is never written, and the status
//! follows the Deployment's rollout.
//!
//! An App needs no finalizer: its children carry its controller
//! ownerReference, so the garbage collector removes them with it, and it
//! owns no data to keep.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use stead_crds::app::App;
use stead_crds::names::FIELD_MANAGER;
use tracing::debug;

use crate::app_children::{self, AppView};
use crate::app_status::{self, Outcome};
use crate::apply::{ensure, publish_changes, remove_unplanned};
use crate::context::Context;
use crate::error::{Error, is_not_found};

/// Reconciles one App; the entry point handed to the applier.
pub async fn reconcile(app: Arc<App>, ctx: Arc<Context>) -> Result<Action, Error> {
    crate::reconciler::measured(app.as_ref(), &ctx, reconcile_inner(&app, &ctx)).await
}

async fn reconcile_inner(app: &App, ctx: &Context) -> Result<Action, Error> {
    if app.metadata.deletion_timestamp.is_some() {
        // The garbage collector takes the children with it.
        return Ok(Action::await_change());
    }
    let view = AppView::new(app)?;
    let owner = view.owner(app);
    let resync = Action::requeue(ctx.settings.resync);

    // Guard: the webhook may be bypassed. Judge as it would, touch nothing.
    let verdict = stead_crds::app_validation::validate_create(app);
    if !verdict.errors.is_empty() {
        let messages: Vec<String> = verdict.errors.iter().map(ToString::to_string).collect();
        let message = messages.join("; ");
        write_status(app, ctx, None, Outcome::Failed { reason: "InvalidSpec", message: &message }).await?;
        return Ok(resync);
    }

    let stores = &ctx.stores;
    // The Service and the Ingress together; the Deployment after them.
    let service = ensure::<Service>(
        ctx,
        &owner,
        app_children::child(&view, "Service"),
        app_children::service(&view),
        cached(&stores.app_services, &view),
    );
    let ingress = async {
        match app_children::ingress(&view) {
            Some(body) => {
                let live = cached(&stores.ingresses, &view);
                ensure::<Ingress>(ctx, &owner, app_children::child(&view, "Ingress"), body, live).await.map(|(_, c)| c)
            }
            None => Ok(None),
        }
    };
    let (service, ingress) = futures::join!(service, ingress);
    let mut changes = Vec::new();
    let written = async {
        changes.extend(service?.1);
        changes.extend(ingress?);
        let live = cached(&stores.deployments, &view);
        let (deployment, change) = ensure::<Deployment>(
            ctx,
            &owner,
            app_children::child(&view, "Deployment"),
            app_children::deployment(&view),
            live,
        )
        .await?;
        changes.extend(change);
        Ok::<_, Error>(deployment)
    }
    .await;
    publish_changes(ctx, &owner, &changes).await;
    let deployment = match written {
        Ok(deployment) => deployment,
        Err(err) => {
            let message = err.to_string();
            let reason = err.reason();
            write_status(app, ctx, None, Outcome::Failed { reason, message: &message }).await?;
            owner.publish(ctx, EventType::Warning, reason, "Reconcile", message).await;
            return Err(err);
        }
    };
    // The Ingress goes when spec.ingress does.
    let ingress = [view.name.clone()];
    remove_unplanned(ctx, &owner, &stores.ingresses, &ingress, &app_children::planned(&view)).await?;
    write_status(app, ctx, Some(&deployment), Outcome::Reconciled).await?;
    Ok(resync)
}

/// The cached child of `view` (every child is named after the App).
fn cached<K>(store: &Store<K>, view: &AppView) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(&view.name).within(&view.namespace))
}

/// Writes the status through `/status` only when it differs from the stored one.
async fn write_status(
    app: &App,
    ctx: &Context,
    deployment: Option<&Deployment>,
    outcome: Outcome<'_>,
) -> Result<(), Error> {
    let status = app_status::compute(app, deployment, outcome, (ctx.now)());
    if app.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let name = app.name_any();
    let namespace = app.namespace().unwrap_or_default();
    let api: Api<App> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    let body = json!({
        "metadata": { "resourceVersion": app.metadata.resource_version },
        "status": crate::diff::status_merge_patch(app.status.as_ref(), &status),
    });
    match api.patch_status(&name, &params, &Patch::Merge(body)).await {
        Ok(_) => {
            ctx.metrics.status_writes.inc();
            if let Some(version) = app.metadata.resource_version.as_deref() {
                ctx.note_superseded(&ObjectRef::from_obj(app), version);
            }
            debug!(app = %name, namespace = %namespace, "status written");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube(format!("write status of App {namespace}/{name}"), e)),
    }
}
