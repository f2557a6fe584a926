//! One AdmissionReview in, one AdmissionReview out: the whole admission
//! decision as a pure function of the request body.
//!
//! The HTTP server and the offline checker both call [`review`], so what
//! `stead-webhook check` prints is exactly what the API server would get.
//!
//! The request is parsed into a lean struct that keeps `object` and
//! `oldObject` as raw JSON (minus managed fields, which no rule reads):
//! defaulting must tell "absent" from "present" and decoding names the field
//! that does not fit, and both work on raw JSON. The
//! answer uses kube's `AdmissionReview` types, so its wire form is the one the
//! rest of the Rust ecosystem speaks.

use kube::core::admission::{AdmissionResponse, AdmissionReview, Operation, SerializePatchError};
use kube::core::response::{StatusCause, StatusDetails, StatusSummary};
use kube::core::{DynamicObject, GroupVersionKind, Status};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use stead_crds::cluster::{GROUP, KIND, VERSION};
use stead_crds::defaults::default_patch;
use stead_crds::validation::{decode, validate_create, validate_delete, validate_spec, validate_update};
use stead_crds::{DatabaseCluster, DatabaseClusterSpec, FieldError, Verdict};

/// `apiVersion` of the only AdmissionReview version served.
pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of an AdmissionReview.
pub const REVIEW_KIND: &str = "AdmissionReview";
/// Name of the mutating webhook, as registered in the MutatingWebhookConfiguration.
pub const MUTATING_WEBHOOK: &str = "mutate.stead.dev";
/// Name of the validating webhook, as registered in the ValidatingWebhookConfiguration.
pub const VALIDATING_WEBHOOK: &str = "validate.stead.dev";

/// Which of the two webhooks a review was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `/mutate`: defaulting.
    Mutate,
    /// `/validate`: the admission rules.
    Validate,
}

impl Route {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutate => "mutate",
            Self::Validate => "validate",
        }
    }

    /// The webhook name users see in `kubectl` errors.
    pub fn webhook_name(self) -> &'static str {
        match self {
            Self::Mutate => MUTATING_WEBHOOK,
            Self::Validate => VALIDATING_WEBHOOK,
        }
    }
}

/// What was decided, as counted in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Admitted unchanged.
    Allowed,
    /// Admitted with a JSON patch (mutate only).
    Patched,
    /// Refused by an admission rule.
    Denied,
    /// Not a request this webhook can judge (wrong kind, missing object, bad body).
    BadRequest,
}

impl Outcome {
    /// The `verdict` label of `stead_webhook_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Patched => "patched",
            Self::Denied => "denied",
            Self::BadRequest => "bad_request",
        }
    }
}

/// A body that is not an `admission.k8s.io/v1` AdmissionReview; answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("the body is not valid JSON: {0}; expected an admission.k8s.io/v1 AdmissionReview")]
    Malformed(#[source] serde_json::Error),
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Shape(#[source] serde_json::Error),
    #[error(
        "apiVersion {api_version:?} kind {kind:?} is not served; expected apiVersion \"admission.k8s.io/v1\" kind \
         \"AdmissionReview\" (set admissionReviewVersions: [v1] in the webhook configuration)"
    )]
    WrongType { api_version: String, kind: String },
    #[error("the AdmissionReview has no request; the webhook answers requests, not responses")]
    MissingRequest,
    #[error("could not encode the answer: {0}")]
    Encode(#[from] SerializePatchError),
}

/// Who and what a review was about, for logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub uid: String,
    /// `group/version, Kind=...` of the object, as the API server sent it.
    pub kind: GroupVersionKind,
    pub namespace: String,
    pub name: String,
    pub operation: &'static str,
    pub dry_run: bool,
}

/// The decision on one review.
#[derive(Debug)]
pub struct Answer {
    /// The AdmissionReview to send back.
    pub review: AdmissionReview<DynamicObject>,
    pub outcome: Outcome,
    pub subject: Subject,
    /// Why it was refused (field errors or the bad-request message); empty when admitted.
    pub reasons: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    request: Option<RequestIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(default)]
    object: Option<AdmissionObject>,
    #[serde(default)]
    old_object: Option<AdmissionObject>,
    #[serde(default)]
    dry_run: Option<bool>,
}

impl RequestIn {
    fn object(&self) -> Option<&Value> {
        self.object.as_ref().map(|o| &o.0)
    }

    fn old_object(&self) -> Option<&Value> {
        self.old_object.as_ref().map(|o| &o.0)
    }
}

/// An object of the request as raw JSON, without `metadata.managedFields`.
///
/// No admission rule reads managed fields, yet they are often the bulk of a
/// stored object; they are skipped while parsing instead of being built and
/// decoded. The API server always sends an object (a JSON map) with a map as
/// `metadata`; anything else makes the body unreadable.
struct AdmissionObject(Value);

impl<'de> Deserialize<'de> for AdmissionObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor { metadata: false }).map(|map| Self(Value::Object(map)))
    }
}

/// Builds a JSON map; at the top level it filters `metadata`, inside
/// `metadata` it drops `managedFields`.
#[derive(Clone, Copy)]
struct ObjectVisitor {
    metadata: bool,
}

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.metadata {
            "object metadata (a JSON object)"
        } else {
            "a Kubernetes object (a JSON object)"
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = match (self.metadata, key.as_str()) {
                (true, "managedFields") => {
                    access.next_value::<IgnoredAny>()?;
                    continue;
                }
                (false, "metadata") => Value::Object(access.next_value_seed(ObjectVisitor { metadata: true })?),
                _ => access.next_value::<Value>()?,
            };
            map.insert(key, value);
        }
        Ok(map)
    }
}

impl<'de> DeserializeSeed<'de> for ObjectVisitor {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

/// Judges one AdmissionReview body sent to `route`.
///
/// An `Err` means the body is not an AdmissionReview at all (HTTP 400). A
/// review about something this webhook does not serve still gets an
/// `Ok` answer, refused with code 400, so the user sees why in `kubectl`.
pub fn review(route: Route, body: &[u8]) -> Result<Answer, BadReview> {
    let parsed: ReviewIn = serde_json::from_slice(body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => BadReview::Shape(err),
        _ => BadReview::Malformed(err),
    })?;
    if parsed.api_version != REVIEW_API_VERSION || parsed.kind != REVIEW_KIND {
        return Err(BadReview::WrongType { api_version: parsed.api_version, kind: parsed.kind });
    }
    let request = parsed.request.ok_or(BadReview::MissingRequest)?;
    let subject = subject(&request);
    let decision = decide(route, &request);
    let mut response = base_response(&request.uid);
    let (outcome, reasons) = match decision {
        Decision::Allow(warnings) => {
            response.warnings = non_empty(warnings);
            (Outcome::Allowed, Vec::new())
        }
        Decision::Patch(patch) => {
            response = response.with_patch(patch)?;
            (Outcome::Patched, Vec::new())
        }
        Decision::Deny { name, verdict } => {
            let reasons = verdict.errors.iter().map(ToString::to_string).collect();
            response.allowed = false;
            response.result = invalid_status(&name, &verdict);
            response.warnings = non_empty(verdict.warnings);
            (Outcome::Denied, reasons)
        }
        Decision::BadRequest(message) => {
            response.allowed = false;
            response.result = Status::failure(&message, "BadRequest").with_code(400);
            (Outcome::BadRequest, vec![message])
        }
    };
    Ok(Answer { review: response.into_review(), outcome, subject, reasons })
}

enum Decision {
    Allow(Vec<String>),
    Patch(json_patch::Patch),
    Deny { name: String, verdict: Verdict },
    BadRequest(String),
}

fn decide(route: Route, request: &RequestIn) -> Decision {
    let kind = &request.kind;
    if kind.group != GROUP || kind.version != VERSION || kind.kind != KIND {
        return Decision::BadRequest(format!(
            "{} serves {GROUP}/{VERSION} {KIND} only, but this request is for {} {}; check the rules of the webhook \
             configuration that sent it",
            route.webhook_name(),
            group_version(kind),
            kind.kind
        ));
    }
    match (route, &request.operation) {
        (_, Operation::Connect) | (Route::Mutate, Operation::Delete) => Decision::Allow(Vec::new()),
        (Route::Mutate, Operation::Create | Operation::Update) => match request.object() {
            Some(object) => {
                let patch = default_patch(object);
                if patch.0.is_empty() { Decision::Allow(Vec::new()) } else { Decision::Patch(patch) }
            }
            None => missing(route, request, "object"),
        },
        (Route::Validate, Operation::Create) => match request.object() {
            Some(object) => judge(request, object, validate_create),
            None => missing(route, request, "object"),
        },
        (Route::Validate, Operation::Update) => match (request.old_object(), request.object()) {
            (Some(old), Some(new)) => validate_update_raw(request, old, new),
            (None, _) => missing(route, request, "oldObject"),
            (_, None) => missing(route, request, "object"),
        },
        (Route::Validate, Operation::Delete) => match request.old_object() {
            Some(old) => validate_delete_raw(request, old),
            // A collection delete may come without the object; nothing to protect is known.
            None => Decision::Allow(Vec::new()),
        },
    }
}

/// UPDATE, with the ratcheting shortcuts taken on the raw JSON so that even
/// an object that no longer decodes can lose its finalizers or labels.
fn validate_update_raw(request: &RequestIn, old: &Value, new: &Value) -> Decision {
    let being_deleted = new.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
    if being_deleted || old.get("spec") == new.get("spec") {
        return Decision::Allow(Vec::new());
    }
    match decode(old) {
        Ok(old) => judge(request, new, |new| validate_update(&old, new)),
        // The stored object predates today's schema: judge the new spec on its own.
        Err(_) => judge(request, new, |new| {
            let mut verdict = Verdict::default();
            validate_spec(&new.spec, &mut verdict);
            verdict
        }),
    }
}

/// DELETE; an object that no longer decodes is still protected when its raw
/// `spec.deletionProtection` is true.
fn validate_delete_raw(request: &RequestIn, old: &Value) -> Decision {
    let cluster = decode(old).unwrap_or_else(|_| {
        let protected = old.pointer("/spec/deletionProtection").and_then(Value::as_bool);
        DatabaseCluster::new("", DatabaseClusterSpec { deletion_protection: protected, ..Default::default() })
    });
    verdict_decision(request, old, validate_delete(&cluster))
}

fn judge(request: &RequestIn, object: &Value, rules: impl FnOnce(&DatabaseCluster) -> Verdict) -> Decision {
    let verdict = match decode(object) {
        Ok(cluster) => rules(&cluster),
        Err(error) => Verdict { errors: vec![error], warnings: Vec::new() },
    };
    verdict_decision(request, object, verdict)
}

fn verdict_decision(request: &RequestIn, object: &Value, verdict: Verdict) -> Decision {
    if verdict.is_allowed() {
        Decision::Allow(verdict.warnings)
    } else {
        Decision::Deny { name: object_name(request, object), verdict }
    }
}

fn missing(route: Route, request: &RequestIn, field: &str) -> Decision {
    Decision::BadRequest(format!(
        "{} received a {} request without request.{field}; the API server always sends it, so the body was not \
         produced by Kubernetes",
        route.webhook_name(),
        operation_name(&request.operation)
    ))
}

/// The Status apimachinery's `NewInvalid` builds, so `kubectl` shows our
/// errors exactly like its own schema errors.
fn invalid_status(name: &str, verdict: &Verdict) -> Status {
    let causes = verdict.errors.iter().map(cause).collect();
    Status::failure(&verdict.invalid_message(name), "Invalid").with_code(422).with_details(StatusDetails {
        name: name.to_owned(),
        group: GROUP.to_owned(),
        kind: KIND.to_owned(),
        uid: String::new(),
        causes,
        retry_after_seconds: 0,
    })
}

fn cause(error: &FieldError) -> StatusCause {
    StatusCause { reason: error.reason().to_owned(), message: error.body(), field: error.field.clone() }
}

/// An allowing response echoing `uid`.
fn base_response(uid: &str) -> AdmissionResponse {
    // kube only offers constructors from its own typed request or for an
    // unreadable one; start from the latter and fill in what we know.
    let mut response = AdmissionResponse::invalid("");
    response.uid = uid.to_owned();
    response.allowed = true;
    response.result = Status { status: Some(StatusSummary::Success), ..Status::default() };
    response
}

fn non_empty(warnings: Vec<String>) -> Option<Vec<String>> {
    (!warnings.is_empty()).then_some(warnings)
}

fn subject(request: &RequestIn) -> Subject {
    Subject {
        uid: request.uid.clone(),
        kind: request.kind.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name: request.name.clone(),
        operation: operation_name(&request.operation),
        dry_run: request.dry_run.unwrap_or(false),
    }
}

fn object_name(request: &RequestIn, object: &Value) -> String {
    if !request.name.is_empty() {
        return request.name.clone();
    }
    object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// `group/version`, or just `version` for the core group, as apiVersion is written.
pub fn group_version(kind: &GroupVersionKind) -> String {
    if kind.group.is_empty() { kind.version.clone() } else { format!("{}/{}", kind.group, kind.version) }
}

fn operation_name(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}
