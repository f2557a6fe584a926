//! The `DatabaseCluster` API (`stead.dev/v1alpha1`).
//!
//! The Rust types are the single source of the CRD schema (`crdgen`), of the
//! webhook's view of a request, and of the controller's view of the world.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of every stead resource; the webhook is scoped to it.
pub const GROUP: &str = "stead.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// Kind of a database cluster (backups are [`crate::backup::KIND`]).
pub const KIND: &str = "DatabaseCluster";
/// Plural resource name, as it appears in URLs and webhook rules.
pub const PLURAL: &str = "databaseclusters";

/// Desired state of one database cluster.
///
/// `replicas` and `port` are optional in the schema on purpose: the mutating
/// webhook fills them in, and the controller applies the same defaults in
/// memory when the webhook was bypassed.
// Several printer columns share `type_ = "integer"`; clippy reads the derive
// arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "stead.dev",
    version = "v1alpha1",
    kind = "DatabaseCluster",
    plural = "databaseclusters",
    singular = "databasecluster",
    shortname = "dbc",
    category = "stead",
    namespaced,
    status = "DatabaseClusterStatus",
    derive = "PartialEq",
    derive = "Default",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas", description = "Desired replicas"),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Replicas ready to serve"
    ),
    printcolumn(
        name = "Primary",
        type_ = "string",
        json_path = ".status.currentPrimary",
        description = "The pod that is the primary"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].reason",
        description = "Why the cluster is or is not available"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(
    "has(self.bootstrap) == has(oldSelf.bootstrap) && (!has(self.bootstrap) || self.bootstrap == oldSelf.bootstrap)"
).message("bootstrap is immutable: it says how the cluster was created; create a new cluster to restore a backup"))]
#[serde(rename_all = "camelCase")]
pub struct DatabaseClusterSpec {
    /// Container image of the database, e.g. `postgres:17.2`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Number of database pods. Defaulted to 1 by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: Option<i32>,

    /// Port the database listens on. Defaulted to 5432 by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Compute resources of each database container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Persistent storage of each replica.
    pub storage: StorageSpec,

    /// When true, DELETE of this cluster is refused by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,

    /// When true, the controller leaves all children exactly as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,

    /// PostgreSQL server settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql: Option<PostgresqlSpec>,

    /// Streaming replication between the primary and the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationSpec>,

    /// How long the primary must be failing (postgres down, its instance
    /// manager unreachable, its pod not ready or gone) before a replica is
    /// promoted, as a duration such as `30s` or `2m`; `0s` fails over at the
    /// first failed poll. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub failover_delay: Option<String>,

    /// Which replica may be promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSpec>,

    /// How a rolling update treats the primary, which restarts last:
    /// `unsupervised` (default) restarts it as soon as every replica runs the
    /// new revision; `supervised` waits until the annotation
    /// `stead.dev/approve-primary-update` names that revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_update_strategy: Option<String>,

    /// How the primary takes the new revision once every replica runs it:
    /// `switchover` (default) hands the primary role to the most advanced
    /// updated replica first, with no committed transaction lost, and then
    /// restarts the old primary as a replica; `restart` restarts the primary
    /// in place (its clients wait for the restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_update_method: Option<String>,

    /// Backups: a schedule, retention, and where snapshots are taken.
    /// DatabaseBackups of this cluster made by hand use the same settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// How a new cluster gets its data. Immutable: set only at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
}

/// `spec.backup`: scheduled VolumeSnapshot backups and their retention.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to take a backup: standard 5-field cron, `minute hour
    /// day-of-month month day-of-week`, such as `0 3 * * *` (03:00 daily),
    /// or a macro such as `@daily`. No seconds field. Without a schedule,
    /// only DatabaseBackups made by hand are taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: Option<String>,

    /// The IANA time zone the schedule is read in, such as `Europe/Berlin`.
    /// Default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// Which completed backups to keep; the others are deleted with their
    /// VolumeSnapshots. The newest completed backup is never deleted.
    /// Without retention every backup is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,

    /// VolumeSnapshotClass of the snapshots; the cluster's default class
    /// for the volumes' driver when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_snapshot_class_name: Option<String>,

    /// Which instance is backed up: `prefer-replica` (default; a streaming
    /// replica when one is ready, else the primary) or `primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub target: Option<String>,

    /// When true, the schedule takes no new backups; retention still applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

/// `spec.backup.retention`: either bound, or both (a backup goes when it
/// is beyond `keepLast` or older than `maxAge`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Keep at most this many completed backups, the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub keep_last: Option<i32>,

    /// Delete completed backups older than this, such as `30d` or `12h`
    /// (units d, h, m, s; at most 3650d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub max_age: Option<String>,
}

/// `spec.bootstrap`: where a new cluster's data comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore a Completed DatabaseBackup (in the same namespace) into this
    /// new cluster: the first instance's volume is created from its snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<FromBackup>,
}

/// The backup a new cluster is restored from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FromBackup {
    /// Name of the DatabaseBackup.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The condition type that reports the outcome of the latest backup:
/// `True` (reason `Completed`) when it completed, `False` (reason `Failed`,
/// the backup's error as the message) when it failed. Absent until the first
/// backup ends.
pub const CONDITION_LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";

/// The values of `spec.primaryUpdateStrategy`.
pub const PRIMARY_UPDATE_STRATEGIES: [&str; 2] = ["unsupervised", "supervised"];

/// The values of `spec.primaryUpdateMethod`.
pub const PRIMARY_UPDATE_METHODS: [&str; 2] = ["switchover", "restart"];

/// The guard of automatic failover.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// A replica that lags the failed primary by more than this many bytes
    /// is not promoted (committed transactions would be lost); the cluster
    /// reports `Degraded=True/FailoverBlocked` instead. Default 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_lag_bytes: Option<i64>,

    /// Promote the most advanced replica even beyond `maxLagBytes`, losing
    /// the transactions it lacks. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_data_loss: Option<bool>,
}

/// PostgreSQL server settings of every instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PostgresqlSpec {
    /// `postgresql.conf` parameters, such as `shared_buffers: 256MB`. The
    /// parameters stead sets itself (listen addresses, port, replication)
    /// are refused; see the README for the list.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = crate::validation::MAX_PARAMETERS))]
    pub parameters: BTreeMap<String, String>,
}

/// Streaming replication settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// A replica whose replay lags the primary by more than this many bytes
    /// of WAL is reported as lagging (`ReplicationHealthy=False`). Default 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_lag_bytes: Option<i64>,
}

/// Storage of each replica: one PersistentVolumeClaim per pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)"
).message("storageClassName is immutable: existing volumes keep the class they were created with"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each volume, a Kubernetes quantity such as `10Gi`. May grow, never shrink.
    #[schemars(length(min = 1, max = 64))]
    pub size: String,

    /// StorageClass of the volumes; the cluster default when absent. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// Observed state, written by the controller through the status subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pods the StatefulSet currently runs (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Pods that pass their readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Label selector of the pods, as a string (scale subresource, HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Available, Progressing and Degraded, in metav1.Condition form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The Secret holding the superuser credentials, once ensured. The
    /// controller creates it at most once and never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,

    /// The pod that is the primary, as its instance manager reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,

    /// The pod that should be the primary; differs from `currentPrimary`
    /// only while a failover or switchover moves the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,

    /// Every instance, by ordinal: its role, readiness and replication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub instances: Vec<InstanceReport>,

    /// Where clients connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,

    /// `Healthy`, `PrimaryFailing` (waiting out `spec.failoverDelay`) or
    /// `FailingOver` (a promotion of `targetPrimary` is under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    /// Since when the current primary has been failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_failing_since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// When the last failover promoted a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// Failovers so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_count: Option<i32>,

    /// When the latest backup that completed was taken (its `startedAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// When the latest backup that failed stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_backup: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// When `spec.backup.schedule` fires next; absent while suspended or
    /// without a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled_backup: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// The schedule slot the scheduler last created a backup for; due times
    /// are computed from it, so a slot is never taken twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// One instance as the controller last saw it.
///
/// `lsn` and `lagBytes` are a snapshot taken when the status was last
/// written for another reason (a role, readiness or the lag bound
/// changing); they are not rewritten on every poll.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// The pod.
    pub name: String,
    /// `primary`, `replica`, `bootstrapping`, `stopped`, `fenced`, `pending`, `terminating` or `unknown`.
    pub role: String,
    /// Ready to serve its role.
    pub ready: bool,
    /// A replica streams WAL from the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// A replica lags the primary by more than `spec.replication.maxLagBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lagging: Option<bool>,
    /// Bytes of WAL a replica has yet to replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// WAL position: a primary's write position, a replica's replay position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// PostgreSQL timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Why it does not serve, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The DNS names and port of the cluster's Services.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// The primary: writes and reads that must be current (`<name>-rw`).
    pub read_write: String,
    /// Ready replicas: reads that may lag (`<name>-ro`).
    pub read_only: String,
    /// Any ready instance (`<name>-r`).
    pub any: String,
}

impl DatabaseClusterSpec {
    /// Replicas with the webhook's default applied.
    pub fn effective_replicas(&self) -> i32 {
        self.replicas.unwrap_or(crate::defaults::DEFAULT_REPLICAS)
    }

    /// Port with the webhook's default applied.
    pub fn effective_port(&self) -> i32 {
        self.port.unwrap_or(crate::defaults::DEFAULT_PORT)
    }

    /// Whether DELETE must be refused.
    pub fn is_deletion_protected(&self) -> bool {
        self.deletion_protection.unwrap_or(false)
    }

    /// Whether the controller must leave children alone.
    pub fn is_paused(&self) -> bool {
        self.paused.unwrap_or(false)
    }

    /// The replication lag bound, with its default.
    pub fn max_lag_bytes(&self) -> i64 {
        self.replication.as_ref().and_then(|r| r.max_lag_bytes).unwrap_or(crate::defaults::DEFAULT_MAX_LAG_BYTES)
    }

    /// The failover delay, with its default; `None` when `failoverDelay` is not a duration.
    pub fn failover_delay(&self) -> Option<std::time::Duration> {
        match &self.failover_delay {
            None => Some(crate::defaults::DEFAULT_FAILOVER_DELAY),
            Some(text) => crate::duration::parse(text).ok(),
        }
    }

    /// The lag bound of a promotion, with its default.
    pub fn failover_max_lag_bytes(&self) -> i64 {
        self.failover.as_ref().and_then(|f| f.max_lag_bytes).unwrap_or(crate::defaults::DEFAULT_MAX_LAG_BYTES)
    }

    /// Whether a promotion beyond the lag bound is allowed.
    pub fn failover_allows_data_loss(&self) -> bool {
        self.failover.as_ref().and_then(|f| f.allow_data_loss).unwrap_or(false)
    }

    /// Whether the primary's restart in a rolling update waits for approval.
    pub fn primary_update_is_supervised(&self) -> bool {
        self.primary_update_strategy.as_deref() == Some("supervised")
    }

    /// Whether the primary takes a new revision by switchover (the default) rather than a restart in place.
    pub fn primary_update_by_switchover(&self) -> bool {
        self.primary_update_method.as_deref() != Some("restart")
    }

    /// The backup target, with its default (`prefer-replica`).
    pub fn backup_target(&self) -> &str {
        self.backup.as_ref().and_then(|b| b.target.as_deref()).unwrap_or(crate::backup::TARGET_PREFER_REPLICA)
    }

    /// The time zone of the backup schedule, with its default (`UTC`).
    pub fn backup_time_zone(&self) -> &str {
        self.backup.as_ref().and_then(|b| b.time_zone.as_deref()).unwrap_or(crate::schedule::DEFAULT_TIME_ZONE)
    }

    /// Whether scheduled backups are suspended.
    pub fn backups_suspended(&self) -> bool {
        self.backup.as_ref().and_then(|b| b.suspend).unwrap_or(false)
    }

    /// The DatabaseBackup a new cluster is restored from, if any.
    pub fn restore_source(&self) -> Option<&str> {
        self.bootstrap.as_ref().and_then(|b| b.from_backup.as_ref()).map(|f| f.name.as_str())
    }

    /// The user's postgresql.conf parameters (empty when none).
    pub fn parameters(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.postgresql.as_ref().map_or(&NONE, |p| &p.parameters)
    }
}
