//! `/mcp/{server_id}/mcp` (and the older `/mcp/{server_id}`): the Streamable
//! HTTP endpoint of each MCP server, and its RFC 9728 protected-resource
//! metadata.
//!
//! In front of rmcp's transport the gateway checks, in order: the `Origin`
//! (a browser page of another site gets 403), then the bearer token (401
//! with a `WWW-Authenticate` challenge pointing at the metadata). rmcp then
//! checks `Host` against MCP_ALLOWED_HOSTS, runs sessions for the
//! 2025-03-26…2025-11-25 revisions (initialize, `Mcp-Session-Id`, GET
//! stream, DELETE) and serves 2026-07-28 requests statelessly. Bodies rmcp
//! cannot read as one message (malformed JSON, batches) are answered by
//! [`jsonrpc`](super::jsonrpc).
//!
//! A browser asking for HTML gets [`page`] instead.
//!
//! The tokens are the ones the management API issues; plugind runs no OAuth
//! authorization server, so the metadata names none and points at the
//! server's page, which says how to configure a client.
//!
//! Each server gets its own rmcp service, so a session opened on one server
//! can never be used on another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use bytes::BytesMut;
use futures::StreamExt;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::handler::{Core, McpHandler};
use super::page;
use super::records::McpStore;
use super::seal::Sealer;
use super::sessions::Sessions;
use super::{jsonrpc, ChunkStream, ToolCall};
use crate::app_state::AppState;
use crate::error::DaemonError;

/// The path of the protected-resource metadata of a server, under the
/// RFC 9728 well-known prefix.
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// Runs a plugin tool; the daemon's dispatch path in production.
#[async_trait::async_trait]
pub trait PluginInvoker: Send + Sync {
    /// Opens the session and returns its chunks; dropping them cancels it.
    async fn invoke(&self, call: ToolCall) -> Result<ChunkStream, DaemonError>;
}

/// The path MCP clients are given for a server. Its last segment is `mcp`
/// because Dify's MCP client picks its transport from the last segment of
/// the URL and tries the old SSE transport first for any other
/// (`api/core/mcp/mcp_client.py`, `MCPClient._initialize`).
pub fn server_path(server_id: &str) -> String {
    format!("/mcp/{server_id}/mcp")
}

/// Which of a server's two URLs a request came to.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    /// `/mcp/{server_id}`, the first URL, kept for configured clients.
    Bare,
    /// `/mcp/{server_id}/mcp`, the one shown.
    Suffixed,
}

impl Endpoint {
    fn path(self, server_id: &str) -> String {
        match self {
            Endpoint::Bare => format!("/mcp/{server_id}"),
            Endpoint::Suffixed => server_path(server_id),
        }
    }
}

/// The rmcp service of one server.
pub(crate) type Service = StreamableHttpService<McpHandler, Sessions>;

/// One server's rmcp service, its sessions, and what ends them.
struct Served {
    service: Service,
    sessions: Arc<Sessions>,
    stop: CancellationToken,
}

/// The MCP gateway: one rmcp service per server, created on first use.
pub struct McpGateway {
    core: Arc<Core>,
    services: Mutex<HashMap<String, Served>>,
    shutdown: CancellationToken,
    config: StreamableHttpServerConfig,
    allowed_origins: Vec<String>,
    public_url: Option<String>,
}

impl std::fmt::Debug for McpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpGateway").finish_non_exhaustive()
    }
}

fn trimmed(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl McpGateway {
    /// A gateway over the daemon's state, running plugin tools with `invoker`.
    pub fn new(state: AppState, invoker: Arc<dyn PluginInvoker>) -> Arc<Self> {
        let settings = state.settings.clone();
        let inner = Some(state.inner_api.clone());
        let records = McpStore::new(state.store.clone(), Sealer::from_settings(&settings));
        let hosts = trimmed(&settings.mcp_allowed_hosts);
        let shutdown = CancellationToken::new();
        let mut config = StreamableHttpServerConfig::default();
        config = if hosts.iter().any(|h| h == "*") {
            config.disable_allowed_hosts()
        } else {
            config.with_allowed_hosts(hosts)
        };
        Arc::new(Self {
            core: Arc::new(Core::new(state, records, invoker, inner)),
            services: Mutex::new(HashMap::new()),
            shutdown,
            config,
            allowed_origins: trimmed(&settings.mcp_allowed_origins),
            public_url: settings
                .mcp_public_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').to_owned()),
        })
    }

    /// The server records and tokens.
    pub fn records(&self) -> &McpStore {
        &self.core.records
    }

    /// The public routes: both URLs of each server and their metadata.
    pub fn routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        Router::new()
            .route(
                "/mcp/{server_id}",
                any(|gw, id, req| serve(gw, id, req, Endpoint::Bare)),
            )
            .route(
                "/mcp/{server_id}/mcp",
                any(|gw, id, req| serve(gw, id, req, Endpoint::Suffixed)),
            )
            .route(
                &format!("{METADATA_PREFIX}/mcp/{{server_id}}"),
                get(|gw, id, headers| metadata(gw, id, headers, Endpoint::Bare)),
            )
            .route(
                &format!("{METADATA_PREFIX}/mcp/{{server_id}}/mcp"),
                get(|gw, id, headers| metadata(gw, id, headers, Endpoint::Suffixed)),
            )
            .with_state(self.clone())
    }

    /// Ends the sessions of a server (after it was deleted or its tokens
    /// revoked); its next request starts afresh.
    pub fn forget(&self, server_id: &str) {
        let removed = self
            .services
            .lock()
            .expect("services lock")
            .remove(server_id);
        if let Some(served) = removed {
            served.stop.cancel();
        }
        self.core.forget(server_id);
    }

    /// Ends every session (daemon shutdown).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    fn service(&self, server_id: &str) -> (Service, Arc<Sessions>) {
        let mut services = self.services.lock().expect("services lock");
        let served = services.entry(server_id.to_owned()).or_insert_with(|| {
            let stop = self.shutdown.child_token();
            let core = self.core.clone();
            let id = server_id.to_owned();
            let cluster = &self.core.state.cluster;
            let sessions = Arc::new(if cluster.is_shared() {
                Sessions::tracked(super::sessions::Tracker {
                    store: self.core.state.store.clone(),
                    node_id: cluster.node_id().to_owned(),
                    server_id: server_id.to_owned(),
                })
            } else {
                Sessions::default()
            });
            let service = StreamableHttpService::new(
                move || Ok(McpHandler::new(core.clone(), id.clone())),
                sessions.clone(),
                self.config.clone().with_cancellation_token(stop.clone()),
            );
            Served {
                service,
                sessions,
                stop,
            }
        });
        (served.service.clone(), served.sessions.clone())
    }

    /// This daemon's base URL as the client sees it.
    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .filter(|s| *s == "https" || *s == "http")
            .unwrap_or("http");
        format!("{scheme}://{host}")
    }

    /// A request without an `Origin` (not from a browser) passes; a browser
    /// request passes from the same origin or an allowed one.
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim_end_matches('/');
        if self
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        match (origin.split_once("://"), host) {
            (Some((_, authority)), Some(host)) => authority.eq_ignore_ascii_case(host),
            _ => false,
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn challenge(gw: &McpGateway, headers: &HeaderMap, path: &str, invalid: bool) -> Response {
    let metadata = format!("{}{METADATA_PREFIX}{path}", gw.base_url(headers));
    let mut value = format!("Bearer resource_metadata=\"{metadata}\"");
    let body = if invalid {
        value.push_str(", error=\"invalid_token\"");
        json!({"error": "invalid_token", "error_description": "the access token is not valid for this server"})
    } else {
        json!({"error": "unauthorized", "error_description": "an access token issued by the server's owner is required, as Authorization: Bearer <token>; OAuth sign-in is not offered"})
    };
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

async fn serve(
    State(gw): State<Arc<McpGateway>>,
    Path(server_id): Path<String>,
    req: Request,
    endpoint: Endpoint,
) -> Response {
    if !gw.origin_allowed(req.headers()) {
        return (StatusCode::FORBIDDEN, "Forbidden: origin not allowed").into_response();
    }
    if page::wants_page(req.method(), req.headers()) {
        return server_page(&gw, &server_id, req.headers()).await;
    }
    let path = endpoint.path(&server_id);
    let Some(token) = bearer(req.headers()).map(str::to_owned) else {
        return challenge(&gw, req.headers(), &path, false);
    };
    let mut req = req;
    match gw.core.records.check_access(&server_id, &token).await {
        // The handler reads the stamp from the request rmcp hands it.
        Ok(Some(stamp)) => {
            req.extensions_mut().insert(stamp);
        }
        Ok(None) => return challenge(&gw, req.headers(), &path, true),
        Err(e) => return DaemonError::from(e).into_response(),
    }
    let (service, sessions) = gw.service(&server_id);
    // A session opened through another replica lives there.
    if let Some(node) =
        crate::cluster::mcp::holder(&gw.core.state, &sessions, &server_id, req.headers()).await
    {
        return crate::cluster::mcp::forward(
            &gw.core.state,
            &node,
            req,
            gw.config.max_request_body_bytes,
        )
        .await;
    }
    match *req.method() {
        Method::POST => post(&gw, service, &sessions, req).await,
        Method::DELETE => {
            let mut response = call(service, req).await;
            // rmcp answers a closed session with 202; Dify's MCP client
            // takes only 200 and the Python SDK only 200 or 204 (anything
            // else logs "Session termination failed" on every close).
            if response.status() == StatusCode::ACCEPTED {
                *response.status_mut() = StatusCode::OK;
            }
            response
        }
        _ => call(service, req).await,
    }
}

async fn call(service: Service, req: Request) -> Response {
    let Ok(response) = service.oneshot(req).await;
    response.map(Body::new)
}

/// A POST: rmcp answers it unless it cannot read the body as one JSON-RPC
/// message, which it says with 415 although the body is declared JSON (its
/// only other 415 is for a body that is not).
async fn post(gw: &McpGateway, service: Service, sessions: &Sessions, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body, gw.config.max_request_body_bytes).await {
        Ok(b) => b,
        Err(refusal) => return refusal,
    };
    let response = call(
        service.clone(),
        Request::from_parts(parts.clone(), Body::from(bytes.clone())),
    )
    .await;
    if response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE && declares_json(&parts.headers) {
        return jsonrpc::answer(&service, sessions, parts, bytes).await;
    }
    response
}

/// The whole body, refused as rmcp refuses it when longer than `limit`.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    let mut data = body.into_data_stream();
    let mut out = BytesMut::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                "Bad Request: the request body could not be read",
            )
                .into_response()
        })?;
        if chunk.len() > limit - out.len() {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Payload Too Large: request body exceeds {limit} bytes"),
            )
                .into_response());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The page for people. The server id in the URL is what reaches it, as it
/// is for MCP clients before they show a token; it shows no secrets.
async fn server_page(gw: &McpGateway, server_id: &str, headers: &HeaderMap) -> Response {
    let snapshot = match gw.core.snapshot(server_id, None).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                Html("<!doctype html><title>Not found</title><h1>No such MCP server</h1>"),
            )
                .into_response()
        }
        Err(e) => return DaemonError::from(e).into_response(),
    };
    let server = &snapshot.server;
    let mut tools: Vec<_> = snapshot
        .plugin_entries
        .iter()
        .map(|e| e.tool.clone())
        .collect();
    tools.extend(
        gw.core
            .app_entries(server)
            .await
            .into_iter()
            .map(|e| e.tool),
    );
    let url = format!("{}{}", gw.base_url(headers), server_path(server_id));
    let mut response = Html(page::render(
        &server.name,
        &server.description,
        &url,
        &tools,
    ))
    .into_response();
    // The page lists the server's current tools; never serve it stale.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// RFC 9728 metadata of the server at `endpoint`. Tokens are issued by the
/// daemon's management API (or `plugind mcp token`), not through OAuth, so
/// it names no `authorization_servers`; `resource_documentation` is the
/// server's page, which tells people how to configure a client with one.
async fn metadata(
    State(gw): State<Arc<McpGateway>>,
    Path(server_id): Path<String>,
    headers: HeaderMap,
    endpoint: Endpoint,
) -> Response {
    let base = gw.base_url(&headers);
    Json(json!({
        "resource": format!("{base}{}", endpoint.path(&server_id)),
        "bearer_methods_supported": ["header"],
        "resource_name": "plugind MCP server",
        "resource_documentation": format!("{base}{}", server_path(&server_id)),
    }))
    .into_response()
}
