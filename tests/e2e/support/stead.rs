//! stead's side of the suite: the CRD, the webhook server and its two
//! configurations, and the controller, each as a real process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::control_plane::ControlPlane;
use super::credentials;
use super::http::Endpoint;
use super::kubectl::Kubectl;
use super::metrics;
use super::ports::free_ports;
use super::process::ManagedProcess;
use super::wait::{self, Poll};

/// The webhook binary's name.
pub const WEBHOOK_BINARY: &str = "stead-webhook";
/// The controller binary's name.
pub const CONTROLLER_BINARY: &str = "stead-controller";
/// Name of the CRD.
pub const CRD_NAME: &str = "databaseclusters.stead.dev";
/// Name of the DatabaseBackup CRD.
pub const BACKUP_CRD_NAME: &str = "databasebackups.stead.dev";
/// Name of the App CRD.
pub const APP_CRD_NAME: &str = "apps.stead.dev";
/// The VolumeSnapshot CRDs the suite installs (upstream's, copied as test data).
pub const VOLUME_SNAPSHOT_CRDS: [&str; 3] = [
    "volumesnapshotclasses.snapshot.storage.k8s.io",
    "volumesnapshotcontents.snapshot.storage.k8s.io",
    "volumesnapshots.snapshot.storage.k8s.io",
];
/// Names of the webhook configurations the suite registers.
pub const MUTATING_CONFIGURATION: &str = "stead-e2e-mutating";
pub const VALIDATING_CONFIGURATION: &str = "stead-e2e-validating";
/// Webhook names; kubectl shows them in `admission webhook "<name>" denied the request`.
pub const MUTATING_WEBHOOK: &str = "mutate.stead.dev";
pub const VALIDATING_WEBHOOK: &str = "validate.stead.dev";
/// Counter names the controller exposes.
pub const RECONCILES_TOTAL: &str = "stead_controller_reconciles_total";
pub const STATUS_WRITES_TOTAL: &str = "stead_controller_status_writes_total";
pub const CHILD_APPLIES_TOTAL: &str = "stead_controller_child_applies_total";
/// 1 while the controller reconciles (holds the lease), 0 while it stands by.
pub const LEADER: &str = "stead_controller_leader";

/// Text only the validating webhook produces for `spec.storage.size: 10GB`
/// (the CRD schema accepts any short string there).
pub const WEBHOOK_QUANTITY_MESSAGE: &str = r#"spec.storage.size: Invalid value: "10GB": must be a Kubernetes quantity"#;

const CRD_TIMEOUT: Duration = Duration::from_secs(60);
const WEBHOOK_START_TIMEOUT: Duration = Duration::from_secs(60);
const CONTROLLER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Webhook configurations reach the API server's admission chain asynchronously.
const WEBHOOK_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(60);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Installs the CRDs rendered from the Rust types (DatabaseCluster,
/// DatabaseBackup and App) and waits until kubectl can use them.
pub fn install_crd(kubectl: &Kubectl) -> anyhow::Result<()> {
    let rendered = [
        ("DatabaseCluster", CRD_NAME, stead_crds::crd::crd_yaml()),
        ("DatabaseBackup", BACKUP_CRD_NAME, stead_crds::crd::backup_crd_yaml()),
        ("App", APP_CRD_NAME, stead_crds::crd::app_crd_yaml()),
    ];
    for (kind, name, yaml) in rendered {
        let yaml = yaml.with_context(|| format!("rendering the {kind} CRD"))?;
        kubectl
            .run_with_input(&["apply", "--server-side", "--field-manager=stead-e2e", "-f", "-"], Some(&yaml))?
            .ok()
            .with_context(|| format!("installing the {kind} CRD"))?;
        let crd = format!("crd/{name}");
        kubectl
            .ok(&["wait", "--for=condition=Established", "--timeout=60s", &crd])
            .with_context(|| format!("waiting for the {kind} CRD to be Established"))?;
        wait_for_discovery(kubectl, name)?;
    }
    Ok(())
}

fn wait_for_discovery(kubectl: &Kubectl, resource: &str) -> anyhow::Result<()> {
    wait::until(&format!("kubectl to discover {resource}"), CRD_TIMEOUT, || {
        let output = kubectl.run(&["get", resource, "-A", "-o", "name"])?;
        Ok(if output.success() { Poll::Ready(()) } else { Poll::Pending(output.stderr.trim().to_owned()) })
    })
}

/// Where the suite keeps its copy of the upstream VolumeSnapshot CRDs.
pub fn volume_snapshot_crds_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/testdata/volumesnapshot-crds")
}

/// Installs the VolumeSnapshot CRDs (server-side, from the suite's copy),
/// then the default VolumeSnapshotClass `stead-e2e` of the stand-in
/// snapshotter's driver, and waits until kubectl can use them.
pub fn install_volume_snapshot_crds(kubectl: &Kubectl) -> anyhow::Result<()> {
    let dir = volume_snapshot_crds_dir();
    let dir = dir.to_str().with_context(|| format!("{} is not UTF-8", dir.display()))?;
    kubectl
        .ok(&["apply", "--server-side", "--field-manager=stead-e2e", "-f", dir])
        .context("installing the VolumeSnapshot CRDs")?;
    for name in VOLUME_SNAPSHOT_CRDS {
        let crd = format!("crd/{name}");
        kubectl
            .ok(&["wait", "--for=condition=Established", "--timeout=60s", &crd])
            .with_context(|| format!("waiting for the CRD {name} to be Established"))?;
        wait_for_discovery(kubectl, name)?;
    }
    kubectl
        .apply(&super::snapshotter::default_class(), &["--server-side", "--field-manager=stead-e2e"])?
        .ok()
        .context("creating the VolumeSnapshotClass stead-e2e")?;
    Ok(())
}

/// The namespace the controller keeps its key Secret in, as `stead-system` in an install.
pub const CONTROLLER_NAMESPACE: &str = "stead-system";

/// The Role `manifests/rbac` ships for the controller's own namespace (Lease, key Secret).
pub fn controller_role_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/rbac/leader-election-role.yaml")
}

/// The ClusterRole `manifests/rbac` ships for the controller.
pub fn controller_cluster_role_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/rbac/controller-clusterrole.yaml")
}

/// Grants the controller's user exactly the ClusterRole stead ships, and
/// waits until the API server's authorizer says so: the controller then runs
/// with the least-privilege RBAC of the manifests, not as a superuser.
pub fn install_controller_rbac(kubectl: &Kubectl) -> anyhow::Result<()> {
    let role = controller_cluster_role_path();
    let role = role.to_str().with_context(|| format!("{} is not UTF-8", role.display()))?;
    kubectl
        .ok(&["apply", "--server-side", "--field-manager=stead-e2e", "-f", role])
        .context("installing the controller's ClusterRole")?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "stead-controller-e2e"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "stead-controller"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": credentials::CONTROLLER_USER}]
    });
    kubectl
        .apply(&binding, &["--server-side", "--field-manager=stead-e2e"])?
        .ok()
        .context("binding the controller's ClusterRole")?;
    // Its own namespace: the shipped Role (the Lease and its key Secret), bound to it.
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NAMESPACE}});
    kubectl
        .apply(&namespace, &["--server-side", "--field-manager=stead-e2e"])?
        .ok()
        .context("creating stead-system")?;
    let role = controller_role_path();
    let role = role.to_str().with_context(|| format!("{} is not UTF-8", role.display()))?;
    kubectl
        .ok(&["apply", "--server-side", "--field-manager=stead-e2e", "-n", CONTROLLER_NAMESPACE, "-f", role])
        .context("installing the controller's Role")?;
    let role_binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "stead-controller-e2e", "namespace": CONTROLLER_NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "stead-controller-leader-election"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": credentials::CONTROLLER_USER}]
    });
    kubectl
        .apply(&role_binding, &["--server-side", "--field-manager=stead-e2e"])?
        .ok()
        .context("binding the controller's Role")?;
    let as_controller = format!("--as={}", credentials::CONTROLLER_USER);
    wait::until("the controller's RBAC to take effect", CRD_TIMEOUT, || {
        let output = kubectl.run(&[
            "auth",
            "can-i",
            "watch",
            "databaseclusters.stead.dev",
            "--all-namespaces",
            &as_controller,
        ])?;
        Ok(if output.stdout.trim() == "yes" { Poll::Ready(()) } else { Poll::Pending(output.describe()) })
    })
}

/// stead-webhook's command line. `kubeconfig` is for the reads of admission
/// (a backup's cluster, a restored backup); the suite gives it the admin's.
pub fn webhook_args(port: u16, metrics_port: u16, cert_dir: &Path, kubeconfig: &Path) -> Vec<String> {
    vec![
        "serve".to_owned(),
        "--listen".to_owned(),
        loopback(port).to_string(),
        "--cert-dir".to_owned(),
        cert_dir.display().to_string(),
        "--metrics-listen".to_owned(),
        loopback(metrics_port).to_string(),
        "--kubeconfig".to_owned(),
        kubeconfig.display().to_string(),
    ]
}

/// The two webhook configurations (a v1 List), calling the server at
/// `base_url` (`https://127.0.0.1:<port>`) and trusting `ca_pem`. Rules match
/// `manifests/webhook/*`: DatabaseCluster CREATE/UPDATE for defaulting, plus
/// DELETE for validation; DatabaseBackup CREATE/UPDATE for both (never
/// DELETE, so retention does not depend on the webhook); App CREATE/UPDATE;
/// the scale subresources are not sent to the webhook.
/// Both carry the shipped `matchConditions`, naming the suite's controller
/// user where an install names its ServiceAccount.
pub fn webhook_configurations(base_url: &str, ca_pem: &str) -> anyhow::Result<Value> {
    let ca_bundle = credentials::base64(ca_pem.as_bytes());
    let webhook = |name: &str, path: &str, operations: &[&str]| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "timeoutSeconds": 10,
            "clientConfig": {"url": format!("{base_url}{path}"), "caBundle": ca_bundle},
            "rules": [{
                "apiGroups": [stead_crds::cluster::GROUP],
                "apiVersions": [stead_crds::cluster::VERSION],
                "resources": [stead_crds::cluster::PLURAL],
                "operations": operations,
                "scope": "Namespaced"
            }, {
                "apiGroups": [stead_crds::cluster::GROUP],
                "apiVersions": [stead_crds::cluster::VERSION],
                "resources": [stead_crds::backup::PLURAL],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced"
            }, {
                "apiGroups": [stead_crds::cluster::GROUP],
                "apiVersions": [stead_crds::cluster::VERSION],
                "resources": [stead_crds::app::PLURAL],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced"
            }]
        })
    };
    let mut mutating = webhook(MUTATING_WEBHOOK, "/mutate", &["CREATE", "UPDATE"]);
    mutating["reinvocationPolicy"] = json!("IfNeeded");
    let mut validating = webhook(VALIDATING_WEBHOOK, "/validate", &["CREATE", "UPDATE", "DELETE"]);
    mutating["matchConditions"] =
        shipped_match_conditions("mutatingwebhookconfiguration.yaml", credentials::CONTROLLER_USER)?;
    validating["matchConditions"] =
        shipped_match_conditions("validatingwebhookconfiguration.yaml", credentials::CONTROLLER_USER)?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": MUTATING_CONFIGURATION},
                "webhooks": [mutating]
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": VALIDATING_CONFIGURATION},
                "webhooks": [validating]
            }
        ]
    }))
}

/// How the shipped webhook configurations name the controller:
/// `'system:serviceaccount:' + '<namespace>' + ':' + '<name>'` (kustomize
/// replaces the quoted namespace and name).
const SERVICE_ACCOUNT_PREFIX: &str = "'system:serviceaccount:' + '";

/// `expression` with the controller's ServiceAccount replaced by `user`
/// (the suite's controller is a plain user, not a ServiceAccount).
pub fn with_controller_user(expression: &str, user: &str) -> anyhow::Result<String> {
    let start = expression
        .find(SERVICE_ACCOUNT_PREFIX)
        .with_context(|| format!("no {SERVICE_ACCOUNT_PREFIX}…' in the matchCondition {expression:?}"))?;
    let rest = &expression[start + SERVICE_ACCOUNT_PREFIX.len()..];
    // <namespace>' + ':' + '<name>'
    let malformed =
        || format!("the ServiceAccount in {expression:?} is not 'system:serviceaccount:' + '<ns>' + ':' + '<name>'");
    let (_namespace, rest) = rest.split_once("' + ':' + '").with_context(malformed)?;
    let (_name, rest) = rest.split_once('\'').with_context(malformed)?;
    Ok(format!("{}'{user}'{rest}", &expression[..start]))
}

/// The `matchConditions` that `manifests/webhook/<file>` gives its webhook,
/// with `user` in place of the controller's ServiceAccount.
pub fn shipped_match_conditions(file: &str, user: &str) -> anyhow::Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/webhook").join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: Value = serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let conditions = config
        .pointer("/webhooks/0/matchConditions")
        .and_then(Value::as_array)
        .with_context(|| format!("{} has no webhooks[0].matchConditions", path.display()))?;
    let mut rewritten = Vec::new();
    for condition in conditions {
        let expression = condition
            .get("expression")
            .and_then(Value::as_str)
            .with_context(|| format!("a matchCondition in {} has no expression", path.display()))?;
        let expression = if expression.contains(SERVICE_ACCOUNT_PREFIX) {
            with_controller_user(expression, user)?
        } else {
            expression.to_owned()
        };
        rewritten
            .push(json!({"name": condition.get("name").cloned().unwrap_or(Value::Null), "expression": expression}));
    }
    Ok(Value::Array(rewritten))
}

/// A running stead-webhook with a serving certificate from the e2e CA.
#[derive(Debug)]
pub struct Webhook {
    process: ManagedProcess,
    base_url: String,
    ca_pem: String,
}

impl Webhook {
    /// Writes `tls.crt`/`tls.key` for 127.0.0.1, starts the server and waits
    /// for its `/readyz` over HTTPS.
    pub fn start(binary: &Path, control_plane: &ControlPlane) -> anyhow::Result<Self> {
        let [port, metrics_port] = free_ports().context("finding free loopback ports for stead-webhook")?;
        let layout = control_plane.layout();
        let ca = control_plane.ca();
        let serving = ca
            .issue_serving(&["localhost".to_owned()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 2)
            .context("issuing the webhook's serving certificate")?;
        stead_certs::write_bundle(&layout.webhook_certs(), ca, &serving)
            .context("writing the webhook's certificate directory")?;
        let mut process = ManagedProcess::spawn(
            WEBHOOK_BINARY,
            binary,
            &webhook_args(port, metrics_port, &layout.webhook_certs(), &layout.admin_kubeconfig()),
            std::iter::empty::<(&str, &str)>(),
            &layout.logs(),
        )?;
        let endpoint = Endpoint::https(loopback(port), &ca.cert_pem())?;
        wait_for_ok(&mut process, &endpoint, "/readyz", WEBHOOK_START_TIMEOUT)?;
        Ok(Self { process, base_url: format!("https://{}", loopback(port)), ca_pem: ca.cert_pem() })
    }

    /// Registers both configurations and waits until the API server calls
    /// the webhook: a server-side dry run of an invalid cluster is refused
    /// with the webhook's message, and one without replicas is defaulted.
    pub fn register(&mut self, kubectl: &Kubectl) -> anyhow::Result<()> {
        kubectl
            .apply(&webhook_configurations(&self.base_url, &self.ca_pem)?, &[])?
            .ok()
            .context("creating the webhook configurations")?;
        let invalid = probe_cluster(Some("10GB"));
        self.process.wait_ready(
            "the validating webhook configuration to take effect",
            WEBHOOK_PROPAGATION_TIMEOUT,
            || {
                let output = kubectl.create(&invalid, &["--dry-run=server"])?;
                Ok(if output.stderr.contains(WEBHOOK_QUANTITY_MESSAGE) {
                    Poll::Ready(())
                } else {
                    Poll::Pending(output.describe())
                })
            },
        )?;
        let valid = probe_cluster(None);
        self.process.wait_ready(
            "the mutating webhook configuration to take effect",
            WEBHOOK_PROPAGATION_TIMEOUT,
            || {
                let output = kubectl.create(&valid, &["--dry-run=server", "-o", "jsonpath={.spec.replicas}"])?;
                Ok(if output.success() && output.stdout.trim() == "1" {
                    Poll::Ready(())
                } else {
                    Poll::Pending(output.describe())
                })
            },
        )
    }

    /// The server process (logs).
    pub fn process(&self) -> &ManagedProcess {
        &self.process
    }

    /// `https://127.0.0.1:<port>`, where the configurations point.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The CA the configurations trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// A cluster in namespace `default` for dry-run probes; `size` overrides the
/// valid `1Gi`, and replicas are left out for the mutating webhook to fill.
fn probe_cluster(size: Option<&str>) -> Value {
    json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseCluster",
        "metadata": {"name": "e2e-webhook-probe", "namespace": "default"},
        "spec": {"image": "postgres:17.2", "storage": {"size": size.unwrap_or("1Gi")}}
    })
}

/// How to run the controller.
#[derive(Debug, Clone, Default)]
pub struct ControllerOptions {
    /// `--namespace`: watch only this one.
    pub namespace: Option<String>,
    /// `--concurrency`.
    pub concurrency: Option<u32>,
    /// `--leader-elect`, as this identity (`POD_NAME`), on the Lease in this namespace (`POD_NAMESPACE`).
    pub leader_elect: Option<LeaderElection>,
}

/// Who competes for the Lease, and where it is.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub identity: String,
    pub lease_namespace: String,
}

/// stead-controller's command line.
pub fn controller_args(health_port: u16, metrics_port: u16, options: &ControllerOptions) -> Vec<String> {
    let mut args = vec![
        "--health-listen".to_owned(),
        loopback(health_port).to_string(),
        "--metrics-listen".to_owned(),
        loopback(metrics_port).to_string(),
        "--keys-namespace".to_owned(),
        CONTROLLER_NAMESPACE.to_owned(),
        // A failing snapshot fails its backup after 20 s, not 5 minutes.
        "--snapshot-error-grace-seconds".to_owned(),
        "20".to_owned(),
        "--poll-seconds".to_owned(),
        "2".to_owned(),
    ];
    if let Some(namespace) = &options.namespace {
        args.extend(["--namespace".to_owned(), namespace.clone()]);
    }
    if let Some(concurrency) = options.concurrency {
        args.extend(["--concurrency".to_owned(), concurrency.to_string()]);
    }
    if options.leader_elect.is_some() {
        args.push("--leader-elect".to_owned());
    }
    args
}

/// `args` (a [`controller_args`] command line) with the value of `--poll-seconds` replaced by `seconds`.
pub fn with_poll_seconds(mut args: Vec<String>, seconds: u64) -> Vec<String> {
    match args.iter().position(|arg| arg == "--poll-seconds") {
        Some(flag) if flag + 1 < args.len() => args[flag + 1] = seconds.to_string(),
        _ => args.extend(["--poll-seconds".to_owned(), seconds.to_string()]),
    }
    args
}

/// The environment of the controller: its kubeconfig, and who it is in the Lease.
pub fn controller_env(kubeconfig: &Path, options: &ControllerOptions) -> Vec<(String, std::ffi::OsString)> {
    let mut env = vec![("KUBECONFIG".to_owned(), kubeconfig.as_os_str().to_owned())];
    if let Some(election) = &options.leader_elect {
        env.push(("POD_NAME".to_owned(), election.identity.clone().into()));
        env.push(("POD_NAMESPACE".to_owned(), election.lease_namespace.clone().into()));
    }
    env
}

/// The controller's counters at one moment; `None` for a counter it does not
/// expose (yet).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counters {
    pub reconciles: Option<f64>,
    pub status_writes: Option<f64>,
    pub child_applies: Option<f64>,
}

impl Counters {
    /// Reads the three counters out of a `/metrics` page.
    pub fn parse(exposition: &str) -> Self {
        Self {
            reconciles: metrics::sum(exposition, RECONCILES_TOTAL),
            status_writes: metrics::sum(exposition, STATUS_WRITES_TOTAL),
            child_applies: metrics::sum(exposition, CHILD_APPLIES_TOTAL),
        }
    }
}

/// A running stead-controller acting as the `stead-controller` user.
#[derive(Debug)]
pub struct Controller {
    process: ManagedProcess,
    health: Endpoint,
    metrics: Endpoint,
}

impl Controller {
    /// Starts the controller with `kubeconfig`; does not wait (see [`Self::wait_ready`]).
    pub fn spawn(
        binary: &Path,
        kubeconfig: &Path,
        log_dir: &Path,
        options: &ControllerOptions,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(binary, kubeconfig, log_dir, options, controller_args)
    }

    /// [`Self::spawn`] with `--poll-seconds <poll_seconds>` instead of the suite's 2 (the benchmark's resync).
    #[allow(dead_code, reason = "the controller benchmark calls it; the suite keeps the 2 s poll")]
    pub fn spawn_polling(
        binary: &Path,
        kubeconfig: &Path,
        log_dir: &Path,
        options: &ControllerOptions,
        poll_seconds: u64,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(binary, kubeconfig, log_dir, options, |health, metrics, options| {
            with_poll_seconds(controller_args(health, metrics, options), poll_seconds)
        })
    }

    fn spawn_with(
        binary: &Path,
        kubeconfig: &Path,
        log_dir: &Path,
        options: &ControllerOptions,
        args: impl FnOnce(u16, u16, &ControllerOptions) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        let [health_port, metrics_port] = free_ports().context("finding free loopback ports for stead-controller")?;
        // Each replica of a leader-elected pair logs to its own file.
        let name = match &options.leader_elect {
            Some(election) => format!("{CONTROLLER_BINARY}-{}", election.identity),
            None => CONTROLLER_BINARY.to_owned(),
        };
        let process = ManagedProcess::spawn(
            &name,
            binary,
            &args(health_port, metrics_port, options),
            controller_env(kubeconfig, options),
            log_dir,
        )?;
        Ok(Self {
            process,
            health: Endpoint::plain(loopback(health_port)),
            metrics: Endpoint::plain(loopback(metrics_port)),
        })
    }

    /// Waits for `/readyz` on the health port.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        wait_for_ok(&mut self.process, &self.health, "/readyz", CONTROLLER_START_TIMEOUT)
    }

    /// The current counters.
    pub fn counters(&mut self) -> anyhow::Result<Counters> {
        self.process.ensure_running()?;
        let response = self.metrics.get("/metrics", None)?;
        anyhow::ensure!(
            response.status == 200,
            "{} answered {}: {}",
            self.metrics.url("/metrics"),
            response.status,
            response.body
        );
        Ok(Counters::parse(&response.body))
    }

    /// Whether the controller leads (its `stead_controller_leader` gauge is 1).
    pub fn leads(&self) -> anyhow::Result<bool> {
        let response = self.metrics.get("/metrics", None)?;
        anyhow::ensure!(response.status == 200, "{} answered {}", self.metrics.url("/metrics"), response.status);
        Ok(metrics::sum(&response.body, LEADER) == Some(1.0))
    }

    /// Fails, with the end of its log, when the controller has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process.ensure_running()
    }

    /// The process (pid, peak RSS, logs).
    pub fn process(&self) -> &ManagedProcess {
        &self.process
    }

    /// Sends `signal` (`TERM`, `KILL`) and returns at once; [`Self::stop`] reaps it.
    pub fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        self.process.signal(signal)
    }

    /// Stops the controller (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.process.stop().map(|_| ())
    }
}

fn wait_for_ok(process: &mut ManagedProcess, endpoint: &Endpoint, path: &str, timeout: Duration) -> anyhow::Result<()> {
    let what = format!("{} to answer 200 at {}", process.name(), endpoint.url(path));
    process.wait_ready(&what, timeout, || {
        Ok(match endpoint.get(path, None) {
            Ok(response) if response.status == 200 => Poll::Ready(()),
            Ok(response) => Poll::Pending(format!("{}: {}", response.status, response.body)),
            Err(err) => Poll::Pending(format!("{err:#}")),
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use base64::Engine as _;

    use super::*;

    #[test]
    fn webhook_is_served_on_loopback_with_the_contracted_flags() {
        let args = webhook_args(9443, 9090, Path::new("/w/webhook-certs"), Path::new("/w/admin.kubeconfig"));
        assert_eq!(
            args,
            [
                "serve",
                "--listen",
                "127.0.0.1:9443",
                "--cert-dir",
                "/w/webhook-certs",
                "--metrics-listen",
                "127.0.0.1:9090",
                "--kubeconfig",
                "/w/admin.kubeconfig"
            ]
        );
    }

    #[test]
    fn configurations_call_the_loopback_url_and_trust_the_ca() {
        let list = webhook_configurations("https://127.0.0.1:9443", "-----CA-----\n").unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        let (mutating, validating) = (&items[0], &items[1]);
        assert_eq!(mutating["kind"], "MutatingWebhookConfiguration");
        assert_eq!(validating["kind"], "ValidatingWebhookConfiguration");

        let m = &mutating["webhooks"][0];
        assert_eq!(m["name"], MUTATING_WEBHOOK);
        assert_eq!(m["clientConfig"]["url"], "https://127.0.0.1:9443/mutate");
        assert_eq!(m["reinvocationPolicy"], "IfNeeded");
        assert_eq!(m["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));

        let v = &validating["webhooks"][0];
        assert_eq!(v["name"], VALIDATING_WEBHOOK);
        assert_eq!(v["clientConfig"]["url"], "https://127.0.0.1:9443/validate");
        assert_eq!(v["rules"][0]["operations"], json!(["CREATE", "UPDATE", "DELETE"]));
        assert!(v.get("reinvocationPolicy").is_none());

        for hook in [m, v] {
            assert_eq!(hook["rules"][1]["resources"], json!(["databasebackups"]));
            assert_eq!(hook["rules"][1]["operations"], json!(["CREATE", "UPDATE"]), "never DELETE");
            assert_eq!(hook["rules"][2]["resources"], json!(["apps"]));
            assert_eq!(hook["rules"][2]["operations"], json!(["CREATE", "UPDATE"]));
            let bundle = hook["clientConfig"]["caBundle"].as_str().unwrap();
            let decoded = base64::engine::general_purpose::STANDARD.decode(bundle).unwrap();
            assert_eq!(decoded, b"-----CA-----\n");
            assert!(hook["clientConfig"].get("service").is_none());
            assert_eq!(hook["rules"][0]["apiGroups"], json!(["stead.dev"]));
            assert_eq!(hook["rules"][0]["resources"], json!(["databaseclusters"]));
            assert_eq!(hook["sideEffects"], "None");
            assert_eq!(hook["failurePolicy"], "Fail");
            assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
            // The shipped matchConditions, with the suite's controller user.
            let conditions = hook["matchConditions"].as_array().unwrap();
            assert_eq!(conditions.len(), 2, "{conditions:?}");
            let skip = conditions[1]["expression"].as_str().unwrap();
            assert!(
                skip.ends_with(&format!("request.userInfo.username != '{}'", credentials::CONTROLLER_USER)),
                "{skip}"
            );
        }
    }

    #[test]
    fn the_controllers_service_account_becomes_the_suites_user() {
        let shipped = "request.operation != 'UPDATE' || request.userInfo.username != \
                       'system:serviceaccount:' + 'ops' + ':' + 'stead-ctl'";
        assert_eq!(
            with_controller_user(shipped, "stead-controller").unwrap(),
            "request.operation != 'UPDATE' || request.userInfo.username != 'stead-controller'"
        );
        let broken = "request.userInfo.username != 'system:serviceaccount:' + 'ops'";
        assert!(with_controller_user(broken, "x").unwrap_err().to_string().contains("is not"));
        assert!(with_controller_user("true", "x").is_err());
        // The deletion condition carries no identity and is kept as shipped.
        let conditions = shipped_match_conditions("validatingwebhookconfiguration.yaml", "u").unwrap();
        assert_eq!(conditions[0]["name"], "not-being-deleted");
        assert!(!conditions.to_string().contains("serviceaccount"), "{conditions}");
    }

    #[test]
    fn controller_flags_follow_the_options() {
        let plain = controller_args(8081, 8080, &ControllerOptions::default());
        assert_eq!(
            plain,
            [
                "--health-listen",
                "127.0.0.1:8081",
                "--metrics-listen",
                "127.0.0.1:8080",
                "--keys-namespace",
                "stead-system",
                "--snapshot-error-grace-seconds",
                "20",
                "--poll-seconds",
                "2"
            ]
        );
        let scoped = controller_args(
            1,
            2,
            &ControllerOptions { namespace: Some("bench-100".to_owned()), concurrency: Some(8), ..Default::default() },
        );
        assert!(scoped.ends_with(&[
            "--namespace".to_owned(),
            "bench-100".to_owned(),
            "--concurrency".to_owned(),
            "8".to_owned()
        ]));
    }

    #[test]
    fn the_poll_period_can_be_replaced() {
        let args = with_poll_seconds(controller_args(1, 2, &ControllerOptions::default()), 5);
        assert!(args.ends_with(&["--poll-seconds".to_owned(), "5".to_owned()]), "{args:?}");
        assert_eq!(args.iter().filter(|arg| *arg == "--poll-seconds").count(), 1);
        assert_eq!(with_poll_seconds(vec!["--x".to_owned()], 7), ["--x", "--poll-seconds", "7"]);
    }

    #[test]
    fn a_leader_elected_controller_says_who_it_is_and_where_the_lease_is() {
        let options = ControllerOptions {
            leader_elect: Some(LeaderElection {
                identity: "e2e-a".to_owned(),
                lease_namespace: "e2e-lease".to_owned(),
            }),
            ..Default::default()
        };
        assert!(controller_args(1, 2, &options).ends_with(&["--leader-elect".to_owned()]));
        let env = controller_env(Path::new("/w/c.kubeconfig"), &options);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["KUBECONFIG", "POD_NAME", "POD_NAMESPACE"]);
        assert_eq!(env[1].1, "e2e-a");
        let plain = controller_env(Path::new("/w/c.kubeconfig"), &ControllerOptions::default());
        assert_eq!(plain.len(), 1, "without leader election only the kubeconfig");
        assert!(!controller_args(1, 2, &ControllerOptions::default()).contains(&"--leader-elect".to_owned()));
    }

    #[test]
    fn counters_are_read_from_the_exposition() {
        let text = "stead_controller_reconciles_total{result=\"ok\"} 5\n\
                    stead_controller_child_applies_total{kind=\"Service\"} 2\n\
                    stead_controller_child_applies_total{kind=\"StatefulSet\"} 1\n";
        assert_eq!(
            Counters::parse(text),
            Counters { reconciles: Some(5.0), status_writes: None, child_applies: Some(3.0) }
        );
    }

    #[test]
    fn the_probe_message_is_what_the_rules_produce() {
        // The suite recognises the webhook by this text; keep it in step with stead-crds.
        let object = probe_cluster(Some("10GB"));
        let cluster = stead_crds::validation::decode(&object).unwrap();
        let verdict = stead_crds::validation::validate_create(&cluster);
        let messages: Vec<String> = verdict.errors.iter().map(ToString::to_string).collect();
        assert!(messages.iter().any(|m| m.starts_with(WEBHOOK_QUANTITY_MESSAGE)), "{messages:?}");
        let valid = stead_crds::validation::decode(&probe_cluster(None)).unwrap();
        assert!(stead_crds::validation::validate_create(&valid).errors.is_empty());
    }
}
