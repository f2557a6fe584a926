//! Reconciler tests against the mock API server: every call is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use stead_crds::instance_api::InstanceStatus;
use stead_crds::names::FINALIZER;
use stead_crds::{DatabaseCluster, DatabaseClusterSpec, StorageSpec};

use crate::children::{self, ChildKind, ClusterView};
use crate::error::ErrorKind;
use crate::fixtures::*;
use crate::metrics::render;
use crate::reconciler::{error_policy, reconcile};

/// The condition of `type_` in a written status: (status, reason, message).
fn condition(status: &Value, type_: &str) -> (String, String, String) {
    let c = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap();
    let s = |k: &str| c[k].as_str().unwrap().to_owned();
    (s("status"), s("reason"), s("message"))
}

fn triple(s: &str, r: &str, m: &str) -> (String, String, String) {
    (s.to_owned(), r.to_owned(), m.to_owned())
}

fn metric(ctx: &crate::Context, line_start: &str) -> Option<String> {
    render(&ctx.registry).unwrap().lines().find(|l| l.starts_with(line_start)).map(str::to_owned)
}

/// A reconcile that applied the children polls the instances again soon.
fn resync() -> Action {
    Action::requeue(crate::cli::POLL)
}

/// Paused and invalid clusters are looked at again only on the slow resync.
fn slow_resync() -> Action {
    Action::requeue(crate::cli::RESYNC)
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_only() {
    let c = cluster(spec());
    let (ctx, server) = context();
    let server = server.expect(vec![add_finalizer(&c)]);
    let action = reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change(), "the finalizer patch itself triggers the next reconcile");
    drop(ctx);
    verify(server).await;
}

/// The creates of a new cluster's first reconcile: the Secret, the Services
/// and the PDB together (sent in this order); nothing is cached yet, so every
/// child is created with a POST of exactly its apply body, which can never
/// change an object that exists already. The StatefulSet after them: its pods
/// read the password from the Secret.
fn creates_of_a_new_cluster(view: &ClusterView) -> Vec<Call> {
    vec![
        create_secret(Reply::Echo),
        create(service_create_uri(), children::service(view, ChildKind::HeadlessService)),
        create(service_create_uri(), children::service(view, ChildKind::PrimaryService)),
        create(service_create_uri(), children::service(view, ChildKind::ReplicaService)),
        create(service_create_uri(), children::service(view, ChildKind::AnyService)),
        create(pdb_create_uri(), children::pod_disruption_budget(view)),
        create(sts_create_uri(), children::stateful_set(view, None).unwrap()),
    ]
}

#[tokio::test]
async fn first_apply_creates_every_child_then_writes_status() {
    let c = finalized(cluster(spec()));
    let view = ClusterView::new(&c).unwrap();
    let (ctx, server) = context();
    let status_check = |status: &Value| {
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["replicas"], 0, "the StatefulSet reports no pods yet");
        assert_eq!(status["readyReplicas"], 0);
        assert_eq!(status["selector"], "app.kubernetes.io/instance=orders,app.kubernetes.io/name=databasecluster");
        assert_eq!(
            condition(status, "Available"),
            triple("False", "NoPrimary", "no instance is the primary yet; 0/3 instances ready")
        );
        assert_eq!(condition(status, "ReplicationHealthy").1, "ReplicasStarting");
        assert_eq!(status["endpoints"]["readWrite"], "orders-rw.shop.svc:5432");
        assert_eq!(status["endpoints"]["readOnly"], "orders-ro.shop.svc:5432");
        assert_eq!(status["endpoints"]["any"], "orders-r.shop.svc:5432");
        let roles: Vec<&str> =
            status["instances"].as_array().unwrap().iter().map(|i| i["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["pending", "pending", "pending"], "no pod has an IP yet");
        assert_eq!(condition(status, "Progressing").0, "True");
        assert_eq!(condition(status, "Degraded"), triple("False", "AsExpected", "no problems found"));
        assert_eq!(status["conditions"][0]["lastTransitionTime"], "2023-11-14T22:13:20Z");
        assert_eq!(status["credentialsSecret"], SECRET);
    };
    let mut calls = creates_of_a_new_cluster(&view);
    calls.extend([
        // One event for all of it, not one per child.
        event("Created", "Normal", |note| {
            assert_eq!(
                note,
                "created Secret orders-credentials (user postgres, a generated password; kept when the cluster is \
                 deleted), Service orders-headless, Service orders-rw, Service orders-ro, Service orders-r, \
                 PodDisruptionBudget orders, StatefulSet orders"
            );
        }),
        status_patch(&c, status_check),
    ]);
    let server = server.expect(calls);
    let action = reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    assert_eq!(action, resync());
    assert_eq!(
        metric(&ctx, "stead_controller_child_applies_total{kind=\"StatefulSet\"}").unwrap(),
        "stead_controller_child_applies_total{kind=\"StatefulSet\"} 1"
    );
    assert!(metric(&ctx, "stead_controller_status_writes_total").unwrap().ends_with(" 1"));
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_copy_older_than_our_status_write_is_not_judged_again() {
    // The children's watch events trigger a second reconcile while the cache
    // still holds the version our status write replaced. Judging it would
    // create the Secret again (409) and write a status that fails its precondition.
    let c = finalized(cluster(spec()));
    let view = ClusterView::new(&c).unwrap();
    let (ctx, server) = context();
    let mut calls = creates_of_a_new_cluster(&view);
    calls.extend([event("Created", "Normal", |_| {}), status_patch(&c, |_| {})]);
    let server = server.expect(calls);
    assert_eq!(reconcile(Arc::new(c.clone()), ctx.clone()).await.unwrap(), resync());
    // The same copy again: no call, looked at again in a moment.
    let again = reconcile(Arc::new(c.clone()), ctx.clone()).await.unwrap();
    assert_eq!(again, Action::requeue(crate::reconciler::CACHE_CATCH_UP));
    assert!(metric(&ctx, "stead_controller_cache_behind_total").unwrap().ends_with(" 1"));
    assert!(metric(&ctx, "stead_controller_reconciles_total").unwrap().ends_with(" 1"), "not counted as a reconcile");
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_newer_copy_is_judged_after_our_write() {
    let c = finalized(cluster(spec()));
    let (ctx, _server) = context();
    ctx.note_superseded(&ObjectRef::from_obj(&c), c.metadata.resource_version.as_deref().unwrap());
    assert!(ctx.cache_behind(&c));
    let mut newer = c.clone();
    newer.metadata.resource_version = Some("8".into());
    assert!(!ctx.cache_behind(&newer), "the cache has seen the write (or a later one)");
    assert!(!ctx.cache_behind(&c), "the note is forgotten once the cache moved on");
}

#[tokio::test]
async fn an_existing_credentials_secret_is_used_as_it_is() {
    // The user created orders-credentials before the cluster (or an earlier
    // reconcile did and lost its status write): 409, no event, and on we go.
    let c = finalized(cluster(spec()));
    let base = c.clone();
    let (ctx, server) = context_with(|w| w.seed([live_sts(&base, 3)], live_services(&base), [live_pdb(&base)], []));
    let server = server.expect(vec![
        create_secret(Reply::Status(409, "AlreadyExists")),
        status_patch(&c, |status| {
            assert_eq!(status["credentialsSecret"], SECRET);
            assert_eq!(condition(status, "Degraded").0, "False");
        }),
    ]);
    assert_eq!(reconcile(Arc::new(c), ctx.clone()).await.unwrap(), resync());
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_refused_credentials_secret_stops_before_the_statefulset() {
    let c = finalized(cluster(spec()));
    let view = ClusterView::new(&c).unwrap();
    let (ctx, server) = context();
    let server = server.expect(vec![
        create_secret(Reply::Status(403, "Forbidden")),
        // The Services and the PDB went out together with the Secret; the StatefulSet never does.
        create(service_create_uri(), children::service(&view, ChildKind::HeadlessService)),
        create(service_create_uri(), children::service(&view, ChildKind::PrimaryService)),
        create(service_create_uri(), children::service(&view, ChildKind::ReplicaService)),
        create(service_create_uri(), children::service(&view, ChildKind::AnyService)),
        create(pdb_create_uri(), children::pod_disruption_budget(&view)),
        event("Created", "Normal", |note| assert!(!note.contains("StatefulSet"), "{note}")),
        status_patch(&c, |status| {
            let (s, reason, message) = condition(status, "Degraded");
            assert_eq!((s.as_str(), reason.as_str()), ("True", "ReconcileFailed"));
            assert!(message.starts_with("create Secret shop/orders-credentials failed: "), "{message}");
            assert!(status.get("credentialsSecret").is_none(), "{status}");
        }),
        event("ReconcileFailed", "Warning", |note| assert!(note.contains("orders-credentials"), "{note}")),
    ]);
    let err = reconcile(Arc::new(c), ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn steady_state_is_radio_silence() {
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 3);
    let c = settled(base.clone(), Some(&sts));
    let (ctx, server) = context_with(|w| {
        w.seed(
            [sts.clone()],
            live_services(&base),
            [live_pdb(&base)],
            [live_claim(0, "10Gi"), live_claim(1, "10Gi"), live_claim(2, "10Gi")],
        );
    });
    let server = server.expect(vec![]);
    let cluster = Arc::new(c);
    for _ in 0..3 {
        assert_eq!(reconcile(cluster.clone(), ctx.clone()).await.unwrap(), resync());
    }
    assert_eq!(metric(&ctx, "stead_controller_reconciles_total").unwrap(), "stead_controller_reconciles_total 3");
    assert_eq!(metric(&ctx, "stead_controller_status_writes_total").unwrap(), "stead_controller_status_writes_total 0");
    drop(ctx);
    verify(server).await;
}

/// A settled cluster whose three pods run: 0 primary, 1 and 2 replicas; labels as given.
pub(crate) fn running(
    labels: [Option<&'static str>; 3],
) -> (DatabaseCluster, Arc<FakeInstances>, impl FnOnce(&mut crate::context::StoreWriters)) {
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 3);
    let c = settled(base.clone(), Some(&sts));
    let instances = instances_answering([primary_status(0), replica_status(1, 0, 0), replica_status(2, 0, 4096)]);
    let fill = move |w: &mut crate::context::StoreWriters| {
        w.seed([sts], live_services(&base), [live_pdb(&base)], []);
        w.seed_pods([live_pod(0, true, labels[0]), live_pod(1, true, labels[1]), live_pod(2, true, labels[2])]);
    };
    (c, instances, fill)
}

#[tokio::test]
async fn instances_reporting_roles_get_labelled_and_the_status_says_who_is_primary() {
    let (c, instances, fill) = running([None, None, Some("replica")]);
    let (ctx, server) = context_with_instances(fill, instances.clone());
    let server = server.expect(vec![
        label_pod(0, Some("primary")),
        event("PrimaryLabelled", "Normal", |note| {
            assert_eq!(note, "orders-0 is the primary: Service orders-rw routes to it");
        }),
        label_pod(1, Some("replica")),
        status_patch(&c, |status| {
            assert_eq!(status["currentPrimary"], "orders-0");
            assert_eq!(status["targetPrimary"], "orders-0");
            assert_eq!(
                condition(status, "Available"),
                triple("True", "PrimaryReady", "orders-0 is the primary and ready; 3/3 instances ready")
            );
            assert_eq!(
                condition(status, "ReplicationHealthy"),
                triple("True", "AllReplicasStreaming", "2 replica(s) streaming from the primary within the lag bound")
            );
            assert_eq!(condition(status, "Degraded").0, "False");
            let instances = status["instances"].as_array().unwrap();
            assert_eq!(
                instances[0],
                json!({"name": "orders-0", "role": "primary", "ready": true, "lsn": "0/3000060", "timeline": 1})
            );
            assert_eq!(
                instances[2],
                json!({"name": "orders-2", "role": "replica", "ready": true, "streaming": true, "lagging": false,
                       "lagBytes": 4096, "lsn": "0/2FFF060", "timeline": 1})
            );
        }),
    ]);
    assert_eq!(reconcile(Arc::new(c), ctx.clone()).await.unwrap(), resync());
    assert_eq!(
        *instances.calls.lock().unwrap(),
        ["GET /status orders-0", "GET /status orders-1", "GET /status orders-2"],
        "only status is asked: everyone already has data and streams from the right primary"
    );
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_steady_replicated_cluster_is_radio_silence_even_while_the_wal_moves() {
    let (c, instances, fill) = running([Some("primary"), Some("replica"), Some("replica")]);
    // What the previous reconcile wrote.
    let (ctx, server) = context_with_instances(fill, instances.clone());
    let mut written = Value::Null;
    {
        let keep = Arc::new(std::sync::Mutex::new(Value::Null));
        let k = keep.clone();
        let server = server.expect(vec![status_patch(&c, move |s| *k.lock().unwrap() = s.clone())]);
        reconcile(Arc::new(c.clone()), ctx.clone()).await.unwrap();
        drop(ctx);
        verify(server).await;
        written.clone_from(&keep.lock().unwrap());
    }
    let mut stored = c;
    stored.status = Some(serde_json::from_value(written).unwrap());
    // The primary has written more WAL and a replica lags a little more: no write for that.
    let busier = instances_answering([
        InstanceStatus { current_lsn: Some(stead_crds::instance_api::Lsn(0x0400_0000)), ..primary_status(0) },
        replica_status(1, 0, 10),
        replica_status(2, 0, 8192),
    ]);
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 3);
    let (ctx, server) = context_with_instances(
        |w| {
            w.seed([sts], live_services(&base), [live_pdb(&base)], []);
            w.seed_pods([
                live_pod(0, true, Some("primary")),
                live_pod(1, true, Some("replica")),
                live_pod(2, true, Some("replica")),
            ]);
        },
        busier,
    );
    let server = server.expect(vec![]);
    for _ in 0..3 {
        assert_eq!(reconcile(Arc::new(stored.clone()), ctx.clone()).await.unwrap(), resync());
    }
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_replica_beyond_the_lag_bound_degrades_the_cluster_by_name() {
    let base = finalized(cluster(DatabaseClusterSpec {
        replication: Some(stead_crds::cluster::ReplicationSpec { max_lag_bytes: Some(1024) }),
        ..spec()
    }));
    let sts = live_sts(&base, 3);
    let c = settled(base.clone(), Some(&sts));
    let instances = instances_answering([primary_status(0), replica_status(1, 0, 0), replica_status(2, 0, 4096)]);
    let (ctx, server) = context_with_instances(
        |w| {
            w.seed([sts], live_services(&base), [live_pdb(&base)], []);
            w.seed_pods([
                live_pod(0, true, Some("primary")),
                live_pod(1, true, Some("replica")),
                live_pod(2, true, Some("replica")),
            ]);
        },
        instances,
    );
    let server = server.expect(vec![status_patch(&c, |status| {
        let want = "orders-2 lags by 4096 bytes (spec.replication.maxLagBytes is 1024)";
        assert_eq!(condition(status, "ReplicationHealthy"), triple("False", "ReplicaLagging", want));
        assert_eq!(condition(status, "Degraded"), triple("True", "ReplicaLagging", want));
        assert_eq!(condition(status, "Available").0, "True", "the primary still serves");
        assert_eq!(status["instances"][2]["lagging"], true);
    })]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_new_cluster_initialises_ordinal_0_then_clones_the_others_from_it() {
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 0);
    let c = settled(base.clone(), Some(&sts));
    let fill = |pods: Vec<Pod>| {
        let base = base.clone();
        let sts = sts.clone();
        move |w: &mut crate::context::StoreWriters| {
            w.seed([sts], live_services(&base), [live_pdb(&base)], []);
            w.seed_pods(pods);
        }
    };
    // Only ordinal 0 runs, on an empty volume: it is told to initialise.
    let instances = instances_answering([empty_status(0)]);
    instances.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ctx, server) = context_with_instances(fill(vec![live_pod(0, false, None)]), instances.clone());
    // The next poll sees the cluster as our status write left it (a newer version).
    let mut polled = c.clone();
    polled.metadata.resource_version = Some("101".into());
    let server = server.expect(vec![
        event("Bootstrapping", "Normal", |note| assert_eq!(note, "initialising orders-0 as the first primary")),
        status_patch(&c, |status| assert_eq!(condition(status, "Available").1, "NoPrimary")),
        // The next poll, while initdb still runs: no second bootstrap, no second event.
        status_patch(&polled, |_| {}),
    ]);
    reconcile(Arc::new(c.clone()), ctx.clone()).await.unwrap();
    // The bootstrap runs in the background: it answers when done, which may take hours.
    eventually(|| instances.calls.lock().unwrap().len() == 2).await;
    reconcile(Arc::new(polled), ctx.clone()).await.unwrap();
    assert_eq!(
        *instances.calls.lock().unwrap(),
        ["GET /status orders-0", r#"POST /bootstrap orders-0 {"mode":"initdb"}"#, "GET /status orders-0"]
    );
    instances.release();
    eventually(|| Arc::strong_count(&ctx) == 1).await;
    drop(ctx);
    verify(server).await;

    // Ordinal 0 serves as primary; ordinal 1 is empty: it clones from 0's address.
    let instances = instances_answering([primary_status(0), empty_status(1)]);
    let (ctx, server) = context_with_instances(
        fill(vec![live_pod(0, true, Some("primary")), live_pod(1, false, None)]),
        instances.clone(),
    );
    let server = server.expect(vec![
        event("Bootstrapping", "Normal", |note| {
            assert_eq!(note, "cloning orders-1 from the primary at 10.244.0.10 and starting it as a replica");
        }),
        status_patch(&c, |status| assert_eq!(status["currentPrimary"], "orders-0")),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    eventually(|| instances.calls.lock().unwrap().len() == 3).await;
    eventually(|| Arc::strong_count(&ctx) == 1).await;
    assert_eq!(
        instances.calls.lock().unwrap()[2],
        r#"POST /bootstrap orders-1 {"mode":"clone","primaryHost":"10.244.0.10","primaryPort":5432}"#
    );
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_status_written_meanwhile_by_someone_else_is_a_conflict_not_a_loss() {
    let base = finalized(cluster(spec()));
    let c = settled(base.clone(), Some(&live_sts(&base, 1)));
    let (ctx, server) = context_with(|w| {
        w.seed([live_sts(&base, 3)], live_services(&base), [live_pdb(&base)], []);
    });
    // The API server refuses the conditional write: the object moved on since our cache saw it.
    let server = server.expect(vec![status_patch_answered(&c, |_| {}, Reply::Status(409, "Conflict"))]);
    let err = reconcile(Arc::new(c), ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "retried soon from fresh data: {err}");
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn transition_time_is_kept_when_status_does_not_flip() {
    let base = finalized(cluster(spec()));
    let mut c = settled(base.clone(), Some(&live_sts(&base, 1)));
    // Pretend the stored conditions are an hour old.
    let earlier = Time(k8s_openapi::jiff::Timestamp::from_second(1_699_996_400).unwrap());
    for cond in &mut c.status.as_mut().unwrap().conditions {
        cond.last_transition_time = earlier.clone();
    }
    // The pods got IPs but no instance answers yet: still no primary, still not available.
    let instances = instances_answering([]);
    let (ctx, server) = context_with_instances(
        |w| {
            w.seed([live_sts(&base, 2)], live_services(&base), [live_pdb(&base)], []);
            w.seed_pods([live_pod(0, false, None), live_pod(1, false, None), live_pod(2, false, None)]);
        },
        instances,
    );
    let server = server.expect(vec![status_patch(&c, |status| {
        assert_eq!(
            condition(status, "Available"),
            triple("False", "NoPrimary", "no instance is the primary yet; 0/3 instances ready")
        );
        assert_eq!(status["instances"][0]["role"], "unknown");
        assert_eq!(
            status["instances"][0]["message"],
            "GET https://10.244.0.10:8000/status of pod orders-0: connection refused"
        );
        // Pods starting (not Ready, their managers not answering yet) are progress, not a problem:
        // no condition flipped, so every one keeps its time.
        for cond in status["conditions"].as_array().unwrap() {
            assert_eq!(cond["lastTransitionTime"], "2023-11-14T21:13:20Z", "{cond}");
        }
        assert_eq!(condition(status, "Degraded").0, "False");
        assert_eq!(condition(status, "ReplicationHealthy").1, "ReplicasStarting");
    })]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn paused_leaves_children_alone() {
    let base = finalized(cluster(spec()));
    let live = live_sts(&base, 3);
    // The user scaled to 5 and paused: the StatefulSet must keep 3 replicas.
    let mut c = finalized(cluster(DatabaseClusterSpec { replicas: Some(5), paused: Some(true), ..spec() }));
    c.metadata.generation = Some(2);
    let c = DatabaseCluster { status: settled(base.clone(), Some(&live)).status, ..c };
    let (ctx, server) = context_with(|w| w.seed([live.clone()], live_services(&base), [live_pdb(&base)], []));
    let server = server.expect(vec![status_patch(&c, |status| {
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(
            condition(status, "Progressing"),
            triple("False", "Paused", "reconciliation is paused (spec.paused=true); children are left as they are")
        );
        assert_eq!(condition(status, "Available"), triple("True", "AllReplicasReady", "3/3 replicas are ready"));
    })]);
    let cluster = Arc::new(c);
    reconcile(cluster.clone(), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn invalid_spec_touches_no_child_and_reports_once() {
    let bad = DatabaseClusterSpec {
        replicas: Some(12),
        storage: StorageSpec { size: "10GB".into(), storage_class_name: None },
        ..spec()
    };
    let c = finalized(cluster(bad));
    let (ctx, server) = context();
    let want_message = "spec.replicas: Invalid value: 12: must be between 1 and 9, inclusive; \
                        spec.storage.size: Invalid value: \"10GB\": must be a Kubernetes quantity such as 10Gi";
    let written = Arc::new(std::sync::Mutex::new(Value::Null));
    let keep = written.clone();
    let server = server.expect(vec![
        status_patch(&c, move |status| {
            let (s, reason, message) = condition(status, "Degraded");
            assert_eq!((s.as_str(), reason.as_str()), ("True", "InvalidSpec"));
            assert!(message.starts_with(want_message), "{message}");
            assert_eq!(condition(status, "Available").1, "InvalidSpec");
            assert_eq!(condition(status, "Progressing").1, "InvalidSpec");
            *keep.lock().unwrap() = status.clone();
        }),
        event("InvalidSpec", "Warning", |note| {
            assert!(
                note.starts_with("spec is invalid; no child was changed: spec.replicas: Invalid value: 12"),
                "{note}"
            );
        }),
    ]);
    assert_eq!(reconcile(Arc::new(c.clone()), ctx.clone()).await.unwrap(), slow_resync());
    drop(ctx);
    verify(server).await;

    // The next resync finds the same verdict already stored: no write, no event storm.
    let mut again = c;
    again.status = Some(serde_json::from_value(written.lock().unwrap().clone()).unwrap());
    let (ctx, server) = context();
    let server = server.expect(vec![]);
    reconcile(Arc::new(again), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn deletion_reports_retained_volumes_and_removes_the_finalizer() {
    let mut c = settled(finalized(cluster(spec())), None);
    c.metadata.deletion_timestamp = Some(Time(now()));
    let (ctx, server) = context_with(|w| {
        let mut other = live_claim(0, "10Gi");
        other.metadata.name = Some("data-payments-0".into());
        other.metadata.labels = Some(stead_crds::names::child_labels("payments"));
        w.seed([], [], [], [live_claim(1, "10Gi"), live_claim(0, "10Gi"), other]);
    });
    let mut gone = c.clone();
    gone.metadata.finalizers = None;
    let server = server.expect(vec![
        event("Deleting", "Normal", |note| assert!(note.starts_with("deleting DatabaseCluster orders"), "{note}")),
        event("VolumesRetained", "Normal", |note| {
            assert_eq!(
                note,
                "kept 2 PersistentVolumeClaim(s) with the data: data-orders-0, data-orders-1; delete them to release \
                 the storage"
            );
        }),
        event("CredentialsRetained", "Normal", |note| {
            assert_eq!(
                note,
                "kept Secret orders-credentials with the password of the retained data: a DatabaseCluster recreated \
                 with the same name uses it; delete it together with the volumes"
            );
        }),
        remove_finalizer(Reply::Json(serde_json::to_value(&gone).unwrap())),
        event("FinalizerRemoved", "Normal", |note| assert!(note.contains(FINALIZER), "{note}")),
    ]);
    assert_eq!(reconcile(Arc::new(c), ctx.clone()).await.unwrap(), Action::await_change());
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_cluster_already_gone_is_not_an_error() {
    let mut c = finalized(cluster(spec()));
    c.metadata.deletion_timestamp = Some(Time(now()));
    let (ctx, server) = context();
    let server =
        server.expect(vec![event("Deleting", "Normal", |_| {}), remove_finalizer(Reply::Status(404, "NotFound"))]);
    assert_eq!(reconcile(Arc::new(c), ctx.clone()).await.unwrap(), Action::await_change());
    drop(ctx);
    verify(server).await;

    // Same when it vanishes before the status write.
    let c = finalized(cluster(spec()));
    let base = c.clone();
    let (ctx, server) = context_with(|w| w.seed([live_sts(&base, 3)], live_services(&base), [live_pdb(&base)], []));
    let mut call = status_patch(&c, |_| {});
    call.reply = Reply::Status(404, "NotFound");
    let server = server.expect(vec![create_secret(Reply::Status(409, "AlreadyExists")), call]);
    assert_eq!(reconcile(Arc::new(c), ctx.clone()).await.unwrap(), Action::await_change());
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn api_error_is_surfaced_recorded_and_retried_with_backoff() {
    let c = finalized(cluster(spec()));
    let view = ClusterView::new(&c).unwrap();
    let (ctx, server) = context();
    let mut failing = create(service_create_uri(), children::service(&view, ChildKind::HeadlessService));
    failing.reply = Reply::Status(503, "ServiceUnavailable");
    let server = server.expect(vec![
        create_secret(Reply::Echo),
        failing,
        create(service_create_uri(), children::service(&view, ChildKind::PrimaryService)),
        create(service_create_uri(), children::service(&view, ChildKind::ReplicaService)),
        create(service_create_uri(), children::service(&view, ChildKind::AnyService)),
        create(pdb_create_uri(), children::pod_disruption_budget(&view)),
        // What was made is reported; the StatefulSet waits for the headless Service.
        event("Created", "Normal", |note| {
            assert!(note.contains("Secret orders-credentials") && !note.contains("StatefulSet"), "{note}");
        }),
        status_patch(&c, |status| {
            // The Secret was made: the next attempt does not ask again.
            assert_eq!(status["credentialsSecret"], SECRET);
            let (s, reason, message) = condition(status, "Degraded");
            assert_eq!((s.as_str(), reason.as_str()), ("True", "ReconcileFailed"));
            assert_eq!(
                message,
                "create Service shop/orders-headless failed: the API server failed (503 ServiceUnavailable): mock \
                 ServiceUnavailable; the API server is unavailable or overloaded; stead-controller retries with \
                 backoff (check the API server if this persists)"
            );
        }),
        event("ReconcileFailed", "Warning", |note| assert!(note.contains("orders-headless"), "{note}")),
    ]);
    let cluster = Arc::new(c);
    let err = reconcile(cluster.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    // The applier hands the error to error_policy: exponential backoff per object.
    assert_eq!(error_policy(cluster.clone(), &err, ctx.clone()), Action::requeue(Duration::from_secs(1)));
    assert_eq!(error_policy(cluster.clone(), &err, ctx.clone()), Action::requeue(Duration::from_secs(2)));
    assert_eq!(error_policy(cluster.clone(), &err, ctx.clone()), Action::requeue(Duration::from_secs(4)));
    assert_eq!(
        metric(&ctx, "stead_controller_reconcile_errors_total{kind=\"transient\"}").unwrap(),
        "stead_controller_reconcile_errors_total{kind=\"transient\"} 3"
    );
    assert_eq!(ctx.failures(&ObjectRef::from_obj(cluster.as_ref())), 3);
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_conflict_on_the_finalizer_is_retried_not_fatal() {
    let c = cluster(spec());
    let (ctx, server) = context();
    let mut call = add_finalizer(&c);
    call.reply = Reply::Status(409, "Conflict");
    let server = server.expect(vec![call]);
    let cluster = Arc::new(c);
    let err = reconcile(cluster.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(error_policy(cluster, &err, ctx.clone()), Action::requeue(Duration::from_secs(1)));
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn success_resets_the_backoff() {
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 3);
    let c = Arc::new(settled(base.clone(), Some(&sts)));
    let (ctx, server) = context_with(|w| w.seed([sts.clone()], live_services(&base), [live_pdb(&base)], []));
    let obj = ObjectRef::from_obj(c.as_ref());
    ctx.record_failure(&obj);
    ctx.record_failure(&obj);
    let server = server.expect(vec![]);
    reconcile(c, ctx.clone()).await.unwrap();
    assert_eq!(ctx.failures(&obj), 0);
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn drift_is_repaired_with_one_apply() {
    let base = finalized(cluster(spec()));
    let view = ClusterView::new(&base).unwrap();
    let mut sts = live_sts(&base, 3);
    // Someone ran `kubectl set image`.
    sts.spec.template.spec.as_mut().unwrap().containers[0].image = Some("postgres:9".into());
    let c = settled(base.clone(), Some(&sts));
    let (ctx, server) = context_with(|w| w.seed([sts.clone()], live_services(&base), [live_pdb(&base)], []));
    let mut repaired = apply(sts_uri(), children::stateful_set(&view, Some(&sts)).unwrap());
    repaired.reply = Reply::Json(serde_json::to_value(live_sts(&base, 3)).unwrap());
    let server = server.expect(vec![
        repaired,
        event("Updated", "Normal", |note| assert_eq!(note, "updated StatefulSet orders to match the DatabaseCluster")),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_field_removed_from_the_spec_is_removed_from_the_child() {
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let limited = finalized(cluster(DatabaseClusterSpec {
        resources: Some(ResourceRequirements {
            limits: Some([("memory".to_owned(), Quantity("1Gi".into()))].into()),
            ..Default::default()
        }),
        ..spec()
    }));
    let sts = live_sts(&limited, 3);
    // The user dropped spec.resources: the live StatefulSet still has a superset of
    // what we now want, but the applied body changed, so we apply and SSA removes the field.
    let mut c = finalized(cluster(spec()));
    c.metadata.generation = Some(2);
    let view = ClusterView::new(&c).unwrap();
    let mut call = apply(sts_uri(), children::stateful_set(&view, Some(&sts)).unwrap());
    call.reply = Reply::Json(serde_json::to_value(live_sts(&c, 3)).unwrap());
    let c = DatabaseCluster { status: settled(limited.clone(), Some(&sts)).status, ..c };
    let (ctx, server) = context_with(|w| w.seed([sts.clone()], live_services(&limited), [live_pdb(&limited)], []));
    let server = server.expect(vec![
        call,
        event("Updated", "Normal", |_| {}),
        status_patch(&c, |status| assert_eq!(status["observedGeneration"], 2)),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn scaling_to_one_removes_the_pdb() {
    let three = finalized(cluster(spec()));
    let sts = live_sts(&three, 3);
    let mut c = finalized(cluster(DatabaseClusterSpec { replicas: Some(1), ..spec() }));
    c.metadata.generation = Some(2);
    c.status = settled(three.clone(), Some(&sts)).status;
    let view = ClusterView::new(&c).unwrap();
    let pdb = live_pdb(&three);
    let (ctx, server) = context_with(|w| w.seed([sts.clone()], live_services(&three), [pdb], []));
    let server = server.expect(vec![
        apply(sts_uri(), children::stateful_set(&view, Some(&sts)).unwrap()),
        event("Updated", "Normal", |_| {}),
        Call::new(
            Method::DELETE,
            format!("{}?", pdb_path()),
            |body| assert_eq!(body["preconditions"], json!({"uid": "uid-pdb"})),
            Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})),
        ),
        event("Deleted", "Normal", |note| assert!(note.starts_with("deleted PodDisruptionBudget orders"), "{note}")),
        status_patch(&c, |status| assert_eq!(status["observedGeneration"], 2)),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn the_all_pods_service_of_stead_0_1_is_removed_and_a_foreign_one_left_alone() {
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 3);
    let c = settled(base.clone(), Some(&sts));
    // `orders`, as stead 0.1 made it: our labels and our controller reference.
    let mut legacy = live_services(&base)[0].clone();
    legacy.metadata.name = Some(NAME.into());
    legacy.metadata.uid = Some("uid-legacy".into());
    // The same, in another cluster's namespace, controlled by someone else: never a candidate.
    let mut foreign = legacy.clone();
    foreign.metadata.namespace = Some("elsewhere".into());
    foreign.metadata.owner_references = None;
    let mut services = live_services(&base);
    services.extend([legacy, foreign]);
    let (ctx, server) = context_with(|w| w.seed([sts.clone()], services, [live_pdb(&base)], []));
    let server = server.expect(vec![
        Call::new(
            Method::DELETE,
            format!("/api/v1/namespaces/{NS}/services/{NAME}?"),
            |body| assert_eq!(body["preconditions"], json!({"uid": "uid-legacy"})),
            Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})),
        ),
        event("Deleted", "Normal", |note| assert!(note.starts_with("deleted Service orders:"), "{note}")),
    ]);
    assert_eq!(reconcile(Arc::new(c), ctx.clone()).await.unwrap(), resync());
    drop(ctx);
    verify(server).await;
}

/// A settled 3-replica cluster of 10Gi volumes whose generation 2 asks for 20Gi:
/// the stored cluster, its StatefulSet, and the grown cluster (status not yet set).
fn grown_to_20gi() -> (DatabaseCluster, StatefulSet, DatabaseCluster) {
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 3);
    let mut grown = finalized(cluster(DatabaseClusterSpec {
        storage: StorageSpec { size: "20Gi".into(), storage_class_name: None },
        ..spec()
    }));
    grown.metadata.generation = Some(2);
    (base, sts, grown)
}

#[tokio::test]
async fn grown_storage_patches_claims_and_keeps_the_template() {
    let (base, sts, mut c) = grown_to_20gi();
    c.status = settled(base.clone(), Some(&sts)).status;
    let claims = [live_claim(0, "20Gi"), live_claim(1, "10Gi"), live_claim(2, "10Gi")];
    let (ctx, server) = context_with(|w| w.seed([sts.clone()], live_services(&base), [live_pdb(&base)], claims));
    let grow = |ordinal: i32| {
        Call::new(
            Method::PATCH,
            claim_uri(&format!("data-orders-{ordinal}")),
            |body| assert_eq!(body, &json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}})),
            Reply::Json(serde_json::to_value(live_claim(ordinal, "20Gi")).unwrap()),
        )
    };
    let server = server.expect(vec![
        // No StatefulSet apply: its volumeClaimTemplates stay as stored (immutable).
        grow(1),
        event("ExpandingVolume", "Normal", |note| {
            assert_eq!(note, "expanding PersistentVolumeClaim data-orders-1 from 10Gi to 20Gi");
        }),
        grow(2),
        event("ExpandingVolume", "Normal", |_| {}),
        status_patch(&c, |status| assert_eq!(status["observedGeneration"], 2)),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_cached_child_of_another_owner_is_never_written() {
    // Labelled like ours (so cached), but controlled by another object: no write at all.
    let base = finalized(cluster(spec()));
    let mut services = live_services(&base);
    services[0].metadata.owner_references.as_mut().unwrap()[0].uid = "someone-else".into();
    let c = settled(base.clone(), None);
    let (ctx, server) = context_with(|w| w.seed([], services, [live_pdb(&base)], []));
    let server = server.expect(vec![
        status_patch(&c, |status| {
            let (s, reason, message) = condition(status, "Degraded");
            assert_eq!((s.as_str(), reason.as_str()), ("True", "ForeignChild"));
            assert_eq!(
                message,
                "Service shop/orders-headless already exists and is not controlled by DatabaseCluster shop/orders \
                 (its controller is DatabaseCluster orders with uid someone-else); stead-controller never changes an \
                 object it did not create, so it left it as it is. To fix this, rename the DatabaseCluster, or \
                 delete or rename Service shop/orders-headless"
            );
        }),
        event("ForeignChild", "Warning", |note| assert!(note.starts_with("Service shop/orders-headless"), "{note}")),
    ]);
    let err = reconcile(Arc::new(c), ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflicting);
    drop(ctx);
    verify(server).await;
}

/// The user's own Service `orders`, made with `kubectl apply` before the cluster: one port,
/// no labels of ours, no ownerReferences.
fn users_service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "orders-rw", "namespace": NS, "uid": "uid-users", "resourceVersion": "3"},
        "spec": {"ports": [{"name": "web", "port": 80, "protocol": "TCP", "targetPort": 80}], "type": "ClusterIP"},
    })
}

#[tokio::test]
async fn an_object_of_the_same_name_that_stead_did_not_create_is_never_written() {
    // Invisible to the caches (it lacks our label), so the create meets it: 409. The
    // look-up shows it is not ours; the cluster is Degraded and the Service is left
    // alone: no PATCH, no PUT, no DELETE (any further call fails the mock).
    let c = finalized(cluster(spec()));
    let view = ClusterView::new(&c).unwrap();
    let (ctx, server) = context();
    let mut taken = create(service_create_uri(), children::service(&view, ChildKind::PrimaryService));
    taken.reply = Reply::Status(409, "AlreadyExists");
    let written = Arc::new(std::sync::Mutex::new(Value::Null));
    let keep = written.clone();
    let server = server.expect(vec![
        create_secret(Reply::Status(409, "AlreadyExists")),
        create(service_create_uri(), children::service(&view, ChildKind::HeadlessService)),
        taken,
        create(service_create_uri(), children::service(&view, ChildKind::ReplicaService)),
        create(service_create_uri(), children::service(&view, ChildKind::AnyService)),
        create(pdb_create_uri(), children::pod_disruption_budget(&view)),
        list(service_lookup_uri("orders-rw"), &[users_service()]),
        event("Created", "Normal", |note| assert!(!note.contains("orders-rw"), "never ours: {note}")),
        status_patch(&c, move |status| {
            let (s, reason, message) = condition(status, "Degraded");
            assert_eq!((s.as_str(), reason.as_str()), ("True", "ForeignChild"));
            assert_eq!(
                message,
                "Service shop/orders-rw already exists and is not controlled by DatabaseCluster shop/orders (it has no \
                 controller, and it lacks the label app.kubernetes.io/managed-by=stead-controller); stead-controller \
                 never changes an object it did not create, so it left it as it is. To fix this, rename the \
                 DatabaseCluster, or delete or rename Service shop/orders-rw"
            );
            *keep.lock().unwrap() = status.clone();
        }),
        event("ForeignChild", "Warning", |note| {
            assert!(note.starts_with("Service shop/orders-rw already exists"), "{note}");
        }),
    ]);
    let err = reconcile(Arc::new(c.clone()), ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflicting);
    drop(ctx);
    verify(server).await;

    // The retry asks again, without writing: no status write and no event once it is reported.
    let mut again = c;
    again.status = Some(serde_json::from_value(written.lock().unwrap().clone()).unwrap());
    let base = again.clone();
    let mut others = live_services(&base);
    others.remove(1);
    let (ctx, server) = context_with(|w| w.seed([], others, [live_pdb(&base)], []));
    let mut taken = create(service_create_uri(), children::service(&view, ChildKind::PrimaryService));
    taken.reply = Reply::Status(409, "AlreadyExists");
    let server = server.expect(vec![taken, list(service_lookup_uri("orders-rw"), &[users_service()])]);
    let err = reconcile(Arc::new(again), ctx.clone()).await.unwrap_err();
    assert_eq!(err.reason(), "ForeignChild");
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_statefulset_of_the_same_name_that_stead_did_not_create_is_never_written() {
    let c = finalized(cluster(spec()));
    let base = c.clone();
    let view = ClusterView::new(&c).unwrap();
    let (ctx, server) = context_with(|w| w.seed([], live_services(&base), [], []));
    let mut taken = create(sts_create_uri(), children::stateful_set(&view, None).unwrap());
    taken.reply = Reply::Status(409, "AlreadyExists");
    let users = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": NAME, "namespace": NS, "uid": "uid-users-sts", "labels": {"app": "legacy"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "legacy",
                "uid": "uid-legacy", "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "legacy"}}, "serviceName": "legacy",
            "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    });
    let server = server.expect(vec![
        create_secret(Reply::Status(409, "AlreadyExists")),
        create(pdb_create_uri(), children::pod_disruption_budget(&view)),
        taken,
        list(sts_lookup_uri(), &[users]),
        event("Created", "Normal", |note| assert_eq!(note, "created PodDisruptionBudget orders")),
        status_patch(&c, |status| {
            let (s, reason, message) = condition(status, "Degraded");
            assert_eq!((s.as_str(), reason.as_str()), ("True", "ForeignChild"));
            assert!(
                message.starts_with(
                    "StatefulSet shop/orders already exists and is not controlled by DatabaseCluster shop/orders (its \
                     controller is Deployment legacy with uid uid-legacy, and it lacks the label"
                ),
                "{message}"
            );
            // No StatefulSet of ours: the cluster is not available, and says why.
            assert_eq!(condition(status, "Available").1, "StatefulSetMissing");
        }),
        event("ForeignChild", "Warning", |_| {}),
    ]);
    let err = reconcile(Arc::new(c), ctx.clone()).await.unwrap_err();
    assert_eq!(err.reason(), "ForeignChild");
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_child_created_a_moment_ago_and_not_yet_cached_is_ours() {
    // The PDB was created by the previous reconcile; its watch event has not reached the
    // cache yet. The create's 409 and the look-up show our own PDB: nothing to change.
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 3);
    let c = settled(base.clone(), Some(&sts));
    let view = ClusterView::new(&c).unwrap();
    let (ctx, server) = context_with(|w| w.seed([sts.clone()], live_services(&base), [], []));
    let mut taken = create(pdb_create_uri(), children::pod_disruption_budget(&view));
    taken.reply = Reply::Status(409, "AlreadyExists");
    let server = server.expect(vec![taken, list(pdb_lookup_uri(), &[serde_json::to_value(live_pdb(&base)).unwrap()])]);
    assert_eq!(reconcile(Arc::new(c), ctx.clone()).await.unwrap(), resync());
    drop(ctx);
    verify(server).await;
}

/// `sts` as the API server stores it after our POST: the fields are owned by an
/// `Update` of stead-controller, not by an apply.
fn created_by_post(mut sts: StatefulSet) -> StatefulSet {
    let entry = json!({
        "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "manager": "stead-controller", "operation": "Update",
        "time": "2025-01-10T09:00:00Z",
        "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
            "k:{\"name\":\"database\"}": {".": {}, "f:resources": {"f:limits": {"f:memory": {}}}}}}}}},
    });
    sts.metadata.managed_fields = Some(vec![serde_json::from_value(entry).unwrap()]);
    sts
}

#[tokio::test]
async fn a_child_created_by_post_hands_its_fields_to_the_first_apply() {
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let limited = finalized(cluster(DatabaseClusterSpec {
        resources: Some(ResourceRequirements {
            limits: Some([("memory".to_owned(), Quantity("1Gi".into()))].into()),
            ..Default::default()
        }),
        ..spec()
    }));
    let sts = created_by_post(live_sts(&limited, 3));
    // The cache keeps who wrote the StatefulSet, not the fields.
    let mut cached = sts.clone();
    crate::controller::slim_child(&mut cached.metadata);

    // At rest, the update entry changes nothing: no call at all.
    let settled_limited = settled(limited.clone(), Some(&sts));
    let seed = |sts: StatefulSet| {
        let limited = limited.clone();
        move |w: &mut crate::context::StoreWriters| {
            w.seed([sts], live_services(&limited), [live_pdb(&limited)], []);
        }
    };
    let (ctx, server) = context_with(seed(cached.clone()));
    let server = server.expect(vec![]);
    reconcile(Arc::new(settled_limited), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;

    // The user removes spec.resources. Before the apply, the created fields, read afresh,
    // become the apply's (conditional on the version read), so the apply can remove the limits.
    let mut c = finalized(cluster(spec()));
    c.metadata.generation = Some(2);
    let view = ClusterView::new(&c).unwrap();
    let c = DatabaseCluster { status: settled(limited.clone(), Some(&sts)).status, ..c };
    let mut applied_entry = serde_json::to_value(&sts.metadata.managed_fields.as_ref().unwrap()[0]).unwrap();
    applied_entry["operation"] = json!("Apply");
    let handover = Call::new(
        Method::PATCH,
        sts_patch_uri(),
        move |body| {
            assert_eq!(body, &json!({"metadata": {"resourceVersion": "7", "managedFields": [applied_entry]}}));
        },
        Reply::Json(serde_json::to_value(&sts).unwrap()),
    );
    let mut apply_call = apply(sts_uri(), children::stateful_set(&view, Some(&sts)).unwrap());
    apply_call.reply = Reply::Json(serde_json::to_value(live_sts(&c, 3)).unwrap());
    let (ctx, server) = context_with(seed(cached));
    let server = server.expect(vec![
        list(sts_lookup_uri(), &[serde_json::to_value(&sts).unwrap()]),
        handover,
        apply_call,
        event("Updated", "Normal", |_| {}),
        status_patch(&c, |status| assert_eq!(status["observedGeneration"], 2)),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn an_unbound_claim_is_not_resized_until_it_binds() {
    let (base, sts, c) = grown_to_20gi();
    // The status already describes generation 2: only the claims are left to do.
    let c = settled(c, Some(&sts));
    let mut pending = live_claim(2, "10Gi");
    pending.status = Some(k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
    let claims = [live_claim(0, "20Gi"), live_claim(1, "20Gi"), pending];
    let (ctx, server) = context_with(|w| w.seed([sts.clone()], live_services(&base), [live_pdb(&base)], claims));
    // A real API server would refuse a resize of the Pending claim with 422; we make no call at all.
    let server = server.expect(vec![]);
    assert_eq!(reconcile(Arc::new(c), ctx.clone()).await.unwrap(), resync());
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_refused_expansion_is_reported_once_and_retried_slowly() {
    let (base, sts, c) = grown_to_20gi();
    let c = DatabaseCluster { status: settled(base.clone(), Some(&sts)).status, ..c };
    let claims = [live_claim(0, "10Gi"), live_claim(1, "10Gi"), live_claim(2, "10Gi")];
    let seed = move |w: &mut crate::context::StoreWriters| {
        w.seed([sts.clone()], live_services(&base), [live_pdb(&base)], claims.clone());
    };
    // What the PersistentVolumeClaimResize admission plugin answers for a class without
    // allowVolumeExpansion.
    let refused = || {
        Call::new(
            Method::PATCH,
            claim_uri("data-orders-0"),
            |body| assert_eq!(body, &json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}})),
            Reply::Status(403, "Forbidden"),
        )
    };
    let written = Arc::new(std::sync::Mutex::new(Value::Null));
    let keep = written.clone();
    let (ctx, server) = context_with(seed.clone());
    let server = server.expect(vec![
        refused(),
        status_patch(&c, move |status| {
            let (s, reason, message) = condition(status, "Degraded");
            assert_eq!((s.as_str(), reason.as_str()), ("True", "ReconcileFailed"));
            assert!(
                message.starts_with(
                    "PersistentVolumeClaim shop/data-orders-0 cannot grow from 10Gi to 20Gi (spec.storage.size): "
                ),
                "{message}"
            );
            assert!(
                message.ends_with(
                    "growing a volume needs a bound claim whose StorageClass sets allowVolumeExpansion: true"
                ),
                "{message}"
            );
            assert_eq!(status["observedGeneration"], 2);
            *keep.lock().unwrap() = status.clone();
        }),
        event("ReconcileFailed", "Warning", |note| assert!(note.contains("data-orders-0 cannot grow"), "{note}")),
    ]);
    let cluster = Arc::new(c.clone());
    let err = reconcile(cluster.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    // Refusals back off up to five minutes, not the half minute of outages.
    for _ in 0..12 {
        error_policy(cluster.clone(), &err, ctx.clone());
    }
    assert_eq!(error_policy(cluster.clone(), &err, ctx.clone()), Action::requeue(Duration::from_secs(300)));
    drop(ctx);
    verify(server).await;

    // The retry finds the refusal already in the status: the refused patch again, but no
    // status write and no event.
    let mut again = c;
    again.status = Some(serde_json::from_value(written.lock().unwrap().clone()).unwrap());
    let (ctx, server) = context_with(seed);
    let server = server.expect(vec![refused()]);
    let err = reconcile(Arc::new(again), ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    drop(ctx);
    verify(server).await;
}

/// The cluster of `running()`, but orders-0 (the recorded primary) is down.
fn primary_down(
    failing_since: Option<i64>,
) -> (DatabaseCluster, Arc<FakeInstances>, impl FnOnce(&mut crate::context::StoreWriters)) {
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 3);
    let mut c = settled(base.clone(), Some(&sts));
    let status = c.status.as_mut().unwrap();
    status.current_primary = Some("orders-0".into());
    status.target_primary = Some("orders-0".into());
    status.primary_failing_since =
        failing_since.map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()));
    // orders-0 does not answer; orders-2 has received more WAL than orders-1.
    let instances = instances_answering([replica_status(1, 0, 0), {
        let mut ahead = replica_status(2, 0, 0);
        ahead.received_lsn = Some(stead_crds::instance_api::Lsn(0x0400_0000));
        ahead
    }]);
    let fill = move |w: &mut crate::context::StoreWriters| {
        w.seed([sts], live_services(&base), [live_pdb(&base)], []);
        w.seed_pods([
            live_pod(0, false, Some("primary")),
            live_pod(1, true, Some("replica")),
            live_pod(2, true, Some("replica")),
        ]);
    };
    (c, instances, fill)
}

#[tokio::test]
async fn a_failing_primary_is_waited_out_for_the_failover_delay_and_said_so() {
    let (c, instances, fill) = primary_down(None);
    let (ctx, server) = context_with_instances(fill, instances.clone());
    let server = server.expect(vec![
        event("PrimaryFailing", "Warning", |note| {
            assert!(note.starts_with("primary orders-0 is failing: its instance manager does not answer"), "{note}");
            assert!(note.ends_with("a replica is promoted if it still fails after 30s (spec.failoverDelay)"), "{note}");
        }),
        label_pod(0, None),
        status_patch(&c, |status| {
            assert_eq!(status["phase"], "PrimaryFailing");
            assert_eq!(status["primaryFailingSince"], "2023-11-14T22:13:20Z");
            assert_eq!(status["currentPrimary"], "orders-0", "nobody is promoted within the delay");
            assert_eq!(condition(status, "Degraded").1, "PrimaryFailing");
            assert_eq!(condition(status, "Available").1, "PrimaryNotReady");
        }),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    assert!(!instances.calls.lock().unwrap().iter().any(|c| c.starts_with("POST")), "{:?}", instances.calls);
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn past_the_delay_the_most_advanced_replica_is_promoted_after_the_step_is_recorded() {
    // Failing since 60 s before the fixed clock: past the 30 s delay.
    let (c, instances, fill) = primary_down(Some(-60));
    let (ctx, server) = context_with_instances(fill, instances.clone());
    let recorded = Arc::new(std::sync::Mutex::new(Value::Null));
    let keep = recorded.clone();
    let server = server.expect(vec![
        // 1. The step is recorded before anything is done.
        status_patch(&c, move |status| {
            assert_eq!(
                status,
                &json!({
                    "targetPrimary": "orders-2",
                    "phase": "FailingOver",
                    "primaryFailingSince": "2023-11-14T22:12:20Z",
                })
            );
            *keep.lock().unwrap() = status.clone();
        }),
        event("FailingOver", "Warning", |note| {
            assert!(
                note.starts_with("failing over: promoting orders-2 (primary orders-0 has been failing for 60s"),
                "{note}"
            );
        }),
        // 2. The old primary is fenced: out of -rw.
        label_pod(0, None),
        // 3. The promotion happened (through the instance manager): announced.
        event("FailedOver", "Normal", |note| {
            assert!(note.starts_with("orders-2 is the primary now (failover 1)"), "{note}")
        }),
        // The new primary gets the label -rw selects.
        label_pod(2, Some("primary")),
        event("PrimaryLabelled", "Normal", |_| {}),
        // 4. The other replica is pointed at the new primary.
        event("Repointing", "Normal", |note| {
            assert_eq!(note, "pointing replica orders-1 at the primary at 10.244.0.12");
        }),
        status_patch(&c, |status| {
            assert_eq!(status["currentPrimary"], "orders-2");
            assert_eq!(status["targetPrimary"], "orders-2");
            assert_eq!(status["phase"], "Healthy");
            assert_eq!(status["failoverCount"], 1);
            assert_eq!(status["lastFailoverTime"], "2023-11-14T22:13:20Z");
            // Removed by name: a merge patch keeps what it does not name.
            assert_eq!(status.get("primaryFailingSince"), Some(&Value::Null), "{status}");
        }),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    eventually(|| instances.calls.lock().unwrap().iter().any(|c| c.starts_with("POST /demote orders-1"))).await;
    let calls = instances.calls.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|c| c.starts_with("POST /promote")).collect::<Vec<_>>(), ["POST /promote orders-2"]);
    eventually(|| Arc::strong_count(&ctx) == 1).await;
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_controller_restarted_mid_failover_finishes_it_without_a_second_promotion() {
    // The status says orders-1 was being promoted when the controller died; orders-2 is further ahead now.
    let (mut c, instances, fill) = primary_down(Some(-60));
    let status = c.status.as_mut().unwrap();
    status.target_primary = Some("orders-1".into());
    status.phase = Some("FailingOver".into());
    let (ctx, server) = context_with_instances(fill, instances.clone());
    let server = server.expect(vec![
        status_patch(&c, |status| assert_eq!(status["targetPrimary"], "orders-1")),
        label_pod(0, None),
        event("FailedOver", "Normal", |note| assert!(note.starts_with("orders-1 is the primary now"), "{note}")),
        label_pod(1, Some("primary")),
        event("PrimaryLabelled", "Normal", |_| {}),
        event("Repointing", "Normal", |note| {
            assert_eq!(note, "pointing replica orders-2 at the primary at 10.244.0.11")
        }),
        status_patch(&c, |status| assert_eq!(status["currentPrimary"], "orders-1")),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    eventually(|| Arc::strong_count(&ctx) == 1).await;
    let calls = instances.calls.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|c| c.starts_with("POST /promote")).collect::<Vec<_>>(), ["POST /promote orders-1"]);
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_replica_beyond_the_failover_lag_bound_is_not_promoted() {
    let (mut c, _, fill) = primary_down(Some(-60));
    c.spec.failover = Some(stead_crds::cluster::FailoverSpec { max_lag_bytes: Some(100), allow_data_loss: None });
    let instances = instances_answering([replica_status(1, 0, 5000), replica_status(2, 0, 7000)]);
    let (ctx, server) = context_with_instances(fill, instances.clone());
    let server = server.expect(vec![
        event("FailoverBlocked", "Warning", |note| assert!(note.contains("lags by 5000 bytes"), "{note}")),
        label_pod(0, None),
        status_patch(&c, |status| {
            assert_eq!(status["phase"], "FailoverBlocked");
            assert_eq!(status["currentPrimary"], "orders-0");
            let (s, reason, message) = condition(status, "Degraded");
            assert_eq!((s.as_str(), reason.as_str()), ("True", "FailoverBlocked"));
            assert!(message.contains("beyond spec.failover.maxLagBytes (100)"), "{message}");
        }),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    assert!(!instances.calls.lock().unwrap().iter().any(|c| c.starts_with("POST")));
    drop(ctx);
    verify(server).await;
}

/// The stores of a 3-instance cluster (0 primary, 1 and 2 replicas) whose
/// StatefulSet's update revision is `orders-new`, with the pods of `revisions`
/// (ordinal, `controller-revision-hash`) cached; a pod not listed is absent.
fn mid_rollout<const N: usize>(revisions: [(i32, &'static str); N]) -> impl FnOnce(&mut crate::context::StoreWriters) {
    let base = finalized(cluster(spec()));
    let mut sts = live_sts(&base, 3);
    sts.status.as_mut().unwrap().update_revision = Some("orders-new".into());
    move |w| {
        w.seed([sts], live_services(&base), [live_pdb(&base)], []);
        w.seed_pods(revisions.map(|(ordinal, revision)| {
            let mut pod = live_pod(ordinal, true, Some(if ordinal == 0 { "primary" } else { "replica" }));
            pod.metadata.labels.as_mut().unwrap().insert("controller-revision-hash".into(), revision.into());
            pod
        }));
    }
}

#[tokio::test]
async fn a_new_revision_restarts_the_highest_replica_first_and_one_at_a_time() {
    let (c, instances, _) = running([Some("primary"), Some("replica"), Some("replica")]);
    let (ctx, server) =
        context_with_instances(mid_rollout([(0, "orders-old"), (1, "orders-old"), (2, "orders-old")]), instances);
    let server = server.expect(vec![
        Call::new(
            Method::DELETE,
            format!("/api/v1/namespaces/{NS}/pods/orders-2?"),
            |body| assert_eq!(body["preconditions"]["uid"], "uid-pod-2", "only the pod that was judged: {body}"),
            Reply::Json(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orders-2", "namespace": NS}})),
        ),
        event("RollingUpdate", "Normal", |note| {
            assert_eq!(
                note,
                "restarting orders-2 on revision orders-new: replica orders-2 runs an old revision; replicas restart \
                 first, from the highest ordinal"
            );
        }),
        status_patch(&c, |status| assert_eq!(condition(status, "Progressing").1, "RollingUpdate")),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

/// The replica restarted a moment ago is gone from the cache before the
/// StatefulSet recreates it: it counts as down, so nothing else restarts.
#[tokio::test]
async fn a_pod_deleted_a_moment_ago_holds_the_rollout() {
    let (c, instances, _) = running([Some("primary"), Some("replica"), Some("replica")]);
    let (ctx, server) = context_with_instances(mid_rollout([(0, "orders-old"), (1, "orders-old")]), instances);
    let server = server.expect(vec![status_patch(&c, |status| {
        let (_, reason, message) = condition(status, "Progressing");
        assert_eq!(reason, "RollingUpdate");
        assert_eq!(
            message,
            "rolling update: waiting for orders-2 to be recreated and ready before restarting the next instance"
        );
    })]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

/// The primary is the last on the old revision and every replica serves on
/// the new one: by default (`primaryUpdateMethod: switchover`) the
/// controller records a switchover to the most advanced updated replica
/// instead of restarting the primary; nothing is deleted yet.
#[tokio::test]
async fn the_last_outdated_primary_hands_over_to_the_most_advanced_updated_replica() {
    let (mut c, instances, _) = running([Some("primary"), Some("replica"), Some("replica")]);
    c.status.as_mut().unwrap().current_primary = Some("orders-0".into());
    c.status.as_mut().unwrap().target_primary = Some("orders-0".into());
    let (ctx, server) = context_with_instances(
        mid_rollout([(0, "orders-old"), (1, "orders-new"), (2, "orders-new")]),
        instances.clone(),
    );
    let mut recorded = c.clone();
    recorded.metadata.resource_version = Some("101".into());
    let server = server.expect(vec![
        // orders-1 has replayed everything, orders-2 lags by 4096 bytes.
        status_patch_answered(
            &c,
            |status| assert_eq!(status, &json!({"targetPrimary": "orders-1", "phase": "Switchover"})),
            Reply::Json(serde_json::to_value(&recorded).unwrap()),
        ),
        event("Switchover", "Normal", |note| {
            assert_eq!(
                note,
                "rolling update: every replica runs revision orders-new; switching over from orders-0 to orders-1, \
                 which runs it, so that orders-0 restarts as a replica"
            );
        }),
        status_patch(&recorded, |status| {
            assert_eq!(status["phase"], "Switchover");
            assert_eq!(status["targetPrimary"], "orders-1");
            assert_eq!(condition(status, "Progressing").1, "RollingUpdate");
        }),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    assert!(!instances.calls.lock().unwrap().iter().any(|c| c.starts_with("POST")), "nothing is demoted yet");
    drop(ctx);
    verify(server).await;
}

/// `stead.dev/reclone=orders-2`: the claim goes first (it stays Terminating
/// while the pod uses it, so the StatefulSet makes a new one), then the pod,
/// each conditional on the uid that was judged; the request is removed.
#[tokio::test]
async fn a_requested_reclone_deletes_the_replicas_claim_then_its_pod_and_nothing_else() {
    let (mut c, instances, _) = running([Some("primary"), Some("replica"), Some("replica")]);
    c.status.as_mut().unwrap().current_primary = Some("orders-0".into());
    c.status.as_mut().unwrap().target_primary = Some("orders-0".into());
    c.metadata.annotations = Some([("stead.dev/reclone".to_owned(), "orders-2".to_owned())].into());
    let mut after = c.clone();
    after.metadata.resource_version = Some("101".into());
    after.metadata.annotations = None;
    let base = finalized(cluster(spec()));
    let sts = live_sts(&base, 3);
    let (ctx, server) = context_with_instances(
        |w| {
            w.seed([sts], live_services(&base), [live_pdb(&base)], [0, 1, 2].map(|o| live_claim(o, "10Gi")));
            w.seed_pods([
                live_pod(0, true, Some("primary")),
                live_pod(1, true, Some("replica")),
                live_pod(2, true, Some("replica")),
            ]);
        },
        instances.clone(),
    );
    let server = server.expect(vec![
        Call::new(
            Method::DELETE,
            format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/data-orders-2?"),
            |body| assert_eq!(body["preconditions"]["uid"], "uid-claim-2", "only the claim that was judged: {body}"),
            Reply::Json(
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-orders-2"}}),
            ),
        ),
        Call::new(
            Method::DELETE,
            format!("/api/v1/namespaces/{NS}/pods/orders-2?"),
            |body| assert_eq!(body["preconditions"]["uid"], "uid-pod-2", "only the pod that was judged: {body}"),
            Reply::Json(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orders-2"}})),
        ),
        event("Recloning", "Normal", |note| {
            assert_eq!(
                note,
                "re-cloning orders-2 as stead.dev/reclone asks: its claim data-orders-2 and its pod are deleted; the \
                 StatefulSet recreates both, and the new instance on the empty volume is cloned from the primary \
                 orders-0"
            );
        }),
        Call::new(
            Method::PATCH,
            format!("{}?&fieldManager=stead-controller", cluster_uri()),
            |body| assert_eq!(body, &json!({"metadata": {"annotations": {"stead.dev/reclone": null}}})),
            Reply::Json(serde_json::to_value(&after).unwrap()),
        ),
        status_patch(&after, |status| assert_eq!(condition(status, "Progressing").1, "Recloning")),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

/// A re-clone of the primary is refused and removed; nothing is deleted.
#[tokio::test]
async fn a_reclone_of_the_primary_is_refused_and_deletes_nothing() {
    let (mut c, instances, fill) = running([Some("primary"), Some("replica"), Some("replica")]);
    c.status.as_mut().unwrap().current_primary = Some("orders-0".into());
    c.metadata.annotations = Some([("stead.dev/reclone".to_owned(), "orders-0".to_owned())].into());
    let mut after = c.clone();
    after.metadata.resource_version = Some("101".into());
    after.metadata.annotations = None;
    let (ctx, server) = context_with_instances(fill, instances);
    let server = server.expect(vec![
        event("RecloneRefused", "Warning", |note| {
            assert_eq!(
                note,
                "re-clone refused: orders-0 is the primary, and the primary's volume is never deleted; switch over \
                 first (kubectl annotate dbc/orders stead.dev/switchover-to=<replica>), then ask again; the request \
                 is removed"
            );
        }),
        Call::new(
            Method::PATCH,
            format!("{}?&fieldManager=stead-controller", cluster_uri()),
            |body| assert_eq!(body, &json!({"metadata": {"annotations": {"stead.dev/reclone": null}}})),
            Reply::Json(serde_json::to_value(&after).unwrap()),
        ),
        status_patch(&after, |status| assert_eq!(status["currentPrimary"], "orders-0")),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_requested_switchover_demotes_the_primary_first_and_loses_nothing() {
    let (mut c, instances, fill) = running([Some("primary"), Some("replica"), Some("replica")]);
    {
        let status = c.status.as_mut().unwrap();
        status.current_primary = Some("orders-0".into());
        status.target_primary = Some("orders-0".into());
        status.phase = Some("Healthy".into());
    }
    c.metadata.annotations = Some([("stead.dev/switchover-to".to_owned(), "orders-1".to_owned())].into());
    let mut after_request = c.clone();
    after_request.metadata.resource_version = Some("101".into());
    after_request.metadata.annotations = None;
    let (ctx, server) = context_with_instances(fill, instances.clone());
    let server = server.expect(vec![
        // 1. Recorded first.
        status_patch(&c, |status| assert_eq!(status, &json!({"targetPrimary": "orders-1", "phase": "Switchover"}))),
        event("Switchover", "Normal", |note| assert_eq!(note, "switching over: orders-1 takes over from orders-0")),
        // 2. The old primary is fenced (demoted next, through its instance manager).
        label_pod(0, None),
        // 3. The target, caught up, is promoted; the request is removed.
        event("SwitchedOver", "Normal", |note| {
            assert_eq!(note, "orders-1 is the primary now: switchover done, no transaction lost");
        }),
        Call::new(
            Method::PATCH,
            format!("{}?&fieldManager=stead-controller", cluster_uri()),
            |body| assert_eq!(body, &json!({"metadata": {"annotations": {"stead.dev/switchover-to": null}}})),
            Reply::Json(serde_json::to_value(&after_request).unwrap()),
        ),
        // 4. Roles follow: the old primary is a replica of the new one.
        label_pod(0, Some("replica")),
        label_pod(1, Some("primary")),
        event("PrimaryLabelled", "Normal", |_| {}),
        event("Repointing", "Normal", |note| {
            assert_eq!(note, "pointing replica orders-2 at the primary at 10.244.0.11")
        }),
        status_patch(&after_request, |status| {
            assert_eq!(status["currentPrimary"], "orders-1");
            assert_eq!(status["phase"], "Healthy");
            assert!(status.get("failoverCount").is_none(), "a switchover is not a failover: {status}");
        }),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    eventually(|| Arc::strong_count(&ctx) == 1).await;
    let calls = instances.calls.lock().unwrap().clone();
    let operations: Vec<&String> = calls.iter().filter(|c| c.starts_with("POST")).collect();
    assert_eq!(
        operations,
        [
            r#"POST /demote orders-0 {"primaryHost":"10.244.0.11","primaryPort":5432}"#,
            "POST /promote orders-1",
            r#"POST /demote orders-2 {"primaryHost":"10.244.0.11","primaryPort":5432}"#,
        ],
        "the old primary is demoted before the target is promoted"
    );
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_switchover_to_a_pod_that_is_not_a_streaming_replica_is_refused_and_the_request_removed() {
    let (mut c, instances, fill) = running([Some("primary"), Some("replica"), Some("replica")]);
    c.status.as_mut().unwrap().current_primary = Some("orders-0".into());
    c.metadata.annotations = Some([("stead.dev/switchover-to".to_owned(), "orders-9".to_owned())].into());
    let mut after = c.clone();
    after.metadata.resource_version = Some("101".into());
    after.metadata.annotations = None;
    let (ctx, server) = context_with_instances(fill, instances.clone());
    let server = server.expect(vec![
        event("SwitchoverRefused", "Warning", |note| {
            assert_eq!(
                note,
                "switchover to orders-9 refused: orders-9 is not an instance of this cluster; its instances are \
                 orders-0, orders-1, orders-2; the request is removed"
            );
        }),
        Call::new(
            Method::PATCH,
            format!("{}?&fieldManager=stead-controller", cluster_uri()),
            |body| assert_eq!(body["metadata"]["annotations"]["stead.dev/switchover-to"], Value::Null),
            Reply::Json(serde_json::to_value(&after).unwrap()),
        ),
        status_patch(&after, |status| assert_eq!(status["currentPrimary"], "orders-0")),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    assert!(!instances.calls.lock().unwrap().iter().any(|c| c.starts_with("POST")), "nothing was demoted or promoted");
    drop(ctx);
    verify(server).await;
}

#[tokio::test]
async fn a_ready_pod_whose_instance_manager_does_not_answer_degrades_the_cluster() {
    let base = finalized(cluster(spec()));
    let c = settled(base.clone(), Some(&live_sts(&base, 3)));
    // orders-2's pod is Ready, but its manager stopped answering the controller.
    let instances = instances_answering([primary_status(0), replica_status(1, 0, 0)]);
    let (ctx, server) = context_with_instances(
        |w| {
            w.seed([live_sts(&base, 3)], live_services(&base), [live_pdb(&base)], []);
            w.seed_pods([
                live_pod(0, true, Some("primary")),
                live_pod(1, true, Some("replica")),
                live_pod(2, true, Some("replica")),
            ]);
        },
        instances,
    );
    let server = server.expect(vec![
        label_pod(2, None),
        status_patch(&c, |status| {
            let (s, reason, message) = condition(status, "Degraded");
            assert_eq!((s.as_str(), reason.as_str()), ("True", "ReplicaNotStreaming"));
            assert!(message.starts_with("orders-2 does not answer (GET https://10.244.0.12:8000/status"), "{message}");
        }),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    drop(ctx);
    verify(server).await;
}
