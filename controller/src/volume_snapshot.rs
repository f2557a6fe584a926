//! The slice of `snapshot.storage.k8s.io/v1` VolumeSnapshot that stead
//! writes and reads. The CRD belongs to the CSI external-snapshotter; stead
//! only creates snapshots of its own claims and reads their status by name
//! (no watch, so a cluster without the CRD costs nothing until a backup is
//! asked for).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// `spec` of a VolumeSnapshot of one claim.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    plural = "volumesnapshots",
    namespaced,
    status = "VolumeSnapshotStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    pub source: VolumeSnapshotSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// What is snapshotted: an existing claim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
}

/// What the snapshotter reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    /// When the snapshot was cut: the point in time it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
}

/// The last error the snapshotter met.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl VolumeSnapshot {
    /// The snapshot has been cut: the instance may leave backup mode.
    pub fn is_cut(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.creation_time.is_some() || s.ready_to_use == Some(true))
    }

    /// The snapshot can be restored from.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
    }

    /// The snapshotter's error, for people.
    pub fn error(&self) -> Option<String> {
        let error = self.status.as_ref()?.error.as_ref()?;
        Some(error.message.clone().unwrap_or_else(|| "the snapshotter reports an error without a message".into()))
    }
}
