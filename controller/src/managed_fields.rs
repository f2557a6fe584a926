//! Hands the fields a create recorded over to the controller's apply.
//!
//! A child is created with a plain POST (see `reconciler::ensure`), which
//! the API server records in `managedFields` as an `Update` by
//! `stead-controller`. Later changes are server-side applies, recorded as an
//! `Apply` by the same name, and to the API server those are two managers. A
//! field the apply stops sending (the container's `resources`, once the user
//! removed `spec.resources`) would stay owned by the update and so stay on
//! the child for good (kubernetes/kubernetes#99003, the trap of moving from
//! client-side to server-side apply).
//!
//! So before the first apply, our update entry is merged into our apply
//! entry, the way `kubectl apply --server-side` migrates objects that
//! client-side apply managed. The patch also carries the resourceVersion the
//! list was read at, so it never replaces a newer list.
//!
//! The caches keep no field sets (they are often the largest part of an
//! object, and most children never need a handover): [`slim`] leaves only
//! who wrote the object and how, enough for [`handover_pending`]. The patch
//! itself is computed from the child as the API server has it now.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::api::ObjectMeta;
use serde_json::{Value, json};

/// The merge patch that turns `manager`'s `Update` entry into (part of) its
/// `Apply` entry; `None` when there is no such entry (the child was created
/// by an apply, or the handover was done already).
pub fn handover_patch(meta: &ObjectMeta, manager: &str) -> Option<Value> {
    let mut entries: Vec<ManagedFieldsEntry> = meta.managed_fields.clone()?;
    let version = meta.resource_version.as_deref()?;
    let at = entries.iter().position(|e| is_entry(e, manager, "Update"))?;
    let mut created = entries.remove(at);
    match entries.iter_mut().find(|e| is_entry(e, manager, "Apply") && e.api_version == created.api_version) {
        Some(applied) => {
            let mut fields = applied.fields_v1.take().map_or_else(|| json!({}), |f| f.0);
            if let Some(more) = created.fields_v1 {
                union(&mut fields, more.0);
            }
            applied.fields_v1 = Some(FieldsV1(fields));
        }
        None => {
            created.operation = Some("Apply".to_owned());
            entries.insert(at, created);
        }
    }
    // A merge patch replaces a list whole: this is the new managedFields.
    Some(json!({ "metadata": { "resourceVersion": version, "managedFields": entries } }))
}

/// Whether `manager` created the object with a plain write and has not yet
/// handed those fields to its apply. Works on slimmed entries too.
pub fn handover_pending(meta: &ObjectMeta, manager: &str) -> bool {
    meta.managed_fields.iter().flatten().any(|entry| is_entry(entry, manager, "Update"))
}

/// What a cache keeps of `managedFields`: while a handover is pending, each
/// entry without its field set (the patch is computed from a fresh read);
/// otherwise nothing.
pub fn slim(meta: &mut ObjectMeta, manager: &str) {
    if !handover_pending(meta, manager) {
        meta.managed_fields = None;
        return;
    }
    for entry in meta.managed_fields.iter_mut().flatten() {
        entry.fields_v1 = None;
        entry.fields_type = None;
        entry.time = None;
    }
}

/// An entry of `manager` for `operation` on the object itself (not a subresource).
fn is_entry(entry: &ManagedFieldsEntry, manager: &str, operation: &str) -> bool {
    entry.manager.as_deref() == Some(manager)
        && entry.operation.as_deref() == Some(operation)
        && entry.subresource.as_deref().is_none_or(str::is_empty)
}

/// Adds every field of the FieldsV1 set `more` to `fields`.
fn union(fields: &mut Value, more: Value) {
    if let (Value::Object(fields), Value::Object(more)) = (fields, more) {
        for (key, value) in more {
            match fields.get_mut(&key) {
                Some(existing) => union(existing, value),
                None => {
                    fields.insert(key, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn entry(manager: &str, operation: &str, subresource: Option<&str>, fields: &Value) -> Value {
        let mut e = json!({
            "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": fields,
            "manager": manager, "operation": operation, "time": "2025-01-10T09:00:00Z",
        });
        if let Some(s) = subresource {
            e["subresource"] = json!(s);
        }
        e
    }

    fn meta(entries: &[Value]) -> ObjectMeta {
        serde_json::from_value(json!({"name": "orders", "resourceVersion": "42", "managedFields": entries})).unwrap()
    }

    const ME: &str = "stead-controller";

    #[test]
    fn a_created_child_hands_its_fields_to_the_apply() {
        let created = json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}});
        let status = entry("kube-controller-manager", "Update", Some("status"), &json!({"f:status": {}}));
        let patch = handover_patch(&meta(&[entry(ME, "Update", None, &created), status.clone()]), ME).unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {
                "resourceVersion": "42",
                "managedFields": [entry(ME, "Apply", None, &created), status],
            }})
        );
    }

    #[test]
    fn an_existing_apply_entry_gains_the_created_fields() {
        let created = json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}});
        let applied = json!({"f:spec": {"f:replicas": {}, "f:serviceName": {}}});
        let patch =
            handover_patch(&meta(&[entry(ME, "Update", None, &created), entry(ME, "Apply", None, &applied)]), ME)
                .unwrap();
        assert_eq!(
            patch["metadata"]["managedFields"],
            json!([entry(
                ME,
                "Apply",
                None,
                &json!({"f:spec": {"f:replicas": {}, "f:serviceName": {}, "f:template": {"f:spec": {"f:containers": {}}}}})
            )])
        );
    }

    #[test]
    fn a_cache_keeps_only_who_wrote_while_a_handover_is_pending() {
        let fields = json!({"f:spec": {"f:replicas": {}}});
        let mut pending = meta(&[entry(ME, "Update", None, &fields), entry("kcm", "Update", Some("status"), &fields)]);
        slim(&mut pending, ME);
        assert!(handover_pending(&pending, ME));
        let kept = pending.managed_fields.as_deref().unwrap();
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|e| e.fields_v1.is_none() && e.time.is_none()), "{kept:?}");

        let mut done = meta(&[entry(ME, "Apply", None, &fields), entry("kcm", "Update", Some("status"), &fields)]);
        slim(&mut done, ME);
        assert!(!handover_pending(&done, ME));
        assert_eq!(done.managed_fields, None);
    }

    #[test]
    fn nothing_to_hand_over() {
        let fields = json!({"f:spec": {}});
        let rows = [
            ("created by an apply", meta(&[entry(ME, "Apply", None, &fields)])),
            ("someone else's update", meta(&[entry("kubectl-edit", "Update", None, &fields)])),
            ("our update of a subresource", meta(&[entry(ME, "Update", Some("status"), &fields)])),
            ("no managedFields", ObjectMeta { resource_version: Some("42".into()), ..ObjectMeta::default() }),
            (
                "no resourceVersion to make the patch conditional",
                ObjectMeta { resource_version: None, ..meta(&[entry(ME, "Update", None, &fields)]) },
            ),
        ];
        for (case, meta) in rows {
            assert_eq!(handover_patch(&meta, ME), None, "{case}");
        }
    }
}
