//! etcd, kube-apiserver and (when available) kube-controller-manager on
//! loopback ports, with generated certificates, static-token users, an audit
//! log and kubeconfigs, all in one temporary work directory.
//!
//! The flags follow what envtest (controller-runtime's
//! `pkg/internal/testing/controlplane`) establishes as the minimum for
//! Kubernetes 1.30–1.34, written out explicitly rather than defaulted.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use stead_certs::CertificateAuthority;
use tempfile::TempDir;

use super::assets::{ControlPlaneBinaries, Prerequisites};
use super::audit;
use super::credentials::{self, ADMIN_USER, CONTROLLER_USER, TokenUser};
use super::http::Endpoint;
use super::kubectl::Kubectl;
use super::ports::free_ports;
use super::process::{LOG_TAIL_LINES, ManagedProcess};
use super::wait::Poll;

/// etcd answers `/health` within this.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(60);
/// kube-apiserver passes `/readyz` within this (it runs its bootstrap hooks first).
const APISERVER_START_TIMEOUT: Duration = Duration::from_secs(120);
/// kube-controller-manager has created the `default` ServiceAccount within this.
const CONTROLLER_MANAGER_START_TIMEOUT: Duration = Duration::from_secs(90);
/// Validity of the generated certificates.
const CERT_DAYS: u32 = 2;
/// Service IPs; nothing routes them, the API server only allocates from it.
/// A /16 (65,534 addresses), because the benchmark makes three ClusterIP
/// Services per cluster (`-rw`, `-ro`, `-r`; the headless one takes none),
/// 3,000 at 1,000 clusters, and envtest's /24 would run out.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
/// Controllers run by kube-controller-manager: all defaults (the StatefulSet
/// controller makes the pods the stand-in kubelet runs, the endpointslice
/// controller routes the Services) except node lifecycle: the stand-in Node
/// sends no heartbeats, and its pods must not be marked NotReady for that.
pub const CONTROLLER_MANAGER_CONTROLLERS: &str = "*,-node-lifecycle-controller";

/// Where everything lives inside the work directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }
    /// The stand-in kubelet's pods and volumes.
    pub fn kubelet(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.pki().join("ca.crt")
    }
    pub fn apiserver_cert(&self) -> PathBuf {
        self.pki().join("apiserver.crt")
    }
    pub fn apiserver_key(&self) -> PathBuf {
        self.pki().join("apiserver.key")
    }
    pub fn service_account_private_key(&self) -> PathBuf {
        self.pki().join("sa.key")
    }
    pub fn service_account_public_key(&self) -> PathBuf {
        self.pki().join("sa.pub")
    }
    pub fn token_file(&self) -> PathBuf {
        self.pki().join("tokens.csv")
    }
    pub fn audit_policy(&self) -> PathBuf {
        self.pki().join("audit-policy.json")
    }
    pub fn controller_manager_certs(&self) -> PathBuf {
        self.root.join("kube-controller-manager")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn audit_log(&self) -> PathBuf {
        self.logs().join("audit.log")
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("admin.kubeconfig")
    }
    pub fn controller_kubeconfig(&self) -> PathBuf {
        self.root.join("controller.kubeconfig")
    }
    pub fn kubectl_cache(&self) -> PathBuf {
        self.root.join("kubectl-cache")
    }
    pub fn webhook_certs(&self) -> PathBuf {
        self.root.join("webhook-certs")
    }
}

/// etcd's listeners and storage.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    /// `--unsafe-no-fsync`, when this etcd (3.5+) knows it: tests need no durability.
    pub unsafe_no_fsync: bool,
}

impl EtcdSettings {
    /// What the API server's `--etcd-servers` points at.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// etcd's command line: a single member on loopback, plain HTTP.
pub fn etcd_args(settings: &EtcdSettings) -> Vec<String> {
    let client = settings.client_url();
    let peer = format!("http://127.0.0.1:{}", settings.peer_port);
    let mut args = vec![
        "--name=default".to_owned(),
        format!("--data-dir={}", settings.data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
        "--log-level=warn".to_owned(),
    ];
    if settings.unsafe_no_fsync {
        args.push("--unsafe-no-fsync=true".to_owned());
    }
    args
}

/// Everything kube-apiserver's command line refers to.
#[derive(Debug, Clone)]
pub struct ApiServerSettings {
    pub etcd_url: String,
    pub secure_port: u16,
    pub layout: Layout,
}

impl ApiServerSettings {
    /// The secure URL clients use.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.secure_port)
    }
}

/// kube-apiserver's command line.
pub fn apiserver_args(settings: &ApiServerSettings) -> Vec<String> {
    let layout = &settings.layout;
    vec![
        format!("--etcd-servers={}", settings.etcd_url),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--secure-port={}", settings.secure_port),
        format!("--tls-cert-file={}", layout.apiserver_cert().display()),
        format!("--tls-private-key-file={}", layout.apiserver_key().display()),
        // Ignored while the two files above are given; set so nothing lands elsewhere.
        format!("--cert-dir={}", layout.pki().display()),
        format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
        // Required since 1.20: who issues service-account tokens, and with which keys.
        format!("--service-account-issuer={}", settings.url()),
        format!("--service-account-key-file={}", layout.service_account_public_key().display()),
        format!("--service-account-signing-key-file={}", layout.service_account_private_key().display()),
        format!("--token-auth-file={}", layout.token_file().display()),
        "--authorization-mode=RBAC".to_owned(),
        "--allow-privileged=true".to_owned(),
        // As envtest: no controller creates the `default` ServiceAccount
        // unless kube-controller-manager runs, and pods would need it.
        "--disable-admission-plugins=ServiceAccount".to_owned(),
        format!("--audit-policy-file={}", layout.audit_policy().display()),
        format!("--audit-log-path={}", layout.audit_log().display()),
        "--audit-log-format=json".to_owned(),
        "--audit-log-mode=blocking".to_owned(),
        "--audit-log-maxsize=1024".to_owned(),
    ]
}

/// kube-controller-manager's command line: garbage collection (so
/// ownerReferences delete children), namespaces, service accounts, PDB
/// status, StatefulSets and EndpointSlices (see [`CONTROLLER_MANAGER_CONTROLLERS`]).
pub fn controller_manager_args(layout: &Layout, secure_port: u16) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", layout.admin_kubeconfig().display()),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--secure-port={secure_port}"),
        format!("--cert-dir={}", layout.controller_manager_certs().display()),
        "--leader-elect=false".to_owned(),
        format!("--controllers={CONTROLLER_MANAGER_CONTROLLERS}"),
        format!("--service-account-private-key-file={}", layout.service_account_private_key().display()),
        format!("--root-ca-file={}", layout.ca_cert().display()),
        "--use-service-account-credentials=false".to_owned(),
    ]
}

/// Whether a program's `--help` mentions `flag` (envtest's feature check).
fn supports_flag(program: &Path, flag: &str) -> bool {
    Command::new(program).arg("--help").output().is_ok_and(|out| {
        String::from_utf8_lossy(&out.stdout).contains(flag) || String::from_utf8_lossy(&out.stderr).contains(flag)
    })
}

/// The first line `<program> --version` prints, for the report.
pub fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown version".to_owned())
}

/// What to start.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Start kube-controller-manager when the assets have one.
    pub controller_manager: bool,
}

/// A running control plane; dropping it stops every process, newest first.
pub struct ControlPlane {
    /// In start order.
    processes: Vec<ManagedProcess>,
    layout: Layout,
    ca: CertificateAuthority,
    api_url: String,
    kubectl: Kubectl,
    controller_manager: bool,
    /// Declared last: removed after the processes that write into it stopped.
    work: TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("api_url", &self.api_url)
            .field("work", &self.work.path())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Generates credentials, starts etcd and kube-apiserver (and
    /// kube-controller-manager), and waits until each is ready. On error
    /// everything started so far is stopped, and the work directory is kept
    /// (its path is in the error) so the logs can be read.
    pub fn start(prerequisites: &Prerequisites, options: Options) -> anyhow::Result<Self> {
        let mut work =
            tempfile::Builder::new().prefix("stead-e2e-").tempdir().context("creating the e2e work directory")?;
        let layout = Layout::new(work.path());
        match start_processes(prerequisites, options, &layout) {
            Ok(Started { processes, ca, api_url, kubectl, controller_manager }) => {
                Ok(Self { processes, layout, ca, api_url, kubectl, controller_manager, work })
            }
            // The processes were stopped when `start_processes` returned.
            Err(err) => {
                work.disable_cleanup(true);
                Err(err.context(format!(
                    "the control plane did not start; kept {} (logs/) for investigation",
                    work.path().display()
                )))
            }
        }
    }

    /// kubectl as the admin user.
    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// The directory layout (logs, certificates, kubeconfigs).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The CA behind the API server's certificate; it signs the webhook's too.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// `https://127.0.0.1:<port>`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Whether kube-controller-manager (garbage collection) runs.
    pub fn has_controller_manager(&self) -> bool {
        self.controller_manager
    }

    /// CPU seconds each control plane process has used so far, by name.
    pub fn cpu_seconds(&self) -> anyhow::Result<Vec<(String, f64)>> {
        self.processes.iter().map(|process| Ok((process.name().to_owned(), process.cpu_seconds()?))).collect()
    }

    /// Fails when a control plane process has died.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.processes.iter_mut().try_for_each(ManagedProcess::ensure_running)
    }

    /// Keeps the work directory (logs, audit log, kubeconfigs) after the
    /// run, for a failure to be investigated; returns where it is.
    pub fn keep_work_dir(&mut self) -> PathBuf {
        self.work.disable_cleanup(true);
        self.work.path().to_path_buf()
    }

    /// The end of each process's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        self.processes
            .iter()
            .map(|process| {
                format!("--- {} ({}) ---\n{}\n", process.name(), process.log_path().display(), process.log_tail(lines))
            })
            .collect()
    }

    /// Stops every process, newest first (also done on drop).
    pub fn stop(&mut self) {
        while let Some(mut process) = self.processes.pop() {
            if let Err(err) = process.stop() {
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr(),
                    format_args!("e2e: could not stop {}: {err:#}\n", process.name()),
                );
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What [`start_processes`] hands to [`ControlPlane`].
struct Started {
    processes: Vec<ManagedProcess>,
    ca: CertificateAuthority,
    api_url: String,
    kubectl: Kubectl,
    controller_manager: bool,
}

fn start_processes(prerequisites: &Prerequisites, options: Options, layout: &Layout) -> anyhow::Result<Started> {
    let binaries = &prerequisites.control_plane;
    let [etcd_client, etcd_peer, api_port, kcm_port] =
        free_ports().context("finding free loopback ports for etcd and kube-apiserver")?;

    let ca = CertificateAuthority::generate("stead e2e CA", CERT_DAYS).context("generating the e2e CA")?;
    let admin = TokenUser::superuser(ADMIN_USER)?;
    let controller = TokenUser::unprivileged(CONTROLLER_USER)?;
    let etcd = EtcdSettings {
        data_dir: layout.etcd_data(),
        client_port: etcd_client,
        peer_port: etcd_peer,
        unsafe_no_fsync: supports_flag(&binaries.etcd, "unsafe-no-fsync"),
    };
    let settings = ApiServerSettings { etcd_url: etcd.client_url(), secure_port: api_port, layout: layout.clone() };
    write_credentials(layout, &ca, &settings.url(), &admin, &controller)?;

    // Each process is pushed only once ready; a failed wait drops (stops)
    // it, and the early return drops the ones before it.
    let mut processes = vec![start_etcd(binaries, &etcd, layout)?];

    let api = Endpoint::https(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), api_port), &ca.cert_pem())?;
    let mut apiserver = ManagedProcess::spawn(
        "kube-apiserver",
        &binaries.kube_apiserver,
        &apiserver_args(&settings),
        std::iter::empty::<(&str, &str)>(),
        &layout.logs(),
    )?;
    wait_for_readyz(&api, &admin.token, &mut apiserver)?;
    processes.push(apiserver);

    let kubectl = Kubectl::new(&prerequisites.kubectl, &layout.admin_kubeconfig(), &layout.kubectl_cache());
    let mut controller_manager = false;
    if let (true, Some(kcm)) = (options.controller_manager, binaries.kube_controller_manager.as_ref()) {
        let mut process = ManagedProcess::spawn(
            "kube-controller-manager",
            kcm,
            &controller_manager_args(layout, kcm_port),
            std::iter::empty::<(&str, &str)>(),
            &layout.logs(),
        )?;
        wait_for_controller_manager(&kubectl, &mut process)?;
        processes.push(process);
        controller_manager = true;
    }
    Ok(Started { processes, ca, api_url: settings.url(), kubectl, controller_manager })
}

fn write_credentials(
    layout: &Layout,
    ca: &CertificateAuthority,
    api_url: &str,
    admin: &TokenUser,
    controller: &TokenUser,
) -> anyhow::Result<()> {
    let serving = ca
        .issue_serving(&["localhost".to_owned()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], CERT_DAYS)
        .context("issuing the kube-apiserver serving certificate")?;
    let signing = credentials::service_account_key()?;
    let files = [
        (layout.ca_cert(), ca.cert_pem()),
        (layout.apiserver_cert(), serving.cert_pem),
        (layout.apiserver_key(), serving.key_pem),
        (layout.service_account_private_key(), signing.private_pem),
        (layout.service_account_public_key(), signing.public_pem),
        (layout.token_file(), credentials::token_file(&[admin.clone(), controller.clone()])),
        (layout.audit_policy(), audit::policy(CONTROLLER_USER)),
        (layout.admin_kubeconfig(), credentials::kubeconfig(api_url, &layout.ca_cert(), &admin.name, &admin.token)?),
        (
            layout.controller_kubeconfig(),
            credentials::kubeconfig(api_url, &layout.ca_cert(), &controller.name, &controller.token)?,
        ),
    ];
    for dir in [layout.pki(), layout.logs(), layout.kubectl_cache()] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (path, contents) in files {
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn start_etcd(
    binaries: &ControlPlaneBinaries,
    settings: &EtcdSettings,
    layout: &Layout,
) -> anyhow::Result<ManagedProcess> {
    let mut etcd = ManagedProcess::spawn(
        "etcd",
        &binaries.etcd,
        &etcd_args(settings),
        std::iter::empty::<(&str, &str)>(),
        &layout.logs(),
    )?;
    let health = Endpoint::plain(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), settings.client_port));
    etcd.wait_ready(&format!("etcd to report healthy at {}", health.url("/health")), ETCD_START_TIMEOUT, || {
        Ok(match health.get("/health", None) {
            Ok(response) if response.status == 200 && response.body.contains("true") => Poll::Ready(()),
            Ok(response) => Poll::Pending(format!("{}: {}", response.status, response.body)),
            Err(err) => Poll::Pending(format!("{err:#}")),
        })
    })?;
    Ok(etcd)
}

fn wait_for_readyz(api: &Endpoint, token: &str, process: &mut ManagedProcess) -> anyhow::Result<()> {
    process.wait_ready(&format!("kube-apiserver to pass {}", api.url("/readyz")), APISERVER_START_TIMEOUT, || {
        Ok(match api.get("/readyz", Some(token)) {
            Ok(response) if response.status == 200 => Poll::Ready(()),
            Ok(response) => {
                Poll::Pending(format!("{}: {}", response.status, super::process::tail(&response.body, LOG_TAIL_LINES)))
            }
            Err(err) => Poll::Pending(format!("{err:#}")),
        })
    })
}

fn wait_for_controller_manager(kubectl: &Kubectl, process: &mut ManagedProcess) -> anyhow::Result<()> {
    process.wait_ready(
        "kube-controller-manager to create the default ServiceAccount in namespace default",
        CONTROLLER_MANAGER_START_TIMEOUT,
        || {
            let output = kubectl.run(&["get", "serviceaccount", "default", "-n", "default"])?;
            Ok(if output.success() { Poll::Ready(()) } else { Poll::Pending(output.stderr.trim().to_owned()) })
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
        let prefix = format!("--{name}=");
        let mut values = args.iter().filter_map(|arg| arg.strip_prefix(&prefix));
        let first = values.next();
        assert!(values.next().is_none(), "--{name} given twice in {args:?}");
        first
    }

    fn settings() -> ApiServerSettings {
        ApiServerSettings {
            etcd_url: "http://127.0.0.1:2379".to_owned(),
            secure_port: 6443,
            layout: Layout::new(Path::new("/w")),
        }
    }

    #[test]
    fn apiserver_gets_every_flag_a_modern_release_requires() {
        let args = apiserver_args(&settings());
        let expected = [
            ("etcd-servers", "http://127.0.0.1:2379"),
            ("bind-address", "127.0.0.1"),
            ("advertise-address", "127.0.0.1"),
            ("secure-port", "6443"),
            ("tls-cert-file", "/w/pki/apiserver.crt"),
            ("tls-private-key-file", "/w/pki/apiserver.key"),
            ("service-cluster-ip-range", "10.96.0.0/16"),
            ("service-account-issuer", "https://127.0.0.1:6443"),
            ("service-account-key-file", "/w/pki/sa.pub"),
            ("service-account-signing-key-file", "/w/pki/sa.key"),
            ("token-auth-file", "/w/pki/tokens.csv"),
            ("authorization-mode", "RBAC"),
            ("allow-privileged", "true"),
            ("audit-policy-file", "/w/pki/audit-policy.json"),
            ("audit-log-path", "/w/logs/audit.log"),
            ("audit-log-format", "json"),
        ];
        for (name, value) in expected {
            assert_eq!(flag(&args, name), Some(value), "--{name} in {args:?}");
        }
        // Flags removed from modern releases must not appear.
        for gone in ["insecure-port", "insecure-bind-address", "port"] {
            assert_eq!(flag(&args, gone), None, "--{gone}");
        }
        assert!(args.iter().all(|arg| arg.starts_with("--") && arg.contains('=')));
    }

    #[test]
    fn etcd_is_a_single_loopback_member() {
        let settings = EtcdSettings {
            data_dir: PathBuf::from("/w/etcd"),
            client_port: 2379,
            peer_port: 2380,
            unsafe_no_fsync: false,
        };
        let args = etcd_args(&settings);
        assert_eq!(flag(&args, "data-dir"), Some("/w/etcd"));
        assert_eq!(flag(&args, "listen-client-urls"), Some("http://127.0.0.1:2379"));
        assert_eq!(flag(&args, "advertise-client-urls"), Some("http://127.0.0.1:2379"));
        assert_eq!(flag(&args, "listen-peer-urls"), Some("http://127.0.0.1:2380"));
        assert_eq!(flag(&args, "initial-advertise-peer-urls"), Some("http://127.0.0.1:2380"));
        assert_eq!(flag(&args, "initial-cluster"), Some("default=http://127.0.0.1:2380"));
        assert_eq!(flag(&args, "name"), Some("default"));
        assert_eq!(flag(&args, "unsafe-no-fsync"), None);

        let fast = etcd_args(&EtcdSettings { unsafe_no_fsync: true, ..settings });
        assert_eq!(flag(&fast, "unsafe-no-fsync"), Some("true"));
    }

    #[test]
    fn controller_manager_runs_statefulsets_but_not_node_lifecycle() {
        let args = controller_manager_args(&Layout::new(Path::new("/w")), 10257);
        assert_eq!(flag(&args, "kubeconfig"), Some("/w/admin.kubeconfig"));
        assert_eq!(flag(&args, "controllers"), Some("*,-node-lifecycle-controller"));
        assert_eq!(flag(&args, "leader-elect"), Some("false"));
        assert_eq!(flag(&args, "secure-port"), Some("10257"));
        assert_eq!(flag(&args, "bind-address"), Some("127.0.0.1"));
        assert_eq!(flag(&args, "service-account-private-key-file"), Some("/w/pki/sa.key"));
        assert_eq!(flag(&args, "root-ca-file"), Some("/w/pki/ca.crt"));
    }

    /// etcd from KUBEBUILDER_ASSETS or PATH, when there is one.
    fn installed_etcd() -> Option<PathBuf> {
        let from_assets =
            std::env::var_os(crate::support::assets::ASSETS_ENV).map(|dir| PathBuf::from(dir).join("etcd"));
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("etcd"));
        from_assets.into_iter().chain(on_path).find(|path| path.is_file())
    }

    #[test]
    fn a_real_etcd_becomes_healthy_with_these_flags_and_stops_by_pid() {
        // Silent without etcd: the suite's one skip line is the only output then.
        let Some(etcd) = installed_etcd() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let [client_port, peer_port] = free_ports().unwrap();
        let settings = EtcdSettings {
            data_dir: layout.etcd_data(),
            client_port,
            peer_port,
            unsafe_no_fsync: supports_flag(&etcd, "unsafe-no-fsync"),
        };
        let binaries = ControlPlaneBinaries {
            etcd,
            kube_apiserver: PathBuf::from("/nonexistent/kube-apiserver"),
            kube_controller_manager: None,
        };
        let mut process = start_etcd(&binaries, &settings, &layout).unwrap();
        let health = Endpoint::plain(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), client_port));
        assert_eq!(health.get("/health", None).unwrap().status, 200);
        process.stop().unwrap();
        assert!(health.get("/health", None).is_err(), "etcd still answers after stop");
    }

    #[test]
    fn credentials_are_written_where_the_flags_point() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let ca = CertificateAuthority::generate("test CA", 1).unwrap();
        let admin = TokenUser::superuser(ADMIN_USER).unwrap();
        let controller = TokenUser::unprivileged(CONTROLLER_USER).unwrap();
        write_credentials(&layout, &ca, "https://127.0.0.1:1", &admin, &controller).unwrap();

        let read = |path: PathBuf| fs::read_to_string(path).unwrap();
        assert_eq!(read(layout.ca_cert()), ca.cert_pem());
        assert!(read(layout.apiserver_cert()).starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(read(layout.apiserver_key()).starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(read(layout.service_account_private_key()).contains("PRIVATE KEY"));
        assert!(read(layout.service_account_public_key()).contains("PUBLIC KEY"));
        let tokens = read(layout.token_file());
        assert!(tokens.contains(&format!("{},admin,admin,\"system:masters\"", admin.token)));
        assert!(tokens.contains(&format!("{},stead-controller,stead-controller\n", controller.token)));
        assert!(read(layout.admin_kubeconfig()).contains(&admin.token));
        assert!(read(layout.controller_kubeconfig()).contains(&controller.token));
        assert!(read(layout.audit_policy()).contains("stead-controller"));
        assert!(layout.logs().is_dir() && layout.kubectl_cache().is_dir());
    }
}
