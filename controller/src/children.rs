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
use stead_crds::names::{child_labels, credentials_secret_name, headless_service_name, selector_labels};
use stead_crds::{DatabaseCluster, DatabaseClusterSpec};

use crate::credentials::{PASSWORD_KEY, USERNAME_KEY};
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
}

impl ClusterView {
    /// Extracts what the builders need; fails only for objects not read from an API server.
    pub fn new(cluster: &DatabaseCluster) -> Result<Self, Error> {
        let meta = cluster.meta();
        let missing = |field| Error::MissingMetadata { object: display_name(meta), field };
        Ok(Self {
            name: meta.name.clone().ok_or_else(|| missing("metadata.name"))?,
            namespace: meta.namespace.clone().ok_or_else(|| missing("metadata.namespace"))?,
            uid: meta.uid.clone().ok_or_else(|| missing("metadata.uid"))?,
            generation: meta.generation,
            spec: with_defaults(&cluster.spec),
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

/// `namespace/name` of an object, with `<none>` for what it lacks (for messages).
pub fn display_name(meta: &kube::api::ObjectMeta) -> String {
    let part = |p: &Option<String>| p.as_deref().filter(|p| !p.is_empty()).unwrap_or("<none>").to_owned();
    format!("{}/{}", part(&meta.namespace), part(&meta.name))
}

/// One child the controller manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    HeadlessService,
    ClientService,
    StatefulSet,
    PodDisruptionBudget,
}

impl ChildKind {
    /// The Kubernetes kind, for events, errors and metric labels.
    pub fn kind(self) -> &'static str {
        match self {
            Self::HeadlessService | Self::ClientService => "Service",
            Self::StatefulSet => "StatefulSet",
            Self::PodDisruptionBudget => "PodDisruptionBudget",
        }
    }

    /// The child's name for a cluster.
    pub fn name(self, cluster: &str) -> String {
        match self {
            Self::HeadlessService => headless_service_name(cluster),
            _ => cluster.to_owned(),
        }
    }
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
fn with_applied_hash(mut body: Value) -> Value {
    let templates = body.get_mut("spec").and_then(Value::as_object_mut).and_then(|s| s.remove("volumeClaimTemplates"));
    let hash = format!("{:016x}", fnv1a(body.to_string().as_bytes()));
    if let Some(templates) = templates {
        body["spec"]["volumeClaimTemplates"] = templates;
    }
    body["metadata"]["annotations"] = json!({ APPLIED_HASH: hash });
    body
}

/// FNV-1a (64 bit): stable across Rust versions and processes, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `<name>-headless`: stable per-pod DNS names, published before pods are
/// ready so that peers can find each other while they bootstrap.
pub fn headless_service(view: &ClusterView) -> Value {
    with_applied_hash(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": view.metadata(&ChildKind::HeadlessService.name(&view.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector_labels(&view.name),
            "ports": service_ports(view),
        },
    }))
}

/// `<name>`: the address clients connect to; only ready pods receive traffic.
pub fn client_service(view: &ClusterView) -> Value {
    with_applied_hash(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": view.metadata(&ChildKind::ClientService.name(&view.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(&view.name),
            "ports": service_ports(view),
        },
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
pub fn wants_pdb(view: &ClusterView) -> bool {
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

/// `requests`/`limits` that are set and non-empty; `None` when nothing is.
fn container_resources(resources: Option<&ResourceRequirements>) -> Option<Value> {
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

/// An environment variable read from a key of a Secret.
fn secret_env(name: &str, secret: &str, key: &str) -> Value {
    json!({ "name": name, "valueFrom": { "secretKeyRef": { "name": secret, "key": key } } })
}

fn database_container(view: &ClusterView) -> Value {
    let port = view.port();
    let secret = credentials_secret_name(&view.name);
    let mut container = json!({
        "name": CONTAINER,
        "image": view.spec.image,
        "ports": [{ "name": PORT_NAME, "containerPort": port, "protocol": "TCP" }],
        // The image refuses to initialise without a password (see `credentials`).
        "env": [
            secret_env("POSTGRES_USER", &secret, USERNAME_KEY),
            secret_env("POSTGRES_PASSWORD", &secret, PASSWORD_KEY),
        ],
        // Ready as soon as the port accepts connections.
        "readinessProbe": {
            "tcpSocket": { "port": port },
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        // Generous: first start (initdb) and crash recovery must not be killed.
        "livenessProbe": {
            "tcpSocket": { "port": port },
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "volumeMounts": [{ "name": VOLUME, "mountPath": DATA_MOUNT_PATH }],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
        },
    });
    if let Some(resources) = container_resources(view.spec.resources.as_ref()) {
        container["resources"] = resources;
    }
    container
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
                    "containers": [database_container(view)],
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
        let svc = headless_service(&view(spec()));
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
    fn client_service_names_exactly_its_fields() {
        let svc = client_service(&view(DatabaseClusterSpec { port: Some(6543), ..spec() }));
        assert_eq!(
            sorted(paths(&svc)),
            with_meta(&[
                "spec.ports[0].name",
                "spec.ports[0].port",
                "spec.ports[0].protocol",
                "spec.ports[0].targetPort",
                "spec.selector.app.kubernetes.io/instance",
                "spec.selector.app.kubernetes.io/name",
                "spec.type",
            ])
        );
        assert_eq!(svc["metadata"]["name"], "orders");
        assert_eq!(svc["spec"]["ports"][0]["port"], 6543);
        let _: Service = serde_json::from_value(svc).unwrap();
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
        let c = "spec.template.spec.containers[0]";
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
            format!("{c}.name"),
            format!("{c}.image"),
            format!("{c}.ports[0].name"),
            format!("{c}.ports[0].containerPort"),
            format!("{c}.ports[0].protocol"),
            format!("{c}.env[0].name"),
            format!("{c}.env[0].valueFrom.secretKeyRef.name"),
            format!("{c}.env[0].valueFrom.secretKeyRef.key"),
            format!("{c}.env[1].name"),
            format!("{c}.env[1].valueFrom.secretKeyRef.name"),
            format!("{c}.env[1].valueFrom.secretKeyRef.key"),
            format!("{c}.readinessProbe.tcpSocket.port"),
            format!("{c}.readinessProbe.periodSeconds"),
            format!("{c}.readinessProbe.failureThreshold"),
            format!("{c}.livenessProbe.tcpSocket.port"),
            format!("{c}.livenessProbe.initialDelaySeconds"),
            format!("{c}.livenessProbe.periodSeconds"),
            format!("{c}.livenessProbe.failureThreshold"),
            format!("{c}.volumeMounts[0].name"),
            format!("{c}.volumeMounts[0].mountPath"),
            format!("{c}.securityContext.allowPrivilegeEscalation"),
            format!("{c}.securityContext.capabilities.drop[0]"),
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
        assert_eq!(sorted(paths(&sts)), with_meta(&specific));
        assert_eq!(sts["spec"]["serviceName"], "orders-headless");
        assert_eq!(sts["spec"]["replicas"], 3);
        assert_eq!(
            sts["spec"]["template"]["spec"]["automountServiceAccountToken"], false,
            "database pods get no service account token"
        );
        assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["image"], "postgres:17.2");
        assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"], 5432);
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([
                {"name": "POSTGRES_USER", "valueFrom": {"secretKeyRef": {"name": "orders-credentials", "key": "username"}}},
                {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "orders-credentials", "key": "password"}}},
            ])
        );
        assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "10Gi");
        assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], "fast-ssd");
        let _: StatefulSet = serde_json::from_value(sts).unwrap();
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
        assert_ne!(hash(&headless_service(&view(spec()))), hash(&client_service(&view(spec()))));
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
            ("headless Service", headless_service(&v)["metadata"]["labels"].clone()),
            ("client Service", client_service(&v)["metadata"]["labels"].clone()),
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
