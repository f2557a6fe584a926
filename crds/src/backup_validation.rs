//! Admission rules of `DatabaseBackup`: what the validating webhook refuses
//! and warns about, every problem at once, as [`crate::validation`] does for
//! clusters.
//!
//! - CREATE: the name fits a label value; `spec.cluster` is a cluster name;
//!   `spec.target` is known. A `spec.cluster` that names no DatabaseCluster
//!   is admitted with a warning (GitOps may apply the backup before the
//!   cluster; the controller waits for it), which needs a [`Lookup`].
//! - UPDATE: the spec never changes (the CRD's CEL rule says the same);
//!   metadata and status changes are admitted, and so is anything being deleted.
//! - DELETE: always admitted; retention and users delete backups.

use serde_json::Value;

use crate::backup::{DatabaseBackup, DatabaseBackupSpec, TARGETS};
use crate::field_error::{FieldError, Verdict};
use crate::lookup::{Found, Lookup, Query};
use crate::names::{MAX_CLUSTER_NAME_LEN, dns1035_label_error};
use crate::validation::validate_backup_name;

/// Rules for CREATE that need no API: the name and the spec.
pub fn validate_create(backup: &DatabaseBackup) -> Verdict {
    let mut verdict = Verdict::default();
    match (backup.metadata.name.as_deref(), backup.metadata.generate_name.as_deref()) {
        (Some(name), _) if !name.is_empty() => validate_backup_name("metadata.name", name, &mut verdict),
        (_, Some(prefix)) if !prefix.is_empty() => {
            // Five generated characters follow the prefix.
            validate_backup_name("metadata.generateName", &format!("{prefix}xxxxx"), &mut verdict);
        }
        _ => verdict.errors.push(FieldError::required("metadata.name", "name or generateName is required")),
    }
    validate_spec(&backup.spec, &mut verdict);
    verdict
}

/// The reads [`validate_create_with`] makes: whether the cluster exists.
pub fn lookups_for_create(backup: &DatabaseBackup, namespace: &str) -> Vec<Query> {
    if backup.spec.cluster.is_empty() {
        return Vec::new();
    }
    vec![Query::Cluster { namespace: namespace.to_owned(), name: backup.spec.cluster.clone() }]
}

/// CREATE with the rule that needs the API: a warning when `spec.cluster`
/// names no DatabaseCluster in `namespace`, or when that could not be checked.
pub fn validate_create_with(backup: &DatabaseBackup, namespace: &str, lookup: &dyn Lookup) -> Verdict {
    let mut verdict = validate_create(backup);
    let cluster = backup.spec.cluster.as_str();
    if cluster.is_empty() || !verdict.is_allowed() {
        return verdict;
    }
    match lookup.cluster_exists(namespace, cluster) {
        Found::Yes(()) | Found::Skipped => {}
        Found::No => verdict.warnings.push(format!(
            "spec.cluster: no DatabaseCluster {cluster:?} in namespace {namespace:?} yet; the backup stays Pending \
             until it exists (kubectl get dbc -n {namespace})"
        )),
        Found::Unknown(reason) => verdict.warnings.push(format!(
            "spec.cluster: could not check that DatabaseCluster {cluster:?} exists ({reason}); the backup stays \
             Pending until it does"
        )),
    }
    verdict
}

/// Rules for UPDATE: the spec is immutable.
///
/// Objects being deleted and updates that leave `spec` alone (labels,
/// finalizers, owner references) are always admitted.
pub fn validate_update(old: &DatabaseBackup, new: &DatabaseBackup) -> Verdict {
    let mut verdict = Verdict::default();
    if new.metadata.deletion_timestamp.is_some() || old.spec == new.spec {
        return verdict;
    }
    spec_changed(&old.spec, &new.spec, &mut verdict);
    verdict
}

/// The refusal of a spec change, naming each changed field; also used on
/// raw JSON when the stored object no longer decodes.
pub fn spec_changed(old: &DatabaseBackupSpec, new: &DatabaseBackupSpec, verdict: &mut Verdict) {
    let json = |spec: &DatabaseBackupSpec| serde_json::to_value(spec).unwrap_or(Value::Null);
    let (old_json, new_json) = (json(old), json(new));
    let mut fields: Vec<&str> =
        ["cluster", "target"].into_iter().filter(|f| old_json.get(f) != new_json.get(f)).collect();
    if fields.is_empty() {
        fields.push("");
    }
    for field in fields {
        let path = if field.is_empty() { "spec".to_owned() } else { format!("spec.{field}") };
        verdict.errors.push(FieldError::forbidden(
            path,
            "a DatabaseBackup's spec is immutable: it records one backup; create a new DatabaseBackup (kubectl \
             create -f) to take another",
        ));
    }
}

/// Rules on the spec alone.
pub fn validate_spec(spec: &DatabaseBackupSpec, verdict: &mut Verdict) {
    let cluster = spec.cluster.as_str();
    if cluster.is_empty() {
        verdict.errors.push(FieldError::required("spec.cluster", "the name of the DatabaseCluster to back up"));
    } else if cluster.len() > MAX_CLUSTER_NAME_LEN {
        verdict.errors.push(FieldError::invalid(
            "spec.cluster",
            cluster,
            format!("must be no more than {MAX_CLUSTER_NAME_LEN} characters, the longest DatabaseCluster name"),
        ));
    } else if let Some(detail) = dns1035_label_error(cluster) {
        verdict.errors.push(FieldError::invalid(
            "spec.cluster",
            cluster,
            format!("must be a DatabaseCluster name: {detail}"),
        ));
    }
    if let Some(target) = &spec.target
        && !TARGETS.contains(&target.as_str())
    {
        verdict.errors.push(FieldError::not_supported("spec.target", target.as_str(), &TARGETS));
    }
}

/// Turns request JSON into a `DatabaseBackup`, naming the field that does not fit.
pub fn decode(object: &Value) -> Result<DatabaseBackup, FieldError> {
    crate::validation::decode_as(object)
}
