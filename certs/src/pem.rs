//! PEM text to rustls key material, with errors that name where the text came from.
//!
//! Pure functions: callers read the files and pass the bytes plus an `origin`
//! (a path or an argument name) that ends up in every error message.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::CertError;

/// Every `CERTIFICATE` block in `pem`, in order (leaf first for a chain).
pub fn parse_certificates(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| CertError::Pem { origin: origin.to_owned(), cause })?;
    if certs.is_empty() {
        return Err(CertError::MissingPem { origin: origin.to_owned(), expected: "CERTIFICATE" });
    }
    Ok(certs)
}

/// The first private key block (`PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE KEY`) in `pem`.
pub fn parse_private_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|cause| match cause {
        rustls_pki_types::pem::Error::NoItemsFound => {
            CertError::MissingPem { origin: origin.to_owned(), expected: "PRIVATE KEY" }
        }
        cause => CertError::Pem { origin: origin.to_owned(), cause },
    })
}

/// Pairs a chain with its key, refusing a key that rustls cannot sign with or
/// that does not belong to the leaf.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert_origin: &str,
    key_origin: &str,
) -> Result<CertifiedKey, CertError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| CertError::InvalidKey { origin: key_origin.to_owned(), reason: err.to_string() })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // ring always exposes the public key, so `Unknown` only happens with
        // exotic providers; rustls itself accepts that case.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(CertError::KeyMismatch { cert_origin: cert_origin.to_owned(), key_origin: key_origin.to_owned() })
        }
        Err(err) => Err(CertError::InvalidCertificate { origin: cert_origin.to_owned(), reason: err.to_string() }),
    }
}

/// Parses a PEM chain and PEM key into a checked [`CertifiedKey`].
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    cert_origin: &str,
    key_origin: &str,
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = parse_certificates(cert_pem, cert_origin)?;
    let key = parse_private_key(key_pem, key_origin)?;
    certified_key(chain, key, provider, cert_origin, key_origin).map(Arc::new)
}

/// Lowercase hex SHA-256 of DER bytes: what `openssl x509 -fingerprint -sha256`
/// prints, without colons.
pub fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut hex = String::with_capacity(64);
    for byte in digest.as_ref() {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn sha256_hex_matches_known_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn matching_pair_is_accepted() {
        let (cert, key) = self_signed();
        let certified = certified_key_from_pem(cert.as_bytes(), key.as_bytes(), &provider(), "c", "k").unwrap();
        assert_eq!(certified.cert.len(), 1);
    }

    #[test]
    fn empty_certificate_text_names_origin_and_block() {
        let err = parse_certificates(b"", "/mnt/tls.crt").unwrap_err();
        assert!(matches!(err, CertError::MissingPem { expected: "CERTIFICATE", .. }));
        assert!(err.to_string().contains("/mnt/tls.crt"), "{err}");
    }

    #[test]
    fn garbage_key_is_missing_pem() {
        let err = parse_private_key(b"not a key at all", "/mnt/tls.key").unwrap_err();
        assert!(matches!(err, CertError::MissingPem { expected: "PRIVATE KEY", .. }));
        assert!(err.to_string().contains("/mnt/tls.key"), "{err}");
    }

    #[test]
    fn corrupt_key_body_is_invalid_key() {
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let key = parse_private_key(pem.as_bytes(), "k").unwrap();
        let (cert, _) = self_signed();
        let chain = parse_certificates(cert.as_bytes(), "c").unwrap();
        let err = certified_key(chain, key, &provider(), "c", "/mnt/tls.key").unwrap_err();
        assert!(matches!(err, CertError::InvalidKey { .. }), "{err:?}");
        assert!(err.to_string().contains("/mnt/tls.key"), "{err}");
    }

    #[test]
    fn key_of_another_certificate_is_a_mismatch() {
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let err =
            certified_key_from_pem(cert.as_bytes(), other_key.as_bytes(), &provider(), "/mnt/tls.crt", "/mnt/tls.key")
                .unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("/mnt/tls.crt") && text.contains("/mnt/tls.key"), "{text}");
    }

    #[test]
    fn truncated_pem_is_a_pem_error() {
        let (cert, _) = self_signed();
        let truncated = &cert[..cert.len() - 30];
        let err = parse_certificates(truncated.as_bytes(), "c").unwrap_err();
        assert!(matches!(err, CertError::Pem { .. }), "{err:?}");
    }
}
