//! Real TLS handshakes over 127.0.0.1 against `server_config`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_echo, connect, peer_fingerprint, rustls_error, spawn_echo_server};
use rustls::{CertificateError, ProtocolVersion};
use stead_certs::{
    ALPN_H2, ALPN_HTTP1, CertificateAuthority, PROTOCOL_VERSIONS, ReloadingCertResolver, client_config,
    client_config_with_versions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Fixture {
    _dir: tempfile::TempDir,
    ca: CertificateAuthority,
    resolver: std::sync::Arc<ReloadingCertResolver>,
    addr: std::net::SocketAddr,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::write_first_bundle(dir.path());
    let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
    let addr = spawn_echo_server(resolver.clone()).await;
    Fixture { _dir: dir, ca, resolver, addr }
}

#[tokio::test]
async fn tls13_client_negotiates_h2_and_sees_the_leaf_signed_by_the_ca() {
    let fx = fixture().await;
    let config = client_config(&fx.ca.cert_pem(), &[ALPN_H2, ALPN_HTTP1]).unwrap();
    let mut stream = connect(fx.addr, &config, "localhost").await.unwrap();
    let conn = stream.get_ref().1;
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(peer_fingerprint(&stream), fx.resolver.current_fingerprint());
    assert_echo(&mut stream, b"admission review").await;
}

#[tokio::test]
async fn http1_only_client_gets_http1() {
    let fx = fixture().await;
    let config = client_config(&fx.ca.cert_pem(), &[ALPN_HTTP1]).unwrap();
    let stream = connect(fx.addr, &config, "localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(ALPN_HTTP1));
}

#[tokio::test]
async fn tls12_only_client_still_connects() {
    let fx = fixture().await;
    let config = client_config_with_versions(&fx.ca.cert_pem(), &[ALPN_H2], &[&rustls::version::TLS12]).unwrap();
    let mut stream = connect(fx.addr, &config, "localhost").await.unwrap();
    let conn = stream.get_ref().1;
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    assert_echo(&mut stream, b"over tls 1.2").await;
}

#[tokio::test]
async fn ip_address_san_is_verified() {
    let fx = fixture().await;
    let config = client_config(&fx.ca.cert_pem(), &[]).unwrap();
    let mut stream = connect(fx.addr, &config, "127.0.0.1").await.unwrap();
    assert_echo(&mut stream, b"by ip").await;
}

#[tokio::test]
async fn name_outside_the_sans_fails_the_handshake() {
    let fx = fixture().await;
    let config = client_config(&fx.ca.cert_pem(), &[ALPN_H2]).unwrap();
    let err = connect(fx.addr, &config, "stead-webhook.elsewhere.svc").await.unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_trusting_another_ca_fails_the_handshake() {
    let fx = fixture().await;
    let stranger = CertificateAuthority::generate("someone else", 1).unwrap();
    let config = client_config(&stranger.cert_pem(), &[]).unwrap();
    let err = connect(fx.addr, &config, "localhost").await.unwrap_err();
    assert!(
        matches!(rustls_error(&err), rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        "{err:?}"
    );
}

#[test]
fn only_tls13_and_tls12_are_configured() {
    let versions: Vec<ProtocolVersion> = PROTOCOL_VERSIONS.iter().map(|v| v.version).collect();
    assert_eq!(versions, [ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2]);
}

/// A hand-written TLS 1.1 ClientHello (rustls cannot even produce one): the
/// server must answer with a fatal `protocol_version` alert.
#[tokio::test]
async fn tls11_client_hello_gets_a_protocol_version_alert() {
    let fx = fixture().await;
    let mut tcp = TcpStream::connect(fx.addr).await.unwrap();
    tcp.write_all(&client_hello([0x03, 0x02])).await.unwrap();
    let mut alert = [0u8; 7];
    tcp.read_exact(&mut alert).await.unwrap();
    const ALERT_RECORD: u8 = 0x15;
    const FATAL: u8 = 2;
    const PROTOCOL_VERSION: u8 = 70;
    assert_eq!(alert[0], ALERT_RECORD, "record type in {alert:02x?}");
    assert_eq!(&alert[3..], [0, 2, FATAL, PROTOCOL_VERSION], "{alert:02x?}");
}

/// Control for the test above: the same hello claiming TLS 1.2 gets a
/// ServerHello, so the alert is about the version and nothing else.
#[tokio::test]
async fn the_same_hello_claiming_tls12_is_answered() {
    let fx = fixture().await;
    let mut tcp = TcpStream::connect(fx.addr).await.unwrap();
    tcp.write_all(&client_hello([0x03, 0x03])).await.unwrap();
    let mut header = [0u8; 6];
    tcp.read_exact(&mut header).await.unwrap();
    const HANDSHAKE_RECORD: u8 = 0x16;
    const SERVER_HELLO: u8 = 0x02;
    assert_eq!(header[0], HANDSHAKE_RECORD, "{header:02x?}");
    assert_eq!(header[5], SERVER_HELLO, "{header:02x?}");
}

/// A minimal ClientHello without the supported_versions extension, so
/// `client_version` alone decides the protocol.
fn client_hello(client_version: [u8; 2]) -> Vec<u8> {
    let mut body = client_version.to_vec();
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // empty session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // two ECDHE-AES128-GCM suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions: [u8; 18] = [
        0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03, // signature_algorithms: ecdsa_secp256r1_sha256
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // groups: x25519, secp256r1
    ];
    body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&extensions);

    let body_len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend_from_slice(&body_len[1..]);
    handshake.extend_from_slice(&body);

    let mut record = vec![0x16, 0x03, 0x01]; // handshake record, TLS 1.0 record version
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}
