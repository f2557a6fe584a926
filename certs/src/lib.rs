//! Certificates for stead's admission webhook.
//!
//! - [`generate`]: a development CA and serving certificates (rcgen), for
//!   tests, the demo and e2e runs where cert-manager is absent.
//! - [`bundle`]: the `ca.crt` / `tls.crt` / `tls.key` directory layout,
//!   written atomically.
//! - [`reload`]: [`ReloadingCertResolver`], which serves the pair currently in
//!   that directory and swaps in a new one without dropping connections.
//! - [`tls`]: the rustls server and client configurations built on it.
//! - [`issue`]: the `stead-certs` command's workflow (reuse or create the CA,
//!   issue, write).
//!
//! Everything is re-exported here; use `stead_certs::Name`.

pub mod bundle;
pub mod error;
pub mod generate;
pub mod issue;
pub mod pem;
pub mod reload;
pub mod tls;

pub use bundle::{CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE, load_ca, write_bundle, write_ca_key};
pub use error::CertError;
pub use generate::{CertificateAuthority, MAX_VALIDITY_DAYS, ServingCertificate};
pub use issue::{IssueRequest, Issued, issue_into};
pub use reload::{DEFAULT_POLL_INTERVAL, MIN_POLL_INTERVAL, ReloadingCertResolver};
pub use tls::{
    ALPN_H2, ALPN_HTTP1, PROTOCOL_VERSIONS, client_config, client_config_with_versions, crypto_provider, root_store,
    server_config,
};
