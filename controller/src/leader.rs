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
    /// The lease manager's task; it renews the lease and releases it when the channel closes.
    Lease(JoinHandle<kube_lease_manager::Result<LeaseManager>>),
}

impl Leadership {
    /// Leads from the start, forever (no `--leader-elect`).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Self { rx, guard: Guard::Always { _open: tx } }
    }

    /// Competes for the Lease `stead-controller` in `namespace` as `identity`.
    pub async fn elect(client: Client, namespace: &str, identity: &str) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .build()
            .await?;
        let (rx, task) = manager.watch().await;
        info!(lease = LEASE_NAME, namespace, identity, "competing for the lease");
        Ok(Self { rx, guard: Guard::Lease(task) })
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
                Ok(Ok(Ok(_))) => info!(lease = LEASE_NAME, "lease released"),
                Ok(Ok(Err(e))) => warn!(error = %e, "could not release the lease; it expires on its own"),
                Ok(Err(e)) => warn!(error = %e, "lease task failed"),
                Err(_) => warn!("releasing the lease timed out; it expires on its own"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
