//! Shared by the integration tests: an in-process TLS echo server built from
//! `server_config`, and a client that reports what it negotiated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use stead_certs::{CertificateAuthority, ReloadingCertResolver, server_config, write_bundle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Starts an echo server on 127.0.0.1:0 that takes its certificate from `resolver`.
pub async fn spawn_echo_server(resolver: Arc<ReloadingCertResolver>) -> SocketAddr {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(resolver).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A failed handshake is the client's to report.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            let _ = tls.flush().await;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Connects with session resumption off: a resumed TLS 1.3 session skips the
/// certificate, and the client would report the chain it cached earlier.
pub async fn connect(
    addr: SocketAddr,
    config: &ClientConfig,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut config = config.clone();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    connector.connect(name, tcp).await
}

/// SHA-256 of the leaf the server presented on this connection.
pub fn peer_fingerprint(stream: &TlsStream<TcpStream>) -> String {
    let certs = stream.get_ref().1.peer_certificates().unwrap();
    stead_certs::pem::sha256_hex(&certs[0])
}

/// Sends `payload` and checks it comes back unchanged.
pub async fn assert_echo(stream: &mut TlsStream<TcpStream>, payload: &[u8]) {
    stream.write_all(payload).await.unwrap();
    stream.flush().await.unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, payload);
}

/// The rustls error behind a failed handshake.
pub fn rustls_error(err: &std::io::Error) -> &rustls::Error {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
}

/// A CA plus a first leaf for localhost and 127.0.0.1, written into `dir`.
pub fn write_first_bundle(dir: &Path) -> CertificateAuthority {
    let ca = CertificateAuthority::generate("stead test CA", 2).unwrap();
    write_leaf(dir, &ca);
    ca
}

/// Issues a new leaf for localhost and 127.0.0.1 and writes it into `dir`.
pub fn write_leaf(dir: &Path, ca: &CertificateAuthority) {
    let leaf = ca.issue_serving(&["localhost".to_owned()], &[std::net::Ipv4Addr::LOCALHOST.into()], 1).unwrap();
    write_bundle(dir, ca, &leaf).unwrap();
}
