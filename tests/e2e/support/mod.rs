//! What the e2e suite and the controller benchmark share: finding binaries,
//! running a control plane, stead's processes, the stand-in kubelet and
//! snapshotter, kubectl,
//! and reading health, metrics and audit data. Pure helpers carry their own unit tests.

pub mod assets;
pub mod audit;
pub mod control_plane;
pub mod credentials;
pub mod http;
pub mod kubectl;
pub mod kubelet;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod snapshotter;
pub mod stead;
pub mod wait;

use std::io::Write;

/// Writes one line to stderr directly, so it shows even while the test
/// harness captures `println!`/`eprintln!` output.
pub fn say(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}
