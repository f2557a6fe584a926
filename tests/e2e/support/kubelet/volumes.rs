//! A pod's volumes as host directories, owned the way a kubelet leaves them:
//!
//! - `emptyDir` (any medium): a directory of the pod, removed with it;
//!   root-owned, mode 0777, and with `fsGroup` group-owned by it with the
//!   setgid bit (kubelet's `SetVolumeOwnership`).
//! - `persistentVolumeClaim`: a directory per claim object
//!   (`<namespace>/<claim>/<uid>`), so a claim deleted and created again
//!   under the same name is a new, empty volume, as a provisioner makes it
//!   that outlives pods, like a PV: a fresh volume root is root-owned, and
//!   `fsGroup` makes it group-owned and group-writable (mode 2775). A claim
//!   with a `dataSource`/`dataSourceRef` naming a VolumeSnapshot starts as
//!   a copy of the stand-in snapshotter's copy of it (owners and modes as
//!   copied); until that copy exists, the mount fails and is retried.
//! - `secret` and `configMap`: the object's keys (or `items`) as files,
//!   with `defaultMode`/`mode`, group `fsGroup` (read-only volumes get
//!   `g+r`). Files are written in place, not through `..data` symlinks.
//!
//! Anything else is refused with a message naming the volume.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{KeyToPath, PersistentVolumeClaim, Pod};

use super::spec::{ClaimUids, Sources};
use crate::support::snapshotter;

/// The setgid bit a kubelet puts on directories it hands to `fsGroup`.
const SETGID: u32 = 0o2000;

/// Where a pod's own volumes and every claim live.
#[derive(Debug, Clone)]
pub struct VolumeDirs {
    /// The pod's directory; its emptyDir, secret and configMap volumes go under `volumes/`.
    pub pod: PathBuf,
    /// The root of all claims (`<namespace>/<claim>` below it).
    pub claims: PathBuf,
    /// `(uid, gid)` to own emptyDir volumes instead of root (a deviation from
    /// the kubelet, for namespaces served that way; see the README).
    pub empty_dir_owner: Option<(u32, u32)>,
}

/// Where a claim created from a VolumeSnapshot gets its first contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The snapshotter's copy of the snapshot.
    From(PathBuf),
    /// Not yet (or never): why, as the mount error says it.
    Unavailable(String),
}

/// The restore source of each claim (by name) that has one and no volume yet.
pub type Restores = BTreeMap<String, Restore>;

/// The VolumeSnapshot a claim is created from (`dataSourceRef`, else
/// `dataSource`): `Some(Ok(name))`; `Some(Err(why))` for a data source the
/// stand-in cannot provide; `None` without one.
pub fn snapshot_source(claim: &PersistentVolumeClaim) -> Option<Result<String, String>> {
    let spec = claim.spec.as_ref()?;
    let (group, kind, name) = match (&spec.data_source_ref, &spec.data_source) {
        (Some(r), _) => (r.api_group.clone(), r.kind.clone(), r.name.clone()),
        (None, Some(s)) => (s.api_group.clone(), s.kind.clone(), s.name.clone()),
        (None, None) => return None,
    };
    if group.as_deref() == Some(snapshotter::GROUP) && kind == "VolumeSnapshot" {
        Some(Ok(name))
    } else {
        Some(Err(format!(
            "data source {kind} {name:?} (group {:?}): the stand-in provisions claims from VolumeSnapshots only",
            group.unwrap_or_default()
        )))
    }
}

/// The host directory of every object of each claim the pod mounts.
pub fn claim_dirs(pod: &Pod, claims: &Path) -> Vec<PathBuf> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .filter_map(|volume| volume.persistent_volume_claim.as_ref())
        .map(|claim| claims.join(&namespace).join(&claim.claim_name))
        .collect()
}

/// Creates every volume of `pod` and returns its host directory by volume
/// name. `fs_group` is the host gid that stands for the pod's `fsGroup`.
/// The error is what a kubelet's FailedMount event would say.
pub fn prepare(
    pod: &Pod,
    dirs: &VolumeDirs,
    fs_group: Option<u32>,
    secrets: &Sources,
    config_maps: &Sources,
    claim_uids: &ClaimUids,
    restores: &Restores,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut prepared = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|spec| spec.volumes.iter().flatten()) {
        let name = &volume.name;
        let own = dirs.pod.join("volumes").join(name);
        let failed = |why: String| format!("MountVolume.SetUp failed for volume {name:?}: {why}");
        let path = if volume.empty_dir.is_some() {
            make_dir(&own, 0o777, fs_group).map_err(failed)?;
            if let Some((uid, gid)) = dirs.empty_dir_owner {
                chown(&own, Some(uid), Some(gid)).map_err(|e| failed(format!("{}: {e}", own.display())))?;
                fs::set_permissions(&own, fs::Permissions::from_mode(0o2777))
                    .map_err(|e| failed(format!("{}: {e}", own.display())))?;
            }
            own
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let uid = claim_uids.get(&claim.claim_name).cloned().flatten().ok_or_else(|| {
                failed(format!("persistentvolumeclaim {:?} not found (or being deleted)", claim.claim_name))
            })?;
            let dir = dirs.claims.join(&namespace).join(&claim.claim_name).join(uid);
            make_parents(&dir).map_err(failed)?;
            if !dir.exists() {
                match restores.get(&claim.claim_name) {
                    None => make_dir(&dir, 0o775, fs_group).map_err(failed)?,
                    Some(Restore::Unavailable(why)) => return Err(failed(why.clone())),
                    Some(Restore::From(copy)) => {
                        restore(copy, &dir).map_err(failed)?;
                        set_owner(&dir, 0o775, fs_group).map_err(failed)?;
                    }
                }
            } else if fs_group.is_some() {
                // fsGroupChangePolicy OnRootMismatch: only the root is looked at.
                set_owner(&dir, 0o775, fs_group).map_err(failed)?;
            }
            dir
        } else if let Some(secret) = &volume.secret {
            let source = secret.secret_name.clone().unwrap_or_default();
            let data = source_data(secrets, "secret", &source, secret.optional.unwrap_or(false)).map_err(failed)?;
            let mode = secret.default_mode.map_or(0o644, mode_bits);
            write_files(&own, &data, secret.items.as_deref(), mode, fs_group).map_err(failed)?;
            own
        } else if let Some(map) = &volume.config_map {
            let data =
                source_data(config_maps, "configmap", &map.name, map.optional.unwrap_or(false)).map_err(failed)?;
            let mode = map.default_mode.map_or(0o644, mode_bits);
            write_files(&own, &data, map.items.as_deref(), mode, fs_group).map_err(failed)?;
            own
        } else {
            return Err(format!(
                "volume {name:?} is of a kind the stand-in kubelet does not provide \
                 (it provides emptyDir, persistentVolumeClaim, secret and configMap)"
            ));
        };
        prepared.insert(name.clone(), path);
    }
    Ok(prepared)
}

/// Fills a new claim directory with a copy of a snapshot's copy, whole or not at all.
fn restore(copy: &Path, dir: &Path) -> Result<(), String> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = dir.with_file_name(format!(".{name}.restoring"));
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| format!("clearing {}: {e}", partial.display()))?;
    }
    snapshotter::copy_tree(copy, &partial)
        .map_err(|e| format!("restoring from the snapshot copy {}: {e}", copy.display()))?;
    fs::rename(&partial, dir).map_err(|e| format!("moving {} into place: {e}", partial.display()))
}

fn mode_bits(mode: i32) -> u32 {
    u32::try_from(mode).unwrap_or(0o644) & 0o777
}

fn source_data(sources: &Sources, kind: &str, name: &str, optional: bool) -> Result<BTreeMap<String, Vec<u8>>, String> {
    match sources.get(name) {
        Some(Some(data)) => Ok(data.clone()),
        _ if optional => Ok(BTreeMap::new()),
        _ => Err(format!("{kind} {name:?} not found")),
    }
}

fn make_parents(dir: &Path) -> Result<(), String> {
    let Some(parent) = dir.parent() else { return Ok(()) };
    fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    // Traversable by the pod's user, nothing more.
    fs::set_permissions(parent, fs::Permissions::from_mode(0o711)).map_err(|e| format!("{}: {e}", parent.display()))
}

fn make_dir(dir: &Path, mode: u32, fs_group: Option<u32>) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    set_owner(dir, mode, fs_group)
}

/// Root-owned; with `fs_group`, group-owned by it with the setgid bit.
fn set_owner(path: &Path, mode: u32, fs_group: Option<u32>) -> Result<(), String> {
    let describe = |e: std::io::Error| format!("{}: {e}", path.display());
    chown(path, Some(0), Some(fs_group.unwrap_or(0))).map_err(describe)?;
    let mode = if fs_group.is_some() && path.is_dir() { mode | SETGID } else { mode };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(describe)
}

/// Writes the keys (all, or `items`) as files; a key named in `items` that
/// the data lacks is an error, as it is for the kubelet.
fn write_files(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    fs_group: Option<u32>,
) -> Result<(), String> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("clearing {}: {e}", dir.display()))?;
    }
    make_dir(dir, 0o755, fs_group)?;
    let files: Vec<(String, &Vec<u8>, u32)> = match items {
        None => data.iter().map(|(key, value)| (key.clone(), value, default_mode)).collect(),
        Some(items) => items
            .iter()
            .map(|item| {
                let value = data.get(&item.key).ok_or_else(|| format!("key {:?} is not in the object", item.key))?;
                Ok((item.path.clone(), value, item.mode.map_or(default_mode, mode_bits)))
            })
            .collect::<Result<_, String>>()?,
    };
    for (relative, value, mode) in files {
        if relative.starts_with('/') || relative.split('/').any(|part| part == "..") {
            return Err(format!("path {relative:?} leaves the volume"));
        }
        let path = dir.join(&relative);
        if let Some(parent) = path.parent().filter(|p| *p != dir) {
            make_dir(parent, 0o755, fs_group)?;
        }
        fs::write(&path, value).map_err(|e| format!("writing {}: {e}", path.display()))?;
        // Read-only volumes get g+r with an fsGroup (kubelet's roMask).
        let mode = if fs_group.is_some() { mode | 0o440 } else { mode };
        set_owner(&path, mode, fs_group)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::MetadataExt;

    use serde_json::json;

    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "orders-0", "namespace": "shop"},
            "spec": {
                "containers": [],
                "volumes": [
                    {"name": "run", "emptyDir": {"medium": "Memory"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-orders-0"}},
                    {"name": "credentials", "secret": {"secretName": "orders-credentials", "defaultMode": 0o440}}
                ]
            }
        }))
        .unwrap()
    }

    fn secrets() -> Sources {
        let data =
            BTreeMap::from([("password".to_owned(), b"s3cret".to_vec()), ("tls.key".to_owned(), b"KEY".to_vec())]);
        BTreeMap::from([("orders-credentials".to_owned(), Some(data))])
    }

    fn claim_uids() -> ClaimUids {
        BTreeMap::from([("data-orders-0".to_owned(), Some("uid-1".to_owned()))])
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn volumes_are_owned_as_a_kubelet_leaves_them() {
        // chown needs root; the suite runs as root, a developer's `cargo test` may not.
        if !is_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let dirs =
            VolumeDirs { pod: root.path().join("pods/1"), claims: root.path().join("claims"), empty_dir_owner: None };
        let volumes =
            prepare(&pod(), &dirs, Some(4242), &secrets(), &Sources::new(), &claim_uids(), &Restores::new()).unwrap();

        let run = fs::metadata(&volumes["run"]).unwrap();
        assert_eq!((run.uid(), run.gid(), run.mode() & 0o7777), (0, 4242, 0o2777));
        let data = fs::metadata(&volumes["data"]).unwrap();
        assert_eq!(volumes["data"], root.path().join("claims/shop/data-orders-0/uid-1"));
        assert_eq!((data.uid(), data.gid(), data.mode() & 0o7777), (0, 4242, 0o2775));
        let password = volumes["credentials"].join("password");
        assert_eq!(fs::read(&password).unwrap(), b"s3cret");
        let meta = fs::metadata(&password).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, 4242, 0o440));
        assert_eq!(claim_dirs(&pod(), &dirs.claims), [root.path().join("claims/shop/data-orders-0")]);

        // A second pod on the same claim finds what the first one left.
        fs::write(volumes["data"].join("marker"), "kept").unwrap();
        let again =
            prepare(&pod(), &dirs, Some(4242), &secrets(), &Sources::new(), &claim_uids(), &Restores::new()).unwrap();
        assert_eq!(fs::read_to_string(again["data"].join("marker")).unwrap(), "kept");
        // A claim deleted and created again is a new, empty volume.
        let renewed = BTreeMap::from([("data-orders-0".to_owned(), Some("uid-2".to_owned()))]);
        let fresh =
            prepare(&pod(), &dirs, Some(4242), &secrets(), &Sources::new(), &renewed, &Restores::new()).unwrap();
        assert!(!fresh["data"].join("marker").exists(), "a new claim object starts empty");

        // Served with emptyDirs owned by the pod's user.
        let owned = VolumeDirs { empty_dir_owner: Some((4343, 4242)), ..dirs };
        let volumes =
            prepare(&pod(), &owned, Some(4242), &secrets(), &Sources::new(), &claim_uids(), &Restores::new()).unwrap();
        let run = fs::metadata(&volumes["run"]).unwrap();
        assert_eq!((run.uid(), run.gid(), run.mode() & 0o7777), (4343, 4242, 0o2777));
    }

    fn claim(spec: &serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "data-restored-0"}, "spec": spec})).unwrap()
    }

    #[test]
    fn a_claim_names_the_snapshot_it_is_created_from() {
        let from = json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "orders-b1-data"});
        assert_eq!(snapshot_source(&claim(&json!({"dataSource": from}))), Some(Ok("orders-b1-data".to_owned())));
        assert_eq!(snapshot_source(&claim(&json!({"dataSourceRef": from}))), Some(Ok("orders-b1-data".to_owned())));
        assert_eq!(snapshot_source(&claim(&json!({}))), None);
        let clone = json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": "data-orders-0"}});
        let refused = snapshot_source(&claim(&clone)).unwrap().unwrap_err();
        assert!(refused.contains("PersistentVolumeClaim \"data-orders-0\""), "{refused}");
        let core_group = json!({"dataSource": {"apiGroup": "example.com", "kind": "VolumeSnapshot", "name": "x"}});
        assert!(snapshot_source(&claim(&core_group)).unwrap().is_err(), "another group's VolumeSnapshot");
    }

    #[test]
    fn a_claim_from_a_snapshot_waits_for_its_copy() {
        // No chown is reached before the error, so this runs without root.
        let root = tempfile::tempdir().unwrap();
        let dirs =
            VolumeDirs { pod: root.path().join("pods/1"), claims: root.path().join("claims"), empty_dir_owner: None };
        let mut pod = pod();
        pod.spec.as_mut().unwrap().volumes.as_mut().unwrap().retain(|v| v.name == "data");
        let waiting = BTreeMap::from([(
            "data-orders-0".to_owned(),
            Restore::Unavailable("volumesnapshot \"b1\" is not ready to use yet".to_owned()),
        )]);
        let err = prepare(&pod, &dirs, None, &Sources::new(), &Sources::new(), &claim_uids(), &waiting).unwrap_err();
        assert_eq!(err, "MountVolume.SetUp failed for volume \"data\": volumesnapshot \"b1\" is not ready to use yet");
        assert!(!root.path().join("claims/shop/data-orders-0/uid-1").exists(), "no empty volume is made meanwhile");
    }

    #[test]
    fn a_claim_from_a_snapshot_starts_as_its_copy_and_keeps_it() {
        if !is_root() {
            return;
        }
        use std::os::unix::fs::lchown;
        let root = tempfile::tempdir().unwrap();
        let copy = root.path().join("snapshots/shop/snap-uid");
        fs::create_dir_all(copy.join("pgdata")).unwrap();
        fs::write(copy.join("pgdata/PG_VERSION"), "15\n").unwrap();
        lchown(copy.join("pgdata"), Some(4343), Some(4242)).unwrap();
        lchown(copy.join("pgdata/PG_VERSION"), Some(4343), Some(4242)).unwrap();
        fs::set_permissions(copy.join("pgdata"), fs::Permissions::from_mode(0o700)).unwrap();
        let dirs =
            VolumeDirs { pod: root.path().join("pods/1"), claims: root.path().join("claims"), empty_dir_owner: None };
        let mut pod = pod();
        pod.spec.as_mut().unwrap().volumes.as_mut().unwrap().retain(|v| v.name == "data");
        let from = BTreeMap::from([("data-orders-0".to_owned(), Restore::From(copy.clone()))]);
        let volumes = prepare(&pod, &dirs, Some(4242), &Sources::new(), &Sources::new(), &claim_uids(), &from).unwrap();
        let data = &volumes["data"];
        assert_eq!(fs::read_to_string(data.join("pgdata/PG_VERSION")).unwrap(), "15\n");
        let meta = fs::metadata(data.join("pgdata")).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (4343, 4242, 0o700), "as copied");
        let top = fs::metadata(data).unwrap();
        assert_eq!((top.uid(), top.gid(), top.mode() & 0o7777), (0, 4242, 0o2775), "the volume root as a kubelet's");
        // Once made, the volume is the claim's own: a later mount does not restore again.
        fs::write(data.join("pgdata/written-later"), "kept").unwrap();
        let again = prepare(&pod, &dirs, Some(4242), &Sources::new(), &Sources::new(), &claim_uids(), &from).unwrap();
        assert!(again["data"].join("pgdata/written-later").exists());
        assert!(copy.join("pgdata/PG_VERSION").exists() && !copy.join("pgdata/written-later").exists());
    }

    #[test]
    fn a_missing_secret_or_unknown_volume_kind_is_named() {
        let root = tempfile::tempdir().unwrap();
        let dirs =
            VolumeDirs { pod: root.path().join("pods/1"), claims: root.path().join("claims"), empty_dir_owner: None };
        let mut pod = pod();
        // Without the secret (and without root: no chown is reached for it).
        pod.spec.as_mut().unwrap().volumes.as_mut().unwrap().retain(|v| v.name == "credentials");
        let err = prepare(&pod, &dirs, None, &Sources::new(), &Sources::new(), &ClaimUids::new(), &Restores::new())
            .unwrap_err();
        assert_eq!(err, "MountVolume.SetUp failed for volume \"credentials\": secret \"orders-credentials\" not found");
        // Without its claim (deleted, or being deleted).
        let mut pod = super::tests::pod();
        pod.spec.as_mut().unwrap().volumes.as_mut().unwrap().retain(|v| v.name == "data");
        let gone = BTreeMap::from([("data-orders-0".to_owned(), None)]);
        let err = prepare(&pod, &dirs, None, &Sources::new(), &Sources::new(), &gone, &Restores::new()).unwrap_err();
        assert_eq!(
            err,
            "MountVolume.SetUp failed for volume \"data\": persistentvolumeclaim \"data-orders-0\" not found (or being \
             deleted)"
        );

        let odd: Pod = serde_json::from_value(json!({
            "metadata": {"name": "x-0", "namespace": "shop"},
            "spec": {"containers": [], "volumes": [{"name": "host", "hostPath": {"path": "/etc"}}]}
        }))
        .unwrap();
        let err = prepare(&odd, &dirs, None, &Sources::new(), &Sources::new(), &ClaimUids::new(), &Restores::new())
            .unwrap_err();
        assert!(err.contains("volume \"host\" is of a kind"), "{err}");
    }
}
