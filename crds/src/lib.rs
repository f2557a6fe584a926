//! Shared types and pure admission rules of stead.
//!
//! Everything here is free of I/O so that the webhook, the controller (as a
//! guard when no webhook is installed) and the offline checker all judge a
//! `DatabaseCluster` or a `DatabaseBackup` with the very same code. The two
//! rules that need to read the API (does the backed-up cluster exist, is the
//! restored backup complete) take a [`lookup::Lookup`], so they stay pure too.
//!
//! - [`cluster`], [`backup`]: the API types; [`crd`]: their CRDs.
//! - [`validation`], [`backup_validation`]: the admission rules; [`defaults`]: defaulting.
//! - [`schedule`]: 5-field cron in an IANA time zone; [`duration`], [`quantity`]: units.

pub mod backup;
pub mod backup_validation;
pub mod cluster;
pub mod crd;
pub mod defaults;
pub mod duration;
pub mod field_error;
pub mod image;
pub mod instance_api;
pub mod lookup;
pub mod names;
pub mod quantity;
pub mod schedule;
pub mod validation;

pub use backup::{DatabaseBackup, DatabaseBackupSpec, DatabaseBackupStatus};
pub use cluster::{
    DatabaseCluster, DatabaseClusterSpec, DatabaseClusterStatus, Endpoints, InstanceReport, StorageSpec,
};
pub use field_error::{ErrorKind, FieldError, Verdict};
