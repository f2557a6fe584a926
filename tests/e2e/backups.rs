//! Backups and restore (issue 11), end to end: DatabaseBackups made with
//! `kubectl apply` and by the schedule, their VolumeSnapshots (taken by the
//! suite's stand-in snapshotter, which copies the claim's directory), the
//! cluster's backup status, retention, a failed snapshot, and a restore into
//! a new cluster that the stand-in kubelet fills from the snapshot's copy.
//!
//! The manual backup and the restore use the shared 3-instance `orders`
//! (see `database.rs`); each scenario makes sure what it needs exists, so
//! any one of them runs alone under `STEAD_E2E_ONLY`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::clusters::{
    AVAILABLE_TIMEOUT, REACT_TIMEOUT, condition, conditions_summary, expect_ok, spec_with_replicas, text,
    wait_for_object, wait_until_gone,
};
use crate::database::{
    NS, ORDERS, ensure_orders, instances, pod_ips, pod_role, psql, superuser_password, wait_for_row,
    wait_until_streaming, write_row,
};
use crate::scenarios::Ctx;
use crate::support::kubectl::{Kubectl, table};
use crate::support::say;
use crate::support::snapshotter::{self, Snapshotter};
use crate::support::wait::{self, Poll};

/// The DatabaseBackup of `orders` made by hand; the restore restores it.
const BACKUP: &str = "orders-by-hand";
/// The cluster restored from it, beside `orders`.
const RESTORED: &str = "restored";
/// A row written after the backup: a restore must not have it.
const LATER_ROW: i32 = 90;
/// How long a backup may take from `kubectl apply` to Completed here (a
/// snapshot is a directory copy of some 40 MB).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(180);
/// The grace the suite gives the controller for a snapshot that reports an
/// error (`--snapshot-error-grace-seconds 20`; 5 minutes by default):
/// the backup fails once this has passed since it began.
const SNAPSHOT_ERROR_GRACE: Duration = Duration::from_secs(20);
/// What the stand-in snapshotter reports when a scenario makes it fail.
const INJECTED_ERROR: &str = "stand-in driver: CreateSnapshot failed: e2e: the storage backend refused the snapshot";
/// The resource names kubectl is given (unambiguous, whatever else is installed).
const DBB: &str = "databasebackups.stead.dev";
const DBC: &str = "databaseclusters.stead.dev";
const VS: &str = "volumesnapshots.snapshot.storage.k8s.io";

/// A DatabaseBackup of `cluster`.
fn backup_object(namespace: &str, name: &str, cluster: &str) -> Value {
    json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseBackup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"cluster": cluster}
    })
}

/// The stand-in snapshotter, once database pods can run (a
/// [`crate::scenarios::Skip`] otherwise).
fn snapshotter<'a>(ctx: &Ctx<'a>) -> anyhow::Result<&'a Snapshotter> {
    ctx.kubelet()?;
    Ok(ctx.snapshotter)
}

/// Waits until the backup's phase is `want`; fails at once when it ends in the other terminal phase.
fn wait_for_phase(k: &Kubectl, ns: &str, name: &str, want: &str, timeout: Duration) -> anyhow::Result<Value> {
    wait::until(&format!("DatabaseBackup {ns}/{name} to be {want}"), timeout, || {
        let backup = k.get(DBB, ns, name)?.with_context(|| format!("the DatabaseBackup {ns}/{name} is gone"))?;
        let phase = text(&backup, "/status/phase");
        if phase == want {
            return Ok(Poll::Ready(backup));
        }
        if matches!(phase.as_str(), "Completed" | "Failed") {
            bail!("DatabaseBackup {ns}/{name} ended {phase}, not {want}: status {}", backup["status"]);
        }
        Ok(Poll::Pending(format!("phase {phase:?}, status {}", backup["status"])))
    })
}

/// Waits for a DatabaseCluster condition with the cluster bound of [`AVAILABLE_TIMEOUT`].
fn wait_for_cluster(
    k: &Kubectl,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait::until(&format!("DatabaseCluster {ns}/{name}: {what}"), timeout, || {
        let object = k.get(DBC, ns, name)?.with_context(|| format!("the cluster {ns}/{name} is gone"))?;
        Ok(if done(&object) {
            Poll::Ready(object)
        } else {
            Poll::Pending(format!("{}; backup status: {}", conditions_summary(&object), backup_status_summary(&object)))
        })
    })
}

fn has_condition(object: &Value, kind: &str, status: &str, reason: &str) -> bool {
    condition(object, kind).is_some_and(|c| text(c, "/status") == status && text(c, "/reason") == reason)
}

/// `(status, reason)` of the cluster's LastBackupSucceeded condition.
fn last_backup_succeeded(cluster: &Value) -> (String, String) {
    condition(cluster, stead_crds::cluster::CONDITION_LAST_BACKUP_SUCCEEDED)
        .map(|c| (text(c, "/status"), text(c, "/reason")))
        .unwrap_or_default()
}

/// The reason stead-crds documents for LastBackupSucceeded (`Completed`
/// when True, `Failed` when False); checked last, so a different word does
/// not hide what else a scenario finds.
fn documented_reason(cluster: &Value, want: &str) -> anyhow::Result<()> {
    let (status, reason) = last_backup_succeeded(cluster);
    ensure!(
        reason == want,
        "LastBackupSucceeded is {status}/{reason}; the API (stead_crds::cluster::CONDITION_LAST_BACKUP_SUCCEEDED) \
         documents the reason {want:?} for {status}: the controller and the API disagree"
    );
    Ok(())
}

fn backup_status_summary(cluster: &Value) -> String {
    ["lastSuccessfulBackup", "lastFailedBackup", "nextScheduledBackup", "lastScheduleTime"]
        .iter()
        .map(|field| format!("{field}={:?}", text(cluster, &format!("/status/{field}"))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `16/B374D848` as a number, to compare positions.
pub(crate) fn parse_lsn(lsn: &str) -> Option<u64> {
    let (high, low) = lsn.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// The current primary and the ready, streaming replicas of a cluster.
fn roles_of(cluster: &Value) -> (String, Vec<String>) {
    let replicas = instances(cluster)
        .into_iter()
        .filter(|i| i["role"] == "replica" && i["streaming"] == true)
        .map(|i| text(&i, "/name"))
        .collect();
    (text(cluster, "/status/currentPrimary"), replicas)
}

/// The snapshots recorded in a backup's status.
fn recorded_snapshots(backup: &Value) -> Vec<Value> {
    backup.pointer("/status/snapshots").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Every VolumeSnapshot a backup recorded, checked as stead's contract says
/// they look: of one of `instance`'s claims, labelled with the cluster and
/// the backup, owned by the backup, the cluster's spec in an annotation,
/// ready to use; returns them.
fn check_snapshots(k: &Kubectl, ns: &str, cluster: &str, backup: &Value, instance: &str) -> anyhow::Result<Vec<Value>> {
    let name = text(backup, "/metadata/name");
    let recorded = recorded_snapshots(backup);
    ensure!(!recorded.is_empty(), "DatabaseBackup {name} is Completed but records no snapshot: {}", backup["status"]);
    let mut found = Vec::new();
    for entry in &recorded {
        let snapshot_name = text(entry, "/name");
        let claim = text(entry, "/persistentVolumeClaim");
        ensure!(
            entry["readyToUse"] == true,
            "DatabaseBackup {name} is Completed, but its snapshot {snapshot_name} is recorded with readyToUse {}",
            entry["readyToUse"]
        );
        ensure!(
            claim.ends_with(&format!("-{instance}")),
            "the snapshot {snapshot_name} is of the claim {claim:?}, not of a claim of the backed-up instance {instance}"
        );
        let snapshot = k
            .get(VS, ns, &snapshot_name)?
            .with_context(|| format!("the VolumeSnapshot {ns}/{snapshot_name} that {name} records does not exist"))?;
        let labels = snapshot.pointer("/metadata/labels").cloned().unwrap_or(Value::Null);
        ensure!(
            labels.get(stead_crds::names::BACKUP_CLUSTER_LABEL) == Some(&json!(cluster))
                && labels.get(stead_crds::names::BACKUP_LABEL) == Some(&json!(name)),
            "VolumeSnapshot {snapshot_name} should carry the labels stead.dev/cluster={cluster} and \
             stead.dev/backup={name}; it has {labels}"
        );
        let owners = snapshot.pointer("/metadata/ownerReferences").cloned().unwrap_or(Value::Null);
        let owned = owners.as_array().is_some_and(|owners| {
            owners.iter().any(|o| {
                text(o, "/apiVersion") == "stead.dev/v1alpha1"
                    && text(o, "/kind") == "DatabaseBackup"
                    && text(o, "/name") == name
                    && text(o, "/uid") == text(backup, "/metadata/uid")
            })
        });
        ensure!(
            owned,
            "VolumeSnapshot {snapshot_name} is not owned by the DatabaseBackup {name}: ownerReferences {owners}"
        );
        ensure!(
            text(&snapshot, "/spec/source/persistentVolumeClaimName") == claim,
            "VolumeSnapshot {snapshot_name} snapshots {:?}, the backup records {claim:?}",
            text(&snapshot, "/spec/source/persistentVolumeClaimName")
        );
        let spec = snapshot
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(stead_crds::names::CLUSTER_SPEC_ANNOTATION))
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str::<Value>(s).ok());
        ensure!(
            spec.as_ref().is_some_and(|s| s.get("storage").is_some()),
            "VolumeSnapshot {snapshot_name} lacks the cluster's spec as JSON in the annotation {}: annotations {}",
            stead_crds::names::CLUSTER_SPEC_ANNOTATION,
            snapshot.pointer("/metadata/annotations").cloned().unwrap_or(Value::Null)
        );
        ensure!(
            snapshot.pointer("/status/readyToUse") == Some(&json!(true)),
            "VolumeSnapshot {snapshot_name}: status {}",
            snapshot["status"]
        );
        found.push(snapshot);
    }
    Ok(found)
}

/// `kubectl get dbb` shows the backup with its cluster and phase.
fn check_printer_columns(k: &Kubectl, ns: &str, name: &str, cluster: &str, phase: &str) -> anyhow::Result<()> {
    let output = expect_ok(k.run(&["get", "dbb", name, "-n", ns])?)?;
    let rows = table(&output);
    let header = ["NAME", "CLUSTER", "PHASE", "AGE"].map(str::to_owned);
    ensure!(rows.first().map(Vec::as_slice) == Some(&header[..]), "`kubectl get dbb` shows other columns:\n{output}");
    let row = rows.get(1).context("`kubectl get dbb` shows no row")?;
    ensure!(
        row.len() == 4 && row[..3] == [name.to_owned(), cluster.to_owned(), phase.to_owned()],
        "`kubectl get dbb` should show {name} {cluster} {phase} and an age:\n{output}"
    );
    Ok(())
}

/// (a) `kubectl apply` of a DatabaseBackup of `orders`: it completes from a
/// streaming replica with one ready VolumeSnapshot per claim (labelled,
/// owned by the backup) and both LSNs; the cluster reports the success;
/// the replica streams again afterwards.
pub fn backup_of_a_replica_completes(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let snapshotter = snapshotter(ctx)?;
    ensure_orders(ctx)?;
    let k = &ctx.kubectl;
    let cluster = wait_until_streaming(k, NS, ORDERS, 3)?;
    let (primary, replicas) = roles_of(&cluster);
    if k.get(DBB, NS, BACKUP)?.is_some() {
        expect_ok(k.run(&["delete", DBB, BACKUP, "-n", NS, "--wait=false"])?)?;
        wait_until_gone(k, DBB, NS, BACKUP)?;
    }
    // A row every instance has before the backup starts.
    let password = superuser_password(k, NS, ORDERS)?;
    let primary_ip = pod_ips(k, NS, &[primary.as_str()])?;
    write_row(&primary_ip[0], &password)?;
    let replica_names: Vec<&str> = replicas.iter().map(String::as_str).collect();
    for ip in pod_ips(k, NS, &replica_names)? {
        wait_for_row(&ip, &password)?;
    }

    let taken_before = snapshotter.counts().taken;
    let started = Instant::now();
    expect_ok(k.apply(&backup_object(NS, BACKUP, ORDERS), &[])?)?;
    let done = wait_for_phase(k, NS, BACKUP, "Completed", BACKUP_TIMEOUT)?;
    ctx.figures.push(format!(
        "kubectl apply of a DatabaseBackup to Completed (a replica of 3, VolumeSnapshot by directory copy): {:.1}s",
        started.elapsed().as_secs_f64()
    ));

    let instance = text(&done, "/status/instance");
    ensure!(
        replicas.contains(&instance) && instance != primary,
        "the backup should be taken from a streaming replica ({replicas:?}; {primary} is the primary), \
         status.instance is {instance:?}"
    );
    let (begin, end) = (text(&done, "/status/beginLSN"), text(&done, "/status/endLSN"));
    match (parse_lsn(&begin), parse_lsn(&end)) {
        (Some(b), Some(e)) => ensure!(e >= b, "endLSN {end} is before beginLSN {begin}"),
        _ => bail!("beginLSN {begin:?} and endLSN {end:?} should both be WAL positions such as 0/3000028"),
    }
    let (started_at, stopped_at) = (text(&done, "/status/startedAt"), text(&done, "/status/stoppedAt"));
    ensure!(
        !started_at.is_empty() && !stopped_at.is_empty(),
        "startedAt {started_at:?} and stoppedAt {stopped_at:?} should both be set"
    );
    let snapshots = check_snapshots(k, NS, ORDERS, &done, &instance)?;
    let taken = snapshotter.counts().taken - taken_before;
    ensure!(
        taken == snapshots.len() as u64,
        "the stand-in snapshotter took {taken} snapshots for a backup that records {}",
        snapshots.len()
    );
    for snapshot in &snapshots {
        let copy = snapshotter.copy_of(NS, &text(snapshot, "/metadata/uid"));
        ensure!(
            copy.is_dir(),
            "the stand-in snapshotter has no copy of {} at {}",
            text(snapshot, "/metadata/name"),
            copy.display()
        );
    }
    check_printer_columns(k, NS, BACKUP, ORDERS, "Completed")?;

    let reported = wait_for_cluster(k, NS, ORDERS, "LastBackupSucceeded=True", REACT_TIMEOUT, |c| {
        last_backup_succeeded(c).0 == "True" && !text(c, "/status/lastSuccessfulBackup").is_empty()
    })?;

    // A row after the backup, which a restore must not have.
    psql(
        &primary_ip[0],
        &password,
        &format!("INSERT INTO e2e_rows VALUES ({LATER_ROW}, 'written after the backup') ON CONFLICT (id) DO NOTHING"),
    )
    .context("writing a row after the backup")?;
    // The instance is out of backup mode: it streams (and is a replica) again.
    let after = wait_until_streaming(k, NS, ORDERS, 3).context("the backed-up replica should stream again")?;
    ensure!(pod_role(k, NS, &instance)? == "replica", "{instance} is no longer labelled replica after the backup");
    ensure!(
        text(&after, "/status/currentPrimary") == primary,
        "the backup moved the primary from {primary} to {}",
        text(&after, "/status/currentPrimary")
    );
    // Last, as documented_reason: the API says lastSuccessfulBackup is the backup's startedAt.
    let last = text(&reported, "/status/lastSuccessfulBackup");
    let when = if last == started_at {
        Ok(())
    } else {
        Err(format!(
            "status.lastSuccessfulBackup is {last:?}, but the backup's startedAt is {started_at:?} (stoppedAt \
             {stopped_at:?}); the API documents it as \"when the latest backup that completed was taken (its \
             startedAt)\": the controller and the API disagree"
        ))
    };
    let reason = documented_reason(&reported, "Completed").map_err(|e| e.to_string());
    let disagreements: Vec<String> = [when, reason].into_iter().filter_map(Result::err).collect();
    ensure!(disagreements.is_empty(), "{}", disagreements.join("; "));
    Ok(())
}

/// The Completed manual backup of `orders`, taken first when it is not there.
fn ensure_backup(ctx: &mut Ctx<'_>) -> anyhow::Result<Value> {
    if ctx.kubectl.get(DBB, NS, BACKUP)?.is_none() {
        say(&format!("e2e:   (taking the backup {BACKUP} first)"));
        backup_of_a_replica_completes(ctx)?;
    }
    wait_for_phase(&ctx.kubectl, NS, BACKUP, "Completed", BACKUP_TIMEOUT)
}

/// The data snapshot of a backup: the one of its `data-…` claim, else the first.
fn data_snapshot(backup: &Value) -> anyhow::Result<String> {
    let recorded = recorded_snapshots(backup);
    recorded
        .iter()
        .find(|s| text(s, "/persistentVolumeClaim").starts_with("data-"))
        .or_else(|| recorded.first())
        .map(|s| text(s, "/name"))
        .with_context(|| format!("the backup records no snapshot: {}", backup["status"]))
}

/// (c) A new cluster `restored` with `spec.bootstrap.fromBackup` naming the
/// backup of `orders`: ordinal 0's claim is created from its snapshot, the
/// cluster becomes Available with the row written before the backup (and
/// not the one after), takes the new cluster's password and refuses the
/// source's, and its second instance clones from it.
pub fn restore_into_a_new_cluster(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    snapshotter(ctx)?;
    ensure_orders(ctx)?;
    let backup = ensure_backup(ctx)?;
    let k = &ctx.kubectl;
    let snapshot = data_snapshot(&backup)?;
    if k.get(DBC, NS, RESTORED)?.is_some() {
        expect_ok(k.run(&["delete", DBC, RESTORED, "-n", NS, "--wait=false"])?)?;
        wait_until_gone(k, DBC, NS, RESTORED)?;
        for claim in ["data-restored-0", "data-restored-1"] {
            let _ = k.run(&["delete", "pvc", claim, "-n", NS, "--wait=false"])?;
            wait_until_gone(k, "pvc", NS, claim)?;
        }
    }
    let mut spec = spec_with_replicas(1);
    spec["bootstrap"] = json!({"fromBackup": {"name": BACKUP}});
    let started = Instant::now();
    expect_ok(k.apply(&crate::clusters::cluster(NS, RESTORED, spec), &[])?)?;

    let claim = wait_for_object(k, "pvc", NS, "data-restored-0")?;
    let source = claim.pointer("/spec/dataSource").cloned().unwrap_or(Value::Null);
    ensure!(
        source == json!({"apiGroup": snapshotter::GROUP, "kind": "VolumeSnapshot", "name": snapshot}),
        "the claim data-restored-0 should be created from the VolumeSnapshot {snapshot}; its spec.dataSource is {source}"
    );
    let restored = wait_for_cluster(k, NS, RESTORED, "Available=True/PrimaryReady", AVAILABLE_TIMEOUT, |c| {
        has_condition(c, "Available", "True", "PrimaryReady")
    })?;
    ctx.figures.push(format!(
        "kubectl apply of a cluster restored from a backup to Available=True/PrimaryReady: {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    ensure!(
        text(&restored, "/status/currentPrimary") == "restored-0",
        "status.currentPrimary of the restored cluster is {:?}",
        text(&restored, "/status/currentPrimary")
    );

    let new_password = superuser_password(k, NS, RESTORED)?;
    let old_password = superuser_password(k, NS, ORDERS)?;
    ensure!(
        new_password != old_password,
        "the restored cluster's credentials Secret holds the source cluster's password; it should have its own"
    );
    let ip = pod_ips(k, NS, &["restored-0"])?;
    wait_for_row(&ip[0], &new_password)
        .context("the row written before the backup should be in the restored cluster")?;
    let refused = psql(&ip[0], &old_password, "SELECT 1");
    ensure!(
        refused.as_ref().is_err_and(|e| e.to_string().contains("password authentication failed")),
        "the restored cluster should refuse the source cluster's password; psql said {refused:?}"
    );
    let later = psql(&ip[0], &new_password, &format!("SELECT count(*) FROM e2e_rows WHERE id = {LATER_ROW}"))?;
    ensure!(
        later == "0",
        "the restored cluster has the row written after the backup: the restore is not of that point"
    );
    let in_recovery = psql(&ip[0], &new_password, "SELECT pg_is_in_recovery()")?;
    ensure!(
        in_recovery == "f",
        "restored-0 is still in recovery (pg_is_in_recovery {in_recovery}); it should be a primary"
    );
    psql(&ip[0], &new_password, "INSERT INTO e2e_rows VALUES (12, 'written to the restored cluster')")
        .context("a write on the restored primary")?;

    // Its second instance clones from the restored primary, not from a snapshot.
    expect_ok(k.run(&["scale", DBC, RESTORED, "--replicas=2", "-n", NS])?)?;
    wait_until_streaming(k, NS, RESTORED, 2)?;
    let second = k.get("pvc", NS, "data-restored-1")?.context("the claim data-restored-1 does not exist")?;
    ensure!(
        second.pointer("/spec/dataSource").is_none(),
        "only ordinal 0 is restored from the snapshot; data-restored-1 has dataSource {}",
        second["spec"]["dataSource"]
    );
    let replica = pod_ips(k, NS, &["restored-1"])?;
    wait_for_row(&replica[0], &new_password).context("the replica cloned from the restored primary")?;
    let written = psql(&replica[0], &new_password, "SELECT count(*) FROM e2e_rows WHERE id = 12")?;
    ensure!(written == "1", "the replica of the restored cluster lacks the row written to its primary");
    // The source is untouched.
    wait_until_streaming(k, NS, ORDERS, 3).context("the source cluster after the restore")?;
    expect_ok(k.run(&["delete", DBC, RESTORED, "-n", NS, "--wait=false"])?)?;
    Ok(())
}

/// Forgets injected snapshot failures however the scenario ends.
struct ClearFailures<'a>(&'a Snapshotter);

impl Drop for ClearFailures<'_> {
    fn drop(&mut self) {
        self.0.clear_failures();
    }
}

/// A snapshot whose driver fails fails the backup once the controller's
/// grace has passed, with the snapshotter's error in its status and in the
/// cluster's condition; the instance leaves backup mode and streams again.
pub fn failed_snapshot_fails_the_backup(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    const DOOMED: &str = "orders-doomed";
    let snapshotter = snapshotter(ctx)?;
    ensure_orders(ctx)?;
    let k = &ctx.kubectl;
    let cluster = wait_until_streaming(k, NS, ORDERS, 3)?;
    let _clear = ClearFailures(snapshotter);
    for instance in instances(&cluster) {
        snapshotter.fail_next(NS, &format!("data-{}", text(&instance, "/name")), INJECTED_ERROR);
    }
    let failed_before = snapshotter.counts().failed;
    if k.get(DBB, NS, DOOMED)?.is_some() {
        expect_ok(k.run(&["delete", DBB, DOOMED, "-n", NS, "--wait=false"])?)?;
        wait_until_gone(k, DBB, NS, DOOMED)?;
    }
    expect_ok(k.apply(&backup_object(NS, DOOMED, ORDERS), &[])?)?;
    // The snapshot reports the error, as a CSI snapshotter does; the backup waits (snapshotters retry).
    let running = wait::until("the backup's VolumeSnapshot to report the driver's error", REACT_TIMEOUT, || {
        let backup = k.get(DBB, NS, DOOMED)?.context("the backup is gone")?;
        let snapshots =
            expect_ok(k.run(&["get", VS, "-n", NS, "-l", &format!("stead.dev/backup={DOOMED}"), "-o", "json"])?)?;
        let list: Value = serde_json::from_str(&snapshots).context("kubectl printed no JSON")?;
        let erred = list["items"].as_array().into_iter().flatten().any(|s| {
            text(s, "/status/error/message") == INJECTED_ERROR && s.pointer("/status/readyToUse") == Some(&json!(false))
        });
        Ok(if erred {
            Poll::Ready(backup)
        } else {
            Poll::Pending(format!("backup status {}; snapshots {}", backup["status"], list["items"]))
        })
    })?;
    ensure!(
        text(&running, "/status/phase") != "Completed",
        "the backup completed although its snapshot failed: {}",
        running["status"]
    );
    ensure!(
        snapshotter.counts().failed == failed_before + 1,
        "the snapshotter failed {} snapshots",
        snapshotter.counts().failed - failed_before
    );
    say(&format!(
        "e2e:   (the backup fails after the controller's {}s grace for snapshot errors)",
        SNAPSHOT_ERROR_GRACE.as_secs()
    ));
    let failed = wait_for_phase(k, NS, DOOMED, "Failed", SNAPSHOT_ERROR_GRACE + Duration::from_secs(90))?;
    let error = text(&failed, "/status/error");
    ensure!(
        error.contains(INJECTED_ERROR),
        "status.error of the failed backup should carry the snapshot's error; it is {error:?}"
    );
    ensure!(
        !text(&failed, "/status/stoppedAt").is_empty(),
        "a failed backup should record stoppedAt: {}",
        failed["status"]
    );
    check_printer_columns(k, NS, DOOMED, ORDERS, "Failed")?;
    let reported = wait_for_cluster(k, NS, ORDERS, "LastBackupSucceeded=False", REACT_TIMEOUT, |c| {
        last_backup_succeeded(c).0 == "False" && !text(c, "/status/lastFailedBackup").is_empty()
    })?;
    let message = condition(&reported, stead_crds::cluster::CONDITION_LAST_BACKUP_SUCCEEDED)
        .map(|c| text(c, "/message"))
        .unwrap_or_default();
    ensure!(
        message.contains(INJECTED_ERROR),
        "the LastBackupSucceeded message should carry the error; it is {message:?}"
    );
    wait_until_streaming(k, NS, ORDERS, 3).context("after a failed backup every replica should stream again")?;
    documented_reason(&reported, "Failed")
}

/// The DatabaseBackups of `cluster` in `ns`, oldest first: (name, phase).
fn backups_of(k: &Kubectl, ns: &str, cluster: &str) -> anyhow::Result<Vec<(String, String, Value)>> {
    let out = expect_ok(k.run(&["get", DBB, "-n", ns, "-o", "json"])?)?;
    let list: Value = serde_json::from_str(&out).context("kubectl printed no JSON")?;
    let mut found: Vec<(String, String, Value)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| text(b, "/spec/cluster") == cluster && b.pointer("/metadata/deletionTimestamp").is_none())
        .map(|b| (text(b, "/metadata/name"), text(b, "/status/phase"), b.clone()))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// `<cluster>-<yyyymmddhhmm>`: the slot, in UTC.
pub(crate) fn scheduled_slot(cluster: &str, name: &str) -> Option<Timestamp> {
    let stamp = name.strip_prefix(cluster)?.strip_prefix('-')?;
    if stamp.len() != 12 || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let text = format!("{}-{}-{}T{}:{}:00Z", &stamp[..4], &stamp[4..6], &stamp[6..8], &stamp[8..10], &stamp[10..12]);
    text.parse().ok()
}

/// Events in the namespace about a deletion whose note names `needle`.
fn deletion_events_naming(k: &Kubectl, ns: &str, needle: &str) -> anyhow::Result<Vec<String>> {
    let out = expect_ok(k.run(&["get", "events.events.k8s.io", "-n", ns, "-o", "json"])?)?;
    let list: Value = serde_json::from_str(&out).context("kubectl printed no JSON")?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| text(e, "/note").contains(needle))
        .filter(|e| format!("{} {}", text(e, "/reason"), text(e, "/note")).to_lowercase().contains("delet"))
        .map(|e| format!("{}: {}", text(e, "/reason"), text(e, "/note")))
        .collect())
}

/// (b) `spec.backup.schedule: "* * * * *"` (admitted with the webhook's
/// warning) takes a backup named `<cluster>-<yyyymmddhhmm>` each minute,
/// one at a time, with `status.nextScheduledBackup` set; with
/// `retention.keepLast: 1` the older one is deleted once the next
/// completes, its VolumeSnapshot with it (garbage collector), and the
/// deletion is an event. About two minutes; suspended and deleted at the end.
pub fn scheduled_backups_keep_the_last_one(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    const SCHEDULE_NS: &str = "e2e-backup-schedule";
    const NAME: &str = "minutely";
    let snapshotter = snapshotter(ctx)?;
    ctx.pod_namespace(SCHEDULE_NS)?;
    let k = &ctx.kubectl;
    let mut spec = spec_with_replicas(1);
    spec["backup"] = json!({"schedule": "* * * * *", "retention": {"keepLast": 1}});
    let applied_at = Timestamp::now();
    let applied = k.apply(&crate::clusters::cluster(SCHEDULE_NS, NAME, spec), &[])?;
    ensure!(
        applied.success() && applied.stderr.contains("Warning:") && applied.stderr.contains("spec.backup.schedule"),
        "a schedule every minute should be admitted with the webhook's warning about spec.backup.schedule:\n{}",
        applied.describe()
    );
    wait_for_cluster(k, SCHEDULE_NS, NAME, "Available=True/PrimaryReady", AVAILABLE_TIMEOUT, |c| {
        has_condition(c, "Available", "True", "PrimaryReady")
    })?;
    let next = wait_for_cluster(k, SCHEDULE_NS, NAME, "status.nextScheduledBackup set", REACT_TIMEOUT, |c| {
        !text(c, "/status/nextScheduledBackup").is_empty()
    })?;
    let next: Timestamp =
        text(&next, "/status/nextScheduledBackup").parse().context("status.nextScheduledBackup is not a time")?;
    ensure!(next.as_second() % 60 == 0, "status.nextScheduledBackup {next} is not on a minute, as `* * * * *` fires");

    // Never more than two at once: the one kept and the one being taken.
    let at_most_two = |found: &[(String, String, Value)]| -> anyhow::Result<()> {
        let names: Vec<&str> = found.iter().map(|(n, _, _)| n.as_str()).collect();
        ensure!(found.len() <= 2, "{} backups of {NAME} at once (keepLast 1, one at a time): {names:?}", found.len());
        Ok(())
    };
    let first = wait::until(&format!("a scheduled backup of {NAME}"), Duration::from_secs(75), || {
        let found = backups_of(k, SCHEDULE_NS, NAME)?;
        at_most_two(&found)?;
        Ok(match found.first() {
            Some((name, _, _)) => Poll::Ready(name.clone()),
            None => Poll::Pending("no DatabaseBackup yet".to_owned()),
        })
    })?;
    let slot = scheduled_slot(NAME, &first)
        .with_context(|| format!("the scheduled backup is named {first:?}, not {NAME}-<yyyymmddhhmm>"))?;
    let earliest = applied_at.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(60))?;
    ensure!(
        slot >= earliest && slot <= Timestamp::now(),
        "the scheduled backup {first} is for the slot {slot}, not one since the cluster was applied at {applied_at}"
    );
    let completed = wait_for_phase(k, SCHEDULE_NS, &first, "Completed", BACKUP_TIMEOUT)?;
    let first_snapshots: Vec<(String, String)> = recorded_snapshots(&completed)
        .iter()
        .filter_map(|s| k.get(VS, SCHEDULE_NS, &text(s, "/name")).ok().flatten())
        .map(|s| (text(&s, "/metadata/name"), text(&s, "/metadata/uid")))
        .collect();
    ensure!(!first_snapshots.is_empty(), "the completed scheduled backup {first} has no VolumeSnapshot");

    let second =
        wait::until("the next scheduled backup to complete", Duration::from_secs(75) + BACKUP_TIMEOUT, || {
            let found = backups_of(k, SCHEDULE_NS, NAME)?;
            at_most_two(&found)?;
            Ok(match found.iter().find(|(name, phase, _)| *name != first && phase == "Completed") {
                Some((name, _, _)) => Poll::Ready(name.clone()),
                None => {
                    Poll::Pending(format!("{:?}", found.iter().map(|(n, p, _)| format!("{n} {p}")).collect::<Vec<_>>()))
                }
            })
        })?;
    ensure!(
        scheduled_slot(NAME, &second).is_some_and(|s| s > slot),
        "the next backup {second} is not for a later slot than {first}"
    );
    wait_until_gone(k, DBB, SCHEDULE_NS, &first).context("retention keepLast 1 should delete the older backup")?;
    ensure!(k.get(DBB, SCHEDULE_NS, &second)?.is_some(), "retention deleted the newest completed backup {second}");
    if ctx.garbage_collection {
        for (snapshot, uid) in &first_snapshots {
            wait_until_gone(k, VS, SCHEDULE_NS, snapshot)
                .with_context(|| format!("the garbage collector should delete {snapshot} with its backup {first}"))?;
            let copy = snapshotter.copy_of(SCHEDULE_NS, uid);
            wait::until("the stand-in snapshotter to remove the deleted snapshot's copy", REACT_TIMEOUT, || {
                Ok(if copy.exists() { Poll::Pending(copy.display().to_string()) } else { Poll::Ready(()) })
            })?;
        }
    } else {
        say("e2e:   (no kube-controller-manager: the VolumeSnapshots of the deleted backup are not checked)");
    }
    let events = wait::until(&format!("an event recording the deletion of {first}"), REACT_TIMEOUT, || {
        let events = deletion_events_naming(k, SCHEDULE_NS, &first)?;
        Ok(if events.is_empty() { Poll::Pending("no deletion event names it".to_owned()) } else { Poll::Ready(events) })
    })?;
    say(&format!("e2e:   (retention: {})", events.join("; ")));

    // Suspended, the schedule has no next time; then the cluster goes.
    expect_ok(k.run(&[
        "patch",
        DBC,
        NAME,
        "-n",
        SCHEDULE_NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"backup":{"suspend":true}}}"#,
    ])?)?;
    let suspended =
        wait_for_cluster(k, SCHEDULE_NS, NAME, "no status.nextScheduledBackup while suspended", REACT_TIMEOUT, |c| {
            text(c, "/status/nextScheduledBackup").is_empty()
        });
    // Its pods go whatever the status said.
    expect_ok(k.run(&["delete", DBC, NAME, "-n", SCHEDULE_NS, "--wait=false"])?)?;
    suspended
        .context("the API documents status.nextScheduledBackup as absent while spec.backup.suspend is true")
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn lsns_compare_as_wal_positions() {
        assert_eq!(parse_lsn("0/3000028"), Some(0x0300_0028));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert!(parse_lsn("1/0").unwrap() > parse_lsn("0/FFFFFFFF").unwrap());
        assert_eq!(parse_lsn(""), None);
        assert_eq!(parse_lsn("x/1"), None);
    }

    #[test]
    fn scheduled_names_carry_their_slot() {
        let slot = scheduled_slot("minutely", "minutely-202503300130").unwrap();
        assert_eq!(slot.to_string(), "2025-03-30T01:30:00Z");
        // The crate's naming, read back.
        assert_eq!(scheduled_slot("minutely", &stead_crds::names::scheduled_backup_name("minutely", slot)), Some(slot));
        assert_eq!(scheduled_slot("minutely", "minutely-2025033001"), None);
        assert_eq!(scheduled_slot("minutely", "other-202503300130"), None);
        assert_eq!(scheduled_slot("minutely", "minutely-20250330013x"), None);
    }

    #[test]
    fn a_backup_object_is_what_the_rules_admit() {
        let object = backup_object("ns", "orders-by-hand", "orders");
        let backup: stead_crds::backup::DatabaseBackup = serde_json::from_value(object).unwrap();
        assert_eq!(backup.spec.cluster, "orders");
        assert_eq!(backup.phase(), "Pending");
    }
}
