//! The answer of a polling-based LLM invocation (`model/polling/start` and
//! `model/polling/check`), read back from the plugin as the reference reads
//! it: one typed result whose fields depend on its status (reference:
//! `pkg/entities/model_entities/polling.go`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DaemonError;

/// Where a polled invocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollingStatus {
    /// Not done: check again with `plugin_state`.
    Running,
    /// Done: `result` holds the LLM result.
    Succeeded,
    /// Done: `error` says why not.
    Failed,
}

/// One polling result. Absent fields are left out of the answer, as the
/// reference's `omitempty` tags leave them out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollingResult {
    pub status: PollingStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_state: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_after_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
}

impl PollingResult {
    /// Reads a chunk the plugin sent and checks what its status requires: a
    /// running invocation carries the state to check it with, a succeeded one
    /// its result, a failed one its error. A chunk that fails is the plugin's
    /// fault, answered as the reference answers it: a plugin invoke error of
    /// type `unmarshal_error`.
    pub fn from_chunk(chunk: Value) -> Result<Self, DaemonError> {
        let mut parsed: Self = serde_json::from_value(chunk).map_err(|e| unreadable(&e))?;
        // Empty and null mean absent, as Go's `omitempty` has it.
        parsed.plugin_state = parsed.plugin_state.filter(|s| !s.is_empty());
        parsed.result = parsed.result.filter(|r| !r.is_null());
        parsed.error = parsed.error.filter(|e| !e.is_empty());
        let missing = match parsed.status {
            PollingStatus::Running if parsed.plugin_state.is_none() => Some("plugin_state"),
            PollingStatus::Succeeded if parsed.result.is_none() => Some("result"),
            PollingStatus::Failed
                if parsed.error.as_deref().is_none_or(|e| e.trim().is_empty()) =>
            {
                Some("error")
            }
            _ => None,
        };
        match missing {
            Some(field) => Err(unreadable(&format!(
                "{field} is required when the polling status is {}",
                serde_json::to_value(parsed.status).expect("statuses serialize")
            ))),
            None => Ok(parsed),
        }
    }
}

fn unreadable(e: &dyn std::fmt::Display) -> DaemonError {
    DaemonError::PluginInvoke(
        serde_json::json!({
            "error_type": "unmarshal_error",
            "message": format!("unmarshal json failed: {e}"),
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_status_needs_its_field_and_absent_fields_stay_out() {
        let running = PollingResult::from_chunk(json!({
            "status": "running", "plugin_state": {"task": "t1"}, "result": null,
            "error": null, "next_check_after_seconds": 2, "expires_after_seconds": null,
            "max_attempts": null,
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&running).unwrap(),
            json!({"status": "running", "plugin_state": {"task": "t1"}, "next_check_after_seconds": 2})
        );
        for bad in [
            json!({"status": "running", "plugin_state": {}}),
            json!({"status": "succeeded", "result": null}),
            json!({"status": "failed", "error": "  "}),
            json!({"status": "waiting", "plugin_state": {"task": "t1"}}),
            json!({"plugin_state": {"task": "t1"}}),
            json!("running"),
        ] {
            match PollingResult::from_chunk(bad.clone()) {
                Err(DaemonError::PluginInvoke(text)) => {
                    let inner: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(inner["error_type"], "unmarshal_error", "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let done =
            PollingResult::from_chunk(json!({"status": "succeeded", "result": {"model": "m"}}))
                .unwrap();
        assert_eq!(done.result, Some(json!({"model": "m"})));
        let failed =
            PollingResult::from_chunk(json!({"status": "failed", "error": "quota"})).unwrap();
        assert_eq!(failed.error.as_deref(), Some("quota"));
    }
}
