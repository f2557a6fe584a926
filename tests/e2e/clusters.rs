//! Building DatabaseClusters and observing them (and their children) through
//! kubectl, with bounded waits.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::support::kubectl::{Kubectl, Output};
use crate::support::wait::{self, Poll};

/// How long the controller gets to react to anything.
pub const REACT_TIMEOUT: Duration = Duration::from_secs(60);

/// The finalizer the controller keeps on every cluster.
pub const FINALIZER: &str = "stead.dev/finalizer";

/// A DatabaseCluster object.
pub fn cluster(namespace: &str, name: &str, spec: Value) -> Value {
    let mut object = json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseCluster",
        "metadata": {"name": name, "namespace": namespace},
    });
    object["spec"] = spec;
    object
}

/// The smallest valid spec: image and storage; everything else defaulted.
pub fn minimal_spec() -> Value {
    json!({"image": "postgres:17.2", "storage": {"size": "1Gi"}})
}

/// [`minimal_spec`] with `replicas` written out.
pub fn spec_with_replicas(replicas: i64) -> Value {
    let mut spec = minimal_spec();
    spec["replicas"] = json!(replicas);
    spec
}

/// Creates a namespace for one scenario.
pub fn create_namespace(kubectl: &Kubectl, name: &str) -> anyhow::Result<()> {
    kubectl.ok(&["create", "namespace", name]).with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Fails unless kubectl succeeded; returns stdout.
pub fn expect_ok(output: Output) -> anyhow::Result<String> {
    output.ok()
}

/// Fails unless kubectl failed and its stderr contains every one of `needles`.
pub fn expect_refused(output: &Output, needles: &[&str]) -> anyhow::Result<()> {
    if output.success() {
        bail!("expected the API server to refuse this, but it was accepted:\n{}", output.describe());
    }
    let missing: Vec<&&str> = needles.iter().filter(|needle| !output.stderr.contains(**needle)).collect();
    if !missing.is_empty() {
        bail!("the refusal does not contain {missing:?}:\n{}", output.describe());
    }
    Ok(())
}

/// A string field of a JSON object by pointer, for messages and comparisons.
pub fn text(object: &Value, pointer: &str) -> String {
    match object.pointer(pointer) {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// The condition of `kind` in `.status.conditions`.
pub fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|condition| condition.get("type").and_then(Value::as_str) == Some(kind))
}

/// `Available=False/ReplicasNotReady, …` for timeout messages.
pub fn conditions_summary(object: &Value) -> String {
    let Some(conditions) = object.pointer("/status/conditions").and_then(Value::as_array) else {
        return "no status.conditions".to_owned();
    };
    conditions
        .iter()
        .map(|c| format!("{}={}/{}", text(c, "/type"), text(c, "/status"), text(c, "/reason")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until `get()` finds the object.
pub fn wait_for_object(kubectl: &Kubectl, resource: &str, namespace: &str, name: &str) -> anyhow::Result<Value> {
    wait::until(&format!("{resource} {namespace}/{name} to exist"), REACT_TIMEOUT, || {
        Ok(match kubectl.get(resource, namespace, name)? {
            Some(object) => Poll::Ready(object),
            None => Poll::Pending("NotFound".to_owned()),
        })
    })
}

/// Waits until the object is NotFound.
pub fn wait_until_gone(kubectl: &Kubectl, resource: &str, namespace: &str, name: &str) -> anyhow::Result<()> {
    wait::until(&format!("{resource} {namespace}/{name} to be gone"), REACT_TIMEOUT, || {
        Ok(match kubectl.get(resource, namespace, name)? {
            None => Poll::Ready(()),
            Some(object) => Poll::Pending(format!(
                "still there; deletionTimestamp={:?}, finalizers={}",
                text(&object, "/metadata/deletionTimestamp"),
                object.pointer("/metadata/finalizers").map_or_else(|| "[]".to_owned(), Value::to_string)
            )),
        })
    })
}

/// Waits until the object's `pointer` holds `expected` (compared as text).
pub fn wait_for_field(
    kubectl: &Kubectl,
    resource: &str,
    namespace: &str,
    name: &str,
    pointer: &str,
    expected: &str,
) -> anyhow::Result<Value> {
    wait::until(&format!("{resource} {namespace}/{name} to have {pointer} = {expected}"), REACT_TIMEOUT, || {
        Ok(match kubectl.get(resource, namespace, name)? {
            Some(object) if text(&object, pointer) == expected => Poll::Ready(object),
            Some(object) => Poll::Pending(format!("{pointer} = {:?}", text(&object, pointer))),
            None => Poll::Pending("NotFound".to_owned()),
        })
    })
}

/// Waits until the cluster's condition `kind` has `status` and `reason`.
pub fn wait_for_condition(
    kubectl: &Kubectl,
    namespace: &str,
    name: &str,
    kind: &str,
    status: &str,
    reason: &str,
) -> anyhow::Result<Value> {
    wait::until(
        &format!("DatabaseCluster {namespace}/{name} to report {kind}={status}/{reason}"),
        REACT_TIMEOUT,
        || {
            let Some(object) = kubectl.get("databasecluster", namespace, name)? else {
                return Ok(Poll::Pending("NotFound".to_owned()));
            };
            let matches =
                condition(&object, kind).is_some_and(|c| text(c, "/status") == status && text(c, "/reason") == reason);
            Ok(if matches { Poll::Ready(object) } else { Poll::Pending(conditions_summary(&object)) })
        },
    )
}

/// Creates a cluster of `replicas` and waits, with real pods run by the
/// stand-in kubelet, until its primary serves and every pod is ready.
pub fn make_available(kubectl: &Kubectl, namespace: &str, name: &str, replicas: i64) -> anyhow::Result<Value> {
    expect_ok(kubectl.apply(&cluster(namespace, name, spec_with_replicas(replicas)), &[])?)?;
    wait_for_field(kubectl, "statefulset", namespace, name, "/spec/replicas", &replicas.to_string())?;
    // Pods start one after the other (OrderedReady): initdb, then a clone each.
    let ready = wait::until(
        &format!("DatabaseCluster {namespace}/{name} to have {replicas} ready replicas and a serving primary"),
        AVAILABLE_TIMEOUT,
        || {
            let Some(object) = kubectl.get("databaseclusters.stead.dev", namespace, name)? else {
                return Ok(Poll::Pending("NotFound".to_owned()));
            };
            let available = condition(&object, "Available")
                .is_some_and(|c| text(c, "/status") == "True" && text(c, "/reason") == "PrimaryReady");
            let all = object.pointer("/status/readyReplicas").and_then(Value::as_i64) == Some(replicas);
            Ok(if available && all { Poll::Ready(object) } else { Poll::Pending(conditions_summary(&object)) })
        },
    )?;
    Ok(ready)
}

/// How long a new cluster may take to serve: every instance starts real PostgreSQL.
pub const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(180);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn output(code: i32, stderr: &str) -> Output {
        Output {
            command: "kubectl apply -f -".to_owned(),
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.to_owned(),
        }
    }

    #[test]
    fn refusals_must_fail_and_carry_every_needle() {
        let refused = output(1, "admission webhook \"validate.stead.dev\" denied the request: spec.a: Invalid value");
        expect_refused(&refused, &["validate.stead.dev", "spec.a"]).unwrap();
        let err = expect_refused(&refused, &["spec.b"]).unwrap_err().to_string();
        assert!(err.contains("\"spec.b\""), "{err}");
        let err = expect_refused(&output(0, ""), &[]).unwrap_err().to_string();
        assert!(err.contains("it was accepted"), "{err}");
    }

    #[test]
    fn conditions_are_found_by_type() {
        let object = json!({"status": {"conditions": [
            {"type": "Available", "status": "False", "reason": "ReplicasNotReady"},
            {"type": "Degraded", "status": "False", "reason": "AsExpected"}
        ]}});
        assert_eq!(text(condition(&object, "Degraded").unwrap(), "/reason"), "AsExpected");
        assert!(condition(&object, "Progressing").is_none());
        assert_eq!(conditions_summary(&object), "Available=False/ReplicasNotReady, Degraded=False/AsExpected");
        assert_eq!(conditions_summary(&json!({})), "no status.conditions");
    }

    #[test]
    fn text_renders_strings_bare_and_other_values_as_json() {
        let object = json!({"spec": {"replicas": 3, "image": "postgres:17.2"}});
        assert_eq!(text(&object, "/spec/replicas"), "3");
        assert_eq!(text(&object, "/spec/image"), "postgres:17.2");
        assert_eq!(text(&object, "/spec/port"), "");
    }

    #[test]
    fn clusters_are_namespaced_stead_objects() {
        let object = cluster("ns", "orders", spec_with_replicas(3));
        assert_eq!(object["apiVersion"], "stead.dev/v1alpha1");
        assert_eq!(object["kind"], "DatabaseCluster");
        assert_eq!(object["metadata"]["namespace"], "ns");
        assert_eq!(object["spec"]["replicas"], 3);
        assert_eq!(object["spec"]["storage"]["size"], "1Gi");
        assert!(minimal_spec().get("replicas").is_none());
    }
}
