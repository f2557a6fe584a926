//! The e2e scenarios, in the order they run. Each works in its own
//! namespace; the last one removes the webhook configurations.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::clusters::{
    FINALIZER, REACT_TIMEOUT, cluster, condition, create_namespace, expect_ok, expect_refused, make_available,
    minimal_spec, patch_statefulset_ready, spec_with_replicas, text, wait_for_condition, wait_for_field,
    wait_for_object, wait_until_gone,
};
use crate::ownership;
use crate::support::audit::{self, AuditCounts};
use crate::support::credentials::CONTROLLER_USER;
use crate::support::kubectl::{Kubectl, table};
use crate::support::say;
use crate::support::stead::{
    Controller, Counters, MUTATING_CONFIGURATION, VALIDATING_CONFIGURATION, WEBHOOK_QUANTITY_MESSAGE,
};
use crate::support::wait::{self, Poll};

/// How long the controller is watched for writes while nothing changes.
const QUIET_WINDOW: Duration = Duration::from_secs(10);
/// The controller counts as settled once it wrote nothing for this long.
const SETTLE_WINDOW: Duration = Duration::from_secs(3);

/// What every scenario can reach.
pub struct Ctx<'a> {
    /// kubectl as the admin user.
    pub kubectl: Kubectl,
    pub controller: &'a mut Controller,
    /// The API server's audit log (requests of the controller's user).
    pub audit_log: PathBuf,
    /// kube-controller-manager runs, so ownerReferences are garbage-collected.
    pub garbage_collection: bool,
    /// For scenarios that run more controllers: the binary, its user's kubeconfig, the log directory.
    pub controller_binary: PathBuf,
    pub controller_kubeconfig: PathBuf,
    pub log_dir: PathBuf,
}

/// One named scenario.
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&mut Ctx<'_>) -> anyhow::Result<()>,
}

/// All scenarios, in order.
pub const SCENARIOS: [Scenario; 14] = [
    Scenario { name: "defaulting", run: defaulting },
    Scenario { name: "invalid-specs-refused", run: invalid_specs_refused },
    Scenario { name: "server-dry-run-same-answers", run: server_dry_run_same_answers },
    Scenario { name: "scale-subresource", run: scale_subresource },
    Scenario { name: "storage-shrink-and-class-change-refused", run: storage_rules },
    Scenario { name: "children-with-owner-references", run: children_with_owner_references },
    Scenario { name: "statefulset-ready-makes-available", run: statefulset_ready_makes_available },
    Scenario { name: "printer-columns", run: printer_columns },
    Scenario { name: "deletion-protection-and-finalizer", run: deletion_protection_and_finalizer },
    Scenario { name: "no-writes-while-nothing-changes", run: no_writes_while_nothing_changes },
    Scenario { name: "foreign-objects-are-never-adopted", run: ownership::foreign_objects_are_never_adopted },
    Scenario { name: "removed-field-leaves-a-created-child", run: ownership::a_removed_field_leaves_a_created_child },
    Scenario { name: "leader-handover", run: ownership::leader_handover },
    Scenario { name: "invalid-spec-without-webhook-is-degraded", run: degraded_without_webhook },
];

/// `kubectl apply` of a cluster without replicas or port gets the defaults;
/// values the user wrote are kept.
fn defaulting(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-defaulting");
    create_namespace(k, ns)?;
    expect_ok(k.apply(&cluster(ns, "inventory", minimal_spec()), &[])?)?;
    let stored = k.get("dbc", ns, "inventory")?.context("the applied cluster is not there")?;
    ensure!(
        text(&stored, "/spec/replicas") == "1" && text(&stored, "/spec/port") == "5432",
        "expected spec.replicas 1 and spec.port 5432 from the mutating webhook, got {}",
        stored["spec"]
    );

    let mut spec = spec_with_replicas(3);
    spec["port"] = json!(6543);
    expect_ok(k.apply(&cluster(ns, "analytics", spec), &[])?)?;
    let stored = k.get("dbc", ns, "analytics")?.context("the applied cluster is not there")?;
    ensure!(
        text(&stored, "/spec/replicas") == "3" && text(&stored, "/spec/port") == "6543",
        "the webhook overwrote values the user wrote: {}",
        stored["spec"]
    );
    Ok(())
}

/// Invalid clusters that pass the CRD schema, with what the webhook says
/// about each (as kubectl shows it).
fn webhook_refusals(ns: &str) -> Vec<(&'static str, Value, Vec<&'static str>)> {
    let with = |name: &str, patch: Value| {
        let mut object = cluster(ns, name, spec_with_replicas(1));
        merge(&mut object["spec"], &patch);
        object
    };
    vec![
        (
            "storage size 10GB",
            with("bad-quantity", json!({"storage": {"size": "10GB"}})),
            vec![WEBHOOK_QUANTITY_MESSAGE],
        ),
        (
            "storage size below the minimum",
            with("too-small", json!({"storage": {"size": "1Ki"}})),
            vec![r#"spec.storage.size: Invalid value: "1Ki": must be between"#],
        ),
        (
            "requests above limits",
            with("greedy", json!({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}})),
            vec![r#"spec.resources.requests[cpu]: Invalid value: "2": must be less than or equal to cpu limit of 1"#],
        ),
        (
            "malformed image",
            with("bad-image", json!({"image": "postgres!!:17.2"})),
            vec![r#"spec.image: Invalid value: "postgres!!:17.2""#],
        ),
        (
            "name that is not a DNS-1035 label",
            cluster(ns, "1db", spec_with_replicas(1)),
            vec![r#"metadata.name: Invalid value: "1db""#],
        ),
        (
            "everything at once",
            with(
                "everything",
                json!({
                    "image": "postgres!!:17.2",
                    "storage": {"size": "10GB"},
                    "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
                }),
            ),
            vec![
                WEBHOOK_QUANTITY_MESSAGE,
                r#"spec.image: Invalid value: "postgres!!:17.2""#,
                "spec.resources.requests[cpu]",
            ],
        ),
    ]
}

/// Invalid specs are refused with the webhook's field errors; nothing is stored.
fn invalid_specs_refused(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-invalid");
    create_namespace(k, ns)?;
    for (case, object, needles) in webhook_refusals(ns) {
        let output = k.apply(&object, &[])?;
        expect_refused(&output, &needles).with_context(|| format!("case: {case}"))?;
    }
    // Bounds the schema also holds are refused too (by whichever runs first).
    let output = k.apply(&cluster(ns, "too-many", spec_with_replicas(12)), &[])?;
    expect_refused(&output, &["spec.replicas"]).context("case: 12 replicas")?;

    let stored = k.ok(&["get", "dbc", "-n", ns, "-o", "name"])?;
    ensure!(stored.trim().is_empty(), "refused clusters were stored anyway: {stored}");
    Ok(())
}

/// `--dry-run=server` gets exactly the answers a real request gets:
/// refusals, defaults and warnings, and stores nothing.
fn server_dry_run_same_answers(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-dry-run");
    create_namespace(k, ns)?;
    for (case, object, needles) in webhook_refusals(ns) {
        let dry = k.apply(&object, &["--dry-run=server"])?;
        expect_refused(&dry, &needles).with_context(|| format!("dry run, case: {case}"))?;
        let real = k.apply(&object, &[])?;
        expect_refused(&real, &needles).with_context(|| format!("real request, case: {case}"))?;
        ensure!(
            error_lines(&dry.stderr) == error_lines(&real.stderr),
            "case {case}: the dry run and the real request were refused differently:\n\
             dry run:\n{}\nreal:\n{}",
            dry.stderr,
            real.stderr
        );
    }

    let defaulted = expect_ok(k.apply(&cluster(ns, "dry", minimal_spec()), &["--dry-run=server", "-o", "json"])?)?;
    let defaulted: Value = serde_json::from_str(&defaulted).context("kubectl -o json printed something else")?;
    ensure!(
        text(&defaulted, "/spec/replicas") == "1" && text(&defaulted, "/spec/port") == "5432",
        "a server-side dry run was not defaulted: {}",
        defaulted["spec"]
    );
    ensure!(k.get("dbc", ns, "dry")?.is_none(), "a server-side dry run stored the cluster");

    // Warnings too: an even replica count is admitted with advice.
    let even = cluster(ns, "even", spec_with_replicas(2));
    let dry = k.apply(&even, &["--dry-run=server"])?;
    let real = k.apply(&even, &[])?;
    for (which, output) in [("dry run", &dry), ("real request", &real)] {
        ensure!(
            output.success() && output.stderr.contains("Warning:") && output.stderr.contains("spec.replicas"),
            "{which}: expected an admitted request with a warning about spec.replicas:\n{}",
            output.describe()
        );
    }
    Ok(())
}

/// The lines of a kubectl error that carry field errors, for comparing two refusals.
fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(|line| line.trim().trim_start_matches("* ").to_owned())
        .filter(|line| !line.is_empty() && !line.starts_with("Warning:"))
        .collect()
}

/// `kubectl scale` goes through the scale subresource; the controller follows.
fn scale_subresource(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-scale");
    create_namespace(k, ns)?;
    expect_ok(k.apply(&cluster(ns, "orders", spec_with_replicas(1)), &[])?)?;
    let scaled = expect_ok(k.run(&["scale", "dbc/orders", "--replicas=3", "-n", ns])?)?;
    ensure!(scaled.contains("scaled"), "kubectl scale printed {scaled:?}");
    wait_for_field(k, "dbc", ns, "orders", "/spec/replicas", "3")?;
    wait_for_field(k, "statefulset", ns, "orders", "/spec/replicas", "3")?;

    let path = format!("/apis/stead.dev/v1alpha1/namespaces/{ns}/databaseclusters/orders/scale");
    let scale = wait::until("the scale subresource to report the selector", REACT_TIMEOUT, || {
        let body = k.ok(&["get", "--raw", &path])?;
        let scale: Value = serde_json::from_str(&body).context("/scale did not return JSON")?;
        Ok(if text(&scale, "/status/selector").contains("app.kubernetes.io/instance=orders") {
            Poll::Ready(scale)
        } else {
            Poll::Pending(body)
        })
    })?;
    ensure!(text(&scale, "/kind") == "Scale" && text(&scale, "/spec/replicas") == "3", "unexpected Scale: {scale}");

    let output = k.run(&["scale", "dbc/orders", "--replicas=12", "-n", ns])?;
    expect_refused(&output, &["spec.replicas"]).context("scaling to 12 replicas")?;
    let stored = k.get("dbc", ns, "orders")?.context("the cluster disappeared")?;
    ensure!(
        text(&stored, "/spec/replicas") == "3",
        "a refused scale changed spec.replicas to {}",
        text(&stored, "/spec/replicas")
    );
    Ok(())
}

/// Storage may grow but never shrink; its class never changes.
fn storage_rules(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-storage");
    create_namespace(k, ns)?;
    let mut spec = spec_with_replicas(1);
    spec["storage"] = json!({"size": "2Gi", "storageClassName": "fast"});
    expect_ok(k.apply(&cluster(ns, "ledger", spec), &[])?)?;

    let merge_patch = |patch: Value, extra: &[&str]| {
        let patch = patch.to_string();
        let mut args = vec!["patch", "dbc", "ledger", "-n", ns, "--type=merge", "-p", &patch];
        args.extend_from_slice(extra);
        k.run(&args)
    };
    let shrink = json!({"spec": {"storage": {"size": "1Gi"}}});
    for extra in [&["--dry-run=server"][..], &[]] {
        let output = merge_patch(shrink.clone(), extra)?;
        expect_refused(&output, &["spec.storage.size", "may not shrink"])
            .with_context(|| format!("shrinking storage {extra:?}"))?;
    }

    let grown = merge_patch(json!({"spec": {"storage": {"size": "4Gi"}}}), &[])?;
    ensure!(
        grown.success() && grown.stderr.contains("Warning:"),
        "growing storage should be admitted with a warning:\n{}",
        grown.describe()
    );

    let output = merge_patch(json!({"spec": {"storage": {"storageClassName": "slow"}}}), &[])?;
    // The CRD's CEL rule or the webhook refuses it, whichever runs first.
    expect_refused(&output, &["storageClassName", "immutable"]).context("changing storageClassName")?;
    let remove = json!([{"op": "remove", "path": "/spec/storage/storageClassName"}]).to_string();
    let output = k.run(&["patch", "dbc", "ledger", "-n", ns, "--type=json", "-p", &remove])?;
    expect_refused(&output, &["storageClassName", "immutable"]).context("removing storageClassName")?;

    let stored = k.get("dbc", ns, "ledger")?.context("the cluster disappeared")?;
    ensure!(
        text(&stored, "/spec/storage/size") == "4Gi" && text(&stored, "/spec/storage/storageClassName") == "fast",
        "refused updates changed the storage: {}",
        stored["spec"]["storage"]
    );
    Ok(())
}

/// The controller creates both Services, the StatefulSet and (for more than
/// one replica) the PDB, each owned by the cluster, and the credentials
/// Secret, owned by nobody; the PDB goes at 1 replica.
fn children_with_owner_references(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-children");
    create_namespace(k, ns)?;
    expect_ok(k.apply(&cluster(ns, "orders", spec_with_replicas(3)), &[])?)?;
    let children = [
        ("service", "orders"),
        ("service", "orders-headless"),
        ("statefulset", "orders"),
        ("poddisruptionbudget", "orders"),
    ];
    let mut found = Vec::new();
    for (resource, name) in children {
        found.push((resource, name, wait_for_object(k, resource, ns, name)?));
    }
    let parent = k.get("dbc", ns, "orders")?.context("the cluster disappeared")?;
    let uid = text(&parent, "/metadata/uid");
    for (resource, name, child) in &found {
        let owners = child.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
        let owned = owners.iter().any(|owner| {
            text(owner, "/apiVersion") == "stead.dev/v1alpha1"
                && text(owner, "/kind") == "DatabaseCluster"
                && text(owner, "/name") == "orders"
                && text(owner, "/uid") == uid
                && owner.get("controller") == Some(&json!(true))
        });
        ensure!(
            owned,
            "{resource} {ns}/{name} is not controlled by DatabaseCluster orders (uid {uid}); ownerReferences: {owners:?}"
        );
    }
    let get = |resource: &str, name: &str| -> anyhow::Result<Value> {
        found
            .iter()
            .find(|(r, n, _)| *r == resource && *n == name)
            .map(|(_, _, object)| object.clone())
            .with_context(|| format!("{resource} {name} was not fetched"))
    };
    let headless = get("service", "orders-headless")?;
    ensure!(
        text(&headless, "/spec/clusterIP") == "None",
        "orders-headless is not headless: clusterIP {:?}",
        text(&headless, "/spec/clusterIP")
    );
    let sts = get("statefulset", "orders")?;
    ensure!(
        text(&sts, "/spec/serviceName") == "orders-headless" && text(&sts, "/spec/replicas") == "3",
        "StatefulSet orders: serviceName {:?}, replicas {:?}",
        text(&sts, "/spec/serviceName"),
        text(&sts, "/spec/replicas")
    );
    let pdb = get("poddisruptionbudget", "orders")?;
    ensure!(
        text(&pdb, "/spec/maxUnavailable") == "1",
        "PDB orders: maxUnavailable {:?}",
        text(&pdb, "/spec/maxUnavailable")
    );
    // The credentials the pods read: created once, owned by nobody, so they outlive the cluster.
    let secret = wait_for_object(k, "secret", ns, "orders-credentials")?;
    let owners = secret.pointer("/metadata/ownerReferences").cloned().unwrap_or(Value::Null);
    ensure!(
        text(&secret, "/type") == "kubernetes.io/basic-auth" && owners.is_null(),
        "Secret orders-credentials: type {:?} (want kubernetes.io/basic-auth), ownerReferences {owners} (want none)",
        text(&secret, "/type")
    );
    ensure!(
        secret.pointer("/data/username").is_some() && secret.pointer("/data/password").is_some(),
        "Secret orders-credentials lacks username or password: keys {:?}",
        secret.pointer("/data").and_then(Value::as_object).map(|d| d.keys().cloned().collect::<Vec<_>>())
    );
    let finalizers = parent.pointer("/metadata/finalizers").cloned().unwrap_or(Value::Null);
    ensure!(
        finalizers.as_array().is_some_and(|f| f.contains(&json!(FINALIZER))),
        "the cluster does not carry {FINALIZER}: finalizers {finalizers}"
    );

    expect_ok(k.run(&["scale", "dbc/orders", "--replicas=1", "-n", ns])?)?;
    wait_until_gone(k, "poddisruptionbudget", ns, "orders").context("the PDB should go when replicas drop to 1")?;
    Ok(())
}

/// StatefulSet readiness reaches the cluster's status, in both directions.
fn statefulset_ready_makes_available(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-ready");
    create_namespace(k, ns)?;
    expect_ok(k.apply(&cluster(ns, "ready", spec_with_replicas(3)), &[])?)?;
    wait_for_object(k, "statefulset", ns, "ready")?;
    wait_for_condition(k, ns, "ready", "Available", "False", "ReplicasNotReady")?;

    patch_statefulset_ready(k, ns, "ready", 3)?;
    let available = wait_for_condition(k, ns, "ready", "Available", "True", "AllReplicasReady")?;
    let generation = text(&available, "/metadata/generation");
    let checks = [
        ("status.readyReplicas", text(&available, "/status/readyReplicas"), "3".to_owned()),
        ("status.replicas", text(&available, "/status/replicas"), "3".to_owned()),
        ("status.observedGeneration", text(&available, "/status/observedGeneration"), generation.clone()),
        (
            "Available.observedGeneration",
            condition(&available, "Available").map_or_else(String::new, |c| text(c, "/observedGeneration")),
            generation,
        ),
    ];
    for (field, got, want) in checks {
        ensure!(got == want, "{field} is {got:?}, expected {want:?}");
    }
    wait_for_condition(k, ns, "ready", "Degraded", "False", "AsExpected")?;
    wait_for_condition(k, ns, "ready", "Progressing", "False", "Reconciled")?;

    // Losing a pod must reach the parent as well (no generation-only filter).
    patch_statefulset_ready(k, ns, "ready", 1)?;
    wait_for_condition(k, ns, "ready", "Available", "False", "ReplicasNotReady")?;
    wait_for_field(k, "dbc", ns, "ready", "/status/readyReplicas", "1")?;
    Ok(())
}

/// `kubectl get dbc` shows Replicas, Ready, Status and Age; `kubectl get stead` lists it.
fn printer_columns(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-columns");
    create_namespace(k, ns)?;
    make_available(k, ns, "shown", 3)?;
    let output = expect_ok(k.run(&["get", "dbc", "-n", ns])?)?;
    let rows = table(&output);
    ensure!(
        rows.first().map(Vec::as_slice) == Some(&["NAME", "REPLICAS", "READY", "STATUS", "AGE"].map(str::to_owned)[..]),
        "unexpected columns:\n{output}"
    );
    let row = rows.get(1).context("no row for the cluster")?;
    ensure!(
        row.len() == 5 && row[..4] == ["shown", "3", "3", "AllReplicasReady"].map(str::to_owned),
        "unexpected row:\n{output}"
    );
    let listed = expect_ok(k.run(&["get", "stead", "-n", ns, "-o", "name"])?)?;
    ensure!(
        listed.lines().any(|line| line == "databasecluster.stead.dev/shown"),
        "`kubectl get stead` (the category) does not list the cluster: {listed:?}"
    );
    Ok(())
}

/// DELETE is refused under deletionProtection; once off, the finalizer runs
/// and the cluster goes.
fn deletion_protection_and_finalizer(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-deletion");
    create_namespace(k, ns)?;
    let mut spec = spec_with_replicas(1);
    spec["deletionProtection"] = json!(true);
    expect_ok(k.apply(&cluster(ns, "vault", spec), &[])?)?;
    wait::until("the controller to add its finalizer", REACT_TIMEOUT, || {
        let object = k.get("dbc", ns, "vault")?.context("the cluster disappeared")?;
        let finalizers = object.pointer("/metadata/finalizers").cloned().unwrap_or(Value::Null);
        Ok(if finalizers.as_array().is_some_and(|f| f.contains(&json!(FINALIZER))) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("finalizers {finalizers}"))
        })
    })?;
    wait_for_object(k, "statefulset", ns, "vault")?;

    for extra in [&["--dry-run=server"][..], &[]] {
        let mut args = vec!["delete", "dbc", "vault", "-n", ns, "--wait=false"];
        args.extend_from_slice(extra);
        let output = k.run(&args)?;
        expect_refused(&output, &["spec.deletionProtection"])
            .with_context(|| format!("deleting a protected cluster {extra:?}"))?;
    }
    let stored = k.get("dbc", ns, "vault")?.context("a refused delete removed the cluster")?;
    ensure!(
        stored.pointer("/metadata/deletionTimestamp").is_none(),
        "a refused delete still marked the cluster for deletion"
    );

    expect_ok(k.run(&[
        "patch",
        "dbc",
        "vault",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"deletionProtection":false}}"#,
    ])?)?;
    expect_ok(k.run(&["delete", "dbc", "vault", "-n", ns, "--wait=false"])?)?;
    wait_until_gone(k, "dbc", ns, "vault").context("the finalizer should run and let the cluster go")?;

    if ctx.garbage_collection {
        for (resource, name) in [("statefulset", "vault"), ("service", "vault"), ("service", "vault-headless")] {
            wait_until_gone(k, resource, ns, name)
                .with_context(|| format!("{resource} {name} should be garbage-collected"))?;
        }
    } else {
        say("e2e:   (no kube-controller-manager: removal of children by ownerReference is not checked)");
    }
    Ok(())
}

/// Everything the controller's writes can be judged by, at one moment.
#[derive(Debug, PartialEq)]
struct WriteSnapshot {
    audit: AuditCounts,
    status_writes: Option<f64>,
    child_applies: Option<f64>,
    resource_versions: Vec<(String, String)>,
}

fn write_snapshot(ctx: &mut Ctx<'_>, ns: &str, objects: &[(&str, &str)]) -> anyhow::Result<WriteSnapshot> {
    let counters: Counters = ctx.controller.counters()?;
    let mut resource_versions = Vec::new();
    for (resource, name) in objects {
        let object = ctx.kubectl.get(resource, ns, name)?.with_context(|| format!("{resource} {ns}/{name} is gone"))?;
        resource_versions.push((format!("{resource}/{name}"), text(&object, "/metadata/resourceVersion")));
    }
    Ok(WriteSnapshot {
        audit: audit::read_counts(&ctx.audit_log, CONTROLLER_USER)?,
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

/// A cluster at rest causes no writes: no requests with write verbs from the
/// controller's user, no status writes or applies in its metrics, and no new
/// resourceVersions. A metadata-only change reconciles without touching
/// children or status.
fn no_writes_while_nothing_changes(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let ns = "e2e-quiet";
    create_namespace(&ctx.kubectl, ns)?;
    make_available(&ctx.kubectl, ns, "quiet", 3)?;
    let mut watched =
        vec![("dbc", "quiet"), ("statefulset", "quiet"), ("service", "quiet"), ("service", "quiet-headless")];
    if !ctx.garbage_collection {
        // kube-controller-manager's disruption controller writes PDB status itself.
        watched.push(("poddisruptionbudget", "quiet"));
    }
    settle(ctx)?;
    let before = write_snapshot(ctx, ns, &watched)?;
    ensure!(
        before.status_writes.is_some() && before.child_applies.is_some(),
        "the controller's /metrics lacks stead_controller_status_writes_total or \
         stead_controller_child_applies_total after reconciling a cluster: {before:?}"
    );
    thread::sleep(QUIET_WINDOW);
    let after = write_snapshot(ctx, ns, &watched)?;
    ensure!(
        after.audit.writes == before.audit.writes
            && after.status_writes == before.status_writes
            && after.child_applies == before.child_applies
            && after.resource_versions == before.resource_versions,
        "the controller wrote while nothing changed ({}s):\nbefore: {before:?}\nafter:  {after:?}",
        QUIET_WINDOW.as_secs()
    );

    // A metadata-only change triggers a reconcile that leaves children and status alone.
    let reconciles_before = ctx.controller.counters()?.reconciles.unwrap_or(0.0);
    expect_ok(ctx.kubectl.run(&["annotate", "dbc", "quiet", "-n", ns, "e2e.stead.dev/poke=1"])?)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reconciled = false;
    while Instant::now() < deadline {
        if ctx.controller.counters()?.reconciles.unwrap_or(0.0) > reconciles_before {
            reconciled = true;
            break;
        }
        thread::sleep(wait::POLL_INTERVAL);
    }
    if !reconciled {
        say("e2e:   (the controller did not reconcile on a metadata-only change; that part is skipped)");
        return Ok(());
    }
    settle(ctx)?;
    let poked = write_snapshot(ctx, ns, &watched)?;
    ensure!(
        poked.status_writes == after.status_writes && poked.resource_versions[1..] == after.resource_versions[1..],
        "a metadata-only change rewrote status or children:\nbefore: {after:?}\nafter:  {poked:?}"
    );
    say(&format!(
        "e2e:   (a metadata-only change: {} requests, {} of them writes, by the controller; children unchanged)",
        poked.audit.since(after.audit).requests,
        poked.audit.since(after.audit).writes
    ));
    Ok(())
}

/// With the webhook configurations gone, an invalid cluster is stored, and
/// the controller reports it Degraded/InvalidSpec with the webhook's message
/// instead of creating children. It can still be deleted.
fn degraded_without_webhook(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-degraded");
    create_namespace(k, ns)?;
    expect_ok(k.run(&[
        "delete",
        &format!("mutatingwebhookconfiguration/{MUTATING_CONFIGURATION}"),
        &format!("validatingwebhookconfiguration/{VALIDATING_CONFIGURATION}"),
    ])?)?;
    let mut spec = spec_with_replicas(1);
    spec["port"] = json!(5432);
    spec["storage"]["size"] = json!("10GB");
    let invalid = cluster(ns, "bypassed", spec);
    wait::until("the webhook removal to take effect", REACT_TIMEOUT, || {
        let output = k.create(&invalid, &["--dry-run=server"])?;
        Ok(if output.success() { Poll::Ready(()) } else { Poll::Pending(output.stderr.trim().to_owned()) })
    })?;
    expect_ok(k.create(&invalid, &[])?)?;

    let degraded = wait_for_condition(k, ns, "bypassed", "Degraded", "True", "InvalidSpec")?;
    let message = condition(&degraded, "Degraded").map_or_else(String::new, |c| text(c, "/message"));
    ensure!(
        message.contains(WEBHOOK_QUANTITY_MESSAGE),
        "the Degraded message should carry the webhook's words ({WEBHOOK_QUANTITY_MESSAGE:?}), got {message:?}"
    );
    wait_for_condition(k, ns, "bypassed", "Available", "False", "InvalidSpec")?;
    for (resource, name) in [("statefulset", "bypassed"), ("service", "bypassed"), ("service", "bypassed-headless")] {
        if k.get(resource, ns, name)?.is_some() {
            bail!("the controller created {resource} {name} for an invalid cluster");
        }
    }

    expect_ok(k.run(&["delete", "dbc", "bypassed", "-n", ns, "--wait=false"])?)?;
    wait_until_gone(k, "dbc", ns, "bypassed").context("an invalid cluster must still be deletable")
}

/// Merges `patch` into `target` (objects recursively, anything else replaced).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn merge_replaces_leaves_and_keeps_siblings() {
        let mut spec = spec_with_replicas(1);
        merge(&mut spec, &json!({"storage": {"size": "10GB"}, "image": "x"}));
        assert_eq!(spec, json!({"image": "x", "replicas": 1, "storage": {"size": "10GB"}}));
    }

    #[test]
    fn refusal_cases_are_what_the_rules_refuse() {
        // The webhook runs stead-crds' rules; each case must fail them with the
        // expected text, so a scenario failure points at the server, not the case.
        for (case, object, needles) in webhook_refusals("ns") {
            let cluster = stead_crds::validation::decode(&object).unwrap();
            let verdict = stead_crds::validation::validate_create(&cluster);
            let errors: Vec<String> = verdict.errors.iter().map(ToString::to_string).collect();
            for needle in needles {
                assert!(errors.iter().any(|error| error.contains(needle)), "{case}: {needle:?} not in {errors:?}");
            }
        }
    }

    #[test]
    fn error_lines_ignore_warnings_and_bullets() {
        let stderr =
            "Warning: spec.replicas: 2 is even\nThe DatabaseCluster \"x\" is invalid: \n* spec.a: Invalid value\n";
        assert_eq!(error_lines(stderr), ["The DatabaseCluster \"x\" is invalid:", "spec.a: Invalid value"]);
    }

    #[test]
    fn scenario_names_are_unique() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
    }
}
