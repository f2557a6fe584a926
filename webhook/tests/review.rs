//! The admission decision on captured AdmissionReview fixtures, without a
//! network: wire form, every rule the webhook applies, and robustness
//! against arbitrary bodies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use stead_webhook::review::{BadReview, Outcome, Route, review};
use support::{causes, fixture, fixture_json, patch_of, patched_object};

fn answer(route: Route, body: &[u8]) -> (Outcome, Value, stead_webhook::wire::AnswerResponse) {
    let answer = review(route, body).unwrap();
    let wire = serde_json::to_vec(&answer.review).unwrap();
    (answer.outcome, serde_json::from_slice(&wire).unwrap(), support::response_of(&wire))
}

#[test]
fn mutate_defaults_absent_fields_with_a_json_patch() {
    let request = fixture_json("create-defaulted");
    let (outcome, wire, response) = answer(Route::Mutate, &fixture("create-defaulted"));
    assert_eq!(outcome, Outcome::Patched);
    assert_eq!(wire["response"]["uid"], request["request"]["uid"]);
    assert_eq!(wire["response"]["allowed"], true);
    assert_eq!(wire["response"]["patchType"], "JSONPatch");
    // On the wire the patch is base64 of the JSON Patch, as admission.k8s.io/v1 defines it (not an array of numbers).
    let encoded = wire["response"]["patch"].as_str().expect("patch is a base64 string");
    let decoded: Value = serde_json::from_slice(&STANDARD.decode(encoded).unwrap()).unwrap();
    assert_eq!(
        decoded,
        json!([{"op": "add", "path": "/spec/replicas", "value": 1}, {"op": "add", "path": "/spec/port", "value": 5432}])
    );
    let object = patched_object(&request, &response);
    assert_eq!(object["spec"]["replicas"], 1);
    assert_eq!(object["spec"]["port"], 5432);
    // Nothing but the two defaults changed.
    let mut expected = request["request"]["object"].clone();
    expected["spec"]["replicas"] = json!(1);
    expected["spec"]["port"] = json!(5432);
    assert_eq!(object, expected);
}

#[test]
fn mutate_leaves_a_complete_object_alone_without_patch_type() {
    let (outcome, wire, response) = answer(Route::Mutate, &fixture("create-admitted"));
    assert_eq!(outcome, Outcome::Allowed);
    assert_eq!(wire["response"]["allowed"], true);
    assert!(wire["response"].get("patchType").is_none(), "{wire}");
    assert!(wire["response"].get("patch").is_none(), "{wire}");
    assert!(patch_of(&response).0.is_empty());
}

#[test]
fn mutating_the_mutated_object_yields_nothing() {
    let mut request = fixture_json("create-defaulted");
    let (_, _, response) = answer(Route::Mutate, &fixture("create-defaulted"));
    request["request"]["object"] = patched_object(&request, &response);
    let (outcome, _, _) = answer(Route::Mutate, &serde_json::to_vec(&request).unwrap());
    assert_eq!(outcome, Outcome::Allowed);
}

#[test]
fn validate_admits_a_valid_create() {
    let (outcome, wire, response) = answer(Route::Validate, &fixture("create-admitted"));
    assert_eq!(outcome, Outcome::Allowed);
    assert_eq!(wire["response"]["uid"], "1c7b9d2f-52e6-4b68-8d20-6b1d904f3e22");
    assert!(response.allowed);
    assert!(response.warnings.is_none());
}

#[test]
fn warnings_are_passed_on_an_admitted_request() {
    let (outcome, _, response) = answer(Route::Validate, &fixture("create-warnings"));
    assert_eq!(outcome, Outcome::Allowed);
    let warnings = response.warnings.unwrap();
    assert!(warnings.iter().any(|w| w.starts_with("spec.replicas: 2 is even")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.starts_with("spec.image:")), "{warnings:?}");
}

#[test]
fn validate_refuses_with_every_cause_in_apimachinery_form() {
    let (outcome, wire, response) = answer(Route::Validate, &fixture("create-invalid"));
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(wire["response"]["uid"], "3e9dbf41-7408-4d8a-8f42-8d3fb2614044");
    assert_eq!(wire["response"]["allowed"], false);
    let status = &wire["response"]["status"];
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["code"], 422);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["name"], "Orders_DB");
    assert_eq!(status["details"]["group"], "stead.dev");
    assert_eq!(status["details"]["kind"], "DatabaseCluster");
    let message = status["message"].as_str().unwrap();
    assert!(message.starts_with(r#"DatabaseCluster.stead.dev "Orders_DB" is invalid: ["#), "{message}");
    let fields: Vec<String> = causes(&response).into_iter().map(|(field, _, _)| field).collect();
    for field in ["metadata.name", "spec.replicas", "spec.resources.requests[memory]", "spec.storage.size"] {
        assert!(fields.iter().any(|f| f == field), "no cause for {field} in {fields:?}");
    }
    for (field, reason, body) in causes(&response) {
        assert_eq!(reason, "FieldValueInvalid", "{field}");
        assert!(body.starts_with("Invalid value: "), "{field}: {body}");
        assert!(message.contains(&format!("{field}: {body}")), "{field}: {body} missing from {message}");
    }
}

#[test]
fn dry_run_gets_exactly_the_same_answer() {
    for (name, route) in [
        ("create-defaulted", Route::Mutate),
        ("create-invalid", Route::Validate),
        ("create-warnings", Route::Validate),
        ("update-shrink", Route::Validate),
        ("delete-protected", Route::Validate),
    ] {
        let mut request = fixture_json(name);
        let dry_run = !request["request"]["dryRun"].as_bool().unwrap_or(false);
        request["request"]["dryRun"] = json!(dry_run);
        let (_, flipped, _) = answer(route, &serde_json::to_vec(&request).unwrap());
        let (_, original, _) = answer(route, &fixture(name));
        assert_eq!(flipped, original, "{name}");
    }
}

#[test]
fn update_refuses_shrinking_and_a_new_storage_class() {
    let (outcome, _, response) = answer(Route::Validate, &fixture("update-shrink"));
    assert_eq!(outcome, Outcome::Denied);
    let causes = causes(&response);
    assert!(
        causes.iter().any(|(f, r, m)| f == "spec.storage.size" && r == "FieldValueForbidden" && m.contains("shrink")),
        "{causes:?}"
    );
    assert!(
        causes.iter().any(|(f, r, m)| f == "spec.storage.storageClassName"
            && r == "FieldValueInvalid"
            && m.contains("immutable")),
        "{causes:?}"
    );
}

#[test]
fn update_that_leaves_spec_alone_is_admitted_even_when_the_stored_spec_is_invalid() {
    let request = fixture_json("update-metadata-only");
    assert_eq!(request["request"]["oldObject"]["spec"]["replicas"], 12, "the fixture stores an invalid spec");
    let (outcome, _, response) = answer(Route::Validate, &fixture("update-metadata-only"));
    assert_eq!(outcome, Outcome::Allowed);
    assert!(response.allowed);
}

#[test]
fn update_of_an_object_being_deleted_is_admitted() {
    let (outcome, _, _) = answer(Route::Validate, &fixture("update-finalizer-removal"));
    assert_eq!(outcome, Outcome::Allowed);
}

#[test]
fn delete_is_refused_while_protected_and_admitted_otherwise() {
    let (outcome, wire, response) = answer(Route::Validate, &fixture("delete-protected"));
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(wire["response"]["uid"], "72d3f385-b84c-4cce-9386-c173f6a58488");
    assert_eq!(causes(&response)[0].0, "spec.deletionProtection");
    assert_eq!(causes(&response)[0].1, "FieldValueForbidden");

    let mut unprotected = fixture_json("delete-protected");
    unprotected["request"]["oldObject"]["spec"]["deletionProtection"] = json!(false);
    let (outcome, _, _) = answer(Route::Validate, &serde_json::to_vec(&unprotected).unwrap());
    assert_eq!(outcome, Outcome::Allowed);

    // The mutating webhook has nothing to say about a DELETE.
    let (outcome, _, _) = answer(Route::Mutate, &fixture("delete-protected"));
    assert_eq!(outcome, Outcome::Allowed);
}

#[test]
fn delete_protection_holds_even_when_the_stored_object_no_longer_decodes() {
    let mut request = fixture_json("delete-protected");
    request["request"]["oldObject"]["spec"]["storage"] = json!("not an object");
    let (outcome, _, response) = answer(Route::Validate, &serde_json::to_vec(&request).unwrap());
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(causes(&response)[0].0, "spec.deletionProtection");
}

#[test]
fn an_undecodable_object_is_refused_naming_the_field() {
    let mut request = fixture_json("create-admitted");
    request["request"]["object"]["spec"]["replicas"] = json!("three");
    let (outcome, _, response) = answer(Route::Validate, &serde_json::to_vec(&request).unwrap());
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(causes(&response)[0].0, "spec.replicas");
}

#[test]
fn an_unknown_kind_is_refused_naming_what_is_served() {
    for route in [Route::Mutate, Route::Validate] {
        let (outcome, wire, _) = answer(route, &fixture("unknown-kind"));
        assert_eq!(outcome, Outcome::BadRequest);
        assert_eq!(wire["response"]["uid"], "83e40496-c95d-4ddf-a4a7-d284a7b69599");
        assert_eq!(wire["response"]["allowed"], false);
        assert_eq!(wire["response"]["status"]["code"], 400);
        assert_eq!(wire["response"]["status"]["reason"], "BadRequest");
        let message = wire["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("stead.dev/v1alpha1 DatabaseCluster, DatabaseBackup and App only"), "{message}");
        assert!(message.contains("apps/v1 Deployment"), "{message}");
        assert!(message.contains(route.webhook_name()), "{message}");
    }
}

#[test]
fn a_request_without_its_object_is_a_bad_request() {
    let mut request = fixture_json("create-admitted");
    request["request"]["object"] = Value::Null;
    let (outcome, wire, _) = answer(Route::Validate, &serde_json::to_vec(&request).unwrap());
    assert_eq!(outcome, Outcome::BadRequest);
    assert_eq!(wire["response"]["status"]["code"], 400);
    assert!(wire["response"]["status"]["message"].as_str().unwrap().contains("request.object"));
}

#[test]
fn managed_fields_are_never_judged() {
    let mut request = fixture_json("create-admitted");
    request["request"]["object"]["metadata"]["managedFields"] = json!("not even a list");
    let (outcome, _, _) = answer(Route::Validate, &serde_json::to_vec(&request).unwrap());
    assert_eq!(outcome, Outcome::Allowed);
}

#[test]
fn an_object_that_is_not_a_json_object_makes_the_body_unreadable() {
    for (pointer, value) in [("/request/object", json!("orders")), ("/request/object/metadata", json!([1]))] {
        let mut request = fixture_json("create-admitted");
        *request.pointer_mut(pointer).unwrap() = value;
        let err = review(Route::Validate, &serde_json::to_vec(&request).unwrap()).unwrap_err();
        assert!(matches!(err, BadReview::Shape(_)), "{pointer}: {err:?}");
        assert!(err.to_string().contains("(a JSON object)"), "{err}");
    }
}

#[test]
fn bodies_that_are_not_admission_reviews_are_errors() {
    type Expected = fn(&BadReview) -> bool;
    let cases: [(&[u8], Expected); 6] = [
        (b"{not json", |e| matches!(e, BadReview::Malformed(_))),
        (b"", |e| matches!(e, BadReview::Malformed(_))),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#, |e| {
            matches!(e, BadReview::WrongType { .. })
        }),
        (br#"{"apiVersion":"v1","kind":"Pod"}"#, |e| matches!(e, BadReview::WrongType { .. })),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, |e| {
            matches!(e, BadReview::MissingRequest)
        }),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}"#, |e| {
            matches!(e, BadReview::Shape(_))
        }),
    ];
    for (body, expected) in cases {
        let err = review(Route::Validate, body).unwrap_err();
        assert!(expected(&err), "{}: {err:?}", String::from_utf8_lossy(body));
        assert!(err.to_string().contains("admission.k8s.io/v1") || matches!(err, BadReview::MissingRequest), "{err}");
    }
}

/// A tiny deterministic generator, so the "fuzz" corpus is the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// Truncated, bit-flipped and type-swapped reviews never panic, and every
/// body either is judged or is refused as not an AdmissionReview.
#[test]
fn arbitrary_bodies_never_panic() {
    let mut rng = SplitMix(0x5EAD);
    let names = [
        "create-defaulted",
        "create-invalid",
        "update-shrink",
        "update-finalizer-removal",
        "delete-protected",
        "unknown-kind",
    ];
    let values = [json!(null), json!(-1), json!(1e300), json!("x"), json!([]), json!({}), json!(true), json!("10Gi")];
    let mut judged = 0;
    for round in 0..3000 {
        let base = fixture(names[rng.below(names.len())]);
        let body = match round % 3 {
            0 => base[..rng.below(base.len() + 1)].to_vec(),
            1 => {
                let mut body = base.clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(body.len());
                    body[at] ^= 1 << rng.below(8);
                }
                body
            }
            _ => {
                // Replace one value anywhere in the tree with a value of another type.
                let mut tree: Value = serde_json::from_slice(&base).unwrap();
                let mut node = &mut tree;
                for _ in 0..rng.below(6) {
                    let next_key = match &*node {
                        Value::Object(map) if !map.is_empty() => {
                            Some(map.keys().nth(rng.below(map.len())).cloned().unwrap())
                        }
                        _ => None,
                    };
                    match next_key {
                        Some(key) => node = node.get_mut(&key).unwrap(),
                        None => break,
                    }
                }
                *node = values[rng.below(values.len())].clone();
                serde_json::to_vec(&tree).unwrap()
            }
        };
        for route in [Route::Mutate, Route::Validate] {
            if let Ok(answer) = review(route, &body) {
                judged += 1;
                assert!(answer.review.response.is_some());
                serde_json::to_vec(&answer.review).unwrap();
            }
        }
    }
    assert!(judged > 100, "the corpus should reach the rules, not only the parser ({judged})");
}
