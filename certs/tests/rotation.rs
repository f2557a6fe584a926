//! Certificate rotation while serving: explicit reloads, the polling watcher,
//! and the symlink layout of a mounted Kubernetes Secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_echo, connect, peer_fingerprint, spawn_echo_server, write_first_bundle, write_leaf};
use stead_certs::{
    ALPN_H2, CA_FILE, CERT_FILE, CertError, CertificateAuthority, KEY_FILE, ReloadingCertResolver, client_config,
};
use tokio::sync::watch;

const POLL: Duration = Duration::from_millis(20);
/// Generous: the watcher needs one or two polls; this only stops a broken test hanging.
const MAX_POLLS_TO_WAIT: u32 = 500;

/// Waits (polling, no timing assertion) until the served fingerprint differs from `before`.
async fn wait_for_new_fingerprint(resolver: &ReloadingCertResolver, before: &str) -> String {
    for _ in 0..MAX_POLLS_TO_WAIT {
        let now = resolver.current_fingerprint();
        if now != before {
            return now;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("the watcher never picked up the new certificate");
}

#[tokio::test]
async fn reload_switches_new_handshakes_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_first_bundle(dir.path());
    let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
    let addr = spawn_echo_server(resolver.clone()).await;
    let config = client_config(&ca.cert_pem(), &[ALPN_H2]).unwrap();

    let mut open = connect(addr, &config, "localhost").await.unwrap();
    assert_echo(&mut open, b"before rotation").await;
    let old = resolver.current_fingerprint();
    assert_eq!(peer_fingerprint(&open), old);

    write_leaf(dir.path(), &ca);
    assert!(resolver.reload().unwrap());
    let new = resolver.current_fingerprint();
    assert_ne!(new, old);
    assert_eq!(resolver.reload_count(), 1);

    let fresh = connect(addr, &config, "localhost").await.unwrap();
    assert_eq!(peer_fingerprint(&fresh), new);

    // The connection opened before the swap still carries traffic.
    assert_echo(&mut open, b"after rotation, same connection").await;
    assert_eq!(peer_fingerprint(&open), old);
}

#[tokio::test]
async fn garbage_key_keeps_serving_the_old_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_first_bundle(dir.path());
    let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
    let addr = spawn_echo_server(resolver.clone()).await;
    let config = client_config(&ca.cert_pem(), &[]).unwrap();
    let old = resolver.current_fingerprint();

    fs::write(dir.path().join(KEY_FILE), b"-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
    let err = resolver.reload().unwrap_err();
    assert!(matches!(err, CertError::Pem { .. } | CertError::MissingPem { .. }), "{err:?}");

    let mut stream = connect(addr, &config, "localhost").await.unwrap();
    assert_eq!(peer_fingerprint(&stream), old);
    assert_echo(&mut stream, b"still served").await;
    assert_eq!(resolver.reload_count(), 0);
}

#[tokio::test]
async fn watcher_picks_up_a_rewritten_directory_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_first_bundle(dir.path());
    let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
    let addr = spawn_echo_server(resolver.clone()).await;
    let config = client_config(&ca.cert_pem(), &[]).unwrap();
    let (stop, stopped) = watch::channel(false);
    let watcher = resolver.spawn_watcher(POLL, stopped);
    let before = resolver.current_fingerprint();

    write_leaf(dir.path(), &ca);
    let after = wait_for_new_fingerprint(&resolver, &before).await;
    assert_eq!(resolver.reload_count(), 1);
    let stream = connect(addr, &config, "localhost").await.unwrap();
    assert_eq!(peer_fingerprint(&stream), after);

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), watcher).await.expect("watcher did not stop after shutdown").unwrap();
}

#[tokio::test]
async fn watcher_ends_when_the_shutdown_sender_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    write_first_bundle(dir.path());
    let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
    let (stop, stopped) = watch::channel(false);
    let watcher = resolver.spawn_watcher(POLL, stopped);
    drop(stop);
    tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("watcher outlived its shutdown sender")
        .unwrap();
}

#[tokio::test]
async fn watcher_ends_when_the_resolver_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    write_first_bundle(dir.path());
    let resolver = ReloadingCertResolver::load(dir.path()).unwrap();
    let (_stop, stopped) = watch::channel(false);
    let watcher = resolver.spawn_watcher(POLL, stopped);
    drop(resolver);
    tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("watcher kept a dropped resolver alive")
        .unwrap();
}

/// The kubelet's atomic writer: files live in a timestamped directory,
/// `..data` points at it, and the visible names point through `..data`.
/// An update writes a new directory and renames a fresh symlink over `..data`.
struct SecretMount {
    root: PathBuf,
    generation: u32,
}

impl SecretMount {
    fn new(root: &Path, ca: &CertificateAuthority) -> Self {
        let mut mount = Self { root: root.to_path_buf(), generation: 0 };
        mount.publish(ca);
        for name in [CA_FILE, CERT_FILE, KEY_FILE] {
            symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        mount
    }

    /// Writes a new leaf into a new timestamped directory and swaps `..data` to it.
    fn publish(&mut self, ca: &CertificateAuthority) {
        self.generation += 1;
        let previous = fs::read_link(self.root.join("..data")).ok();
        let version = format!("..2026_01_0{}_12_00_00.{}", self.generation, 1000 + self.generation);
        write_leaf(&self.root.join(&version), ca);
        let tmp_link = self.root.join("..data_tmp");
        symlink(&version, &tmp_link).unwrap();
        fs::rename(&tmp_link, self.root.join("..data")).unwrap();
        if let Some(previous) = previous {
            fs::remove_dir_all(self.root.join(previous)).unwrap();
        }
    }
}

#[tokio::test]
async fn symlink_swap_of_a_secret_mount_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("stead test CA", 2).unwrap();
    let mut mount = SecretMount::new(root.path(), &ca);
    let resolver = ReloadingCertResolver::load(root.path()).unwrap();
    let addr = spawn_echo_server(resolver.clone()).await;
    let config = client_config(&ca.cert_pem(), &[ALPN_H2]).unwrap();
    let (_stop, stopped) = watch::channel(false);
    let _watcher = resolver.spawn_watcher(POLL, stopped);

    let mut open = connect(addr, &config, "localhost").await.unwrap();
    let before = resolver.current_fingerprint();
    let visible_link = fs::symlink_metadata(root.path().join(CERT_FILE)).unwrap();

    mount.publish(&ca);
    let after = wait_for_new_fingerprint(&resolver, &before).await;

    // The path the webhook reads is untouched: only its target changed,
    // which is why the watcher compares content rather than mtimes.
    let visible_link_now = fs::symlink_metadata(root.path().join(CERT_FILE)).unwrap();
    assert_eq!(visible_link.modified().unwrap(), visible_link_now.modified().unwrap());

    let fresh = connect(addr, &config, "localhost").await.unwrap();
    assert_eq!(peer_fingerprint(&fresh), after);
    assert_echo(&mut open, b"old connection survives the swap").await;

    // A second rotation works the same way.
    mount.publish(&ca);
    wait_for_new_fingerprint(&resolver, &after).await;
    assert_eq!(resolver.reload_count(), 2);
}
