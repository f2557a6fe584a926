//! One primary and two replicas as real stead-instance processes with real
//! PostgreSQL: bootstrap, streaming, status, promotion, demotion with
//! pg_rewind, and shutdown without leftovers. The steps build on each other,
//! so they are one test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::{Manager, Sandbox, TOKEN};

const WAIT: Duration = Duration::from_secs(30);

async fn read_on(manager: &Manager, key: &str) -> Option<String> {
    let client = manager.sql().await;
    let rows = client.query("SELECT value FROM stead_it WHERE key = $1", &[&key]).await.ok()?;
    rows.first().map(|row| row.get::<_, String>(0))
}

/// Polls `manager` until the row `key` is there; the failure shows its log.
async fn read_eventually(manager: &Manager, key: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = read_on(manager, key).await {
            return value;
        }
        if Instant::now() > deadline {
            let status = manager.status().await;
            panic!("{}: row {key:?} not there within {WAIT:?}; status {status}; log:\n{}", manager.pod, manager.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn streaming_replica(status: &serde_json::Value) -> bool {
    status["role"] == "replica" && status["streaming"] == true && status["ready"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_two_replicas_failover_and_rejoin() {
    let Some(pg_bin) = support::require_postgres("primary_two_replicas_failover_and_rejoin") else { return };
    let started = Instant::now();
    let mut step = Instant::now();
    let mut lap = |name: &str| {
        eprintln!("step {name}: {:.1}s", step.elapsed().as_secs_f64());
        step = Instant::now();
    };
    let sandbox = Sandbox::new(pg_bin, "rep");
    let mut primary = sandbox.start(0, &[]);
    let mut replica1 = sandbox.start(1, &[]);
    let mut replica2 = sandbox.start(2, &[]);

    // Before bootstrap: waiting, alive, not ready.
    let status = primary.status().await;
    assert_eq!(status["role"], "bootstrapping", "{status}");
    assert_eq!(status["postmaster"], "stopped");
    assert_eq!(primary.request("GET", "/healthz", None, None).await.status, 200);
    let readyz = primary.request("GET", "/readyz", None, None).await;
    assert_eq!(readyz.status, 503);
    assert!(readyz.json()["message"].as_str().unwrap().contains("waiting for POST /bootstrap"), "{}", readyz.body);

    // 1. Bootstrap the primary by initdb, the replicas by cloning it.
    let answer = primary.post("/bootstrap", r#"{"mode":"initdb"}"#).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, primary.log());
    let status = answer.json();
    assert_eq!((status["role"].as_str(), status["ready"].as_bool()), (Some("primary"), Some(true)), "{status}");
    let system_identifier = status["systemIdentifier"].as_str().unwrap().to_owned();
    lap("initdb");

    // User parameters apply; the ones stead owns (the port) do not.
    let writer = primary.sql().await;
    let shown =
        writer.query_one("SELECT current_setting('shared_buffers'), current_setting('port')", &[]).await.unwrap();
    assert_eq!(shown.get::<_, String>(0), "16MB");
    assert_eq!(shown.get::<_, String>(1), primary.pg_port.to_string());
    assert!(primary.log().contains("ignoring parameters that stead sets itself"), "{}", primary.log());

    // A clone that cannot reach its primary fails, says why, and leaves nothing behind.
    let unreachable = format!(r#"{{"mode":"clone","primaryHost":"127.0.0.1","primaryPort":{}}}"#, support::free_port());
    let failed = replica1.post("/bootstrap", &unreachable).await;
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert!(failed.json()["message"].as_str().unwrap().starts_with("pg_basebackup failed"), "{}", failed.body);
    assert!(!replica1.pgdata.exists(), "a failed clone leaves no PGDATA");
    assert_eq!(replica1.status().await["role"], "bootstrapping");

    let clone = format!(r#"{{"mode":"clone","primaryHost":"127.0.0.1","primaryPort":{}}}"#, primary.pg_port);
    for replica in [&replica1, &replica2] {
        let answer = replica.post("/bootstrap", &clone).await;
        assert_eq!(answer.status, 200, "{}: {}\n{}", replica.pod, answer.body, replica.log());
        assert_eq!(answer.json()["role"], "replica");
    }
    lap("clone x2");

    writer.batch_execute("CREATE TABLE stead_it (key text PRIMARY KEY, value text NOT NULL)").await.unwrap();
    writer.execute("INSERT INTO stead_it VALUES ('first', 'written on the primary')", &[]).await.unwrap();
    for replica in [&replica1, &replica2] {
        let value = read_eventually(replica, "first").await;
        assert_eq!(value, "written on the primary");
    }
    lap("replicate a row");

    // Bootstrap is idempotent and never runs over data.
    let again = primary.post("/bootstrap", r#"{"mode":"initdb"}"#).await;
    assert_eq!((again.status, again.json()["role"].as_str()), (200, Some("primary")), "{}", again.body);
    let wrong = primary.post("/bootstrap", &clone).await;
    assert_eq!(wrong.status, 409, "{}", wrong.body);
    assert!(
        wrong.json()["message"].as_str().unwrap().contains("never bootstraps over existing data"),
        "{}",
        wrong.body
    );
    let again = replica1.post("/bootstrap", &clone).await;
    assert_eq!(again.status, 200, "{}", again.body);

    // 2. Status, readiness and authentication.
    for replica in [&replica1, &replica2] {
        let status = replica.wait_status("streaming", WAIT, streaming_replica).await;
        assert!(status["lagBytes"].is_u64(), "{status}");
        assert_eq!(status["primaryHost"], "127.0.0.1");
        assert_eq!(status["systemIdentifier"], system_identifier.as_str());
        assert_eq!(status["timeline"], 1);
        assert!(status["receivedLsn"].as_str().unwrap().contains('/'), "{status}");
        assert!(status["replayedLsn"].as_str().unwrap().contains('/'), "{status}");
        assert_eq!(status["podName"], replica.pod.as_str());
    }
    let status = primary.status().await;
    assert_eq!(status["role"], "primary");
    assert_eq!(status["lagBytes"], serde_json::Value::Null);
    assert!(status["currentLsn"].as_str().unwrap().contains('/'));
    for manager in [&primary, &replica1, &replica2] {
        let readyz = manager.request("GET", "/readyz", None, None).await;
        assert_eq!(readyz.status, 200, "{}: {}", manager.pod, readyz.body);
    }
    for (token, route) in
        [(None, "/status"), (Some("wrong"), "/status"), (None, "/promote"), (Some(&TOKEN[1..]), "/demote")]
    {
        let method = if route == "/status" { "GET" } else { "POST" };
        let answer = primary.request(method, route, None, token).await;
        assert_eq!(answer.status, 401, "{route} with {token:?}: {}", answer.body);
        assert!(answer.json()["message"].as_str().unwrap().contains("controller-token"), "{}", answer.body);
    }
    let unknown = primary.get("/nope").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["message"].as_str().unwrap().contains("POST /bootstrap"));
    let bad = primary.post("/bootstrap", r#"{"mode":"resurrect"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let restore = primary.post("/bootstrap", r#"{"mode":"restore"}"#).await;
    assert_eq!(restore.status, 409, "no restored data here: {}", restore.body);
    let huge = primary.post("/demote", &" ".repeat(70 * 1024)).await;
    assert_eq!(huge.status, 413, "{}", huge.body);
    lap("status and auth");

    // 3. Promote replica 1; a second promotion changes nothing.
    let answer = replica1.post("/promote", "").await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, replica1.log());
    let status = answer.json();
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["timeline"], 2, "{status}");
    let new_primary = replica1.sql().await;
    new_primary.execute("INSERT INTO stead_it VALUES ('second', 'written on the new primary')", &[]).await.unwrap();
    let again = replica1.post("/promote", "").await;
    assert_eq!((again.status, again.json()["role"].as_str()), (200, Some("primary")), "{}", again.body);
    assert_eq!(again.json()["restarts"], 0);
    lap("promote");

    // The old primary diverges (it still takes writes) before it is demoted.
    writer.execute("INSERT INTO stead_it VALUES ('lost', 'only on the old primary')", &[]).await.unwrap();
    drop(writer);

    // A demotion whose pg_rewind cannot reach the new primary leaves postgres
    // stopped, and as a replica: it never comes back as a second primary.
    let nowhere = format!(r#"{{"primaryHost":"127.0.0.1","primaryPort":{}}}"#, support::free_port());
    let failed = primary.post("/demote", &nowhere).await;
    assert_eq!(failed.status, 500, "{}", failed.body);
    let message = failed.json()["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("pg_rewind failed") && message.contains("left stopped as a replica"), "{message}");
    assert!(primary.pgdata.join("standby.signal").exists());
    let status = primary.status().await;
    assert_eq!(
        (status["role"].as_str(), status["postmaster"].as_str()),
        (Some("stopped"), Some("stopped")),
        "{status}"
    );
    assert_eq!(status["systemIdentifier"], system_identifier.as_str(), "pg_controldata reports a stopped instance");
    assert_eq!(primary.request("GET", "/readyz", None, None).await.status, 503);
    assert_eq!(primary.request("GET", "/healthz", None, None).await.status, 200);

    // 4. Demote the old primary onto the new one: pg_rewind, then streaming.
    let demote = format!(r#"{{"primaryHost":"127.0.0.1","primaryPort":{}}}"#, replica1.pg_port);
    let answer = primary.post("/demote", &demote).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, primary.log());
    assert_eq!(answer.json()["role"], "replica");
    assert!(primary.log().contains("pg_rewind"), "the demotion ran pg_rewind");
    let value = read_eventually(&primary, "second").await;
    assert_eq!(value, "written on the new primary");
    assert_eq!(read_on(&primary, "lost").await, None, "the diverged row was rewound away");
    let status = primary.wait_status("streaming from the new primary", WAIT, streaming_replica).await;
    assert_eq!(status["timeline"], 2, "{status}");
    // Demoting again onto the same primary is a no-op: no restart, same postmaster.
    let postmaster = primary.postmaster_pid();
    let again = primary.post("/demote", &demote).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(primary.postmaster_pid(), postmaster, "an idempotent demote does not restart postgres");
    // Replica 2 still follows the old primary, now a cascading replica: repoint it too.
    let answer = replica2.post("/demote", &demote).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, replica2.log());
    let value = read_eventually(&replica2, "second").await;
    assert_eq!(value, "written on the new primary");
    assert_eq!(read_on(&replica2, "lost").await, None, "replica 2 had streamed the diverged row; rewound away");
    lap("demote + rewind");

    for manager in [&primary, &replica1, &replica2] {
        if let Some(kib) = manager.peak_rss_kib() {
            eprintln!("{}: stead-instance peak RSS (VmHWM) {kib} KiB", manager.pod);
        }
    }

    // 5. SIGTERM: each manager exits and leaves no postgres process behind.
    // The session still open on the new primary makes its smart shutdown time
    // out, so that one escalates to a fast shutdown.
    for manager in [&mut primary, &mut replica1, &mut replica2] {
        let pid = manager.postmaster_pid().expect("postmaster.pid while running");
        let stopping = Instant::now();
        let code = manager.terminate(Duration::from_secs(40));
        eprintln!("{}: exited {:.1}s after SIGTERM", manager.pod, stopping.elapsed().as_secs_f64());
        assert_eq!(code, Some(0), "{}: exit code; log:\n{}", manager.pod, manager.log());
        assert!(!manager.pgdata.join("postmaster.pid").exists(), "{}: postmaster.pid remains", manager.pod);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{}: postmaster {pid} still runs",
            manager.pod
        );
        let leftovers = manager.leftover_processes();
        assert!(leftovers.is_empty(), "{}: processes left: {leftovers:?}", manager.pod);
        assert!(manager.log().contains("stead-instance stopped"));
    }
    let log = replica1.log();
    let shutdown = &log[log.rfind("SIGTERM: shutting down").unwrap()..];
    assert!(shutdown.contains("mode=smart (SIGTERM)") && shutdown.contains("mode=fast (SIGINT)"), "{shutdown}");
    drop(new_primary);
    lap("shutdown");
    eprintln!("total: {:.1}s", started.elapsed().as_secs_f64());
}
