//! Load generator for `make bench-webhook`: prints figures, asserts nothing.
//!
//! It starts the release `stead-webhook serve` as a separate process on
//! 127.0.0.1 with freshly generated certificates, then drives `/validate` and
//! `/mutate` over TLS keep-alive HTTP/1.1 connections with a realistic
//! ~3 KB UPDATE review (old and new object):
//!
//! - a fixed offered rate (open loop): a pacing thread schedules every
//!   request, and latency is measured from the *intended* send time, so a
//!   stalled server is charged for the requests it delayed (no coordinated
//!   omission);
//! - saturation (closed loop): many connections sending back to back.
//!
//! Finally it reads the server's peak RSS (VmHWM) from /proc and stops it
//! with SIGTERM. Everything is loopback-only and bounded in time.
//!
//! Environment: `STEAD_WEBHOOK_BIN` (server binary; default: next to this
//! example's directory), `BENCH_RATE` (default 2000), `BENCH_SECONDS`
//! (per phase, default 5), `BENCH_CONNECTIONS` (saturation, default 32).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http::Request;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use serde_json::{Value, json};
use stead_certs::{ALPN_HTTP1, CertificateAuthority};
use stead_webhook::client::WebhookClient;
use tokio::sync::{Mutex, mpsc};

/// Connections serving the fixed-rate phase; enough that the pacing, not
/// the pool, decides when a request leaves.
const PACED_CONNECTIONS: usize = 16;
/// Upper bound on one request; anything slower counts as an error.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    let settings = BenchSettings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(settings))
}

struct BenchSettings {
    server_bin: PathBuf,
    rate: u64,
    phase: Duration,
    connections: usize,
}

impl BenchSettings {
    fn from_env() -> Result<Self> {
        let number = |name: &str, default: u64| -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v.parse().with_context(|| format!("{name}={v:?} is not a whole number")),
                Err(_) => Ok(default),
            }
        };
        let server_bin = match std::env::var_os("STEAD_WEBHOOK_BIN") {
            Some(path) => PathBuf::from(path),
            None => {
                let exe = std::env::current_exe()?;
                // target/<profile>/examples/bench -> target/<profile>/stead-webhook
                exe.parent().and_then(|p| p.parent()).map(|p| p.join("stead-webhook")).context("no binary directory")?
            }
        };
        let seconds = number("BENCH_SECONDS", 5)?.clamp(1, 60);
        Ok(Self {
            server_bin,
            rate: number("BENCH_RATE", 2000)?.clamp(1, 100_000),
            phase: Duration::from_secs(seconds),
            connections: usize::try_from(number("BENCH_CONNECTIONS", 32)?.clamp(1, 256))?,
        })
    }
}

async fn run(settings: BenchSettings) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::generate("stead bench CA", 1)?;
    let serving = ca.issue_serving(&["localhost".to_owned()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 1)?;
    stead_certs::write_bundle(dir.path(), &ca, &serving)?;
    let tls_config = Arc::new(stead_certs::client_config(&ca.cert_pem(), &[ALPN_HTTP1])?);

    let (listen, metrics) = (free_port()?, free_port()?);
    let mut server = Server::spawn(&settings.server_bin, dir.path(), listen, metrics)?;
    server.wait_ready(metrics).await?;

    let body = Bytes::from(serde_json::to_vec(&bench_review())?);
    println!(
        "stead-webhook bench: server pid {}, review {} bytes (UPDATE, old and new object), HTTP/1.1 keep-alive over TLS",
        server.pid(),
        body.len()
    );
    for path in ["/validate", "/mutate"] {
        let mut probe = connect(listen, &tls_config).await?;
        let answer = send(&mut probe, path, &body).await?;
        let answer: Value = serde_json::from_slice(&answer)?;
        if answer["response"]["allowed"] != true {
            bail!("{path} did not admit the bench review: {answer}");
        }
    }

    println!();
    println!(
        "{:<9} {:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "route", "phase", "req/s", "p50", "p99", "p99.9", "max", "errors"
    );
    for path in ["/validate", "/mutate"] {
        let fixed = fixed_rate(listen, &tls_config, path, &body, settings.rate, settings.phase).await?;
        fixed.print(path, &format!("fixed {} req/s", settings.rate));
        let saturated = saturation(listen, &tls_config, path, &body, settings.connections, settings.phase).await?;
        saturated.print(path, &format!("saturation, {} conns", settings.connections));
    }
    println!();
    let (peak, now) = server.rss()?;
    println!("server peak RSS (VmHWM): {:.1} MiB; RSS now (VmRSS): {:.1} MiB", mib(peak), mib(now));
    let drained = server.terminate()?;
    println!("server stopped on SIGTERM in {drained:?}");
    Ok(())
}

/// The review a busy cluster sends most: an UPDATE that grows storage and
/// scales up, with the old object, managed fields and last-applied annotation.
fn bench_review() -> Value {
    let object = |replicas: i32, size: &str, generation: i64| {
        let spec = json!({
            "image": "registry.example.com/db/postgres:17.2",
            "replicas": replicas,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
            "storage": {"size": size, "storageClassName": "fast-ssd"}
        });
        let applied = json!({"apiVersion": "stead.dev/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": "orders", "namespace": "shop"}, "spec": spec});
        json!({
            "apiVersion": "stead.dev/v1alpha1",
            "kind": "DatabaseCluster",
            "metadata": {
                "name": "orders", "namespace": "shop", "uid": "7d1f2c7e-5b8a-4f7b-9d0e-3c2a1b0f9e88",
                "resourceVersion": "918273", "generation": generation, "creationTimestamp": "2025-11-03T09:12:44Z",
                "labels": {"app.kubernetes.io/part-of": "webshop", "team": "checkout"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied.to_string()},
                "finalizers": ["stead.dev/finalizer"],
                "managedFields": [{"apiVersion": "stead.dev/v1alpha1", "fieldsType": "FieldsV1", "manager": "kubectl",
                    "operation": "Update", "time": "2025-11-03T09:12:44Z",
                    "fieldsV1": {"f:spec": {"f:image": {}, "f:replicas": {}, "f:storage": {"f:size": {}}}}}]
            },
            "spec": spec,
            "status": {"observedGeneration": 3, "replicas": 3, "readyReplicas": 3,
                "selector": "app.kubernetes.io/instance=orders,app.kubernetes.io/name=databasecluster"}
        })
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b6a8c1e-41d5-4a57-9c1f-5a0c8f3e2d11",
            "kind": {"group": "stead.dev", "version": "v1alpha1", "kind": "DatabaseCluster"},
            "resource": {"group": "stead.dev", "version": "v1alpha1", "resource": "databaseclusters"},
            "name": "orders", "namespace": "shop", "operation": "UPDATE",
            "userInfo": {"username": "alice@example.com", "groups": ["platform-users", "system:authenticated"]},
            "object": object(5, "20Gi", 4),
            "oldObject": object(3, "10Gi", 3),
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions", "fieldManager": "kubectl"}
        }
    })
}

/// Latencies and counts of one phase.
struct Figures {
    elapsed: Duration,
    latencies_ns: Vec<u64>,
    errors: u64,
}

impl Figures {
    fn print(mut self, path: &str, phase: &str) {
        self.latencies_ns.sort_unstable();
        let at = |q: f64| -> String {
            if self.latencies_ns.is_empty() {
                return "-".to_owned();
            }
            let index = ((self.latencies_ns.len() as f64 * q).ceil() as usize).clamp(1, self.latencies_ns.len()) - 1;
            micros(self.latencies_ns[index])
        };
        let rate = self.latencies_ns.len() as f64 / self.elapsed.as_secs_f64();
        println!(
            "{:<9} {:<22} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>7}",
            path.trim_start_matches('/'),
            phase,
            rate,
            at(0.50),
            at(0.99),
            at(0.999),
            at(1.0),
            self.errors
        );
    }
}

fn micros(ns: u64) -> String {
    if ns >= 10_000_000 { format!("{:.1}ms", ns as f64 / 1e6) } else { format!("{}µs", ns / 1000) }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Open loop at `rate` requests per second for `length`.
async fn fixed_rate(
    address: SocketAddr,
    tls: &Arc<ClientConfig>,
    path: &'static str,
    body: &Bytes,
    rate: u64,
    length: Duration,
) -> Result<Figures> {
    let total = rate * length.as_secs();
    let (schedule, queue) = mpsc::unbounded_channel::<Instant>();
    let queue = Arc::new(Mutex::new(queue));
    let mut workers = Vec::new();
    for _ in 0..PACED_CONNECTIONS {
        let mut conn = connect(address, tls).await?;
        let (queue, body) = (Arc::clone(&queue), body.clone());
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0_u64);
            loop {
                let next = queue.lock().await.recv().await;
                let Some(intended) = next else { break };
                match tokio::time::timeout(REQUEST_DEADLINE, send(&mut conn, path, &body)).await {
                    Ok(Ok(_)) => latencies.push(nanos(intended.elapsed())),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    // A blocking thread paces the schedule: its sleep is finer than tokio's 1 ms timer wheel.
    let started = Instant::now();
    let interval = Duration::from_secs(1) / u32::try_from(rate)?;
    let pacer = tokio::task::spawn_blocking(move || {
        for i in 0..total {
            let intended = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
            if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if schedule.send(intended).is_err() {
                break;
            }
        }
    });
    pacer.await?;
    collect(workers, started).await
}

/// Closed loop: `connections` clients sending back to back for `length`.
async fn saturation(
    address: SocketAddr,
    tls: &Arc<ClientConfig>,
    path: &'static str,
    body: &Bytes,
    connections: usize,
    length: Duration,
) -> Result<Figures> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let mut conn = connect(address, tls).await?;
        let (stop, sent, body) = (Arc::clone(&stop), Arc::clone(&sent), body.clone());
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::with_capacity(65_536), 0_u64);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                match tokio::time::timeout(REQUEST_DEADLINE, send(&mut conn, path, &body)).await {
                    Ok(Ok(_)) => latencies.push(nanos(start.elapsed())),
                    _ => errors += 1,
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    collect(workers, started).await
}

async fn collect(workers: Vec<tokio::task::JoinHandle<(Vec<u64>, u64)>>, started: Instant) -> Result<Figures> {
    let mut figures = Figures { elapsed: Duration::ZERO, latencies_ns: Vec::new(), errors: 0 };
    for worker in workers {
        let (latencies, errors) = worker.await?;
        figures.latencies_ns.extend(latencies);
        figures.errors += errors;
    }
    figures.elapsed = started.elapsed();
    Ok(figures)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn connect(address: SocketAddr, tls: &Arc<ClientConfig>) -> Result<WebhookClient> {
    Ok(WebhookClient::connect_to(address, "localhost", Arc::clone(tls)).await?)
}

async fn send(conn: &mut WebhookClient, path: &str, body: &Bytes) -> Result<Bytes> {
    let (status, bytes) = conn.post_json(path, body.clone()).await?;
    if !status.is_success() {
        bail!("{path} answered {status}");
    }
    Ok(bytes)
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The webhook under test, a separate process.
struct Server {
    child: Child,
}

impl Server {
    fn spawn(
        bin: &std::path::Path,
        cert_dir: &std::path::Path,
        listen: SocketAddr,
        metrics: SocketAddr,
    ) -> Result<Self> {
        let child = Command::new(bin)
            .args(["serve", "--listen", &listen.to_string(), "--metrics-listen", &metrics.to_string()])
            .arg("--cert-dir")
            .arg(cert_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {} (build it with cargo build --release)", bin.display()))?;
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&mut self, metrics: SocketAddr) -> Result<()> {
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited early: {status}");
            }
            if readyz(metrics).await.unwrap_or(false) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("the server did not become ready within 5 s")
    }

    /// `(VmHWM, VmRSS)` in KiB.
    fn rss(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> Result<u64> {
            let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in status"))?;
            line.split_whitespace().nth(1).context("empty field")?.parse().context("not a number")
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// SIGTERM, then wait (bounded) for the drain to finish.
    fn terminate(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(exit) = self.child.try_wait()? {
                if !exit.success() {
                    bail!("the server exited with {exit}");
                }
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child.kill()?;
        bail!("the server did not stop within 30 s of SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn readyz(metrics: SocketAddr) -> Result<bool> {
    let tcp = tokio::net::TcpStream::connect(metrics).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let request = Request::get("/readyz").header("host", "localhost").body(Full::new(Bytes::new()))?;
    Ok(sender.send_request(request).await?.status().is_success())
}
