//! The webhook server over real HTTPS, in-process on 127.0.0.1, with a
//! rustls client trusting the CA from stead-certs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::{
    Alpn, Conn, TestServer, causes, fixture, fixture_json, patched_object, raw_tls, read_status, response_of,
};
use tokio::io::AsyncWriteExt;

async fn assert_healthy(server: &TestServer) {
    let mut conn = server.connect(Alpn::Http1).await;
    let health = conn.get("/healthz").await;
    assert_eq!((health.status, health.text().as_str()), (StatusCode::OK, "ok\n"));
    let ready = conn.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    let reply = conn.post_json("/validate", &fixture("create-admitted")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(response_of(&reply.body).allowed);
}

#[tokio::test]
async fn admits_defaults_and_refuses_over_http1_and_h2() {
    let server = TestServer::start().await;
    for alpn in [Alpn::Http1, Alpn::H2] {
        let mut conn = server.connect(alpn).await;
        assert_eq!(conn.negotiated, alpn);

        // Admitted.
        let reply = conn.post_json("/validate", &fixture("create-admitted")).await;
        assert_eq!(reply.status, StatusCode::OK, "{alpn:?}");
        assert_eq!(reply.headers["content-type"], "application/json");
        let response = response_of(&reply.body);
        assert!(response.allowed);
        assert_eq!(response.uid, "1c7b9d2f-52e6-4b68-8d20-6b1d904f3e22");

        // Defaulted: the returned patch, applied, gives the defaulted object.
        let request = fixture_json("create-defaulted");
        let reply = conn.post_json("/mutate", &fixture("create-defaulted")).await;
        let wire: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(wire["response"]["patchType"], "JSONPatch");
        assert!(wire["response"]["patch"].is_string(), "patch is base64 text on the wire: {wire}");
        let response = response_of(&reply.body);
        assert_eq!(response.uid, request["request"]["uid"].as_str().unwrap());
        let object = patched_object(&request, &response);
        assert_eq!(object["spec"]["replicas"], 1);
        assert_eq!(object["spec"]["port"], 5432);
        assert_eq!(object["spec"]["storage"], request["request"]["object"]["spec"]["storage"]);

        // Refused, with every cause.
        let reply = conn.post_json("/validate", &fixture("create-invalid")).await;
        assert_eq!(reply.status, StatusCode::OK);
        let response = response_of(&reply.body);
        assert!(!response.allowed);
        assert_eq!(response.result.code, 422);
        assert_eq!(response.result.reason, "Invalid");
        let fields: Vec<String> = causes(&response).into_iter().map(|c| c.0).collect();
        for field in ["metadata.name", "spec.replicas", "spec.resources.requests[memory]", "spec.storage.size"] {
            assert!(fields.contains(&field.to_owned()), "{field} missing from {fields:?}");
        }

        // Warnings ride along on an admitted request.
        let response = response_of(&conn.post_json("/validate", &fixture("create-warnings")).await.body);
        assert!(response.allowed);
        assert_eq!(response.warnings.map(|w| w.len()), Some(2));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn dry_run_answers_are_byte_for_byte_identical() {
    let server = TestServer::start().await;
    let mut conn = server.connect(Alpn::H2).await;
    for (name, path) in [
        ("create-defaulted", "/mutate"),
        ("create-invalid", "/validate"),
        ("create-warnings", "/validate"),
        ("update-shrink", "/validate"),
        ("delete-protected", "/validate"),
    ] {
        let mut flipped = fixture_json(name);
        let dry_run = flipped["request"]["dryRun"].as_bool().unwrap_or(false);
        flipped["request"]["dryRun"] = json!(!dry_run);
        let original = conn.post_json(path, &fixture(name)).await;
        let other = conn.post_json(path, &serde_json::to_vec(&flipped).unwrap()).await;
        assert_eq!(original.status, StatusCode::OK);
        assert_eq!(original.body, other.body, "{name}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn update_and_delete_rules() {
    let server = TestServer::start().await;
    let mut conn = server.connect(Alpn::Http1).await;
    let shrink = response_of(&conn.post_json("/validate", &fixture("update-shrink")).await.body);
    assert!(!shrink.allowed);
    let fields: Vec<String> = causes(&shrink).into_iter().map(|c| c.0).collect();
    assert_eq!(fields, ["spec.storage.size", "spec.storage.storageClassName"]);

    let relabel = response_of(&conn.post_json("/validate", &fixture("update-metadata-only")).await.body);
    assert!(relabel.allowed, "a metadata-only update is admitted even over an invalid stored spec");

    let finalizer = response_of(&conn.post_json("/validate", &fixture("update-finalizer-removal")).await.body);
    assert!(finalizer.allowed, "an object being deleted is always admitted");

    let delete = response_of(&conn.post_json("/validate", &fixture("delete-protected")).await.body);
    assert!(!delete.allowed);
    assert_eq!(causes(&delete)[0].0, "spec.deletionProtection");
    server.shutdown().await;
}

/// One bad request: name, method, path, content type, body, expected status, text the answer contains.
struct BadInput(&'static str, Method, &'static str, Option<&'static str>, Vec<u8>, StatusCode, &'static str);

#[tokio::test]
async fn bad_input_gets_a_4xx_and_the_server_stays_healthy() {
    let server = TestServer::start().await;
    let valid = fixture("create-admitted");
    let truncated = valid[..valid.len() / 2].to_vec();
    let wrong_version = serde_json::to_vec(&{
        let mut review = fixture_json("create-admitted");
        review["apiVersion"] = json!("admission.k8s.io/v1beta1");
        review
    })
    .unwrap();
    let oversized = vec![b' '; stead_webhook::server::MAX_BODY_BYTES + 1];
    let cases = [
        BadInput(
            "malformed",
            Method::POST,
            "/validate",
            Some("application/json"),
            b"{\"apiVersion\":".to_vec(),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        BadInput(
            "truncated",
            Method::POST,
            "/mutate",
            Some("application/json"),
            truncated,
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        BadInput(
            "empty",
            Method::POST,
            "/validate",
            Some("application/json"),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        BadInput(
            "not a review",
            Method::POST,
            "/validate",
            Some("application/json"),
            b"[1,2,3]".to_vec(),
            StatusCode::BAD_REQUEST,
            "not an admission.k8s.io/v1 AdmissionReview",
        ),
        BadInput(
            "v1beta1",
            Method::POST,
            "/validate",
            Some("application/json"),
            wrong_version,
            StatusCode::BAD_REQUEST,
            "admissionReviewVersions",
        ),
        BadInput(
            "text/plain",
            Method::POST,
            "/validate",
            Some("text/plain"),
            valid.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        BadInput(
            "yaml",
            Method::POST,
            "/mutate",
            Some("application/yaml"),
            valid.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        BadInput(
            "no content type",
            Method::POST,
            "/validate",
            None,
            valid.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "(none)",
        ),
        BadInput(
            "oversized",
            Method::POST,
            "/validate",
            Some("application/json"),
            oversized,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        BadInput(
            "unknown route",
            Method::POST,
            "/convert",
            Some("application/json"),
            valid.clone(),
            StatusCode::NOT_FOUND,
            "POST /mutate",
        ),
        BadInput("wrong method", Method::GET, "/validate", None, Vec::new(), StatusCode::METHOD_NOT_ALLOWED, ""),
    ];
    for alpn in [Alpn::Http1, Alpn::H2] {
        for BadInput(case, method, path, content_type, body, status, says) in &cases {
            let mut conn = server.connect(alpn).await;
            let reply = conn.send(method.clone(), path, *content_type, body.clone()).await;
            assert_eq!(reply.status, *status, "{case} over {alpn:?}: {}", reply.text());
            assert!(reply.text().contains(says), "{case}: {:?} does not say {says:?}", reply.text());
            assert_healthy(&server).await;
        }
    }

    // Content-Type parameters are fine.
    let mut conn = server.connect(Alpn::Http1).await;
    let reply = conn.send(Method::POST, "/validate", Some("application/json; charset=utf-8"), valid.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);

    // An unknown kind is answered in the review, so kubectl shows why.
    let reply = conn.post_json("/validate", &fixture("unknown-kind")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let response = response_of(&reply.body);
    assert!(!response.allowed);
    assert_eq!((response.result.code, response.result.reason.as_str()), (400, "BadRequest"));
    assert!(response.result.message.contains("stead.dev/v1alpha1 DatabaseCluster, DatabaseBackup and App only"));
    assert_healthy(&server).await;

    let (_, metrics) = server.metrics_get("/metrics").await;
    assert!(metrics.contains(r#"stead_webhook_requests_total{route="validate",verdict="bad_request"}"#), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn chunked_oversized_and_stalled_bodies_are_cut_off() {
    let server = TestServer::start_without_certificate(|settings| {
        settings.max_body_bytes = 64 * 1024;
        settings.request_timeout = Duration::from_millis(300);
    })
    .await;
    server.issue_certificate();
    server.wait_ready().await;

    // No Content-Length: the cap applies while reading.
    let mut stream = raw_tls(server.tls, &server.ca.cert_pem()).await;
    let head = "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 16 * 1024];
    for _ in 0..5 {
        stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
        stream.write_all(&chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.flush().await.unwrap();
    assert_eq!(read_status(&mut stream).await, 413);

    // A body that stops half-way is answered, not waited on forever.
    let mut stream = raw_tls(server.tls, &server.ca.cert_pem()).await;
    let body = fixture("create-admitted");
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(read_status(&mut stream).await, 408);

    assert_healthy(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_while_old_ones_keep_working() {
    let server = TestServer::start().await;
    let mut old_h1 = server.connect(Alpn::Http1).await;
    let mut old_h2 = server.connect(Alpn::H2).await;
    let first = old_h1.peer_certificate.clone();

    let new_pem = server.issue_certificate();
    let new_der = stead_certs::pem::parse_certificates(new_pem.as_bytes(), "test").unwrap()[0].as_ref().to_vec();
    assert_ne!(new_der, first);

    let mut fresh: Option<Conn> = None;
    for _ in 0..500 {
        let conn = server.connect(Alpn::Http1).await;
        if conn.peer_certificate == new_der {
            fresh = Some(conn);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut fresh = fresh.expect("a new connection sees the rotated certificate");
    assert_eq!(
        response_of(&fresh.post_json("/validate", &fixture("create-admitted")).await.body).uid,
        "1c7b9d2f-52e6-4b68-8d20-6b1d904f3e22"
    );

    // The connections opened before the rotation were not dropped.
    for conn in [&mut old_h1, &mut old_h2] {
        assert_eq!(conn.peer_certificate, first);
        let reply = conn.post_json("/mutate", &fixture("create-defaulted")).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let (_, metrics) = server.metrics_get("/metrics").await;
    assert!(metrics.contains("stead_webhook_certificate_reloads_total 1"), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn waits_for_a_certificate_serving_health_meanwhile() {
    let server = TestServer::start_without_certificate(|_| {}).await;
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        // The metrics listener is bound before serve starts, so only the router can be missing.
        status = server.metrics_get("/healthz").await.0;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, StatusCode::OK);
    let (ready, why) = server.metrics_get("/readyz").await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    assert!(why.contains("no serving certificate"), "{why}");

    server.issue_certificate();
    server.wait_ready().await;
    assert_healthy(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_a_request_in_flight() {
    let server = TestServer::start().await;
    let mut stream = raw_tls(server.tls, &server.ca.cert_pem()).await;
    let body = fixture("create-invalid");
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..100]).await.unwrap();
    stream.flush().await.unwrap();
    // Let the server start on the request before asking it to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let address = server.tls;
    let (task, _dir) = server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&body[100..]).await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(read_status(&mut stream).await, 200, "the in-flight request is answered");
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(address).await.is_err(), "no new connections after shutdown");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_verdict() {
    let server = TestServer::start().await;
    let mut conn = server.connect(Alpn::H2).await;
    conn.post_json("/mutate", &fixture("create-defaulted")).await;
    conn.post_json("/mutate", &fixture("create-admitted")).await;
    conn.post_json("/validate", &fixture("create-invalid")).await;
    conn.post_json("/validate", &fixture("create-admitted")).await;
    conn.post_json("/validate", &fixture("create-admitted")).await;
    let (status, text) = server.metrics_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        r#"stead_webhook_requests_total{route="mutate",verdict="patched"} 1"#,
        r#"stead_webhook_requests_total{route="mutate",verdict="allowed"} 1"#,
        r#"stead_webhook_requests_total{route="validate",verdict="denied"} 1"#,
        r#"stead_webhook_requests_total{route="validate",verdict="allowed"} 2"#,
        r#"stead_webhook_request_duration_seconds_count{route="validate"} 3"#,
        "stead_webhook_certificate_reloads_total 0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert_eq!(server.metrics_get("/nope").await.0, StatusCode::NOT_FOUND);
    server.shutdown().await;
}
