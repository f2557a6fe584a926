//! Table tests for the backup admission rules: `spec.backup` and
//! `spec.bootstrap.fromBackup` on a DatabaseCluster, and every rule of a
//! DatabaseBackup, including the two that read the API (through a table of
//! answers, as the webhook gets them from its client).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_pass_by_value, clippy::type_complexity)]

use serde_json::{Value, json};
use stead_crds::lookup::{Answers, Found, Query};
use stead_crds::{DatabaseBackup, DatabaseCluster, Verdict, backup_validation, validation};

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
    let base = json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseCluster",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"image": "postgres:17.2", "replicas": 3, "storage": {"size": "10Gi"}}
    });
    validation::decode(&overlay(base, &patch)).unwrap()
}

fn backup(patch: Value) -> DatabaseBackup {
    let base = json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseBackup",
        "metadata": {"name": "orders-202501010300", "namespace": "shop"},
        "spec": {"cluster": "orders"}
    });
    backup_validation::decode(&overlay(base, &patch)).unwrap()
}

fn with_backup(spec: Value) -> DatabaseCluster {
    cluster(json!({"spec": {"backup": spec}}))
}

fn causes(verdict: &Verdict) -> Vec<(String, &'static str)> {
    verdict.errors.iter().map(|e| (e.field.clone(), e.reason())).collect()
}

fn messages(verdict: &Verdict) -> Vec<String> {
    verdict.errors.iter().map(ToString::to_string).collect()
}

#[test]
fn a_complete_backup_spec_is_admitted_without_warnings() {
    let verdict = validation::validate_create(&with_backup(json!({
        "schedule": "0 3 * * *",
        "timeZone": "Europe/Berlin",
        "retention": {"keepLast": 7, "maxAge": "30d"},
        "volumeSnapshotClassName": "csi-snapclass",
        "target": "primary",
        "suspend": false
    })));
    assert!(verdict.is_allowed(), "{:?}", messages(&verdict));
    assert!(verdict.warnings.is_empty(), "{:?}", verdict.warnings);
    for spec in [json!({}), json!({"schedule": "@daily"}), json!({"retention": {"maxAge": "12h"}})] {
        let verdict = validation::validate_create(&with_backup(spec.clone()));
        assert!(verdict.is_allowed() && verdict.warnings.is_empty(), "{spec}: {:?}", messages(&verdict));
    }
}

#[test]
fn backup_spec_rules_table() {
    // (case, spec.backup, expected (field, reason) pairs, text every message must contain)
    let rows: &[(&str, Value, &[(&str, &str)], &str)] = &[
        (
            "six fields",
            json!({"schedule": "0 0 3 * * *"}),
            &[("spec.backup.schedule", "FieldValueInvalid")],
            "exactly 5 fields",
        ),
        (
            "four fields",
            json!({"schedule": "0 3 * *"}),
            &[("spec.backup.schedule", "FieldValueInvalid")],
            "has 4 fields",
        ),
        (
            "never fires",
            json!({"schedule": "0 0 31 2 *"}),
            &[("spec.backup.schedule", "FieldValueInvalid")],
            "never fires",
        ),
        (
            "30th of February",
            json!({"schedule": "0 0 30 2 *"}),
            &[("spec.backup.schedule", "FieldValueInvalid")],
            "never fires",
        ),
        ("extension", json!({"schedule": "0 0 L * *"}), &[("spec.backup.schedule", "FieldValueInvalid")], "extension"),
        (
            "unknown time zone",
            json!({"schedule": "0 3 * * *", "timeZone": "Europe/Berln"}),
            &[("spec.backup.timeZone", "FieldValueInvalid")],
            "Europe/Berlin",
        ),
        (
            "keep nothing",
            json!({"retention": {"keepLast": 0}}),
            &[("spec.backup.retention.keepLast", "FieldValueInvalid")],
            "such as 7",
        ),
        (
            "zero age",
            json!({"retention": {"maxAge": "0d"}}),
            &[("spec.backup.retention.maxAge", "FieldValueInvalid")],
            "such as 30d",
        ),
        (
            "both keep nothing",
            json!({"retention": {"keepLast": 0, "maxAge": "0s"}}),
            &[
                ("spec.backup.retention.keepLast", "FieldValueInvalid"),
                ("spec.backup.retention.maxAge", "FieldValueInvalid"),
            ],
            "keeps no backup",
        ),
        (
            "age not a duration",
            json!({"retention": {"maxAge": "1 month"}}),
            &[("spec.backup.retention.maxAge", "FieldValueInvalid")],
            "30d",
        ),
        ("empty retention", json!({"retention": {}}), &[("spec.backup.retention", "FieldValueRequired")], "keepLast"),
        (
            "unknown target",
            json!({"target": "replica"}),
            &[("spec.backup.target", "FieldValueNotSupported")],
            "\"prefer-replica\", \"primary\"",
        ),
        (
            "snapshot class",
            json!({"volumeSnapshotClassName": "Fast_SSD"}),
            &[("spec.backup.volumeSnapshotClassName", "FieldValueInvalid")],
            "RFC 1123",
        ),
    ];
    for (case, spec, want, says) in rows {
        let verdict = validation::validate_create(&with_backup(spec.clone()));
        let want: Vec<(String, &str)> = want.iter().map(|(f, r)| ((*f).to_owned(), *r)).collect();
        assert_eq!(causes(&verdict), want, "{case}");
        for message in messages(&verdict) {
            assert!(message.contains(says), "{case}: {message}");
        }
    }
}

#[test]
fn every_backup_problem_is_reported_at_once() {
    let verdict = validation::validate_create(&with_backup(json!({
        "schedule": "0 0 3 * * *",
        "timeZone": "Mars/Olympus",
        "retention": {"keepLast": 0},
        "target": "secondary"
    })));
    let fields: Vec<String> = causes(&verdict).into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        ["spec.backup.schedule", "spec.backup.timeZone", "spec.backup.retention.keepLast", "spec.backup.target"]
    );
}

#[test]
fn a_frequent_schedule_is_admitted_with_a_warning() {
    let verdict = validation::validate_create(&with_backup(json!({"schedule": "*/5 * * * *"})));
    assert!(verdict.is_allowed());
    assert_eq!(verdict.warnings.len(), 1, "{:?}", verdict.warnings);
    assert!(verdict.warnings[0].starts_with("spec.backup.schedule: "), "{}", verdict.warnings[0]);
    assert!(verdict.warnings[0].contains("every 5 minutes"), "{}", verdict.warnings[0]);
    for quiet in ["*/15 * * * *", "0 * * * *", "0 3 * * *"] {
        let verdict = validation::validate_create(&with_backup(json!({"schedule": quiet})));
        assert!(verdict.warnings.is_empty(), "{quiet}: {:?}", verdict.warnings);
    }
}

#[test]
fn an_update_is_judged_on_what_it_changes() {
    // A stored bad schedule does not block an unrelated edit (ratcheting) ...
    let old = with_backup(json!({"schedule": "0 0 31 2 *"}));
    let mut new = old.clone();
    new.spec.replicas = Some(5);
    assert!(validation::validate_update(&old, &new).is_allowed());
    // ... but changing it to another bad one is refused.
    let mut bad = old.clone();
    bad.spec.backup.as_mut().unwrap().schedule = Some("0 0 30 2 *".into());
    assert_eq!(
        causes(&validation::validate_update(&old, &bad)),
        [("spec.backup.schedule".to_owned(), "FieldValueInvalid")]
    );
}

#[test]
fn from_backup_is_immutable() {
    let restored = cluster(json!({"spec": {"bootstrap": {"fromBackup": {"name": "orders-202501010300"}}}}));
    let plain = cluster(json!({}));
    let renamed = cluster(json!({"spec": {"bootstrap": {"fromBackup": {"name": "orders-202501020300"}}}}));
    let field = [("spec.bootstrap.fromBackup".to_owned(), "FieldValueForbidden")];
    for (case, old, new) in
        [("added", &plain, &restored), ("removed", &restored, &plain), ("changed", &restored, &renamed)]
    {
        let verdict = validation::validate_update(old, new);
        assert_eq!(causes(&verdict), field, "{case}");
        assert!(messages(&verdict)[0].contains("create a new DatabaseCluster"), "{case}");
    }
    let mut scaled = restored.clone();
    scaled.spec.replicas = Some(5);
    assert!(validation::validate_update(&restored, &scaled).is_allowed());
}

fn completed(size: Option<&str>) -> DatabaseBackup {
    let snapshot = match size {
        Some(size) => {
            json!({"name": "orders-202501010300-0", "persistentVolumeClaim": "data-orders-1", "readyToUse": true, "restoreSize": size})
        }
        None => json!({"name": "orders-202501010300-0", "persistentVolumeClaim": "data-orders-1", "readyToUse": true}),
    };
    backup(json!({"status": {"phase": "Completed", "snapshots": [snapshot]}}))
}

#[test]
fn restore_rules_table() {
    let restore = |size: &str| {
        cluster(
            json!({"spec": {"storage": {"size": size}, "bootstrap": {"fromBackup": {"name": "orders-202501010300"}}}}),
        )
    };
    let answer = |found: Found<DatabaseBackup>| Answers::skipped().with_backup("shop", "orders-202501010300", found);
    // (case, storage size, answer, errors, warnings)
    let rows: Vec<(&str, &str, Answers, &[(&str, &str)], usize)> = vec![
        ("completed and fits", "10Gi", answer(Found::Yes(completed(Some("10Gi")))), &[], 0),
        ("fits exactly in other units", "10Gi", answer(Found::Yes(completed(Some("10737418240")))), &[], 0),
        (
            "too large",
            "5Gi",
            answer(Found::Yes(completed(Some("10Gi")))),
            &[("spec.storage.size", "FieldValueInvalid")],
            0,
        ),
        ("size unknown", "10Gi", answer(Found::Yes(completed(None))), &[], 1),
        (
            "running",
            "10Gi",
            answer(Found::Yes(backup(json!({"status": {"phase": "Running"}})))),
            &[("spec.bootstrap.fromBackup.name", "FieldValueInvalid")],
            0,
        ),
        (
            "failed",
            "10Gi",
            answer(Found::Yes(backup(json!({"status": {"phase": "Failed", "error": "snapshot failed"}})))),
            &[("spec.bootstrap.fromBackup.name", "FieldValueInvalid")],
            0,
        ),
        (
            "no status yet",
            "10Gi",
            answer(Found::Yes(backup(json!({})))),
            &[("spec.bootstrap.fromBackup.name", "FieldValueInvalid")],
            0,
        ),
        (
            "completed without snapshots",
            "10Gi",
            answer(Found::Yes(backup(json!({"status": {"phase": "Completed"}})))),
            &[("spec.bootstrap.fromBackup.name", "FieldValueInvalid")],
            0,
        ),
        ("missing", "10Gi", answer(Found::No), &[("spec.bootstrap.fromBackup.name", "FieldValueNotFound")], 0),
        ("API unreachable: fail open", "10Gi", Answers::unknown("timed out after 1s"), &[], 1),
        ("offline: skipped", "10Gi", Answers::skipped(), &[], 0),
    ];
    for (case, size, answers, want, warnings) in rows {
        let verdict = validation::validate_create_with(&restore(size), "shop", &answers);
        let want: Vec<(String, &str)> = want.iter().map(|(f, r)| ((*f).to_owned(), *r)).collect();
        assert_eq!(causes(&verdict), want, "{case}: {:?}", messages(&verdict));
        assert_eq!(verdict.warnings.len(), warnings, "{case}: {:?}", verdict.warnings);
    }
    let verdict =
        validation::validate_create_with(&restore("5Gi"), "shop", &answer(Found::Yes(completed(Some("10Gi")))));
    assert!(messages(&verdict)[0].contains("set spec.storage.size to 10Gi or more"), "{:?}", messages(&verdict));
    let verdict = validation::validate_create_with(
        &restore("10Gi"),
        "shop",
        &answer(Found::Yes(backup(json!({"status": {"phase": "Running"}})))),
    );
    assert!(messages(&verdict)[0].contains("is Running, not Completed"), "{:?}", messages(&verdict));
    let unreachable = validation::validate_create_with(&restore("10Gi"), "shop", &Answers::unknown("timed out"));
    assert!(unreachable.warnings[0].contains("could not check") && unreachable.warnings[0].contains("timed out"));
}

#[test]
fn lookups_are_asked_only_when_a_rule_needs_them() {
    assert!(validation::lookups_for_create(&cluster(json!({})), "shop").is_empty());
    let restore = cluster(json!({"spec": {"bootstrap": {"fromBackup": {"name": "b"}}}}));
    assert_eq!(
        validation::lookups_for_create(&restore, "shop"),
        [Query::Backup { namespace: "shop".into(), name: "b".into() }]
    );
    assert_eq!(
        backup_validation::lookups_for_create(&backup(json!({})), "shop"),
        [Query::Cluster { namespace: "shop".into(), name: "orders".into() }]
    );
}

#[test]
fn a_backup_is_admitted_and_warned_about_by_what_the_api_says() {
    let rows: Vec<(&str, Answers, usize, &str)> = vec![
        ("cluster exists", Answers::skipped().with_cluster("shop", "orders", Found::Yes(())), 0, ""),
        (
            "cluster missing",
            Answers::skipped().with_cluster("shop", "orders", Found::No),
            1,
            "no DatabaseCluster \"orders\"",
        ),
        (
            "other namespace",
            Answers::skipped().with_cluster("other", "orders", Found::Yes(())).with_cluster(
                "shop",
                "orders",
                Found::No,
            ),
            1,
            "in namespace \"shop\"",
        ),
        ("API unreachable", Answers::unknown("connection refused"), 1, "could not check"),
        ("offline", Answers::skipped(), 0, ""),
    ];
    for (case, answers, warnings, says) in rows {
        let verdict = backup_validation::validate_create_with(&backup(json!({})), "shop", &answers);
        assert!(verdict.is_allowed(), "{case}: {:?}", messages(&verdict));
        assert_eq!(verdict.warnings.len(), warnings, "{case}: {:?}", verdict.warnings);
        if warnings > 0 {
            assert!(verdict.warnings[0].starts_with("spec.cluster: "), "{case}");
            assert!(verdict.warnings[0].contains(says), "{case}: {}", verdict.warnings[0]);
        }
    }
}

#[test]
fn backup_create_rules_table() {
    let long = "a".repeat(64);
    let rows: Vec<(&str, Value, &[(&str, &str)])> = vec![
        ("valid", json!({}), &[]),
        ("primary target", json!({"spec": {"target": "primary"}}), &[]),
        ("unknown target", json!({"spec": {"target": "replica"}}), &[("spec.target", "FieldValueNotSupported")]),
        ("empty cluster", json!({"spec": {"cluster": ""}}), &[("spec.cluster", "FieldValueRequired")]),
        ("cluster not a name", json!({"spec": {"cluster": "Orders"}}), &[("spec.cluster", "FieldValueInvalid")]),
        ("cluster too long", json!({"spec": {"cluster": "a".repeat(53)}}), &[("spec.cluster", "FieldValueInvalid")]),
        ("name too long for a label", json!({"metadata": {"name": long}}), &[("metadata.name", "FieldValueInvalid")]),
        ("name not a subdomain", json!({"metadata": {"name": "Orders_1"}}), &[("metadata.name", "FieldValueInvalid")]),
        ("generateName", json!({"metadata": {"name": null, "generateName": "orders-"}}), &[]),
        ("no name", json!({"metadata": {"name": null}}), &[("metadata.name", "FieldValueRequired")]),
        (
            "everything at once",
            json!({"metadata": {"name": "X"}, "spec": {"cluster": "-x", "target": "any"}}),
            &[
                ("metadata.name", "FieldValueInvalid"),
                ("spec.cluster", "FieldValueInvalid"),
                ("spec.target", "FieldValueNotSupported"),
            ],
        ),
    ];
    for (case, patch, want) in rows {
        let verdict = backup_validation::validate_create(&backup(patch));
        let want: Vec<(String, &str)> = want.iter().map(|(f, r)| ((*f).to_owned(), *r)).collect();
        assert_eq!(causes(&verdict), want, "{case}: {:?}", messages(&verdict));
    }
}

#[test]
fn a_backup_spec_never_changes() {
    let old = backup(json!({}));
    let rows: Vec<(&str, Value, &[&str])> = vec![
        ("cluster", json!({"spec": {"cluster": "billing"}}), &["spec.cluster"]),
        ("target added", json!({"spec": {"target": "primary"}}), &["spec.target"]),
        ("both", json!({"spec": {"cluster": "billing", "target": "primary"}}), &["spec.cluster", "spec.target"]),
    ];
    for (case, patch, fields) in rows {
        let verdict = backup_validation::validate_update(&old, &backup(patch));
        let got: Vec<(String, &str)> = causes(&verdict);
        let want: Vec<(String, &str)> = fields.iter().map(|f| ((*f).to_owned(), "FieldValueForbidden")).collect();
        assert_eq!(got, want, "{case}");
        assert!(messages(&verdict)[0].contains("immutable"), "{case}");
    }
    // Labels, owner references and status are not the spec.
    let relabelled =
        backup(json!({"metadata": {"labels": {"stead.dev/cluster": "orders"}}, "status": {"phase": "Completed"}}));
    assert!(backup_validation::validate_update(&old, &relabelled).is_allowed());
    // Anything being deleted is admitted, so finalizers can always go.
    let deleting =
        backup(json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}, "spec": {"cluster": "billing"}}));
    assert!(backup_validation::validate_update(&old, &deleting).is_allowed());
}

#[test]
fn a_backup_refusal_reads_like_kubectl() {
    let verdict =
        backup_validation::validate_update(&backup(json!({})), &backup(json!({"spec": {"cluster": "billing"}})));
    assert_eq!(
        verdict.invalid_message_for("DatabaseBackup", "orders-202501010300"),
        "DatabaseBackup.stead.dev \"orders-202501010300\" is invalid: spec.cluster: Forbidden: a DatabaseBackup's spec \
         is immutable: it records one backup; create a new DatabaseBackup (kubectl create -f) to take another"
    );
}
