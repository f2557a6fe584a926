//! The webhook is down (its configurations point at a port where nothing
//! listens, `failurePolicy: Fail` kept), and the shipped `matchConditions`
//! still let the controller add and remove its finalizer, while a DELETE,
//! which they do not exempt, is refused: `deletionProtection` fails closed.

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::clusters::{
    FINALIZER, REACT_TIMEOUT, cluster, create_namespace, expect_ok, spec_with_replicas, text, wait_until_gone,
};
use crate::scenarios::Ctx;
use crate::support::kubectl::Kubectl;
use crate::support::ports::free_ports;
use crate::support::say;
use crate::support::stead::{Controller, webhook_configurations};
use crate::support::wait::{self, Poll};

/// What the API server says when it cannot reach a webhook.
const UNREACHABLE: &str = "failed calling webhook";
const NS: &str = "e2e-finalizers";

fn has_finalizer(object: &Value) -> bool {
    object.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| f.contains(&json!(FINALIZER)))
}

fn wait_for_finalizer(k: &Kubectl, name: &str) -> anyhow::Result<()> {
    wait::until(&format!("the controller to add {FINALIZER} to {NS}/{name}"), REACT_TIMEOUT, || {
        let object = k.get("dbc", NS, name)?.with_context(|| format!("the cluster {name} is gone"))?;
        Ok(if has_finalizer(&object) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("finalizers {}", object.pointer("/metadata/finalizers").unwrap_or(&Value::Null)))
        })
    })
}

/// Points both webhook configurations at `base_url` and waits until a
/// server-side dry run of a valid cluster gets the expected answer: refused
/// as unreachable, or admitted (and defaulted) again.
fn point_webhooks(ctx: &Ctx<'_>, base_url: &str, reachable: bool) -> anyhow::Result<()> {
    let k = &ctx.kubectl;
    expect_ok(k.apply(&webhook_configurations(base_url, &ctx.webhook_ca)?, &[])?)
        .context("re-pointing the webhook configurations")?;
    let probe = cluster(NS, "probe", json!({"image": "postgres:17.2", "storage": {"size": "1Gi"}}));
    let what = if reachable { "the webhook to answer again" } else { "the API server to find the webhook unreachable" };
    wait::until(what, REACT_TIMEOUT, || {
        let output = k.create(&probe, &["--dry-run=server", "-o", "jsonpath={.spec.replicas}"])?;
        let done = if reachable {
            output.success() && output.stdout.trim() == "1"
        } else {
            !output.success() && output.stderr.contains(UNREACHABLE)
        };
        Ok(if done { Poll::Ready(()) } else { Poll::Pending(output.describe()) })
    })
}

/// Stops the suite's controller and starts a new one with the same options.
pub(crate) fn restart_controller(ctx: &mut Ctx<'_>, start: bool) -> anyhow::Result<()> {
    if !start {
        return ctx.controller.stop().context("stopping stead-controller");
    }
    *ctx.controller =
        Controller::spawn(&ctx.controller_binary, &ctx.controller_kubeconfig, &ctx.log_dir, &ctx.controller_options)?;
    ctx.controller.wait_ready()
}

/// The finalizer is removed (and a new cluster's added) by the controller
/// while the webhook is unreachable; a DELETE is refused meanwhile, so a
/// protected cluster stays.
pub fn finalizers_without_the_webhook(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    create_namespace(&ctx.kubectl, NS)?;
    let k = ctx.kubectl.clone();
    expect_ok(k.apply(&cluster(NS, "doomed", spec_with_replicas(1)), &[])?)?;
    let mut guarded = spec_with_replicas(1);
    guarded["deletionProtection"] = json!(true);
    expect_ok(k.apply(&cluster(NS, "guarded", guarded), &[])?)?;
    wait_for_finalizer(&k, "doomed")?;
    wait_for_finalizer(&k, "guarded")?;

    // With no controller, the DELETE (admitted by the webhook) leaves doomed
    // waiting on its finalizer, and late gets none yet.
    restart_controller(ctx, false)?;
    expect_ok(k.apply(&cluster(NS, "late", spec_with_replicas(1)), &[])?)?;
    expect_ok(k.run(&["delete", "dbc", "doomed", "-n", NS, "--wait=false"])?)?;

    let [dead_port] = free_ports().context("finding a port where nothing listens")?;
    let outcome = without_webhook(ctx, &k, &format!("https://127.0.0.1:{dead_port}"));
    // Whatever happened: the webhook and the controller come back for the scenarios after this one.
    let url = ctx.webhook_url.clone();
    let restored = point_webhooks(ctx, &url, true);
    let controller = if ctx.controller.ensure_running().is_err() { restart_controller(ctx, true) } else { Ok(()) };
    outcome?;
    restored?;
    controller?;

    expect_ok(k.run(&[
        "patch",
        "dbc",
        "guarded",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"deletionProtection":false}}"#,
    ])?)?;
    expect_ok(k.run(&["delete", "dbc", "guarded", "late", "-n", NS, "--wait=false"])?)?;
    wait_until_gone(&k, "dbc", NS, "guarded")?;
    wait_until_gone(&k, "dbc", NS, "late")
}

fn without_webhook(ctx: &mut Ctx<'_>, k: &Kubectl, dead_url: &str) -> anyhow::Result<()> {
    point_webhooks(ctx, dead_url, false)?;
    // Fails closed: a DELETE is judged, so protection holds while the webhook is down.
    let refused = k.run(&["delete", "dbc", "guarded", "-n", NS, "--wait=false"])?;
    ensure!(
        !refused.success() && refused.stderr.contains(UNREACHABLE),
        "deleting a protected cluster while the webhook is down should fail closed:\n{}",
        refused.describe()
    );
    let stored = k.get("dbc", NS, "guarded")?.context("the protected cluster is gone")?;
    ensure!(stored.pointer("/metadata/deletionTimestamp").is_none(), "the protected cluster is being deleted");
    // Only the controller's metadata updates skip the webhook, not anyone's.
    let labelled = k.run(&["label", "dbc", "guarded", "-n", NS, "e2e.stead.dev/touched=yes"])?;
    ensure!(
        !labelled.success() && labelled.stderr.contains(UNREACHABLE),
        "the admin's label change skipped the webhook:\n{}",
        labelled.describe()
    );

    restart_controller(ctx, true)?;
    wait_until_gone(k, "dbc", NS, "doomed")
        .context("the controller should remove its finalizer with the webhook down")?;
    wait_for_finalizer(k, "late").context("the controller should add its finalizer with the webhook down")?;
    let late = k.get("dbc", NS, "late")?.context("the cluster late is gone")?;
    say(&format!(
        "e2e:   (webhook unreachable: doomed released, late finalized (generation {}), guarded kept)",
        text(&late, "/metadata/generation")
    ));
    Ok(())
}
