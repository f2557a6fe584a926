//! Who may talk to the test API server, and how: static bearer tokens, the
//! kubeconfigs that carry them, and the service-account signing key.
//!
//! Two users: `admin`, in `system:masters` (RBAC's superuser group, as
//! envtest's admin), drives kubectl; `stead-controller` is the controller's
//! own identity, in no group, bound only to the ClusterRole that
//! `manifests/rbac` ships, so the suite proves that RBAC is enough and the
//! audit log can count exactly the controller's requests.

use std::path::Path;

use anyhow::{Context, anyhow};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;

/// The user kubectl acts as.
pub const ADMIN_USER: &str = "admin";
/// The user the controller acts as.
pub const CONTROLLER_USER: &str = "stead-controller";
/// RBAC's built-in superuser group.
pub const MASTERS_GROUP: &str = "system:masters";
/// Name of the cluster and context in generated kubeconfigs.
const CLUSTER_NAME: &str = "stead-e2e";

/// One line of the API server's `--token-auth-file`.
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub token: String,
    pub name: String,
    pub groups: Vec<String>,
}

impl TokenUser {
    /// A user with a fresh random token, in `system:masters`.
    pub fn superuser(name: &str) -> anyhow::Result<Self> {
        Ok(Self { token: random_token()?, name: name.to_owned(), groups: vec![MASTERS_GROUP.to_owned()] })
    }

    /// A user with a fresh random token and no group: it may do only what RBAC bindings grant it.
    pub fn unprivileged(name: &str) -> anyhow::Result<Self> {
        Ok(Self { token: random_token()?, name: name.to_owned(), groups: Vec::new() })
    }
}

/// 32 random hex characters.
pub fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow!("the system random number generator failed"))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The CSV the API server reads with `--token-auth-file`:
/// `token,user,uid,"group1,group2"` per line (the uid is the user name). The
/// groups column is left out for a user without groups: the API server would
/// read `""` as one group with an empty name.
pub fn token_file(users: &[TokenUser]) -> String {
    users
        .iter()
        .map(|user| match user.groups.as_slice() {
            [] => format!("{},{},{}\n", user.token, user.name, user.name),
            groups => format!("{},{},{},\"{}\"\n", user.token, user.name, user.name, groups.join(",")),
        })
        .collect()
}

/// A kubeconfig (JSON, which kubectl and kube-rs read like YAML) for `server`,
/// trusting the CA in `ca_file`, authenticating with `token`.
pub fn kubeconfig(server: &str, ca_file: &Path, user: &str, token: &str) -> anyhow::Result<String> {
    let ca_file = ca_file.to_str().with_context(|| format!("the CA path {} is not UTF-8", ca_file.display()))?;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CLUSTER_NAME,
            "cluster": {"server": server, "certificate-authority": ca_file}
        }],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{
            "name": CLUSTER_NAME,
            "context": {"cluster": CLUSTER_NAME, "user": user, "namespace": "default"}
        }],
        "current-context": CLUSTER_NAME,
        "preferences": {}
    });
    Ok(format!("{config:#}\n"))
}

/// The key pair service-account tokens are signed with (ECDSA P-256).
#[derive(Debug)]
pub struct SigningKey {
    /// PKCS#8 PEM: `--service-account-signing-key-file` (and the controller
    /// manager's `--service-account-private-key-file`).
    pub private_pem: String,
    /// SubjectPublicKeyInfo PEM: `--service-account-key-file`.
    pub public_pem: String,
}

/// A fresh service-account signing key.
pub fn service_account_key() -> anyhow::Result<SigningKey> {
    let key = rcgen::KeyPair::generate().context("generating the service-account signing key")?;
    Ok(SigningKey { private_pem: key.serialize_pem(), public_pem: key.public_key_pem() })
}

/// Standard base64 (what `caBundle` holds).
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::Value;

    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn token_file_has_one_csv_line_per_user() {
        let users = [
            TokenUser {
                token: "t0k3n".to_owned(),
                name: ADMIN_USER.to_owned(),
                groups: vec![MASTERS_GROUP.to_owned()],
            },
            TokenUser {
                token: "other".to_owned(),
                name: CONTROLLER_USER.to_owned(),
                groups: vec![MASTERS_GROUP.to_owned(), "stead".to_owned()],
            },
        ];
        assert_eq!(
            token_file(&users),
            "t0k3n,admin,admin,\"system:masters\"\n\
             other,stead-controller,stead-controller,\"system:masters,stead\"\n"
        );
    }

    #[test]
    fn a_user_without_groups_has_no_groups_column() {
        let user = TokenUser::unprivileged(CONTROLLER_USER).unwrap();
        assert!(user.groups.is_empty());
        assert_eq!(
            token_file(std::slice::from_ref(&user)),
            format!("{},stead-controller,stead-controller\n", user.token)
        );
    }

    #[test]
    fn superusers_are_masters() {
        let user = TokenUser::superuser(CONTROLLER_USER).unwrap();
        assert_eq!(user.groups, [MASTERS_GROUP]);
        assert_eq!(user.name, CONTROLLER_USER);
    }

    #[test]
    fn kubeconfig_points_at_the_server_with_the_token_and_ca() {
        let text =
            kubeconfig("https://127.0.0.1:41234", Path::new("/tmp/e2e/pki/ca.crt"), ADMIN_USER, "s3cret").unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(config["kind"], "Config");
        assert_eq!(config["current-context"], "stead-e2e");
        assert_eq!(config["clusters"][0]["cluster"]["server"], "https://127.0.0.1:41234");
        assert_eq!(config["clusters"][0]["cluster"]["certificate-authority"], "/tmp/e2e/pki/ca.crt");
        assert_eq!(config["users"][0]["name"], ADMIN_USER);
        assert_eq!(config["users"][0]["user"]["token"], "s3cret");
        assert_eq!(config["contexts"][0]["context"]["user"], ADMIN_USER);
        assert_eq!(config["contexts"][0]["context"]["cluster"], "stead-e2e");
    }

    #[test]
    fn signing_key_exports_both_halves_as_pem() {
        let key = service_account_key().unwrap();
        assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(key.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        // The public half parses back and matches the private key.
        let pair = rcgen::KeyPair::from_pem(&key.private_pem).unwrap();
        assert_eq!(pair.public_key_pem(), key.public_pem);
    }

    #[test]
    fn base64_is_standard_with_padding() {
        assert_eq!(base64(b"ca"), "Y2E=");
        assert_eq!(base64(b""), "");
    }
}
