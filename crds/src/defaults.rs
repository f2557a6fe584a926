//! Defaulting: what the mutating webhook adds to a `DatabaseCluster`.
//!
//! Defaulting works on the raw JSON of the request, not on the typed struct:
//! only there can "absent" be told apart from "present", and the mutating
//! webhook sees objects before schema validation, so they may be malformed.
//! A malformed spec gets no patch; schema validation reports it afterwards.

use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Map, Value};

use crate::cluster::DatabaseClusterSpec;

/// Replicas when the user wrote none.
pub const DEFAULT_REPLICAS: i32 = 1;
/// PostgreSQL's port, when the user wrote none.
pub const DEFAULT_PORT: i32 = 5432;
/// How long a primary must be failing before failover, when the user wrote nothing.
pub const DEFAULT_FAILOVER_DELAY: std::time::Duration = std::time::Duration::from_secs(30);
/// Replication lag bound when the user wrote none: 16 MiB, one WAL segment.
pub const DEFAULT_MAX_LAG_BYTES: i64 = 16 << 20;

/// One documented default: where below `spec` it goes and what it is.
///
/// Every kind lists its defaults in a table of these and gets its patch
/// from [`spec_patch`]: DatabaseCluster here, App in
/// [`crate::app_validation`].
pub struct SpecDefault {
    /// The field's path below `spec`: `["replicas"]`, `["service", "port"]`.
    pub path: &'static [&'static str],
    /// Whether absent parent objects are created with the field in them
    /// (`spec.service` absent becomes `{port: ...}`); when false the default
    /// applies only inside a parent the user wrote (`spec.ingress.path`).
    pub create_parent: bool,
    /// The value, computed from the spec as defaulted by the rows before;
    /// `None` when it cannot be (a malformed spec, left to schema validation).
    pub value: fn(&Map<String, Value>) -> Option<Value>,
}

const SPEC_DEFAULTS: &[SpecDefault] = &[
    SpecDefault { path: &["replicas"], create_parent: false, value: |_| Some(Value::from(DEFAULT_REPLICAS)) },
    SpecDefault { path: &["port"], create_parent: false, value: |_| Some(Value::from(DEFAULT_PORT)) },
];

/// The minimal JSON patch that adds every absent default to a DatabaseCluster `object`.
///
/// It touches only absent (or `null`) fields, so defaulting the defaulted
/// object yields an empty patch and `reinvocationPolicy: IfNeeded` is safe.
pub fn default_patch(object: &Value) -> Patch {
    spec_patch(object, SPEC_DEFAULTS)
}

/// The minimal JSON patch that adds every absent default of `defaults` to
/// `object`'s spec, in table order; a row sees the rows before it applied.
///
/// Only absent (or `null`) fields are added, so the patch of a patched
/// object is empty. A spec, or a parent of a field, that is not a JSON
/// object gets no default there; schema validation reports it afterwards.
pub fn spec_patch(object: &Value, defaults: &[SpecDefault]) -> Patch {
    let Some(spec) = object.get("spec").and_then(Value::as_object) else {
        return Patch(Vec::new());
    };
    let mut spec = spec.clone();
    let mut ops = Vec::new();
    for default in defaults {
        if let Some(op) = add_default(&mut spec, default) {
            ops.push(op);
        }
    }
    Patch(ops)
}

/// Adds one default to the working copy of the spec and returns its operation.
fn add_default(spec: &mut Map<String, Value>, default: &SpecDefault) -> Option<PatchOperation> {
    let (field, parents) = default.path.split_last()?;
    let mut map = &*spec;
    // The first parent that is absent, if any.
    let mut missing = None;
    for (depth, key) in parents.iter().enumerate() {
        match map.get(*key) {
            Some(Value::Object(inner)) => map = inner,
            None | Some(Value::Null) => {
                missing = Some(depth);
                break;
            }
            Some(_) => return None,
        }
    }
    if missing.is_none() && !is_absent(map, field) {
        return None;
    }
    if missing.is_some() && !default.create_parent {
        return None;
    }
    let value = (default.value)(spec)?;
    // The operation adds at the first absent segment, carrying the rest nested.
    let at = missing.unwrap_or(parents.len());
    let nested = default.path[at + 1..]
        .iter()
        .rev()
        .fold(value, |inner, key| Value::Object(Map::from_iter([((*key).to_owned(), inner)])));
    insert(spec, &default.path[..=at], nested.clone());
    Some(PatchOperation::Add(AddOperation {
        path: json_patch::jsonptr::PointerBuf::from_tokens(
            std::iter::once("spec").chain(default.path[..=at].iter().copied()),
        ),
        value: nested,
    }))
}

/// Sets `path` (whose parents are objects) in the working copy.
fn insert(spec: &mut Map<String, Value>, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut map = spec;
    for key in parents {
        match map.get_mut(*key) {
            Some(Value::Object(inner)) => map = inner,
            _ => return,
        }
    }
    map.insert((*last).to_owned(), value);
}

fn is_absent(spec: &Map<String, Value>, field: &str) -> bool {
    spec.get(field).is_none_or(Value::is_null)
}

/// The spec with every default applied, for the controller when the webhook
/// was bypassed. Mirrors [`default_patch`] on the typed struct.
pub fn with_defaults(spec: &DatabaseClusterSpec) -> DatabaseClusterSpec {
    let mut spec = spec.clone();
    spec.replicas.get_or_insert(DEFAULT_REPLICAS);
    spec.port.get_or_insert(DEFAULT_PORT);
    spec
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn apply(object: &Value) -> Value {
        let mut out = object.clone();
        json_patch::patch(&mut out, &default_patch(object)).unwrap();
        out
    }

    #[test]
    fn defaults_table() {
        // (case, spec in, spec out)
        let rows = [
            ("both absent", json!({"image": "pg"}), json!({"image": "pg", "replicas": 1, "port": 5432})),
            ("replicas written", json!({"replicas": 3}), json!({"replicas": 3, "port": 5432})),
            ("port written", json!({"port": 6543}), json!({"port": 6543, "replicas": 1})),
            ("both written", json!({"replicas": 5, "port": 1}), json!({"replicas": 5, "port": 1})),
            ("explicit null is absent", json!({"replicas": null}), json!({"replicas": 1, "port": 5432})),
            (
                "wrong type left for schema validation",
                json!({"replicas": "three"}),
                json!({"replicas": "three", "port": 5432}),
            ),
            ("zero is a value, not absent", json!({"replicas": 0}), json!({"replicas": 0, "port": 5432})),
        ];
        for (case, spec, want) in rows {
            let got = apply(&json!({"spec": spec}));
            assert_eq!(got["spec"], want, "{case}");
        }
    }

    #[test]
    fn defaulting_is_idempotent() {
        for spec in [json!({}), json!({"replicas": 2}), json!({"port": 1, "image": "x"})] {
            let once = apply(&json!({"spec": spec}));
            assert!(default_patch(&once).0.is_empty(), "second pass must be empty for {spec}");
        }
    }

    #[test]
    fn patch_paths_and_values() {
        let patch = default_patch(&json!({"spec": {"image": "pg"}}));
        let rendered = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            rendered,
            json!([
                {"op": "add", "path": "/spec/replicas", "value": 1},
                {"op": "add", "path": "/spec/port", "value": 5432}
            ])
        );
    }

    #[test]
    fn no_spec_or_malformed_spec_gets_no_patch() {
        for object in [json!({}), json!({"spec": null}), json!({"spec": "x"}), json!({"spec": [1]}), json!(null)] {
            assert!(default_patch(&object).0.is_empty(), "{object}");
        }
    }

    #[test]
    fn typed_defaults_match_the_patch() {
        let spec = DatabaseClusterSpec { image: "pg".into(), ..Default::default() };
        let typed = serde_json::to_value(with_defaults(&spec)).unwrap();
        let patched = apply(&json!({"spec": serde_json::to_value(&spec).unwrap()}));
        assert_eq!(typed, patched["spec"]);
        let written = DatabaseClusterSpec { replicas: Some(7), port: Some(1), ..spec };
        assert_eq!(with_defaults(&written), written);
    }
}
