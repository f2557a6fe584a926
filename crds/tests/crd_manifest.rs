//! The committed CRD must be exactly what the Rust types render, and must
//! carry the API surface DESIGN promises (names, subresources, columns, CEL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use kube::CustomResourceExt;
use serde_json::Value;
use stead_crds::DatabaseCluster;
use stead_crds::crd::{CRD_PATH, crd_yaml};

/// The CRD committed at `relative` (to the workspace root) is exactly
/// `rendered`, and parses back to `crd`.
fn assert_committed(relative: &str, rendered: &str, crd: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds` and commit it", path.display()));
    assert!(
        committed == rendered,
        "{} is stale: the Rust types changed; run `make crds` and commit the result",
        path.display()
    );
    let parsed: Value = serde_saphyr::from_str(&committed).unwrap();
    assert_eq!(&parsed, crd);
}

#[test]
fn committed_crd_is_not_stale() {
    assert_committed(CRD_PATH, &crd_yaml().unwrap(), &crd());
}

fn crd() -> Value {
    serde_json::to_value(DatabaseCluster::crd()).unwrap()
}

fn schema() -> Value {
    crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// A namespaced CRD of the `stead` category named `[kind, plural, singular, short name]`.
fn assert_names(crd: &Value, [kind, plural, singular, short]: [&str; 4]) {
    assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(crd["metadata"]["name"], format!("{plural}.stead.dev"));
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let names = &crd["spec"]["names"];
    let got = [&names["kind"], &names["plural"], &names["singular"]].map(|v| v.as_str().unwrap_or_default());
    assert_eq!(got, [kind, plural, singular]);
    assert_eq!(names["shortNames"], serde_json::json!([short]));
    assert_eq!(names["categories"], serde_json::json!(["stead"]));
}

/// The one served version has the status subresource, and the scale one when `scale`.
fn assert_subresources(crd: &Value, scale: bool) {
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        (&version["name"], &version["served"], &version["storage"]),
        (&"v1alpha1".into(), &true.into(), &true.into())
    );
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let want = serde_json::json!({
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"
    });
    assert_eq!(version["subresources"].get("scale"), scale.then_some(&want));
}

/// `(name, jsonPath)` of every printer column.
fn columns(crd: &Value) -> Vec<(&str, &str)> {
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
        .collect()
}

#[test]
fn names_scope_and_categories() {
    assert_names(&crd(), ["DatabaseCluster", "databaseclusters", "databasecluster", "dbc"]);
}

#[test]
fn status_and_scale_subresources() {
    assert_subresources(&crd(), true);
}

#[test]
fn printer_columns() {
    let columns = crd()["spec"]["versions"][0]["additionalPrinterColumns"].clone();
    let names: Vec<&str> = columns.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Replicas", "Ready", "Primary", "Status", "Age"]);
    assert_eq!(columns[2]["jsonPath"], ".status.currentPrimary");
    assert_eq!(columns[3]["jsonPath"], ".status.conditions[?(@.type==\"Available\")].reason");
    assert_eq!(columns[4]["type"], "date");
}

#[test]
fn static_bounds_and_required_fields() {
    let spec = &schema()["properties"]["spec"];
    let mut required: Vec<&str> = spec["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    required.sort_unstable();
    assert_eq!(required, ["image", "storage"]);
    let props = &spec["properties"];
    assert_eq!((props["replicas"]["minimum"].as_f64(), props["replicas"]["maximum"].as_f64()), (Some(1.0), Some(9.0)));
    assert_eq!((props["port"]["minimum"].as_f64(), props["port"]["maximum"].as_f64()), (Some(1.0), Some(65535.0)));
    assert_eq!(props["storage"]["required"], serde_json::json!(["size"]));
    assert_eq!(props["image"]["minLength"], 1);
}

#[test]
fn storage_class_is_immutable_through_cel() {
    let storage = &schema()["properties"]["spec"]["properties"]["storage"];
    let rules = storage["x-kubernetes-validations"].as_array().expect("storage carries CEL rules");
    assert!(rules.iter().any(|r| {
        let rule = r["rule"].as_str().unwrap_or_default();
        rule.contains("oldSelf.storageClassName") && r["message"].as_str().unwrap_or_default().contains("immutable")
    }));
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
}

#[test]
fn schema_is_structural() {
    // Structural schemas forbid `nullable` without `type`, and `anyOf` etc. must not carry types at the top.
    fn walk(v: &Value, path: &str) {
        if let Some(obj) = v.as_object() {
            if obj.contains_key("properties") {
                assert_eq!(
                    obj.get("type").and_then(Value::as_str),
                    Some("object"),
                    "{path} has properties but no type"
                );
            }
            for (k, child) in obj {
                walk(child, &format!("{path}.{k}"));
            }
        } else if let Some(items) = v.as_array() {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{path}[{i}]"));
            }
        }
    }
    walk(&schema(), "openAPIV3Schema");
}

mod backup_crd {
    use super::*;
    use stead_crds::DatabaseBackup;
    use stead_crds::crd::{BACKUP_CRD_PATH, backup_crd_yaml};

    fn crd() -> Value {
        serde_json::to_value(DatabaseBackup::crd()).unwrap()
    }

    #[test]
    fn committed_backup_crd_is_not_stale() {
        assert_committed(BACKUP_CRD_PATH, &backup_crd_yaml().unwrap(), &crd());
    }

    #[test]
    fn names_columns_subresource_and_immutable_spec() {
        let crd = crd();
        assert_names(&crd, ["DatabaseBackup", "databasebackups", "databasebackup", "dbb"]);
        assert_subresources(&crd, false);
        assert_eq!(
            columns(&crd),
            [("Cluster", ".spec.cluster"), ("Phase", ".status.phase"), ("Age", ".metadata.creationTimestamp")]
        );
        let version = &crd["spec"]["versions"][0];
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["x-kubernetes-validations"][0]["rule"], "self == oldSelf");
        assert_eq!(spec["required"], serde_json::json!(["cluster"]));
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        for field in ["phase", "startedAt", "stoppedAt", "instance", "snapshots", "beginLSN", "endLSN", "error"] {
            assert!(status.get(field).is_some(), "status.{field} missing");
        }
    }

    #[test]
    fn cluster_bootstrap_is_immutable_by_cel_too() {
        let cluster = serde_json::to_value(DatabaseCluster::crd()).unwrap();
        let spec = &cluster["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let rule = spec["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
        assert!(rule.contains("oldSelf.bootstrap"), "{rule}");
        assert!(spec["properties"]["backup"]["properties"]["schedule"].is_object());
    }
}

mod app_crd {
    use super::*;
    use serde_json::json;
    use stead_crds::App;
    use stead_crds::crd::{APP_CRD_PATH, app_crd_yaml};

    fn crd() -> Value {
        serde_json::to_value(App::crd()).unwrap()
    }

    #[test]
    fn committed_app_crd_is_not_stale() {
        assert_committed(APP_CRD_PATH, &app_crd_yaml().unwrap(), &crd());
    }

    #[test]
    fn names_subresources_and_columns() {
        let crd = crd();
        assert_names(&crd, ["App", "apps", "app", "app"]);
        assert_subresources(&crd, true);
        assert_eq!(
            columns(&crd),
            [
                ("Replicas", ".spec.replicas"),
                ("Ready", ".status.readyReplicas"),
                ("URL", ".status.url"),
                ("Age", ".metadata.creationTimestamp")
            ]
        );
    }

    #[test]
    fn bounds_required_fields_and_list_maps() {
        let schema = &crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["required"], json!(["image"]));
        let props = &spec["properties"];
        assert_eq!(
            (props["replicas"]["minimum"].as_f64(), props["replicas"]["maximum"].as_f64()),
            (Some(0.0), Some(100.0))
        );
        for port in [&props["containerPort"], &props["service"]["properties"]["port"]] {
            assert_eq!((port["minimum"].as_f64(), port["maximum"].as_f64()), (Some(1.0), Some(65535.0)));
        }
        assert_eq!(props["ingress"]["required"], json!(["host"]));
        assert_eq!(props["ingress"]["properties"]["tls"]["required"], json!(["secretName"]));
        assert_eq!(props["env"]["x-kubernetes-list-type"], "map");
        assert_eq!(props["env"]["x-kubernetes-list-map-keys"], json!(["name"]));
        let status = &schema["properties"]["status"]["properties"];
        for field in ["observedGeneration", "replicas", "readyReplicas", "updatedReplicas", "url", "selector"] {
            assert!(status.get(field).is_some(), "status.{field} missing");
        }
        assert_eq!(status["conditions"]["x-kubernetes-list-map-keys"], json!(["type"]));
    }
}
