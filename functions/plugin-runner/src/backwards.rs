//! Carries a plugin's backwards `invoke` to the daemon over HTTP
//! (`POST <plugind_url>/backwards-invocation/transaction`, reference:
//! `internal/service/serverless_transaction.go`) and feeds the answers back
//! to the plugin as `backwards_response` lines.
//!
//! The body is the plugin's own `invoke` line. The reply is newline-delimited:
//! either whole daemon→plugin lines (`"event":"backwards_response"`, as the
//! reference daemon writes them) or bare response objects
//! (`{"backwards_request_id","event","message","data"}`), which are wrapped
//! with this session's fields. Blank lines are keep-alives.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::MAX_LINE;
use crate::protocol::SessionRequest;

/// The route the daemon serves serverless backwards calls on.
pub const TRANSACTION_PATH: &str = "/backwards-invocation/transaction";
/// The header naming the session, as in the reference daemon.
pub const SESSION_HEADER: &str = "Dify-Plugin-Session-ID";

/// Why a backwards call failed; reported to the plugin as an `error` response.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The payload carried no daemon URL or token.
    #[error(
        "backwards invocation is not available: the invocation carried no daemon URL and token"
    )]
    NoTarget,
    /// The daemon could not be reached or the reply broke off.
    #[error("backwards invocation transport failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The daemon refused the call.
    #[error("backwards invocation refused with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    /// A reply line was longer than the line limit.
    #[error("backwards invocation reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// The plugin's stdin is gone (the child died).
    #[error("the plugin process is gone")]
    PluginGone,
}

/// Runs one backwards call to completion. Every call ends with an `end`
/// response for its request id, so the plugin never waits forever.
pub async fn bridge(
    http: reqwest::Client,
    request: std::sync::Arc<SessionRequest>,
    invoke_line: String,
    backwards_request_id: String,
    stdin: mpsc::Sender<Bytes>,
) {
    let result = relay(&http, &request, invoke_line, &backwards_request_id, &stdin).await;
    let ended = match result {
        Ok(ended) => ended,
        Err(BridgeError::PluginGone) => return,
        Err(e) => {
            tracing::warn!(session_id = %request.session_id, backwards_request_id, "{e}");
            let line = request.backwards_response_line(json!({
                "backwards_request_id": backwards_request_id,
                "event": "error",
                "message": e.to_string(),
                "data": {"error_type": "PluginDaemonInternalServerError"},
            }));
            if stdin.send(line.into()).await.is_err() {
                return;
            }
            false
        }
    };
    if !ended {
        let line = request.backwards_response_line(json!({
            "backwards_request_id": backwards_request_id,
            "event": "end",
            "message": "",
            "data": {},
        }));
        let _ = stdin.send(line.into()).await;
    }
}

/// Posts the call and forwards the reply; true when the reply's own `end`
/// reached the plugin.
async fn relay(
    http: &reqwest::Client,
    request: &SessionRequest,
    invoke_line: String,
    backwards_request_id: &str,
    stdin: &mpsc::Sender<Bytes>,
) -> Result<bool, BridgeError> {
    let target = request.backwards.as_ref().ok_or(BridgeError::NoTarget)?;
    let response = http
        .post(format!("{}{TRANSACTION_PATH}", target.url))
        .header(SESSION_HEADER, &request.session_id)
        .bearer_auth(&target.token)
        .header("Content-Type", "application/json")
        .body(invoke_line)
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(BridgeError::Refused {
            status: status.as_u16(),
            body: body.chars().take(1024).collect(),
        });
    }
    let mut body = response.bytes_stream();
    let mut buf = BytesMut::new();
    let mut ended = false;
    loop {
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(pos + 1);
            if let Some(out) = plugin_line(request, &line[..pos], backwards_request_id, &mut ended)
            {
                stdin.send(out).await.map_err(|_| BridgeError::PluginGone)?;
            }
        }
        if buf.len() > MAX_LINE {
            return Err(BridgeError::LineTooLong);
        }
        match body.next().await {
            Some(chunk) => buf.extend_from_slice(&chunk?),
            None => break,
        }
    }
    if let Some(out) = plugin_line(request, &buf, backwards_request_id, &mut ended) {
        stdin.send(out).await.map_err(|_| BridgeError::PluginGone)?;
    }
    Ok(ended)
}

/// Turns one reply line into the line written to the plugin; `None` for
/// keep-alives and lines that are not JSON objects.
fn plugin_line(
    request: &SessionRequest,
    raw: &[u8],
    backwards_request_id: &str,
    ended: &mut bool,
) -> Option<Bytes> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let text = text.strip_prefix("data:").map(str::trim).unwrap_or(text);
    if text.is_empty() {
        return None;
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        tracing::warn!(session_id = %request.session_id, "ignoring a backwards reply line that is not a JSON object");
        return None;
    };
    let whole = obj.get("event").and_then(Value::as_str) == Some("backwards_response");
    let data = if whole {
        obj.get("data")
    } else {
        Some(&Value::Object(obj.clone()))
    };
    let data = data.cloned().unwrap_or(Value::Null);
    if data.get("event").and_then(Value::as_str) == Some("end")
        && data.get("backwards_request_id").and_then(Value::as_str) == Some(backwards_request_id)
    {
        *ended = true;
    }
    if whole {
        let mut line = text.as_bytes().to_vec();
        line.push(b'\n');
        Some(line.into())
    } else {
        Some(request.backwards_response_line(data).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SessionRequest {
        SessionRequest::parse(
            json!({"session_id": "s1", "context": {}, "event": "request", "data": {}}),
        )
        .unwrap()
    }

    #[test]
    fn bare_response_objects_are_wrapped_and_whole_lines_kept() {
        let req = request();
        let mut ended = false;
        let out = plugin_line(
            &req,
            br#"{"backwards_request_id":"b1","event":"response","message":"struct","data":{"x":1}}"#,
            "b1",
            &mut ended,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["event"], "backwards_response");
        assert_eq!(v["session_id"], "s1");
        assert_eq!(v["data"]["data"]["x"], 1);
        assert!(!ended);

        let whole = br#"{"session_id":"s1","event":"backwards_response","data":{"backwards_request_id":"b1","event":"end","message":"","data":{}}}"#;
        let out = plugin_line(&req, whole, "b1", &mut ended).unwrap();
        assert_eq!(&out[..out.len() - 1], &whole[..]);
        assert!(ended);

        assert!(plugin_line(&req, b"", "b1", &mut ended).is_none());
        assert!(plugin_line(&req, b"   ", "b1", &mut ended).is_none());
    }
}
