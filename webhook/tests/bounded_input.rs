//! Hostile numbers and hostile bodies cost bounded work and memory.
//!
//! This test binary counts every allocation (the `cap` allocator), so the
//! peak a review adds above its body is measured, not guessed. A review
//! that exceeds the bound fails its allocation, which aborts this binary:
//! the failure cannot go unnoticed. The tests share the allocator, so they
//! run one at a time behind a lock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::needless_pass_by_value)]

use std::alloc::System;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cap::Cap;
use serde_json::{Value, json};
use stead_webhook::review::{Outcome, Route, review};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What one review may allocate at its peak, above what was allocated before it.
const REVIEW_BUDGET: usize = 2 << 20;

/// Runs `review` with an allocation limit of [`REVIEW_BUDGET`] above the current
/// use; returns the bytes it allocated in all (an upper bound of its peak),
/// and how long it took.
fn bounded_review(route: Route, body: &[u8]) -> (Outcome, usize, Duration) {
    let before = ALLOCATOR.allocated();
    ALLOCATOR.set_limit(before + REVIEW_BUDGET).unwrap();
    let total_before = ALLOCATOR.total_allocated();
    let started = Instant::now();
    let outcome = match review(route, body) {
        Ok(answer) => answer.outcome,
        Err(_) => Outcome::BadRequest,
    };
    let took = started.elapsed();
    ALLOCATOR.set_limit(usize::MAX).unwrap();
    (outcome, ALLOCATOR.total_allocated() - total_before, took)
}

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "stead.dev/v1alpha1",
        "kind": "DatabaseCluster",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "7d3c", "generation": 1},
        "spec": spec,
    })
}

fn base_spec() -> Value {
    json!({"image": "postgres:17.2", "replicas": 3, "port": 5432, "storage": {"size": "10Gi"}})
}

fn review_body(operation: &str, object: Option<Value>, old: Option<Value>) -> Vec<u8> {
    let mut request = json!({
        "uid": "b1f0",
        "kind": {"group": "stead.dev", "version": "v1alpha1", "kind": "DatabaseCluster"},
        "resource": {"group": "stead.dev", "version": "v1alpha1", "resource": "databaseclusters"},
        "name": "orders",
        "namespace": "shop",
        "operation": operation,
        "userInfo": {"username": "mallory"},
        "dryRun": false,
    });
    if let Some(object) = object {
        request["object"] = object;
    }
    if let Some(old) = old {
        request["oldObject"] = old;
    }
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}))
        .unwrap()
}

/// Integer extremes, and the numbers just around the valid ranges.
fn extremes() -> Vec<Value> {
    vec![
        json!(i32::MIN),
        json!(i32::MIN + 1),
        json!(-1),
        json!(0),
        json!(1),
        json!(i32::MAX),
        json!(i64::from(i32::MAX) + 1),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(-1.5e300),
        json!(1.5e300),
    ]
}

#[test]
fn integer_extremes_in_every_numeric_field_answer_quickly_in_bounded_memory() {
    let _guard = ONE_AT_A_TIME.lock().unwrap();
    let mut worst = (0_usize, Duration::ZERO);
    let mut cases = 0;
    for field in ["/spec/replicas", "/spec/port", "/metadata/generation"] {
        for value in extremes() {
            let mut hostile = object(base_spec());
            *hostile.pointer_mut(field).unwrap() = value.clone();
            let sane = object(base_spec());
            let bodies = [
                ("CREATE", review_body("CREATE", Some(hostile.clone()), None)),
                ("UPDATE new", review_body("UPDATE", Some(hostile.clone()), Some(sane.clone()))),
                ("UPDATE old", review_body("UPDATE", Some(sane.clone()), Some(hostile.clone()))),
                ("DELETE", review_body("DELETE", None, Some(hostile.clone()))),
            ];
            for (what, body) in bodies {
                for route in [Route::Mutate, Route::Validate] {
                    let (_, allocated, took) = bounded_review(route, &body);
                    assert!(took < Duration::from_millis(100), "{what} {field}={value} took {took:?}");
                    worst = (worst.0.max(allocated), worst.1.max(took));
                    cases += 1;
                }
            }
        }
    }
    println!("{cases} reviews with extreme numbers: at most {} KiB allocated and {:?} each", worst.0 >> 10, worst.1);
}

#[test]
fn six_mib_of_junk_is_answered_without_building_it() {
    let _guard = ONE_AT_A_TIME.lock().unwrap();
    let zeros = |n: usize| Value::Array(vec![json!(0); n]);
    // About 6 MiB of zeros ("0," each) wherever a client can put them.
    let n = 3 << 20;
    let mut cases = Vec::new();
    let mut top = object(base_spec());
    top["junk"] = zeros(n);
    cases.push(("object.junk", Route::Validate, top.clone(), Outcome::Allowed));
    let mut status = object(base_spec());
    status["status"] = json!({"conditions": zeros(n)});
    cases.push(("object.status", Route::Mutate, status, Outcome::Allowed));
    let mut annotations = object(base_spec());
    annotations["metadata"]["annotations"] = json!({"a": zeros(n)});
    cases.push(("metadata.annotations", Route::Validate, annotations, Outcome::Allowed));
    let mut in_spec = object(base_spec());
    in_spec["spec"]["junk"] = zeros(n);
    cases.push(("spec.junk", Route::Validate, in_spec, Outcome::BadRequest));
    let mut bodies: Vec<(&str, Route, Vec<u8>, Outcome)> = cases
        .into_iter()
        .map(|(what, route, hostile, want)| (what, route, review_body("CREATE", Some(hostile), None), want))
        .collect();
    // Nesting 100,000 deep, written as text: building it as a Value would overflow this test's own stack.
    let marker = "\"NESTED\"";
    let template = String::from_utf8(review_body("CREATE", Some(object(json!({"nested": "NESTED"}))), None)).unwrap();
    let deep = format!("{}1{}", "{\"x\":".repeat(100_000), "}".repeat(100_000));
    bodies.push((
        "spec nested 100,000 deep",
        Route::Mutate,
        template.replace(marker, &deep).into_bytes(),
        Outcome::BadRequest,
    ));

    for (what, route, body, want) in bodies {
        let (outcome, allocated, took) = bounded_review(route, &body);
        assert_eq!(outcome, want, "{what}");
        println!(
            "{what}: {} KiB body, the review allocated {} KiB in all, {took:?}",
            body.len() >> 10,
            allocated >> 10
        );
    }
}
