//! An App's status, as a pure function of the App, its Deployment and its
//! Ingress: the Deployment's replica counts, the URL, and `Available` and
//! `Progressing` following the Deployment's rollout semantics, including
//! `ProgressDeadlineExceeded`. Condition transition times are kept unless a
//! condition flips, as for a DatabaseCluster (the same merge).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use stead_crds::app::{self, App, AppStatus, CONDITION_AVAILABLE, CONDITION_PROGRESSING};

use crate::status::{Proposed, merge, proposed};

/// The Deployment reasons, as `&'static str` for conditions; others read as `DeploymentProgressing`.
const DEPLOYMENT_REASONS: [&str; 9] = [
    "NewReplicaSetAvailable",
    "ReplicaSetUpdated",
    "NewReplicaSetCreated",
    "FoundNewReplicaSet",
    "ProgressDeadlineExceeded",
    "MinimumReplicasAvailable",
    "MinimumReplicasUnavailable",
    "ReplicaSetCreateError",
    "DeploymentPaused",
];

fn known_reason(reason: Option<&str>, fallback: &'static str) -> &'static str {
    reason.and_then(|r| DEPLOYMENT_REASONS.iter().find(|known| **known == r).copied()).unwrap_or(fallback)
}

/// What a refused write or an invalid spec leaves in the status: a message for Progressing.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Reconciled,
    /// The children could not be written; why.
    Failed {
        reason: &'static str,
        message: &'a str,
    },
}

/// The status of `app` given its live Deployment (if any) at `now`.
pub fn compute(app: &App, deployment: Option<&Deployment>, outcome: Outcome<'_>, now: Timestamp) -> AppStatus {
    let name = app.metadata.name.as_deref().unwrap_or_default();
    let generation = app.metadata.generation;
    let spec = stead_crds::app_validation::with_defaults(&app.spec);
    let status = deployment.and_then(|d| d.status.clone()).unwrap_or_default();
    let want = spec.effective_replicas();
    let ready = status.ready_replicas.unwrap_or(0);
    let condition =
        |type_: &str| status.conditions.iter().flatten().find(|c| c.type_.as_deref() == Some(type_)).cloned();

    let available = match (deployment, condition("Available")) {
        (None, _) => {
            proposed(CONDITION_AVAILABLE, false, "DeploymentMissing", format!("Deployment {name} does not exist yet"))
        }
        (Some(_), Some(c)) => {
            let up = c.status.as_deref() == Some("True");
            let fallback = if up { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" };
            proposed(
                CONDITION_AVAILABLE,
                up,
                known_reason(c.reason.as_deref(), fallback),
                format!("{ready}/{want} replicas ready; {}", c.message.unwrap_or_default()),
            )
        }
        (Some(_), None) => {
            proposed(CONDITION_AVAILABLE, false, "MinimumReplicasUnavailable", format!("{ready}/{want} replicas ready"))
        }
    };
    let observed = deployment
        .is_some_and(|d| matches!((d.metadata.generation, status.observed_generation), (Some(g), Some(o)) if o >= g));
    let progressing: Proposed = match (outcome, deployment, condition("Progressing")) {
        (Outcome::Failed { reason, message }, _, _) => proposed(CONDITION_PROGRESSING, false, reason, message),
        (_, None, _) => proposed(CONDITION_PROGRESSING, true, "Reconciling", format!("creating Deployment {name}")),
        (_, Some(_), _) if !observed => proposed(
            CONDITION_PROGRESSING,
            true,
            "Reconciling",
            format!("Deployment {name} has not observed its latest spec"),
        ),
        (_, Some(_), Some(c)) if c.reason.as_deref() == Some(app::REASON_PROGRESS_DEADLINE_EXCEEDED) => proposed(
            CONDITION_PROGRESSING,
            false,
            app::REASON_PROGRESS_DEADLINE_EXCEEDED,
            c.message.unwrap_or_else(|| format!("Deployment {name} exceeded its progress deadline")),
        ),
        (_, Some(_), _) if status.updated_replicas.unwrap_or(0) < want || ready < want => proposed(
            CONDITION_PROGRESSING,
            true,
            "RollingOut",
            format!(
                "rolling out: {}/{want} replicas updated, {ready}/{want} ready",
                status.updated_replicas.unwrap_or(0)
            ),
        ),
        (_, Some(_), _) => proposed(
            CONDITION_PROGRESSING,
            false,
            "NewReplicaSetAvailable",
            format!("Deployment {name} is up to date with {ready} ready replicas"),
        ),
    };

    let stored: &[Condition] = app.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    let ours = [CONDITION_AVAILABLE, CONDITION_PROGRESSING];
    let mut conditions: Vec<Condition> =
        [available, progressing].into_iter().map(|p| merge(p, stored, generation, &now)).collect();
    conditions.extend(stored.iter().filter(|c| !ours.contains(&c.type_.as_str())).cloned());
    AppStatus {
        observed_generation: generation,
        replicas: Some(status.replicas.unwrap_or(0)),
        ready_replicas: Some(ready),
        updated_replicas: Some(status.updated_replicas.unwrap_or(0)),
        url: spec.url(),
        selector: Some(app::selector_string(name)),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;
    use stead_crds::app::AppSpec;

    use super::*;

    fn app() -> App {
        let mut a = App::new("shop", AppSpec { image: "nginx:1.27".into(), replicas: Some(2), ..AppSpec::default() });
        a.metadata.generation = Some(3);
        a
    }

    fn deployment(generation: i64, observed: i64, status: serde_json::Value) -> Deployment {
        let mut status = status;
        status["observedGeneration"] = json!(observed);
        serde_json::from_value(json!({"metadata": {"name": "shop", "generation": generation}, "status": status}))
            .unwrap()
    }

    fn of(status: &AppStatus, type_: &str) -> (String, String) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn conditions_follow_the_deployment() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let available =
            json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"});
        let rows = [
            ("no Deployment yet", None, ("False", "DeploymentMissing"), ("True", "Reconciling")),
            (
                "not observed yet",
                Some(deployment(2, 1, json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}))),
                ("False", "MinimumReplicasUnavailable"),
                ("True", "Reconciling"),
            ),
            (
                "rolling out",
                Some(deployment(
                    2,
                    2,
                    json!({"replicas": 3, "readyReplicas": 2, "updatedReplicas": 1,
                    "conditions": [available, {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}),
                )),
                ("True", "MinimumReplicasAvailable"),
                ("True", "RollingOut"),
            ),
            (
                "done",
                Some(deployment(
                    2,
                    2,
                    json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                    "conditions": [available, {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}),
                )),
                ("True", "MinimumReplicasAvailable"),
                ("False", "NewReplicaSetAvailable"),
            ),
            (
                "stuck past the progress deadline",
                Some(deployment(
                    2,
                    2,
                    json!({"replicas": 3, "readyReplicas": 1, "updatedReplicas": 1,
                    "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
                        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                         "message": "ReplicaSet \"shop-7d\" has timed out progressing."}]}),
                )),
                ("False", "MinimumReplicasUnavailable"),
                ("False", "ProgressDeadlineExceeded"),
            ),
        ];
        for (case, d, want_available, want_progressing) in rows {
            let status = compute(&app(), d.as_ref(), Outcome::Reconciled, now);
            let pair = |(s, r): (&str, &str)| (s.to_owned(), r.to_owned());
            assert_eq!(of(&status, CONDITION_AVAILABLE), pair(want_available), "{case}");
            assert_eq!(of(&status, CONDITION_PROGRESSING), pair(want_progressing), "{case}");
            assert_eq!(status.observed_generation, Some(3), "{case}");
            assert_eq!(status.selector.as_deref(), Some("app.kubernetes.io/instance=shop,app.kubernetes.io/name=app"));
        }
        let failed =
            compute(&app(), None, Outcome::Failed { reason: "ForeignChild", message: "Service web/shop …" }, now);
        assert_eq!(of(&failed, CONDITION_PROGRESSING), ("False".into(), "ForeignChild".into()));
    }
}
