//! Day-2 operations on real database pods: a requested switchover, a
//! role-aware rolling update, a crash-looping replica, a re-clone on request
//! and a controller restarted in the middle of a failover. Each runs with real
//! stead-instance and PostgreSQL processes under the stand-in kubelet, the real
//! StatefulSet controller, and stead-controller deciding.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::clusters::{REACT_TIMEOUT, condition, expect_ok, text};
use crate::database::{
    NS, ORDERS, REPLAY_TIMEOUT, ensure_orders, instances, pod_ips, psql, superuser_password, wait_for_endpoints,
    wait_until_streaming,
};
use crate::finalizers::restart_controller;
use crate::scenarios::Ctx;
use crate::support::kubectl::Kubectl;
use crate::support::say;
use crate::support::wait::{self, Poll};

/// The roles of a cluster as its status reports them: the primary, then the replicas by ordinal.
fn primary_and_replicas(cluster: &Value) -> anyhow::Result<(String, Vec<String>)> {
    let primary = text(cluster, "/status/currentPrimary");
    ensure!(!primary.is_empty(), "the cluster reports no primary: {}", cluster["status"]);
    let replicas = instances(cluster)
        .iter()
        .filter(|i| i["role"] == "replica")
        .map(|i| i["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    Ok((primary, replicas))
}

/// Inserts row `id` (the table is created when missing).
fn insert(host: &str, password: &str, id: i32, note: &str) -> anyhow::Result<()> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS e2e_rows (id int PRIMARY KEY, note text); \
         INSERT INTO e2e_rows VALUES ({id}, '{note}') ON CONFLICT (id) DO UPDATE SET note = EXCLUDED.note"
    );
    psql(host, password, &sql).with_context(|| format!("writing row {id} on {host}"))?;
    Ok(())
}

/// The note of row `id` on `host`, at once (no waiting for replay).
fn row(host: &str, password: &str, id: i32) -> anyhow::Result<String> {
    psql(host, password, &format!("SELECT note FROM e2e_rows WHERE id = {id}"))
}

/// Waits until row `id` reads `note` on `host`.
fn wait_for(host: &str, password: &str, id: i32, note: &str) -> anyhow::Result<()> {
    wait::until(&format!("row {id} to be readable on {host}"), REPLAY_TIMEOUT, || {
        Ok(match row(host, password, id) {
            Ok(found) if found == note => Poll::Ready(()),
            Ok(found) => Poll::Pending(format!("found {found:?}")),
            Err(err) => Poll::Pending(format!("{err:#}")),
        })
    })
}

/// Waits until the cluster's primary is `pod`, with no promotion under way
/// and no request annotation left.
fn wait_for_primary(k: &Kubectl, ns: &str, name: &str, pod: &str, timeout: Duration) -> anyhow::Result<Value> {
    wait::until(&format!("{ns}/{name} to have {pod} as its primary"), timeout, || {
        let object = k.get("dbc", ns, name)?.context("the cluster disappeared")?;
        let primary = text(&object, "/status/currentPrimary");
        let phase = text(&object, "/status/phase");
        let requested = object.pointer("/metadata/annotations/stead.dev~1switchover-to").is_some();
        Ok(if primary == pod && phase == "Healthy" && !requested {
            Poll::Ready(object)
        } else {
            Poll::Pending(format!("currentPrimary {primary}, phase {phase}, request still there: {requested}"))
        })
    })
}

/// The Events of one DatabaseCluster with `reason`, as `reason: note` lines.
fn events(k: &Kubectl, ns: &str, name: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    let selector = format!("regarding.name={name},reason={reason}");
    let out =
        expect_ok(k.run(&["get", "events.events.k8s.io", "-n", ns, "--field-selector", &selector, "-o", "json"])?)?;
    let list: Value = serde_json::from_str(&out).context("kubectl printed something other than JSON")?;
    Ok(list["items"].as_array().into_iter().flatten().map(|e| format!("{reason}: {}", text(e, "/note"))).collect())
}

fn uid(k: &Kubectl, resource: &str, ns: &str, name: &str) -> anyhow::Result<String> {
    let object = k.get(resource, ns, name)?.with_context(|| format!("{resource} {ns}/{name} does not exist"))?;
    Ok(text(&object, "/metadata/uid"))
}

/// `kubectl annotate dbc/<name> stead.dev/switchover-to=<replica>`: the
/// primary hands over to the replica with no committed row lost (one written
/// just before the request, not waited for on any replica, is on the new
/// primary), `-rw` follows, and the old primary streams from the new one.
pub fn switchover_loses_no_row(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ensure_orders(ctx)?;
    let k = &ctx.kubectl.clone();
    let cluster = wait_until_streaming(k, NS, ORDERS, 3)?;
    let (old, replicas) = primary_and_replicas(&cluster)?;
    let target = replicas.last().context("orders has no replica")?.clone();
    let password = superuser_password(k, NS, ORDERS)?;
    let old_ip = pod_ips(k, NS, &[old.as_str()])?.remove(0);
    insert(&old_ip, &password, 10, "just before the switchover")?;

    let asked = Instant::now();
    expect_ok(k.run(&["annotate", "dbc", ORDERS, "-n", NS, &format!("stead.dev/switchover-to={target}")])?)?;
    wait_for_primary(k, NS, ORDERS, &target, REACT_TIMEOUT)?;
    let target_ip = pod_ips(k, NS, &[target.as_str()])?.remove(0);
    wait_for_endpoints(k, NS, "orders-rw", std::slice::from_ref(&target_ip))?;
    ctx.figures.push(format!(
        "switchover {old} -> {target}: request to -rw on the new primary {:.1}s",
        asked.elapsed().as_secs_f64()
    ));
    // Read at once on the new primary: nothing committed on the old one is missing.
    let found = row(&target_ip, &password, 10)?;
    ensure!(found == "just before the switchover", "the new primary {target} has row 10 as {found:?}");
    insert(&target_ip, &password, 11, "after the switchover")?;
    wait::until(&format!("{old} to stream from {target}"), REACT_TIMEOUT, || {
        let object = k.get("dbc", NS, ORDERS)?.context("the cluster disappeared")?;
        let report = instances(&object).into_iter().find(|i| i["name"] == old.as_str()).unwrap_or(Value::Null);
        Ok(if report["role"] == "replica" && report["streaming"] == true {
            Poll::Ready(())
        } else {
            Poll::Pending(report.to_string())
        })
    })?;
    wait_for(&old_ip, &password, 11, "after the switchover")?;
    let cluster = k.get("dbc", NS, ORDERS)?.context("the cluster disappeared")?;
    ensure!(
        cluster.pointer("/status/failoverCount").is_none_or(|c| c == &json!(0)),
        "a switchover counted as a failover: {}",
        cluster["status"]
    );
    let done = events(k, NS, ORDERS, "SwitchedOver")?;
    ensure!(!done.is_empty(), "no SwitchedOver event was recorded");
    Ok(())
}

/// One sample of the pods of a cluster during a rollout.
struct Sample {
    /// Pod name to (uid, ready); a missing pod is absent.
    pods: BTreeMap<String, (String, bool)>,
}

fn sample(k: &Kubectl, ns: &str, name: &str) -> anyhow::Result<Sample> {
    let selector = format!("app.kubernetes.io/instance={name}");
    let out = expect_ok(k.run(&["get", "pods", "-n", ns, "-l", &selector, "-o", "json"])?)?;
    let list: Value = serde_json::from_str(&out).context("kubectl printed something other than JSON")?;
    let mut pods = BTreeMap::new();
    for pod in list["items"].as_array().into_iter().flatten() {
        let ready = pod.pointer("/metadata/deletionTimestamp").is_none()
            && pod["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        pods.insert(text(pod, "/metadata/name"), (text(pod, "/metadata/uid"), ready));
    }
    Ok(Sample { pods })
}

/// An image change restarts the replicas first, highest ordinal first, and
/// the primary last, after handing its role over by switchover; at no
/// sample is more than one of the three instances down, and the rows written
/// before and during the rollout are all on the final primary.
pub fn image_change_rolls_replicas_first_and_the_primary_last(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    const ROLL_NS: &str = "e2e-rolling";
    const NAME: &str = "rolling";
    ctx.pod_namespace(ROLL_NS)?;
    let k = &ctx.kubectl.clone();
    expect_ok(k.apply(&crate::clusters::cluster(ROLL_NS, NAME, crate::clusters::spec_with_replicas(3)), &[])?)?;
    let cluster = wait_until_streaming(k, ROLL_NS, NAME, 3)?;
    let (first_primary, _) = primary_and_replicas(&cluster)?;
    let password = superuser_password(k, ROLL_NS, NAME)?;
    let primary_ip = pod_ips(k, ROLL_NS, &[first_primary.as_str()])?.remove(0);
    insert(&primary_ip, &password, 1, "before the rollout")?;
    let before = sample(k, ROLL_NS, NAME)?;
    ensure!(before.pods.len() == 3, "expected 3 pods, found {:?}", before.pods.keys());

    let started = Instant::now();
    let patch = json!({"spec": {"image": "postgres:17.3"}}).to_string();
    expect_ok(k.run(&["patch", "dbc", NAME, "-n", ROLL_NS, "--type=merge", "-p", &patch])?)?;
    let mut restarted: Vec<String> = Vec::new();
    let mut most_down = 0;
    let mut samples = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let now = sample(k, ROLL_NS, NAME)?;
        samples += 1;
        let down = (0..3)
            .map(|i| format!("{NAME}-{i}"))
            .filter(|pod| !now.pods.get(pod).is_some_and(|(_, ready)| *ready))
            .count();
        most_down = most_down.max(down);
        for (pod, (uid, _)) in &now.pods {
            let renewed = before.pods.get(pod).is_some_and(|(old_uid, _)| old_uid != uid);
            if renewed && !restarted.contains(pod) {
                say(&format!("e2e: rolling update: {pod} restarted after {:.1}s", started.elapsed().as_secs_f64()));
                restarted.push(pod.clone());
            }
        }
        if restarted.len() == 3 && down == 0 {
            let object = k.get("dbc", ROLL_NS, NAME)?.context("the cluster disappeared")?;
            let progressing = condition(&object, "Progressing").map(|c| text(c, "/status")).unwrap_or_default();
            if progressing == "False" && text(&object, "/status/phase") == "Healthy" {
                break;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the rollout did not finish in 240s: restarted {restarted:?}, {down} down now"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cluster = wait_until_streaming(k, ROLL_NS, NAME, 3)?;
    let (final_primary, _) = primary_and_replicas(&cluster)?;
    ctx.figures.push(format!(
        "rolling update of 3 instances (image change): {:.1}s, restarts in order {}, at most {most_down} instance \
         down in {samples} samples",
        started.elapsed().as_secs_f64(),
        restarted.join(", ")
    ));
    ensure!(most_down <= 1, "{most_down} instances were down at once during the rollout");
    ensure!(
        restarted.last() == Some(&first_primary),
        "the primary {first_primary} must restart last; the order was {restarted:?}"
    );
    let mut replicas_first: Vec<String> = restarted[..2].to_vec();
    replicas_first.sort_by(|a, b| b.cmp(a));
    ensure!(restarted[..2] == replicas_first[..], "replicas restart from the highest ordinal: {restarted:?}");
    ensure!(final_primary != first_primary, "the primary role was not handed over before its restart");
    let final_ip = pod_ips(k, ROLL_NS, &[final_primary.as_str()])?.remove(0);
    let found = row(&final_ip, &password, 1)?;
    ensure!(found == "before the rollout", "the final primary {final_primary} has row 1 as {found:?}");
    let revision = k
        .get("statefulset", ROLL_NS, NAME)?
        .map(|s| text(&s, "/status/updateRevision"))
        .context("the StatefulSet disappeared")?;
    for i in 0..3 {
        let pod = k.get("pod", ROLL_NS, &format!("{NAME}-{i}"))?.context("a pod disappeared")?;
        let on = text(&pod, "/metadata/labels/controller-revision-hash");
        ensure!(on == revision, "{NAME}-{i} runs revision {on}, not {revision}");
    }
    expect_ok(k.run(&["delete", "dbc", NAME, "-n", ROLL_NS, "--wait=false"])?)?;
    Ok(())
}

/// A replica whose container keeps dying is reported as a person would find
/// it with `kubectl describe` (CrashLoopBackOff, the exit code, the restart
/// count) in `status.instances[]` and Degraded, and nothing is deleted: not
/// its pod, not its claim.
pub fn crash_looping_replica_is_reported_and_left_alone(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ensure_orders(ctx)?;
    let kubelet = ctx.kubelet()?;
    let k = &ctx.kubectl;
    let cluster = wait_until_streaming(k, NS, ORDERS, 3)?;
    let (_, replicas) = primary_and_replicas(&cluster)?;
    let victim = replicas.first().context("orders has no replica")?.clone();
    let claim = format!("data-{victim}");
    let (pod_uid, claim_uid) = (uid(k, "pod", NS, &victim)?, uid(k, "pvc", NS, &claim)?);
    // The first crash restarts at once, the second waits out a back-off.
    let database = |pod: &Value| {
        pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "database"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let first = k.get("pod", NS, &victim)?.context("the pod disappeared")?;
    let base = database(&first)["restartCount"].as_i64().unwrap_or(0);
    for crash in 1..=2 {
        wait::until(&format!("{victim}'s database container to run again and be killed"), REACT_TIMEOUT, || {
            let pod = k.get("pod", NS, &victim)?.context("the pod disappeared")?;
            let status = database(&pod);
            let restarts = status["restartCount"].as_i64().unwrap_or(0);
            if !(status["state"]["running"].is_object() && restarts >= base + crash - 1) {
                return Ok(Poll::Pending(status.to_string()));
            }
            let killed = kubelet.kill_pod(NS, &victim)?;
            say(&format!("e2e: crash {crash} of {victim}: {killed} processes killed"));
            Ok(if killed > 0 { Poll::Ready(()) } else { Poll::Pending("no process to kill yet".to_owned()) })
        })?;
    }
    let reported = wait::until(&format!("{victim}'s crash loop to be reported"), Duration::from_secs(30), || {
        let object = k.get("dbc", NS, ORDERS)?.context("the cluster disappeared")?;
        let report = instances(&object).into_iter().find(|i| i["name"] == victim.as_str()).unwrap_or(Value::Null);
        let message = text(&report, "/message");
        Ok(if message.contains("CrashLoopBackOff") { Poll::Ready(object) } else { Poll::Pending(report.to_string()) })
    })?;
    let report = instances(&reported).into_iter().find(|i| i["name"] == victim.as_str()).unwrap_or(Value::Null);
    let message = text(&report, "/message");
    for needle in ["CrashLoopBackOff", "back-off", "last exit code 137", "restarts"] {
        ensure!(message.contains(needle), "the report of {victim} lacks {needle:?}: {message}");
    }
    let degraded = condition(&reported, "Degraded").cloned().unwrap_or(Value::Null);
    ensure!(
        text(&degraded, "/status") == "True" && text(&degraded, "/message").contains(victim.as_str()),
        "Degraded does not name {victim}: {degraded}"
    );
    say(&format!("e2e: {victim} reported as: {message}"));
    // Nothing was deleted, and the replica recovers by itself after its back-off.
    wait_until_streaming(k, NS, ORDERS, 3)?;
    ensure!(uid(k, "pod", NS, &victim)? == pod_uid, "the pod {victim} was deleted");
    ensure!(uid(k, "pvc", NS, &claim)? == claim_uid, "the claim {claim} was deleted");
    Ok(())
}

/// `stead.dev/reclone=<replica>` gives that replica a new, empty volume
/// cloned from the primary (new claim, new pod, the rows are there), while a
/// request for the primary is refused and deletes nothing.
pub fn reclone_on_request_only(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    ensure_orders(ctx)?;
    let k = &ctx.kubectl.clone();
    let cluster = wait_until_streaming(k, NS, ORDERS, 3)?;
    let (primary, replicas) = primary_and_replicas(&cluster)?;
    let password = superuser_password(k, NS, ORDERS)?;
    let primary_ip = pod_ips(k, NS, &[primary.as_str()])?.remove(0);
    insert(&primary_ip, &password, 30, "before the re-clone")?;

    // The primary: refused, the request removed, its claim kept.
    let primary_claim = uid(k, "pvc", NS, &format!("data-{primary}"))?;
    expect_ok(k.run(&["annotate", "dbc", ORDERS, "-n", NS, &format!("stead.dev/reclone={primary}")])?)?;
    wait::until("the refused re-clone request to be removed", REACT_TIMEOUT, || {
        let object = k.get("dbc", NS, ORDERS)?.context("the cluster disappeared")?;
        let left = object.pointer("/metadata/annotations/stead.dev~1reclone").is_some();
        Ok(if left { Poll::Pending("still annotated".to_owned()) } else { Poll::Ready(()) })
    })?;
    let refused = events(k, NS, ORDERS, "RecloneRefused")?;
    ensure!(refused.iter().any(|e| e.contains("never deleted")), "no RecloneRefused event: {refused:?}");
    ensure!(uid(k, "pvc", NS, &format!("data-{primary}"))? == primary_claim, "the primary's claim was deleted");

    // A replica: a new claim and pod, cloned from the primary.
    let victim = replicas.last().context("orders has no replica")?.clone();
    let claim = format!("data-{victim}");
    let old_claim = uid(k, "pvc", NS, &claim)?;
    let asked = Instant::now();
    expect_ok(k.run(&["annotate", "dbc", ORDERS, "-n", NS, &format!("stead.dev/reclone={victim}")])?)?;
    wait::until(&format!("{claim} to be a new claim"), REACT_TIMEOUT, || {
        Ok(match k.get("pvc", NS, &claim)? {
            Some(pvc) if text(&pvc, "/metadata/uid") != old_claim => Poll::Ready(()),
            Some(pvc) => Poll::Pending(format!(
                "the old claim, deletionTimestamp {:?}",
                text(&pvc, "/metadata/deletionTimestamp")
            )),
            None => Poll::Pending("no claim".to_owned()),
        })
    })?;
    wait_until_streaming(k, NS, ORDERS, 3)?;
    ctx.figures
        .push(format!("re-clone of {victim} on request to streaming again: {:.1}s", asked.elapsed().as_secs_f64()));
    let victim_ip = pod_ips(k, NS, &[victim.as_str()])?.remove(0);
    wait_for(&victim_ip, &password, 30, "before the re-clone")?;
    let cloned = events(k, NS, ORDERS, "Recloning")?;
    ensure!(!cloned.is_empty(), "no Recloning event was recorded");
    let primary_now = k.get("dbc", NS, ORDERS)?.map(|c| text(&c, "/status/currentPrimary")).unwrap_or_default();
    ensure!(primary_now == primary, "the primary moved from {primary} to {primary_now} during a re-clone");
    Ok(())
}

/// A controller that stops right after recording a failover step (status
/// `phase: FailingOver`, `targetPrimary`) finishes that very failover when it
/// starts again: it promotes the recorded target, not the replica it would
/// pick itself (the lowest ordinal of two equally advanced replicas), once.
pub fn controller_restarted_mid_failover_resumes_it(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    const FAILOVER_NS: &str = "e2e-failover";
    const NAME: &str = "ha";
    ctx.pod_namespace(FAILOVER_NS)?;
    let k = ctx.kubectl.clone();
    if k.get("dbc", FAILOVER_NS, NAME)?.is_none() {
        let mut spec = crate::clusters::spec_with_replicas(3);
        spec["failoverDelay"] = json!("0s");
        expect_ok(k.apply(&crate::clusters::cluster(FAILOVER_NS, NAME, spec), &[])?)?;
    }
    let cluster = wait_until_streaming(&k, FAILOVER_NS, NAME, 3)?;
    let (old, mut replicas) = primary_and_replicas(&cluster)?;
    replicas.sort();
    let recorded = replicas.last().context("ha has no replica")?.clone();
    let count_before = cluster.pointer("/status/failoverCount").and_then(Value::as_i64).unwrap_or(0);
    let password = superuser_password(&k, FAILOVER_NS, NAME)?;
    let old_ip = pod_ips(&k, FAILOVER_NS, &[old.as_str()])?.remove(0);
    insert(&old_ip, &password, 20, "before the interrupted failover")?;
    for replica in &replicas {
        let ip = pod_ips(&k, FAILOVER_NS, &[replica.as_str()])?.remove(0);
        wait_for(&ip, &password, 20, "before the interrupted failover")?;
    }

    // The controller stops; the primary dies; the status says what a
    // controller that died right after step 1 would have recorded.
    restart_controller(ctx, false)?;
    ctx.kubelet()?.kill_pod(FAILOVER_NS, &old)?;
    let step = json!({"status": {
        "phase": "FailingOver",
        "targetPrimary": recorded,
        "primaryFailingSince": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }});
    expect_ok(k.run(&[
        "patch",
        "dbc",
        NAME,
        "-n",
        FAILOVER_NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        &step.to_string(),
    ])?)?;
    let restarted = Instant::now();
    restart_controller(ctx, true)?;
    let promoted = wait_for_primary(&k, FAILOVER_NS, NAME, &recorded, Duration::from_secs(90))?;
    ctx.figures.push(format!(
        "controller restarted mid-failover: start to {recorded} primary {:.1}s",
        restarted.elapsed().as_secs_f64()
    ));
    let count = promoted.pointer("/status/failoverCount").and_then(Value::as_i64).unwrap_or(0);
    ensure!(count == count_before + 1, "failoverCount went from {count_before} to {count}: one failover, counted once");
    let new_ip = pod_ips(&k, FAILOVER_NS, &[recorded.as_str()])?.remove(0);
    let found = row(&new_ip, &password, 20)?;
    ensure!(found == "before the interrupted failover", "the new primary has row 20 as {found:?}");
    wait_for_endpoints(&k, FAILOVER_NS, "ha-rw", std::slice::from_ref(&new_ip))?;
    // The old primary comes back as a replica of the recorded target.
    wait::until(&format!("{old} to rejoin as a streaming replica"), Duration::from_secs(120), || {
        let object = k.get("dbc", FAILOVER_NS, NAME)?.context("the cluster disappeared")?;
        let report = instances(&object).into_iter().find(|i| i["name"] == old.as_str()).unwrap_or(Value::Null);
        Ok(if report["role"] == "replica" && report["streaming"] == true {
            Poll::Ready(())
        } else {
            Poll::Pending(report.to_string())
        })
    })?;
    Ok(())
}
