//! The e2e scenarios, in the order they run. Each works in its own
//! namespace; the last one removes the webhook configurations. The ones
//! with database pods are in `database.rs`, the ones about who owns what in
//! `ownership.rs`, the webhook being down in `finalizers.rs`.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::clusters::{
    FINALIZER, REACT_TIMEOUT, cluster, condition, create_namespace, expect_ok, expect_refused, minimal_spec,
    spec_with_replicas, text, wait_for_condition, wait_for_field, wait_for_object, wait_until_gone,
};
use crate::support::kubectl::Kubectl;
use crate::support::kubelet::{EmptyDirs, Kubelet};
use crate::support::say;
use crate::support::stead::{
    Controller, ControllerOptions, MUTATING_CONFIGURATION, VALIDATING_CONFIGURATION, WEBHOOK_QUANTITY_MESSAGE,
};
use crate::support::wait::{self, Poll};
use crate::{apps, backups, database, finalizers, operations, ownership};

/// What every scenario can reach.
pub struct Ctx<'a> {
    /// kubectl as the admin user.
    pub kubectl: Kubectl,
    pub controller: &'a mut Controller,
    /// The API server's audit log (requests of the controller's user).
    pub audit_log: PathBuf,
    /// kube-controller-manager runs, so ownerReferences are garbage-collected.
    pub garbage_collection: bool,
    /// For scenarios that run more controllers: the binary, its user's
    /// kubeconfig, the options of the suite's controller, the log directory.
    pub controller_binary: PathBuf,
    pub controller_kubeconfig: PathBuf,
    pub controller_options: ControllerOptions,
    pub log_dir: PathBuf,
    /// The stand-in kubelet, or why database pods cannot run here.
    pub kubelet: Result<&'a Kubelet, String>,
    /// The stand-in snapshotter (VolumeSnapshots of the kubelet's claims).
    pub snapshotter: &'a crate::support::snapshotter::Snapshotter,
    /// Where stead-webhook serves, and the CA of its certificate.
    pub webhook_url: String,
    pub webhook_ca: String,
    /// `e2e: figure: …` lines, printed at the end of the run.
    pub figures: Vec<String>,
}

impl Ctx<'_> {
    /// The stand-in kubelet; a [`Skip`] when pods cannot run on this machine.
    pub fn kubelet(&self) -> anyhow::Result<&Kubelet> {
        self.kubelet.clone().map_err(|reason| Skip(format!("needs database pods: {reason}")).into())
    }

    /// Creates a namespace whose database pods the stand-in kubelet runs,
    /// with emptyDirs owned as a kubelet owns them (see [`EmptyDirs`]).
    pub fn pod_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        self.pod_namespace_with(namespace, EmptyDirs::AsKubelet)
    }

    /// [`Self::pod_namespace`] with emptyDirs owned as `empty_dirs` says.
    pub fn pod_namespace_with(&self, namespace: &str, empty_dirs: EmptyDirs) -> anyhow::Result<()> {
        let kubelet = self.kubelet()?;
        let created = self.kubectl.run(&["create", "namespace", namespace])?;
        if !created.success() && !created.stderr.contains("AlreadyExists") {
            bail!("creating namespace {namespace}: {}", created.describe());
        }
        kubelet.serve_namespace(namespace, empty_dirs);
        Ok(())
    }
}

/// A scenario that cannot run on this machine, and why (not a failure).
#[derive(Debug)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// One named scenario.
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&mut Ctx<'_>) -> anyhow::Result<()>,
}

/// All scenarios, in order.
pub const SCENARIOS: [Scenario; 33] = [
    Scenario { name: "defaulting", run: defaulting },
    Scenario { name: "invalid-specs-refused", run: invalid_specs_refused },
    Scenario { name: "server-dry-run-same-answers", run: server_dry_run_same_answers },
    Scenario { name: "scale-subresource", run: scale_subresource },
    Scenario { name: "storage-shrink-and-class-change-refused", run: storage_rules },
    Scenario { name: "children-with-owner-references", run: children_with_owner_references },
    Scenario { name: "printer-columns", run: database::one_instance_and_printer_columns },
    Scenario { name: "instance-starts-on-kubelet-owned-volumes", run: database::starts_on_kubelet_owned_volumes },
    Scenario { name: "three-instances-replicate", run: database::three_instances_replicate },
    Scenario { name: "row-written-to-rw-is-read-on-every-replica", run: database::row_reaches_every_replica },
    Scenario { name: "no-writes-while-nothing-changes", run: database::no_writes_while_nothing_changes },
    Scenario { name: "scaling-keeps-the-primary", run: database::scaling_keeps_the_primary },
    Scenario { name: "database-pod-crash-is-restarted", run: database::crashed_pod_is_restarted },
    Scenario { name: "primary-failure-promotes-a-replica", run: database::primary_failure_promotes_a_replica },
    Scenario {
        name: "controller-restarted-mid-failover-resumes-it",
        run: operations::controller_restarted_mid_failover_resumes_it,
    },
    Scenario { name: "switchover-loses-no-row", run: operations::switchover_loses_no_row },
    Scenario {
        name: "crash-looping-replica-is-reported-and-left-alone",
        run: operations::crash_looping_replica_is_reported_and_left_alone,
    },
    Scenario { name: "reclone-on-request-only", run: operations::reclone_on_request_only },
    Scenario {
        name: "image-change-rolls-replicas-first-and-the-primary-last",
        run: operations::image_change_rolls_replicas_first_and_the_primary_last,
    },
    Scenario { name: "backup-of-a-replica-completes", run: backups::backup_of_a_replica_completes },
    Scenario { name: "restore-into-a-new-cluster", run: backups::restore_into_a_new_cluster },
    Scenario { name: "failed-snapshot-fails-the-backup", run: backups::failed_snapshot_fails_the_backup },
    Scenario { name: "scheduled-backups-keep-the-last-one", run: backups::scheduled_backups_keep_the_last_one },
    Scenario {
        name: "app-becomes-deployment-service-and-ingress",
        run: apps::app_becomes_deployment_service_and_ingress,
    },
    Scenario {
        name: "app-scales-and-its-ingress-follows-the-spec",
        run: apps::app_scales_and_its_ingress_follows_the_spec,
    },
    Scenario { name: "app-refusals-and-host-collision", run: apps::app_refusals_and_host_collision },
    Scenario { name: "deleted-cluster-takes-its-pods", run: database::deleted_cluster_takes_its_pods },
    Scenario { name: "deletion-protection-and-finalizer", run: deletion_protection_and_finalizer },
    Scenario { name: "foreign-objects-are-never-adopted", run: ownership::foreign_objects_are_never_adopted },
    Scenario { name: "removed-field-leaves-a-created-child", run: ownership::a_removed_field_leaves_a_created_child },
    Scenario { name: "leader-handover", run: ownership::leader_handover },
    Scenario { name: "finalizers-without-the-webhook", run: finalizers::finalizers_without_the_webhook },
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

/// The controller creates the headless Service and the three per role, the
/// StatefulSet and (for more than one replica) the PDB, each owned by the
/// cluster, and the credentials Secret, owned by nobody; no all-pods Service
/// `orders` (stead 0.1's); the PDB goes at 1 replica. No pods run here.
fn children_with_owner_references(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-children");
    create_namespace(k, ns)?;
    expect_ok(k.apply(&cluster(ns, "orders", spec_with_replicas(3)), &[])?)?;
    let children = [
        ("service", "orders-rw"),
        ("service", "orders-ro"),
        ("service", "orders-r"),
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

    ensure!(
        k.get("service", ns, "orders")?.is_none(),
        "the all-pods Service orders of stead 0.1 (writes to replicas too) should not exist"
    );

    expect_ok(k.run(&["scale", "dbc/orders", "--replicas=1", "-n", ns])?)?;
    wait_until_gone(k, "poddisruptionbudget", ns, "orders").context("the PDB should go when replicas drop to 1")?;
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
        for (resource, name) in [("statefulset", "vault"), ("service", "vault-rw"), ("service", "vault-headless")] {
            wait_until_gone(k, resource, ns, name)
                .with_context(|| format!("{resource} {name} should be garbage-collected"))?;
        }
    } else {
        say("e2e:   (no kube-controller-manager: removal of children by ownerReference is not checked)");
    }
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
    let children = [
        ("statefulset", "bypassed"),
        ("service", "bypassed-rw"),
        ("service", "bypassed-ro"),
        ("service", "bypassed-r"),
        ("service", "bypassed-headless"),
    ];
    for (resource, name) in children {
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
