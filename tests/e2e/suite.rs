//! Sets the stage (control plane, CRDs, webhook, controller, stand-in
//! kubelet and snapshotter), runs the scenarios in order, and reports. Every process is
//! stopped by its guard, whether the run passes, fails or panics.

use std::env;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::scenarios::{Ctx, SCENARIOS, Skip};
use crate::support::assets::{self, STEAD_BIN_DIR_ENV};
use crate::support::control_plane::{self, ControlPlane, Options};
use crate::support::kubelet::{self, Kubelet};
use crate::support::process::ManagedProcess;
use crate::support::say;
use crate::support::snapshotter::{self, Snapshotter};
use crate::support::stead::{self, CONTROLLER_BINARY, Controller, ControllerOptions, WEBHOOK_BINARY, Webhook};

/// Comma-separated parts of scenario names; only matching scenarios run.
pub const ONLY_ENV: &str = "STEAD_E2E_ONLY";
/// The instance manager, which the stand-in kubelet runs as the image's `/usr/local/bin/stead-instance`.
pub const INSTANCE_BINARY: &str = "stead-instance";

/// Lines of each log shown when the run fails.
const FAILURE_LOG_LINES: usize = 25;
/// Lines of each container log shown when the run fails.
const FAILURE_POD_LOG_LINES: usize = 12;

/// Runs the suite, or prints one line and returns when it cannot run here.
pub fn run() -> anyhow::Result<()> {
    let prerequisites = match assets::prerequisites() {
        Ok(found) => found,
        Err(reason) => {
            say(&format!("e2e: skipped: {reason}"));
            return Ok(());
        }
    };
    let exe = env::current_exe().context("locating the test executable")?;
    let bin_dir = assets::stead_bin_dir(env::var_os(STEAD_BIN_DIR_ENV), &exe);
    let webhook_binary = assets::stead_binary(&bin_dir, WEBHOOK_BINARY)?;
    let controller_binary = assets::stead_binary(&bin_dir, CONTROLLER_BINARY)?;

    let binaries = &prerequisites.control_plane;
    say(&format!(
        "e2e: kube-apiserver {} and etcd from {}{}; kubectl {}; stead from {}",
        control_plane::version(&binaries.kube_apiserver),
        binaries.kube_apiserver.parent().map_or_else(String::new, |dir| dir.display().to_string()),
        if binaries.kube_controller_manager.is_some() { " (with kube-controller-manager)" } else { "" },
        prerequisites.kubectl.display(),
        bin_dir.display()
    ));
    let suite_started = Instant::now();
    let mut control_plane = ControlPlane::start(&prerequisites, Options { controller_manager: true })?;
    say(&format!(
        "e2e: control plane ready at {} in {:.1}s",
        control_plane.api_url(),
        suite_started.elapsed().as_secs_f64()
    ));

    let mut stage = Stage::default();
    let binaries = Binaries { webhook: webhook_binary, controller: controller_binary, dir: bin_dir };
    let result = run_scenarios(&mut control_plane, &mut stage, &binaries);
    if result.is_err() {
        say(&failure_report(&mut control_plane, &stage));
    }
    // The controller, then the pods, then the webhook, all before the API server.
    let result = result.and(stage.stop());
    drop(stage);
    control_plane.stop();
    say(&format!("e2e: total {:.1}s", suite_started.elapsed().as_secs_f64()));
    result
}

/// stead's programs.
struct Binaries {
    webhook: std::path::PathBuf,
    controller: std::path::PathBuf,
    /// Where they are, with stead-instance.
    dir: std::path::PathBuf,
}

/// stead's processes and the stand-in kubelet, kept here so a failure
/// report can read their logs.
#[derive(Default)]
struct Stage {
    webhook: Option<Webhook>,
    controller: Option<Controller>,
    kubelet: Option<Kubelet>,
    snapshotter: Option<Snapshotter>,
}

impl Stage {
    /// Stops the controller, then every pod (checking none is left), then the webhook.
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(controller) = self.controller.as_mut() {
            controller.stop()?;
        }
        if let Some(kubelet) = self.kubelet.as_mut() {
            kubelet.stop()?;
        }
        if let Some(snapshotter) = self.snapshotter.as_mut() {
            snapshotter.stop();
        }
        Ok(())
    }
}

/// Whether this run has to run database pods (CI), or may skip them.
fn pods_required() -> bool {
    env::var("CI").is_ok_and(|value| value == "true")
}

/// Starts the stand-in kubelet, or says why pods cannot run here.
fn start_kubelet(control_plane: &ControlPlane, binaries: &Binaries) -> anyhow::Result<Result<Kubelet, String>> {
    if !control_plane.has_controller_manager() {
        return Ok(Err(format!(
            "{} has no kube-controller-manager, so no StatefulSet controller makes pods",
            assets::ASSETS_ENV
        )));
    }
    if let Err(reason) = kubelet::availability() {
        return Ok(Err(reason));
    }
    if let Err(err) = assets::stead_binary(&binaries.dir, INSTANCE_BINARY) {
        return Ok(Err(format!("{err:#}")));
    }
    let layout = control_plane.layout();
    let options = kubelet::Options {
        kubeconfig: layout.admin_kubeconfig(),
        root: layout.kubelet(),
        log_dir: layout.logs(),
        bin_dir: binaries.dir.clone(),
    };
    Kubelet::start(&options).map(Ok)
}

fn run_scenarios(control_plane: &mut ControlPlane, stage: &mut Stage, binaries: &Binaries) -> anyhow::Result<()> {
    let kubectl = control_plane.kubectl().clone();
    stead::install_crd(&kubectl)?;
    stead::install_volume_snapshot_crds(&kubectl)?;
    stead::install_controller_rbac(&kubectl)?;
    let webhook = stage.webhook.insert(Webhook::start(&binaries.webhook, control_plane)?);
    webhook.register(&kubectl)?;
    let (webhook_url, webhook_ca) = (webhook.base_url().to_owned(), webhook.ca_pem().to_owned());
    let layout = control_plane.layout().clone();
    let controller_options = ControllerOptions::default();
    let controller = stage.controller.insert(Controller::spawn(
        &binaries.controller,
        &layout.controller_kubeconfig(),
        &layout.logs(),
        &controller_options,
    )?);
    controller.wait_ready()?;
    say(
        "e2e: CRD installed, stead-webhook registered, stead-controller ready (as a user bound only to manifests/rbac)",
    );
    let kubelet = match start_kubelet(control_plane, binaries)? {
        Ok(kubelet) => {
            say(&format!("e2e: stand-in kubelet on node {} runs database pods as local processes", kubelet::NODE_NAME));
            Ok(&*stage.kubelet.insert(kubelet))
        }
        Err(reason) if pods_required() => bail!("CI=true, but database pods cannot run here: {reason}"),
        Err(reason) => {
            say(&format!("e2e: no database pods on this machine ({reason}); their scenarios are skipped"));
            Err(reason)
        }
    };
    let snapshotter = &*stage.snapshotter.insert(Snapshotter::start(&snapshotter::Options {
        kubeconfig: layout.admin_kubeconfig(),
        root: layout.kubelet(),
        log_dir: layout.logs(),
    })?);
    say(&format!(
        "e2e: VolumeSnapshot CRDs installed; stand-in snapshotter takes snapshots of class {} (driver {})",
        snapshotter::CLASS,
        snapshotter::DRIVER
    ));
    let Some(controller) = stage.controller.as_mut() else { bail!("the controller was not started") };

    let only = only_filter(env::var(ONLY_ENV).ok().as_deref());
    let garbage_collection = control_plane.has_controller_manager();
    let mut ctx = Ctx {
        kubectl,
        controller,
        audit_log: layout.audit_log(),
        garbage_collection,
        controller_binary: binaries.controller.clone(),
        controller_kubeconfig: layout.controller_kubeconfig(),
        controller_options,
        log_dir: layout.logs(),
        kubelet,
        snapshotter,
        webhook_url,
        webhook_ca,
        figures: Vec::new(),
    };
    let mut failed = Vec::new();
    let mut ran = 0;
    for scenario in SCENARIOS.iter().filter(|s| selected(&only, s.name)) {
        control_plane.ensure_running().context("the control plane died; stopping")?;
        ctx.controller.ensure_running().context("stead-controller died; stopping")?;
        ran += 1;
        let started = Instant::now();
        match (scenario.run)(&mut ctx) {
            Ok(()) => say(&format!("e2e: ok   {} ({:.1}s)", scenario.name, started.elapsed().as_secs_f64())),
            Err(err) if err.downcast_ref::<Skip>().is_some() => say(&format!("e2e: skip {}: {err}", scenario.name)),
            Err(err) => {
                say(&format!("e2e: FAIL {}: {err:#}", scenario.name));
                failed.push(scenario.name);
            }
        }
    }
    if let Ok(bytes) = ctx.controller.process().peak_rss_bytes() {
        let split = ctx.controller.process().rss_split_bytes().map_or_else(
            |_| String::new(),
            |(anon, file)| format!(" (at the end {:.1} MiB anonymous, {:.1} MiB file-backed)", mib(anon), mib(file)),
        );
        ctx.figures.push(format!("stead-controller peak RSS {:.1} MiB{split}", mib(bytes)));
    }
    if let Ok(cpu) = control_plane.cpu_seconds() {
        let parts: Vec<String> = cpu.iter().map(|(name, seconds)| format!("{name} {seconds:.1} s")).collect();
        let controller = ctx.controller.process().cpu_seconds().map_or_else(|_| "?".to_owned(), |s| format!("{s:.1}"));
        ctx.figures.push(format!("CPU over the run: {}, stead-controller {controller} s", parts.join(", ")));
    }
    if let Ok(kubelet) = ctx.kubelet {
        for (process, bytes) in kubelet.instance_peaks() {
            ctx.figures.push(format!("stead-instance peak RSS (VmHWM) {:.1} MiB: {process}", mib(bytes)));
        }
    }
    for figure in &ctx.figures {
        say(&format!("e2e: figure: {figure}"));
    }
    ctx.controller.stop()?;
    if ran == 0 {
        bail!("{ONLY_ENV} selects no scenario; names: {}", scenario_names());
    }
    if !failed.is_empty() {
        bail!("{} of {ran} e2e scenarios failed: {}", failed.len(), failed.join(", "));
    }
    say(&format!("e2e: all {ran} scenarios passed"));
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The end of every log, and where the whole work directory was kept.
fn failure_report(control_plane: &mut ControlPlane, stage: &Stage) -> String {
    let mut report = String::from("e2e: the run failed; the end of each log follows.\n");
    let stead_processes =
        [stage.webhook.as_ref().map(Webhook::process), stage.controller.as_ref().map(Controller::process)];
    for process in stead_processes.into_iter().flatten() {
        report.push_str(&log_section(process));
    }
    if let Some(kubelet) = stage.kubelet.as_ref() {
        report.push_str(&file_section(kubelet.log_path(), FAILURE_LOG_LINES));
        for log in kubelet.container_logs() {
            report.push_str(&file_section(&log, FAILURE_POD_LOG_LINES));
        }
    }
    if let Some(snapshotter) = stage.snapshotter.as_ref() {
        report.push_str(&file_section(snapshotter.log_path(), FAILURE_LOG_LINES));
    }
    report.push_str(&control_plane.log_tails(FAILURE_LOG_LINES));
    let kept = control_plane.keep_work_dir();
    report.push_str(&format!(
        "e2e: kept {} (logs/, logs/pods/, logs/audit.log, kubelet/, admin.kubeconfig) for investigation",
        kept.display()
    ));
    report
}

fn log_section(process: &ManagedProcess) -> String {
    format!("--- {} ({}) ---\n{}\n", process.name(), process.log_path().display(), process.log_tail(FAILURE_LOG_LINES))
}

fn file_section(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("--- {name} ({}) ---\n{}\n", path.display(), crate::support::process::tail(&text, lines))
}

/// The parts of [`ONLY_ENV`]; empty means all.
pub fn only_filter(value: Option<&str>) -> Vec<String> {
    value.unwrap_or_default().split(',').map(str::trim).filter(|part| !part.is_empty()).map(str::to_owned).collect()
}

/// Whether a scenario runs under the filter.
pub fn selected(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|part| name.contains(part.as_str()))
}

fn scenario_names() -> String {
    SCENARIOS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_filter_matches_parts_of_names() {
        let only = only_filter(Some(" scale, printer ,"));
        assert_eq!(only, ["scale", "printer"]);
        assert!(selected(&only, "scale-subresource"));
        assert!(selected(&only, "printer-columns"));
        assert!(!selected(&only, "defaulting"));
        assert!(selected(&only_filter(None), "defaulting"));
        assert!(selected(&only_filter(Some("")), "defaulting"));
    }
}
