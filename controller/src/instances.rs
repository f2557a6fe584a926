//! The controller's client of the instance managers' HTTPS API.
//!
//! Each call dials the pod's IP on [`INSTANCE_API_PORT`], verifies the
//! serving certificate against the controller's instance CA under the
//! cluster's name (see [`crate::keys`]), presents the cluster's bearer token
//! and is bounded in time. Calls are rare (one status per pod per poll, and
//! an operation now and then), so each uses a fresh connection: nothing is
//! pooled that a pod restart could leave stale.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stead_crds::instance_api::{
    ApiError, BackupStart, BackupStarted, BackupStop, BackupStopped, Bootstrap, Demote, InstanceStatus,
};
use stead_crds::names::INSTANCE_API_PORT;
use tokio_rustls::TlsConnector;

/// Longest a status answer may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an operation may take: bootstraps, promotions and demotions
/// answer when they are done, and a clone of a large database takes hours
/// (stead-instance's own pg_basebackup bound is 6 hours).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(6 * 3600 + 600);
/// The body of an operation that takes no arguments.
#[derive(Serialize)]
struct Empty {}
const EMPTY: Empty = Empty {};

/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 256 << 10;

/// Where one instance manager is and how to prove who we are to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pod, for messages.
    pub pod: String,
    pub ip: String,
    /// The name its certificate is verified under.
    pub server_name: String,
    pub token: String,
}

/// Why a call failed, in words for a condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{method} https://{ip}:{port}{path} of pod {pod}: {why}", port = INSTANCE_API_PORT)]
    Unreachable { pod: String, ip: String, method: &'static str, path: &'static str, why: String },
    #[error("{method} {path} of pod {pod} answered {status}: {message}")]
    Refused { pod: String, method: &'static str, path: &'static str, status: u16, message: String },
}

pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, CallError>> + Send + 'a>>;

/// The instance managers' API; the reconciler's tests put canned answers behind it.
pub trait InstanceApi: Send + Sync {
    /// `GET /status`.
    fn status<'a>(&'a self, target: &'a Target) -> Answer<'a, InstanceStatus>;
    /// `POST /bootstrap`.
    fn bootstrap<'a>(&'a self, target: &'a Target, request: &'a Bootstrap) -> Answer<'a, InstanceStatus>;
    /// `POST /demote`.
    fn demote<'a>(&'a self, target: &'a Target, request: &'a Demote) -> Answer<'a, InstanceStatus>;
    /// `POST /promote`.
    fn promote<'a>(&'a self, target: &'a Target) -> Answer<'a, InstanceStatus>;
    /// `POST /backup/start`: make the data directory consistent for a snapshot.
    fn backup_start<'a>(&'a self, target: &'a Target, request: &'a BackupStart) -> Answer<'a, BackupStarted>;
    /// `POST /backup/stop`: the snapshot is cut; leave backup mode.
    fn backup_stop<'a>(&'a self, target: &'a Target, request: &'a BackupStop) -> Answer<'a, BackupStopped>;
}

/// The real client over HTTPS.
pub struct HttpsInstances {
    tls: TlsConnector,
    timeout: Duration,
    operation_timeout: Duration,
}

impl std::fmt::Debug for HttpsInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsInstances").field("timeout", &self.timeout).finish()
    }
}

impl HttpsInstances {
    /// A client trusting only `ca_pem`, the controller's instance CA.
    pub fn new(ca_pem: &str) -> Result<Self, stead_certs::CertError> {
        let config: ClientConfig = stead_certs::client_config(ca_pem, &[stead_certs::ALPN_HTTP1])?;
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            timeout: CALL_TIMEOUT,
            operation_timeout: OPERATION_TIMEOUT,
        })
    }

    async fn call<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        target: &Target,
        method: &'static str,
        path: &'static str,
        body: Option<&B>,
    ) -> Result<T, CallError> {
        let unreachable =
            |why: String| CallError::Unreachable { pod: target.pod.clone(), ip: target.ip.clone(), method, path, why };
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((target.ip.as_str(), INSTANCE_API_PORT))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let name = ServerName::try_from(target.server_name.clone())
                .map_err(|e| unreachable(format!("{} is not a server name: {e}", target.server_name)))?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| unreachable(format!("TLS: {e}")))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(connection);
            let bytes = match body {
                Some(body) => Bytes::from(serde_json::to_vec(body).map_err(|e| unreachable(e.to_string()))?),
                None => Bytes::new(),
            };
            let request = Request::builder()
                .method(if method == "GET" { Method::GET } else { Method::POST })
                .uri(path)
                .header(header::HOST, target.server_name.as_str())
                .header(header::AUTHORIZATION, format!("Bearer {}", target.token))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(bytes))
                .map_err(|e| unreachable(e.to_string()))?;
            let response = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, CallError>((status, body))
        };
        let timeout = if method == "GET" { self.timeout } else { self.operation_timeout };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ApiError>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().chars().take(300).collect());
            return Err(CallError::Refused { pod: target.pod.clone(), method, path, status: status.as_u16(), message });
        }
        serde_json::from_slice(&body)
            .map_err(|e| unreachable(format!("the answer is not what stead-instance sends: {e}")))
    }
}

impl InstanceApi for HttpsInstances {
    fn status<'a>(&'a self, target: &'a Target) -> Answer<'a, InstanceStatus> {
        Box::pin(self.call::<(), _>(target, "GET", "/status", None))
    }

    fn bootstrap<'a>(&'a self, target: &'a Target, request: &'a Bootstrap) -> Answer<'a, InstanceStatus> {
        Box::pin(self.call(target, "POST", "/bootstrap", Some(request)))
    }

    fn demote<'a>(&'a self, target: &'a Target, request: &'a Demote) -> Answer<'a, InstanceStatus> {
        Box::pin(self.call(target, "POST", "/demote", Some(request)))
    }

    fn promote<'a>(&'a self, target: &'a Target) -> Answer<'a, InstanceStatus> {
        Box::pin(self.call(target, "POST", "/promote", Some(&EMPTY)))
    }

    fn backup_start<'a>(&'a self, target: &'a Target, request: &'a BackupStart) -> Answer<'a, BackupStarted> {
        Box::pin(self.call(target, "POST", "/backup/start", Some(request)))
    }

    fn backup_stop<'a>(&'a self, target: &'a Target, request: &'a BackupStop) -> Answer<'a, BackupStopped> {
        Box::pin(self.call(target, "POST", "/backup/stop", Some(request)))
    }
}
