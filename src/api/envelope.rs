//! The `{code,message,data}` envelope every non-raw response uses, and the
//! SSE line format of the dispatch streams (PROTOCOL.md §1).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::DaemonError;

/// A successful envelope. `data` must never serialize to `null`: the Dify
/// client raises on a null `data`.
#[derive(Debug, Serialize)]
pub struct Envelope<T> {
    pub code: i32,
    pub message: String,
    pub data: T,
}

impl<T: Serialize> Envelope<T> {
    pub fn success(data: T) -> Self {
        Self {
            code: 0,
            message: "success".to_owned(),
            data,
        }
    }
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        Json(self).into_response()
    }
}

/// The JSON of an error envelope (`data` is `null`, `message` is the error
/// body as a JSON string).
pub fn error_envelope_json(err: &DaemonError) -> serde_json::Value {
    serde_json::json!({
        "code": err.code(),
        "message": err.envelope_message(),
        "data": null,
    })
}

/// One SSE line of a dispatch stream: `data: <envelope>\n\n`.
pub fn sse_line(envelope: &serde_json::Value) -> String {
    format!("data: {envelope}\n\n")
}

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        self.log();
        // Management errors travel as HTTP 200 with a negative code: the Dify
        // client calls raise_for_status() first and would lose the typed
        // error on a 4xx/5xx. A bad key is the one exception (401).
        let status = match self {
            DaemonError::Unauthorized => StatusCode::UNAUTHORIZED,
            _ => StatusCode::OK,
        };
        (status, Json(error_envelope_json(&self))).into_response()
    }
}

/// Result type of management handlers.
pub type ApiResult<T> = Result<Envelope<T>, DaemonError>;

/// Wraps `data` in a success envelope.
pub fn ok<T: Serialize>(data: T) -> ApiResult<T> {
    Ok(Envelope::success(data))
}
