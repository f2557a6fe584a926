//! What the pods' container statuses tell about a stuck instance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::replication::container_problem;

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
