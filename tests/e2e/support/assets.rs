//! Finding the programs the suite drives.
//!
//! Control plane binaries follow the envtest convention: `KUBEBUILDER_ASSETS`
//! names a directory holding `kube-apiserver` and `etcd`, and optionally
//! `kube-controller-manager` (as `setup-envtest use -p path` prints). Their
//! absence is a reason to skip, not a failure. stead's own binaries are a
//! build product: missing ones are an error that says how to build them.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::bail;

/// The envtest variable naming the control plane directory.
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";
/// Overrides where kubectl is.
pub const KUBECTL_ENV: &str = "KUBECTL";
/// Overrides where stead-webhook and stead-controller are.
pub const STEAD_BIN_DIR_ENV: &str = "STEAD_BIN_DIR";

/// Where kubectl usually is.
const DEFAULT_KUBECTL: &str = "/usr/bin/kubectl";

/// The control plane programs found in `KUBEBUILDER_ASSETS`.
#[derive(Debug, Clone)]
pub struct ControlPlaneBinaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    /// Present when the directory has one; it then runs garbage collection.
    pub kube_controller_manager: Option<PathBuf>,
}

/// Why the suite cannot run on this machine (the one line it prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything outside this repository the suite needs.
#[derive(Debug, Clone)]
pub struct Prerequisites {
    pub control_plane: ControlPlaneBinaries,
    pub kubectl: PathBuf,
}

/// Looks at the real environment.
pub fn prerequisites() -> Result<Prerequisites, Unavailable> {
    let control_plane = control_plane_binaries(env::var_os(ASSETS_ENV).as_deref())?;
    let explicit = env::var_os(KUBECTL_ENV);
    let path_var = env::var_os("PATH");
    let assets = control_plane.kube_apiserver.parent();
    let kubectl = find_kubectl(KubectlSearch {
        explicit: explicit.as_deref(),
        default: Path::new(DEFAULT_KUBECTL),
        path_var: path_var.as_deref(),
        assets,
    })?;
    Ok(Prerequisites { control_plane, kubectl })
}

/// The binaries in the directory `assets` names.
pub fn control_plane_binaries(assets: Option<&OsStr>) -> Result<ControlPlaneBinaries, Unavailable> {
    let dir = match assets {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            return Err(Unavailable(format!(
                "{ASSETS_ENV} is not set; set it to a directory holding kube-apiserver and etcd \
                 (for example `export {ASSETS_ENV}=$(setup-envtest use -p path 1.33.x)`)"
            )));
        }
    };
    if !dir.is_dir() {
        return Err(Unavailable(format!("{ASSETS_ENV}={} is not a directory", dir.display())));
    }
    let missing: Vec<&str> =
        ["kube-apiserver", "etcd"].into_iter().filter(|name| !is_executable(&dir.join(name))).collect();
    if !missing.is_empty() {
        return Err(Unavailable(format!("{ASSETS_ENV}={} has no executable {}", dir.display(), missing.join(" or "))));
    }
    let controller_manager = dir.join("kube-controller-manager");
    Ok(ControlPlaneBinaries {
        etcd: dir.join("etcd"),
        kube_apiserver: dir.join("kube-apiserver"),
        kube_controller_manager: is_executable(&controller_manager).then_some(controller_manager),
    })
}

/// Where kubectl may be, in the order they are tried.
#[derive(Debug, Clone, Copy)]
pub struct KubectlSearch<'a> {
    /// `$KUBECTL`: used when set, and an error when not executable.
    pub explicit: Option<&'a OsStr>,
    /// `/usr/bin/kubectl`.
    pub default: &'a Path,
    /// `$PATH`.
    pub path_var: Option<&'a OsStr>,
    /// `$KUBEBUILDER_ASSETS` (setup-envtest puts a kubectl there).
    pub assets: Option<&'a Path>,
}

/// `$KUBECTL`, else /usr/bin/kubectl, else the first kubectl on `PATH`, else
/// the one in `KUBEBUILDER_ASSETS`.
pub fn find_kubectl(search: KubectlSearch<'_>) -> Result<PathBuf, Unavailable> {
    if let Some(explicit) = search.explicit.filter(|value| !value.is_empty()) {
        let path = PathBuf::from(explicit);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Unavailable(format!("{KUBECTL_ENV}={} is not an executable file", path.display())))
        };
    }
    std::iter::once(search.default.to_path_buf())
        .chain(search.path_var.into_iter().flat_map(env::split_paths).map(|dir| dir.join("kubectl")))
        .chain(search.assets.map(|dir| dir.join("kubectl")))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            Unavailable(format!(
                "kubectl is not at {}, on PATH or in {ASSETS_ENV} (or set {KUBECTL_ENV})",
                search.default.display()
            ))
        })
}

/// The directory holding stead-webhook and stead-controller:
/// `$STEAD_BIN_DIR`, else the cargo profile directory this executable was
/// built into (`target/<profile>`, also for `target/<profile>/deps/e2e-…`).
pub fn stead_bin_dir(explicit: Option<OsString>, current_exe: &Path) -> PathBuf {
    if let Some(dir) = explicit.filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    let parent = current_exe.parent().unwrap_or(Path::new("."));
    if parent.file_name() == Some(OsStr::new("deps")) {
        parent.parent().unwrap_or(parent).to_path_buf()
    } else {
        parent.to_path_buf()
    }
}

/// One of stead's binaries in `dir`, or an error saying how to build it.
pub fn stead_binary(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !is_executable(&path) {
        bail!(
            "{} does not exist or is not executable; build it first with \
             `cargo build -p {name}` (add --release for benchmarks; `make e2e` and \
             `make bench` do this), or point {STEAD_BIN_DIR_ENV} at the directory holding it",
            path.display()
        );
    }
    Ok(path)
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::fs;

    use super::*;

    fn touch(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn unset_or_empty_assets_skip_with_a_hint() {
        for value in [None, Some(OsStr::new(""))] {
            let Unavailable(reason) = control_plane_binaries(value).unwrap_err();
            assert!(reason.starts_with("KUBEBUILDER_ASSETS is not set"), "{reason}");
            assert!(reason.contains("setup-envtest"), "{reason}");
        }
    }

    #[test]
    fn missing_directory_or_binaries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nope");
        let reason = control_plane_binaries(Some(gone.as_os_str())).unwrap_err().0;
        assert!(reason.ends_with("nope is not a directory"), "{reason}");

        touch(dir.path(), "etcd", 0o755);
        touch(dir.path(), "kube-apiserver", 0o644);
        let reason = control_plane_binaries(Some(dir.path().as_os_str())).unwrap_err().0;
        assert!(reason.ends_with("has no executable kube-apiserver"), "{reason}");
    }

    #[test]
    fn controller_manager_is_optional() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "etcd", 0o755);
        touch(dir.path(), "kube-apiserver", 0o755);
        let found = control_plane_binaries(Some(dir.path().as_os_str())).unwrap();
        assert_eq!(found.etcd, dir.path().join("etcd"));
        assert_eq!(found.kube_apiserver, dir.path().join("kube-apiserver"));
        assert!(found.kube_controller_manager.is_none());

        touch(dir.path(), "kube-controller-manager", 0o755);
        let found = control_plane_binaries(Some(dir.path().as_os_str())).unwrap();
        assert_eq!(found.kube_controller_manager, Some(dir.path().join("kube-controller-manager")));
    }

    #[test]
    fn kubectl_comes_from_the_variable_then_the_default_then_path_then_assets() {
        let root = tempfile::tempdir().unwrap();
        let dir = |name: &str| {
            let path = root.path().join(name);
            fs::create_dir(&path).unwrap();
            path
        };
        let (usr_bin, path_dir, assets, empty) = (dir("usr-bin"), dir("path"), dir("assets"), dir("empty"));
        let default = touch(&usr_bin, "kubectl", 0o755);
        let on_path = touch(&path_dir, "kubectl", 0o755);
        let in_assets = touch(&assets, "kubectl", 0o755);
        let missing_default = empty.join("kubectl");
        let search = |explicit: Option<&Path>, default: &Path, path_var: Option<&Path>, assets: Option<&Path>| {
            find_kubectl(KubectlSearch {
                explicit: explicit.map(Path::as_os_str),
                default,
                path_var: path_var.map(Path::as_os_str),
                assets,
            })
        };

        assert_eq!(search(Some(&in_assets), &default, Some(&path_dir), None).unwrap(), in_assets);
        assert_eq!(search(None, &default, Some(&path_dir), Some(&assets)).unwrap(), default);
        assert_eq!(search(None, &missing_default, Some(&path_dir), Some(&assets)).unwrap(), on_path);
        assert_eq!(search(None, &missing_default, Some(&empty), Some(&assets)).unwrap(), in_assets);
        let reason = search(None, &missing_default, Some(&empty), Some(&empty)).unwrap_err().0;
        assert!(reason.starts_with("kubectl is not at "), "{reason}");

        let not_exec = touch(&empty, "kubectl-text", 0o644);
        let reason = search(Some(&not_exec), &default, None, None).unwrap_err().0;
        assert!(reason.contains("is not an executable file"), "{reason}");
    }

    #[test]
    fn stead_binaries_sit_in_the_profile_directory() {
        let exe = Path::new("/w/target/debug/deps/e2e-0123abcd");
        assert_eq!(stead_bin_dir(None, exe), Path::new("/w/target/debug"));
        let bin = Path::new("/w/target/release/bench-controller");
        assert_eq!(stead_bin_dir(None, bin), Path::new("/w/target/release"));
        assert_eq!(stead_bin_dir(Some(OsString::from("/opt/stead")), exe), Path::new("/opt/stead"));
        assert_eq!(stead_bin_dir(Some(OsString::new()), exe), Path::new("/w/target/debug"));
    }

    #[test]
    fn a_missing_stead_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = stead_binary(dir.path(), "stead-webhook").unwrap_err().to_string();
        assert!(err.contains("cargo build -p stead-webhook"), "{err}");
        assert!(err.contains(STEAD_BIN_DIR_ENV), "{err}");
        let path = touch(dir.path(), "stead-controller", 0o755);
        assert_eq!(stead_binary(dir.path(), "stead-controller").unwrap(), path);
    }
}
