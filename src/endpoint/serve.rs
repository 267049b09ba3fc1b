//! Serving `/e/{hook_id}/…`: find the endpoint, read the request, open the
//! plugin session and relay its answer as it comes
//! (reference: `internal/server/endpoint.go`, `internal/service/endpoint.go`).
//!
//! Changed on purpose: a body over the limit is refused with 413 (the
//! reference cuts it silently at 10 MiB); every value of a repeated response
//! header is sent; the session's time limit ends a started body cleanly
//! instead of appending a JSON error to it, and one that passes before the
//! plugin answered is a 504.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::time::{timeout_at, Instant};

use super::invoke::{ChunkStream, EndpointCall, Invoker};
use super::raw_http::{self, IncomingRequest};
use super::response::{self, Head};
use super::service::{EndpointDeclaration, EndpointService};
use crate::api::envelope::error_envelope_json;
use crate::error::DaemonError;

/// The reference's body limit, kept as the default.
pub const DEFAULT_MAX_BODY: usize = 10 * 1024 * 1024;

/// Limits of endpoint serving.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request body; larger ones get 413.
    pub max_body: usize,
    /// How long one request may take, body included
    /// (PLUGIN_MAX_EXECUTION_TIMEOUT).
    pub timeout: Duration,
}

/// Serves endpoint requests.
#[derive(Clone)]
pub struct EndpointServer {
    service: EndpointService,
    invoker: Arc<dyn Invoker>,
    options: ServeOptions,
}

/// An error answer: the envelope with a real HTTP status, since the caller
/// is any HTTP client rather than Dify.
fn fail(status: StatusCode, err: DaemonError) -> Response {
    err.log();
    (status, Json(error_envelope_json(&err))).into_response()
}

fn not_found(what: &str) -> Response {
    fail(
        StatusCode::NOT_FOUND,
        DaemonError::NotFound(what.to_owned()),
    )
}

fn too_large(limit: usize) -> Response {
    fail(
        StatusCode::PAYLOAD_TOO_LARGE,
        DaemonError::BadRequest(format!("request body exceeds {limit} bytes")),
    )
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            fail(
                StatusCode::BAD_REQUEST,
                DaemonError::BadRequest(format!("cannot read request body: {e}")),
            )
        })?;
        if buf.len() + piece.len() > limit {
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&piece);
    }
    Ok(Bytes::from(buf))
}

/// What the body stream carries between polls.
struct BodyState {
    chunks: ChunkStream,
    first: Option<Bytes>,
    deadline: Instant,
    hook_id: String,
}

/// The rest of the plugin's answer as body pieces. Ends at the session's
/// end, at its first error, or at the deadline; each of those leaves the
/// body well-formed, and the cause is logged.
fn body_stream(state: BodyState) -> Body {
    let stream = futures::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        if let Some(first) = st.first.take() {
            return Some((Ok::<Bytes, std::io::Error>(first), Some(st)));
        }
        loop {
            match timeout_at(st.deadline, st.chunks.next()).await {
                Err(_) => {
                    tracing::warn!(hook_id = %st.hook_id, "endpoint response cut by timeout");
                    return None;
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    tracing::warn!(hook_id = %st.hook_id, error = %e, "endpoint session failed mid-body");
                    return None;
                }
                Ok(Some(Ok(value))) => match response::decode(&value) {
                    Ok(chunk) => match chunk.body {
                        Some(b) if !b.is_empty() => return Some((Ok(b), Some(st))),
                        _ => continue,
                    },
                    Err(e) => {
                        tracing::warn!(hook_id = %st.hook_id, error = %e, "bad endpoint chunk");
                        return None;
                    }
                },
            }
        }
    });
    Body::from_stream(stream)
}

impl EndpointServer {
    pub fn new(service: EndpointService, invoker: Arc<dyn Invoker>, options: ServeOptions) -> Self {
        Self {
            service,
            invoker,
            options,
        }
    }

    /// Answers one request to `/e/{hook_id}{path}`.
    pub async fn handle(&self, hook_id: &str, path: &str, req: Request) -> Response {
        let deadline = Instant::now() + self.options.timeout;
        if !super::hook::is_plausible_hook_id(hook_id) {
            return not_found("endpoint not found");
        }
        let store = self.service.store();
        let endpoint = match store.endpoint_by_hook(hook_id).await {
            Ok(Some(e)) if e.enabled => e,
            Ok(_) => return not_found("endpoint not found"),
            Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e.into()),
        };
        let installation = match store
            .installation_by_plugin_id(&endpoint.tenant_id, &endpoint.plugin_id)
            .await
        {
            Ok(Some(i)) => i,
            Ok(None) => return not_found("plugin installation not found"),
            Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e.into()),
        };
        let group = match self
            .service
            .plugin_declaration(&installation.plugin_unique_identifier)
            .await
            .map(|d| EndpointDeclaration::from_plugin_declaration(&d))
        {
            Ok(Some(g)) => g,
            Ok(None) | Err(super::EndpointError::PluginNotFound) => {
                return fail(StatusCode::NOT_FOUND, DaemonError::PluginNotFound)
            }
            Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e.into()),
        };

        let (parts, body) = req.into_parts();
        let declared_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_length.is_some_and(|n| n > self.options.max_body as u64) {
            return too_large(self.options.max_body);
        }
        let body = match read_body(body, self.options.max_body).await {
            Ok(b) => b,
            Err(response) => return response,
        };
        let raw = raw_http::serialize(&IncomingRequest {
            method: &parts.method,
            hook_id,
            path,
            query: parts.uri.query(),
            headers: &parts.headers,
            body: &body,
        });
        drop(body);

        let settings = match self
            .service
            .decrypt_settings(&endpoint, &group.settings)
            .await
        {
            Ok(s) => s,
            Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e.into()),
        };
        let mut payload = Map::new();
        payload.insert("raw_http_request".into(), Value::String(hex::encode(&raw)));
        payload.insert("settings".into(), Value::Object(settings));
        let call = EndpointCall {
            tenant_id: endpoint.tenant_id.clone(),
            plugin_id: endpoint.plugin_id.clone(),
            endpoint_id: endpoint.id.clone(),
            payload,
            timeout: self.options.timeout,
        };
        let mut chunks = match self.invoker.invoke(call).await {
            Ok(s) => s,
            Err(DaemonError::PluginNotFound) => {
                return fail(StatusCode::NOT_FOUND, DaemonError::PluginNotFound)
            }
            Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e),
        };

        // Status and headers come before the first body piece.
        let mut head = Head::default();
        let first = loop {
            match timeout_at(deadline, chunks.next()).await {
                Err(_) => {
                    return fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        DaemonError::internal_msg("killed by timeout"),
                    )
                }
                Ok(None) => break None,
                Ok(Some(Err(e))) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e),
                Ok(Some(Ok(value))) => match response::decode(&value) {
                    Ok(mut chunk) => {
                        head.absorb(&mut chunk);
                        if let Some(b) = chunk.body {
                            break Some(b);
                        }
                    }
                    Err(e) => {
                        return fail(
                            StatusCode::BAD_GATEWAY,
                            DaemonError::internal(e.to_string(), e),
                        )
                    }
                },
            }
        };
        let (status, headers) = head.into_parts();
        let body = match first {
            // The plugin ended without a body.
            None => Body::empty(),
            Some(first) => body_stream(BodyState {
                chunks,
                first: Some(first).filter(|b| !b.is_empty()),
                deadline,
                hook_id: hook_id.to_owned(),
            }),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}
