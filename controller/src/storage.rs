//! Pure decision of which PersistentVolumeClaims to grow.
//!
//! A StatefulSet's `volumeClaimTemplates` cannot change, so a grown
//! `spec.storage.size` reaches the volumes by patching each existing claim
//! `data-<name>-<ordinal>`. Claims only ever grow: a claim already at or above
//! the size (grown by hand, or the spec shrank past the webhook) is left alone.
//!
//! Only a `Bound` claim can be resized: the API server refuses any change of
//! an unbound claim's spec (422, "spec is immutable after creation except
//! resources.requests and volumeAttributesClassName for bound claims"). A
//! claim still `Pending` (say, a `WaitForFirstConsumer` class whose pod is not
//! scheduled yet) is skipped; its binding is a PVC watch event, which brings
//! the cluster back here to grow it then.

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde_json::{Value, json};
use stead_crds::quantity::Quantity;

use crate::children::ClusterView;

/// One claim to grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub claim: String,
    pub from: String,
    pub to: String,
}

/// The claims of ordinals `0..replicas` whose requested storage is below the spec's size.
///
/// `claims` are the claims of the cluster's namespace; missing claims (pods
/// not created yet), claims not bound yet and claims being deleted are skipped.
pub fn expansions<'a>(
    view: &ClusterView,
    claims: impl IntoIterator<Item = &'a PersistentVolumeClaim>,
) -> Vec<Expansion> {
    let Ok(target) = Quantity::parse(&view.spec.storage.size) else {
        return Vec::new();
    };
    let claims: Vec<&PersistentVolumeClaim> = claims.into_iter().collect();
    view.volume_claim_names()
        .into_iter()
        .filter_map(|name| {
            let claim = claims.iter().find(|c| c.metadata.name.as_deref() == Some(name.as_str()))?;
            if claim.metadata.deletion_timestamp.is_some() || !is_bound(claim) {
                return None;
            }
            let current = requested_storage(claim)?;
            let smaller = Quantity::parse(&current).is_ok_and(|q| q.cmp(&target) == Ordering::Less);
            smaller.then(|| Expansion { claim: name, from: current, to: view.spec.storage.size.clone() })
        })
        .collect()
}

/// Whether the claim is bound to a volume, the only state in which it can be resized.
fn is_bound(claim: &PersistentVolumeClaim) -> bool {
    claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

fn requested_storage(claim: &PersistentVolumeClaim) -> Option<String> {
    claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").map(|q| q.0.clone())
}

/// The merge patch that asks for the new size.
pub fn expansion_patch(expansion: &Expansion) -> Value {
    json!({ "spec": { "resources": { "requests": { "storage": expansion.to } } } })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use stead_crds::{DatabaseCluster, DatabaseClusterSpec, StorageSpec};

    use super::*;

    fn view(size: &str, replicas: i32) -> ClusterView {
        let mut c = DatabaseCluster::new(
            "orders",
            DatabaseClusterSpec {
                image: "postgres:17.2".into(),
                replicas: Some(replicas),
                storage: StorageSpec { size: size.into(), storage_class_name: None },
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("shop".into());
        c.metadata.uid = Some("u".into());
        ClusterView::new(&c).unwrap()
    }

    fn claim(name: &str, size: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PersistentVolumeClaimSpec {
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_owned(), Q(size.into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus { phase: Some("Bound".into()), ..Default::default() }),
        }
    }

    fn in_phase(mut claim: PersistentVolumeClaim, phase: Option<&str>) -> PersistentVolumeClaim {
        claim.status = phase.map(|p| PersistentVolumeClaimStatus { phase: Some(p.into()), ..Default::default() });
        claim
    }

    #[test]
    fn expansion_table() {
        let mut deleting = claim("data-orders-1", "10Gi");
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        // (case, spec size, replicas, claims, claims to grow)
        type Row<'a> = (&'a str, &'a str, i32, Vec<PersistentVolumeClaim>, Vec<&'a str>);
        let rows: Vec<Row> = vec![
            ("same size", "10Gi", 2, vec![claim("data-orders-0", "10Gi"), claim("data-orders-1", "10Gi")], vec![]),
            (
                "grown",
                "20Gi",
                2,
                vec![claim("data-orders-0", "10Gi"), claim("data-orders-1", "10Gi")],
                vec!["data-orders-0", "data-orders-1"],
            ),
            ("same value, other unit", "10240Mi", 1, vec![claim("data-orders-0", "10Gi")], vec![]),
            ("never shrink", "5Gi", 1, vec![claim("data-orders-0", "10Gi")], vec![]),
            (
                "half done",
                "20Gi",
                2,
                vec![claim("data-orders-0", "20Gi"), claim("data-orders-1", "10Gi")],
                vec!["data-orders-1"],
            ),
            ("claim not created yet", "20Gi", 2, vec![claim("data-orders-0", "10Gi")], vec!["data-orders-0"]),
            (
                "beyond replicas untouched",
                "20Gi",
                1,
                vec![claim("data-orders-0", "10Gi"), claim("data-orders-1", "10Gi")],
                vec!["data-orders-0"],
            ),
            ("other clusters' claims untouched", "20Gi", 1, vec![claim("data-orders2-0", "10Gi")], vec![]),
            ("being deleted", "20Gi", 2, vec![claim("data-orders-0", "20Gi"), deleting], vec![]),
            ("unparsable spec", "lots", 1, vec![claim("data-orders-0", "10Gi")], vec![]),
            (
                "pending claims cannot be resized yet",
                "20Gi",
                3,
                vec![
                    in_phase(claim("data-orders-0", "10Gi"), Some("Pending")),
                    in_phase(claim("data-orders-1", "10Gi"), None),
                    claim("data-orders-2", "10Gi"),
                ],
                vec!["data-orders-2"],
            ),
            (
                "lost claims are left alone",
                "20Gi",
                1,
                vec![in_phase(claim("data-orders-0", "10Gi"), Some("Lost"))],
                vec![],
            ),
        ];
        for (case, size, replicas, claims, want) in rows {
            let got: Vec<String> = expansions(&view(size, replicas), &claims).into_iter().map(|e| e.claim).collect();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn expansion_carries_sizes_and_patch() {
        let got = expansions(&view("20Gi", 1), &[claim("data-orders-0", "10Gi")]);
        let want = Expansion { claim: "data-orders-0".into(), from: "10Gi".into(), to: "20Gi".into() };
        assert_eq!(expansion_patch(&want), json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}}));
        assert_eq!(got, [want]);
    }
}
