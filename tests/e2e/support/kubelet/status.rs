//! A pod's status as the stand-in reports it: container states, phase and
//! conditions in the kubelet's vocabulary, with `lastTransitionTime` moved
//! only when a condition flips. Also the kubelet's restart back-off. Pure,
//! so the vocabulary is table-tested; the worker feeds it what it sees.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{Timestamp, Unit};
use serde_json::{Map, Value, json};

/// Back-off after the second crash; it doubles from there (the kubelet's 10 s).
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest back-off (the kubelet's 5 minutes).
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A container that ran this long without a problem starts its back-off over.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// Now, to the second (the API's timestamps have no fraction).
pub fn now() -> Timestamp {
    Timestamp::now().round(Unit::Second).unwrap_or_else(|_| Timestamp::now())
}

/// How long to wait before starting a container again after its
/// `crashes`-th consecutive exit: at once after the first, then `base`,
/// doubling up to `cap`, as the kubelet's CrashLoopBackOff does.
pub fn restart_delay(crashes: u32, base: Duration, cap: Duration) -> Duration {
    match crashes {
        0 | 1 => Duration::ZERO,
        n => {
            let doublings = (n - 2).min(31);
            base.saturating_mul(1_u32 << doublings).min(cap)
        }
    }
}

/// What one container is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: Timestamp },
    Terminated(Exit),
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub exit_code: i32,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
}

impl Exit {
    /// An exit code (128 + signal for a signal), with the kubelet's reason:
    /// `Completed` for 0, `Error` otherwise.
    pub fn new(code: Option<i32>, signal: Option<i32>, started_at: Option<Timestamp>, finished_at: Timestamp) -> Self {
        let exit_code = code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
        let reason = if exit_code == 0 { "Completed" } else { "Error" }.to_owned();
        Self { exit_code, signal, reason, message: None, started_at, finished_at }
    }

    fn to_json(&self) -> Value {
        let mut out = json!({
            "exitCode": self.exit_code,
            "reason": self.reason,
            "finishedAt": self.finished_at.to_string(),
        });
        if let Some(signal) = self.signal {
            out["signal"] = json!(signal);
        }
        if let Some(message) = &self.message {
            out["message"] = json!(message);
        }
        if let Some(started) = self.started_at {
            out["startedAt"] = json!(started.to_string());
        }
        out
    }
}

impl State {
    /// Waiting with a reason (and a message).
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting { reason: reason.to_owned(), message }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Waiting { reason, message } => {
                let mut waiting = json!({"reason": reason});
                if let Some(message) = message {
                    waiting["message"] = json!(message);
                }
                json!({"waiting": waiting})
            }
            Self::Running { started_at } => json!({"running": {"startedAt": started_at.to_string()}}),
            Self::Terminated(exit) => json!({"terminated": exit.to_json()}),
        }
    }
}

/// One container as `containerStatuses[]`/`initContainerStatuses[]` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub state: State,
    pub last_terminated: Option<Exit>,
    pub restart_count: i32,
    pub ready: bool,
    /// An id for the current run (`stand-in://…`), once it was started.
    pub container_id: Option<String>,
}

impl ContainerRecord {
    /// A container that has not started, waiting for `reason`.
    pub fn new(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            state: State::waiting(reason, None),
            last_terminated: None,
            restart_count: 0,
            ready: false,
            container_id: None,
        }
    }

    /// Whether it runs now.
    pub fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// Whether it has run to a successful end (an init container's goal).
    pub fn completed(&self) -> bool {
        matches!(&self.state, State::Terminated(exit) if exit.exit_code == 0)
    }

    fn to_json(&self) -> Value {
        let mut out = json!({
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.running(),
            "state": self.state.to_json(),
            "lastState": self.last_terminated.as_ref().map_or_else(|| json!({}), |e| json!({"terminated": e.to_json()})),
        });
        if let Some(id) = &self.container_id {
            out["containerID"] = json!(id);
        }
        out
    }
}

/// Everything the pod's status is made of.
#[derive(Debug, Clone)]
pub struct PodRecord {
    pub host_ip: String,
    pub pod_ip: String,
    pub start_time: Timestamp,
    pub init: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    /// `Succeeded` or `Failed` once nothing will run again.
    pub terminal_phase: Option<&'static str>,
    /// Condition type → (status, last transition).
    transitions: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl PodRecord {
    pub fn new(host_ip: &str, pod_ip: &str, init: Vec<ContainerRecord>, containers: Vec<ContainerRecord>) -> Self {
        Self {
            host_ip: host_ip.to_owned(),
            pod_ip: pod_ip.to_owned(),
            start_time: now(),
            init,
            containers,
            terminal_phase: None,
            transitions: BTreeMap::new(),
        }
    }

    /// Whether every init container completed.
    pub fn initialized(&self) -> bool {
        self.init.iter().all(ContainerRecord::completed)
    }

    /// Whether every container is ready (the pod's Ready condition).
    pub fn ready(&self) -> bool {
        self.terminal_phase.is_none()
            && self.initialized()
            && !self.containers.is_empty()
            && self.containers.iter().all(|c| c.ready)
    }

    /// The phase: Pending until a container has started, Running after.
    pub fn phase(&self) -> &'static str {
        if let Some(phase) = self.terminal_phase {
            return phase;
        }
        let started = |c: &ContainerRecord| c.running() || c.restart_count > 0 || c.last_terminated.is_some();
        if self.initialized() && self.containers.iter().any(started) { "Running" } else { "Pending" }
    }

    /// The status subresource's body, at `now`.
    pub fn status(&mut self, now: Timestamp) -> Value {
        let unready: Vec<&str> = self.containers.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
        let incomplete: Vec<&str> = self.init.iter().filter(|c| !c.completed()).map(|c| c.name.as_str()).collect();
        let initialized = self.initialized();
        let ready = self.ready();
        let list = |names: &[&str]| format!("[{}]", names.join(" "));
        let wanted: [(&'static str, bool, &str, String); 5] = [
            ("PodReadyToStartContainers", true, "", String::new()),
            (
                "Initialized",
                initialized,
                "ContainersNotInitialized",
                format!("containers with incomplete status: {}", list(&incomplete)),
            ),
            ("Ready", ready, "ContainersNotReady", format!("containers with unready status: {}", list(&unready))),
            (
                "ContainersReady",
                ready,
                "ContainersNotReady",
                format!("containers with unready status: {}", list(&unready)),
            ),
            ("PodScheduled", true, "", String::new()),
        ];
        let mut conditions = Vec::new();
        for (kind, status, reason, message) in wanted {
            let since = match self.transitions.get(kind) {
                Some((was, since)) if *was == status => *since,
                _ => {
                    self.transitions.insert(kind, (status, now));
                    now
                }
            };
            let mut condition = Map::new();
            condition.insert("type".to_owned(), json!(kind));
            condition.insert("status".to_owned(), json!(if status { "True" } else { "False" }));
            condition.insert("lastProbeTime".to_owned(), Value::Null);
            condition.insert("lastTransitionTime".to_owned(), json!(since.to_string()));
            if !status {
                condition.insert("reason".to_owned(), json!(reason));
                condition.insert("message".to_owned(), json!(message));
            }
            conditions.push(Value::Object(condition));
        }
        json!({
            "phase": self.phase(),
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time.to_string(),
            "qosClass": "BestEffort",
            "conditions": conditions,
            "initContainerStatuses": self.init.iter().map(ContainerRecord::to_json).collect::<Vec<_>>(),
            "containerStatuses": self.containers.iter().map(ContainerRecord::to_json).collect::<Vec<_>>(),
        })
    }
}

/// `back-off 10s restarting failed container=database pod=orders-0_shop(uid)`, as the kubelet says it.
pub fn backoff_message(delay: Duration, container: &str, pod: &str, namespace: &str, uid: &str) -> String {
    format!("back-off {}s restarting failed container={container} pod={pod}_{namespace}({uid})", delay.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn record() -> PodRecord {
        PodRecord::new(
            "127.0.0.1",
            "127.0.0.10",
            vec![ContainerRecord::new("stead-instance-install", "stead:0.1", "PodInitializing")],
            vec![ContainerRecord::new("database", "postgres:17", "PodInitializing")],
        )
    }

    fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
        status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == kind).unwrap()
    }

    #[test]
    fn backoff_is_immediate_then_doubles_to_the_cap() {
        let delays: Vec<u64> = (1..=8).map(|n| restart_delay(n, BACKOFF_BASE, BACKOFF_CAP).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(restart_delay(u32::MAX, BACKOFF_BASE, BACKOFF_CAP), BACKOFF_CAP);
        assert_eq!(
            backoff_message(Duration::from_secs(10), "database", "orders-0", "shop", "u"),
            "back-off 10s restarting failed container=database pod=orders-0_shop(u)"
        );
    }

    #[test]
    fn exits_get_the_kubelets_codes_and_reasons() {
        let done = Exit::new(Some(0), None, None, at(0));
        assert_eq!((done.exit_code, done.reason.as_str()), (0, "Completed"));
        let killed = Exit::new(None, Some(9), Some(at(0)), at(1));
        assert_eq!((killed.exit_code, killed.reason.as_str()), (137, "Error"));
        let failed = Exit::new(Some(1), None, None, at(0));
        assert_eq!((failed.exit_code, failed.reason.as_str()), (1, "Error"));
    }

    #[test]
    fn a_pod_goes_from_initializing_to_ready_and_keeps_its_transition_times() {
        let mut pod = record();
        let first = pod.status(at(0));
        assert_eq!(first["phase"], "Pending");
        assert_eq!(first["podIP"], "127.0.0.10");
        assert_eq!(condition(&first, "Initialized")["status"], "False");
        assert_eq!(
            condition(&first, "Initialized")["message"],
            "containers with incomplete status: [stead-instance-install]"
        );
        assert_eq!(first["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing");

        pod.init[0].state = State::Terminated(Exit::new(Some(0), None, Some(at(0)), at(1)));
        pod.containers[0].state = State::Running { started_at: at(2) };
        let running = pod.status(at(2));
        assert_eq!(running["phase"], "Running");
        assert_eq!(condition(&running, "Initialized")["status"], "True");
        assert_eq!(condition(&running, "Initialized")["lastTransitionTime"], at(2).to_string());
        assert_eq!(condition(&running, "Ready")["status"], "False");
        assert_eq!(condition(&running, "Ready")["message"], "containers with unready status: [database]");
        assert_eq!(condition(&running, "Ready")["lastTransitionTime"], at(0).to_string());
        assert_eq!(running["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed");

        pod.containers[0].ready = true;
        let ready = pod.status(at(5));
        assert_eq!(condition(&ready, "Ready")["status"], "True");
        assert_eq!(condition(&ready, "ContainersReady")["lastTransitionTime"], at(5).to_string());
        assert_eq!(condition(&ready, "PodScheduled")["lastTransitionTime"], at(0).to_string());
        assert!(condition(&ready, "Ready").get("reason").is_none());
        // Nothing changed: the same body, so no patch.
        assert_eq!(pod.status(at(9)), ready);
    }

    #[test]
    fn a_crash_loop_shows_the_back_off_the_last_exit_and_the_restarts() {
        let mut pod = record();
        pod.init[0].state = State::Terminated(Exit::new(Some(0), None, None, at(0)));
        let container = &mut pod.containers[0];
        container.last_terminated = Some(Exit::new(Some(1), None, Some(at(1)), at(2)));
        container.restart_count = 3;
        container.state = State::waiting("CrashLoopBackOff", Some("back-off 40s …".to_owned()));
        let status = pod.status(at(3));
        let shown = &status["containerStatuses"][0];
        assert_eq!(shown["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(shown["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(shown["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(shown["restartCount"], 3);
        assert_eq!(shown["started"], false);
        assert_eq!(status["phase"], "Running");
    }
}
