//! Why a database pod does not run, in the words `kubectl describe` would
//! use: a container stuck waiting (CrashLoopBackOff, ImagePullBackOff,
//! CreateContainerConfigError, …) with its last exit and restart count, or a
//! pod left Pending for longer than [`PENDING_BOUND`] with the scheduler's
//! reason. Pure: the clock is a parameter.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

/// A pod Pending for longer than this is reported (scheduling, volume
/// binding and image pulls normally take seconds).
pub const PENDING_BOUND: Duration = Duration::from_secs(120);

/// What keeps `pod` from running at `now`; `None` while it runs or is still
/// within the normal start-up time.
pub fn of(pod: &Pod, now: Timestamp) -> Option<String> {
    container_problem(pod).or_else(|| pending_problem(pod, now))
}

/// What the `database` container is stuck on, in one line: the waiting
/// reason and message, the last termination's exit code and reason, and the
/// restart count. `None` while it runs (or has not been tried yet).
pub fn container_problem(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let all = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    let stuck = all.filter(|c| c.name == crate::children::CONTAINER || c.name.starts_with("stead-")).find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|r| *r != "ContainerCreating" && *r != "PodInitializing")?;
        Some((c, reason.to_owned(), waiting.message.clone()))
    })?;
    let (container, reason, message) = stuck;
    let mut text = reason;
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        text.push_str(&format!(": {message}"));
    }
    if let Some(last) = container.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        text.push_str(&format!("; last exit code {}", last.exit_code));
        if let Some(why) = last.reason.as_deref() {
            text.push_str(&format!(" ({why})"));
        }
    }
    text.push_str(&format!("; {} restarts", container.restart_count));
    Some(text)
}

/// A pod Pending beyond [`PENDING_BOUND`], with its PodScheduled reason.
fn pending_problem(pod: &Pod, now: Timestamp) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Pending") || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let created = pod.metadata.creation_timestamp.as_ref()?.0;
    let pending = now.duration_since(created).unsigned_abs();
    if pending < PENDING_BOUND {
        return None;
    }
    let scheduled = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status != "True");
    let why = match scheduled {
        Some(c) => format!(
            "not scheduled ({}): {}",
            c.reason.as_deref().unwrap_or("unknown reason"),
            c.message.as_deref().unwrap_or("no message")
        ),
        None => "scheduled, but its containers have not started".to_owned(),
    };
    Some(format!("Pending for {}s: {why}", pending.as_secs()))
}
