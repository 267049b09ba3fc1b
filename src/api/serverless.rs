//! `POST /backwards-invocation/transaction`: where the `plugin-runner`
//! bootstrap inside a Lambda function carries its plugin's backwards calls
//! (reference: `internal/service/serverless_transaction.go`).
//!
//! The caller proves itself with the token the daemon put into the
//! invocation payload (`Authorization: Bearer …`), bound to the session
//! named by `Dify-Plugin-Session-ID`; the token also carries the tenant,
//! plugin and user, so any daemon replica can serve the call. The body is
//! the plugin's `invoke` event (the whole session line, as the reference
//! accepts, or only its `{type, backwards_request_id, request}` data). The
//! answer streams one `backwards_response` data object per line
//! (`{backwards_request_id, event, message, data}`), ending with `end`.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::app_state::AppState;
use crate::backwards::{self, BackwardsContext, BackwardsResponse, Permission};
use crate::error::DaemonError;
use crate::runtime::serverless::{unix_now, verify_token, TokenClaims};

/// The route's path.
pub const TRANSACTION_PATH: &str = "/backwards-invocation/transaction";

/// Header naming the session, as in the reference.
pub const SESSION_HEADER: &str = "Dify-Plugin-Session-ID";

/// Largest accepted body: Lambda's own payload limit, as the reference reads.
const MAX_BODY: usize = 6 * 1024 * 1024;

/// How many response events may wait for a slow reader.
const RESPONSE_BUFFER: usize = 16;

/// The route, to merge into the daemon's router.
pub fn routes() -> Router<AppState> {
    Router::new().route(
        TRANSACTION_PATH,
        post(transaction).layer(DefaultBodyLimit::max(MAX_BODY)),
    )
}

/// Error answers carry a real HTTP status: the caller is our bootstrap,
/// not Dify, and it checks the status before reading lines.
fn refuse(status: StatusCode, error: DaemonError) -> Response {
    error.log();
    let mut response = error.into_response();
    *response.status_mut() = status;
    response
}

/// The token's claims, or why the caller is refused.
fn claims(state: &AppState, headers: &HeaderMap) -> Result<TokenClaims, String> {
    let session_id = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .ok_or("missing session header")?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("missing bearer token")?;
    let key = state.settings.serverless_token_key();
    verify_token(&key, token.trim(), session_id, unix_now()).map_err(|e| e.to_string())
}

/// The invoke data of a body: a whole plugin session line, or the data.
fn invoke_data(body: &[u8]) -> Result<Value, DaemonError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| DaemonError::BadRequest(format!("body is not JSON: {e}")))?;
    if value.get("event").and_then(Value::as_str) == Some("session") {
        let data = value.get("data").cloned().unwrap_or(Value::Null);
        if data.get("type").and_then(Value::as_str) != Some("invoke") {
            return Err(DaemonError::BadRequest(
                "the session message is not an invoke".into(),
            ));
        }
        return Ok(data.get("data").cloned().unwrap_or(Value::Null));
    }
    Ok(value)
}

async fn context(state: &AppState, claims: &TokenClaims) -> Result<BackwardsContext, DaemonError> {
    let declaration = state
        .store
        .declaration(&claims.identifier)
        .await?
        .unwrap_or(Value::Null);
    let permission = Permission::from_json(
        declaration
            .pointer("/resource/permission")
            .unwrap_or(&Value::Null),
    );
    Ok(BackwardsContext {
        tenant_id: claims.tenant_id.clone(),
        user_id: claims.user_id.clone(),
        plugin_id: claims.plugin_id.clone(),
        permission,
        access_type: Some(claims.access_type.clone()),
        client: state.inner_api.clone(),
        storage: state.plugin_storage.clone(),
    })
}

async fn transaction(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let claims = match claims(&state, &headers) {
        Ok(claims) => claims,
        Err(reason) => {
            tracing::warn!(%reason, "backwards transaction refused");
            return refuse(StatusCode::UNAUTHORIZED, DaemonError::Unauthorized);
        }
    };
    let request = match invoke_data(&body).and_then(|data| {
        backwards::BackwardsRequest::from_invoke_data(&data)
            .map_err(|e| DaemonError::BadRequest(e.to_string()))
    }) {
        Ok(request) => request,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let ctx = match context(&state, &claims).await {
        Ok(ctx) => ctx,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    tracing::debug!(
        session_id = %claims.session_id,
        kind = %request.invoke_type,
        backwards_request_id = %request.backwards_request_id,
        "serverless backwards call"
    );
    let (tx, rx) = mpsc::channel::<BackwardsResponse>(RESPONSE_BUFFER);
    // The handler stops when the reader goes: its channel closes with the body.
    tokio::spawn(async move { backwards::handle(&ctx, request, tx).await });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_may_be_the_whole_line_or_its_data() {
        let data = json!({"type":"storage","backwards_request_id":"b","request":{}});
        let line = json!({"session_id":"s","event":"session","data":{"type":"invoke","data":data}});
        assert_eq!(invoke_data(line.to_string().as_bytes()).unwrap(), data);
        assert_eq!(invoke_data(data.to_string().as_bytes()).unwrap(), data);
        let stream = json!({"session_id":"s","event":"session","data":{"type":"stream","data":{}}});
        assert!(invoke_data(stream.to_string().as_bytes()).is_err());
        assert!(invoke_data(b"nope").is_err());
    }
}
