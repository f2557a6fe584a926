//! The `stead-certs` binary, run as a process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{connect, peer_fingerprint, spawn_echo_server};
use stead_certs::{CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE, ReloadingCertResolver, client_config};

fn stead_certs(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stead-certs"));
    command.args(args);
    for var in [
        "STEAD_CERTS_OUT_DIR",
        "STEAD_CERTS_DNS",
        "STEAD_CERTS_IP",
        "STEAD_CERTS_COMMON_NAME",
        "STEAD_CERTS_DAYS",
        "STEAD_CERTS_CA_DAYS",
        "STEAD_CERTS_REUSE_CA",
    ] {
        command.env_remove(var);
    }
    command.envs(envs.iter().map(|(key, value)| (key, value)));
    command.output().unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn assert_success(output: &Output) {
    assert!(output.status.success(), "stead-certs failed: {}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn writes_the_bundle_and_a_reused_ca_signs_the_next_leaf() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("certs");
    let out_arg = out.to_str().unwrap();

    let first = stead_certs(
        &[
            "--out-dir",
            out_arg,
            "--dns",
            "localhost",
            "--dns",
            "stead-webhook.stead-system.svc",
            "--ip",
            "127.0.0.1",
            "--days",
            "2",
        ],
        &[],
    );
    assert_success(&first);
    let printed: Vec<String> = String::from_utf8(first.stdout).unwrap().lines().map(str::to_owned).collect();
    let expected: Vec<String> =
        [CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE].iter().map(|name| out.join(name).display().to_string()).collect();
    assert_eq!(printed, expected);
    assert_eq!(mode(&out.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&out.join(CA_KEY_FILE)), 0o600);
    for public in [CA_FILE, CERT_FILE] {
        assert!(fs::read_to_string(out.join(public)).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    let ca_pem = fs::read_to_string(out.join(CA_FILE)).unwrap();
    let first_leaf = fs::read(out.join(CERT_FILE)).unwrap();
    let resolver = ReloadingCertResolver::load(&out).unwrap();
    let addr = spawn_echo_server(resolver.clone()).await;
    let config = client_config(&ca_pem, &[]).unwrap();
    let stream = connect(addr, &config, "stead-webhook.stead-system.svc").await.unwrap();
    assert_eq!(peer_fingerprint(&stream), resolver.current_fingerprint());

    let second = stead_certs(&["--out-dir", out_arg, "--reuse-ca"], &[]);
    assert_success(&second);
    assert!(String::from_utf8_lossy(&second.stderr).contains("reused"));
    assert_eq!(fs::read_to_string(out.join(CA_FILE)).unwrap(), ca_pem, "CA kept");
    assert_ne!(fs::read(out.join(CERT_FILE)).unwrap(), first_leaf, "leaf replaced");
    assert_eq!(mode(&out.join(KEY_FILE)), 0o600);

    // Clients holding the old ca.crt accept the new leaf, served without restart.
    assert!(resolver.reload().unwrap());
    let stream = connect(addr, &config, "localhost").await.unwrap();
    assert_eq!(peer_fingerprint(&stream), resolver.current_fingerprint());
}

#[test]
fn out_dir_comes_from_the_environment_when_the_flag_is_absent() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("from-env");
    let output = stead_certs(&[], &[("STEAD_CERTS_OUT_DIR", &out)]);
    assert_success(&output);
    assert!(out.join(CERT_FILE).is_file());
    assert_eq!(mode(&out.join(KEY_FILE)), 0o600);
}

#[test]
fn bad_arguments_fail_with_a_message_naming_them() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--out-dir", out, "--days", "0"], "--days"),
        (&["--out-dir", out, "--ca-days", "99999"], "--ca-days"),
        (&["--out-dir", out, "--ip", "not-an-ip"], "--ip"),
        (&["--out-dir", out, "--dns", "bad name"], "bad name"),
    ];
    for (args, needle) in cases {
        let output = stead_certs(args, &[]);
        assert!(!output.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let output = stead_certs(&[], &[]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--out-dir"));
}
