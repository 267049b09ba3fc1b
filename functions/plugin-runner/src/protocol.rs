//! The session line protocol as the bootstrap sees it (PROTOCOL.md §2, §3):
//! the invocation payload (one daemon→plugin request line plus the daemon's
//! own `plugind_*` context keys), the plugin's output lines and the lines the
//! bootstrap writes itself.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// Context key: the daemon's base URL for backwards calls.
pub const CTX_URL: &str = "plugind_url";
/// Context key: the signed backwards-invocation token.
pub const CTX_TOKEN: &str = "plugind_token";
/// Context key: this invocation's execution limit in seconds.
pub const CTX_TIMEOUT: &str = "plugind_timeout";

/// The error type of the lines the bootstrap writes itself; the daemon maps it
/// like its own internal errors.
pub const RUNNER_ERROR_TYPE: &str = "PluginDaemonInternalServerError";

/// Why a payload is not a session request.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not a JSON object.
    #[error("the invocation payload must be a JSON object (one session request line)")]
    NotObject,
    /// No usable `session_id`.
    #[error("the invocation payload has no session_id")]
    NoSession,
}

/// Where the plugin's backwards calls go for one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackwardsTarget {
    /// The daemon's base URL (`context.plugind_url`).
    pub url: String,
    /// `context.plugind_token`, sent as a bearer token.
    pub token: String,
}

/// One invocation payload, split into what the plugin sees and what the
/// bootstrap keeps.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// The request's session id.
    pub session_id: String,
    /// The request line written to the plugin, without the `plugind_*`
    /// context keys (the token never reaches plugin code).
    pub line: Vec<u8>,
    /// The fields every daemon→plugin line of this session repeats.
    pub envelope: Map<String, Value>,
    /// Where backwards calls go, when the daemon said.
    pub backwards: Option<BackwardsTarget>,
    /// The execution limit the daemon asked for.
    pub timeout: Option<Duration>,
}

impl SessionRequest {
    /// Splits an invocation payload.
    pub fn parse(payload: Value) -> Result<Self, PayloadError> {
        let Value::Object(mut request) = payload else {
            return Err(PayloadError::NotObject);
        };
        let session_id = match request.get("session_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(PayloadError::NoSession),
        };
        let mut url = None;
        let mut token = None;
        let mut timeout = None;
        if let Some(Value::Object(ctx)) = request.get_mut("context") {
            url = ctx
                .remove(CTX_URL)
                .and_then(|v| v.as_str().map(str::to_owned));
            token = ctx
                .remove(CTX_TOKEN)
                .and_then(|v| v.as_str().map(str::to_owned));
            timeout = ctx
                .remove(CTX_TIMEOUT)
                .and_then(|v| v.as_f64())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64);
        }
        let backwards = match (url, token) {
            (Some(url), Some(token)) if !url.is_empty() => Some(BackwardsTarget {
                url: url.trim_end_matches('/').to_owned(),
                token,
            }),
            _ => None,
        };
        let mut envelope = Map::new();
        for key in [
            "session_id",
            "conversation_id",
            "message_id",
            "app_id",
            "endpoint_id",
            "context",
        ] {
            envelope.insert(key.into(), request.get(key).cloned().unwrap_or(Value::Null));
        }
        let mut line =
            serde_json::to_vec(&Value::Object(request)).expect("a JSON value serializes");
        line.push(b'\n');
        Ok(Self {
            session_id,
            line,
            envelope,
            backwards,
            timeout,
        })
    }

    /// A daemon→plugin `backwards_response` line carrying `data`.
    pub fn backwards_response_line(&self, data: Value) -> Vec<u8> {
        let mut line = self.envelope.clone();
        line.insert("event".into(), Value::String("backwards_response".into()));
        line.insert("data".into(), data);
        let mut bytes = serde_json::to_vec(&Value::Object(line)).expect("a JSON value serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// What a plugin output line means for the current session.
#[derive(Debug, PartialEq)]
pub enum PluginLine {
    /// A session message of the current session to relay; `last` when it
    /// ends the session (`end` or `error`).
    Relay { last: bool },
    /// A backwards call of the current session, with its request id.
    Invoke { backwards_request_id: String },
    /// A heartbeat.
    Heartbeat,
    /// A plugin log line: level and message.
    Log { level: String, message: String },
    /// A top-level plugin error (`event: error`), logged.
    PluginError(String),
    /// Anything else (another session, the manifest, non-JSON output).
    Other,
}

/// Classifies one plugin output line for the session `session_id`.
pub fn classify(line: &str, session_id: &str) -> PluginLine {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return PluginLine::Other;
    };
    let event = obj.get("event").and_then(Value::as_str).unwrap_or("");
    match event {
        "heartbeat" => PluginLine::Heartbeat,
        "log" => {
            let data = obj.get("data");
            let field = |k: &str| {
                data.and_then(|d| d.get(k))
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .unwrap_or_default()
            };
            PluginLine::Log {
                level: field("level"),
                message: field("message"),
            }
        }
        "error" => PluginLine::PluginError(
            obj.get("data")
                .and_then(|d| d.get("error"))
                .map(|e| {
                    e.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| e.to_string())
                })
                .unwrap_or_else(|| line.to_owned()),
        ),
        "session" if obj.get("session_id").and_then(Value::as_str) == Some(session_id) => {
            let data = obj.get("data");
            match data.and_then(|d| d.get("type")).and_then(Value::as_str) {
                Some("invoke") => PluginLine::Invoke {
                    backwards_request_id: data
                        .and_then(|d| d.get("data"))
                        .and_then(|d| d.get("backwards_request_id"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                },
                Some("end") | Some("error") => PluginLine::Relay { last: true },
                _ => PluginLine::Relay { last: false },
            }
        }
        _ => PluginLine::Other,
    }
}

/// A session `error` line written by the bootstrap, for faults the plugin
/// cannot report itself (it died, hung or never started).
pub fn error_line(session_id: &str, message: &str) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(&json!({
        "event": "session",
        "session_id": session_id,
        "data": {
            "type": "error",
            "data": {"error_type": RUNNER_ERROR_TYPE, "message": message, "args": {}},
        },
    }))
    .expect("a JSON value serializes");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Value {
        json!({
            "session_id": "s1", "conversation_id": null, "message_id": "m", "app_id": null,
            "endpoint_id": null,
            "context": {"plugind_url": "http://d:5002/", "plugind_token": "t0k", "plugind_timeout": 3, "x": 1},
            "event": "request",
            "data": {"user_id": "u", "type": "tool", "action": "invoke_tool"}
        })
    }

    #[test]
    fn payload_keys_of_the_daemon_stay_out_of_the_plugin_line() {
        let req = SessionRequest::parse(payload()).unwrap();
        assert_eq!(req.session_id, "s1");
        assert_eq!(
            req.backwards,
            Some(BackwardsTarget {
                url: "http://d:5002".into(),
                token: "t0k".into()
            })
        );
        assert_eq!(req.timeout, Some(Duration::from_secs(3)));
        assert_eq!(*req.line.last().unwrap(), b'\n');
        let line: Value = serde_json::from_slice(&req.line).unwrap();
        assert_eq!(line["context"], json!({"x": 1}));
        assert_eq!(line["data"]["action"], "invoke_tool");
        assert_eq!(line["event"], "request");
    }

    #[test]
    fn payloads_without_a_session_are_refused() {
        assert!(matches!(
            SessionRequest::parse(json!([1])),
            Err(PayloadError::NotObject)
        ));
        assert!(matches!(
            SessionRequest::parse(json!({"event": "request"})),
            Err(PayloadError::NoSession)
        ));
    }

    #[test]
    fn backwards_response_lines_repeat_the_session_fields() {
        let req = SessionRequest::parse(payload()).unwrap();
        let line =
            req.backwards_response_line(json!({"backwards_request_id": "b1", "event": "end"}));
        let line: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(line["event"], "backwards_response");
        assert_eq!(line["session_id"], "s1");
        assert_eq!(line["message_id"], "m");
        assert_eq!(line["context"], json!({"x": 1}));
        assert_eq!(line["data"]["backwards_request_id"], "b1");
    }

    #[test]
    fn plugin_lines_are_classified_for_the_current_session() {
        let s = |t: &str, sid: &str| {
            format!(
                r#"{{"event":"session","session_id":"{sid}","data":{{"type":"{t}","data":{{"backwards_request_id":"r9"}}}}}}"#
            )
        };
        assert_eq!(
            classify(&s("stream", "s1"), "s1"),
            PluginLine::Relay { last: false }
        );
        assert_eq!(
            classify(&s("end", "s1"), "s1"),
            PluginLine::Relay { last: true }
        );
        assert_eq!(
            classify(&s("error", "s1"), "s1"),
            PluginLine::Relay { last: true }
        );
        assert_eq!(
            classify(&s("invoke", "s1"), "s1"),
            PluginLine::Invoke {
                backwards_request_id: "r9".into()
            }
        );
        assert_eq!(classify(&s("stream", "other"), "s1"), PluginLine::Other);
        assert_eq!(
            classify(r#"{"event":"heartbeat","session_id":null,"data":{}}"#, "s1"),
            PluginLine::Heartbeat
        );
        assert_eq!(
            classify(
                r#"{"event": "log", "data": {"level": "INFO", "message": "hi"}}"#,
                "s1"
            ),
            PluginLine::Log {
                level: "INFO".into(),
                message: "hi".into()
            }
        );
        assert_eq!(
            classify(
                r#"{"event":"error","session_id":null,"data":{"error":"bad"}}"#,
                "s1"
            ),
            PluginLine::PluginError("bad".into())
        );
        assert_eq!(
            classify("Traceback (most recent call last):", "s1"),
            PluginLine::Other
        );
        assert_eq!(
            classify(r#"{"version":"0.0.1","type":"plugin"}"#, "s1"),
            PluginLine::Other
        );
    }

    #[test]
    fn runner_errors_are_typed_session_errors() {
        let line: Value = serde_json::from_slice(&error_line("s1", "killed by timeout")).unwrap();
        assert_eq!(line["session_id"], "s1");
        assert_eq!(line["data"]["type"], "error");
        assert_eq!(line["data"]["data"]["error_type"], RUNNER_ERROR_TYPE);
        assert_eq!(line["data"]["data"]["message"], "killed by timeout");
    }
}
