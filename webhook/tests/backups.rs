//! DatabaseBackup reviews, and the rules that read the API, over real HTTPS:
//! a refused spec change, a warned missing cluster (answered by a fake
//! resolver, counted in the metrics), a failed lookup that fails open, and
//! a restore refused for a backup too large or not complete.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::needless_pass_by_value)]

mod support;

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::StatusCode;
use serde_json::{Value, json};
use stead_crds::DatabaseBackup;
use stead_crds::lookup::{Answers, Found, Query};
use stead_webhook::lookup::Resolver;
use support::{Alpn, TestServer, causes, fixture, response_of};

/// Answers from a fixed table and records what it was asked.
#[derive(Default)]
struct FakeResolver {
    clusters: Vec<(&'static str, Found<()>)>,
    backups: Vec<(&'static str, Found<DatabaseBackup>)>,
    asked: Mutex<Vec<Query>>,
}

impl Resolver for FakeResolver {
    fn resolve<'a>(&'a self, queries: &'a [Query]) -> BoxFuture<'a, Answers> {
        self.asked.lock().unwrap().extend(queries.iter().cloned());
        let mut answers = Answers::skipped();
        for (name, found) in &self.clusters {
            answers = answers.with_cluster("shop", name, found.clone());
        }
        for (name, found) in &self.backups {
            answers = answers.with_backup("shop", name, found.clone());
        }
        Box::pin(async move { answers })
    }
}

async fn start_with(resolver: Arc<FakeResolver>) -> TestServer {
    TestServer::start_tuned(|settings| *settings = settings.clone().with_resolver(resolver)).await
}

fn backup(status: Value) -> DatabaseBackup {
    serde_json::from_value(json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseBackup",
        "metadata": {"name": "orders-manual-1", "namespace": "shop"},
        "spec": {"cluster": "orders"},
        "status": status
    }))
    .unwrap()
}

#[tokio::test]
async fn a_backup_for_a_missing_cluster_is_admitted_with_a_warning_and_counted() {
    let resolver = Arc::new(FakeResolver { clusters: vec![("orders", Found::No)], ..Default::default() });
    let server = start_with(Arc::clone(&resolver)).await;
    let mut conn = server.connect(Alpn::H2).await;

    let reply = conn.post_json("/validate", &fixture("backup-create")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let response = response_of(&reply.body);
    assert!(response.allowed);
    let warnings = response.warnings.unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("spec.cluster: no DatabaseCluster \"orders\" in namespace \"shop\""),
        "{warnings:?}"
    );
    assert_eq!(*resolver.asked.lock().unwrap(), [Query::Cluster { namespace: "shop".into(), name: "orders".into() }]);

    // Mutation has nothing to default and reads nothing.
    let reply = conn.post_json("/mutate", &fixture("backup-create")).await;
    let response = response_of(&reply.body);
    assert!(response.allowed && response.patch.is_none());
    assert_eq!(resolver.asked.lock().unwrap().len(), 1, "mutate must not look anything up");

    let (_, metrics) = server.metrics_get("/metrics").await;
    assert!(
        metrics.contains(r#"stead_webhook_lookups_total{kind="DatabaseCluster",result="not_found"} 1"#),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_api_fails_open_with_a_warning_and_is_counted() {
    let resolver = Arc::new(FakeResolver {
        clusters: vec![("orders", Found::Unknown("the API server did not answer within 1s".into()))],
        ..Default::default()
    });
    let server = start_with(resolver).await;
    let mut conn = server.connect(Alpn::Http1).await;
    let response = response_of(&conn.post_json("/validate", &fixture("backup-create")).await.body);
    assert!(response.allowed);
    let warnings = response.warnings.unwrap_or_default();
    assert!(warnings[0].contains("could not check") && warnings[0].contains("within 1s"), "{warnings:?}");
    let (_, metrics) = server.metrics_get("/metrics").await;
    assert!(metrics.contains(r#"stead_webhook_lookups_total{kind="DatabaseCluster",result="failed"} 1"#), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn without_api_access_the_answer_says_so() {
    let server = TestServer::start().await;
    let mut conn = server.connect(Alpn::Http1).await;
    let response = response_of(&conn.post_json("/validate", &fixture("backup-create")).await.body);
    assert!(response.allowed);
    let warnings = response.warnings.unwrap_or_default();
    assert!(warnings[0].contains("without Kubernetes API access"), "{warnings:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_backup_spec_change_is_refused_and_metadata_changes_are_not() {
    let resolver = Arc::new(FakeResolver::default());
    let server = start_with(Arc::clone(&resolver)).await;
    let mut conn = server.connect(Alpn::H2).await;

    let reply = conn.post_json("/validate", &fixture("backup-update-spec")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let response = response_of(&reply.body);
    assert!(!response.allowed);
    assert_eq!((response.result.code, response.result.reason.as_str()), (422, "Invalid"));
    assert!(
        response
            .result
            .message
            .starts_with("DatabaseBackup.stead.dev \"orders-manual-1\" is invalid: [spec.cluster: Forbidden"),
        "{}",
        response.result.message
    );
    assert_eq!(response.result.details.as_ref().unwrap().kind, "DatabaseBackup");
    let fields: Vec<(String, String)> = causes(&response).into_iter().map(|(f, r, _)| (f, r)).collect();
    assert_eq!(
        fields,
        [
            ("spec.cluster".to_owned(), "FieldValueForbidden".to_owned()),
            ("spec.target".to_owned(), "FieldValueForbidden".to_owned())
        ]
    );

    let response = response_of(&conn.post_json("/validate", &fixture("backup-update-labels")).await.body);
    assert!(response.allowed && response.warnings.is_none());
    assert!(resolver.asked.lock().unwrap().is_empty(), "updates read nothing");
    server.shutdown().await;
}

#[tokio::test]
async fn a_restore_needs_a_completed_backup_that_fits() {
    let completed = backup(json!({"phase": "Completed", "snapshots": [
        {"name": "orders-manual-1-data-orders-1", "persistentVolumeClaim": "data-orders-1", "readyToUse": true, "restoreSize": "10Gi"}
    ]}));
    let rows = [
        ("too large for 5Gi", Found::Yes(completed), "spec.storage.size", "FieldValueInvalid"),
        (
            "running",
            Found::Yes(backup(json!({"phase": "Running"}))),
            "spec.bootstrap.fromBackup.name",
            "FieldValueInvalid",
        ),
        ("missing", Found::No, "spec.bootstrap.fromBackup.name", "FieldValueNotFound"),
    ];
    for (case, found, field, reason) in rows {
        let resolver = Arc::new(FakeResolver { backups: vec![("orders-manual-1", found)], ..Default::default() });
        let server = start_with(Arc::clone(&resolver)).await;
        let mut conn = server.connect(Alpn::Http1).await;
        let response = response_of(&conn.post_json("/validate", &fixture("restore-create")).await.body);
        assert!(!response.allowed, "{case}");
        let got: Vec<(String, String)> = causes(&response).into_iter().map(|(f, r, _)| (f, r)).collect();
        assert_eq!(got, [(field.to_owned(), reason.to_owned())], "{case}");
        assert_eq!(
            *resolver.asked.lock().unwrap(),
            [Query::Backup { namespace: "shop".into(), name: "orders-manual-1".into() }],
            "{case}"
        );
        server.shutdown().await;
    }
}
