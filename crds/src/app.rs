//! The `App` API (`stead.dev/v1alpha1`): a stateless application from one
//! resource. The controller turns each App into a Deployment, a Service and,
//! when `spec.ingress` is present, an Ingress, and reports their state in
//! `.status`.
//!
//! `replicas`, `containerPort`, `service.port` and `ingress.path` are
//! optional in the schema on purpose: the mutating webhook fills them in
//! ([`crate::app_validation::default_patch`]), and the controller reads them
//! through the `effective_*` methods, which apply the same defaults when the
//! webhook was bypassed. The admission rules are in [`crate::app_validation`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Kind of an App.
pub const KIND: &str = "App";
/// Plural resource name, as it appears in URLs, RBAC and webhook rules.
pub const PLURAL: &str = "apps";
/// Short name (`kubectl get app`).
pub const SHORT_NAME: &str = "app";

/// Replicas when the user wrote none.
pub const DEFAULT_REPLICAS: i32 = 1;
/// Fewest replicas an App may ask for: 0 scales it to nothing, keeping the Service and Ingress.
pub const MIN_REPLICAS: i32 = 0;
/// Most replicas an App may ask for.
pub const MAX_REPLICAS: i32 = 100;
/// The port the container listens on when the user wrote none.
pub const DEFAULT_CONTAINER_PORT: i32 = 8080;
/// The Ingress path when `spec.ingress` is present without one.
pub const DEFAULT_INGRESS_PATH: &str = "/";

/// `app.kubernetes.io/name` of an App's children; `app.kubernetes.io/instance` is the App's name.
pub const NAME_LABEL_VALUE: &str = "app";
/// Name of the container in the Deployment's pod template.
pub const CONTAINER_NAME: &str = "app";
/// Name of the container port and of the Service port (the Service targets the container port by it).
pub const PORT_NAME: &str = "http";

/// Condition type: the Deployment has at least its desired replicas minus
/// `maxUnavailable` available (the Deployment's own `Available`).
pub const CONDITION_AVAILABLE: &str = "Available";
/// Condition type: a rollout is under way, complete, or stuck (the Deployment's own `Progressing`).
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// `Progressing=False` reason of a rollout that missed `progressDeadlineSeconds`; Argo CD reads it as Degraded.
pub const REASON_PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// Desired state of one stateless application.
// Several printer columns share `type_ = "integer"`; clippy reads the derive
// arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "stead.dev",
    version = "v1alpha1",
    kind = "App",
    plural = "apps",
    singular = "app",
    shortname = "app",
    category = "stead",
    namespaced,
    status = "AppStatus",
    derive = "PartialEq",
    derive = "Default",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas", description = "Desired replicas"),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Replicas ready to serve"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.url",
        description = "Where the App is reached through its Ingress"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Container image, such as `nginx:1.27` or
    /// `registry.example.com/shop/web@sha256:<digest>`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Number of pods, 0 to 100. Defaulted to 1 by the webhook;
    /// `kubectl scale app/<name>` writes it through the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,

    /// The port the container listens on. Defaulted to 8080 by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: Option<i32>,

    /// Environment variables of the container (core `EnvVar`: `value` or
    /// `valueFrom`); names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,

    /// Compute resources of the container; quantities follow the same rules
    /// as a DatabaseCluster's, and each request is at most its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The Service in front of the pods. Defaulted to `{port: <containerPort>}` by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<AppServiceSpec>,

    /// An Ingress routing `host` and `path` to the Service. Without it, no
    /// Ingress exists (removing it removes the Ingress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<AppIngressSpec>,
}

/// `spec.service`: the ClusterIP Service named after the App.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppServiceSpec {
    /// The port the Service exposes; it forwards to `containerPort`.
    /// Defaulted to `containerPort` by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// `spec.ingress`: where the App is reached from outside the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppIngressSpec {
    /// The DNS name clients use, such as `shop.example.com`, or a wildcard
    /// `*.example.com` (the wildcard only as the first label). No two Apps
    /// of one namespace claim the same host and path.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// The path prefix routed to the App, starting with `/`. Defaulted to `/` by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,

    /// The IngressClass that serves the Ingress, such as `nginx`; the
    /// cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// TLS for `host`, with the certificate in a Secret of the App's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<AppIngressTls>,
}

/// `spec.ingress.tls`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppIngressTls {
    /// The `kubernetes.io/tls` Secret holding the certificate for `host`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Observed state, written by the controller through the status subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pods the Deployment runs (the Deployment's `status.replicas`; scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Pods that pass their readiness probe (the Deployment's `status.readyReplicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Pods that run the current pod template (the Deployment's `status.updatedReplicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,

    /// Where the App is reached: `https://<host><path>` with `ingress.tls`,
    /// `http://<host><path>` without; absent without an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Label selector of the pods, as a string (scale subresource, HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// `Available` and `Progressing`, in metav1.Condition form, following
    /// the Deployment's rollout (including `ProgressDeadlineExceeded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl AppSpec {
    /// Replicas with the webhook's default applied.
    pub fn effective_replicas(&self) -> i32 {
        self.replicas.unwrap_or(DEFAULT_REPLICAS)
    }

    /// The container port with the webhook's default applied.
    pub fn effective_container_port(&self) -> i32 {
        self.container_port.unwrap_or(DEFAULT_CONTAINER_PORT)
    }

    /// The Service port with the webhook's default (the container port) applied.
    pub fn effective_service_port(&self) -> i32 {
        self.service.as_ref().and_then(|s| s.port).unwrap_or_else(|| self.effective_container_port())
    }

    /// The `(host, path)` the App's Ingress claims, path defaulted; `None` without an Ingress.
    pub fn route(&self) -> Option<(&str, &str)> {
        self.ingress.as_ref().map(|i| (i.host.as_str(), i.effective_path()))
    }

    /// Where the App is reached through its Ingress, as `status.url` reports it.
    pub fn url(&self) -> Option<String> {
        self.ingress.as_ref().map(AppIngressSpec::url)
    }
}

impl AppIngressSpec {
    /// The path with the webhook's default (`/`) applied.
    pub fn effective_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_INGRESS_PATH)
    }

    /// The name of the TLS Secret, when TLS is asked for.
    pub fn tls_secret(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.secret_name.as_str())
    }

    /// `https://<host><path>` with TLS, `http://<host><path>` without.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.host, self.effective_path())
    }
}

impl App {
    /// The readiness of the Available condition, as the controller last wrote it.
    pub fn is_available(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_AVAILABLE))
            .is_some_and(|c| c.status == "True")
    }
}

/// Labels that select the pods of the App `name`; also the status selector
/// and the Service's selector.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    crate::names::selector_labels_of(NAME_LABEL_VALUE, name)
}

/// [`selector_labels`] as a label selector string, for `.status.selector`.
pub fn selector_string(name: &str) -> String {
    crate::names::label_selector_string(&selector_labels(name))
}

/// Every recommended label a child of the App `name` carries: the selector
/// labels and `app.kubernetes.io/managed-by`.
pub fn child_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert("app.kubernetes.io/managed-by".to_owned(), crate::names::MANAGED_BY.to_owned());
    labels
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn effective_values_apply_the_defaults() {
        let spec = AppSpec { image: "nginx:1.27".into(), ..Default::default() };
        assert_eq!(
            (spec.effective_replicas(), spec.effective_container_port(), spec.effective_service_port()),
            (1, 8080, 8080)
        );
        let spec = AppSpec { container_port: Some(3000), ..spec };
        assert_eq!(spec.effective_service_port(), 3000);
        let spec = AppSpec { service: Some(AppServiceSpec { port: Some(80) }), replicas: Some(0), ..spec };
        assert_eq!((spec.effective_replicas(), spec.effective_service_port()), (0, 80));
        assert_eq!(spec.route(), None);
        assert_eq!(spec.url(), None);
    }

    #[test]
    fn route_and_url_follow_host_path_and_tls() {
        let mut ingress = AppIngressSpec { host: "shop.example.com".into(), ..Default::default() };
        let spec = AppSpec { ingress: Some(ingress.clone()), ..Default::default() };
        assert_eq!(spec.route(), Some(("shop.example.com", "/")));
        assert_eq!(spec.url().as_deref(), Some("http://shop.example.com/"));
        ingress.path = Some("/api".into());
        ingress.tls = Some(AppIngressTls { secret_name: "shop-tls".into() });
        assert_eq!(ingress.url(), "https://shop.example.com/api");
        assert_eq!(ingress.tls_secret(), Some("shop-tls"));
    }

    #[test]
    fn selector_is_sorted_and_names_the_app() {
        assert_eq!(selector_string("shop"), "app.kubernetes.io/instance=shop,app.kubernetes.io/name=app");
        assert_eq!(
            child_labels("shop").get("app.kubernetes.io/managed-by").map(String::as_str),
            Some("stead-controller")
        );
    }
}
