//! The webhook's own view of Apps, for the one App rule that needs other
//! objects: no two Apps of a namespace claim the same Ingress host and path.
//!
//! A GET per request cannot answer "who else claims this host", and a LIST
//! per request scales with the number of Apps; so the webhook keeps a
//! reflector (a watch of Apps in every namespace, managed fields dropped)
//! and reads it in memory. It is started only when the webhook has a kube
//! client (in a cluster, or with `--kubeconfig`), needs `list` and `watch`
//! on `apps.stead.dev`, and answers only once its first listing is in: until
//! then (or without a client at all) the route rule is skipped, the App is
//! admitted with a warning, and `stead_webhook_app_collision_checks_total`
//! counts it as `skipped`.

use std::sync::Arc;

use futures::{FutureExt as _, StreamExt as _};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use stead_crds::App;
use stead_crds::lookup::Found;
use tracing::warn;

/// Why the route rule was skipped while the watch has not listed Apps yet.
pub const NOT_SYNCED: &str = "the webhook's cache of Apps has not synced yet";

/// Apps as the webhook last saw them.
#[derive(Clone)]
pub struct AppCache {
    store: Store<App>,
}

impl std::fmt::Debug for AppCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCache").field("apps", &self.store.len()).field("synced", &self.is_synced()).finish()
    }
}

impl AppCache {
    /// A cache fed by a watch of Apps in every namespace through `client`.
    /// The watch runs on the current Tokio runtime for the life of the
    /// process and retries with backoff (a missing CRD or a refused watch
    /// leaves the cache unsynced, so the route rule fails open).
    pub fn start(client: kube::Client) -> Self {
        let (store, writer) = reflector::store();
        let api: Api<App> = Api::all(client);
        let watch = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|app: &mut App| app.metadata.managed_fields = None)
            .reflect(writer)
            .touched_objects()
            .for_each(|event| async move {
                if let Err(error) = event {
                    warn!(%error, "the watch of Apps failed; retrying (the route rule is skipped until it syncs)");
                }
            });
        tokio::spawn(watch);
        Self { store }
    }

    /// A cache over a store someone else feeds (tests feed it through its `Writer`).
    pub fn from_store(store: Store<App>) -> Self {
        Self { store }
    }

    /// Whether the first listing is in.
    pub fn is_synced(&self) -> bool {
        self.store.wait_until_ready().now_or_never().is_some_and(|ready| ready.is_ok())
    }

    /// The Apps of `namespace` whose Ingress claims `host`; `Unknown` until synced.
    pub fn claiming(&self, namespace: &str, host: &str) -> Found<Vec<App>> {
        if !self.is_synced() {
            return Found::Unknown(NOT_SYNCED.to_owned());
        }
        let claims = |app: &App| {
            app.metadata.namespace.as_deref() == Some(namespace)
                && app.spec.ingress.as_ref().is_some_and(|i| i.host.eq_ignore_ascii_case(host))
        };
        Found::Yes(self.store.state_filter(claims).into_iter().map(Arc::unwrap_or_clone).collect())
    }
}
