//! The one `Context` shared by every reconcile and the HTTP endpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::reflector::store::{Writer, WriterDropped};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use stead_crds::backup::DatabaseBackup;

use crate::backup_index::BackupIndex;
use crate::cli::Settings;
use crate::instances::InstanceApi;
use crate::keys::ControllerKeys;
use crate::metrics::Metrics;

/// `reportingController` of every event.
pub const REPORTER: &str = "stead-controller";

/// Read-only caches of the children, filled by the informers.
///
/// The reconciler reads live children from here instead of GETting them,
/// so a reconcile that finds everything as desired makes no API call at all.
/// Each cache is updated before the event that triggers the reconcile is
/// delivered, so a reconcile never sees an older child than its trigger.
#[derive(Clone)]
pub struct Stores {
    pub stateful_sets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub claims: Store<PersistentVolumeClaim>,
    /// The database pods, for their IPs, readiness and role labels.
    pub pods: Store<Pod>,
    /// Every DatabaseBackup: the scheduler, retention and the backups under way.
    pub backups: Store<DatabaseBackup>,
    /// The names of each cluster's backups, for looking them up in `backups`.
    pub backup_index: BackupIndex,
    /// The children of Apps: Deployments, Services, Ingresses.
    pub deployments: Store<Deployment>,
    pub app_services: Store<Service>,
    pub ingresses: Store<Ingress>,
}

/// The writing halves of [`Stores`]: the informers own them, tests fill them by hand.
pub struct StoreWriters {
    pub stateful_sets: Writer<StatefulSet>,
    pub services: Writer<Service>,
    pub pdbs: Writer<PodDisruptionBudget>,
    pub claims: Writer<PersistentVolumeClaim>,
    pub pods: Writer<Pod>,
    pub backups: Writer<DatabaseBackup>,
    pub backup_index: BackupIndex,
    pub deployments: Writer<Deployment>,
    pub app_services: Writer<Service>,
    pub ingresses: Writer<Ingress>,
}

/// Empty caches and their writers.
pub fn stores() -> (Stores, StoreWriters) {
    let writers = StoreWriters {
        stateful_sets: Writer::default(),
        services: Writer::default(),
        pdbs: Writer::default(),
        claims: Writer::default(),
        pods: Writer::default(),
        backups: Writer::default(),
        backup_index: BackupIndex::default(),
        deployments: Writer::default(),
        app_services: Writer::default(),
        ingresses: Writer::default(),
    };
    let stores = Stores {
        stateful_sets: writers.stateful_sets.as_reader(),
        services: writers.services.as_reader(),
        pdbs: writers.pdbs.as_reader(),
        claims: writers.claims.as_reader(),
        pods: writers.pods.as_reader(),
        backups: writers.backups.as_reader(),
        backup_index: writers.backup_index.clone(),
        deployments: writers.deployments.as_reader(),
        app_services: writers.app_services.as_reader(),
        ingresses: writers.ingresses.as_reader(),
    };
    (stores, writers)
}

impl Stores {
    /// Resolves once every cache holds a complete initial list.
    pub async fn wait_until_ready(&self) -> Result<(), WriterDropped> {
        self.stateful_sets.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.pdbs.wait_until_ready().await?;
        self.claims.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.backups.wait_until_ready().await?;
        self.deployments.wait_until_ready().await?;
        self.app_services.wait_until_ready().await?;
        self.ingresses.wait_until_ready().await
    }
}

impl StoreWriters {
    /// Puts objects into the caches and marks them complete, as a finished initial list would.
    pub fn seed(
        &mut self,
        stateful_sets: impl IntoIterator<Item = StatefulSet>,
        services: impl IntoIterator<Item = Service>,
        pdbs: impl IntoIterator<Item = PodDisruptionBudget>,
        claims: impl IntoIterator<Item = PersistentVolumeClaim>,
    ) {
        seed(&mut self.stateful_sets, stateful_sets);
        seed(&mut self.services, services);
        seed(&mut self.pdbs, pdbs);
        seed(&mut self.claims, claims);
        seed(&mut self.pods, std::iter::empty());
        self.seed_backups(std::iter::empty());
        seed(&mut self.deployments, std::iter::empty());
        seed(&mut self.app_services, std::iter::empty());
        seed(&mut self.ingresses, std::iter::empty());
    }

    /// Puts the children of Apps into their caches, as a finished initial list would.
    pub fn seed_apps(
        &mut self,
        deployments: impl IntoIterator<Item = Deployment>,
        services: impl IntoIterator<Item = Service>,
        ingresses: impl IntoIterator<Item = Ingress>,
    ) {
        seed(&mut self.deployments, deployments);
        seed(&mut self.app_services, services);
        seed(&mut self.ingresses, ingresses);
    }

    /// Puts DatabaseBackups into their cache, as a finished initial list would.
    pub fn seed_backups(&mut self, backups: impl IntoIterator<Item = DatabaseBackup>) {
        let backups: Vec<DatabaseBackup> = backups.into_iter().collect();
        self.backup_index.apply(&watcher::Event::Init);
        for backup in &backups {
            self.backup_index.apply(&watcher::Event::InitApply(backup.clone()));
        }
        self.backup_index.apply(&watcher::Event::InitDone);
        seed(&mut self.backups, backups);
    }

    /// Puts pods into their cache, as a finished initial list would.
    pub fn seed_pods(&mut self, pods: impl IntoIterator<Item = Pod>) {
        seed(&mut self.pods, pods);
    }
}

fn seed<K>(writer: &mut Writer<K>, objects: impl IntoIterator<Item = K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// Health as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Everything a reconcile needs, built once.
pub struct Context {
    pub client: Client,
    /// Publishes events (create-only; see [`crate::events`]).
    pub recorder: crate::events::Publisher,
    pub metrics: Metrics,
    pub registry: Registry,
    pub settings: Settings,
    pub stores: Stores,
    pub health: Health,
    /// The clock of status transition times; fixed in tests.
    pub now: fn() -> Timestamp,
    /// The controller's keys: instance tokens and the instance CA.
    pub keys: Arc<ControllerKeys>,
    /// The instance managers' API.
    pub instances: Arc<dyn InstanceApi>,
    failures: Mutex<HashMap<String, u32>>,
    /// Pods (`namespace/name`) with an instance operation (bootstrap, demote) under way.
    operations: Mutex<std::collections::HashSet<String>>,
    /// Per object, the resourceVersion a conditional write of ours replaced,
    /// and when: a cached copy still at that version has not seen the write.
    superseded: Mutex<HashMap<String, (String, std::time::Instant)>>,
}

/// How long a cache may lag behind a write of ours before it is trusted
/// again anyway (a reflector that stopped is restarted; a write judged from
/// the old version then fails its precondition, which is safe).
pub const CACHE_LAG_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

impl Context {
    /// Builds the context; `instance` tells replicas apart in events (the pod name).
    pub fn new(
        client: Client,
        settings: Settings,
        stores: Stores,
        instance: Option<String>,
        keys: Arc<ControllerKeys>,
        instances: Arc<dyn InstanceApi>,
    ) -> Self {
        let recorder = crate::events::Publisher::new(client.clone(), REPORTER, instance);
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Self {
            client,
            recorder,
            metrics,
            registry,
            settings,
            stores,
            health: Health::default(),
            now: Timestamp::now,
            keys,
            instances,
            failures: Mutex::new(HashMap::new()),
            operations: Mutex::new(std::collections::HashSet::new()),
            superseded: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more consecutive failure of `obj` and returns the count.
    pub fn record_failure<K: kube::Resource<DynamicType = ()>>(&self, obj: &ObjectRef<K>) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(obj.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets the failures of `obj` after a successful reconcile.
    pub fn reset_failures<K: kube::Resource<DynamicType = ()>>(&self, obj: &ObjectRef<K>) {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&obj.to_string());
    }

    /// Marks an operation on `pod` as started; false when one is under way already.
    pub fn start_operation(&self, pod: &str) -> bool {
        self.operations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(pod.to_owned())
    }

    /// Whether an operation on `pod` (`namespace/name`) is under way.
    pub fn operation_under_way(&self, pod: &str) -> bool {
        self.operations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(pod)
    }

    /// Marks the operation on `pod` as finished.
    pub fn finish_operation(&self, pod: &str) {
        self.operations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(pod);
    }

    /// Notes that a write of ours, conditional on `version`, replaced that
    /// version of `obj`.
    pub fn note_superseded<K: kube::Resource<DynamicType = ()>>(&self, obj: &ObjectRef<K>, version: &str) {
        self.superseded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(obj.to_string(), (version.to_owned(), std::time::Instant::now()));
    }

    /// Whether the cached `object` is the very version a write of ours
    /// replaced (within [`CACHE_LAG_BOUND`]): judging it would redo what was
    /// just done. Forgets the note once the cache has moved on.
    pub fn cache_behind<K: kube::Resource<DynamicType = ()>>(&self, object: &K) -> bool {
        let key = ObjectRef::from_obj(object).to_string();
        let mut superseded = self.superseded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let behind = superseded.get(&key).is_some_and(|(version, at)| {
            object.meta().resource_version.as_deref() == Some(version.as_str()) && at.elapsed() < CACHE_LAG_BOUND
        });
        if !behind {
            superseded.remove(&key);
        }
        behind
    }

    /// Consecutive failures of `obj` so far.
    pub fn failures<K: kube::Resource<DynamicType = ()>>(&self, obj: &ObjectRef<K>) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&obj.to_string())
            .copied()
            .unwrap_or(0)
    }
}
