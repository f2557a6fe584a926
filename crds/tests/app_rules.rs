//! Table tests for every App admission rule: defaults, the spec rules, the
//! name, ratcheting on UPDATE, and the host and path collision (pure, with
//! the other Apps as a slice, and through a table of cache answers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::needless_pass_by_value)]

use serde_json::{Value, json};
use stead_crds::app::{AppIngressSpec, AppSpec};
use stead_crds::app_validation::{
    self, collision_skipped, default_patch, env_name_error, host_error, path_error, validate_collisions,
    validate_create, validate_create_with, validate_update, validate_update_with, with_defaults,
};
use stead_crds::lookup::{Answers, Found, Query};
use stead_crds::{App, Verdict};

/// An App `name` in namespace `shop` with `spec` (image `nginx:1.27` unless given).
fn app_named(name: &str, spec: Value) -> App {
    let mut spec = spec;
    if let Some(map) = spec.as_object_mut() {
        map.entry("image").or_insert_with(|| json!("nginx:1.27"));
    }
    let object = json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "App",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec
    });
    app_validation::decode(&object).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn app(spec: Value) -> App {
    app_named("shop", spec)
}

/// `field: type` of every error, in order.
fn fields(verdict: &Verdict) -> Vec<String> {
    verdict.errors.iter().map(|e| format!("{}: {}", e.field, e.type_name())).collect()
}

fn apply_defaults(spec: Value) -> Value {
    let mut object = json!({"spec": spec});
    let patch = default_patch(&object);
    json_patch::patch(&mut object, &patch).unwrap();
    object["spec"].take()
}

#[test]
fn defaults_table() {
    // (case, spec in, spec out)
    let rows = [
        (
            "everything absent",
            json!({"image": "nginx:1.27"}),
            json!({"image": "nginx:1.27", "replicas": 1, "containerPort": 8080, "service": {"port": 8080}}),
        ),
        (
            "service port follows the written container port",
            json!({"containerPort": 3000}),
            json!({"containerPort": 3000, "replicas": 1, "service": {"port": 3000}}),
        ),
        (
            "an empty service gets its port",
            json!({"replicas": 2, "containerPort": 80, "service": {}}),
            json!({"replicas": 2, "containerPort": 80, "service": {"port": 80}}),
        ),
        (
            "written values are kept, zero replicas included",
            json!({"replicas": 0, "containerPort": 9000, "service": {"port": 443}}),
            json!({"replicas": 0, "containerPort": 9000, "service": {"port": 443}}),
        ),
        (
            "an ingress gets path /",
            json!({"replicas": 1, "containerPort": 1, "service": {"port": 1}, "ingress": {"host": "a.example.com"}}),
            json!({"replicas": 1, "containerPort": 1, "service": {"port": 1}, "ingress": {"host": "a.example.com", "path": "/"}}),
        ),
        (
            "a written path is kept",
            json!({"replicas": 1, "containerPort": 1, "service": {"port": 1}, "ingress": {"host": "a", "path": "/api"}}),
            json!({"replicas": 1, "containerPort": 1, "service": {"port": 1}, "ingress": {"host": "a", "path": "/api"}}),
        ),
        (
            "null is absent",
            json!({"replicas": null, "service": null}),
            json!({"replicas": 1, "containerPort": 8080, "service": {"port": 8080}}),
        ),
        (
            "a malformed container port gets no service default",
            json!({"replicas": 1, "containerPort": "http"}),
            json!({"replicas": 1, "containerPort": "http"}),
        ),
        (
            "an out-of-range container port is not copied",
            json!({"replicas": 1, "containerPort": 70000}),
            json!({"replicas": 1, "containerPort": 70000}),
        ),
        (
            "a malformed service is left for schema validation",
            json!({"replicas": 1, "containerPort": 1, "service": "x", "ingress": [1]}),
            json!({"replicas": 1, "containerPort": 1, "service": "x", "ingress": [1]}),
        ),
    ];
    for (case, spec, want) in rows {
        assert_eq!(apply_defaults(spec), want, "{case}");
    }
}

#[test]
fn defaulting_is_minimal_and_idempotent() {
    let patch = default_patch(&json!({"spec": {"image": "x", "containerPort": 81}}));
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([
            {"op": "add", "path": "/spec/replicas", "value": 1},
            {"op": "add", "path": "/spec/service", "value": {"port": 81}}
        ])
    );
    for spec in [json!({}), json!({"ingress": {"host": "a"}}), json!({"service": {}, "containerPort": 5})] {
        let once = apply_defaults(spec.clone());
        assert!(default_patch(&json!({"spec": once})).0.is_empty(), "second pass must be empty for {spec}");
    }
    for object in [json!({}), json!({"spec": null}), json!({"spec": [1]})] {
        assert!(default_patch(&object).0.is_empty(), "{object}");
    }
}

#[test]
fn typed_defaults_match_the_patch() {
    for spec in [json!({"image": "x"}), json!({"image": "x", "containerPort": 3000, "ingress": {"host": "a"}})] {
        let typed: AppSpec = serde_json::from_value(spec.clone()).unwrap();
        assert_eq!(serde_json::to_value(with_defaults(&typed)).unwrap(), apply_defaults(spec));
    }
}

#[test]
fn a_complete_app_is_admitted_without_warnings() {
    let verdict = validate_create(&app(json!({
        "replicas": 2,
        "containerPort": 8080,
        "env": [{"name": "MODE", "value": "prod"}, {"name": "my.env-name_1", "value": ""}],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "service": {"port": 80},
        "ingress": {"host": "shop.example.com", "path": "/", "className": "nginx", "tls": {"secretName": "shop-tls"}}
    })));
    assert_eq!(verdict, Verdict::default());
}

#[test]
fn spec_rules_table() {
    // (case, spec, the errors as `field: type`)
    let rows: Vec<(&str, Value, Vec<&str>)> = vec![
        ("image required", json!({"image": ""}), vec!["spec.image: Required value"]),
        ("image grammar", json!({"image": "Nginx:1.27"}), vec!["spec.image: Invalid value"]),
        ("replicas above 100", json!({"replicas": 101}), vec!["spec.replicas: Invalid value"]),
        ("replicas below 0", json!({"replicas": -1}), vec!["spec.replicas: Invalid value"]),
        ("replicas 0 and 100 are bounds", json!({"replicas": 0}), vec![]),
        ("replicas 100", json!({"replicas": 100}), vec![]),
        ("container port 0", json!({"containerPort": 0}), vec!["spec.containerPort: Invalid value"]),
        ("container port 65536", json!({"containerPort": 65536}), vec!["spec.containerPort: Invalid value"]),
        ("container port 65535", json!({"containerPort": 65535}), vec![]),
        ("service port 0", json!({"service": {"port": 0}}), vec!["spec.service.port: Invalid value"]),
        ("service port 1", json!({"service": {"port": 1}}), vec![]),
        ("env name empty", json!({"env": [{"name": ""}]}), vec!["spec.env[0].name: Required value"]),
        ("env name starts with a digit", json!({"env": [{"name": "1X"}]}), vec!["spec.env[0].name: Invalid value"]),
        ("env name with '='", json!({"env": [{"name": "A=B"}]}), vec!["spec.env[0].name: Invalid value"]),
        ("env name '..'", json!({"env": [{"name": ".."}]}), vec!["spec.env[0].name: Invalid value"]),
        (
            "env name duplicated",
            json!({"env": [{"name": "A", "value": "1"}, {"name": "B"}, {"name": "A", "value": "2"}]}),
            vec!["spec.env[2].name: Duplicate value"],
        ),
        (
            "env value and valueFrom",
            json!({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}),
            vec!["spec.env[0].valueFrom: Forbidden"],
        ),
        (
            "env valueFrom alone",
            json!({"env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}),
            vec![],
        ),
        (
            "quantity grammar",
            json!({"resources": {"requests": {"memory": "1GB", "cpu": "0.5"}, "limits": {"cpu": "1e3"}}}),
            vec!["spec.resources.requests[memory]: Invalid value"],
        ),
        (
            "request above limit",
            json!({"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}),
            vec!["spec.resources.requests[memory]: Invalid value"],
        ),
        (
            "negative limit and unknown resource",
            json!({"resources": {"limits": {"cpu": "-1", "gpu": "1"}}}),
            vec!["spec.resources.limits[cpu]: Invalid value", "spec.resources.limits[gpu]: Invalid value"],
        ),
        (
            "resource claims",
            json!({"resources": {"claims": [{"name": "gpu"}]}}),
            vec!["spec.resources.claims: Forbidden"],
        ),
        ("host required", json!({"ingress": {"host": ""}}), vec!["spec.ingress.host: Required value"]),
        ("host upper case", json!({"ingress": {"host": "Shop.example.com"}}), vec!["spec.ingress.host: Invalid value"]),
        ("host an IP", json!({"ingress": {"host": "10.0.0.1"}}), vec!["spec.ingress.host: Invalid value"]),
        ("host wildcard first", json!({"ingress": {"host": "*.example.com"}}), vec![]),
        ("host wildcard later", json!({"ingress": {"host": "shop.*.com"}}), vec!["spec.ingress.host: Invalid value"]),
        (
            "host wildcard partial",
            json!({"ingress": {"host": "*shop.example.com"}}),
            vec!["spec.ingress.host: Invalid value"],
        ),
        ("host lone wildcard", json!({"ingress": {"host": "*"}}), vec!["spec.ingress.host: Invalid value"]),
        (
            "host label ends in '-'",
            json!({"ingress": {"host": "shop-.example.com"}}),
            vec!["spec.ingress.host: Invalid value"],
        ),
        ("path relative", json!({"ingress": {"host": "a.b", "path": "api"}}), vec!["spec.ingress.path: Invalid value"]),
        (
            "path with a space",
            json!({"ingress": {"host": "a.b", "path": "/a b"}}),
            vec!["spec.ingress.path: Invalid value"],
        ),
        (
            "class name",
            json!({"ingress": {"host": "a.b", "className": "Nginx_1"}}),
            vec!["spec.ingress.className: Invalid value"],
        ),
        (
            "tls secret empty",
            json!({"ingress": {"host": "a.b", "tls": {"secretName": ""}}}),
            vec!["spec.ingress.tls.secretName: Required value"],
        ),
        (
            "tls secret not a name",
            json!({"ingress": {"host": "a.b", "tls": {"secretName": "Shop TLS"}}}),
            vec!["spec.ingress.tls.secretName: Invalid value"],
        ),
    ];
    for (case, spec, want) in rows {
        let verdict = validate_create(&app(spec));
        assert_eq!(fields(&verdict), want, "{case}: {:?}", verdict.errors);
    }
}

#[test]
fn every_error_is_reported_at_once_in_kubectl_words() {
    let verdict = validate_create(&app_named(
        "Shop",
        json!({
            "image": "nginx:latest",
            "replicas": 500,
            "containerPort": 70000,
            "env": [{"name": "MODE"}, {"name": "MODE"}],
            "resources": {"requests": {"memory": "1GB"}},
            "ingress": {"host": "*.*.example.com", "path": "shop"}
        }),
    ));
    let messages: Vec<String> = verdict.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "metadata.name: Invalid value: \"Shop\": a DNS-1035 label must consist of lower case alphanumeric characters \
             or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or \
             'abc-123')",
            "spec.replicas: Invalid value: 500: must be between 0 and 100, inclusive, such as 2",
            "spec.containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.env[1].name: Duplicate value: \"MODE\": each variable is set once; remove or rename one of them",
            "spec.resources.requests[memory]: Invalid value: \"1GB\": must be a Kubernetes quantity such as 500m or 1Gi \
             (unexpected 'B' at position 2; a quantity is a number with an optional suffix, such as 10Gi, 500m or 1e3)",
            "spec.ingress.host: Invalid value: \"*.*.example.com\": a wildcard '*' is allowed only as the whole first \
             label, as in '*.example.com'; otherwise use a DNS name such as shop.example.com",
            "spec.ingress.path: Invalid value: \"shop\": must be an absolute path starting with '/', such as / or /api",
        ]
    );
    assert_eq!(verdict.warnings.len(), 1, "{:?}", verdict.warnings);
    assert!(
        verdict.warnings[0].starts_with("spec.image: \"nginx:latest\" does not pin a version"),
        "{:?}",
        verdict.warnings
    );
    assert_eq!(
        verdict.invalid_message_for("App", "Shop").split(": [").next(),
        Some("App.stead.dev \"Shop\" is invalid")
    );
}

#[test]
fn names_table() {
    let long = "a".repeat(64);
    let rows =
        [("shop", true), ("a", true), ("shop-2", true), ("2shop", false), ("shop.web", false), (long.as_str(), false)];
    for (name, ok) in rows {
        let verdict = validate_create(&app_named(name, json!({})));
        assert_eq!(verdict.is_allowed(), ok, "{name}: {:?}", verdict.errors);
        assert!(verdict.errors.iter().all(|e| e.field == "metadata.name"), "{name}");
    }
    let mut generated = app_named("", json!({}));
    generated.metadata.generate_name = Some("shop-".into());
    assert!(validate_create(&generated).is_allowed());
    generated.metadata.generate_name = None;
    assert_eq!(fields(&validate_create(&generated)), ["metadata.name: Required value"]);
}

#[test]
fn grammar_helpers_table() {
    for (name, ok) in [
        ("A", true),
        ("_a", true),
        ("-a.b", true),
        (".a", true),
        ("a b", false),
        ("é", false),
        (".", false),
        ("..a", false),
    ] {
        assert_eq!(env_name_error(name).is_none(), ok, "env {name:?}");
    }
    for (host, ok) in
        [("a", true), ("a.b-c.d", true), ("*.a.b", true), ("::1", false), ("a..b", false), ("a_b.c", false)]
    {
        assert_eq!(host_error(host).is_none(), ok, "host {host:?}");
    }
    for (path, ok) in [("/", true), ("/a/b?c", true), ("", false), ("a/", false), ("/a\tb", false)] {
        assert_eq!(path_error(path).is_none(), ok, "path {path:?}");
    }
}

#[test]
fn updates_are_judged_on_what_they_change() {
    let stored = app(json!({"replicas": 500, "ingress": {"host": "a.example.com"}}));
    // A metadata-only update of an App stored before today's rules is admitted.
    let mut relabelled = stored.clone();
    relabelled.metadata.labels = Some([("team".to_owned(), "web".to_owned())].into());
    assert!(validate_update(&stored, &relabelled).is_allowed());
    // A change elsewhere is judged on its own field only.
    let mut scaled = stored.clone();
    scaled.spec.container_port = Some(0);
    assert_eq!(fields(&validate_update(&stored, &scaled)), ["spec.containerPort: Invalid value"]);
    // Touching the broken field is refused.
    let mut rescaled = stored.clone();
    rescaled.spec.replicas = Some(101);
    assert_eq!(fields(&validate_update(&stored, &rescaled)), ["spec.replicas: Invalid value"]);
    // Anything being deleted is admitted.
    let mut deleting = rescaled;
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
    assert!(validate_update(&stored, &deleting).is_allowed());
}

fn routed(name: &str, host: &str, path: Option<&str>) -> App {
    let mut ingress = json!({"host": host});
    if let Some(path) = path {
        ingress["path"] = json!(path);
    }
    app_named(name, json!({"ingress": ingress}))
}

#[test]
fn collisions_table() {
    let web = routed("web", "shop.example.com", Some("/"));
    // (case, the other Apps, the Apps refused as competitors)
    let rows: Vec<(&str, Vec<App>, Vec<&str>)> = vec![
        ("no other App", vec![], vec![]),
        ("same host and path", vec![routed("legacy", "shop.example.com", None)], vec!["legacy"]),
        ("host differs in case only", vec![routed("legacy", "SHOP.example.com", Some("/"))], vec!["legacy"]),
        ("another path", vec![routed("api", "shop.example.com", Some("/api"))], vec![]),
        ("another host", vec![routed("blog", "blog.example.com", Some("/"))], vec![]),
        ("itself (an UPDATE)", vec![routed("web", "shop.example.com", Some("/"))], vec![]),
        ("no ingress", vec![app_named("worker", json!({}))], vec![]),
        (
            "two competitors, named in order",
            vec![routed("zeta", "shop.example.com", Some("/")), routed("alpha", "shop.example.com", None)],
            vec!["alpha", "zeta"],
        ),
    ];
    for (case, others, want) in rows {
        let mut verdict = Verdict::default();
        validate_collisions(&web, "shop", &others, &mut verdict);
        let named: Vec<String> =
            verdict.errors.iter().map(|e| e.detail.split('"').nth(1).unwrap_or_default().to_owned()).collect();
        assert_eq!(named, want, "{case}");
        assert!(verdict.errors.iter().all(|e| e.field == "spec.ingress.host" && e.reason() == "FieldValueDuplicate"));
    }

    let mut other_namespace = routed("legacy", "shop.example.com", Some("/"));
    other_namespace.metadata.namespace = Some("blog".into());
    let mut deleting = routed("old", "shop.example.com", Some("/"));
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
    let mut verdict = Verdict::default();
    validate_collisions(&web, "shop", &[other_namespace, deleting], &mut verdict);
    assert!(verdict.is_allowed(), "other namespaces and Apps being deleted do not compete: {:?}", verdict.errors);

    let mut verdict = Verdict::default();
    validate_collisions(&web, "shop", &[routed("legacy", "shop.example.com", Some("/"))], &mut verdict);
    assert_eq!(
        verdict.errors[0].to_string(),
        "spec.ingress.host: Duplicate value: \"shop.example.com\": App \"legacy\" in namespace \"shop\" already claims \
         host \"shop.example.com\" and path \"/\"; choose another host or path (such as \"/v2\"), or remove \
         spec.ingress from one of the two"
    );
}

#[test]
fn the_collision_rule_reads_the_cache_and_fails_open() {
    let web = routed("web", "shop.example.com", None);
    assert_eq!(
        app_validation::lookups_for_create(&web, "shop"),
        [Query::AppsClaiming { namespace: "shop".into(), host: "shop.example.com".into() }]
    );
    assert!(app_validation::lookups_for_create(&app(json!({})), "shop").is_empty());

    let taken = Answers::skipped().with_apps_claiming(
        "shop",
        "shop.example.com",
        Found::Yes(vec![routed("legacy", "shop.example.com", Some("/"))]),
    );
    let verdict = validate_create_with(&web, "shop", &taken);
    assert_eq!(fields(&verdict), ["spec.ingress.host: Duplicate value"]);

    let free = Answers::skipped().with_apps_claiming("shop", "shop.example.com", Found::Yes(vec![web.clone()]));
    assert_eq!(validate_create_with(&web, "shop", &free), Verdict::default());

    // Not synced: admitted with a warning naming the reason.
    let unsynced = Answers::unknown("the webhook's cache of Apps has not synced yet");
    let verdict = validate_create_with(&web, "shop", &unsynced);
    assert!(verdict.is_allowed());
    assert_eq!(
        verdict.warnings,
        [collision_skipped(&web.spec, "shop", "the webhook's cache of Apps has not synced yet")]
    );
    assert!(verdict.warnings[0].starts_with(
        "spec.ingress: admitted without checking that no other App in namespace \"shop\" claims host \
         \"shop.example.com\" and path \"/\" (the webhook's cache of Apps has not synced yet)"
    ));
    // Offline: the same warning, with the offline reason.
    let verdict = validate_create_with(&web, "shop", &Answers::skipped());
    assert_eq!(verdict.warnings, [collision_skipped(&web.spec, "shop", app_validation::NO_VIEW_OF_APPS)]);
    // A refused App gets no warning about a skipped check, and a refused route is not looked at.
    let mut broken = web;
    broken.spec.replicas = Some(500);
    let verdict = validate_create_with(&broken, "shop", &Answers::skipped());
    assert_eq!((fields(&verdict), verdict.warnings.len()), (vec!["spec.replicas: Invalid value".to_owned()], 0));
    let relative = routed("web", "shop.example.com", Some("api"));
    let verdict = validate_create_with(&relative, "shop", &taken);
    assert_eq!(fields(&verdict), ["spec.ingress.path: Invalid value"]);
    // Other errors do not hide a collision: every error at once.
    let verdict = validate_create_with(&broken, "shop", &taken);
    assert_eq!(fields(&verdict), ["spec.replicas: Invalid value", "spec.ingress.host: Duplicate value"]);
}

#[test]
fn an_update_checks_the_route_only_when_it_changes() {
    let old = routed("web", "shop.example.com", Some("/"));
    let taken = |host: &str| {
        Answers::skipped().with_apps_claiming("shop", host, Found::Yes(vec![routed("legacy", host, Some("/"))]))
    };
    // Scaling an App whose route collides (admitted while the cache was not synced) is admitted.
    let mut scaled = old.clone();
    scaled.spec.replicas = Some(3);
    assert!(app_validation::lookups_for_update(&old, &scaled, "shop").is_empty());
    assert!(validate_update_with(&old, &scaled, "shop", &taken("shop.example.com")).is_allowed());
    // Moving it onto a taken route is refused.
    let mut moved = old.clone();
    moved.spec.ingress = Some(AppIngressSpec { host: "blog.example.com".into(), ..Default::default() });
    assert_eq!(
        app_validation::lookups_for_update(&old, &moved, "shop"),
        [Query::AppsClaiming { namespace: "shop".into(), host: "blog.example.com".into() }]
    );
    assert_eq!(
        fields(&validate_update_with(&old, &moved, "shop", &taken("blog.example.com"))),
        ["spec.ingress.host: Duplicate value"]
    );
}
