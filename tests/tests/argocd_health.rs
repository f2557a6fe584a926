//! Runs the Argo CD health checks for `stead.dev/DatabaseCluster`
//! (`manifests/argocd/health/databasecluster.lua`), `stead.dev/DatabaseBackup`
//! (`databasebackup.lua`) and `stead.dev/App` (`app.lua`) in a Lua 5.1 VM set up
//! the way Argo CD sets up gopher-lua for health checks: only the base,
//! package and table libraries, a fresh VM per object, the object as the
//! global `obj` with JSON null as nil, and the returned table read as
//! `{status, message}`. Every state a DatabaseCluster can be in is asserted,
//! and the copy in `argocd-cm-patch.yaml` must be the same text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib, Table};
use serde_json::{Value, json};

const HEALTH_KEY: &str = "resource.customizations.health.stead.dev_DatabaseCluster";
const BACKUP_HEALTH_KEY: &str = "resource.customizations.health.stead.dev_DatabaseBackup";
const APP_HEALTH_KEY: &str = "resource.customizations.health.stead.dev_App";

/// Every health script and the argocd-cm key it is installed under.
const SCRIPTS: [(&str, &str); 3] =
    [(HEALTH_KEY, "databasecluster.lua"), (BACKUP_HEALTH_KEY, "databasebackup.lua"), (APP_HEALTH_KEY, "app.lua")];

/// Health statuses Argo CD accepts from a script; anything else becomes Unknown.
const VALID_STATUSES: &[&str] = &["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script_named(file: &str) -> String {
    let path = repo_root().join("manifests/argocd/health").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// What Argo CD makes of the script's return value.
#[derive(Debug)]
struct Health {
    status: String,
    message: String,
}

/// Evaluates the DatabaseCluster health script against one object, as Argo CD does.
fn health_of(object: &Value) -> Health {
    health_by("databasecluster.lua", object)
}

/// Evaluates the health script `file` against one object, as Argo CD does.
fn health_by(file: &str, object: &Value) -> Health {
    // Argo CD opens package, base, table and a reduced os library: no
    // string or math, so a script that calls string.format fails there.
    let lua = Lua::new_with(StdLib::PACKAGE | StdLib::TABLE, LuaOptions::default()).unwrap();
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
        .set_array_metatable(false);
    let obj = lua.to_value_with(object, options).unwrap();
    lua.globals().set("obj", obj).unwrap();
    let table: Table = lua
        .load(script_named(file))
        .set_name(file)
        .eval()
        .unwrap_or_else(|e| panic!("health script failed on {object}: {e}"));
    let status: String = table.get("status").unwrap();
    let message: Option<String> = table.get("message").unwrap();
    let health = Health { status, message: message.unwrap_or_default() };
    assert!(
        VALID_STATUSES.contains(&health.status.as_str()),
        "script returned {health:?}, which Argo CD turns into Unknown"
    );
    assert!(!health.message.is_empty(), "script returned no message for {object}");
    health
}

fn cluster(generation: i64, spec_extra: Value, status: Option<Value>) -> Value {
    let mut spec = json!({"image": "postgres:17.2", "replicas": 3, "storage": {"size": "10Gi"}});
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), spec_extra) {
        spec.extend(extra);
    }
    let mut object = json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseCluster",
        "metadata": {"name": "orders", "namespace": "shop", "generation": generation, "uid": "0b9c7d1e"},
        "spec": spec,
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-11-01T10:00:00Z",
    })
}

fn status(observed: i64, ready: i64, conditions: &[Value]) -> Value {
    json!({
        "observedGeneration": observed,
        "replicas": 3,
        "readyReplicas": ready,
        "selector": "app.kubernetes.io/instance=orders,app.kubernetes.io/name=databasecluster",
        "conditions": conditions,
    })
}

fn available(generation: i64) -> Vec<Value> {
    vec![
        condition("Available", "True", "AllReplicasReady", "3/3 replicas are ready", generation),
        condition("Progressing", "False", "RolloutComplete", "StatefulSet is up to date", generation),
        condition("Degraded", "False", "AsExpected", "", generation),
    ]
}

fn assert_health(object: &Value, status: &str, message_contains: &str) {
    let health = health_of(object);
    assert_eq!(health.status, status, "health of {object}: got {health:?}, want {status}");
    assert!(
        health.message.contains(message_contains),
        "health of {object}: message {:?} lacks {message_contains:?}",
        health.message
    );
}

#[test]
fn healthy_when_available_for_the_current_generation() {
    let object = cluster(4, json!({}), Some(status(4, 3, &available(4))));
    assert_health(&object, "Healthy", "AllReplicasReady: 3/3 replicas are ready");
}

#[test]
fn healthy_when_conditions_carry_no_generation_of_their_own() {
    let mut conditions = available(4);
    for c in &mut conditions {
        c.as_object_mut().unwrap().remove("observedGeneration");
    }
    let object = cluster(4, json!({}), Some(status(4, 3, &conditions)));
    assert_health(&object, "Healthy", "3/3 replicas are ready");
}

#[test]
fn healthy_without_metadata_generation() {
    let mut object = cluster(4, json!({}), Some(status(4, 3, &available(4))));
    object["metadata"].as_object_mut().unwrap().remove("generation");
    assert_health(&object, "Healthy", "3/3 replicas are ready");
}

#[test]
fn progressing_before_the_controller_reports_status() {
    assert_health(&cluster(1, json!({}), None), "Progressing", "Waiting for stead-controller to report status");
    assert_health(
        &cluster(1, json!({}), Some(json!({}))),
        "Progressing",
        "Waiting for stead-controller to report status",
    );
}

#[test]
fn progressing_when_status_lags_the_generation() {
    // Available for generation 3, but the user has since changed the spec.
    let object = cluster(4, json!({}), Some(status(3, 3, &available(3))));
    assert_health(&object, "Progressing", "observe generation 4 (status is for generation 3)");
}

#[test]
fn progressing_when_available_is_stale_even_if_status_is_current() {
    let mut conditions = available(4);
    conditions[0]["observedGeneration"] = json!(3);
    let object = cluster(4, json!({}), Some(status(4, 3, &conditions)));
    assert_eq!(health_of(&object).status, "Progressing");
}

#[test]
fn progressing_while_rolling_out() {
    let conditions = vec![
        condition("Available", "False", "ReplicasNotReady", "1/3 replicas are ready", 5),
        condition("Progressing", "True", "RollingUpdate", "StatefulSet orders is rolling out", 5),
        condition("Degraded", "False", "AsExpected", "", 5),
    ];
    let object = cluster(5, json!({}), Some(status(5, 1, &conditions)));
    assert_health(&object, "Progressing", "RollingUpdate: StatefulSet orders is rolling out");
}

#[test]
fn progressing_with_replica_counts_when_no_condition_says_more() {
    let object = cluster(2, json!({}), Some(status(2, 1, &[])));
    assert_health(&object, "Progressing", "Waiting for replicas: 1/3 ready");
}

#[test]
fn degraded_when_the_spec_is_invalid() {
    // The webhook was bypassed; the controller reports the same messages.
    let message = "spec.storage.size: Invalid value: \"10GB\": must be a Kubernetes quantity such as 10Gi";
    let conditions = vec![
        condition("Available", "False", "InvalidSpec", "the spec is invalid", 7),
        condition("Progressing", "False", "InvalidSpec", "", 7),
        condition("Degraded", "True", "InvalidSpec", message, 7),
    ];
    let object = cluster(7, json!({}), Some(status(7, 0, &conditions)));
    assert_health(&object, "Degraded", &format!("InvalidSpec: {message}"));
}

#[test]
fn degraded_wins_over_available() {
    let mut conditions = available(3);
    conditions[2] = condition("Degraded", "True", "ApplyFailed", "StatefulSet orders: forbidden", 3);
    let object = cluster(3, json!({}), Some(status(3, 3, &conditions)));
    assert_health(&object, "Degraded", "ApplyFailed: StatefulSet orders: forbidden");
}

#[test]
fn a_stale_degraded_condition_waits_for_the_controller() {
    // The user fixed the spec (generation 8); the controller has not caught up.
    let conditions = vec![condition(
        "Degraded",
        "True",
        "InvalidSpec",
        "spec.replicas: Invalid value: 12: must be between 1 and 9",
        7,
    )];
    let object = cluster(8, json!({}), Some(status(7, 0, &conditions)));
    assert_health(&object, "Progressing", "observe generation 8");
}

#[test]
fn suspended_when_paused() {
    let conditions = vec![
        condition("Available", "True", "AllReplicasReady", "3/3 replicas are ready", 6),
        condition("Progressing", "False", "Paused", "reconciliation is paused", 6),
    ];
    let object = cluster(6, json!({"paused": true}), Some(status(6, 3, &conditions)));
    assert_health(&object, "Suspended", "Paused: reconciliation is paused");
}

#[test]
fn suspended_when_paused_before_any_status() {
    assert_health(&cluster(1, json!({"paused": true}), None), "Suspended", "spec.paused is true");
}

#[test]
fn unpaused_is_not_suspended() {
    let object = cluster(4, json!({"paused": false}), Some(status(4, 3, &available(4))));
    assert_eq!(health_of(&object).status, "Healthy");
}

#[test]
fn degraded_is_reported_even_while_paused() {
    let conditions = vec![condition("Degraded", "True", "InvalidSpec", "spec.image: Required value", 2)];
    let object = cluster(2, json!({"paused": true}), Some(status(2, 0, &conditions)));
    assert_health(&object, "Degraded", "spec.image: Required value");
}

#[test]
fn malformed_objects_never_crash_the_script() {
    // A script error shows as an error in Argo CD's UI instead of a health
    // status; odd shapes must still produce a valid answer.
    let odd = [
        json!({"apiVersion": "stead.dev/v1alpha1", "kind": "DatabaseCluster"}),
        json!({"apiVersion": "stead.dev/v1alpha1", "kind": "DatabaseCluster", "metadata": "x", "spec": 3, "status": "y"}),
        cluster(1, json!({}), Some(json!({"observedGeneration": 1, "conditions": "Available"}))),
        cluster(1, json!({}), Some(json!({"observedGeneration": 1, "conditions": [null, 3, {"type": null}]}))),
        cluster(1, json!({}), Some(json!({"observedGeneration": "1", "readyReplicas": "all"}))),
        cluster(
            1,
            json!({"replicas": null}),
            Some(json!({"observedGeneration": 1, "conditions": [{"type": "Available", "status": "True"}]})),
        ),
    ];
    for object in &odd {
        let health = health_of(object);
        assert!(health.status == "Progressing" || health.status == "Healthy", "{object} gave {health:?}");
    }
}

/// `line` with the contents of its double-quoted string literals removed.
fn without_strings(line: &str) -> String {
    line.split('"').step_by(2).collect::<Vec<_>>().join("\"\"")
}

/// Whether `code` uses `name` as a whole Lua identifier.
fn mentions(code: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn script_uses_only_libraries_argo_cd_opens() {
    // Runtime calls are covered above; this also covers branches a fixture
    // might miss.
    for (_, file) in SCRIPTS {
        for (number, line) in script_named(file).lines().enumerate() {
            let code = without_strings(line.split("--").next().unwrap_or_default());
            for forbidden in ["string", "math", "io", "os", "debug", "require", "load", "loadstring", "dofile"] {
                assert!(
                    !mentions(&code, forbidden),
                    "{file} line {}: {forbidden:?} is not available to Argo CD health checks: {line}",
                    number + 1
                );
            }
        }
    }
}

#[test]
fn argocd_cm_patch_carries_the_same_script() {
    let path = repo_root().join("manifests/argocd/argocd-cm-patch.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let patch: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(patch["apiVersion"], "v1");
    assert_eq!(patch["kind"], "ConfigMap");
    assert_eq!(patch["metadata"]["name"], "argocd-cm");
    assert_eq!(patch["metadata"]["namespace"], "argocd");
    let data = patch["data"].as_object().unwrap();
    let mut keys: Vec<&String> = data.keys().collect();
    keys.sort();
    assert_eq!(keys, vec![APP_HEALTH_KEY, BACKUP_HEALTH_KEY, HEALTH_KEY], "argocd-cm patch data keys");
    for (key, file) in SCRIPTS {
        let lua = script_named(file);
        let indented: String =
            lua.lines().map(|l| if l.trim().is_empty() { "\n".to_owned() } else { format!("    {l}\n") }).collect();
        assert!(
            data[key].as_str() == Some(lua.as_str()),
            "{} differs from manifests/argocd/health/{file}; replace the block under `{key}: |` with:\n{indented}",
            path.display()
        );
    }
}

#[test]
fn health_key_names_the_crd_group_and_kind() {
    // Argo CD looks the script up as resource.customizations.health.<group>_<Kind>.
    let path = repo_root().join("manifests/crds/databaseclusters.stead.dev.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    let group = crd["spec"]["group"].as_str().unwrap();
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
    assert_eq!(HEALTH_KEY, format!("resource.customizations.health.{group}_{kind}"));
}

#[test]
fn health_keys_name_the_backup_and_app_crd_group_and_kind() {
    for (key, crd) in [(BACKUP_HEALTH_KEY, "databasebackups.stead.dev.yaml"), (APP_HEALTH_KEY, "apps.stead.dev.yaml")] {
        let path = repo_root().join("manifests/crds").join(crd);
        let crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let group = crd["spec"]["group"].as_str().unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
        assert_eq!(key, format!("resource.customizations.health.{group}_{kind}"));
    }
}

fn backup(status: Option<Value>) -> Value {
    let mut object = json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseBackup",
        "metadata": {"name": "orders-202501010300", "namespace": "shop", "generation": 1},
        "spec": {"cluster": "orders"},
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

#[test]
fn a_backup_is_healthy_when_completed_degraded_when_failed_else_progressing() {
    let rows: Vec<(Option<Value>, &str, &str)> = vec![
        (
            Some(
                json!({"phase": "Completed", "instance": "orders-1", "snapshots": [{"name": "s", "persistentVolumeClaim": "data-orders-1", "readyToUse": true}]}),
            ),
            "Healthy",
            "Completed: the snapshots of orders-1",
        ),
        (Some(json!({"phase": "Completed"})), "Healthy", "Completed"),
        (
            Some(json!({"phase": "Failed", "error": "VolumeSnapshot orders-202501010300-0: driver error"})),
            "Degraded",
            "Failed: VolumeSnapshot orders-202501010300-0: driver error",
        ),
        (Some(json!({"phase": "Failed"})), "Degraded", "Failed"),
        (Some(json!({"phase": "Running", "startedAt": "2025-01-01T03:00:00Z"})), "Progressing", "Running"),
        (Some(json!({"phase": "Pending"})), "Progressing", "Pending"),
        (None, "Progressing", "Waiting for stead-controller"),
        (Some(json!({})), "Progressing", "Waiting for stead-controller"),
        (Some(json!({"phase": 7, "error": ["x"], "instance": {}})), "Progressing", "Waiting"),
        (Some(json!("not an object")), "Progressing", "Waiting"),
    ];
    for (status, want, says) in rows {
        let object = backup(status);
        let health = health_by("databasebackup.lua", &object);
        assert_eq!(health.status, want, "{object}: {health:?}");
        assert!(health.message.contains(says), "{object}: {health:?} lacks {says:?}");
    }
}

/// An App at `generation` (with `spec.replicas: 2`) and its `status`, if any.
fn app(generation: i64, status: Option<Value>) -> Value {
    let mut object = json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "App",
        "metadata": {"name": "shop", "namespace": "shop", "generation": generation},
        "spec": {"image": "nginx:1.27", "replicas": 2},
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

#[test]
fn an_app_follows_deployment_rollout_semantics() {
    let available = |status: &str, generation: i64| {
        condition("Available", status, "MinimumReplicasAvailable", "2/2 replicas are available", generation)
    };
    let progressing = |status: &str, reason: &str, generation: i64| {
        condition("Progressing", status, reason, "rollout of revision 3", generation)
    };
    // (generation, status, health, what the message says)
    let rows: Vec<(i64, Option<Value>, &str, &str)> = vec![
        (
            2,
            Some(json!({"observedGeneration": 2, "readyReplicas": 2, "url": "https://shop.example.com/",
                "conditions": [available("True", 2), progressing("True", "NewReplicaSetAvailable", 2)]})),
            "Healthy",
            "MinimumReplicasAvailable: 2/2 replicas are available (https://shop.example.com/)",
        ),
        (
            2,
            Some(json!({"observedGeneration": 2, "conditions": [{"type": "Available", "status": "True"}]})),
            "Healthy",
            "Available",
        ),
        (
            2,
            Some(json!({"observedGeneration": 2, "conditions": [available("True", 2),
                progressing("False", "ProgressDeadlineExceeded", 2)]})),
            "Degraded",
            "ProgressDeadlineExceeded: rollout of revision 3",
        ),
        (
            3,
            Some(json!({"observedGeneration": 3, "conditions": [available("False", 3),
                progressing("False", "ProgressDeadlineExceeded", 2)]})),
            "Progressing",
            "Waiting for replicas: 0/2 ready",
        ),
        (
            2,
            Some(json!({"observedGeneration": 2, "readyReplicas": 1, "conditions": [available("False", 2),
                progressing("True", "ReplicaSetUpdated", 2)]})),
            "Progressing",
            "ReplicaSetUpdated: rollout of revision 3",
        ),
        (
            3,
            Some(json!({"observedGeneration": 2, "conditions": [available("True", 2)]})),
            "Progressing",
            "generation 3",
        ),
        (2, Some(json!({"observedGeneration": 2, "conditions": [available("True", 1)]})), "Progressing", "0/2 ready"),
        (1, None, "Progressing", "Waiting for stead-controller to report status"),
        (1, Some(json!("not an object")), "Progressing", "Waiting for stead-controller"),
        (
            1,
            Some(json!({"observedGeneration": 1, "readyReplicas": "x", "conditions": [7, {"type": 1}, "x"]})),
            "Progressing",
            "Waiting for replicas: 0/2 ready",
        ),
    ];
    for (generation, status, want, says) in rows {
        let object = app(generation, status);
        let health = health_by("app.lua", &object);
        assert_eq!(health.status, want, "{object}: {health:?}");
        assert!(health.message.contains(says), "{object}: {health:?} lacks {says:?}");
    }
}
