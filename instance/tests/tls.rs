//! The API's certificate: the pair the controller puts in the credentials
//! Secret (verified against its CA under the controller's server name), or
//! a generated one that such a client refuses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use stead_certs::CertificateAuthority;
use support::{Sandbox, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_mounted_certificate_when_the_secret_has_one() {
    let Some(pg_bin) = support::require_postgres("serves_the_mounted_certificate_when_the_secret_has_one") else {
        return;
    };
    let sandbox = Sandbox::new(pg_bin, "tls");
    let ca = CertificateAuthority::generate("stead instance CA", 1).unwrap();
    let wildcard = format!("*.{}-headless.test.svc", sandbox.cluster);
    let server_name = format!("instance.{}-headless.test.svc", sandbox.cluster);
    let client = Arc::new(stead_certs::client_config(&ca.cert_pem(), &[stead_certs::ALPN_HTTP1]).unwrap());

    // Without tls.crt/tls.key the certificate is generated: a verifying client refuses it.
    let mut generated = sandbox.start(0, &[]);
    let refused =
        support::request_with(Arc::clone(&client), &server_name, generated.api, "GET", "/healthz", None, None).await;
    assert!(refused.is_err(), "a generated certificate is not the CA's: {refused:?}");
    assert_eq!(generated.terminate(std::time::Duration::from_secs(20)), Some(0));

    let leaf = ca.issue_serving(&[wildcard], &[], 1).unwrap();
    sandbox.write_secret("tls.crt", &leaf.cert_pem);
    sandbox.write_secret("tls.key", &leaf.key_pem);
    let mut mounted = sandbox.start(1, &[]);
    let health =
        support::request_with(Arc::clone(&client), &server_name, mounted.api, "GET", "/healthz", None, None).await;
    assert_eq!(health.unwrap().status, 200);
    let status =
        support::request_with(client, &server_name, mounted.api, "GET", "/status", None, Some(TOKEN)).await.unwrap();
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["role"], "bootstrapping");
    assert!(mounted.log().contains("Mounted("), "{}", mounted.log());
    assert_eq!(mounted.terminate(std::time::Duration::from_secs(20)), Some(0));

    // Half a pair is a configuration error, not a silent fallback.
    std::fs::remove_file(sandbox.path().join("secret").join("tls.key")).unwrap();
    let mut broken = sandbox.start_unchecked(2);
    let code = broken.wait_exit(std::time::Duration::from_secs(20));
    assert_eq!(code, Some(1), "{}", broken.log());
    assert!(broken.log().contains("tls.key"), "{}", broken.log());
}
