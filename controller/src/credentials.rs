//! The Secret with the database superuser's credentials.
//!
//! The official postgres image refuses to initialise without a password. The
//! controller creates `<name>-credentials` once, with a random password, and
//! never reads or rewrites it: RBAC grants it `create` on Secrets and nothing
//! else. The Secret has no ownerReference, so like the volumes it outlives the
//! cluster; a cluster recreated on the retained data finds the password that
//! data was initialised with. A user brings their own by creating the Secret
//! before the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use ring::rand::{SecureRandom, SystemRandom};
use stead_certs::ServingCertificate;
use stead_crds::names::{
    CONTROLLER_TOKEN_KEY, DEFAULT_SUPERUSER, PASSWORD_KEY, REPLICATION_PASSWORD_KEY, USERNAME_KEY, child_labels,
    credentials_secret_name,
};

use crate::children::ClusterView;

/// Secret type whose `username` and `password` keys tools understand.
pub const SECRET_TYPE: &str = "kubernetes.io/basic-auth";
/// The superuser of the official postgres image.
pub const USERNAME: &str = DEFAULT_SUPERUSER;
/// Length of a generated password: 32 characters of 62 carry about 190 bits.
pub const PASSWORD_LEN: usize = 32;

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The system's random source failed; nothing was created.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed; no password was generated")]
pub struct RandomFailed;

/// A password of [`PASSWORD_LEN`] characters from `[A-Za-z0-9]`.
pub fn generate_password(rng: &dyn SecureRandom) -> Result<String, RandomFailed> {
    let mut password = String::with_capacity(PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while password.len() < PASSWORD_LEN {
        rng.fill(&mut buf).map_err(|_| RandomFailed)?;
        extend_unbiased(&mut password, &buf);
    }
    Ok(password)
}

/// Appends a character per usable byte until the password is long enough.
///
/// Bytes at or above 248 (4 × 62) are dropped, so every character is
/// equally likely; about 3% of the bytes are wasted.
fn extend_unbiased(password: &mut String, bytes: &[u8]) {
    let limit = ALPHABET.len() * (256 / ALPHABET.len());
    for b in bytes.iter().map(|b| usize::from(*b)).filter(|b| *b < limit) {
        if password.len() >= PASSWORD_LEN {
            return;
        }
        password.push(char::from(ALPHABET[b % ALPHABET.len()]));
    }
}

/// A password from the operating system's random source.
pub fn system_password() -> Result<String, RandomFailed> {
    generate_password(&SystemRandom::new())
}

/// What goes into a new credentials Secret besides the user name.
#[derive(Clone)]
pub struct Credentials {
    /// The superuser's password.
    pub password: String,
    /// The password of the replication role `streaming_replica`.
    pub replication_password: String,
    /// The bearer token the instance managers accept from the controller.
    pub controller_token: String,
    /// The instance managers' serving certificate and key, and the CA that signed it.
    pub serving: ServingCertificate,
    pub ca_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// Key of the instance managers' certificate, key and CA in the Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const CA_KEY: &str = "ca.crt";

/// The Secret to create for `view`; no ownerReference.
pub fn credentials_secret(view: &ClusterView, credentials: Credentials) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(credentials_secret_name(&view.name)),
            namespace: Some(view.namespace.clone()),
            labels: Some(child_labels(&view.name)),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        string_data: Some(BTreeMap::from([
            (USERNAME_KEY.to_owned(), USERNAME.to_owned()),
            (PASSWORD_KEY.to_owned(), credentials.password),
            (REPLICATION_PASSWORD_KEY.to_owned(), credentials.replication_password),
            (CONTROLLER_TOKEN_KEY.to_owned(), credentials.controller_token),
            (TLS_CERT_KEY.to_owned(), credentials.serving.cert_pem),
            (TLS_KEY_KEY.to_owned(), credentials.serving.key_pem),
            (CA_KEY.to_owned(), credentials.ca_pem),
        ])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;
    use stead_crds::{DatabaseCluster, DatabaseClusterSpec};

    use super::*;

    #[test]
    fn passwords_are_32_alphanumerics_and_differ() {
        let a = system_password().unwrap();
        let b = system_password().unwrap();
        for p in [&a, &b] {
            assert_eq!(p.len(), PASSWORD_LEN);
            assert!(p.bytes().all(|c| c.is_ascii_alphanumeric()), "{p}");
        }
        assert_ne!(a, b);
    }

    #[test]
    fn biased_bytes_are_skipped() {
        // 0 → 'A', 61 → '9', 62 → 'A' again; 248..=255 would favour the first letters and are dropped.
        let mut password = String::new();
        extend_unbiased(&mut password, &[0, 248, 61, 255, 62, 251, 247]);
        assert_eq!(password, "A9A9");
        // Never longer than asked, however many bytes come.
        extend_unbiased(&mut password, &[25; 100]);
        assert_eq!(password.len(), PASSWORD_LEN);
        assert!(password.ends_with("ZZZ"));
    }

    #[test]
    fn secret_is_basic_auth_labelled_and_unowned() {
        let mut c =
            DatabaseCluster::new("orders", DatabaseClusterSpec { image: "postgres:17.2".into(), ..Default::default() });
        c.metadata.namespace = Some("shop".into());
        c.metadata.uid = Some("uid-1".into());
        let view = ClusterView::new(&c).unwrap();
        let serving = stead_certs::ServingCertificate { cert_pem: "CERT".into(), key_pem: "KEY".into() };
        let credentials = Credentials {
            password: "p".repeat(PASSWORD_LEN),
            replication_password: "r".repeat(PASSWORD_LEN),
            controller_token: "t".repeat(64),
            serving,
            ca_pem: "CA".into(),
        };
        let secret = serde_json::to_value(credentials_secret(&view, credentials)).unwrap();
        assert_eq!(
            secret,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "orders-credentials",
                    "namespace": "shop",
                    "labels": child_labels("orders"),
                },
                "type": "kubernetes.io/basic-auth",
                "stringData": {
                    "username": "postgres",
                    "password": "p".repeat(PASSWORD_LEN),
                    "replication-password": "r".repeat(PASSWORD_LEN),
                    "controller-token": "t".repeat(64),
                    "tls.crt": "CERT",
                    "tls.key": "KEY",
                    "ca.crt": "CA",
                },
            })
        );
    }
}
