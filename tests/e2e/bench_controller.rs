//! Controller benchmark (`make bench-controller`): issue 13's measurements.
//!
//! Against a real control plane (`KUBEBUILDER_ASSETS`, as the e2e suite), for
//! each N (100, 500 and 1,000 unless `--clusters` says otherwise), `--repeat`
//! times each:
//!
//! 1. a fresh control plane (etcd, kube-apiserver; no kube-controller-manager,
//!    so no pods, and no webhook: clusters are created complete), the CRDs,
//!    the controller's RBAC and a namespace `bench-N`;
//! 2. stead-controller for that namespace, with `--poll-seconds` (5 unless
//!    told) and `--concurrency` when given, until `/readyz` answers;
//! 3. a watch of DatabaseClusters and of StatefulSets (metadata only) in the
//!    namespace, as the admin;
//! 4. N DatabaseClusters (`replicas: 3`) created by 4 parallel clients (one
//!    connection each, sequential creates), the instant each create returned
//!    recorded;
//! 5. a cluster is converged at the first watch event after which its
//!    StatefulSet exists and its `status.observedGeneration ==
//!    metadata.generation`; the run waits for all N;
//! 6. one poll period of rest, then the requests of two poll periods.
//!
//! It prints one Markdown table: the time the creates took and the time from
//! the first create to the last convergence; per-object create → converged
//! p50 and p99; the controller's own requests (the audit log, filtered to its
//! user) from the first create to the last convergence per cluster, and per
//! steady resync per cluster; its peak RSS (VmHWM), its RSS at the end split
//! into anonymous and file-backed pages, and its CPU time (utime + stime); and the CPU time kube-apiserver and etcd used
//! from the first create to the last convergence (the machine's other
//! bound). Then the requests per new cluster by verb and resource. Figures
//! only; nothing is asserted.
//!
//! Without a control plane it says so in one line and runs the controller
//! crate's mock-API benchmark instead.

// The benchmark uses part of the suite's support code.
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::env;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};

use support::assets::{self, Prerequisites, STEAD_BIN_DIR_ENV};
use support::audit::{self, AuditCounts};
use support::control_plane::{self, ControlPlane, Options};
use support::credentials::CONTROLLER_USER;
use support::say;
use support::stead::{self, CONTROLLER_BINARY, Controller, ControllerOptions};

/// Cluster counts measured by default.
const DEFAULT_SIZES: [usize; 3] = [100, 500, 1000];
/// `--poll-seconds` of the controller unless told: every cluster is requeued this often.
const DEFAULT_POLL_SECONDS: u64 = 5;
/// Parallel clients creating the clusters.
const CREATE_CLIENTS: usize = 4;
/// Poll periods whose requests make the steady-state figure.
const STEADY_PERIODS: u32 = 2;
/// Longest a run may take until every cluster converged.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest the watches may take to list the (empty) namespace.
const WATCH_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the main thread looks at the convergence count.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Replicas of each benchmark cluster (more than one, so a PDB is made too).
const REPLICAS: i64 = 3;
/// The field manager of the benchmark's creates.
const FIELD_MANAGER: &str = "stead-bench";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            say(&format!("bench-controller: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Command-line settings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    sizes: Vec<usize>,
    concurrency: Option<u32>,
    poll_seconds: u64,
    repeat: u32,
}

const USAGE: &str = "accepted: --clusters 100,500,1000, --concurrency N, --poll-seconds S and --repeat R";

impl Settings {
    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut settings =
            Self { sizes: DEFAULT_SIZES.to_vec(), concurrency: None, poll_seconds: DEFAULT_POLL_SECONDS, repeat: 1 };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || inline.clone().or_else(|| args.next()).with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--clusters" => {
                    let text = value()?;
                    settings.sizes = text
                        .split(',')
                        .map(|part| match part.trim().parse::<usize>() {
                            Ok(n) if n > 0 => Ok(n),
                            _ => bail!(
                                "--clusters {text:?}: {part:?} is not accepted; give positive \
                                 counts separated by commas, such as 100,500,1000"
                            ),
                        })
                        .collect::<anyhow::Result<_>>()?;
                }
                "--concurrency" => {
                    settings.concurrency = Some(positive(&flag, &value()?, "it is passed to stead-controller")?);
                }
                "--poll-seconds" => {
                    settings.poll_seconds = u64::from(positive(
                        &flag,
                        &value()?,
                        "it is passed to stead-controller and sets the steady window",
                    )?);
                }
                "--repeat" => settings.repeat = positive(&flag, &value()?, "runs per cluster count")?,
                other => bail!("unknown argument {other:?}; {USAGE}"),
            }
        }
        Ok(settings)
    }
}

/// A positive whole number given to `flag`.
fn positive(flag: &str, text: &str, what: &str) -> anyhow::Result<u32> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} {text:?} is not accepted; give a positive whole number ({what})"),
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let settings = Settings::parse(env::args().skip(1))?;
    let prerequisites = match assets::prerequisites() {
        Ok(found) => found,
        Err(reason) => {
            say(&format!(
                "bench-controller: no control plane ({reason}); falling back to the mock-API \
                 benchmark: cargo run --release -p stead-controller --example bench_reconcile"
            ));
            return mock_benchmark();
        }
    };
    let exe = env::current_exe().context("locating the benchmark executable")?;
    let bin_dir = assets::stead_bin_dir(env::var_os(STEAD_BIN_DIR_ENV), &exe);
    let controller_binary = assets::stead_binary(&bin_dir, CONTROLLER_BINARY)?;

    let mut rows = Vec::new();
    for &clusters in &settings.sizes {
        for run in 1..=settings.repeat {
            say(&format!("bench-controller: {clusters} clusters (run {run}/{})…", settings.repeat));
            let row = measure(&prerequisites, &controller_binary, clusters, &settings)?;
            say(&format!("bench-controller: {}", render_row(&row)));
            rows.push(row);
        }
    }
    println!(
        "stead-controller ({}) against {} on 127.0.0.1, a fresh control plane per run (no \
         kube-controller-manager, no webhook); --concurrency {}, --poll-seconds {}; {CREATE_CLIENTS} \
         parallel creating clients",
        controller_binary.display(),
        control_plane::version(&prerequisites.control_plane.kube_apiserver),
        settings.concurrency.map_or_else(|| "default".to_owned(), |n| n.to_string()),
        settings.poll_seconds,
    );
    println!();
    println!("{}", render_table(&rows));
    println!();
    println!("{}", render_breakdown(&rows));
    Ok(ExitCode::SUCCESS)
}

/// One measured run.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    clusters: usize,
    timings: Timings,
    /// Controller requests from the first create to the last convergence.
    creation_requests: u64,
    /// The same requests by `verb resource[/subresource]`.
    creation_breakdown: BTreeMap<String, u64>,
    /// CPU seconds kube-apiserver and etcd used from the first create to the last convergence.
    control_plane_cpu_seconds: f64,
    /// Controller requests in [`STEADY_PERIODS`] poll periods after convergence.
    steady_requests: u64,
    peak_rss_bytes: u64,
    /// Resident at the end: anonymous (heap, stacks) and file-backed (the mapped binary).
    anon_rss_bytes: u64,
    file_rss_bytes: u64,
    cpu_seconds: f64,
}

impl Row {
    fn requests_per_new_cluster(&self) -> f64 {
        per(self.creation_requests, self.clusters as f64)
    }

    fn requests_per_steady_resync(&self) -> f64 {
        per(self.steady_requests, self.clusters as f64 * f64::from(STEADY_PERIODS))
    }
}

fn per(requests: u64, divisor: f64) -> f64 {
    if divisor > 0.0 { requests as f64 / divisor } else { 0.0 }
}

fn measure(
    prerequisites: &Prerequisites,
    controller_binary: &Path,
    clusters: usize,
    settings: &Settings,
) -> anyhow::Result<Row> {
    let mut control_plane = ControlPlane::start(prerequisites, Options { controller_manager: false })?;
    let kubectl = control_plane.kubectl().clone();
    stead::install_crd(&kubectl)?;
    stead::install_controller_rbac(&kubectl)?;
    let namespace = format!("bench-{clusters}");
    kubectl.ok(&["create", "namespace", &namespace]).with_context(|| format!("creating namespace {namespace}"))?;
    let layout = control_plane.layout().clone();
    let audit_log = layout.audit_log();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the benchmark's async runtime")?;

    // The controller first, idle and ready, as it would be when users arrive.
    let mut controller = Controller::spawn_polling(
        controller_binary,
        &layout.controller_kubeconfig(),
        &layout.logs(),
        &ControllerOptions {
            namespace: Some(namespace.clone()),
            concurrency: settings.concurrency,
            ..Default::default()
        },
        settings.poll_seconds,
    )?;
    controller.wait_ready()?;

    let admin = layout.admin_kubeconfig();
    let watch_client = runtime.block_on(client(&admin))?;
    let tracked = Arc::new(Mutex::new(Convergence::default()));
    let watch = runtime.spawn(track(watch_client, namespace.clone(), Arc::clone(&tracked)));
    let watch_started = Instant::now();
    while !lock(&tracked).listed() {
        if watch_started.elapsed() > WATCH_START_TIMEOUT {
            bail!("the watches of {namespace} did not list within {WATCH_START_TIMEOUT:?}: {:?}", lock(&tracked).error);
        }
        thread::sleep(CHECK_INTERVAL);
    }
    // Connected (TLS done) before the clock starts.
    let creators = runtime.block_on(creating_clients(&admin, &namespace))?;

    let before = audit::read_counts(&audit_log, CONTROLLER_USER)?;
    let breakdown_before = audit::read_breakdown(&audit_log, CONTROLLER_USER)?;
    let control_plane_before = control_plane_cpu(&control_plane)?;
    let first_create = Instant::now();
    let created = runtime.block_on(create_all(creators, &namespace, clusters))?;
    let last_created = first_create.elapsed();
    say(&format!("bench-controller: {clusters} created in {:.2}s", last_created.as_secs_f64()));
    loop {
        controller.ensure_running()?;
        control_plane.ensure_running()?;
        let (count, error) = {
            let state = lock(&tracked);
            (state.converged.len(), state.error.clone())
        };
        if count >= clusters {
            break;
        }
        if first_create.elapsed() > CONVERGE_TIMEOUT {
            bail!(
                "{count}/{clusters} clusters converged after {CONVERGE_TIMEOUT:?}; last watch error: {error:?}; \
                 the controller's log: {}",
                controller.process().log_path().display()
            );
        }
        thread::sleep(CHECK_INTERVAL);
    }
    let at_convergence = audit::read_counts(&audit_log, CONTROLLER_USER)?;
    let breakdown_at_convergence = audit::read_breakdown(&audit_log, CONTROLLER_USER)?;
    let control_plane_cpu_seconds = control_plane_cpu(&control_plane)? - control_plane_before;
    watch.abort();
    let converged = lock(&tracked).converged.clone();

    // Steady state: one poll period for the last reconciles to pass, then two measured.
    let period = Duration::from_secs(settings.poll_seconds);
    thread::sleep(period);
    let steady_start = audit::read_counts(&audit_log, CONTROLLER_USER)?;
    thread::sleep(period * STEADY_PERIODS);
    controller.ensure_running()?;
    let steady_end = audit::read_counts(&audit_log, CONTROLLER_USER)?;
    let peak_rss_bytes = controller.process().peak_rss_bytes()?;
    let (anon_rss_bytes, file_rss_bytes) = controller.process().rss_split_bytes()?;
    let cpu_seconds = controller.process().cpu_seconds()?;
    controller.stop()?;
    drop(runtime);
    control_plane.stop();

    let offset = |at: &Instant| at.saturating_duration_since(first_create).as_secs_f64();
    let created: BTreeMap<String, f64> = created.iter().map(|(name, at)| (name.clone(), offset(at))).collect();
    let converged: BTreeMap<String, f64> = converged.iter().map(|(name, at)| (name.clone(), offset(at))).collect();
    let timings = Timings::of(&created, &converged).context("no cluster was created")?;
    Ok(Row {
        clusters,
        timings,
        creation_requests: at_convergence.since(before).requests,
        creation_breakdown: breakdown_between(&breakdown_before, breakdown_at_convergence),
        control_plane_cpu_seconds,
        steady_requests: requests_between(steady_start, steady_end),
        peak_rss_bytes,
        anon_rss_bytes,
        file_rss_bytes,
        cpu_seconds,
    })
}

/// CPU seconds kube-apiserver and etcd have used so far, together.
fn control_plane_cpu(control_plane: &ControlPlane) -> anyhow::Result<f64> {
    Ok(control_plane.cpu_seconds()?.iter().map(|(_, seconds)| seconds).sum())
}

/// The requests of each kind made between two readings of the breakdown.
fn breakdown_between(start: &BTreeMap<String, u64>, end: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    end.into_iter()
        .map(|(what, n)| {
            let earlier = start.get(&what).copied().unwrap_or(0);
            (what, n.saturating_sub(earlier))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn requests_between(start: AuditCounts, end: AuditCounts) -> u64 {
    end.since(start).requests
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client from the kubeconfig that never goes through a proxy (everything is on loopback).
async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let config = Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .context("configuring the benchmark's client")?;
    config.proxy_url = None;
    kube::Client::try_from(config).context("building the benchmark's client")
}

/// [`CREATE_CLIENTS`] clients, each with its own connection, each having made one request.
async fn creating_clients(kubeconfig: &Path, namespace: &str) -> anyhow::Result<Vec<kube::Client>> {
    let mut clients = Vec::with_capacity(CREATE_CLIENTS);
    for _ in 0..CREATE_CLIENTS {
        let client = client(kubeconfig).await?;
        Api::<Namespace>::all(client.clone())
            .get(namespace)
            .await
            .with_context(|| format!("reading namespace {namespace}"))?;
        clients.push(client);
    }
    Ok(clients)
}

/// The DatabaseCluster resource, as the CRD serves it.
fn cluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("stead.dev", "v1alpha1", "DatabaseCluster"),
        "databaseclusters",
    )
}

/// Creates clusters `1..=clusters`, each client a contiguous share of them in
/// order, all clients at once; returns each name with the instant its create returned.
async fn create_all(
    clients: Vec<kube::Client>,
    namespace: &str,
    clusters: usize,
) -> anyhow::Result<Vec<(String, Instant)>> {
    let resource = cluster_resource();
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(shares(clusters, CREATE_CLIENTS))
        .map(|(client, share)| {
            let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &resource);
            let namespace = namespace.to_owned();
            tokio::spawn(async move {
                let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
                let mut created = Vec::with_capacity(share.clone().count());
                for index in share {
                    let object: DynamicObject =
                        serde_json::from_value(cluster(&namespace, index)).context("encoding a cluster")?;
                    let name = cluster_name(index);
                    api.create(&params, &object).await.with_context(|| format!("creating cluster {name}"))?;
                    created.push((name, Instant::now()));
                }
                anyhow::Ok(created)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(clusters);
    for task in tasks {
        all.extend(task.await.context("a creating client panicked")??);
    }
    Ok(all)
}

/// `1..=total` cut into `parts` contiguous ranges whose sizes differ by at most one (none empty).
fn shares(total: usize, parts: usize) -> Vec<RangeInclusive<usize>> {
    let parts = parts.clamp(1, total.max(1));
    let (base, extra) = (total / parts, total % parts);
    let mut next = 1;
    (0..parts)
        .map(|part| {
            let size = base + usize::from(part < extra);
            let range = next..=next + size - 1;
            next += size;
            range
        })
        .filter(|range| !range.is_empty())
        .collect()
}

fn cluster_name(index: usize) -> String {
    format!("c-{index:04}")
}

/// One complete cluster (nothing left for a webhook to default).
fn cluster(namespace: &str, index: usize) -> Value {
    json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseCluster",
        "metadata": {"name": cluster_name(index), "namespace": namespace},
        "spec": {
            "image": "postgres:17.2",
            "replicas": REPLICAS,
            "port": 5432,
            "storage": {"size": "1Gi"}
        }
    })
}

/// What the watches have seen: which StatefulSets exist, which clusters'
/// status is current, and when each cluster first had both.
#[derive(Debug, Clone)]
struct Convergence<T> {
    clusters_listed: bool,
    statefulsets_listed: bool,
    statefulsets: std::collections::BTreeSet<String>,
    current: std::collections::BTreeSet<String>,
    converged: BTreeMap<String, T>,
    /// The last watch error, for a timeout's message.
    error: Option<String>,
}

impl<T> Default for Convergence<T> {
    fn default() -> Self {
        Self {
            clusters_listed: false,
            statefulsets_listed: false,
            statefulsets: Default::default(),
            current: Default::default(),
            converged: BTreeMap::new(),
            error: None,
        }
    }
}

impl<T: Copy> Convergence<T> {
    /// Both watches have delivered their initial list.
    fn listed(&self) -> bool {
        self.clusters_listed && self.statefulsets_listed
    }

    /// A StatefulSet named `name` exists (seen at `at`).
    fn statefulset(&mut self, name: &str, at: T) {
        self.statefulsets.insert(name.to_owned());
        self.check(name, at);
    }

    /// Cluster `name` was seen at `at` with these generations.
    fn cluster(&mut self, name: &str, generation: Option<i64>, observed: Option<i64>, at: T) {
        if generation.is_some() && generation == observed {
            self.current.insert(name.to_owned());
        } else {
            self.current.remove(name);
        }
        self.check(name, at);
    }

    /// Records the first instant at which `name` has both.
    fn check(&mut self, name: &str, at: T) {
        if self.statefulsets.contains(name) && self.current.contains(name) && !self.converged.contains_key(name) {
            self.converged.insert(name.to_owned(), at);
        }
    }
}

/// Watches the namespace's clusters and StatefulSets until aborted, recording into `state`.
async fn track(client: kube::Client, namespace: String, state: Arc<Mutex<Convergence<Instant>>>) {
    enum Seen {
        Cluster(Result<Event<DynamicObject>, watcher::Error>),
        StatefulSet(Result<Event<PartialObjectMeta<StatefulSet>>, watcher::Error>),
    }
    let clusters: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &cluster_resource());
    let statefulsets: Api<PartialObjectMeta<StatefulSet>> = Api::namespaced(client, &namespace);
    let clusters = watcher::watcher(clusters, watcher::Config::default()).default_backoff().map(Seen::Cluster);
    let statefulsets =
        watcher::watcher(statefulsets, watcher::Config::default()).default_backoff().map(Seen::StatefulSet);
    let mut events = std::pin::pin!(futures::stream::select(clusters, statefulsets));
    while let Some(seen) = events.next().await {
        let at = Instant::now();
        let mut state = lock(&state);
        match seen {
            Seen::Cluster(Ok(Event::Apply(object) | Event::InitApply(object))) => {
                let generation = object.metadata.generation;
                let observed = object.data.pointer("/status/observedGeneration").and_then(Value::as_i64);
                let name = object.metadata.name.unwrap_or_default();
                state.cluster(&name, generation, observed, at);
            }
            Seen::Cluster(Ok(Event::InitDone)) => state.clusters_listed = true,
            Seen::StatefulSet(Ok(Event::Apply(object) | Event::InitApply(object))) => {
                state.statefulset(&object.metadata.name.unwrap_or_default(), at);
            }
            Seen::StatefulSet(Ok(Event::InitDone)) => state.statefulsets_listed = true,
            Seen::Cluster(Ok(Event::Init | Event::Delete(_)))
            | Seen::StatefulSet(Ok(Event::Init | Event::Delete(_))) => {}
            Seen::Cluster(Err(err)) => state.error = Some(format!("watching clusters: {err}")),
            Seen::StatefulSet(Err(err)) => state.error = Some(format!("watching StatefulSets: {err}")),
        }
    }
}

/// The times of one run, in seconds from the first create's start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Timings {
    /// When the last create returned.
    creates: f64,
    /// When the last cluster converged.
    total: f64,
    /// Per-object create → converged.
    p50: f64,
    p99: f64,
}

impl Timings {
    /// From each cluster's create (returned) and convergence offsets; `None` without creates.
    fn of(created: &BTreeMap<String, f64>, converged: &BTreeMap<String, f64>) -> Option<Self> {
        let creates = created.values().copied().fold(None, |max: Option<f64>, t| Some(max.map_or(t, |m| m.max(t))))?;
        let total = converged.values().copied().fold(0.0, f64::max);
        let mut latencies: Vec<f64> = created
            .iter()
            .filter_map(|(name, created)| converged.get(name).map(|converged| (converged - created).max(0.0)))
            .collect();
        latencies.sort_by(f64::total_cmp);
        Some(Self {
            creates,
            total,
            p50: percentile(&latencies, 50.0).unwrap_or(f64::NAN),
            p99: percentile(&latencies, 99.0).unwrap_or(f64::NAN),
        })
    }
}

/// The nearest-rank `p`th percentile of ascending `sorted`.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

const TABLE_HEADER: &str = "| N | creates (s) | total (s) | p50 (s) | p99 (s) | requests/new cluster | \
                            requests/steady resync per cluster | peak RSS (MiB) | RSS at the end, \
                            anonymous + file (MiB) | CPU (s) | API server + etcd CPU (s) |\n\
                            |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

fn render_row(row: &Row) -> String {
    format!(
        "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} + {:.1} | {:.2} | {:.2} |",
        row.clusters,
        row.timings.creates,
        row.timings.total,
        row.timings.p50,
        row.timings.p99,
        row.requests_per_new_cluster(),
        row.requests_per_steady_resync(),
        row.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        row.anon_rss_bytes as f64 / (1024.0 * 1024.0),
        row.file_rss_bytes as f64 / (1024.0 * 1024.0),
        row.cpu_seconds,
        row.control_plane_cpu_seconds,
    )
}

/// The figures as one Markdown table.
fn render_table(rows: &[Row]) -> String {
    let mut out = String::from(TABLE_HEADER);
    for row in rows {
        out.push_str(&render_row(row));
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// Each run's requests per new cluster by verb and resource, one line per run.
fn render_breakdown(rows: &[Row]) -> String {
    let mut out = String::from("Requests per new cluster, by verb and resource:\n");
    for row in rows {
        let parts: Vec<String> = row
            .creation_breakdown
            .iter()
            .map(|(what, n)| format!("{what} {:.2}", per(*n, row.clusters as f64)))
            .collect();
        out.push_str(&format!("- N={}: {}\n", row.clusters, parts.join(", ")));
    }
    out.trim_end().to_owned()
}

/// Runs the controller crate's mock-API benchmark and passes on its exit.
fn mock_benchmark() -> anyhow::Result<ExitCode> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the tests crate has no parent directory")?;
    let status = Command::new(&cargo)
        .args(["run", "--release", "-p", "stead-controller", "--example", "bench_reconcile"])
        .current_dir(workspace)
        .status()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        say(&format!("bench-controller: the mock benchmark ended with {status}"));
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn settings_default_to_issue_13s_sizes() {
        assert_eq!(
            Settings::parse(args(&[])).unwrap(),
            Settings { sizes: vec![100, 500, 1000], concurrency: None, poll_seconds: 5, repeat: 1 }
        );
        assert_eq!(
            Settings::parse(args(&["--clusters", "10,20", "--concurrency=8", "--poll-seconds", "3", "--repeat=2"]))
                .unwrap(),
            Settings { sizes: vec![10, 20], concurrency: Some(8), poll_seconds: 3, repeat: 2 }
        );
    }

    #[test]
    fn bad_arguments_say_what_is_accepted() {
        let err = Settings::parse(args(&["--clusters", "10,x"])).unwrap_err().to_string();
        assert!(err.contains("\"x\" is not accepted") && err.contains("100,500,1000"), "{err}");
        let err = Settings::parse(args(&["--concurrency", "0"])).unwrap_err().to_string();
        assert!(err.contains("positive whole number"), "{err}");
        let err = Settings::parse(args(&["--repeat", "-1"])).unwrap_err().to_string();
        assert!(err.contains("--repeat \"-1\" is not accepted"), "{err}");
        let err = Settings::parse(args(&["--poll-seconds", "soon"])).unwrap_err().to_string();
        assert!(err.contains("--poll-seconds"), "{err}");
        let err = Settings::parse(args(&["--fast"])).unwrap_err().to_string();
        assert!(err.contains("unknown argument \"--fast\"") && err.contains("--repeat R"), "{err}");
        let err = Settings::parse(args(&["--clusters"])).unwrap_err().to_string();
        assert!(err.contains("--clusters needs a value"), "{err}");
    }

    #[test]
    fn shares_cover_every_cluster_once_in_near_equal_parts() {
        assert_eq!(shares(10, 4), vec![1..=3, 4..=6, 7..=8, 9..=10]);
        assert_eq!(shares(1000, 4), vec![1..=250, 251..=500, 501..=750, 751..=1000]);
        assert_eq!(shares(2, 4), vec![1..=1, 2..=2]);
        assert!(shares(0, 4).is_empty());
    }

    #[test]
    fn a_cluster_is_complete_and_named() {
        let object = cluster("bench-3", 3);
        assert_eq!(object["metadata"]["name"], "c-0003");
        assert_eq!(object["metadata"]["namespace"], "bench-3");
        assert_eq!(object["spec"]["replicas"], REPLICAS);
        assert_eq!(object["spec"]["port"], 5432);
        let decoded: DynamicObject = serde_json::from_value(object).unwrap();
        assert_eq!(decoded.metadata.name.as_deref(), Some("c-0003"));
        assert_eq!(decoded.data["spec"]["storage"]["size"], "1Gi");
    }

    #[test]
    fn convergence_needs_the_statefulset_and_a_current_status_and_is_recorded_once() {
        let mut state = Convergence::<u32>::default();
        assert!(!state.listed());
        state.cluster("a", Some(1), None, 1);
        state.statefulset("a", 2);
        assert!(state.converged.is_empty(), "no status yet");
        state.cluster("a", Some(1), Some(1), 3);
        assert_eq!(state.converged.get("a"), Some(&3));
        // Status first, StatefulSet second.
        state.cluster("b", Some(2), Some(2), 4);
        assert!(!state.converged.contains_key("b"));
        state.statefulset("b", 5);
        assert_eq!(state.converged.get("b"), Some(&5));
        // Later events do not move the first convergence.
        state.cluster("a", Some(1), Some(1), 9);
        assert_eq!(state.converged.get("a"), Some(&3));
        // A stale status is not current.
        state.statefulset("c", 6);
        state.cluster("c", Some(2), Some(1), 7);
        assert!(!state.converged.contains_key("c"));
        state.cluster("d", None, None, 8);
        state.statefulset("d", 8);
        assert!(!state.converged.contains_key("d"), "no generation, nothing to match");
        state.clusters_listed = true;
        state.statefulsets_listed = true;
        assert!(state.listed());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&[4.0], 99.0), Some(4.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn timings_are_measured_from_each_create() {
        let created: BTreeMap<String, f64> =
            [("a", 0.1), ("b", 0.2), ("c", 2.0)].into_iter().map(|(n, t)| (n.to_owned(), t)).collect();
        let converged: BTreeMap<String, f64> =
            [("a", 1.1), ("b", 0.15), ("c", 5.0)].into_iter().map(|(n, t)| (n.to_owned(), t)).collect();
        let timings = Timings::of(&created, &converged).unwrap();
        assert_eq!(timings.creates, 2.0);
        assert_eq!(timings.total, 5.0);
        // Latencies 1.0, 0.0 (clamped), 3.0.
        assert_eq!(timings.p50, 1.0);
        assert_eq!(timings.p99, 3.0);
        assert!(Timings::of(&BTreeMap::new(), &converged).is_none());
    }

    #[test]
    fn table_has_one_row_per_run_with_per_cluster_requests() {
        let row = Row {
            clusters: 100,
            timings: Timings { creates: 1.234, total: 5.5, p50: 2.0, p99: 4.321 },
            creation_requests: 1150,
            creation_breakdown: [
                ("create services".to_owned(), 300),
                ("patch databaseclusters/status".to_owned(), 150),
            ]
            .into(),
            steady_requests: 0,
            peak_rss_bytes: 20 * 1024 * 1024,
            anon_rss_bytes: 6 * 1024 * 1024,
            file_rss_bytes: 14 * 1024 * 1024,
            cpu_seconds: 1.5,
            control_plane_cpu_seconds: 9.25,
        };
        let table = render_table(&[row.clone(), Row { steady_requests: 50, ..row.clone() }]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("| N | creates (s) | total (s) | p50 (s) | p99 (s) | requests/new cluster |"));
        assert_eq!(lines[0].matches('|').count(), lines[1].matches('|').count());
        assert_eq!(lines[2], "| 100 | 1.23 | 5.50 | 2.00 | 4.32 | 11.50 | 0.00 | 20.0 | 6.0 + 14.0 | 1.50 | 9.25 |");
        assert_eq!(lines[3], "| 100 | 1.23 | 5.50 | 2.00 | 4.32 | 11.50 | 0.25 | 20.0 | 6.0 + 14.0 | 1.50 | 9.25 |");
        assert_eq!(
            render_breakdown(&[row]),
            "Requests per new cluster, by verb and resource:\n\
             - N=100: create services 3.00, patch databaseclusters/status 1.50"
        );
    }

    #[test]
    fn the_breakdown_counts_only_what_happened_between_two_readings() {
        let start: BTreeMap<String, u64> = [("list pods".to_owned(), 2), ("create services".to_owned(), 1)].into();
        let end: BTreeMap<String, u64> =
            [("list pods".to_owned(), 2), ("create services".to_owned(), 4), ("create events".to_owned(), 1)].into();
        let want: BTreeMap<String, u64> = [("create services".to_owned(), 3), ("create events".to_owned(), 1)].into();
        assert_eq!(breakdown_between(&start, end), want);
    }
}
