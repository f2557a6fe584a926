//! Scenarios about who owns what: objects stead did not create are never
//! adopted, fields of the children it created stay its own to remove, and
//! the Lease passes from one controller replica to the next.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::clusters::{
    REACT_TIMEOUT, cluster, condition, create_namespace, expect_ok, spec_with_replicas, text, wait_for_condition,
    wait_for_field, wait_until_gone,
};
use crate::scenarios::Ctx;
use crate::support::audit::{self, ObjectRef};
use crate::support::credentials::CONTROLLER_USER;
use crate::support::kubectl::Kubectl;
use crate::support::say;
use crate::support::stead::{Controller, ControllerOptions, LeaderElection};
use crate::support::wait::{self, Poll};

/// A Service of the user's, as `kubectl apply` makes it from one port and nothing else.
fn users_service(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "web", "port": 80}]}
    })
}

/// The name of a Service child of the cluster `shop`: its primary (read-write)
/// Service. It must stay the name of one of the cluster's Services.
const SHOP_CHILD_SERVICE: &str = "shop-rw";

/// The user's own StatefulSet `ledger` (no pods), unrelated to any DatabaseCluster.
fn users_statefulset(namespace: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "ledger", "namespace": namespace, "labels": {"app": "ledger-legacy"}},
        "spec": {
            "replicas": 0,
            "serviceName": "ledger-legacy",
            "selector": {"matchLabels": {"app": "ledger-legacy"}},
            "template": {
                "metadata": {"labels": {"app": "ledger-legacy"}},
                "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}
            }
        }
    })
}

/// Fails unless the object is exactly as `before`: same resourceVersion,
/// labels and spec, no ownerReference, no field manager of stead, and no
/// update, patch or delete of it by the controller in the audit log.
fn ensure_untouched(
    ctx: &Ctx<'_>,
    resource: &str,
    plural: &str,
    namespace: &str,
    before: &Value,
) -> anyhow::Result<()> {
    let name = text(before, "/metadata/name");
    let now = ctx
        .kubectl
        .get(resource, namespace, &name)?
        .with_context(|| format!("the user's {resource} {namespace}/{name} is gone"))?;
    let owners = now.pointer("/metadata/ownerReferences").cloned().unwrap_or(Value::Null);
    ensure!(owners.is_null(), "the user's {resource} {namespace}/{name} gained ownerReferences: {owners}");
    for pointer in ["/metadata/labels", "/metadata/annotations", "/spec"] {
        ensure!(
            now.pointer(pointer) == before.pointer(pointer),
            "the user's {resource} {namespace}/{name} changed at {pointer}:\nbefore: {}\nnow:    {}",
            before.pointer(pointer).unwrap_or(&Value::Null),
            now.pointer(pointer).unwrap_or(&Value::Null)
        );
    }
    let managers: Vec<String> = now
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().map(|e| text(e, "/manager")).collect())
        .unwrap_or_default();
    ensure!(
        !managers.iter().any(|m| m == "stead-controller"),
        "stead-controller manages fields of the user's {resource} {namespace}/{name}: {managers:?}"
    );
    ensure!(
        text(&now, "/metadata/resourceVersion") == text(before, "/metadata/resourceVersion"),
        "the user's {resource} {namespace}/{name} was written: resourceVersion {} became {}",
        text(before, "/metadata/resourceVersion"),
        text(&now, "/metadata/resourceVersion")
    );
    let object = ObjectRef { resource: plural, namespace, name: &name };
    let changes = audit::read_changes_to(&ctx.audit_log, CONTROLLER_USER, object)?;
    ensure!(changes.is_empty(), "the controller wrote to the user's {resource} {namespace}/{name}: {changes:?}");
    Ok(())
}

/// The Degraded message names the object and the fix.
fn ensure_foreign_message(cluster: &Value, object: &str) -> anyhow::Result<()> {
    let message = condition(cluster, "Degraded").map_or_else(String::new, |c| text(c, "/message"));
    let names_the_object = format!("{object} already exists and is not controlled by DatabaseCluster");
    for needle in [names_the_object.as_str(), "rename the DatabaseCluster"] {
        ensure!(message.contains(needle), "the Degraded message lacks {needle:?}: {message:?}");
    }
    for marker in ["Status {", "Some(", "ListMeta"] {
        ensure!(!message.contains(marker), "Rust Debug output ({marker:?}) in the Degraded message: {message:?}");
    }
    Ok(())
}

/// A user's Service and StatefulSet with a child's name are left exactly as
/// they are: the cluster reports Degraded=True/ForeignChild, neither object
/// gains an ownerReference or a field, and deleting the cluster leaves them.
/// Once the user deletes their Service, the cluster creates its own. The
/// user's Service `shop` of the original report (the name of stead 0.1's
/// all-pods Service) is left alone throughout as well.
pub fn foreign_objects_are_never_adopted(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let ns = "e2e-foreign";
    create_namespace(&ctx.kubectl, ns)?;
    let k = ctx.kubectl.clone();
    expect_ok(k.apply(&users_service(ns, "shop"), &[])?)?;
    expect_ok(k.apply(&users_service(ns, SHOP_CHILD_SERVICE), &[])?)?;
    expect_ok(k.apply(&users_statefulset(ns), &[])?)?;
    let shop_service = k.get("service", ns, "shop")?.context("the user's Service shop is not there")?;
    let service = k.get("service", ns, SHOP_CHILD_SERVICE)?.context("the user's Service is not there")?;
    let statefulset = k.get("statefulset", ns, "ledger")?.context("the user's StatefulSet is not there")?;

    expect_ok(k.apply(&cluster(ns, "shop", spec_with_replicas(1)), &[])?)?;
    expect_ok(k.apply(&cluster(ns, "ledger", spec_with_replicas(1)), &[])?)?;
    let shop = wait_for_condition(&k, ns, "shop", "Degraded", "True", "ForeignChild")?;
    ensure_foreign_message(&shop, &format!("Service {ns}/{SHOP_CHILD_SERVICE}"))?;
    let ledger = wait_for_condition(&k, ns, "ledger", "Degraded", "True", "ForeignChild")?;
    ensure_foreign_message(&ledger, &format!("StatefulSet {ns}/ledger"))?;
    let untouched = |ctx: &Ctx<'_>| -> anyhow::Result<()> {
        ensure_untouched(ctx, "service", "services", ns, &shop_service)?;
        ensure_untouched(ctx, "service", "services", ns, &service)?;
        ensure_untouched(ctx, "statefulset", "statefulsets", ns, &statefulset)
    };
    untouched(ctx)?;
    // The controller retries with backoff (1 s, 2 s, …): still nothing written after a few.
    thread::sleep(Duration::from_secs(4));
    untouched(ctx)?;

    // The fix the message gives: without the user's Service, the cluster makes its own.
    expect_ok(k.run(&["delete", "service", SHOP_CHILD_SERVICE, "-n", ns])?)?;
    wait::until(&format!("the cluster shop to create its own Service {SHOP_CHILD_SERVICE}"), REACT_TIMEOUT, || {
        let own = k.get("service", ns, SHOP_CHILD_SERVICE)?;
        let owner = own.as_ref().and_then(|s| s.pointer("/metadata/ownerReferences/0/name")).and_then(Value::as_str);
        Ok(if owner == Some("shop") { Poll::Ready(()) } else { Poll::Pending(format!("owner {owner:?}")) })
    })?;
    wait::until("the cluster shop to leave Degraded/ForeignChild", REACT_TIMEOUT, || {
        let shop = k.get("dbc", ns, "shop")?.context("the cluster shop is gone")?;
        let reason = condition(&shop, "Degraded").map_or_else(String::new, |c| text(c, "/reason"));
        Ok(if reason == "ForeignChild" { Poll::Pending(reason) } else { Poll::Ready(()) })
    })?;
    ensure_untouched(ctx, "service", "services", ns, &shop_service)?;

    // Deleting the clusters leaves the user's objects alone (with garbage collection running too).
    expect_ok(k.run(&["delete", "dbc", "shop", "ledger", "-n", ns, "--wait=false"])?)?;
    wait_until_gone(&k, "dbc", ns, "ledger")?;
    wait_until_gone(&k, "dbc", ns, "shop")?;
    if ctx.garbage_collection {
        wait_until_gone(&k, "service", ns, "ledger-headless").context("the cluster's own children are collected")?;
    }
    ensure_untouched(ctx, "service", "services", ns, &shop_service)?;
    ensure_untouched(ctx, "statefulset", "statefulsets", ns, &statefulset)
}

/// The managers of an object's fields, as `manager/operation`.
fn field_managers(kubectl: &Kubectl, resource: &str, namespace: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let json = kubectl.ok(&["get", resource, name, "-n", namespace, "--show-managed-fields", "-o", "json"])?;
    let object: Value = serde_json::from_str(&json).context("kubectl printed something other than JSON")?;
    Ok(object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().map(|e| format!("{}/{}", text(e, "/manager"), text(e, "/operation"))).collect())
        .unwrap_or_default())
}

/// Children are created with a POST, which the API server records as an
/// Update by stead-controller, not as its Apply. A field the cluster no
/// longer asks for must still leave the child: here the container's
/// `resources`, once `spec.resources` is removed.
pub fn a_removed_field_leaves_a_created_child(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (k, ns) = (&ctx.kubectl, "e2e-removed-field");
    create_namespace(k, ns)?;
    let mut spec = spec_with_replicas(1);
    spec["resources"] = json!({"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}});
    expect_ok(k.apply(&cluster(ns, "lean", spec), &[])?)?;
    let resources = "/spec/template/spec/containers/0/resources";
    wait_for_field(k, "statefulset", ns, "lean", &format!("{resources}/limits/memory"), "1Gi")?;
    let created = field_managers(k, "statefulset", ns, "lean")?;
    ensure!(created.contains(&"stead-controller/Update".to_owned()), "a created StatefulSet's managers: {created:?}");

    let remove = json!([{"op": "remove", "path": "/spec/resources"}]).to_string();
    expect_ok(k.run(&["patch", "dbc", "lean", "-n", ns, "--type=json", "-p", &remove])?)?;
    // What the API server stores for a container without resources.
    wait_for_field(k, "statefulset", ns, "lean", resources, "{}")
        .context("the limits and requests should leave the StatefulSet with spec.resources")?;
    let applied = field_managers(k, "statefulset", ns, "lean")?;
    ensure!(
        !applied.iter().any(|m| m == "stead-controller/Update"),
        "the created fields were not handed to the apply: managers {applied:?}"
    );
    Ok(())
}

/// The Lease's holder, if any.
fn lease_holder(kubectl: &Kubectl, namespace: &str) -> anyhow::Result<Option<String>> {
    let lease = kubectl.get("lease", namespace, "stead-controller")?;
    Ok(lease.map(|l| text(&l, "/spec/holderIdentity")).filter(|h| !h.is_empty()))
}

/// Lets the controller's user hold the Lease in `namespace`, with the Role stead ships.
fn grant_lease(kubectl: &Kubectl, namespace: &str) -> anyhow::Result<()> {
    let role = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/rbac/leader-election-role.yaml");
    let role = role.to_str().with_context(|| format!("{} is not UTF-8", role.display()))?;
    kubectl
        .ok(&["apply", "-n", namespace, "--server-side", "--field-manager=stead-e2e", "-f", role])
        .context("installing the leader-election Role")?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "stead-controller-leader-election", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "stead-controller-leader-election"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}]
    });
    kubectl.apply(&binding, &["--server-side", "--field-manager=stead-e2e"])?.ok().context("binding the Role")?;
    let as_controller = format!("--as={CONTROLLER_USER}");
    wait::until("the leader-election Role to take effect", REACT_TIMEOUT, || {
        let output =
            kubectl.run(&["auth", "can-i", "update", "leases/stead-controller", "-n", namespace, &as_controller])?;
        Ok(if output.stdout.trim() == "yes" { Poll::Ready(()) } else { Poll::Pending(output.describe()) })
    })
}

/// Waits until `to` reconciles, checking all along that `from` and `to`
/// never lead at once; returns how long it took.
fn time_takeover(from: &mut Controller, to: &mut Controller, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        // The new leader first: once it leads, the old one had stopped already.
        let new = to.leads()?;
        let old = from.leads().unwrap_or(false);
        ensure!(!(new && old), "two replicas led at once, {:?} after the signal", started.elapsed());
        if new {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("the standby did not take over within {within:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Two leader-elected controllers: SIGTERM makes the holder release the
/// Lease, and the standby takes over long before the lease would have run
/// out (15 s). After SIGKILL the standby waits for the lease to run out.
/// Both figures are printed.
pub fn leader_handover(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let (lease_ns, idle_ns) = ("e2e-lease", "e2e-lease-idle");
    let k = ctx.kubectl.clone();
    create_namespace(&k, lease_ns)?;
    // The pair watches a namespace of its own, with nothing in it: the suite's controller does the work elsewhere.
    create_namespace(&k, idle_ns)?;
    grant_lease(&k, lease_ns)?;
    let replica = |identity: &str| -> anyhow::Result<Controller> {
        let options = ControllerOptions {
            namespace: Some(idle_ns.to_owned()),
            leader_elect: Some(LeaderElection { identity: identity.to_owned(), lease_namespace: lease_ns.to_owned() }),
            ..ControllerOptions::default()
        };
        let mut controller =
            Controller::spawn(&ctx.controller_binary, &ctx.controller_kubeconfig, &ctx.log_dir, &options)?;
        controller.wait_ready()?;
        Ok(controller)
    };
    let wait_for_holder = |who: &str| {
        wait::until(&format!("{who} to hold the Lease {lease_ns}/stead-controller"), REACT_TIMEOUT, || {
            Ok(match lease_holder(&k, lease_ns)? {
                Some(holder) if holder == who => Poll::Ready(()),
                other => Poll::Pending(format!("holder {other:?}")),
            })
        })
    };

    let mut a = replica("e2e-a")?;
    wait_for_holder("e2e-a")?;
    wait::until("e2e-a to lead", REACT_TIMEOUT, || {
        Ok(if a.leads()? { Poll::Ready(()) } else { Poll::Pending("not yet".into()) })
    })?;
    let mut b = replica("e2e-b")?;
    thread::sleep(Duration::from_secs(2));
    ensure!(!b.leads()?, "the standby leads while the holder renews");

    a.signal("TERM")?;
    let graceful = time_takeover(&mut a, &mut b, Duration::from_secs(30))?;
    let exit = a.process().name().to_owned();
    a.stop().with_context(|| format!("{exit} did not stop after SIGTERM"))?;
    wait_for_holder("e2e-b")?;
    say(&format!(
        "e2e:   (leader handover on SIGTERM: the standby reconciles {:.2}s after the signal)",
        graceful.as_secs_f64()
    ));
    ensure!(
        graceful < Duration::from_secs(10),
        "the standby took over {graceful:?} after SIGTERM: the Lease was not released, it ran out"
    );

    let mut a = replica("e2e-a")?;
    thread::sleep(Duration::from_secs(2));
    b.signal("KILL")?;
    let killed = time_takeover(&mut b, &mut a, Duration::from_secs(40))?;
    say(&format!(
        "e2e:   (leader handover after SIGKILL: the standby reconciles {:.2}s after the signal)",
        killed.as_secs_f64()
    ));
    wait_for_holder("e2e-a")?;
    b.stop()?;
    a.stop()?;
    Ok(())
}
