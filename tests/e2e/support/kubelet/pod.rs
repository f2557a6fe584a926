//! One pod's life on the stand-in node, as a task: bind it, give it an
//! address and its volumes, run its init containers to completion and then
//! its containers, probe them, restart them with back-off, report all of it
//! in the pod's status, and on deletion stop them within the grace period
//! and delete the pod for good.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, ObjectReference, PersistentVolumeClaim, Pod, Probe, Secret,
};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::core::ObjectMeta;
use rustix::process::Signal;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::probe::{self, Timing};
use super::process::{self, IMAGE_POSTGRES_UID, Launch};
use super::spec::{self, Addresses, ClaimUids, PathMap, Sources};
use super::status::{
    self, BACKOFF_CAP, BACKOFF_RESET, ContainerRecord, Exit, PodRecord, State, backoff_message, restart_delay,
};
use super::volumes::{self, Restore, Restores, VolumeDirs};
use super::{EmptyDirs, Shared};
use crate::support::snapshotter;

/// How often the worker looks at its processes, probes and the pod.
const TICK: Duration = Duration::from_millis(200);
/// How long a container waits before another try after a configuration error or a failed mount.
const RETRY: Duration = Duration::from_secs(2);
/// Grace period when the pod says none.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How long a SIGKILLed process may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// A probe's running tally.
#[derive(Debug)]
struct ProbeRun {
    probe: Probe,
    timing: Timing,
    next: Instant,
    failures: u32,
    successes: u32,
}

impl ProbeRun {
    fn new(probe: &Probe, period: Option<Duration>, started: Instant) -> Self {
        let timing = probe::timing(probe, period);
        Self { probe: probe.clone(), timing, next: started + timing.initial_delay, failures: 0, successes: 0 }
    }
}

/// One container's process, if it runs, and its restart bookkeeping.
#[derive(Debug)]
struct Unit {
    spec: Container,
    child: Option<std::process::Child>,
    started: Option<(Instant, k8s_openapi::jiff::Timestamp)>,
    /// Consecutive crashes (reset after a long clean run).
    crashes: u32,
    /// No start before this (back-off, or a retry after a configuration error).
    not_before: Instant,
    /// It will not be started again (completed init container, or restartPolicy).
    finished: bool,
    starts: u32,
    readiness: Option<ProbeRun>,
    liveness: Option<ProbeRun>,
    /// Why the next exit happens, when the kubelet caused it (a failed liveness probe).
    kill_reason: Option<String>,
}

impl Unit {
    fn new(spec: &Container) -> Self {
        Self {
            spec: spec.clone(),
            child: None,
            started: None,
            crashes: 0,
            not_before: Instant::now(),
            finished: false,
            starts: 0,
            readiness: None,
            liveness: None,
            kill_reason: None,
        }
    }
}

/// Which list a unit is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Main,
}

/// The worker of one pod.
pub(super) struct Worker {
    shared: Arc<Shared>,
    namespace: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    /// The pod's directory, and every directory whose processes are the pod's.
    dir: PathBuf,
    roots: Vec<PathBuf>,
    pod: Pod,
    record: PodRecord,
    init: Vec<Unit>,
    main: Vec<Unit>,
    volumes: Option<BTreeMap<String, PathBuf>>,
    next_mount: Instant,
    last_status: Option<Value>,
    restart_policy: String,
}

impl Worker {
    /// Sets up the pod's directory and address (not yet its volumes).
    pub(super) fn new(shared: Arc<Shared>, pod: Pod, ip: Ipv4Addr, dir: PathBuf) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        let waiting = if has_init { "PodInitializing" } else { "ContainerCreating" };
        let init_records = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default(), "PodInitializing"))
            .collect();
        let main_records = spec
            .containers
            .iter()
            .map(|c| ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default(), waiting))
            .collect();
        let host_ip = shared.options.host_ip.to_string();
        let record = PodRecord::new(&host_ip, &ip.to_string(), init_records, main_records);
        let mut roots = vec![dir.clone()];
        roots.extend(volumes::claim_dirs(&pod, &shared.dirs.claims));
        Self {
            namespace,
            name,
            uid,
            ip,
            dir,
            roots,
            record,
            init: spec.init_containers.iter().flatten().map(Unit::new).collect(),
            main: spec.containers.iter().map(Unit::new).collect(),
            volumes: None,
            next_mount: Instant::now(),
            last_status: None,
            restart_policy: spec.restart_policy.clone().unwrap_or_else(|| "Always".to_owned()),
            pod,
            shared,
        }
    }

    /// The directories whose processes are this pod's.
    pub(super) fn roots(&self) -> Vec<PathBuf> {
        self.roots.clone()
    }

    fn say(&self, message: &str) {
        self.shared.log(&format!("{}/{}: {message}", self.namespace, self.name));
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.shared.client.clone(), &self.namespace)
    }

    /// Runs the pod until it is deleted (or the kubelet stops).
    pub(super) async fn run(mut self, mut updates: watch::Receiver<Option<Pod>>, mut stop: watch::Receiver<bool>) {
        if self.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty)
            && !self.bind(&mut updates).await
        {
            self.cleanup();
            return;
        }
        self.say(&format!("running on {} as {}", self.shared.options.node, self.ip));
        loop {
            let latest = updates.borrow_and_update().clone();
            let Some(pod) = latest else {
                self.say("deleted from the API; killing its processes");
                self.terminate(Duration::ZERO).await;
                break;
            };
            self.pod = pod;
            if *stop.borrow() {
                let grace = self.grace().min(self.shared.options.stop_grace);
                self.terminate(grace).await;
                break;
            }
            if self.pod.metadata.deletion_timestamp.is_some() {
                let grace = self.grace();
                self.say(&format!("being deleted; stopping its containers within {}s", grace.as_secs()));
                self.terminate(grace).await;
                self.publish().await;
                // Torn down before the API object goes, as a kubelet does: whoever
                // sees the pod gone must not find it running still.
                self.cleanup();
                self.delete().await;
                break;
            }
            self.step().await;
            self.publish().await;
            tokio::select! {
                changed = updates.changed() => if changed.is_err() { break },
                _ = stop.changed() => {},
                () = tokio::time::sleep(TICK) => {},
            }
        }
        self.cleanup();
    }

    /// Binds the pod to the node; false when it went away first (or another node has it).
    async fn bind(&self, updates: &mut watch::Receiver<Option<Pod>>) -> bool {
        let binding = Binding {
            metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
            target: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(self.shared.options.node.clone()),
                ..ObjectReference::default()
            },
        };
        loop {
            let result: Result<Value, kube::Error> =
                self.pods().create_subresource("binding", &self.name, &PostParams::default(), &binding).await;
            match result {
                Ok(_) => return true,
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                    self.say(&format!("not bound: {}", status.message));
                    return false;
                }
                Err(err) => self.say(&format!("binding failed, retrying: {err}")),
            }
            let gone = updates.borrow().as_ref().is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            if gone {
                return false;
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds);
        seconds.and_then(|s| u64::try_from(s).ok()).map_or(DEFAULT_GRACE, Duration::from_secs)
    }

    /// One look at everything: volumes, then init containers in order, then the containers.
    async fn step(&mut self) {
        if self.volumes.is_none() {
            self.mount().await;
            if self.volumes.is_none() {
                return;
            }
        }
        if let Some(index) = (0..self.init.len()).find(|i| !self.record.init[*i].completed()) {
            self.drive(Kind::Init, index).await;
            return;
        }
        for index in 0..self.main.len() {
            self.drive(Kind::Main, index).await;
        }
    }

    /// The uid of each claim the pod mounts, fresh from the API. A claim
    /// being deleted is not mounted (a real one would be detached). For a
    /// claim created from a VolumeSnapshot whose volume does not exist yet,
    /// where its contents come from.
    async fn claim_uids(&self) -> (ClaimUids, Restores) {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let names = self.pod.spec.iter().flat_map(|spec| spec.volumes.iter().flatten());
        let mut uids = ClaimUids::new();
        let mut restores = Restores::new();
        for name in names.filter_map(|v| v.persistent_volume_claim.as_ref()).map(|c| c.claim_name.clone()) {
            let claim = claims.get_opt(&name).await.ok().flatten().filter(|c| c.metadata.deletion_timestamp.is_none());
            let uid = claim.as_ref().and_then(|c| c.metadata.uid.clone());
            if let (Some(claim), Some(uid)) = (&claim, &uid) {
                let made = self.shared.dirs.claims.join(&self.namespace).join(&name).join(uid).exists();
                match volumes::snapshot_source(claim) {
                    Some(_) if made => {}
                    Some(Ok(snapshot)) => {
                        restores.insert(name.clone(), self.restore_source(&name, &snapshot).await);
                    }
                    Some(Err(why)) => {
                        restores.insert(name.clone(), Restore::Unavailable(why));
                    }
                    None => {}
                }
            }
            uids.insert(name, uid);
        }
        (uids, restores)
    }

    /// The snapshotter's copy of the VolumeSnapshot `snapshot`, or why there is none (yet).
    async fn restore_source(&self, claim: &str, snapshot: &str) -> Restore {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.shared.client.clone(), &self.namespace, &snapshotter::resource("VolumeSnapshot"));
        let object = match api.get_opt(snapshot).await {
            Ok(Some(object)) => object,
            Ok(None) => {
                return Restore::Unavailable(format!(
                    "volumesnapshot {snapshot:?} not found: claim {claim:?} is to be restored from it"
                ));
            }
            Err(err) => return Restore::Unavailable(format!("reading volumesnapshot {snapshot:?}: {err}")),
        };
        if object.data.pointer("/status/readyToUse") != Some(&json!(true)) {
            return Restore::Unavailable(format!("volumesnapshot {snapshot:?} is not ready to use yet"));
        }
        let uid = object.metadata.uid.unwrap_or_default();
        let copy = snapshotter::copy_dir(&self.shared.dirs.snapshots, &self.namespace, &uid);
        if copy.is_dir() {
            Restore::From(copy)
        } else {
            Restore::Unavailable(format!(
                "volumesnapshot {snapshot:?} (uid {uid}) has no copy at {}: the stand-in snapshotter did not take it",
                copy.display()
            ))
        }
    }

    /// The data of the Secrets and ConfigMaps the pod names, fresh from the API.
    async fn sources(&self) -> (Sources, Sources) {
        let (secret_names, map_names) = spec::referenced_sources(&self.pod);
        let secrets: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let maps: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let mut found_secrets = Sources::new();
        for name in secret_names {
            let data = secrets.get_opt(&name).await.ok().flatten().map(|secret| {
                let mut data: BTreeMap<String, Vec<u8>> =
                    secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                for (key, value) in secret.string_data.unwrap_or_default() {
                    data.insert(key, value.into_bytes());
                }
                data
            });
            found_secrets.insert(name, data);
        }
        let mut found_maps = Sources::new();
        for name in map_names {
            let data = maps.get_opt(&name).await.ok().flatten().map(|map| {
                let mut data: BTreeMap<String, Vec<u8>> =
                    map.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                for (key, value) in map.data.unwrap_or_default() {
                    data.insert(key, value.into_bytes());
                }
                data
            });
            found_maps.insert(name, data);
        }
        (found_secrets, found_maps)
    }

    fn fs_group(&self) -> Result<Option<u32>, String> {
        match spec::fs_group(&self.pod) {
            None => Ok(None),
            Some(IMAGE_POSTGRES_UID) => Ok(Some(self.shared.user.gid)),
            Some(other) => Err(format!(
                "fsGroup {other}: the stand-in kubelet maps only {IMAGE_POSTGRES_UID} (postgres) to a host group"
            )),
        }
    }

    async fn mount(&mut self) {
        if Instant::now() < self.next_mount {
            return;
        }
        let (secrets, maps) = self.sources().await;
        let (claim_uids, restores) = self.claim_uids().await;
        let empty_dir_owner = match self.shared.empty_dirs(&self.namespace) {
            EmptyDirs::AsKubelet => None,
        };
        let dirs = VolumeDirs { pod: self.dir.clone(), claims: self.shared.dirs.claims.clone(), empty_dir_owner };
        let prepared = self
            .fs_group()
            .and_then(|group| volumes::prepare(&self.pod, &dirs, group, &secrets, &maps, &claim_uids, &restores));
        match prepared {
            Ok(volumes) => {
                for (claim, restore) in &restores {
                    if let Restore::From(copy) = restore {
                        self.say(&format!("claim {claim} restored from the snapshot copy {}", copy.display()));
                    }
                }
                self.volumes = Some(volumes);
            }
            Err(why) => {
                if self.next_mount <= Instant::now() {
                    self.say(&format!("FailedMount: {why}"));
                }
                self.next_mount = Instant::now() + RETRY;
                let records = self.record.init.iter_mut().chain(self.record.containers.iter_mut());
                for record in records {
                    record.state = State::waiting("ContainerCreating", Some(why.clone()));
                }
            }
        }
    }

    fn unit(&mut self, kind: Kind, index: usize) -> (&mut Unit, &mut ContainerRecord) {
        match kind {
            Kind::Init => (&mut self.init[index], &mut self.record.init[index]),
            Kind::Main => (&mut self.main[index], &mut self.record.containers[index]),
        }
    }

    /// Starts, watches, probes and restarts one container.
    async fn drive(&mut self, kind: Kind, index: usize) {
        let exited = {
            let (unit, _) = self.unit(kind, index);
            match unit.child.as_mut().map(std::process::Child::try_wait) {
                Some(Ok(Some(status))) => Some(process::exit_parts(status)),
                Some(Err(_)) => Some((None, Some(9))),
                _ => None,
            }
        };
        if let Some((code, signal)) = exited {
            self.on_exit(kind, index, code, signal);
            return;
        }
        let running = self.unit(kind, index).0.child.is_some();
        if running {
            if kind == Kind::Main {
                self.track_memory(index);
                self.probe(index).await;
            }
            return;
        }
        let (unit, _) = self.unit(kind, index);
        if !unit.finished && Instant::now() >= unit.not_before {
            self.start(kind, index).await;
        }
    }

    fn track_memory(&self, index: usize) {
        let unit = &self.main[index];
        let Some(child) = unit.child.as_ref() else { return };
        let Some(bytes) = process::peak_rss(child.id()) else { return };
        let program = unit.spec.command.iter().flatten().next().cloned().unwrap_or_default();
        if program.ends_with("/stead-instance") {
            let key = format!("{}/{} {} (start {})", self.namespace, self.name, unit.spec.name, unit.starts);
            self.shared.record_peak(key, bytes);
        }
    }

    async fn start(&mut self, kind: Kind, index: usize) {
        let (secrets, maps) = self.sources().await;
        let launch = self.launch(kind, index, &secrets, &maps);
        let seq = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let pod_desc = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let period = Some(self.shared.options.readiness_period);
        let (unit, record) = self.unit(kind, index);
        let launch = match launch {
            Ok(launch) => launch,
            Err(why) => {
                record.state = State::waiting("CreateContainerConfigError", Some(why));
                unit.not_before = Instant::now() + RETRY;
                return;
            }
        };
        let words = launch.words.join(" ");
        match process::spawn(&launch) {
            Ok(child) => {
                let now = status::now();
                let pid = child.id();
                unit.child = Some(child);
                unit.started = Some((Instant::now(), now));
                if unit.starts > 0 {
                    record.restart_count += 1;
                }
                unit.starts += 1;
                record.state = State::Running { started_at: now };
                record.ready = false;
                record.container_id = Some(format!("stand-in://{seq}-{}-{}", unit.spec.name, unit.starts));
                let started = Instant::now();
                unit.readiness = unit.spec.readiness_probe.as_ref().map(|p| ProbeRun::new(p, period, started));
                unit.liveness = unit.spec.liveness_probe.as_ref().map(|p| ProbeRun::new(p, None, started));
                let name = unit.spec.name.clone();
                self.say(&format!("started {name} (pid {pid}): {words}"));
            }
            Err(err) => {
                unit.starts += 1;
                let name = unit.spec.name.clone();
                self.say(&format!("could not start {name} in {pod_desc}: {err:#}"));
                let mut exit = Exit::new(Some(128), None, None, status::now());
                exit.reason = "StartError".to_owned();
                exit.message = Some(format!("{err:#}"));
                self.after_exit(kind, index, exit, Duration::ZERO);
            }
        }
    }

    /// The command, environment and user of one start, or the message of a CreateContainerConfigError.
    fn launch(&self, kind: Kind, index: usize, secrets: &Sources, maps: &Sources) -> Result<Launch, String> {
        let unit = match kind {
            Kind::Init => &self.init[index],
            Kind::Main => &self.main[index],
        };
        let container = &unit.spec;
        match spec::run_as_user(&self.pod, container) {
            Some(IMAGE_POSTGRES_UID) => {}
            other => {
                return Err(format!(
                    "runAsUser {other:?}: the stand-in kubelet runs containers only as uid {IMAGE_POSTGRES_UID}, \
                     which it maps to the host's postgres user"
                ));
            }
        }
        let volumes = self.volumes.as_ref().ok_or("the volumes are not ready")?;
        let mut paths = PathMap::new(&self.shared.options.bin_dir);
        for mount in container.volume_mounts.iter().flatten() {
            let host = volumes
                .get(&mount.name)
                .ok_or_else(|| format!("volumeMount {:?} names no volume of the pod", mount.name))?;
            let host = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => host.join(sub),
                None => host.clone(),
            };
            paths.mount(&mount.mount_path, &host);
        }
        let addresses = Addresses { pod_ip: self.ip.to_string(), host_ip: self.shared.options.host_ip.to_string() };
        let mut env =
            vec![("PATH".to_owned(), process::CONTAINER_PATH.to_owned()), ("HOSTNAME".to_owned(), self.name.clone())];
        for (key, value) in spec::environment(&self.pod, container, secrets, maps, &addresses, &paths)? {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        let words = spec::command_line(container, &env, &paths)?;
        let cwd = match container.working_dir.as_deref() {
            Some(dir) => paths.host_path(dir).ok_or_else(|| format!("workingDir {dir} is on no volume"))?,
            None => self.dir.clone(),
        };
        let log = self.shared.dirs.logs.join(format!("{}_{}_{}.log", self.namespace, self.name, container.name));
        let banner = format!(
            "=== {} stand-in kubelet: start {} of {} as {}: {}",
            status::now(),
            unit.starts + 1,
            container.name,
            self.shared.user.name,
            words.join(" ")
        );
        Ok(Launch { words, env, cwd, user: self.shared.user.clone(), log, banner })
    }

    async fn probe(&mut self, index: usize) {
        let ip = IpAddr::V4(self.ip);
        let now = Instant::now();
        // Readiness.
        let unit = &mut self.main[index];
        let container = unit.spec.clone();
        match unit.readiness.as_mut() {
            None => self.record.containers[index].ready = true,
            Some(run) if now >= run.next => {
                run.next = now + run.timing.period;
                let outcome = run_blocking(run.probe.clone(), container.clone(), ip, run.timing.timeout).await;
                let Some(run) = self.main[index].readiness.as_mut() else { return };
                let record = &mut self.record.containers[index];
                match outcome {
                    Ok(()) => {
                        run.failures = 0;
                        run.successes += 1;
                        if run.successes >= run.timing.success_threshold {
                            record.ready = true;
                        }
                    }
                    Err(why) => {
                        run.successes = 0;
                        run.failures += 1;
                        if run.failures >= run.timing.failure_threshold && record.ready {
                            record.ready = false;
                            let line =
                                format!("{}: readiness probe failed {} times: {why}", container.name, run.failures);
                            self.say(&line);
                        }
                    }
                }
            }
            Some(_) => {}
        }
        // Liveness.
        let Some(run) = self.main[index].liveness.as_mut() else { return };
        if now < run.next {
            return;
        }
        run.next = now + run.timing.period;
        let outcome = run_blocking(run.probe.clone(), container.clone(), ip, run.timing.timeout).await;
        let Some(run) = self.main[index].liveness.as_mut() else { return };
        match outcome {
            Ok(()) => run.failures = 0,
            Err(why) => {
                run.failures += 1;
                if run.failures >= run.timing.failure_threshold {
                    let reason = format!("Liveness probe failed: {why}");
                    self.say(&format!("{}: {reason}; restarting it", container.name));
                    self.main[index].kill_reason = Some(reason);
                    let grace = self.grace();
                    self.stop_unit(index, grace).await;
                }
            }
        }
    }

    /// SIGTERM to a container, SIGKILL to everything of the pod after `grace`.
    async fn stop_unit(&mut self, index: usize, grace: Duration) {
        let Some(pid) = self.main[index].child.as_ref().map(std::process::Child::id) else { return };
        process::signal(pid, Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.main[index].child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let killed = process::kill_under(&self.roots);
        if killed > 0 {
            self.say(&format!("killed {killed} processes left after the grace period"));
        }
    }

    /// Records an exit and decides about the next start.
    fn on_exit(&mut self, kind: Kind, index: usize, code: Option<i32>, signal: Option<i32>) {
        let others_running =
            self.main.iter().enumerate().any(|(i, u)| (kind, i) != (Kind::Main, index) && u.child.is_some());
        // A container's end takes its processes with it (the runtime's cgroup).
        if !others_running {
            let left = process::kill_under(&self.roots);
            if left > 0 {
                self.say(&format!("killed {left} processes the exited container left"));
            }
        }
        let (unit, _) = self.unit(kind, index);
        let started = unit.started.take();
        unit.child = None;
        let ran = started.map_or(Duration::ZERO, |(at, _)| at.elapsed());
        let mut exit = Exit::new(code, signal, started.map(|(_, ts)| ts), status::now());
        exit.message = unit.kill_reason.take();
        let name = unit.spec.name.clone();
        self.say(&format!("{name} exited with code {} after {:.1}s", exit.exit_code, ran.as_secs_f64()));
        self.after_exit(kind, index, exit, ran);
    }

    fn after_exit(&mut self, kind: Kind, index: usize, exit: Exit, ran: Duration) {
        let restart = match (kind, self.restart_policy.as_str()) {
            (Kind::Init, "Never") | (Kind::Main, "Never") => false,
            (Kind::Init, _) => exit.exit_code != 0,
            (Kind::Main, "OnFailure") => exit.exit_code != 0,
            (Kind::Main, _) => true,
        };
        let pod_desc = (self.name.clone(), self.namespace.clone(), self.uid.clone());
        let base = self.shared.options.backoff_base;
        let (unit, record) = self.unit(kind, index);
        record.ready = false;
        if let Some(run) = unit.readiness.as_mut() {
            run.successes = 0;
        }
        if !restart {
            unit.finished = true;
            record.state = State::Terminated(exit);
        } else {
            unit.crashes = if ran >= BACKOFF_RESET { 1 } else { unit.crashes + 1 };
            let delay = restart_delay(unit.crashes, base, BACKOFF_CAP);
            unit.not_before = Instant::now() + delay;
            record.last_terminated = Some(exit.clone());
            record.state = if delay.is_zero() {
                State::Terminated(exit)
            } else {
                let message = backoff_message(delay, &unit.spec.name, &pod_desc.0, &pod_desc.1, &pod_desc.2);
                State::waiting("CrashLoopBackOff", Some(message))
            };
        }
        let init_failed = kind == Kind::Init && !restart && !self.record.init[index].completed();
        let all_done = self.main.iter().all(|u| u.finished) && !self.main.is_empty();
        if init_failed {
            self.record.terminal_phase = Some("Failed");
        } else if kind == Kind::Main && all_done {
            let failed = self.record.containers.iter().any(|c| !c.completed());
            self.record.terminal_phase = Some(if failed { "Failed" } else { "Succeeded" });
        }
    }

    /// Stops every container: SIGTERM, `grace`, then SIGKILL to all the pod's processes.
    async fn terminate(&mut self, grace: Duration) {
        let running: Vec<(Kind, usize)> = (0..self.init.len())
            .map(|i| (Kind::Init, i))
            .chain((0..self.main.len()).map(|i| (Kind::Main, i)))
            .filter(|(kind, i)| match kind {
                Kind::Init => self.init[*i].child.is_some(),
                Kind::Main => self.main[*i].child.is_some(),
            })
            .collect();
        for (kind, index) in &running {
            if let Some(child) = self.unit(*kind, *index).0.child.as_ref() {
                process::signal(child.id(), Signal::TERM);
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            let alive = running
                .iter()
                .filter(|(kind, index)| {
                    self.unit(*kind, *index).0.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
                })
                .count();
            if alive == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let killed = process::kill_under(&self.roots);
        if killed > 0 {
            self.say(&format!("killed {killed} processes at the end of the grace period"));
        }
        for (kind, index) in running {
            let (unit, record) = self.unit(kind, index);
            let Some(mut child) = unit.child.take() else { continue };
            let _ = child.kill();
            let deadline = Instant::now() + REAP_TIMEOUT;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                    _ => break None,
                }
            };
            let (code, signal) = status.map_or((None, Some(9)), process::exit_parts);
            let started = unit.started.take().map(|(_, ts)| ts);
            unit.finished = true;
            record.ready = false;
            record.state = State::Terminated(Exit::new(code, signal, started, status::now()));
        }
        for unit in self.init.iter_mut().chain(self.main.iter_mut()) {
            unit.finished = true;
        }
    }

    /// Patches the status when it differs from what was last written.
    async fn publish(&mut self) {
        let status = self.record.status(status::now());
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let patch = json!({"status": status});
        match self.pods().patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => self.last_status = Some(status),
            Err(kube::Error::Api(s)) if s.code == 404 => self.last_status = Some(status),
            Err(err) => self.say(&format!("status update failed (retried next tick): {err}")),
        }
    }

    /// Deletes the stopped pod for good, as the kubelet does (grace 0, this uid only).
    async fn delete(&self) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..DeleteParams::default()
        };
        match self.pods().delete(&self.name, &params).await {
            Ok(_) => self.say("stopped and deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => self.say("stopped; already gone"),
            Err(err) => self.say(&format!("could not delete the pod: {err}")),
        }
    }

    /// Removes the pod's own directory (not its claims) and gives its address back.
    fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.shared.release(&self.uid, self.ip);
    }
}

/// Runs a probe on the blocking pool, bounded by its timeout.
async fn run_blocking(probe: Probe, container: Container, ip: IpAddr, timeout: Duration) -> Result<(), String> {
    let task = tokio::task::spawn_blocking(move || probe::run(&probe, &container, ip, timeout));
    match tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(join)) => Err(format!("the probe failed to run: {join}")),
        Err(_) => Err(format!("timeout after {}s", timeout.as_secs())),
    }
}
