//! The `DatabaseBackup` API (`stead.dev/v1alpha1`): one object per backup of
//! a `DatabaseCluster`, whether the scheduler made it (`spec.backup.schedule`
//! on the cluster) or a user did (`kubectl apply`).
//!
//! A backup is one VolumeSnapshot per PersistentVolumeClaim of one instance.
//! The backup owns its VolumeSnapshots (ownerReferences), so deleting the
//! backup, by hand or by retention, deletes them. The spec says what to back
//! up and never changes (CEL and the webhook both refuse a change); the
//! status says what happened, written by the controller.
//!
//! Taking backups is the controller's part; this module is the contract it
//! writes to. The labels and annotations it puts on VolumeSnapshots are in
//! [`crate::names`].

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Kind of a backup.
pub const KIND: &str = "DatabaseBackup";
/// Plural resource name, as it appears in URLs and webhook rules.
pub const PLURAL: &str = "databasebackups";

/// `status.phase`: created, not yet started.
pub const PHASE_PENDING: &str = "Pending";
/// `status.phase`: the instance is in backup mode and snapshots are being taken.
pub const PHASE_RUNNING: &str = "Running";
/// `status.phase`: every snapshot is ready to use; the backup can be restored.
pub const PHASE_COMPLETED: &str = "Completed";
/// `status.phase`: the backup failed; `status.error` says why. It is not retried.
pub const PHASE_FAILED: &str = "Failed";
/// Every value of `status.phase`.
pub const PHASES: [&str; 4] = [PHASE_PENDING, PHASE_RUNNING, PHASE_COMPLETED, PHASE_FAILED];

/// `target`: a streaming replica when one is ready, else the primary (the default).
pub const TARGET_PREFER_REPLICA: &str = "prefer-replica";
/// `target`: always the primary.
pub const TARGET_PRIMARY: &str = "primary";
/// Every value of a backup `target`.
pub const TARGETS: [&str; 2] = [TARGET_PREFER_REPLICA, TARGET_PRIMARY];

/// What to back up. Immutable: a backup is a record of one event.
// The printer columns share `type_ = "string"`; clippy reads the derive
// arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "stead.dev",
    version = "v1alpha1",
    kind = "DatabaseBackup",
    plural = "databasebackups",
    singular = "databasebackup",
    shortname = "dbb",
    category = "stead",
    namespaced,
    status = "DatabaseBackupStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".spec.cluster",
        description = "The DatabaseCluster backed up"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Completed or Failed"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message(
    "spec is immutable: a DatabaseBackup records one backup; create a new DatabaseBackup instead"
))]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBackupSpec {
    /// The DatabaseCluster to back up, in the same namespace.
    #[schemars(length(min = 1, max = 63))]
    pub cluster: String,

    /// Which instance to back up: `prefer-replica` (a streaming replica when
    /// one is ready, else the primary) or `primary`. Default: the cluster's
    /// `spec.backup.target`, else `prefer-replica`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub target: Option<String>,
}

/// What happened, written by the controller through the status subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBackupStatus {
    /// `Pending`, `Running`, `Completed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    /// When the instance entered backup mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the backup completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Time>,

    /// The pod whose volumes were snapshotted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,

    /// One VolumeSnapshot per PersistentVolumeClaim of the instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub snapshots: Vec<BackupSnapshot>,

    /// WAL position where the backup starts (`pg_backup_start`); a restore
    /// replays from here.
    #[serde(rename = "beginLSN", default, skip_serializing_if = "Option::is_none")]
    pub begin_lsn: Option<String>,

    /// WAL position where the backup ends (`pg_backup_stop`); a restore is
    /// consistent once it has replayed up to here.
    #[serde(rename = "endLSN", default, skip_serializing_if = "Option::is_none")]
    pub end_lsn: Option<String>,

    /// Why the backup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One VolumeSnapshot of a backup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupSnapshot {
    /// The VolumeSnapshot, in the backup's namespace.
    pub name: String,
    /// The PersistentVolumeClaim it is a snapshot of.
    pub persistent_volume_claim: String,
    /// The snapshot's `status.readyToUse`: it can be restored from.
    pub ready_to_use: bool,
    /// The snapshot's `status.restoreSize`: the smallest volume it can be
    /// restored into, when the storage driver reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
}

impl DatabaseBackup {
    /// The phase, `Pending` when the controller has not written one yet.
    pub fn phase(&self) -> &str {
        self.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or(PHASE_PENDING)
    }

    /// Whether the backup can be restored from.
    pub fn is_completed(&self) -> bool {
        self.phase() == PHASE_COMPLETED
    }

    /// The snapshots recorded so far (none before the backup runs).
    pub fn snapshots(&self) -> &[BackupSnapshot] {
        self.status.as_ref().map_or(&[], |s| s.snapshots.as_slice())
    }
}
