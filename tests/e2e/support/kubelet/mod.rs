//! A stand-in kubelet: the node `stand-in`, whose pods are local processes.
//!
//! It watches the pods stead's StatefulSets make (label
//! `app.kubernetes.io/managed-by=stead-controller`) in the namespaces the
//! suite hands it ([`Kubelet::serve_namespace`]; pods elsewhere stay
//! Pending, as on a cluster with no room), binds each to the node, and runs
//! it: a loopback address of its own (127.0.0.10 and up, never two live
//! pods on one), its volumes as host directories, its init containers and
//! then its containers as processes of the host's `postgres` user, probes
//! and restarts, and a status a kubelet would write. On deletion it stops
//! the pod within its grace period and deletes it with grace 0.
//!
//! What it does not emulate is in `tests/e2e/README.md`. The parts:
//! [`spec`] (paths, environment, command), [`volumes`], [`process`],
//! [`probe`], [`status`] (the status vocabulary and back-off) and [`pod`]
//! (one pod's life).

mod pod;
pub mod probe;
pub mod process;
pub mod spec;
pub mod status;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::process::HostUser;

/// The node's name.
pub const NODE_NAME: &str = "stand-in";
/// The pods it takes: those of stead's StatefulSets.
pub const POD_SELECTOR: &str = "app.kubernetes.io/managed-by=stead-controller";
/// The node's own address (`status.hostIP`).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How long a pod gets to stop when the suite ends (its grace period, at most).
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long stopping waits for every pod.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where things are and how the node behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// A kubeconfig with the rights of a node and more (the suite's admin).
    pub kubeconfig: PathBuf,
    /// Pod directories and claims go below it.
    pub root: PathBuf,
    /// The kubelet's log and one log per container go here.
    pub log_dir: PathBuf,
    /// Where the built stead binaries are (`/usr/local/bin/stead-*` of the image).
    pub bin_dir: PathBuf,
}

/// Settings of the running node, shared by its pod workers.
#[derive(Debug, Clone)]
pub(crate) struct NodeSettings {
    pub node: String,
    pub host_ip: Ipv4Addr,
    pub bin_dir: PathBuf,
    /// Readiness is probed this often, whatever `periodSeconds` says.
    pub readiness_period: Duration,
    pub backoff_base: Duration,
    pub stop_grace: Duration,
}

/// The directories of the node.
#[derive(Debug, Clone)]
pub(crate) struct Dirs {
    pub pods: PathBuf,
    pub claims: PathBuf,
    /// The stand-in snapshotter's copies, which claims are restored from.
    pub snapshots: PathBuf,
    pub logs: PathBuf,
}

/// Who owns a pod's emptyDir volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyDirs {
    /// root, group `fsGroup`, mode 2777: what a kubelet does.
    AsKubelet,
}

/// What a pod worker needs to reach a running pod from outside.
#[derive(Debug, Clone)]
struct PodHandle {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    roots: Vec<PathBuf>,
}

/// Loopback addresses for pods: 127.0.x.10 to 127.0.x.254, in order, none
/// given to two live pods.
#[derive(Debug, Default)]
struct AddressPool {
    next: u32,
    live: BTreeSet<Ipv4Addr>,
}

/// The `index`-th pod address.
pub fn pod_address(index: u32) -> Ipv4Addr {
    let per_block = 245;
    let block = u8::try_from((index / per_block) % 256).unwrap_or(0);
    let host = u8::try_from(10 + index % per_block).unwrap_or(10);
    Ipv4Addr::new(127, 0, block, host)
}

impl AddressPool {
    fn take(&mut self) -> Ipv4Addr {
        loop {
            let candidate = pod_address(self.next);
            self.next = self.next.wrapping_add(1);
            if self.live.insert(candidate) {
                return candidate;
            }
        }
    }
}

/// State shared by the main loop and the pod workers.
pub(crate) struct Shared {
    pub client: kube::Client,
    pub options: NodeSettings,
    pub dirs: Dirs,
    pub user: HostUser,
    served: Mutex<BTreeMap<String, EmptyDirs>>,
    addresses: Mutex<AddressPool>,
    pods: Mutex<BTreeMap<String, PodHandle>>,
    peaks: Mutex<BTreeMap<String, u64>>,
    log: Mutex<File>,
    sequence: AtomicU64,
}

impl Shared {
    /// One line in the kubelet's log.
    pub fn log(&self, line: &str) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(log, "{} {line}", status::now());
    }

    /// The highest `VmHWM` seen for a process.
    pub fn record_peak(&self, key: String, bytes: u64) {
        let mut peaks = self.peaks.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = peaks.entry(key).or_insert(0);
        *entry = (*entry).max(bytes);
    }

    /// A pod is gone: its address may go to another.
    pub fn release(&self, uid: &str, ip: Ipv4Addr) {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner).remove(uid);
        self.addresses.lock().unwrap_or_else(PoisonError::into_inner).live.remove(&ip);
    }

    fn serves(&self, namespace: &str) -> bool {
        self.served.lock().unwrap_or_else(PoisonError::into_inner).contains_key(namespace)
    }

    /// How the namespace's emptyDir volumes are owned.
    pub fn empty_dirs(&self, namespace: &str) -> EmptyDirs {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .copied()
            .unwrap_or(EmptyDirs::AsKubelet)
    }
}

/// A running stand-in kubelet; stopping it (or dropping it) stops every pod.
pub struct Kubelet {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    main: Option<JoinHandle<()>>,
    root: PathBuf,
    log_path: PathBuf,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").field("root", &self.root).finish_non_exhaustive()
    }
}

/// Whether pods can run here; `Err` says why not.
pub fn availability() -> Result<(), String> {
    process::availability().map(|_| ())
}

impl Kubelet {
    /// Registers the node and starts watching pods.
    pub fn start(options: &Options) -> anyhow::Result<Self> {
        let user = process::availability().map_err(anyhow::Error::msg)?;
        // The pod's user must reach its directories: traverse-only above them.
        let mut ancestor = options.root.parent();
        while let Some(dir) = ancestor {
            if dir == Path::new("/") || dir == Path::new("/tmp") {
                break;
            }
            let mode = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?.permissions().mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode((mode & 0o7777) | 0o711))
                    .with_context(|| format!("letting the pod user traverse {}", dir.display()))?;
            }
            ancestor = dir.parent();
        }
        let dirs = Dirs {
            pods: options.root.join("pods"),
            claims: options.root.join("claims"),
            snapshots: options.root.join("snapshots"),
            logs: options.log_dir.join("pods"),
        };
        for dir in [&options.root, &dirs.pods, &dirs.claims] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o711))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
        }
        fs::create_dir_all(&dirs.logs).with_context(|| format!("creating {}", dirs.logs.display()))?;
        // Canonical, so they compare with what /proc shows.
        let dirs = Dirs {
            pods: fs::canonicalize(&dirs.pods).context("resolving the pods directory")?,
            claims: fs::canonicalize(&dirs.claims).context("resolving the claims directory")?,
            snapshots: dirs.snapshots,
            logs: dirs.logs,
        };
        let log_path = options.log_dir.join("kubelet.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-kubelet")
            .enable_all()
            .build()
            .context("starting the stand-in kubelet's runtime")?;
        let client = runtime.block_on(client(&options.kubeconfig))?;
        let shared = Arc::new(Shared {
            client,
            options: NodeSettings {
                node: NODE_NAME.to_owned(),
                host_ip: HOST_IP,
                bin_dir: options.bin_dir.clone(),
                readiness_period: Duration::from_secs(1),
                backoff_base: status::BACKOFF_BASE,
                stop_grace: STOP_GRACE,
            },
            dirs,
            user,
            served: Mutex::new(BTreeMap::new()),
            addresses: Mutex::new(AddressPool::default()),
            pods: Mutex::new(BTreeMap::new()),
            peaks: Mutex::new(BTreeMap::new()),
            log: Mutex::new(log),
            sequence: AtomicU64::new(0),
        });
        runtime.block_on(register_node(&shared.client)).context("registering the node stand-in")?;
        shared.log(&format!("node {NODE_NAME} registered; pods run as {}", shared.user.name));
        let (stop, stop_rx) = watch::channel(false);
        let main = runtime.spawn(main_loop(Arc::clone(&shared), stop_rx));
        Ok(Self { runtime: Some(runtime), shared, stop, main: Some(main), root: options.root.clone(), log_path })
    }

    /// Runs stead's pods in `namespace` from now on, with emptyDir volumes owned as `empty_dirs` says.
    pub fn serve_namespace(&self, namespace: &str, empty_dirs: EmptyDirs) {
        self.shared.served.lock().unwrap_or_else(PoisonError::into_inner).insert(namespace.to_owned(), empty_dirs);
    }

    /// SIGKILLs every process of a running pod (a crash, as the node sees
    /// it: the container then exits and is restarted with back-off);
    /// returns how many processes there were.
    pub fn kill_pod(&self, namespace: &str, name: &str) -> anyhow::Result<usize> {
        let roots = {
            let pods = self.shared.pods.lock().unwrap_or_else(PoisonError::into_inner);
            pods.values().find(|p| p.namespace == namespace && p.name == name).map(|p| p.roots.clone())
        };
        let roots = roots.with_context(|| format!("pod {namespace}/{name} does not run on the stand-in node"))?;
        let killed = process::kill_under(&roots);
        self.shared.log(&format!("{namespace}/{name}: killed {killed} processes on request"));
        Ok(killed)
    }

    /// The address of a running pod.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        let pods = self.shared.pods.lock().unwrap_or_else(PoisonError::into_inner);
        pods.values().find(|p| p.namespace == namespace && p.name == name).map(|p| p.ip)
    }

    /// The highest `VmHWM` of each stead-instance process so far.
    pub fn instance_peaks(&self) -> Vec<(String, u64)> {
        self.shared.peaks.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The kubelet's own log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Every container log written so far.
    pub fn container_logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = fs::read_dir(&self.shared.dirs.logs)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        logs
    }

    /// Stops every pod (SIGTERM, then SIGKILL after at most 15 s), then
    /// checks that no process of any pod is left; fails naming them if one was.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(runtime) = self.runtime.take() else { return Ok(()) };
        let _ = self.stop.send(true);
        if let Some(main) = self.main.take() {
            let waited = runtime.block_on(async { tokio::time::timeout(STOP_TIMEOUT, main).await });
            if waited.is_err() {
                self.shared.log("pods did not stop in time; killing what is left");
            }
        }
        runtime.shutdown_timeout(Duration::from_secs(5));
        let roots = [self.shared.dirs.pods.clone(), self.shared.dirs.claims.clone()];
        let left: Vec<String> = process::processes_under(&roots)
            .into_iter()
            .map(|pid| {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!("{pid} {}", String::from_utf8_lossy(&cmdline).replace('\0', " ").trim())
            })
            .collect();
        let killed = process::kill_under(&roots);
        if !left.is_empty() {
            bail!(
                "{} processes of pods were still running after the stand-in kubelet stopped ({killed} killed now): {}",
                left.len(),
                left.join("; ")
            );
        }
        Ok(())
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            crate::support::say(&format!("e2e: {err:#}"));
        }
    }
}

/// A client from the kubeconfig that never goes through a proxy (everything is on loopback).
async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let config = Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .context("configuring the stand-in kubelet's client")?;
    config.proxy_url = None;
    kube::Client::try_from(config).context("building the stand-in kubelet's client")
}

/// Creates the Node (Ready, on 127.0.0.1), or updates an existing one's status.
async fn register_node(client: &kube::Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        }
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => return Err(err).context("creating the Node"),
    }
    let now = status::now().to_string();
    let status = json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "the stand-in kubelet runs pods as local processes",
            "lastHeartbeatTime": now, "lastTransitionTime": now
        }],
        "addresses": [{"type": "InternalIP", "address": HOST_IP.to_string()}, {"type": "Hostname", "address": NODE_NAME}],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "stand-in",
            "containerRuntimeVersion": "stand-in://0", "kubeletVersion": "v0.0.0-stand-in", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64"
        }
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("reporting the Node Ready")?;
    Ok(())
}

/// A pod with a worker, or one that waits for its namespace to be served.
struct Tracked {
    updates: watch::Sender<Option<Pod>>,
    task: Option<JoinHandle<()>>,
}

/// Watches pods and hands each to its worker until the kubelet stops.
async fn main_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let stream = watcher::watcher(pods, watcher::Config::default().labels(POD_SELECTOR)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut tracked: BTreeMap<String, Tracked> = BTreeMap::new();
    let mut waiting: BTreeMap<String, Pod> = BTreeMap::new();
    // Pods whose worker ended: never started again (the API may still show them for a moment).
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut listing: Option<BTreeSet<String>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => {
                    if let (Some(seen), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    offer(&shared, &mut tracked, &mut waiting, &done, &stop, pod);
                }
                Some(Ok(Event::Delete(pod))) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    gone(&mut tracked, &mut waiting, &uid);
                }
                Some(Ok(Event::Init)) => listing = Some(BTreeSet::new()),
                Some(Ok(Event::InitDone)) => {
                    if let Some(seen) = listing.take() {
                        let known: Vec<String> = tracked.keys().chain(waiting.keys()).cloned().collect();
                        for uid in known.into_iter().filter(|uid| !seen.contains(uid)) {
                            gone(&mut tracked, &mut waiting, &uid);
                        }
                    }
                }
                Some(Err(err)) => shared.log(&format!("watching pods: {err}")),
                None => break,
            },
            _ = tick.tick() => {
                let ready: Vec<Pod> = waiting
                    .values()
                    .filter(|pod| shared.serves(pod.metadata.namespace.as_deref().unwrap_or_default()))
                    .cloned()
                    .collect();
                for pod in ready {
                    offer(&shared, &mut tracked, &mut waiting, &done, &stop, pod);
                }
                tracked.retain(|uid, entry| {
                    let finished = entry.task.as_ref().is_some_and(JoinHandle::is_finished);
                    if finished {
                        done.insert(uid.clone());
                    }
                    !finished
                });
            },
            _ = stop.changed() => break,
        }
    }
    // Every worker sees the stop and ends its pod; wait for all of them.
    for (_, entry) in std::mem::take(&mut tracked) {
        if let Some(task) = entry.task {
            let _ = task.await;
        }
        drop(entry.updates);
    }
}

/// A pod event: to its worker, or a new worker, or the waiting room.
fn offer(
    shared: &Arc<Shared>,
    tracked: &mut BTreeMap<String, Tracked>,
    waiting: &mut BTreeMap<String, Pod>,
    done: &BTreeSet<String>,
    stop: &watch::Receiver<bool>,
    pod: Pod,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if done.contains(&uid) {
        return;
    }
    if let Some(entry) = tracked.get(&uid) {
        let _ = entry.updates.send(Some(pod));
        return;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let elsewhere = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|node| !node.is_empty() && node != shared.options.node);
    if elsewhere {
        return;
    }
    if !shared.serves(&namespace) || *stop.borrow() {
        waiting.insert(uid, pod);
        return;
    }
    waiting.remove(&uid);
    let ip = shared.addresses.lock().unwrap_or_else(PoisonError::into_inner).take();
    let sequence = shared.sequence.fetch_add(1, Ordering::Relaxed) + 1;
    let dir = shared.dirs.pods.join(sequence.to_string());
    if let Err(err) =
        fs::create_dir_all(&dir).and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)))
    {
        shared.log(&format!("cannot create {}: {err}", dir.display()));
        shared.release(&uid, ip);
        return;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let (updates, receiver) = watch::channel(Some(pod.clone()));
    let worker = pod::Worker::new(Arc::clone(shared), pod, ip, dir);
    shared
        .pods
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(uid.clone(), PodHandle { namespace, name, ip, roots: worker.roots() });
    let task = tokio::spawn(worker.run(receiver, stop.clone()));
    tracked.insert(uid, Tracked { updates, task: Some(task) });
}

/// The pod left the API: its worker kills what is left.
fn gone(tracked: &mut BTreeMap<String, Tracked>, waiting: &mut BTreeMap<String, Pod>, uid: &str) {
    waiting.remove(uid);
    if let Some(entry) = tracked.get(uid) {
        let _ = entry.updates.send(None);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn pod_addresses_are_loopback_from_ten_and_never_shared_while_live() {
        assert_eq!(pod_address(0), Ipv4Addr::new(127, 0, 0, 10));
        assert_eq!(pod_address(244), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(pod_address(245), Ipv4Addr::new(127, 0, 1, 10));
        assert!((0..100_000).map(pod_address).all(|ip| ip.is_loopback() && ip.octets()[3] >= 10));

        let mut pool = AddressPool::default();
        let first = pool.take();
        let second = pool.take();
        assert_ne!(first, second);
        pool.next = 0;
        assert_eq!(pool.take(), Ipv4Addr::new(127, 0, 0, 12), "live addresses are skipped");
        pool.live.remove(&first);
        pool.next = 0;
        assert_eq!(pool.take(), first, "a released address may be used again");
    }
}
