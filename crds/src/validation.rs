//! Validation: what the validating webhook refuses, and what it warns about.
//!
//! Every function returns *all* problems at once, in apimachinery's
//! vocabulary, so one `kubectl apply` shows the user everything to fix.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use serde_json::Value;

use crate::backup::{self, DatabaseBackup};
use crate::cluster::{BackupSpec, DatabaseCluster, DatabaseClusterSpec, RetentionSpec};
use crate::field_error::{FieldError, Verdict};
use crate::image::ImageReference;
use crate::lookup::{Found, Lookup, Query};
use crate::names::{
    BACKUP_LABEL, INSTANCE_API_PORT, MAX_BACKUP_NAME_LEN, MAX_CLUSTER_NAME_LEN, OWNED_PARAMETERS, dns1035_label_error,
    is_owned_parameter,
};
use crate::quantity::{Quantity, format_bytes};
use crate::schedule::{self, Expression};

/// Fewest replicas a cluster may ask for.
pub const MIN_REPLICAS: i32 = 1;
/// Most replicas a cluster may ask for; beyond this a single StatefulSet is the wrong tool.
pub const MAX_REPLICAS: i32 = 9;
/// Smallest volume: below this no database initialises.
pub const MIN_STORAGE_BYTES: i64 = 1 << 20;
/// Largest volume stead provisions (64Ti).
pub const MAX_STORAGE_BYTES: i64 = 64 << 40;
/// Most postgresql.conf parameters one cluster may set.
pub const MAX_PARAMETERS: u32 = 128;
/// Longest parameter name PostgreSQL accepts (NAMEDATALEN - 1).
const MAX_PARAMETER_NAME: usize = 63;
/// Longest parameter value stead writes.
const MAX_PARAMETER_VALUE: usize = 4096;
/// The API server appends 5 random characters to `generateName`.
const GENERATED_SUFFIX_LEN: usize = 5;

/// Rules for CREATE: the name, then the whole spec.
pub fn validate_create(cluster: &DatabaseCluster) -> Verdict {
    let mut verdict = Verdict::default();
    validate_name(cluster, &mut verdict);
    validate_spec(&cluster.spec, &mut verdict);
    verdict
}

/// Rules for UPDATE, judged only on what the update changes.
///
/// Objects being deleted and updates that leave `spec` alone (labels,
/// finalizers, anything the controller writes) are always admitted: the
/// webhook must never block finalizer removal or ownership bookkeeping, even
/// for an object stored before today's rules existed.
pub fn validate_update(old: &DatabaseCluster, new: &DatabaseCluster) -> Verdict {
    let deleting = new.metadata.deletion_timestamp.is_some();
    let Some(mut verdict) = ratcheted_update(deleting, &old.spec, &new.spec, validate_spec, cluster_rule_depth) else {
        return Verdict::default();
    };
    validate_transition(&old.spec, &new.spec, &mut verdict);
    verdict
}

/// The spec rules of an UPDATE, ratcheted: `None` when the update is
/// admitted outright (the object is being deleted, or `spec` is unchanged),
/// else `rules` on the new spec, keeping only what the update changes (see
/// [`keep_changed`]; `depth` says what one rule's subject is).
pub(crate) fn ratcheted_update<S: serde::Serialize + PartialEq>(
    deleting: bool,
    old: &S,
    new: &S,
    rules: fn(&S, &mut Verdict),
    depth: fn(&[&str]) -> usize,
) -> Option<Verdict> {
    if deleting || old == new {
        return None;
    }
    let json = |spec: &S| serde_json::to_value(spec).unwrap_or(Value::Null);
    let mut spec_verdict = Verdict::default();
    rules(new, &mut spec_verdict);
    let mut verdict = Verdict::default();
    keep_changed(spec_verdict, &json(old), &json(new), depth, &mut verdict);
    Some(verdict)
}

/// Rules for DELETE: refused while `spec.deletionProtection` is true.
pub fn validate_delete(old: &DatabaseCluster) -> Verdict {
    let mut verdict = Verdict::default();
    if old.spec.is_deletion_protected() {
        verdict.errors.push(FieldError::forbidden(
            "spec.deletionProtection",
            "the cluster is protected against deletion; set spec.deletionProtection to false, then delete it",
        ));
    }
    verdict
}

/// Turns request JSON into a `DatabaseCluster`, naming the field that does not fit.
///
/// The API server has already checked the schema before validating webhooks
/// run, so this fails only for offline checks or a bypassed schema.
pub fn decode(object: &Value) -> Result<DatabaseCluster, FieldError> {
    decode_as(object)
}

/// [`decode`] for any of stead's kinds.
pub(crate) fn decode_as<T: serde::de::DeserializeOwned>(object: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize::<_, T>(object).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { "<object>".to_owned() } else { path };
        let value = lookup(object, &field).cloned().unwrap_or(Value::Null);
        let detail = err.into_inner().to_string();
        match detail.strip_prefix("missing field `") {
            Some(rest) => {
                let missing = rest.trim_end_matches('`');
                let full = if field == "<object>" { missing.to_owned() } else { format!("{field}.{missing}") };
                FieldError::required(full, "")
            }
            None => FieldError::invalid(field, value, detail),
        }
    })
}

fn validate_name(cluster: &DatabaseCluster, verdict: &mut Verdict) {
    validate_object_name(
        &cluster.metadata,
        MAX_CLUSTER_NAME_LEN,
        |name| {
            format!(
                "must be no more than {MAX_CLUSTER_NAME_LEN} characters, so that the StatefulSet's pod labels and the \
                 Service {name}-headless stay within Kubernetes' limits"
            )
        },
        verdict,
    );
}

/// `metadata.name` (or `generateName`) of an object whose children are
/// named after it: a DNS-1035 label of at most `max` characters; `too_long`
/// says why, given the name.
pub(crate) fn validate_object_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    max: usize,
    too_long: impl Fn(&str) -> String,
    verdict: &mut Verdict,
) {
    match (meta.name.as_deref(), meta.generate_name.as_deref()) {
        (Some(name), _) if !name.is_empty() => {
            if name.len() > max {
                verdict.errors.push(FieldError::invalid("metadata.name", name, too_long(name)));
            }
            if let Some(detail) = dns1035_label_error(name) {
                verdict.errors.push(FieldError::invalid("metadata.name", name, detail));
            }
        }
        (_, Some(prefix)) if !prefix.is_empty() => {
            let max = max - GENERATED_SUFFIX_LEN;
            if prefix.len() > max {
                verdict.errors.push(FieldError::invalid(
                    "metadata.generateName",
                    prefix,
                    format!("must be no more than {max} characters, leaving room for the 5 generated ones"),
                ));
            }
            // A generated name ends in an alphanumeric suffix, so only the start and the alphabet matter.
            if let Some(detail) = dns1035_label_error(&format!("{prefix}x")) {
                verdict.errors.push(FieldError::invalid("metadata.generateName", prefix, detail));
            }
        }
        _ => verdict.errors.push(FieldError::required("metadata.name", "name or generateName is required")),
    }
}

/// Rules on the spec alone, shared by create, update and the controller's guard.
pub fn validate_spec(spec: &DatabaseClusterSpec, verdict: &mut Verdict) {
    validate_image(&spec.image, verdict);
    if let Some(replicas) = spec.replicas {
        validate_replicas(replicas, verdict);
    }
    if let Some(port) = spec.port
        && validate_port("spec.port", port, verdict)
        && port == i32::from(INSTANCE_API_PORT)
    {
        verdict.errors.push(FieldError::invalid(
            "spec.port",
            port,
            format!(
                "{INSTANCE_API_PORT} is the port of stead's instance manager in every pod; choose another, such as 5432"
            ),
        ));
    }
    validate_parameters(spec.parameters(), verdict);
    if let Some(delay) = &spec.failover_delay
        && let Err(err) = crate::duration::parse(delay)
    {
        verdict.errors.push(FieldError::invalid("spec.failoverDelay", delay.as_str(), err.to_string()));
    }
    if let Some(lag) = spec.failover.as_ref().and_then(|f| f.max_lag_bytes)
        && lag < 0
    {
        verdict.errors.push(FieldError::invalid(
            "spec.failover.maxLagBytes",
            lag,
            "must be 0 or more bytes of WAL, such as 16777216 (16 MiB)",
        ));
    }
    if let Some(strategy) = &spec.primary_update_strategy
        && !crate::cluster::PRIMARY_UPDATE_STRATEGIES.contains(&strategy.as_str())
    {
        verdict.errors.push(FieldError::not_supported(
            "spec.primaryUpdateStrategy",
            strategy.as_str(),
            &crate::cluster::PRIMARY_UPDATE_STRATEGIES,
        ));
    }
    if let Some(method) = &spec.primary_update_method
        && !crate::cluster::PRIMARY_UPDATE_METHODS.contains(&method.as_str())
    {
        verdict.errors.push(FieldError::not_supported(
            "spec.primaryUpdateMethod",
            method.as_str(),
            &crate::cluster::PRIMARY_UPDATE_METHODS,
        ));
    }
    if spec.failover_allows_data_loss() {
        verdict.warnings.push(
            "spec.failover.allowDataLoss: true lets a failover promote a replica that lacks committed transactions; \
             they are lost"
                .to_owned(),
        );
    }
    if let Some(lag) = spec.replication.as_ref().and_then(|r| r.max_lag_bytes)
        && lag < 0
    {
        verdict.errors.push(FieldError::invalid(
            "spec.replication.maxLagBytes",
            lag,
            "must be 0 or more bytes of WAL, such as 16777216 (16 MiB)",
        ));
    }
    if let Some(resources) = &spec.resources {
        validate_resources("spec.resources", resources, verdict);
    }
    validate_storage_size(&spec.storage.size, verdict);
    if let Some(class) = &spec.storage.storage_class_name
        && let Some(detail) = dns1123_subdomain_error(class)
    {
        verdict.errors.push(FieldError::invalid("spec.storage.storageClassName", class.as_str(), detail));
    }
    if let Some(backup) = &spec.backup {
        validate_backup(backup, verdict);
    }
    if let Some(name) = spec.restore_source() {
        validate_backup_name("spec.bootstrap.fromBackup.name", name, verdict);
    }
}

/// `spec.backup`: a schedule that fires, in a known time zone, a retention
/// that keeps something, a known target.
fn validate_backup(backup: &BackupSpec, verdict: &mut Verdict) {
    if let Some(text) = &backup.schedule {
        match Expression::parse(text) {
            Err(err) => {
                verdict.errors.push(FieldError::invalid("spec.backup.schedule", text.as_str(), err.to_string()))
            }
            Ok(expression) => {
                if let Some(interval) = expression.min_interval().filter(|i| *i < schedule::FREQUENT) {
                    verdict.warnings.push(format!(
                        "spec.backup.schedule: {text:?} takes backups as often as every {}; more often than every \
                         {} minutes piles up snapshots and loads the storage, consider \"0 * * * *\" (hourly) or \
                         less often",
                        minutes(interval),
                        schedule::FREQUENT.as_secs() / 60
                    ));
                }
            }
        }
    }
    if let Some(zone) = &backup.time_zone
        && let Err(err) = schedule::time_zone(zone)
    {
        verdict.errors.push(FieldError::invalid("spec.backup.timeZone", zone.as_str(), err.to_string()));
    }
    if let Some(retention) = &backup.retention {
        validate_retention(retention, verdict);
    }
    if let Some(class) = &backup.volume_snapshot_class_name
        && let Some(detail) = dns1123_subdomain_error(class)
    {
        verdict.errors.push(FieldError::invalid("spec.backup.volumeSnapshotClassName", class.as_str(), detail));
    }
    if let Some(target) = &backup.target
        && !backup::TARGETS.contains(&target.as_str())
    {
        verdict.errors.push(FieldError::not_supported("spec.backup.target", target.as_str(), &backup::TARGETS));
    }
}

/// `5 minutes`, `1 minute`.
fn minutes(interval: std::time::Duration) -> String {
    match interval.as_secs() / 60 {
        1 => "1 minute".to_owned(),
        n => format!("{n} minutes"),
    }
}

fn validate_retention(retention: &RetentionSpec, verdict: &mut Verdict) {
    const FIELD: &str = "spec.backup.retention";
    if retention.keep_last.is_none() && retention.max_age.is_none() {
        verdict.errors.push(FieldError::required(
            FIELD,
            "set keepLast, maxAge or both, such as {keepLast: 7} or {maxAge: 30d}; remove retention to keep every \
             backup",
        ));
    }
    if let Some(keep) = retention.keep_last
        && keep < 1
    {
        verdict.errors.push(FieldError::invalid(
            format!("{FIELD}.keepLast"),
            keep,
            "must be 1 or more, such as 7: a retention that keeps no backup deletes every one it takes",
        ));
    }
    if let Some(age) = &retention.max_age {
        match crate::duration::parse_age(age) {
            Err(err) => verdict.errors.push(FieldError::invalid(format!("{FIELD}.maxAge"), age.as_str(), err.to_string())),
            Ok(d) if d.is_zero() => verdict.errors.push(FieldError::invalid(
                format!("{FIELD}.maxAge"),
                age.as_str(),
                "must be longer than 0, such as 30d or 12h: a retention that keeps no backup deletes every one it takes",
            )),
            Ok(_) => {}
        }
    }
}

/// A DatabaseBackup name: a DNS-1123 subdomain short enough to be a label value.
pub(crate) fn validate_backup_name(field: &str, name: &str, verdict: &mut Verdict) {
    if name.len() > MAX_BACKUP_NAME_LEN {
        verdict.errors.push(FieldError::invalid(
            field,
            name,
            format!(
                "must be no more than {MAX_BACKUP_NAME_LEN} characters: a backup's name is the value of the label \
                 {BACKUP_LABEL} on its VolumeSnapshots"
            ),
        ));
    } else if let Some(detail) = dns1123_subdomain_error(name) {
        verdict.errors.push(FieldError::invalid(field, name, detail));
    }
}

/// The reads [`validate_create_with`] makes for `cluster` in `namespace`:
/// the backup it is restored from, if any.
pub fn lookups_for_create(cluster: &DatabaseCluster, namespace: &str) -> Vec<Query> {
    cluster
        .spec
        .restore_source()
        .map(|name| Query::Backup { namespace: namespace.to_owned(), name: name.to_owned() })
        .into_iter()
        .collect()
}

/// CREATE with the rules that need the API: [`validate_create`], and a
/// `bootstrap.fromBackup` must name a Completed backup that fits the storage.
pub fn validate_create_with(cluster: &DatabaseCluster, namespace: &str, lookup: &dyn Lookup) -> Verdict {
    let mut verdict = validate_create(cluster);
    let Some(name) = cluster.spec.restore_source() else {
        return verdict;
    };
    const FIELD: &str = "spec.bootstrap.fromBackup.name";
    match lookup.backup(namespace, name) {
        Found::Skipped => {}
        Found::Unknown(reason) => verdict.warnings.push(format!(
            "{FIELD}: could not check that DatabaseBackup {name:?} is Completed and fits spec.storage.size ({reason}); \
             the restore waits until it is"
        )),
        Found::No => verdict.errors.push(FieldError::not_found(
            FIELD,
            name,
            format!(
                "no DatabaseBackup {name:?} in namespace {namespace:?}; name a Completed backup of this namespace \
                 (kubectl get dbb -n {namespace})"
            ),
        )),
        Found::Yes(backup) => validate_restore_source(&cluster.spec, &backup, &mut verdict),
    }
    verdict
}

/// The backup a new cluster restores must be Completed, hold snapshots, and
/// fit the new volumes.
fn validate_restore_source(spec: &DatabaseClusterSpec, backup: &DatabaseBackup, verdict: &mut Verdict) {
    const FIELD: &str = "spec.bootstrap.fromBackup.name";
    let name = backup.metadata.name.as_deref().unwrap_or_default();
    if !backup.is_completed() {
        verdict.errors.push(FieldError::invalid(
            FIELD,
            name,
            format!(
                "DatabaseBackup {name:?} is {}, not Completed; only a completed backup can be restored: wait for it \
                 to complete, or name another (kubectl get dbb)",
                backup.phase()
            ),
        ));
        return;
    }
    if backup.snapshots().is_empty() {
        verdict.errors.push(FieldError::invalid(
            FIELD,
            name,
            format!("DatabaseBackup {name:?} records no VolumeSnapshot to restore from; name another backup"),
        ));
        return;
    }
    let Ok(storage) = Quantity::parse(&spec.storage.size) else {
        return; // Reported by validate_storage_size.
    };
    for snapshot in backup.snapshots() {
        let Some(ApiQuantity(raw)) = &snapshot.restore_size else {
            verdict.warnings.push(format!(
                "{FIELD}: VolumeSnapshot {:?} of DatabaseBackup {name:?} reports no restoreSize; make sure \
                 spec.storage.size ({}) is at least the size of the volume it was taken of",
                snapshot.name, spec.storage.size
            ));
            continue;
        };
        if let Ok(size) = Quantity::parse(raw)
            && size > storage
        {
            verdict.errors.push(FieldError::invalid(
                "spec.storage.size",
                spec.storage.size.as_str(),
                format!(
                    "is smaller than VolumeSnapshot {:?} of DatabaseBackup {name:?} ({raw}); a volume restored from \
                     it needs at least that much: set spec.storage.size to {raw} or more",
                    snapshot.name
                ),
            ));
        }
    }
}

/// `spec.postgresql.parameters`: names PostgreSQL would accept, none that
/// stead sets itself, and values that cannot break out of their line in
/// postgresql.conf.
fn validate_parameters(parameters: &BTreeMap<String, String>, verdict: &mut Verdict) {
    const FIELD: &str = "spec.postgresql.parameters";
    if parameters.len() > MAX_PARAMETERS as usize {
        verdict.errors.push(FieldError::invalid(
            FIELD,
            format!("{} parameters", parameters.len()),
            format!("must have at most {MAX_PARAMETERS} entries"),
        ));
        return;
    }
    for (name, value) in parameters {
        let path = format!("{FIELD}[{name}]");
        if is_owned_parameter(name) {
            verdict.errors.push(FieldError::forbidden(
                path,
                format!(
                    "stead sets {} itself for replication and its own sockets; it sets: {}",
                    name.to_ascii_lowercase(),
                    OWNED_PARAMETERS.join(", ")
                ),
            ));
            continue;
        }
        if let Some(detail) = parameter_name_error(name) {
            verdict.errors.push(FieldError::invalid(path, name.as_str(), detail));
            continue;
        }
        if value.len() > MAX_PARAMETER_VALUE {
            verdict.errors.push(FieldError::invalid(
                path,
                format!("{} characters", value.len()),
                format!("must be no more than {MAX_PARAMETER_VALUE} characters"),
            ));
        } else if value.chars().any(char::is_control) {
            verdict.errors.push(FieldError::invalid(
                path,
                value.as_str(),
                "must be one line without control characters, such as 256MB or 'pg_stat_statements'",
            ));
        }
    }
}

/// Why a name is not a PostgreSQL parameter name; `None` when it is one.
///
/// A name is an identifier, or two joined by a dot for an extension's
/// setting (`pg_stat_statements.max`), in lower case as postgres stores it.
fn parameter_name_error(name: &str) -> Option<String> {
    let identifier = |part: &str| {
        part.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    if name.len() > MAX_PARAMETER_NAME {
        Some(format!("must be no more than {MAX_PARAMETER_NAME} characters"))
    } else if parts.len() > 2 || !parts.iter().all(|p| identifier(p)) {
        Some(
            "must be a PostgreSQL parameter name in lower case: letters, digits and '_', optionally prefixed by an \
             extension name and '.', such as work_mem or pg_stat_statements.max"
                .to_owned(),
        )
    } else {
        None
    }
}

/// The examples an image rule's messages give, per kind.
pub(crate) struct ImageExamples {
    /// A pinned tag, such as `postgres:17.2`.
    pub tag: &'static str,
    /// A reference by digest, such as `registry.example.com/db/postgres@sha256:<digest>`.
    pub digest: &'static str,
    /// What a floating tag lets drift, such as `database versions`.
    pub drifts: &'static str,
}

const DATABASE_IMAGES: ImageExamples = ImageExamples {
    tag: "postgres:17.2",
    digest: "registry.example.com/db/postgres@sha256:<digest>",
    drifts: "database versions",
};

fn validate_image(image: &str, verdict: &mut Verdict) {
    validate_image_at("spec.image", image, &DATABASE_IMAGES, verdict);
}

/// An image reference at `field`: required, well-formed (refused otherwise),
/// pinned (a warning otherwise).
pub(crate) fn validate_image_at(field: &str, image: &str, examples: &ImageExamples, verdict: &mut Verdict) {
    let ImageExamples { tag, digest, drifts } = examples;
    if image.is_empty() {
        verdict.errors.push(FieldError::required(field, format!("an image reference such as {tag}")));
        return;
    }
    match ImageReference::parse(image) {
        Ok(reference) if reference.is_floating() => verdict.warnings.push(format!(
            "{field}: {image:?} does not pin a version (no tag, or :latest); pods may start different {drifts} after \
             a restart — pin a tag such as {tag} or a digest"
        )),
        Ok(_) => {}
        Err(err) => verdict.errors.push(FieldError::invalid(
            field,
            image,
            format!("must be an image reference such as {tag} or {digest}: {err}"),
        )),
    }
}

/// A port number at `field`: 1..=65535. Returns whether it is one.
pub(crate) fn validate_port(field: &str, port: i32, verdict: &mut Verdict) -> bool {
    let ok = (1..=65535).contains(&port);
    if !ok {
        verdict.errors.push(FieldError::invalid(field, port, "must be between 1 and 65535, inclusive"));
    }
    ok
}

fn validate_replicas(replicas: i32, verdict: &mut Verdict) {
    if !(MIN_REPLICAS..=MAX_REPLICAS).contains(&replicas) {
        verdict.errors.push(FieldError::invalid(
            "spec.replicas",
            replicas,
            format!("must be between {MIN_REPLICAS} and {MAX_REPLICAS}, inclusive"),
        ));
    } else if replicas % 2 == 0 {
        verdict.warnings.push(format!(
            "spec.replicas: {replicas} is even; an odd count ({}) survives the same number of failures with one pod fewer",
            replicas - 1
        ));
    }
}

fn validate_storage_size(size: &str, verdict: &mut Verdict) {
    const FIELD: &str = "spec.storage.size";
    if size.is_empty() {
        verdict.errors.push(FieldError::required(FIELD, "a Kubernetes quantity such as 10Gi"));
        return;
    }
    let quantity = match Quantity::parse(size) {
        Ok(q) => q,
        Err(err) => {
            verdict.errors.push(FieldError::invalid(
                FIELD,
                size,
                format!("must be a Kubernetes quantity such as 10Gi ({err})"),
            ));
            return;
        }
    };
    let bounds = format!(
        "between {} and {}",
        format_bytes(i128::from(MIN_STORAGE_BYTES)),
        format_bytes(i128::from(MAX_STORAGE_BYTES))
    );
    let (min, max) = (Quantity::from_units(MIN_STORAGE_BYTES), Quantity::from_units(MAX_STORAGE_BYTES));
    if !quantity.is_whole() {
        verdict.errors.push(FieldError::invalid(
            FIELD,
            size,
            format!("must be a whole number of bytes {bounds}, such as 10Gi"),
        ));
    } else if quantity < min || quantity > max {
        verdict.errors.push(FieldError::invalid(FIELD, size, format!("must be {bounds}")));
    }
}

/// Resource requirements at `field` (`spec.resources`): every quantity
/// parses exactly as the API server parses it, each request is at most its
/// limit, and no dynamic resource claims.
pub(crate) fn validate_resources(field: &str, resources: &ResourceRequirements, verdict: &mut Verdict) {
    let requests = parse_resource_list(&format!("{field}.requests"), resources.requests.as_ref(), verdict);
    let limits = parse_resource_list(&format!("{field}.limits"), resources.limits.as_ref(), verdict);
    for (name, (raw, request)) in &requests {
        if let Some((raw_limit, limit)) = limits.get(name)
            && request > limit
        {
            verdict.errors.push(FieldError::invalid(
                format!("{field}.requests[{name}]"),
                raw.as_str(),
                format!("must be less than or equal to {name} limit of {raw_limit}"),
            ));
        }
    }
    if resources.claims.as_ref().is_some_and(|c| !c.is_empty()) {
        verdict.errors.push(FieldError::forbidden(
            format!("{field}.claims"),
            "dynamic resource claims are not supported; use requests and limits",
        ));
    }
}

/// Parses one requests/limits map, reporting every entry the API server
/// would refuse when it validates the StatefulSet's pod template.
fn parse_resource_list(
    field: &str,
    list: Option<&BTreeMap<String, ApiQuantity>>,
    verdict: &mut Verdict,
) -> BTreeMap<String, (String, Quantity)> {
    let mut parsed = BTreeMap::new();
    for (name, ApiQuantity(raw)) in list.into_iter().flatten() {
        let path = format!("{field}[{name}]");
        if let Some(detail) = resource_name_error(name) {
            verdict.errors.push(FieldError::invalid(path.clone(), name.as_str(), detail));
            continue;
        }
        match Quantity::parse(raw) {
            Err(err) => verdict.errors.push(FieldError::invalid(
                path,
                raw.as_str(),
                format!("must be a Kubernetes quantity such as 500m or 1Gi ({err})"),
            )),
            Ok(q) if q.is_negative() => {
                verdict.errors.push(FieldError::invalid(path, raw.as_str(), "must be greater than or equal to 0"));
            }
            Ok(q) => {
                parsed.insert(name.clone(), (raw.clone(), q));
            }
        }
    }
    parsed
}

/// Resource names a pod accepts: the standard ones, hugepages, or a
/// domain-qualified extended resource.
fn resource_name_error(name: &str) -> Option<String> {
    const STANDARD: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];
    let ok = STANDARD.contains(&name)
        || name.strip_prefix("hugepages-").is_some_and(|size| Quantity::parse(size).is_ok())
        || name.split_once('/').is_some_and(|(domain, rest)| {
            dns1123_subdomain_error(domain).is_none() && !rest.is_empty() && rest.len() <= 63
        });
    (!ok).then(|| {
        "must be cpu, memory, ephemeral-storage, hugepages-<size>, or a domain-qualified extended resource such as \
         example.com/gpu"
            .to_owned()
    })
}

/// Why a string is not a DNS-1123 subdomain (StorageClass and domain names).
pub(crate) fn dns1123_subdomain_error(value: &str) -> Option<String> {
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    if value.len() > 253 {
        return Some("must be no more than 253 characters".to_owned());
    }
    (!value.split('.').all(label_ok)).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must \
         start and end with an alphanumeric character (e.g. 'example.com')"
            .to_owned()
    })
}

/// Rules that compare the old spec with the new one.
fn validate_transition(old: &DatabaseClusterSpec, new: &DatabaseClusterSpec, verdict: &mut Verdict) {
    let major = |image: &str| ImageReference::parse(image).ok().and_then(|r| r.major_version());
    if let (Some(from), Some(to)) = (major(&old.image), major(&new.image))
        && from != to
    {
        verdict.errors.push(FieldError::forbidden(
            "spec.image",
            format!(
                "changes the PostgreSQL major version from {from} to {to} ({:?} to {:?}); a major upgrade needs \
                 pg_upgrade or a dump and restore, which stead does not do yet. Keep major version {from} (a minor \
                 update such as {from}.x is a rolling restart), or restore a backup into a new cluster of version {to}",
                old.image, new.image
            ),
        ));
    }
    if let (Ok(old_size), Ok(new_size)) = (Quantity::parse(&old.storage.size), Quantity::parse(&new.storage.size)) {
        if new_size < old_size {
            verdict.errors.push(FieldError::forbidden(
                "spec.storage.size",
                format!(
                    "may not shrink from {:?} to {:?}; volumes can grow but never shrink",
                    old.storage.size, new.storage.size
                ),
            ));
        } else if new_size > old_size {
            verdict.warnings.push(format!(
                "spec.storage.size: growing from {} to {} expands every PersistentVolumeClaim; the StorageClass must \
                 allow volume expansion",
                old.storage.size, new.storage.size
            ));
        }
    }
    if old.storage.storage_class_name != new.storage.storage_class_name {
        let shown = |v: &Option<String>| v.as_deref().map_or_else(|| "<unset>".to_owned(), |s| format!("{s:?}"));
        verdict.errors.push(FieldError::invalid(
            "spec.storage.storageClassName",
            new.storage.storage_class_name.clone().map_or(Value::Null, Value::from),
            format!(
                "field is immutable (was {}): existing volumes keep the class they were created with",
                shown(&old.storage.storage_class_name)
            ),
        ));
    }
    if old.restore_source() != new.restore_source() {
        let shown = |v: Option<&str>| v.map_or_else(|| "<unset>".to_owned(), |s| format!("{s:?}"));
        verdict.errors.push(FieldError::forbidden(
            "spec.bootstrap.fromBackup",
            format!(
                "is immutable (was {}, now {}): it says which backup the cluster was created from; to restore a \
                 backup, create a new DatabaseCluster with spec.bootstrap.fromBackup",
                shown(old.restore_source()),
                shown(new.restore_source())
            ),
        ));
    }
    let (old_replicas, new_replicas) = (old.effective_replicas(), new.effective_replicas());
    if new_replicas < old_replicas && (MIN_REPLICAS..=MAX_REPLICAS).contains(&new_replicas) {
        verdict.warnings.push(format!(
            "spec.replicas: scaling down from {old_replicas} to {new_replicas}; the volumes of {} are retained, not \
             deleted",
            retained_ordinals(new_replicas, old_replicas)
        ));
    }
}

/// The ordinals `new..old` whose volumes a scale-down keeps, in words.
///
/// The stored count is not trusted to be in range (an object stored before
/// today's rules, or a bypassed schema), so the work is constant whatever the
/// two numbers are: a short list is spelled out, a long one is given as a range.
fn retained_ordinals(new: i32, old: i32) -> String {
    const SPELLED_OUT: i64 = MAX_REPLICAS as i64;
    let (first, last) = (i64::from(new), i64::from(old) - 1);
    if last - first < SPELLED_OUT {
        let list: Vec<String> = (first..=last).map(|i| i.to_string()).collect();
        format!("ordinal{} {}", if first == last { "" } else { "s" }, list.join(", "))
    } else {
        format!("ordinals {first} to {last}")
    }
}

/// Ratcheting on UPDATE: keeps of `spec_verdict` (the new spec judged on
/// its own) only the errors and warnings about parts of the spec that the
/// update changes. A problem in a part it does not touch was already stored;
/// refusing now would block unrelated edits. `depth` says how many segments
/// of a field path (`spec` included) make one rule's subject.
fn keep_changed(spec_verdict: Verdict, old: &Value, new: &Value, depth: fn(&[&str]) -> usize, verdict: &mut Verdict) {
    verdict.errors.extend(spec_verdict.errors.into_iter().filter(|e| changed(old, new, &e.field, depth)));
    verdict.warnings.extend(
        spec_verdict.warnings.into_iter().filter(|w| w.split(':').next().is_some_and(|f| changed(old, new, f, depth))),
    );
}

/// A cluster rule's subject: `spec.storage.<field>` or `spec.<field>` (all
/// of `spec.resources` counts as one, since requests are judged against limits).
fn cluster_rule_depth(segments: &[&str]) -> usize {
    if segments.get(1) == Some(&"storage") { 3 } else { 2 }
}

/// Whether the part of the spec a field error belongs to differs between old and new.
fn changed(old: &Value, new: &Value, field: &str, depth: fn(&[&str]) -> usize) -> bool {
    let segments: Vec<&str> =
        field.split('.').map(|s| s.split('[').next().unwrap_or(s)).filter(|s| !s.is_empty()).collect();
    let depth = depth(&segments);
    let key: Vec<&str> = segments.iter().skip(1).take(depth - 1).copied().collect();
    let pick = |v: &Value| key.iter().try_fold(v, |acc, k| acc.get(*k)).cloned();
    pick(old) != pick(new)
}

/// Finds a value by a serde_path_to_error path (`spec.storage.size`, `spec.resources.requests.cpu`).
fn lookup<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(object, |acc, key| match acc {
        Value::Array(items) => {
            key.trim_matches(|c| c == '[' || c == ']').parse::<usize>().ok().and_then(|i| items.get(i))
        }
        _ => acc.get(key),
    })
}
