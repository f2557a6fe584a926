//! Pure JSON comparisons that keep the steady state silent.
//!
//! We decide whether to server-side-apply a child by asking "does the live
//! object already contain every field we would apply, with our values?"
//! (desired ⊆ live). Server-side apply only ever changes the fields we name,
//! so when they all match, the apply would be a no-op and we skip the call.
//!
//! Why a subset test and not only a hash annotation: a hash says what we
//! *sent*, not what is *there*. A `kubectl edit` that changes a field we own
//! would be invisible to a hash and never be repaired, while the subset test
//! sees it. The subset test alone misses one thing, a field we *stopped*
//! sending; the desired body therefore carries a hash of itself as an
//! annotation (`children::APPLIED_HASH`), which makes any change of the body
//! a difference the subset test sees.
//!
//! Fields the API server defaults (protocol, terminationMessagePath, …) are
//! not in the desired object, so they never count as drift. Values the API
//! server normalises are compared by meaning: quantities under `requests`
//! and `limits` by value (`1000m` == `1`).

use std::cmp::Ordering;

use serde_json::{Map, Value};
use stead_crds::quantity::Quantity;

/// The merge patch that turns the stored status into `computed`: `computed`
/// itself, plus an explicit `null` for every top-level field the stored
/// status has and `computed` leaves out (a merge patch keeps what it does not
/// name, so a field that is gone, such as `primaryFailingSince` after a
/// recovery or `nextScheduledBackup` while suspended, must be removed by name).
pub fn status_merge_patch<S: serde::Serialize>(stored: Option<&S>, computed: &S) -> Value {
    let mut patch = serde_json::to_value(computed).unwrap_or(Value::Null);
    let stored = stored.and_then(|s| serde_json::to_value(s).ok());
    if let (Some(Value::Object(stored)), Value::Object(patch)) = (stored, &mut patch) {
        for key in stored.keys() {
            if !patch.contains_key(key) {
                patch.insert(key.clone(), Value::Null);
            }
        }
    }
    patch
}

/// Whether every field of `desired` is present in `live` with the same value.
///
/// Lists of named objects (containers, ports, volume claim templates, …) are
/// matched by `name`, as server-side apply merges them; other lists must match
/// element by element, as server-side apply replaces them whole.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    subset_at(desired, live, false)
}

/// `resource_list`: `desired` and `live` are a `requests`/`limits` map, whose values are quantities.
fn subset_at(desired: &Value, live: &Value, resource_list: bool) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| {
            have.get(key).is_some_and(|lv| match (value, lv) {
                (Value::String(a), Value::String(b)) if resource_list => quantities_equal(a, b),
                _ => subset_at(value, lv, matches!(key.as_str(), "requests" | "limits")),
            })
        }),
        (Value::Array(want), Value::Array(have)) => match named_elements(want) {
            Some(names) => names.iter().zip(want).all(|(name, element)| {
                find_named(have, name).is_some_and(|live_element| subset_at(element, live_element, false))
            }),
            None => want.len() == have.len() && want.iter().zip(have).all(|(w, h)| subset_at(w, h, false)),
        },
        _ => desired == live,
    }
}

fn quantities_equal(a: &str, b: &str) -> bool {
    a == b
        || match (Quantity::parse(a), Quantity::parse(b)) {
            (Ok(a), Ok(b)) => a.cmp(&b) == Ordering::Equal,
            _ => false,
        }
}

/// The `name` of every element, when all elements are objects carrying one.
fn named_elements(list: &[Value]) -> Option<Vec<&str>> {
    if list.is_empty() {
        return None;
    }
    list.iter().map(element_name).collect()
}

/// `name`, or `metadata.name` for embedded objects such as volume claim templates.
fn element_name(v: &Value) -> Option<&str> {
    v.get("name").or_else(|| v.pointer("/metadata/name")).and_then(Value::as_str)
}

fn find_named<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|v| element_name(v) == Some(name))
}

/// The fields of `desired` that also exist in `live`, with the live values.
///
/// Used for the immutable `volumeClaimTemplates` of an existing StatefulSet:
/// we must keep applying them (omitting a field we own from an apply would
/// ask the API server to remove it), but we must apply exactly what is
/// stored, since any change is refused. Named list elements are matched by
/// `name`; elements missing from `live` are dropped.
pub fn restrict_to_live(desired: &Value, live: &Value) -> Value {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            let kept: Map<String, Value> = want
                .iter()
                .filter_map(|(key, value)| have.get(key).map(|lv| (key.clone(), restrict_to_live(value, lv))))
                .collect();
            Value::Object(kept)
        }
        (Value::Array(want), Value::Array(have)) => match named_elements(want) {
            Some(names) => Value::Array(
                names
                    .iter()
                    .zip(want)
                    .filter_map(|(name, element)| find_named(have, name).map(|lv| restrict_to_live(element, lv)))
                    .collect(),
            ),
            None => live.clone(),
        },
        _ => live.clone(),
    }
}

#[cfg(test)]
mod status_patch_tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    #[test]
    fn a_field_gone_from_the_status_is_removed_by_name() {
        let stored = json!({"phase": "FailingOver", "primaryFailingSince": "2026-01-01T00:00:00Z", "replicas": 3});
        let computed = json!({"phase": "Healthy", "replicas": 3});
        assert_eq!(
            super::status_merge_patch(Some(&stored), &computed),
            json!({"phase": "Healthy", "replicas": 3, "primaryFailingSince": null})
        );
        assert_eq!(super::status_merge_patch(None, &computed), computed);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn subset_table() {
        // (case, desired, live, subset?)
        let rows = [
            ("equal scalars", json!(1), json!(1), true),
            ("different scalars", json!(1), json!(2), false),
            ("extra live fields are fine", json!({"a": 1}), json!({"a": 1, "b": 2}), true),
            ("missing live field", json!({"a": 1, "b": 2}), json!({"a": 1}), false),
            ("nested drift", json!({"a": {"b": "x"}}), json!({"a": {"b": "y", "c": 1}}), false),
            (
                "named list matched by name, order free",
                json!([{"name": "b", "x": 1}, {"name": "a"}]),
                json!([{"name": "a", "y": 0}, {"name": "b", "x": 1, "z": 2}]),
                true,
            ),
            ("named element missing", json!([{"name": "a"}]), json!([{"name": "b"}]), false),
            ("atomic list equal", json!(["ReadWriteOnce"]), json!(["ReadWriteOnce"]), true),
            ("atomic list longer live", json!(["ALL"]), json!(["ALL", "NET_RAW"]), false),
            ("atomic list of objects positional", json!([{"w": 1}]), json!([{"w": 1, "x": 2}]), true),
            (
                "quantity normalised by the API server",
                json!({"requests": {"cpu": "1000m"}}),
                json!({"requests": {"cpu": "1"}}),
                true,
            ),
            ("memory same value", json!({"limits": {"memory": "1024Mi"}}), json!({"limits": {"memory": "1Gi"}}), true),
            (
                "quantity different value",
                json!({"requests": {"cpu": "500m"}}),
                json!({"requests": {"cpu": "1"}}),
                false,
            ),
            ("non-quantity strings compare exactly", json!({"image": "1"}), json!({"image": "1.0"}), false),
            (
                "label values are not quantities",
                json!({"labels": {"a/b": "1"}}),
                json!({"labels": {"a/b": "1.0"}}),
                false,
            ),
            ("a key named like a resource is not enough", json!({"cpu": "1000m"}), json!({"cpu": "1"}), false),
            ("type mismatch", json!({"port": 5432}), json!({"port": "5432"}), false),
            ("null desired vs absent", json!({"a": null}), json!({}), false),
        ];
        for (case, desired, live, want) in rows {
            assert_eq!(is_subset(&desired, &live), want, "{case}");
        }
    }

    #[test]
    fn restrict_keeps_live_values_of_owned_fields() {
        let desired = json!([{
            "metadata": {"name": "data", "labels": {"a": "1", "new": "x"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}, "storageClassName": "fast"}
        }]);
        let live = json!([{
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "labels": {"a": "1"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}, "volumeMode": "Filesystem"},
            "status": {"phase": "Pending"}
        }]);
        let want = json!([{
            "metadata": {"name": "data", "labels": {"a": "1"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}
        }]);
        assert_eq!(restrict_to_live(&desired, &live), want);
        assert!(is_subset(&want, &live));
    }

    #[test]
    fn restrict_drops_templates_that_do_not_exist() {
        let desired = json!([{"metadata": {"name": "data"}}]);
        assert_eq!(restrict_to_live(&desired, &json!([])), json!([]));
    }
}
