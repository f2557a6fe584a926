//! stead's admission webhook: defaulting and validation of `DatabaseCluster`
//! over HTTPS, and the same decision offline for GitOps pipelines.
//!
//! - [`review`]: AdmissionReview in, AdmissionReview out (pure).
//! - [`server`]: the HTTPS and metrics servers around it.
//! - [`check`]: `stead-webhook check`, the offline run over manifests.
//! - [`metrics`]: what `/metrics` exports.
//! - [`cli`]: flags and subcommands.

pub mod check;
pub mod cli;
pub mod metrics;
pub mod review;
pub mod server;
