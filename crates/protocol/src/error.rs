//! ComfyUI's error object, the one JSON error shape the broker answers with.
//!
//! ComfyUI validation failures look like
//! `{"error": {"type", "message", "details", "extra_info"}, "node_errors": {}}`; DESIGN.md's
//! compatibility contract uses the same shape for errors ComfyUI itself never gives (401, 403,
//! 413, 429, 503 ...), so every client parses one format.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One error: `{type, message, details, extra_info}` (field order as ComfyUI writes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// Machine-readable kind, e.g. `prompt_no_outputs` or `unauthorized`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short human-readable summary.
    pub message: String,
    /// Longer explanation (may be empty).
    pub details: String,
    /// Structured extra data (`{}` when there is none).
    pub extra_info: Map<String, Value>,
}

impl ErrorObject {
    /// An error object with an empty `extra_info`.
    pub fn new(kind: &str, message: impl Into<String>, details: impl Into<String>) -> Self {
        ErrorObject {
            kind: kind.to_owned(),
            message: message.into(),
            details: details.into(),
            extra_info: Map::new(),
        }
    }

    /// Adds a key to `extra_info`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra_info.insert(key.to_owned(), value.into());
        self
    }
}

/// A complete error response body: `{"error": {...}, "node_errors": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The top-level error.
    pub error: ErrorObject,
    /// Per-node errors keyed by node id (empty outside graph validation).
    pub node_errors: Map<String, Value>,
}

impl ErrorBody {
    /// An error with no node errors and an empty `extra_info`.
    pub fn new(
        kind: impl Into<String>,
        message: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        ErrorBody {
            error: ErrorObject::new(&kind.into(), message, details),
            node_errors: Map::new(),
        }
    }

    /// Adds a key to `extra_info` (e.g. the name of the limit that was hit).
    pub fn with_extra(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.error.extra_info.insert(key.to_owned(), value.into());
        self
    }

    /// Serialises to JSON bytes. Serialising these plain types cannot fail.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_in_comfyui_field_order() {
        let body = ErrorBody::new("no_prompt", "No prompt provided", "No prompt provided");
        let text = String::from_utf8(body.to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"error":{"type":"no_prompt","message":"No prompt provided","details":"No prompt provided","extra_info":{}},"node_errors":{}}"#
        );
    }

    #[test]
    fn extra_info_carries_added_keys() {
        let body = ErrorBody::new("quota", "Too many", "").with_extra("limit", "max_queued");
        assert_eq!(body.error.extra_info["limit"], "max_queued");
    }
}
