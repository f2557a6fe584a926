//! A small HTTPS client for the webhook's own routes.
//!
//! `stead-webhook check --server` (and so `make demo`) and the load
//! generator talk to a running server exactly as the API server does:
//! TLS verified against the CA that signed the serving certificate, one
//! keep-alive HTTP/1.1 connection, `application/json` AdmissionReviews.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Largest answer read from a server: an AdmissionReview answer carries a
/// patch and messages, never the object, so this is generous.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why a call to the webhook failed; each names the address or URL involved.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--server {url:?} is not an https://host:port URL: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot resolve {host}: {cause}")]
    Resolve { host: String, cause: String },
    #[error("cannot connect to {address}: {cause}")]
    Connect { address: String, cause: String },
    #[error("TLS handshake with {address} failed (is --ca-file the CA that signed the serving certificate?): {cause}")]
    Tls { address: String, cause: String },
    #[error("HTTP exchange with {address} failed: {cause}")]
    Http { address: String, cause: String },
}

/// Where a webhook server is: address to dial and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `https://host:port` (a path, if any, is ignored: routes are chosen per call).
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::Url { url: url.to_owned(), reason: reason.to_owned() };
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(invalid("the scheme must be https"));
        }
        let host = uri.host().ok_or_else(|| invalid("a host is required"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Self { host, port: uri.port_u16().unwrap_or(443) })
    }
}

/// One verified keep-alive connection to a webhook server.
pub struct WebhookClient {
    sender: SendRequest<Full<Bytes>>,
    address: SocketAddr,
    host: String,
}

impl WebhookClient {
    /// Dials `endpoint`, retrying refused connections for up to `patience`
    /// (a server that is still starting), and verifies its certificate.
    /// Every address the host resolves to is tried (`localhost` may be `::1` first).
    pub async fn connect(endpoint: &Endpoint, tls: Arc<ClientConfig>, patience: Duration) -> Result<Self, ClientError> {
        let target = format!("{}:{}", endpoint.host, endpoint.port);
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host(&target)
            .await
            .map_err(|e| ClientError::Resolve { host: target.clone(), cause: e.to_string() })?
            .collect();
        if addresses.is_empty() {
            return Err(ClientError::Resolve { host: target, cause: "no address".to_owned() });
        }
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let mut last = None;
            for address in &addresses {
                match Self::connect_to(*address, &endpoint.host, Arc::clone(&tls)).await {
                    Ok(client) => return Ok(client),
                    Err(e @ ClientError::Connect { .. }) => last = Some(e),
                    Err(other) => return Err(other),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last.unwrap_or(ClientError::Resolve { host: target, cause: "no address".to_owned() }));
            }
            tracing::debug!(%target, "webhook not accepting yet");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Dials one address, verifying the certificate against `server_name`.
    pub async fn connect_to(
        address: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, ClientError> {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| ClientError::Connect { address: address.to_string(), cause: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| ClientError::Tls { address: address.to_string(), cause: e.to_string() })?;
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls { address: address.to_string(), cause: e.to_string() })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http { address: address.to_string(), cause: e.to_string() })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "webhook connection closed");
            }
        });
        Ok(Self { sender, address, host: server_name.to_owned() })
    }

    /// POSTs a JSON body to `path` and returns the status and body of the answer.
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> Result<(StatusCode, Bytes), ClientError> {
        let http_error =
            |e: &dyn std::fmt::Display| ClientError::Http { address: self.address.to_string(), cause: e.to_string() };
        self.sender.ready().await.map_err(|e| http_error(&e))?;
        let request = Request::post(path)
            .header(http::header::HOST, self.host.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| http_error(&e))?;
        let response = self.sender.send_request(request).await.map_err(|e| http_error(&e))?;
        let status = response.status();
        // The answer to one review is small; a server that streams more is not a webhook.
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| http_error(&format!("reading the answer (at most {MAX_ANSWER_BYTES} bytes): {e}")))?
            .to_bytes();
        Ok((status, bytes))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("https://127.0.0.1:18443").unwrap(),
            Endpoint { host: "127.0.0.1".into(), port: 18443 }
        );
        assert_eq!(Endpoint::parse("https://localhost").unwrap(), Endpoint { host: "localhost".into(), port: 443 });
        assert_eq!(
            Endpoint::parse("https://[::1]:8443/validate").unwrap(),
            Endpoint { host: "::1".into(), port: 8443 }
        );
        for bad in ["http://127.0.0.1:1", "127.0.0.1:8443", "https://", ""] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains("--server"), "{bad}: {err}");
        }
    }
}
