//! Names and labels shared by the webhook's name rule and the controller's
//! children, so the length limit and the names it protects cannot drift apart.

/// Suffix of the headless Service that gives each pod a stable DNS name.
pub const HEADLESS_SUFFIX: &str = "-headless";

/// Longest cluster name every child name fits in.
///
/// The StatefulSet named after the cluster stamps each pod with the label
/// `controller-revision-hash: <name>-<10 char hash>`; label values are at most
/// 63 characters, so the StatefulSet name (and thus the cluster name) is at
/// most 52. `<name>-headless` (61) is then a valid Service name as well.
pub const MAX_CLUSTER_NAME_LEN: usize = 52;

/// Finalizer that lets the controller run its cleanup before the cluster goes.
pub const FINALIZER: &str = "stead.dev/finalizer";

/// Field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "stead-controller";

/// `app.kubernetes.io/name` of everything stead creates.
pub const APP_NAME: &str = "databasecluster";

/// `app.kubernetes.io/managed-by` of everything stead creates.
pub const MANAGED_BY: &str = "stead-controller";

/// `app.kubernetes.io/component` of the database pods.
pub const COMPONENT: &str = "database";

/// Name of the headless Service of a cluster.
pub fn headless_service_name(cluster: &str) -> String {
    format!("{cluster}{HEADLESS_SUFFIX}")
}

/// Suffix of the Secret holding the database superuser's credentials.
pub const CREDENTIALS_SUFFIX: &str = "-credentials";

/// Name of the Secret with the superuser credentials of a cluster. It
/// outlives the cluster, like the volumes, so a recreated cluster finds the
/// password its retained data was initialised with.
pub fn credentials_secret_name(cluster: &str) -> String {
    format!("{cluster}{CREDENTIALS_SUFFIX}")
}

/// Key of the superuser's name in the credentials Secret.
pub const USERNAME_KEY: &str = "username";

/// Key of the superuser's password in the credentials Secret.
pub const PASSWORD_KEY: &str = "password";

/// Key of the replication role's password in the credentials Secret.
pub const REPLICATION_PASSWORD_KEY: &str = "replication-password";

/// Key of the bearer token the controller presents to every instance manager.
pub const CONTROLLER_TOKEN_KEY: &str = "controller-token";

/// The superuser when the Secret names none (the official image's).
pub const DEFAULT_SUPERUSER: &str = "postgres";

/// The role replicas stream and clone as (`REPLICATION LOGIN`, nothing else).
pub const REPLICATION_USER: &str = "streaming_replica";

/// Port of the instance manager's HTTPS API in every database pod.
pub const INSTANCE_API_PORT: u16 = 8000;

/// postgresql.conf parameters the instance manager sets itself.
///
/// Replication, the listening sockets and the location of the files stead
/// writes depend on them, so a user's value is never used: the webhook refuses
/// them in the cluster's parameters, and the instance manager, which passes
/// them on postgres's command line (the highest precedence, above
/// `ALTER SYSTEM`), drops any that reach it. Lower case, sorted.
pub const OWNED_PARAMETERS: &[&str] = &[
    "cluster_name",
    "config_file",
    "data_directory",
    "hba_file",
    "hot_standby",
    "listen_addresses",
    "max_replication_slots",
    "max_wal_senders",
    "port",
    "primary_conninfo",
    "primary_slot_name",
    "unix_socket_directories",
    "wal_keep_size",
    "wal_level",
    "wal_log_hints",
];

/// Whether `parameter` (any case, as postgres compares names) is one stead owns.
pub fn is_owned_parameter(parameter: &str) -> bool {
    OWNED_PARAMETERS.iter().any(|owned| owned.eq_ignore_ascii_case(parameter))
}

/// Label on every DatabaseBackup and VolumeSnapshot stead makes: the
/// DatabaseCluster it backs up. Retention selects a cluster's backups by it.
pub const BACKUP_CLUSTER_LABEL: &str = "stead.dev/cluster";

/// Label on every VolumeSnapshot stead makes: the DatabaseBackup it belongs to
/// (which is also its owner). A label value is at most 63 characters, hence
/// [`MAX_BACKUP_NAME_LEN`].
pub const BACKUP_LABEL: &str = "stead.dev/backup";

/// Annotation on every VolumeSnapshot stead makes: the cluster's `spec` as
/// JSON when the snapshot was taken, so a volume can be understood (image,
/// parameters, size) even after the cluster is gone.
pub const CLUSTER_SPEC_ANNOTATION: &str = "stead.dev/cluster-spec";

/// Annotation on the VolumeSnapshot of a hot backup's data volume: the
/// `backup_label` file `pg_backup_stop` returned, kept for a restore from a
/// WAL archive. Without one a restore does not use it (recovery from it
/// needs WAL written after the snapshot was cut); the atomic snapshot's own
/// checkpoint makes it consistent by crash recovery.
pub const BACKUP_LABEL_FILE_ANNOTATION: &str = "stead.dev/backup-label";

/// Annotation beside [`BACKUP_LABEL_FILE_ANNOTATION`]: the `tablespace_map`
/// file `pg_backup_stop` returned, when there are tablespaces.
pub const TABLESPACE_MAP_ANNOTATION: &str = "stead.dev/tablespace-map";

/// Longest DatabaseBackup name: it is the value of [`BACKUP_LABEL`].
pub const MAX_BACKUP_NAME_LEN: usize = 63;

/// Length of the time stamp `yyyymmddhhmm` of a scheduled backup's name.
const SCHEDULED_STAMP_LEN: usize = 12;

/// Name of the DatabaseBackup the scheduler creates for the slot `slot`:
/// `<cluster>-<yyyymmddhhmm>`, the slot in UTC (local time repeats an hour
/// each autumn). Deterministic, so a second attempt for the same slot meets
/// AlreadyExists instead of taking a second backup. A cluster name longer
/// than 50 characters is cut to 50 so that the name fits a label value; the
/// scheduler must then check `spec.cluster` of an existing backup.
pub fn scheduled_backup_name(cluster: &str, slot: jiff::Timestamp) -> String {
    let keep = MAX_BACKUP_NAME_LEN - SCHEDULED_STAMP_LEN - 1;
    let prefix: String = cluster.chars().take(keep).collect();
    let prefix = prefix.trim_end_matches('-');
    format!("{prefix}-{}", slot.strftime("%Y%m%d%H%M"))
}

/// Labels that select the pods of one cluster; also the status selector.
pub fn selector_labels(cluster: &str) -> std::collections::BTreeMap<String, String> {
    selector_labels_of(APP_NAME, cluster)
}

/// The selector labels of any stead kind: `app.kubernetes.io/name` is the
/// kind's value (`databasecluster`, `app`), `app.kubernetes.io/instance` the
/// object's name.
pub fn selector_labels_of(kind_value: &str, instance: &str) -> std::collections::BTreeMap<String, String> {
    [
        ("app.kubernetes.io/instance".to_owned(), instance.to_owned()),
        ("app.kubernetes.io/name".to_owned(), kind_value.to_owned()),
    ]
    .into_iter()
    .collect()
}

/// `selector_labels` rendered as a label selector string, for `.status.selector`.
pub fn selector_string(cluster: &str) -> String {
    label_selector_string(&selector_labels(cluster))
}

/// Labels rendered as an equality-based label selector, sorted by key:
/// `a=1,b=2`, as `.status.selector` of the scale subresource wants it.
pub fn label_selector_string(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Every recommended label a child carries.
pub fn child_labels(cluster: &str) -> std::collections::BTreeMap<String, String> {
    let mut labels = selector_labels(cluster);
    labels.insert("app.kubernetes.io/managed-by".to_owned(), MANAGED_BY.to_owned());
    labels.insert("app.kubernetes.io/component".to_owned(), COMPONENT.to_owned());
    labels
}

/// Why a string is not a DNS-1035 label, in apimachinery's words; `None` when it is one.
pub fn dns1035_label_error(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let well_formed = !bytes.is_empty()
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (!well_formed).then(|| {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic \
         character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123')"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn dns1035_table() {
        let rows = [
            ("orders", true),
            ("a", true),
            ("a1", true),
            ("a-b-c", true),
            ("", false),
            ("1abc", false),
            ("-abc", false),
            ("abc-", false),
            ("Orders", false),
            ("or_ders", false),
            ("or.ders", false),
            ("ordérs", false),
        ];
        for (name, ok) in rows {
            assert_eq!(dns1035_label_error(name).is_none(), ok, "{name:?}");
        }
    }

    #[test]
    fn limit_keeps_every_child_name_valid() {
        let name = "a".repeat(MAX_CLUSTER_NAME_LEN);
        assert!(headless_service_name(&name).len() <= 63);
        // Secret names are DNS subdomains: up to 253 characters.
        assert!(credentials_secret_name(&name).len() <= 253);
        // controller-revision-hash label value: "<sts>-<hash>" with a 10 char hash.
        assert!(format!("{name}-0123456789").len() <= 63);
    }

    #[test]
    fn scheduled_backup_names_are_deterministic_and_fit_a_label() {
        let slot: jiff::Timestamp = "2025-03-30T01:30:00Z".parse().unwrap();
        assert_eq!(scheduled_backup_name("orders", slot), "orders-202503300130");
        let long = "a".repeat(MAX_CLUSTER_NAME_LEN);
        let name = scheduled_backup_name(&long, slot);
        assert_eq!(name.len(), MAX_BACKUP_NAME_LEN);
        assert!(dns1035_label_error(&name).is_none(), "{name}");
        // A cut that ends in '-' drops it, so the name stays a DNS label.
        let dashed = format!("{}-b", "a".repeat(49));
        assert_eq!(scheduled_backup_name(&dashed, slot), format!("{}-202503300130", "a".repeat(49)));
    }

    #[test]
    fn credentials_secret_is_named_after_the_cluster() {
        assert_eq!(credentials_secret_name("orders"), "orders-credentials");
    }

    #[test]
    fn owned_parameters_are_sorted_lower_case_and_unique() {
        let mut sorted = OWNED_PARAMETERS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, OWNED_PARAMETERS);
        assert!(OWNED_PARAMETERS.iter().all(|p| p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        assert!(is_owned_parameter("Wal_Level"));
        assert!(!is_owned_parameter("work_mem"));
    }

    #[test]
    fn selector_string_is_sorted_and_stable() {
        assert_eq!(
            selector_string("orders"),
            "app.kubernetes.io/instance=orders,app.kubernetes.io/name=databasecluster"
        );
        assert_eq!(child_labels("x").len(), 4);
    }
}
