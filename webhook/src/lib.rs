//! stead's admission webhook: defaulting and validation of `DatabaseCluster`,
//! `DatabaseBackup` and `App` over HTTPS, and the same decision offline for
//! GitOps pipelines.
//!
//! - [`review`]: AdmissionReview in, AdmissionReview out (pure).
//! - [`server`]: the HTTPS and metrics servers around it.
//! - [`check`]: `stead-webhook check`, the offline run over manifests.
//! - [`lookup`]: the API reads two rules need, fetched before they run.
//! - [`app_cache`]: the webhook's watch of Apps, for the Ingress route rule.
//! - [`client`]: HTTPS client for a running server (`check --server`, the demo).
//! - [`wire`]: the AdmissionReview answer as sent (base64 patch).
//! - [`metrics`]: what `/metrics` exports.
//! - [`cli`]: flags and subcommands.

pub mod app_cache;
pub mod check;
pub mod cli;
pub mod client;
pub mod lookup;
pub mod metrics;
pub mod review;
pub mod server;
pub mod wire;
