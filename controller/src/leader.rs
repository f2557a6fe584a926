//! Leader election on the `coordination.k8s.io` Lease `stead-controller`.
//!
//! Only the holder reconciles, so two replicas can run for availability
//! without fighting over the same children. Without `--leader-elect` this
//! replica leads from the start.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Name of the Lease.
pub const LEASE_NAME: &str = "stead-controller";
/// How long a lease stays valid after the holder's last renewal.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// How long before expiry the holder renews.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// A channel that says whether this replica leads, plus what keeps it alive.
pub struct Leadership {
    rx: watch::Receiver<bool>,
    guard: Guard,
}

enum Guard {
    /// Keeps the channel open: we always lead.
    Always { _open: watch::Sender<bool> },
    /// The task competing for and renewing the lease; it releases the lease when the channel closes.
    Lease(JoinHandle<()>),
}

impl Leadership {
    /// Leads from the start, forever (no `--leader-elect`).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Self { rx, guard: Guard::Always { _open: tx } }
    }

    /// Competes for the Lease `stead-controller` in `namespace` as `identity`.
    ///
    /// Fails fast when the Lease API cannot be reached at all (RBAC, wrong
    /// namespace); later API errors are retried in the background.
    pub async fn elect(client: Client, namespace: &str, identity: &str) -> Result<Self, LeaseManagerError> {
        let lease = LeaseSettings { client, namespace: namespace.to_owned(), identity: identity.to_owned() };
        let first = lease.manager().await?;
        let (tx, rx) = watch::channel(false);
        info!(lease = LEASE_NAME, namespace, identity, "competing for the lease");
        Ok(Self { rx, guard: Guard::Lease(tokio::spawn(compete(lease, first, tx))) })
    }

    /// A receiver to watch: `true` while this replica leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Gives the lease up so that a standby takes over at once instead of after expiry.
    ///
    /// Every receiver from [`subscribe`](Self::subscribe) must be dropped first:
    /// the manager releases when its channel has no receivers left.
    pub async fn release(self) {
        let Self { rx, guard } = self;
        drop(rx);
        if let Guard::Lease(task) = guard {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "lease task failed"),
                Err(_) => warn!("releasing the lease timed out; it expires on its own"),
            }
        }
    }
}

/// What is needed to build a fresh lease manager.
struct LeaseSettings {
    client: Client,
    namespace: String,
    identity: String,
}

impl LeaseSettings {
    async fn manager(&self) -> Result<LeaseManager, LeaseManagerError> {
        LeaseManagerBuilder::new(self.client.clone(), LEASE_NAME)
            .with_namespace(self.namespace.as_str())
            .with_identity(self.identity.as_str())
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .build()
            .await
    }
}

/// Competes for the lease until every receiver of `tx` is gone, then releases it.
///
/// kube-lease-manager reports only changes of holder, and keeps saying
/// "leader" while renewals fail. A renewal happens `LEASE_GRACE_SECONDS`
/// before expiry, so when one fails this replica steps down at once, before
/// the lease can expire and a standby take over: two replicas never reconcile
/// together (client-go's renew deadline). A fresh manager then re-reads the
/// lease, and leads again if the renewal had in fact gone through.
async fn compete(lease: LeaseSettings, first: LeaseManager, tx: watch::Sender<bool>) {
    let mut manager = Some(first);
    let mut delay = Duration::from_secs(1);
    loop {
        let current = match manager.take() {
            Some(current) => current,
            None => match lease.manager().await {
                Ok(fresh) => fresh,
                Err(e) => {
                    warn!(error = %e, retry_in = ?delay, "cannot reach the lease");
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(LEASE_DURATION_SECONDS));
                    continue;
                }
            },
        };
        let outcome = tokio::select! {
            biased;
            () = tx.closed() => None,
            changed = current.changed() => Some(changed),
        };
        match outcome {
            None => {
                match current.release().await {
                    Ok(()) => info!(lease = LEASE_NAME, "lease released"),
                    Err(e) => warn!(error = %e, "could not release the lease; it expires on its own"),
                }
                return;
            }
            Some(Ok(leading)) => {
                delay = Duration::from_secs(1);
                if leading {
                    info!(lease = LEASE_NAME, identity = %lease.identity, "acquired the lease");
                } else {
                    info!(lease = LEASE_NAME, identity = %lease.identity, "lost the lease");
                }
                tx.send_replace(leading);
                manager = Some(current);
            }
            Some(Err(e)) => {
                if tx.send_replace(false) {
                    warn!(error = %e, "renewing the lease failed; stepping down until it is confirmed again");
                } else {
                    warn!(error = %e, retry_in = ?delay, "competing for the lease failed");
                }
                tokio::select! {
                    () = tx.closed() => {
                        let _ = current.release().await;
                        return;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(LEASE_DURATION_SECONDS));
                // `current` is dropped: the next manager starts from what the API server says.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock;

    use super::*;

    /// A lease API where the Lease exists, held by `holder` and renewed a
    /// moment before its renewal is due, and where every write fails with 500.
    fn lease_api(holder: &'static str) -> (Client, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let reply = if request.method() == Method::GET {
                    let renewed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(9);
                    let lease = json!({
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": LEASE_NAME, "namespace": "stead-system", "resourceVersion": "7"},
                        "spec": {
                            "holderIdentity": holder,
                            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                            "acquireTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                        }
                    });
                    Response::builder().status(200).body(Body::from(serde_json::to_vec(&lease).unwrap()))
                } else {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
                    Response::builder().status(500).body(Body::from(serde_json::to_vec(&status).unwrap()))
                };
                send.send_response(reply.unwrap());
            }
        });
        (Client::new(service, "stead-system"), server)
    }

    async fn wait_for(rx: &mut watch::Receiver<bool>, leading: bool) {
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|l| *l == leading))
            .await
            .unwrap_or_else(|_| panic!("leadership never became {leading}"))
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_renewal_steps_down_before_the_lease_expires() {
        let (client, server) = lease_api("me");
        let leadership = Leadership::elect(client, "stead-system", "me").await.unwrap();
        let mut rx = leadership.subscribe();
        // The lease names us: we lead.
        wait_for(&mut rx, true).await;
        // The renewal, due before expiry, fails: we stop leading instead of
        // reconciling on while a standby may take the expired lease.
        wait_for(&mut rx, false).await;
        drop(rx);
        leadership.release().await;
        server.abort();
    }

    #[tokio::test]
    async fn a_lease_held_by_another_replica_is_not_led() {
        let (client, server) = lease_api("someone-else");
        let leadership = Leadership::elect(client, "stead-system", "me").await.unwrap();
        let rx = leadership.subscribe();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!*rx.borrow(), "a live lease of another holder must not be taken");
        drop(rx);
        leadership.release().await;
        server.abort();
    }

    #[tokio::test]
    async fn always_leads_and_never_closes() {
        let leadership = Leadership::always();
        let rx = leadership.subscribe();
        assert!(*rx.borrow());
        // The channel stays open while the Leadership lives: waiting for "lost" never errors out.
        assert_eq!(rx.has_changed().ok(), Some(false));
        drop(rx);
        leadership.release().await;
    }
}
