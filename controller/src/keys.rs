//! The controller's own key material, and what it derives from it for each
//! cluster: the bearer token its instance managers accept, and the serving
//! certificate they present.
//!
//! The controller never reads a cluster's Secret. It writes the token and
//! the certificate into `<name>-credentials` once, when it creates it, and
//! must be able to talk to the instances ever after, across restarts and on
//! either replica of a leader-elected pair. So both are derived from one
//! Secret of its own (`stead-controller-keys` in its namespace, the only
//! Secret it may read, by name):
//!
//! - the token is HMAC-SHA256 of `<namespace>/<name>` under a 256-bit key,
//!   so it differs per cluster and is recomputed, never stored;
//! - the serving certificate is issued by the controller's instance CA for
//!   `*.<name>-headless.<namespace>.svc`; the controller connects to a pod's
//!   IP and verifies the certificate against that CA under that name.
//!
//! The first controller to start creates the Secret; a 409 means another
//! replica was first, and its Secret is read instead.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use stead_certs::{CertificateAuthority, ServingCertificate};
use stead_crds::names::{FIELD_MANAGER, headless_service_name};

use crate::error::describe;

/// Name of the controller's key Secret, in the controller's namespace.
pub const KEYS_SECRET: &str = "stead-controller-keys";
/// Key of the HMAC key in the key Secret.
pub const TOKEN_KEY: &str = "token-key";
/// Keys of the instance CA in the key Secret.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
/// How long the instance CA and each cluster's serving certificate are valid.
pub const VALIDITY_DAYS: u32 = 3650;

/// Why the key material could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(
        "cannot read Secret {namespace}/{KEYS_SECRET}: {}; the controller needs get on that one Secret (see \
         manifests/rbac)",
        describe(source)
    )]
    Read { namespace: String, source: kube::Error },
    #[error("cannot create Secret {namespace}/{KEYS_SECRET}: {}", describe(source))]
    Create { namespace: String, source: kube::Error },
    #[error(
        "Secret {namespace}/{KEYS_SECRET} lacks {key} or holds an unusable value ({why}); delete it to have a new one \
         made, and know that clusters created with the old one must then have their credentials Secret recreated"
    )]
    Unusable { namespace: String, key: &'static str, why: String },
    #[error("the system random number generator failed; no key was generated")]
    Random,
    #[error("cannot issue a certificate: {0}")]
    Certificate(#[from] stead_certs::CertError),
}

/// The controller's keys.
pub struct ControllerKeys {
    token: hmac::Key,
    ca: CertificateAuthority,
}

impl std::fmt::Debug for ControllerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControllerKeys { .. }")
    }
}

impl ControllerKeys {
    /// Fresh keys: a random HMAC key and a new instance CA.
    pub fn generate() -> Result<(Self, [u8; 32]), KeysError> {
        let mut secret = [0_u8; 32];
        SystemRandom::new().fill(&mut secret).map_err(|_| KeysError::Random)?;
        let ca = CertificateAuthority::generate("stead instance CA", VALIDITY_DAYS)?;
        Ok((Self { token: hmac::Key::new(hmac::HMAC_SHA256, &secret), ca }, secret))
    }

    /// Keys from the three values of the key Secret.
    pub fn from_parts(token_key: &[u8], ca_cert: &str, ca_key: &str) -> Result<Self, (&'static str, String)> {
        if token_key.len() < 32 {
            return Err((TOKEN_KEY, format!("{} bytes, want 32", token_key.len())));
        }
        let ca = CertificateAuthority::from_pem(ca_cert, ca_key).map_err(|e| (CA_CERT, e.to_string()))?;
        Ok(Self { token: hmac::Key::new(hmac::HMAC_SHA256, token_key), ca })
    }

    /// The bearer token the instance managers of `namespace/name` accept.
    pub fn token(&self, namespace: &str, name: &str) -> String {
        let tag = hmac::sign(&self.token, format!("stead.dev/instance-token/v1:{namespace}/{name}").as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The name the instances of `namespace/name` are verified under.
    pub fn server_name(namespace: &str, name: &str) -> String {
        format!("instance.{}.{namespace}.svc", headless_service_name(name))
    }

    /// A serving certificate for the instances of `namespace/name`.
    pub fn serving_certificate(&self, namespace: &str, name: &str) -> Result<ServingCertificate, KeysError> {
        let wildcard = format!("*.{}.{namespace}.svc", headless_service_name(name));
        Ok(self.ca.issue_serving(&[wildcard], &[], VALIDITY_DAYS)?)
    }

    /// The instance CA, PEM, that the controller trusts.
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// Reads the key Secret, or creates it when it does not exist yet.
    pub async fn load_or_create(api: &Api<Secret>, namespace: &str) -> Result<Self, KeysError> {
        if let Some(keys) = Self::read(api, namespace).await? {
            return Ok(keys);
        }
        let (keys, secret) = Self::generate()?;
        let object = Secret {
            metadata: ObjectMeta {
                name: Some(KEYS_SECRET.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(
                    [("app.kubernetes.io/name".to_owned(), "stead-controller".to_owned())].into_iter().collect(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(
                [
                    (TOKEN_KEY.to_owned(), ByteString(secret.to_vec())),
                    (CA_CERT.to_owned(), ByteString(keys.ca.cert_pem().into_bytes())),
                    (CA_KEY.to_owned(), ByteString(keys.ca.key_pem().into_bytes())),
                ]
                .into_iter()
                .collect(),
            ),
            ..Secret::default()
        };
        let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
        match api.create(&params, &object).await {
            Ok(_) => Ok(keys),
            // Another replica created it first: use that one.
            Err(kube::Error::Api(status)) if status.code == 409 => Self::read(api, namespace).await?.ok_or_else(|| {
                KeysError::Unusable { namespace: namespace.to_owned(), key: TOKEN_KEY, why: "gone again".into() }
            }),
            Err(source) => Err(KeysError::Create { namespace: namespace.to_owned(), source }),
        }
    }

    async fn read(api: &Api<Secret>, namespace: &str) -> Result<Option<Self>, KeysError> {
        let Some(secret) = api
            .get_opt(KEYS_SECRET)
            .await
            .map_err(|source| KeysError::Read { namespace: namespace.to_owned(), source })?
        else {
            return Ok(None);
        };
        let data = secret.data.unwrap_or_default();
        let value = |key: &'static str| {
            data.get(key).map(|v| v.0.clone()).ok_or_else(|| KeysError::Unusable {
                namespace: namespace.to_owned(),
                key,
                why: "missing".into(),
            })
        };
        let text = |key: &'static str| {
            value(key).and_then(|v| {
                String::from_utf8(v).map_err(|_| KeysError::Unusable {
                    namespace: namespace.to_owned(),
                    key,
                    why: "not text".into(),
                })
            })
        };
        Self::from_parts(&value(TOKEN_KEY)?, &text(CA_CERT)?, &text(CA_KEY)?)
            .map(Some)
            .map_err(|(key, why)| KeysError::Unusable { namespace: namespace.to_owned(), key, why })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn tokens_differ_per_cluster_and_survive_a_restart() {
        let (keys, secret) = ControllerKeys::generate().unwrap();
        let again = ControllerKeys::from_parts(&secret, &keys.ca.cert_pem(), &keys.ca.key_pem()).unwrap();
        let token = keys.token("shop", "orders");
        assert_eq!(token.len(), 64);
        assert_eq!(again.token("shop", "orders"), token, "the same Secret gives the same token");
        assert_ne!(keys.token("shop", "billing"), token);
        assert_ne!(keys.token("other", "orders"), token);
        let (other, _) = ControllerKeys::generate().unwrap();
        assert_ne!(other.token("shop", "orders"), token, "another key gives another token");
    }

    #[test]
    fn a_short_key_is_refused_with_what_is_wrong() {
        let (keys, _) = ControllerKeys::generate().unwrap();
        let err = ControllerKeys::from_parts(&[1; 16], &keys.ca.cert_pem(), &keys.ca.key_pem()).unwrap_err();
        assert_eq!(err, (TOKEN_KEY, "16 bytes, want 32".to_owned()));
    }

    #[test]
    fn the_serving_certificate_covers_every_pod_of_the_cluster() {
        let (keys, _) = ControllerKeys::generate().unwrap();
        let serving = keys.serving_certificate("shop", "orders").unwrap();
        let pem = serving.cert_pem;
        let der = stead_certs::pem::parse_certificates(pem.as_bytes(), "test").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der[0].as_ref()).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, vec!["DNSName(*.orders-headless.shop.svc)".to_owned()]);
        assert_eq!(ControllerKeys::server_name("shop", "orders"), "instance.orders-headless.shop.svc");
    }
}
