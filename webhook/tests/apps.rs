//! App reviews over real HTTPS: a defaulted App, a refused App with several
//! errors at once, and the Ingress route rule against the webhook's App
//! cache (a real reflector store fed by hand, as the watch would feed it):
//! a collision refused naming the other App, an UPDATE that does not
//! collide with itself, and the fail-open answers of an unsynced cache and
//! of a server without one, counted in the metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use http::StatusCode;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use stead_crds::App;
use stead_webhook::app_cache::{AppCache, NOT_SYNCED};
use stead_webhook::wire::AnswerResponse;
use support::{Alpn, TestServer, causes, fixture, fixture_json, patched_object, response_of};

/// An App in `shop` claiming `host` and `path`, as the cache holds it.
fn stored(name: &str, host: &str, path: &str) -> App {
    serde_json::from_value(json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "App",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
        "spec": {"image": "nginx:1.27", "ingress": {"host": host, "path": path}}
    }))
    .unwrap()
}

/// A cache whose first listing held `apps` (synced), or that never listed (`None`).
fn cache(apps: Option<Vec<App>>) -> AppCache {
    let (store, mut writer) = reflector::store();
    if let Some(apps) = apps {
        writer.apply_watcher_event(&Event::Init);
        for app in apps {
            writer.apply_watcher_event(&Event::InitApply(app));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }
    // The store keeps its contents; a dropped writer only stops updates.
    AppCache::from_store(store)
}

async fn server_with(apps: AppCache) -> TestServer {
    TestServer::start_tuned(|settings| *settings = settings.clone().with_app_cache(apps)).await
}

async fn validate(server: &TestServer, review: &Value) -> AnswerResponse {
    let mut conn = server.connect(Alpn::H2).await;
    let reply = conn.post_json("/validate", &serde_json::to_vec(review).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    response_of(&reply.body)
}

/// The App fixture after defaulting, as `/validate` receives it.
fn defaulted_review() -> Value {
    let mut review = fixture_json("app-create");
    let spec = &mut review["request"]["object"]["spec"];
    spec["replicas"] = json!(1);
    spec["containerPort"] = json!(8080);
    spec["service"] = json!({"port": 8080});
    spec["ingress"]["path"] = json!("/");
    review
}

async fn collision_metric(server: &TestServer, result: &str) -> String {
    let (_, metrics) = server.metrics_get("/metrics").await;
    let series = format!("stead_webhook_app_collision_checks_total{{result=\"{result}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series)).unwrap_or_else(|| panic!("{series} in {metrics}")).to_owned()
}

#[tokio::test]
async fn an_app_is_defaulted_by_a_minimal_patch() {
    let server = TestServer::start().await;
    let mut conn = server.connect(Alpn::Http1).await;
    let reply = conn.post_json("/mutate", &fixture("app-create")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let response = response_of(&reply.body);
    assert!(response.allowed);
    assert_eq!(response.uid, "5d0c6b2a-1e7f-4c3a-8b9d-app000000001");
    let object = patched_object(&fixture_json("app-create"), &response);
    assert_eq!(
        object["spec"],
        json!({
            "image": "nginx:1.27",
            "replicas": 1,
            "containerPort": 8080,
            "env": [{"name": "MODE", "value": "prod"}],
            "service": {"port": 8080},
            "ingress": {"host": "shop.example.com", "path": "/", "className": "nginx", "tls": {"secretName": "shop-tls"}}
        })
    );
    // Mutating the mutated App changes nothing (reinvocationPolicy: IfNeeded is safe).
    let again = defaulted_review();
    let reply = conn.post_json("/mutate", &serde_json::to_vec(&again).unwrap()).await;
    let response = response_of(&reply.body);
    assert!(response.allowed && response.patch.is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn an_invalid_app_is_refused_with_every_error_at_once() {
    let server = TestServer::start().await;
    let mut review = defaulted_review();
    review["request"]["object"]["spec"] = json!({
        "image": "nginx:1.27",
        "replicas": 101,
        "containerPort": 0,
        "env": [{"name": "1MODE"}, {"name": "A"}, {"name": "A"}],
        "service": {"port": 70000},
        "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
        "ingress": {"host": "shop.*.example.com", "path": "shop"}
    });
    let response = validate(&server, &review).await;
    assert!(!response.allowed);
    assert_eq!((response.result.code, response.result.reason.as_str()), (422, "Invalid"));
    assert!(response.result.message.starts_with("App.stead.dev \"shop\" is invalid: ["), "{}", response.result.message);
    let fields: Vec<(String, String)> = causes(&response).into_iter().map(|(f, r, _)| (f, r)).collect();
    let want = [
        ("spec.replicas", "FieldValueInvalid"),
        ("spec.containerPort", "FieldValueInvalid"),
        ("spec.service.port", "FieldValueInvalid"),
        ("spec.env[0].name", "FieldValueInvalid"),
        ("spec.env[2].name", "FieldValueDuplicate"),
        ("spec.resources.requests[memory]", "FieldValueInvalid"),
        ("spec.ingress.host", "FieldValueInvalid"),
        ("spec.ingress.path", "FieldValueInvalid"),
    ];
    assert_eq!(fields, want.map(|(f, r)| (f.to_owned(), r.to_owned())));
    server.shutdown().await;
}

#[tokio::test]
async fn a_route_taken_by_another_app_is_refused_naming_it() {
    let server = server_with(cache(Some(vec![
        stored("legacy", "shop.example.com", "/"),
        stored("api", "shop.example.com", "/api"),
    ])))
    .await;
    let response = validate(&server, &defaulted_review()).await;
    assert!(!response.allowed);
    assert_eq!(response.result.code, 422);
    let causes = causes(&response);
    assert_eq!(causes.len(), 1, "{causes:?}");
    let (field, reason, message) = &causes[0];
    assert_eq!((field.as_str(), reason.as_str()), ("spec.ingress.host", "FieldValueDuplicate"));
    assert!(
        message.starts_with(
            "Duplicate value: \"shop.example.com\": App \"legacy\" in namespace \"shop\" already claims host \
             \"shop.example.com\" and path \"/\""
        ),
        "{message}"
    );

    // Another path on the same host is free.
    let mut other_path = defaulted_review();
    other_path["request"]["object"]["spec"]["ingress"]["path"] = json!("/shop");
    assert!(validate(&server, &other_path).await.allowed);
    assert_eq!(collision_metric(&server, "checked").await, "2");
    assert_eq!(collision_metric(&server, "skipped").await, "0");
    server.shutdown().await;
}

#[tokio::test]
async fn an_update_does_not_collide_with_itself() {
    let server = server_with(cache(Some(vec![stored("shop", "shop.example.com", "/")]))).await;
    let mut review = defaulted_review();
    let request = &mut review["request"];
    request["operation"] = json!("UPDATE");
    request["options"] = json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"});
    request["oldObject"] = request["object"].clone();
    request["oldObject"]["spec"]["ingress"] = json!({"host": "old.example.com", "path": "/"});
    let response = validate(&server, &review).await;
    assert!(response.allowed, "{:?}", response.result);
    assert_eq!(response.warnings, None);
    assert_eq!(collision_metric(&server, "checked").await, "1");
    server.shutdown().await;
}

#[tokio::test]
async fn an_unsynced_cache_or_none_fails_open_with_a_warning_and_is_counted() {
    let unsynced = server_with(cache(None)).await;
    let response = validate(&unsynced, &defaulted_review()).await;
    assert!(response.allowed);
    let warnings = response.warnings.unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("spec.ingress: admitted without checking"), "{warnings:?}");
    assert!(warnings[0].contains(NOT_SYNCED), "{warnings:?}");
    assert_eq!(collision_metric(&unsynced, "skipped").await, "1");
    assert_eq!(collision_metric(&unsynced, "checked").await, "0");
    unsynced.shutdown().await;

    // Without a client there is no cache at all: the warning an offline check gives.
    let plain = TestServer::start().await;
    let response = validate(&plain, &defaulted_review()).await;
    assert!(response.allowed);
    let warnings = response.warnings.unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(stead_crds::app_validation::NO_VIEW_OF_APPS), "{warnings:?}");
    assert_eq!(collision_metric(&plain, "skipped").await, "1");
    plain.shutdown().await;
}
