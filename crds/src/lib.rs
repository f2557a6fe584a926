//! Shared types and pure admission rules of stead.
//!
//! Everything here is free of I/O so that the webhook, the controller (as a
//! guard when no webhook is installed) and the offline checker all judge a
//! `DatabaseCluster`, a `DatabaseBackup` or an `App` with the very same code.
//! The rules that need to read the API (does the backed-up cluster exist, is
//! the restored backup complete, does another App claim this Ingress route)
//! take a [`lookup::Lookup`], so they stay pure too.
//!
//! - [`cluster`], [`backup`], [`app`]: the API types; [`crd`]: their CRDs.
//! - [`validation`], [`backup_validation`], [`app_validation`]: the admission
//!   rules; [`defaults`]: defaulting (and the patch builder every kind uses).
//! - [`schedule`]: 5-field cron in an IANA time zone; [`duration`], [`quantity`]: units.

pub mod app;
pub mod app_validation;
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

pub use app::{App, AppIngressSpec, AppIngressTls, AppServiceSpec, AppSpec, AppStatus};
pub use backup::{DatabaseBackup, DatabaseBackupSpec, DatabaseBackupStatus};
pub use cluster::{
    DatabaseCluster, DatabaseClusterSpec, DatabaseClusterStatus, Endpoints, InstanceReport, StorageSpec,
};
pub use field_error::{ErrorKind, FieldError, Verdict};
