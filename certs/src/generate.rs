//! A development CA and the serving certificates it signs, in memory.
//!
//! In a cluster cert-manager does this job; locally (tests, the demo, e2e
//! against a bare API server) we need the same shapes: a CA whose PEM goes into
//! `caBundle`, and a leaf with `serverAuth` for the webhook's Service names.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{DnsName, PrivateKeyDer};

use crate::error::CertError;
use crate::pem;

/// Longest validity accepted for the CA and for serving certificates (ten years).
pub const MAX_VALIDITY_DAYS: u32 = 3650;

/// Certificates start this long in the past so a peer whose clock lags a bit
/// does not reject a certificate issued a moment ago.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// X.520 upper bound for a common name.
const MAX_COMMON_NAME_LEN: usize = 64;

/// Subject common name of a serving certificate whose first name is too long for a CN.
const DEFAULT_SERVING_COMMON_NAME: &str = "stead serving certificate";

/// Organization written into every subject, so the certificates are recognisable.
const ORGANIZATION: &str = "stead";

/// A self-signed CA (key and certificate) that issues serving certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // rcgen's Issuer debug output already elides the key.
        f.debug_struct("CertificateAuthority").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a fresh CA: ECDSA P-256 key, `CA:TRUE` with path length 0
    /// (it signs leaves only), key usage keyCertSign + cRLSign.
    pub fn generate(common_name: &str, validity_days: u32) -> Result<Self, CertError> {
        check_validity_days("validity_days", validity_days)?;
        check_common_name(common_name)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, validity_days)?;

        let key =
            KeyPair::generate().map_err(|cause| CertError::Generate { action: "generate the CA key pair", cause })?;
        let cert = params
            .self_signed(&key)
            .map_err(|cause| CertError::Generate { action: "self-sign the CA certificate", cause })?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// Reads back a CA written earlier (its certificate and PKCS#8 key), so a
    /// second serving certificate can be issued under the same trust root.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        Self::from_pem_with_origins(cert_pem, key_pem, "CA certificate PEM", "CA key PEM")
    }

    /// [`Self::from_pem`] with error messages naming where the PEM came from.
    pub(crate) fn from_pem_with_origins(
        cert_pem: &str,
        key_pem: &str,
        cert_origin: &str,
        key_origin: &str,
    ) -> Result<Self, CertError> {
        let mut certs = pem::parse_certificates(cert_pem.as_bytes(), cert_origin)?;
        if certs.len() != 1 {
            return Err(CertError::InvalidCertificate {
                origin: cert_origin.to_owned(),
                reason: format!("expected exactly one CA certificate, found {} CERTIFICATE blocks", certs.len()),
            });
        }
        let key_der = pem::parse_private_key(key_pem.as_bytes(), key_origin)?;

        // rustls checks the key belongs to the certificate before we sign with it.
        let provider = rustls::crypto::ring::default_provider();
        pem::certified_key(certs.clone(), key_der.clone_key(), &provider, cert_origin, key_origin)?;

        let key = match &key_der {
            PrivateKeyDer::Pkcs8(_) => KeyPair::try_from(&key_der)
                .map_err(|err| CertError::InvalidKey { origin: key_origin.to_owned(), reason: err.to_string() })?,
            _ => {
                return Err(CertError::InvalidKey {
                    origin: key_origin.to_owned(),
                    reason: "a CA key must be PKCS#8 (-----BEGIN PRIVATE KEY-----)".to_owned(),
                });
            }
        };
        let cert_der = certs.remove(0);
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|err| CertError::InvalidCertificate { origin: cert_origin.to_owned(), reason: err.to_string() })?;
        let usages = issuer.key_usages();
        if !usages.is_empty() && !usages.contains(&KeyUsagePurpose::KeyCertSign) {
            return Err(CertError::InvalidCertificate {
                origin: cert_origin.to_owned(),
                reason: "not a CA: its key usage lacks keyCertSign".to_owned(),
            });
        }
        Ok(Self { issuer, cert_pem: cert_pem.to_owned() })
    }

    /// The CA certificate, PEM: what clients trust (`caBundle`, `ca.crt`).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key, PKCS#8 PEM. Secret: only for persisting the CA.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a serving certificate (EKU serverAuth, `CA:FALSE`, fresh ECDSA
    /// P-256 key) for the given DNS names and IP addresses.
    ///
    /// The subject common name is the first DNS name (or the first IP); clients
    /// only look at the subject alternative names.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        validity_days: u32,
    ) -> Result<ServingCertificate, CertError> {
        check_validity_days("validity_days", validity_days)?;
        let sans = subject_alt_names(dns_names, ips)?;
        // Clients match SANs only; the CN is for humans and capped at 64 characters.
        let common_name = dns_names
            .first()
            .cloned()
            .or_else(|| ips.first().map(ToString::to_string))
            .filter(|name| name.len() <= MAX_COMMON_NAME_LEN)
            .unwrap_or_else(|| DEFAULT_SERVING_COMMON_NAME.to_owned());

        let mut params = CertificateParams::default();
        params.distinguished_name = subject(&common_name);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity_days)?;

        let key = KeyPair::generate()
            .map_err(|cause| CertError::Generate { action: "generate the serving key pair", cause })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|cause| CertError::Generate { action: "sign the serving certificate", cause })?;
        Ok(ServingCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A serving certificate and its key, PEM: the `tls.crt` / `tls.key` pair.
#[derive(Clone)]
pub struct ServingCertificate {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCertificate").field("cert_pem", &self.cert_pem).field("key_pem", &"[redacted]").finish()
    }
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

fn check_validity_days(field: &str, days: u32) -> Result<(), CertError> {
    if (1..=MAX_VALIDITY_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(CertError::InvalidInput {
            field: field.to_owned(),
            value: days.to_string(),
            accepted: format!("a number of days from 1 to {MAX_VALIDITY_DAYS}"),
        })
    }
}

fn check_common_name(common_name: &str) -> Result<(), CertError> {
    let len = common_name.chars().count();
    if (1..=MAX_COMMON_NAME_LEN).contains(&len) {
        Ok(())
    } else {
        Err(CertError::InvalidInput {
            field: "common_name".to_owned(),
            value: common_name.to_owned(),
            accepted: format!("1 to {MAX_COMMON_NAME_LEN} characters"),
        })
    }
}

/// Valid from a few minutes ago until `days` from now.
fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), CertError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|_| CertError::Clock)?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let lifetime = Duration::from_secs(u64::from(days) * 24 * 60 * 60);
    params.not_before = epoch + now.saturating_sub(CLOCK_SKEW_ALLOWANCE);
    params.not_after = epoch + now + lifetime;
    Ok(())
}

/// Validates and converts the requested names; duplicates are dropped.
fn subject_alt_names(dns_names: &[String], ips: &[IpAddr]) -> Result<Vec<SanType>, CertError> {
    if dns_names.is_empty() && ips.is_empty() {
        return Err(CertError::InvalidInput {
            field: "dns_names / ips".to_owned(),
            value: String::new(),
            accepted: "at least one DNS name or IP address for the serving certificate".to_owned(),
        });
    }
    let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
    for (index, name) in dns_names.iter().enumerate() {
        let san = dns_san(name).ok_or_else(|| CertError::InvalidInput {
            field: format!("dns_names[{index}]"),
            value: name.clone(),
            accepted: "a DNS name such as stead-webhook.stead-system.svc (ASCII labels of \
                       letters, digits and '-', separated by '.'; an optional leading '*.')"
                .to_owned(),
        })?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    for ip in ips {
        let san = SanType::IpAddress(*ip);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn dns_san(name: &str) -> Option<SanType> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    // An IP literal is a valid DnsName syntactically but never matches as one.
    if host.parse::<IpAddr>().is_ok() || DnsName::try_from(host).is_err() {
        return None;
    }
    let ia5 = rcgen::string::Ia5String::try_from(name).ok()?;
    Some(SanType::DnsName(ia5))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::net::Ipv4Addr;

    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    use super::*;

    fn der_of(pem_text: &str) -> Vec<u8> {
        pem::parse_certificates(pem_text.as_bytes(), "test").unwrap().remove(0).to_vec()
    }

    fn names(dns: &[&str]) -> Vec<String> {
        dns.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ca_is_a_path_length_zero_ca_that_signs_certificates() {
        let ca = CertificateAuthority::generate("stead dev CA", 30).unwrap();
        let der = der_of(&ca.cert_pem());
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let constraints = cert.basic_constraints().unwrap().unwrap().value;
        assert!(constraints.ca);
        assert_eq!(constraints.path_len_constraint, Some(0));
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        assert_eq!(cert.subject(), cert.issuer());
        assert!(cert.subject().to_string().contains("CN=stead dev CA"));
        let validity = cert.validity().time_to_expiration().unwrap();
        assert!(validity.whole_days() >= 29 && validity.whole_days() <= 30);
    }

    #[test]
    fn serving_certificate_is_a_server_auth_leaf_issued_by_the_ca() {
        let ca = CertificateAuthority::generate("stead dev CA", 30).unwrap();
        let leaf = ca
            .issue_serving(
                &names(&["stead-webhook.stead-system.svc", "localhost"]),
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                7,
            )
            .unwrap();
        let ca_der = der_of(&ca.cert_pem());
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        let der = der_of(&leaf.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();

        assert_eq!(cert.issuer(), ca_cert.subject());
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => (*dns).to_owned(),
                GeneralName::IPAddress(bytes) => format!("ip:{bytes:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, ["stead-webhook.stead-system.svc", "localhost", "ip:[127, 0, 0, 1]"]);
        assert!(cert.subject().to_string().contains("CN=stead-webhook.stead-system.svc"));
        assert!(leaf.key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{leaf:?}").contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn duplicate_names_are_written_once() {
        let sans = subject_alt_names(
            &names(&["localhost", "localhost"]),
            &[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )
        .unwrap();
        assert_eq!(sans.len(), 2);
    }

    #[test]
    fn ip_only_certificate_uses_the_ip_as_common_name() {
        let ca = CertificateAuthority::generate("ca", 1).unwrap();
        let leaf = ca.issue_serving(&[], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 1).unwrap();
        let der = der_of(&leaf.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(cert.subject().to_string().contains("CN=127.0.0.1"));
    }

    #[test]
    fn bad_inputs_name_the_field_and_what_is_accepted() {
        let ca = CertificateAuthority::generate("ca", 1).unwrap();
        let cases: Vec<(Result<ServingCertificate, CertError>, &str)> = vec![
            (ca.issue_serving(&names(&["ok"]), &[], 0), "validity_days"),
            (ca.issue_serving(&names(&["ok"]), &[], MAX_VALIDITY_DAYS + 1), "validity_days"),
            (ca.issue_serving(&[], &[], 1), "dns_names / ips"),
            (ca.issue_serving(&names(&["ok", "bad name"]), &[], 1), "dns_names[1]"),
            (ca.issue_serving(&names(&["héllo"]), &[], 1), "dns_names[0]"),
            (ca.issue_serving(&names(&["10.0.0.1"]), &[], 1), "dns_names[0]"),
            (ca.issue_serving(&names(&[""]), &[], 1), "dns_names[0]"),
        ];
        for (result, field) in cases {
            let err = result.unwrap_err();
            match &err {
                CertError::InvalidInput { field: got, accepted, .. } => {
                    assert_eq!(got, field);
                    assert!(!accepted.is_empty());
                }
                other => panic!("expected InvalidInput for {field}, got {other:?}"),
            }
        }
        let err = CertificateAuthority::generate("", 1).unwrap_err();
        assert!(err.to_string().starts_with("common_name"), "{err}");
        let err = CertificateAuthority::generate("ca", 0).unwrap_err();
        assert!(err.to_string().contains("1 to 3650"), "{err}");
    }

    #[test]
    fn a_long_first_name_still_gets_a_valid_common_name() {
        let ca = CertificateAuthority::generate("ca", 1).unwrap();
        let long = format!("{}.stead-system.svc.cluster.local", "a".repeat(60));
        let leaf = ca.issue_serving(&[long], &[], 1).unwrap();
        let der = der_of(&leaf.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(cert.subject().to_string().contains("CN=stead serving certificate"));
    }

    #[test]
    fn wildcard_dns_names_are_accepted() {
        assert!(dns_san("*.stead-system.svc").is_some());
        assert!(dns_san("*.*.svc").is_none());
    }

    #[test]
    fn ca_round_trips_through_pem_and_keeps_signing_under_the_same_name() {
        let ca = CertificateAuthority::generate("stead dev CA", 30).unwrap();
        let again = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let leaf = again.issue_serving(&names(&["localhost"]), &[], 1).unwrap();
        let ca_der = der_of(&ca.cert_pem());
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        let leaf_der = der_of(&leaf.cert_pem);
        let (_, leaf_cert) = X509Certificate::from_der(&leaf_der).unwrap();
        // Byte-equal names are what path building compares.
        assert_eq!(leaf_cert.issuer().as_raw(), ca_cert.subject().as_raw());
        leaf_cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn from_pem_rejects_a_foreign_key() {
        let ca = CertificateAuthority::generate("ca", 1).unwrap();
        let other = CertificateAuthority::generate("other", 1).unwrap();
        let err = CertificateAuthority::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn from_pem_rejects_a_leaf_as_ca() {
        let ca = CertificateAuthority::generate("ca", 1).unwrap();
        let leaf = ca.issue_serving(&names(&["localhost"]), &[], 1).unwrap();
        let err = CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("keyCertSign"), "{err}");
    }

    #[test]
    fn from_pem_rejects_a_bundle_of_two() {
        let ca = CertificateAuthority::generate("ca", 1).unwrap();
        let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
        let err = CertificateAuthority::from_pem(&two, &ca.key_pem()).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_ca_key() {
        let ca = CertificateAuthority::generate("ca", 1).unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
