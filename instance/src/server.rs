//! The API's TLS and the HTTPS server.
//!
//! The serving certificate is the pair the controller put in the mounted
//! credentials Secret (`tls.crt` / `tls.key`, issued by its instance CA),
//! reloaded when the kubelet rotates the mount. Without that pair (a
//! Secret made by hand, the tests) a certificate is generated at start, in
//! memory, for the pod's names; nothing is written to disk, and clients then
//! cannot verify it against a CA they know: the bearer token still
//! authenticates the controller, and TLS keeps the token and answers private.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use stead_certs::{
    ALPN_H2, ALPN_HTTP1, CERT_FILE, CertificateAuthority, DEFAULT_POLL_INTERVAL, KEY_FILE, PROTOCOL_VERSIONS,
    ReloadingCertResolver, crypto_provider, pem,
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::error::Error;
use crate::settings::Settings;

/// Validity of the generated certificate; a restart makes a new one.
pub const CERT_VALIDITY_DAYS: u32 = 365;
/// Time a new connection gets to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish at shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// The names the certificate is for: the pod, its DNS names under the
/// headless Service, localhost, and the listening address when specific.
pub fn serving_names(settings: &Settings) -> (Vec<String>, Vec<IpAddr>) {
    let pod = &settings.pod_name;
    let headless = stead_crds::names::headless_service_name(&settings.cluster);
    let ns = &settings.namespace;
    let dns = vec![
        pod.clone(),
        format!("{pod}.{headless}"),
        format!("{pod}.{headless}.{ns}"),
        format!("{pod}.{headless}.{ns}.svc"),
        format!("{pod}.{headless}.{ns}.svc.cluster.local"),
        // The name the controller verifies an instance under.
        format!("instance.{headless}.{ns}.svc"),
        "localhost".to_owned(),
    ];
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    for ip in [Some(settings.api_listen.ip()), settings.pod_ip].into_iter().flatten() {
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    (dns, ips)
}

/// Where the serving certificate comes from.
pub enum ServingCert {
    /// `tls.crt` / `tls.key` in the Secret directory, watched for rotation.
    Mounted(Arc<ReloadingCertResolver>),
    /// Generated at start, in memory.
    Generated,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServingCert::Mounted(resolver) => write!(f, "Mounted({})", resolver.dir().display()),
            ServingCert::Generated => f.write_str("Generated"),
        }
    }
}

/// The server configuration: the mounted pair when the Secret has
/// `tls.crt`, else a generated one. A mounted pair that is incomplete or
/// unusable is an error, never silently replaced.
pub fn tls_config(settings: &Settings) -> Result<(rustls::ServerConfig, ServingCert), Error> {
    let dir = &settings.secret_dir;
    if dir.join(CERT_FILE).exists() || dir.join(KEY_FILE).exists() {
        let resolver = ReloadingCertResolver::load(dir)?;
        let config = stead_certs::server_config(Arc::clone(&resolver))?;
        return Ok((config, ServingCert::Mounted(resolver)));
    }
    Ok((generated_config(settings)?, ServingCert::Generated))
}

/// A rustls server configuration with a freshly generated certificate.
pub fn generated_config(settings: &Settings) -> Result<rustls::ServerConfig, Error> {
    let ca = CertificateAuthority::generate("stead-instance", CERT_VALIDITY_DAYS)?;
    let (dns, ips) = serving_names(settings);
    let leaf = ca.issue_serving(&dns, &ips, CERT_VALIDITY_DAYS)?;
    let mut chain = pem::parse_certificates(leaf.cert_pem.as_bytes(), "generated serving certificate")?;
    chain.extend(pem::parse_certificates(ca.cert_pem().as_bytes(), "generated CA certificate")?);
    let key = pem::parse_private_key(leaf.key_pem.as_bytes(), "generated serving key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|cause| stead_certs::CertError::Tls { config: "server", cause })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|cause| stead_certs::CertError::Tls { config: "server", cause })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// Serves `router` over HTTPS on `listener` until `stop` is cancelled; a
/// mounted certificate is re-read every [`DEFAULT_POLL_INTERVAL`] meanwhile.
pub async fn serve(
    listener: std::net::TcpListener,
    (config, cert): (rustls::ServerConfig, ServingCert),
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    if let ServingCert::Mounted(resolver) = &cert {
        let (flag, watching) = tokio::sync::watch::channel(false);
        let _watcher = resolver.spawn_watcher(DEFAULT_POLL_INTERVAL, watching);
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            let _ = flag.send(true);
        });
    }
    info!(certificate = ?cert, "serving certificate");
    listener.set_nonblocking(true)?;
    let address: Option<SocketAddr> = listener.local_addr().ok();
    let handle: Handle<SocketAddr> = Handle::new();
    let drain = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        drain.graceful_shutdown(Some(GRACE));
    });
    info!(address = ?address, "serving the instance API over HTTPS");
    axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(Arc::new(config)))?
        .handle(handle)
        .first_request_timeout(FIRST_REQUEST_TIMEOUT)
        .serve(router.into_make_service())
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    fn settings(listen: &str, pod_ip: Option<&str>) -> Settings {
        Settings {
            cluster: "orders".into(),
            namespace: "shop".into(),
            pod_name: "orders-1".into(),
            ordinal: Some(1),
            pod_ip: pod_ip.map(|ip| ip.parse().unwrap()),
            pgdata: PathBuf::from("/data/pgdata"),
            pg_port: 5432,
            pg_bin: PathBuf::from("/usr/lib/postgresql/15/bin"),
            secret_dir: PathBuf::from("/nonexistent-secret"),
            primary_host: None,
            parameters: BTreeMap::new(),
            api_listen: listen.parse().unwrap(),
            run_dir: PathBuf::from("/run/stead"),
            shutdown: Default::default(),
            restart: Default::default(),
            timeouts: Default::default(),
        }
    }

    #[test]
    fn generated_certificate_names_the_pod_every_way_it_is_reached() {
        let (dns, ips) = serving_names(&settings("0.0.0.0:8000", Some("10.1.2.3")));
        assert!(dns.contains(&"orders-1.orders-headless.shop.svc".to_owned()), "{dns:?}");
        assert!(dns.contains(&"instance.orders-headless.shop.svc".to_owned()), "{dns:?}");
        assert!(dns.contains(&"localhost".to_owned()));
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["127.0.0.1", "::1", "10.1.2.3"]);
        let (_, ips) = serving_names(&settings("127.0.0.5:8000", None));
        assert_eq!(ips.last().map(ToString::to_string).as_deref(), Some("127.0.0.5"));
    }

    #[test]
    fn without_a_mounted_pair_a_certificate_is_generated() {
        let (config, cert) = tls_config(&settings("127.0.0.1:8000", None)).unwrap();
        assert!(matches!(cert, ServingCert::Generated));
        assert_eq!(config.alpn_protocols, [ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]);
    }
}
