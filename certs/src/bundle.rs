//! The on-disk layout shared with cert-manager's `kubernetes.io/tls` Secret:
//! `ca.crt`, `tls.crt`, `tls.key` in one directory (plus `ca.key`, which only
//! `stead-certs` writes so it can issue again from the same CA).
//!
//! Every file is replaced atomically (write a temporary file, fsync, rename),
//! so a reader never sees half a PEM file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::CertError;
use crate::generate::{CertificateAuthority, ServingCertificate};

/// The CA certificate clients trust.
pub const CA_FILE: &str = "ca.crt";
/// The CA private key (written by `stead-certs` only; never mounted into the webhook).
pub const CA_KEY_FILE: &str = "ca.key";
/// The serving certificate chain.
pub const CERT_FILE: &str = "tls.crt";
/// The serving private key.
pub const KEY_FILE: &str = "tls.key";

/// Mode of private key files.
const SECRET_MODE: u32 = 0o600;
/// Mode of certificate files.
const PUBLIC_MODE: u32 = 0o644;

/// Writes `ca.crt` and `tls.crt` (mode 0644) and `tls.key` (mode 0600) into
/// `dir`, creating it; each file is replaced atomically.
///
/// The key is written before the certificate: a reloader polling the
/// directory may briefly see the new key with the old certificate, which it
/// rejects as a mismatch and retries, but never serves.
pub fn write_bundle(dir: &Path, ca: &CertificateAuthority, serving: &ServingCertificate) -> Result<(), CertError> {
    create_dir(dir)?;
    write_atomic(&dir.join(CA_FILE), ca.cert_pem().as_bytes(), PUBLIC_MODE)?;
    write_atomic(&dir.join(KEY_FILE), serving.key_pem.as_bytes(), SECRET_MODE)?;
    write_atomic(&dir.join(CERT_FILE), serving.cert_pem.as_bytes(), PUBLIC_MODE)?;
    sync_dir(dir)
}

/// Writes the CA key as `ca.key` (mode 0600) into `dir` so a later run can
/// reuse the CA with [`load_ca`]; returns the path written.
pub fn write_ca_key(dir: &Path, ca: &CertificateAuthority) -> Result<PathBuf, CertError> {
    create_dir(dir)?;
    let path = dir.join(CA_KEY_FILE);
    write_atomic(&path, ca.key_pem().as_bytes(), SECRET_MODE)?;
    sync_dir(dir)?;
    Ok(path)
}

/// Reads `ca.crt` + `ca.key` from `dir`.
///
/// `Ok(None)` when neither exists (nothing to reuse); an error when only one
/// exists or they do not form a CA, because silently minting a new CA would
/// break every client that trusts the old one.
pub fn load_ca(dir: &Path) -> Result<Option<CertificateAuthority>, CertError> {
    let cert_path = dir.join(CA_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let cert = read_optional(&cert_path)?;
    let key = read_optional(&key_path)?;
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => CertificateAuthority::from_pem_with_origins(
            &cert,
            &key,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )
        .map(Some),
        (Some(_), None) => Err(missing_half(&key_path, &cert_path)),
        (None, Some(_)) => Err(missing_half(&cert_path, &key_path)),
    }
}

fn missing_half(missing: &Path, present: &Path) -> CertError {
    CertError::IncompleteCa { present: present.to_path_buf(), missing: missing.to_path_buf() }
}

fn read_optional(path: &Path) -> Result<Option<String>, CertError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(CertError::Read { path: path.to_path_buf(), cause }),
    }
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|cause| CertError::Write { path: dir.to_path_buf(), cause })
}

/// Writes `bytes` to a fresh temporary file beside `path`, then renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let write_err = |cause| CertError::Write { path: path.to_path_buf(), cause };
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    // A leftover from a crashed run may carry other permissions; start clean
    // so the mode below applies (it only takes effect on creation).
    match fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(write_err(err)),
        _ => {}
    }
    let result = create_new(&tmp, mode)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(err) = result {
        // Best effort: the temporary file is useless after a failure.
        let _ = fs::remove_file(&tmp);
        return Err(write_err(err));
    }
    Ok(())
}

#[cfg(unix)]
fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create_new(true).mode(mode).open(path)
}

#[cfg(not(unix))]
fn create_new(path: &Path, _mode: u32) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// Makes the renames durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), CertError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|cause| CertError::Write { path: dir.to_path_buf(), cause })
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), CertError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn issue() -> (CertificateAuthority, ServingCertificate) {
        let ca = CertificateAuthority::generate("test CA", 1).unwrap();
        let leaf = ca.issue_serving(&["localhost".to_owned()], &[], 1).unwrap();
        (ca, leaf)
    }

    #[test]
    fn writes_three_files_with_a_private_key_mode_into_a_new_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("nested/certs");
        let (ca, leaf) = issue();
        write_bundle(&dir, &ca, &leaf).unwrap();

        assert_eq!(fs::read_to_string(dir.join(CA_FILE)).unwrap(), ca.cert_pem());
        assert_eq!(fs::read_to_string(dir.join(CERT_FILE)).unwrap(), leaf.cert_pem);
        assert_eq!(fs::read_to_string(dir.join(KEY_FILE)).unwrap(), leaf.key_pem);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CERT_FILE)) & !0o644, 0, "certificates are not writable by others");
        let mut entries: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(entries, [CA_FILE, CERT_FILE, KEY_FILE], "no temporary files left");
    }

    #[test]
    fn rewriting_replaces_content_and_keeps_the_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, first) = issue();
        write_bundle(dir.path(), &ca, &first).unwrap();
        fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let second = ca.issue_serving(&["localhost".to_owned()], &[], 1).unwrap();
        write_bundle(dir.path(), &ca, &second).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join(KEY_FILE)).unwrap(), second.key_pem);
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
    }

    #[test]
    fn ca_round_trips_through_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_ca(dir.path()).unwrap().is_none());
        let (ca, leaf) = issue();
        write_bundle(dir.path(), &ca, &leaf).unwrap();
        let key_path = write_ca_key(dir.path(), &ca).unwrap();
        assert_eq!(mode(&key_path), 0o600);
        let loaded = load_ca(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn half_a_ca_is_an_error_naming_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, leaf) = issue();
        write_bundle(dir.path(), &ca, &leaf).unwrap();
        let err = load_ca(dir.path()).err().unwrap();
        assert!(matches!(err, CertError::IncompleteCa { .. }), "{err:?}");
        assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_a_write_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let blocker = root.path().join("blocker");
        fs::write(&blocker, b"x").unwrap();
        let (ca, leaf) = issue();
        let err = write_bundle(&blocker, &ca, &leaf).unwrap_err();
        assert!(matches!(err, CertError::Write { .. }), "{err:?}");
        assert!(err.to_string().contains("blocker"), "{err}");
    }
}
