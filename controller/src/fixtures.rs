//! Test helpers: a mock API server that checks every call, and test objects.
//!
//! A test lists the calls it expects, in order: method, exact URI and a
//! check of the body, each with the answer the API server would give. The
//! verifier fails on any other call, on a call that never came (timeout),
//! and on any call after the last expected one — so an empty list proves
//! that a reconcile made no API call at all ("radio silence").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use stead_crds::names::{FIELD_MANAGER, FINALIZER};
use stead_crds::{DatabaseCluster, DatabaseClusterSpec, StorageSpec};
use tokio::task::JoinHandle;
use tower_test::mock;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::Pod;
use stead_crds::instance_api::{
    BackupStart, BackupStarted, BackupStop, BackupStopped, Bootstrap, Demote, InstanceStatus, Lsn, Postmaster, Role,
};

use crate::children::{self, ChildKind, ClusterView};
use crate::cli::Settings;
use crate::context::{Context, StoreWriters, stores};
use crate::instances::{CallError, InstanceApi, Target};
use crate::keys::ControllerKeys;
use crate::replication::FailoverState;
use crate::status::{Outcome, Replication, compute_status};
use crate::topology::{decide, members_without_pods};

pub const NS: &str = "shop";
pub const NAME: &str = "orders";
pub const UID: &str = "uid-orders";
/// The credentials Secret of the cluster `orders`.
pub const SECRET: &str = "orders-credentials";

/// The fixed clock of every test context.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_700_000_000).unwrap()
}

type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// The mock API server's end of the client.
pub struct ApiServer(Handle);

/// A context on a mock client, with empty caches that count as synced.
pub fn context() -> (Arc<Context>, ApiServer) {
    context_with(|_| {})
}

/// A context whose caches are filled by `fill`.
pub fn context_with(fill: impl FnOnce(&mut StoreWriters)) -> (Arc<Context>, ApiServer) {
    context_with_instances(fill, Arc::new(FakeInstances::default()))
}

/// A context whose caches are filled by `fill` and whose instance managers are `instances`.
pub fn context_with_instances(
    fill: impl FnOnce(&mut StoreWriters),
    instances: Arc<dyn InstanceApi>,
) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (stores, mut writers) = stores();
    writers.seed([], [], [], []);
    fill(&mut writers);
    let mut ctx = Context::new(client, Settings::default(), stores, Some("test".into()), keys(), instances);
    ctx.now = now;
    (Arc::new(ctx), ApiServer(handle))
}

/// One set of controller keys for every test (a CA takes a while to make).
pub fn keys() -> Arc<ControllerKeys> {
    static KEYS: OnceLock<Arc<ControllerKeys>> = OnceLock::new();
    KEYS.get_or_init(|| Arc::new(ControllerKeys::generate().unwrap().0)).clone()
}

/// Instance managers that answer from a table, and record what they were asked.
#[derive(Default)]
pub struct FakeInstances {
    /// `GET /status` answers, by pod; a pod not listed is unreachable.
    pub statuses: Mutex<HashMap<String, InstanceStatus>>,
    /// Every call, as `<method> <path> <pod> [body]`.
    pub calls: Mutex<Vec<String>>,
    /// While true, operations (bootstrap, demote, promote) do not answer until [`Self::release`].
    pub hold: std::sync::atomic::AtomicBool,
    released: tokio::sync::Notify,
}

impl FakeInstances {
    /// Lets held operations answer.
    pub fn release(&self) {
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        self.released.notify_waiters();
    }

    async fn operation(&self, target: &Target, what: String) -> Result<InstanceStatus, CallError> {
        let notified = self.released.notified();
        let answer = self.answer(target, what);
        if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            notified.await;
        }
        answer
    }

    fn answer(&self, target: &Target, what: String) -> Result<InstanceStatus, CallError> {
        assert_eq!(target.token, keys().token(NS, NAME), "every call carries the cluster's token");
        self.calls.lock().unwrap().push(what);
        self.statuses.lock().unwrap().get(&target.pod).cloned().ok_or_else(|| CallError::Unreachable {
            pod: target.pod.clone(),
            ip: target.ip.clone(),
            method: "GET",
            path: "/status",
            why: "connection refused".into(),
        })
    }
}

impl InstanceApi for FakeInstances {
    fn status<'a>(&'a self, target: &'a Target) -> InstanceAnswer<'a> {
        Box::pin(async move { self.answer(target, format!("GET /status {}", target.pod)) })
    }

    fn bootstrap<'a>(&'a self, target: &'a Target, request: &'a Bootstrap) -> InstanceAnswer<'a> {
        let body = serde_json::to_string(request).unwrap();
        Box::pin(async move { self.operation(target, format!("POST /bootstrap {} {body}", target.pod)).await })
    }

    fn demote<'a>(&'a self, target: &'a Target, request: &'a Demote) -> InstanceAnswer<'a> {
        let body = serde_json::to_string(request).unwrap();
        Box::pin(async move {
            // A demotion makes the instance a replica of the given host, as stead-instance's does.
            if let Some(status) = self.statuses.lock().unwrap().get_mut(&target.pod) {
                status.role = Role::Replica;
                status.streaming = true;
                status.primary_host.clone_from(&request.primary_host);
                status.received_lsn = status.current_lsn;
                status.replayed_lsn = status.current_lsn;
                status.lag_bytes = Some(0);
            }
            self.operation(target, format!("POST /demote {} {body}", target.pod)).await
        })
    }

    fn backup_start<'a>(
        &'a self,
        target: &'a Target,
        request: &'a BackupStart,
    ) -> crate::instances::Answer<'a, BackupStarted> {
        let body = serde_json::to_string(request).unwrap();
        Box::pin(async move {
            let status = self.answer(target, format!("POST /backup/start {} {body}", target.pod))?;
            Ok(BackupStarted {
                mode: request.mode,
                label: request.label.clone(),
                begin_lsn: status.current_lsn.unwrap_or(Lsn(0)),
            })
        })
    }

    fn backup_stop<'a>(
        &'a self,
        target: &'a Target,
        request: &'a BackupStop,
    ) -> crate::instances::Answer<'a, BackupStopped> {
        let body = serde_json::to_string(request).unwrap();
        Box::pin(async move {
            let status = self.answer(target, format!("POST /backup/stop {} {body}", target.pod))?;
            Ok(BackupStopped {
                label: request.label.clone(),
                end_lsn: status.current_lsn.unwrap_or(Lsn(0)),
                backup_label: None,
            })
        })
    }

    fn promote<'a>(&'a self, target: &'a Target) -> InstanceAnswer<'a> {
        Box::pin(async move {
            // A promotion makes the instance a primary, as stead-instance's does.
            if let Some(status) = self.statuses.lock().unwrap().get_mut(&target.pod) {
                *status = InstanceStatus { pod_name: status.pod_name.clone(), ..primary_status(0) };
            }
            self.operation(target, format!("POST /promote {}", target.pod)).await
        })
    }
}

type InstanceAnswer<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<InstanceStatus, CallError>> + Send + 'a>>;

/// What the mock answers.
pub enum Reply {
    /// 200 with this JSON.
    Json(Value),
    /// 200 with the request body (an apply or an event as stored).
    Echo,
    /// An error Status with this code and reason.
    Status(u16, &'static str),
}

/// One expected call.
pub struct Call {
    pub method: Method,
    pub uri: String,
    pub check: Box<dyn FnOnce(&Value) + Send>,
    pub reply: Reply,
}

impl Call {
    pub fn new(
        method: Method,
        uri: impl Into<String>,
        check: impl FnOnce(&Value) + Send + 'static,
        reply: Reply,
    ) -> Self {
        Self { method, uri: uri.into(), check: Box::new(check), reply }
    }
}

impl ApiServer {
    /// Answers `calls` in order, then asserts that no further call comes.
    ///
    /// The returned task ends once every client is dropped; await it with
    /// [`verify`] after dropping the context.
    pub fn expect(self, calls: Vec<Call>) -> JoinHandle<()> {
        let mut handle = self.0;
        tokio::spawn(async move {
            for (i, call) in calls.into_iter().enumerate() {
                let Some((request, send)) = handle.next_request().await else {
                    panic!("call #{i} never came: expected {} {}", call.method, call.uri);
                };
                let method = request.method().clone();
                let uri = request.uri().to_string();
                assert_eq!((&method, uri.as_str()), (&call.method, call.uri.as_str()), "call #{i}");
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
                (call.check)(&body);
                let response = match call.reply {
                    Reply::Json(v) => Response::builder().status(200).body(Body::from(serde_json::to_vec(&v).unwrap())),
                    Reply::Echo => Response::builder().status(200).body(Body::from(bytes.to_vec())),
                    Reply::Status(code, reason) => {
                        let status = json!({
                            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": format!("mock {reason}"), "reason": reason, "code": code,
                        });
                        Response::builder().status(code).body(Body::from(serde_json::to_vec(&status).unwrap()))
                    }
                };
                send.send_response(response.unwrap());
            }
            if let Some((request, _)) = handle.next_request().await {
                panic!("unexpected call: {} {}", request.method(), request.uri());
            }
        })
    }
}

/// Waits (bounded) until `done` holds.
pub async fn eventually(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition never held within 2 s");
}

/// Awaits the verifier, failing when it hangs (a call that never came).
pub async fn verify(server: JoinHandle<()>) {
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the mock API server still waits for an expected call"),
    }
}

// ---- URIs --------------------------------------------------------------------------------

fn apply_query() -> String {
    format!("?&force=true&fieldManager={FIELD_MANAGER}")
}

/// The query of every create (POST) and non-apply patch.
fn manager_query() -> String {
    format!("?&fieldManager={FIELD_MANAGER}")
}

pub fn cluster_uri() -> String {
    format!("/apis/stead.dev/v1alpha1/namespaces/{NS}/databaseclusters/{NAME}")
}

pub fn sts_uri() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{NAME}{}", apply_query())
}

/// The create (POST) of a Service.
pub fn service_create_uri() -> String {
    format!("/api/v1/namespaces/{NS}/services{}", manager_query())
}

/// The create (POST) of the StatefulSet.
pub fn sts_create_uri() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/statefulsets{}", manager_query())
}

/// The create (POST) of the PodDisruptionBudget.
pub fn pdb_create_uri() -> String {
    format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets{}", manager_query())
}

/// The look-up by name of a Service whose create met 409 (a list: the controller may not get).
pub fn service_lookup_uri(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/services?&fieldSelector=metadata.name%3D{name}")
}

/// The look-up by name of the StatefulSet.
pub fn sts_lookup_uri() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/statefulsets?&fieldSelector=metadata.name%3D{NAME}")
}

/// The look-up by name of the PodDisruptionBudget.
pub fn pdb_lookup_uri() -> String {
    format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets?&fieldSelector=metadata.name%3D{NAME}")
}

/// A non-apply patch (merge patch) of the StatefulSet.
pub fn sts_patch_uri() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{NAME}{}", manager_query())
}

pub fn pdb_path() -> String {
    format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{NAME}")
}

pub fn claim_uri(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/{name}?&fieldManager={FIELD_MANAGER}")
}

/// The create (POST) of a Secret; never an apply, which would need `patch`.
pub fn secret_create_uri() -> String {
    format!("/api/v1/namespaces/{NS}/secrets?&fieldManager={FIELD_MANAGER}")
}

// ---- Calls ------------------------------------------------------------------------------

/// An event with this reason and type about the cluster; `check` sees the note.
pub fn event(reason: &'static str, type_: &'static str, check: impl FnOnce(&str) + Send + 'static) -> Call {
    Call::new(
        Method::POST,
        format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?"),
        move |body| {
            assert_eq!(body["reason"], reason, "event reason in {body}");
            assert_eq!(body["type"], type_, "event type in {body}");
            assert_eq!(body["regarding"]["kind"], "DatabaseCluster");
            assert_eq!(body["regarding"]["name"], NAME);
            assert_eq!(body["reportingController"], "stead-controller");
            check(body["note"].as_str().unwrap_or_default());
        },
        Reply::Echo,
    )
}

/// The finalizer helper's JSON patch adding our finalizer.
pub fn add_finalizer(cluster: &DatabaseCluster) -> Call {
    let mut answer = cluster.clone();
    answer.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    Call::new(
        Method::PATCH,
        format!("{}?", cluster_uri()),
        |body| {
            assert_eq!(
                body,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
                ])
            );
        },
        Reply::Json(serde_json::to_value(answer).unwrap()),
    )
}

/// The finalizer helper's JSON patch removing our finalizer (index 0).
pub fn remove_finalizer(reply: Reply) -> Call {
    Call::new(
        Method::PATCH,
        format!("{}?", cluster_uri()),
        |body| {
            assert_eq!(
                body,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                    {"op": "remove", "path": "/metadata/finalizers/0"},
                ])
            );
        },
        reply,
    )
}

/// A merge patch of `/status`; `check` sees the status written.
pub fn status_patch(cluster: &DatabaseCluster, check: impl FnOnce(&Value) + Send + 'static) -> Call {
    status_patch_answered(cluster, check, Reply::Json(serde_json::to_value(cluster).unwrap()))
}

/// As [`status_patch`], answered with `reply`.
pub fn status_patch_answered(
    cluster: &DatabaseCluster,
    check: impl FnOnce(&Value) + Send + 'static,
    reply: Reply,
) -> Call {
    let expected_version = cluster.metadata.resource_version.clone().expect("fixture clusters carry a resourceVersion");
    Call::new(
        Method::PATCH,
        format!("{}/status?&fieldManager={FIELD_MANAGER}", cluster_uri()),
        move |body| {
            let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
            keys.sort_unstable();
            assert_eq!(keys, ["metadata", "status"], "a status patch carries status and its precondition only");
            assert_eq!(
                body["metadata"],
                json!({"resourceVersion": expected_version}),
                "the write is conditional on the version the status was computed from"
            );
            check(&body["status"]);
        },
        reply,
    )
}

/// The create of the credentials Secret, checked field by field; the password is random.
pub fn create_secret(reply: Reply) -> Call {
    Call::new(
        Method::POST,
        secret_create_uri(),
        |body| {
            assert_eq!(body["apiVersion"], "v1");
            assert_eq!(body["kind"], "Secret");
            assert_eq!(body["type"], "kubernetes.io/basic-auth");
            assert_eq!(
                body["metadata"],
                json!({"name": SECRET, "namespace": NS, "labels": stead_crds::names::child_labels(NAME)}),
                "labelled, and no ownerReferences: the Secret outlives the cluster"
            );
            let data = body["stringData"].as_object().unwrap();
            let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                ["ca.crt", "controller-token", "password", "replication-password", "tls.crt", "tls.key", "username"],
                "{body}"
            );
            assert_eq!(data["username"], "postgres");
            for key in ["password", "replication-password"] {
                let password = data[key].as_str().unwrap();
                assert_eq!(password.len(), 32, "{password}");
                assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()), "{password}");
            }
            assert_ne!(data["password"], data["replication-password"]);
            assert_eq!(data["controller-token"], super::fixtures::keys().token(NS, NAME).as_str());
            assert_eq!(data["ca.crt"], super::fixtures::keys().ca_pem().as_str());
            assert!(data["tls.crt"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(data["tls.key"].as_str().unwrap().contains("PRIVATE KEY"));
            assert!(body.get("data").is_none());
        },
        reply,
    )
}

/// A server-side apply of a child at `uri`; the body must be exactly `want`.
pub fn apply(uri: String, want: Value) -> Call {
    Call::new(Method::PATCH, uri, move |body| assert_eq!(body, &want), Reply::Echo)
}

/// The create (POST) of a child at `uri`; the body must be exactly `want`, the apply body.
pub fn create(uri: String, want: Value) -> Call {
    Call::new(Method::POST, uri, move |body| assert_eq!(body, &want), Reply::Echo)
}

/// A list answered with `items`.
pub fn list(uri: String, items: &[Value]) -> Call {
    let reply = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "9"}, "items": items});
    Call::new(Method::GET, uri, |body| assert!(body.is_null(), "a list has no body"), Reply::Json(reply))
}

// ---- Instances ---------------------------------------------------------------------------

/// The pod IP of an ordinal in these tests.
pub fn pod_ip(ordinal: i32) -> String {
    format!("10.244.0.{}", 10 + ordinal)
}

/// A pod of the cluster's StatefulSet (uid `uid-sts`), as the pod cache holds it.
pub fn live_pod(ordinal: i32, ready: bool, role: Option<&str>) -> Pod {
    let mut labels = stead_crds::names::child_labels(NAME);
    // The revision of `live_sts`: the pod is up to date.
    labels.insert("controller-revision-hash".to_owned(), format!("{NAME}-abc"));
    if let Some(role) = role {
        labels.insert(crate::topology::ROLE_LABEL.to_owned(), role.to_owned());
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{NAME}-{ordinal}"), "namespace": NS, "uid": format!("uid-pod-{ordinal}"),
            "resourceVersion": format!("{}", 50 + ordinal), "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": NAME, "uid": "uid-sts", "controller": true}],
        },
        "status": {
            "phase": "Running", "podIP": pod_ip(ordinal),
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    }))
    .unwrap()
}

/// What a healthy primary's instance manager answers.
pub fn primary_status(ordinal: i32) -> InstanceStatus {
    InstanceStatus {
        pod_name: format!("{NAME}-{ordinal}"),
        role: Role::Primary,
        postmaster: Postmaster::Running,
        ready: true,
        timeline: Some(1),
        system_identifier: Some("7400000000000000001".into()),
        current_lsn: Some(Lsn(0x0300_0060)),
        received_lsn: None,
        replayed_lsn: None,
        lag_bytes: None,
        streaming: false,
        primary_host: None,
        restarts: 0,
        pending_restart: false,
        backup: None,
        restorable: None,
    }
}

/// What a replica streaming from `primary` answers, `lag` bytes behind.
pub fn replica_status(ordinal: i32, primary: i32, lag: u64) -> InstanceStatus {
    InstanceStatus {
        role: Role::Replica,
        current_lsn: Some(Lsn(0x0300_0060 - lag)),
        received_lsn: Some(Lsn(0x0300_0060)),
        replayed_lsn: Some(Lsn(0x0300_0060 - lag)),
        lag_bytes: Some(lag),
        streaming: true,
        primary_host: Some(pod_ip(primary)),
        ..primary_status(ordinal)
    }
}

/// What an instance manager on an empty volume answers.
pub fn empty_status(ordinal: i32) -> InstanceStatus {
    InstanceStatus {
        role: Role::Bootstrapping,
        postmaster: Postmaster::Stopped,
        ready: false,
        timeline: None,
        system_identifier: None,
        current_lsn: None,
        ..primary_status(ordinal)
    }
}

/// Instance managers answering with `statuses`.
pub fn instances_answering(statuses: impl IntoIterator<Item = InstanceStatus>) -> Arc<FakeInstances> {
    let fake = FakeInstances::default();
    fake.statuses.lock().unwrap().extend(statuses.into_iter().map(|s| (s.pod_name.clone(), s)));
    Arc::new(fake)
}

/// The merge patch that labels a pod with its role (`None` removes the label).
pub fn label_pod(ordinal: i32, role: Option<&'static str>) -> Call {
    Call::new(
        Method::PATCH,
        format!("/api/v1/namespaces/{NS}/pods/{NAME}-{ordinal}?&fieldManager={FIELD_MANAGER}"),
        move |body| {
            assert_eq!(
                body,
                &json!({"metadata": {"resourceVersion": format!("{}", 50 + ordinal), "labels": {"stead.dev/role": role}}})
            );
        },
        Reply::Json(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{NAME}-{ordinal}"), "namespace": NS}}),
        ),
    )
}

// ---- Objects ----------------------------------------------------------------------------

pub fn spec() -> DatabaseClusterSpec {
    DatabaseClusterSpec {
        image: "postgres:17.2".into(),
        replicas: Some(3),
        port: Some(5432),
        storage: StorageSpec { size: "10Gi".into(), storage_class_name: None },
        ..Default::default()
    }
}

/// A stored cluster without finalizer or status.
pub fn cluster(spec: DatabaseClusterSpec) -> DatabaseCluster {
    let mut c = DatabaseCluster::new(NAME, spec);
    c.metadata.namespace = Some(NS.into());
    c.metadata.uid = Some(UID.into());
    c.metadata.generation = Some(1);
    c.metadata.resource_version = Some("100".into());
    c
}

/// The cluster with our finalizer.
pub fn finalized(mut c: DatabaseCluster) -> DatabaseCluster {
    c.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    c
}

/// The cluster with the status the controller would have written for `sts`,
/// including the credentials Secret it ensured, while its pods have no IP yet.
pub fn settled(mut c: DatabaseCluster, sts: Option<&StatefulSet>) -> DatabaseCluster {
    let view = ClusterView::new(&c).unwrap();
    let topology = decide(None, &members_without_pods(NAME, view.replicas()), 5432);
    let failover = FailoverState { phase: "Healthy", ..FailoverState::default() };
    let replication = Replication {
        topology: &topology,
        failover: Some(&failover),
        rollout: None,
        backups: None,
        namespace: NS,
        port: view.port(),
    };
    c.status = Some(compute_status(&c, sts, Outcome::Reconciled, now(), Some(SECRET), Some(&replication)));
    c
}

/// What the API server stores for an applied body: our fields plus defaults and bookkeeping.
fn stored<K: serde::de::DeserializeOwned>(mut applied: Value, uid: &str) -> K {
    applied["metadata"]["uid"] = json!(uid);
    applied["metadata"]["resourceVersion"] = json!("7");
    applied["metadata"]["generation"] = json!(1);
    applied["metadata"]["labels"]["added-by-someone-else"] = json!("yes");
    serde_json::from_value(applied).unwrap()
}

/// The Service kinds of every cluster, in the order they are made.
pub const SERVICES: [ChildKind; 4] =
    [ChildKind::HeadlessService, ChildKind::PrimaryService, ChildKind::ReplicaService, ChildKind::AnyService];

pub fn live_services(c: &DatabaseCluster) -> Vec<Service> {
    let view = ClusterView::new(c).unwrap();
    SERVICES
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let mut svc: Service = stored(children::service(&view, *kind), &format!("uid-svc-{i}"));
            // API server defaults.
            let spec = svc.spec.as_mut().unwrap();
            spec.session_affinity = Some("None".into());
            spec.ip_families = Some(vec!["IPv4".into()]);
            if spec.cluster_ip.is_none() {
                spec.cluster_ip = Some(format!("10.96.0.{}", 17 + i));
            }
            svc
        })
        .collect()
}

/// The StatefulSet as stored, with `ready` of its replicas ready.
pub fn live_sts(c: &DatabaseCluster, ready: i32) -> StatefulSet {
    let view = ClusterView::new(c).unwrap();
    let mut sts: StatefulSet = stored(children::stateful_set(&view, None).unwrap(), "uid-sts");
    let spec = &mut sts.spec;
    spec.revision_history_limit = Some(10);
    spec.template.spec.as_mut().unwrap().containers[0].termination_message_path = Some("/dev/termination-log".into());
    spec.template.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("IfNotPresent".into());
    let replicas = view.replicas();
    sts.status = Some(StatefulSetStatus {
        observed_generation: Some(1),
        replicas,
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        current_replicas: Some(replicas),
        updated_replicas: Some(replicas),
        current_revision: Some(format!("{NAME}-abc")),
        update_revision: Some(format!("{NAME}-abc")),
        ..Default::default()
    });
    sts
}

pub fn live_pdb(c: &DatabaseCluster) -> PodDisruptionBudget {
    let view = ClusterView::new(c).unwrap();
    stored(children::pod_disruption_budget(&view), "uid-pdb")
}

/// A bound claim the StatefulSet created from the template.
pub fn live_claim(ordinal: i32, size: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("data-{NAME}-{ordinal}"),
            "namespace": NS,
            "uid": format!("uid-claim-{ordinal}"),
            "labels": stead_crds::names::child_labels(NAME),
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": size}},
    }))
    .unwrap()
}
