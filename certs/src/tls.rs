//! rustls configurations: the webhook's server side and the clients that
//! talk to it (tests, the demo, the bench).
//!
//! Both use the ring provider explicitly, so no process-wide default
//! provider has to be installed, and both allow TLS 1.3 and 1.2 only.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::error::CertError;
use crate::pem;
use crate::reload::ReloadingCertResolver;

/// ALPN id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// TLS 1.3 preferred, TLS 1.2 for older clients; nothing older exists in rustls.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The ring crypto provider every configuration here is built with.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The webhook's server configuration: TLS 1.2 + 1.3, ring, ALPN h2 then
/// http/1.1, no client certificates, and the certificate taken from
/// `resolver` at every handshake (so rotation needs no new config).
pub fn server_config(resolver: Arc<ReloadingCertResolver>) -> Result<ServerConfig, CertError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|cause| CertError::Tls { config: "server", cause })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// A root store holding exactly the certificates in `ca_pem`.
pub fn root_store(ca_pem: &str) -> Result<RootCertStore, CertError> {
    const ORIGIN: &str = "CA PEM given to the client configuration";
    let mut roots = RootCertStore::empty();
    for cert in pem::parse_certificates(ca_pem.as_bytes(), ORIGIN)? {
        roots
            .add(cert)
            .map_err(|err| CertError::InvalidCertificate { origin: ORIGIN.to_owned(), reason: err.to_string() })?;
    }
    Ok(roots)
}

/// A client configuration trusting exactly `ca_pem`, offering `alpn` (in
/// order; empty offers none), TLS 1.3 and 1.2.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Result<ClientConfig, CertError> {
    client_config_with_versions(ca_pem, alpn, PROTOCOL_VERSIONS)
}

/// [`client_config`] limited to `versions`, e.g. `&[&rustls::version::TLS12]`
/// to prove a TLS 1.2-only client still gets in.
pub fn client_config_with_versions(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Result<ClientConfig, CertError> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(versions)
        .map_err(|cause| CertError::Tls { config: "client", cause })?
        .with_root_certificates(root_store(ca_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|proto| proto.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::generate::CertificateAuthority;

    #[test]
    fn client_config_offers_the_requested_alpn_in_order() {
        let ca = CertificateAuthority::generate("ca", 1).unwrap();
        let config = client_config(&ca.cert_pem(), &[ALPN_HTTP1, ALPN_H2]).unwrap();
        assert_eq!(config.alpn_protocols, [ALPN_HTTP1.to_vec(), ALPN_H2.to_vec()]);
    }

    #[test]
    fn root_store_holds_every_certificate_given() {
        let a = CertificateAuthority::generate("a", 1).unwrap();
        let b = CertificateAuthority::generate("b", 1).unwrap();
        let store = root_store(&format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn client_config_without_a_ca_says_so() {
        let err = client_config("", &[]).unwrap_err();
        assert!(matches!(err, CertError::MissingPem { expected: "CERTIFICATE", .. }), "{err:?}");
    }

    #[test]
    fn a_malformed_root_is_refused() {
        // Valid PEM armour around bytes that are not a certificate.
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = root_store(pem).unwrap_err();
        assert!(matches!(err, CertError::InvalidCertificate { .. }), "{err:?}");
    }

    #[test]
    fn no_protocol_version_is_a_client_config_error() {
        let ca = CertificateAuthority::generate("ca", 1).unwrap();
        let err = client_config_with_versions(&ca.cert_pem(), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("client"), "{err}");
    }
}
