//! Pure builders of the desired children of one cluster.
//!
//! Each builder returns the server-side-apply body as JSON that names every
//! field the controller owns and nothing else. Typed `k8s-openapi` structs
//! built from `Default` would also send `selector: {}` and `serviceName: ""`
//! (k8s-openapi issue 112); both are atomic, immutable StatefulSet fields, so
//! we never go through them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::Resource;
use serde_json::{Value, json};
use stead_crds::defaults::with_defaults;
use stead_crds::instance_api::Role;
use stead_crds::names::{
    INSTANCE_API_PORT, child_labels, credentials_secret_name, headless_service_name, selector_labels,
};

use crate::topology::ROLE_LABEL;
use stead_crds::{DatabaseCluster, DatabaseClusterSpec};

use crate::diff::restrict_to_live;
use crate::error::Error;

/// Name of the container that runs the database.
pub const CONTAINER: &str = "database";
/// Name of the database port on the container and on both Services.
pub const PORT_NAME: &str = "db";
/// Name of the volume claim template; PVCs are `data-<cluster>-<ordinal>`.
pub const VOLUME: &str = "data";
/// Where the volume is mounted. The parent of the data directory, so that
/// `lost+found` at the volume root never sits inside it.
pub const DATA_MOUNT_PATH: &str = "/var/lib/postgresql";
/// UID/GID the database runs as (`postgres` in the official images); fsGroup makes the volume writable.
pub const RUN_AS: i64 = 999;
/// Pod management policy of a new StatefulSet; immutable after creation, so
/// an existing StatefulSet keeps the one it has (see [`stateful_set`]).
pub const POD_MANAGEMENT_POLICY: &str = "OrderedReady";
/// Annotation holding a hash of the apply body that produced the child.
///
/// The subset test (`diff::is_subset`) sees fields that drifted, but not a
/// field we *stopped* applying (say `spec.resources` was removed from the
/// cluster): the live object still has it, so desired ⊆ live holds. Since the
/// annotation is part of the body, any change of the body, removals
/// included, makes the live annotation differ and the child is applied.
pub const APPLIED_HASH: &str = "stead.dev/applied-hash";

/// The cluster as the builders see it: identity plus the spec with every
/// webhook default applied in memory (for clusters that bypassed the webhook).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub spec: DatabaseClusterSpec,
    /// The stead image whose stead-instance the pods run.
    pub instance_image: String,
}

/// The stead image the pods take stead-instance from, unless `--instance-image` says otherwise.
pub const DEFAULT_INSTANCE_IMAGE: &str = "ghcr.io/stead-dev/stead:0.1.0";

impl ClusterView {
    /// Extracts what the builders need; fails only for objects not read from an API server.
    pub fn new(cluster: &DatabaseCluster) -> Result<Self, Error> {
        let Identity { name, namespace, uid } = Identity::of(cluster.meta())?;
        Ok(Self {
            name,
            namespace,
            uid,
            generation: cluster.meta().generation,
            spec: with_defaults(&cluster.spec),
            instance_image: DEFAULT_INSTANCE_IMAGE.to_owned(),
        })
    }

    /// Replicas after defaulting.
    pub fn replicas(&self) -> i32 {
        self.spec.effective_replicas()
    }

    /// Port after defaulting.
    pub fn port(&self) -> i32 {
        self.spec.effective_port()
    }

    /// Names of the PVCs the StatefulSet creates for ordinals `0..replicas`.
    pub fn volume_claim_names(&self) -> Vec<String> {
        (0..self.replicas()).map(|i| format!("{VOLUME}-{}-{i}", self.name)).collect()
    }

    fn owner_reference(&self) -> Value {
        json!({
            "apiVersion": DatabaseCluster::api_version(&()),
            "kind": DatabaseCluster::kind(&()),
            "name": self.name,
            "uid": self.uid,
            "controller": true,
            "blockOwnerDeletion": true,
        })
    }

    fn metadata(&self, name: &str) -> Value {
        json!({
            "name": name,
            "namespace": self.namespace,
            "labels": child_labels(&self.name),
            "ownerReferences": [self.owner_reference()],
        })
    }
}

/// What every owner of children must have: the API server sets all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl Identity {
    /// Fails only for objects not read from an API server.
    pub fn of(meta: &kube::api::ObjectMeta) -> Result<Self, Error> {
        let missing = |field| Error::MissingMetadata { object: display_name(meta), field };
        Ok(Self {
            name: meta.name.clone().ok_or_else(|| missing("metadata.name"))?,
            namespace: meta.namespace.clone().ok_or_else(|| missing("metadata.namespace"))?,
            uid: meta.uid.clone().ok_or_else(|| missing("metadata.uid"))?,
        })
    }
}

/// `namespace/name` of an object, with `<none>` for what it lacks (for messages).
pub fn display_name(meta: &kube::api::ObjectMeta) -> String {
    let part = |p: &Option<String>| p.as_deref().filter(|p| !p.is_empty()).unwrap_or("<none>").to_owned();
    format!("{}/{}", part(&meta.namespace), part(&meta.name))
}

/// One child the controller manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// `<name>-headless`: stable per-pod DNS names.
    HeadlessService,
    /// `<name>-rw`: the primary only.
    PrimaryService,
    /// `<name>-ro`: ready replicas only.
    ReplicaService,
    /// `<name>-r`: any ready instance.
    AnyService,
    StatefulSet,
    PodDisruptionBudget,
}

impl ChildKind {
    /// One of the cluster's Services.
    pub fn is_service(self) -> bool {
        matches!(self, Self::HeadlessService | Self::PrimaryService | Self::ReplicaService | Self::AnyService)
    }

    /// The Kubernetes kind, for events, errors and metric labels.
    pub fn kind(self) -> &'static str {
        match self {
            Self::HeadlessService | Self::PrimaryService | Self::ReplicaService | Self::AnyService => "Service",
            Self::StatefulSet => "StatefulSet",
            Self::PodDisruptionBudget => "PodDisruptionBudget",
        }
    }

    /// The child's name for a cluster.
    pub fn name(self, cluster: &str) -> String {
        match self {
            Self::HeadlessService => headless_service_name(cluster),
            Self::PrimaryService => format!("{cluster}{PRIMARY_SUFFIX}"),
            Self::ReplicaService => format!("{cluster}{REPLICA_SUFFIX}"),
            Self::AnyService => format!("{cluster}{ANY_SUFFIX}"),
            Self::StatefulSet | Self::PodDisruptionBudget => cluster.to_owned(),
        }
    }
}

/// Every name a Service of the cluster `cluster` has had: the four of
/// today, and the all-pods `<name>` Service of stead 0.1 (removed when found).
pub fn service_names_ever(cluster: &str) -> Vec<String> {
    let today =
        [ChildKind::HeadlessService, ChildKind::PrimaryService, ChildKind::ReplicaService, ChildKind::AnyService];
    let mut names: Vec<String> = today.iter().map(|kind| kind.name(cluster)).collect();
    names.push(cluster.to_owned());
    names
}

/// Suffix of the Service that reaches the primary (read-write).
pub const PRIMARY_SUFFIX: &str = "-rw";
/// Suffix of the Service that reaches the ready replicas (read-only).
pub const REPLICA_SUFFIX: &str = "-ro";
/// Suffix of the Service that reaches any ready instance (reads that may be stale).
pub const ANY_SUFFIX: &str = "-r";

/// One child as the plan wants it: its kind and its apply body.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub kind: ChildKind,
    pub body: Value,
}

/// Every child the cluster should have, in the order they are made: the
/// Services first (the pods' DNS and the role routing exist before any pod
/// does), then the StatefulSet, then the PodDisruptionBudget while there is
/// more than one replica to protect.
///
/// Children stead owns that this plan does not list are removed by the
/// reconciler: the PDB when replicas drop to 1, and the all-pods `<name>`
/// Service of stead 0.1, which sent writes to replicas.
pub fn plan(view: &ClusterView, live_sts: Option<&StatefulSet>) -> Result<Vec<Planned>, Error> {
    let mut children: Vec<Planned> =
        [ChildKind::HeadlessService, ChildKind::PrimaryService, ChildKind::ReplicaService, ChildKind::AnyService]
            .into_iter()
            .map(|kind| Planned { kind, body: service(view, kind) })
            .collect();
    children.push(Planned { kind: ChildKind::StatefulSet, body: stateful_set(view, live_sts)? });
    if wants_pdb(view) {
        children.push(Planned { kind: ChildKind::PodDisruptionBudget, body: pod_disruption_budget(view) });
    }
    Ok(children)
}

fn service_ports(view: &ClusterView) -> Value {
    json!([{ "name": PORT_NAME, "port": view.port(), "targetPort": PORT_NAME, "protocol": "TCP" }])
}

/// Stamps `body` with [`APPLIED_HASH`] over everything else in it, except
/// `spec.volumeClaimTemplates`.
///
/// The templates are immutable and, once the StatefulSet exists, applied as
/// the API server stored them (see [`stateful_set`]), which is not always
/// what we sent: a size such as `10240Mi` comes back canonical (`10Gi`).
/// Hashing them would turn that canonicalisation into a difference and cost
/// one needless write after every creation; leaving them out loses nothing,
/// since they can never change anyway.
pub(crate) fn with_applied_hash(mut body: Value) -> Value {
    let templates = body.get_mut("spec").and_then(Value::as_object_mut).and_then(|s| s.remove("volumeClaimTemplates"));
    let hash = format!("{:016x}", fnv1a(body.to_string().as_bytes()));
    if let Some(templates) = templates {
        body["spec"]["volumeClaimTemplates"] = templates;
    }
    body["metadata"]["annotations"] = json!({ APPLIED_HASH: hash });
    body
}

/// FNV-1a (64 bit): stable across Rust versions and processes, unlike `DefaultHasher`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A Service of the cluster; `kind` must be one of the Service kinds.
///
/// - `<name>-headless`: stable per-pod DNS names, published before pods are
///   ready so that peers can find each other while they bootstrap.
/// - `<name>-rw`: the pod labelled `stead.dev/role: primary`; writes go here.
/// - `<name>-ro`: the pods labelled `stead.dev/role: replica` that are ready
///   (streaming); reads that may lag go here.
/// - `<name>-r`: any ready instance.
pub fn service(view: &ClusterView, kind: ChildKind) -> Value {
    let mut selector = selector_labels(&view.name);
    let role = match kind {
        ChildKind::PrimaryService => Some(Role::Primary),
        ChildKind::ReplicaService => Some(Role::Replica),
        _ => None,
    };
    if let Some(role) = role {
        selector.insert(ROLE_LABEL.to_owned(), role.as_str().to_owned());
    }
    let spec = if kind == ChildKind::HeadlessService {
        json!({
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector,
            "ports": service_ports(view),
        })
    } else {
        json!({ "type": "ClusterIP", "selector": selector, "ports": service_ports(view) })
    };
    with_applied_hash(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": view.metadata(&kind.name(&view.name)),
        "spec": spec,
    }))
}

/// `<name>`: keeps at most one pod voluntarily down (drains, upgrades) at a time.
/// Only built when replicas > 1: with one replica it would block every drain.
pub fn pod_disruption_budget(view: &ClusterView) -> Value {
    with_applied_hash(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": view.metadata(&ChildKind::PodDisruptionBudget.name(&view.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": { "matchLabels": selector_labels(&view.name) },
        },
    }))
}

/// Whether the cluster needs a PodDisruptionBudget.
fn wants_pdb(view: &ClusterView) -> bool {
    view.replicas() > 1
}

/// The volume claim template as the spec asks for it.
fn volume_claim_template(view: &ClusterView) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": view.spec.storage.size } },
    });
    if let Some(class) = &view.spec.storage.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": VOLUME, "labels": child_labels(&view.name) },
        "spec": spec,
    })
}

/// The data claim `name` exactly as the StatefulSet would create it from
/// its template (labels, access modes, size, class), for a restore, which
/// must create it first with a `dataSource`.
pub fn restore_claim(view: &ClusterView, name: &str) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    let mut claim = volume_claim_template(view);
    claim["metadata"]["name"] = json!(name);
    claim["metadata"]["namespace"] = json!(view.namespace);
    serde_json::from_value(claim).unwrap_or_default()
}

/// `requests`/`limits` that are set and non-empty; `None` when nothing is.
pub(crate) fn container_resources(resources: Option<&ResourceRequirements>) -> Option<Value> {
    let resources = resources?;
    let mut out = serde_json::Map::new();
    let mut put =
        |key: &str, list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            if let Some(list) = list.filter(|l| !l.is_empty()) {
                let map: serde_json::Map<String, Value> =
                    list.iter().map(|(name, q)| (name.clone(), Value::String(q.0.clone()))).collect();
                out.insert(key.to_owned(), Value::Object(map));
            }
        };
    put("requests", resources.requests.as_ref());
    put("limits", resources.limits.as_ref());
    (!out.is_empty()).then_some(Value::Object(out))
}

/// An environment variable with a fixed value.
fn env(name: &str, value: impl Into<Value>) -> Value {
    json!({ "name": name, "value": value.into() })
}

/// An environment variable from the downward API.
fn field_env(name: &str, path: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": path } } })
}

/// Where the instance manager binary is copied to, and run from.
pub const INSTANCE_BIN_DIR: &str = "/stead/bin";
/// The instance manager inside the stead image.
pub const INSTANCE_IMAGE_BINARY: &str = "/usr/local/bin/stead-instance";
/// Where the credentials Secret is mounted.
pub const SECRET_MOUNT_PATH: &str = "/etc/stead/credentials";
/// The instance manager's private run directory (socket, pgpass).
pub const RUN_MOUNT_PATH: &str = "/run/stead";
/// The data directory, inside the volume.
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// Name of the instance manager's port.
pub const API_PORT_NAME: &str = "api";

fn restricted_security_context() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

/// The init container: the stead image copies stead-instance into an
/// emptyDir, so the database container runs it from the user's image, which
/// carries PostgreSQL (as CloudNativePG does).
fn install_container(instance_image: &str) -> Value {
    json!({
        "name": "stead-instance-install",
        "image": instance_image,
        "command": [INSTANCE_IMAGE_BINARY, "install", format!("{INSTANCE_BIN_DIR}/stead-instance")],
        "volumeMounts": [{ "name": "stead-bin", "mountPath": INSTANCE_BIN_DIR }],
        "securityContext": restricted_security_context(),
    })
}

fn database_container(view: &ClusterView) -> Value {
    let port = view.port();
    let https_get = |path: &str| json!({ "path": path, "port": API_PORT_NAME, "scheme": "HTTPS" });
    let parameters = serde_json::to_string(view.spec.parameters()).unwrap_or_else(|_| "{}".to_owned());
    let mut container = json!({
        "name": CONTAINER,
        "image": view.spec.image,
        "command": [format!("{INSTANCE_BIN_DIR}/stead-instance")],
        "ports": [
            { "name": PORT_NAME, "containerPort": port, "protocol": "TCP" },
            { "name": API_PORT_NAME, "containerPort": INSTANCE_API_PORT, "protocol": "TCP" },
        ],
        "env": [
            env("STEAD_CLUSTER", view.name.as_str()),
            field_env("STEAD_NAMESPACE", "metadata.namespace"),
            field_env("STEAD_POD_NAME", "metadata.name"),
            field_env("STEAD_POD_IP", "status.podIP"),
            env("STEAD_PGDATA", PGDATA),
            env("STEAD_PG_PORT", port.to_string()),
            env("STEAD_SECRET_DIR", SECRET_MOUNT_PATH),
            env("STEAD_RUN_DIR", RUN_MOUNT_PATH),
            env("STEAD_PARAMETERS", parameters),
        ],
        // Ready when postgres accepts connections and, on a replica, streams.
        "readinessProbe": { "httpGet": https_get("/readyz"), "periodSeconds": 5, "failureThreshold": 3 },
        // Alive while the instance manager and its postmaster are: a primary
        // in crash recovery, or an instance waiting for its data, is alive.
        "livenessProbe": { "httpGet": https_get("/healthz"), "periodSeconds": 10, "failureThreshold": 6 },
        "volumeMounts": [
            { "name": VOLUME, "mountPath": DATA_MOUNT_PATH },
            { "name": "stead-bin", "mountPath": INSTANCE_BIN_DIR, "readOnly": true },
            { "name": "credentials", "mountPath": SECRET_MOUNT_PATH, "readOnly": true },
            { "name": "run", "mountPath": RUN_MOUNT_PATH },
            { "name": "tmp", "mountPath": "/tmp" },
        ],
        "securityContext": restricted_security_context(),
    });
    if let Some(resources) = container_resources(view.spec.resources.as_ref()) {
        container["resources"] = resources;
    }
    container
}

/// The pod's volumes besides the data claim.
fn pod_volumes(view: &ClusterView) -> Value {
    json!([
        { "name": "stead-bin", "emptyDir": { "sizeLimit": "128Mi" } },
        { "name": "run", "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } },
        { "name": "tmp", "emptyDir": { "sizeLimit": "1Gi" } },
        // Group-readable: the files belong to root and the pod's fsGroup.
        { "name": "credentials", "secret": { "secretName": credentials_secret_name(&view.name), "defaultMode": 0o440 } },
    ])
}

/// `<name>`: the pods and their volumes.
///
/// - `podManagementPolicy: OrderedReady` (immutable, chosen once): database
///   replicas bootstrap from ordinal 0, so starting them all at once only
///   makes them fail and restart; ordered scale-down removes one replica at a
///   time from the highest ordinal. Rolling updates are one pod at a time with
///   either policy, so the price is slower scale-up only.
/// - Volumes are retained when pods are scaled away or the StatefulSet is
///   deleted: data outlives the objects that used it.
/// - `volumeClaimTemplates` are immutable. For an existing StatefulSet
///   (`live`), we apply exactly the stored template fields we own, so the
///   apply keeps our ownership without asking for a change; a grown
///   `spec.storage.size` reaches the PVCs by patching them (see `storage`).
///   `podManagementPolicy` is immutable too and follows the same rule: an
///   existing StatefulSet is applied with the policy it was created with, so
///   a controller upgrade that changes [`POD_MANAGEMENT_POLICY`] never asks
///   the API server for a forbidden change.
pub fn stateful_set(view: &ClusterView, live: Option<&StatefulSet>) -> Result<Value, Error> {
    let instance_image = view.instance_image.as_str();
    let selector = selector_labels(&view.name);
    let pod_management_policy = live
        .and_then(|sts| sts.spec.pod_management_policy.as_deref())
        .filter(|policy| !policy.is_empty())
        .unwrap_or(POD_MANAGEMENT_POLICY);
    let desired_templates = json!([volume_claim_template(view)]);
    let templates = match live.and_then(|sts| sts.spec.volume_claim_templates.as_ref()) {
        Some(live_templates) => {
            let live_json = serde_json::to_value(live_templates).map_err(|source| Error::Serialize {
                what: format!("the volumeClaimTemplates of StatefulSet {}/{}", view.namespace, view.name),
                source,
            })?;
            restrict_to_live(&desired_templates, &live_json)
        }
        None => desired_templates,
    };
    Ok(with_applied_hash(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": view.metadata(&ChildKind::StatefulSet.name(&view.name)),
        "spec": {
            "replicas": view.replicas(),
            "serviceName": headless_service_name(&view.name),
            "podManagementPolicy": pod_management_policy,
            "selector": { "matchLabels": selector },
            "persistentVolumeClaimRetentionPolicy": { "whenDeleted": "Retain", "whenScaled": "Retain" },
            // The controller restarts pods itself, replicas first and the primary last (see `rollout`).
            "updateStrategy": { "type": "OnDelete" },
            "template": {
                "metadata": { "labels": child_labels(&view.name) },
                "spec": {
                    // The database never calls the Kubernetes API: no token in its pods.
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [{
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": { "matchLabels": selector_labels(&view.name) },
                                },
                            }],
                        },
                    },
                    "initContainers": [install_container(instance_image)],
                    "containers": [database_container(view)],
                    "volumes": pod_volumes(view),
                },
            },
            "volumeClaimTemplates": templates,
        },
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use stead_crds::StorageSpec;

    use super::*;
    use crate::diff::is_subset;

    fn cluster(spec: DatabaseClusterSpec) -> DatabaseCluster {
        let mut c = DatabaseCluster::new("orders", spec);
        c.metadata.namespace = Some("shop".into());
        c.metadata.uid = Some("uid-1".into());
        c.metadata.generation = Some(1);
        c
    }

    fn spec() -> DatabaseClusterSpec {
        DatabaseClusterSpec {
            image: "postgres:17.2".into(),
            replicas: Some(3),
            port: Some(5432),
            storage: StorageSpec { size: "10Gi".into(), storage_class_name: Some("fast-ssd".into()) },
            ..Default::default()
        }
    }

    fn view(spec: DatabaseClusterSpec) -> ClusterView {
        ClusterView::new(&cluster(spec)).unwrap()
    }

    /// Every leaf path of a JSON value, e.g. `spec.ports[0].name`.
    fn leaf_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                assert!(!m.is_empty(), "empty object at {prefix}: an apply must never send {{}}");
                for (k, v) in m {
                    leaf_paths(v, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    leaf_paths(v, &format!("{prefix}[{i}]"), out);
                }
            }
            Value::String(s) => {
                assert!(!s.is_empty(), "empty string at {prefix}");
                out.push(prefix.to_owned());
            }
            Value::Null => panic!("null at {prefix}"),
            _ => out.push(prefix.to_owned()),
        }
    }

    fn paths(v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        leaf_paths(v, "", &mut out);
        out
    }

    const META: [&str; 13] = [
        "metadata.annotations.stead.dev/applied-hash",
        "metadata.labels.app.kubernetes.io/component",
        "metadata.labels.app.kubernetes.io/instance",
        "metadata.labels.app.kubernetes.io/managed-by",
        "metadata.labels.app.kubernetes.io/name",
        "metadata.name",
        "metadata.namespace",
        "metadata.ownerReferences[0].apiVersion",
        "metadata.ownerReferences[0].blockOwnerDeletion",
        "metadata.ownerReferences[0].controller",
        "metadata.ownerReferences[0].kind",
        "metadata.ownerReferences[0].name",
        "metadata.ownerReferences[0].uid",
    ];

    fn with_meta(specific: &[&str]) -> Vec<String> {
        let mut all: Vec<String> =
            ["apiVersion", "kind"].iter().chain(META.iter()).chain(specific.iter()).map(|s| (*s).to_owned()).collect();
        all.sort();
        all
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn headless_service_names_exactly_its_fields() {
        let svc = service(&view(spec()), ChildKind::HeadlessService);
        assert_eq!(
            sorted(paths(&svc)),
            with_meta(&[
                "spec.clusterIP",
                "spec.ports[0].name",
                "spec.ports[0].port",
                "spec.ports[0].protocol",
                "spec.ports[0].targetPort",
                "spec.publishNotReadyAddresses",
                "spec.selector.app.kubernetes.io/instance",
                "spec.selector.app.kubernetes.io/name",
            ])
        );
        assert_eq!(svc["metadata"]["name"], "orders-headless");
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
        assert_eq!(svc["spec"]["ports"][0], json!({"name": "db", "port": 5432, "targetPort": "db", "protocol": "TCP"}));
        let owner = &svc["metadata"]["ownerReferences"][0];
        assert_eq!(owner["apiVersion"], "stead.dev/v1alpha1");
        assert_eq!(owner["kind"], "DatabaseCluster");
        assert_eq!(owner["uid"], "uid-1");
        assert_eq!(owner["controller"], true);
        // It is a valid Service.
        let _: Service = serde_json::from_value(svc).unwrap();
    }

    #[test]
    fn role_services_name_exactly_their_fields_and_select_by_role() {
        let v = view(DatabaseClusterSpec { port: Some(6543), ..spec() });
        for (kind, name, role) in [
            (ChildKind::PrimaryService, "orders-rw", Some("primary")),
            (ChildKind::ReplicaService, "orders-ro", Some("replica")),
            (ChildKind::AnyService, "orders-r", None),
        ] {
            let svc = service(&v, kind);
            let mut want = vec![
                "spec.ports[0].name",
                "spec.ports[0].port",
                "spec.ports[0].protocol",
                "spec.ports[0].targetPort",
                "spec.selector.app.kubernetes.io/instance",
                "spec.selector.app.kubernetes.io/name",
                "spec.type",
            ];
            if role.is_some() {
                want.push("spec.selector.stead.dev/role");
            }
            assert_eq!(sorted(paths(&svc)), with_meta(&want), "{name}");
            assert_eq!(svc["metadata"]["name"], name);
            assert_eq!(svc["spec"]["ports"][0]["port"], 6543);
            assert_eq!(svc["spec"]["selector"].get("stead.dev/role").and_then(Value::as_str), role, "{name}");
            let _: Service = serde_json::from_value(svc).unwrap();
        }
    }

    #[test]
    fn pdb_names_exactly_its_fields() {
        let pdb = pod_disruption_budget(&view(spec()));
        assert_eq!(
            sorted(paths(&pdb)),
            with_meta(&[
                "spec.maxUnavailable",
                "spec.selector.matchLabels.app.kubernetes.io/instance",
                "spec.selector.matchLabels.app.kubernetes.io/name",
            ])
        );
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        let _: PodDisruptionBudget = serde_json::from_value(pdb).unwrap();
    }

    #[test]
    fn pdb_only_for_more_than_one_replica() {
        let rows = [(None, false), (Some(1), false), (Some(2), true), (Some(3), true)];
        for (replicas, want) in rows {
            assert_eq!(wants_pdb(&view(DatabaseClusterSpec { replicas, ..spec() })), want, "{replicas:?}");
        }
    }

    #[test]
    fn stateful_set_names_exactly_its_fields() {
        let sts = stateful_set(&view(spec()), None).unwrap();
        let tpl = "spec.volumeClaimTemplates[0]";
        let aff = "spec.template.spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]";
        let specific: Vec<String> = [
            "spec.replicas".to_owned(),
            "spec.serviceName".to_owned(),
            "spec.podManagementPolicy".to_owned(),
            "spec.selector.matchLabels.app.kubernetes.io/instance".to_owned(),
            "spec.selector.matchLabels.app.kubernetes.io/name".to_owned(),
            "spec.persistentVolumeClaimRetentionPolicy.whenDeleted".to_owned(),
            "spec.persistentVolumeClaimRetentionPolicy.whenScaled".to_owned(),
            "spec.updateStrategy.type".to_owned(),
            "spec.template.metadata.labels.app.kubernetes.io/component".to_owned(),
            "spec.template.metadata.labels.app.kubernetes.io/instance".to_owned(),
            "spec.template.metadata.labels.app.kubernetes.io/managed-by".to_owned(),
            "spec.template.metadata.labels.app.kubernetes.io/name".to_owned(),
            "spec.template.spec.automountServiceAccountToken".to_owned(),
            "spec.template.spec.securityContext.runAsNonRoot".to_owned(),
            "spec.template.spec.securityContext.runAsUser".to_owned(),
            "spec.template.spec.securityContext.runAsGroup".to_owned(),
            "spec.template.spec.securityContext.fsGroup".to_owned(),
            "spec.template.spec.securityContext.fsGroupChangePolicy".to_owned(),
            "spec.template.spec.securityContext.seccompProfile.type".to_owned(),
            format!("{aff}.weight"),
            format!("{aff}.podAffinityTerm.topologyKey"),
            format!("{aff}.podAffinityTerm.labelSelector.matchLabels.app.kubernetes.io/instance"),
            format!("{aff}.podAffinityTerm.labelSelector.matchLabels.app.kubernetes.io/name"),
            format!("{tpl}.apiVersion"),
            format!("{tpl}.kind"),
            format!("{tpl}.metadata.name"),
            format!("{tpl}.metadata.labels.app.kubernetes.io/component"),
            format!("{tpl}.metadata.labels.app.kubernetes.io/instance"),
            format!("{tpl}.metadata.labels.app.kubernetes.io/managed-by"),
            format!("{tpl}.metadata.labels.app.kubernetes.io/name"),
            format!("{tpl}.spec.accessModes[0]"),
            format!("{tpl}.spec.resources.requests.storage"),
            format!("{tpl}.spec.storageClassName"),
        ]
        .into();
        let specific: Vec<&str> = specific.iter().map(String::as_str).collect();
        // The pod's containers and volumes are checked as a whole below.
        let outside_pod: Vec<String> = paths(&sts)
            .into_iter()
            .filter(|p| {
                !["spec.template.spec.containers", "spec.template.spec.initContainers", "spec.template.spec.volumes"]
                    .iter()
                    .any(|prefix| p.starts_with(prefix))
            })
            .collect();
        assert_eq!(sorted(outside_pod), with_meta(&specific));
        assert_eq!(sts["spec"]["serviceName"], "orders-headless");
        assert_eq!(sts["spec"]["replicas"], 3);
        let pod = &sts["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "database pods get no service account token");
        let restricted = json!({
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]},
        });
        // The init container copies stead-instance out of the stead image.
        assert_eq!(
            pod["initContainers"],
            json!([{
                "name": "stead-instance-install",
                "image": DEFAULT_INSTANCE_IMAGE,
                "command": ["/usr/local/bin/stead-instance", "install", "/stead/bin/stead-instance"],
                "volumeMounts": [{"name": "stead-bin", "mountPath": "/stead/bin"}],
                "securityContext": restricted,
            }])
        );
        // The user's image runs stead-instance, which runs postgres.
        let container = &pod["containers"][0];
        assert_eq!(container["name"], "database");
        assert_eq!(container["image"], "postgres:17.2");
        assert_eq!(container["command"], json!(["/stead/bin/stead-instance"]));
        assert_eq!(
            container["ports"],
            json!([
                {"name": "db", "containerPort": 5432, "protocol": "TCP"},
                {"name": "api", "containerPort": 8000, "protocol": "TCP"},
            ])
        );
        let env: Vec<(&str, Value)> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e.get("value").cloned().unwrap_or_else(|| e["valueFrom"].clone())))
            .collect();
        let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
        assert_eq!(
            env,
            vec![
                ("STEAD_CLUSTER", json!("orders")),
                ("STEAD_NAMESPACE", field("metadata.namespace")),
                ("STEAD_POD_NAME", field("metadata.name")),
                ("STEAD_POD_IP", field("status.podIP")),
                ("STEAD_PGDATA", json!("/var/lib/postgresql/data/pgdata")),
                ("STEAD_PG_PORT", json!("5432")),
                ("STEAD_SECRET_DIR", json!("/etc/stead/credentials")),
                ("STEAD_RUN_DIR", json!("/run/stead")),
                ("STEAD_PARAMETERS", json!("{}")),
            ]
        );
        let probe = |path: &str| json!({"path": path, "port": "api", "scheme": "HTTPS"});
        assert_eq!(container["readinessProbe"]["httpGet"], probe("/readyz"));
        assert_eq!(container["livenessProbe"]["httpGet"], probe("/healthz"));
        assert!(container["livenessProbe"].get("initialDelaySeconds").is_none(), "waiting for data is alive");
        assert_eq!(container["securityContext"], restricted);
        let mounts: Vec<(&str, &str)> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap()))
            .collect();
        assert_eq!(
            mounts,
            [
                ("data", "/var/lib/postgresql"),
                ("stead-bin", "/stead/bin"),
                ("credentials", "/etc/stead/credentials"),
                ("run", "/run/stead"),
                ("tmp", "/tmp"),
            ]
        );
        assert_eq!(
            pod["volumes"][3],
            json!({"name": "credentials", "secret": {"secretName": "orders-credentials", "defaultMode": 0o440}})
        );
        assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "10Gi");
        assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], "fast-ssd");
        let _: StatefulSet = serde_json::from_value(sts).unwrap();
    }

    #[test]
    fn user_parameters_reach_the_instance_manager() {
        let mut with = spec();
        with.postgresql = Some(stead_crds::cluster::PostgresqlSpec {
            parameters: [("shared_buffers".to_owned(), "256MB".to_owned())].into(),
        });
        let sts = stateful_set(&view(with), None).unwrap();
        let env = sts["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
        let parameters = env.iter().find(|e| e["name"] == "STEAD_PARAMETERS").unwrap();
        assert_eq!(parameters["value"], r#"{"shared_buffers":"256MB"}"#);
    }

    #[test]
    fn the_plan_lists_four_services_the_statefulset_and_a_pdb_beyond_one_replica() {
        let names = |replicas| {
            plan(&view(DatabaseClusterSpec { replicas: Some(replicas), ..spec() }), None)
                .unwrap()
                .iter()
                .map(|c| format!("{} {}", c.kind.kind(), c.kind.name("orders")))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(3),
            [
                "Service orders-headless",
                "Service orders-rw",
                "Service orders-ro",
                "Service orders-r",
                "StatefulSet orders",
                "PodDisruptionBudget orders",
            ]
        );
        assert_eq!(names(1).len(), 5, "one replica: no PDB to block drains");
        assert!(!names(1).iter().any(|n| n == "Service orders"), "the all-pods Service of 0.1 is gone");
    }

    #[test]
    fn defaults_are_applied_in_memory() {
        let sts = stateful_set(&view(DatabaseClusterSpec { replicas: None, port: None, ..spec() }), None).unwrap();
        assert_eq!(sts["spec"]["replicas"], 1);
        assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 5432);
    }

    #[test]
    fn resources_table() {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;
        let q = |pairs: &[(&str, &str)]| {
            Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), Q((*v).to_owned()))).collect::<BTreeMap<_, _>>())
        };
        // (case, resources, rendered `resources` of the container or None)
        let rows = [
            ("absent", None, None),
            ("all empty", Some(ResourceRequirements::default()), None),
            (
                "empty maps are not sent",
                Some(ResourceRequirements { requests: q(&[]), limits: q(&[]), ..Default::default() }),
                None,
            ),
            (
                "requests and limits",
                Some(ResourceRequirements {
                    requests: q(&[("cpu", "500m"), ("memory", "1Gi")]),
                    limits: q(&[("memory", "1Gi")]),
                    ..Default::default()
                }),
                Some(json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}})),
            ),
            (
                "limits only",
                Some(ResourceRequirements { limits: q(&[("cpu", "2")]), ..Default::default() }),
                Some(json!({"limits": {"cpu": "2"}})),
            ),
        ];
        for (case, resources, want) in rows {
            let sts = stateful_set(&view(DatabaseClusterSpec { resources, ..spec() }), None).unwrap();
            let got = sts["spec"]["template"]["spec"]["containers"][0].get("resources").cloned();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn no_storage_class_means_none_sent() {
        let v = view(DatabaseClusterSpec {
            storage: StorageSpec { size: "1Gi".into(), storage_class_name: None },
            ..spec()
        });
        let sts = stateful_set(&v, None).unwrap();
        assert!(sts["spec"]["volumeClaimTemplates"][0]["spec"].get("storageClassName").is_none());
    }

    #[test]
    fn existing_stateful_set_keeps_its_claim_templates() {
        // Created with 10Gi; the user has since grown the spec to 20Gi.
        let created = stateful_set(&view(spec()), None).unwrap();
        let mut live: StatefulSet = serde_json::from_value(created.clone()).unwrap();
        // The API server adds defaults to the stored template.
        if let Some(t) = live.spec.volume_claim_templates.as_mut().and_then(|t| t.first_mut()) {
            t.spec.get_or_insert_default().volume_mode = Some("Filesystem".into());
        }
        let grown = view(DatabaseClusterSpec {
            storage: StorageSpec { size: "20Gi".into(), storage_class_name: Some("fast-ssd".into()) },
            ..spec()
        });
        let sts = stateful_set(&grown, Some(&live)).unwrap();
        assert_eq!(sts["spec"]["volumeClaimTemplates"], created["spec"]["volumeClaimTemplates"]);
        // ... so the whole apply is already satisfied by the live object.
        assert!(is_subset(&sts, &serde_json::to_value(&live).unwrap()));
        // A StatefulSet without templates (not ours) gets none proposed.
        let mut bare = live.clone();
        bare.spec.volume_claim_templates = None;
        let sts = stateful_set(&grown, Some(&bare)).unwrap();
        assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "20Gi");
    }

    #[test]
    fn applied_hash_follows_the_body() {
        let hash = |v: &Value| v["metadata"]["annotations"][APPLIED_HASH].as_str().unwrap().to_owned();
        let base = stateful_set(&view(spec()), None).unwrap();
        assert_eq!(hash(&base).len(), 16);
        // Same input, same hash: across calls (and processes, FNV has no random seed).
        assert_eq!(hash(&stateful_set(&view(spec()), None).unwrap()), hash(&base));
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a reference value");
        // Any change of the body, including a removed field, changes the hash.
        let with_resources = DatabaseClusterSpec {
            resources: Some(ResourceRequirements {
                limits: Some(
                    [("cpu".to_owned(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()))].into(),
                ),
                ..Default::default()
            }),
            ..spec()
        };
        assert_ne!(hash(&stateful_set(&view(with_resources), None).unwrap()), hash(&base));
        assert_ne!(
            hash(&stateful_set(&view(DatabaseClusterSpec { image: "postgres:17.3".into(), ..spec() }), None).unwrap()),
            hash(&base)
        );
        assert_ne!(
            hash(&service(&view(spec()), ChildKind::PrimaryService)),
            hash(&service(&view(spec()), ChildKind::ReplicaService))
        );
    }

    #[test]
    fn canonicalised_claim_template_costs_no_write_after_creation() {
        // The user wrote a size the API server stores in another form.
        let v = view(DatabaseClusterSpec {
            storage: StorageSpec { size: "10240Mi".into(), storage_class_name: Some("fast-ssd".into()) },
            ..spec()
        });
        let created = stateful_set(&v, None).unwrap();
        assert_eq!(created["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "10240Mi");
        // What a real API server returns: canonical quantity, defaulted volumeMode and phase.
        let mut stored = created.clone();
        let template = &mut stored["spec"]["volumeClaimTemplates"][0];
        template["spec"]["resources"]["requests"]["storage"] = json!("10Gi");
        template["spec"]["volumeMode"] = json!("Filesystem");
        template["status"] = json!({"phase": "Pending"});
        let live: StatefulSet = serde_json::from_value(stored).unwrap();
        let next = stateful_set(&v, Some(&live)).unwrap();
        // The next body applies the stored template, and its hash is the one already stored.
        assert_eq!(next["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "10Gi");
        assert_eq!(next["metadata"]["annotations"], created["metadata"]["annotations"]);
        assert!(is_subset(&next, &serde_json::to_value(&live).unwrap()), "steady state must not apply");
    }

    #[test]
    fn an_existing_stateful_set_keeps_its_pod_management_policy() {
        let v = view(spec());
        assert_eq!(stateful_set(&v, None).unwrap()["spec"]["podManagementPolicy"], POD_MANAGEMENT_POLICY);
        // Created by an older controller with another policy: the immutable field is applied unchanged.
        let mut live: StatefulSet = serde_json::from_value(stateful_set(&v, None).unwrap()).unwrap();
        live.spec.pod_management_policy = Some("Parallel".into());
        let next = stateful_set(&v, Some(&live)).unwrap();
        assert_eq!(next["spec"]["podManagementPolicy"], "Parallel");
        // A StatefulSet read without the field (never stored so) gets ours.
        live.spec.pod_management_policy = None;
        assert_eq!(stateful_set(&v, Some(&live)).unwrap()["spec"]["podManagementPolicy"], POD_MANAGEMENT_POLICY);
    }

    #[test]
    fn every_child_and_claim_template_matches_the_watch_selector() {
        // The informers watch children (and the PVCs the StatefulSet creates from its
        // template) with this selector; an object without it is invisible to the controller.
        let selector = crate::controller::managed_selector();
        let (key, value) = selector.split_once('=').unwrap();
        let v = view(spec());
        let sts = stateful_set(&v, None).unwrap();
        let labelled = [
            ("headless Service", service(&v, ChildKind::HeadlessService)["metadata"]["labels"].clone()),
            ("-rw Service", service(&v, ChildKind::PrimaryService)["metadata"]["labels"].clone()),
            ("PodDisruptionBudget", pod_disruption_budget(&v)["metadata"]["labels"].clone()),
            ("StatefulSet", sts["metadata"]["labels"].clone()),
            ("pod template", sts["spec"]["template"]["metadata"]["labels"].clone()),
            ("volume claim template", sts["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"].clone()),
        ];
        for (what, labels) in labelled {
            assert_eq!(labels[key], value, "{what} must carry {selector}");
        }
        // The StatefulSet selector matches its pod template (the API server refuses it otherwise).
        for (k, v) in sts["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&sts["spec"]["template"]["metadata"]["labels"][k], v, "{k}");
        }
    }

    #[test]
    fn volume_claim_names_follow_the_statefulset_convention() {
        assert_eq!(view(spec()).volume_claim_names(), ["data-orders-0", "data-orders-1", "data-orders-2"]);
    }

    #[test]
    fn view_needs_server_metadata() {
        let mut c = cluster(spec());
        c.metadata.uid = None;
        let err = ClusterView::new(&c).unwrap_err();
        assert!(matches!(err, Error::MissingMetadata { field: "metadata.uid", .. }), "{err}");
        assert!(err.to_string().starts_with("DatabaseCluster shop/orders has no metadata.uid"), "{err}");
    }
}
