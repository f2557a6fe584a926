//! Micro-benchmark of `reconcile` against an in-process API server that answers instantly.
//!
//! For N clusters (100 and 1,000) it measures two passes:
//! - first: finalized clusters, no children yet (credentials Secret created,
//!   every child applied, status written);
//! - steady: children and volume claims in the caches, status stored (nothing to do).
//!
//! It prints reconciles per second and API requests per reconcile. Figures
//! only; nothing is asserted. Run: `cargo run --release -p stead-controller --example bench_reconcile`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use http::{Request, Response};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use stead_controller::children::{self, ChildKind, ClusterView};
use stead_controller::cli::Settings;
use stead_controller::context::{Context, stores};
use stead_controller::instances::{CallError, InstanceApi, Target};
use stead_controller::keys::ControllerKeys;
use stead_controller::reconciler::reconcile;
use stead_controller::replication::FailoverState;
use stead_controller::status::{Outcome, Replication, compute_status};
use stead_controller::topology::{decide, members_without_pods};
use stead_crds::instance_api::{
    BackupStart, BackupStarted, BackupStop, BackupStopped, Bootstrap, Demote, InstanceStatus,
};
use stead_crds::names::{FINALIZER, credentials_secret_name};
use stead_crds::{DatabaseCluster, DatabaseClusterSpec, StorageSpec};

const NAMESPACE: &str = "bench";

fn keys() -> Arc<ControllerKeys> {
    Arc::new(ControllerKeys::generate().unwrap().0)
}

/// The benchmark's clusters have no pods, so no instance manager is ever asked.
struct NoPods;

type Answer<'a, T = InstanceStatus> = stead_controller::instances::Answer<'a, T>;

impl NoPods {
    fn refuse<T>(target: &Target) -> Answer<'_, T> {
        let error = CallError::Unreachable {
            pod: target.pod.clone(),
            ip: target.ip.clone(),
            method: "GET",
            path: "/status",
            why: "the benchmark runs no pods".into(),
        };
        Box::pin(async move { Err(error) })
    }
}

impl InstanceApi for NoPods {
    fn status<'a>(&'a self, target: &'a Target) -> Answer<'a> {
        Self::refuse(target)
    }
    fn bootstrap<'a>(&'a self, target: &'a Target, _: &'a Bootstrap) -> Answer<'a> {
        Self::refuse(target)
    }
    fn demote<'a>(&'a self, target: &'a Target, _: &'a Demote) -> Answer<'a> {
        Self::refuse(target)
    }
    fn promote<'a>(&'a self, target: &'a Target) -> Answer<'a> {
        Self::refuse(target)
    }
    fn backup_start<'a>(&'a self, target: &'a Target, _: &'a BackupStart) -> Answer<'a, BackupStarted> {
        Self::refuse(target)
    }
    fn backup_stop<'a>(&'a self, target: &'a Target, _: &'a BackupStop) -> Answer<'a, BackupStopped> {
        Self::refuse(target)
    }
}

fn no_pods() -> Arc<dyn InstanceApi> {
    Arc::new(NoPods)
}

fn cluster(i: usize) -> DatabaseCluster {
    let mut c = DatabaseCluster::new(
        &format!("db-{i}"),
        DatabaseClusterSpec {
            image: "postgres:17.2".into(),
            replicas: Some(3),
            port: Some(5432),
            storage: StorageSpec { size: "10Gi".into(), storage_class_name: None },
            ..Default::default()
        },
    );
    c.metadata.namespace = Some(NAMESPACE.into());
    c.metadata.uid = Some(format!("uid-{i}"));
    c.metadata.generation = Some(1);
    c.metadata.finalizers = Some(vec![FINALIZER.into()]);
    c
}

/// What the API server would store for an applied body.
fn stored<K: serde::de::DeserializeOwned>(mut applied: Value) -> K {
    applied["metadata"]["uid"] = json!("child");
    applied["metadata"]["resourceVersion"] = json!("1");
    serde_json::from_value(applied).unwrap()
}

fn live_sts(view: &ClusterView) -> StatefulSet {
    let mut sts: StatefulSet = stored(children::stateful_set(view, None).unwrap());
    sts.status = Some(StatefulSetStatus {
        replicas: 3,
        ready_replicas: Some(3),
        updated_replicas: Some(3),
        observed_generation: Some(1),
        ..Default::default()
    });
    sts
}

/// An API server that answers every call at once and counts them.
fn instant_api(calls: Arc<AtomicU64>) -> Client {
    let service = tower::service_fn(move |request: Request<Body>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            let path = request.uri().path().to_owned();
            let body = request.into_body().collect_bytes().await.unwrap_or_default();
            let reply = if path.contains("/databaseclusters/") {
                // Status and finalizer patches answer with the object; any valid one will do.
                serde_json::to_vec(&cluster(0)).unwrap()
            } else {
                body.to_vec()
            };
            Ok::<_, Infallible>(Response::new(Body::from(reply)))
        }
    });
    Client::new(service, "default")
}

struct Pass {
    seconds: f64,
    calls: u64,
}

async fn pass(ctx: &Arc<Context>, clusters: &[Arc<DatabaseCluster>], calls: &AtomicU64, concurrency: usize) -> Pass {
    let before = calls.load(Ordering::Relaxed);
    let started = Instant::now();
    futures::stream::iter(clusters.iter().cloned())
        .map(|c| reconcile(c, ctx.clone()))
        .buffer_unordered(concurrency)
        .for_each(|r| async move {
            r.unwrap();
        })
        .await;
    Pass { seconds: started.elapsed().as_secs_f64(), calls: calls.load(Ordering::Relaxed) - before }
}

fn report(label: &str, n: usize, p: &Pass) {
    println!(
        "{label:<7} n={n:<5} {:>10.0} reconciles/s  {:>5.2} API requests/reconcile  ({:.1} ms total)",
        n as f64 / p.seconds,
        p.calls as f64 / n as f64,
        p.seconds * 1000.0
    );
}

#[tokio::main]
async fn main() {
    let concurrency = 4;
    println!("reconcile against an instant in-process API server, concurrency {concurrency}");
    for n in [100, 1_000] {
        let calls = Arc::new(AtomicU64::new(0));
        let fresh: Vec<Arc<DatabaseCluster>> = (0..n).map(|i| Arc::new(cluster(i))).collect();

        // First reconcile: nothing exists yet.
        let (empty, mut writers) = stores();
        writers.seed([], [], [], []);
        let ctx =
            Arc::new(Context::new(instant_api(calls.clone()), Settings::default(), empty, None, keys(), no_pods()));
        report("first", n, &pass(&ctx, &fresh, &calls, concurrency).await);

        // Steady state: children cached, status stored.
        let views: Vec<ClusterView> = fresh.iter().map(|c| ClusterView::new(c).unwrap()).collect();
        let sts: Vec<StatefulSet> = views.iter().map(live_sts).collect();
        let services: Vec<Service> = views
            .iter()
            .flat_map(|v| {
                [
                    ChildKind::HeadlessService,
                    ChildKind::PrimaryService,
                    ChildKind::ReplicaService,
                    ChildKind::AnyService,
                ]
                .map(|kind| stored(children::service(v, kind)))
            })
            .collect();
        let pdbs: Vec<PodDisruptionBudget> = views.iter().map(|v| stored(children::pod_disruption_budget(v))).collect();
        let settled: Vec<Arc<DatabaseCluster>> = fresh
            .iter()
            .zip(&sts)
            .map(|(c, s)| {
                let mut c = (**c).clone();
                let now = k8s_openapi::jiff::Timestamp::now();
                let secret = credentials_secret_name(&c.name_any());
                let topology = decide(None, &members_without_pods(&c.name_any(), 3), 5432);
                let failover = FailoverState { phase: "Healthy", ..FailoverState::default() };
                let replication = Replication {
                    topology: &topology,
                    failover: Some(&failover),
                    rollout: None,
                    backups: None,
                    namespace: NAMESPACE,
                    port: 5432,
                };
                c.status =
                    Some(compute_status(&c, Some(s), Outcome::Reconciled, now, Some(&secret), Some(&replication)));
                Arc::new(c)
            })
            .collect();
        let claims: Vec<PersistentVolumeClaim> = views
            .iter()
            .flat_map(|v| v.volume_claim_names())
            .map(|name| {
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {"resources": {"requests": {"storage": "10Gi"}}},
                    // Bound, as real claims are: the size comparison is part of the steady cost.
                    "status": {"phase": "Bound"},
                }))
                .unwrap()
            })
            .collect();
        let (filled, mut writers) = stores();
        writers.seed(sts, services, pdbs, claims);
        let ctx =
            Arc::new(Context::new(instant_api(calls.clone()), Settings::default(), filled, None, keys(), no_pods()));
        report("steady", n, &pass(&ctx, &settled, &calls, concurrency).await);
    }
}
