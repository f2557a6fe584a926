//! Wiring of watches, caches and the reconcile loop.
//!
//! We assemble the loop from kube-runtime's stable parts (reflectors,
//! `trigger_self`-style mapping, `applier`) instead of `Controller::owns`,
//! for two reasons:
//!
//! - The reconciler reads children from caches we own ([`Stores`]); a
//!   reflector updates its cache *before* yielding the event that triggers
//!   the parent, so a reconcile never sees a child older than its trigger.
//!   `Controller::owns` keeps no cache, and a second, separate watch would
//!   race with it.
//! - Caches stay warm while a replica stands by for the lease; only the
//!   reconcile loop starts and stops with leadership.
//!
//! Noise filtering: the DatabaseCluster stream passes only changes of
//! generation, finalizers or annotations (requests such as a switchover; our own status writes do not re-trigger us;
//! deletion bumps the generation). Child streams are NOT filtered by
//! generation: a StatefulSet status change (readyReplicas) must reach the
//! parent's status.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::stream::{self, BoxStream, SelectAll};
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Action, applier};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource};
use stead_crds::DatabaseCluster;
use stead_crds::app::App;
use stead_crds::backup::DatabaseBackup;
use stead_crds::names::{MANAGED_BY, selector_labels};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::context::{Context, StoreWriters};
use crate::reconciler::{error_policy, reconcile};

/// Label selector of everything the controller creates; keeps the caches small.
pub fn managed_selector() -> String {
    format!("app.kubernetes.io/managed-by={MANAGED_BY}")
}

/// The children (and pods and claims) of DatabaseClusters.
pub fn cluster_children_selector() -> String {
    format!("{},app.kubernetes.io/name={}", managed_selector(), stead_crds::names::APP_NAME)
}

/// The children (and pods) of Apps.
pub fn app_children_selector() -> String {
    format!("{},app.kubernetes.io/name={}", managed_selector(), stead_crds::app::NAME_LABEL_VALUE)
}

/// Why startup failed before any reconcile.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "the DatabaseCluster CRD (databaseclusters.stead.dev) is not installed in this cluster; \
         install it with `kubectl apply -k manifests/crds` and start the controller again"
    )]
    CrdMissing,
    /// The kube error is rendered into the message, not exposed as `source()`:
    /// kube's `Display` of an API error carries the Status in `Debug` form,
    /// and `main` prints every cause.
    #[error(
        "cannot list DatabaseClusters: {}; check the kubeconfig (or the service account) and its RBAC",
        crate::error::describe(.0)
    )]
    Api(kube::Error),
}

/// Fails fast when the CRD is missing, instead of retrying watches forever.
pub async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), StartupError> {
    let api: Api<DatabaseCluster> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(StartupError::CrdMissing),
        Err(e) => Err(StartupError::Api(e)),
    }
}

type Requests<K = DatabaseCluster> = Vec<ObjectRef<K>>;
type RequestStream<K = DatabaseCluster> = BoxStream<'static, Result<Requests<K>, watcher::Error>>;

/// A kind stead reconciles: what the generic loop ([`reconcile_loop`])
/// calls. Each kind keeps its own watches, cache and request queue; the
/// applier, leadership and shutdown handling are shared.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Reconciles one object.
    fn reconcile(
        object: Arc<Self>,
        ctx: Arc<Context>,
    ) -> Pin<Box<dyn Future<Output = Result<Action, crate::Error>> + Send>>;
    /// What to do after a failed reconcile.
    fn error_policy(object: Arc<Self>, error: &crate::Error, ctx: Arc<Context>) -> Action;
}

impl Reconciled for DatabaseCluster {
    fn reconcile(
        object: Arc<Self>,
        ctx: Arc<Context>,
    ) -> Pin<Box<dyn Future<Output = Result<Action, crate::Error>> + Send>> {
        Box::pin(reconcile(object, ctx))
    }

    fn error_policy(object: Arc<Self>, error: &crate::Error, ctx: Arc<Context>) -> Action {
        error_policy(object, error, ctx)
    }
}

/// The watches of one kind: its cache and the requests its events make.
pub struct KindInformers<K: Reconciled> {
    store: Store<K>,
    streams: SelectAll<RequestStream<K>>,
}

/// The watches: they fill the caches and say which objects to reconcile.
pub struct Informers {
    clusters: KindInformers<DatabaseCluster>,
    apps: KindInformers<App>,
}

impl Reconciled for App {
    fn reconcile(
        object: Arc<Self>,
        ctx: Arc<Context>,
    ) -> Pin<Box<dyn Future<Output = Result<Action, crate::Error>> + Send>> {
        Box::pin(crate::app_reconciler::reconcile(object, ctx))
    }

    fn error_policy(object: Arc<Self>, error: &crate::Error, ctx: Arc<Context>) -> Action {
        error_policy(object, error, ctx)
    }
}

/// The watches of Apps and their children.
fn app_informers(
    client: &Client,
    namespace: Option<&str>,
    deployments: Writer<Deployment>,
    services: Writer<Service>,
    ingresses: Writer<Ingress>,
) -> KindInformers<App> {
    fn child<K>(api: Api<K>, config: &watcher::Config, writer: Writer<K>) -> RequestStream<App>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    {
        reflector::reflector(writer, watcher(api, config.clone()).modify(|child| slim_child(child.meta_mut())))
            .default_backoff()
            .touched_objects()
            .map(|r| r.map(|child| crate::app_children::app_of(child.meta()).into_iter().collect()))
            .boxed()
    }
    let children = watcher::Config::default().labels(&app_children_selector()).any_semantic();
    let writer = Writer::<App>::default();
    let store = writer.as_reader();
    let mut streams: SelectAll<RequestStream<App>> = SelectAll::new();
    streams.push(
        reflector::reflector(
            writer,
            watcher(api::<App>(client, namespace), watcher::Config::default().any_semantic())
                .modify(|app| slim_cluster(&mut app.metadata)),
        )
        .default_backoff()
        .touched_objects()
        .predicate_filter(predicates::generation.combine(predicates::annotations), Default::default())
        .map(|r| r.map(|app| vec![ObjectRef::from_obj(&app)]))
        .boxed(),
    );
    streams.push(child(api::<Deployment>(client, namespace), &children, deployments));
    streams.push(child(api::<Service>(client, namespace), &children, services));
    streams.push(child(api::<Ingress>(client, namespace), &children, ingresses));
    KindInformers { store, streams }
}

impl Informers {
    /// Watches DatabaseClusters and our children in `namespace` (or everywhere);
    /// `instance_image` is the controller's `--instance-image`, which the
    /// StatefulSets it wants are built with (see [`crate::cached_children`]).
    pub fn new(client: &Client, namespace: Option<&str>, writers: StoreWriters, instance_image: &str) -> Self {
        let children = watcher::Config::default().labels(&cluster_children_selector()).any_semantic();
        let cluster_writer = Writer::<DatabaseCluster>::default();
        let clusters = cluster_writer.as_reader();
        // Says when the clusters are listed, for the StatefulSet watch below.
        let (clusters_listed, listed) = watch::channel(false);
        let mut streams: SelectAll<RequestStream> = SelectAll::new();
        streams.push(
            reflector::reflector(
                cluster_writer,
                watcher(api::<DatabaseCluster>(client, namespace), watcher::Config::default().any_semantic())
                    .modify(|cluster| slim_cluster(&mut cluster.metadata))
                    .inspect(move |event| {
                        if matches!(event, Ok(watcher::Event::InitDone)) {
                            clusters_listed.send_replace(true);
                        }
                    }),
            )
            .default_backoff()
            .touched_objects()
            .predicate_filter(
                predicates::generation.combine(predicates::finalizers).combine(predicates::annotations),
                Default::default(),
            )
            .map(|r| r.map(|c| vec![ObjectRef::from_obj(&c)]))
            .boxed(),
        );
        // The cluster's children are judged against it on arrival and cached
        // without their bodies (see `cached_children`), so their watches
        // start once every cluster is cached.
        let instance_image = instance_image.to_owned();
        streams.push(judged(
            api::<StatefulSet>(client, namespace),
            &children,
            writers.stateful_sets,
            &listed,
            &clusters,
            move |sts, cluster| crate::cached_children::judge_and_slim(sts, cluster, &instance_image),
        ));
        streams.push(judged(
            api::<Service>(client, namespace),
            &children,
            writers.services,
            &listed,
            &clusters,
            crate::cached_children::judge_and_slim_service,
        ));
        streams.push(judged(
            api::<PodDisruptionBudget>(client, namespace),
            &children,
            writers.pdbs,
            &listed,
            &clusters,
            crate::cached_children::judge_and_slim_pdb,
        ));
        streams.push(
            reflector::reflector(
                writers.claims,
                watcher(api::<PersistentVolumeClaim>(client, namespace), children.clone())
                    .modify(|claim| slim_child(&mut claim.metadata)),
            )
            .default_backoff()
            .touched_objects()
            .map(|r| r.map(|claim| cluster_of_claim(&claim).into_iter().collect()))
            .boxed(),
        );
        // The database pods: IPs, readiness and role labels. Every change
        // (a pod becoming ready, getting an IP) reaches its cluster.
        streams.push(
            reflector::reflector(
                writers.pods,
                watcher(api::<Pod>(client, namespace), children.clone()).modify(|pod| {
                    pod.metadata.managed_fields = None;
                    pod.metadata.annotations = None;
                    pod.spec = None;
                }),
            )
            .default_backoff()
            .touched_objects()
            .map(|r| r.map(|pod| cluster_of_labels(&pod.metadata).into_iter().collect()))
            .boxed(),
        );
        // DatabaseBackups: the cluster they name is reconciled, which drives
        // them (one at a time), schedules new ones and applies retention.
        // The index by cluster follows the same events as the cache.
        let index = writers.backup_index.clone();
        streams.push(
            reflector::reflector(
                writers.backups,
                watcher(api::<DatabaseBackup>(client, namespace), watcher::Config::default().any_semantic())
                    .modify(|backup| slim_cluster(&mut backup.metadata))
                    .inspect(move |event| {
                        if let Ok(event) = event {
                            index.apply(event);
                        }
                    }),
            )
            .default_backoff()
            .touched_objects()
            .map(|r| r.map(|backup| cluster_of_backup(&backup).into_iter().collect()))
            .boxed(),
        );
        let apps = app_informers(client, namespace, writers.deployments, writers.app_services, writers.ingresses);
        Self { clusters: KindInformers { store: clusters, streams }, apps }
    }

    /// The DatabaseCluster cache.
    pub fn clusters(&self) -> Store<DatabaseCluster> {
        self.clusters.store.clone()
    }
}

/// The watch of one kind of cluster child, started once the clusters are
/// listed (`listed`); each arriving object is slimmed and then judged by
/// `judge` against its cluster as cached (see [`crate::cached_children`]).
///
/// The start waits on a watch channel, not on `Store::wait_until_ready`:
/// that future keeps a single waker, and `run` waits on it too.
fn judged<K, F>(
    api: Api<K>,
    config: &watcher::Config,
    writer: Writer<K>,
    listed: &watch::Receiver<bool>,
    clusters: &Store<DatabaseCluster>,
    judge: F,
) -> RequestStream
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    F: Fn(&mut K, Option<&DatabaseCluster>) + Clone + Send + 'static,
{
    let (config, clusters, mut listed) = (config.clone(), clusters.clone(), listed.clone());
    let hook = move |object: &mut K| {
        slim_child(object.meta_mut());
        let cluster = owner_of(object.meta()).and_then(|owner| clusters.get(&owner));
        judge(object, cluster.as_deref());
    };
    // A sender gone before the list means the controller is stopping.
    let events = stream::once(async move { listed.wait_for(|listed| *listed).await.is_ok() })
        .filter(|listed| futures::future::ready(*listed))
        .flat_map(move |_| watcher(api.clone(), config.clone()).modify(hook.clone()));
    reflector::reflector(writer, events)
        .default_backoff()
        .touched_objects()
        .map(|r| r.map(|child| owner_of(child.meta()).into_iter().collect()))
        .boxed()
}

/// The annotation `kubectl apply` (client-side) keeps: the whole object again.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What a cached child does not need: the field sets of `managedFields`
/// (often the largest part of an object; see [`crate::managed_fields::slim`]
/// for the little that is kept), and a client-side-apply copy of the object.
pub fn slim_child(meta: &mut kube::api::ObjectMeta) {
    crate::managed_fields::slim(meta, stead_crds::names::FIELD_MANAGER);
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// What a cached DatabaseCluster does not need: `managedFields` and the
/// client-side-apply copy of the object (a change of either alone is not
/// a change of the cluster).
pub fn slim_cluster(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// The DatabaseCluster that controls a child, from its controller ownerReference.
pub fn owner_of(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<DatabaseCluster>> {
    let namespace = meta.namespace.as_deref()?;
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == DatabaseCluster::kind(&())
                && o.api_version == DatabaseCluster::api_version(&())
        })
        .map(|o| ObjectRef::new(&o.name).within(namespace))
}

/// The API of `K` in `namespace`, or in every namespace.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The cluster a DatabaseBackup backs up (`spec.cluster`, same namespace).
pub fn cluster_of_backup(backup: &DatabaseBackup) -> Option<ObjectRef<DatabaseCluster>> {
    let namespace = backup.metadata.namespace.as_deref()?;
    Some(ObjectRef::new(&backup.spec.cluster).within(namespace))
}

/// The cluster a volume claim belongs to, from the labels the StatefulSet copies onto it.
/// (Retained claims carry no ownerReference.)
pub fn cluster_of_claim(claim: &PersistentVolumeClaim) -> Option<ObjectRef<DatabaseCluster>> {
    cluster_of_labels(&claim.metadata)
}

/// The cluster an object of the StatefulSet (a pod, a claim) belongs to, from its labels.
pub fn cluster_of_labels(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<DatabaseCluster>> {
    let namespace = meta.namespace.clone()?;
    let empty = std::collections::BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let instance = labels.get("app.kubernetes.io/instance")?;
    let ours = selector_labels(instance).iter().all(|(k, v)| labels.get(k) == Some(v));
    ours.then(|| ObjectRef::new(instance).within(&namespace))
}

/// Where reconcile requests go while this replica leads; `None` while standing by.
type Sink<K> = Arc<std::sync::Mutex<Option<mpsc::UnboundedSender<ObjectRef<K>>>>>;

/// Runs the watches forever, forwarding reconcile requests to the current leader loop.
async fn pump<K: Reconciled>(mut streams: SelectAll<RequestStream<K>>, sink: Sink<K>) {
    while let Some(item) = streams.next().await {
        match item {
            Ok(requests) => {
                let guard = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(tx) = guard.as_ref() {
                    for request in requests {
                        // A closed receiver means the leader loop just stopped; it relists on restart.
                        let _ = tx.unbounded_send(request);
                    }
                }
            }
            Err(e) => warn!(error = %describe_watch(&e), "watch failed; retrying with backoff"),
        }
    }
}

/// A watch error without the `Debug` form of the Status that kube's `Display` appends.
fn describe_watch(err: &watcher::Error) -> String {
    use crate::error::describe;
    match err {
        watcher::Error::InitialListFailed(e) => format!("the initial list failed: {}", describe(e)),
        watcher::Error::WatchStartFailed(e) => format!("starting the watch failed: {}", describe(e)),
        watcher::Error::WatchError(status) => {
            format!("the watch failed: {}", describe(&kube::Error::Api(status.clone())))
        }
        watcher::Error::WatchFailed(e) => format!("the watch failed: {}", describe(e)),
        other => other.to_string(),
    }
}

/// Why the controller stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("leader election stopped reporting (the lease manager ended); exiting so that the pod restarts")]
    LeadershipGone,
}

/// One kind's part of [`run`]: its cache, the sink its watches feed, and the pump task.
struct Running<K: Reconciled> {
    store: Store<K>,
    sink: Sink<K>,
    pump: tokio::task::JoinHandle<()>,
}

impl<K: Reconciled> Running<K> {
    fn start(informers: KindInformers<K>) -> Self {
        let sink: Sink<K> = Arc::default();
        let pump = tokio::spawn(pump(informers.streams, sink.clone()));
        Self { store: informers.store, sink, pump }
    }

    /// Opens the queue of a leadership term: everything known first, then watch events.
    fn open(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Stream<Item = Result<ObjectRef<K>, Infallible>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded();
        *self.sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        let initial: Vec<_> = self.store.state().iter().map(|o| ObjectRef::from_obj(o.as_ref())).collect();
        stream::iter(initial).chain(rx).map(Ok::<_, Infallible>).take_until(shutdown)
    }

    fn close(&self) {
        *self.sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Runs until `shutdown` resolves: caches always, reconciles while `leadership` is `true`
/// (see [`crate::leader::Leadership::subscribe`]).
pub async fn run(
    ctx: Arc<Context>,
    informers: Informers,
    mut leadership: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let clusters = Running::start(informers.clusters);
    let apps = Running::start(informers.apps);
    let shutdown = shutdown.shared();
    let abort = || {
        clusters.pump.abort();
        apps.pump.abort();
    };

    // Ready once every cache is complete: a standby replica is ready too.
    tokio::select! {
        ready = async {
            clusters.store.wait_until_ready().await?;
            apps.store.wait_until_ready().await?;
            ctx.stores.wait_until_ready().await
        } => match ready {
            Ok(()) => {
                info!(clusters = clusters.store.len(), apps = apps.store.len(), "caches synced");
                ctx.health.set_ready(true);
            }
            Err(e) => warn!(error = %e, "a cache writer stopped before it was ready"),
        },
        () = shutdown.clone() => {
            abort();
            return Ok(());
        }
    }

    let result = loop {
        // Stand by until we lead.
        let became_leader = tokio::select! {
            r = leadership.wait_for(|leader| *leader) => r.map(|_| true).map_err(|_| RunError::LeadershipGone),
            () = shutdown.clone() => Ok(false),
        };
        match became_leader {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
        ctx.metrics.leader.set(1);
        info!("leading: reconciling");
        let reconciling = futures::future::join(
            reconcile_loop(ctx.clone(), clusters.store.clone(), clusters.open(shutdown.clone())),
            reconcile_loop(ctx.clone(), apps.store.clone(), apps.open(shutdown.clone())),
        )
        .map(|_| ());
        let lost = leadership.wait_for(|leader| !*leader);
        // Losing the lease drops the applier at once, cancelling in-flight reconciles.
        let ended = tokio::select! {
            () = reconciling => Some(Ok(())),
            r = lost => r.is_err().then_some(Err(RunError::LeadershipGone)),
        };
        clusters.close();
        apps.close();
        ctx.metrics.leader.set(0);
        if let Some(result) = ended {
            break result;
        }
        warn!("lost the lease: stopped reconciling, standing by");
    };
    abort();
    info!("controller stopped");
    result
}

/// The applier over a queue of requests; ends when the queue ends and in-flight reconciles finish.
async fn reconcile_loop<K: Reconciled>(
    ctx: Arc<Context>,
    store: Store<K>,
    queue: impl Stream<Item = Result<ObjectRef<K>, Infallible>> + Send + 'static,
) {
    let config = controller::Config::default().concurrency(ctx.settings.concurrency);
    applier(K::reconcile, K::error_policy, ctx, store, queue, config)
        .for_each(|result| async move {
            match result {
                Ok((obj, action)) => debug!(object = %obj, ?action, "reconciled"),
                Err(controller::Error::ReconcilerFailed(e, obj)) => {
                    debug!(object = %obj, error = %e, "reconcile failed")
                }
                Err(e) => debug!(error = %e, "reconcile skipped"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    use super::*;

    fn owner(kind: &str, api_version: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "orders".into(),
            uid: "u".into(),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn owner_mapping_table() {
        let rows = [
            ("ours", vec![owner("DatabaseCluster", "stead.dev/v1alpha1", Some(true))], true),
            ("not controller", vec![owner("DatabaseCluster", "stead.dev/v1alpha1", None)], false),
            ("other kind", vec![owner("Deployment", "apps/v1", Some(true))], false),
            ("other version", vec![owner("DatabaseCluster", "stead.dev/v2", Some(true))], false),
            ("none", vec![], false),
        ];
        for (case, refs, want) in rows {
            let meta =
                ObjectMeta { namespace: Some("shop".into()), owner_references: Some(refs), ..Default::default() };
            let got = owner_of(&meta);
            assert_eq!(got.is_some(), want, "{case}");
            if let Some(r) = got {
                assert_eq!((r.name.as_str(), r.namespace.as_deref()), ("orders", Some("shop")));
            }
        }
    }

    #[test]
    fn cached_objects_drop_what_the_reconciler_never_reads() {
        let entry =
            |manager: &str, operation: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some(manager.into()),
                operation: Some(operation.into()),
                ..Default::default()
            };
        let meta = |entries| ObjectMeta {
            managed_fields: Some(entries),
            annotations: Some(
                [(LAST_APPLIED.to_owned(), "{...}".to_owned()), ("keep".to_owned(), "me".to_owned())].into(),
            ),
            ..ObjectMeta::default()
        };
        let mut handed_over =
            meta(vec![entry("stead-controller", "Apply"), entry("kube-controller-manager", "Update")]);
        slim_child(&mut handed_over);
        assert_eq!(handed_over.managed_fields, None);
        assert_eq!(handed_over.annotations, Some([("keep".to_owned(), "me".to_owned())].into()));
        // Created by our POST and not applied yet: who wrote it is kept, for the handover.
        let mut pending = meta(vec![entry("stead-controller", "Update"), entry("kube-controller-manager", "Update")]);
        slim_child(&mut pending);
        assert_eq!(pending.managed_fields.map(|m| m.len()), Some(2));
        let mut cluster = meta(vec![entry("stead-controller", "Update")]);
        slim_cluster(&mut cluster);
        assert_eq!(cluster.managed_fields, None);
        assert_eq!(cluster.annotations, Some([("keep".to_owned(), "me".to_owned())].into()));
    }

    #[test]
    fn claims_map_to_their_cluster_by_labels() {
        let claim = |labels: &[(&str, &str)]| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data-orders-0".into()),
                namespace: Some("shop".into()),
                labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..Default::default()
            },
            ..Default::default()
        };
        let ours = claim(&[("app.kubernetes.io/instance", "orders"), ("app.kubernetes.io/name", "databasecluster")]);
        assert_eq!(cluster_of_claim(&ours), Some(ObjectRef::new("orders").within("shop")));
        let foreign = claim(&[("app.kubernetes.io/instance", "orders"), ("app.kubernetes.io/name", "other")]);
        assert_eq!(cluster_of_claim(&foreign), None);
        assert_eq!(cluster_of_claim(&claim(&[])), None);
    }

    /// Waits (bounded) until `condition` holds; the bound only catches hangs.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let wait = async {
            while !condition() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(10), wait).await.is_err() {
            panic!("timed out waiting until {what}");
        }
    }

    /// An API server for the informers: lists answer at once (one cluster), watches never
    /// answer, and every other call is reported on the returned channel.
    fn serve_informers(
        mut handle: tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<(http::Method, String)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut parked = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let uri = request.uri().to_string();
                if uri.contains("watch=true") {
                    parked.push(send);
                    continue;
                }
                let body = if request.method() == http::Method::GET {
                    let items = if request.uri().path().ends_with("/databaseclusters") {
                        vec![serde_json::to_value(crate::fixtures::cluster(crate::fixtures::spec())).unwrap()]
                    } else {
                        vec![]
                    };
                    serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
                } else {
                    let _ = tx.send((request.method().clone(), uri));
                    serde_json::to_value(crate::fixtures::finalized(crate::fixtures::cluster(crate::fixtures::spec())))
                        .unwrap()
                };
                send.send_response(http::Response::new(kube::client::Body::from(serde_json::to_vec(&body).unwrap())));
            }
        });
        rx
    }

    #[tokio::test]
    async fn only_the_lease_holder_reconciles() {
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let (stores, writers) = crate::context::stores();
        let ctx = Arc::new(Context::new(
            client.clone(),
            crate::cli::Settings::default(),
            stores,
            None,
            crate::fixtures::keys(),
            Arc::new(crate::fixtures::FakeInstances::default()),
        ));
        let informers = Informers::new(&client, None, writers, crate::children::DEFAULT_INSTANCE_IMAGE);
        let mut writes = serve_informers(handle);
        let (lease, leading) = watch::channel(false);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(run(ctx.clone(), informers, leading, shutdown.clone().cancelled_owned()));

        // Standing by with synced caches is ready, and makes no write.
        eventually("caches are synced", || ctx.health.is_ready()).await;
        assert_eq!(ctx.metrics.leader.get(), 0);
        assert!(writes.try_recv().is_err(), "a standby must not write");

        // Leading: the known cluster is reconciled (its finalizer is added).
        lease.send(true).unwrap();
        let (method, uri) =
            tokio::time::timeout(std::time::Duration::from_secs(10), writes.recv()).await.unwrap().unwrap();
        assert_eq!(
            (method, uri.as_str()),
            (http::Method::PATCH, "/apis/stead.dev/v1alpha1/namespaces/shop/databaseclusters/orders?")
        );
        assert_eq!(ctx.metrics.leader.get(), 1);

        // Losing the lease stops reconciling; the caches stay warm and ready.
        lease.send(false).unwrap();
        eventually("leadership is given up", || ctx.metrics.leader.get() == 0).await;
        assert!(ctx.health.is_ready());

        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_missing_crd_fails_fast_with_the_fix() {
        let (ctx, server) = crate::fixtures::context();
        let server = server.expect(vec![crate::fixtures::Call::new(
            http::Method::GET,
            "/apis/stead.dev/v1alpha1/databaseclusters?&limit=1",
            |_| {},
            crate::fixtures::Reply::Status(404, "NotFound"),
        )]);
        let err = check_crd(&ctx.client, None).await.unwrap_err();
        assert!(matches!(err, StartupError::CrdMissing));
        assert!(err.to_string().contains("kubectl apply -k manifests/crds"), "{err}");
        drop(ctx);
        crate::fixtures::verify(server).await;
    }

    #[test]
    fn a_refused_startup_list_is_printed_without_debug_output() {
        let refused = kube::Error::Api(Box::new(
            kube::core::Status::failure(
                "databaseclusters.stead.dev is forbidden: User \"x\" cannot list resource \"databaseclusters\"",
                "Forbidden",
            )
            .with_code(403),
        ));
        // What main prints on exit: the error and each of its causes.
        let printed: Vec<String> =
            anyhow::Error::new(StartupError::Api(refused)).chain().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            ["cannot list DatabaseClusters: the API server refused (403 Forbidden): databaseclusters.stead.dev is \
             forbidden: User \"x\" cannot list resource \"databaseclusters\"; check the kubeconfig (or the service \
             account) and its RBAC"]
        );
    }

    #[test]
    fn selector_is_the_managed_by_label() {
        assert_eq!(managed_selector(), "app.kubernetes.io/managed-by=stead-controller");
    }
}
