//! `stead-webhook check`: the admission webhook, offline.
//!
//! A GitOps pipeline runs this before Argo CD syncs. Every DatabaseCluster
//! found in the given files goes through the very [`review`] function the
//! server runs: `/mutate` first, the patch applied, then `/validate`, as the
//! API server would call them on `kubectl apply`. The output imitates what
//! `kubectl` prints for the same objects.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use json_patch::{Patch, PatchOperation};
use serde_json::{Value, json};
use stead_crds::cluster::{GROUP, KIND, PLURAL, VERSION};

use crate::review::{Answer, BadReview, Outcome, Route, review};

/// Extensions picked up when a directory is walked; files named explicitly are always read.
const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Totals of one check run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckSummary {
    /// Files read.
    pub files: usize,
    /// DatabaseClusters the webhooks would admit.
    pub admitted: usize,
    /// DatabaseClusters refused, plus documents and files that could not be read.
    pub refused: usize,
    /// Documents that are not DatabaseClusters.
    pub skipped: usize,
}

impl CheckSummary {
    /// Whether the pipeline must stop: anything refused or unreadable.
    pub fn failed(&self) -> bool {
        self.refused > 0
    }
}

/// Checks every DatabaseCluster under `paths` (files or directories).
///
/// Results go to `out`; warnings and refusals go to `err`, as with kubectl.
/// Only a failure to write the report is an `Err`.
pub fn run(paths: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> io::Result<CheckSummary> {
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
            Ok(text) => check_text(&file.display().to_string(), &text, out, err, &mut summary)?,
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
                    check_object(origin, &at, &object, out, err, summary)?;
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
    out: &mut dyn Write,
    err: &mut dyn Write,
    summary: &mut CheckSummary,
) -> io::Result<()> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if group != GROUP || kind != KIND {
        let shown =
            if kind.is_empty() { "a document without kind".to_owned() } else { format!("{api_version} {kind}") };
        writeln!(out, "skipped: {at}: {shown} {} is not a {KIND}", display_name(object))?;
        summary.skipped += 1;
        return Ok(());
    }
    if version != VERSION {
        writeln!(
            err,
            "error: {at}: resource mapping not found for name: {:?}: no matches for kind {KIND:?} in version \
             {api_version:?}; {GROUP} serves {VERSION} only",
            display_name(object)
        )?;
        summary.refused += 1;
        return Ok(());
    }
    match admit(object) {
        Ok(Admission::Admitted { defaulted, warnings }) => {
            for warning in warnings {
                writeln!(err, "Warning: {warning}")?;
            }
            let name = format!("{}.{GROUP}/{}", KIND.to_lowercase(), display_name(object));
            if defaulted.is_empty() {
                writeln!(out, "{name} admitted")?;
            } else {
                writeln!(out, "{name} defaulted: {}", defaulted.join(", "))?;
            }
            summary.admitted += 1;
        }
        Ok(Admission::Refused { route, message, warnings }) => {
            for warning in warnings {
                writeln!(err, "Warning: {warning}")?;
            }
            writeln!(
                err,
                "Error from server (Invalid): error when creating {origin:?}: admission webhook {:?} denied the \
                 request: {message}",
                route.webhook_name()
            )?;
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
    Refused { route: Route, message: String, warnings: Vec<String> },
}

/// What the API server would do on CREATE: mutate, apply the patch, validate.
fn admit(object: &Value) -> Result<Admission, CheckError> {
    let mutated = review(Route::Mutate, &create_review(object)?)?;
    if let Some(refused) = refusal(Route::Mutate, &mutated) {
        return Ok(refused);
    }
    let patch = response_patch(&mutated)?;
    let mut defaulted_object = object.clone();
    json_patch::patch(&mut defaulted_object, &patch).map_err(|e| CheckError::Patch(e.to_string()))?;
    let validated = review(Route::Validate, &create_review(&defaulted_object)?)?;
    if let Some(refused) = refusal(Route::Validate, &validated) {
        return Ok(refused);
    }
    Ok(Admission::Admitted { defaulted: describe(&patch), warnings: warnings(&validated) })
}

fn refusal(route: Route, answer: &Answer) -> Option<Admission> {
    match answer.outcome {
        Outcome::Allowed | Outcome::Patched => None,
        Outcome::Denied | Outcome::BadRequest => Some(Admission::Refused {
            route,
            message: answer.review.response.as_ref().map(|r| r.result.message.clone()).unwrap_or_default(),
            warnings: warnings(answer),
        }),
    }
}

fn warnings(answer: &Answer) -> Vec<String> {
    answer.review.response.as_ref().and_then(|r| r.warnings.clone()).unwrap_or_default()
}

fn response_patch(answer: &Answer) -> Result<Patch, CheckError> {
    match answer.review.response.as_ref().and_then(|r| r.patch.as_ref()) {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| CheckError::Patch(e.to_string())),
        None => Ok(Patch(Vec::new())),
    }
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
fn create_review(object: &Value) -> Result<Vec<u8>, CheckError> {
    let metadata = object.get("metadata");
    let field = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or_default();
    let review = json!({
        "apiVersion": crate::review::REVIEW_API_VERSION,
        "kind": crate::review::REVIEW_KIND,
        "request": {
            "uid": "00000000-0000-0000-0000-stead0check0",
            "kind": {"group": GROUP, "version": VERSION, "kind": KIND},
            "resource": {"group": GROUP, "version": VERSION, "resource": PLURAL},
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

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("could not build the AdmissionReview: {0}")]
    Encode(String),
    #[error("the webhook could not read the review it was given: {0}")]
    Review(#[from] BadReview),
    #[error("the defaulting patch does not apply: {0}")]
    Patch(String),
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
        check_text("f.yaml", text, &mut out, &mut err, &mut summary).unwrap();
        (summary, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
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
