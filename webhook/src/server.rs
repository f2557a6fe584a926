//! The HTTPS admission server and the plain-HTTP metrics server.
//!
//! The admission decision itself is [`crate::review::review`]; this module
//! only moves bytes: it checks content type and size, bounds the time spent
//! reading a body, answers, counts and logs. TLS comes from stead-certs'
//! [`ReloadingCertResolver`], so a rotated certificate is picked up by new
//! handshakes while open connections keep going.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::Handle;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures::FutureExt as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::TokioExecutor;
use stead_certs::{DEFAULT_POLL_INTERVAL, ReloadingCertResolver};
use stead_crds::lookup::{Found, Query};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, error, info, warn};

use crate::app_cache::AppCache;
use crate::lookup::{NO_API_ACCESS, Resolver};
use crate::metrics::{COLLISION_CHECKED, COLLISION_SKIPPED, Metrics};
use crate::review::{Answer, Outcome, Route, answer, parse};

/// Largest body accepted: the API server caps requests at 3 MiB and a review
/// carries the old and the new object, plus JSON framing.
pub const MAX_BODY_BYTES: usize = 6 << 20;
/// Longest time spent reading one admission request; well inside the
/// `timeoutSeconds: 5` of stead's webhook configurations (10 is the default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long in-flight requests may take to finish after SIGTERM.
pub const GRACE_PERIOD: Duration = Duration::from_secs(20);
/// Time a new connection gets to send its first request (after the TLS handshake).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time an HTTP/1.1 client gets to send a request's headers, and so also
/// the longest a kept-alive connection may sit idle (hyper starts the same
/// timer while it waits for the next request). The API server reconnects.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of HTTP/2 keep-alive pings, and how long an answer may take
/// before the connection is closed as dead.
pub const H2_KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(20), Duration::from_secs(10));
/// Streams one HTTP/2 connection may have open at once (hyper's default is 200).
pub const H2_MAX_STREAMS: u32 = 32;
/// Admission reviews read and judged at once, over all connections. Each
/// holds a body of at most [`MAX_BODY_BYTES`], so bodies in memory are
/// bounded by 8 × 6 MiB = 48 MiB; a review beyond them waits for a slot,
/// for at most [`SLOT_TIMEOUT`], and is then answered 503. Health,
/// readiness and metrics do not take a slot, so they keep answering while
/// admission is saturated.
pub const MAX_CONCURRENT_REVIEWS: usize = 8;
/// Longest wait for a review slot; with the body timeout it stays inside `timeoutSeconds: 5`.
pub const SLOT_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything `serve` needs besides the sockets.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory with `tls.crt` and `tls.key`.
    pub cert_dir: PathBuf,
    /// How often the directory is polled for a (new) certificate.
    pub cert_poll_interval: Duration,
    pub request_timeout: Duration,
    pub grace_period: Duration,
    pub max_body_bytes: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub first_request_timeout: Duration,
    pub max_concurrent_reviews: usize,
    pub slot_timeout: Duration,
    /// Fetches the API reads of a review; `None` answers them "no API access".
    pub resolver: Option<SharedResolver>,
    /// Answers the App route rule; `None` skips it (admitted with a warning).
    pub apps: Option<AppCache>,
}

/// A resolver shared by every request.
#[derive(Clone)]
pub struct SharedResolver(pub Arc<dyn Resolver>);

impl std::fmt::Debug for SharedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedResolver")
    }
}

impl Settings {
    /// Production settings for certificates in `cert_dir`.
    pub fn new(cert_dir: impl Into<PathBuf>) -> Self {
        Self {
            cert_dir: cert_dir.into(),
            cert_poll_interval: DEFAULT_POLL_INTERVAL,
            request_timeout: REQUEST_TIMEOUT,
            grace_period: GRACE_PERIOD,
            max_body_bytes: MAX_BODY_BYTES,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            first_request_timeout: FIRST_REQUEST_TIMEOUT,
            max_concurrent_reviews: MAX_CONCURRENT_REVIEWS,
            slot_timeout: SLOT_TIMEOUT,
            resolver: None,
            apps: None,
        }
    }

    /// The same settings, with API reads made by `resolver`.
    pub fn with_resolver(self, resolver: Arc<dyn Resolver>) -> Self {
        Self { resolver: Some(SharedResolver(resolver)), ..self }
    }

    /// The same settings, with the App route rule answered from `apps`.
    pub fn with_app_cache(self, apps: AppCache) -> Self {
        Self { apps: Some(apps), ..self }
    }
}

/// Why the server stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot use the {what} listener: {source}")]
    Listener { what: &'static str, source: std::io::Error },
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] stead_certs::CertError),
    #[error("the {what} server failed: {source}")]
    Serve { what: &'static str, source: std::io::Error },
}

struct AppState {
    metrics: Arc<Metrics>,
    resolver: OnceLock<Arc<ReloadingCertResolver>>,
    request_timeout: Duration,
    max_body_bytes: usize,
    /// One permit per review being read or judged.
    reviews: Arc<Semaphore>,
    max_reviews: usize,
    slot_timeout: Duration,
    lookups: Option<SharedResolver>,
    apps: Option<AppCache>,
}

impl AppState {
    fn is_ready(&self) -> bool {
        self.resolver.get().is_some()
    }
}

/// Serves admission on `tls` and metrics on `metrics` until `shutdown` turns true.
///
/// Metrics, `/healthz` and `/readyz` are served at once; the HTTPS listener
/// starts answering when a certificate has been loaded from the directory,
/// which is polled until it appears (cert-manager may not have issued yet).
/// On shutdown new connections are refused and in-flight requests get
/// [`Settings::grace_period`] to finish.
pub async fn serve(
    tls: std::net::TcpListener,
    metrics: std::net::TcpListener,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let state = Arc::new(AppState {
        metrics: Arc::new(Metrics::new()),
        resolver: OnceLock::new(),
        request_timeout: settings.request_timeout,
        max_body_bytes: settings.max_body_bytes,
        reviews: Arc::new(Semaphore::new(settings.max_concurrent_reviews.max(1))),
        max_reviews: settings.max_concurrent_reviews.max(1),
        slot_timeout: settings.slot_timeout,
        lookups: settings.resolver.clone(),
        apps: settings.apps.clone(),
    });
    metrics.set_nonblocking(true).map_err(|source| ServeError::Listener { what: "metrics", source })?;
    let metrics_task = tokio::spawn(serve_metrics(metrics, settings.clone(), Arc::clone(&state), shutdown.clone()));

    let admission = serve_admission(tls, &settings, Arc::clone(&state), shutdown).await;
    if admission.is_err() {
        // Without admission the process has no purpose; do not linger serving metrics.
        metrics_task.abort();
        return admission;
    }
    match metrics_task.await {
        Ok(result) => result,
        Err(join) => Err(ServeError::Serve { what: "metrics", source: std::io::Error::other(join) }),
    }
}

async fn serve_admission(
    listener: std::net::TcpListener,
    settings: &Settings,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let Some(resolver) = wait_for_certificate(settings, &mut shutdown).await else {
        return Ok(());
    };
    let config = stead_certs::server_config(Arc::clone(&resolver))?;
    let _watcher = resolver.spawn_watcher(settings.cert_poll_interval, shutdown.clone());
    let _ = state.resolver.set(resolver);

    listener.set_nonblocking(true).map_err(|source| ServeError::Listener { what: "admission", source })?;
    let address = listener.local_addr().ok();
    let handle = draining_handle(settings.grace_period, shutdown, "admission");
    info!(address = ?address, "serving admission over HTTPS (h2, http/1.1)");
    let tls =
        RustlsAcceptor::new(RustlsConfig::from_config(Arc::new(config))).handshake_timeout(settings.handshake_timeout);
    let mut server = axum_server::from_tcp(listener)
        .map_err(|source| ServeError::Listener { what: "admission", source })?
        .acceptor(tls)
        .handle(handle)
        .first_request_timeout(settings.first_request_timeout);
    bound_connections(server.http_builder(), settings);
    server
        .serve(admission_router(state).into_make_service())
        .await
        .map_err(|source| ServeError::Serve { what: "admission", source })
}

/// A server handle that starts a graceful shutdown, draining for `grace`, once `shutdown` turns true.
fn draining_handle(grace: Duration, shutdown: watch::Receiver<bool>, what: &'static str) -> Handle<SocketAddr> {
    let handle: Handle<SocketAddr> = Handle::new();
    let drain = handle.clone();
    let mut stop = shutdown;
    tokio::spawn(async move {
        wait_for(&mut stop).await;
        info!(grace = ?grace, server = what, "shutting down: draining in-flight requests");
        drain.graceful_shutdown(Some(grace));
    });
    handle
}

/// The timers and limits every connection gets, on both listeners: a
/// slow or silent client is cut off instead of holding a connection.
fn bound_connections(builder: &mut hyper_util::server::conn::auto::Builder<TokioExecutor>, settings: &Settings) {
    builder.http1().header_read_timeout(settings.header_read_timeout).max_buf_size(MAX_HEADER_BUFFER);
    let (interval, timeout) = H2_KEEP_ALIVE;
    builder
        .http2()
        .keep_alive_interval(interval)
        .keep_alive_timeout(timeout)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BUFFER as u32);
}

/// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list) accepted.
const MAX_HEADER_BUFFER: usize = 64 << 10;

/// Polls the certificate directory until a usable pair is there; `None` on shutdown.
async fn wait_for_certificate(
    settings: &Settings,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Arc<ReloadingCertResolver>> {
    let mut reported = None;
    loop {
        match ReloadingCertResolver::load(&settings.cert_dir) {
            Ok(resolver) => return Some(resolver),
            Err(err) => {
                let message = err.to_string();
                if reported.as_ref() != Some(&message) {
                    warn!(
                        dir = %settings.cert_dir.display(),
                        error = %message,
                        "no usable serving certificate yet; admission waits for tls.crt and tls.key \
                         (metrics and health are served meanwhile)"
                    );
                    reported = Some(message);
                }
            }
        }
        tokio::select! {
            () = wait_for(shutdown) => return None,
            () = tokio::time::sleep(settings.cert_poll_interval) => {}
        }
    }
}

/// Resolves once the shutdown flag is true or its sender is gone.
async fn wait_for(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: nobody can ask for shutdown any more,
    // which only happens when the process is going away anyway.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn serve_metrics(
    listener: std::net::TcpListener,
    settings: Settings,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    info!(address = ?listener.local_addr().ok(), "serving /metrics, /healthz and /readyz over plain HTTP");
    let handle = draining_handle(settings.grace_period, shutdown, "metrics");
    let mut server = axum_server::from_tcp(listener)
        .map_err(|source| ServeError::Listener { what: "metrics", source })?
        .handle(handle)
        .first_request_timeout(settings.first_request_timeout);
    bound_connections(server.http_builder(), &settings);
    server
        .serve(metrics_router(state).into_make_service())
        .await
        .map_err(|source| ServeError::Serve { what: "metrics", source })
}

fn admission_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state.metrics), guard_panics))
        .with_state(state)
}

fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state.metrics), guard_panics))
        .with_state(state)
}

/// Turns a panicking handler into a 500 and a counted metric, so one bad
/// request neither resets its connection nor goes unnoticed. Both routers
/// are layered with it; it is public so that tests can put it in front of a
/// handler that panics on purpose.
pub async fn guard_panics(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request.uri().path().to_owned();
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            metrics.count_panic();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic".to_owned());
            error!(route = %route, panic = %what, "handler panicked; answered 500");
            Rejection(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stead-webhook failed while answering {route}; the failure is logged and counted"),
            )
            .into_response()
        }
    }
}

async fn mutate(State(state): State<Arc<AppState>>, request: Request) -> Response {
    admit(&state, Route::Mutate, request).await
}

async fn validate(State(state): State<Arc<AppState>>, request: Request) -> Response {
    admit(&state, Route::Validate, request).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        "ok\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no serving certificate loaded yet\n").into_response()
    }
}

async fn not_found(request: Request) -> Response {
    let message = format!(
        "no route for {} {}; served: POST /mutate, POST /validate, GET /healthz, GET /readyz, GET /metrics (metrics port)\n",
        request.method(),
        request.uri().path()
    );
    (StatusCode::NOT_FOUND, message).into_response()
}

async fn metrics_page(State(state): State<Arc<AppState>>) -> Response {
    if let Some(resolver) = state.resolver.get() {
        state.metrics.set_certificate_reloads(resolver.reload_count());
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

/// One admission request: wait for a slot, read, judge, answer, count, log.
async fn admit(state: &AppState, route: Route, request: Request) -> Response {
    let started = Instant::now();
    let Ok(Ok(_slot)) = tokio::time::timeout(state.slot_timeout, Arc::clone(&state.reviews).acquire_owned()).await
    else {
        state.metrics.count_saturated();
        state.metrics.observe(route, Outcome::BadRequest, started.elapsed());
        warn!(route = route.as_str(), "every review slot stayed busy; answered 503");
        let mut response = Rejection(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stead-webhook is judging {} reviews already and none finished within {:?}; retry",
                state.max_reviews, state.slot_timeout
            ),
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    let (outcome, response) = match read_review_body(state, request).await {
        Err(rejection) => {
            debug!(route = route.as_str(), status = rejection.0.as_u16(), reason = %rejection.1, "rejected request");
            (Outcome::BadRequest, rejection.into_response())
        }
        Ok(body) => match judge(state, route, &body).await {
            Err(bad) => {
                debug!(route = route.as_str(), reason = %bad, "rejected request: not an AdmissionReview");
                (Outcome::BadRequest, Rejection(StatusCode::BAD_REQUEST, bad.to_string()).into_response())
            }
            Ok(answer) => {
                log_answer(route, &answer, started);
                (answer.outcome, answer_response(&answer))
            }
        },
    };
    state.metrics.observe(route, outcome, started.elapsed());
    response
}

/// Parses a review, fetches the API reads its rules need (counted), reads
/// the App cache for the route rule (counted), and judges it.
async fn judge(state: &AppState, route: Route, body: &[u8]) -> Result<Answer, crate::review::BadReview> {
    let parsed = parse(body)?;
    let (claims, queries): (Vec<Query>, Vec<Query>) =
        parsed.queries(route).into_iter().partition(|q| matches!(q, Query::AppsClaiming { .. }));
    let mut answers = match (&state.lookups, queries.is_empty()) {
        (_, true) => stead_crds::lookup::Answers::skipped(),
        (None, false) => stead_crds::lookup::Answers::unknown(NO_API_ACCESS),
        (Some(resolver), false) => {
            let answers = resolver.0.resolve(&queries).await;
            for (kind, result) in answers.outcomes() {
                if result != "skipped" {
                    state.metrics.count_lookup(kind, result);
                }
            }
            answers
        }
    };
    for query in &claims {
        let Query::AppsClaiming { namespace, host } = query else { continue };
        let found = state.apps.as_ref().map_or(Found::Skipped, |apps| apps.claiming(namespace, host));
        let checked = matches!(found, Found::Yes(_) | Found::No);
        state.metrics.count_collision_check(if checked { COLLISION_CHECKED } else { COLLISION_SKIPPED });
        if !checked {
            debug!(%namespace, %host, synced = state.apps.is_some(), "App route check skipped; admitting with a warning");
        }
        answers = answers.with_apps_claiming(namespace, host, found);
    }
    answer(route, &parsed, &answers)
}

/// A 4xx answer with a plain-text explanation.
struct Rejection(StatusCode, String);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut message = self.1;
        message.push('\n');
        (self.0, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
    }
}

async fn read_review_body(state: &AppState, request: Request) -> Result<Bytes, Rejection> {
    check_content_type(request.headers())?;
    let limit = state.max_body_bytes;
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large(limit));
    }
    let body: Body = request.into_body();
    match tokio::time::timeout(state.request_timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Rejection(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {:?}", state.request_timeout),
        )),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Ok(Err(err)) => Err(Rejection(StatusCode::BAD_REQUEST, format!("could not read the request body: {err}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn too_large(limit: usize) -> Rejection {
    Rejection(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {limit} bytes; an AdmissionReview from the API server is never that large"),
    )
}

/// Requires `application/json`, parameters such as `charset` allowed.
fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let value = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("<not text>"));
    let is_json = value
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        return Ok(());
    }
    Err(Rejection(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "Content-Type {} is not supported; send an AdmissionReview as application/json",
            value.map_or_else(|| "(none)".to_owned(), |v| format!("{v:?}"))
        ),
    ))
}

fn answer_response(answer: &Answer) -> Response {
    match serde_json::to_vec(&answer.review) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(err) => {
            warn!(uid = %answer.subject.uid, error = %err, "could not encode the AdmissionReview answer");
            (StatusCode::INTERNAL_SERVER_ERROR, "could not encode the answer\n").into_response()
        }
    }
}

fn log_answer(route: Route, answer: &Answer, started: Instant) {
    let refused = matches!(answer.outcome, Outcome::Denied | Outcome::BadRequest);
    if !refused && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let s = &answer.subject;
    let kind = format!("{}/{}", crate::review::group_version(&s.kind), s.kind.kind);
    let object = if s.namespace.is_empty() { s.name.clone() } else { format!("{}/{}", s.namespace, s.name) };
    match answer.outcome {
        Outcome::Denied | Outcome::BadRequest => info!(
            route = route.as_str(),
            uid = %s.uid,
            kind = %kind,
            object = %object,
            operation = s.operation,
            dry_run = s.dry_run,
            verdict = answer.outcome.as_str(),
            reasons = ?answer.reasons,
            latency_us,
            "admission refused"
        ),
        Outcome::Allowed | Outcome::Patched => debug!(
            route = route.as_str(),
            uid = %s.uid,
            kind = %kind,
            object = %object,
            operation = s.operation,
            dry_run = s.dry_run,
            verdict = answer.outcome.as_str(),
            latency_us,
            "admission answered"
        ),
    }
}

/// Resolves on SIGTERM (the kubelet stopping the pod) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            warn!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => info!("SIGINT received"),
        () = terminate => info!("SIGTERM received"),
    }
}
