//! e2e: stead against a real kube-apiserver, the envtest way.
//!
//! With `KUBEBUILDER_ASSETS` naming a directory that holds `kube-apiserver`
//! and `etcd` (and optionally `kube-controller-manager`), the suite starts a
//! control plane on loopback, installs the CRD, runs stead-webhook and
//! stead-controller as processes, runs database pods through a stand-in
//! kubelet, and drives kubectl through the scenarios in `scenarios.rs`. Without those binaries it prints one line and passes.
//!
//! `make e2e` builds the binaries first. `STEAD_E2E_ONLY=scale,printer`
//! runs a subset; see `support::assets` for the other variables.

mod apps;
mod backups;
mod clusters;
mod database;
mod finalizers;
mod operations;
mod ownership;
mod scenarios;
mod suite;
mod support;

#[test]
fn e2e() -> anyhow::Result<()> {
    suite::run()
}
