//! Cached StatefulSets keep a verdict instead of their pod template.
//!
//! The pod template is most of a StatefulSet (about 23 KB of heap per cached
//! copy, two thirds of the controller's heap at 1,000 clusters), and the
//! reconciler reads it for one question only: does the live object hold
//! every field we would apply (`diff::is_subset`)? So that question is
//! answered once, when a version of the StatefulSet arrives in the cache,
//! against its cluster as cached at that moment. The answer kept is the hash
//! of the desired body the live object was found to hold ([`HOLDS`], on the
//! cached copy only; empty when it holds none); then the template is dropped.
//!
//! A reconcile whose desired body has that hash knows the object holds it.
//! Any other desired body (the cluster changed since) is applied; one that
//! merely looks different would be applied once, after which the new
//! version arrives and is judged again. Every change to the object (a
//! `kubectl edit`, a status update) is a new version that is judged afresh,
//! so drift is still seen and repaired, as with the whole template cached.
//!
//! The StatefulSet watch starts only once the DatabaseCluster cache is
//! complete (see `controller::Informers`), so the cluster of every arriving
//! StatefulSet is known. One without a cached cluster holds nothing, and is
//! applied if a reconcile of that cluster comes.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::ObjectMeta;
use serde_json::Value;
use stead_crds::DatabaseCluster;

use crate::children::{self, ClusterView};
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

/// Judges `sts` as it arrives in the cache against `cluster` (its owner as
/// cached), records the verdict and drops the pod template.
pub fn judge_and_slim(sts: &mut StatefulSet, cluster: Option<&DatabaseCluster>, instance_image: &str) {
    if let Some(annotations) = sts.metadata.annotations.as_mut() {
        // Only this function sets it; a value from the API server is someone's mistake.
        annotations.remove(HOLDS);
    }
    let holds = cluster.and_then(|cluster| {
        let desired = desired_stateful_set(cluster, instance_image, Some(sts)).ok()?;
        let live = serde_json::to_value(&*sts).ok()?;
        is_subset(&desired, &live).then(|| body_hash(&desired))
    });
    sts.metadata.annotations.get_or_insert_default().insert(HOLDS.to_owned(), holds.unwrap_or_default());
    sts.spec.template = PodTemplateSpec::default();
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
    fn a_copy_without_a_verdict_is_compared_whole() {
        let c = finalized(cluster(spec()));
        let sts = live_sts(&c, 3);
        let desired = desired_stateful_set(&c, IMAGE, Some(&sts)).unwrap();
        assert_eq!(holds(&sts.metadata, &desired), None);
    }
}
