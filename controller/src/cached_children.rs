//! Cached children keep a verdict instead of their bodies.
//!
//! The reconciler reads a cached StatefulSet, Service or PDB of a cluster
//! for one question above all: does the live object hold every field we
//! would apply (`diff::is_subset`)? So that question is answered once, when
//! a version of the child arrives in the cache, against its cluster as
//! cached at that moment. The answer kept is the hash of the desired body
//! the live object was found to hold ([`HOLDS`], on the cached copy only;
//! empty when it holds none). Then what nothing else reads is dropped: a
//! StatefulSet's pod template (about 23 KB of heap per copy, two thirds of
//! the controller's heap at 1,000 clusters), and a Service's or PDB's spec,
//! status, labels and annotations.
//!
//! A reconcile whose desired body has that hash knows the object holds it.
//! Any other desired body (the cluster changed since) is applied; one that
//! merely looks different would be applied once, after which the new
//! version arrives and is judged again. Every change to the object (a
//! `kubectl edit`, a status update) is a new version that is judged afresh,
//! so drift is still seen and repaired, as with whole objects cached.
//!
//! These watches start only once the DatabaseCluster cache is complete (see
//! `controller::Informers`), so the cluster of every arriving child is
//! known. A child without a cached cluster holds nothing, and is applied if
//! a reconcile of that cluster comes.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use kube::api::ObjectMeta;
use serde::Serialize;
use serde_json::Value;
use stead_crds::DatabaseCluster;

use crate::children::{self, ChildKind, ClusterView};
use crate::diff::is_subset;
use crate::error::Error;

/// On a cached copy only (never on the API server): the hash of the desired
/// body this version of the object was found to hold.
pub const HOLDS: &str = "stead.dev/cached-copy-holds";

/// The StatefulSet `cluster` wants, given the live one (its immutable fields
/// are kept as they are); what a reconcile applies.
pub fn desired_stateful_set(
    cluster: &DatabaseCluster,
    instance_image: &str,
    live: Option<&StatefulSet>,
) -> Result<Value, Error> {
    let mut view = ClusterView::new(cluster)?;
    instance_image.clone_into(&mut view.instance_image);
    children::stateful_set(&view, live)
}

/// A hash of the whole body, stable across processes.
pub fn body_hash(body: &Value) -> String {
    format!("{:016x}", children::fnv1a(body.to_string().as_bytes()))
}

/// The Service named `name` as `cluster` wants it; `None` for a name no
/// Service of today has (the all-pods Service of stead 0.1).
pub fn desired_service(cluster: &DatabaseCluster, name: &str) -> Option<Value> {
    let view = ClusterView::new(cluster).ok()?;
    [ChildKind::HeadlessService, ChildKind::PrimaryService, ChildKind::ReplicaService, ChildKind::AnyService]
        .into_iter()
        .find(|kind| kind.name(&view.name) == name)
        .map(|kind| children::service(&view, kind))
}

/// The PodDisruptionBudget as `cluster` would want it.
pub fn desired_pdb(cluster: &DatabaseCluster) -> Option<Value> {
    ClusterView::new(cluster).ok().map(|view| children::pod_disruption_budget(&view))
}

/// Records on `object` the hash of `desired` when the object holds it (and
/// an empty verdict otherwise).
fn judge<K: Resource + Serialize>(object: &mut K, desired: Option<&Value>) {
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        // Only this module sets it; a value from the API server is someone's mistake.
        annotations.remove(HOLDS);
    }
    let holds = desired.and_then(|desired| {
        let live = serde_json::to_value(&*object).ok()?;
        is_subset(desired, &live).then(|| body_hash(desired))
    });
    object.meta_mut().annotations.get_or_insert_default().insert(HOLDS.to_owned(), holds.unwrap_or_default());
}

/// Judges `sts` as it arrives in the cache against `cluster` (its owner as
/// cached), records the verdict and drops the pod template.
pub fn judge_and_slim(sts: &mut StatefulSet, cluster: Option<&DatabaseCluster>, instance_image: &str) {
    let desired = cluster.and_then(|cluster| desired_stateful_set(cluster, instance_image, Some(sts)).ok());
    judge(sts, desired.as_ref());
    sts.spec.template = PodTemplateSpec::default();
}

/// As [`judge_and_slim`] for a Service: only its identity, owner and verdict stay.
pub fn judge_and_slim_service(service: &mut Service, cluster: Option<&DatabaseCluster>) {
    let name = service.metadata.name.clone().unwrap_or_default();
    let desired = cluster.and_then(|cluster| desired_service(cluster, &name));
    judge(service, desired.as_ref());
    service.spec = None;
    service.status = None;
    keep_only_identity(&mut service.metadata);
}

/// As [`judge_and_slim`] for a PodDisruptionBudget.
pub fn judge_and_slim_pdb(pdb: &mut PodDisruptionBudget, cluster: Option<&DatabaseCluster>) {
    let desired = cluster.and_then(desired_pdb);
    judge(pdb, desired.as_ref());
    pdb.spec = None;
    pdb.status = None;
    keep_only_identity(&mut pdb.metadata);
}

/// Drops labels and every annotation but the verdict: the reconciler finds
/// these children by name and knows them by their controller reference.
fn keep_only_identity(meta: &mut ObjectMeta) {
    meta.labels = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|key, _| key == HOLDS);
    }
}

/// Whether the cached copy with `meta` holds `desired`: `Some` when it was
/// judged on arrival, `None` when it carries no verdict (a copy that still
/// has its template, as tests seed them; compare it whole).
pub fn holds(meta: &ObjectMeta, desired: &Value) -> Option<bool> {
    let judged = meta.annotations.as_ref()?.get(HOLDS)?;
    Some(*judged == body_hash(desired))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::fixtures::{cluster, finalized, live_sts, spec};
    use stead_crds::DatabaseClusterSpec;

    const IMAGE: &str = "ghcr.io/stead-dev/stead:0.1.0";

    #[test]
    fn a_statefulset_that_holds_the_desired_body_is_cached_without_its_template() {
        let c = finalized(cluster(spec()));
        let mut sts = live_sts(&c, 3);
        let desired = desired_stateful_set(&c, IMAGE, Some(&sts)).unwrap();
        judge_and_slim(&mut sts, Some(&c), IMAGE);
        assert_eq!(sts.spec.template, PodTemplateSpec::default(), "the template is dropped");
        assert_eq!(holds(&sts.metadata, &desired), Some(true));
        assert!(sts.spec.volume_claim_templates.is_some(), "what the desired body is built from stays");
        // The next reconcile builds the same body from the slimmed copy.
        assert_eq!(desired_stateful_set(&c, IMAGE, Some(&sts)).unwrap(), desired);
    }

    #[test]
    fn verdicts_table() {
        let c = finalized(cluster(spec()));
        let bigger = finalized(cluster(DatabaseClusterSpec { replicas: Some(5), ..spec() }));
        let mut edited = live_sts(&c, 3);
        // `kubectl edit` of a field we own: the new version arrives and is judged again.
        edited.spec.template.spec.as_mut().unwrap().containers[0].image = Some("postgres:14".into());
        let mut forged = live_sts(&c, 3);
        forged.metadata.annotations.get_or_insert_default().insert(HOLDS.to_owned(), "forged".into());
        // (case, the StatefulSet arriving, its cluster as cached then, the cluster reconciled, verdict)
        type Row<'a> = (&'a str, StatefulSet, Option<&'a DatabaseCluster>, &'a DatabaseCluster, Option<bool>);
        let rows: [Row<'_>; 5] = [
            ("as applied", live_sts(&c, 3), Some(&c), &c, Some(true)),
            ("edited by someone", edited, Some(&c), &c, Some(false)),
            ("the cluster changed since", live_sts(&c, 3), Some(&c), &bigger, Some(false)),
            ("no cached cluster", live_sts(&c, 3), None, &c, Some(false)),
            ("a verdict from the API server is ignored", forged, Some(&c), &c, Some(true)),
        ];
        for (case, mut sts, cached, reconciled, want) in rows {
            let original = sts.clone();
            judge_and_slim(&mut sts, cached, IMAGE);
            let desired = desired_stateful_set(reconciled, IMAGE, Some(&original)).unwrap();
            assert_eq!(holds(&sts.metadata, &desired), want, "{case}");
        }
    }

    #[test]
    fn services_and_the_pdb_are_cached_as_identity_owner_and_verdict() {
        use crate::fixtures::{live_pdb, live_services};
        let c = finalized(cluster(spec()));
        let view = ClusterView::new(&c).unwrap();
        for mut service in live_services(&c) {
            let name = service.metadata.name.clone().unwrap();
            let desired = desired_service(&c, &name).unwrap();
            let owner = service.metadata.owner_references.clone();
            judge_and_slim_service(&mut service, Some(&c));
            assert_eq!(holds(&service.metadata, &desired), Some(true), "{name}");
            assert_eq!((service.spec.as_ref(), service.metadata.labels.as_ref()), (None, None), "{name}");
            assert_eq!(service.metadata.owner_references, owner, "{name}: the owner is how it is known");
        }
        let mut pdb = live_pdb(&c);
        judge_and_slim_pdb(&mut pdb, Some(&c));
        assert_eq!(holds(&pdb.metadata, &children::pod_disruption_budget(&view)), Some(true));
        assert_eq!(pdb.spec, None);

        // Edited by someone: holds nothing, and is applied.
        let mut edited = live_services(&c).remove(1);
        edited.spec.as_mut().unwrap().selector = Some([("app".to_owned(), "other".to_owned())].into());
        let name = edited.metadata.name.clone().unwrap();
        judge_and_slim_service(&mut edited, Some(&c));
        assert_eq!(holds(&edited.metadata, &desired_service(&c, &name).unwrap()), Some(false));
        // The all-pods Service of stead 0.1 is wanted by no one.
        assert_eq!(desired_service(&c, "orders"), None);
    }

    #[test]
    fn a_copy_without_a_verdict_is_compared_whole() {
        let c = finalized(cluster(spec()));
        let sts = live_sts(&c, 3);
        let desired = desired_stateful_set(&c, IMAGE, Some(&sts)).unwrap();
        assert_eq!(holds(&sts.metadata, &desired), None);
    }
}
