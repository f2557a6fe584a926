//! Sets the stage (control plane, CRD, webhook, controller), runs the
//! scenarios in order, and reports. Every process is stopped by its guard,
//! whether the run passes, fails or panics.

use std::env;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::scenarios::{Ctx, SCENARIOS};
use crate::support::assets::{self, STEAD_BIN_DIR_ENV};
use crate::support::control_plane::{self, ControlPlane, Options};
use crate::support::process::ManagedProcess;
use crate::support::say;
use crate::support::stead::{self, CONTROLLER_BINARY, Controller, ControllerOptions, WEBHOOK_BINARY, Webhook};

/// Comma-separated parts of scenario names; only matching scenarios run.
pub const ONLY_ENV: &str = "STEAD_E2E_ONLY";

/// Lines of each log shown when the run fails.
const FAILURE_LOG_LINES: usize = 25;

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
    let started = Instant::now();
    let mut control_plane = ControlPlane::start(&prerequisites, Options { controller_manager: true })?;
    say(&format!("e2e: control plane ready at {} in {:.1}s", control_plane.api_url(), started.elapsed().as_secs_f64()));

    let mut stage = Stage::default();
    let result = run_scenarios(&mut control_plane, &mut stage, &webhook_binary, &controller_binary);
    if result.is_err() {
        say(&failure_report(&mut control_plane, &stage));
    }
    // The controller and the webhook stop before the API server does.
    drop(stage);
    control_plane.stop();
    result
}

/// stead's processes, kept here so a failure report can read their logs.
#[derive(Default)]
struct Stage {
    webhook: Option<Webhook>,
    controller: Option<Controller>,
}

fn run_scenarios(
    control_plane: &mut ControlPlane,
    stage: &mut Stage,
    webhook_binary: &std::path::Path,
    controller_binary: &std::path::Path,
) -> anyhow::Result<()> {
    let kubectl = control_plane.kubectl().clone();
    stead::install_crd(&kubectl)?;
    stead::install_controller_rbac(&kubectl)?;
    let webhook = stage.webhook.insert(Webhook::start(webhook_binary, control_plane)?);
    webhook.register(&kubectl)?;
    let layout = control_plane.layout().clone();
    let controller = stage.controller.insert(Controller::spawn(
        controller_binary,
        &layout.controller_kubeconfig(),
        &layout.logs(),
        &ControllerOptions::default(),
    )?);
    controller.wait_ready()?;
    say(
        "e2e: CRD installed, stead-webhook registered, stead-controller ready (as a user bound only to manifests/rbac)",
    );

    let only = only_filter(env::var(ONLY_ENV).ok().as_deref());
    let garbage_collection = control_plane.has_controller_manager();
    let mut ctx = Ctx {
        kubectl,
        controller,
        audit_log: layout.audit_log(),
        garbage_collection,
        controller_binary: controller_binary.to_path_buf(),
        controller_kubeconfig: layout.controller_kubeconfig(),
        log_dir: layout.logs(),
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
            Err(err) => {
                say(&format!("e2e: FAIL {}: {err:#}", scenario.name));
                failed.push(scenario.name);
            }
        }
    }
    if let Ok(bytes) = ctx.controller.process().peak_rss_bytes() {
        say(&format!("e2e: stead-controller peak RSS {:.1} MiB", bytes as f64 / (1024.0 * 1024.0)));
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

/// The end of every log, and where the whole work directory was kept.
fn failure_report(control_plane: &mut ControlPlane, stage: &Stage) -> String {
    let mut report = String::from("e2e: the run failed; the end of each log follows.\n");
    let stead_processes =
        [stage.webhook.as_ref().map(Webhook::process), stage.controller.as_ref().map(Controller::process)];
    for process in stead_processes.into_iter().flatten() {
        report.push_str(&log_section(process));
    }
    report.push_str(&control_plane.log_tails(FAILURE_LOG_LINES));
    let kept = control_plane.keep_work_dir();
    report
        .push_str(&format!("e2e: kept {} (logs/, logs/audit.log, admin.kubeconfig) for investigation", kept.display()));
    report
}

fn log_section(process: &ManagedProcess) -> String {
    format!("--- {} ({}) ---\n{}\n", process.name(), process.log_path().display(), process.log_tail(FAILURE_LOG_LINES))
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
