//! The session protocol spoken over a line codec: events a plugin writes, and
//! the request and backwards-response lines the daemon writes
//! (reference: `pkg/entities/plugin_entities/event.go`,
//! `internal/core/session_manager/session.go`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A `log` event's payload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LogEvent {
    #[serde(default)]
    pub level: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub timestamp: f64,
}

/// The error a plugin reports for a session: `{error_type, message, args}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginError {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error_type: String,
    #[serde(default)]
    pub args: Option<Value>,
}

impl PluginError {
    /// The JSON string the Dify client expects as a PluginInvokeError message.
    pub fn to_json_string(&self) -> String {
        serde_json::json!({
            "message": self.message,
            "error_type": self.error_type,
            "args": self.args,
        })
        .to_string()
    }
}

/// A backwards call a plugin makes inside a session (session event `invoke`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BackwardsRequest {
    /// What is called: `tool`, `llm`, `app`, `storage`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Echoed in every response line.
    pub backwards_request_id: String,
    /// The call's arguments, as the plugin sent them.
    #[serde(default)]
    pub request: Value,
}

/// One message inside a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionMessage {
    /// One response chunk.
    Stream(Value),
    /// The session finished.
    End,
    /// The session failed.
    Error(PluginError),
    /// The plugin calls back into Dify.
    Invoke(BackwardsRequest),
}

/// Something a plugin wrote, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginEvent {
    /// Liveness; the first one means the plugin is ready.
    Heartbeat,
    /// A log line of the plugin.
    Log(LogEvent),
    /// A plugin-wide error, logged; it ends nothing.
    Error(Value),
    /// A message for one session.
    Session {
        session_id: String,
        message: SessionMessage,
    },
    /// Valid JSON without a known `event` (the SDK's first line is its
    /// manifest). Ignored.
    Other,
}

/// Why a line is not a protocol event.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The line is not JSON: plugin output that is not protocol.
    #[error("not a JSON line: {0}")]
    NotJson(#[source] serde_json::Error),
    /// A known event whose payload has the wrong shape.
    #[error("malformed {event} event: {reason}")]
    Malformed { event: &'static str, reason: String },
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct RawSessionMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

fn malformed(event: &'static str, reason: impl ToString) -> ProtocolError {
    ProtocolError::Malformed {
        event,
        reason: reason.to_string(),
    }
}

impl PluginEvent {
    /// Parses one line written by a plugin.
    pub fn parse(line: &[u8]) -> Result<Self, ProtocolError> {
        // Every line of a session's answer passes here: an object is read
        // straight into its fields in one pass. Anything else, or an object
        // that does not fit (duplicate keys, wrong types), takes the general
        // path, which decides what it is.
        let starts_object = line
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        let typed = if starts_object {
            serde_json::from_slice::<RawEvent>(line).ok()
        } else {
            None
        };
        let raw = match typed {
            Some(raw) => raw,
            None => {
                let raw: Value = serde_json::from_slice(line).map_err(ProtocolError::NotJson)?;
                if !raw.is_object() {
                    return Ok(Self::Other);
                }
                serde_json::from_value(raw).map_err(|e| malformed("plugin", e))?
            }
        };
        match raw.event.as_deref() {
            Some("heartbeat") => Ok(Self::Heartbeat),
            Some("log") => serde_json::from_value(raw.data)
                .map(Self::Log)
                .map_err(|e| malformed("log", e)),
            Some("error") => Ok(Self::Error(raw.data)),
            Some("session") => {
                let session_id = raw
                    .session_id
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| malformed("session", "no session_id"))?;
                let msg: RawSessionMessage =
                    serde_json::from_value(raw.data).map_err(|e| malformed("session", e))?;
                let message = match msg.kind.as_str() {
                    "stream" => SessionMessage::Stream(msg.data),
                    "end" => SessionMessage::End,
                    "error" => SessionMessage::Error(
                        serde_json::from_value(msg.data).map_err(|e| malformed("session", e))?,
                    ),
                    "invoke" => SessionMessage::Invoke(
                        serde_json::from_value(msg.data).map_err(|e| malformed("session", e))?,
                    ),
                    other => {
                        return Err(malformed(
                            "session",
                            format!("unknown session message type {other:?}"),
                        ))
                    }
                };
                Ok(Self::Session {
                    session_id,
                    message,
                })
            }
            _ => Ok(Self::Other),
        }
    }
}

/// The fields of a session that travel in every daemon → plugin line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionHeader {
    pub session_id: String,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub app_id: Option<String>,
    pub endpoint_id: Option<String>,
    /// Free-form invocation context; `null` when absent, as the reference
    /// serializes a nil map.
    pub context: Value,
}

#[derive(Serialize)]
struct InStreamLine<'a, D: Serialize> {
    #[serde(flatten)]
    header: &'a SessionHeader,
    event: &'static str,
    data: D,
}

/// Encodes the `request` line that opens a session: `data` is
/// `{user_id, type, action, …payload}`, the payload flattened.
pub fn request_line(
    header: &SessionHeader,
    user_id: &str,
    access_type: &str,
    action: &str,
    payload: &Map<String, Value>,
) -> Bytes {
    encode(&InStreamLine {
        header,
        event: "request",
        data: RequestData {
            routing: [
                ("action", action),
                ("type", access_type),
                ("user_id", user_id),
            ],
            payload,
        },
    })
}

/// A request line's `data`, serialized from the caller's payload in place
/// (it is not copied): the payload's keys and the routing fields in one
/// sorted map, the routing fields winning over payload keys of the same
/// name. The bytes are those of a `Map` holding both (keys in its sorted
/// order), as the unit tests check.
struct RequestData<'a> {
    /// Sorted by key.
    routing: [(&'static str, &'a str); 3],
    payload: &'a Map<String, Value>,
}

impl Serialize for RequestData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let shadowed = self
            .payload
            .keys()
            .filter(|k| self.routing.iter().any(|(r, _)| r == k))
            .count();
        let mut map = serializer.serialize_map(Some(self.payload.len() - shadowed + 3))?;
        let mut routing = self.routing.iter().peekable();
        for (key, value) in self.payload {
            while let Some((name, text)) = routing.next_if(|(name, _)| *name <= key.as_str()) {
                map.serialize_entry(name, text)?;
            }
            if !self.routing.iter().any(|(name, _)| name == key) {
                map.serialize_entry(key, value)?;
            }
        }
        for (name, text) in routing {
            map.serialize_entry(name, text)?;
        }
        map.end()
    }
}

/// What one backwards-response line carries.
#[derive(Debug, Clone, PartialEq)]
pub enum BackwardsEvent {
    /// A result; `message` is `"stream"` or `"struct"` as the reference sends.
    Response { message: String, data: Value },
    /// The call failed; the text reaches the plugin as its exception message.
    Error(String),
    /// No more lines for this call.
    End,
}

/// Encodes a `backwards_response` line answering `backwards_request_id`.
pub fn backwards_response_line(
    header: &SessionHeader,
    backwards_request_id: &str,
    event: &BackwardsEvent,
) -> Bytes {
    let (name, message, data) = match event {
        BackwardsEvent::Response { message, data } => ("response", message.as_str(), data.clone()),
        BackwardsEvent::Error(text) => ("error", text.as_str(), Value::Null),
        BackwardsEvent::End => ("end", "", Value::Null),
    };
    encode(&InStreamLine {
        header,
        event: "backwards_response",
        data: serde_json::json!({
            "backwards_request_id": backwards_request_id,
            "event": name,
            "message": message,
            "data": data,
        }),
    })
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    // Serializing maps of strings and `Value`s cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_event_kind() {
        assert_eq!(
            PluginEvent::parse(br#"{"event":"heartbeat","session_id":null,"data":{}}"#).unwrap(),
            PluginEvent::Heartbeat
        );
        match PluginEvent::parse(
            br#"{"event": "log", "data": {"level": "INFO", "message": "m", "timestamp": 1.5}}"#,
        )
        .unwrap()
        {
            PluginEvent::Log(l) => {
                assert_eq!((l.level.as_str(), l.message.as_str()), ("INFO", "m"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            PluginEvent::parse(br#"{"event":"error","data":{"error":"boom"}}"#).unwrap(),
            PluginEvent::Error(json!({"error":"boom"}))
        );
        assert_eq!(
            PluginEvent::parse(br#"{"version":"0.0.1","type":"plugin"}"#).unwrap(),
            PluginEvent::Other
        );
    }

    #[test]
    fn parses_session_messages() {
        let stream = br#"{"event":"session","session_id":"s","data":{"type":"stream","data":{"type":"text","message":{"text":"hi"}}}}"#;
        assert_eq!(
            PluginEvent::parse(stream).unwrap(),
            PluginEvent::Session {
                session_id: "s".into(),
                message: SessionMessage::Stream(json!({"type":"text","message":{"text":"hi"}}))
            }
        );
        let err = br#"{"event":"session","session_id":"s","data":{"type":"error","data":{"error_type":"ValueError","message":"bad","args":{}}}}"#;
        match PluginEvent::parse(err).unwrap() {
            PluginEvent::Session {
                message: SessionMessage::Error(e),
                ..
            } => {
                assert_eq!(e.error_type, "ValueError");
                let back: Value = serde_json::from_str(&e.to_json_string()).unwrap();
                assert_eq!(
                    back,
                    json!({"message":"bad","error_type":"ValueError","args":{}})
                );
            }
            other => panic!("{other:?}"),
        }
        let invoke = br#"{"event":"session","session_id":"s","data":{"type":"invoke","data":{"type":"tool","backwards_request_id":"b1","request":{"x":1}}}}"#;
        match PluginEvent::parse(invoke).unwrap() {
            PluginEvent::Session {
                message: SessionMessage::Invoke(r),
                ..
            } => {
                assert_eq!(
                    (r.kind.as_str(), r.backwards_request_id.as_str()),
                    ("tool", "b1")
                );
                assert_eq!(r.request, json!({"x":1}));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn odd_but_valid_lines_parse_as_before() {
        // A repeated key: the last one wins, as in a JSON object read whole.
        assert_eq!(
            PluginEvent::parse(br#"{"event":"log","event":"heartbeat"}"#).unwrap(),
            PluginEvent::Heartbeat
        );
        assert_eq!(
            PluginEvent::parse(br#"  ["heartbeat"]"#).unwrap(),
            PluginEvent::Other
        );
        assert_eq!(PluginEvent::parse(b"42").unwrap(), PluginEvent::Other);
        assert!(matches!(
            PluginEvent::parse(br#"{"event":5}"#),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn rejects_what_is_not_protocol() {
        assert!(matches!(
            PluginEvent::parse(b"Traceback (most recent call last):"),
            Err(ProtocolError::NotJson(_))
        ));
        assert!(matches!(
            PluginEvent::parse(br#"{"event":"session","data":{"type":"end"}}"#),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            PluginEvent::parse(br#"{"event":"session","session_id":"s","data":{"type":"weird"}}"#),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn request_line_has_the_reference_shape() {
        let header = SessionHeader {
            session_id: "s1".into(),
            app_id: Some("a".into()),
            ..Default::default()
        };
        let mut payload = Map::new();
        payload.insert("provider".into(), json!("echo"));
        payload.insert("tool_parameters".into(), json!({"text":"x"}));
        let line = request_line(&header, "u", "tool", "invoke_tool", &payload);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({
                "session_id":"s1","conversation_id":null,"message_id":null,"app_id":"a",
                "endpoint_id":null,"context":null,"event":"request",
                "data":{"user_id":"u","type":"tool","action":"invoke_tool",
                        "provider":"echo","tool_parameters":{"text":"x"}}
            })
        );
        assert!(!line.contains(&b'\n'));
    }

    #[test]
    fn request_data_is_the_bytes_of_the_merged_map() {
        let payloads = [
            json!({}),
            json!({"provider": "p", "tool_parameters": {"q": [1, "two", null]}}),
            // Keys before, between and after the routing fields, and payload
            // keys the routing fields must replace.
            json!({"a": 1, "b": 2, "type": "forged", "u": true, "user_id": "x", "zz": {}}),
            json!({"action": "forged", "Z": 0, "é": "non-ascii key"}),
        ];
        for payload in payloads {
            let payload = payload.as_object().unwrap().clone();
            let mut merged = payload.clone();
            merged.insert("user_id".into(), json!("u"));
            merged.insert("type".into(), json!("tool"));
            merged.insert("action".into(), json!("invoke_tool"));
            let data = RequestData {
                routing: [
                    ("action", "invoke_tool"),
                    ("type", "tool"),
                    ("user_id", "u"),
                ],
                payload: &payload,
            };
            assert_eq!(
                serde_json::to_string(&data).unwrap(),
                serde_json::to_string(&merged).unwrap(),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn backwards_response_lines() {
        let header = SessionHeader {
            session_id: "s1".into(),
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&backwards_response_line(
            &header,
            "b1",
            &BackwardsEvent::Response {
                message: "struct".into(),
                data: json!({"ok":true}),
            },
        ))
        .unwrap();
        assert_eq!(v["event"], "backwards_response");
        assert_eq!(
            v["data"],
            json!({"backwards_request_id":"b1","event":"response","message":"struct","data":{"ok":true}})
        );
        let v: Value = serde_json::from_slice(&backwards_response_line(
            &header,
            "b1",
            &BackwardsEvent::End,
        ))
        .unwrap();
        assert_eq!(v["data"]["event"], "end");
    }
}
