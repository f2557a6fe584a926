//! Controller benchmark (`make bench-controller`).
//!
//! Against a real control plane (`KUBEBUILDER_ASSETS`, as the e2e suite): for
//! each N (100 and 1,000 unless `--clusters` says otherwise) it creates N
//! DatabaseClusters in a fresh namespace while no controller runs, then
//! starts stead-controller for that namespace and measures the time until
//! every cluster has `status.observedGeneration == metadata.generation` and
//! all children exist; the requests the controller made (the API server's
//! audit log, filtered to the controller's own user), per reconcile; and the
//! controller's peak RSS (VmHWM). The webhook is not installed: clusters are
//! created complete, so only the controller is measured.
//!
//! Without a control plane it says so in one line and runs the controller
//! crate's mock-API benchmark instead. Figures only; nothing is asserted.

// The benchmark uses part of the suite's support code.
#[allow(dead_code)]
mod support;

use std::env;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use support::assets::{self, STEAD_BIN_DIR_ENV};
use support::audit;
use support::control_plane::{self, ControlPlane, Options};
use support::credentials::CONTROLLER_USER;
use support::kubectl::Kubectl;
use support::say;
use support::stead::{self, CONTROLLER_BINARY, Controller, ControllerOptions};
use support::wait::{self, Poll};

/// Cluster counts measured by default.
const DEFAULT_SIZES: [usize; 2] = [100, 1000];
/// Longest a run may take to reconcile everything.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(900);
/// Replicas of each benchmark cluster (more than one, so a PDB is made too).
const REPLICAS: i64 = 3;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            say(&format!("bench-controller: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Command-line settings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    sizes: Vec<usize>,
    concurrency: Option<u32>,
}

impl Settings {
    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut settings = Self { sizes: DEFAULT_SIZES.to_vec(), concurrency: None };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || inline.clone().or_else(|| args.next()).with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--clusters" => {
                    let text = value()?;
                    settings.sizes = text
                        .split(',')
                        .map(|part| match part.trim().parse::<usize>() {
                            Ok(n) if n > 0 => Ok(n),
                            _ => bail!(
                                "--clusters {text:?}: {part:?} is not accepted; give positive \
                                 counts separated by commas, such as 100,1000"
                            ),
                        })
                        .collect::<anyhow::Result<_>>()?;
                }
                "--concurrency" => {
                    let text = value()?;
                    settings.concurrency = Some(match text.parse::<u32>() {
                        Ok(n) if n > 0 => n,
                        _ => bail!(
                            "--concurrency {text:?} is not accepted; give a positive whole number \
                             (it is passed to stead-controller --concurrency)"
                        ),
                    });
                }
                other => bail!("unknown argument {other:?}; accepted: --clusters 100,1000 and --concurrency N"),
            }
        }
        Ok(settings)
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let settings = Settings::parse(env::args().skip(1))?;
    let prerequisites = match assets::prerequisites() {
        Ok(found) => found,
        Err(reason) => {
            say(&format!(
                "bench-controller: no control plane ({reason}); falling back to the mock-API \
                 benchmark: cargo run --release -p stead-controller --example bench_reconcile"
            ));
            return mock_benchmark();
        }
    };
    let exe = env::current_exe().context("locating the benchmark executable")?;
    let bin_dir = assets::stead_bin_dir(env::var_os(STEAD_BIN_DIR_ENV), &exe);
    let controller_binary = assets::stead_binary(&bin_dir, CONTROLLER_BINARY)?;

    let mut control_plane = ControlPlane::start(&prerequisites, Options { controller_manager: false })?;
    let kubectl = control_plane.kubectl().clone();
    stead::install_crd(&kubectl)?;
    stead::install_controller_rbac(&kubectl)?;

    let mut rows = Vec::new();
    for &clusters in &settings.sizes {
        say(&format!("bench-controller: {clusters} clusters…"));
        let row = measure(&control_plane, &kubectl, &controller_binary, clusters, &settings)?;
        rows.push(row);
    }
    println!(
        "stead-controller ({}) against {} on 127.0.0.1; --concurrency {}; webhook not installed",
        controller_binary.display(),
        control_plane::version(&prerequisites.control_plane.kube_apiserver),
        settings.concurrency.map_or_else(|| "default".to_owned(), |n| n.to_string())
    );
    println!("{}", render_table(&rows));
    control_plane.stop();
    Ok(ExitCode::SUCCESS)
}

/// One measured run.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    clusters: usize,
    seconds: f64,
    reconciles: f64,
    requests: u64,
    peak_rss_bytes: u64,
}

fn measure(
    control_plane: &ControlPlane,
    kubectl: &Kubectl,
    controller_binary: &Path,
    clusters: usize,
    settings: &Settings,
) -> anyhow::Result<Row> {
    let namespace = format!("bench-{clusters}");
    kubectl.ok(&["create", "namespace", &namespace]).with_context(|| format!("creating namespace {namespace}"))?;
    kubectl
        .create(&cluster_list(&namespace, clusters), &["-o", "name"])?
        .ok()
        .with_context(|| format!("creating {clusters} clusters"))?;

    let layout = control_plane.layout();
    let audit_log = layout.audit_log();
    let before = audit::read_counts(&audit_log, CONTROLLER_USER)?;
    let started = Instant::now();
    let mut controller = Controller::spawn(
        controller_binary,
        &layout.controller_kubeconfig(),
        &layout.logs(),
        &ControllerOptions {
            namespace: Some(namespace.clone()),
            concurrency: settings.concurrency,
            ..Default::default()
        },
    )?;
    let seconds =
        wait::until(&format!("{clusters} clusters in {namespace} to be reconciled"), RECONCILE_TIMEOUT, || {
            let elapsed = started.elapsed().as_secs_f64();
            controller.ensure_running()?;
            let generations = kubectl.ok(&[
                "get",
                "databaseclusters",
                "-n",
                &namespace,
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.generation}{" "}{.status.observedGeneration}{"\n"}{end}"#,
            ])?;
            let reconciled = count_reconciled(&generations);
            if reconciled < clusters {
                return Ok(Poll::Pending(format!("{reconciled}/{clusters} reconciled")));
            }
            let names =
                kubectl.ok(&["get", "statefulsets,services,poddisruptionbudgets", "-n", &namespace, "-o", "name"])?;
            let children = ChildCounts::parse(&names);
            Ok(if children.complete(clusters) {
                Poll::Ready(elapsed)
            } else {
                Poll::Pending(format!("all reconciled, children so far: {children:?}"))
            })
        })?;
    let counters = controller.counters()?;
    let peak_rss_bytes = controller.process().peak_rss_bytes()?;
    let requests = audit::read_counts(&audit_log, CONTROLLER_USER)?.since(before).requests;
    controller.stop()?;
    Ok(Row { clusters, seconds, reconciles: counters.reconciles.unwrap_or(0.0), requests, peak_rss_bytes })
}

/// N complete clusters (nothing left for a webhook to default), as a v1 List.
fn cluster_list(namespace: &str, clusters: usize) -> Value {
    let items: Vec<Value> = (1..=clusters)
        .map(|i| {
            json!({
                "apiVersion": "stead.dev/v1alpha1",
                "kind": "DatabaseCluster",
                "metadata": {"name": format!("c-{i:04}"), "namespace": namespace},
                "spec": {
                    "image": "postgres:17.2",
                    "replicas": REPLICAS,
                    "port": 5432,
                    "storage": {"size": "1Gi"}
                }
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Lines `<generation> <observedGeneration>` whose two numbers agree.
fn count_reconciled(lines: &str) -> usize {
    lines
        .lines()
        .filter(|line| {
            let mut parts = line.split_whitespace();
            matches!((parts.next(), parts.next()), (Some(a), Some(b)) if a == b)
        })
        .count()
}

/// The Services of one cluster: `-headless`, `-rw`, `-ro`, `-r`.
const SERVICES_PER_CLUSTER: usize = 4;

/// Children found by `kubectl get … -o name`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ChildCounts {
    statefulsets: usize,
    services: usize,
    pdbs: usize,
}

impl ChildCounts {
    fn parse(names: &str) -> Self {
        let mut counts = Self::default();
        for line in names.lines() {
            match line.split_once('/').map(|(kind, _)| kind) {
                Some("statefulset.apps") => counts.statefulsets += 1,
                Some("service") => counts.services += 1,
                Some("poddisruptionbudget.policy") => counts.pdbs += 1,
                _ => {}
            }
        }
        counts
    }

    /// Every cluster has a StatefulSet, its four Services (headless, -rw, -ro, -r) and a PDB.
    fn complete(self, clusters: usize) -> bool {
        self.statefulsets == clusters && self.services == SERVICES_PER_CLUSTER * clusters && self.pdbs == clusters
    }
}

/// The figures as a Markdown table.
fn render_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| clusters | seconds until all reconciled | reconciles | API requests | requests / reconcile | peak RSS (MiB) |\n\
         |---------:|-----------------------------:|-----------:|-------------:|---------------------:|---------------:|\n",
    );
    for row in rows {
        let per_reconcile = if row.reconciles > 0.0 {
            format!("{:.2}", row.requests as f64 / row.reconciles)
        } else {
            "n/a".to_owned()
        };
        out.push_str(&format!(
            "| {} | {:.2} | {} | {} | {} | {:.1} |\n",
            row.clusters,
            row.seconds,
            row.reconciles,
            row.requests,
            per_reconcile,
            row.peak_rss_bytes as f64 / (1024.0 * 1024.0)
        ));
    }
    out.trim_end().to_owned()
}

/// Runs the controller crate's mock-API benchmark and passes on its exit.
fn mock_benchmark() -> anyhow::Result<ExitCode> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the tests crate has no parent directory")?;
    let status = Command::new(&cargo)
        .args(["run", "--release", "-p", "stead-controller", "--example", "bench_reconcile"])
        .current_dir(workspace)
        .status()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        say(&format!("bench-controller: the mock benchmark ended with {status}"));
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn settings_default_to_100_and_1000() {
        assert_eq!(Settings::parse(args(&[])).unwrap(), Settings { sizes: vec![100, 1000], concurrency: None });
        assert_eq!(
            Settings::parse(args(&["--clusters", "10,20", "--concurrency=8"])).unwrap(),
            Settings { sizes: vec![10, 20], concurrency: Some(8) }
        );
    }

    #[test]
    fn bad_arguments_say_what_is_accepted() {
        let err = Settings::parse(args(&["--clusters", "10,x"])).unwrap_err().to_string();
        assert!(err.contains("\"x\" is not accepted") && err.contains("100,1000"), "{err}");
        let err = Settings::parse(args(&["--concurrency", "0"])).unwrap_err().to_string();
        assert!(err.contains("positive whole number"), "{err}");
        let err = Settings::parse(args(&["--fast"])).unwrap_err().to_string();
        assert!(err.contains("unknown argument \"--fast\""), "{err}");
        let err = Settings::parse(args(&["--clusters"])).unwrap_err().to_string();
        assert!(err.contains("--clusters needs a value"), "{err}");
    }

    #[test]
    fn reconciled_lines_need_matching_generations() {
        let lines = "1 1\n2 1\n1\n3 3\n\n";
        assert_eq!(count_reconciled(lines), 2);
    }

    #[test]
    fn children_are_counted_by_kind() {
        let names = "poddisruptionbudget.policy/c-0001\nservice/c-0001\nservice/c-0001-headless\n\
                     statefulset.apps/c-0001\nservice/kubernetes-ish\n";
        let counts = ChildCounts::parse(names);
        assert_eq!(counts, ChildCounts { statefulsets: 1, services: 3, pdbs: 1 });
        assert!(!counts.complete(1));
        assert!(!ChildCounts { statefulsets: 2, services: 4, pdbs: 2 }.complete(2));
        assert!(ChildCounts { statefulsets: 2, services: 8, pdbs: 2 }.complete(2));
    }

    #[test]
    fn cluster_list_holds_complete_named_clusters() {
        let list = cluster_list("bench-3", 3);
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[2]["metadata"]["name"], "c-0003");
        assert_eq!(items[0]["metadata"]["namespace"], "bench-3");
        assert_eq!(items[0]["spec"]["replicas"], REPLICAS);
        assert_eq!(items[0]["spec"]["port"], 5432);
    }

    #[test]
    fn table_shows_requests_per_reconcile() {
        let table = render_table(&[Row {
            clusters: 100,
            seconds: 1.234,
            reconciles: 200.0,
            requests: 900,
            peak_rss_bytes: 20 * 1024 * 1024,
        }]);
        let last = table.lines().last().unwrap();
        assert_eq!(last, "| 100 | 1.23 | 200 | 900 | 4.50 | 20.0 |");
        assert!(table.starts_with("| clusters |"));
    }
}
