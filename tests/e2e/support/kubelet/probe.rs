//! Readiness and liveness probes as a kubelet runs them: `httpGet` (HTTPS
//! without verifying the certificate) and `tcpSocket` against the pod's IP.
//! `exec` and `grpc` probes are not run; they count as passing.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::support::http::Endpoint;

/// How a probe is timed, with the API's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default))
}

fn count(value: Option<i32>, default: u32) -> u32 {
    value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default)
}

/// The probe's timing; `period` replaces `periodSeconds` when given (the
/// stand-in asks for readiness every second, so tests need not wait 5 s).
pub fn timing(probe: &Probe, period: Option<Duration>) -> Timing {
    Timing {
        initial_delay: Duration::from_secs(
            probe.initial_delay_seconds.and_then(|v| u64::try_from(v).ok()).unwrap_or(0),
        ),
        period: period.unwrap_or_else(|| seconds(probe.period_seconds, 10)),
        timeout: seconds(probe.timeout_seconds, 1),
        failure_threshold: count(probe.failure_threshold, 3),
        success_threshold: count(probe.success_threshold, 1),
    }
}

/// A named or numbered port of the container.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(number) => u16::try_from(*number).map_err(|_| format!("port {number} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// One probe, blocking for at most about `timeout`; `Err` says why it failed.
pub fn run(probe: &Probe, container: &Container, ip: IpAddr, timeout: Duration) -> Result<(), String> {
    if let Some(get) = &probe.http_get {
        let port = resolve_port(&get.port, container)?;
        let addr = SocketAddr::new(ip, port);
        let https = get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        let endpoint =
            if https { Endpoint::https_unverified(addr).map_err(|e| format!("{e:#}"))? } else { Endpoint::plain(addr) }
                .with_timeout(timeout);
        let path = get.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_owned());
        let response = endpoint.get(&path, None).map_err(|e| format!("{e:#}"))?;
        return if (200..400).contains(&response.status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {}: {}", response.status, response.body.trim()))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, container)?;
        return TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout)
            .map(drop)
            .map_err(|e| format!("dial tcp {ip}:{port}: {e}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener};

    use serde_json::json;

    use super::*;

    fn container() -> Container {
        serde_json::from_value(json!({"name": "database", "ports": [{"name": "api", "containerPort": 8000}]})).unwrap()
    }

    #[test]
    fn timing_defaults_follow_the_api() {
        let probe: Probe = serde_json::from_value(json!({"httpGet": {"port": "api"}})).unwrap();
        let timing = timing(&probe, None);
        assert_eq!(
            timing,
            Timing {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                failure_threshold: 3,
                success_threshold: 1
            }
        );
        let probe: Probe =
            serde_json::from_value(json!({"httpGet": {"port": 1}, "periodSeconds": 5, "failureThreshold": 6})).unwrap();
        let fast = super::timing(&probe, Some(Duration::from_secs(1)));
        assert_eq!((fast.period, fast.failure_threshold), (Duration::from_secs(1), 6));
    }

    #[test]
    fn ports_are_resolved_by_name_or_number() {
        assert_eq!(resolve_port(&IntOrString::String("api".to_owned()), &container()), Ok(8000));
        assert_eq!(resolve_port(&IntOrString::Int(5432), &container()), Ok(5432));
        assert!(resolve_port(&IntOrString::String("db".to_owned()), &container()).is_err());
    }

    #[test]
    fn an_http_probe_passes_on_2xx_and_fails_otherwise() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).unwrap();
                let body = "not yet";
                let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            }
        });
        let probe: Probe = serde_json::from_value(json!({"httpGet": {"port": port, "path": "/readyz"}})).unwrap();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(run(&probe, &container(), ip, Duration::from_secs(5)), Ok(()));
        let err = run(&probe, &container(), ip, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("statuscode: 503") && err.contains("not yet"), "{err}");
        server.join().unwrap();
        // Nobody listens any more.
        assert!(run(&probe, &container(), ip, Duration::from_secs(1)).is_err());
    }
}
