//! Shared types and pure admission rules of stead.
//!
//! Everything here is free of I/O so that the webhook, the controller (as a
//! guard when no webhook is installed) and the offline checker all judge a
//! `DatabaseCluster` with the very same code.

pub mod cluster;
pub mod crd;
pub mod defaults;
pub mod duration;
pub mod field_error;
pub mod image;
pub mod instance_api;
pub mod names;
pub mod quantity;
pub mod validation;

pub use cluster::{
    DatabaseCluster, DatabaseClusterSpec, DatabaseClusterStatus, Endpoints, InstanceReport, StorageSpec,
};
pub use field_error::{ErrorKind, FieldError, Verdict};
