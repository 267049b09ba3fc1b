//! MCP sessions among replicas. The revisions with `Mcp-Session-Id` keep a
//! session's state in the process that answered its `initialize`; each
//! node records the sessions it opens (`mcp_sessions`), and a request of a
//! session held by another live node is forwarded there whole (method,
//! path, headers, body) over the internal listener, signed as invocations
//! are ([`super::forward`]), with the answer streamed back as it comes (a
//! GET's event stream included). A session whose node died is unknown, as
//! rmcp answers any unknown session (404), and the client starts a new one.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::app_state::AppState;
use crate::mcp::sessions::Sessions;
use crate::mcp::McpGateway;
use crate::store::NodeRecord;

/// Where forwarded MCP requests arrive on the internal listener: this
/// prefix, then the original path and query.
pub const PREFIX: &str = "/cluster/v1/mcp";

/// The original request's Host, which rmcp checks against MCP_ALLOWED_HOSTS.
const ORIGINAL_HOST: &str = "x-plugind-original-host";

/// Largest forwarded body the holder reads; the forwarding node already
/// applied the gateway's own limit.
const MAX_FORWARDED_BODY: usize = 64 * 1024 * 1024;

/// Headers that belong to one connection, never copied across.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::HOST,
];

fn without_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in HOP_BY_HOP {
        out.remove(name);
    }
    out.remove("keep-alive");
    out
}

/// What the signature of a forwarded request covers besides its body.
fn signed_target(method: &axum::http::Method, path: &str) -> String {
    format!("{method} {path}")
}

/// The live node other than this one holding the session a request names,
/// when this node does not hold it.
pub async fn holder(
    state: &AppState,
    sessions: &Sessions,
    server_id: &str,
    headers: &HeaderMap,
) -> Option<NodeRecord> {
    if !state.cluster.is_shared() {
        return None;
    }
    let session = headers.get("mcp-session-id")?.to_str().ok()?;
    if sessions.is_open(session).await {
        return None;
    }
    let timeout = state.cluster.options().node_timeout;
    match state
        .store
        .mcp_session_node(session, server_id, timeout)
        .await
    {
        Ok(Some(node))
            if node.alive && node.id != state.cluster.node_id() && !node.address.is_empty() =>
        {
            Some(node)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up an MCP session's replica");
            None
        }
    }
}

/// Sends `req` to `node`, which holds its session, and relays the answer.
/// A body over `limit` is refused as the gateway refuses it.
pub async fn forward(state: &AppState, node: &NodeRecord, req: Request, limit: usize) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Payload Too Large: request body exceeds {limit} bytes"),
        )
            .into_response();
    };
    let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let path = format!("{PREFIX}{original}");
    let mut headers = without_hop_by_hop(&parts.headers);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(host) = parts.headers.get(header::HOST) {
        headers.insert(ORIGINAL_HOST, host.clone());
    }
    let request = state
        .cluster
        .client
        .request(parts.method.clone(), format!("{}{path}", node.address))
        .headers(headers)
        .body(bytes.clone());
    let target = signed_target(&parts.method, &path);
    let request = super::forward::signed(state, request, &node.id, &target, &bytes);
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            // The session lived there; without that node it is gone.
            tracing::warn!(node = %node.id, error = %e, "cannot reach the replica holding an MCP session");
            return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
        }
    };
    tracing::debug!(node = %node.id, "MCP request forwarded to the replica holding its session");
    let mut out = Response::builder().status(response.status());
    if let Some(h) = out.headers_mut() {
        *h = without_hop_by_hop(response.headers());
    }
    let body = Body::from_stream(response.bytes_stream());
    out.body(body)
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// The internal routes serving MCP requests forwarded to this node: every
/// path under [`PREFIX`].
pub fn routes(state: AppState, gateway: std::sync::Arc<McpGateway>) -> Router {
    let mcp: Router = gateway.routes();
    // A fallback rather than a `{*rest}` route: a route's path parameters
    // would travel on to the gateway's own `Path` extractors.
    Router::new()
        .fallback(move |State(state): State<AppState>, req: Request| {
            serve_forwarded(state, mcp.clone(), req)
        })
        .with_state(state)
}

async fn serve_forwarded(state: AppState, mcp: Router, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let Ok(bytes): Result<Bytes, _> = axum::body::to_bytes(body, MAX_FORWARDED_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let target = signed_target(&parts.method, &path);
    if let Err(why) = super::forward::verify(&state, &parts.headers, &target, &bytes) {
        tracing::warn!(why, "refused an MCP request from another node");
        return (StatusCode::UNAUTHORIZED, why).into_response();
    }
    let Some(Ok(uri)) = path.strip_prefix(PREFIX).map(str::parse::<Uri>) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    parts.uri = uri;
    if let Some(host) = parts.headers.remove(ORIGINAL_HOST) {
        parts.headers.insert(header::HOST, host);
    }
    for name in [
        super::forward::FROM_HEADER,
        super::forward::TO_HEADER,
        super::forward::TIME_HEADER,
        super::forward::SIGNATURE_HEADER,
    ] {
        parts.headers.remove(name);
    }
    let Ok(response) =
        tower::ServiceExt::oneshot(mcp, Request::from_parts(parts, Body::from(bytes))).await;
    response
}
