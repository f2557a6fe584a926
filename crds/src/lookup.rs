//! The few facts admission needs from the API server, as a trait.
//!
//! Two rules cannot be judged from the request alone: a DatabaseBackup whose
//! `spec.cluster` names no DatabaseCluster (a warning), and a cluster
//! restored `fromBackup` a backup that is not Completed or is too large (a
//! refusal). Each needs one GET by name, and only on CREATE, so the webhook
//! never LISTs and never reads for the common requests.
//!
//! The rules take a [`Lookup`] and stay pure: the tests answer from a table,
//! the webhook answers from a kube client (fetched before the rules run, see
//! [`Query`]), and the offline checker answers [`Found::Skipped`]. A lookup
//! that fails (API unreachable, timeout) answers [`Found::Unknown`]: the
//! rules then admit with a warning (fail open), since a backup or a restore
//! must not depend on the webhook reaching the API server.
//!
//! A third fact is read from a cache instead of a GET: the other Apps of a
//! namespace that claim an Ingress host ([`Lookup::apps_claiming`]). The
//! webhook answers it from its own watch of Apps; while that cache is not
//! synced, or without one, the App is admitted with a warning.

use crate::app::App;
use crate::backup::DatabaseBackup;

/// The answer to one lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum Found<T> {
    /// It exists.
    Yes(T),
    /// The API server says it does not exist.
    No,
    /// The lookup was tried and failed; why, for the warning.
    Unknown(String),
    /// Nothing was looked up (offline check); the rule is skipped silently.
    Skipped,
}

/// The reads admission may make.
pub trait Lookup {
    /// Whether the DatabaseCluster `namespace/name` exists.
    fn cluster_exists(&self, namespace: &str, name: &str) -> Found<()>;
    /// The DatabaseBackup `namespace/name`.
    fn backup(&self, namespace: &str, name: &str) -> Found<DatabaseBackup>;
    /// The Apps of `namespace` whose `spec.ingress.host` is `host` (the one
    /// asked about may be among them); `Yes` with none when no App claims it.
    fn apps_claiming(&self, _namespace: &str, _host: &str) -> Found<Vec<App>> {
        Found::Skipped
    }
}

/// One read a request needs, computed before the rules run so that an
/// asynchronous client can fetch it and answer with [`Answers`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Query {
    Cluster {
        namespace: String,
        name: String,
    },
    Backup {
        namespace: String,
        name: String,
    },
    /// The Apps of `namespace` whose Ingress claims `host`, read from a cache.
    AppsClaiming {
        namespace: String,
        host: String,
    },
}

/// Answers known in advance; a question not in the table is `otherwise`.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    clusters: Vec<(String, String, Found<()>)>,
    backups: Vec<(String, String, Found<DatabaseBackup>)>,
    apps: Vec<(String, String, Found<Vec<App>>)>,
    otherwise: Found<()>,
}

impl Answers {
    /// No answers yet; unlisted questions are `otherwise` (`Skipped` or `Unknown`).
    pub fn new(otherwise: Found<()>) -> Self {
        Self { clusters: Vec::new(), backups: Vec::new(), apps: Vec::new(), otherwise }
    }

    /// Offline: every lookup is skipped.
    pub fn skipped() -> Self {
        Self::new(Found::Skipped)
    }

    /// Every lookup failed for `reason`.
    pub fn unknown(reason: impl Into<String>) -> Self {
        Self::new(Found::Unknown(reason.into()))
    }

    pub fn with_cluster(mut self, namespace: &str, name: &str, found: Found<()>) -> Self {
        self.clusters.push((namespace.to_owned(), name.to_owned(), found));
        self
    }

    pub fn with_backup(mut self, namespace: &str, name: &str, found: Found<DatabaseBackup>) -> Self {
        self.backups.push((namespace.to_owned(), name.to_owned(), found));
        self
    }

    /// The Apps of `namespace` claiming `host`, as answered by the App cache.
    pub fn with_apps_claiming(mut self, namespace: &str, host: &str, found: Found<Vec<App>>) -> Self {
        self.apps.push((namespace.to_owned(), host.to_owned(), found));
        self
    }

    /// Every GET answer, for counting outcomes: (kind, found / not found / failed / skipped).
    pub fn outcomes(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        let cluster = self.clusters.iter().map(|(_, _, f)| (crate::cluster::KIND, outcome(f)));
        let backup = self.backups.iter().map(|(_, _, f)| (crate::backup::KIND, outcome(f)));
        cluster.chain(backup)
    }

    fn otherwise<T>(&self) -> Found<T> {
        match &self.otherwise {
            Found::Unknown(reason) => Found::Unknown(reason.clone()),
            Found::No => Found::No,
            Found::Yes(()) | Found::Skipped => Found::Skipped,
        }
    }
}

/// The metric label of an answer.
pub fn outcome<T>(found: &Found<T>) -> &'static str {
    match found {
        Found::Yes(_) => "found",
        Found::No => "not_found",
        Found::Unknown(_) => "failed",
        Found::Skipped => "skipped",
    }
}

impl Lookup for Answers {
    fn cluster_exists(&self, namespace: &str, name: &str) -> Found<()> {
        self.clusters
            .iter()
            .find(|(ns, n, _)| ns == namespace && n == name)
            .map_or_else(|| self.otherwise(), |(_, _, found)| found.clone())
    }

    fn backup(&self, namespace: &str, name: &str) -> Found<DatabaseBackup> {
        self.backups
            .iter()
            .find(|(ns, n, _)| ns == namespace && n == name)
            .map_or_else(|| self.otherwise(), |(_, _, found)| found.clone())
    }

    fn apps_claiming(&self, namespace: &str, host: &str) -> Found<Vec<App>> {
        self.apps
            .iter()
            .find(|(ns, h, _)| ns == namespace && h.eq_ignore_ascii_case(host))
            .map_or_else(|| self.otherwise(), |(_, _, found)| found.clone())
    }
}
