//! The controller's error type and how each error is retried.

use std::time::Duration;

/// Why one reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed; `action` says what was being done, e.g. `apply StatefulSet shop/orders`.
    #[error("{action} failed: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    /// Adding or removing the finalizer, or the wrapped apply/cleanup, failed.
    #[error("finalizer {name}: {0}", name = stead_crds::names::FINALIZER)]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// The cluster lacks metadata every stored object has (name, namespace, uid).
    #[error("DatabaseCluster is missing {field}; the API server always sets it, so the object was not read from it")]
    MissingMetadata { field: &'static str },

    /// A child with our name exists but is controlled by someone else; we never take it over.
    #[error(
        "{kind} {namespace}/{name} already exists and is not controlled by this DatabaseCluster ({owner}); \
         rename or delete it so that stead can manage it"
    )]
    ChildConflict { kind: &'static str, namespace: String, name: String, owner: String },

    /// A child with our name exists outside our caches (it lacks our
    /// managed-by label), and a non-forced apply found fields another
    /// manager set: we never take such an object over.
    #[error(
        "{kind} {namespace}/{name} already exists but was not created by stead-controller (it lacks the label \
         app.kubernetes.io/managed-by={managed_by}), and applying would overwrite fields another manager set: \
         {source}; rename or delete it so that stead can manage it",
        managed_by = stead_crds::names::MANAGED_BY
    )]
    ForeignChild {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// The API server refused to grow a claim: 403 from the
    /// PersistentVolumeClaimResize admission plugin when the StorageClass does
    /// not allow expansion, 400 or 422 when the claim cannot be resized in its
    /// state.
    #[error(
        "PersistentVolumeClaim {namespace}/{claim} cannot grow from {from} to {to} (spec.storage.size): {source}; \
         growing a volume needs a bound claim whose StorageClass sets allowVolumeExpansion: true"
    )]
    ExpansionRefused {
        namespace: String,
        claim: String,
        from: String,
        to: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// No password could be generated, so the credentials Secret was not created.
    #[error("create Secret {namespace}/{name} failed: {source}")]
    Password {
        namespace: String,
        name: String,
        #[source]
        source: crate::credentials::RandomFailed,
    },

    /// A desired object could not be turned into JSON (a bug, never input).
    #[error("could not serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// How an error is retried; also the `kind` label of `stead_controller_reconcile_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 409: someone else wrote the object in the meantime; retry soon.
    Conflict,
    /// 5xx, 429, timeouts, connection errors: the API server will recover.
    Transient,
    /// 403: RBAC is missing; retrying helps only once someone fixes it.
    Forbidden,
    /// 422/400: the API server refuses what we sent.
    Rejected,
    /// 404 of something we needed.
    NotFound,
    /// Our own objects are not what we expect (foreign child, missing metadata).
    Conflicting,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Transient => "transient",
            Self::Forbidden => "forbidden",
            Self::Rejected => "rejected",
            Self::NotFound => "not_found",
            Self::Conflicting => "child_conflict",
            Self::Other => "other",
        }
    }

    /// Longest wait between retries: transient trouble is retried at least twice a minute.
    pub fn max_backoff(self) -> Duration {
        match self {
            Self::Conflict | Self::Transient => Duration::from_secs(30),
            _ => Duration::from_secs(300),
        }
    }
}

impl Error {
    /// Wraps a kube error with what was being attempted.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube { action: action.into(), source }
    }

    /// Classifies the error for metrics and retry policy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Kube { source, .. } => kube_error_kind(source),
            Self::ExpansionRefused { source, .. } => kube_error_kind(source),
            Self::ForeignChild { .. } => ErrorKind::Conflicting,
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.kind()
                }
                kube::runtime::finalizer::Error::AddFinalizer(e)
                | kube::runtime::finalizer::Error::RemoveFinalizer(e) => kube_error_kind(e),
                _ => ErrorKind::Other,
            },
            Self::MissingMetadata { .. } | Self::ChildConflict { .. } => ErrorKind::Conflicting,
            Self::Serialize { .. } | Self::Password { .. } => ErrorKind::Other,
        }
    }

    /// Whether the error only says the object is gone (then there is nothing left to do).
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }
}

/// Whether a kube error is an API answer with one of `codes`.
pub fn has_code(err: &kube::Error, codes: &[u16]) -> bool {
    matches!(err, kube::Error::Api(status) if codes.contains(&status.code))
}

/// Whether a kube error is a 404 from the API server.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

fn kube_error_kind(err: &kube::Error) -> ErrorKind {
    match err {
        kube::Error::Api(status) => match status.code {
            409 => ErrorKind::Conflict,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            400 | 422 => ErrorKind::Rejected,
            429 | 500..=599 => ErrorKind::Transient,
            _ => ErrorKind::Other,
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

/// Delay before retry number `failures` (1-based): 1s, 2s, 4s, … capped per error kind.
pub fn backoff(failures: u32, kind: ErrorKind) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(kind.max_backoff())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: "boom".into(),
            ..kube::core::Status::failure("boom", "x")
        }))
    }

    #[test]
    fn classification_table() {
        let rows = [
            (409, ErrorKind::Conflict),
            (403, ErrorKind::Forbidden),
            (404, ErrorKind::NotFound),
            (422, ErrorKind::Rejected),
            (400, ErrorKind::Rejected),
            (429, ErrorKind::Transient),
            (500, ErrorKind::Transient),
            (503, ErrorKind::Transient),
            (418, ErrorKind::Other),
        ];
        for (code, want) in rows {
            assert_eq!(Error::kube("x", api(code)).kind(), want, "{code}");
        }
        let wrapped =
            Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(Error::kube("apply", api(503)))));
        assert_eq!(wrapped.kind(), ErrorKind::Transient);
        let foreign = Error::ForeignChild {
            kind: "Service",
            namespace: "shop".into(),
            name: "orders".into(),
            source: Box::new(api(409)),
        };
        assert_eq!(foreign.kind(), ErrorKind::Conflicting);
        let refused = |code| Error::ExpansionRefused {
            namespace: "shop".into(),
            claim: "data-orders-0".into(),
            from: "10Gi".into(),
            to: "20Gi".into(),
            source: Box::new(api(code)),
        };
        assert_eq!(refused(403).kind(), ErrorKind::Forbidden);
        assert_eq!(refused(422).kind(), ErrorKind::Rejected);
        assert!(has_code(&api(403), &[403, 422]));
        assert!(!has_code(&api(500), &[403, 422]));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs = |n, k| backoff(n, k).as_secs();
        assert_eq!([1, 2, 3, 4, 5, 6].map(|n| secs(n, ErrorKind::Transient)), [1, 2, 4, 8, 16, 30]);
        assert_eq!(secs(9, ErrorKind::Forbidden), 256);
        assert_eq!(secs(10, ErrorKind::Forbidden), 300);
        assert_eq!(secs(u32::MAX, ErrorKind::Rejected), 300);
        assert_eq!(secs(0, ErrorKind::Conflict), 1);
    }
}
