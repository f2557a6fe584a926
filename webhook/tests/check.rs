//! `stead-webhook check` as a pipeline runs it: the real binary, exit codes
//! and output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn check(paths: &[&Path]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stead-webhook"));
    command.arg("check");
    for path in paths {
        command.arg("-f").arg(path);
    }
    let output = command.output().unwrap();
    Run {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check")
}

#[test]
fn a_valid_file_is_admitted_with_defaults_skips_and_warnings() {
    let file = fixtures().join("valid-shop.yaml");
    let run = check(&[&file]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let shown = file.display();
    let expected_out = format!(
        "skipped: {shown} (document 1): v1 Namespace shop is not a DatabaseCluster, DatabaseBackup or App\n\
         databasecluster.stead.dev/orders defaulted: spec.replicas=1, spec.port=5432\n\
         skipped: {shown} (document 3): v1 ConfigMap orders-client is not a DatabaseCluster, DatabaseBackup or App\n\
         databasecluster.stead.dev/payments admitted\n\
         databasecluster.stead.dev/sessions defaulted: spec.port=5432\n\
         checked 1 file(s): 3 admitted, 0 refused, 2 skipped\n"
    );
    assert_eq!(run.stdout, expected_out);
    assert!(run.stderr.contains("Warning: spec.replicas: 2 is even"), "{}", run.stderr);
    assert!(run.stderr.contains("Warning: spec.image: \"postgres:latest\""), "{}", run.stderr);
}

#[test]
fn an_invalid_file_is_refused_like_kubectl_with_every_reason() {
    let file = fixtures().join("invalid-orders.yaml");
    let run = check(&[&file]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    // kubectl prints an Invalid Status with causes as a `* ` list under the object's name.
    assert!(run.stderr.starts_with("The DatabaseCluster \"orders\" is invalid: \n* "), "{}", run.stderr);
    for field in [
        "\n* spec.replicas: Invalid value: 12: must be between 1 and 9, inclusive\n",
        "\n* spec.storage.size: Invalid value: \"10GB\": must be a Kubernetes quantity such as 10Gi",
        "\n* spec.resources.requests[memory]: Invalid value: \"2Gi\": must be less than or equal to memory limit of 1Gi\n",
    ] {
        assert!(run.stderr.contains(field), "{field} missing from {}", run.stderr);
    }
    assert!(run.stdout.ends_with("checked 1 file(s): 0 admitted, 1 refused, 0 skipped\n"), "{}", run.stdout);
}

#[test]
fn yaml_errors_name_file_and_document_and_refuse() {
    let file = fixtures().join("broken.yaml");
    let run = check(&[&file]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("databasecluster.stead.dev/inventory defaulted"), "{}", run.stdout);
    assert!(run.stderr.contains(&format!("error: {} (document 2): not valid YAML:", file.display())), "{}", run.stderr);
    assert!(run.stderr.contains("at line 12, column 5"), "line numbers are the file's: {}", run.stderr);
}

#[test]
fn a_directory_is_walked_and_lists_are_expanded() {
    let run = check(&[&fixtures()]);
    assert_eq!(run.code, 1, "the directory holds refused objects");
    assert!(run.stdout.contains("databasecluster.stead.dev/analytics admitted"), "{}", run.stdout);
    assert!(!run.stdout.contains("notes.txt") && !run.stderr.contains("notes.txt"));
    assert!(run.stdout.ends_with("checked 4 file(s): 5 admitted, 2 refused, 2 skipped\n"), "{}", run.stdout);
}

#[test]
fn a_missing_path_is_an_error() {
    let missing = fixtures().join("does-not-exist.yaml");
    let run = check(&[&missing]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.starts_with(&format!("error: {}:", missing.display())), "{}", run.stderr);
}

#[test]
fn check_needs_a_path() {
    let output = Command::new(env!("CARGO_BIN_EXE_stead-webhook")).arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// The examples shipped in `manifests/examples`: `valid-*` pass, `invalid-*` are refused.
#[test]
fn shipped_examples_pass_or_fail_as_named() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut checked = 0;
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let expected = if name.starts_with("valid-") {
            0
        } else if name.starts_with("invalid-") {
            1
        } else {
            continue;
        };
        let run = check(&[&file]);
        assert_eq!(run.code, expected, "{name}:\n{}{}", run.stdout, run.stderr);
        checked += 1;
    }
    assert!(checked >= 6, "manifests/examples should hold valid-* and invalid-* files, found {checked}");
}

/// `check --server` sends the same reviews over HTTPS to a running server
/// (what `make demo` does) and must print exactly what the offline check prints.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_server_answers_exactly_like_the_offline_check() {
    let server = support::TestServer::start().await;
    let ca_file = server.cert_dir.path().join("ca.crt");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let url = format!("https://localhost:{}", server.tls.port());
    let (offline, online) = tokio::task::spawn_blocking(move || {
        let offline = check(&[&examples]);
        let mut command = Command::new(env!("CARGO_BIN_EXE_stead-webhook"));
        command.args(["check", "--server", &url, "--ca-file"]).arg(&ca_file).arg("-f").arg(&examples);
        let output = command.output().unwrap();
        let online = Run {
            code: output.status.code().unwrap(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        };
        (offline, online)
    })
    .await
    .unwrap();
    assert_eq!(online.code, 1, "{}{}", online.stdout, online.stderr);
    assert_eq!((online.stdout, online.stderr), (offline.stdout, offline.stderr));

    // A server whose certificate was not signed by --ca-file is not trusted.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca.crt");
    std::fs::write(
        &other_ca,
        stead_certs::CertificateAuthority::generate("not the webhook's CA", 1).unwrap().cert_pem(),
    )
    .unwrap();
    let url = format!("https://localhost:{}", server.tls.port());
    let untrusted = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_stead-webhook"))
            .args(["check", "--server", &url, "--ca-file"])
            .arg(&other_ca)
            .args(["-f", "x.yaml"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(untrusted.status.code(), Some(2));
    let stderr = String::from_utf8(untrusted.stderr).unwrap();
    assert!(stderr.contains("TLS handshake with") && stderr.contains("--ca-file"), "{stderr}");
    server.shutdown().await;
}

#[test]
fn an_unreachable_server_is_reported_with_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, stead_certs::CertificateAuthority::generate("ca", 1).unwrap().cert_pem()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stead-webhook"))
        .args(["check", "--server", "https://127.0.0.1:9", "--wait-seconds", "0", "--ca-file"])
        .arg(&ca_file)
        .args(["-f", "x.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("cannot connect to 127.0.0.1:9"), "{stderr}");
}

#[test]
fn backups_are_checked_offline_with_a_note_for_each_skipped_lookup() {
    let run = check(&[&fixtures().with_file_name("check-backups").join("backups.yaml")]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let shown = fixtures().with_file_name("check-backups").join("backups.yaml").display().to_string();
    assert_eq!(
        run.stdout,
        format!(
            "note: {shown} (document 1): offline check: did not look up DatabaseCluster shop/orders (spec.cluster); \
             the webhook warns when it does not exist\n\
             databasebackup.stead.dev/orders-before-upgrade admitted\n\
             note: {shown} (document 2): offline check: did not look up DatabaseCluster shop/orders (spec.cluster); \
             the webhook warns when it does not exist\n\
             note: {shown} (document 3): offline check: did not look up DatabaseBackup shop/orders-before-upgrade \
             (spec.bootstrap.fromBackup); the webhook refuses it unless it is Completed and fits spec.storage.size\n\
             databasecluster.stead.dev/orders-restored defaulted: spec.port=5432\n\
             checked 1 file(s): 2 admitted, 1 refused, 0 skipped\n"
        )
    );
    assert_eq!(
        run.stderr,
        "The DatabaseBackup \"orders-bad-target\" is invalid: spec.target: Unsupported value: \"replica\": supported \
         values: \"prefer-replica\", \"primary\"\n"
    );
}

#[test]
fn apps_are_checked_offline_and_the_skipped_route_check_is_a_warning() {
    let file = fixtures().with_file_name("check-apps").join("apps.yaml");
    let run = check(&[&file]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.stdout,
        "app.stead.dev/shop defaulted: spec.replicas=1, spec.containerPort=8080, spec.service={\"port\":8080}\n\
         checked 1 file(s): 1 admitted, 1 refused, 0 skipped\n"
    );
    assert_eq!(
        run.stderr,
        format!(
            "Warning: spec.ingress: admitted without checking that no other App in namespace \"shop\" claims host \
             \"shop.example.com\" and path \"/\" ({}); check with kubectl get apps.stead.dev -n shop\n\
             The App \"broken\" is invalid: spec.replicas: Invalid value: -1: must be between 0 and 100, inclusive, \
             such as 2\n",
            stead_crds::app_validation::NO_VIEW_OF_APPS
        )
    );
}
