//! Leader election on the `coordination.k8s.io` Lease `stead-controller`.
//!
//! Only the holder reconciles, so two replicas can run for availability
//! without fighting over the same children. Without `--leader-elect` this
//! replica leads from the start.
//!
//! The protocol is client-go's (`leaderelection`), on a Lease read with GET
//! and written with a conditional PUT (`resourceVersion`), so of two
//! replicas racing for it exactly one write wins:
//!
//! - The holder renews every [`Timing::renew_every`]. A renewal that fails,
//!   or is not confirmed within [`Timing::renew_deadline`] of the last
//!   confirmed one, makes it step down at once. Its last confirmed renewal
//!   was written no earlier than it was sent, so it stops at least
//!   `lease - renew_deadline` before anyone may take the lease.
//! - A standby reads the Lease every [`Timing::retry_every`]. It takes the
//!   Lease when nobody holds it, or when the record has not changed for
//!   `leaseDurationSeconds` as measured on the standby's own clock (so clock
//!   skew between nodes does not matter).
//! - On shutdown, once reconciling has stopped, the holder releases the
//!   Lease: it clears `holderIdentity` and sets `leaseDurationSeconds: 1`, as
//!   client-go does. A standby then takes it at its next read, about a second
//!   later, instead of waiting for the lease to run out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use stead_crds::names::FIELD_MANAGER;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{describe, has_code};

/// Name of the Lease.
pub const LEASE_NAME: &str = "stead-controller";

/// The periods of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `leaseDurationSeconds`: how long a lease stays valid after the holder's last renewal.
    pub lease: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// The holder steps down when no renewal was confirmed for this long.
    pub renew_deadline: Duration,
    /// How often a standby reads the Lease; a released Lease is taken within about this long.
    pub retry_every: Duration,
}

impl Timing {
    /// What the controller runs with: a dead holder's lease is taken after 15 s,
    /// a released one within about a second.
    pub const DEFAULT: Self = Self {
        lease: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
        renew_deadline: Duration::from_secs(10),
        retry_every: Duration::from_secs(1),
    };

    /// `leaseDurationSeconds` as written in the Lease.
    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease.as_secs()).unwrap_or(i32::MAX).max(1)
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The Lease could not be read at startup.
///
/// The kube error is rendered into the message and deliberately not exposed
/// as `source()`: `main` prints the whole chain of causes, and kube's own
/// `Display` of an API error carries the Status in `Debug` form.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the Lease {namespace}/{LEASE_NAME}: {}; the controller needs get, create and update on it \
     (manifests/rbac/leader-election-role.yaml) in the namespace POD_NAMESPACE names",
    describe(.error)
)]
pub struct LeaseError {
    namespace: String,
    error: kube::Error,
}

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
    /// Fails fast when the Lease cannot be read at all (RBAC, wrong
    /// namespace); later API errors are retried in the background.
    pub async fn elect(client: Client, namespace: &str, identity: &str) -> Result<Self, LeaseError> {
        Self::elect_with(client, namespace, identity, Timing::DEFAULT).await
    }

    /// [`elect`](Self::elect) with other periods (tests).
    pub async fn elect_with(
        client: Client,
        namespace: &str,
        identity: &str,
        timing: Timing,
    ) -> Result<Self, LeaseError> {
        let elector = Elector { api: Api::namespaced(client, namespace), identity: identity.to_owned(), timing };
        elector.api.get_opt(LEASE_NAME).await.map_err(|error| LeaseError { namespace: namespace.to_owned(), error })?;
        let (tx, rx) = watch::channel(false);
        info!(lease = LEASE_NAME, namespace, identity, "competing for the lease");
        Ok(Self { rx, guard: Guard::Lease(tokio::spawn(compete(elector, tx))) })
    }

    /// A receiver to watch: `true` while this replica leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Gives the lease up so that a standby takes over at once instead of after expiry.
    ///
    /// Call it only once reconciling has stopped, and with every receiver
    /// from [`subscribe`](Self::subscribe) dropped: the lease task releases
    /// when its channel has no receivers left.
    pub async fn release(self) {
        let Self { rx, guard } = self;
        drop(rx);
        if let Guard::Lease(task) = guard {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "the lease task failed"),
                Err(_) => warn!("releasing the lease timed out; it expires on its own"),
            }
        }
    }

    /// Stops competing without releasing: the lease runs out on its own.
    ///
    /// For a shutdown that could not wait for reconciles to finish, where a
    /// write may still be under way.
    pub fn abandon(self) {
        if let Guard::Lease(task) = self.guard {
            task.abort();
        }
    }
}

/// The Lease as this replica last saw it, and when its spec last changed (our clock).
struct Seen {
    lease: Lease,
    changed_at: Instant,
}

struct Elector {
    api: Api<Lease>,
    identity: String,
    timing: Timing,
}

/// Competes for the lease until every receiver of `tx` is gone, then releases it if held.
async fn compete(elector: Elector, tx: watch::Sender<bool>) {
    let timing = elector.timing;
    let mut seen: Option<Seen> = None;
    // While leading: when the last confirmed write of the Lease was sent.
    let mut confirmed: Option<Instant> = None;
    let mut failing = false;
    loop {
        let started = Instant::now();
        let next = match confirmed {
            Some(last) => match tokio::time::timeout_at(last + timing.renew_deadline, elector.renew(&mut seen)).await {
                Ok(Ok(())) => {
                    confirmed = Some(started);
                    started + timing.renew_every
                }
                outcome => {
                    // Step down before anything else: a standby may take the lease soon.
                    tx.send_replace(false);
                    confirmed = None;
                    let why = match outcome {
                        Ok(Err(e)) => e,
                        _ => format!("no answer within {:?}", timing.renew_deadline),
                    };
                    warn!(lease = LEASE_NAME, error = %why, "renewing the lease failed; stopped leading");
                    Instant::now() + timing.retry_every
                }
            },
            None => {
                let attempt = elector.try_acquire(&mut seen, started);
                match tokio::time::timeout(timing.renew_deadline - timing.renew_every, attempt).await {
                    Ok(Ok(true)) => {
                        confirmed = Some(started);
                        failing = false;
                        info!(lease = LEASE_NAME, identity = %elector.identity, "acquired the lease");
                        tx.send_replace(true);
                        started + timing.renew_every
                    }
                    Ok(Ok(false)) => {
                        failing = false;
                        Instant::now() + timing.retry_every
                    }
                    outcome => {
                        let why = match outcome {
                            Ok(Err(e)) => e,
                            _ => "no answer in time".to_owned(),
                        };
                        if failing {
                            debug!(lease = LEASE_NAME, error = %why, "reading the lease failed again");
                        } else {
                            warn!(lease = LEASE_NAME, error = %why, "reading the lease failed; retrying every second");
                        }
                        failing = true;
                        Instant::now() + timing.retry_every
                    }
                }
            }
        };
        tokio::select! {
            biased;
            () = tx.closed() => break,
            () = tokio::time::sleep_until(next) => {}
        }
    }
    if confirmed.is_some() {
        tx.send_replace(false);
        match elector.release(seen).await {
            Ok(()) => info!(lease = LEASE_NAME, "lease released"),
            Err(e) => warn!(lease = LEASE_NAME, error = %e, "could not release the lease; it expires on its own"),
        }
    }
}

impl Elector {
    fn params() -> PostParams {
        PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() }
    }

    /// Reads the Lease and takes it if it is free (or ours, or run out); `true` when we now hold it.
    async fn try_acquire(&self, seen: &mut Option<Seen>, now: Instant) -> Result<bool, String> {
        let Some(lease) = self.api.get_opt(LEASE_NAME).await.map_err(|e| describe(&e))? else {
            return self.create(seen, now).await;
        };
        let changed_at = match seen.take() {
            Some(before) if before.lease.spec == lease.spec => before.changed_at,
            _ => now,
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.identity.as_str());
        let valid_for = match spec.lease_duration_seconds {
            Some(seconds) if seconds > 0 => Duration::from_secs(seconds.unsigned_abs().into()),
            _ => self.timing.lease,
        };
        let free = holder.is_none() || ours || now.duration_since(changed_at) >= valid_for;
        if !free {
            debug!(lease = LEASE_NAME, holder = holder.unwrap_or_default(), "the lease is held");
            *seen = Some(Seen { lease, changed_at });
            return Ok(false);
        }
        let stamp = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let next = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.timing.lease_seconds()),
                acquire_time: if ours { spec.acquire_time.clone() } else { Some(stamp.clone()) },
                renew_time: Some(stamp),
                lease_transitions: if ours {
                    spec.lease_transitions
                } else {
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1))
                },
                ..spec
            }),
        };
        match self.api.replace(LEASE_NAME, &Self::params(), &next).await {
            Ok(written) => {
                *seen = Some(Seen { lease: written, changed_at: now });
                Ok(true)
            }
            // Someone else wrote it first: read it again next time.
            Err(e) if has_code(&e, &[409]) => {
                *seen = Some(Seen { lease, changed_at });
                Ok(false)
            }
            Err(e) => {
                *seen = Some(Seen { lease, changed_at });
                Err(describe(&e))
            }
        }
    }

    /// Creates the Lease with us as holder; `false` when another replica created it first.
    async fn create(&self, seen: &mut Option<Seen>, now: Instant) -> Result<bool, String> {
        let stamp = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta { name: Some(LEASE_NAME.to_owned()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.timing.lease_seconds()),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&Self::params(), &lease).await {
            Ok(written) => {
                *seen = Some(Seen { lease: written, changed_at: now });
                Ok(true)
            }
            Err(e) if has_code(&e, &[409]) => Ok(false),
            Err(e) => Err(describe(&e)),
        }
    }

    /// Writes a new renewTime over the version we last wrote; any change by someone else is a 409.
    async fn renew(&self, seen: &mut Option<Seen>) -> Result<(), String> {
        let Some(current) = seen.as_mut() else {
            return Err("the lease was never read".to_owned());
        };
        let mut next = current.lease.clone();
        let spec = next.spec.get_or_insert_default();
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.timing.lease_seconds());
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        let written = self.api.replace(LEASE_NAME, &Self::params(), &next).await.map_err(|e| describe(&e))?;
        *current = Seen { lease: written, changed_at: Instant::now() };
        Ok(())
    }

    /// Gives the lease up: no holder, and a duration of one second for
    /// electors that still look at it.
    async fn release(&self, seen: Option<Seen>) -> Result<(), String> {
        let mut lease = match seen {
            Some(seen) => seen.lease,
            None => return Ok(()),
        };
        for attempt in 0..2 {
            let spec = lease.spec.get_or_insert_default();
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = None;
            spec.renew_time = None;
            match self.api.replace(LEASE_NAME, &Self::params(), &lease).await {
                Ok(_) => return Ok(()),
                // Changed since our last write: release only if it still names us.
                Err(e) if has_code(&e, &[409]) && attempt == 0 => {
                    match self.api.get_opt(LEASE_NAME).await.map_err(|e| describe(&e))? {
                        Some(fresh)
                            if fresh.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                                == Some(self.identity.as_str()) =>
                        {
                            lease = fresh;
                        }
                        _ => return Ok(()),
                    }
                }
                Err(e) => return Err(describe(&e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    const NS: &str = "stead-system";

    /// Short periods, so that tests run in seconds; the ratios are the production ones.
    const FAST: Timing = Timing {
        lease: Duration::from_millis(1500),
        renew_every: Duration::from_millis(500),
        renew_deadline: Duration::from_millis(1000),
        retry_every: Duration::from_millis(100),
    };

    /// What the in-memory Lease API does with writes.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Writes {
        Work,
        /// Answer 500.
        Fail,
        /// Never answer.
        Hang,
    }

    /// An in-memory Lease API with the API server's optimistic concurrency:
    /// a PUT must carry the stored resourceVersion, a POST of an existing Lease is a 409.
    #[derive(Clone)]
    struct LeaseApi {
        stored: Arc<Mutex<Option<Value>>>,
        version: Arc<Mutex<u64>>,
        writes: Arc<Mutex<Writes>>,
        /// Every write that succeeded: (method, URI, body).
        log: Arc<Mutex<Vec<(Method, String, Value)>>>,
    }

    impl LeaseApi {
        fn new() -> Self {
            Self {
                stored: Arc::default(),
                version: Arc::default(),
                writes: Arc::new(Mutex::new(Writes::Work)),
                log: Arc::default(),
            }
        }

        fn set_writes(&self, writes: Writes) {
            *self.writes.lock().unwrap() = writes;
        }

        fn holder(&self) -> Option<String> {
            let stored = self.stored.lock().unwrap();
            stored.as_ref()?.pointer("/spec/holderIdentity")?.as_str().map(str::to_owned)
        }

        /// Stores `lease` as if some other process had written it.
        fn put(&self, mut lease: Value) {
            let mut version = self.version.lock().unwrap();
            *version += 1;
            lease["metadata"]["resourceVersion"] = json!(version.to_string());
            *self.stored.lock().unwrap() = Some(lease);
        }

        fn client(&self) -> Client {
            let api = self.clone();
            let service = tower::service_fn(move |request: Request<Body>| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.answer(request).await) }
            });
            Client::new(service, NS)
        }

        async fn answer(&self, request: Request<Body>) -> Response<Body> {
            let method = request.method().clone();
            let uri = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            if method != Method::GET {
                let writes = *self.writes.lock().unwrap();
                match writes {
                    Writes::Work => {}
                    Writes::Fail => return status(500, "InternalError"),
                    Writes::Hang => {
                        drop(bytes);
                        return std::future::pending().await;
                    }
                }
            }
            let mut stored = self.stored.lock().unwrap();
            let mut version = self.version.lock().unwrap();
            match method {
                Method::GET => match stored.as_ref() {
                    Some(lease) => json_response(lease),
                    None => status(404, "NotFound"),
                },
                _ => {
                    let mut body: Value = serde_json::from_slice(&bytes).unwrap();
                    let conflict = match (&method, stored.as_ref()) {
                        (&Method::POST, Some(_)) => Some("AlreadyExists"),
                        (&Method::PUT, Some(lease))
                            if lease["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] =>
                        {
                            Some("Conflict")
                        }
                        (&Method::PUT, None) => return status(404, "NotFound"),
                        _ => None,
                    };
                    if let Some(reason) = conflict {
                        return status(409, reason);
                    }
                    self.log.lock().unwrap().push((method, uri, body.clone()));
                    *version += 1;
                    body["metadata"]["resourceVersion"] = json!(version.to_string());
                    *stored = Some(body.clone());
                    json_response(&body)
                }
            }
        }
    }

    fn json_response(value: &Value) -> Response<Body> {
        Response::new(Body::from(serde_json::to_vec(value).unwrap()))
    }

    fn status(code: u16, reason: &str) -> Response<Body> {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("mock {reason}"), "reason": reason, "code": code});
        Response::builder().status(code).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap()
    }

    async fn wait_for(rx: &mut watch::Receiver<bool>, leading: bool, within: Duration) {
        tokio::time::timeout(within, rx.wait_for(|l| *l == leading))
            .await
            .unwrap_or_else(|_| panic!("leadership did not become {leading} within {within:?}"))
            .unwrap();
    }

    async fn elect(api: &LeaseApi, identity: &str) -> Leadership {
        Leadership::elect_with(api.client(), NS, identity, FAST).await.unwrap()
    }

    #[tokio::test]
    async fn release_clears_the_holder_so_that_a_standby_takes_over_at_its_next_read() {
        let api = LeaseApi::new();
        let leader = elect(&api, "a").await;
        let mut a = leader.subscribe();
        wait_for(&mut a, true, Duration::from_secs(5)).await;
        let standby = elect(&api, "b").await;
        let mut b = standby.subscribe();
        // Two lease periods: the holder renews, the standby never takes a renewed lease.
        tokio::time::sleep(FAST.lease * 2).await;
        assert!(*a.borrow() && !*b.borrow(), "a renewed lease stays with its holder");
        assert_eq!(api.holder().as_deref(), Some("a"));

        drop(a);
        let released = Instant::now();
        leader.release().await;
        let (method, uri, write) = api.log.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            (method, uri.as_str()),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/stead-system/leases/stead-controller?&fieldManager=stead-controller"
            )
        );
        assert_eq!(
            write["spec"],
            json!({"leaseDurationSeconds": 1, "leaseTransitions": 0}),
            "the release names no holder and lasts a second: {write}"
        );
        assert!(write["metadata"]["resourceVersion"].is_string(), "conditional on our last write: {write}");
        // The standby reads every retry period, well before the released lease would have run out.
        wait_for(&mut b, true, FAST.lease - FAST.retry_every).await;
        assert!(released.elapsed() < FAST.lease, "taken over after {:?}", released.elapsed());
        assert_eq!(api.holder().as_deref(), Some("b"));
        let lease = api.stored.lock().unwrap().clone().unwrap();
        assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
        drop(b);
        standby.release().await;
    }

    #[tokio::test]
    async fn the_lease_of_a_holder_that_died_is_taken_only_once_it_ran_out() {
        let api = LeaseApi::new();
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        api.put(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": NS},
            "spec": {"holderIdentity": "dead", "leaseDurationSeconds": 1, "renewTime": now, "acquireTime": now,
                "leaseTransitions": 4},
        }));
        let started = Instant::now();
        let standby = elect(&api, "b").await;
        let mut b = standby.subscribe();
        wait_for(&mut b, true, Duration::from_secs(5)).await;
        assert!(started.elapsed() >= Duration::from_secs(1), "taken after {:?}, before it ran out", started.elapsed());
        let lease = api.stored.lock().unwrap().clone().unwrap();
        assert_eq!(
            (lease["spec"]["holderIdentity"].clone(), lease["spec"]["leaseTransitions"].clone()),
            (json!("b"), json!(5))
        );
        drop(b);
        standby.release().await;
    }

    #[tokio::test]
    async fn a_failed_renewal_steps_down_before_the_lease_can_run_out() {
        let api = LeaseApi::new();
        let leader = elect(&api, "a").await;
        let mut a = leader.subscribe();
        wait_for(&mut a, true, Duration::from_secs(5)).await;
        api.set_writes(Writes::Fail);
        let failing = Instant::now();
        wait_for(&mut a, false, FAST.lease).await;
        // The next renewal was due within renew_every, and failed at once.
        assert!(failing.elapsed() < FAST.renew_deadline, "stepped down after {:?}", failing.elapsed());
        // Once writes work again, it leads again.
        api.set_writes(Writes::Work);
        wait_for(&mut a, true, Duration::from_secs(5)).await;
        drop(a);
        leader.release().await;
    }

    #[tokio::test]
    async fn an_unanswered_renewal_steps_down_by_the_renew_deadline() {
        let api = LeaseApi::new();
        let leader = elect(&api, "a").await;
        let mut a = leader.subscribe();
        wait_for(&mut a, true, Duration::from_secs(5)).await;
        let acquired = Instant::now();
        api.set_writes(Writes::Hang);
        wait_for(&mut a, false, FAST.lease).await;
        // A standby may take the lease `lease` after our last confirmed write; we stop before.
        assert!(acquired.elapsed() < FAST.lease, "still leading {:?} after the last renewal", acquired.elapsed());
        drop(a);
        leader.release().await;
    }

    #[tokio::test]
    async fn of_three_replicas_at_most_one_leads_at_any_time() {
        let api = LeaseApi::new();
        let mut replicas = Vec::new();
        for identity in ["a", "b", "c"] {
            let leadership = elect(&api, identity).await;
            let rx = leadership.subscribe();
            replicas.push((leadership, rx));
        }
        let mut led = std::collections::BTreeSet::new();
        let until = Instant::now() + FAST.lease * 3;
        while Instant::now() < until {
            let leaders: Vec<usize> = (0..replicas.len()).filter(|i| *replicas[*i].1.borrow()).collect();
            assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
            led.extend(leaders);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(led.len(), 1, "the first holder keeps the lease while it renews");
        // Releasing hands the lease to exactly one of the others.
        let (first, rx) = replicas.remove(led.into_iter().next().unwrap());
        drop(rx);
        first.release().await;
        tokio::time::sleep(FAST.retry_every * 5).await;
        let leaders = replicas.iter().filter(|(_, rx)| *rx.borrow()).count();
        assert_eq!(leaders, 1);
        for (leadership, rx) in replicas {
            drop(rx);
            leadership.release().await;
        }
    }

    #[tokio::test]
    async fn a_lease_that_cannot_be_read_fails_fast_with_the_fix() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(
                request.uri().path(),
                format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE_NAME}")
            );
            send.send_response(status(403, "Forbidden"));
        });
        let err = match Leadership::elect(Client::new(service, NS), NS, "a").await {
            Ok(_) => panic!("a forbidden Lease must fail the start"),
            Err(e) => e,
        };
        // What main prints on exit: the error and each of its causes.
        let printed: Vec<String> = anyhow::Error::new(err).chain().map(ToString::to_string).collect();
        assert!(
            !printed.iter().any(|p| p.contains("Status {") || p.contains("ApiError")),
            "Debug output in: {printed:?}"
        );
        assert_eq!(
            printed,
            ["cannot read the Lease stead-system/stead-controller: the API server refused (403 Forbidden): mock \
             Forbidden; the controller needs get, create and update on it (manifests/rbac/leader-election-role.yaml) \
             in the namespace POD_NAMESPACE names"]
        );
        server.await.unwrap();
    }

    #[test]
    fn the_lease_is_taken_over_well_after_the_holder_stops_and_released_ones_at_once() {
        let t = Timing::DEFAULT;
        assert_eq!(t.lease_seconds(), 15);
        // The holder stops at the deadline, a margin before anyone may take its lease.
        assert!(t.renew_every < t.renew_deadline && t.renew_deadline + Duration::from_secs(5) <= t.lease);
        // A released lease is taken at the standby's next read.
        assert!(t.retry_every <= Duration::from_secs(1));
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
