//! One AdmissionReview in, one AdmissionReview out: the whole admission
//! decision as a pure function of the request body.
//!
//! The HTTP server and the offline checker both call [`review`] (the server
//! through [`parse`] and [`answer`], with the API reads of [`Parsed::queries`]
//! fetched in between), so what `stead-webhook check` prints is exactly what
//! the API server would get. Three kinds are served, dispatched on the
//! request's `kind` ([`served_kind`]): DatabaseCluster, DatabaseBackup and App.
//!
//! The request is parsed into a lean struct that keeps `object` and
//! `oldObject` as raw JSON (minus managed fields, which no rule reads):
//! defaulting must tell "absent" from "present" and decoding names the field
//! that does not fit, and both work on raw JSON. The
//! answer is [`crate::wire`]'s AdmissionReview, whose patch is base64 as the API defines it.

use std::cell::Cell;

use kube::core::admission::Operation;
use kube::core::response::{StatusCause, StatusDetails};
use kube::core::{GroupVersionKind, Status};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use stead_crds::cluster::{GROUP, KIND, VERSION};
use stead_crds::defaults::default_patch;
use stead_crds::lookup::{Answers, Lookup, Query};
use stead_crds::validation::{decode, validate_create_with, validate_delete, validate_spec, validate_update};
use stead_crds::{DatabaseCluster, DatabaseClusterSpec, FieldError, Verdict, app_validation, backup_validation};

use crate::wire::{AnswerResponse, AnswerReview};

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
    #[error("could not encode the patch: {0}")]
    Encode(#[source] serde_json::Error),
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
    pub review: AnswerReview,
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

/// An object of the request as raw JSON, holding only what the rules read.
///
/// The rules read `metadata` (name, namespace, deletion), and `spec`. The
/// rest of a stored object (`status`, managed fields, annotations, or junk a
/// hostile client put there) is skipped while parsing, without building a
/// value, so a review costs memory for what is judged, not for what was sent.
/// `spec` is built as JSON (defaulting must tell "absent" from "present"),
/// but at most [`MAX_SPEC_VALUES`] values deep and wide: a real spec has a few
/// dozen, and the bound keeps a 6 MiB array of zeros from costing 100 MiB.
/// The API server always sends an object (a JSON map) with a map as
/// `metadata`; anything else makes the body unreadable.
struct AdmissionObject(Value);

/// Most JSON values (objects, arrays and scalars, nested ones included) kept from one `spec`.
pub const MAX_SPEC_VALUES: usize = 4096;
/// Deepest nesting kept inside `spec`; the deepest real field (`resources.claims[].name`) is at 4.
pub const MAX_SPEC_DEPTH: usize = 16;

/// How much of one part of an object is built, and how a refusal explains it.
struct Limit {
    values: usize,
    depth: usize,
    refusal: &'static str,
}

/// `spec`: the part the rules judge.
const SPEC: Limit = Limit {
    values: MAX_SPEC_VALUES,
    depth: MAX_SPEC_DEPTH,
    refusal: "spec holds more than 4096 JSON values or nests deeper than 16 levels; a DatabaseCluster spec has a \
              few dozen values, 4 levels deep (a DatabaseBackup spec two values, an App spec a few per env variable)",
};

/// `apiVersion`, `kind` and the kept metadata fields: one scalar each.
const SCALAR: Limit = Limit {
    values: 1,
    depth: 0,
    refusal: "apiVersion, kind, metadata.name, metadata.namespace, metadata.uid, metadata.generation and \
              metadata.deletionTimestamp must be strings or numbers, not objects or lists",
};

/// Top-level keys of an object that are kept.
const OBJECT_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
/// Keys of `metadata` that are kept; every other one (managedFields, annotations, ...) is skipped.
const METADATA_KEYS: &[&str] =
    &["name", "generateName", "namespace", "uid", "resourceVersion", "generation", "deletionTimestamp"];

impl<'de> Deserialize<'de> for AdmissionObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor).map(|map| Self(Value::Object(map)))
    }
}

/// The top level of an object: keeps [`OBJECT_KEYS`], filters `metadata`, bounds `spec`.
struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Kubernetes object (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(KeySeed(OBJECT_KEYS))? {
            let value = match key {
                None => {
                    access.next_value::<IgnoredAny>()?;
                    continue;
                }
                Some("metadata") => Value::Object(access.next_value_seed(MetadataVisitor)?),
                Some("spec") => access.next_value_seed(Bounded::new(&SPEC, &Cell::new(SPEC.values)))?,
                Some(_) => access.next_value_seed(Bounded::new(&SCALAR, &Cell::new(SCALAR.values)))?,
            };
            map.insert(key.unwrap_or_default().to_owned(), value);
        }
        Ok(map)
    }
}

/// Matches a map key against a list without allocating for keys not in it.
struct KeyVisitor(&'static [&'static str]);

impl Visitor<'_> for KeyVisitor {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().find(|k| *k == key))
    }
}

/// `metadata`: keeps [`METADATA_KEYS`], each a small scalar.
struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("object metadata (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(KeySeed(METADATA_KEYS))? {
            match key {
                Some(key) => {
                    let value = access.next_value_seed(Bounded::new(&SCALAR, &Cell::new(SCALAR.values)))?;
                    map.insert(key.to_owned(), value);
                }
                None => {
                    access.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(map)
    }
}

impl<'de> DeserializeSeed<'de> for MetadataVisitor {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

/// A map key checked against a list, as a seed.
struct KeySeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor(self.0))
    }
}

/// Builds a JSON value while counting every value against a shared budget
/// and bounding the depth; exceeding either makes the body unreadable, with
/// a message that says which bound and why.
#[derive(Clone, Copy)]
struct Bounded<'a> {
    limit: &'static Limit,
    budget: &'a Cell<usize>,
    depth: usize,
}

impl<'a> Bounded<'a> {
    fn new(limit: &'static Limit, budget: &'a Cell<usize>) -> Self {
        Self { limit, budget, depth: 0 }
    }

    fn take<E: serde::de::Error>(self) -> Result<(), E> {
        let left = self.budget.get().checked_sub(1).ok_or_else(|| E::custom(self.limit.refusal))?;
        self.budget.set(left);
        Ok(())
    }

    fn nested<E: serde::de::Error>(self) -> Result<Self, E> {
        self.take::<E>()?;
        if self.depth >= self.limit.depth {
            return Err(E::custom(self.limit.refusal));
        }
        Ok(Self { depth: self.depth + 1, ..self })
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.take::<E>()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.take::<E>()?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.take::<E>()?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.take::<E>()?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.take::<E>()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.take::<E>()?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.take::<E>()?;
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let inner = self.nested::<A::Error>()?;
        let mut items = Vec::new();
        while let Some(item) = access.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let inner = self.nested::<A::Error>()?;
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value_seed(inner)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Judges one AdmissionReview body sent to `route`, offline: the rules that
/// read the API are skipped (see [`answer`] for the server's way).
///
/// An `Err` means the body is not an AdmissionReview at all (HTTP 400). A
/// review about something this webhook does not serve still gets an
/// `Ok` answer, refused with code 400, so the user sees why in `kubectl`.
pub fn review(route: Route, body: &[u8]) -> Result<Answer, BadReview> {
    answer(route, &parse(body)?, &Answers::skipped())
}

/// [`review`] with the API reads answered by `lookup`.
pub fn review_with(route: Route, body: &[u8], lookup: &dyn Lookup) -> Result<Answer, BadReview> {
    answer(route, &parse(body)?, lookup)
}

/// An AdmissionReview read, not yet judged.
pub struct Parsed {
    request: RequestIn,
}

/// Reads an AdmissionReview body (bounded, see [`AdmissionObject`]).
pub fn parse(body: &[u8]) -> Result<Parsed, BadReview> {
    let parsed: ReviewIn = serde_json::from_slice(body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => BadReview::Shape(err),
        _ => BadReview::Malformed(err),
    })?;
    if parsed.api_version != REVIEW_API_VERSION || parsed.kind != REVIEW_KIND {
        return Err(BadReview::WrongType { api_version: parsed.api_version, kind: parsed.kind });
    }
    let request = parsed.request.ok_or(BadReview::MissingRequest)?;
    Ok(Parsed { request })
}

impl Parsed {
    /// The API reads the rules for this request on `route` need: at most one
    /// GET by name, on CREATE only (a backup's cluster, a restore's backup),
    /// or, for an App that claims an Ingress host on CREATE or changes its
    /// route on UPDATE, the Apps claiming that host (read from a cache).
    pub fn queries(&self, route: Route) -> Vec<Query> {
        let request = &self.request;
        let (Route::Validate, Some(object)) = (route, request.object()) else {
            return Vec::new();
        };
        let namespace = namespace(request, object);
        match (served_kind(&request.kind), &request.operation) {
            (Some(Served::Cluster), Operation::Create) => {
                decode(object).map(|c| stead_crds::validation::lookups_for_create(&c, &namespace)).unwrap_or_default()
            }
            (Some(Served::Backup), Operation::Create) => backup_validation::decode(object)
                .map(|b| backup_validation::lookups_for_create(&b, &namespace))
                .unwrap_or_default(),
            (Some(Served::App), Operation::Create) => app_validation::decode(object)
                .map(|a| app_validation::lookups_for_create(&a, &namespace))
                .unwrap_or_default(),
            (Some(Served::App), Operation::Update) => {
                let old = request.old_object().map(app_validation::decode);
                match (old, app_validation::decode(object)) {
                    (Some(Ok(old)), Ok(new)) => app_validation::lookups_for_update(&old, &new, &namespace),
                    // A stored App that no longer decodes: judge the route as on CREATE.
                    (_, Ok(new)) => app_validation::lookups_for_create(&new, &namespace),
                    (_, Err(_)) => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }
}

/// Judges a parsed review; `lookup` answers the reads of [`Parsed::queries`].
pub fn answer(route: Route, parsed: &Parsed, lookup: &dyn Lookup) -> Result<Answer, BadReview> {
    let request = &parsed.request;
    let subject = subject(request);
    let decision = decide(route, request, lookup);
    let response = AnswerResponse::allow(&request.uid);
    let (response, outcome, reasons) = match decision {
        Decision::Allow(warnings) => {
            (AnswerResponse { warnings: non_empty(warnings), ..response }, Outcome::Allowed, Vec::new())
        }
        Decision::Patch(patch) => {
            let bytes = serde_json::to_vec(&patch).map_err(BadReview::Encode)?;
            (response.with_patch(bytes), Outcome::Patched, Vec::new())
        }
        Decision::Deny { kind, name, verdict } => {
            let reasons = verdict.errors.iter().map(ToString::to_string).collect();
            let status = invalid_status(kind, &name, &verdict);
            let response = AnswerResponse { warnings: non_empty(verdict.warnings), ..response.deny(status) };
            (response, Outcome::Denied, reasons)
        }
        Decision::BadRequest(message) => {
            let status = Status::failure(&message, "BadRequest").with_code(400);
            (response.deny(status), Outcome::BadRequest, vec![message])
        }
    };
    Ok(Answer { review: AnswerReview::new(response), outcome, subject, reasons })
}

/// The kinds this webhook judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    Cluster,
    Backup,
    App,
}

impl Served {
    /// Every served kind, in the order messages list them.
    pub const ALL: [Served; 3] = [Served::Cluster, Served::Backup, Served::App];

    /// The kind's name, as in `kind:`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Cluster => KIND,
            Self::Backup => stead_crds::backup::KIND,
            Self::App => stead_crds::app::KIND,
        }
    }

    /// The kind's resource name, as in URLs and webhook rules.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Cluster => stead_crds::cluster::PLURAL,
            Self::Backup => stead_crds::backup::PLURAL,
            Self::App => stead_crds::app::PLURAL,
        }
    }
}

/// Which served kind a request is about, if any.
pub fn served_kind(kind: &GroupVersionKind) -> Option<Served> {
    if kind.group != GROUP || kind.version != VERSION {
        return None;
    }
    Served::ALL.into_iter().find(|served| served.kind() == kind.kind)
}

/// `A, B and C`: the served kinds, for messages.
pub fn served_kinds_in_words() -> String {
    let kinds = Served::ALL.map(Served::kind);
    match kinds.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The namespace of the request (the API server always sends it for
/// namespaced kinds); `default` as kubectl assumes, for offline checks.
fn namespace(request: &RequestIn, object: &Value) -> String {
    request
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .or_else(|| object.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned))
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

enum Decision {
    Allow(Vec<String>),
    Patch(json_patch::Patch),
    Deny { kind: &'static str, name: String, verdict: Verdict },
    BadRequest(String),
}

fn decide(route: Route, request: &RequestIn, lookup: &dyn Lookup) -> Decision {
    let kind = &request.kind;
    match served_kind(kind) {
        Some(Served::Cluster) => decide_cluster(route, request, lookup),
        Some(Served::Backup) => decide_backup(route, request, lookup),
        Some(Served::App) => decide_app(route, request, lookup),
        None => Decision::BadRequest(format!(
            "{} serves {GROUP}/{VERSION} {} only, but this request is for {} {}; check the rules of the webhook \
             configuration that sent it",
            route.webhook_name(),
            served_kinds_in_words(),
            group_version(kind),
            kind.kind
        )),
    }
}

fn decide_cluster(route: Route, request: &RequestIn, lookup: &dyn Lookup) -> Decision {
    match (route, &request.operation) {
        (_, Operation::Connect) | (Route::Mutate, Operation::Delete) => Decision::Allow(Vec::new()),
        (Route::Mutate, Operation::Create | Operation::Update) => mutate(route, request, default_patch),
        (Route::Validate, Operation::Create) => on_create(route, request, |object, namespace| {
            judge(Served::Cluster, request, object, decode, |cluster| validate_create_with(cluster, namespace, lookup))
        }),
        (Route::Validate, Operation::Update) => {
            on_update(route, request, |old, new| validate_update_raw(request, old, new))
        }
        (Route::Validate, Operation::Delete) => match request.old_object() {
            Some(old) => validate_delete_raw(request, old),
            // A collection delete may come without the object; nothing to protect is known.
            None => Decision::Allow(Vec::new()),
        },
    }
}

/// DatabaseBackup: nothing to default; CREATE judged (with the cluster
/// lookup), UPDATE refused when the spec changes, DELETE always admitted.
fn decide_backup(route: Route, request: &RequestIn, lookup: &dyn Lookup) -> Decision {
    match (route, &request.operation) {
        (Route::Mutate, _) | (_, Operation::Connect | Operation::Delete) => Decision::Allow(Vec::new()),
        (Route::Validate, Operation::Create) => on_create(route, request, |object, namespace| {
            judge(Served::Backup, request, object, backup_validation::decode, |backup| {
                backup_validation::validate_create_with(backup, namespace, lookup)
            })
        }),
        (Route::Validate, Operation::Update) => {
            on_update(route, request, |old, new| validate_backup_update_raw(request, old, new))
        }
    }
}

/// UPDATE of a backup: a spec that differs at all is refused, even when the
/// stored object no longer decodes; anything else, and anything being
/// deleted, is admitted.
fn validate_backup_update_raw(request: &RequestIn, old: &Value, new: &Value) -> Decision {
    if spec_untouched_or_deleted(old, new) {
        return Decision::Allow(Vec::new());
    }
    let verdict = match (backup_validation::decode(old), backup_validation::decode(new)) {
        (Ok(old), Ok(new)) => backup_validation::validate_update(&old, &new),
        _ => {
            let mut verdict = Verdict::default();
            backup_validation::spec_changed(&Default::default(), &Default::default(), &mut verdict);
            verdict
        }
    };
    verdict_decision(Served::Backup, request, new, verdict)
}

/// App: defaults on CREATE and UPDATE; CREATE judged with the route rule
/// (the App cache), UPDATE on what it changes, DELETE always admitted.
fn decide_app(route: Route, request: &RequestIn, lookup: &dyn Lookup) -> Decision {
    match (route, &request.operation) {
        (_, Operation::Connect | Operation::Delete) => Decision::Allow(Vec::new()),
        (Route::Mutate, Operation::Create | Operation::Update) => mutate(route, request, app_validation::default_patch),
        (Route::Validate, Operation::Create) => on_create(route, request, |object, namespace| {
            judge(Served::App, request, object, app_validation::decode, |app| {
                app_validation::validate_create_with(app, namespace, lookup)
            })
        }),
        (Route::Validate, Operation::Update) => {
            on_update(route, request, |old, new| validate_app_update_raw(request, old, new, lookup))
        }
    }
}

/// UPDATE of an App, with the shortcuts of [`validate_update_raw`]; a
/// stored App that no longer decodes is judged as if it were created.
fn validate_app_update_raw(request: &RequestIn, old: &Value, new: &Value, lookup: &dyn Lookup) -> Decision {
    if spec_untouched_or_deleted(old, new) {
        return Decision::Allow(Vec::new());
    }
    let namespace = namespace(request, new);
    match app_validation::decode(old) {
        Ok(old) => judge(Served::App, request, new, app_validation::decode, |new| {
            app_validation::validate_update_with(&old, new, &namespace, lookup)
        }),
        Err(_) => judge(Served::App, request, new, app_validation::decode, |new| {
            let mut verdict = Verdict::default();
            app_validation::validate_spec(&new.spec, &mut verdict);
            verdict
        }),
    }
}

/// A CREATE on /validate: `rules` get the object and its namespace.
fn on_create(route: Route, request: &RequestIn, rules: impl FnOnce(&Value, &str) -> Decision) -> Decision {
    match request.object() {
        Some(object) => rules(object, &namespace(request, object)),
        None => missing(route, request, "object"),
    }
}

/// An UPDATE on /validate: `rules` get the stored and the new object.
fn on_update(route: Route, request: &RequestIn, rules: impl FnOnce(&Value, &Value) -> Decision) -> Decision {
    match (request.old_object(), request.object()) {
        (Some(old), Some(new)) => rules(old, new),
        (None, _) => missing(route, request, "oldObject"),
        (_, None) => missing(route, request, "object"),
    }
}

/// The defaulting answer of a kind whose defaults `patch` computes.
fn mutate(route: Route, request: &RequestIn, patch: fn(&Value) -> json_patch::Patch) -> Decision {
    match request.object() {
        Some(object) => {
            let patch = patch(object);
            if patch.0.is_empty() { Decision::Allow(Vec::new()) } else { Decision::Patch(patch) }
        }
        None => missing(route, request, "object"),
    }
}

/// The ratcheting shortcuts of every UPDATE, taken on the raw JSON so that
/// even an object that no longer decodes can lose its finalizers or labels:
/// anything being deleted, and any update that leaves `spec` alone.
fn spec_untouched_or_deleted(old: &Value, new: &Value) -> bool {
    let being_deleted = new.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
    being_deleted || old.get("spec") == new.get("spec")
}

/// UPDATE of a cluster, after the ratcheting shortcuts.
fn validate_update_raw(request: &RequestIn, old: &Value, new: &Value) -> Decision {
    if spec_untouched_or_deleted(old, new) {
        return Decision::Allow(Vec::new());
    }
    match decode(old) {
        Ok(old) => judge(Served::Cluster, request, new, decode, |new| validate_update(&old, new)),
        // The stored object predates today's schema: judge the new spec on its own.
        Err(_) => judge(Served::Cluster, request, new, decode, |new| {
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
    verdict_decision(Served::Cluster, request, old, validate_delete(&cluster))
}

/// Decodes `object` as a `served` kind and applies `rules`; an object that
/// does not decode is refused with the field that does not fit.
fn judge<T>(
    served: Served,
    request: &RequestIn,
    object: &Value,
    decode: fn(&Value) -> Result<T, FieldError>,
    rules: impl FnOnce(&T) -> Verdict,
) -> Decision {
    let verdict = match decode(object) {
        Ok(decoded) => rules(&decoded),
        Err(error) => Verdict { errors: vec![error], warnings: Vec::new() },
    };
    verdict_decision(served, request, object, verdict)
}

fn verdict_decision(served: Served, request: &RequestIn, object: &Value, verdict: Verdict) -> Decision {
    if verdict.is_allowed() {
        Decision::Allow(verdict.warnings)
    } else {
        Decision::Deny { kind: served.kind(), name: object_name(request, object), verdict }
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
fn invalid_status(kind: &str, name: &str, verdict: &Verdict) -> Status {
    let causes = verdict.errors.iter().map(cause).collect();
    Status::failure(&verdict.invalid_message_for(kind, name), "Invalid").with_code(422).with_details(StatusDetails {
        name: name.to_owned(),
        group: GROUP.to_owned(),
        kind: kind.to_owned(),
        uid: String::new(),
        causes,
        retry_after_seconds: 0,
    })
}

fn cause(error: &FieldError) -> StatusCause {
    StatusCause { reason: error.reason().to_owned(), message: error.body(), field: error.field.clone() }
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
