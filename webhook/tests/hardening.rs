//! Slow, silent and hostile clients: every connection is bounded in time,
//! concurrent reviews are bounded in number, and health keeps answering.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use stead_webhook::metrics::Metrics;
use stead_webhook::server::guard_panics;
use support::{Alpn, TestServer, fixture, raw_tls, read_status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the peer closes (or answers and closes); `None` if it kept the connection open past `patience`.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), patience: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0_u8; 512];
    tokio::time::timeout(patience, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| seen)
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed() {
    let server = TestServer::start_without_certificate(|s| s.handshake_timeout = Duration::from_millis(300)).await;
    server.issue_certificate();
    server.wait_ready().await;
    // TCP connects, but the ClientHello never comes.
    let mut silent = tokio::net::TcpStream::connect(server.tls).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await.is_some(), "the handshake was never cut off");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // The server still serves a well-behaved client.
    let mut conn = server.connect(Alpn::Http1).await;
    assert_eq!(conn.get("/healthz").await.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn stalled_headers_are_cut_off_on_the_admission_and_the_metrics_port() {
    let server = TestServer::start_without_certificate(|s| s.header_read_timeout = Duration::from_millis(300)).await;
    server.issue_certificate();
    server.wait_ready().await;

    // HTTPS: the first request has started (so first_request_timeout is not what fires) ...
    let mut tls = raw_tls(server.tls, &server.ca.cert_pem()).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_status(&mut tls).await, 200);
    // ... and the second one's headers stall half-way.
    tls.write_all(b"POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: app").await.unwrap();
    assert!(closed_within(&mut tls, Duration::from_secs(5)).await.is_some(), "HTTPS kept a slowloris connection");

    // Plain HTTP metrics port: the same slowloris.
    let mut plain = tokio::net::TcpStream::connect(server.metrics).await.unwrap();
    plain.write_all(b"GET /metrics HTTP/1.1\r\nhost: local").await.unwrap();
    assert!(closed_within(&mut plain, Duration::from_secs(5)).await.is_some(), "metrics kept a slowloris connection");

    // A kept-alive connection that goes quiet is closed as well.
    let mut idle = tokio::net::TcpStream::connect(server.metrics).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_status(&mut idle).await, 200);
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await.is_some(), "an idle connection was kept forever");
    server.shutdown().await;
}

#[tokio::test]
async fn saturated_admission_answers_503_and_health_keeps_answering() {
    let server = TestServer::start_without_certificate(|s| {
        s.max_concurrent_reviews = 2;
        s.request_timeout = Duration::from_millis(1500);
        s.slot_timeout = Duration::from_millis(300);
    })
    .await;
    server.issue_certificate();
    server.wait_ready().await;

    // Two reviews hold both slots: their bodies stall half-way.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = raw_tls(server.tls, &server.ca.cert_pem()).await;
        stream
            .write_all(b"POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"apiVersion\"")
            .await
            .unwrap();
        holders.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Health and readiness do not wait for a slot.
    let mut conn = server.connect(Alpn::H2).await;
    let started = Instant::now();
    assert_eq!(conn.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(server.metrics_get("/readyz").await.0, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(500), "health waited behind admission: {:?}", started.elapsed());

    // A third review waits for a slot, then is turned away with 503 and Retry-After.
    let reply = conn.post_json("/validate", &fixture("create-admitted")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert_eq!(reply.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert!(reply.text().contains("judging 2 reviews already"), "{}", reply.text());

    // The stalled holders are cut off by the body timeout, and the slots come back.
    for mut stream in holders {
        assert_eq!(read_status(&mut stream).await, 408);
    }
    let reply = conn.post_json("/validate", &fixture("create-admitted")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let (_, metrics) = server.metrics_get("/metrics").await;
    assert!(metrics.contains("stead_webhook_reviews_refused_busy_total 1"), "{metrics}");
    server.shutdown().await;
}

async fn boom() -> &'static str {
    panic!("a bug in a handler")
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_and_a_counted_metric() {
    let metrics = Arc::new(Metrics::new());
    let router = Router::new()
        .route("/boom", get(boom))
        .route("/fine", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&metrics), guard_panics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    // One keep-alive connection: the panic answers 500 and the connection survives it.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /boom HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_status(&mut stream).await, 500);
    let mut rest = vec![0_u8; 512];
    let n = stream.read(&mut rest).await.unwrap();
    let body = String::from_utf8_lossy(&rest[..n]);
    assert!(body.contains("failed while answering /boom"), "{body}");
    stream.write_all(b"GET /fine HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_status(&mut stream).await, 200);
    assert!(metrics.encode().contains("stead_webhook_handler_panics_total 1"), "{}", metrics.encode());
}
