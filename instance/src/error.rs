//! The one error type of the library.
//!
//! Every message says what failed and, where there is something to do, what
//! to do; the API answers with exactly this text (never Debug output). As in
//! stead-certs, the cause's text is part of the message and is not exposed as
//! `source()`, so chain printers do not repeat it.

use std::path::PathBuf;
use std::time::Duration;

use crate::conf::ConfError;
use crate::process::{Exit, RunError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting (flag or environment variable) is unusable.
    #[error("{setting}: {reason}")]
    Setting { setting: &'static str, reason: String },

    #[error("{0}")]
    Conf(#[from] ConfError),

    /// A key of the credentials Secret is missing or empty.
    #[error(
        "cannot read the {key} key of the credentials Secret ({}): {reason}; \
         the Secret mounted at STEAD_SECRET_DIR must have it",
        path.display()
    )]
    Secret { key: &'static str, path: PathBuf, reason: String },

    /// A file operation failed.
    #[error("cannot {action} {}: {cause}", path.display())]
    Io { action: &'static str, path: PathBuf, cause: std::io::Error },

    /// A PostgreSQL program ran and failed.
    #[error("{program} failed ({exit}): {output}")]
    Tool { program: &'static str, exit: Exit, output: String },

    /// A PostgreSQL program could not run to its end.
    #[error("{0}")]
    Run(#[from] RunError),

    /// A query to the local postgres failed.
    #[error("cannot {action}: {reason}")]
    Postgres { action: &'static str, reason: String },

    /// The request contradicts the instance's state; nothing was changed.
    #[error("{0}")]
    Conflict(String),

    /// The request names something that is not there (a backup that is not running).
    #[error("{0}")]
    NotFound(String),

    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),

    /// The postmaster could not be started or stopped.
    #[error("{0}")]
    Postmaster(String),

    /// Waited too long.
    #[error("{what} did not happen within {}s", after.as_secs())]
    Timeout { what: &'static str, after: Duration },

    /// The manager is shutting down and accepts no operation.
    #[error("the instance manager is shutting down; no operation is accepted")]
    ShuttingDown,

    /// The serving certificate could not be made.
    #[error("cannot create the API's serving certificate: {0}")]
    Certificate(#[from] stead_certs::CertError),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { action, path, cause }
    }
}
