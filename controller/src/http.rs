//! `/healthz`, `/readyz` (health port) and `/metrics` (metrics port).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::context::Context;
use crate::metrics::render;

/// Routes of the health port.
pub fn health_router(ctx: Arc<Context>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(ctx)
}

/// Routes of the metrics port.
pub fn metrics_router(ctx: Arc<Context>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(ctx)
}

/// Alive as long as the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once the caches are synced (for a leader and a standby alike).
async fn readyz(State(ctx): State<Arc<Context>>) -> Response {
    if ctx.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches are not synced yet\n").into_response()
    }
}

async fn metrics(State(ctx): State<Arc<Context>>) -> Response {
    match render(&ctx.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not encode metrics\n").into_response(),
    }
}

/// Binds `addr`, so that a taken port fails startup with a message naming it.
pub async fn bind(addr: SocketAddr, flag: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{flag} {addr}: cannot listen: {e}")))
}

/// Serves `router` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let response = router.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let (ctx, _server) = crate::fixtures::context();
        assert_eq!(get(health_router(ctx.clone()), "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(health_router(ctx.clone()), "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        ctx.health.set_ready(true);
        assert_eq!(get(health_router(ctx.clone()), "/readyz").await.0, StatusCode::OK);
        assert_eq!(get(health_router(ctx), "/metrics").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn metrics_are_served() {
        let (ctx, _server) = crate::fixtures::context();
        ctx.metrics.reconciles.inc();
        let (status, body) = get(metrics_router(ctx), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("stead_controller_reconciles_total 1"), "{body}");
        assert!(body.contains("stead_controller_leader"), "{body}");
    }
}
