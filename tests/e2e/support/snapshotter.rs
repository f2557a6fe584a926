//! A stand-in snapshotter: the snapshot controller and a CSI driver
//! (`stand-in.snapshot.stead.dev`) in one, for the stand-in kubelet's volumes.
//!
//! Test code, like the stand-in kubelet: a kube-rs watcher of VolumeSnapshots
//! in every namespace, on a runtime of its own. For a new VolumeSnapshot of
//! a claim (`spec.source.persistentVolumeClaimName`) it
//!
//! 1. checks its class (the one named, else the default class) is one of
//!    this driver's;
//! 2. resolves the claim's uid and copies the claim's host directory
//!    (`<kubelet root>/claims/<namespace>/<claim>/<claim uid>/`, see
//!    [`super::kubelet::volumes`]) to `<kubelet root>/snapshots/<namespace>/<snapshot uid>/`,
//!    keeping owners, modes, times and symlinks ([`copy_tree`]);
//! 3. creates a minimal VolumeSnapshotContent `snapcontent-<snapshot uid>`
//!    (driver, `deletionPolicy: Delete`, `source.volumeHandle` the claim's
//!    uid, the `volumeSnapshotRef`) with its status;
//! 4. writes the VolumeSnapshot's status subresource as the snapshot
//!    controller does: `boundVolumeSnapshotContentName`, `creationTime` (when
//!    the copy began) and `restoreSize` (the claim's requested storage) with
//!    `readyToUse: false` once the copy is cut, then `readyToUse: true` a
//!    moment later (as a driver that uploads after the cut).
//!
//! Failures are reported as the snapshot controller reports them,
//! `status.error {time, message}` with `readyToUse: false`, and retried
//! every [`RETRY`]: a missing claim, a claim whose volume the kubelet has
//! not made yet (a real claim not yet bound to a PV), an unknown class.
//! A failure injected with [`Snapshotter::fail_next`] is final, as a driver
//! error the controller gives up on.
//!
//! Deleting a VolumeSnapshot (by hand, or by the garbage collector through
//! an ownerReference) removes its copy and its content; a copy whose
//! snapshot is not listed when the watch (re)starts is removed too.
//!
//! **A point-in-time cut of a live directory.** The copy reads files that
//! PostgreSQL may be writing at that moment, one after another: it is no
//! more consistent than a crash-consistent CSI snapshot (less, in fact: the
//! files are not cut at one instant). Whatever consistency a backup has
//! comes from stead's own protocol, a fenced (stopped) replica or
//! `pg_backup_start`/`pg_backup_stop` with its `backup_label`, exactly as on
//! a real storage system. Files that vanish during the copy (a recycled WAL
//! segment, a temporary file) are left out, as they would be from a cut
//! taken a moment later.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The API group of VolumeSnapshots and their classes and contents.
pub const GROUP: &str = "snapshot.storage.k8s.io";
/// Their version.
pub const VERSION: &str = "v1";
/// The CSI driver the stand-in plays.
pub const DRIVER: &str = "stand-in.snapshot.stead.dev";
/// The VolumeSnapshotClass the suite installs for it, the default class.
pub const CLASS: &str = "stead-e2e";
/// The annotation that makes a VolumeSnapshotClass the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";
/// How often a snapshot that could not be taken yet is tried again.
pub const RETRY: Duration = Duration::from_secs(2);
/// Between the cut (`creationTime`, `readyToUse: false`) and `readyToUse: true`.
pub const READY_DELAY: Duration = Duration::from_secs(1);

/// `VolumeSnapshot`, `VolumeSnapshotClass` or `VolumeSnapshotContent` as a dynamic resource.
pub fn resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "VolumeSnapshotClass" => "volumesnapshotclasses".to_owned(),
        other => format!("{}s", other.to_lowercase()),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), &plural)
}

/// The VolumeSnapshotClass the suite installs: this driver's, the default.
pub fn default_class() -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "VolumeSnapshotClass",
        "metadata": {"name": CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "driver": DRIVER,
        "deletionPolicy": "Delete"
    })
}

/// Where the copy of the snapshot `uid` in `namespace` is kept below `snapshots`.
pub fn copy_dir(snapshots: &Path, namespace: &str, uid: &str) -> PathBuf {
    snapshots.join(namespace).join(uid)
}

/// The name of the VolumeSnapshotContent bound to the snapshot `uid`, as the snapshot controller names it.
pub fn content_name(snapshot_uid: &str) -> String {
    format!("snapcontent-{snapshot_uid}")
}

/// The status of a snapshot once its copy is cut (`ready` false), and once it can be restored (`ready` true).
pub fn cut_status(content: &str, cut: Timestamp, restore_size: Option<&str>, ready: bool) -> Value {
    let mut status = json!({
        "boundVolumeSnapshotContentName": content,
        "creationTime": cut.to_string(),
        "readyToUse": ready,
        "error": null
    });
    if let Some(size) = restore_size {
        status["restoreSize"] = json!(size);
    }
    json!({"status": status})
}

/// The status of a snapshot that could not be taken, as the snapshot controller writes it.
pub fn error_status(time: Timestamp, message: &str) -> Value {
    json!({"status": {"readyToUse": false, "error": {"time": time.to_string(), "message": message}}})
}

/// The VolumeSnapshotContent of a dynamically taken snapshot (spec only).
pub fn content_object(snapshot: &SnapshotRef, claim_uid: &str, class: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": content_name(&snapshot.uid)},
        "spec": {
            "driver": DRIVER,
            "deletionPolicy": "Delete",
            "volumeSnapshotClassName": class,
            "source": {"volumeHandle": claim_uid},
            "volumeSnapshotRef": {
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": "VolumeSnapshot",
                "name": snapshot.name,
                "namespace": snapshot.namespace,
                "uid": snapshot.uid
            }
        }
    })
}

/// The status of that content: its handle is the copy's path; times in nanoseconds, as CSI reports them.
pub fn content_status(handle: &Path, cut: Timestamp) -> Value {
    json!({"status": {
        "snapshotHandle": handle.display().to_string(),
        "creationTime": cut.as_nanosecond(),
        "readyToUse": true
    }})
}

/// Which snapshot an object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What the snapshotter has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Snapshots cut and ready to use.
    pub taken: u64,
    /// Snapshots given up on (injected failures).
    pub failed: u64,
    /// Copies removed after their snapshot was deleted.
    pub removed: u64,
}

/// What one copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries that disappeared between being listed and being read.
    pub vanished: u64,
    /// Sockets, FIFOs and devices, which a volume snapshot does not carry.
    pub skipped: u64,
}

/// Copies the directory `src` to `dst` (which must not exist): directories,
/// regular files and symlinks (not followed), with their modes (setgid
/// included), times and, when it may (as root), their owners. Hard links
/// become separate files. An entry that vanishes while it is copied is
/// counted and left out; `src` itself must exist.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<CopyStats> {
    let meta = fs::symlink_metadata(src)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a directory", src.display())));
    }
    let mut stats = CopyStats::default();
    let as_root = rustix::process::geteuid().is_root();
    copy_entry(src, dst, &mut stats, as_root, true)?;
    Ok(stats)
}

fn vanished(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

fn copy_entry(src: &Path, dst: &Path, stats: &mut CopyStats, as_root: bool, root: bool) -> io::Result<()> {
    let meta = match fs::symlink_metadata(src) {
        Err(err) if vanished(&err) && !root => {
            stats.vanished += 1;
            return Ok(());
        }
        other => other?,
    };
    let kind = meta.file_type();
    let context = |err: io::Error, what: &str, path: &Path| {
        io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
    };
    if kind.is_dir() {
        fs::create_dir(dst).map_err(|e| context(e, "creating", dst))?;
        let entries = match fs::read_dir(src) {
            Err(err) if vanished(&err) && !root => {
                stats.vanished += 1;
                Vec::new()
            }
            other => other.map_err(|e| context(e, "listing", src))?.collect::<io::Result<Vec<_>>>()?,
        };
        let mut names: Vec<_> = entries.into_iter().map(|entry| entry.file_name()).collect();
        names.sort();
        for name in names {
            copy_entry(&src.join(&name), &dst.join(&name), stats, as_root, false)?;
        }
        stats.dirs += 1;
        // After the entries: a directory without write permission can be filled first.
        set_owner(dst, &meta, as_root)?;
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| context(e, "setting the mode of", dst))?;
        set_times(dst, &meta)
    } else if kind.is_symlink() {
        let target = match fs::read_link(src) {
            Err(err) if vanished(&err) => {
                stats.vanished += 1;
                return Ok(());
            }
            other => other.map_err(|e| context(e, "reading the link", src))?,
        };
        symlink(&target, dst).map_err(|e| context(e, "linking", dst))?;
        stats.symlinks += 1;
        set_owner(dst, &meta, as_root)
    } else if kind.is_file() {
        let mut from = match File::open(src) {
            Err(err) if vanished(&err) => {
                stats.vanished += 1;
                return Ok(());
            }
            other => other.map_err(|e| context(e, "opening", src))?,
        };
        let mut to =
            OpenOptions::new().write(true).create_new(true).open(dst).map_err(|e| context(e, "creating", dst))?;
        stats.bytes += io::copy(&mut from, &mut to).map_err(|e| context(e, "copying", src))?;
        stats.files += 1;
        drop(to);
        // chown clears setuid/setgid, so the mode comes after the owner.
        set_owner(dst, &meta, as_root)?;
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| context(e, "setting the mode of", dst))?;
        set_times(dst, &meta)
    } else {
        stats.skipped += 1;
        Ok(())
    }
}

/// The source's owner; as root it must succeed, otherwise it is tried and
/// may be refused (an unprivileged copy is owned by whoever copies).
fn set_owner(dst: &Path, meta: &fs::Metadata, as_root: bool) -> io::Result<()> {
    match lchown(dst, Some(meta.uid()), Some(meta.gid())) {
        Err(err) if !as_root && err.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        Err(err) => Err(io::Error::new(err.kind(), format!("chown {}: {err}", dst.display()))),
        Ok(()) => Ok(()),
    }
}

fn set_times(dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let times = FileTimes::new().set_accessed(meta.accessed()?).set_modified(meta.modified()?);
    File::open(dst)
        .and_then(|file| file.set_times(times))
        .map_err(|e| io::Error::new(e.kind(), format!("setting the times of {}: {e}", dst.display())))
}

/// Where things are.
#[derive(Debug, Clone)]
pub struct Options {
    /// A kubeconfig that may read claims and write VolumeSnapshot status (the suite's admin).
    pub kubeconfig: PathBuf,
    /// The stand-in kubelet's root: claims are below `claims/`, copies go below `snapshots/`.
    pub root: PathBuf,
    /// `snapshotter.log` goes here.
    pub log_dir: PathBuf,
}

/// State shared by the watch loop and the handle the scenarios hold.
struct Shared {
    client: kube::Client,
    claims: PathBuf,
    snapshots: PathBuf,
    taken: AtomicU64,
    failed: AtomicU64,
    removed: AtomicU64,
    /// `(namespace, claim)` → the error the next snapshot of that claim reports.
    fail_next: Mutex<BTreeMap<(String, String), String>>,
    log: Mutex<File>,
}

impl Shared {
    fn log(&self, line: &str) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(log, "{} {line}", now());
    }
}

fn now() -> Timestamp {
    Timestamp::now().round(Unit::Second).unwrap_or_else(|_| Timestamp::now())
}

/// A running stand-in snapshotter; stopping (or dropping) it ends its watch.
pub struct Snapshotter {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    main: Option<JoinHandle<()>>,
    log_path: PathBuf,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter").field("snapshots", &self.shared.snapshots).finish_non_exhaustive()
    }
}

impl Snapshotter {
    /// Starts watching VolumeSnapshots (the CRDs must be installed).
    pub fn start(options: &Options) -> anyhow::Result<Self> {
        let claims = options.root.join("claims");
        let snapshots = options.root.join("snapshots");
        // Only root (the snapshotter and the kubelet) reads the copies; no pod sees them.
        fs::create_dir_all(&snapshots).with_context(|| format!("creating {}", snapshots.display()))?;
        fs::set_permissions(&snapshots, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", snapshots.display()))?;
        fs::create_dir_all(&options.log_dir).with_context(|| format!("creating {}", options.log_dir.display()))?;
        let log_path = options.log_dir.join("snapshotter.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("e2e-snapshotter")
            .enable_all()
            .build()
            .context("starting the stand-in snapshotter's runtime")?;
        let client = runtime.block_on(client(&options.kubeconfig))?;
        let shared = Arc::new(Shared {
            client,
            claims,
            snapshots,
            taken: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            fail_next: Mutex::new(BTreeMap::new()),
            log: Mutex::new(log),
        });
        shared.log(&format!("driver {DRIVER}: copies go to {}", shared.snapshots.display()));
        let (stop, stop_rx) = watch::channel(false);
        let main = runtime.spawn(main_loop(Arc::clone(&shared), stop_rx));
        Ok(Self { runtime: Some(runtime), shared, stop, main: Some(main), log_path })
    }

    /// What it has done so far.
    pub fn counts(&self) -> Counts {
        Counts {
            taken: self.shared.taken.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            removed: self.shared.removed.load(Ordering::Relaxed),
        }
    }

    /// The next snapshot of `namespace/claim` fails with `message` in its
    /// `status.error` (and is not retried), as a driver error would.
    pub fn fail_next(&self, namespace: &str, claim: &str, message: &str) {
        self.shared
            .fail_next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((namespace.to_owned(), claim.to_owned()), message.to_owned());
    }

    /// Forgets every failure [`Self::fail_next`] set up that has not happened; returns the claims.
    pub fn clear_failures(&self) -> Vec<String> {
        let mut pending = self.shared.fail_next.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *pending).into_keys().map(|(ns, claim)| format!("{ns}/{claim}")).collect()
    }

    /// Where the copy of the snapshot `uid` in `namespace` is (or would be).
    pub fn copy_of(&self, namespace: &str, uid: &str) -> PathBuf {
        copy_dir(&self.shared.snapshots, namespace, uid)
    }

    /// Its log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Ends the watch.
    pub fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else { return };
        let _ = self.stop.send(true);
        if let Some(main) = self.main.take() {
            let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), main).await });
        }
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client from the kubeconfig that never goes through a proxy (everything is on loopback).
async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let config = Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .context("configuring the stand-in snapshotter's client")?;
    config.proxy_url = None;
    kube::Client::try_from(config).context("building the stand-in snapshotter's client")
}

fn snapshot_ref(object: &DynamicObject) -> SnapshotRef {
    SnapshotRef {
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
        uid: object.metadata.uid.clone().unwrap_or_default(),
    }
}

/// What became of one attempt at a snapshot.
enum Outcome {
    /// Nothing more to do for it (taken, failed for good, or not this driver's).
    Done,
    /// Try again after [`RETRY`].
    Retry,
}

/// Watches VolumeSnapshots and handles each until the snapshotter stops.
async fn main_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let snapshots: Api<DynamicObject> = Api::all_with(shared.client.clone(), &resource("VolumeSnapshot"));
    let stream = watcher::watcher(snapshots, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // Handled for good (by uid), and waiting for a retry (uid → the object last seen).
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut retry: BTreeMap<String, DynamicObject> = BTreeMap::new();
    let mut listing: Option<BTreeSet<(String, String)>> = None;
    let mut tick = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(Event::Apply(object) | Event::InitApply(object))) => {
                    let snapshot = snapshot_ref(&object);
                    if let Some(seen) = listing.as_mut() {
                        seen.insert((snapshot.namespace.clone(), snapshot.uid.clone()));
                    }
                    if done.contains(&snapshot.uid) || object.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    match handle(&shared, &object).await {
                        Outcome::Done => {
                            retry.remove(&snapshot.uid);
                            done.insert(snapshot.uid);
                        }
                        Outcome::Retry => {
                            retry.insert(snapshot.uid, object);
                        }
                    }
                }
                Some(Ok(Event::Delete(object))) => {
                    let snapshot = snapshot_ref(&object);
                    done.remove(&snapshot.uid);
                    retry.remove(&snapshot.uid);
                    remove(&shared, &snapshot).await;
                }
                Some(Ok(Event::Init)) => listing = Some(BTreeSet::new()),
                Some(Ok(Event::InitDone)) => {
                    if let Some(seen) = listing.take() {
                        sweep(&shared, &seen).await;
                    }
                }
                Some(Err(err)) => shared.log(&format!("watching volumesnapshots: {err}")),
                None => break,
            },
            _ = tick.tick() => {
                for (uid, object) in std::mem::take(&mut retry) {
                    // Fresh from the API: it may have gone, or be ready by now.
                    let snapshot = snapshot_ref(&object);
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(shared.client.clone(), &snapshot.namespace, &resource("VolumeSnapshot"));
                    let current = match api.get_opt(&snapshot.name).await {
                        Ok(Some(current)) if current.metadata.uid.as_deref() == Some(uid.as_str()) => current,
                        Ok(_) => continue,
                        Err(err) => {
                            shared.log(&format!("{}/{}: reading it again: {err}", snapshot.namespace, snapshot.name));
                            retry.insert(uid, object);
                            continue;
                        }
                    };
                    match handle(&shared, &current).await {
                        Outcome::Done => {
                            done.insert(uid);
                        }
                        Outcome::Retry => {
                            retry.insert(uid, current);
                        }
                    }
                }
            },
            _ = stop.changed() => break,
        }
    }
}

/// One attempt at taking a snapshot.
async fn handle(shared: &Shared, object: &DynamicObject) -> Outcome {
    let snapshot = snapshot_ref(object);
    let who = format!("{}/{}", snapshot.namespace, snapshot.name);
    let status = object.data.get("status").cloned().unwrap_or(Value::Null);
    if status.get("readyToUse") == Some(&json!(true)) {
        return Outcome::Done;
    }
    let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
    let Some(claim_name) = spec.pointer("/source/persistentVolumeClaimName").and_then(Value::as_str) else {
        shared.log(&format!("{who}: not a snapshot of a claim (pre-provisioned contents are not supported); ignored"));
        return Outcome::Done;
    };
    let class = match class_of(shared, spec.get("volumeSnapshotClassName").and_then(Value::as_str)).await {
        Ok(Some(class)) => class,
        Ok(None) => {
            shared.log(&format!("{who}: its class is another driver's; ignored"));
            return Outcome::Done;
        }
        Err(message) => return report_error(shared, &snapshot, &status, &message).await,
    };
    let injected = shared
        .fail_next
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&(snapshot.namespace.clone(), claim_name.to_owned()));
    if let Some(message) = injected {
        shared.log(&format!("{who}: failing it on request: {message}"));
        let _ = report_error(shared, &snapshot, &status, &message).await;
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return Outcome::Done;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &snapshot.namespace);
    let claim = match claims.get_opt(claim_name).await {
        Ok(Some(claim)) if claim.metadata.deletion_timestamp.is_none() => claim,
        Ok(_) => {
            let message = input_error(&snapshot.name, &format!("persistentvolumeclaim \\\"{claim_name}\\\" not found"));
            return report_error(shared, &snapshot, &status, &message).await;
        }
        Err(err) => {
            shared.log(&format!("{who}: reading the claim {claim_name}: {err}"));
            return Outcome::Retry;
        }
    };
    let claim_uid = claim.metadata.uid.clone().unwrap_or_default();
    let source = shared.claims.join(&snapshot.namespace).join(claim_name).join(&claim_uid);
    if !source.is_dir() {
        // The kubelet makes a claim's directory when a pod first mounts it: until then there is no volume.
        let message = input_error(
            &snapshot.name,
            &format!("the PVC {claim_name} is not yet bound to a PV, will not attempt to take a snapshot"),
        );
        return report_error(shared, &snapshot, &status, &message).await;
    }
    let restore_size = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone());
    let target = copy_dir(&shared.snapshots, &snapshot.namespace, &snapshot.uid);
    let cut = now();
    let copied = {
        let (source, target) = (source.clone(), target.clone());
        tokio::task::spawn_blocking(move || copy_into_place(&source, &target)).await
    };
    let stats = match copied {
        Ok(Ok(stats)) => stats,
        Ok(Err(err)) => {
            let message = format!("Failed to check and update snapshot content: copying {}: {err}", source.display());
            return report_error(shared, &snapshot, &status, &message).await;
        }
        Err(join) => {
            shared.log(&format!("{who}: the copy did not finish: {join}"));
            return Outcome::Retry;
        }
    };
    shared.log(&format!(
        "{who}: cut {claim_name} (uid {claim_uid}) at {cut}: {} files, {} directories, {} symlinks, {} bytes, {} \
         vanished while copying, {} special files left out",
        stats.files, stats.dirs, stats.symlinks, stats.bytes, stats.vanished, stats.skipped
    ));
    let content = content_name(&snapshot.uid);
    if let Err(err) = write_content(shared, &snapshot, &claim_uid, &class, &target, cut).await {
        shared.log(&format!("{who}: the content {content}: {err}"));
    }
    let params = PatchParams::default();
    let snapshots: Api<DynamicObject> =
        Api::namespaced_with(shared.client.clone(), &snapshot.namespace, &resource("VolumeSnapshot"));
    for ready in [false, true] {
        if ready {
            tokio::time::sleep(READY_DELAY).await;
        }
        let patch = cut_status(&content, cut, restore_size.as_deref(), ready);
        match snapshots.patch_status(&snapshot.name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Outcome::Done,
            Err(err) => {
                shared.log(&format!("{who}: writing its status: {err}; retrying"));
                // The next attempt takes a fresh copy.
                let _ = fs::remove_dir_all(&target);
                return Outcome::Retry;
            }
        }
    }
    shared.taken.fetch_add(1, Ordering::Relaxed);
    shared.log(&format!("{who}: ready to use (content {content})"));
    Outcome::Done
}

/// The snapshot controller's words for a snapshot it cannot take yet.
fn input_error(snapshot: &str, why: &str) -> String {
    format!(
        "Failed to create snapshot content with error failed to get input parameters to create snapshot {snapshot}: \"{why}\""
    )
}

/// Copies into `<target>.partial`, then renames, so a copy is either whole or absent.
fn copy_into_place(source: &Path, target: &Path) -> io::Result<CopyStats> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700))?;
    }
    let partial = target.with_extension("partial");
    for stale in [&partial, target] {
        if stale.exists() {
            fs::remove_dir_all(stale)?;
        }
    }
    let stats = copy_tree(source, &partial)?;
    fs::rename(&partial, target)?;
    Ok(stats)
}

/// The class of a snapshot: the one named, else the default. `Ok(None)`
/// when it belongs to another driver; `Err` is the snapshot controller's error.
async fn class_of(shared: &Shared, named: Option<&str>) -> Result<Option<String>, String> {
    let classes: Api<DynamicObject> = Api::all_with(shared.client.clone(), &resource("VolumeSnapshotClass"));
    let driver = |class: &DynamicObject| class.data.get("driver").and_then(Value::as_str).map(str::to_owned);
    match named {
        Some(name) => match classes.get_opt(name).await {
            Ok(Some(class)) => Ok((driver(&class).as_deref() == Some(DRIVER)).then(|| name.to_owned())),
            Ok(None) => Err(format!(
                "Failed to get snapshot class with error volumesnapshotclass.snapshot.storage.k8s.io \"{name}\" not found"
            )),
            Err(err) => Err(format!("Failed to get snapshot class with error {err}")),
        },
        None => {
            let list = classes.list(&Default::default()).await.map_err(|e| format!("listing snapshot classes: {e}"))?;
            list.items
                .iter()
                .find(|class| {
                    driver(class).as_deref() == Some(DRIVER)
                        && class.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                            == Some(&"true".to_owned())
                })
                .and_then(|class| class.metadata.name.clone())
                .map(Some)
                .ok_or_else(|| {
                    "Failed to set default snapshot class with error cannot find default snapshot class".to_owned()
                })
        }
    }
}

/// Writes `status.error` (unless it already says that), and says to try again.
async fn report_error(shared: &Shared, snapshot: &SnapshotRef, status: &Value, message: &str) -> Outcome {
    let who = format!("{}/{}", snapshot.namespace, snapshot.name);
    if status.pointer("/error/message").and_then(Value::as_str) == Some(message) {
        return Outcome::Retry;
    }
    shared.log(&format!("{who}: {message}"));
    let snapshots: Api<DynamicObject> =
        Api::namespaced_with(shared.client.clone(), &snapshot.namespace, &resource("VolumeSnapshot"));
    let patch = error_status(now(), message);
    if let Err(err) = snapshots.patch_status(&snapshot.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        shared.log(&format!("{who}: writing status.error: {err}"));
    }
    Outcome::Retry
}

/// Creates the snapshot's VolumeSnapshotContent and writes its status.
async fn write_content(
    shared: &Shared,
    snapshot: &SnapshotRef,
    claim_uid: &str,
    class: &str,
    copy: &Path,
    cut: Timestamp,
) -> anyhow::Result<()> {
    let contents: Api<DynamicObject> = Api::all_with(shared.client.clone(), &resource("VolumeSnapshotContent"));
    let object: DynamicObject = serde_json::from_value(content_object(snapshot, claim_uid, class))?;
    match contents.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(err) => return Err(err).context("creating it"),
    }
    let name = content_name(&snapshot.uid);
    contents
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&content_status(copy, cut)))
        .await
        .context("writing its status")?;
    Ok(())
}

/// A snapshot is gone: its copy and its content go too.
async fn remove(shared: &Shared, snapshot: &SnapshotRef) {
    let who = format!("{}/{}", snapshot.namespace, snapshot.name);
    let copy = copy_dir(&shared.snapshots, &snapshot.namespace, &snapshot.uid);
    if copy.exists() {
        match fs::remove_dir_all(&copy) {
            Ok(()) => {
                shared.removed.fetch_add(1, Ordering::Relaxed);
                shared.log(&format!("{who}: deleted; its copy is removed"));
            }
            Err(err) => shared.log(&format!("{who}: removing {}: {err}", copy.display())),
        }
    }
    let contents: Api<DynamicObject> = Api::all_with(shared.client.clone(), &resource("VolumeSnapshotContent"));
    match contents.delete(&content_name(&snapshot.uid), &DeleteParams::default()).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(err) => shared.log(&format!("{who}: deleting its content: {err}")),
    }
}

/// Removes the copies of snapshots that are no longer listed (deleted while the watch was down).
async fn sweep(shared: &Shared, listed: &BTreeSet<(String, String)>) {
    let Ok(namespaces) = fs::read_dir(&shared.snapshots) else { return };
    for namespace in namespaces.flatten() {
        let ns = namespace.file_name().to_string_lossy().into_owned();
        let Ok(copies) = fs::read_dir(namespace.path()) else { continue };
        for copy in copies.flatten() {
            let uid = copy.file_name().to_string_lossy().into_owned();
            if !uid.ends_with(".partial") && !listed.contains(&(ns.clone(), uid.clone())) {
                let snapshot = SnapshotRef { namespace: ns.clone(), name: format!("(uid {uid})"), uid };
                remove(shared, &snapshot).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_copy_keeps_contents_modes_times_and_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("claim");
        fs::create_dir_all(src.join("pgdata/base/1")).unwrap();
        fs::write(src.join("pgdata/PG_VERSION"), "15\n").unwrap();
        fs::write(src.join("pgdata/base/1/1259"), vec![7u8; 70_000]).unwrap();
        fs::set_permissions(src.join("pgdata/PG_VERSION"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(src.join("pgdata/base/1"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(src.join("pgdata"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o2775)).unwrap();
        symlink("pgdata/PG_VERSION", src.join("version")).unwrap();
        symlink("/nowhere/at/all", src.join("dangling")).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(src.join("pgdata/PG_VERSION"))
            .unwrap()
            .set_times(FileTimes::new().set_modified(old))
            .unwrap();

        let dst = root.path().join("copy");
        let stats = copy_tree(&src, &dst).unwrap();
        assert_eq!((stats.dirs, stats.files, stats.symlinks, stats.bytes), (4, 2, 2, 70_003));
        assert_eq!(fs::read(dst.join("pgdata/base/1/1259")).unwrap(), vec![7u8; 70_000]);
        assert_eq!(mode(&dst.join("pgdata/PG_VERSION")), 0o600);
        assert_eq!(mode(&dst.join("pgdata/base/1")), 0o700);
        assert_eq!(mode(&dst.join("pgdata")), 0o750);
        assert_eq!(mode(&dst), 0o2775, "the setgid bit of the volume root is kept");
        assert_eq!(fs::read_link(dst.join("version")).unwrap(), Path::new("pgdata/PG_VERSION"), "not followed");
        assert_eq!(fs::read_link(dst.join("dangling")).unwrap(), Path::new("/nowhere/at/all"));
        assert_eq!(fs::metadata(dst.join("pgdata/PG_VERSION")).unwrap().modified().unwrap(), old);
        let (s, d) = (fs::metadata(src.join("pgdata")).unwrap(), fs::metadata(dst.join("pgdata")).unwrap());
        assert_eq!((s.uid(), s.gid()), (d.uid(), d.gid()));

        // The target must be new, and the source a directory that exists.
        assert!(copy_tree(&src, &dst).is_err());
        assert!(copy_tree(&root.path().join("absent"), &root.path().join("x")).is_err());
        assert!(copy_tree(&src.join("pgdata/PG_VERSION"), &root.path().join("y")).is_err());
    }

    #[test]
    fn a_copy_as_root_keeps_owners() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("claim");
        fs::create_dir_all(src.join("pgdata")).unwrap();
        fs::write(src.join("pgdata/postgresql.conf"), "port = 5432\n").unwrap();
        symlink("postgresql.conf", src.join("pgdata/link")).unwrap();
        lchown(src.join("pgdata"), Some(4343), Some(4242)).unwrap();
        lchown(src.join("pgdata/postgresql.conf"), Some(4343), Some(4242)).unwrap();
        lchown(src.join("pgdata/link"), Some(4344), Some(4244)).unwrap();
        fs::set_permissions(src.join("pgdata"), fs::Permissions::from_mode(0o2700)).unwrap();
        let dst = root.path().join("copy");
        copy_tree(&src, &dst).unwrap();
        let owner = |p: &str| {
            let meta = fs::symlink_metadata(dst.join(p)).unwrap();
            (meta.uid(), meta.gid(), meta.mode() & 0o7777)
        };
        assert_eq!(owner("pgdata"), (4343, 4242, 0o2700), "setgid survives the chown");
        assert_eq!(owner("pgdata/postgresql.conf"), (4343, 4242, 0o644));
        assert_eq!((owner("pgdata/link").0, owner("pgdata/link").1), (4344, 4244), "the link itself, not its target");
    }

    #[test]
    fn a_copy_is_whole_or_absent_and_replaces_a_stale_one() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("claim");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("a"), "new").unwrap();
        let target = root.path().join("snapshots/ns/uid-1");
        fs::create_dir_all(target.join("old")).unwrap();
        fs::create_dir_all(target.with_extension("partial")).unwrap();
        copy_into_place(&src, &target).unwrap();
        assert_eq!(fs::read_to_string(target.join("a")).unwrap(), "new");
        assert!(!target.join("old").exists() && !target.with_extension("partial").exists());
        assert_eq!(mode(&root.path().join("snapshots/ns")), 0o700, "no pod may read the copies");
    }

    #[test]
    fn status_documents_are_what_the_snapshot_controller_writes() {
        let cut: Timestamp = "2025-03-30T01:30:05Z".parse().unwrap();
        assert_eq!(
            cut_status("snapcontent-u1", cut, Some("1Gi"), true),
            json!({"status": {
                "boundVolumeSnapshotContentName": "snapcontent-u1",
                "creationTime": "2025-03-30T01:30:05Z",
                "readyToUse": true,
                "restoreSize": "1Gi",
                "error": null
            }})
        );
        let cut_only = cut_status("snapcontent-u1", cut, None, false);
        assert_eq!(cut_only["status"]["readyToUse"], false);
        assert!(cut_only["status"].get("restoreSize").is_none());
        assert_eq!(
            error_status(cut, "the PVC x is not yet bound"),
            json!({"status": {"readyToUse": false, "error": {"time": "2025-03-30T01:30:05Z", "message": "the PVC x is not yet bound"}}})
        );
        assert_eq!(
            input_error("snap", "persistentvolumeclaim \\\"data-x-0\\\" not found"),
            "Failed to create snapshot content with error failed to get input parameters to create snapshot snap: \
             \"persistentvolumeclaim \\\"data-x-0\\\" not found\""
        );
    }

    #[test]
    fn the_content_and_class_fit_the_crds() {
        let snapshot = SnapshotRef { namespace: "ns".into(), name: "s".into(), uid: "u1".into() };
        let content = content_object(&snapshot, "claim-uid", CLASS);
        assert_eq!(content["metadata"]["name"], "snapcontent-u1");
        // The CRD requires these four, exactly one source, and a ref with name and namespace.
        for field in ["deletionPolicy", "driver", "source", "volumeSnapshotRef"] {
            assert!(content["spec"].get(field).is_some(), "{field}");
        }
        assert_eq!(content["spec"]["source"], json!({"volumeHandle": "claim-uid"}));
        assert_eq!(content["spec"]["volumeSnapshotRef"]["namespace"], "ns");
        let cut: Timestamp = "1970-01-01T00:00:02Z".parse().unwrap();
        assert_eq!(content_status(Path::new("/k/snapshots/ns/u1"), cut)["status"]["creationTime"], 2_000_000_000_i64);

        let class = default_class();
        assert_eq!((class["driver"].as_str(), class["deletionPolicy"].as_str()), (Some(DRIVER), Some("Delete")));
        assert_eq!(class["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION], "true");
        assert_eq!(resource("VolumeSnapshot").plural, "volumesnapshots");
        assert_eq!(resource("VolumeSnapshotClass").plural, "volumesnapshotclasses");
        assert_eq!(resource("VolumeSnapshotContent").api_version, "snapshot.storage.k8s.io/v1");
        assert_eq!(copy_dir(Path::new("/k/snapshots"), "ns", "u1"), Path::new("/k/snapshots/ns/u1"));
    }
}
