//! stead-controller: reconciles every `DatabaseCluster` into a headless
//! Service, a client Service, a StatefulSet and a PodDisruptionBudget, creates
//! its credentials Secret once, and reports what it sees in `.status`.
//!
//! Pure parts (`children`, `credentials`, `diff`, `managed_fields`, `status`, `storage`) are separate from the
//! parts that talk to the API server (`reconciler`, `controller`, `leader`).

pub mod app_children;
pub mod app_reconciler;
pub mod app_status;
pub mod apply;
pub mod backup_index;
pub mod backup_plan;
pub mod backups;
pub mod cached_children;
pub mod children;
pub mod cli;
pub mod context;
pub mod controller;
pub mod credentials;
pub mod diff;
pub mod error;
pub mod events;
pub mod failover;
pub mod http;
pub mod instances;
pub mod keys;
pub mod leader;
pub mod managed_fields;
pub mod metrics;
pub mod pod_problem;
pub mod reclone;
pub mod reconciler;
pub mod replication;
pub mod rollout;
pub mod status;
pub mod storage;
pub mod topology;
pub mod volume_snapshot;

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod reconciler_tests;
#[cfg(test)]
mod steady_state_tests;

pub use context::Context;
pub use error::Error;

#[cfg(test)]
mod replication_tests;
