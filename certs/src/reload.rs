//! Serving the key pair that is currently on disk, swapping it without a restart.
//!
//! The webhook's certificate comes from a mounted cert-manager Secret. The
//! kubelet rotates such a mount by writing a new `..2026_…` directory and
//! atomically re-pointing the `..data` symlink, so `tls.crt` and `tls.key`
//! (symlinks through `..data`) change content while their own mtimes do not.
//!
//! Design (chosen against kubert's reread-per-handshake): the parsed pair lives
//! in an [`ArcSwap`]; a handshake costs one atomic load and no file I/O. A
//! watcher task polls the files and compares a SHA-256 of their *content*,
//! which catches symlink swaps that mtime polling misses. rustls asks the
//! resolver only during a handshake, so connections that are already open keep
//! their session, and only new handshakes see the new certificate.
//!
//! A new pair is accepted only if it parses and the key matches the leaf;
//! otherwise the old pair keeps being served.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

use crate::bundle::{CERT_FILE, KEY_FILE};
use crate::error::CertError;
use crate::pem;
use crate::tls::crypto_provider;

/// A sensible polling period: the kubelet itself only refreshes Secret mounts
/// every minute or so, so polling faster buys little.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Shorter intervals are raised to this (tokio refuses a zero period).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

type Digest = [u8; 32];

/// Serves whatever key pair is currently in `dir`; swaps in a new one when the files change.
pub struct ReloadingCertResolver {
    dir: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    served: ArcSwap<Served>,
    reloads: AtomicU64,
    /// Serialises reloads so two of them cannot interleave read and swap.
    reload_lock: Mutex<()>,
}

/// The pair being served and what it was parsed from.
struct Served {
    key: Arc<CertifiedKey>,
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    fingerprint: String,
    /// SHA-256 over the DER chain: a different value means a different certificate.
    chain_digest: Digest,
    /// SHA-256 over the raw file bytes: equal means nothing to parse.
    source_digest: Digest,
}

impl ReloadingCertResolver {
    /// Loads `tls.crt` and `tls.key` from `dir`; fails (naming the file) when
    /// either is missing, malformed or they do not belong together.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Arc<Self>, CertError> {
        let dir = dir.into();
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let provider = crypto_provider();
        let served = read_and_parse(&cert_path, &key_path, &provider)?;
        info!(
            dir = %dir.display(),
            fingerprint = %served.fingerprint,
            "serving certificate loaded"
        );
        Ok(Arc::new(Self {
            dir,
            cert_path,
            key_path,
            provider,
            served: ArcSwap::from_pointee(served),
            reloads: AtomicU64::new(0),
            reload_lock: Mutex::new(()),
        }))
    }

    /// The directory the pair is read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the files now. `Ok(true)` when a different certificate is now
    /// served, `Ok(false)` when nothing changed. Invalid or unreadable files
    /// keep the current pair: a warning is logged and the error returned.
    pub fn reload(&self) -> Result<bool, CertError> {
        self.try_reload().inspect_err(|err| {
            warn!(
                dir = %self.dir.display(),
                fingerprint = %self.current_fingerprint(),
                error = %err,
                "keeping the current serving certificate: the files on disk are not usable"
            );
        })
    }

    /// Spawns a task (on the current tokio runtime) that re-reads the files
    /// like [`Self::reload`] every `interval` (at least [`MIN_POLL_INTERVAL`];
    /// the first check is immediate) until `shutdown` holds `true` or its
    /// sender is dropped. The task holds only a weak reference and also ends
    /// once the resolver is dropped. File reads run on the blocking pool.
    ///
    /// A failing reload is logged at debug the first time (a rotation caught
    /// half-way fixes itself by the next poll) and at warn when it persists,
    /// once per distinct error.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let resolver = Arc::downgrade(self);
        let dir = self.dir.clone();
        let period = interval.max(MIN_POLL_INTERVAL);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut failures = FailureLog::default();
            debug!(dir = %dir.display(), ?period, "watching the serving certificate");
            loop {
                if *shutdown.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        continue;
                    }
                    _ = ticker.tick() => {}
                }
                let Some(resolver) = resolver.upgrade() else {
                    break;
                };
                let fingerprint = resolver.current_fingerprint();
                match tokio::task::spawn_blocking(move || resolver.try_reload()).await {
                    Ok(Ok(_)) => failures.clear(),
                    Ok(Err(err)) => match failures.observe(err.to_string()) {
                        Report::Debug => debug!(
                            dir = %dir.display(),
                            %fingerprint,
                            error = %err,
                            "serving certificate files not usable yet; retrying at the next poll"
                        ),
                        Report::Warn => warn!(
                            dir = %dir.display(),
                            %fingerprint,
                            error = %err,
                            "keeping the current serving certificate: the files on disk are not usable"
                        ),
                        Report::Quiet => {}
                    },
                    Err(join_error) => error!(
                        dir = %dir.display(),
                        error = %join_error,
                        "certificate reload task failed; retrying at the next poll"
                    ),
                }
            }
            debug!(dir = %dir.display(), "stopped watching the serving certificate");
        })
    }

    /// SHA-256 of the leaf being served (DER, lowercase hex, no colons), as
    /// `openssl x509 -noout -fingerprint -sha256` prints it modulo formatting.
    pub fn current_fingerprint(&self) -> String {
        self.served.load().fingerprint.clone()
    }

    /// How many times a different certificate was swapped in since [`Self::load`].
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The reload itself, without logging failures (callers decide how loud).
    fn try_reload(&self) -> Result<bool, CertError> {
        let _serialised = self.reload_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        let source_digest = digest_source(&cert_pem, &key_pem);
        let current = self.served.load_full();
        if source_digest == current.source_digest {
            return Ok(false);
        }
        let next = parse(&cert_pem, &key_pem, source_digest, &self.provider, &self.cert_path, &self.key_path)?;
        let changed = next.chain_digest != current.chain_digest;
        let fingerprint = next.fingerprint.clone();
        // Also stored when only the encoding changed, so the next poll
        // compares against the bytes now on disk.
        self.served.store(Arc::new(next));
        if changed {
            self.reloads.fetch_add(1, Ordering::Relaxed);
            info!(
                dir = %self.dir.display(),
                previous = %current.fingerprint,
                %fingerprint,
                "serving certificate reloaded; new handshakes use it, open connections keep theirs"
            );
        }
        Ok(changed)
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.served.load().key))
    }
}

impl fmt::Debug for ReloadingCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCertResolver")
            .field("dir", &self.dir)
            .field("fingerprint", &self.current_fingerprint())
            .field("reload_count", &self.reload_count())
            .finish_non_exhaustive()
    }
}

fn read_and_parse(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<Served, CertError> {
    let (cert_pem, key_pem) = read_pair(cert_path, key_path)?;
    let source_digest = digest_source(&cert_pem, &key_pem);
    parse(&cert_pem, &key_pem, source_digest, provider, cert_path, key_path)
}

/// Reads both files; paths through symlinks are resolved at open time, so
/// each read sees one complete version of its file.
fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let read = |path: &Path| fs::read(path).map_err(|cause| CertError::Read { path: path.to_path_buf(), cause });
    Ok((read(cert_path)?, read(key_path)?))
}

fn parse(
    cert_pem: &[u8],
    key_pem: &[u8],
    source_digest: Digest,
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Served, CertError> {
    let key = pem::certified_key_from_pem(
        cert_pem,
        key_pem,
        provider,
        &cert_path.display().to_string(),
        &key_path.display().to_string(),
    )?;
    let fingerprint = key.cert.first().map(|leaf| pem::sha256_hex(leaf)).unwrap_or_default();
    let chain_digest = digest_parts(key.cert.iter().map(|cert| cert.as_ref()));
    Ok(Served { key, fingerprint, chain_digest, source_digest })
}

fn digest_source(cert_pem: &[u8], key_pem: &[u8]) -> Digest {
    digest_parts([cert_pem, key_pem])
}

/// SHA-256 over length-prefixed parts, so moving bytes between parts changes it.
fn digest_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Digest {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// How loudly the watcher reports a failed reload.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    /// First sighting: probably a rotation caught half-way.
    Debug,
    /// Seen twice in a row: the files are really broken.
    Warn,
    /// Already warned about this one.
    Quiet,
}

/// Remembers the last failure so a broken file is warned about once, not every poll.
#[derive(Debug, Default)]
struct FailureLog {
    last: Option<String>,
    warned: bool,
}

impl FailureLog {
    fn observe(&mut self, message: String) -> Report {
        if self.last.as_deref() != Some(message.as_str()) {
            self.last = Some(message);
            self.warned = false;
            Report::Debug
        } else if self.warned {
            Report::Quiet
        } else {
            self.warned = true;
            Report::Warn
        }
    }

    fn clear(&mut self) {
        self.last = None;
        self.warned = false;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::bundle::write_bundle;
    use crate::generate::{CertificateAuthority, ServingCertificate};

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("test CA", 1).unwrap()
    }

    fn leaf(ca: &CertificateAuthority) -> ServingCertificate {
        ca.issue_serving(&["localhost".to_owned()], &[], 1).unwrap()
    }

    #[test]
    fn load_from_an_empty_directory_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ReloadingCertResolver::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains(&dir.path().join(CERT_FILE).display().to_string()), "{err}");
    }

    #[test]
    fn load_refuses_a_key_that_belongs_to_another_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        write_bundle(dir.path(), &ca, &leaf(&ca)).unwrap();
        fs::write(dir.path().join(KEY_FILE), leaf(&ca).key_pem).unwrap();
        let err = ReloadingCertResolver::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn fingerprint_is_the_sha256_of_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let serving = leaf(&ca);
        write_bundle(dir.path(), &ca, &serving).unwrap();
        let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
        let der = pem::parse_certificates(serving.cert_pem.as_bytes(), "t").unwrap();
        assert_eq!(resolver.current_fingerprint(), pem::sha256_hex(&der[0]));
        assert_eq!(resolver.current_fingerprint().len(), 64);
        let debug = format!("{resolver:?}");
        assert!(debug.contains(&resolver.current_fingerprint()), "{debug}");
    }

    #[test]
    fn unchanged_files_are_not_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let serving = leaf(&ca);
        write_bundle(dir.path(), &ca, &serving).unwrap();
        let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
        assert!(!resolver.reload().unwrap());
        // Same bytes rewritten (new inode, new mtime): still nothing to do.
        write_bundle(dir.path(), &ca, &serving).unwrap();
        assert!(!resolver.reload().unwrap());
        assert_eq!(resolver.reload_count(), 0);
    }

    #[test]
    fn re_encoded_same_pair_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let serving = leaf(&ca);
        write_bundle(dir.path(), &ca, &serving).unwrap();
        let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
        // Windows line endings: different bytes, same certificate.
        fs::write(dir.path().join(CERT_FILE), serving.cert_pem.replace('\n', "\r\n")).unwrap();
        assert!(!resolver.reload().unwrap());
        assert_eq!(resolver.reload_count(), 0);
    }

    #[test]
    fn a_new_pair_is_swapped_in_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        write_bundle(dir.path(), &ca, &leaf(&ca)).unwrap();
        let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
        let before = resolver.current_fingerprint();
        write_bundle(dir.path(), &ca, &leaf(&ca)).unwrap();
        assert!(resolver.reload().unwrap());
        assert_ne!(resolver.current_fingerprint(), before);
        assert_eq!(resolver.reload_count(), 1);
    }

    #[test]
    fn broken_files_keep_the_old_pair_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        write_bundle(dir.path(), &ca, &leaf(&ca)).unwrap();
        let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
        let before = resolver.current_fingerprint();
        let key_path = dir.path().join(KEY_FILE);

        fs::write(&key_path, b"garbage").unwrap();
        let err = resolver.reload().unwrap_err();
        assert!(err.to_string().contains(&key_path.display().to_string()), "{err}");
        assert_eq!(resolver.current_fingerprint(), before);

        // A new certificate whose key has not arrived yet is refused too.
        let next = leaf(&ca);
        fs::write(dir.path().join(CERT_FILE), &next.cert_pem).unwrap();
        fs::write(&key_path, leaf(&ca).key_pem).unwrap();
        assert!(matches!(resolver.reload(), Err(CertError::KeyMismatch { .. })));
        fs::remove_file(&key_path).unwrap();
        assert!(matches!(resolver.reload(), Err(CertError::Read { .. })));
        assert_eq!(resolver.current_fingerprint(), before);
        assert_eq!(resolver.reload_count(), 0);

        fs::write(&key_path, &next.key_pem).unwrap();
        assert!(resolver.reload().unwrap());
        assert_ne!(resolver.current_fingerprint(), before);
    }

    #[test]
    fn failure_log_warns_once_for_a_persistent_error() {
        let mut log = FailureLog::default();
        assert_eq!(log.observe("a".into()), Report::Debug);
        assert_eq!(log.observe("a".into()), Report::Warn);
        assert_eq!(log.observe("a".into()), Report::Quiet);
        assert_eq!(log.observe("b".into()), Report::Debug);
        assert_eq!(log.observe("b".into()), Report::Warn);
        log.clear();
        assert_eq!(log.observe("b".into()), Report::Debug);
    }

    #[test]
    fn digest_separates_parts() {
        assert_ne!(digest_parts([&b"ab"[..], b"c"]), digest_parts([&b"a"[..], b"bc"]));
    }
}
