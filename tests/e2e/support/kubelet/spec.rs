//! What a container's spec asks for, resolved for a local process: the
//! program and arguments, the environment, and the host directory behind
//! each path the container sees. Pure functions over the Pod and the data
//! of the Secrets and ConfigMaps it names, so they are table-tested.
//!
//! There is no mount namespace: a container path is *rewritten* to the host
//! directory behind the longest `mountPath` that covers it, in `command`,
//! `args` and literal `env` values. `/usr/local/bin/stead-*` (what the stead
//! image ships) becomes the binary of the same name that cargo built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// Where the stead image keeps its binaries.
pub const IMAGE_BIN_DIR: &str = "/usr/local/bin";
/// Prefix of the binaries the stand-in takes from cargo's output.
pub const STEAD_BINARY_PREFIX: &str = "stead-";

/// The data of Secrets and ConfigMaps by name; `None` when it does not exist.
pub type Sources = BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>;

/// The uid of each claim a pod mounts, by claim name; `None` for a claim that
/// does not exist or is being deleted.
pub type ClaimUids = BTreeMap<String, Option<String>>;

/// The host paths behind one container's mounts, and the built stead binaries.
#[derive(Debug, Clone)]
pub struct PathMap {
    /// `(mountPath, host directory)`.
    mounts: Vec<(String, PathBuf)>,
    bin_dir: PathBuf,
}

impl PathMap {
    /// No mounts yet; `bin_dir` holds stead-instance & co.
    pub fn new(bin_dir: &Path) -> Self {
        Self { mounts: Vec::new(), bin_dir: bin_dir.to_path_buf() }
    }

    /// The container path `mount_path` is the host directory `host`.
    pub fn mount(&mut self, mount_path: &str, host: &Path) {
        let trimmed = mount_path.trim_end_matches('/');
        self.mounts.push((if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }, host.to_path_buf()));
    }

    /// The host path of `path` when a mount covers it.
    pub fn host_path(&self, path: &str) -> Option<PathBuf> {
        let (mount, host) =
            self.mounts.iter().filter(|(mount, _)| covers(mount, path)).max_by_key(|(mount, _)| mount.len())?;
        let rest = path[mount.len()..].trim_start_matches('/');
        Some(if rest.is_empty() { host.clone() } else { host.join(rest) })
    }

    /// `value` with a leading container path replaced by its host path;
    /// anything no mount covers is left as it is.
    pub fn rewrite(&self, value: &str) -> String {
        self.host_path(value).map_or_else(|| value.to_owned(), |path| path.display().to_string())
    }

    /// A program or argument: a stead binary of the image, else [`Self::rewrite`].
    pub fn program(&self, value: &str) -> String {
        if let Some(name) = value.strip_prefix(IMAGE_BIN_DIR).and_then(|rest| rest.strip_prefix('/'))
            && name.starts_with(STEAD_BINARY_PREFIX)
            && !name.contains('/')
        {
            return self.bin_dir.join(name).display().to_string();
        }
        self.rewrite(value)
    }
}

/// Whether `mount` is `path` or a parent directory of it.
fn covers(mount: &str, path: &str) -> bool {
    mount == "/" && path.starts_with('/')
        || path == mount
        || path.strip_prefix(mount).is_some_and(|rest| rest.starts_with('/'))
}

/// What `status.podIP` and `status.hostIP` are.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub pod_ip: String,
    pub host_ip: String,
}

/// The value of a downward API `fieldRef`.
pub fn field_value(pod: &Pod, path: &str, addresses: &Addresses) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => addresses.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => addresses.host_ip.clone(),
        other => {
            if let Some(value) = keyed("metadata.labels['", meta.labels.as_ref()) {
                value
            } else if let Some(value) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
                value
            } else {
                return Err(format!("the stand-in kubelet does not support fieldRef {other:?}"));
            }
        }
    };
    Ok(value)
}

/// Replaces `$(NAME)` with earlier variables, as the kubelet does; `$$` is a
/// literal `$`, and an unknown reference stays as written.
pub fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().rev().find(|(key, _)| key == name) {
                Some((_, found)) => out.push_str(found),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn source_value(
    sources: &Sources,
    kind: &str,
    name: &str,
    key: &str,
    optional: bool,
    namespace: &str,
) -> Result<Option<String>, String> {
    match sources.get(name) {
        Some(Some(data)) => match data.get(key) {
            Some(bytes) => Ok(Some(String::from_utf8_lossy(bytes).into_owned())),
            None if optional => Ok(None),
            None => Err(format!("couldn't find key {key} in {kind} {namespace}/{name}")),
        },
        _ if optional => Ok(None),
        _ => Err(format!("{} \"{name}\" not found", kind.to_lowercase())),
    }
}

/// The container's environment in order: `envFrom`, then `env` (later
/// entries win, `$(NAME)` refers to earlier ones). Literal values have their
/// container paths rewritten; values from Secrets, ConfigMaps and the
/// downward API are data and stay as they are. The error is the message of
/// a `CreateContainerConfigError`.
pub fn environment(
    pod: &Pod,
    container: &Container,
    secrets: &Sources,
    config_maps: &Sources,
    addresses: &Addresses,
    paths: &PathMap,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(key, _)| *key != name);
        env.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, sources) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(secret), _) => ("Secret", &secret.name, secret.optional.unwrap_or(false), secrets),
            (None, Some(map)) => ("ConfigMap", &map.name, map.optional.unwrap_or(false), config_maps),
            (None, None) => continue,
        };
        match sources.get(name) {
            Some(Some(data)) => {
                for (key, bytes) in data {
                    set(&mut env, format!("{prefix}{key}"), String::from_utf8_lossy(bytes).into_owned());
                }
            }
            _ if optional => {}
            _ => return Err(format!("{} \"{name}\" not found", kind.to_lowercase())),
        }
    }
    for EnvVar { name, value, value_from } in container.env.iter().flatten() {
        let resolved = match (value, value_from) {
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    Some(field_value(pod, &field.field_path, addresses)?)
                } else if let Some(key) = &from.secret_key_ref {
                    let optional = key.optional.unwrap_or(false);
                    source_value(secrets, "Secret", &key.name, &key.key, optional, &namespace)?
                } else if let Some(key) = &from.config_map_key_ref {
                    let optional = key.optional.unwrap_or(false);
                    source_value(config_maps, "ConfigMap", &key.name, &key.key, optional, &namespace)?
                } else {
                    return Err(format!("the stand-in kubelet does not support this valueFrom of {name}"));
                }
            }
            (Some(literal), None) => Some(expand(&paths.rewrite(literal), &env)),
            (None, None) => Some(String::new()),
        };
        if let Some(resolved) = resolved {
            set(&mut env, name.clone(), resolved);
        }
    }
    Ok(env)
}

/// The program and its arguments: `command` then `args`, expanded and
/// rewritten. There is no image, so there is no entrypoint to fall back on.
pub fn command_line(container: &Container, env: &[(String, String)], paths: &PathMap) -> Result<Vec<String>, String> {
    let words: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .map(|word| paths.program(&expand(word, env)))
        .collect();
    if container.command.as_ref().is_none_or(Vec::is_empty) {
        return Err(format!(
            "container {} has no command; the stand-in kubelet runs no images, so it has no entrypoint to use",
            container.name
        ));
    }
    Ok(words)
}

/// Every Secret and ConfigMap the pod refers to (volumes, `env`, `envFrom`).
pub fn referenced_sources(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut secrets = Vec::new();
    let mut config_maps = Vec::new();
    let Some(spec) = pod.spec.as_ref() else { return (secrets, config_maps) };
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(name);
        }
        if let Some(map) = &volume.config_map {
            config_maps.push(map.name.clone());
        }
    }
    let containers = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    for container in containers {
        for from in container.env_from.iter().flatten() {
            secrets.extend(from.secret_ref.as_ref().map(|s| s.name.clone()));
            config_maps.extend(from.config_map_ref.as_ref().map(|c| c.name.clone()));
        }
        for var in container.env.iter().flatten().filter_map(|v| v.value_from.as_ref()) {
            secrets.extend(var.secret_key_ref.as_ref().map(|s| s.name.clone()));
            config_maps.extend(var.config_map_key_ref.as_ref().map(|c| c.name.clone()));
        }
    }
    secrets.sort();
    secrets.dedup();
    config_maps.sort();
    config_maps.dedup();
    (secrets, config_maps)
}

/// The uid a container runs as (its own securityContext, else the pod's).
pub fn run_as_user(pod: &Pod, container: &Container) -> Option<i64> {
    container
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.spec.as_ref()?.security_context.as_ref()?.run_as_user)
}

/// The pod's `fsGroup`.
pub fn fs_group(pod: &Pod) -> Option<i64> {
    pod.spec.as_ref()?.security_context.as_ref()?.fs_group
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "orders-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "db"}},
            "spec": {
                "nodeName": "stand-in",
                "securityContext": {"runAsUser": 999, "fsGroup": 999},
                "containers": [{
                    "name": "database",
                    "command": ["/stead/bin/stead-instance"],
                    "args": ["--data=$(STEAD_PGDATA)", "$$(literal)"],
                    "env": [
                        {"name": "STEAD_PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                        {"name": "STEAD_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "STEAD_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "orders-credentials", "key": "password"}}},
                        {"name": "DERIVED", "value": "$(STEAD_POD_NAME).x"},
                        {"name": "OTHER", "value": "/var/lib/postgresql-not-a-mount"}
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"}]
                }],
                "initContainers": [{
                    "name": "stead-instance-install",
                    "securityContext": {"runAsUser": 1000},
                    "command": ["/usr/local/bin/stead-instance", "install", "/stead/bin/stead-instance"],
                    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]
                }],
                "volumes": [
                    {"name": "credentials", "secret": {"secretName": "orders-credentials"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-orders-1"}}
                ]
            }
        }))
        .unwrap()
    }

    fn paths() -> PathMap {
        let mut paths = PathMap::new(Path::new("/target/debug"));
        paths.mount("/var/lib/postgresql", Path::new("/k/claims/shop/data-orders-1"));
        paths.mount("/stead/bin", Path::new("/k/pods/1/volumes/stead-bin"));
        paths.mount("/tmp", Path::new("/k/pods/1/volumes/tmp"));
        paths
    }

    fn addresses() -> Addresses {
        Addresses { pod_ip: "127.0.0.10".to_owned(), host_ip: "127.0.0.1".to_owned() }
    }

    fn secrets() -> Sources {
        let data = BTreeMap::from([("password".to_owned(), b"s3cret".to_vec())]);
        BTreeMap::from([("orders-credentials".to_owned(), Some(data))])
    }

    #[test]
    fn the_longest_mount_covering_a_path_wins_and_others_stay() {
        let mut paths = paths();
        paths.mount("/var/lib/postgresql/data/", Path::new("/elsewhere"));
        assert_eq!(paths.rewrite("/var/lib/postgresql/data/pgdata"), "/elsewhere/pgdata");
        assert_eq!(paths.rewrite("/var/lib/postgresql"), "/k/claims/shop/data-orders-1");
        assert_eq!(paths.rewrite("/var/lib/postgresql/x"), "/k/claims/shop/data-orders-1/x");
        assert_eq!(paths.rewrite("/var/lib/postgresqlx"), "/var/lib/postgresqlx");
        assert_eq!(paths.rewrite("relative/tmp"), "relative/tmp");
        assert_eq!(paths.rewrite("/tmpfoo"), "/tmpfoo");
        assert_eq!(paths.host_path("/etc/passwd"), None);
    }

    #[test]
    fn stead_binaries_of_the_image_are_the_built_ones() {
        let paths = paths();
        assert_eq!(paths.program("/usr/local/bin/stead-instance"), "/target/debug/stead-instance");
        assert_eq!(paths.program("/usr/local/bin/psql"), "/usr/local/bin/psql");
        assert_eq!(paths.program("/usr/local/bin/stead-x/y"), "/usr/local/bin/stead-x/y");
        assert_eq!(paths.program("/stead/bin/stead-instance"), "/k/pods/1/volumes/stead-bin/stead-instance");
    }

    #[test]
    fn the_environment_resolves_fields_secrets_and_references() {
        let pod = pod();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let env = environment(&pod, container, &secrets(), &Sources::new(), &addresses(), &paths()).unwrap();
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(get("STEAD_PGDATA"), Some("/k/claims/shop/data-orders-1/data/pgdata"));
        assert_eq!(get("STEAD_POD_IP"), Some("127.0.0.10"));
        assert_eq!(get("STEAD_POD_NAME"), Some("orders-1"));
        assert_eq!(get("APP"), Some("db"));
        assert_eq!(get("PASSWORD"), Some("s3cret"));
        assert_eq!(get("DERIVED"), Some("orders-1.x"));
        assert_eq!(get("OTHER"), Some("/var/lib/postgresql-not-a-mount"));

        let words = command_line(container, &env, &paths()).unwrap();
        assert_eq!(
            words,
            [
                "/k/pods/1/volumes/stead-bin/stead-instance",
                "--data=/k/claims/shop/data-orders-1/data/pgdata",
                "$(literal)"
            ]
        );
    }

    #[test]
    fn a_missing_secret_or_config_map_is_a_config_error() {
        let pod = pod();
        let spec = pod.spec.as_ref().unwrap();
        let err = environment(&pod, &spec.containers[0], &Sources::new(), &Sources::new(), &addresses(), &paths())
            .unwrap_err();
        assert_eq!(err, "secret \"orders-credentials\" not found");
        let no_key = BTreeMap::from([("orders-credentials".to_owned(), Some(BTreeMap::new()))]);
        let err = environment(&pod, &spec.containers[0], &no_key, &Sources::new(), &addresses(), &paths()).unwrap_err();
        assert_eq!(err, "couldn't find key password in Secret shop/orders-credentials");
        let init = &spec.init_containers.as_ref().unwrap()[0];
        let err = environment(&pod, init, &Sources::new(), &Sources::new(), &addresses(), &paths()).unwrap_err();
        assert_eq!(err, "configmap \"settings\" not found");
        let settings = BTreeMap::from([("mode".to_owned(), b"fast".to_vec())]);
        let maps = BTreeMap::from([("settings".to_owned(), Some(settings))]);
        let env = environment(&pod, init, &Sources::new(), &maps, &addresses(), &paths()).unwrap();
        assert_eq!(env, [("CFG_mode".to_owned(), "fast".to_owned())]);
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let defined = [("A".to_owned(), "1".to_owned()), ("A".to_owned(), "2".to_owned())];
        assert_eq!(expand("x$(A)y", &defined), "x2y");
        assert_eq!(expand("$$(A)", &defined), "$(A)");
        assert_eq!(expand("$(B)", &defined), "$(B)");
        assert_eq!(expand("cost $5 $(A", &defined), "cost $5 $(A");
    }

    #[test]
    fn unsupported_fields_and_missing_commands_are_named() {
        let pod = pod();
        assert!(field_value(&pod, "spec.hostname", &addresses()).unwrap_err().contains("spec.hostname"));
        let bare: Container = serde_json::from_value(json!({"name": "app"})).unwrap();
        assert!(command_line(&bare, &[], &paths()).unwrap_err().contains("has no command"));
    }

    #[test]
    fn sources_users_and_groups_are_read_from_the_pod() {
        let pod = pod();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(referenced_sources(&pod), (vec!["orders-credentials".to_owned()], vec!["settings".to_owned()]));
        assert_eq!(run_as_user(&pod, &spec.containers[0]), Some(999));
        assert_eq!(run_as_user(&pod, &spec.init_containers.as_ref().unwrap()[0]), Some(1000));
        assert_eq!(fs_group(&pod), Some(999));
    }
}
