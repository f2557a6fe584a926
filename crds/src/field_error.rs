//! Field errors in apimachinery's vocabulary (`k8s.io/apimachinery/pkg/util/validation/field`).
//!
//! Users read these in `kubectl apply` output next to errors produced by the
//! API server itself, so the wording, the error types and the `reason` codes
//! follow apimachinery exactly.

use std::fmt;

use serde_json::Value;

/// The kind of a field error; each maps to an apimachinery `field.ErrorType`.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// A required field is absent.
    Required,
    /// A field holds a value that is wrong.
    Invalid(Value),
    /// A field holds a value outside a fixed set.
    NotSupported { value: Value, supported: Vec<String> },
    /// The operation is not allowed, whatever the value.
    Forbidden,
    /// A value is longer than allowed.
    TooLong { max: usize },
    /// A value names something that does not exist.
    NotFound(Value),
    /// A value that must be unique is already taken.
    Duplicate(Value),
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// Dotted field path, e.g. `spec.storage.size`.
    pub field: String,
    pub kind: ErrorKind,
    /// What is wrong and what would be accepted.
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), kind: ErrorKind::Required, detail: detail.into() }
    }

    pub fn invalid(field: impl Into<String>, value: impl Into<Value>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), kind: ErrorKind::Invalid(value.into()), detail: detail.into() }
    }

    pub fn not_supported(field: impl Into<String>, value: impl Into<Value>, supported: &[&str]) -> Self {
        Self {
            field: field.into(),
            kind: ErrorKind::NotSupported {
                value: value.into(),
                supported: supported.iter().map(|s| (*s).to_owned()).collect(),
            },
            detail: String::new(),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), kind: ErrorKind::Forbidden, detail: detail.into() }
    }

    pub fn not_found(field: impl Into<String>, value: impl Into<Value>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), kind: ErrorKind::NotFound(value.into()), detail: detail.into() }
    }

    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), kind: ErrorKind::Duplicate(value.into()), detail: detail.into() }
    }

    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self { field: field.into(), kind: ErrorKind::TooLong { max }, detail: String::new() }
    }

    /// The `reason` of a `metav1.StatusCause` (apimachinery's `CauseType`).
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::Required => "FieldValueRequired",
            ErrorKind::Invalid(_) => "FieldValueInvalid",
            ErrorKind::NotSupported { .. } => "FieldValueNotSupported",
            ErrorKind::Forbidden => "FieldValueForbidden",
            ErrorKind::TooLong { .. } => "FieldValueTooLong",
            ErrorKind::NotFound(_) => "FieldValueNotFound",
            ErrorKind::Duplicate(_) => "FieldValueDuplicate",
        }
    }

    /// The error type as apimachinery prints it.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            ErrorKind::Required => "Required value",
            ErrorKind::Invalid(_) => "Invalid value",
            ErrorKind::NotSupported { .. } => "Unsupported value",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::TooLong { .. } => "Too long",
            ErrorKind::NotFound(_) => "Not found",
            ErrorKind::Duplicate(_) => "Duplicate value",
        }
    }

    /// Everything after `field: `, as in apimachinery's `Error.ErrorBody()`;
    /// it is the `message` of a StatusCause.
    pub fn body(&self) -> String {
        let mut s = self.type_name().to_owned();
        match &self.kind {
            ErrorKind::Invalid(value) | ErrorKind::NotFound(value) | ErrorKind::Duplicate(value) => {
                s.push_str(": ");
                s.push_str(&render_value(value));
            }
            ErrorKind::NotSupported { value, supported } => {
                s.push_str(": ");
                s.push_str(&render_value(value));
                let quoted: Vec<String> = supported.iter().map(|v| format!("{v:?}")).collect();
                s.push_str(": supported values: ");
                s.push_str(&quoted.join(", "));
            }
            ErrorKind::TooLong { max } => {
                s.push_str(&format!(": may not be more than {max} bytes"));
            }
            ErrorKind::Required | ErrorKind::Forbidden => {}
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Renders a bad value like apimachinery does: strings quoted, numbers and
/// booleans bare, anything else as compact JSON.
fn render_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_owned(),
        other => other.to_string(),
    }
}

/// The outcome of judging one admission request: every error at once, plus
/// non-fatal warnings that `kubectl` prints as `Warning: ...`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<String>,
}

impl Verdict {
    /// Admitted when no error was found; warnings do not refuse.
    pub fn is_allowed(&self) -> bool {
        self.errors.is_empty()
    }

    /// The message apimachinery's `NewInvalid` would build:
    /// `DatabaseCluster.stead.dev "orders" is invalid: [a, b]` (no brackets for one error).
    pub fn invalid_message(&self, name: &str) -> String {
        self.invalid_message_for(crate::cluster::KIND, name)
    }

    /// [`Self::invalid_message`] for an object of `kind` (`DatabaseBackup`, ...).
    pub fn invalid_message_for(&self, kind: &str, name: &str) -> String {
        let errors: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        let list = match errors.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        format!("{kind}.{} {name:?} is invalid: {list}", crate::cluster::GROUP)
    }
}
