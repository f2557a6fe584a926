//! Prometheus metrics of the controller, served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `kind` label: an error kind or a child kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Every metric the controller exports; cheap to clone (shared atomics).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<KindLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub leader: Gauge,
    pub status_writes: Counter,
    pub child_applies: Family<KindLabel, Counter>,
    /// Reconciles put off because the cache had not seen our last write.
    pub cache_behind: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            // 1ms .. ~16s: a reconcile is a handful of API round trips.
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            leader: Gauge::default(),
            status_writes: Counter::default(),
            child_applies: Family::default(),
            cache_behind: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `stead_controller_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("stead_controller");
        sub.register("reconciles", "Reconciliations started", self.reconciles.clone());
        sub.register("reconcile_errors", "Reconciliations that failed, by error kind", self.reconcile_errors.clone());
        sub.register(
            "reconcile_duration_seconds",
            "Duration of one reconciliation in seconds",
            self.reconcile_duration.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica holds the leader lease (always 1 without --leader-elect)",
            self.leader.clone(),
        );
        sub.register("status_writes", "Writes to DatabaseCluster /status", self.status_writes.clone());
        sub.register("child_applies", "Server-side applies of children, by kind", self.child_applies.clone());
        sub.register(
            "cache_behind",
            "Reconciles put off for a moment because the cache had not yet seen the controller's last write",
            self.cache_behind.clone(),
        );
    }

    /// Counts one failed reconcile.
    pub fn count_error(&self, kind: &str) {
        self.reconcile_errors.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    /// Counts one apply (or patch/delete) of a child object.
    pub fn count_apply(&self, kind: &str) {
        self.child_applies.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    /// Records how long one reconcile took.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn every_documented_name_is_exported() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.reconciles.inc();
        metrics.count_error("conflict");
        metrics.count_apply("StatefulSet");
        metrics.observe_duration(Duration::from_millis(3));
        metrics.leader.set(1);
        metrics.status_writes.inc();
        let text = render(&registry).unwrap();
        for want in [
            "stead_controller_reconciles_total 1",
            "stead_controller_reconcile_errors_total{kind=\"conflict\"} 1",
            "stead_controller_reconcile_duration_seconds_count 1",
            "stead_controller_leader 1",
            "stead_controller_status_writes_total 1",
            "stead_controller_child_applies_total{kind=\"StatefulSet\"} 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
