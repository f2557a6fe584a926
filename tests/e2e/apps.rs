//! App scenarios: one App becomes a Deployment, a Service and an Ingress
//! through the same webhook and controller as DatabaseCluster. The real
//! Deployment and ReplicaSet controllers of kube-controller-manager make
//! the pods; no kubelet runs them (an App's image has no stead binary), so
//! the scenario reports them Ready through the status subresource, as a
//! kubelet would, and the readiness travels Deployment → App status.

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::clusters::{REACT_TIMEOUT, condition, create_namespace, expect_ok, expect_refused, text};
use crate::scenarios::{Ctx, Skip};
use crate::support::audit::{self, ObjectRef};
use crate::support::credentials::CONTROLLER_USER;
use crate::support::kubectl::Kubectl;
use crate::support::wait::{self, Poll};

const NS: &str = "e2e-apps";
const SHOP: &str = "shop";
const HOST: &str = "shop.example.com";
/// How long the controller is watched for writes while nothing changes.
const QUIET: Duration = Duration::from_secs(8);

fn app(name: &str, spec: &Value) -> Value {
    json!({"apiVersion": "stead.dev/v1alpha1", "kind": "App", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn needs_controller_manager(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    if ctx.garbage_collection {
        Ok(())
    } else {
        Err(Skip("needs kube-controller-manager (its Deployment and ReplicaSet controllers)".to_owned()).into())
    }
}

fn ensure_namespace(k: &Kubectl) -> anyhow::Result<()> {
    if k.get("namespace", "", NS)?.is_none() {
        create_namespace(k, NS)?;
    }
    Ok(())
}

/// Reports every pod of the App Ready, as a kubelet would once its containers run.
fn report_pods_ready(k: &Kubectl, app: &str) -> anyhow::Result<usize> {
    let selector = format!("app.kubernetes.io/instance={app},app.kubernetes.io/name=app");
    let out = expect_ok(k.run(&["get", "pods", "-n", NS, "-l", &selector, "-o", "json"])?)?;
    let list: Value = serde_json::from_str(&out).context("kubectl printed something other than JSON")?;
    let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut marked = 0;
    for pod in list["items"].as_array().into_iter().flatten() {
        let ready = pod["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        if ready || pod.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let image = text(pod, "/spec/containers/0/image");
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": "app", "image": image, "imageID": "", "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }],
        }});
        let name = text(pod, "/metadata/name");
        expect_ok(k.run(&[
            "patch",
            "pod",
            &name,
            "-n",
            NS,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])?)?;
        marked += 1;
    }
    Ok(marked)
}

/// Waits until the App reports `ready` ready replicas and Available, reporting new pods Ready meanwhile.
fn wait_until_available(k: &Kubectl, name: &str, ready: i64) -> anyhow::Result<Value> {
    wait::until(&format!("App {NS}/{name} to be Available with {ready} ready replicas"), REACT_TIMEOUT, || {
        report_pods_ready(k, name)?;
        let object = k.get("app", NS, name)?.context("the App disappeared")?;
        let available = condition(&object, "Available").is_some_and(|c| text(c, "/status") == "True");
        let count = object.pointer("/status/readyReplicas").and_then(Value::as_i64).unwrap_or(0);
        Ok(if available && count == ready {
            Poll::Ready(object)
        } else {
            Poll::Pending(format!("readyReplicas {count}, status {}", object["status"]))
        })
    })
}

fn owner_kind(k: &Kubectl, resource: &str, name: &str) -> anyhow::Result<String> {
    let object = crate::clusters::wait_for_object(k, resource, NS, name)?;
    Ok(text(&object, "/metadata/ownerReferences/0/kind"))
}

/// An App is defaulted by the webhook, becomes a Deployment, a Service and
/// an Ingress it owns; the pods the real Deployment controller makes report
/// Ready and the App says so (Available, readyReplicas, the URL); and at rest
/// the controller writes nothing.
pub fn app_becomes_deployment_service_and_ingress(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    needs_controller_manager(ctx)?;
    let k = ctx.kubectl.clone();
    ensure_namespace(&k)?;
    let spec = json!({"image": "nginx:1.27", "replicas": 2, "ingress": {"host": HOST}});
    expect_ok(k.apply(&app(SHOP, &spec), &[])?)?;
    let stored = k.get("app", NS, SHOP)?.context("the App was not stored")?;
    ensure!(stored["spec"]["containerPort"] == 8080, "containerPort not defaulted: {}", stored["spec"]);
    ensure!(stored["spec"]["service"]["port"] == 8080, "service.port not defaulted: {}", stored["spec"]);
    ensure!(stored["spec"]["ingress"]["path"] == "/", "ingress.path not defaulted: {}", stored["spec"]);
    for resource in ["deployment", "service", "ingress"] {
        let kind = owner_kind(&k, resource, SHOP)?;
        ensure!(kind == "App", "{resource} {SHOP} is owned by {kind:?}, not the App");
    }
    let service = k.get("service", NS, SHOP)?.context("the Service disappeared")?;
    ensure!(service["spec"]["ports"][0]["port"] == 8080, "Service ports: {}", service["spec"]["ports"]);
    let available = wait_until_available(&k, SHOP, 2)?;
    ensure!(text(&available, "/status/url") == format!("http://{HOST}/"), "url: {}", available["status"]);
    let columns = expect_ok(k.run(&["get", "app", SHOP, "-n", NS])?)?;
    ensure!(columns.contains("URL") && columns.contains(HOST), "printer columns: {columns}");

    // At rest: no write to the App or any child.
    crate::support::say("e2e: apps: at rest, watching for writes");
    let versions = |k: &Kubectl| -> anyhow::Result<Vec<String>> {
        ["app", "deployment", "service", "ingress"]
            .iter()
            .map(|r| Ok(text(&k.get(r, NS, SHOP)?.context("an object disappeared")?, "/metadata/resourceVersion")))
            .collect()
    };
    let changes = |ctx: &Ctx<'_>| -> anyhow::Result<usize> {
        let mut total = 0;
        for resource in ["apps", "deployments", "services", "ingresses"] {
            let object = ObjectRef { resource, namespace: NS, name: SHOP };
            total += audit::read_changes_to(&ctx.audit_log, CONTROLLER_USER, object)?.len();
        }
        Ok(total)
    };
    let (before, writes_before) = (versions(&k)?, changes(ctx)?);
    std::thread::sleep(QUIET);
    let (after, writes_after) = (versions(&k)?, changes(ctx)?);
    ensure!(before == after, "something was written at rest: resourceVersions {before:?} -> {after:?}");
    ensure!(writes_after == writes_before, "the controller wrote {} times at rest", writes_after - writes_before);
    ctx.figures.push(format!("App at rest: 0 writes in {}s", QUIET.as_secs()));
    Ok(())
}

/// `kubectl scale app/shop` goes through the scale subresource to the
/// Deployment; removing `spec.ingress` removes the Ingress (and the URL),
/// adding it back creates it again.
pub fn app_scales_and_its_ingress_follows_the_spec(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    needs_controller_manager(ctx)?;
    let k = ctx.kubectl.clone();
    if k.get("app", NS, SHOP)?.is_none() {
        app_becomes_deployment_service_and_ingress(ctx)?;
    }
    expect_ok(k.run(&["scale", "app", SHOP, "-n", NS, "--replicas=3"])?)?;
    crate::clusters::wait_for_field(&k, "deployment", NS, SHOP, "/spec/replicas", "3")?;
    let scaled = wait_until_available(&k, SHOP, 3)?;
    ensure!(scaled.pointer("/status/replicas") == Some(&json!(3)), "status.replicas: {}", scaled["status"]);

    let remove = json!([{"op": "remove", "path": "/spec/ingress"}]).to_string();
    expect_ok(k.run(&["patch", "app", SHOP, "-n", NS, "--type=json", "-p", &remove])?)?;
    crate::clusters::wait_until_gone(&k, "ingress", NS, SHOP)?;
    wait::until("the URL to go with the Ingress", REACT_TIMEOUT, || {
        let object = k.get("app", NS, SHOP)?.context("the App disappeared")?;
        Ok(if object.pointer("/status/url").is_none() {
            Poll::Ready(())
        } else {
            Poll::Pending(object["status"].to_string())
        })
    })?;
    let add = json!({"spec": {"ingress": {"host": HOST, "tls": {"secretName": "shop-tls"}}}}).to_string();
    expect_ok(k.run(&["patch", "app", SHOP, "-n", NS, "--type=merge", "-p", &add])?)?;
    let ingress = crate::clusters::wait_for_object(&k, "ingress", NS, SHOP)?;
    ensure!(ingress["spec"]["tls"][0]["secretName"] == "shop-tls", "Ingress TLS: {}", ingress["spec"]);
    crate::clusters::wait_for_field(&k, "app", NS, SHOP, "/status/url", &format!("https://{HOST}/"))?;
    Ok(())
}

/// Bad Apps are refused with every field error at once, and a second App
/// claiming the same host and path is refused naming the first.
pub fn app_refusals_and_host_collision(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    needs_controller_manager(ctx)?;
    let k = ctx.kubectl.clone();
    if k.get("app", NS, SHOP)?.is_none() {
        app_becomes_deployment_service_and_ingress(ctx)?;
    }
    let bad = json!({
        "image": "nginx:1.27",
        "ingress": {"host": "bad_host.example.com", "path": "shop"},
        "env": [{"name": "MODE=prod", "value": "a"}],
    });
    let refused = k.apply(&app("broken", &bad), &[])?;
    expect_refused(&refused, &["spec.ingress.host", "spec.ingress.path", "spec.env"])?;
    ensure!(k.get("app", NS, "broken")?.is_none(), "a refused App was stored");
    // The webhook's App cache must know `shop` before it can refuse a collision.
    let other = app("shop-copy", &json!({"image": "nginx:1.27", "ingress": {"host": HOST}}));
    let refused = wait::until("the webhook to refuse a second App on the same host and path", REACT_TIMEOUT, || {
        let output = k.apply(&other, &[])?;
        if output.success() {
            expect_ok(k.run(&["delete", "app", "shop-copy", "-n", NS, "--wait=false"])?)?;
            return Ok(Poll::Pending(format!("admitted: {}", output.stderr.trim())));
        }
        Ok(Poll::Ready(output))
    })?;
    expect_refused(&refused, &["already claims host", "App \"shop\""])?;
    Ok(())
}
