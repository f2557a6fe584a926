//! The HTTPS API the controller (and the kubelet's probes) talk to.
//!
//! | Route | Auth | Body | Answer |
//! |---|---|---|---|
//! | `GET /healthz` | none | | 200 `ok`; 503 once postgres crashed and is not restarted any more |
//! | `GET /readyz` | none | | 200 `ok` when postgres accepts connections (and a replica streams); else 503 with the reason |
//! | `GET /status` | bearer | | 200 [`Status`] |
//! | `POST /bootstrap` | bearer | [`Bootstrap`] | 200 [`Status`] once postgres accepts connections |
//! | `POST /promote` | bearer | none | 200 [`Status`] (already primary: the same, nothing done) |
//! | `POST /demote` | bearer | [`Demote`] (may be empty) | 200 [`Status`] once postgres accepts connections as a replica |
//! | `POST /backup/start` | bearer | [`BackupStart`] | 200 [`BackupStarted`] once PGDATA may be snapshotted |
//! | `POST /backup/stop` | bearer | [`BackupStop`] | 200 [`BackupStopped`]; 404 for a label that does not run |
//!
//! Bodies (camelCase JSON; unknown fields are refused):
//!
//! ```text
//! POST /bootstrap  {"mode":"initdb"}
//!                  {"mode":"clone","primaryHost":"orders-rw","primaryPort":5432}   host/port optional:
//!                                                      STEAD_PRIMARY_HOST / STEAD_PG_PORT
//!                  {"mode":"restore"}       only on data restored from another pod's backup
//! POST /demote     {"primaryHost":"orders-1.orders-headless","primaryPort":5432}    same defaults
//! POST /backup/start {"mode":"cold","label":"orders-202501010200"}     or "hot"
//!                 -> {"mode":"cold","label":"orders-202501010200","beginLsn":"0/6000110"}
//! POST /backup/stop  {"label":"orders-202501010200"}
//!                 -> {"label":"orders-202501010200","endLsn":"0/6000110"}       hot: also "backupLabel":"START WAL…"
//! GET  /status  -> {"podName":"orders-1","role":"replica","postmaster":"running","ready":true,
//!                   "timeline":2,"systemIdentifier":"7393517237520473112",
//!                   "currentLsn":"0/3000060","receivedLsn":"0/3000060","replayedLsn":"0/3000060",
//!                   "lagBytes":0,"streaming":true,"primaryHost":"orders-rw","restarts":0,
//!                   "pendingRestart":false}
//! ```
//!
//! `role` is `primary` | `replica` | `bootstrapping` | `stopped`; `postmaster`
//! is `running` | `starting` | `stopped` | `crashed`; what each field means
//! exactly is in [`crate::status`].
//!
//! `/bootstrap` never touches existing data: with a database in PGDATA it
//! answers 200 and the status when that database matches the mode (a
//! primary's for `initdb`, a replica's — `standby.signal` — for `clone`), and
//! 409 otherwise; PGDATA with files but no `PG_VERSION` is 409 too. A failed
//! bootstrap leaves PGDATA as it was (empty) and can be retried.
//!
//! Backups (details in `instance/backup.rs`): `cold` only on a streaming
//! replica (else 409): CHECKPOINT, fast shutdown, postgres stays stopped
//! (`status.backup` set, `/readyz` 503, role still `replica`) until the stop
//! starts it again; `beginLsn` = `endLsn` = pg_controldata's `Minimum
//! recovery ending location` (or `Latest checkpoint location`, when later).
//! `hot`: `pg_backup_start(label, true)` on a session held until the stop's
//! `pg_backup_stop(false)`; `beginLsn`/`endLsn`/`backupLabel` are theirs.
//! Both write `PGDATA/stead-backup.json` (0600) before answering and remove
//! it at the stop. One backup at a time: another start is 409 naming the
//! running one; the same label and mode again answers as the first start. A
//! stop of the backup that just ended answers 200 again (409 if it was
//! aborted); any other label 404. Unstopped, a backup ends after
//! `STEAD_BACKUP_TIMEOUT_SECONDS` (3600). Promote/demote abort a hot backup
//! and are refused (409) during a cold one.
//!
//! Restore: data whose marker names another pod is restored data: not
//! started, `role` `bootstrapping` with `status.restorable` (the marker),
//! until `POST /bootstrap {"mode":"restore"}` starts it as the primary with
//! this pod's settings and Secret passwords. initdb/clone there, and restore
//! anywhere else, are 409.
//!
//! `/demote` is idempotent: a replica already streaming from that primary
//! answers 200 without a restart. Otherwise postgres is stopped (fast),
//! `standby.signal` is written, pg_rewind runs against the new primary as the
//! superuser, and postgres starts as its replica. If pg_rewind fails,
//! postgres is left stopped (500) and never comes back as a primary.
//!
//! Every error is `{"message": "..."}` saying what failed and what to do:
//! 400 malformed request, 401 missing or wrong token (`Authorization: Bearer
//! <controller-token>`), 404/405 unknown route or method, 408 body too slow,
//! 409 the instance's state forbids it (nothing was changed; also "another
//! operation is in progress"), 413 body over [`MAX_BODY_BYTES`], 500 the
//! operation failed, 503 shutting down or not ready, 504 a bound was reached.
//!
//! Operations run one at a time, each in its own task: a client that
//! disconnects does not cancel a half-done clone or rewind; it polls
//! `GET /status` instead.
//!
//! [`Status`]: crate::status::Status
//! [`Bootstrap`]: crate::instance::Bootstrap
//! [`Demote`]: crate::instance::Demote

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use tower::limit::GlobalConcurrencyLimitLayer;
use tracing::{info, warn};

use crate::error::Error;
use crate::instance::{Bootstrap, Demote, Instance};
use crate::shutdown::Mode;
use crate::status::Derived;
use stead_crds::instance_api::{BackupStart, BackupStarted, BackupStop, BackupStopped};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Requests served at once; more wait.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;
/// Extra time an operation's answer may take beyond its own bounds.
const OPERATION_MARGIN: Duration = Duration::from_secs(60);

const ROUTES: &str = "GET /healthz, GET /readyz, GET /status, POST /bootstrap, POST /promote, POST /demote, \
                      POST /backup/start, POST /backup/stop";

/// An error answer: a status code and `{"message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = stead_crds::instance_api::ApiError { message: self.message };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = match &err {
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest(_) | Error::Conf(_) => StatusCode::BAD_REQUEST,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.to_string())
    }
}

/// The API's routes over `instance`.
pub fn router(instance: Arc<Instance>) -> Router {
    let authenticated = Router::new()
        .route("/status", get(status))
        .route("/bootstrap", post(bootstrap))
        .route("/promote", post(promote))
        .route("/demote", post(demote))
        .route("/backup/start", post(backup_start))
        .route("/backup/stop", post(backup_stop))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&instance), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(authenticated)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
        .with_state(instance)
}

async fn healthz(State(instance): State<Arc<Instance>>) -> Response {
    match instance.liveness() {
        Ok(()) => "ok\n".into_response(),
        Err(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn readyz(State(instance): State<Arc<Instance>>) -> Response {
    match quick(&instance, instance.status()).await {
        Ok(Derived { not_ready: None, .. }) => "ok\n".into_response(),
        Ok(Derived { not_ready: Some(reason), .. }) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
        }
        Err(err) => ApiError { status: StatusCode::SERVICE_UNAVAILABLE, ..err }.into_response(),
    }
}

async fn status(State(instance): State<Arc<Instance>>) -> Result<Response, ApiError> {
    let derived = quick(&instance, instance.status()).await?;
    Ok(axum::Json(derived.status).into_response())
}

async fn bootstrap(State(instance): State<Arc<Instance>>, request: Request) -> Result<Response, ApiError> {
    let body: Bootstrap = read_json(&instance, request, "/bootstrap").await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "/bootstrap needs a JSON body: {\"mode\":\"initdb\"}, {\"mode\":\"clone\"} or {\"mode\":\"restore\"}",
        )
    })?;
    let timeouts = instance.settings().timeouts;
    let bound = timeouts.basebackup.max(timeouts.initdb) + timeouts.ready + OPERATION_MARGIN;
    info!(mode = ?body, "POST /bootstrap");
    operation(&instance, bound, move |instance| async move { instance.bootstrap(body).await.map(|d| d.status) }).await
}

async fn promote(State(instance): State<Arc<Instance>>) -> Result<Response, ApiError> {
    let timeouts = instance.settings().timeouts;
    let bound = timeouts.promote + timeouts.checkpoint + OPERATION_MARGIN;
    info!("POST /promote");
    operation(&instance, bound, |instance| async move { instance.promote().await.map(|d| d.status) }).await
}

async fn demote(State(instance): State<Arc<Instance>>, request: Request) -> Result<Response, ApiError> {
    let body: Demote = read_json(&instance, request, "/demote").await?.unwrap_or_default();
    let settings = instance.settings();
    let bound =
        settings.shutdown.bound(Mode::Fast) + settings.timeouts.rewind + settings.timeouts.ready + OPERATION_MARGIN;
    info!(request = ?body, "POST /demote");
    operation(&instance, bound, move |instance| async move { instance.demote(body).await.map(|d| d.status) }).await
}

async fn backup_start(State(instance): State<Arc<Instance>>, request: Request) -> Result<Response, ApiError> {
    let body: BackupStart = read_json(&instance, request, "/backup/start").await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "/backup/start needs a JSON body: {\"mode\":\"cold\",\"label\":\"orders-202501010200\"} (mode cold or hot)",
        )
    })?;
    let settings = instance.settings();
    let bound = settings.timeouts.checkpoint + settings.shutdown.bound(Mode::Fast) + OPERATION_MARGIN;
    info!(mode = %body.mode, label = %body.label, "POST /backup/start");
    operation(&instance, bound, move |instance| async move {
        let started: Result<BackupStarted, Error> = instance.backup_start(body).await;
        started
    })
    .await
}

async fn backup_stop(State(instance): State<Arc<Instance>>, request: Request) -> Result<Response, ApiError> {
    let body: BackupStop = read_json(&instance, request, "/backup/stop").await?.ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "/backup/stop needs a JSON body: {\"label\":\"orders-202501010200\"}")
    })?;
    let timeouts = instance.settings().timeouts;
    let bound = timeouts.checkpoint + timeouts.ready + OPERATION_MARGIN;
    info!(label = %body.label, "POST /backup/stop");
    operation(&instance, bound, move |instance| async move {
        let stopped: Result<BackupStopped, Error> = instance.backup_stop(body).await;
        stopped
    })
    .await
}

/// Runs an operation in its own task (so a disconnect does not cancel it)
/// and answers with its result.
async fn operation<F, Fut, T>(instance: &Arc<Instance>, bound: Duration, run: F) -> Result<Response, ApiError>
where
    F: FnOnce(Arc<Instance>) -> Fut,
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
    T: serde::Serialize + Send + 'static,
{
    let task = tokio::spawn(run(Arc::clone(instance)));
    match tokio::time::timeout(bound, task).await {
        Ok(Ok(Ok(answer))) => Ok(axum::Json(answer).into_response()),
        Ok(Ok(Err(err))) => {
            warn!(error = %err, "operation failed");
            Err(err.into())
        }
        Ok(Err(join)) => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the operation stopped unexpectedly: {join}")))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the operation is still running after {}s; follow it with GET /status", bound.as_secs()),
        )),
    }
}

/// Bounds a quick request by the request timeout.
async fn quick<T>(instance: &Instance, work: impl Future<Output = T>) -> Result<T, ApiError> {
    let limit = instance.settings().timeouts.request;
    tokio::time::timeout(limit, work).await.map_err(|_| {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the status could not be computed within {}s", limit.as_secs()),
        )
    })
}

/// Reads at most [`MAX_BODY_BYTES`] within the request timeout and parses
/// it; `None` for an empty body.
async fn read_json<T: DeserializeOwned>(
    instance: &Instance,
    request: Request,
    route: &str,
) -> Result<Option<T>, ApiError> {
    let limit = instance.settings().timeouts.request;
    let collected = tokio::time::timeout(limit, Limited::new(request.into_body(), MAX_BODY_BYTES).collect()).await;
    let bytes: Bytes = match collected {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the {route} body did not arrive within {}s", limit.as_secs()),
            ));
        }
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the {route} body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        Ok(Err(err)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the {route} body: {err}")));
        }
        Ok(Ok(body)) => body.to_bytes(),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid {route} body: {err}")))
}

async fn authenticate(State(instance): State<Arc<Instance>>, request: Request, next: Next) -> Response {
    let expected = match instance.settings().secrets().controller_token() {
        Ok(token) => token,
        Err(err) => {
            warn!(error = %err, "refusing an authenticated request: no controller token");
            return ApiError::new(StatusCode::UNAUTHORIZED, format!("no request is accepted: {err}")).into_response();
        }
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing 'Authorization: Bearer <token>' header; the token is the controller-token key of the cluster's credentials Secret",
        )
        .into_response(),
        Some(given) if tokens_match(given.as_bytes(), expected.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the bearer token does not match the controller-token key of the cluster's credentials Secret",
        )
        .into_response(),
    }
}

/// Compares in time independent of where the first difference is.
pub fn tokens_match(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() || expected.is_empty() {
        return false;
    }
    std::hint::black_box(given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b))) == 0
}

async fn not_found(request: Request<Body>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}; served: {ROUTES}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request<Body>) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}; served: {ROUTES}", request.method(), request.uri().path()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn token_comparison() {
        assert!(tokens_match(b"abc", b"abc"));
        assert!(!tokens_match(b"abd", b"abc"));
        assert!(!tokens_match(b"ab", b"abc"));
        assert!(!tokens_match(b"", b""));
    }

    #[test]
    fn bootstrap_bodies() {
        let parse = |json: &str| serde_json::from_str::<Bootstrap>(json);
        assert_eq!(parse(r#"{"mode":"initdb"}"#).unwrap(), Bootstrap::Initdb);
        assert_eq!(
            parse(r#"{"mode":"clone","primaryHost":"orders-rw","primaryPort":5433}"#).unwrap(),
            Bootstrap::Clone { primary_host: Some("orders-rw".into()), primary_port: Some(5433) }
        );
        assert_eq!(parse(r#"{"mode":"clone"}"#).unwrap(), Bootstrap::Clone { primary_host: None, primary_port: None });
        assert_eq!(parse(r#"{"mode":"restore"}"#).unwrap(), Bootstrap::Restore);
        assert!(parse(r#"{"mode":"resurrect"}"#).unwrap_err().to_string().contains("unknown variant"));
        assert!(parse(r#"{"mode":"clone","host":"x"}"#).is_err());
        assert!(parse(r#"{}"#).is_err());
    }

    #[test]
    fn demote_bodies() {
        let parse = |json: &str| serde_json::from_str::<Demote>(json);
        assert_eq!(
            parse(r#"{"primaryHost":"orders-1","primaryPort":5432}"#).unwrap(),
            Demote { primary_host: Some("orders-1".into()), primary_port: Some(5432) }
        );
        assert_eq!(parse("{}").unwrap(), Demote::default());
        assert!(parse(r#"{"primaryPort":70000}"#).is_err());
        assert!(parse(r#"{"primary":"x"}"#).is_err());
    }

    #[test]
    fn errors_map_to_status_codes() {
        let rows = [
            (Error::Conflict("x".into()), StatusCode::CONFLICT),
            (Error::BadRequest("x".into()), StatusCode::BAD_REQUEST),
            (Error::NotFound("x".into()), StatusCode::NOT_FOUND),
            (Error::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
            (Error::Timeout { what: "x", after: Duration::from_secs(1) }, StatusCode::GATEWAY_TIMEOUT),
            (Error::Postmaster("x".into()), StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (err, status) in rows {
            assert_eq!(ApiError::from(err).status, status);
        }
    }
}
