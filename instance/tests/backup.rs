//! Backups and restore with real PostgreSQL: a hot backup of a serving
//! primary, the bound that ends an unstopped one, a stale marker removed at
//! startup, and a cold backup of a fenced replica whose data directory copy
//! is restored into a new instance (another pod) as its primary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{Manager, Sandbox};

const WAIT: Duration = Duration::from_secs(30);
const MARKER: &str = "stead-backup.json";

fn lsn(value: &serde_json::Value) -> u64 {
    let text = value.as_str().unwrap_or_else(|| panic!("not an LSN: {value}"));
    let (high, low) = text.split_once('/').unwrap();
    (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap()
}

fn message(answer: &support::Answer) -> String {
    answer.json()["message"].as_str().unwrap_or_default().to_owned()
}

fn marker(manager: &Manager) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(manager.pgdata.join(MARKER)).ok()?;
    Some(serde_json::from_str(&text).unwrap())
}

async fn keys(manager: &Manager, password: &str) -> Vec<String> {
    let client = manager.sql_as(password).await.unwrap();
    let rows = client.query("SELECT key FROM backed_up ORDER BY key", &[]).await.unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_backup_of_a_serving_primary_and_the_bound_on_an_unstopped_one() {
    let Some(pg_bin) = support::require_postgres("a_hot_backup_of_a_serving_primary") else { return };
    let started = Instant::now();
    let sandbox = Sandbox::new(pg_bin, "hot");
    let mut primary = sandbox.start(0, &[]);
    let answer = primary.post("/bootstrap", r#"{"mode":"initdb"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, primary.log());
    let system_identifier = answer.json()["systemIdentifier"].clone();
    let client = primary.sql().await;
    client
        .batch_execute("CREATE TABLE backed_up (key text PRIMARY KEY); INSERT INTO backed_up VALUES ('before')")
        .await
        .unwrap();

    // Refusals first: nothing is written for them.
    let cold = primary.post("/backup/start", r#"{"mode":"cold","label":"b0"}"#).await;
    assert_eq!(cold.status, 409, "{}", cold.body);
    assert!(message(&cold).contains("a cold backup stops postgres; only a replica is fenced for one"), "{}", cold.body);
    let bad = primary.post("/backup/start", r#"{"mode":"hot","label":"two\nlines"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(message(&bad).contains("printable characters"), "{}", bad.body);
    assert_eq!(primary.post("/backup/start", r#"{"mode":"warm","label":"b0"}"#).await.status, 400);
    assert_eq!(primary.post("/backup/start", "").await.status, 400);
    assert!(marker(&primary).is_none());

    // Start: the marker is in PGDATA before the answer, and postgres serves on.
    let answer = primary.post("/backup/start", r#"{"mode":"hot","label":"b1"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, primary.log());
    let started_backup = answer.json();
    assert_eq!((started_backup["mode"].as_str(), started_backup["label"].as_str()), (Some("hot"), Some("b1")));
    let begin = lsn(&started_backup["beginLsn"]);
    let written = marker(&primary).expect("the marker is written before the answer");
    assert_eq!(written["label"], "b1");
    assert_eq!(written["mode"], "hot");
    assert_eq!(written["namespace"], "test");
    assert_eq!(written["pod"], primary.pod.as_str());
    assert_eq!(written["systemIdentifier"], system_identifier);
    assert_eq!(lsn(&written["beginLsn"]), begin);
    assert!(written["createdAt"].as_str().unwrap().ends_with('Z'), "{written}");
    let mode = std::fs::metadata(primary.pgdata.join(MARKER)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let status = primary.status().await;
    assert_eq!(status["backup"]["label"], "b1", "{status}");
    assert_eq!(status["backup"]["mode"], "hot");
    assert_eq!((status["role"].as_str(), status["ready"].as_bool()), (Some("primary"), Some(true)), "{status}");
    client.execute("INSERT INTO backed_up VALUES ('during')", &[]).await.unwrap();

    // One at a time; the same start again answers as the first did.
    let second = primary.post("/backup/start", r#"{"mode":"hot","label":"b2"}"#).await;
    assert_eq!(second.status, 409, "{}", second.body);
    assert!(message(&second).contains("backup b1 (hot) runs on"), "{}", second.body);
    let again = primary.post("/backup/start", r#"{"mode":"hot","label":"b1"}"#).await;
    assert_eq!((again.status, lsn(&again.json()["beginLsn"])), (200, begin), "{}", again.body);
    let demote_blocked = primary.post("/backup/stop", r#"{"label":"nope"}"#).await;
    assert_eq!(demote_blocked.status, 404, "{}", demote_blocked.body);
    assert!(message(&demote_blocked).contains("the one running is b1"), "{}", demote_blocked.body);

    // Stop: the label file, an end after the begin, the marker gone.
    let answer = primary.post("/backup/stop", r#"{"label":"b1"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, primary.log());
    let stopped = answer.json();
    assert!(lsn(&stopped["endLsn"]) > begin, "{stopped} vs begin {begin:X}");
    let label_file = stopped["backupLabel"].as_str().unwrap();
    assert!(label_file.contains("START WAL LOCATION") && label_file.contains("LABEL: b1"), "{label_file}");
    assert!(marker(&primary).is_none(), "the stop removes the marker from the live data");
    assert!(primary.status().await.get("backup").is_none());
    let retried = primary.post("/backup/stop", r#"{"label":"b1"}"#).await;
    assert_eq!((retried.status, retried.json()), (200, stopped.clone()), "a retried stop answers the same");
    client.execute("INSERT INTO backed_up VALUES ('after')", &[]).await.unwrap();
    drop(client);
    eprintln!("hot backup: {:.1}s", started.elapsed().as_secs_f64());

    // A marker of this very pod found at startup is stale: removed, and postgres starts.
    assert_eq!(primary.terminate(WAIT), Some(0), "{}", primary.log());
    std::fs::write(primary.pgdata.join(MARKER), serde_json::to_vec(&written).unwrap()).unwrap();
    let mut primary = sandbox.start(0, &[("STEAD_BACKUP_TIMEOUT_SECONDS", "2")]);
    primary.wait_status("primary and ready", WAIT, |s| s["role"] == "primary" && s["ready"] == true).await;
    assert!(marker(&primary).is_none(), "the stale marker is removed");
    assert!(primary.log().contains("removing the marker of an interrupted backup"), "{}", primary.log());

    // The bound: a hot backup never stopped is aborted, its session closed, the marker removed.
    let answer = primary.post("/backup/start", r#"{"mode":"hot","label":"b3"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, primary.log());
    assert!(marker(&primary).is_some());
    primary.wait_status("the backup ended by the bound", WAIT, |s| s.get("backup").is_none()).await;
    assert!(marker(&primary).is_none());
    assert!(primary.log().contains("not stopped within 2s"), "{}", primary.log());
    let late = primary.post("/backup/stop", r#"{"label":"b3"}"#).await;
    assert_eq!(late.status, 409, "{}", late.body);
    assert!(message(&late).contains("aborted before this stop"), "{}", late.body);
    // postgres forgot that backup with its session: another one starts and stops.
    let answer = primary.post("/backup/start", r#"{"mode":"hot","label":"b4"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, primary.log());
    let answer = primary.post("/backup/stop", r#"{"label":"b4"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, primary.log());
    assert_eq!(keys(&primary, support::SUPERUSER_PASSWORD).await, ["after", "before", "during"]);
    assert_eq!(primary.terminate(WAIT), Some(0), "{}", primary.log());
    eprintln!("total: {:.1}s", started.elapsed().as_secs_f64());
}

/// `cp -a`: the copy keeps owners and modes, as a restored volume does.
fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_backup_of_a_replica_restores_into_a_new_primary() {
    let Some(pg_bin) = support::require_postgres("a_cold_backup_of_a_replica_restores") else { return };
    let started = Instant::now();
    let sandbox = Sandbox::new(pg_bin.clone(), "cold");
    let mut primary = sandbox.start(0, &[]);
    let mut replica = sandbox.start(1, &[]);
    let answer = primary.post("/bootstrap", r#"{"mode":"initdb"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, primary.log());
    let clone = format!(r#"{{"mode":"clone","primaryHost":"127.0.0.1","primaryPort":{}}}"#, primary.pg_port);
    let answer = replica.post("/bootstrap", &clone).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, replica.log());
    let writer = primary.sql().await;
    writer
        .batch_execute("CREATE TABLE backed_up (key text PRIMARY KEY); INSERT INTO backed_up VALUES ('before')")
        .await
        .unwrap();
    support::eventually("the row reaches the replica", WAIT, || async {
        let client = replica.sql().await;
        client.query_opt("SELECT 1 FROM backed_up WHERE key = 'before'", &[]).await.ok().flatten().map(drop)
    })
    .await;
    replica.wait_status("streaming", WAIT, |s| s["streaming"] == true && s["ready"] == true).await;

    // Fence: checkpoint, clean stop, the role kept, not ready, nothing restarts it.
    let answer = replica.post("/backup/start", r#"{"mode":"cold","label":"c1"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, replica.log());
    let begin = answer.json()["beginLsn"].clone();
    assert!(lsn(&begin) > 0, "{begin}");
    let status = replica.status().await;
    assert_eq!(
        (status["role"].as_str(), status["postmaster"].as_str(), status["ready"].as_bool()),
        (Some("replica"), Some("stopped"), Some(false)),
        "{status}"
    );
    assert_eq!((status["backup"]["mode"].as_str(), status["backup"]["label"].as_str()), (Some("cold"), Some("c1")));
    let readyz = replica.request("GET", "/readyz", None, None).await;
    assert_eq!(readyz.status, 503);
    assert!(message(&readyz).contains("stopped for the cold backup c1"), "{}", readyz.body);
    assert!(replica.postmaster_pid().is_none(), "postgres is stopped");
    let written = marker(&replica).expect("the marker is in the fenced data");
    assert_eq!((written["mode"].as_str(), written["beginLsn"].clone()), (Some("cold"), begin.clone()));
    let promote = replica.post("/promote", "").await;
    assert_eq!(promote.status, 409, "{}", promote.body);
    assert!(message(&promote).contains("cold backup c1"), "{}", promote.body);

    // The "snapshot": a copy of the fenced data directory, as the new cluster's ordinal 0 volume.
    let restored_sandbox = Sandbox::new(pg_bin, "rest");
    let node = restored_sandbox.path().join("n0");
    restored_sandbox.mkdir(&node);
    copy_dir(&replica.pgdata, &node.join("pgdata"));
    writer.execute("INSERT INTO backed_up VALUES ('after')", &[]).await.unwrap();

    // Stop: postgres back as the same replica; the marker gone from the live data.
    let answer = replica.post("/backup/stop", r#"{"label":"c1"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, replica.log());
    let stopped = answer.json();
    assert_eq!(stopped["endLsn"], begin, "{stopped}");
    assert!(stopped.get("backupLabel").is_none(), "{stopped}");
    assert!(marker(&replica).is_none());
    replica.wait_status("streaming again", WAIT, |s| s["streaming"] == true && s["ready"] == true).await;
    support::eventually("the row written while fenced arrives", WAIT, || async {
        let client = replica.sql().await;
        client.query_opt("SELECT 1 FROM backed_up WHERE key = 'after'", &[]).await.ok().flatten().map(drop)
    })
    .await;
    eprintln!("cold backup: {:.1}s", started.elapsed().as_secs_f64());

    // Restore: another pod, another Secret. The data waits; initdb and clone cannot overwrite it.
    const NEW_PASSWORD: &str = "restored'pass:3";
    restored_sandbox.write_secret("password", NEW_PASSWORD);
    let mut restored = restored_sandbox.start(0, &[]);
    let status = restored.status().await;
    assert_eq!(
        (status["role"].as_str(), status["postmaster"].as_str()),
        (Some("bootstrapping"), Some("stopped")),
        "{status}"
    );
    assert_eq!(status["restorable"]["label"], "c1", "{status}");
    assert_eq!(status["restorable"]["pod"], replica.pod.as_str());
    assert_eq!(status["restorable"]["beginLsn"], begin);
    assert_eq!(status["ready"], false);
    assert!(restored.postmaster_pid().is_none(), "restored data is not started by itself");
    for body in [r#"{"mode":"initdb"}"#.to_owned(), clone.clone()] {
        let refused = restored.post("/bootstrap", &body).await;
        assert_eq!(refused.status, 409, "{body}: {}", refused.body);
        assert!(message(&refused).contains("restored from backup c1"), "{}", refused.body);
    }
    let demote =
        restored.post("/demote", &format!(r#"{{"primaryHost":"127.0.0.1","primaryPort":{}}}"#, primary.pg_port)).await;
    assert_eq!(demote.status, 409, "{}", demote.body);

    let answer = restored.post("/bootstrap", r#"{"mode":"restore"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, restored.log());
    let status = answer.json();
    assert_eq!((status["role"].as_str(), status["ready"].as_bool()), (Some("primary"), Some(true)), "{status}");
    assert!(status.get("restorable").is_none(), "{status}");
    for gone in [MARKER, "standby.signal", "stead_upstream.json", "backup_label"] {
        assert!(!restored.pgdata.join(gone).exists(), "{gone} remains in the restored data");
    }
    assert_eq!(keys(&restored, NEW_PASSWORD).await, ["before"], "the rows of the backup, not the later one");
    let Err(old) = restored.sql_as(support::SUPERUSER_PASSWORD).await else {
        panic!("the source cluster's password still works on the restored primary")
    };
    assert!(old.contains("password authentication failed"), "{old}");
    let client = restored.sql_as(NEW_PASSWORD).await.unwrap();
    client.execute("INSERT INTO backed_up VALUES ('on the restored primary')", &[]).await.unwrap();
    let shown = client.query_one("SELECT current_setting('port'), pg_is_in_recovery()", &[]).await.unwrap();
    assert_eq!((shown.get::<_, String>(0), shown.get::<_, bool>(1)), (restored.pg_port.to_string(), false));
    drop(client);
    let again = restored.post("/bootstrap", r#"{"mode":"restore"}"#).await;
    assert_eq!(again.status, 409, "nothing left to restore: {}", again.body);
    eprintln!("restore: {:.1}s", started.elapsed().as_secs_f64());

    // The bound unfences a cold backup never stopped: postgres streams again, the marker is gone.
    assert_eq!(replica.terminate(WAIT), Some(0), "{}", replica.log());
    let mut replica = sandbox.start(1, &[("STEAD_BACKUP_TIMEOUT_SECONDS", "2")]);
    replica.wait_status("streaming after a restart", WAIT, |s| s["streaming"] == true && s["ready"] == true).await;
    let answer = replica.post("/backup/start", r#"{"mode":"cold","label":"c2"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, replica.log());
    assert_eq!(replica.status().await["postmaster"], "stopped");
    replica
        .wait_status("unfenced by the bound", WAIT, |s| {
            s.get("backup").is_none() && s["streaming"] == true && s["ready"] == true
        })
        .await;
    assert!(marker(&replica).is_none());
    assert!(replica.log().contains("not stopped within 2s"), "{}", replica.log());
    let late = replica.post("/backup/stop", r#"{"label":"c2"}"#).await;
    assert_eq!(late.status, 409, "{}", late.body);

    drop(writer);
    for manager in [&mut restored, &mut replica, &mut primary] {
        assert_eq!(manager.terminate(WAIT), Some(0), "{}: {}", manager.pod, manager.log());
    }
    eprintln!("total: {:.1}s", started.elapsed().as_secs_f64());
}
