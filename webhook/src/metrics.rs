//! Prometheus metrics of the webhook, served as text on the plain-HTTP port.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::review::{Outcome, Route};

/// Latency buckets in seconds: admission takes tens of microseconds, so the
/// interesting range starts well below a millisecond.
const LATENCY_BUCKETS: [f64; 12] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// Every metric the webhook exports, shared by the handlers.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    reloads: Counter,
    panics: Counter,
    saturated: Counter,
    lookups: Family<LookupLabels, Counter>,
    collision_checks: Family<ResultLabels, Counter>,
}

/// `result` of an App route check that ran against a synced cache.
pub const COLLISION_CHECKED: &str = "checked";
/// `result` of an App route check skipped (no cache, or not synced): admitted with a warning.
pub const COLLISION_SKIPPED: &str = "skipped";

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        let reloads = Counter::default();
        let panics = Counter::default();
        let saturated = Counter::default();
        let lookups = Family::<LookupLabels, Counter>::default();
        let collision_checks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "stead_webhook_requests",
            "Admission requests by route and verdict (allowed, denied, patched, bad_request)",
            requests.clone(),
        );
        registry.register(
            "stead_webhook_request_duration_seconds",
            "Time from the request's arrival to its answer, by route",
            duration.clone(),
        );
        registry.register(
            "stead_webhook_certificate_reloads",
            "Serving certificates loaded from the certificate directory after the first",
            reloads.clone(),
        );
        registry.register(
            "stead_webhook_handler_panics",
            "Requests whose handler panicked; each was answered 500 and the server kept running",
            panics.clone(),
        );
        registry.register(
            "stead_webhook_reviews_refused_busy",
            "Admission requests answered 503 because the concurrent-review limit stayed full for the request timeout",
            saturated.clone(),
        );
        registry.register(
            "stead_webhook_lookups",
            "API reads made by admission (GET by name, on CREATE of a DatabaseBackup or of a cluster restored from \
             one), by kind and result (found, not_found, failed); a failed read admits with a warning",
            lookups.clone(),
        );
        registry.register(
            "stead_webhook_app_collision_checks",
            "App Ingress host and path collision checks, by result: checked (against the synced cache of Apps) or \
             skipped (no cache, or not synced yet; the App was admitted with a warning)",
            collision_checks.clone(),
        );
        // Pre-create every series so dashboards see zeros instead of gaps.
        for result in [COLLISION_CHECKED, COLLISION_SKIPPED] {
            let _ = collision_checks.get_or_create(&ResultLabels { result });
        }
        for kind in ["DatabaseCluster", "DatabaseBackup"] {
            for result in ["found", "not_found", "failed"] {
                let _ = lookups.get_or_create(&LookupLabels { kind, result });
            }
        }
        for route in [Route::Mutate, Route::Validate] {
            for outcome in [Outcome::Allowed, Outcome::Patched, Outcome::Denied, Outcome::BadRequest] {
                let _ = requests.get_or_create(&RequestLabels { route: route.as_str(), verdict: outcome.as_str() });
            }
            let _ = duration.get_or_create(&RouteLabels { route: route.as_str() });
        }
        Self { registry, requests, duration, reloads, panics, saturated, lookups, collision_checks }
    }

    /// Counts one answered admission request.
    pub fn observe(&self, route: Route, outcome: Outcome, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { route: route.as_str(), verdict: outcome.as_str() }).inc();
        self.duration.get_or_create(&RouteLabels { route: route.as_str() }).observe(elapsed.as_secs_f64());
    }

    /// Counts one API read of admission: its kind and result (`found`, `not_found`, `failed`).
    pub fn count_lookup(&self, kind: &'static str, result: &'static str) {
        self.lookups.get_or_create(&LookupLabels { kind, result }).inc();
    }

    /// Counts one App route check: [`COLLISION_CHECKED`] or [`COLLISION_SKIPPED`].
    pub fn count_collision_check(&self, result: &'static str) {
        self.collision_checks.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a handler that panicked.
    pub fn count_panic(&self) {
        self.panics.inc();
    }

    /// Counts a review turned away because every review slot stayed busy.
    pub fn count_saturated(&self) {
        self.saturated.inc();
    }

    /// Counts certificate reloads; `total` is the resolver's running count.
    pub fn set_certificate_reloads(&self, total: u64) {
        let seen = self.reloads.get();
        if total > seen {
            self.reloads.inc_by(total - seen);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only drop the page.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counts_latency_and_reloads() {
        let metrics = Metrics::new();
        metrics.observe(Route::Validate, Outcome::Denied, Duration::from_micros(80));
        metrics.observe(Route::Validate, Outcome::Denied, Duration::from_micros(80));
        metrics.observe(Route::Mutate, Outcome::Patched, Duration::from_micros(30));
        metrics.set_certificate_reloads(2);
        metrics.set_certificate_reloads(3);
        let text = metrics.encode();
        assert!(text.contains(r#"stead_webhook_requests_total{route="validate",verdict="denied"} 2"#), "{text}");
        assert!(text.contains(r#"stead_webhook_requests_total{route="mutate",verdict="patched"} 1"#), "{text}");
        assert!(text.contains(r#"stead_webhook_requests_total{route="mutate",verdict="bad_request"} 0"#), "{text}");
        assert!(text.contains(r#"stead_webhook_request_duration_seconds_count{route="validate"} 2"#), "{text}");
        assert!(
            text.contains(r#"stead_webhook_request_duration_seconds_bucket{le="0.0001",route="validate"} 2"#),
            "{text}"
        );
        assert!(text.contains("stead_webhook_certificate_reloads_total 3"), "{text}");
        metrics.count_lookup("DatabaseCluster", "failed");
        let text = metrics.encode();
        assert!(text.contains(r#"stead_webhook_lookups_total{kind="DatabaseCluster",result="failed"} 1"#), "{text}");
        assert!(text.contains(r#"stead_webhook_lookups_total{kind="DatabaseBackup",result="found"} 0"#), "{text}");
    }
}
