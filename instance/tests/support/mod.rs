//! Real stead-instance processes on 127.0.0.1 for the integration tests.
//!
//! - PostgreSQL refuses to run as root and CI runs tests as root, so when the
//!   test process is root each manager is started as the Debian `postgres`
//!   user through `setpriv` (which execs, so the pid we hold is the manager's)
//!   and the sandbox directory (under /tmp, mode 0700) belongs to that user.
//! - The API's certificate is generated at each start, so the client accepts
//!   any certificate (signatures are still checked) and authenticates with
//!   the bearer token.
//! - Tests skip, with one line, only when the PostgreSQL binaries are absent.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

pub const TOKEN: &str = "test-controller-token";
pub const SUPERUSER_PASSWORD: &str = "super'secret:1";
pub const REPLICATION_PASSWORD: &str = "repl:secret\\2";

/// The PostgreSQL programs, or `None` (the caller prints the skip line).
pub fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STEAD_PG_BIN") {
        let dir = PathBuf::from(dir);
        // Set by hand and wrong is a mistake to report, not a reason to skip.
        assert!(dir.join("postgres").is_file(), "STEAD_PG_BIN={} has no postgres binary", dir.display());
        return Some(dir);
    }
    stead_instance::settings::discover_pg_bin()
}

/// Prints why the test is skipped and returns `None` when postgres is absent.
///
/// In CI (`CI=true`), where `.ci/run` installs PostgreSQL, a missing binary
/// fails the test instead: a green run must have run real PostgreSQL.
pub fn require_postgres(test: &str) -> Option<PathBuf> {
    let found = pg_bin();
    if found.is_none() && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: no PostgreSQL binaries, but CI=true: .ci/run should have installed postgresql-15");
    }
    if found.is_none() {
        println!("{test}: skipped: no PostgreSQL binaries (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH)");
    }
    found
}

/// The uid/gid managers run as: ourselves, or `postgres` when we are root.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub via_setpriv: bool,
}

pub fn run_as() -> RunAs {
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    if uid != 0 {
        return RunAs { uid, gid, via_setpriv: false };
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("run id");
        assert!(
            out.status.success(),
            "tests run as root and need the `postgres` OS user (apt-get install postgresql creates it)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
    };
    RunAs { uid: id("-u"), gid: id("-g"), via_setpriv: true }
}

/// A private directory under /tmp owned by the user the managers run as.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub run_as: RunAs,
    pub pg_bin: PathBuf,
    /// Unique per test process, so concurrent runs never share names.
    pub cluster: String,
}

impl Sandbox {
    pub fn new(pg_bin: PathBuf, tag: &str) -> Self {
        let run_as = run_as();
        let dir = tempfile::Builder::new().prefix("stead-it-").tempdir_in("/tmp").expect("temp dir");
        let sandbox = Sandbox { dir, run_as, pg_bin, cluster: format!("{tag}{}", std::process::id()) };
        sandbox.own(sandbox.path(), 0o700);
        let secret = sandbox.path().join("secret");
        sandbox.mkdir(&secret);
        for (key, value) in [
            ("username", "postgres"),
            ("password", SUPERUSER_PASSWORD),
            ("replication-password", REPLICATION_PASSWORD),
            ("controller-token", TOKEN),
        ] {
            // Kubernetes writes Secret files without a trailing newline; a newline is tolerated.
            sandbox.write_secret(key, &format!("{value}\n"));
        }
        sandbox
    }

    /// Writes one key of the mounted credentials Secret.
    pub fn write_secret(&self, key: &str, value: &str) {
        let path = self.path().join("secret").join(key);
        fs::File::create(&path).unwrap().write_all(value.as_bytes()).unwrap();
        self.own(&path, 0o600);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn mkdir(&self, dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        self.own(dir, 0o700);
    }

    fn own(&self, path: &Path, mode: u32) {
        if self.run_as.via_setpriv {
            chown(path, Some(self.run_as.uid), Some(self.run_as.gid)).unwrap();
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    pub fn pod_name(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// Starts a manager for pod `ordinal` with its own PGDATA and ports, and
    /// waits for its API to listen.
    pub fn start(&self, ordinal: u32, extra_env: &[(&str, &str)]) -> Manager {
        let manager = self.spawn(ordinal, extra_env);
        manager.wait_api();
        manager
    }

    /// [`Sandbox::start`] without waiting for the API (for managers expected to fail).
    pub fn start_unchecked(&self, ordinal: u32) -> Manager {
        self.spawn(ordinal, &[])
    }

    fn spawn(&self, ordinal: u32, extra_env: &[(&str, &str)]) -> Manager {
        let node = self.path().join(format!("n{ordinal}"));
        self.mkdir(&node);
        let pg_port = free_port();
        let api_port = free_port();
        let pod = self.pod_name(ordinal);
        let log_path = node.join("manager.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut command = if self.run_as.via_setpriv {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]);
            c.arg(env!("CARGO_BIN_EXE_stead-instance"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_stead-instance"))
        };
        command
            .env("STEAD_CLUSTER", &self.cluster)
            .env("STEAD_NAMESPACE", "test")
            .env("STEAD_POD_NAME", &pod)
            .env("STEAD_PGDATA", node.join("pgdata"))
            .env("STEAD_PG_PORT", pg_port.to_string())
            .env("STEAD_PG_BIN", &self.pg_bin)
            .env("STEAD_SECRET_DIR", self.path().join("secret"))
            .env("STEAD_API_LISTEN", format!("127.0.0.1:{api_port}"))
            .env("STEAD_RUN_DIR", node.join("run"))
            .env("STEAD_PARAMETERS", r#"{"shared_buffers":"16MB","max_connections":"30","port":"1"}"#)
            .env("HOME", &node)
            .env("RUST_LOG", "info")
            // A session left open shows the escalation to fast shutdown quickly.
            .env("STEAD_SMART_SHUTDOWN_SECONDS", "1")
            .env_remove("STEAD_PRIMARY_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start stead-instance");
        Manager {
            child: Some(child),
            pod,
            pgdata: node.join("pgdata"),
            log_path,
            pg_port,
            api: SocketAddr::from(([127, 0, 0, 1], api_port)),
        }
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One stead-instance process.
pub struct Manager {
    child: Option<Child>,
    pub pod: String,
    pub pgdata: PathBuf,
    pub log_path: PathBuf,
    pub pg_port: u16,
    pub api: SocketAddr,
}

/// An HTTP answer: status code and body text.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

impl Manager {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_api(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.api).is_err() {
            assert!(Instant::now() < deadline, "{}: the API never listened; log:\n{}", self.pod, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn request(&self, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Answer {
        request(self.api, method, path, body, token).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request("GET", path, None, Some(TOKEN)).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Answer {
        self.request("POST", path, Some(body), Some(TOKEN)).await
    }

    pub async fn status(&self) -> serde_json::Value {
        let answer = self.get("/status").await;
        assert_eq!(answer.status, 200, "{}: /status: {}", self.pod, answer.body);
        answer.json()
    }

    /// Polls `/status` until `accept` holds (or panics after `limit`).
    pub async fn wait_status(
        &self,
        what: &str,
        limit: Duration,
        accept: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status().await;
            if accept(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} not reached within {limit:?}; last status {status}; log:\n{}",
                self.pod,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A connection to this instance's postgres over TCP, as the superuser with its password.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.pg_port)
            .user("postgres")
            .password(SUPERUSER_PASSWORD)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| panic!("{}: cannot connect to postgres on port {}: {err}", self.pod, self.pg_port));
        tokio::spawn(connection);
        client
    }

    /// A connection over TCP as the superuser with `password`; the error's text when refused.
    pub async fn sql_as(&self, password: &str) -> Result<tokio_postgres::Client, String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.pg_port)
            .user("postgres")
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|err| err.as_db_error().map(|db| db.message().to_owned()).unwrap_or_else(|| err.to_string()))?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// The postmaster's pid from `postmaster.pid`, if it runs.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// VmHWM (peak resident set) of the manager process, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Sends SIGTERM and waits for the manager to exit; returns its exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        signal(self.child.as_ref()?.id(), rustix::process::Signal::TERM);
        self.wait_exit(limit)
    }

    /// Waits for the manager to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{}: did not exit within {limit:?}; log:\n{}", self.pod, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Processes still running for this instance: the postmaster (its command
    /// line names PGDATA) and its children (their titles start with the
    /// `cluster_name`, which is the pod name).
    pub fn leftover_processes(&self) -> Vec<String> {
        let pgdata = self.pgdata.to_string_lossy().into_owned();
        let title = format!("postgres: {}:", self.pod);
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(raw) = fs::read(entry.path().join("cmdline")) else { continue };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if (cmdline.contains(&pgdata) || cmdline.starts_with(&title)) && !cmdline.contains("stead-instance") {
                found.push(format!("{name}: {cmdline}"));
            }
        }
        found
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // A failed test must not leave processes behind: the manager and its postmaster.
        if let Some(mut child) = self.child.take() {
            signal(child.id(), rustix::process::Signal::KILL);
            let _ = child.wait();
        }
        // Only a process that is this instance's postmaster (postmaster.pid may be stale).
        let ours = |pid: &i32| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|raw| String::from_utf8_lossy(&raw).contains(&*self.pgdata.to_string_lossy()))
        };
        if let Some(pid) = self.postmaster_pid().filter(ours).and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// Polls `check` until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Accepts whatever certificate the server shows: it is generated at each
/// start and there is no CA to trust. Handshake signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = stead_certs::crypto_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(stead_certs::PROTOCOL_VERSIONS)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTPS request over a fresh connection (HTTP/1.1), accepting any certificate.
pub async fn request(address: SocketAddr, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Answer {
    request_with(client_config(), "localhost", address, method, path, body, token).await.unwrap()
}

/// One HTTPS request with the given client configuration and server name;
/// `Err` when the TLS handshake fails.
pub async fn request_with(
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Result<Answer, std::io::Error> {
    let server_name = ServerName::try_from(server_name.to_owned()).unwrap();
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = connector.connect(server_name, tcp).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
        tokio::spawn(connection);
        let mut builder = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default().to_owned()))).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Ok(Answer { status, body: String::from_utf8_lossy(&bytes).into_owned() })
    };
    tokio::time::timeout(Duration::from_secs(180), attempt).await.expect("the API answered within 180s")
}
