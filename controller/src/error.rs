//! The controller's error type, how each error is retried, and how errors
//! read to a person.
//!
//! Every message here can reach a status condition, an event or a log line
//! that a person reads, so none carries Rust `Debug` output. An answer of the
//! API server is rendered from its Status (code, reason, message) by
//! [`describe`], a transport failure as a short sentence. Each message names
//! the object it is about and says what the user can do, the way kubectl's
//! `Error from server (Forbidden): …` does.

use std::time::Duration;

use kube::runtime::finalizer;
use stead_crds::names::{FINALIZER, MANAGED_BY};

use crate::status::{FOREIGN_CHILD, RECONCILE_FAILED};

/// Why one reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed; `action` says what was being done, e.g. `apply StatefulSet shop/orders`.
    #[error("{action} failed: {}; {}", describe(.source), remedy(.source))]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    /// Adding or removing the finalizer of `cluster` (`namespace/name`), or
    /// the apply/cleanup it wraps, failed.
    #[error("{}", finalizer_message(.cluster, .source))]
    Finalizer {
        cluster: String,
        #[source]
        source: Box<finalizer::Error<Error>>,
    },

    /// The cluster lacks metadata every stored object has (name, namespace, uid).
    #[error(
        "DatabaseCluster {object} has no {field}: the API server sets it on every object it stores, so this \
         object was not read from the API server; this is a bug in stead-controller, please report it with the \
         controller log"
    )]
    MissingMetadata { object: String, field: &'static str },

    /// An object with a child's name exists but is not controlled by this
    /// cluster: the user's own object, or one of another owner. stead never
    /// writes to an object it did not create.
    #[error(
        "{kind} {namespace}/{name} already exists and is not controlled by {owner_kind} {namespace}/{owner} \
         ({found}); stead-controller never changes an object it did not create, so it left it as it is. \
         To fix this, rename the {owner_kind}, or delete or rename {kind} {namespace}/{name}"
    )]
    ForeignChild {
        kind: &'static str,
        namespace: String,
        name: String,
        owner_kind: crate::apply::OwnerKind,
        owner: String,
        found: String,
    },

    /// The API server refused to grow a claim: 403 from the
    /// PersistentVolumeClaimResize admission plugin when the StorageClass does
    /// not allow expansion, 400 or 422 when the claim cannot be resized in its
    /// state.
    #[error(
        "PersistentVolumeClaim {namespace}/{claim} cannot grow from {from} to {to} (spec.storage.size): {}; \
         growing a volume needs a bound claim whose StorageClass sets allowVolumeExpansion: true",
        describe(.source)
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
    #[error(
        "create Secret {namespace}/{name} failed: {source}; stead-controller retries with backoff; if this \
         persists, check the random number source (getrandom) of the controller's node"
    )]
    Password {
        namespace: String,
        name: String,
        #[source]
        source: crate::credentials::RandomFailed,
    },

    /// The instance managers' certificate could not be issued.
    #[error(
        "could not issue the certificate of the instance managers of DatabaseCluster {cluster}: {why}; check the \
         controller's key Secret stead-controller-keys (delete it to have a new one made)"
    )]
    Keys { cluster: String, why: String },

    /// A cluster restored from a backup waits for that backup.
    #[error(
        "DatabaseCluster {cluster} cannot be restored yet: {why}; its StatefulSet is created once \
         spec.bootstrap.fromBackup names a Completed DatabaseBackup in the same namespace"
    )]
    RestorePending { cluster: String, why: String },

    /// An object could not be turned into JSON (a bug, never input); `what` names it.
    #[error(
        "could not turn {what} into JSON ({source}); this is a bug in stead-controller, please report it with \
         the controller log"
    )]
    Serialize {
        what: String,
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
            Self::Finalizer { source, .. } => match source.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.kind(),
                finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => kube_error_kind(e),
                finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => ErrorKind::Other,
            },
            Self::MissingMetadata { .. } | Self::ForeignChild { .. } => ErrorKind::Conflicting,
            Self::Serialize { .. } | Self::Password { .. } | Self::Keys { .. } | Self::RestorePending { .. } => {
                ErrorKind::Other
            }
        }
    }

    /// The `reason` of the Degraded condition (and of the event) that reports this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ForeignChild { .. } => FOREIGN_CHILD,
            Self::RestorePending { .. } => "RestorePending",
            Self::Finalizer { source, .. } => match source.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => RECONCILE_FAILED,
            },
            _ => RECONCILE_FAILED,
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

/// A kube error as a person reads it, without Rust `Debug` output.
///
/// An API answer reads `the API server refused (409 Conflict): <message>`
/// (`failed` for 5xx), with the Status's own message; a transport failure
/// reads `cannot reach the API server: <cause>`. kube's own `Display` of an
/// API error appends the whole Status in `Debug` form, so it is never used.
pub fn describe(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => describe_status(status),
        kube::Error::HyperError(e) => format!("cannot reach the API server: {}", chain(e)),
        kube::Error::Service(e) => format!("cannot reach the API server: {}", chain(e.as_ref())),
        kube::Error::SerdeError(e) => format!("the API server's answer could not be read ({e})"),
        kube::Error::Auth(e) => format!("cannot authenticate to the API server: {}", chain(e)),
        other => chain(other),
    }
}

fn describe_status(status: &kube::core::Status) -> String {
    let code = status.code;
    let canonical = || http::StatusCode::from_u16(code).ok().and_then(|c| c.canonical_reason()).unwrap_or("Unknown");
    // A machine-readable reason is one CamelCase word; kube fills in a sentence when
    // the answer was not a Status at all.
    let reason = match status.reason.as_str() {
        r if !r.is_empty() && !r.contains(char::is_whitespace) => r,
        _ => canonical(),
    };
    let verb = if code >= 500 { "failed" } else { "refused" };
    match status.message.trim() {
        "" => format!("the API server {verb} ({code} {reason})"),
        message => format!("the API server {verb} ({code} {reason}): {message}"),
    }
}

/// An error and its causes, each once: `a: b: c`.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let next = e.to_string();
        if !next.is_empty() && !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = e.source();
    }
    text
}

/// What the user can do about a failed API call, by how it is retried.
fn remedy(err: &kube::Error) -> &'static str {
    match kube_error_kind(err) {
        ErrorKind::Conflict => {
            "someone else changed the object at the same time; stead-controller retries with fresh data"
        }
        ErrorKind::Transient => {
            "the API server is unavailable or overloaded; stead-controller retries with backoff (check the API \
             server if this persists)"
        }
        ErrorKind::Forbidden => {
            "stead-controller is not allowed to do this: check its ClusterRole (manifests/rbac) and any admission \
             policy that refused the request; it retries every few minutes"
        }
        ErrorKind::Rejected => {
            "the API server refused what stead-controller sent: check the DatabaseCluster's spec against the \
             message above; stead-controller retries every few minutes"
        }
        ErrorKind::NotFound => "the object is gone; stead-controller retries and creates what it needs again",
        ErrorKind::Conflicting | ErrorKind::Other => "stead-controller retries with backoff; its log has the details",
    }
}

fn finalizer_message(cluster: &str, err: &finalizer::Error<Error>) -> String {
    match err {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.to_string(),
        finalizer::Error::AddFinalizer(e) => format!(
            "adding the finalizer {FINALIZER} to DatabaseCluster {cluster} failed: {}; {}",
            describe(e),
            remedy(e)
        ),
        finalizer::Error::RemoveFinalizer(e) => format!(
            "removing the finalizer {FINALIZER} from DatabaseCluster {cluster} failed: {}; the DatabaseCluster \
             stays in Terminating until this succeeds; {}",
            describe(e),
            remedy(e)
        ),
        finalizer::Error::UnnamedObject => format!(
            "DatabaseCluster {cluster} has no metadata.name, so its finalizer {FINALIZER} cannot be changed; this \
             is a bug in stead-controller, please report it with the controller log"
        ),
        finalizer::Error::InvalidFinalizer => format!(
            "the finalizer {FINALIZER} of DatabaseCluster {cluster} is not a valid JSON patch path; this is a bug \
             in stead-controller, please report it with the controller log"
        ),
    }
}

/// Says why the object found under a child's name is not ours, for [`Error::ForeignChild`].
pub fn foreign_owner(meta: &kube::api::ObjectMeta) -> String {
    let owner = match meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)) {
        None => "it has no controller".to_owned(),
        Some(o) => format!("its controller is {} {} with uid {}", o.kind, o.name, o.uid),
    };
    let labelled = meta.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/managed-by")).map(String::as_str)
        == Some(MANAGED_BY);
    if labelled { owner } else { format!("{owner}, and it lacks the label app.kubernetes.io/managed-by={MANAGED_BY}") }
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
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
    use kube::core::Status;

    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status { code, message: "boom".into(), ..Status::failure("boom", "x") }))
    }

    /// An API answer as kube-rs decodes it from a real server, `metadata` included.
    fn answer(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status {
            code,
            reason: reason.into(),
            message: message.into(),
            metadata: Some(ListMeta::default()),
            ..Status::failure(message, reason)
        }))
    }

    fn foreign() -> Error {
        Error::ForeignChild {
            kind: "Service",
            namespace: "shop".into(),
            name: "orders".into(),
            owner_kind: crate::apply::OwnerKind::DatabaseCluster,
            owner: "orders".into(),
            found: "it has no controller".into(),
        }
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
        let wrapped = Error::Finalizer {
            cluster: "shop/orders".into(),
            source: Box::new(finalizer::Error::ApplyFailed(Error::kube("apply", api(503)))),
        };
        assert_eq!(wrapped.kind(), ErrorKind::Transient);
        assert_eq!(foreign().kind(), ErrorKind::Conflicting);
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
    fn the_condition_reason_names_a_foreign_child_even_through_the_finalizer() {
        assert_eq!(foreign().reason(), "ForeignChild");
        let wrapped = Error::Finalizer {
            cluster: "shop/orders".into(),
            source: Box::new(finalizer::Error::ApplyFailed(foreign())),
        };
        assert_eq!(wrapped.reason(), "ForeignChild");
        assert_eq!(Error::kube("apply Service shop/orders", api(503)).reason(), "ReconcileFailed");
    }

    #[test]
    fn api_answers_read_like_kubectl() {
        let rows = [
            (
                answer(409, "Conflict", "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.ports"),
                "the API server refused (409 Conflict): Apply failed with 1 conflict: conflict with \"kubectl\": \
                 .spec.ports",
            ),
            (
                answer(503, "", "etcdserver: leader changed"),
                "the API server failed (503 Service Unavailable): etcdserver: leader changed",
            ),
            (answer(502, "Failed to parse error data", "<html>"), "the API server failed (502 Bad Gateway): <html>"),
            (answer(403, "Forbidden", ""), "the API server refused (403 Forbidden)"),
            (
                kube::Error::Service(Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "Connection refused (os error 111)",
                ))),
                "cannot reach the API server: Connection refused (os error 111)",
            ),
        ];
        for (err, want) in rows {
            assert_eq!(describe(&err), want);
        }
    }

    #[test]
    fn foreign_owner_says_what_was_found() {
        let mut meta = kube::api::ObjectMeta::default();
        assert_eq!(
            foreign_owner(&meta),
            "it has no controller, and it lacks the label app.kubernetes.io/managed-by=stead-controller"
        );
        meta.labels = Some([("app.kubernetes.io/managed-by".to_owned(), MANAGED_BY.to_owned())].into());
        meta.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        assert_eq!(foreign_owner(&meta), "its controller is Deployment web with uid u-1");
    }

    /// The name of each variant; exhaustive, so a new variant must be added here (and to the table).
    fn variant(err: &Error) -> &'static str {
        match err {
            Error::Kube { .. } => "Kube",
            Error::Finalizer { .. } => "Finalizer",
            Error::MissingMetadata { .. } => "MissingMetadata",
            Error::ForeignChild { .. } => "ForeignChild",
            Error::ExpansionRefused { .. } => "ExpansionRefused",
            Error::Password { .. } => "Password",
            Error::Serialize { .. } => "Serialize",
            Error::Keys { .. } => "Keys",
            Error::RestorePending { .. } => "RestorePending",
        }
    }

    #[test]
    fn every_error_reads_without_debug_output_and_names_the_object_and_a_fix() {
        use crate::status::{Outcome, compute_status};

        let conflict = || {
            answer(
                409,
                "Conflict",
                "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1: \
                 .spec.ports[name=\"web\"].port",
            )
        };
        let unreachable = || {
            kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "tcp connect error: Connection refused (os error 111)",
            )))
        };
        let garbled = || kube::Error::SerdeError(serde_json::from_str::<serde_json::Value>("{").unwrap_err());
        let finalizer = |source| Error::Finalizer { cluster: "shop/orders".into(), source: Box::new(source) };
        // (error, the object it must name, the fix it must offer)
        let rows = [
            (
                Error::kube("apply StatefulSet shop/orders", conflict()),
                "StatefulSet shop/orders",
                "retries with fresh data",
            ),
            (
                Error::kube(
                    "create Service shop/orders",
                    answer(403, "Forbidden", "services is forbidden: User \"stead\""),
                ),
                "Service shop/orders",
                "check its ClusterRole (manifests/rbac)",
            ),
            (
                Error::kube(
                    "apply StatefulSet shop/orders",
                    answer(422, "Invalid", "spec.replicas: Invalid value: -1"),
                ),
                "StatefulSet shop/orders",
                "check the DatabaseCluster's spec",
            ),
            (
                Error::kube("write status of DatabaseCluster shop/orders", unreachable()),
                "DatabaseCluster shop/orders",
                "retries with backoff",
            ),
            (Error::kube("create Service shop/orders", garbled()), "Service shop/orders", "retries with backoff"),
            (
                Error::kube("look up Service shop/orders", answer(404, "NotFound", "the server could not find it")),
                "Service shop/orders",
                "creates what it needs again",
            ),
            (finalizer(finalizer::Error::AddFinalizer(conflict())), "DatabaseCluster shop/orders", "retries"),
            (
                finalizer(finalizer::Error::RemoveFinalizer(answer(503, "ServiceUnavailable", "etcd is down"))),
                "DatabaseCluster shop/orders",
                "retries with backoff",
            ),
            (finalizer(finalizer::Error::ApplyFailed(foreign())), "Service shop/orders", "rename the DatabaseCluster"),
            (
                finalizer(finalizer::Error::CleanupFailed(Error::kube(
                    "publish an event about DatabaseCluster shop/orders",
                    unreachable(),
                ))),
                "DatabaseCluster shop/orders",
                "retries with backoff",
            ),
            (finalizer(finalizer::Error::UnnamedObject), "DatabaseCluster shop/orders", "please report it"),
            (finalizer(finalizer::Error::InvalidFinalizer), "DatabaseCluster shop/orders", "please report it"),
            (
                Error::MissingMetadata { object: "shop/orders".into(), field: "metadata.uid" },
                "DatabaseCluster shop/orders",
                "please report it",
            ),
            (foreign(), "Service shop/orders", "rename the DatabaseCluster, or delete or rename Service shop/orders"),
            (
                Error::ExpansionRefused {
                    namespace: "shop".into(),
                    claim: "data-orders-0".into(),
                    from: "10Gi".into(),
                    to: "20Gi".into(),
                    source: Box::new(answer(403, "Forbidden", "only dynamically provisioned pvc can be resized")),
                },
                "PersistentVolumeClaim shop/data-orders-0",
                "StorageClass sets allowVolumeExpansion: true",
            ),
            (
                Error::Keys { cluster: "shop/orders".into(), why: "the CA key is not a key".into() },
                "DatabaseCluster shop/orders",
                "delete it to have a new one made",
            ),
            (
                Error::RestorePending {
                    cluster: "shop/orders".into(),
                    why: "DatabaseBackup shop/nightly is Running, not Completed".into(),
                },
                "DatabaseCluster shop/orders",
                "names a Completed DatabaseBackup",
            ),
            (
                Error::Password {
                    namespace: "shop".into(),
                    name: "orders-credentials".into(),
                    source: crate::credentials::RandomFailed,
                },
                "Secret shop/orders-credentials",
                "retries with backoff",
            ),
            (
                Error::Serialize {
                    what: "the cached StatefulSet shop/orders".into(),
                    source: serde_json::from_str::<i32>("x").unwrap_err(),
                },
                "StatefulSet shop/orders",
                "please report it",
            ),
        ];
        let mut cluster = stead_crds::DatabaseCluster::new("orders", stead_crds::DatabaseClusterSpec::default());
        cluster.metadata.namespace = Some("shop".into());
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let mut covered = std::collections::BTreeSet::new();
        for (err, object, fix) in rows {
            covered.insert(variant(&err));
            let status = compute_status(&cluster, None, Outcome::Failed(&err), now, None, None);
            let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
            let message = &degraded.message;
            assert_eq!(degraded.status, "True", "{message}");
            for marker in ["Status {", "Some(", "None", "ListMeta", "{ ", "ApiError", "Error {", "kind: "] {
                assert!(!message.contains(marker), "Debug output ({marker:?}) in: {message}");
            }
            assert!(message.contains(object), "does not name {object}: {message}");
            assert!(message.contains(fix), "does not say {fix:?}: {message}");
        }
        let all = [
            "ExpansionRefused",
            "Finalizer",
            "ForeignChild",
            "Keys",
            "Kube",
            "MissingMetadata",
            "Password",
            "RestorePending",
            "Serialize",
        ];
        assert_eq!(covered.into_iter().collect::<Vec<_>>(), all, "every variant has a row");
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
