//! Backups against the mock API server: every call of a backup's steps is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use http::Method;
use serde_json::{Value, json};
use stead_crds::backup::{DatabaseBackup, DatabaseBackupSpec, DatabaseBackupStatus};

use crate::fixtures::*;
use crate::reconciler::reconcile;
use crate::reconciler_tests::running;

const BACKUP: &str = "orders-manual";

fn backup(status: Option<Value>) -> DatabaseBackup {
    let mut b = DatabaseBackup::new(BACKUP, DatabaseBackupSpec { cluster: NAME.into(), target: None });
    b.metadata.namespace = Some(NS.into());
    b.metadata.uid = Some("uid-backup".into());
    b.metadata.resource_version = Some("7".into());
    b.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    b.status = status.map(|s| serde_json::from_value::<DatabaseBackupStatus>(s).unwrap());
    b
}

fn backup_status_uri() -> String {
    format!("/apis/stead.dev/v1alpha1/namespaces/{NS}/databasebackups/{BACKUP}/status?&fieldManager=stead-controller")
}

fn snapshot_uri() -> String {
    format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{NS}/volumesnapshots/{BACKUP}")
}

/// A status patch of the backup, conditional on `version`, answered with the backup as stored after it.
fn backup_patch(version: &str, check: impl FnOnce(&Value) + Send + 'static, after: &DatabaseBackup) -> Call {
    let version = version.to_owned();
    Call::new(
        Method::PATCH,
        backup_status_uri(),
        move |body| {
            assert_eq!(body["metadata"]["resourceVersion"], version.as_str(), "conditional on the version judged");
            check(&body["status"]);
        },
        Reply::Json(serde_json::to_value(after).unwrap()),
    )
}

fn backup_event(reason: &'static str, check: impl FnOnce(&str) + Send + 'static) -> Call {
    Call::new(
        Method::POST,
        format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?"),
        move |body| {
            assert_eq!(body["reason"], reason, "event reason in {body}");
            assert_eq!(body["regarding"]["kind"], "DatabaseBackup");
            assert_eq!(body["regarding"]["name"], BACKUP);
            check(body["note"].as_str().unwrap_or_default());
        },
        Reply::Echo,
    )
}

/// A pending backup of a healthy 3-instance cluster: the replica that lags
/// least is recorded first, then fenced (cold), then its claim is
/// snapshotted by a VolumeSnapshot the backup owns; the backup then waits
/// for the snapshot to be cut, with the instance still in backup mode.
#[tokio::test]
async fn a_pending_backup_records_the_replica_fences_it_and_creates_its_snapshot() {
    let (c, instances, fill) = running([Some("primary"), Some("replica"), Some("replica")]);
    let pending = backup(None);
    let running_at = |version: &str, extra: Value| {
        let mut b = backup(Some(json!({"phase": "Running", "startedAt": now().to_string(), "instance": "orders-1"})));
        b.metadata.resource_version = Some(version.into());
        if let Some(status) = b.status.as_mut() {
            status.begin_lsn = extra["beginLSN"].as_str().map(str::to_owned);
        }
        b
    };
    let recorded = running_at("8", json!({}));
    let started = running_at("9", json!({"beginLSN": "0/3000060"}));
    let (ctx, server) = context_with_instances(
        move |w| {
            fill(w);
            w.seed_backups([pending]);
        },
        instances.clone(),
    );
    let server = server.expect(vec![
        // 1. The instance is recorded before anything is done.
        backup_patch(
            "7",
            |status| {
                assert_eq!(status["phase"], "Running");
                assert_eq!(status["instance"], "orders-1", "the replica that lags least (orders-2 lags 4096 bytes)");
            },
            &recorded,
        ),
        backup_event("BackupStarted", |note| {
            assert_eq!(note, "backing up orders-1: a cold backup of the fenced replica")
        }),
        // 2. In backup mode: the begin LSN.
        backup_patch("8", |status| assert_eq!(status, &json!({"beginLSN": "0/3000060"})), &started),
        // 3. The snapshot, owned by the backup.
        Call::new(Method::GET, snapshot_uri(), |_| {}, Reply::Status(404, "NotFound")),
        Call::new(
            Method::POST,
            format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{NS}/volumesnapshots?&fieldManager=stead-controller"),
            |body| {
                assert_eq!(body["spec"]["source"]["persistentVolumeClaimName"], "data-orders-1");
                assert_eq!(body["metadata"]["labels"]["stead.dev/cluster"], NAME);
                assert_eq!(body["metadata"]["labels"]["stead.dev/backup"], BACKUP);
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-backup");
                assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
                let spec: Value =
                    serde_json::from_str(body["metadata"]["annotations"]["stead.dev/cluster-spec"].as_str().unwrap())
                        .unwrap();
                assert_eq!(spec["image"], "postgres:17.2", "the cluster's spec travels with the snapshot");
            },
            Reply::Echo,
        ),
        status_patch(&c, |status| assert!(status.get("lastSuccessfulBackup").is_none(), "{status}")),
    ]);
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    let calls = instances.calls.lock().unwrap().clone();
    let operations: Vec<&String> = calls.iter().filter(|c| c.starts_with("POST")).collect();
    assert_eq!(
        operations,
        [r#"POST /backup/start orders-1 {"mode":"cold","label":"orders-manual"}"#],
        "fenced once; not stopped before the snapshot is cut"
    );
    drop(ctx);
    verify(server).await;
}

/// The snapshot is cut and ready: the instance leaves backup mode, and the
/// backup completes with the snapshot; the cluster's status reports it.
#[tokio::test]
async fn a_cut_snapshot_ends_backup_mode_and_completes_the_backup() {
    let (c, instances, fill) = running([Some("primary"), Some("replica"), Some("replica")]);
    let underway = backup(Some(json!({
        "phase": "Running", "startedAt": now().to_string(), "instance": "orders-1", "beginLSN": "0/3000060"
    })));
    let mut stopped = underway.clone();
    stopped.metadata.resource_version = Some("8".into());
    let mut completed = underway.clone();
    completed.metadata.resource_version = Some("9".into());
    let snapshot = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": BACKUP, "namespace": NS, "ownerReferences": [{
            "apiVersion": "stead.dev/v1alpha1", "kind": "DatabaseBackup", "name": BACKUP, "uid": "uid-backup", "controller": true
        }]},
        "spec": {"source": {"persistentVolumeClaimName": "data-orders-1"}},
        "status": {"creationTime": "2025-01-10T09:00:05Z", "readyToUse": true, "restoreSize": "10Gi"},
    });
    let (ctx, server) = context_with_instances(
        move |w| {
            fill(w);
            w.seed_backups([underway]);
        },
        instances.clone(),
    );
    let server = server.expect(vec![
        Call::new(Method::GET, snapshot_uri(), |_| {}, Reply::Json(snapshot.clone())),
        backup_patch("7", |status| assert_eq!(status, &json!({"endLSN": "0/3000060"})), &stopped),
        // The next poll would complete it; this reconcile ends after leaving backup mode.
        status_patch(&c, |status| {
            assert!(status.get("lastSuccessfulBackup").is_none(), "nothing completed yet: {status}");
        }),
    ]);
    let _ = completed;
    reconcile(Arc::new(c), ctx.clone()).await.unwrap();
    let calls = instances.calls.lock().unwrap().clone();
    assert!(
        calls.iter().any(|c| c == r#"POST /backup/stop orders-1 {"label":"orders-manual"}"#),
        "backup mode ends once the snapshot is cut: {calls:?}"
    );
    drop(ctx);
    verify(server).await;
}
