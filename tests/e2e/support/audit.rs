//! The API server's audit log as a request counter for one user.
//!
//! `apiserver_request_total` has no user label, so requests made by the
//! controller are counted from the audit log instead: the policy below logs
//! only that user, one event per request (stage RequestReceived).

use std::fs;
use std::io;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

/// Verbs that change state.
const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// Requests seen for one user up to some moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AuditCounts {
    /// Every request.
    pub requests: u64,
    /// Requests with a write verb.
    pub writes: u64,
}

impl AuditCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            requests: self.requests.saturating_sub(earlier.requests),
            writes: self.writes.saturating_sub(earlier.writes),
        }
    }
}

/// An audit policy (`audit.k8s.io/v1`, JSON) that records each request of
/// `username` once, at Metadata level, and nothing else.
pub fn policy(username: &str) -> String {
    let policy = json!({
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["ResponseStarted", "ResponseComplete", "Panic"],
        "rules": [
            {"level": "Metadata", "users": [username]},
            {"level": "None"}
        ]
    });
    format!("{policy:#}\n")
}

/// Counts the events of `username` in a JSON-lines audit log. A last line
/// still being written (no newline yet) is left for the next read.
pub fn count(log: &str, username: &str) -> AuditCounts {
    let complete = match log.rfind('\n') {
        Some(end) => &log[..end],
        None => "",
    };
    let mut counts = AuditCounts::default();
    for line in complete.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event.pointer("/user/username").and_then(Value::as_str) != Some(username) {
            continue;
        }
        counts.requests += 1;
        let verb = event.get("verb").and_then(Value::as_str).unwrap_or_default();
        if WRITE_VERBS.contains(&verb) {
            counts.writes += 1;
        }
    }
    counts
}

/// [`count`] over the log file; no file yet means no requests.
pub fn read_counts(path: &Path, username: &str) -> anyhow::Result<AuditCounts> {
    match fs::read_to_string(path) {
        Ok(log) => Ok(count(&log, username)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(AuditCounts::default()),
        Err(err) => Err(err).with_context(|| format!("reading the audit log {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn event(user: &str, verb: &str) -> String {
        json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "stage": "RequestReceived", "verb": verb,
            "user": {"username": user, "groups": ["system:masters"]},
            "userAgent": "stead-controller/0.1.0",
        })
        .to_string()
    }

    #[test]
    fn counts_requests_and_writes_of_one_user() {
        let log = [
            event("stead-controller", "list"),
            event("stead-controller", "watch"),
            event("stead-controller", "patch"),
            event("admin", "create"),
            event("stead-controller", "create"),
            event("stead-controller", "get"),
        ]
        .join("\n")
            + "\n";
        assert_eq!(count(&log, "stead-controller"), AuditCounts { requests: 5, writes: 2 });
        assert_eq!(count(&log, "admin"), AuditCounts { requests: 1, writes: 1 });
    }

    #[test]
    fn a_partial_last_line_and_garbage_are_not_counted() {
        let whole = event("stead-controller", "update");
        let partial = &event("stead-controller", "delete")[..20];
        let log = format!("{whole}\nnot json\n{partial}");
        assert_eq!(count(&log, "stead-controller"), AuditCounts { requests: 1, writes: 1 });
        assert_eq!(count("", "stead-controller"), AuditCounts::default());
    }

    #[test]
    fn since_subtracts() {
        let before = AuditCounts { requests: 10, writes: 4 };
        let after = AuditCounts { requests: 15, writes: 4 };
        assert_eq!(after.since(before), AuditCounts { requests: 5, writes: 0 });
    }

    #[test]
    fn policy_logs_only_the_user_once_per_request() {
        let policy: Value = serde_json::from_str(&policy("stead-controller")).unwrap();
        assert_eq!(policy["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(policy["kind"], "Policy");
        assert_eq!(policy["rules"][0]["users"][0], "stead-controller");
        assert_eq!(policy["rules"][0]["level"], "Metadata");
        assert_eq!(policy["rules"][1]["level"], "None");
        let omitted: Vec<&str> = policy["omitStages"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(!omitted.contains(&"RequestReceived"));
        assert!(omitted.contains(&"ResponseComplete"));
    }

    #[test]
    fn missing_log_file_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_counts(&dir.path().join("audit.log"), "x").unwrap(), AuditCounts::default());
    }
}
