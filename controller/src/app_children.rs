//! The children of an App, as pure functions of the App: a Deployment, a
//! ClusterIP Service named after the App, and an Ingress while
//! `spec.ingress` is set. Each carries the App's controller ownerReference,
//! the recommended labels, and the hash of its own body (see
//! [`crate::children::APPLIED_HASH`]), so a field removed from the App is
//! removed from the child at the next apply.

use kube::Resource;
use serde_json::{Value, json};
use stead_crds::app::{self, App, AppSpec, CONTAINER_NAME, PORT_NAME};

use crate::apply::{Child, Owner, OwnerKind};
use crate::children::{Identity, container_resources, with_applied_hash};
use crate::error::Error;

/// The App as the builders see it: identity plus the spec with every
/// webhook default applied in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct AppView {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub spec: AppSpec,
}

impl AppView {
    pub fn new(app: &App) -> Result<Self, Error> {
        let Identity { name, namespace, uid } = Identity::of(app.meta())?;
        Ok(Self {
            name,
            namespace,
            uid,
            generation: app.meta().generation,
            spec: stead_crds::app_validation::with_defaults(&app.spec),
        })
    }

    /// The App as the owner of its children.
    pub fn owner<'a>(&'a self, app: &App) -> Owner<'a> {
        Owner {
            kind: OwnerKind::App,
            namespace: &self.namespace,
            name: &self.name,
            uid: &self.uid,
            reference: app.object_ref(&()),
        }
    }

    fn metadata(&self) -> Value {
        json!({
            "name": self.name,
            "namespace": self.namespace,
            "labels": app::child_labels(&self.name),
            "ownerReferences": [{
                "apiVersion": App::api_version(&()),
                "kind": App::kind(&()),
                "name": self.name,
                "uid": self.uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        })
    }
}

/// A child of the App: every one is named after it.
pub fn child(view: &AppView, kind: &'static str) -> Child {
    Child { kind, name: view.name.clone() }
}

/// The Deployment: `replicas` pods of the App's image, its port named `http`.
pub fn deployment(view: &AppView) -> Value {
    let spec = &view.spec;
    let selector = app::selector_labels(&view.name);
    let mut container = json!({
        "name": CONTAINER_NAME,
        "image": spec.image,
        "ports": [{ "name": PORT_NAME, "containerPort": spec.effective_container_port(), "protocol": "TCP" }],
    });
    if !spec.env.is_empty() {
        container["env"] = serde_json::to_value(&spec.env).unwrap_or(Value::Null);
    }
    if let Some(resources) = container_resources(spec.resources.as_ref()) {
        container["resources"] = resources;
    }
    with_applied_hash(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": view.metadata(),
        "spec": {
            "replicas": spec.effective_replicas(),
            "selector": { "matchLabels": selector },
            "template": {
                "metadata": { "labels": app::child_labels(&view.name) },
                "spec": { "containers": [container] },
            },
        },
    }))
}

/// The ClusterIP Service: `service.port` to the pods' `http` port.
pub fn service(view: &AppView) -> Value {
    with_applied_hash(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": view.metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": app::selector_labels(&view.name),
            "ports": [{
                "name": PORT_NAME,
                "port": view.spec.effective_service_port(),
                "targetPort": PORT_NAME,
                "protocol": "TCP",
            }],
        },
    }))
}

/// The Ingress for `spec.ingress`; `None` without one (then it is removed).
pub fn ingress(view: &AppView) -> Option<Value> {
    let ingress = view.spec.ingress.as_ref()?;
    let mut spec = json!({
        "rules": [{
            "host": ingress.host,
            "http": { "paths": [{
                "path": ingress.effective_path(),
                "pathType": "Prefix",
                "backend": { "service": { "name": view.name, "port": { "number": view.spec.effective_service_port() } } },
            }] },
        }],
    });
    if let Some(class) = &ingress.class_name {
        spec["ingressClassName"] = json!(class);
    }
    if let Some(secret) = ingress.tls_secret() {
        spec["tls"] = json!([{ "hosts": [ingress.host], "secretName": secret }]);
    }
    Some(with_applied_hash(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": view.metadata(),
        "spec": spec,
    })))
}

/// The children as `(kind, name)`, for removing what the plan no longer lists.
pub fn planned(view: &AppView) -> Vec<(&'static str, String)> {
    let mut out = vec![("Deployment", view.name.clone()), ("Service", view.name.clone())];
    if view.spec.ingress.is_some() {
        out.push(("Ingress", view.name.clone()));
    }
    out
}

/// Whether a cached object is a child of the App `name` (by its labels).
pub fn is_child_of(meta: &kube::api::ObjectMeta, name: &str) -> bool {
    let labels = meta.labels.clone().unwrap_or_default();
    app::selector_labels(name).iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The App an object belongs to, from its labels (a cached child's namespace and `instance` label).
pub fn app_of(meta: &kube::api::ObjectMeta) -> Option<kube::runtime::reflector::ObjectRef<App>> {
    let namespace = meta.namespace.clone()?;
    let labels = meta.labels.as_ref()?;
    let name = labels.get("app.kubernetes.io/instance")?;
    is_child_of(meta, name).then(|| kube::runtime::reflector::ObjectRef::new(name).within(&namespace))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use stead_crds::app::{AppIngressSpec, AppIngressTls, AppServiceSpec};

    use super::*;

    fn view(ingress: Option<AppIngressSpec>) -> AppView {
        AppView {
            name: "shop".into(),
            namespace: "web".into(),
            uid: "uid-shop".into(),
            generation: Some(1),
            spec: AppSpec {
                image: "nginx:1.27".into(),
                replicas: Some(2),
                container_port: Some(8080),
                service: Some(AppServiceSpec { port: Some(80) }),
                ingress,
                ..AppSpec::default()
            },
        }
    }

    #[test]
    fn the_deployment_runs_the_image_on_the_named_port_and_is_owned_by_the_app() {
        let d = deployment(&view(None));
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.27");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 8080);
        assert_eq!(d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "shop");
        assert_eq!(d["metadata"]["ownerReferences"][0]["kind"], "App");
        assert_eq!(d["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/managed-by"], "stead-controller");
        assert!(d["metadata"]["annotations"][crate::children::APPLIED_HASH].is_string());
    }

    #[test]
    fn the_service_forwards_its_port_to_the_containers() {
        let s = service(&view(None));
        assert_eq!(s["spec"]["ports"][0]["port"], 80);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(s["spec"]["selector"]["app.kubernetes.io/name"], "app");
    }

    #[test]
    fn the_ingress_follows_spec_ingress_and_goes_without_it() {
        assert!(ingress(&view(None)).is_none());
        assert_eq!(planned(&view(None)).len(), 2);
        let with = view(Some(AppIngressSpec {
            host: "shop.example.com".into(),
            path: Some("/".into()),
            class_name: Some("nginx".into()),
            tls: Some(AppIngressTls { secret_name: "shop-tls".into() }),
        }));
        let i = ingress(&with).unwrap();
        assert_eq!(i["spec"]["rules"][0]["host"], "shop.example.com");
        assert_eq!(i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"], 80);
        assert_eq!(i["spec"]["ingressClassName"], "nginx");
        assert_eq!(i["spec"]["tls"][0]["secretName"], "shop-tls");
        assert_eq!(planned(&with).last().unwrap().0, "Ingress");
    }
}
