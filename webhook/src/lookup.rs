//! The API reads of admission, fetched before the pure rules run.
//!
//! [`crate::review::Parsed::queries`] says what a request needs (at most one
//! GET by name, on CREATE of a DatabaseBackup or of a cluster restored from
//! one); a [`Resolver`] fetches it into [`Answers`], which the rules read
//! through stead-crds' `Lookup`. Every GET has a short timeout, and a read
//! that fails answers `Unknown`: the request is admitted with a warning
//! (fail open) and the failure is counted in `stead_webhook_lookups_total`.
//!
//! The webhook gets a client only in a cluster (its ServiceAccount token) or
//! with `--kubeconfig`; without one (`make demo`), nothing is read and the
//! two rules say so in a warning.

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::Api;
use stead_crds::lookup::{Answers, Found, Query};
use stead_crds::{DatabaseBackup, DatabaseCluster};
use tracing::warn;

/// Longest wait for one GET; with the body and slot timeouts it stays inside
/// the webhook configurations' `timeoutSeconds: 5`.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why lookups were not made, for the warning of a server without a client.
pub const NO_API_ACCESS: &str =
    "stead-webhook runs without Kubernetes API access (not in a cluster and no --kubeconfig)";

/// Fetches the answers to a request's queries.
pub trait Resolver: Send + Sync {
    fn resolve<'a>(&'a self, queries: &'a [Query]) -> BoxFuture<'a, Answers>;
}

/// The resolver of a server: a kube client, GET by name.
#[derive(Clone)]
pub struct KubeResolver {
    client: kube::Client,
    timeout: Duration,
}

/// Why a client could not be built from an explicit `--kubeconfig`.
#[derive(Debug, thiserror::Error)]
pub enum LookupSetupError {
    #[error("cannot read --kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: kube::config::KubeconfigError },
    #[error("cannot build a Kubernetes client from --kubeconfig {path}: {source}")]
    Client { path: String, source: kube::Error },
}

impl KubeResolver {
    pub fn new(client: kube::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// The client, shared with the App cache.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The resolver the environment allows: from `kubeconfig` when given
    /// (an error if it cannot be used), else in-cluster when the pod has a
    /// ServiceAccount token (a warning, and none, if that fails), else none.
    /// Must run inside a Tokio runtime.
    pub async fn from_environment(kubeconfig: Option<&Path>) -> Result<Option<Self>, LookupSetupError> {
        if let Some(path) = kubeconfig {
            let shown = path.display().to_string();
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| LookupSetupError::Kubeconfig { path: shown.clone(), source })?;
            let config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| LookupSetupError::Kubeconfig { path: shown.clone(), source })?;
            let client =
                kube::Client::try_from(config).map_err(|source| LookupSetupError::Client { path: shown, source })?;
            return Ok(Some(Self::new(client, LOOKUP_TIMEOUT)));
        }
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            return Ok(None);
        }
        let client = kube::Config::incluster()
            .map_err(|e| e.to_string())
            .and_then(|config| kube::Client::try_from(config).map_err(|e| e.to_string()));
        match client {
            Ok(client) => Ok(Some(Self::new(client, LOOKUP_TIMEOUT))),
            Err(error) => {
                warn!(%error, "in a cluster but without a usable ServiceAccount token; admission lookups are skipped");
                Ok(None)
            }
        }
    }

    async fn cluster_exists(&self, namespace: &str, name: &str) -> Found<()> {
        let api: Api<DatabaseCluster> = Api::namespaced(self.client.clone(), namespace);
        // Metadata only: the stored spec need not decode, and it is smaller.
        self.get(api.get_metadata_opt(name), "DatabaseCluster", namespace, name).await.map_found(|_| ())
    }

    async fn backup(&self, namespace: &str, name: &str) -> Found<DatabaseBackup> {
        let api: Api<DatabaseBackup> = Api::namespaced(self.client.clone(), namespace);
        self.get(api.get_opt(name), "DatabaseBackup", namespace, name).await
    }

    async fn get<T>(
        &self,
        request: impl Future<Output = Result<Option<T>, kube::Error>>,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Found<T> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(Some(object))) => Found::Yes(object),
            Ok(Ok(None)) => Found::No,
            Ok(Err(error)) => {
                warn!(kind, namespace, name, %error, "admission lookup failed; admitting with a warning");
                Found::Unknown(format!("the API server answered: {error}"))
            }
            Err(_) => {
                warn!(kind, namespace, name, timeout = ?self.timeout, "admission lookup timed out; admitting with a warning");
                Found::Unknown(format!("the API server did not answer within {:?}", self.timeout))
            }
        }
    }
}

impl Resolver for KubeResolver {
    fn resolve<'a>(&'a self, queries: &'a [Query]) -> BoxFuture<'a, Answers> {
        Box::pin(async move {
            let mut answers = Answers::skipped();
            for query in queries {
                answers = match query {
                    Query::Cluster { namespace, name } => {
                        let found = self.cluster_exists(namespace, name).await;
                        answers.with_cluster(namespace, name, found)
                    }
                    Query::Backup { namespace, name } => {
                        let found = self.backup(namespace, name).await;
                        answers.with_backup(namespace, name, found)
                    }
                    // Answered from the App cache, not by a GET (see crate::app_cache).
                    Query::AppsClaiming { .. } => answers,
                };
            }
            answers
        })
    }
}

trait MapFound<T> {
    fn map_found<U>(self, f: impl FnOnce(T) -> U) -> Found<U>;
}

impl<T> MapFound<T> for Found<T> {
    fn map_found<U>(self, f: impl FnOnce(T) -> U) -> Found<U> {
        match self {
            Found::Yes(v) => Found::Yes(f(v)),
            Found::No => Found::No,
            Found::Unknown(reason) => Found::Unknown(reason),
            Found::Skipped => Found::Skipped,
        }
    }
}
