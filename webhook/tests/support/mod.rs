//! Helpers shared by the integration tests: fixtures, answers, and an
//! in-process HTTPS server with a hyper client that trusts its CA.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use json_patch::Patch;
use rustls_pki_types::ServerName;
use serde_json::Value;
use stead_certs::{ALPN_H2, ALPN_HTTP1, CertificateAuthority};
use stead_webhook::server::{ServeError, Settings, serve};
use stead_webhook::wire::{AnswerResponse, AnswerReview};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// The raw bytes of `tests/fixtures/<name>.json`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture as JSON, to be edited by a test.
pub fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The `response` of an answered review, read as the API defines it (patch in base64).
pub fn response_of(body: &[u8]) -> AnswerResponse {
    let review: AnswerReview = serde_json::from_slice(body).unwrap();
    assert_eq!(review.api_version, "admission.k8s.io/v1");
    assert_eq!(review.kind, "AdmissionReview");
    review.response.expect("an answer carries a response")
}

/// The JSON patch of a response (empty when there is none).
pub fn patch_of(response: &AnswerResponse) -> Patch {
    match &response.patch {
        Some(bytes) => serde_json::from_slice(bytes).unwrap(),
        None => Patch(Vec::new()),
    }
}

/// The object of a review fixture with the response's patch applied.
pub fn patched_object(review: &Value, response: &AnswerResponse) -> Value {
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch_of(response)).unwrap();
    object
}

/// `(field, reason, message)` of every cause of a denial.
pub fn causes(response: &AnswerResponse) -> Vec<(String, String, String)> {
    response
        .result
        .details
        .as_ref()
        .map(|d| d.causes.iter().map(|c| (c.field.clone(), c.reason.clone(), c.message.clone())).collect())
        .unwrap_or_default()
}

/// Which protocol a client connection asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

/// A webhook server running in this test process on 127.0.0.1.
pub struct TestServer {
    pub tls: SocketAddr,
    pub metrics: SocketAddr,
    pub cert_dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// A server whose certificates are in place before it starts.
    pub async fn start() -> Self {
        Self::start_tuned(|_| {}).await
    }

    /// A ready server whose settings `tune` adjusts (a resolver, an App cache).
    pub async fn start_tuned(tune: impl FnOnce(&mut Settings)) -> Self {
        let server = Self::start_without_certificate(tune).await;
        server.issue_certificate();
        server.wait_ready().await;
        server
    }

    /// A server started on an empty certificate directory; `tune` adjusts the settings.
    pub async fn start_without_certificate(tune: impl FnOnce(&mut Settings)) -> Self {
        let cert_dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("stead test CA", 2).unwrap();
        let tls_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (tls, metrics) = (tls_listener.local_addr().unwrap(), metrics_listener.local_addr().unwrap());
        let mut settings = Settings::new(cert_dir.path());
        settings.cert_poll_interval = Duration::from_millis(20);
        settings.grace_period = Duration::from_secs(5);
        tune(&mut settings);
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(serve(tls_listener, metrics_listener, settings, shutdown));
        Self { tls, metrics, cert_dir, ca, stop, task }
    }

    /// Writes a fresh serving certificate for 127.0.0.1 / localhost; returns its PEM.
    pub fn issue_certificate(&self) -> String {
        let serving = self.ca.issue_serving(&["localhost".to_owned()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 1).unwrap();
        stead_certs::write_bundle(self.cert_dir.path(), &self.ca, &serving).unwrap();
        serving.cert_pem
    }

    /// Waits (bounded) until `/readyz` on the metrics port says ready.
    pub async fn wait_ready(&self) {
        for _ in 0..500 {
            if self.metrics_get("/readyz").await.0 == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server never became ready");
    }

    /// A new TLS connection offering only `alpn`.
    pub async fn connect(&self, alpn: Alpn) -> Conn {
        connect(self.tls, &self.ca.cert_pem(), alpn).await
    }

    /// GET on the plain-HTTP metrics port: status and body.
    pub async fn metrics_get(&self, path: &str) -> (StatusCode, String) {
        let Ok(stream) = tokio::net::TcpStream::connect(self.metrics).await else {
            return (StatusCode::SERVICE_UNAVAILABLE, String::new());
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let request = Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Asks for shutdown and waits (bounded) for `serve` to return.
    pub async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap().unwrap();
    }

    /// Asks for shutdown without waiting; returns the server task.
    pub fn begin_shutdown(self) -> (JoinHandle<Result<(), ServeError>>, tempfile::TempDir) {
        self.stop.send(true).unwrap();
        (self.task, self.cert_dir)
    }
}

/// One client connection, HTTP/1.1 or HTTP/2 over TLS.
pub struct Conn {
    sender: Sender,
    /// SHA-256-free identity of the certificate the server presented: its DER bytes.
    pub peer_certificate: Vec<u8>,
    pub negotiated: Alpn,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// An answer as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn connect(address: SocketAddr, ca_pem: &str, alpn: Alpn) -> Conn {
    let protocols: &[&[u8]] = match alpn {
        Alpn::Http1 => &[ALPN_HTTP1],
        Alpn::H2 => &[ALPN_H2],
    };
    let config = stead_certs::client_config(ca_pem, protocols).unwrap();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let (_, session) = tls.get_ref();
    let peer_certificate = session.peer_certificates().unwrap()[0].as_ref().to_vec();
    let negotiated = match session.alpn_protocol() {
        Some(p) if p == ALPN_H2 => Alpn::H2,
        Some(p) if p == ALPN_HTTP1 => Alpn::Http1,
        other => panic!("unexpected ALPN {other:?}"),
    };
    let io = TokioIo::new(tls);
    let sender = match negotiated {
        Alpn::Http1 => {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            Sender::H1(sender)
        }
        Alpn::H2 => {
            let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(connection);
            Sender::H2(sender)
        }
    };
    Conn { sender, peer_certificate, negotiated }
}

impl Conn {
    /// POSTs `body` as `application/json`.
    pub async fn post_json(&mut self, path: &str, body: &[u8]) -> Reply {
        self.send(Method::POST, path, Some("application/json"), body.to_vec()).await
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(Method::GET, path, None, Vec::new()).await
    }

    pub async fn send(&mut self, method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        // HTTP/2 needs an absolute URI (:scheme, :authority); HTTP/1.1 sends origin-form plus Host.
        let uri = match self.negotiated {
            Alpn::H2 => format!("https://localhost{path}"),
            Alpn::Http1 => path.to_owned(),
        };
        let mut request = Request::builder().method(method).uri(uri);
        if self.negotiated == Alpn::Http1 {
            request = request.header("host", "localhost");
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await.unwrap();
                sender.send_request(request).await.unwrap()
            }
            Sender::H2(sender) => {
                sender.ready().await.unwrap();
                sender.send_request(request).await.unwrap()
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    }
}

/// A bare HTTP/1.1-over-TLS stream, for requests hyper's client will not send
/// (chunked uploads, bodies that stall half-way).
pub async fn raw_tls(address: SocketAddr, ca_pem: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = stead_certs::client_config(ca_pem, &[ALPN_HTTP1]).unwrap();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

/// Reads (bounded in time) until the end of the response head; returns the status code.
pub async fn read_status(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await
    .expect("a response head within 10 s");
    let head = String::from_utf8_lossy(&head);
    head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"))
}
