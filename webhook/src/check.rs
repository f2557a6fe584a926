//! `stead-webhook check`: the admission webhook, offline.
//!
//! A GitOps pipeline runs this before Argo CD syncs. Every DatabaseCluster,
//! DatabaseBackup and App found in the given files goes through the very
//! [`review`] function the server runs: `/mutate` first, the patch applied,
//! then `/validate`, as the API server would call them on `kubectl apply`.
//! The output imitates what `kubectl` prints for the same objects.
//!
//! Offline, the two rules that read the API (does a backup's cluster exist,
//! is a restored backup Completed and small enough) are skipped, and a
//! `note:` line says which read was skipped. The App route rule (no other
//! App of the namespace claims the same Ingress host and path) cannot run
//! offline either; the rule itself then admits with a warning, the very
//! warning a server without API access gives, so the offline and the
//! `--server` output stay the same.
//!
//! With `--server`, the same reviews go over HTTPS to a running webhook
//! instead (`make demo` does this), so one printer shows both.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use json_patch::{Patch, PatchOperation};
use kube::core::response::Status;
use serde_json::{Value, json};
use stead_crds::cluster::{GROUP, VERSION};
use stead_crds::lookup::Query;

use crate::client::{ClientError, Endpoint, WebhookClient};
use crate::review::{BadReview, Route, Served, review};
use crate::wire::{AnswerResponse, AnswerReview};

/// Who answers the reviews: the webhook's own code in-process, or a server.
pub trait Webhook {
    /// One AdmissionReview round trip on `route`; the response part of the answer.
    fn call(&mut self, route: Route, review: &[u8]) -> Result<AnswerResponse, CheckError>;

    /// Whether the rules that read the API are skipped (the in-process check).
    fn offline(&self) -> bool {
        false
    }
}

/// The review function itself, as the server runs it: the offline check.
#[derive(Debug, Default)]
pub struct InProcess;

impl Webhook for InProcess {
    fn call(&mut self, route: Route, body: &[u8]) -> Result<AnswerResponse, CheckError> {
        review(route, body)?.review.response.ok_or(CheckError::NoResponse)
    }

    fn offline(&self) -> bool {
        true
    }
}

/// A running `stead-webhook serve`, reached over verified HTTPS.
pub struct Remote {
    runtime: tokio::runtime::Runtime,
    client: WebhookClient,
}

impl Remote {
    /// Connects to `url` (`https://host:port`), trusting only the CA in `ca_pem`;
    /// waits up to `patience` for a server that is still starting.
    pub fn connect(url: &str, ca_pem: &str, patience: Duration) -> Result<Self, CheckError> {
        let endpoint = Endpoint::parse(url)?;
        let tls = stead_certs::client_config(ca_pem, &[stead_certs::ALPN_HTTP1])
            .map_err(|e| CheckError::Trust(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CheckError::Runtime(e.to_string()))?;
        let client = runtime.block_on(WebhookClient::connect(&endpoint, Arc::new(tls), patience))?;
        Ok(Self { runtime, client })
    }
}

impl Webhook for Remote {
    fn call(&mut self, route: Route, body: &[u8]) -> Result<AnswerResponse, CheckError> {
        let path = match route {
            Route::Mutate => "/mutate",
            Route::Validate => "/validate",
        };
        let (status, answer) =
            self.runtime.block_on(self.client.post_json(path, hyper::body::Bytes::copy_from_slice(body)))?;
        if !status.is_success() {
            return Err(CheckError::Status {
                path,
                status: status.as_u16(),
                body: one_line(&String::from_utf8_lossy(&answer)),
            });
        }
        let review: AnswerReview =
            serde_json::from_slice(&answer).map_err(|e| CheckError::Answer { path, cause: e.to_string() })?;
        review.response.ok_or(CheckError::NoResponse)
    }
}

/// Extensions picked up when a directory is walked; files named explicitly are always read.
const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Totals of one check run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckSummary {
    /// Files read.
    pub files: usize,
    /// Objects of the served kinds the webhooks would admit.
    pub admitted: usize,
    /// Objects of the served kinds refused, plus documents and files that could not be read.
    pub refused: usize,
    /// Documents of other kinds.
    pub skipped: usize,
}

impl CheckSummary {
    /// Whether the pipeline must stop: anything refused or unreadable.
    pub fn failed(&self) -> bool {
        self.refused > 0
    }
}

/// Checks every DatabaseCluster, DatabaseBackup and App under `paths` (files or directories).
///
/// Results go to `out`; warnings and refusals go to `err`, as with kubectl.
/// Only a failure to write the report is an `Err`.
pub fn run(
    paths: &[PathBuf],
    webhook: &mut dyn Webhook,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<CheckSummary> {
    let mut summary = CheckSummary::default();
    let mut files = Vec::new();
    for path in paths {
        if let Err(problem) = collect(path, true, &mut files) {
            writeln!(err, "error: {}: {problem}", path.display())?;
            summary.refused += 1;
        }
    }
    for file in &files {
        summary.files += 1;
        match std::fs::read_to_string(file) {
            Ok(text) => check_text(&file.display().to_string(), &text, webhook, out, err, &mut summary)?,
            Err(problem) => {
                writeln!(err, "error: {}: cannot read the file: {problem}", file.display())?;
                summary.refused += 1;
            }
        }
    }
    writeln!(
        out,
        "checked {} file(s): {} admitted, {} refused, {} skipped",
        summary.files, summary.admitted, summary.refused, summary.skipped
    )?;
    Ok(summary)
}

/// Adds `path` (a file, or the manifests under a directory, sorted) to `files`.
fn collect(path: &Path, explicit: bool, files: &mut Vec<PathBuf>) -> io::Result<()> {
    let metadata = std::fs::metadata(path)?;
    if metadata.is_dir() {
        let mut entries = std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<io::Result<Vec<_>>>()?;
        entries.sort();
        for entry in entries {
            collect(&entry, false, files)?;
        }
    } else if explicit || is_manifest(path) {
        files.push(path.to_path_buf());
    }
    Ok(())
}

fn is_manifest(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e))
}

/// Checks every document of one file's text; `origin` names the file in messages.
pub fn check_text(
    origin: &str,
    text: &str,
    webhook: &mut dyn Webhook,
    out: &mut dyn Write,
    err: &mut dyn Write,
    summary: &mut CheckSummary,
) -> io::Result<()> {
    for (index, (first_line, document)) in split_documents(text).into_iter().enumerate() {
        let at = format!("{origin} (document {})", index + 1);
        // Blank lines in front keep the parser's line numbers those of the file.
        let positioned = format!("{}{document}", "\n".repeat(first_line));
        match serde_saphyr::from_str::<Value>(&positioned) {
            Ok(Value::Null) => {}
            Ok(value) => {
                for object in list_items(value) {
                    check_object(origin, &at, &object, webhook, out, err, summary)?;
                }
            }
            Err(problem) => {
                let message = problem.without_snippet().to_string();
                let message = message.strip_prefix("error: ").unwrap_or(&message);
                writeln!(err, "error: {at}: not valid YAML: {}", one_line(message))?;
                summary.refused += 1;
            }
        }
    }
    Ok(())
}

/// Splits a YAML stream where kubectl does: at lines that are exactly `---`.
/// Each document comes with the number of lines before it; chunks holding
/// only comments and blank lines are not documents.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 0, 0);
    for (number, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" {
            documents.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = number + 1;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents.retain(|(_, d)| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    documents
}

/// A `kind: List` (as `kubectl get -o yaml` writes) stands for its items.
fn list_items(value: Value) -> Vec<Value> {
    match value {
        Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
            match map.remove("items") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            }
        }
        other => vec![other],
    }
}

fn check_object(
    origin: &str,
    at: &str,
    object: &Value,
    webhook: &mut dyn Webhook,
    out: &mut dyn Write,
    err: &mut dyn Write,
    summary: &mut CheckSummary,
) -> io::Result<()> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let Some(served) = Served::ALL.into_iter().find(|s| group == GROUP && kind == s.kind()) else {
        let shown =
            if kind.is_empty() { "a document without kind".to_owned() } else { format!("{api_version} {kind}") };
        writeln!(out, "skipped: {at}: {shown} {} is not a {}", display_name(object), served_kinds_or())?;
        summary.skipped += 1;
        return Ok(());
    };
    if version != VERSION {
        writeln!(
            err,
            "error: {at}: resource mapping not found for name: {:?}: no matches for kind {kind:?} in version \
             {api_version:?}; {GROUP} serves {VERSION} only",
            display_name(object)
        )?;
        summary.refused += 1;
        return Ok(());
    }
    let kind = served.kind();
    if webhook.offline() {
        for query in skipped_lookups(kind, object) {
            writeln!(out, "note: {at}: offline check: {query}")?;
        }
    }
    match admit(webhook, kind, object) {
        Ok(Admission::Admitted { defaulted, warnings }) => {
            for warning in warnings {
                writeln!(err, "Warning: {warning}")?;
            }
            let name = format!("{}.{GROUP}/{}", kind.to_lowercase(), display_name(object));
            if defaulted.is_empty() {
                writeln!(out, "{name} admitted")?;
            } else {
                writeln!(out, "{name} defaulted: {}", defaulted.join(", "))?;
            }
            summary.admitted += 1;
        }
        Ok(Admission::Refused { route, status, warnings }) => {
            for warning in warnings {
                writeln!(err, "Warning: {warning}")?;
            }
            write!(err, "{}", kubectl_error(origin, route, &status))?;
            summary.refused += 1;
        }
        Err(problem) => {
            writeln!(err, "error: {at}: {problem}")?;
            summary.refused += 1;
        }
    }
    Ok(())
}

enum Admission {
    Admitted { defaulted: Vec<String>, warnings: Vec<String> },
    Refused { route: Route, status: Box<Status>, warnings: Vec<String> },
}

/// `DatabaseCluster, DatabaseBackup or App`.
fn served_kinds_or() -> String {
    let kinds = Served::ALL.map(Served::kind);
    match kinds.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => kinds.join(""),
    }
}

/// The API reads an offline check skips for `object`, in words (the App
/// route rule's own warning says it was skipped, so it has no note).
fn skipped_lookups(kind: &str, object: &Value) -> Vec<String> {
    let Ok(body) = create_review(kind, object) else {
        return Vec::new();
    };
    let Ok(parsed) = crate::review::parse(&body) else {
        return Vec::new();
    };
    parsed
        .queries(Route::Validate)
        .into_iter()
        .filter_map(|query| match query {
            Query::Cluster { namespace, name } => Some(format!(
                "did not look up DatabaseCluster {namespace}/{name} (spec.cluster); the webhook warns when it does \
                 not exist"
            )),
            Query::Backup { namespace, name } => Some(format!(
                "did not look up DatabaseBackup {namespace}/{name} (spec.bootstrap.fromBackup); the webhook refuses \
                 it unless it is Completed and fits spec.storage.size"
            )),
            Query::AppsClaiming { .. } => None,
        })
        .collect()
}

/// What the API server would do on CREATE: mutate, apply the patch, validate.
fn admit(webhook: &mut dyn Webhook, kind: &str, object: &Value) -> Result<Admission, CheckError> {
    let mutated = webhook.call(Route::Mutate, &create_review(kind, object)?)?;
    if let Some(refused) = refusal(Route::Mutate, &mutated) {
        return Ok(refused);
    }
    let patch = response_patch(&mutated)?;
    let mut defaulted_object = object.clone();
    json_patch::patch(&mut defaulted_object, &patch).map_err(|e| CheckError::Patch(e.to_string()))?;
    let validated = webhook.call(Route::Validate, &create_review(kind, &defaulted_object)?)?;
    if let Some(refused) = refusal(Route::Validate, &validated) {
        return Ok(refused);
    }
    let mut all_warnings = warnings(&mutated);
    all_warnings.extend(warnings(&validated));
    Ok(Admission::Admitted { defaulted: describe(&patch), warnings: all_warnings })
}

fn refusal(route: Route, response: &AnswerResponse) -> Option<Admission> {
    (!response.allowed).then(|| Admission::Refused {
        route,
        status: Box::new(response.result.clone()),
        warnings: warnings(response),
    })
}

fn warnings(response: &AnswerResponse) -> Vec<String> {
    response.warnings.clone().unwrap_or_default()
}

fn response_patch(response: &AnswerResponse) -> Result<Patch, CheckError> {
    match response.patch.as_ref() {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| CheckError::Patch(e.to_string())),
        None => Ok(Patch(Vec::new())),
    }
}

/// What `kubectl apply` prints for a refusal, to the letter.
///
/// The API server prefixes the webhook's message with `admission webhook
/// "<name>" denied the request`, but for an `Invalid` Status with causes
/// kubectl prints only `The <Kind> "<name>" is invalid: ` and the causes
/// (one inline, several as a `* ` list), so that is what users see.
fn kubectl_error(origin: &str, route: Route, status: &Status) -> String {
    if let Some(details) = status.details.as_ref().filter(|d| status.reason == "Invalid" && !d.causes.is_empty()) {
        let prefix = format!("The {} {:?} is invalid: ", details.kind, details.name);
        let mut causes: Vec<String> = Vec::new();
        for cause in &details.causes {
            let line = format!("{}: {}", cause.field, cause.message);
            if !causes.contains(&line) {
                causes.push(line);
            }
        }
        return match causes.as_slice() {
            [one] => format!("{prefix}{one}\n"),
            many => format!("{prefix}\n{}", many.iter().map(|c| format!("* {c}\n")).collect::<String>()),
        };
    }
    let reason = if status.reason.is_empty() { "BadRequest" } else { status.reason.as_str() };
    format!(
        "Error from server ({reason}): error when creating {origin:?}: admission webhook {:?} denied the request: {}\n",
        route.webhook_name(),
        status.message
    )
}

/// `spec.replicas=1` for each added field.
fn describe(patch: &Patch) -> Vec<String> {
    patch
        .0
        .iter()
        .filter_map(|op| match op {
            PatchOperation::Add(add) => {
                let field: Vec<String> = add.path.tokens().map(|t| t.decoded().into_owned()).collect();
                Some(format!("{}={}", field.join("."), add.value))
            }
            _ => None,
        })
        .collect()
}

/// The AdmissionReview the API server would send for `kubectl create --dry-run=server`.
fn create_review(kind: &str, object: &Value) -> Result<Vec<u8>, CheckError> {
    let plural = Served::ALL.into_iter().find(|s| s.kind() == kind).map_or("", Served::plural);
    let metadata = object.get("metadata");
    let field = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or_default();
    let review = json!({
        "apiVersion": crate::review::REVIEW_API_VERSION,
        "kind": crate::review::REVIEW_KIND,
        "request": {
            "uid": "00000000-0000-0000-0000-stead0check0",
            "kind": {"group": GROUP, "version": VERSION, "kind": kind},
            "resource": {"group": GROUP, "version": VERSION, "resource": plural},
            "name": field("name"),
            "namespace": field("namespace"),
            "operation": "CREATE",
            "userInfo": {"username": "stead-webhook-check"},
            "object": object,
            "oldObject": null,
            "dryRun": true,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    });
    serde_json::to_vec(&review).map_err(|e| CheckError::Encode(e.to_string()))
}

fn display_name(object: &Value) -> String {
    let metadata = object.get("metadata");
    let field = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (field("name"), field("generateName")) {
        (Some(name), _) => name.to_owned(),
        (None, Some(prefix)) => format!("{prefix}<generated>"),
        (None, None) => "<unnamed>".to_owned(),
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why one object could not be judged; counted as refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("could not build the AdmissionReview: {0}")]
    Encode(String),
    #[error("the webhook could not read the review it was given: {0}")]
    Review(#[from] BadReview),
    #[error("the webhook's answer carries no response")]
    NoResponse,
    #[error("the defaulting patch does not apply: {0}")]
    Patch(String),
    #[error("--ca-file does not hold a usable CA certificate: {0}")]
    Trust(String),
    #[error("cannot start the client runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{path} answered HTTP {status}: {body}")]
    Status { path: &'static str, status: u16, body: String },
    #[error("{path} answered something that is not an AdmissionReview: {cause}")]
    Answer { path: &'static str, cause: String },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn splits_documents_like_kubectl() {
        let text = "---\n# leading comment only\n---\na: 1\n---   \nb: 2\n--- # not a separator for kubectl\n---\n\n";
        let docs = split_documents(text);
        assert_eq!(docs, vec![(3, "a: 1\n"), (5, "b: 2\n--- # not a separator for kubectl\n")]);
    }

    #[test]
    fn a_list_stands_for_its_items() {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [{"kind": "A"}, {"kind": "B"}]});
        assert_eq!(list_items(list).len(), 2);
        assert_eq!(list_items(json!({"kind": "A"})).len(), 1);
    }

    #[test]
    fn describes_added_fields() {
        let patch: Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/spec/replicas", "value": 1},
            {"op": "add", "path": "/metadata/labels/a~1b", "value": "x"}
        ]))
        .unwrap();
        assert_eq!(describe(&patch), vec!["spec.replicas=1".to_owned(), "metadata.labels.a/b=\"x\"".to_owned()]);
    }

    fn check(text: &str) -> (CheckSummary, String, String) {
        let (mut out, mut err, mut summary) = (Vec::new(), Vec::new(), CheckSummary::default());
        check_text("f.yaml", text, &mut InProcess, &mut out, &mut err, &mut summary).unwrap();
        (summary, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn refusals_read_like_kubectl() {
        let text = "apiVersion: stead.dev/v1alpha1\nkind: DatabaseCluster\nmetadata: {name: a}\nspec: {image: pg:1, storage: {size: 10GB}}\n";
        let (summary, _, err) = check(text);
        assert_eq!(summary.refused, 1);
        assert!(
            err.starts_with("The DatabaseCluster \"a\" is invalid: spec.storage.size: Invalid value: \"10GB\": "),
            "{err}"
        );
        let two = "apiVersion: stead.dev/v1alpha1\nkind: DatabaseCluster\nmetadata: {name: a}\nspec: {image: pg:1, replicas: 0, storage: {size: 10GB}}\n";
        let (_, _, err) = check(two);
        assert!(
            err.starts_with("The DatabaseCluster \"a\" is invalid: \n* spec.replicas: Invalid value: 0: "),
            "{err}"
        );
        assert!(err.contains("\n* spec.storage.size: Invalid value: \"10GB\": "), "{err}");
    }

    #[test]
    fn yaml_errors_name_the_document_and_count_as_refused() {
        let (summary, _, err) = check("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkey: [unclosed\n");
        assert_eq!(summary, CheckSummary { files: 0, admitted: 0, refused: 1, skipped: 1 });
        assert!(err.starts_with("error: f.yaml (document 2): not valid YAML:"), "{err}");
    }

    #[test]
    fn an_unserved_version_is_refused_like_kubectl_would() {
        let (summary, _, err) = check("apiVersion: stead.dev/v1\nkind: DatabaseCluster\nmetadata: {name: a}\n");
        assert_eq!(summary.refused, 1);
        assert!(err.contains(r#"no matches for kind "DatabaseCluster" in version "stead.dev/v1""#), "{err}");
    }
}
