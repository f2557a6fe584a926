//! Supervision with real PostgreSQL: a killed postmaster is restarted and
//! counted, liveness stays green while the manager restarts it, and turns
//! red only once the manager gives up. Also: the manager refuses root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::{Sandbox, eventually};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_postmaster_is_restarted_until_the_limit() {
    let Some(pg_bin) = support::require_postgres("a_killed_postmaster_is_restarted_until_the_limit") else { return };
    let started = Instant::now();
    let sandbox = Sandbox::new(pg_bin, "live");
    // One restart allowed: the second crash in a row is the last.
    let mut manager = sandbox.start(0, &[("STEAD_RESTART_LIMIT", "1")]);
    let answer = manager.post("/bootstrap", r#"{"mode":"initdb"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, manager.log());
    assert_eq!(answer.json()["restarts"], 0);

    // SIGKILL the postmaster: the manager notices, cleans up, restarts it.
    let first = manager.postmaster_pid().expect("postmaster.pid");
    support::signal(u32::try_from(first).unwrap(), Signal::KILL);
    let mut saw_it_down = false;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let health = manager.request("GET", "/healthz", None, None).await;
        assert_eq!(health.status, 200, "liveness stays green while restarting: {}", health.body);
        let status = manager.status().await;
        saw_it_down |= status["postmaster"] != "running";
        if status["restarts"] == 1 && status["ready"] == true {
            break status;
        }
        assert!(Instant::now() < deadline, "no restart within {WAIT:?}: {status}\n{}", manager.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["role"], "primary", "{status}");
    let second = manager.postmaster_pid().expect("postmaster.pid after the restart");
    assert_ne!(first, second, "a new postmaster runs");
    assert!(manager.log().contains("postmaster exited unexpectedly"), "{}", manager.log());
    eprintln!("restart observed after {:.1}s (saw it down: {saw_it_down})", started.elapsed().as_secs_f64());
    let client = manager.sql().await;
    client.batch_execute("CREATE TABLE after_restart (id int)").await.unwrap();
    drop(client);

    // A second crash right away exceeds the limit: liveness fails, with the reason.
    support::signal(u32::try_from(second).unwrap(), Signal::KILL);
    let reason = eventually("liveness fails", WAIT, || async {
        let health = manager.request("GET", "/healthz", None, None).await;
        (health.status == 503).then(|| health.json()["message"].as_str().unwrap().to_owned())
    })
    .await;
    assert!(reason.contains("stopped restarting"), "{reason}");
    let status = manager.status().await;
    assert_eq!(status["postmaster"], "crashed", "{status}");
    assert_eq!(status["ready"], false);
    let readyz = manager.request("GET", "/readyz", None, None).await;
    assert_eq!(readyz.status, 503);
    // The manager SIGKILLs them; dying takes a moment.
    eventually("the killed postmaster's children are gone", Duration::from_secs(5), || async {
        manager.leftover_processes().is_empty().then_some(())
    })
    .await;

    if let Some(kib) = manager.peak_rss_kib() {
        eprintln!("{}: stead-instance peak RSS (VmHWM) {kib} KiB", manager.pod);
    }
    assert_eq!(manager.terminate(Duration::from_secs(30)), Some(0), "{}", manager.log());
    eprintln!("total: {:.1}s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_database_starts_at_once_in_its_role() {
    let Some(pg_bin) = support::require_postgres("an_existing_database_starts_at_once_in_its_role") else { return };
    let sandbox = Sandbox::new(pg_bin, "exist");
    let mut manager = sandbox.start(0, &[]);
    let answer = manager.post("/bootstrap", r#"{"mode":"initdb"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, manager.log());
    let system_identifier = answer.json()["systemIdentifier"].clone();
    assert_eq!(manager.terminate(Duration::from_secs(30)), Some(0));

    // Same PGDATA, new manager: no /bootstrap needed, the data decides.
    let mut again = sandbox.start(0, &[]);
    let status = again.wait_status("primary and ready", WAIT, |s| s["role"] == "primary" && s["ready"] == true).await;
    assert_eq!(status["systemIdentifier"], system_identifier);
    assert_eq!(again.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn refuses_to_run_as_root() {
    if !rustix::process::geteuid().is_root() {
        println!("refuses_to_run_as_root: skipped: the tests do not run as root");
        return;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stead-instance"))
        .env("STEAD_POD_NAME", "orders-0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("must not run as root"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_secret_is_refused_at_start() {
    let Some(pg_bin) = support::require_postgres("an_incomplete_secret_is_refused_at_start") else { return };
    let sandbox = Sandbox::new(pg_bin, "secret");
    std::fs::remove_file(sandbox.path().join("secret").join("replication-password")).unwrap();
    let mut manager = sandbox.start_unchecked(0);
    assert_eq!(manager.wait_exit(WAIT), Some(1), "{}", manager.log());
    let log = manager.log();
    assert!(log.contains("the replication-password key of the credentials Secret"), "{log}");
    assert!(!manager.pgdata.exists(), "nothing was started or created");
}

#[test]
fn install_copies_the_binary_where_another_image_can_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("stead-instance");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_stead-instance"))
        .args(["install", target.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o755);
    assert_eq!(meta.len(), std::fs::metadata(env!("CARGO_BIN_EXE_stead-instance")).unwrap().len());
    // The copy runs: it prints its version.
    let out = std::process::Command::new(&target).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("stead-instance "), "{out:?}");
}
