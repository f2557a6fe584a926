//! The AdmissionReview answer as the API defines it on the wire.
//!
//! kube-core's `AdmissionResponse` serializes `patch` (bytes) as a JSON array
//! of numbers (kube-rs issue 1781). `admission.k8s.io/v1` defines it as
//! base64-encoded bytes, which is what every client but the API server's
//! lenient decoder expects, and an array is four times larger. So the answer
//! goes out through these types, which write the patch as base64 and read it
//! back the same way (`stead-webhook check --server`). kube's `Status` is kept
//! for `status`: its wire form is right.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::core::Status;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::review::{REVIEW_API_VERSION, REVIEW_KIND};

/// `patchType` of every patch stead sends.
pub const JSON_PATCH: &str = "JSONPatch";

/// An AdmissionReview carrying a response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnswerReview {
    pub api_version: String,
    pub kind: String,
    pub response: Option<AnswerResponse>,
}

impl AnswerReview {
    /// The `admission.k8s.io/v1` review around `response`.
    pub fn new(response: AnswerResponse) -> Self {
        Self { api_version: REVIEW_API_VERSION.to_owned(), kind: REVIEW_KIND.to_owned(), response: Some(response) }
    }
}

/// `response` of an AdmissionReview; field names follow kube's `AdmissionResponse`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnswerResponse {
    /// The request's uid, echoed.
    pub uid: String,
    pub allowed: bool,
    /// Why it was refused; `status: Success` when admitted.
    #[serde(rename = "status", default)]
    pub result: Status,
    /// The JSON Patch, as bytes; base64 on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "base64_bytes")]
    pub patch: Option<Vec<u8>>,
    /// `JSONPatch` whenever `patch` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Warnings `kubectl` prints as `Warning: ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

impl AnswerResponse {
    /// An allowing answer to the request `uid`.
    pub fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            allowed: true,
            result: Status { status: Some(kube::core::response::StatusSummary::Success), ..Status::default() },
            patch: None,
            patch_type: None,
            warnings: None,
        }
    }

    /// Admits with `patch`, an encoded JSON Patch.
    pub fn with_patch(mut self, patch: Vec<u8>) -> Self {
        self.patch = Some(patch);
        self.patch_type = Some(JSON_PATCH.to_owned());
        self
    }

    /// Refuses with `status`.
    pub fn deny(mut self, status: Status) -> Self {
        self.allowed = false;
        self.result = status;
        self
    }
}

mod base64_bytes {
    use super::*;

    #[allow(clippy::ref_option)] // the signature serde's `with` calls
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&STANDARD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        STANDARD
            .decode(text.as_bytes())
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format_args!("response.patch is not base64: {e}")))
    }
}
