//! The dispatch routes, `POST /plugin/{tenant_id}/dispatch/*`: Dify invokes a
//! tenant's plugin (tools, models, agent strategies, OAuth, dynamic
//! selects, datasources, triggers) and reads the chunks back as a stream of
//! `data: <envelope>\n\n` lines (reference: `internal/server/http_server.gen.go`,
//! `internal/service/base_sse.go`, `controllers/base.go`).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{middleware, Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::Instrument;

use super::envelope::{error_envelope_json, sse_line};
use crate::app_state::AppState;
use crate::dispatch::{self, ChunkStream, InvokeRequest};
use crate::error::DaemonError;
use crate::runtime::SessionHeader;

/// Header naming the plugin (`author/name`) whose installation serves the call.
pub const PLUGIN_ID_HEADER: &str = "X-Plugin-ID";

/// Largest dispatch request body, in bytes (axum's default, made explicit so
/// the refusal can name it).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// How a dispatch route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A stream of `data: <envelope>` lines, one per chunk.
    Stream,
    /// One JSON envelope holding the plugin's polling result (the polling
    /// routes, which the reference answers without a stream).
    Polling,
}

/// One dispatch route: its path under `/dispatch`, the plugin access type
/// and action it becomes, the `data` fields the reference requires, and how
/// it answers.
#[derive(Debug, Clone, Copy)]
pub struct DispatchRoute {
    pub path: &'static str,
    pub access_type: &'static str,
    pub action: &'static str,
    pub required: &'static [&'static str],
    pub reply: Reply,
}

const fn route(
    path: &'static str,
    access_type: &'static str,
    action: &'static str,
    required: &'static [&'static str],
) -> DispatchRoute {
    DispatchRoute {
        path,
        access_type,
        action,
        required,
        reply: Reply::Stream,
    }
}

/// A polling route (reference: `controllers/model_polling.go`,
/// `service/model_polling.go`).
const fn polling(
    path: &'static str,
    action: &'static str,
    required: &'static [&'static str],
) -> DispatchRoute {
    DispatchRoute {
        path,
        access_type: "model",
        action,
        required,
        reply: Reply::Polling,
    }
}

const MODEL: &[&str] = &["provider", "model", "model_type"];

/// Every dispatch route of the reference, with its access type and action
/// (`internal/core/io_tunnel/access_types/access.go`) and the required
/// `data` fields of its request struct (`pkg/entities/requests/`).
pub const ROUTES: &[DispatchRoute] = &[
    route("tool/invoke", "tool", "invoke_tool", &["provider", "tool"]),
    route(
        "tool/validate_credentials",
        "tool",
        "validate_tool_credentials",
        &["provider"],
    ),
    route(
        "tool/get_runtime_parameters",
        "tool",
        "get_tool_runtime_parameters",
        &["provider", "tool"],
    ),
    route("llm/invoke", "model", "invoke_llm", MODEL),
    route("llm/num_tokens", "model", "get_llm_num_tokens", MODEL),
    route(
        "text_embedding/invoke",
        "model",
        "invoke_text_embedding",
        MODEL,
    ),
    route(
        "multimodal_embedding/invoke",
        "model",
        "invoke_multimodal_embedding",
        MODEL,
    ),
    route(
        "text_embedding/num_tokens",
        "model",
        "get_text_embedding_num_tokens",
        MODEL,
    ),
    route("rerank/invoke", "model", "invoke_rerank", MODEL),
    route(
        "multimodal_rerank/invoke",
        "model",
        "invoke_multimodal_rerank",
        MODEL,
    ),
    route("tts/invoke", "model", "invoke_tts", MODEL),
    route("tts/model/voices", "model", "get_tts_model_voices", MODEL),
    route("speech2text/invoke", "model", "invoke_speech2text", MODEL),
    route("moderation/invoke", "model", "invoke_moderation", MODEL),
    route(
        "model/validate_provider_credentials",
        "model",
        "validate_provider_credentials",
        &["provider"],
    ),
    route(
        "model/validate_model_credentials",
        "model",
        "validate_model_credentials",
        MODEL,
    ),
    route("model/schema", "model", "get_ai_model_schemas", MODEL),
    route(
        "oauth/get_authorization_url",
        "oauth",
        "get_authorization_url",
        &["provider"],
    ),
    route(
        "oauth/get_credentials",
        "oauth",
        "get_credentials",
        &["provider"],
    ),
    route(
        "oauth/refresh_credentials",
        "oauth",
        "refresh_credentials",
        &["provider"],
    ),
    route(
        "dynamic_select/fetch_parameter_options",
        "dynamic_parameter",
        "fetch_parameter_options",
        &["provider"],
    ),
    route(
        "datasource/validate_credentials",
        "datasource",
        "validate_datasource_credentials",
        &["provider"],
    ),
    route(
        "datasource/get_website_crawl",
        "datasource",
        "invoke_website_datasource_get_crawl",
        &["provider", "datasource"],
    ),
    route(
        "datasource/get_online_document_pages",
        "datasource",
        "invoke_online_document_datasource_get_pages",
        &["provider", "datasource"],
    ),
    route(
        "datasource/get_online_document_page_content",
        "datasource",
        "invoke_online_document_datasource_get_page_content",
        &["provider", "datasource"],
    ),
    route(
        "datasource/online_drive_browse_files",
        "datasource",
        "invoke_online_drive_browse_files",
        &["provider", "datasource"],
    ),
    route(
        "datasource/online_drive_download_file",
        "datasource",
        "invoke_online_drive_download_file",
        &["provider", "datasource"],
    ),
    route(
        "trigger/invoke_event",
        "trigger",
        "invoke_trigger_event",
        &["provider"],
    ),
    route(
        "trigger/validate_credentials",
        "trigger",
        "validate_trigger_credentials",
        &["provider"],
    ),
    route(
        "trigger/dispatch_event",
        "trigger",
        "dispatch_trigger_event",
        &["provider"],
    ),
    route(
        "trigger/subscribe",
        "trigger",
        "subscribe_trigger",
        &["provider"],
    ),
    route(
        "trigger/unsubscribe",
        "trigger",
        "unsubscribe_trigger",
        &["provider"],
    ),
    route(
        "trigger/refresh",
        "trigger",
        "refresh_trigger",
        &["provider"],
    ),
    route(
        "agent_strategy/invoke",
        "agent_strategy",
        "invoke_agent_strategy",
        &["agent_strategy_provider", "agent_strategy"],
    ),
    polling("model/polling/start", "start_polling", MODEL),
    polling(
        "model/polling/check",
        "check_polling",
        &["provider", "model", "model_type", "plugin_state"],
    ),
];

/// The dispatch routes (behind the `X-Api-Key` check) and the unauthenticated
/// `/metrics`.
pub fn router(state: AppState) -> Router<AppState> {
    let mut dispatch = Router::new();
    for spec in ROUTES {
        dispatch = dispatch.route(
            &format!("/plugin/{{tenant_id}}/dispatch/{}", spec.path),
            post(
                move |state: State<AppState>,
                      tenant: Path<String>,
                      plugin: PluginIdHeader,
                      body: Result<Bytes, BytesRejection>| {
                    handle(state, tenant, plugin, body, spec)
                },
            ),
        );
    }
    let dispatch = dispatch.layer(DefaultBodyLimit::max(MAX_BODY));
    dispatch.route_layer(middleware::from_fn_with_state(
        state,
        super::require_api_key,
    ))
}

/// The trimmed `X-Plugin-ID` header, empty when missing: read from the
/// request's headers in place (the `HeaderMap` extractor copies them all).
struct PluginIdHeader(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PluginIdHeader {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Infallible> {
        let value = parts
            .headers
            .get(PLUGIN_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        Ok(Self(value.to_owned()))
    }
}

/// The body Dify sends: the session's context and the action's `data`.
#[derive(Debug, Deserialize)]
struct DispatchBody {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    app_id: Option<String>,
    #[serde(default)]
    endpoint_id: Option<String>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

/// A refusal before any stream starts, with the reference's HTTP status.
fn refuse(status: StatusCode, err: DaemonError) -> Response {
    err.log();
    (status, Json(error_envelope_json(&err))).into_response()
}

async fn handle(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    PluginIdHeader(plugin_id): PluginIdHeader,
    body: Result<Bytes, BytesRejection>,
    spec: &'static DispatchRoute,
) -> Response {
    let started = Instant::now();
    // A body that cannot be read is refused with an envelope, as every other
    // refusal: Dify parses each line of the answer as one (axum's own
    // rejection is plain text).
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            crate::metrics::record_request(spec.path, "refused", started.elapsed());
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("request body is larger than {MAX_BODY} bytes")
            } else {
                format!("cannot read the request body: {}", rejection.body_text())
            };
            return refuse(status, DaemonError::BadRequest(message));
        }
    };
    if plugin_id.is_empty() {
        crate::metrics::record_request(spec.path, "refused", started.elapsed());
        return refuse(
            StatusCode::BAD_REQUEST,
            DaemonError::BadRequest("plugin_id is required".into()),
        );
    }
    let request = match parse_body(&body, spec) {
        Ok(parsed) => parsed,
        Err(message) => {
            crate::metrics::record_request(spec.path, "refused", started.elapsed());
            return refuse(StatusCode::BAD_REQUEST, DaemonError::BadRequest(message));
        }
    };
    let (mut header, user_id, payload) = request;
    // The session id is chosen here so that every log line of the request,
    // from the route to the plugin, carries it.
    header.session_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("dispatch", session_id = %header.session_id, route = spec.path);
    let invoke = InvokeRequest {
        tenant_id,
        plugin_id,
        access_type: spec.access_type.to_owned(),
        action: spec.action.to_owned(),
        user_id,
        header,
        payload,
        timeout: None,
    };
    if spec.reply == Reply::Polling {
        return polling_reply(&state, invoke, span, spec, started).await;
    }
    let chunks = match dispatch::invoke(&state, invoke)
        .instrument(span.clone())
        .await
    {
        Ok(chunks) => chunks,
        Err(DaemonError::PluginNotFound) => {
            crate::metrics::record_request(spec.path, "refused", started.elapsed());
            return refuse(StatusCode::NOT_FOUND, DaemonError::PluginNotFound);
        }
        // As the reference: once the installation is known the answer is a
        // stream, and a failure to open the session is its one error line.
        Err(err) => {
            span.in_scope(|| err.log());
            crate::metrics::record_request(spec.path, "error", started.elapsed());
            let line = sse_line(&error_envelope_json(&err));
            return sse_response(Body::from(line));
        }
    };
    let mut lines = SseLines {
        chunks,
        route: spec.path,
        started,
        outcome: None,
        span,
    };
    // The headers leave with the first line, as the reference's do (Go's
    // writer sends them at the first write): one write instead of two for
    // a short answer, and the client wakes once. A client that goes away
    // meanwhile drops this future, which cancels the session.
    let first = lines.next().await;
    sse_response(Body::from_stream(futures::stream::iter(first).chain(lines)))
}

/// Runs a polling action to its end and answers its result as one envelope
/// (reference: `service/model_polling.go`). The last chunk is the result, as
/// the reference reads it. Failures keep the reference's HTTP 500, with the
/// envelope naming what failed: PluginInvokeError for the plugin's own error,
/// PluginDaemonInternalServerError for the daemon's (the reference wraps even
/// a timeout as a PluginInvokeError whose message is not the JSON Dify then
/// parses).
async fn polling_reply(
    state: &AppState,
    invoke: InvokeRequest,
    span: tracing::Span,
    spec: &'static DispatchRoute,
    started: Instant,
) -> Response {
    let mut chunks = match dispatch::invoke(state, invoke)
        .instrument(span.clone())
        .await
    {
        Ok(chunks) => chunks,
        Err(DaemonError::PluginNotFound) => {
            crate::metrics::record_request(spec.path, "refused", started.elapsed());
            return refuse(StatusCode::NOT_FOUND, DaemonError::PluginNotFound);
        }
        Err(err) => {
            crate::metrics::record_request(spec.path, "error", started.elapsed());
            let _enter = span.enter();
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, err);
        }
    };
    let mut last = None;
    let outcome = loop {
        match chunks.next().instrument(span.clone()).await {
            Some(Ok(chunk)) => last = Some(chunk),
            Some(Err(err)) => break Err(mid_stream_error(err)),
            None => {
                break match last.take() {
                    Some(chunk) => dispatch::polling::PollingResult::from_chunk(chunk),
                    None => Err(DaemonError::internal_msg(
                        "no polling result received from plugin",
                    )),
                }
            }
        }
    };
    match outcome {
        Ok(result) => {
            crate::metrics::record_request(spec.path, "ok", started.elapsed());
            super::envelope::Envelope::success(result).into_response()
        }
        Err(err) => {
            crate::metrics::record_request(spec.path, "error", started.elapsed());
            let _enter = span.enter();
            refuse(StatusCode::INTERNAL_SERVER_ERROR, err)
        }
    }
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Splits the body into the session header, the user and the flattened
/// request fields; the error text says what is wrong.
fn parse_body(
    body: &[u8],
    spec: &DispatchRoute,
) -> Result<(SessionHeader, String, Map<String, Value>), String> {
    let body: DispatchBody =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let data = match body.data {
        Some(Value::Object(data)) => data,
        Some(Value::Null) | None => return Err("field `data` is required".into()),
        Some(_) => return Err("field `data` must be an object".into()),
    };
    for field in spec.required {
        let present = match data.get(*field) {
            Some(Value::String(s)) => !s.is_empty(),
            // `plugin_state` must hold something (`required,min=1`).
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::Null) | None => false,
            Some(_) => true,
        };
        if !present {
            return Err(format!("field `data.{field}` is required"));
        }
    }
    let header = SessionHeader {
        session_id: String::new(),
        conversation_id: body.conversation_id,
        message_id: body.message_id,
        app_id: body.app_id,
        endpoint_id: body.endpoint_id,
        // The reference sends a nil map as `null`.
        context: body.context.map(Value::Object).unwrap_or(Value::Null),
    };
    Ok((header, body.user_id, data))
}

/// The error line that ends a stream. A closed plugin connection is wrapped
/// as a PluginInvokeError so that Dify raises a typed exception for it (its
/// client does not know the bare connection-closed type).
fn mid_stream_error(err: DaemonError) -> DaemonError {
    match err {
        DaemonError::ConnectionClosed => DaemonError::PluginInvoke(
            serde_json::json!({
                "message": "plugin connection closed before the session ended",
                "error_type": "PluginConnectionClosedError",
                "args": null,
            })
            .to_string(),
        ),
        other => other,
    }
}

/// The SSE line of one chunk: the bytes [`sse_line`] makes of the success
/// envelope `{"code": 0, "message": "success", "data": chunk}` (keys in
/// serde_json's sorted order), written straight into one buffer instead of
/// building the envelope and formatting it.
fn success_line(chunk: &Value) -> Bytes {
    const HEAD: &[u8] = b"data: {\"code\":0,\"data\":";
    const TAIL: &[u8] = b",\"message\":\"success\"}\n\n";
    let mut out = Vec::with_capacity(HEAD.len() + TAIL.len() + 128);
    out.extend_from_slice(HEAD);
    // Writing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, chunk);
    out.extend_from_slice(TAIL);
    Bytes::from(out)
}

/// The SSE lines of one session; records the request's outcome when the
/// stream ends or the client goes away.
struct SseLines {
    chunks: ChunkStream,
    route: &'static str,
    started: Instant,
    outcome: Option<&'static str>,
    span: tracing::Span,
}

impl Stream for SseLines {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.outcome.is_some() {
            return Poll::Ready(None);
        }
        match self.chunks.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(success_line(&chunk)))),
            Poll::Ready(Some(Err(err))) => {
                let err = mid_stream_error(err);
                self.span.in_scope(|| err.log());
                self.outcome = Some("error");
                Poll::Ready(Some(Ok(Bytes::from(sse_line(&error_envelope_json(&err))))))
            }
            Poll::Ready(None) => {
                self.outcome = Some("ok");
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for SseLines {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or("cancelled");
        crate::metrics::record_request(self.route, outcome, self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_unique_and_valid() {
        let mut paths: Vec<_> = ROUTES.iter().map(|r| r.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ROUTES.len());
        // The 33 generated routes of the reference plus agent_strategy/invoke
        // and the two polling routes.
        assert_eq!(ROUTES.len(), 36);
    }

    #[test]
    fn success_lines_are_the_envelope_lines() {
        for chunk in [
            serde_json::json!({"type": "text", "message": {"text": "hi \"there\"\n"}}),
            serde_json::json!({"z": [1, 2.5, null, true], "a": {}}),
            Value::Null,
            serde_json::json!("blob"),
        ] {
            let envelope = serde_json::json!({"code": 0, "message": "success", "data": chunk});
            assert_eq!(
                success_line(&chunk),
                Bytes::from(sse_line(&envelope)),
                "{chunk}"
            );
        }
    }

    #[test]
    fn the_body_splits_into_header_user_and_data() {
        let spec = &ROUTES[0];
        let (header, user, data) = parse_body(
            br#"{"user_id":"u","app_id":"a","context":{"k":1},"data":{"provider":"p","tool":"t","tool_parameters":{}}}"#,
            spec,
        )
        .unwrap();
        assert_eq!(user, "u");
        assert_eq!(header.app_id.as_deref(), Some("a"));
        assert_eq!(header.conversation_id, None);
        assert_eq!(header.context, serde_json::json!({"k": 1}));
        assert_eq!(data["tool"], "t");
        assert!(parse_body(br#"{"user_id":"u"}"#, spec)
            .unwrap_err()
            .contains("data"));
        assert!(parse_body(br#"{"data":{"provider":"p"}}"#, spec)
            .unwrap_err()
            .contains("data.tool"));
        assert!(parse_body(b"not json", spec).is_err());
    }
}
