//! Renders every kustomize overlay under `manifests/` with `kubectl kustomize`
//! and checks what a platform team relies on when it installs stead:
//!
//! - every rendered object passes the Kubernetes JSON schemas offline
//!   (PyPI's `kubernetes-validate`, strict, for the oldest and newest
//!   supported Kubernetes); cert-manager and Argo CD kinds, which it has no
//!   schema for, are checked structurally here instead;
//! - the webhook configurations, the cert-manager chain behind them and the
//!   names that tie the two together, also after renaming the namespace;
//! - least-privilege RBAC, pod security and the binaries' flag contracts;
//! - Argo CD sync waves and the Application's sync options.
//!
//! kubectl is required (`KUBECTL`, `PATH` or /usr/bin/kubectl), and so is the
//! validator (`KUBERNETES_VALIDATE`, `target/tools/venv` from `make tools`,
//! or `PATH`): a missing tool fails the test with the command to install it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

/// Install namespace of `manifests/default`.
const NAMESPACE: &str = "stead-system";
/// The one image both workloads run.
const IMAGE: &str = "ghcr.io/stead-dev/stead:0.1.0";
/// Oldest and newest Kubernetes the rendered objects must be valid for
/// (1.30: `lifecycle.preStop.sleep` is on by default from there).
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// Overlays that must exist; any other kustomization found is rendered too.
const EXPECTED_OVERLAYS: &[&str] =
    &["argocd", "argocd/app", "certmanager", "controller", "crds", "default", "networkpolicy", "rbac", "webhook"];
const WAVE: &str = "argocd.argoproj.io/sync-wave";
const INJECT_CA_FROM: &str = "cert-manager.io/inject-ca-from";

// ---------------------------------------------------------------------------
// Rendering

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests_dir() -> PathBuf {
    repo_root().join("manifests")
}

/// Finds a program from an environment override, `PATH`, or known paths.
fn find_program(env: &str, name: &str, fallbacks: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    fallbacks.iter().cloned().chain(on_path).find(|p| p.is_file())
}

fn kubectl() -> PathBuf {
    find_program("KUBECTL", "kubectl", &[PathBuf::from("/usr/bin/kubectl")]).unwrap_or_else(|| {
        panic!(
            "kubectl not found (looked at $KUBECTL, /usr/bin/kubectl and $PATH); \
             the manifest tests render overlays with `kubectl kustomize`: install kubectl"
        )
    })
}

fn kubernetes_validate() -> PathBuf {
    let venv = repo_root().join("target/tools/venv/bin/kubernetes-validate");
    find_program("KUBERNETES_VALIDATE", "kubernetes-validate", &[venv]).unwrap_or_else(|| {
        panic!(
            "kubernetes-validate not found (looked at $KUBERNETES_VALIDATE, \
             target/tools/venv/bin and $PATH); install it with `make tools` \
             (python3 -m venv target/tools/venv && \
             target/tools/venv/bin/pip install kubernetes-validate==1.37.0)"
        )
    })
}

/// `kubectl kustomize <dir>`, parsed into one JSON value per object.
fn render(dir: &Path) -> Vec<Value> {
    let output = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running kubectl kustomize {}: {e}", dir.display()));
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("parsing the render of {}: {e}", dir.display()));
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// Every directory under `root` holding a kustomization, relative to `root`.
fn find_overlays(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        if ["kustomization.yaml", "kustomization.yml", "Kustomization"].iter().any(|f| dir.join(f).is_file())
            && dir != root
        {
            found.push(dir.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
        for entry in entries.iter().filter(|p| p.is_dir()) {
            walk(root, entry, found);
        }
    }
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found
}

/// Each overlay of the repository rendered once, shared by the tests.
fn rendered() -> &'static BTreeMap<String, Vec<Value>> {
    static RENDERED: OnceLock<BTreeMap<String, Vec<Value>>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let root = manifests_dir();
        find_overlays(&root).into_iter().map(|o| (o.clone(), render(&root.join(&o)))).collect()
    })
}

fn default_render() -> &'static [Value] {
    &rendered()["default"]
}

/// A scratch copy of `manifests/` to edit and render.
fn scratch_copy(name: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stead-manifests").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let copy_root = dir.join("manifests");
    copy(&manifests_dir(), &copy_root);
    copy_root
}

// ---------------------------------------------------------------------------
// Object access

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or_default()
}

fn api_group(o: &Value) -> &str {
    let api_version = o["apiVersion"].as_str().unwrap_or_default();
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

fn id(o: &Value) -> String {
    match namespace(o) {
        "" => format!("{}/{}", kind(o), name(o)),
        ns => format!("{}/{ns}/{}", kind(o), name(o)),
    }
}

fn of_kind<'a>(objects: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == wanted).collect()
}

fn find<'a>(objects: &'a [Value], wanted: &str, wanted_name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| kind(o) == wanted && name(o) == wanted_name)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn string_set(v: &Value) -> BTreeSet<&str> {
    strings(v).into_iter().collect()
}

fn annotation<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o["metadata"]["annotations"][key].as_str()
}

/// The pod template of a workload object, if it has one.
fn pod_spec(o: &Value) -> Option<&Value> {
    match kind(o) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some(&o["spec"]["template"]["spec"]),
        "CronJob" => Some(&o["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        "Pod" => Some(&o["spec"]),
        _ => None,
    }
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"].iter().filter_map(|k| pod[*k].as_array()).flatten().collect()
}

/// The value of `--flag=value` or `--flag value` in a container's args.
fn flag<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let args = strings(&container["args"]);
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(value) = a.strip_prefix(&prefix) {
            Some(value)
        } else if *a == flag {
            Some(args.get(i + 1).copied().unwrap_or(""))
        } else {
            None
        }
    })
}

/// Resolves a probe's or Service's port (number or name) to a container port.
fn container_port(container: &Value, port: &Value) -> Option<i64> {
    if let Some(number) = port.as_i64() {
        return Some(number);
    }
    let wanted = port.as_str()?;
    container["ports"].as_array()?.iter().find(|p| p["name"] == wanted).and_then(|p| p["containerPort"].as_i64())
}

/// Whether `selector` (a label map) selects a pod with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

/// The workload whose pods a Service or PDB label selector picks.
fn selected_workload<'a>(objects: &'a [Value], selector: &Value) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| pod_spec(o).is_some() && selects(selector, &o["spec"]["template"]["metadata"]["labels"]))
        .collect()
}

/// Collects failed expectations so a test reports all of them at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(self, context: &str) {
        assert!(self.0.is_empty(), "{context}:\n  - {}", self.0.join("\n  - "));
    }
}

// ---------------------------------------------------------------------------
// Units

/// Seconds in a Go duration such as `2160h`, `1h30m` or `90s`.
fn go_duration_seconds(text: &str) -> Option<f64> {
    let mut rest = text;
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').filter(|&n| n > 0)?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// A CPU quantity in millicores or a memory quantity in bytes (the subset
/// of the quantity grammar these manifests use).
fn quantity(text: &str) -> Option<f64> {
    let suffixes: [(&str, f64); 9] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("m", 1e-3),
        ("", 1.0),
    ];
    suffixes.iter().find_map(|(suffix, scale)| {
        let number = text.strip_suffix(suffix)?;
        number.parse::<f64>().ok().map(|n| n * scale)
    })
}

// ---------------------------------------------------------------------------
// Checks shared by the repository render and the renamed copies

/// The webhook configurations: fields, rules, the Service they call, the
/// workload behind it, and the certificate whose CA cert-manager injects.
fn check_webhooks(objects: &[Value], p: &mut Problems) {
    // (kind, path, the operations of each resource's rule, in order). Deleting a
    // backup never calls the webhook, so retention does not depend on it.
    let expected = [
        (
            "MutatingWebhookConfiguration",
            "/mutate",
            vec![
                ("databaseclusters", vec!["CREATE", "UPDATE"]),
                ("databasebackups", vec!["CREATE", "UPDATE"]),
                ("apps", vec!["CREATE", "UPDATE"]),
            ],
        ),
        (
            "ValidatingWebhookConfiguration",
            "/validate",
            vec![
                ("databaseclusters", vec!["CREATE", "UPDATE", "DELETE"]),
                ("databasebackups", vec!["CREATE", "UPDATE"]),
                ("apps", vec!["CREATE", "UPDATE"]),
            ],
        ),
    ];
    for (config_kind, path, resource_rules) in expected {
        let configs = of_kind(objects, config_kind);
        p.check(configs.len() == 1, || format!("want exactly one {config_kind}, found {}", configs.len()));
        let Some(config) = configs.first() else { continue };
        let at = id(config);

        let certificate = check_inject_ca_from(objects, config, p);
        let webhooks = config["webhooks"].as_array().map(Vec::as_slice).unwrap_or_default();
        p.check(!webhooks.is_empty(), || format!("{at}: no webhooks"));
        for webhook in webhooks {
            let at = format!("{at} webhook {}", webhook["name"]);
            p.check(strings(&webhook["admissionReviewVersions"]) == ["v1"], || {
                format!("{at}: admissionReviewVersions must be [v1], is {}", webhook["admissionReviewVersions"])
            });
            for (field, want) in [("sideEffects", "None"), ("failurePolicy", "Fail"), ("matchPolicy", "Equivalent")] {
                p.check(webhook[field] == want, || format!("{at}: {field} must be {want}, is {}", webhook[field]));
            }
            if config_kind == "MutatingWebhookConfiguration" {
                p.check(webhook["reinvocationPolicy"] == "IfNeeded", || {
                    format!("{at}: reinvocationPolicy must be IfNeeded, is {}", webhook["reinvocationPolicy"])
                });
            }
            check_match_conditions(objects, webhook, &at, p);
            let timeout = webhook["timeoutSeconds"].as_i64();
            p.check(timeout.is_some_and(|t| (1..=10).contains(&t)), || {
                format!("{at}: timeoutSeconds must be set and short (1..=10), is {}", webhook["timeoutSeconds"])
            });

            let rules = webhook["rules"].as_array().map(Vec::as_slice).unwrap_or_default();
            p.check(rules.len() == resource_rules.len(), || {
                format!("{at}: want {} rules (one per resource), found {}", resource_rules.len(), rules.len())
            });
            for (rule, (resource, operations)) in rules.iter().zip(&resource_rules) {
                p.check(strings(&rule["apiGroups"]) == ["stead.dev"], || {
                    format!("{at}: rule apiGroups must be [stead.dev], is {}", rule["apiGroups"])
                });
                p.check(strings(&rule["resources"]) == [*resource], || {
                    format!("{at}: rule resources must be [{resource}], is {}", rule["resources"])
                });
                p.check(strings(&rule["apiVersions"]) == ["v1alpha1"], || {
                    format!("{at}: rule apiVersions must be [v1alpha1], is {}", rule["apiVersions"])
                });
                p.check(strings(&rule["operations"]) == *operations, || {
                    format!("{at}: rule operations must be {operations:?}, is {}", rule["operations"])
                });
                p.check(rule["scope"] == "Namespaced", || format!("{at}: rule scope must be Namespaced"));
            }

            let client = &webhook["clientConfig"];
            p.check(client.get("url").is_none(), || format!("{at}: clientConfig.url must not be set"));
            p.check(client.get("caBundle").is_none(), || {
                format!("{at}: caBundle must be left to cert-manager's cainjector, not committed")
            });
            p.check(client["service"]["path"] == path, || format!("{at}: clientConfig.service.path must be {path}"));
            let service_name = client["service"]["name"].as_str().unwrap_or_default();
            let service_ns = client["service"]["namespace"].as_str().unwrap_or_default();
            let service =
                objects.iter().find(|o| kind(o) == "Service" && name(o) == service_name && namespace(o) == service_ns);
            let Some(service) = service else {
                p.0.push(format!("{at}: calls Service {service_ns}/{service_name}, which is not in the render"));
                continue;
            };
            check_namespace_selector(webhook, service_ns, &at, p);
            check_service_reaches_webhook(objects, service, &client["service"]["port"], &at, p);
            if let Some(certificate) = certificate {
                let dns = string_set(&certificate["spec"]["dnsNames"]);
                for want in [
                    format!("{service_name}.{service_ns}.svc"),
                    format!("{service_name}.{service_ns}.svc.cluster.local"),
                ] {
                    p.check(dns.contains(want.as_str()), || {
                        format!("{}: dnsNames {dns:?} lack {want}, the name {at} calls", id(certificate))
                    });
                }
            }
        }
    }
}

/// Finalizer removal and the controller's own metadata updates must not
/// depend on the webhook being up: matchConditions skip objects being
/// deleted, and spec-preserving UPDATEs by the controller's ServiceAccount
/// as it is named in this render.
fn check_match_conditions(objects: &[Value], webhook: &Value, at: &str, p: &mut Problems) {
    let conditions = webhook["matchConditions"].as_array().map(Vec::as_slice).unwrap_or_default();
    let expression =
        |wanted: &str| conditions.iter().find(|c| c["name"] == wanted).and_then(|c| c["expression"].as_str());
    p.check(
        expression("not-being-deleted")
            == Some("request.operation == 'DELETE' || !has(object.metadata.deletionTimestamp)"),
        || format!("{at}: matchCondition not-being-deleted must skip objects with a deletionTimestamp (DELETE still judged)"),
    );
    let Some(sa) = of_kind(objects, "ServiceAccount").into_iter().find(|o| name(o).ends_with("stead-controller"))
    else {
        p.0.push(format!("{at}: no controller ServiceAccount in the render"));
        return;
    };
    let want = format!(
        "request.operation != 'UPDATE' || object.spec != oldObject.spec || request.userInfo.username != \
         'system:serviceaccount:' + '{}' + ':' + '{}'",
        namespace(sa),
        name(sa)
    );
    p.check(expression("not-a-metadata-update-by-the-controller") == Some(want.as_str()), || {
        format!(
            "{at}: matchCondition not-a-metadata-update-by-the-controller must be {want:?}, is {:?}",
            expression("not-a-metadata-update-by-the-controller")
        )
    });
}

/// Metrics ports of stead's pods are reachable only from a namespace
/// selector; the webhook's admission port stays open to the API server.
fn check_network_policies(objects: &[Value], p: &mut Problems) {
    for (binary, open) in [("stead-webhook", Some("https")), ("stead-controller", None)] {
        let Some(workload) = workload_running(objects, binary) else { continue };
        let labels = &workload["spec"]["template"]["metadata"]["labels"];
        let policies: Vec<&Value> = of_kind(objects, "NetworkPolicy")
            .into_iter()
            .filter(|np| {
                namespace(np) == namespace(workload) && selects(&np["spec"]["podSelector"]["matchLabels"], labels)
            })
            .collect();
        let at = id(workload);
        p.check(policies.len() == 1, || {
            format!("{at}: want exactly one NetworkPolicy selecting its pods, found {}", policies.len())
        });
        let Some(policy) = policies.first() else { continue };
        p.check(strings(&policy["spec"]["policyTypes"]) == ["Ingress"], || {
            format!("{}: policyTypes must be [Ingress]", id(policy))
        });
        let rules = policy["spec"]["ingress"].as_array().map(Vec::as_slice).unwrap_or_default();
        let rules_for = |port: &str| -> Vec<&Value> {
            rules.iter().filter(|r| r["ports"].as_array().into_iter().flatten().any(|p| p["port"] == port)).collect()
        };
        let metrics = rules_for("metrics");
        p.check(!metrics.is_empty(), || format!("{}: no rule admits the metrics port", id(policy)));
        for rule in metrics {
            let from = rule["from"].as_array().map(Vec::as_slice).unwrap_or_default();
            p.check(
                !from.is_empty()
                    && from
                        .iter()
                        .all(|f| f["namespaceSelector"]["matchLabels"].is_object() && f.get("ipBlock").is_none()),
                || format!("{}: the metrics port must be open only to a namespaceSelector, is {rule}", id(policy)),
            );
        }
        if let Some(port) = open {
            p.check(rules_for(port).iter().any(|r| r.get("from").is_none()), || {
                format!("{}: the {port} port must stay reachable by the API server (a rule without `from`)", id(policy))
            });
        }
        for rule in rules {
            p.check(rule["ports"].as_array().is_some_and(|ports| !ports.is_empty()), || {
                format!("{}: a rule without ports opens every port: {rule}", id(policy))
            });
        }
    }
}

/// `cert-manager.io/inject-ca-from: <ns>/<name>` names a Certificate in the render.
fn check_inject_ca_from<'a>(objects: &'a [Value], config: &Value, p: &mut Problems) -> Option<&'a Value> {
    let at = id(config);
    let Some(reference) = annotation(config, INJECT_CA_FROM) else {
        p.0.push(format!("{at}: no {INJECT_CA_FROM} annotation"));
        return None;
    };
    let found = reference.split_once('/').and_then(|(ns, cert)| {
        objects.iter().find(|o| {
            api_group(o) == "cert-manager.io" && kind(o) == "Certificate" && namespace(o) == ns && name(o) == cert
        })
    });
    p.check(found.is_some(), || format!("{at}: {INJECT_CA_FROM}={reference} names no Certificate in the render"));
    found
}

fn check_namespace_selector(webhook: &Value, install_ns: &str, at: &str, p: &mut Problems) {
    let expressions =
        webhook["namespaceSelector"]["matchExpressions"].as_array().map(Vec::as_slice).unwrap_or_default();
    let excluded: BTreeSet<&str> = expressions
        .iter()
        .filter(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
        .flat_map(|e| strings(&e["values"]))
        .collect();
    for ns in [install_ns, "kube-system"] {
        p.check(excluded.contains(ns), || {
            format!("{at}: namespaceSelector must exclude namespace {ns}; excludes {excluded:?}")
        });
    }
}

/// The Service port the webhook calls leads to the HTTPS port of a webhook
/// container that serves with the mounted serving certificate.
fn check_service_reaches_webhook(objects: &[Value], service: &Value, port: &Value, at: &str, p: &mut Problems) {
    let port = port.as_i64().unwrap_or(443);
    let ports = service["spec"]["ports"].as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(service_port) = ports.iter().find(|sp| sp["port"].as_i64() == Some(port)) else {
        p.0.push(format!("{at}: Service {} has no port {port}", name(service)));
        return;
    };
    let workloads = selected_workload(objects, &service["spec"]["selector"]);
    p.check(workloads.len() == 1, || {
        format!("{at}: Service {} must select exactly one workload, selects {}", name(service), workloads.len())
    });
    for workload in workloads {
        let pod = pod_spec(workload).unwrap_or(&Value::Null);
        let webhook =
            containers(pod).into_iter().find(|c| strings(&c["command"]).contains(&"/usr/local/bin/stead-webhook"));
        let Some(container) = webhook else {
            p.0.push(format!("{at}: {} runs no stead-webhook container", id(workload)));
            continue;
        };
        let target = container_port(container, &service_port["targetPort"]);
        p.check(target == Some(8443), || {
            format!("{at}: Service port {port} targets {:?}, not the webhook's 8443", service_port["targetPort"])
        });
    }
}

/// The cert-manager chain: self-signed Issuer -> CA Certificate -> CA Issuer
/// -> serving Certificate, lifetimes, and the Secret the webhook mounts.
fn check_certificate_chain(objects: &[Value], p: &mut Problems) {
    let issuer = |cert: &Value| {
        let reference = &cert["spec"]["issuerRef"];
        let issuer_kind = reference["kind"].as_str().unwrap_or("Issuer");
        objects.iter().find(|o| {
            api_group(o) == "cert-manager.io"
                && kind(o) == issuer_kind
                && name(o) == reference["name"].as_str().unwrap_or_default()
                && (issuer_kind == "ClusterIssuer" || namespace(o) == namespace(cert))
        })
    };
    let Some(config) = of_kind(objects, "ValidatingWebhookConfiguration").into_iter().next() else {
        p.0.push("no ValidatingWebhookConfiguration".into());
        return;
    };
    let Some(serving) = check_inject_ca_from(objects, config, p) else { return };
    let at = id(serving);
    p.check(serving["spec"]["isCA"] != true, || format!("{at}: the serving certificate must not be a CA"));
    p.check(strings(&serving["spec"]["usages"]).contains(&"server auth"), || format!("{at}: usages lack server auth"));

    let Some(ca_issuer) = issuer(serving) else {
        p.0.push(format!("{at}: issuerRef {} names no Issuer in the render", serving["spec"]["issuerRef"]));
        return;
    };
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap_or_default();
    p.check(!ca_secret.is_empty(), || format!("{}: must be a CA issuer (spec.ca.secretName)", id(ca_issuer)));
    let ca = objects.iter().find(|o| {
        kind(o) == "Certificate" && namespace(o) == namespace(ca_issuer) && o["spec"]["secretName"] == ca_secret
    });
    let Some(ca) = ca else {
        p.0.push(format!("{}: no Certificate writes its CA Secret {ca_secret}", id(ca_issuer)));
        return;
    };
    p.check(ca["spec"]["isCA"] == true, || format!("{}: must have isCA: true", id(ca)));
    // Renewals keep the CA key, so caBundles from before and after a CA
    // renewal both verify every serving certificate.
    p.check(ca["spec"]["privateKey"]["rotationPolicy"] == "Never", || {
        format!("{}: privateKey.rotationPolicy must be Never", id(ca))
    });
    match issuer(ca) {
        Some(root) => p.check(root["spec"]["selfSigned"].is_object(), || format!("{}: must be self-signed", id(root))),
        None => p.0.push(format!("{}: issuerRef names no Issuer in the render", id(ca))),
    }

    let mut lifetimes = BTreeMap::new();
    for cert in [serving, ca] {
        let at = id(cert);
        let duration = cert["spec"]["duration"].as_str().and_then(go_duration_seconds);
        let renew = cert["spec"]["renewBefore"].as_str().and_then(go_duration_seconds);
        match (duration, renew) {
            (Some(duration), Some(renew)) => {
                p.check(duration >= 3600.0, || format!("{at}: duration must be at least 1h"));
                p.check(renew > 0.0 && renew < duration, || format!("{at}: renewBefore must lie inside duration"));
                lifetimes.insert(name(cert), duration);
            }
            _ => p.0.push(format!("{at}: duration and renewBefore must both be set as Go durations")),
        }
    }
    if let (Some(s), Some(c)) = (lifetimes.get(name(serving)), lifetimes.get(name(ca))) {
        p.check(s < c, || format!("{at}: must expire before its CA {}", id(ca)));
    }

    // The webhook mounts exactly this Secret at its --cert-dir, read-only.
    let secret = serving["spec"]["secretName"].as_str().unwrap_or_default();
    let mut mounted = false;
    for workload in objects.iter().filter(|o| pod_spec(o).is_some()) {
        let pod = pod_spec(workload).unwrap_or(&Value::Null);
        for container in containers(pod) {
            let Some(cert_dir) = flag(container, "--cert-dir") else { continue };
            let mount = container["volumeMounts"].as_array().into_iter().flatten().find(|m| m["mountPath"] == cert_dir);
            let volume =
                mount.and_then(|m| pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == m["name"]));
            let at = id(workload);
            p.check(mount.is_some_and(|m| m["readOnly"] == true && m.get("subPath").is_none()), || {
                format!("{at}: --cert-dir {cert_dir} must be a read-only mount without subPath (hot reload)")
            });
            p.check(volume.is_some_and(|v| v["secret"]["secretName"] == secret), || {
                format!("{at}: --cert-dir {cert_dir} must mount Secret {secret} of {}", id(serving))
            });
            mounted = true;
        }
    }
    p.check(mounted, || "no container serves with --cert-dir".into());
}

/// The controller's verbs, exactly: the API calls stead-controller makes.
fn controller_permissions() -> BTreeSet<(String, String, String)> {
    let grants: [(&str, &str, &[&str]); 19] = [
        ("stead.dev", "apps", &["list", "watch"]),
        ("stead.dev", "apps/status", &["patch"]),
        ("stead.dev", "apps/finalizers", &["update"]),
        ("apps", "deployments", &["list", "watch", "create", "patch"]),
        ("networking.k8s.io", "ingresses", &["list", "watch", "create", "patch", "delete"]),
        ("stead.dev", "databaseclusters", &["list", "watch", "patch"]),
        ("stead.dev", "databaseclusters/status", &["patch"]),
        ("stead.dev", "databaseclusters/finalizers", &["update"]),
        ("stead.dev", "databasebackups", &["list", "watch", "create", "delete"]),
        ("stead.dev", "databasebackups/status", &["patch"]),
        ("stead.dev", "databasebackups/finalizers", &["update"]),
        ("snapshot.storage.k8s.io", "volumesnapshots", &["get", "create", "patch"]),
        ("apps", "statefulsets", &["list", "watch", "create", "patch"]),
        ("", "services", &["list", "watch", "create", "patch", "delete"]),
        ("", "pods", &["list", "watch", "patch", "delete"]),
        ("policy", "poddisruptionbudgets", &["list", "watch", "create", "patch", "delete"]),
        ("", "persistentvolumeclaims", &["list", "watch", "patch", "delete", "create"]),
        ("events.k8s.io", "events", &["create"]),
        ("", "secrets", &["create"]),
    ];
    grants
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs.iter().map(|v| (group.to_string(), resource.to_string(), v.to_string()))
        })
        .collect()
}

/// (group, resource, verb) triples a Role/ClusterRole grants, with the
/// resourceNames restriction of each.
fn grants(role: &Value) -> Vec<((String, String, String), Vec<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let names: Vec<String> = strings(&rule["resourceNames"]).into_iter().map(str::to_owned).collect();
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.push(((group.to_owned(), resource.to_owned(), verb.to_owned()), names.clone()));
                }
            }
        }
    }
    out
}

/// Roles bound to a ServiceAccount: (binding, role) pairs.
fn roles_of<'a>(objects: &'a [Value], sa_name: &str, sa_ns: &str) -> Vec<(&'a Value, &'a Value)> {
    let mut out = Vec::new();
    for binding in objects.iter().filter(|o| matches!(kind(o), "RoleBinding" | "ClusterRoleBinding")) {
        let bound =
            binding["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == sa_name && s["namespace"].as_str() == Some(sa_ns)
            });
        if !bound {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let role = objects.iter().find(|o| {
            kind(o) == role_kind
                && name(o) == role_name
                && (role_kind == "ClusterRole" || namespace(o) == namespace(binding))
        });
        if let Some(role) = role {
            out.push((binding, role));
        }
    }
    out
}

fn check_rbac(objects: &[Value], p: &mut Problems) {
    // No wildcards, and no Secret is read but the controller's own keys: create is the one verb on them
    // (the controller's credentials Secret), so no token can see a password.
    for role in objects.iter().filter(|o| matches!(kind(o), "Role" | "ClusterRole")) {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for field in ["apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"] {
                p.check(!strings(&rule[field]).iter().any(|s| s.contains('*')), || {
                    format!("{}: wildcard in {field}: {}", id(role), rule[field])
                });
            }
            if strings(&rule["resources"]).contains(&"secrets") {
                // The one read: the controller's own key Secret, by name, in its namespace.
                let own_keys = kind(role) == "Role"
                    && strings(&rule["verbs"]) == ["get"]
                    && strings(&rule["resourceNames"]) == ["stead-controller-keys"];
                p.check(strings(&rule["verbs"]) == ["create"] || own_keys, || {
                    format!(
                        "{}: grants {} on secrets; only create, and get of stead-controller-keys in a Role, are allowed",
                        id(role),
                        rule["verbs"]
                    )
                });
            }
        }
        p.check(role.get("aggregationRule").is_none(), || format!("{}: aggregationRule widens it", id(role)));
    }

    // Bindings point at roles and ServiceAccounts that are in the render.
    for binding in objects.iter().filter(|o| matches!(kind(o), "RoleBinding" | "ClusterRoleBinding")) {
        let role_ref = &binding["roleRef"];
        let role_kind = role_ref["kind"].as_str().unwrap_or_default();
        let role_name = role_ref["name"].as_str().unwrap_or_default();
        p.check(find(objects, role_kind, role_name).is_some(), || {
            format!("{}: roleRef {role_kind}/{role_name} is not in the render", id(binding))
        });
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            let found = objects.iter().any(|o| {
                kind(o) == "ServiceAccount" && subject["name"] == name(o) && subject["namespace"] == namespace(o)
            });
            p.check(found, || format!("{}: subject {subject} is not a ServiceAccount in the render", id(binding)));
        }
    }

    // The controller: exactly its contract, cluster-wide; leases only in its own namespace.
    let Some(controller) = workload_running(objects, "/usr/local/bin/stead-controller") else {
        p.0.push("no workload runs stead-controller".into());
        return;
    };
    let sa = controller["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap_or("default");
    let ns = namespace(controller);
    let mut cluster_wide = BTreeSet::new();
    let mut leases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (binding, role) in roles_of(objects, sa, ns) {
        for (grant, names) in grants(role) {
            let (group, resource, verb) = &grant;
            if group.is_empty() && resource == "secrets" && verb == "get" {
                p.check(kind(role) == "Role" && namespace(role) == ns && names == ["stead-controller-keys"], || {
                    format!("{}: Secrets may be read only by name (stead-controller-keys) in {ns}", id(role))
                });
            } else if group == "coordination.k8s.io" && resource == "leases" {
                p.check(kind(role) == "Role" && namespace(role) == ns && kind(binding) == "RoleBinding", || {
                    format!("{}: leases must be granted by a Role in {ns} only", id(role))
                });
                leases.insert(verb.clone(), names);
            } else {
                p.check(kind(role) == "ClusterRole", || format!("{}: unexpected namespaced grant {grant:?}", id(role)));
                cluster_wide.insert(grant);
            }
        }
    }
    let want = controller_permissions();
    for extra in cluster_wide.difference(&want) {
        p.0.push(format!("controller is granted {extra:?}, which it does not use"));
    }
    for missing in want.difference(&cluster_wide) {
        p.0.push(format!("controller lacks {missing:?}, which it uses"));
    }
    let lease_verbs: BTreeSet<&str> = leases.keys().map(String::as_str).collect();
    p.check(lease_verbs == BTreeSet::from(["create", "get", "patch", "update"]), || {
        format!("controller lease verbs must be create/get/update/patch, are {lease_verbs:?}")
    });
    for (verb, names) in &leases {
        if verb != "create" {
            p.check(names == &["stead-controller"], || {
                format!("lease verb {verb} must be limited to resourceNames [stead-controller], is {names:?}")
            });
        }
    }

    // The webhook: a token for exactly one read each of DatabaseClusters and
    // DatabaseBackups (GET by name, the admission lookups), cluster-wide.
    let Some(webhook) = workload_running(objects, "/usr/local/bin/stead-webhook") else {
        p.0.push("no workload runs stead-webhook".into());
        return;
    };
    let pod = &webhook["spec"]["template"]["spec"];
    let webhook_sa = pod["serviceAccountName"].as_str().unwrap_or("default");
    p.check(pod["automountServiceAccountToken"] == true, || {
        format!("{}: automountServiceAccountToken must be true (the admission lookups)", id(webhook))
    });
    p.check(webhook_sa != "default", || format!("{}: must use its own ServiceAccount", id(webhook)));
    if !objects.iter().any(|o| kind(o) == "ServiceAccount" && name(o) == webhook_sa && namespace(o) == ns) {
        p.0.push(format!("ServiceAccount {webhook_sa} of the webhook is not in the render"));
    }
    let mut webhook_grants = BTreeSet::new();
    for (_, role) in roles_of(objects, webhook_sa, namespace(webhook)) {
        p.check(kind(role) == "ClusterRole", || format!("{}: the webhook's reads are cluster-wide", id(role)));
        for (grant, names) in grants(role) {
            p.check(names.is_empty(), || format!("{}: the webhook reads objects by the name it is given", id(role)));
            webhook_grants.insert(grant);
        }
    }
    // GET by name for the lookups, and the watch behind the App cache.
    let want: BTreeSet<(String, String, String)> =
        [("databaseclusters", "get"), ("databasebackups", "get"), ("apps", "list"), ("apps", "watch")]
            .into_iter()
            .map(|(resource, verb)| ("stead.dev".to_owned(), resource.to_owned(), verb.to_owned()))
            .collect();
    p.check(webhook_grants == want, || {
        format!("the webhook's ServiceAccount must be granted exactly {want:?}, is {webhook_grants:?}")
    });
}

fn workload_running<'a>(objects: &'a [Value], binary: &str) -> Option<&'a Value> {
    objects.iter().find(|o| {
        pod_spec(o).is_some_and(|pod| containers(pod).iter().any(|c| strings(&c["command"]).contains(&binary)))
    })
}

fn check_pod_security(objects: &[Value], p: &mut Problems) {
    let workloads: Vec<&Value> = objects.iter().filter(|o| pod_spec(o).is_some()).collect();
    p.check(!workloads.is_empty(), || "no workloads".into());
    for workload in workloads {
        let at = id(workload);
        let pod = pod_spec(workload).unwrap_or(&Value::Null);
        let pod_sc = &pod["securityContext"];
        p.check(pod_sc["runAsNonRoot"] == true, || format!("{at}: pod runAsNonRoot must be true"));
        p.check(pod_sc["runAsUser"].as_i64().is_none_or(|u| u != 0), || format!("{at}: runs as uid 0"));
        p.check(pod_sc["seccompProfile"]["type"] == "RuntimeDefault", || {
            format!("{at}: pod seccompProfile must be RuntimeDefault")
        });
        for field in ["hostNetwork", "hostPID", "hostIPC"] {
            p.check(pod[field] != true, || format!("{at}: {field} must not be set"));
        }
        for volume in pod["volumes"].as_array().into_iter().flatten() {
            p.check(volume.get("hostPath").is_none(), || format!("{at}: hostPath volume {}", volume["name"]));
        }
        for container in containers(pod) {
            let at = format!("{at} container {}", container["name"]);
            let sc = &container["securityContext"];
            p.check(sc["allowPrivilegeEscalation"] == false, || {
                format!("{at}: allowPrivilegeEscalation must be false")
            });
            p.check(sc["readOnlyRootFilesystem"] == true, || format!("{at}: readOnlyRootFilesystem must be true"));
            p.check(sc["privileged"] != true, || format!("{at}: must not be privileged"));
            p.check(
                sc["runAsNonRoot"] == true || (pod_sc["runAsNonRoot"] == true && sc.get("runAsNonRoot").is_none()),
                || format!("{at}: runAsNonRoot must be true"),
            );
            p.check(string_set(&sc["capabilities"]["drop"]).contains("ALL"), || {
                format!("{at}: capabilities.drop must be [ALL]")
            });
            p.check(strings(&sc["capabilities"]["add"]).is_empty(), || format!("{at}: adds capabilities"));
            p.check(
                sc["seccompProfile"]["type"] == "RuntimeDefault"
                    || (sc.get("seccompProfile").is_none() && pod_sc["seccompProfile"]["type"] == "RuntimeDefault"),
                || format!("{at}: seccompProfile must be RuntimeDefault"),
            );
            for resource in ["cpu", "memory"] {
                let request = container["resources"]["requests"][resource].as_str().and_then(quantity);
                let limit = container["resources"]["limits"][resource].as_str().and_then(quantity);
                match (request, limit) {
                    (Some(r), Some(l)) => p.check(r <= l, || format!("{at}: {resource} request exceeds its limit")),
                    _ => p.0.push(format!("{at}: {resource} request and limit must both be set")),
                }
            }
            p.check(container["image"] == IMAGE, || format!("{at}: image must be {IMAGE}, is {}", container["image"]));
            if container.get("livenessProbe").is_none() || container.get("readinessProbe").is_none() {
                p.0.push(format!("{at}: needs liveness and readiness probes"));
            }
        }
    }
}

/// An HTTP GET probe: (scheme, path, container port).
fn probe(container: &Value, which: &str) -> (String, String, Option<i64>) {
    let get = &container[which]["httpGet"];
    (
        get["scheme"].as_str().unwrap_or("HTTP").to_owned(),
        get["path"].as_str().unwrap_or_default().to_owned(),
        container_port(container, &get["port"]),
    )
}

/// One PDB protects the workload and keeps at least one pod up.
fn check_pdb(objects: &[Value], workload: &Value, p: &mut Problems) {
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    let pdbs: Vec<&Value> = of_kind(objects, "PodDisruptionBudget")
        .into_iter()
        .filter(|pdb| namespace(pdb) == namespace(workload) && selects(&pdb["spec"]["selector"]["matchLabels"], labels))
        .collect();
    p.check(pdbs.len() == 1, || format!("{}: want one PodDisruptionBudget, found {}", id(workload), pdbs.len()));
    for pdb in pdbs {
        let keeps_one = pdb["spec"]["minAvailable"].as_i64().is_some_and(|m| m >= 1)
            || pdb["spec"]["maxUnavailable"].as_i64() == Some(1);
        p.check(keeps_one, || format!("{}: must keep at least one pod", id(pdb)));
    }
}

fn check_anti_affinity(workload: &Value, p: &mut Problems) {
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    let anti = &workload["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    let terms = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| &t["podAffinityTerm"])
        .chain(anti["requiredDuringSchedulingIgnoredDuringExecution"].as_array().into_iter().flatten());
    let spreads = terms
        .filter(|t| t["topologyKey"] == "kubernetes.io/hostname")
        .any(|t| selects(&t["labelSelector"]["matchLabels"], labels));
    p.check(spreads, || format!("{}: needs pod anti-affinity across nodes on its own labels", id(workload)));
}

/// The workload running `binary`, after the checks both stead workloads share:
/// a Deployment of 2, spread across nodes, with a PDB.
fn highly_available<'a>(objects: &'a [Value], binary: &str, p: &mut Problems) -> Option<(&'a Value, String)> {
    let Some(workload) = workload_running(objects, &format!("/usr/local/bin/{binary}")) else {
        p.0.push(format!("no workload runs {binary}"));
        return None;
    };
    let at = id(workload);
    p.check(kind(workload) == "Deployment" && workload["spec"]["replicas"] == 2, || {
        format!("{at}: want a Deployment of 2")
    });
    check_anti_affinity(workload, p);
    check_pdb(objects, workload, p);
    Some((workload, at))
}

fn check_webhook_workload(objects: &[Value], p: &mut Problems) {
    let Some((workload, at)) = highly_available(objects, "stead-webhook", p) else { return };
    let pod = &workload["spec"]["template"]["spec"];
    for container in containers(pod) {
        p.check(strings(&container["args"]).first() == Some(&"serve"), || format!("{at}: first arg must be `serve`"));
        for (flag_name, want) in
            [("--listen", "0.0.0.0:8443"), ("--cert-dir", "/etc/stead/tls"), ("--metrics-listen", "0.0.0.0:9090")]
        {
            p.check(flag(container, flag_name) == Some(want), || format!("{at}: {flag_name} must be {want}"));
        }
        for (which, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let got = probe(container, which);
            p.check(got == ("HTTPS".to_owned(), path.to_owned(), Some(8443)), || {
                format!("{at}: {which} must GET https :8443{path}, is {got:?}")
            });
        }
    }
}

fn check_controller_workload(objects: &[Value], p: &mut Problems) {
    let Some((workload, at)) = highly_available(objects, "stead-controller", p) else { return };
    let pod = &workload["spec"]["template"]["spec"];
    for container in containers(pod) {
        p.check(flag(container, "--leader-elect").is_some(), || format!("{at}: must run with --leader-elect"));
        for (flag_name, want) in [("--health-listen", "0.0.0.0:8081"), ("--metrics-listen", "0.0.0.0:8080")] {
            p.check(flag(container, flag_name) == Some(want), || format!("{at}: {flag_name} must be {want}"));
        }
        for (env, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
            let from_api = container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["name"] == env && e["valueFrom"]["fieldRef"]["fieldPath"] == field);
            p.check(from_api, || format!("{at}: env {env} must come from the downward API ({field})"));
        }
        for (which, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let got = probe(container, which);
            p.check(got == ("HTTP".to_owned(), path.to_owned(), Some(8081)), || {
                format!("{at}: {which} must GET http :8081{path}, is {got:?}")
            });
        }
    }
}

/// Every check that must hold for any complete install.
fn check_install(objects: &[Value]) -> Problems {
    let mut p = Problems::default();
    check_webhooks(objects, &mut p);
    check_certificate_chain(objects, &mut p);
    check_rbac(objects, &mut p);
    check_pod_security(objects, &mut p);
    check_webhook_workload(objects, &mut p);
    check_controller_workload(objects, &mut p);
    check_network_policies(objects, &mut p);
    p
}

// ---------------------------------------------------------------------------
// Structural validation of the kinds kubernetes-validate has no schema for

fn only_keys(at: &str, v: &Value, allowed: &[&str], p: &mut Problems) {
    match v.as_object() {
        Some(map) => {
            for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
                p.0.push(format!("{at}: unknown field {key:?} (known: {allowed:?})"));
            }
        }
        None => p.0.push(format!("{at}: must be an object, is {v}")),
    }
}

fn non_empty_str(at: &str, v: &Value, p: &mut Problems) {
    p.check(v.as_str().is_some_and(|s| !s.is_empty()), || format!("{at}: must be a non-empty string, is {v}"));
}

fn one_of(at: &str, v: &Value, allowed: &[&str], p: &mut Problems) {
    p.check(v.as_str().is_some_and(|s| allowed.contains(&s)), || format!("{at}: must be one of {allowed:?}, is {v}"));
}

fn go_duration(at: &str, v: &Value, p: &mut Problems) {
    p.check(v.as_str().and_then(go_duration_seconds).is_some(), || format!("{at}: must be a Go duration, is {v}"));
}

/// cert-manager.io/v1 Certificate and Issuer, field by field (the subset of
/// the CRD schema these manifests may use; anything else is refused).
fn validate_cert_manager(o: &Value, p: &mut Problems) {
    let at = id(o);
    p.check(o["apiVersion"] == "cert-manager.io/v1", || format!("{at}: apiVersion must be cert-manager.io/v1"));
    only_keys(&at, o, &["apiVersion", "kind", "metadata", "spec"], p);
    let spec = &o["spec"];
    match kind(o) {
        "Certificate" => {
            only_keys(
                &format!("{at} spec"),
                spec,
                &[
                    "secretName",
                    "dnsNames",
                    "duration",
                    "renewBefore",
                    "usages",
                    "privateKey",
                    "issuerRef",
                    "isCA",
                    "commonName",
                    "subject",
                    "secretTemplate",
                    "revisionHistoryLimit",
                ],
                p,
            );
            non_empty_str(&format!("{at} spec.secretName"), &spec["secretName"], p);
            only_keys(&format!("{at} spec.issuerRef"), &spec["issuerRef"], &["name", "kind", "group"], p);
            non_empty_str(&format!("{at} spec.issuerRef.name"), &spec["issuerRef"]["name"], p);
            one_of(&format!("{at} spec.issuerRef.kind"), &spec["issuerRef"]["kind"], &["Issuer", "ClusterIssuer"], p);
            one_of(&format!("{at} spec.issuerRef.group"), &spec["issuerRef"]["group"], &["cert-manager.io"], p);
            for field in ["duration", "renewBefore"] {
                go_duration(&format!("{at} spec.{field}"), &spec[field], p);
            }
            let named = spec["commonName"].is_string() || !strings(&spec["dnsNames"]).is_empty();
            p.check(named, || format!("{at}: needs commonName or dnsNames"));
            if let Some(is_ca) = spec.get("isCA") {
                p.check(is_ca.is_boolean(), || format!("{at} spec.isCA: must be a boolean"));
            }
            for usage in spec["usages"].as_array().into_iter().flatten() {
                let known = [
                    "signing",
                    "digital signature",
                    "content commitment",
                    "key encipherment",
                    "key agreement",
                    "data encipherment",
                    "cert sign",
                    "crl sign",
                    "server auth",
                    "client auth",
                ];
                one_of(&format!("{at} spec.usages"), usage, &known, p);
            }
            if let Some(key) = spec.get("privateKey") {
                let at = format!("{at} spec.privateKey");
                only_keys(&at, key, &["algorithm", "size", "encoding", "rotationPolicy"], p);
                one_of(&format!("{at}.algorithm"), &key["algorithm"], &["RSA", "ECDSA", "Ed25519"], p);
                one_of(&format!("{at}.rotationPolicy"), &key["rotationPolicy"], &["Never", "Always"], p);
                if key["algorithm"] == "ECDSA" {
                    let size = key["size"].as_i64();
                    p.check(matches!(size, Some(256 | 384 | 521)), || {
                        format!("{at}.size: ECDSA takes 256, 384 or 521")
                    });
                }
            }
        }
        "Issuer" | "ClusterIssuer" => {
            let types = ["selfSigned", "ca", "acme", "vault", "venafi"];
            only_keys(&format!("{at} spec"), spec, &types, p);
            let set = spec.as_object().map_or(0, |m| m.keys().filter(|k| types.contains(&k.as_str())).count());
            p.check(set == 1, || format!("{at}: exactly one issuer type must be set, {set} are"));
            if let Some(self_signed) = spec.get("selfSigned") {
                only_keys(&format!("{at} spec.selfSigned"), self_signed, &["crlDistributionPoints"], p);
            }
            if let Some(ca) = spec.get("ca") {
                only_keys(&format!("{at} spec.ca"), ca, &["secretName", "crlDistributionPoints", "ocspServers"], p);
                non_empty_str(&format!("{at} spec.ca.secretName"), &ca["secretName"], p);
            }
        }
        other => p.0.push(format!("{at}: no structural validator for cert-manager kind {other}")),
    }
}

/// argoproj.io/v1alpha1 Application, field by field.
fn validate_application(o: &Value, p: &mut Problems) {
    let at = id(o);
    p.check(o["apiVersion"] == "argoproj.io/v1alpha1", || format!("{at}: apiVersion must be argoproj.io/v1alpha1"));
    only_keys(&at, o, &["apiVersion", "kind", "metadata", "spec"], p);
    let spec = &o["spec"];
    only_keys(
        &format!("{at} spec"),
        spec,
        &["project", "source", "destination", "syncPolicy", "ignoreDifferences", "info", "revisionHistoryLimit"],
        p,
    );
    non_empty_str(&format!("{at} spec.project"), &spec["project"], p);
    let source = &spec["source"];
    only_keys(
        &format!("{at} spec.source"),
        source,
        &["repoURL", "path", "targetRevision", "kustomize", "directory"],
        p,
    );
    for field in ["repoURL", "path", "targetRevision"] {
        non_empty_str(&format!("{at} spec.source.{field}"), &source[field], p);
    }
    only_keys(&format!("{at} spec.destination"), &spec["destination"], &["server", "name", "namespace"], p);
    p.check(spec["destination"]["server"].is_string() != spec["destination"]["name"].is_string(), || {
        format!("{at}: destination needs exactly one of server and name")
    });
    let sync = &spec["syncPolicy"];
    only_keys(
        &format!("{at} spec.syncPolicy"),
        sync,
        &["automated", "syncOptions", "retry", "managedNamespaceMetadata"],
        p,
    );
    only_keys(
        &format!("{at} spec.syncPolicy.automated"),
        &sync["automated"],
        &["prune", "selfHeal", "allowEmpty", "enabled"],
        p,
    );
    let known_options = [
        "Validate",
        "CreateNamespace",
        "PrunePropagationPolicy",
        "PruneLast",
        "ApplyOutOfSyncOnly",
        "RespectIgnoreDifferences",
        "ServerSideApply",
        "Replace",
        "FailOnSharedResource",
        "SkipDryRunOnMissingResource",
    ];
    for option in strings(&sync["syncOptions"]) {
        let known = option.split_once('=').is_some_and(|(k, v)| known_options.contains(&k) && !v.is_empty());
        p.check(known, || format!("{at}: unknown sync option {option:?}"));
    }
    if let Some(retry) = sync.get("retry") {
        only_keys(&format!("{at} spec.syncPolicy.retry"), retry, &["limit", "backoff", "refresh"], p);
        p.check(retry["limit"].is_i64(), || format!("{at}: retry.limit must be an integer"));
        let backoff = &retry["backoff"];
        only_keys(&format!("{at} retry.backoff"), backoff, &["duration", "factor", "maxDuration"], p);
        go_duration(&format!("{at} retry.backoff.duration"), &backoff["duration"], p);
        go_duration(&format!("{at} retry.backoff.maxDuration"), &backoff["maxDuration"], p);
        p.check(backoff["factor"].is_i64(), || format!("{at}: retry.backoff.factor must be an integer"));
    }
    for rule in spec["ignoreDifferences"].as_array().into_iter().flatten() {
        only_keys(
            &format!("{at} ignoreDifferences"),
            rule,
            &["group", "kind", "name", "namespace", "jsonPointers", "jqPathExpressions", "managedFieldsManagers"],
            p,
        );
        non_empty_str(&format!("{at} ignoreDifferences.kind"), &rule["kind"], p);
    }
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn every_expected_overlay_exists_and_renders() {
    let rendered = rendered();
    for overlay in EXPECTED_OVERLAYS {
        assert!(
            rendered.contains_key(*overlay),
            "manifests/{overlay} has no kustomization; found {:?}",
            rendered.keys()
        );
    }
    for (overlay, objects) in rendered {
        assert!(!objects.is_empty(), "manifests/{overlay} renders no objects");
        let mut seen = BTreeSet::new();
        for o in objects {
            assert!(
                o["apiVersion"].is_string() && !kind(o).is_empty() && !name(o).is_empty(),
                "manifests/{overlay}: object without apiVersion, kind or name: {o}"
            );
            assert!(seen.insert(format!("{}:{}", api_group(o), id(o))), "manifests/{overlay}: {} twice", id(o));
        }
    }
}

#[test]
fn default_installs_everything_into_stead_system() {
    let objects = default_render();
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ];
    for o in objects {
        if cluster_scoped.contains(&kind(o)) {
            assert_eq!(namespace(o), "", "{} is cluster-scoped", id(o));
        } else {
            assert_eq!(namespace(o), NAMESPACE, "{} must be in {NAMESPACE}", id(o));
        }
        assert_eq!(o["metadata"]["labels"]["app.kubernetes.io/part-of"], "stead", "{} lacks part-of", id(o));
    }
    let namespaces = of_kind(objects, "Namespace");
    assert_eq!(namespaces.len(), 1);
    assert_eq!(name(namespaces[0]), NAMESPACE);
    assert_eq!(namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    for crd in ["databaseclusters.stead.dev", "databasebackups.stead.dev", "apps.stead.dev"] {
        assert!(find(objects, "CustomResourceDefinition", crd).is_some(), "default must install the CRD {crd}");
    }
    assert!(of_kind(objects, "DatabaseCluster").is_empty(), "examples do not belong in default");
    for part in ["crds", "rbac", "certmanager", "webhook", "controller"] {
        for o in &rendered()[part] {
            let present = objects.iter().any(|d| kind(d) == kind(o) && name(d) == name(o));
            assert!(present, "default lacks {} from manifests/{part}", id(o));
        }
    }
}

#[test]
fn every_rendered_object_passes_the_kubernetes_schemas() {
    let validator = kubernetes_validate();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stead-manifests/schema");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    let mut structural = Problems::default();
    let mut structurally_checked = BTreeSet::new();
    for (overlay, objects) in rendered() {
        for (index, o) in objects.iter().enumerate() {
            match api_group(o) {
                // kubernetes-validate has no schema for these; checked here.
                "cert-manager.io" => validate_cert_manager(o, &mut structural),
                "argoproj.io" if kind(o) == "Application" => validate_application(o, &mut structural),
                group if group.contains('.') && !group.ends_with(".k8s.io") => {
                    structural.0.push(format!("{overlay}: no validator for {} ({group})", id(o)));
                }
                _ => {
                    let file = dir.join(format!("{}-{index:02}-{}.json", overlay.replace('/', "_"), kind(o)));
                    std::fs::write(&file, serde_json::to_vec_pretty(o).unwrap()).unwrap();
                    files.push(file);
                    continue;
                }
            }
            structurally_checked.insert(format!("{}/{}", api_group(o), kind(o)));
        }
    }
    structural.assert_none("cert-manager and Argo CD objects (validated structurally)");
    assert_eq!(
        structurally_checked,
        BTreeSet::from([
            "argoproj.io/Application".to_owned(),
            "cert-manager.io/Certificate".to_owned(),
            "cert-manager.io/Issuer".to_owned()
        ]),
        "the kinds validated structurally instead of by schema"
    );

    let mut command = Command::new(&validator);
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    let output = command.args(&files).output().unwrap_or_else(|e| panic!("running {}: {e}", validator.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("{stdout}{stderr}");
    // A missing schema is only a warning to the tool; here it is a failure.
    let bad: Vec<&str> = report.lines().filter(|l| !l.starts_with("INFO")).collect();
    assert!(output.status.success() && bad.is_empty(), "schema validation failed:\n{}", bad.join("\n"));
    let passed = report.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed ")).count();
    assert_eq!(
        passed,
        files.len() * KUBERNETES_VERSIONS.len(),
        "every object validated against every version:\n{report}"
    );
}

#[test]
fn the_validator_rejects_what_the_api_server_would() {
    // Guards the test above against a validator that passes everything.
    let validator = kubernetes_validate();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stead-manifests/schema-negative");
    std::fs::create_dir_all(&dir).unwrap();
    let mut deployment =
        default_render().iter().find(|o| kind(o) == "Deployment").cloned().expect("default renders a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = json!(true);
    let file = dir.join("misspelled.json");
    std::fs::write(&file, serde_json::to_vec(&deployment).unwrap()).unwrap();
    let output = Command::new(&validator).args(["--strict", "--quiet"]).arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a misspelled field must fail strict validation: {stdout}");
    assert!(stdout.contains("readOnlyRootFilesytem"), "the report names the field: {stdout}");
}

#[test]
fn default_install_is_consistent_and_least_privilege() {
    check_install(default_render()).assert_none("manifests/default");
}

#[test]
fn renaming_the_namespace_and_prefixing_names_keeps_everything_wired() {
    let copy = scratch_copy("renamed");
    let kustomization = copy.join("default/kustomization.yaml");
    let text = std::fs::read_to_string(&kustomization).unwrap();
    let from = format!("\nnamespace: {NAMESPACE}\n");
    assert!(text.contains(&from), "default/kustomization.yaml sets `namespace: {NAMESPACE}`");
    std::fs::write(&kustomization, text.replace(&from, "\nnamespace: databases\nnamePrefix: acme-\n")).unwrap();

    let objects = render(&copy.join("default"));
    check_install(&objects).assert_none("manifests/default renamed to databases/acme-");
    let service = find(&objects, "Service", "acme-stead-webhook").expect("the prefixed webhook Service");
    assert_eq!(namespace(service), "databases");
    let all = serde_json::to_string(&objects).unwrap();
    assert!(!all.contains(NAMESPACE), "the old namespace survives somewhere in the render");
}

#[test]
fn the_cert_manager_overlay_alone_is_a_complete_chain() {
    let objects = &rendered()["certmanager"];
    let issuers: BTreeSet<&str> = of_kind(objects, "Issuer").into_iter().map(name).collect();
    for cert in of_kind(objects, "Certificate") {
        let issuer = cert["spec"]["issuerRef"]["name"].as_str().unwrap_or_default();
        assert!(issuers.contains(issuer), "{} is issued by {issuer}, which the overlay lacks", id(cert));
    }
}

#[test]
fn argocd_application_syncs_the_app_overlay_server_side() {
    let apps = of_kind(&rendered()["argocd"], "Application");
    assert_eq!(apps.len(), 1, "manifests/argocd renders one example Application");
    let app = apps[0];
    assert_eq!(namespace(app), "argocd");
    let path = app["spec"]["source"]["path"].as_str().unwrap();
    let overlay = path.strip_prefix("manifests/").expect("source.path is under manifests/");
    assert!(rendered().contains_key(overlay), "source.path {path} is not a kustomize overlay of this repository");
    let synced = &rendered()[overlay];
    let service_ns = of_kind(synced, "Service").first().map(|s| namespace(s)).unwrap_or_default();
    assert_eq!(app["spec"]["destination"]["namespace"], service_ns, "destination namespace is the install namespace");

    let options = strings(&app["spec"]["syncPolicy"]["syncOptions"]);
    for option in ["ServerSideApply=true", "RespectIgnoreDifferences=true"] {
        assert!(options.contains(&option), "syncOptions lack {option}: {options:?}");
    }
    assert!(app["spec"]["syncPolicy"]["retry"]["limit"].as_i64().is_some_and(|l| l > 0), "sync must retry");

    // cainjector writes caBundle into both webhook configurations.
    for webhook_kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        let ignored = app["spec"]["ignoreDifferences"].as_array().into_iter().flatten().any(|rule| {
            rule["group"] == "admissionregistration.k8s.io"
                && rule["kind"] == webhook_kind
                && rule.get("name").is_none()
                && (strings(&rule["jqPathExpressions"]).contains(&".webhooks[]?.clientConfig.caBundle")
                    || strings(&rule["managedFieldsManagers"]).contains(&"cainjector"))
        });
        assert!(ignored, "ignoreDifferences must cover {webhook_kind} caBundle");
    }
}

fn wave(o: &Value) -> i64 {
    annotation(o, WAVE)
        .map_or(0, |w| w.parse().unwrap_or_else(|_| panic!("{}: sync-wave {w:?} is not an integer", id(o))))
}

#[test]
fn argocd_sync_waves_bring_up_stead_before_any_database_cluster() {
    let app = &rendered()["argocd/app"];
    // Same objects as default, only annotated.
    let ids = |objects: &[Value]| objects.iter().map(id).collect::<BTreeSet<_>>();
    assert_eq!(ids(app), ids(default_render()), "argocd/app syncs exactly manifests/default");
    check_install(app).assert_none("manifests/argocd/app");

    let mut p = Problems::default();
    for o in app {
        p.check(annotation(o, WAVE).is_some(), || format!("{}: no sync wave", id(o)));
    }
    let waves = |pick: &dyn Fn(&Value) -> bool| app.iter().filter(|o| pick(o)).map(wave).collect::<Vec<_>>();
    let foundation = waves(&|o| {
        matches!(
            kind(o),
            "Namespace"
                | "CustomResourceDefinition"
                | "ServiceAccount"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "Role"
                | "RoleBinding"
        )
    });
    let serving = find(app, "Certificate", "stead-webhook-serving").unwrap();
    let ca_issuer = app.iter().find(|o| kind(o) == "Issuer" && o["spec"]["ca"].is_object()).unwrap();
    let root = waves(&|o| {
        (kind(o) == "Issuer" && o["spec"]["selfSigned"].is_object())
            || (kind(o) == "Certificate" && o["spec"]["isCA"] == true)
    });
    let leaf = [wave(ca_issuer), wave(serving)];
    let workloads = waves(&|o| matches!(kind(o), "Deployment" | "Service" | "PodDisruptionBudget" | "NetworkPolicy"));
    let webhooks = waves(&|o| kind(o).ends_with("WebhookConfiguration"));
    let order = [
        ("foundation", foundation),
        ("CA", root),
        ("serving certificate", leaf.to_vec()),
        ("workloads", workloads),
        ("webhook configurations", webhooks),
    ];
    for pair in order.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let max_before = before.1.iter().max().copied().unwrap_or(i64::MIN);
        let min_after = after.1.iter().min().copied().unwrap_or(i64::MAX);
        p.check(max_before < min_after, || {
            format!("{} (waves {:?}) must sync before {} (waves {:?})", before.0, before.1, after.0, after.1)
        });
    }
    p.check(app.iter().all(|o| wave(o) < 0), || {
        "every stead object must sync before wave 0, where DatabaseClusters land".into()
    });
    let crd = find(app, "CustomResourceDefinition", "databaseclusters.stead.dev").unwrap();
    let crd_options = annotation(crd, "argocd.argoproj.io/sync-options").unwrap_or_default();
    p.check(crd_options.split(',').any(|o| o == "Prune=false"), || {
        "the CRD must never be pruned (it would delete every DatabaseCluster)".into()
    });
    p.assert_none("manifests/argocd/app sync waves");

    // A DatabaseCluster added to the same Application syncs last.
    let copy = scratch_copy("argocd-with-cluster");
    let overlay = copy.join("argocd/with-cluster");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("orders.yaml"),
        "apiVersion: stead.dev/v1alpha1\nkind: DatabaseCluster\nmetadata: {name: orders, namespace: shop}\n\
         spec: {image: \"postgres:17.2\", storage: {size: 10Gi}}\n",
    )
    .unwrap();
    std::fs::write(overlay.join("kustomization.yaml"), "resources:\n  - ../app\n  - orders.yaml\n").unwrap();
    let with_cluster = render(&overlay);
    let cluster = find(&with_cluster, "DatabaseCluster", "orders").expect("the added DatabaseCluster");
    for o in with_cluster.iter().filter(|o| kind(o) != "DatabaseCluster") {
        assert!(
            wave(o) < wave(cluster),
            "{} (wave {}) must sync before DatabaseClusters (wave {})",
            id(o),
            wave(o),
            wave(cluster)
        );
    }
}

#[test]
fn units_parse_as_kubernetes_and_cert_manager_write_them() {
    assert_eq!(go_duration_seconds("2160h"), Some(2160.0 * 3600.0));
    assert_eq!(go_duration_seconds("1h30m"), Some(5400.0));
    assert_eq!(go_duration_seconds("10s"), Some(10.0));
    assert_eq!(go_duration_seconds("90d"), None);
    assert_eq!(go_duration_seconds(""), None);
    assert_eq!(go_duration_seconds("h"), None);
    assert_eq!(quantity("50m"), Some(0.05));
    assert_eq!(quantity("1"), Some(1.0));
    assert_eq!(quantity("128Mi"), Some(128.0 * 1024.0 * 1024.0));
    assert_eq!(quantity("lots"), None);
}

#[test]
fn dockerfile_ships_the_binaries_the_manifests_run() {
    let root = repo_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    // Instructions with line continuations joined.
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<&str> =
        joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let from: Vec<&str> = instructions.iter().filter(|l| l.starts_with("FROM ")).copied().collect();
    assert!(from.len() >= 2, "multi-stage build expected, FROM lines: {from:?}");
    let runtime = from.last().copied().unwrap_or_default();
    assert!(
        runtime.contains("distroless") || runtime.contains("scratch"),
        "runtime stage must be distroless or static: {runtime}"
    );

    let user = instructions.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER instruction");
    let uid: i64 = user.split(':').next().and_then(|u| u.trim().parse().ok()).expect("USER is numeric (uid:gid)");
    assert_ne!(uid, 0, "the image must not run as root");

    let build = instructions.iter().find(|l| l.contains("cargo build")).expect("a cargo build step");
    for needle in ["--release", "--locked"] {
        assert!(build.contains(needle), "cargo build lacks {needle}: {build}");
    }
    let copied = instructions.iter().find(|l| l.starts_with("COPY --from=")).expect("COPY --from the build stage");
    let shipped: Vec<String> = copied
        .split_whitespace()
        .filter_map(|w| w.rsplit_once('/').map(|(_, file)| file))
        .filter(|f| !f.is_empty())
        .map(|f| format!("/usr/local/bin/{f}"))
        .collect();
    assert!(copied.trim_end().ends_with("/usr/local/bin/"), "binaries go to /usr/local/bin/: {copied}");

    let mut seen = BTreeSet::new();
    for workload in default_render().iter().filter(|o| pod_spec(o).is_some()) {
        let pod = pod_spec(workload).unwrap_or(&Value::Null);
        assert_eq!(
            pod["securityContext"]["runAsUser"].as_i64(),
            Some(uid),
            "{}: runAsUser matches the image USER",
            id(workload)
        );
        for container in containers(pod) {
            let command = strings(&container["command"]);
            let binary = command.first().copied().unwrap_or_default();
            assert!(
                shipped.iter().any(|s| s == binary),
                "{} runs {binary:?}, which the image does not ship ({shipped:?})",
                id(workload)
            );
            let bin_name = binary.rsplit('/').next().unwrap_or_default();
            assert!(build.contains(&format!("--bin {bin_name}")), "cargo build does not build {bin_name}");
            seen.insert(bin_name.to_owned());
        }
    }
    assert_eq!(seen, BTreeSet::from(["stead-controller".to_owned(), "stead-webhook".to_owned()]));

    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let ignored: BTreeSet<&str> = ignore.lines().map(str::trim).collect();
    for entry in ["target", ".git"] {
        assert!(ignored.contains(entry), ".dockerignore must exclude {entry}");
    }
}
