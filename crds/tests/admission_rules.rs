//! Table tests for every admission rule and every error type: what a user
//! would see from `kubectl apply`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_pass_by_value, clippy::type_complexity)]

use serde_json::{Value, json};
use stead_crds::validation::{decode, validate_create, validate_delete, validate_update};
use stead_crds::{DatabaseCluster, Verdict};

/// A valid cluster as JSON; rows patch it with a JSON merge-style overlay.
fn base() -> Value {
    json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseCluster",
        "metadata": {"name": "orders", "namespace": "shop", "generation": 1},
        "spec": {
            "image": "postgres:17.2",
            "replicas": 3,
            "port": 5432,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
            "storage": {"size": "10Gi", "storageClassName": "fast-ssd"}
        }
    })
}

/// Recursive merge: objects merge, `null` removes, anything else replaces.
fn overlay(mut target: Value, patch: &Value) -> Value {
    if let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                let merged = overlay(t.remove(k).unwrap_or(Value::Null), v);
                t.insert(k.clone(), merged);
            }
        }
        target
    } else {
        patch.clone()
    }
}

fn cluster(patch: Value) -> DatabaseCluster {
    decode(&overlay(base(), &patch)).unwrap()
}

/// `(field, reason)` pairs of a verdict, for compact assertions.
fn causes(verdict: &Verdict) -> Vec<(String, &'static str)> {
    verdict.errors.iter().map(|e| (e.field.clone(), e.reason())).collect()
}

fn messages(verdict: &Verdict) -> Vec<String> {
    verdict.errors.iter().map(ToString::to_string).collect()
}

#[test]
fn base_is_admitted_without_warnings() {
    let verdict = validate_create(&cluster(json!({})));
    assert!(verdict.is_allowed(), "{:?}", messages(&verdict));
    assert!(verdict.warnings.is_empty(), "{:?}", verdict.warnings);
}

#[test]
fn create_rules_table() {
    // (case, overlay, expected (field, reason) causes; empty = admitted)
    let rows: Vec<(&str, Value, Vec<(&str, &str)>)> = vec![
        (
            "minimal spec",
            json!({"spec": {"replicas": null, "port": null, "resources": null, "storage": {"storageClassName": null}}}),
            vec![],
        ),
        ("name too long", json!({"metadata": {"name": "a".repeat(53)}}), vec![("metadata.name", "FieldValueInvalid")]),
        ("name at the limit", json!({"metadata": {"name": "a".repeat(52)}}), vec![]),
        ("name upper case", json!({"metadata": {"name": "Orders"}}), vec![("metadata.name", "FieldValueInvalid")]),
        (
            "name starts with digit",
            json!({"metadata": {"name": "1orders"}}),
            vec![("metadata.name", "FieldValueInvalid")],
        ),
        (
            "name with dot (DNS-1123 but not 1035)",
            json!({"metadata": {"name": "or.ders"}}),
            vec![("metadata.name", "FieldValueInvalid")],
        ),
        ("generateName ok", json!({"metadata": {"name": null, "generateName": "orders-"}}), vec![]),
        (
            "generateName too long",
            json!({"metadata": {"name": null, "generateName": "a".repeat(48)}}),
            vec![("metadata.generateName", "FieldValueInvalid")],
        ),
        ("no name at all", json!({"metadata": {"name": null}}), vec![("metadata.name", "FieldValueRequired")]),
        ("replicas 0", json!({"spec": {"replicas": 0}}), vec![("spec.replicas", "FieldValueInvalid")]),
        ("replicas 10", json!({"spec": {"replicas": 10}}), vec![("spec.replicas", "FieldValueInvalid")]),
        ("replicas negative", json!({"spec": {"replicas": -1}}), vec![("spec.replicas", "FieldValueInvalid")]),
        ("replicas 9", json!({"spec": {"replicas": 9}}), vec![]),
        ("port 0", json!({"spec": {"port": 0}}), vec![("spec.port", "FieldValueInvalid")]),
        ("port 65536", json!({"spec": {"port": 65536}}), vec![("spec.port", "FieldValueInvalid")]),
        (
            "port 8000 is the instance manager's",
            json!({"spec": {"port": 8000}}),
            vec![("spec.port", "FieldValueInvalid")],
        ),
        (
            "user parameters",
            json!({"spec": {"postgresql": {"parameters": {"shared_buffers": "256MB", "pg_stat_statements.max": "5000"}}}}),
            vec![],
        ),
        (
            "parameters stead owns, in any case",
            json!({"spec": {"postgresql": {"parameters": {"wal_level": "minimal", "Listen_Addresses": "*", "work_mem": "4MB"}}}}),
            vec![
                ("spec.postgresql.parameters[Listen_Addresses]", "FieldValueForbidden"),
                ("spec.postgresql.parameters[wal_level]", "FieldValueForbidden"),
            ],
        ),
        (
            "parameter names postgres would refuse",
            json!({"spec": {"postgresql": {"parameters": {"Work_Mem": "4MB", "a.b.c": "1", "1x": "1", "": "1"}}}}),
            vec![
                ("spec.postgresql.parameters[]", "FieldValueInvalid"),
                ("spec.postgresql.parameters[1x]", "FieldValueInvalid"),
                ("spec.postgresql.parameters[Work_Mem]", "FieldValueInvalid"),
                ("spec.postgresql.parameters[a.b.c]", "FieldValueInvalid"),
            ],
        ),
        (
            "a value that would add a line to postgresql.conf",
            json!({"spec": {"postgresql": {"parameters": {"work_mem": "4MB\nwal_level = minimal"}}}}),
            vec![("spec.postgresql.parameters[work_mem]", "FieldValueInvalid")],
        ),
        (
            "a value too long",
            json!({"spec": {"postgresql": {"parameters": {"search_path": "x".repeat(4097)}}}}),
            vec![("spec.postgresql.parameters[search_path]", "FieldValueInvalid")],
        ),
        (
            "too many parameters",
            json!({"spec": {"postgresql": {"parameters": (0..129).map(|i| (format!("p{i}"), json!("1"))).collect::<serde_json::Map<_, _>>()}}}),
            vec![("spec.postgresql.parameters", "FieldValueInvalid")],
        ),
        ("lag bound 0", json!({"spec": {"replication": {"maxLagBytes": 0}}}), vec![]),
        ("failover delay 0s", json!({"spec": {"failoverDelay": "0s"}}), vec![]),
        ("supervised primary update", json!({"spec": {"primaryUpdateStrategy": "supervised"}}), vec![]),
        ("primary updated by restart", json!({"spec": {"primaryUpdateMethod": "restart"}}), vec![]),
        ("primary updated by switchover", json!({"spec": {"primaryUpdateMethod": "switchover"}}), vec![]),
        (
            "unknown primary update method",
            json!({"spec": {"primaryUpdateMethod": "recreate"}}),
            vec![("spec.primaryUpdateMethod", "FieldValueNotSupported")],
        ),
        (
            "unknown primary update strategy",
            json!({"spec": {"primaryUpdateStrategy": "manual"}}),
            vec![("spec.primaryUpdateStrategy", "FieldValueNotSupported")],
        ),
        ("failover delay 2m", json!({"spec": {"failoverDelay": "2m"}}), vec![]),
        (
            "failover delay without unit",
            json!({"spec": {"failoverDelay": "30"}}),
            vec![("spec.failoverDelay", "FieldValueInvalid")],
        ),
        (
            "failover delay of a day and more",
            json!({"spec": {"failoverDelay": "25h"}}),
            vec![("spec.failoverDelay", "FieldValueInvalid")],
        ),
        (
            "failover lag bound negative",
            json!({"spec": {"failover": {"maxLagBytes": -1}}}),
            vec![("spec.failover.maxLagBytes", "FieldValueInvalid")],
        ),
        (
            "lag bound negative",
            json!({"spec": {"replication": {"maxLagBytes": -1}}}),
            vec![("spec.replication.maxLagBytes", "FieldValueInvalid")],
        ),
        ("image empty", json!({"spec": {"image": ""}}), vec![("spec.image", "FieldValueRequired")]),
        ("image upper case", json!({"spec": {"image": "Postgres:17"}}), vec![("spec.image", "FieldValueInvalid")]),
        ("image with space", json!({"spec": {"image": "postgres 17"}}), vec![("spec.image", "FieldValueInvalid")]),
        ("image with digest", json!({"spec": {"image": format!("postgres@sha256:{}", "a".repeat(64))}}), vec![]),
        (
            "storage 10GB",
            json!({"spec": {"storage": {"size": "10GB"}}}),
            vec![("spec.storage.size", "FieldValueInvalid")],
        ),
        (
            "storage empty",
            json!({"spec": {"storage": {"size": ""}}}),
            vec![("spec.storage.size", "FieldValueRequired")],
        ),
        (
            "storage fractional binary",
            json!({"spec": {"storage": {"size": "1.0000001Mi"}}}),
            vec![("spec.storage.size", "FieldValueInvalid")],
        ),
        (
            "storage not whole bytes",
            json!({"spec": {"storage": {"size": "1048576.5"}}}),
            vec![("spec.storage.size", "FieldValueInvalid")],
        ),
        ("storage milli", json!({"spec": {"storage": {"size": "2000000000m"}}}), vec![]),
        (
            "storage below 1Mi",
            json!({"spec": {"storage": {"size": "1048575"}}}),
            vec![("spec.storage.size", "FieldValueInvalid")],
        ),
        ("storage exactly 1Mi", json!({"spec": {"storage": {"size": "1Mi"}}}), vec![]),
        ("storage exactly 64Ti", json!({"spec": {"storage": {"size": "64Ti"}}}), vec![]),
        (
            "storage above 64Ti",
            json!({"spec": {"storage": {"size": "65Ti"}}}),
            vec![("spec.storage.size", "FieldValueInvalid")],
        ),
        (
            "storage negative",
            json!({"spec": {"storage": {"size": "-10Gi"}}}),
            vec![("spec.storage.size", "FieldValueInvalid")],
        ),
        ("storage decimal exponent", json!({"spec": {"storage": {"size": "1e9"}}}), vec![]),
        (
            "storage astronomically large",
            json!({"spec": {"storage": {"size": "1e100"}}}),
            vec![("spec.storage.size", "FieldValueInvalid")],
        ),
        (
            "storage with space",
            json!({"spec": {"storage": {"size": "10 Gi"}}}),
            vec![("spec.storage.size", "FieldValueInvalid")],
        ),
        (
            "storage class not a subdomain",
            json!({"spec": {"storage": {"storageClassName": "Fast_SSD"}}}),
            vec![("spec.storage.storageClassName", "FieldValueInvalid")],
        ),
        (
            "request above limit",
            json!({"spec": {"resources": {"requests": {"memory": "2Gi"}}}}),
            vec![("spec.resources.requests[memory]", "FieldValueInvalid")],
        ),
        (
            "request equal to limit in other units",
            json!({"spec": {"resources": {"requests": {"memory": "1024Mi"}}}}),
            vec![],
        ),
        (
            "request below limit",
            json!({"spec": {"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1500m"}}}}),
            vec![],
        ),
        (
            "bad cpu quantity",
            json!({"spec": {"resources": {"requests": {"cpu": "one"}}}}),
            vec![("spec.resources.requests[cpu]", "FieldValueInvalid")],
        ),
        (
            "negative limit",
            json!({"spec": {"resources": {"limits": {"cpu": "-1"}}}}),
            vec![("spec.resources.limits[cpu]", "FieldValueInvalid")],
        ),
        (
            "unknown resource name",
            json!({"spec": {"resources": {"limits": {"gpu": "1"}}}}),
            vec![("spec.resources.limits[gpu]", "FieldValueInvalid")],
        ),
        ("extended resource", json!({"spec": {"resources": {"limits": {"example.com/gpu": "1"}}}}), vec![]),
        ("hugepages", json!({"spec": {"resources": {"limits": {"hugepages-2Mi": "64Mi"}}}}), vec![]),
        (
            "resource claims",
            json!({"spec": {"resources": {"claims": [{"name": "gpu"}]}}}),
            vec![("spec.resources.claims", "FieldValueForbidden")],
        ),
    ];
    let total = rows.len();
    for (case, patch, want) in rows {
        let verdict = validate_create(&cluster(patch));
        assert!(
            verdict
                .errors
                .iter()
                .all(|e| !e.detail.is_empty() || matches!(e.reason(), "FieldValueRequired" | "FieldValueNotSupported")),
            "{case}"
        );
        let want: Vec<(String, &str)> = want.into_iter().map(|(f, r)| (f.to_owned(), r)).collect();
        assert_eq!(causes(&verdict), want, "{case}: {:?}", messages(&verdict));
    }
    assert!(total >= 40);
    let huge = validate_create(&cluster(json!({"spec": {"storage": {"size": "1e100"}}})));
    assert!(huge.errors[0].detail.starts_with("must be between 1Mi and 64Ti"), "{:?}", messages(&huge));
}

#[test]
fn all_errors_are_reported_at_once() {
    let verdict = validate_create(&cluster(json!({
        "metadata": {"name": "Payments"},
        "spec": {"image": "Postgres:17", "replicas": 0, "port": 70000, "storage": {"size": "-5Gi"}}
    })));
    let fields: Vec<String> = verdict.errors.iter().map(|e| e.field.clone()).collect();
    assert_eq!(fields, ["metadata.name", "spec.image", "spec.replicas", "spec.port", "spec.storage.size"]);
}

#[test]
fn messages_use_apimachinery_wording() {
    let verdict = validate_create(&cluster(json!({"spec": {"storage": {"size": "10GB"}}})));
    let message = verdict.errors[0].to_string();
    assert!(
        message.starts_with("spec.storage.size: Invalid value: \"10GB\": must be a Kubernetes quantity such as 10Gi"),
        "{message}"
    );
    assert_eq!(
        verdict.invalid_message("orders"),
        format!("DatabaseCluster.stead.dev \"orders\" is invalid: {message}")
    );
    let two = validate_create(&cluster(json!({"spec": {"replicas": 0, "port": 0}})));
    assert!(two.invalid_message("orders").contains(
        ": [spec.replicas: Invalid value: 0: must be between 1 and 9, inclusive, spec.port: Invalid value: 0: "
    ));
    let required = validate_create(&cluster(json!({"spec": {"image": ""}})));
    assert!(required.errors[0].to_string().starts_with("spec.image: Required value: "));
    let forbidden = validate_delete(&cluster(json!({"spec": {"deletionProtection": true}})));
    assert!(forbidden.errors[0].to_string().starts_with("spec.deletionProtection: Forbidden: "));
}

#[test]
fn warnings_table() {
    // (case, overlay, substring expected in exactly one warning)
    let rows = [
        ("even replicas", json!({"spec": {"replicas": 2}}), "spec.replicas: 2 is even"),
        ("no tag", json!({"spec": {"image": "postgres"}}), "does not pin a version"),
        ("latest tag", json!({"spec": {"image": "postgres:latest"}}), "does not pin a version"),
    ];
    for (case, patch, want) in rows {
        let verdict = validate_create(&cluster(patch));
        assert!(verdict.is_allowed(), "{case}");
        assert_eq!(verdict.warnings.iter().filter(|w| w.contains(want)).count(), 1, "{case}: {:?}", verdict.warnings);
    }
}

#[test]
fn update_rules_table() {
    // (case, old overlay, new overlay, expected causes)
    let rows: Vec<(&str, Value, Value, Vec<(&str, &str)>)> = vec![
        ("grow storage", json!({}), json!({"spec": {"storage": {"size": "20Gi"}}}), vec![]),
        ("same size other unit", json!({}), json!({"spec": {"storage": {"size": "10240Mi"}}}), vec![]),
        (
            "shrink storage",
            json!({}),
            json!({"spec": {"storage": {"size": "5Gi"}}}),
            vec![("spec.storage.size", "FieldValueForbidden")],
        ),
        (
            "change class",
            json!({}),
            json!({"spec": {"storage": {"storageClassName": "slow"}}}),
            vec![("spec.storage.storageClassName", "FieldValueInvalid")],
        ),
        (
            "remove class",
            json!({}),
            json!({"spec": {"storage": {"storageClassName": null}}}),
            vec![("spec.storage.storageClassName", "FieldValueInvalid")],
        ),
        (
            "add class",
            json!({"spec": {"storage": {"storageClassName": null}}}),
            json!({}),
            vec![("spec.storage.storageClassName", "FieldValueInvalid")],
        ),
        ("scale to 5", json!({}), json!({"spec": {"replicas": 5}}), vec![]),
        ("scale to 10", json!({}), json!({"spec": {"replicas": 10}}), vec![("spec.replicas", "FieldValueInvalid")]),
        ("labels only", json!({}), json!({"metadata": {"labels": {"a": "b"}}}), vec![]),
        ("finalizer only", json!({}), json!({"metadata": {"finalizers": ["stead.dev/finalizer"]}}), vec![]),
        (
            "metadata-only update of a stored invalid object",
            json!({"spec": {"replicas": 12, "storage": {"size": "10GB"}}}),
            json!({"spec": {"replicas": 12, "storage": {"size": "10GB"}}, "metadata": {"finalizers": []}}),
            vec![],
        ),
        (
            "ratcheting: untouched stored problem is not reported",
            json!({"spec": {"image": "Bad Image"}}),
            json!({"spec": {"image": "Bad Image", "replicas": 5}}),
            vec![],
        ),
        (
            "ratcheting: a new problem is still reported",
            json!({"spec": {"image": "Bad Image"}}),
            json!({"spec": {"image": "Bad Image", "replicas": 11}}),
            vec![("spec.replicas", "FieldValueInvalid")],
        ),
        (
            "being deleted: anything goes",
            json!({}),
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"storage": {"size": "1Gi", "storageClassName": "other"}}}),
            vec![],
        ),
        (
            "resources: raising a request above its unchanged limit",
            json!({}),
            json!({"spec": {"resources": {"requests": {"memory": "4Gi"}}}}),
            vec![("spec.resources.requests[memory]", "FieldValueInvalid")],
        ),
    ];
    for (case, old, new, want) in rows {
        let verdict = validate_update(&cluster(old), &cluster(new));
        let want: Vec<(String, &str)> = want.into_iter().map(|(f, r)| (f.to_owned(), r)).collect();
        assert_eq!(causes(&verdict), want, "{case}: {:?}", messages(&verdict));
    }
}

#[test]
fn a_major_version_change_is_refused_and_a_minor_one_admitted() {
    let with = |image: &str| cluster(json!({"spec": {"image": image}}));
    let rows = [
        ("17.2 to 17.4: minor", "postgres:17.2", "postgres:17.4", true),
        ("17.2 to 18.1: major", "postgres:17.2", "postgres:18.1", false),
        ("15 to 16-bookworm: major", "postgres:15", "postgres:16-bookworm", false),
        ("a digest names no version: admitted", "postgres:17.2", &format!("postgres@sha256:{}", "a".repeat(64)), true),
        ("latest names no version: admitted (with the floating-tag warning)", "postgres:17.2", "postgres:latest", true),
        ("another repository of the same major", "postgres:17.2", "registry.example.com/pg:17.2-custom", true),
    ];
    for (case, from, to, admitted) in rows {
        let verdict = validate_update(&with(from), &with(to));
        assert_eq!(verdict.is_allowed(), admitted, "{case}: {:?}", messages(&verdict));
        if !admitted {
            let message = verdict.errors[0].to_string();
            assert!(
                message.starts_with("spec.image: Forbidden: changes the PostgreSQL major version from"),
                "{message}"
            );
            assert!(message.contains("restore a backup into a new cluster"), "{message}");
        }
    }
}

#[test]
fn update_warnings() {
    let grow = validate_update(&cluster(json!({})), &cluster(json!({"spec": {"storage": {"size": "20Gi"}}})));
    assert!(grow.warnings.iter().any(|w| w.contains("growing from 10Gi to 20Gi")), "{:?}", grow.warnings);
    let down = validate_update(&cluster(json!({})), &cluster(json!({"spec": {"replicas": 1}})));
    assert!(down.warnings.iter().any(|w| w.contains("ordinals 1, 2 are retained")), "{:?}", down.warnings);
    let one = validate_update(&cluster(json!({"spec": {"replicas": 2}})), &cluster(json!({"spec": {"replicas": 1}})));
    assert!(one.warnings.iter().any(|w| w.contains("the volumes of ordinal 1 are retained")), "{:?}", one.warnings);
    // A stored count far out of range (schema bypassed) costs constant work and says so as a range.
    let huge =
        validate_update(&cluster(json!({"spec": {"replicas": i32::MAX}})), &cluster(json!({"spec": {"replicas": 3}})));
    let want = format!("the volumes of ordinals 3 to {} are retained", i32::MAX - 1);
    assert!(huge.warnings.iter().any(|w| w.contains(&want)), "{:?}", huge.warnings);
    // Scaling to an invalid count is an error, not also a warning about volumes.
    let negative = validate_update(&cluster(json!({})), &cluster(json!({"spec": {"replicas": i32::MIN}})));
    assert!(!negative.is_allowed());
    assert!(negative.warnings.iter().all(|w| !w.contains("retained")), "{:?}", negative.warnings);
    let even_unchanged = validate_update(
        &cluster(json!({"spec": {"replicas": 2}})),
        &cluster(json!({"spec": {"replicas": 2, "port": 6000}})),
    );
    assert!(even_unchanged.warnings.is_empty(), "unchanged fields do not warn again: {:?}", even_unchanged.warnings);
}

#[test]
fn shrink_message_names_both_sizes() {
    let verdict = validate_update(&cluster(json!({})), &cluster(json!({"spec": {"storage": {"size": "5Gi"}}})));
    assert_eq!(
        verdict.errors[0].to_string(),
        "spec.storage.size: Forbidden: may not shrink from \"10Gi\" to \"5Gi\"; volumes can grow but never shrink"
    );
}

#[test]
fn delete_rules() {
    assert!(validate_delete(&cluster(json!({}))).is_allowed());
    assert!(validate_delete(&cluster(json!({"spec": {"deletionProtection": false}}))).is_allowed());
    let protected = validate_delete(&cluster(json!({"spec": {"deletionProtection": true}})));
    assert_eq!(causes(&protected), [("spec.deletionProtection".to_owned(), "FieldValueForbidden")]);
}

#[test]
fn decode_names_the_field_that_does_not_fit() {
    let err = decode(&overlay(base(), &json!({"spec": {"replicas": "three"}}))).unwrap_err();
    assert_eq!(err.field, "spec.replicas");
    assert_eq!(err.reason(), "FieldValueInvalid");
    assert!(err.to_string().starts_with("spec.replicas: Invalid value: \"three\": invalid type"), "{err}");
    let missing = decode(&overlay(base(), &json!({"spec": {"storage": null}}))).unwrap_err();
    assert_eq!((missing.field.as_str(), missing.reason()), ("spec.storage", "FieldValueRequired"));
}
