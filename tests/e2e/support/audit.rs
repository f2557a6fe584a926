//! The API server's audit log as a request counter for one user.
//!
//! `apiserver_request_total` has no user label, so requests made by the
//! controller are counted from the audit log instead: the policy below logs
//! only that user, one event per request (stage RequestReceived).

use std::collections::BTreeMap;
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

/// One object, as an audit event's `objectRef` names it.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    /// The plural resource, e.g. `services`.
    pub resource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// The requests of `username` that would change the existing object
/// `object` (update, patch, delete), as `verb requestURI`. A create names no
/// object in the RequestReceived stage, and cannot change an existing one.
pub fn changes_to(log: &str, username: &str, object: ObjectRef<'_>) -> Vec<String> {
    let complete = match log.rfind('\n') {
        Some(end) => &log[..end],
        None => "",
    };
    complete
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event.pointer("/user/username").and_then(Value::as_str) == Some(username))
        .filter(|event| {
            let field = |name: &str| event.pointer(&format!("/objectRef/{name}")).and_then(Value::as_str);
            field("resource") == Some(object.resource)
                && field("namespace") == Some(object.namespace)
                && field("name") == Some(object.name)
                && field("subresource").is_none()
        })
        .filter_map(|event| {
            let verb = event.get("verb").and_then(Value::as_str)?;
            ["update", "patch", "delete"]
                .contains(&verb)
                .then(|| format!("{verb} {}", event.get("requestURI").and_then(Value::as_str).unwrap_or_default()))
        })
        .collect()
}

/// [`changes_to`] over the log file; no file yet means no requests.
pub fn read_changes_to(path: &Path, username: &str, object: ObjectRef<'_>) -> anyhow::Result<Vec<String>> {
    match fs::read_to_string(path) {
        Ok(log) => Ok(changes_to(&log, username, object)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("reading the audit log {}", path.display())),
    }
}

/// The requests of `username`, counted by what they did: `verb resource`,
/// with `/subresource` when there is one (`patch databaseclusters/status`).
pub fn breakdown(log: &str, username: &str) -> BTreeMap<String, u64> {
    let complete = match log.rfind('\n') {
        Some(end) => &log[..end],
        None => "",
    };
    let mut counts = BTreeMap::new();
    for event in complete.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()) {
        if event.pointer("/user/username").and_then(Value::as_str) != Some(username) {
            continue;
        }
        let field = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
        let verb = field("/verb").unwrap_or("?");
        let what = match (field("/objectRef/resource"), field("/objectRef/subresource")) {
            (Some(resource), Some(sub)) => format!("{verb} {resource}/{sub}"),
            (Some(resource), None) => format!("{verb} {resource}"),
            (None, _) => format!("{verb} {}", field("/requestURI").unwrap_or("?")),
        };
        *counts.entry(what).or_insert(0) += 1;
    }
    counts
}

/// [`breakdown`] over the log file; no file yet means no requests.
pub fn read_breakdown(path: &Path, username: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    match fs::read_to_string(path) {
        Ok(log) => Ok(breakdown(&log, username)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(err) => Err(err).with_context(|| format!("reading the audit log {}", path.display())),
    }
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
    fn changes_to_one_object_are_found_by_its_reference() {
        let on = |user: &str, verb: &str, resource: &str, name: &str, subresource: Option<&str>| {
            let mut e: Value = serde_json::from_str(&event(user, verb)).unwrap();
            e["requestURI"] = json!(format!("/api/v1/namespaces/shop/{resource}/{name}"));
            e["objectRef"] = json!({"resource": resource, "namespace": "shop", "name": name, "apiVersion": "v1"});
            if let Some(sub) = subresource {
                e["objectRef"]["subresource"] = json!(sub);
            }
            e.to_string()
        };
        let log = [
            on("stead-controller", "patch", "services", "shop", None),
            on("stead-controller", "get", "services", "shop", None),
            on("stead-controller", "create", "services", "", None),
            on("stead-controller", "patch", "services", "shop-headless", None),
            on("stead-controller", "update", "services", "shop", Some("status")),
            on("admin", "delete", "services", "shop", None),
            on("stead-controller", "delete", "services", "shop", None),
        ]
        .join("\n")
            + "\n";
        let shop = ObjectRef { resource: "services", namespace: "shop", name: "shop" };
        assert_eq!(
            changes_to(&log, "stead-controller", shop),
            ["patch /api/v1/namespaces/shop/services/shop", "delete /api/v1/namespaces/shop/services/shop"]
        );
    }

    #[test]
    fn requests_are_broken_down_by_verb_and_resource() {
        let on = |user: &str, verb: &str, resource: Option<&str>, subresource: Option<&str>| {
            let mut e: Value = serde_json::from_str(&event(user, verb)).unwrap();
            e["requestURI"] = json!("/version");
            if let Some(resource) = resource {
                e["objectRef"] = json!({"resource": resource, "namespace": "shop"});
            }
            if let Some(sub) = subresource {
                e["objectRef"]["subresource"] = json!(sub);
            }
            e.to_string()
        };
        let log = [
            on("stead-controller", "create", Some("services"), None),
            on("stead-controller", "create", Some("services"), None),
            on("stead-controller", "patch", Some("databaseclusters"), Some("status")),
            on("admin", "create", Some("services"), None),
            on("stead-controller", "get", None, None),
        ]
        .join("\n")
            + "\n";
        let got = breakdown(&log, "stead-controller");
        let want: BTreeMap<String, u64> = [
            ("create services".to_owned(), 2),
            ("get /version".to_owned(), 1),
            ("patch databaseclusters/status".to_owned(), 1),
        ]
        .into();
        assert_eq!(got, want);
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
