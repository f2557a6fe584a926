//! Backups of one cluster, driven from its reconcile: the DatabaseBackups
//! under way (one at a time), the schedule, retention, and what the
//! cluster's status says about them. The decisions are in
//! [`crate::backup_plan`]; this module carries them out.
//!
//! A backup moves through steps, each recorded in its status before the
//! next is taken, so a controller restarted at any point resumes it:
//! 1. `phase: Running`, `startedAt` and `instance` are written;
//! 2. the instance manager enters backup mode (`POST /backup/start`: a
//!    fenced replica, or `pg_backup_start` on the primary); `beginLSN`;
//! 3. one VolumeSnapshot of the instance's data claim is created, owned by
//!    the DatabaseBackup, labelled with the cluster and the backup, with the
//!    cluster's spec in an annotation;
//! 4. once the snapshotter has cut it (`creationTime`), the instance leaves
//!    backup mode (`POST /backup/stop`); `endLSN`;
//! 5. once it is `readyToUse`, `phase: Completed` with the snapshot.
//!
//! A snapshot error fails the backup once `--snapshot-error-grace-seconds`
//! (default [`SNAPSHOT_ERROR_GRACE`]) has passed since it began (snapshotters retry transient errors), a snapshot
//! not cut within [`CUT_DEADLINE`] fails it, and an instance that cannot
//! enter backup mode within [`START_DEADLINE`] fails it; a failed backup
//! always leaves backup mode first.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use stead_crds::DatabaseCluster;
use stead_crds::backup::{
    BackupSnapshot, DatabaseBackup, DatabaseBackupSpec, DatabaseBackupStatus, PHASE_COMPLETED, PHASE_FAILED,
    PHASE_PENDING, PHASE_RUNNING,
};
use stead_crds::instance_api::{BackupMode, BackupStart, BackupStop};
use stead_crds::names::{
    BACKUP_CLUSTER_LABEL, BACKUP_LABEL, BACKUP_LABEL_FILE_ANNOTATION, CLUSTER_SPEC_ANNOTATION, FIELD_MANAGER,
};
use stead_crds::schedule::Schedule;
use tracing::{debug, info, warn};

use crate::backup_plan::{self, Kept, Mode, Scheduled};
use crate::children::ClusterView;
use crate::context::Context;
use crate::error::Error;
use crate::instances::Target;
use crate::keys::ControllerKeys;
use crate::replication::Convergence;
use crate::volume_snapshot::{VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec};

/// Label on the DatabaseBackups the scheduler creates; retention judges only these.
pub const SCHEDULED_LABEL: &str = "stead.dev/scheduled";
/// How long an instance may take to enter backup mode before the backup fails.
pub const START_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// How long the snapshotter may take to cut the snapshot.
pub const CUT_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// How long a snapshot may report an error (snapshotters retry) before the backup fails, by default
/// (`--snapshot-error-grace-seconds`).
pub const SNAPSHOT_ERROR_GRACE: Duration = Duration::from_secs(5 * 60);
/// How long a cut snapshot may take to become ready to use (an upload to object storage).
pub const READY_DEADLINE: Duration = Duration::from_secs(6 * 60 * 60);
/// How often a cluster with a backup under way is reconciled.
pub const ACTIVE_POLL: Duration = Duration::from_secs(2);

/// What the cluster's status says about backups.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackupReport {
    pub last_successful: Option<Timestamp>,
    pub last_failed: Option<Timestamp>,
    pub next_scheduled: Option<Timestamp>,
    pub last_schedule_time: Option<Timestamp>,
    /// `LastBackupSucceeded`: status, reason, message; `None` before any backup finished.
    pub condition: Option<(bool, &'static str, String)>,
    /// A backup of the cluster is under way: poll it soon.
    pub active: bool,
}

/// The backups of `view`'s cluster, oldest first.
fn backups_of(ctx: &Context, view: &ClusterView) -> Vec<Arc<DatabaseBackup>> {
    let mut backups: Vec<Arc<DatabaseBackup>> = ctx
        .stores
        .backup_index
        .names(&view.namespace, &view.name)
        .iter()
        .filter_map(|name| ctx.stores.backups.get(&ObjectRef::new(name).within(&view.namespace)))
        .filter(|b| b.spec.cluster == view.name)
        .collect();
    backups.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    backups
}

fn finished(backup: &DatabaseBackup) -> bool {
    matches!(backup.status.as_ref().and_then(|s| s.phase.as_deref()), Some(PHASE_COMPLETED | PHASE_FAILED))
}

fn stopped_at(backup: &DatabaseBackup) -> Option<Timestamp> {
    let status = backup.status.as_ref()?;
    status.stopped_at.as_ref().map(|t| t.0).or_else(|| backup.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Drives the cluster's backups one step, takes a scheduled one when due,
/// applies retention, and reports for the status. `quiet` is true while a
/// failover, switchover, rollout or re-clone is under way: no backup starts
/// then (one already running goes on).
pub async fn drive(
    cluster: &DatabaseCluster,
    ctx: &Context,
    view: &ClusterView,
    converged: &Convergence,
    quiet: bool,
) -> Result<BackupReport, Error> {
    let now = (ctx.now)();
    let stored = cluster.status.clone().unwrap_or_default();
    let mut report =
        BackupReport { last_schedule_time: stored.last_schedule_time.as_ref().map(|t| t.0), ..BackupReport::default() };
    let backups = backups_of(ctx, view);
    // One at a time: the oldest unfinished backup is the one under way.
    let mut running = None;
    if let Some(current) = backups.iter().find(|b| !finished(b)) {
        let done = advance(current, cluster, ctx, view, converged, quiet, now).await?;
        if !done {
            running = Some(current.name_any());
        }
        report.active = true;
    }

    if let Some(spec) = view.spec.backup.as_ref()
        && let Some(text) = spec.schedule.as_deref()
    {
        match Schedule::parse(text, spec.time_zone.as_deref()) {
            Err(e) => debug!(cluster = %view.name, error = %e, "schedule is invalid; the webhook refuses it"),
            Ok(schedule) => {
                let created = cluster.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
                let since = report.last_schedule_time.unwrap_or(created);
                let suspended = spec.suspend.unwrap_or(false);
                match backup_plan::scheduled(&view.name, &schedule, suspended, since, now, running.as_deref()) {
                    Scheduled::Take { slot, name } => {
                        create_scheduled(cluster, ctx, view, &name, slot).await?;
                        report.last_schedule_time = Some(slot);
                        report.next_scheduled = schedule.next_after(now).map(|z| z.timestamp());
                        report.active = true;
                    }
                    Scheduled::Idle { next } | Scheduled::Busy { next, .. } => report.next_scheduled = next,
                    Scheduled::Suspended => {}
                }
            }
        }
    }

    retain(cluster, ctx, view, &backups, now).await?;

    let completed =
        backups.iter().filter(|b| b.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(PHASE_COMPLETED));
    let failed = backups.iter().filter(|b| b.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(PHASE_FAILED));
    let last_ok = completed.max_by_key(|b| stopped_at(b));
    let last_bad = failed.max_by_key(|b| stopped_at(b));
    // When the data was taken: the latest completed backup's start.
    report.last_successful = last_ok
        .and_then(|b| b.status.as_ref().and_then(|s| s.started_at.as_ref()).map(|t| t.0).or_else(|| stopped_at(b)));
    report.last_failed = last_bad.and_then(|b| stopped_at(b));
    report.condition = match (last_ok, last_bad) {
        (_, Some(bad)) if stopped_at(bad) > last_ok.and_then(|b| stopped_at(b)) => Some((
            false,
            "Failed",
            format!(
                "the last backup, {}, failed: {}",
                bad.name_any(),
                bad.status.as_ref().and_then(|s| s.error.clone()).unwrap_or_else(|| "no reason recorded".into())
            ),
        )),
        (Some(ok), _) => Some((true, "Completed", format!("the last backup, {}, completed", ok.name_any()))),
        _ => None,
    };
    Ok(report)
}

/// Carries `backup` one step further; `true` once it is finished.
async fn advance(
    backup: &DatabaseBackup,
    cluster: &DatabaseCluster,
    ctx: &Context,
    view: &ClusterView,
    converged: &Convergence,
    quiet: bool,
    now: Timestamp,
) -> Result<bool, Error> {
    let status = backup.status.clone().unwrap_or_default();
    let age = |since: Option<&Time>| since.map_or(Duration::ZERO, |t| now.duration_since(t.0).unsigned_abs());
    let phase = status.phase.as_deref().unwrap_or(PHASE_PENDING);
    let name = backup.name_any();

    if phase != PHASE_RUNNING {
        // Pending: choose the instance and record it before anything is done.
        if quiet {
            return Ok(false);
        }
        let target = backup
            .spec
            .target
            .clone()
            .or_else(|| view.spec.backup.as_ref().and_then(|b| b.target.clone()))
            .unwrap_or_else(|| stead_crds::backup::TARGET_PREFER_REPLICA.to_owned());
        let primary = converged.topology.current_primary.as_deref();
        return match backup_plan::choose(&target, primary, &converged.topology.instances) {
            Err(why) if age(backup.metadata.creation_timestamp.as_ref()) > START_DEADLINE => {
                fail(
                    backup,
                    ctx,
                    None,
                    now,
                    format!("no instance could be backed up for {}s: {why}", START_DEADLINE.as_secs()),
                )
                .await?;
                Ok(true)
            }
            Err(why) => {
                debug!(backup = %name, why, "backup waits for an instance");
                Ok(false)
            }
            Ok((instance, mode)) => {
                let written = write_status(
                    ctx,
                    backup,
                    json!({ "phase": PHASE_RUNNING, "startedAt": Time(now), "instance": instance }),
                )
                .await?;
                let how = match mode {
                    Mode::Cold => "a cold backup of the fenced replica",
                    Mode::Hot => "a hot backup (pg_backup_start) of the primary",
                };
                publish(ctx, backup, EventType::Normal, "BackupStarted", format!("backing up {instance}: {how}")).await;
                let Some(written) = written else { return Ok(true) };
                Box::pin(advance(&written, cluster, ctx, view, converged, quiet, now)).await
            }
        };
    }

    let Some(instance) = status.instance.clone() else {
        fail(backup, ctx, None, now, "the backup is Running but names no instance".into()).await?;
        return Ok(true);
    };
    let target = instance_target(ctx, view, &instance);
    let claim = format!("data-{instance}");

    // 2. Backup mode.
    if status.begin_lsn.is_none() {
        let Some(target) = target else {
            return give_up_after(backup, ctx, None, now, &status, START_DEADLINE, format!("{instance} has no pod IP"))
                .await;
        };
        let mode = if converged.topology.current_primary.as_deref() == Some(instance.as_str()) {
            BackupMode::Hot
        } else {
            BackupMode::Cold
        };
        let request = BackupStart { mode, label: name.clone() };
        return match ctx.instances.backup_start(&target, &request).await {
            Ok(started) => {
                let written = write_status(ctx, backup, json!({ "beginLSN": started.begin_lsn.to_string() })).await?;
                info!(backup = %name, instance = %instance, mode = %mode, "instance in backup mode");
                let Some(written) = written else { return Ok(true) };
                Box::pin(advance(&written, cluster, ctx, view, converged, quiet, now)).await
            }
            Err(e) => {
                let why = format!("{instance} could not enter backup mode: {e}");
                give_up_after(backup, ctx, None, now, &status, START_DEADLINE, why).await
            }
        };
    }

    // 3. The snapshot.
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &view.namespace);
    let snapshot = match snapshots.get_opt(&name).await {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => {
            let object = snapshot_of(backup, cluster, view, &claim)?;
            match snapshots
                .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &object)
                .await
            {
                Ok(created) => {
                    ctx.metrics.count_apply("VolumeSnapshot");
                    info!(backup = %name, snapshot = %name, claim = %claim, "volume snapshot created");
                    created
                }
                Err(e) if crate::error::has_code(&e, &[409]) => return Ok(false),
                Err(e) => {
                    let why = format!(
                        "creating VolumeSnapshot {}/{name} of {claim} failed: {}",
                        view.namespace,
                        crate::error::describe(&e)
                    );
                    return give_up_after(backup, ctx, target.as_ref(), now, &status, START_DEADLINE, why).await;
                }
            }
        }
        Err(e) => {
            let why = format!("reading VolumeSnapshot {}/{name}: {}", view.namespace, crate::error::describe(&e));
            return give_up_after(backup, ctx, target.as_ref(), now, &status, CUT_DEADLINE, why).await;
        }
    };
    if !snapshot.owner_references().iter().any(|o| Some(o.uid.as_str()) == backup.metadata.uid.as_deref()) {
        let why = format!(
            "a VolumeSnapshot {}/{name} exists that this DatabaseBackup did not create; stead never adopts it. Delete \
             it, or back up under another name",
            view.namespace
        );
        fail(backup, ctx, target.as_ref(), now, why).await?;
        return Ok(true);
    }
    if let Some(error) = snapshot.error() {
        let why = format!("VolumeSnapshot {}/{name}: {error}", view.namespace);
        let grace = ctx.settings.snapshot_error_grace;
        return give_up_after(backup, ctx, target.as_ref(), now, &status, grace, why).await;
    }

    // 4. Out of backup mode once the snapshot is cut.
    if !snapshot.is_cut() {
        let why = format!("VolumeSnapshot {}/{name} was not cut within {}s", view.namespace, CUT_DEADLINE.as_secs());
        return give_up_after(backup, ctx, target.as_ref(), now, &status, CUT_DEADLINE, why).await;
    }
    if status.end_lsn.is_none() {
        let Some(target) = target else {
            // The pod is gone: the fence or pg_backup_start went with it.
            let written = write_status(ctx, backup, json!({ "endLSN": status.begin_lsn })).await?;
            return Ok(written.is_none());
        };
        match ctx.instances.backup_stop(&target, &BackupStop { label: name.clone() }).await {
            Ok(stopped) => {
                if let Some(label) = stopped.backup_label.as_deref() {
                    annotate_backup_label(ctx, &view.namespace, &name, label).await;
                }
                write_status(ctx, backup, json!({ "endLSN": stopped.end_lsn.to_string() })).await?;
                info!(backup = %name, instance = %instance, "instance out of backup mode");
            }
            Err(e) => warn!(backup = %name, instance = %instance, error = %e, "leaving backup mode failed; retrying"),
        }
        return Ok(false);
    }

    // 5. Ready.
    if !snapshot.is_ready() {
        let why = format!(
            "VolumeSnapshot {}/{name} did not become ready within {}s",
            view.namespace,
            READY_DEADLINE.as_secs()
        );
        return give_up_after(backup, ctx, None, now, &status, READY_DEADLINE, why).await;
    }
    let restore_size = snapshot.status.as_ref().and_then(|s| s.restore_size.clone());
    let record =
        BackupSnapshot { name: name.clone(), persistent_volume_claim: claim, ready_to_use: true, restore_size };
    write_status(
        ctx,
        backup,
        json!({ "phase": PHASE_COMPLETED, "stoppedAt": Time(now), "snapshots": [record], "error": null }),
    )
    .await?;
    let took = age(status.started_at.as_ref()).as_secs();
    publish(
        ctx,
        backup,
        EventType::Normal,
        "BackupCompleted",
        format!(
            "backup of {instance} completed in {took}s: VolumeSnapshot {name}, WAL {} to {}",
            status.begin_lsn.as_deref().unwrap_or("?"),
            status.end_lsn.as_deref().unwrap_or("?")
        ),
    )
    .await;
    Ok(true)
}

/// Waits while `why` has lasted less than `deadline` since the backup
/// started; fails the backup after.
async fn give_up_after(
    backup: &DatabaseBackup,
    ctx: &Context,
    target: Option<&Target>,
    now: Timestamp,
    status: &DatabaseBackupStatus,
    deadline: Duration,
    why: String,
) -> Result<bool, Error> {
    let since = status.started_at.as_ref().or(backup.metadata.creation_timestamp.as_ref()).map_or(now, |t| t.0);
    if now.duration_since(since).unsigned_abs() < deadline {
        debug!(backup = %backup.name_any(), why, "backup waits");
        return Ok(false);
    }
    fail(backup, ctx, target, now, format!("{why} (gave up after {}s)", deadline.as_secs())).await?;
    Ok(true)
}

/// Records a failed backup, after taking the instance out of backup mode.
async fn fail(
    backup: &DatabaseBackup,
    ctx: &Context,
    target: Option<&Target>,
    now: Timestamp,
    why: String,
) -> Result<(), Error> {
    let name = backup.name_any();
    let started = backup.status.as_ref().is_some_and(|s| s.begin_lsn.is_some() && s.end_lsn.is_none());
    if started
        && let Some(target) = target
        && let Err(e) = ctx.instances.backup_stop(target, &BackupStop { label: name.clone() }).await
    {
        warn!(backup = %name, error = %e, "leaving backup mode after a failure failed; the instance ends it after its bound");
    }
    write_status(ctx, backup, json!({ "phase": PHASE_FAILED, "stoppedAt": Time(now), "error": why })).await?;
    publish(ctx, backup, EventType::Warning, "BackupFailed", why).await;
    Ok(())
}

/// Where the instance manager of `pod` answers, if the pod has an IP.
fn instance_target(ctx: &Context, view: &ClusterView, pod: &str) -> Option<Target> {
    let live: Arc<Pod> = ctx.stores.pods.get(&ObjectRef::new(pod).within(&view.namespace))?;
    let ip = live.status.as_ref()?.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    Some(Target {
        pod: pod.to_owned(),
        ip,
        server_name: ControllerKeys::server_name(&view.namespace, &view.name),
        token: ctx.keys.token(&view.namespace, &view.name),
    })
}

/// The VolumeSnapshot of `claim` for `backup`.
fn snapshot_of(
    backup: &DatabaseBackup,
    cluster: &DatabaseCluster,
    view: &ClusterView,
    claim: &str,
) -> Result<VolumeSnapshot, Error> {
    let name = backup.name_any();
    let spec_json = serde_json::to_string(&cluster.spec).map_err(|source| Error::Serialize {
        what: format!("the spec of DatabaseCluster {}/{} for VolumeSnapshot {name}", view.namespace, view.name),
        source,
    })?;
    let owner = OwnerReference {
        api_version: DatabaseBackup::api_version(&()).into_owned(),
        kind: DatabaseBackup::kind(&()).into_owned(),
        name: name.clone(),
        uid: backup.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut labels = stead_crds::names::child_labels(&view.name);
    labels.insert(BACKUP_CLUSTER_LABEL.to_owned(), view.name.clone());
    labels.insert(BACKUP_LABEL.to_owned(), name.clone());
    Ok(VolumeSnapshot {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(view.namespace.clone()),
            labels: Some(labels),
            annotations: Some([(CLUSTER_SPEC_ANNOTATION.to_owned(), spec_json)].into()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource { persistent_volume_claim_name: Some(claim.to_owned()) },
            volume_snapshot_class_name: view.spec.backup.as_ref().and_then(|b| b.volume_snapshot_class_name.clone()),
        },
        status: None,
    })
}

/// Keeps a hot backup's `backup_label` with its snapshot (best effort: the
/// snapshot restores without it; it serves a future WAL archive).
async fn annotate_backup_label(ctx: &Context, namespace: &str, name: &str, label: &str) {
    let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({ "metadata": { "annotations": { BACKUP_LABEL_FILE_ANNOTATION: label } } });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    if let Err(e) = api.patch(name, &params, &Patch::Merge(patch)).await {
        warn!(snapshot = %name, error = %crate::error::describe(&e), "could not keep backup_label on the snapshot");
    }
}

/// Creates the DatabaseBackup of a scheduled slot; one that exists already
/// (a second attempt, another controller) is the backup of that slot.
async fn create_scheduled(
    cluster: &DatabaseCluster,
    ctx: &Context,
    view: &ClusterView,
    name: &str,
    slot: Timestamp,
) -> Result<(), Error> {
    let mut labels = stead_crds::names::child_labels(&view.name);
    labels.insert(BACKUP_CLUSTER_LABEL.to_owned(), view.name.clone());
    labels.insert(SCHEDULED_LABEL.to_owned(), "true".to_owned());
    let backup = DatabaseBackup {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(view.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: DatabaseBackupSpec { cluster: view.name.clone(), target: None },
        status: None,
    };
    let api: Api<DatabaseBackup> = Api::namespaced(ctx.client.clone(), &view.namespace);
    match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &backup).await {
        Ok(_) => {
            ctx.metrics.count_apply("DatabaseBackup");
            let note = format!("scheduled backup {name} for the slot {slot} (spec.backup.schedule)");
            crate::reconciler::publish(ctx, cluster, EventType::Normal, "BackupScheduled", "Backup", note).await;
            Ok(())
        }
        Err(e) if crate::error::has_code(&e, &[409]) => {
            debug!(backup = %name, "the backup of this slot exists already");
            Ok(())
        }
        Err(e) => Err(Error::kube(format!("create DatabaseBackup {}/{name}", view.namespace), e)),
    }
}

/// Deletes the scheduled backups retention lets go (their VolumeSnapshots
/// go with them, through their ownerReferences), with an event each.
async fn retain(
    cluster: &DatabaseCluster,
    ctx: &Context,
    view: &ClusterView,
    backups: &[Arc<DatabaseBackup>],
    now: Timestamp,
) -> Result<(), Error> {
    let Some(retention) = view.spec.backup.as_ref().and_then(|b| b.retention.as_ref()) else { return Ok(()) };
    let keep_last = retention.keep_last.and_then(|k| u32::try_from(k).ok());
    let max_age = retention.max_age.as_deref().and_then(|a| stead_crds::duration::parse_age(a).ok());
    let kept: Vec<Kept> = backups
        .iter()
        .filter(|b| finished(b) && b.metadata.deletion_timestamp.is_none())
        .map(|b| Kept {
            name: b.name_any(),
            phase: b.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default(),
            scheduled: b.labels().get(SCHEDULED_LABEL).map(String::as_str) == Some("true"),
            at: stopped_at(b).unwrap_or(now),
        })
        .collect();
    let api: Api<DatabaseBackup> = Api::namespaced(ctx.client.clone(), &view.namespace);
    for (name, why) in backup_plan::expired(&kept, keep_last, max_age, now) {
        let uid = backups.iter().find(|b| b.name_any() == name).and_then(|b| b.metadata.uid.clone());
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions { uid, resource_version: None }),
            propagation_policy: Some(kube::api::PropagationPolicy::Background),
            ..kube::api::DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                ctx.metrics.count_apply("DatabaseBackup");
                let note = format!("deleted backup {name} and its VolumeSnapshot: {why}");
                crate::reconciler::publish(ctx, cluster, EventType::Normal, "BackupDeleted", "Retain", note).await;
            }
            Err(e) if crate::error::is_not_found(&e) || crate::error::has_code(&e, &[409]) => {}
            Err(e) => {
                return Err(Error::kube(format!("delete DatabaseBackup {}/{name} (retention)", view.namespace), e));
            }
        }
    }
    Ok(())
}

/// Merge-patches the status of `backup`, conditional on the version judged;
/// returns it as stored afterwards (`None` once it is gone).
async fn write_status(
    ctx: &Context,
    backup: &DatabaseBackup,
    status: serde_json::Value,
) -> Result<Option<DatabaseBackup>, Error> {
    let name = backup.name_any();
    let namespace = backup.namespace().unwrap_or_default();
    let api: Api<DatabaseBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    let body = json!({ "metadata": { "resourceVersion": backup.metadata.resource_version }, "status": status });
    match api.patch_status(&name, &params, &Patch::Merge(body)).await {
        Ok(written) => {
            ctx.metrics.status_writes.inc();
            Ok(Some(written))
        }
        Err(e) if crate::error::is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::kube(format!("record the progress of DatabaseBackup {namespace}/{name}"), e)),
    }
}

async fn publish(ctx: &Context, backup: &DatabaseBackup, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(crate::status::truncate(note, 1024)),
        action: "Backup".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &backup.object_ref(&())).await {
        warn!(backup = %backup.name_any(), reason, error = %crate::error::describe(&e), "could not publish event");
    }
}

/// Before the StatefulSet of a cluster restored from a backup exists:
/// creates ordinal 0's data claim from the backup's VolumeSnapshot, so the
/// first instance starts on the restored data. `Ok(Some(why))` while the
/// restore cannot proceed (the backup is missing or not Completed).
pub async fn ensure_restore_claim(
    ctx: &Context,
    view: &ClusterView,
    sts_exists: bool,
) -> Result<Option<String>, Error> {
    let Some(from) = view.spec.bootstrap.as_ref().and_then(|b| b.from_backup.as_ref()) else { return Ok(None) };
    let claim = format!("data-{}-0", view.name);
    if sts_exists || ctx.stores.claims.get(&ObjectRef::new(&claim).within(&view.namespace)).is_some() {
        return Ok(None);
    }
    let backup = ctx.stores.backups.get(&ObjectRef::new(&from.name).within(&view.namespace));
    let Some(backup) = backup else {
        return Ok(Some(format!(
            "spec.bootstrap.fromBackup: DatabaseBackup {}/{} does not exist",
            view.namespace, from.name
        )));
    };
    let status = backup.status.clone().unwrap_or_default();
    let Some(snapshot) = status.snapshots.first().filter(|_| status.phase.as_deref() == Some(PHASE_COMPLETED)) else {
        return Ok(Some(format!(
            "spec.bootstrap.fromBackup: DatabaseBackup {}/{} is {}, not Completed",
            view.namespace,
            from.name,
            status.phase.as_deref().unwrap_or(PHASE_PENDING)
        )));
    };
    let mut object = crate::children::restore_claim(view, &claim);
    if let Some(spec) = object.spec.as_mut() {
        spec.data_source = Some(k8s_openapi::api::core::v1::TypedLocalObjectReference {
            api_group: Some("snapshot.storage.k8s.io".to_owned()),
            kind: "VolumeSnapshot".to_owned(),
            name: snapshot.name.clone(),
        });
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &view.namespace);
    match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &object).await {
        Ok(_) => {
            ctx.metrics.count_apply("PersistentVolumeClaim");
            info!(cluster = %view.name, claim = %claim, snapshot = %snapshot.name, "restore: claim created from the snapshot");
            Ok(None)
        }
        Err(e) if crate::error::has_code(&e, &[409]) => Ok(None),
        Err(e) => Err(Error::kube(
            format!("create PersistentVolumeClaim {}/{claim} from VolumeSnapshot {}", view.namespace, snapshot.name),
            e,
        )),
    }
}
