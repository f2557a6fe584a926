//! The steady state against children as a real kube-apiserver returns them.
//!
//! The fixtures in `testdata/api-server` (see its README) carry everything the
//! API server adds: defaults, canonical quantities, managedFields, status.
//! None of it may count as drift, or every reconcile would apply again and
//! the steady state would not be silent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, ResourceRequirements, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use stead_crds::{DatabaseClusterSpec, StorageSpec};

use crate::children::{self, APPLIED_HASH, ChildKind, ClusterView};
use crate::diff::is_subset;
use crate::fixtures::{NAME, cluster, context_with, finalized, settled, verify};
use crate::reconciler::reconcile;
use crate::storage::expansions;

const STATEFUL_SET: &str = include_str!("../testdata/api-server/statefulset.json");
const HEADLESS: &str = include_str!("../testdata/api-server/service-headless.json");
const PRIMARY: &str = include_str!("../testdata/api-server/service-rw.json");
const REPLICAS: &str = include_str!("../testdata/api-server/service-ro.json");
const ANY: &str = include_str!("../testdata/api-server/service-r.json");
const PDB: &str = include_str!("../testdata/api-server/pdb.json");
const CLAIM: &str = include_str!("../testdata/api-server/pvc-0.json");

/// The spec the fixtures were written for; quantities deliberately not in canonical form.
fn spec() -> DatabaseClusterSpec {
    let list = |pairs: &[(&str, &str)]| {
        Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned()))).collect())
    };
    DatabaseClusterSpec {
        image: "postgres:17.2".into(),
        replicas: Some(3),
        port: Some(5432),
        resources: Some(ResourceRequirements {
            requests: list(&[("cpu", "0.5"), ("memory", "1024Mi")]),
            limits: list(&[("memory", "1Gi")]),
            ..Default::default()
        }),
        storage: StorageSpec { size: "10Gi".into(), storage_class_name: Some("fast-ssd".into()) },
        ..Default::default()
    }
}

fn view() -> ClusterView {
    ClusterView::new(&cluster(spec())).unwrap()
}

/// The fixture as JSON, carrying the hash of `desired` as the controller's last apply would have.
fn fixture(text: &str, desired: &Value) -> Value {
    let hash = desired["metadata"]["annotations"][APPLIED_HASH].as_str().unwrap();
    serde_json::from_str(&text.replace("${HASH}", hash)).unwrap()
}

/// The fixture as the informer cache holds it (typed), and as `ensure` compares it (JSON again).
fn cached<K: DeserializeOwned + serde::Serialize>(live: Value) -> (K, Value) {
    let typed: K = serde_json::from_value(live).unwrap();
    let json = serde_json::to_value(&typed).unwrap();
    (typed, json)
}

struct Live {
    sts: StatefulSet,
    services: Vec<Service>,
    pdb: PodDisruptionBudget,
}

/// Every child as stored, and the body the controller would apply for each.
fn children_and_bodies() -> (Live, Vec<(&'static str, Value, Value)>) {
    let view = view();
    let created = children::stateful_set(&view, None).unwrap();
    let (sts, sts_json): (StatefulSet, _) = cached(fixture(STATEFUL_SET, &created));
    let sts_body = children::stateful_set(&view, Some(&sts)).unwrap();
    let pdb_body = children::pod_disruption_budget(&view);
    let (pdb, pdb_json): (PodDisruptionBudget, _) = cached(fixture(PDB, &pdb_body));
    let mut rows = vec![("StatefulSet", sts_body, sts_json), ("PodDisruptionBudget", pdb_body, pdb_json)];
    let mut services = Vec::new();
    for (what, kind, text) in [
        ("headless Service", ChildKind::HeadlessService, HEADLESS),
        ("-rw Service", ChildKind::PrimaryService, PRIMARY),
        ("-ro Service", ChildKind::ReplicaService, REPLICAS),
        ("-r Service", ChildKind::AnyService, ANY),
    ] {
        let body = children::service(&view, kind);
        let (service, json): (Service, _) = cached(fixture(text, &body));
        services.push(service);
        rows.push((what, body, json));
    }
    (Live { sts, services, pdb }, rows)
}

#[test]
fn api_server_defaults_and_canonical_quantities_are_not_drift() {
    let (_, rows) = children_and_bodies();
    for (what, body, live) in rows {
        assert!(is_subset(&body, &live), "{what}: the stored object must already satisfy the apply body");
    }
}

#[test]
fn the_stateful_set_body_applies_the_stored_claim_template() {
    let (live, _) = children_and_bodies();
    let body = children::stateful_set(&view(), Some(&live.sts)).unwrap();
    // Same hash as at creation: the template the API server defaulted does not count.
    let created = children::stateful_set(&view(), None).unwrap();
    assert_eq!(body["metadata"]["annotations"], created["metadata"]["annotations"]);
    assert_eq!(
        body["spec"]["volumeClaimTemplates"],
        json!([{
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "labels": stead_crds::names::child_labels(NAME)},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Gi"}},
                "storageClassName": "fast-ssd",
            },
        }])
    );
}

#[test]
fn real_drift_in_api_server_objects_is_seen() {
    let (_, rows) = children_and_bodies();
    let body = |what: &str| rows.iter().find(|(w, _, _)| *w == what).unwrap().clone();
    let c = "/spec/template/spec/containers/0";
    // (case, child, JSON pointer in the stored object, value someone wrote there)
    let edits = [
        ("kubectl set image", "StatefulSet", format!("{c}/image"), json!("postgres:9")),
        ("kubectl scale", "StatefulSet", "/spec/replicas".to_owned(), json!(5)),
        ("probe tuned by hand", "StatefulSet", format!("{c}/readinessProbe/periodSeconds"), json!(30)),
        ("cpu request changed", "StatefulSet", format!("{c}/resources/requests/cpu"), json!("750m")),
        ("our label edited", "StatefulSet", "/metadata/labels/app.kubernetes.io~1component".to_owned(), json!("x")),
        (
            "a body we no longer send",
            "StatefulSet",
            "/metadata/annotations/stead.dev~1applied-hash".to_owned(),
            json!("0"),
        ),
        ("selector edited", "-rw Service", "/spec/selector/app.kubernetes.io~1instance".to_owned(), json!("x")),
        ("numeric targetPort", "-rw Service", "/spec/ports/0/targetPort".to_owned(), json!(5432)),
        ("publishNotReadyAddresses off", "headless Service", "/spec/publishNotReadyAddresses".to_owned(), json!(false)),
        ("maxUnavailable as a percentage", "PodDisruptionBudget", "/spec/maxUnavailable".to_owned(), json!("50%")),
    ];
    for (case, what, pointer, value) in edits {
        let (_, desired, mut live) = body(what);
        *live.pointer_mut(&pointer).unwrap_or_else(|| panic!("{case}: no {pointer}")) = value;
        assert!(!is_subset(&desired, &live), "{case}: must be repaired");
    }
}

#[test]
fn a_stored_claim_needs_no_expansion_until_the_size_grows() {
    let claim: PersistentVolumeClaim = serde_json::from_str(CLAIM).unwrap();
    let with_size = |size: &str| {
        let mut s = spec();
        s.storage.size = size.into();
        s.replicas = Some(1);
        ClusterView::new(&cluster(s)).unwrap()
    };
    assert!(expansions(&with_size("10Gi"), [&claim]).is_empty());
    assert!(expansions(&with_size("10240Mi"), [&claim]).is_empty(), "same value, other unit");
    let grow = expansions(&with_size("20Gi"), [&claim]);
    assert_eq!(
        grow.iter().map(|e| (e.claim.as_str(), e.from.as_str())).collect::<Vec<_>>(),
        [("data-orders-0", "10Gi")]
    );
}

#[tokio::test]
async fn a_settled_cluster_over_api_server_objects_makes_no_call() {
    let (live, _) = children_and_bodies();
    let claims: Vec<PersistentVolumeClaim> = (0..3)
        .map(|i| {
            let mut claim: PersistentVolumeClaim = serde_json::from_str(CLAIM).unwrap();
            claim.metadata.name = Some(format!("data-{NAME}-{i}"));
            claim
        })
        .collect();
    let c = Arc::new(settled(finalized(cluster(spec())), Some(&live.sts)));
    // The status as the API server stores it and the watch returns it: through JSON.
    let c = Arc::new(serde_json::from_value(serde_json::to_value(c.as_ref()).unwrap()).unwrap());
    let (ctx, server) =
        context_with(|w| w.seed([live.sts.clone()], live.services.clone(), [live.pdb.clone()], claims.clone()));
    let server = server.expect(vec![]);
    for _ in 0..2 {
        reconcile(Arc::clone(&c), ctx.clone()).await.unwrap();
    }
    drop(ctx);
    verify(server).await;
}
