//! Scenarios with real database pods: the StatefulSet controller makes them,
//! the stand-in kubelet runs them (real stead-instance, real PostgreSQL),
//! the endpointslice controller routes the Services, and stead-controller
//! decides who is the primary. There is no kube-proxy: clients reach a
//! Service at the addresses its selector and the pods' readiness give.
//!
//! The 3-instance cluster `orders` in `e2e-replication` is shared by the
//! scenarios after its creation; each makes sure it exists (so any one of
//! them runs alone under `STEAD_E2E_ONLY`).

use std::collections::BTreeSet;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use serde_json::Value;

use crate::clusters::{
    AVAILABLE_TIMEOUT, REACT_TIMEOUT, condition, conditions_summary, expect_ok, make_available, text,
    wait_for_condition, wait_until_gone,
};
use crate::scenarios::Ctx;
use crate::support::audit::{self, AuditCounts};
use crate::support::credentials::CONTROLLER_USER;
use crate::support::kubectl::{Kubectl, table};
use crate::support::kubelet::EmptyDirs;
use crate::support::say;
use crate::support::stead::Counters;
use crate::support::wait::{self, Poll};

/// Namespace and name of the shared 3-instance cluster.
pub(crate) const NS: &str = "e2e-replication";
pub(crate) const ORDERS: &str = "orders";
/// The 1-instance cluster.
const SOLO_NS: &str = "e2e-solo";
const SOLO: &str = "solo";
/// How long a write on the primary may take to reach a replica.
pub(crate) const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the controller is watched for writes while nothing changes.
const QUIET_WINDOW: Duration = Duration::from_secs(10);
/// The controller counts as settled once it wrote nothing for this long.
const SETTLE_WINDOW: Duration = Duration::from_secs(3);
/// psql of the PostgreSQL the pods run.
const PSQL_CANDIDATES: [&str; 2] = ["/usr/lib/postgresql/15/bin/psql", "/usr/bin/psql"];
/// The row the scenarios write and look for.
const ROW_ID: i32 = 1;
const ROW_TEXT: &str = "written through orders-rw";

/// Creates `orders` with 3 instances (or scales it back to 3) and waits
/// until it serves; the first time, records how long that took.
pub(crate) fn ensure_orders(ctx: &mut Ctx<'_>) -> anyhow::Result<Value> {
    ctx.pod_namespace(NS)?;
    let fresh = ctx.kubectl.get("dbc", NS, ORDERS)?.is_none();
    let started = Instant::now();
    let available = make_available(&ctx.kubectl, NS, ORDERS, 3)?;
    if fresh {
        ctx.figures.push(format!(
            "kubectl apply to Available=True/PrimaryReady with 3 instances (and 3 ready): {:.1}s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(available)
}

/// One instance: Available with its pod as the primary, and the printer
/// columns showing it (`kubectl get dbc`, and the `stead` category).
pub fn one_instance_and_printer_columns(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ctx.pod_namespace(SOLO_NS)?;
    let started = Instant::now();
    let available = make_available(&ctx.kubectl, SOLO_NS, SOLO, 1)?;
    ctx.figures.push(format!(
        "kubectl apply to Available=True/PrimaryReady with 1 instance: {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    ensure!(
        text(&available, "/status/currentPrimary") == "solo-0",
        "status.currentPrimary is {:?}, expected solo-0",
        text(&available, "/status/currentPrimary")
    );
    let k = &ctx.kubectl;
    ensure!(pod_role(k, SOLO_NS, "solo-0")? == "primary", "pod solo-0 is not labelled primary");

    let output = expect_ok(k.run(&["get", "dbc", "-n", SOLO_NS])?)?;
    let rows = table(&output);
    let header = ["NAME", "REPLICAS", "READY", "PRIMARY", "STATUS", "AGE"].map(str::to_owned);
    ensure!(rows.first().map(Vec::as_slice) == Some(&header[..]), "unexpected columns:\n{output}");
    let row = rows.get(1).context("no row for the cluster")?;
    let expected = ["solo", "1", "1", "solo-0", "PrimaryReady"].map(str::to_owned);
    ensure!(row.len() == 6 && row[..5] == expected, "unexpected row (want {expected:?} and an age):\n{output}");
    let listed = expect_ok(k.run(&["get", "stead", "-n", SOLO_NS, "-o", "name"])?)?;
    ensure!(
        listed.lines().any(|line| line == "databasecluster.stead.dev/solo"),
        "`kubectl get stead` (the category) does not list the cluster: {listed:?}"
    );
    Ok(())
}

/// EmptyDir volumes owned as a kubelet owns them (root, group fsGroup, mode
/// 2777): the instance manager must start on them, as it must in a real pod.
/// It names what the database container printed when it does not.
pub fn starts_on_kubelet_owned_volumes(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let ns = "e2e-kubelet-volumes";
    ctx.pod_namespace_with(ns, EmptyDirs::AsKubelet)?;
    let k = &ctx.kubectl;
    expect_ok(k.apply(&crate::clusters::cluster(ns, "plain", crate::clusters::spec_with_replicas(1)), &[])?)?;
    let log = ctx.log_dir.join("pods").join(format!("{ns}_plain-0_database.log"));
    let outcome = wait::until(&format!("{ns}/plain to become Available=True/PrimaryReady"), AVAILABLE_TIMEOUT, || {
        let object = k.get("dbc", ns, "plain")?.context("the cluster plain is gone")?;
        let available = condition(&object, "Available")
            .is_some_and(|c| text(c, "/status") == "True" && text(c, "/reason") == "PrimaryReady");
        if available {
            return Ok(Poll::Ready(()));
        }
        // A container that exited twice will not do better: say what it printed.
        let restarts = k
            .get("pod", ns, "plain-0")?
            .and_then(|pod| pod.pointer("/status/containerStatuses/0/restartCount").and_then(Value::as_i64))
            .unwrap_or(0);
        if restarts >= 2 {
            let printed = std::fs::read_to_string(&log).unwrap_or_default();
            let error = printed.lines().rev().find(|line| line.starts_with("error:")).unwrap_or("(no error line)");
            bail!(
                "on emptyDir volumes owned as a kubelet owns them (root, group fsGroup, mode 2777), the database \
                 container exited {restarts} times; it printed {error:?}"
            );
        }
        Ok(Poll::Pending(conditions_summary(&object)))
    });
    // Its pod is not needed any more, whatever happened.
    expect_ok(k.run(&["delete", "dbc", "plain", "-n", ns, "--wait=false"])?)?;
    outcome
}

/// Three instances: Available=True/PrimaryReady with orders-0 the primary,
/// one pod labelled primary and two replica, ReplicationHealthy, and every
/// replica streaming in `status.instances`.
pub fn three_instances_replicate(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ensure_orders(ctx)?;
    let k = &ctx.kubectl;
    let cluster = wait_for_condition(k, NS, ORDERS, "ReplicationHealthy", "True", "AllReplicasStreaming")?;
    let available = condition(&cluster, "Available").cloned().unwrap_or(Value::Null);
    ensure!(
        text(&available, "/status") == "True" && text(&available, "/reason") == "PrimaryReady",
        "Available is {}/{}: {}",
        text(&available, "/status"),
        text(&available, "/reason"),
        text(&available, "/message")
    );
    ensure!(
        text(&cluster, "/status/currentPrimary") == "orders-0",
        "status.currentPrimary is {:?}, expected orders-0",
        text(&cluster, "/status/currentPrimary")
    );
    let roles = roles(k, NS, 3)?;
    ensure!(roles == ["primary", "replica", "replica"], "the pods orders-0..2 are labelled {roles:?}");
    let instances = instances(&cluster);
    ensure!(instances.len() == 3, "status.instances has {} entries: {instances:?}", instances.len());
    for instance in &instances {
        let name = text(instance, "/name");
        match name.as_str() {
            "orders-0" => ensure!(
                text(instance, "/role") == "primary" && instance["ready"] == true,
                "orders-0 in status.instances: {instance}"
            ),
            _ => ensure!(
                text(instance, "/role") == "replica" && instance["ready"] == true && instance["streaming"] == true,
                "{name} should be a ready, streaming replica in status.instances: {instance}"
            ),
        }
    }
    let read_write = text(&cluster, "/status/endpoints/readWrite");
    ensure!(read_write == format!("orders-rw.{NS}.svc:5432"), "status.endpoints.readWrite is {read_write:?}");
    wait_for_condition(k, NS, ORDERS, "Degraded", "False", "AsExpected")?;
    Ok(())
}

/// A row written as the superuser through `orders-rw` (the address it
/// routes to) is read back on each replica through `orders-ro`'s.
pub fn row_reaches_every_replica(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ensure_orders(ctx)?;
    let k = &ctx.kubectl;
    let primary = wait_for_endpoints(k, NS, "orders-rw", &pod_ips(k, NS, &["orders-0"])?)?;
    let password = superuser_password(k, NS, ORDERS)?;
    write_row(&primary[0], &password)?;
    let replicas = wait_for_endpoints(k, NS, "orders-ro", &pod_ips(k, NS, &["orders-1", "orders-2"])?)?;
    for replica in &replicas {
        wait_for_row(replica, &password)?;
    }
    // A replica refuses the write: -ro really is read-only.
    let refused = psql(&replicas[0], &password, "INSERT INTO e2e_rows VALUES (2, 'on a replica')");
    ensure!(
        refused.as_ref().is_err_and(|e| e.to_string().contains("read-only transaction")),
        "a write on the replica {} was not refused as read-only: {refused:?}",
        replicas[0]
    );
    wait_for_endpoints(k, NS, "orders-r", &pod_ips(k, NS, &["orders-0", "orders-1", "orders-2"])?)?;
    Ok(())
}

/// Everything the controller's writes can be judged by, at one moment.
#[derive(Debug, PartialEq)]
struct WriteSnapshot {
    audit: AuditCounts,
    /// The same requests by verb and resource, to say which writes they were.
    requests: std::collections::BTreeMap<String, u64>,
    reconciles: Option<f64>,
    status_writes: Option<f64>,
    child_applies: Option<f64>,
    resource_versions: Vec<(String, String)>,
}

fn write_snapshot(ctx: &mut Ctx<'_>, objects: &[(&str, &str)]) -> anyhow::Result<WriteSnapshot> {
    let counters: Counters = ctx.controller.counters()?;
    let mut resource_versions = Vec::new();
    for (resource, name) in objects {
        let object = ctx.kubectl.get(resource, NS, name)?.with_context(|| format!("{resource} {NS}/{name} is gone"))?;
        resource_versions.push((format!("{resource}/{name}"), text(&object, "/metadata/resourceVersion")));
    }
    Ok(WriteSnapshot {
        audit: audit::read_counts(&ctx.audit_log, CONTROLLER_USER)?,
        requests: audit::read_breakdown(&ctx.audit_log, CONTROLLER_USER)?,
        reconciles: counters.reconciles,
        status_writes: counters.status_writes,
        child_applies: counters.child_applies,
        resource_versions,
    })
}

/// Waits until the controller made no write requests for [`SETTLE_WINDOW`].
fn settle(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let mut last = audit::read_counts(&ctx.audit_log, CONTROLLER_USER)?;
    let mut quiet_since = Instant::now();
    wait::until("the controller to stop writing", REACT_TIMEOUT, || {
        let now = audit::read_counts(&ctx.audit_log, CONTROLLER_USER)?;
        if now.writes != last.writes {
            last = now;
            quiet_since = Instant::now();
        }
        Ok(if quiet_since.elapsed() >= SETTLE_WINDOW {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{} write requests so far", now.writes))
        })
    })
}

/// Three running instances at rest cost no writes while the controller keeps
/// polling them: no request with a write verb from its user, no status
/// write or apply in its metrics, no new resourceVersion of the cluster, its
/// children or its pods, and reconciles (one per poll) go on meanwhile. A
/// metadata-only change reconciles without touching children or status.
pub fn no_writes_while_nothing_changes(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ensure_orders(ctx)?;
    wait_for_condition(&ctx.kubectl, NS, ORDERS, "ReplicationHealthy", "True", "AllReplicasStreaming")?;
    let mut watched = vec![
        ("dbc", "orders"),
        ("statefulset", "orders"),
        ("service", "orders-rw"),
        ("service", "orders-ro"),
        ("service", "orders-r"),
        ("service", "orders-headless"),
        ("pod", "orders-0"),
        ("pod", "orders-1"),
        ("pod", "orders-2"),
    ];
    if !ctx.garbage_collection {
        // kube-controller-manager's disruption controller writes PDB status itself.
        watched.push(("poddisruptionbudget", "orders"));
    }
    settle(ctx)?;
    let before = write_snapshot(ctx, &watched)?;
    ensure!(
        before.status_writes.is_some() && before.child_applies.is_some(),
        "the controller's /metrics lacks stead_controller_status_writes_total or \
         stead_controller_child_applies_total after reconciling a cluster: {before:?}"
    );
    thread::sleep(QUIET_WINDOW);
    let after = write_snapshot(ctx, &watched)?;
    ensure!(
        after.audit.writes == before.audit.writes
            && after.status_writes == before.status_writes
            && after.child_applies == before.child_applies
            && after.resource_versions == before.resource_versions,
        "the controller wrote while nothing changed ({}s):\nbefore: {before:?}\nafter:  {after:?}",
        QUIET_WINDOW.as_secs()
    );
    let polls = after.reconciles.unwrap_or(0.0) - before.reconciles.unwrap_or(0.0);
    ensure!(
        polls >= 2.0,
        "the controller reconciled {polls} times in {}s; it should poll the instances every 2 s",
        QUIET_WINDOW.as_secs()
    );
    let requests = after.audit.since(before.audit).requests;
    ctx.figures.push(format!(
        "API requests by the controller in a {}s steady state (3 running instances among the clusters; every \
         cluster is polled every 2 s): {requests} over {polls} reconciles ({:.2} per poll)",
        QUIET_WINDOW.as_secs(),
        requests as f64 / polls
    ));

    // A metadata-only change triggers a reconcile that leaves children and status alone.
    let reconciles_before = ctx.controller.counters()?.reconciles.unwrap_or(0.0);
    expect_ok(ctx.kubectl.run(&["annotate", "dbc", ORDERS, "-n", NS, "e2e.stead.dev/poke=1", "--overwrite"])?)?;
    wait::until("a reconcile after the annotation", REACT_TIMEOUT, || {
        let now = ctx.controller.counters()?.reconciles.unwrap_or(0.0);
        Ok(if now > reconciles_before { Poll::Ready(()) } else { Poll::Pending(format!("{now} reconciles")) })
    })?;
    settle(ctx)?;
    let poked = write_snapshot(ctx, &watched)?;
    ensure!(
        poked.status_writes == after.status_writes && poked.resource_versions[1..] == after.resource_versions[1..],
        "a metadata-only change rewrote status, children or pods:\nbefore: {after:?}\nafter:  {poked:?}"
    );
    say(&format!(
        "e2e:   (a metadata-only change: {} requests, {} of them writes, by the controller; children unchanged)",
        poked.audit.since(after.audit).requests,
        poked.audit.since(after.audit).writes
    ));
    Ok(())
}

/// 3 → 5 → 2 instances: the primary stays orders-0, the new replicas are
/// cloned and have the row, `orders-ro` follows, and the
/// volumes of the pods scaled away are kept.
pub fn scaling_keeps_the_primary(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ensure_orders(ctx)?;
    let k = ctx.kubectl.clone();
    let password = superuser_password(&k, NS, ORDERS)?;
    let primary = wait_for_endpoints(&k, NS, "orders-rw", &pod_ips(&k, NS, &["orders-0"])?)?;
    write_row(&primary[0], &password)?;

    let started = Instant::now();
    expect_ok(k.run(&["scale", "dbc/orders", "--replicas=5", "-n", NS])?)?;
    let five = wait_until_streaming(&k, NS, ORDERS, 5)?;
    ctx.figures.push(format!("scaling 3 → 5 until every replica streams: {:.1}s", started.elapsed().as_secs_f64()));
    ensure_primary(&five, "scaling up")?;
    let names = ["orders-1", "orders-2", "orders-3", "orders-4"];
    for replica in wait_for_endpoints(&k, NS, "orders-ro", &pod_ips(&k, NS, &names)?)? {
        wait_for_row(&replica, &password)?;
    }

    let started = Instant::now();
    expect_ok(k.run(&["scale", "dbc/orders", "--replicas=2", "-n", NS])?)?;
    for pod in ["orders-4", "orders-3", "orders-2"] {
        wait_until_gone(&k, "pod", NS, pod).with_context(|| format!("scaling down should remove {pod}"))?;
    }
    let two = wait_until_streaming(&k, NS, ORDERS, 2)?;
    ctx.figures.push(format!("scaling 5 → 2 until the pods are gone: {:.1}s", started.elapsed().as_secs_f64()));
    ensure_primary(&two, "scaling down")?;
    let left = wait_for_endpoints(&k, NS, "orders-ro", &pod_ips(&k, NS, &["orders-1"])?)?;
    wait_for_row(&left[0], &password)?;
    for claim in ["data-orders-2", "data-orders-3", "data-orders-4"] {
        ensure!(k.get("pvc", NS, claim)?.is_some(), "the claim {claim} of a pod scaled away was deleted");
    }
    Ok(())
}

/// The node crashes a pod's processes (the kubelet's `kill_pod`): the
/// container is restarted at once, counts a restart with the last exit
/// (137), and the instance serves again on its data.
pub fn crashed_pod_is_restarted(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ctx.pod_namespace(SOLO_NS)?;
    make_available(&ctx.kubectl, SOLO_NS, SOLO, 1)?;
    let killed = ctx.kubelet()?.kill_pod(SOLO_NS, "solo-0")?;
    ensure!(killed >= 2, "only {killed} processes of solo-0 were killed; expected the manager and postgres");
    let k = &ctx.kubectl;
    let pod = wait::until("solo-0 to be restarted and ready again", REACT_TIMEOUT, || {
        let pod = k.get("pod", SOLO_NS, "solo-0")?.context("the pod solo-0 is gone")?;
        let status = &pod["status"]["containerStatuses"][0];
        let restarted = status["restartCount"].as_i64().unwrap_or(0) >= 1;
        Ok(if restarted && status["ready"] == true { Poll::Ready(pod) } else { Poll::Pending(status.to_string()) })
    })?;
    let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"];
    ensure!(last["exitCode"] == 137 && last["reason"] == "Error", "lastState.terminated of solo-0: {last}");
    wait_for_condition(k, SOLO_NS, SOLO, "Available", "True", "PrimaryReady")?;
    Ok(())
}

/// The primary's processes are killed: with `failoverDelay: 0s` the replica
/// with the most WAL is promoted, `-rw` follows it, the row committed and
/// replicated before the kill is there, the new primary takes writes, and
/// the old primary, restarted by the kubelet, rejoins as a replica.
pub fn primary_failure_promotes_a_replica(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    const FAILOVER_NS: &str = "e2e-failover";
    const NAME: &str = "ha";
    ctx.pod_namespace(FAILOVER_NS)?;
    let k = &ctx.kubectl;
    let mut spec = crate::clusters::spec_with_replicas(3);
    spec["failoverDelay"] = serde_json::json!("0s");
    expect_ok(k.apply(&crate::clusters::cluster(FAILOVER_NS, NAME, spec), &[])?)?;
    wait_until_streaming(k, FAILOVER_NS, NAME, 3)?;
    let password = superuser_password(k, FAILOVER_NS, NAME)?;
    let old_ip = pod_ips(k, FAILOVER_NS, &["ha-0"])?;
    write_row(&old_ip[0], &password)?;
    for replica in pod_ips(k, FAILOVER_NS, &["ha-1", "ha-2"])? {
        wait_for_row(&replica, &password)?;
    }

    let killed_at = Instant::now();
    ctx.kubelet()?.kill_pod(FAILOVER_NS, "ha-0")?;
    let promoted = wait::until("a replica to be promoted", Duration::from_secs(90), || {
        let object = k.get("dbc", FAILOVER_NS, NAME)?.context("the cluster disappeared")?;
        let primary = text(&object, "/status/currentPrimary");
        Ok(if primary != "ha-0" && !primary.is_empty() && text(&object, "/status/phase") == "Healthy" {
            Poll::Ready(object)
        } else {
            Poll::Pending(format!("currentPrimary {primary}, phase {}", text(&object, "/status/phase")))
        })
    })?;
    let new_primary = text(&promoted, "/status/currentPrimary");
    ensure!(
        promoted.pointer("/status/failoverCount").and_then(Value::as_i64) == Some(1),
        "failoverCount is {:?}",
        promoted.pointer("/status/failoverCount")
    );
    let new_ip = pod_ips(k, FAILOVER_NS, &[new_primary.as_str()])?;
    wait_for_endpoints(k, FAILOVER_NS, "ha-rw", &new_ip)?;
    say(&format!(
        "e2e: figure: failover, kill of the primary to -rw on the new primary {new_primary}: {:.1}s",
        killed_at.elapsed().as_secs_f64()
    ));
    // The committed, replicated row survived: 0 rows lost.
    wait_for_row(&new_ip[0], &password)?;
    psql(&new_ip[0], &password, "INSERT INTO e2e_rows VALUES (3, 'after the failover')")
        .context("a write on the new primary")?;
    // The old primary, restarted, is rewound onto the new one and streams.
    wait::until("ha-0 to rejoin as a streaming replica", Duration::from_secs(120), || {
        let object = k.get("dbc", FAILOVER_NS, NAME)?.context("the cluster disappeared")?;
        let old = instances(&object).into_iter().find(|i| i["name"] == "ha-0").unwrap_or(Value::Null);
        Ok(if old["role"] == "replica" && old["streaming"] == true {
            Poll::Ready(())
        } else {
            Poll::Pending(old.to_string())
        })
    })?;
    let rows = psql(&old_ip[0], &password, "SELECT count(*) FROM e2e_rows")?;
    ensure!(rows == "2", "the rejoined ha-0 has {rows} rows, expected both (before and after the failover)");
    Ok(())
}

/// Deleting the clusters takes their pods (the garbage collector deletes
/// the StatefulSets, the kubelet stops each pod within its grace period)
/// and keeps the volumes and the credentials.
pub fn deleted_cluster_takes_its_pods(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let kubelet = ctx.kubelet()?;
    let k = &ctx.kubectl;
    let mut pods = Vec::new();
    for (ns, name) in [(SOLO_NS, SOLO), (NS, ORDERS)] {
        if k.get("dbc", ns, name)?.is_none() {
            continue;
        }
        for pod in list_names(k, ns, "pods", &format!("app.kubernetes.io/instance={name}"))? {
            pods.push((ns, pod));
        }
        expect_ok(k.run(&["delete", "dbc", name, "-n", ns, "--wait=false"])?)?;
    }
    if pods.is_empty() {
        return Err(crate::scenarios::Skip("no database cluster is left to delete".to_owned()).into());
    }
    for (ns, pod) in &pods {
        wait_until_gone(k, "pod", ns, pod).with_context(|| format!("the pod {ns}/{pod} should go with its cluster"))?;
        ensure!(kubelet.pod_ip(ns, pod).is_none(), "the stand-in kubelet still runs {ns}/{pod}");
    }
    for (ns, pod) in &pods {
        let claim = format!("data-{pod}");
        ensure!(k.get("pvc", ns, &claim)?.is_some(), "the claim {ns}/{claim} was deleted with its cluster");
    }
    ensure!(k.get("secret", NS, "orders-credentials")?.is_some(), "the credentials Secret went with the cluster");
    Ok(())
}

fn ensure_primary(cluster: &Value, when: &str) -> anyhow::Result<()> {
    ensure!(
        text(cluster, "/status/currentPrimary") == "orders-0",
        "{when} moved the primary: status.currentPrimary is {:?}",
        text(cluster, "/status/currentPrimary")
    );
    Ok(())
}

pub(crate) fn instances(cluster: &Value) -> Vec<Value> {
    cluster.pointer("/status/instances").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The `stead.dev/role` labels of `<cluster>-0..count`, `none` for an unlabelled pod.
fn roles(k: &Kubectl, ns: &str, count: usize) -> anyhow::Result<Vec<String>> {
    (0..count).map(|i| pod_role(k, ns, &format!("{ORDERS}-{i}"))).collect()
}

pub(crate) fn pod_role(k: &Kubectl, ns: &str, pod: &str) -> anyhow::Result<String> {
    let object = k.get("pod", ns, pod)?.with_context(|| format!("pod {ns}/{pod} does not exist"))?;
    Ok(object.pointer("/metadata/labels/stead.dev~1role").and_then(Value::as_str).unwrap_or("none").to_owned())
}

/// The names of the objects that match `selector`.
pub(crate) fn list_names(k: &Kubectl, ns: &str, resource: &str, selector: &str) -> anyhow::Result<Vec<String>> {
    let out = expect_ok(k.run(&["get", resource, "-n", ns, "-l", selector, "-o", "name"])?)?;
    Ok(out.lines().filter_map(|line| line.split('/').nth(1)).map(str::to_owned).collect())
}

/// The pod IPs of `pods`, in order.
pub(crate) fn pod_ips(k: &Kubectl, ns: &str, pods: &[&str]) -> anyhow::Result<Vec<String>> {
    pods.iter()
        .map(|pod| {
            let object = k.get("pod", ns, pod)?.with_context(|| format!("pod {ns}/{pod} does not exist"))?;
            let ip = text(&object, "/status/podIP");
            ensure!(!ip.is_empty(), "pod {ns}/{pod} has no IP yet");
            Ok(ip)
        })
        .collect()
}

/// The addresses a Service routes to, resolved as the endpointslice
/// controller resolves them: the pods its selector matches that are Ready.
/// (Its EndpointSlices themselves stay empty here: the API server refuses
/// loopback addresses in them, "may not be in the loopback range", and the
/// pods' addresses are 127.0.0.N; see the README.)
pub(crate) fn ready_endpoints(k: &Kubectl, ns: &str, service: &str) -> anyhow::Result<BTreeSet<String>> {
    let svc = k.get("service", ns, service)?.with_context(|| format!("Service {ns}/{service} does not exist"))?;
    let selector = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .with_context(|| format!("Service {ns}/{service} has no selector"))?
        .iter()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",");
    let out = expect_ok(k.run(&["get", "pods", "-n", ns, "-l", &selector, "-o", "json"])?)?;
    let list: Value = serde_json::from_str(&out).context("kubectl printed something other than JSON")?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pod| pod.pointer("/metadata/deletionTimestamp").is_none())
        .filter(|pod| {
            pod["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .map(|pod| text(pod, "/status/podIP"))
        .filter(|ip| !ip.is_empty())
        .collect())
}

/// Waits until the Service's ready endpoints are exactly `ips`; returns them.
pub(crate) fn wait_for_endpoints(k: &Kubectl, ns: &str, service: &str, ips: &[String]) -> anyhow::Result<Vec<String>> {
    let want: BTreeSet<String> = ips.iter().cloned().collect();
    wait::until(&format!("{ns}/{service} to route to exactly {want:?}"), REACT_TIMEOUT, || {
        let have = ready_endpoints(k, ns, service)?;
        Ok(if have == want { Poll::Ready(have.into_iter().collect()) } else { Poll::Pending(format!("{have:?}")) })
    })
}

/// The superuser's password, from the cluster's credentials Secret.
pub(crate) fn superuser_password(k: &Kubectl, ns: &str, cluster: &str) -> anyhow::Result<String> {
    let name = format!("{cluster}-credentials");
    let secret = k.get("secret", ns, &name)?.with_context(|| format!("Secret {ns}/{name} does not exist"))?;
    let encoded = text(&secret, "/data/password");
    ensure!(!encoded.is_empty(), "Secret {ns}/{name} has no password");
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).context("the password is not base64")?;
    String::from_utf8(bytes).context("the password is not UTF-8")
}

fn psql_binary() -> anyhow::Result<&'static str> {
    PSQL_CANDIDATES
        .into_iter()
        .find(|path| std::path::Path::new(path).is_file())
        .with_context(|| format!("psql is not at any of {PSQL_CANDIDATES:?}"))
}

/// Runs `sql` as the superuser on `host`:5432 over TCP (scram-sha-256), bounded in time.
pub(crate) fn psql(host: &str, password: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new(psql_binary()?)
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGHOST", host)
        .env("PGPORT", "5432")
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "postgres")
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGOPTIONS", "-c statement_timeout=10000")
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql on {host}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub(crate) fn write_row(primary: &str, password: &str) -> anyhow::Result<()> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS e2e_rows (id int PRIMARY KEY, note text); \
         INSERT INTO e2e_rows VALUES ({ROW_ID}, '{ROW_TEXT}') ON CONFLICT (id) DO UPDATE SET note = EXCLUDED.note"
    );
    psql(primary, password, &sql).with_context(|| format!("writing the row through the primary {primary}"))?;
    Ok(())
}

pub(crate) fn wait_for_row(host: &str, password: &str) -> anyhow::Result<()> {
    let sql = format!("SELECT note FROM e2e_rows WHERE id = {ROW_ID}");
    wait::until(&format!("the row to be readable on {host}"), REPLAY_TIMEOUT, || {
        Ok(match psql(host, password, &sql) {
            Ok(found) if found == ROW_TEXT => Poll::Ready(()),
            Ok(found) => Poll::Pending(format!("found {found:?}")),
            Err(err) => Poll::Pending(format!("{err:#}")),
        })
    })
}

/// Waits until the cluster reports `count` instances, the primary ready and
/// every other one a ready, streaming replica.
pub(crate) fn wait_until_streaming(k: &Kubectl, ns: &str, name: &str, count: usize) -> anyhow::Result<Value> {
    wait::until(&format!("{ns}/{name} to run {count} instances, all replicas streaming"), AVAILABLE_TIMEOUT, || {
        let object = k.get("dbc", ns, name)?.context("the cluster disappeared")?;
        let instances = instances(&object);
        let primary = instances.iter().filter(|i| i["role"] == "primary" && i["ready"] == true).count();
        let streaming =
            instances.iter().filter(|i| i["role"] == "replica" && i["ready"] == true && i["streaming"] == true).count();
        let healthy = condition(&object, "ReplicationHealthy").is_some_and(|c| text(c, "/status") == "True");
        Ok(if instances.len() == count && primary == 1 && streaming + 1 == count && healthy {
            Poll::Ready(object)
        } else {
            Poll::Pending(format!(
                "{} instances, {primary} ready primary, {streaming} streaming; {}",
                instances.len(),
                conditions_summary(&object)
            ))
        })
    })
}
