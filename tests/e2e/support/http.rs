//! A small blocking HTTP/1.1 client for the endpoints the suite probes:
//! etcd's `/health`, the API server's `/readyz`, the webhook's `/readyz`, the
//! controller's `/readyz` and `/metrics`, and the stand-in kubelet's probes
//! (which, like a kubelet, do not verify the certificate). GET only, one
//! request per connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// One server: an address and, for HTTPS, the CA it must present a chain to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
    io_timeout: Duration,
}

/// Status and body of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Endpoint {
    /// Plain HTTP.
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None, connect_timeout: CONNECT_TIMEOUT, io_timeout: IO_TIMEOUT }
    }

    /// HTTPS, trusting only `ca_pem`; the server's certificate must name the
    /// address's IP (ALPN offers http/1.1 only).
    pub fn https(addr: SocketAddr, ca_pem: &str) -> anyhow::Result<Self> {
        let config = stead_certs::client_config(ca_pem, &[b"http/1.1"])
            .context("building a TLS client that trusts the e2e CA")?;
        Ok(Self { addr, tls: Some(Arc::new(config)), connect_timeout: CONNECT_TIMEOUT, io_timeout: IO_TIMEOUT })
    }

    /// HTTPS without verifying the server's certificate, as a kubelet's
    /// `httpGet` probe with `scheme: HTTPS` does.
    pub fn https_unverified(addr: SocketAddr) -> anyhow::Result<Self> {
        let provider = stead_certs::crypto_provider();
        let verifier = Arc::new(AnyCertificate(provider.signature_verification_algorithms));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("building a TLS client for probes")?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { addr, tls: Some(Arc::new(config)), connect_timeout: CONNECT_TIMEOUT, io_timeout: IO_TIMEOUT })
    }

    /// The same endpoint with `timeout` for connecting and for each read or write.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self.io_timeout = timeout;
        self
    }

    /// The URL of `path` on this endpoint, for messages.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// GET `path`, with a bearer token when given.
    pub fn get(&self, path: &str, bearer: Option<&str>) -> anyhow::Result<Response> {
        let url = self.url(path);
        self.fetch(path, bearer).with_context(|| format!("GET {url}"))
    }

    fn fetch(&self, path: &str, bearer: Option<&str>) -> anyhow::Result<Response> {
        let tcp = TcpStream::connect_timeout(&self.addr, self.connect_timeout)?;
        tcp.set_read_timeout(Some(self.io_timeout))?;
        tcp.set_write_timeout(Some(self.io_timeout))?;
        let request = render_request(&self.addr.to_string(), path, bearer);
        let raw = match &self.tls {
            None => exchange(tcp, request.as_bytes())?,
            Some(config) => {
                let name = ServerName::from(self.addr.ip());
                let connection = ClientConnection::new(Arc::clone(config), name)?;
                exchange(StreamOwned::new(connection, tcp), request.as_bytes())?
            }
        };
        parse_response(&raw)
    }
}

/// Accepts any certificate, still checking that the handshake is signed by
/// the key of the certificate presented (what a kubelet's probe does).
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Sends the request and reads until the server closes the connection.
fn exchange(mut stream: impl Read + Write, request: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        // A TLS peer that closes without close_notify: what arrived is
        // complete if its framing says so, which parse_response checks.
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(err) => Err(err),
    }
}

/// The request bytes: GET with `Connection: close`.
pub fn render_request(host: &str, path: &str, bearer: Option<&str>) -> String {
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: stead-e2e\r\nAccept: */*\r\nConnection: close\r\n");
    if let Some(token) = bearer {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// Parses a complete HTTP/1.x response: status line, headers, and a body
/// framed by Content-Length, chunked encoding, or the end of the stream.
pub fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("the response has no end of headers ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let payload = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)?;

    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("malformed header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().with_context(|| format!("Content-Length {value:?} is not a number"))?);
        }
    }

    let body = if chunked {
        decode_chunked(payload)?
    } else if let Some(length) = length {
        if payload.len() < length {
            bail!("the body ended after {} of {length} bytes (Content-Length)", payload.len());
        }
        payload[..length].to_vec()
    } else {
        payload.to_vec()
    };
    Ok(Response { status, body: String::from_utf8_lossy(&body).into_owned() })
}

fn parse_status_line(line: &str) -> anyhow::Result<u16> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => {
            code.parse().with_context(|| format!("status code {code:?} in {line:?} is not a number"))
        }
        _ => bail!("{line:?} is not an HTTP/1.x status line"),
    }
}

/// Undoes `Transfer-Encoding: chunked`; trailers are ignored.
pub fn decode_chunked(mut payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = payload
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(|| anyhow!("a chunk size line is cut off"))?;
        let line = String::from_utf8_lossy(&payload[..line_end]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("chunk size {size_text:?} is not hexadecimal"))?;
        payload = &payload[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if payload.len() < size + 2 || &payload[size..size + 2] != b"\r\n" {
            bail!("a chunk of {size} bytes is cut off or not followed by CRLF");
        }
        body.extend_from_slice(&payload[..size]);
        payload = &payload[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::{Ipv4Addr, TcpListener};
    use std::thread;

    use super::*;

    #[test]
    fn request_carries_the_token_only_when_given() {
        let with = render_request("127.0.0.1:6443", "/readyz", Some("s3cret"));
        assert!(with.starts_with("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:6443\r\n"));
        assert!(with.contains("\r\nAuthorization: Bearer s3cret\r\n"));
        assert!(with.contains("\r\nConnection: close\r\n"));
        assert!(with.ends_with("\r\n\r\n"));
        assert!(!render_request("h", "/", None).contains("Authorization"));
    }

    #[test]
    fn content_length_frames_the_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nokEXTRA";
        assert_eq!(parse_response(raw).unwrap(), Response { status: 200, body: "ok".to_owned() });
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok";
        assert!(parse_response(short).unwrap_err().to_string().contains("2 of 10 bytes"));
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let raw = b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n[+]e\r\n6\r\ntcd ok\r\n0\r\n\r\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 500);
        assert_eq!(response.body, "[+]etcd ok");
        assert!(decode_chunked(b"5\r\nab").is_err());
        assert!(decode_chunked(b"zz\r\n").is_err());
    }

    #[test]
    fn unframed_body_runs_to_the_end_and_bad_heads_are_refused() {
        let raw = b"HTTP/1.0 404 Not Found\r\n\r\nno such path";
        assert_eq!(parse_response(raw).unwrap().body, "no such path");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n").is_err());
    }

    /// A one-request HTTPS server with a certificate for 127.0.0.1 from `ca`.
    fn tls_server(ca: &stead_certs::CertificateAuthority) -> (SocketAddr, thread::JoinHandle<()>) {
        let leaf = ca.issue_serving(&[], &[std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)], 1).unwrap();
        let chain = stead_certs::pem::parse_certificates(leaf.cert_pem.as_bytes(), "leaf").unwrap();
        let key = stead_certs::pem::parse_private_key(leaf.key_pem.as_bytes(), "leaf").unwrap();
        let config = rustls::ServerConfig::builder_with_provider(stead_certs::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let connection = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut stream = StreamOwned::new(connection, tcp);
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return, // the client gave up (untrusted certificate)
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nready");
            stream.conn.send_close_notify();
            let _ = stream.flush();
        });
        (addr, server)
    }

    #[test]
    fn https_get_trusts_exactly_the_given_ca() {
        let ca = stead_certs::CertificateAuthority::generate("http test CA", 1).unwrap();
        let (addr, server) = tls_server(&ca);
        let response = Endpoint::https(addr, &ca.cert_pem()).unwrap().get("/readyz", None).unwrap();
        assert_eq!(response, Response { status: 200, body: "ready".to_owned() });
        server.join().unwrap();

        // A probe takes any certificate, as a kubelet's does.
        let (addr, server) = tls_server(&ca);
        let probe = Endpoint::https_unverified(addr).unwrap().with_timeout(Duration::from_secs(5));
        assert_eq!(probe.get("/readyz", None).unwrap().status, 200);
        server.join().unwrap();

        let other = stead_certs::CertificateAuthority::generate("another CA", 1).unwrap();
        let (addr, server) = tls_server(&ca);
        let err = Endpoint::https(addr, &other.cert_pem()).unwrap().get("/readyz", None).unwrap_err();
        assert!(format!("{err:#}").contains("GET https://127.0.0.1:"), "{err:#}");
        server.join().unwrap();
    }

    #[test]
    fn plain_get_reads_a_real_response() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
            String::from_utf8(seen).unwrap()
        });
        let response = Endpoint::plain(addr).get("/healthz", Some("t")).unwrap();
        assert_eq!(response, Response { status: 200, body: "ok".to_owned() });
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"));
        assert!(request.contains("Authorization: Bearer t\r\n"));
    }
}
