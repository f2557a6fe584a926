//! Admission rules of `App`: its defaults, what the validating webhook
//! refuses and warns about (every problem at once, with field paths), and
//! the one rule that needs other objects: no two Apps of a namespace claim
//! the same Ingress host and path.
//!
//! - Defaults ([`default_patch`]): `replicas` 1, `containerPort` 8080,
//!   `service.port` the container port, `ingress.path` `/`; only where absent.
//! - CREATE: the name names the children (a DNS-1035 label); the spec
//!   ([`validate_spec`]); and the route is free ([`validate_collisions`]).
//! - UPDATE: the spec rules on what the update changes only (ratcheting, as
//!   for DatabaseCluster), the route when it changes; metadata-only updates
//!   and anything being deleted are admitted.
//! - DELETE: always admitted.
//!
//! The route rule takes the other Apps as a slice, so it is pure; the
//! webhook gets them through a [`Lookup`] answered from its own watch of
//! Apps. When that view is missing (offline, no API access) or not synced
//! yet, the App is admitted with a warning that says the check was skipped.

use serde_json::{Map, Value};

use crate::app::{
    App, AppIngressSpec, AppSpec, DEFAULT_CONTAINER_PORT, DEFAULT_INGRESS_PATH, DEFAULT_REPLICAS, MAX_REPLICAS,
    MIN_REPLICAS,
};
use crate::defaults::{SpecDefault, spec_patch};
use crate::field_error::{FieldError, Verdict};
use crate::lookup::{Found, Lookup, Query};
use crate::validation::{
    ImageExamples, dns1123_subdomain_error, ratcheted_update, validate_image_at, validate_object_name, validate_port,
    validate_resources,
};

/// Longest App name: it is the name of the App's Service, a DNS-1035 label.
pub const MAX_APP_NAME_LEN: usize = 63;
/// Most environment variables one App may set.
pub const MAX_ENV: usize = 256;

const APP_IMAGES: ImageExamples = ImageExamples {
    tag: "nginx:1.27",
    digest: "registry.example.com/shop/web@sha256:<digest>",
    drifts: "versions of the App",
};

/// The documented defaults, in order: the Service port reads the container
/// port as defaulted by the row before it.
const APP_DEFAULTS: &[SpecDefault] = &[
    SpecDefault { path: &["replicas"], create_parent: false, value: |_| Some(Value::from(DEFAULT_REPLICAS)) },
    SpecDefault {
        path: &["containerPort"],
        create_parent: false,
        value: |_| Some(Value::from(DEFAULT_CONTAINER_PORT)),
    },
    SpecDefault { path: &["service", "port"], create_parent: true, value: container_port },
    SpecDefault {
        path: &["ingress", "path"],
        create_parent: false,
        value: |_| Some(Value::from(DEFAULT_INGRESS_PATH)),
    },
];

/// The container port as written, when it is a port (else validation
/// refuses it, and a copy in `service.port` would only repeat the error).
fn container_port(spec: &Map<String, Value>) -> Option<Value> {
    spec.get("containerPort").filter(|p| p.as_i64().is_some_and(|p| (1..=65535).contains(&p))).cloned()
}

/// The minimal JSON patch that adds every absent default to an App `object`;
/// the patch of a patched App is empty.
pub fn default_patch(object: &Value) -> json_patch::Patch {
    spec_patch(object, APP_DEFAULTS)
}

/// The spec with every default applied, for the controller when the webhook
/// was bypassed. Mirrors [`default_patch`] on the typed struct.
pub fn with_defaults(spec: &AppSpec) -> AppSpec {
    let mut spec = spec.clone();
    let service_port = spec.effective_service_port();
    spec.replicas = Some(spec.effective_replicas());
    spec.container_port = Some(spec.effective_container_port());
    spec.service.get_or_insert_with(Default::default).port = Some(service_port);
    if let Some(ingress) = spec.ingress.as_mut() {
        ingress.path.get_or_insert_with(|| DEFAULT_INGRESS_PATH.to_owned());
    }
    spec
}

/// Turns request JSON into an `App`, naming the field that does not fit.
pub fn decode(object: &Value) -> Result<App, FieldError> {
    crate::validation::decode_as(object)
}

/// Rules for CREATE that need nothing but the request: the name, then the spec.
pub fn validate_create(app: &App) -> Verdict {
    let mut verdict = Verdict::default();
    validate_object_name(
        &app.metadata,
        MAX_APP_NAME_LEN,
        |_| format!("must be no more than {MAX_APP_NAME_LEN} characters: it is the name of the App's Service"),
        &mut verdict,
    );
    validate_spec(&app.spec, &mut verdict);
    verdict
}

/// Rules for UPDATE, judged only on what the update changes.
///
/// Objects being deleted and updates that leave `spec` alone are always admitted.
pub fn validate_update(old: &App, new: &App) -> Verdict {
    let deleting = new.metadata.deletion_timestamp.is_some();
    // Each rule's subject is one field of spec: all of spec.env, spec.ingress or spec.resources.
    ratcheted_update(deleting, &old.spec, &new.spec, validate_spec, |_| 2).unwrap_or_default()
}

/// The cache reads [`validate_create_with`] makes: the Apps claiming the Ingress host.
pub fn lookups_for_create(app: &App, namespace: &str) -> Vec<Query> {
    claimed_host(&app.spec)
        .map(|host| Query::AppsClaiming { namespace: namespace.to_owned(), host: host.to_owned() })
        .into_iter()
        .collect()
}

/// The cache reads [`validate_update_with`] makes: as on CREATE, when the
/// update changes the route.
pub fn lookups_for_update(old: &App, new: &App, namespace: &str) -> Vec<Query> {
    if !route_changes(old, new) {
        return Vec::new();
    }
    lookups_for_create(new, namespace)
}

/// CREATE with the route rule: [`validate_create`], and no other App of
/// `namespace` claims the same host and path.
pub fn validate_create_with(app: &App, namespace: &str, lookup: &dyn Lookup) -> Verdict {
    let mut verdict = validate_create(app);
    check_route(app, namespace, lookup, &mut verdict);
    verdict
}

/// UPDATE with the route rule, checked only when the update changes the route.
pub fn validate_update_with(old: &App, new: &App, namespace: &str, lookup: &dyn Lookup) -> Verdict {
    let mut verdict = validate_update(old, new);
    if route_changes(old, new) {
        check_route(new, namespace, lookup, &mut verdict);
    }
    verdict
}

fn route_changes(old: &App, new: &App) -> bool {
    new.metadata.deletion_timestamp.is_none() && old.spec.route() != new.spec.route()
}

/// The host the App claims, when it has an Ingress with a host.
fn claimed_host(spec: &AppSpec) -> Option<&str> {
    spec.ingress.as_ref().map(|i| i.host.as_str()).filter(|h| !h.is_empty())
}

/// The route rule through `lookup`. A route that is itself refused is not
/// checked, and a skipped check warns only an App that is otherwise admitted.
fn check_route(app: &App, namespace: &str, lookup: &dyn Lookup, verdict: &mut Verdict) {
    let Some(host) = claimed_host(&app.spec) else {
        return;
    };
    if verdict
        .errors
        .iter()
        .any(|e| e.field.starts_with("spec.ingress.host") || e.field.starts_with("spec.ingress.path"))
    {
        return;
    }
    let reason = match lookup.apps_claiming(namespace, host) {
        Found::Yes(others) => return validate_collisions(app, namespace, &others, verdict),
        Found::No => return,
        Found::Unknown(reason) => reason,
        Found::Skipped => NO_VIEW_OF_APPS.to_owned(),
    };
    if verdict.is_allowed() {
        verdict.warnings.push(collision_skipped(&app.spec, namespace, &reason));
    }
}

/// Why the route rule was skipped offline or without API access.
pub const NO_VIEW_OF_APPS: &str = "stead-webhook has no view of the other Apps: an offline check, or a webhook \
                                   without Kubernetes API access";

/// The warning of an App admitted without the route rule.
pub fn collision_skipped(spec: &AppSpec, namespace: &str, reason: &str) -> String {
    let (host, path) = spec.route().unwrap_or_default();
    format!(
        "spec.ingress: admitted without checking that no other App in namespace {namespace:?} claims host {host:?} \
         and path {path:?} ({reason}); check with kubectl get apps.stead.dev -n {namespace}"
    )
}

/// The route rule, pure: refuses `app` when an App of `others` in the same
/// namespace claims the same host and path, naming it. The App itself (same
/// name: an UPDATE), Apps of other namespaces and Apps being deleted are
/// not competitors.
pub fn validate_collisions(app: &App, namespace: &str, others: &[App], verdict: &mut Verdict) {
    let Some((host, path)) = app.spec.route() else {
        return;
    };
    let name = app.metadata.name.as_deref().filter(|n| !n.is_empty());
    let mut taken: Vec<&str> = others
        .iter()
        .filter(|other| other.metadata.namespace.as_deref().is_none_or(|ns| ns == namespace))
        .filter(|other| other.metadata.deletion_timestamp.is_none())
        .filter_map(|other| other.metadata.name.as_deref().map(|n| (n, other)))
        .filter(|(other_name, _)| Some(*other_name) != name)
        .filter(|(_, other)| other.spec.route().is_some_and(|(h, p)| h.eq_ignore_ascii_case(host) && p == path))
        .map(|(other_name, _)| other_name)
        .collect();
    taken.sort_unstable();
    taken.dedup();
    for other in taken {
        verdict.errors.push(FieldError::duplicate(
            "spec.ingress.host",
            host,
            format!(
                "App {other:?} in namespace {namespace:?} already claims host {host:?} and path {path:?}; choose \
                 another host or path (such as {path_example:?}), or remove spec.ingress from one of the two",
                path_example = suggest_path(path)
            ),
        ));
    }
}

fn suggest_path(path: &str) -> String {
    if path == "/" { "/v2".to_owned() } else { format!("{}/v2", path.trim_end_matches('/')) }
}

/// Rules on the spec alone, shared by create, update and the controller's guard.
pub fn validate_spec(spec: &AppSpec, verdict: &mut Verdict) {
    validate_image_at("spec.image", &spec.image, &APP_IMAGES, verdict);
    if let Some(replicas) = spec.replicas
        && !(MIN_REPLICAS..=MAX_REPLICAS).contains(&replicas)
    {
        verdict.errors.push(FieldError::invalid(
            "spec.replicas",
            replicas,
            format!("must be between {MIN_REPLICAS} and {MAX_REPLICAS}, inclusive, such as 2"),
        ));
    }
    if let Some(port) = spec.container_port {
        validate_port("spec.containerPort", port, verdict);
    }
    if let Some(port) = spec.service.as_ref().and_then(|s| s.port) {
        validate_port("spec.service.port", port, verdict);
    }
    validate_env(spec, verdict);
    if let Some(resources) = &spec.resources {
        validate_resources("spec.resources", resources, verdict);
    }
    if let Some(ingress) = &spec.ingress {
        validate_ingress(ingress, verdict);
    }
}

/// `spec.env`: names as Kubernetes accepts them, each once; `value` or `valueFrom`, not both.
fn validate_env(spec: &AppSpec, verdict: &mut Verdict) {
    if spec.env.len() > MAX_ENV {
        verdict.errors.push(FieldError::invalid(
            "spec.env",
            format!("{} variables", spec.env.len()),
            format!("must have at most {MAX_ENV} entries; put bulk configuration in a ConfigMap"),
        ));
        return;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (index, var) in spec.env.iter().enumerate() {
        let field = format!("spec.env[{index}].name");
        if var.name.is_empty() {
            verdict.errors.push(FieldError::required(field, "a variable name such as MODE"));
        } else if let Some(detail) = env_name_error(&var.name) {
            verdict.errors.push(FieldError::invalid(field, var.name.as_str(), detail));
        } else if !seen.insert(var.name.as_str()) {
            verdict.errors.push(FieldError::duplicate(
                field,
                var.name.as_str(),
                "each variable is set once; remove or rename one of them",
            ));
        }
        if var.value.as_deref().is_some_and(|v| !v.is_empty()) && var.value_from.is_some() {
            verdict.errors.push(FieldError::forbidden(
                format!("spec.env[{index}].valueFrom"),
                "may not be specified when `value` is not empty; set either value or valueFrom",
            ));
        }
    }
}

/// Why a string is not an environment variable name as Kubernetes
/// validates it (`[-._a-zA-Z][-._a-zA-Z0-9]*`, and not `.`, `..` or `..`-prefixed).
pub fn env_name_error(name: &str) -> Option<String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    let bytes = name.as_bytes();
    let well_formed = bytes.first().is_some_and(|b| !b.is_ascii_digit()) && bytes.iter().all(|b| allowed(*b));
    if !well_formed {
        return Some(
            "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and \
             must not start with a digit (e.g. 'my.env-name', or 'MY_ENV.NAME', or 'MyEnvName1', regex used for \
             validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')"
                .to_owned(),
        );
    }
    match name {
        "." => Some("must not be '.'".to_owned()),
        ".." => Some("must not be '..'".to_owned()),
        _ if name.starts_with("..") => Some("must not start with '..'".to_owned()),
        _ => None,
    }
}

/// `spec.ingress`: a DNS host, an absolute path, DNS names for the class and the Secret.
fn validate_ingress(ingress: &AppIngressSpec, verdict: &mut Verdict) {
    if ingress.host.is_empty() {
        verdict.errors.push(FieldError::required("spec.ingress.host", "a DNS name such as shop.example.com"));
    } else if let Some(detail) = host_error(&ingress.host) {
        verdict.errors.push(FieldError::invalid("spec.ingress.host", ingress.host.as_str(), detail));
    }
    if let Some(path) = &ingress.path
        && let Some(detail) = path_error(path)
    {
        verdict.errors.push(FieldError::invalid("spec.ingress.path", path.as_str(), detail));
    }
    if let Some(class) = &ingress.class_name
        && let Some(detail) = dns1123_subdomain_error(class)
    {
        verdict.errors.push(FieldError::invalid("spec.ingress.className", class.as_str(), detail));
    }
    if let Some(tls) = &ingress.tls {
        if tls.secret_name.is_empty() {
            verdict.errors.push(FieldError::required(
                "spec.ingress.tls.secretName",
                "the kubernetes.io/tls Secret with the certificate, such as shop-tls",
            ));
        } else if let Some(detail) = dns1123_subdomain_error(&tls.secret_name) {
            verdict.errors.push(FieldError::invalid("spec.ingress.tls.secretName", tls.secret_name.as_str(), detail));
        }
    }
}

/// Why a string is not an Ingress host: an RFC 1123 DNS name in lower case,
/// or one with a wildcard as its whole first label (`*.example.com`); never an IP address.
pub fn host_error(host: &str) -> Option<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Some("must be a DNS name, not an IP address, such as shop.example.com".to_owned());
    }
    let (wildcard, rest) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if rest.contains('*') {
        return Some(
            "a wildcard '*' is allowed only as the whole first label, as in '*.example.com'; otherwise use a DNS \
             name such as shop.example.com"
                .to_owned(),
        );
    }
    dns1123_subdomain_error(rest).map(|detail| if wildcard { format!("after '*.', {detail}") } else { detail })
}

/// Why a string is not an Ingress path: it starts with `/` and holds no
/// white space or control characters.
pub fn path_error(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some("must be an absolute path starting with '/', such as / or /api".to_owned());
    }
    path.chars().any(|c| c.is_whitespace() || c.is_control()).then(|| {
        "must not contain white space or control characters; percent-encode them, such as /my%20shop".to_owned()
    })
}
