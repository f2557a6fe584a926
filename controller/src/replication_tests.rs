//! What the pods' container statuses tell about a stuck instance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::pod_problem::{self, container_problem};

fn pod(statuses: &serde_json::Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": "orders-1"}, "status": statuses})).unwrap()
}

#[test]
fn container_states_table() {
    let rows = [
        (
            "crash loop, as the kubelet reports it",
            json!({"containerStatuses": [{
                "name": "database", "image": "postgres:17.2", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=database"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }]}),
            Some(
                "CrashLoopBackOff: back-off 40s restarting failed container=database; last exit code 1 (Error); 4 restarts",
            ),
        ),
        (
            "an image that cannot be pulled",
            json!({"containerStatuses": [{
                "name": "database", "image": "postgres:99", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"postgres:99\""}},
            }]}),
            Some("ImagePullBackOff: Back-off pulling image \"postgres:99\"; 0 restarts"),
        ),
        (
            "the init container cannot start",
            json!({"initContainerStatuses": [{
                "name": "stead-instance-install", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"orders-credentials\" not found"}},
            }]}),
            Some("CreateContainerConfigError: secret \"orders-credentials\" not found; 0 restarts"),
        ),
        (
            "still being created is not a problem",
            json!({"containerStatuses": [{
                "name": "database", "image": "postgres:17.2", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }]}),
            None,
        ),
        (
            "running",
            json!({"containerStatuses": [{
                "name": "database", "image": "postgres:17.2", "imageID": "", "ready": true, "restartCount": 2,
                "state": {"running": {"startedAt": "2025-01-10T09:00:00Z"}},
            }]}),
            None,
        ),
    ];
    for (case, status, want) in rows {
        assert_eq!(container_problem(&pod(&status)).as_deref(), want, "{case}");
    }
}

#[test]
fn a_pod_pending_beyond_the_bound_is_reported_with_the_schedulers_reason() {
    let pod = |created: &str, conditions: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "orders-1", "creationTimestamp": created},
            "status": {"phase": "Pending", "conditions": conditions},
        }))
        .unwrap()
    };
    let now: k8s_openapi::jiff::Timestamp = "2026-01-01T10:05:00Z".parse().unwrap();
    let unschedulable = json!([{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory."
    }]);
    let rows = [
        ("pending for a minute: normal start-up", pod("2026-01-01T10:04:00Z", unschedulable.clone()), None),
        (
            "pending for five minutes, unschedulable",
            pod("2026-01-01T10:00:00Z", unschedulable),
            Some("Pending for 300s: not scheduled (Unschedulable): 0/3 nodes are available: 3 Insufficient memory."),
        ),
        (
            "pending for five minutes, scheduled",
            pod("2026-01-01T10:00:00Z", json!([{"type": "PodScheduled", "status": "True"}])),
            Some("Pending for 300s: scheduled, but its containers have not started"),
        ),
    ];
    for (case, pod, want) in rows {
        assert_eq!(pod_problem::of(&pod, now).as_deref(), want, "{case}");
    }
}
