//! POST bodies rmcp's transport cannot read as one JSON-RPC message.
//!
//! rmcp answers those with HTTP 415 and a line of text. MCP clients look for
//! a JSON-RPC error instead (the Python SDK reads the body of a 4xx answer
//! as one), so the gateway answers in its place with HTTP 400 and the error
//! JSON-RPC 2.0 §5.1 names: -32700 for a body that is not JSON, -32600 for
//! JSON that is not a message.
//!
//! A JSON array is a batch. The 2025-03-26 revision allows them (as did
//! 2024-11-05) and 2025-06-18 removed them, so a batch is served only in a
//! session that negotiated one of the older revisions: each message goes
//! through rmcp on its own, as if posted alone, and the answers come back as
//! one JSON array (no answer at all, 202, when the batch held only
//! notifications and responses). Progress and log notifications a request
//! sends while it runs have no place in that array and are not relayed.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::http::{header, request::Parts, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ErrorCode, ErrorData, ProtocolVersion};
use serde_json::{json, Value};
use sse_stream::SseStream;
use tower::ServiceExt;

use super::gateway::Service;
use super::sessions::Sessions;

/// The most messages one batch may hold.
pub const MAX_BATCH: usize = 64;

/// How many messages of a batch run at once.
const BATCH_CONCURRENCY: usize = 8;

/// The largest answer read back from rmcp for one message of a batch.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The first revision without batches.
const NO_BATCHES: ProtocolVersion = ProtocolVersion::V_2025_06_18;

/// A JSON-RPC error object for the request `id` (`null` when unknown, as
/// JSON-RPC 2.0 requires for parse errors and unreadable requests).
pub fn error_message(id: Value, error: ErrorData) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

fn refusal(id: Value, error: ErrorData) -> Response {
    (StatusCode::BAD_REQUEST, Json(error_message(id, error))).into_response()
}

fn invalid(message: impl Into<Cow<'static, str>>) -> ErrorData {
    ErrorData::invalid_request(message, None)
}

/// The id of a message, when it has one a response can carry.
fn request_id(message: &Value) -> Value {
    match message.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    }
}

/// Whether a session on `version` may send batches.
pub fn batches_allowed(version: &ProtocolVersion) -> bool {
    version.as_str() < NO_BATCHES.as_str()
}

/// The answer to a POST whose `body` rmcp refused to read as a message,
/// sent on `service` with the request's `parts`.
pub async fn answer(service: &Service, sessions: &Sessions, parts: Parts, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return refusal(
                Value::Null,
                ErrorData::parse_error(format!("Parse error: {e}"), None),
            )
        }
    };
    match value {
        Value::Array(items) => batch(service, sessions, parts, items).await,
        other => refusal(request_id(&other), unreadable(other)),
    }
}

/// The error for a JSON value that is not a client message.
fn unreadable(message: Value) -> ErrorData {
    let why = match serde_json::from_value::<ClientJsonRpcMessage>(message) {
        Err(e) => e.to_string(),
        Ok(_) => "not a message a client sends".to_owned(),
    };
    invalid(format!("Invalid Request: {why}"))
}

async fn batch(
    service: &Service,
    sessions: &Sessions,
    parts: Parts,
    items: Vec<Value>,
) -> Response {
    if items.is_empty() {
        return refusal(Value::Null, invalid("Invalid Request: an empty batch"));
    }
    let Some(session) = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    else {
        return refusal(
            Value::Null,
            invalid(
                "Invalid Request: JSON-RPC batches are accepted only in a session \
                 of protocol revision 2025-03-26",
            ),
        );
    };
    let Some(version) = sessions.version(session) else {
        // What rmcp answers for a session it does not know, so that the
        // client opens a new one.
        return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
    };
    if !batches_allowed(&version) {
        return refusal(
            Value::Null,
            invalid(format!(
                "Invalid Request: JSON-RPC batches were removed in protocol revision \
                 {NO_BATCHES}; this session uses {version}"
            )),
        );
    }
    if items.len() > MAX_BATCH {
        return refusal(
            Value::Null,
            invalid(format!(
                "Invalid Request: a batch holds at most {MAX_BATCH} messages"
            )),
        );
    }
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    let parts = &parts;
    let answers: Vec<Option<Value>> = futures::stream::iter(items)
        .map(|item| one(service, parts, item))
        .buffered(BATCH_CONCURRENCY)
        .collect()
        .await;
    let answers: Vec<Value> = answers.into_iter().flatten().collect();
    if answers.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    Json(Value::Array(answers)).into_response()
}

/// Runs one message of a batch; the answer of a request, `None` for the
/// rest (JSON-RPC answers neither notifications nor responses).
async fn one(service: &Service, parts: &Parts, item: Value) -> Option<Value> {
    let id = request_id(&item);
    let message = match serde_json::from_value::<ClientJsonRpcMessage>(item.clone()) {
        Ok(m) => m,
        Err(_) => return Some(error_message(id, unreadable(item))),
    };
    let is_request = match &message {
        ClientJsonRpcMessage::Request(r) => {
            if matches!(r.request, ClientRequest::InitializeRequest(_)) {
                return Some(error_message(
                    id,
                    invalid("Invalid Request: initialize cannot be part of a batch"),
                ));
            }
            true
        }
        _ => false,
    };
    let body = serde_json::to_vec(&item).expect("JSON values serialize");
    let request = Request::from_parts(parts.clone(), Body::from(body));
    let Ok(response) = service.clone().oneshot(request).await;
    if !is_request {
        return None;
    }
    Some(read_answer(response.map(Body::new), id).await)
}

/// The JSON-RPC answer in rmcp's `response` to the request `id`.
async fn read_answer(response: Response, id: Value) -> Value {
    let status = response.status();
    let kind = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if kind.starts_with("text/event-stream") {
        // The request's own stream: notifications while it runs, then its
        // response, after which rmcp ends the stream.
        let mut events = SseStream::new(response.into_body());
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            let Some(data) = event.data else { continue };
            let Ok(message) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if message.get("id") == Some(&id)
                && (message.get("result").is_some() || message.get("error").is_some())
            {
                return message;
            }
        }
        return error_message(
            id,
            ErrorData::internal_error("the request's stream ended without a response", None),
        );
    }
    let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
        .await
        .unwrap_or_default();
    if kind.starts_with("application/json") {
        if let Ok(mut message) = serde_json::from_slice::<Value>(&body) {
            if message.get("id").is_none_or(Value::is_null) {
                message["id"] = id;
            }
            return message;
        }
    }
    // A refusal of rmcp's HTTP layer (a bad header, a session gone).
    let code = if status.is_client_error() {
        ErrorCode::INVALID_REQUEST
    } else {
        ErrorCode::INTERNAL_ERROR
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    error_message(id, ErrorData::new(code, text, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_end_with_2025_06_18() {
        assert!(batches_allowed(&ProtocolVersion::V_2024_11_05));
        assert!(batches_allowed(&ProtocolVersion::V_2025_03_26));
        assert!(!batches_allowed(&ProtocolVersion::V_2025_06_18));
        assert!(!batches_allowed(&ProtocolVersion::V_2025_11_25));
        assert!(!batches_allowed(&ProtocolVersion::V_2026_07_28));
    }

    #[test]
    fn ids_are_kept_only_when_a_response_can_carry_them() {
        assert_eq!(request_id(&json!({"id": 7})), json!(7));
        assert_eq!(request_id(&json!({"id": "a"})), json!("a"));
        assert_eq!(request_id(&json!({"id": {"x": 1}})), Value::Null);
        assert_eq!(request_id(&json!([1])), Value::Null);
    }

    #[test]
    fn non_objects_are_invalid_requests() {
        let e = unreadable(json!(42));
        assert_eq!(e.code, ErrorCode::INVALID_REQUEST);
        let e = unreadable(json!({"jsonrpc": "2.0", "id": 1}));
        assert_eq!(e.code, ErrorCode::INVALID_REQUEST);
    }
}
