//! Calls between replicas: a debugging plugin is connected to one node, and
//! a dispatch, endpoint or MCP call for it arriving at another node is
//! forwarded to that one over its internal listener. The owner runs the
//! session itself (backwards calls included) and streams the chunks back as
//! they come; when the caller goes away the connection closes and the
//! owner's session is cancelled with it.
//!
//! Authentication: each call is signed with HMAC-SHA256 under a key derived
//! from SERVER_KEY, over its time, sender, target node, path and body hash.
//! The target refuses calls meant for another node and calls more than
//! [`MAX_SKEW_SECS`] from its clock. A captured call could be replayed to
//! the same node within that window; the internal port belongs on a private
//! network between the replicas.
//!
//! The stream is newline-delimited JSON [`Line`]s; blank lines are
//! keep-alives, written every [`KEEPALIVE`] so a caller that vanished is
//! noticed by the failing write even while the plugin is silent.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::BytesMut;
use futures::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::app_state::AppState;
use crate::dispatch::{self, ChunkStream, InvokeRequest};
use crate::error::DaemonError;
use crate::runtime::SessionHeader;
use crate::store::NodeRecord;

/// The route of forwarded invocations on the internal listener.
pub const INVOKE_PATH: &str = "/cluster/v1/invoke";
/// Between keep-alive lines of a forwarded stream.
pub const KEEPALIVE: Duration = Duration::from_secs(2);
/// Largest accepted difference between a call's time and the target's clock.
pub const MAX_SKEW_SECS: u64 = 60;

pub(super) const FROM_HEADER: &str = "X-Plugind-From";
pub(super) const TO_HEADER: &str = "X-Plugind-To";
pub(super) const TIME_HEADER: &str = "X-Plugind-Time";
pub(super) const SIGNATURE_HEADER: &str = "X-Plugind-Signature";

type HmacSha256 = Hmac<Sha256>;

/// The key signing calls between replicas: a hash of SERVER_KEY under a
/// purpose label, so it never serves as the API key or any other key.
pub fn call_key(server_key: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"plugind internal call between replicas\0");
    h.update(server_key.as_bytes());
    h.finalize().to_vec()
}

pub(super) fn mac(
    key: &[u8],
    time: u64,
    from: &str,
    to: &str,
    path: &str,
    body: &[u8],
) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{time}\n{from}\n{to}\n{path}\n").as_bytes());
    mac.update(hex::encode(Sha256::digest(body)).as_bytes());
    mac
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One forwarded invocation.
#[derive(Debug, Serialize, Deserialize)]
struct WireRequest {
    tenant_id: String,
    plugin_id: String,
    access_type: String,
    action: String,
    user_id: String,
    session_id: String,
    conversation_id: Option<String>,
    message_id: Option<String>,
    app_id: Option<String>,
    endpoint_id: Option<String>,
    context: Value,
    payload: Map<String, Value>,
    timeout_ms: Option<u64>,
}

impl From<InvokeRequest> for WireRequest {
    fn from(r: InvokeRequest) -> Self {
        Self {
            tenant_id: r.tenant_id,
            plugin_id: r.plugin_id,
            access_type: r.access_type,
            action: r.action,
            user_id: r.user_id,
            session_id: r.header.session_id,
            conversation_id: r.header.conversation_id,
            message_id: r.header.message_id,
            app_id: r.header.app_id,
            endpoint_id: r.header.endpoint_id,
            context: r.header.context,
            payload: r.payload,
            timeout_ms: r
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

impl From<WireRequest> for InvokeRequest {
    fn from(w: WireRequest) -> Self {
        Self {
            tenant_id: w.tenant_id,
            plugin_id: w.plugin_id,
            access_type: w.access_type,
            action: w.action,
            user_id: w.user_id,
            header: SessionHeader {
                session_id: w.session_id,
                conversation_id: w.conversation_id,
                message_id: w.message_id,
                app_id: w.app_id,
                endpoint_id: w.endpoint_id,
                context: w.context,
            },
            payload: w.payload,
            timeout: w.timeout_ms.map(Duration::from_millis),
        }
    }
}

/// One line of a forwarded stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    /// The session opened; chunks follow.
    Open,
    Chunk {
        data: Value,
    },
    /// The session (or opening it) failed; nothing follows.
    Error {
        error_type: String,
        message: String,
    },
    /// The session ended.
    End,
}

impl Line {
    fn error(e: &DaemonError) -> Self {
        Self::Error {
            error_type: e.error_type().to_owned(),
            message: e.to_string(),
        }
    }

    fn encode(&self) -> Bytes {
        let mut out = serde_json::to_vec(self).expect("lines serialize");
        out.push(b'\n');
        Bytes::from(out)
    }
}

// ----- the owner's side ---------------------------------------------------

/// The internal listener's routes: forwarded invocations, and requests of
/// MCP sessions held here when `gateway` is given.
pub fn router(state: AppState, gateway: Option<std::sync::Arc<crate::mcp::McpGateway>>) -> Router {
    let mut router = Router::new()
        .route(INVOKE_PATH, post(serve_invoke))
        .with_state(state.clone());
    if let Some(gateway) = gateway {
        router = router.merge(super::mcp::routes(state.clone(), gateway));
    }
    router.layer(axum::middleware::from_fn_with_state(
        state,
        super::drain::count,
    ))
}

/// Why a call to `path` was refused; the text goes back in a 401.
pub(super) fn verify(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(from), Some(to), Some(time), Some(signature)) = (
        header(FROM_HEADER),
        header(TO_HEADER),
        header(TIME_HEADER),
        header(SIGNATURE_HEADER),
    ) else {
        return Err("unsigned call");
    };
    let time: u64 = time.parse().map_err(|_| "bad time")?;
    if unix_now().abs_diff(time) > MAX_SKEW_SECS {
        return Err("call too old or from the future");
    }
    let signature = hex::decode(signature).map_err(|_| "bad signature")?;
    let key = call_key(state.settings.server_key.expose());
    mac(&key, time, from, to, path, body)
        .verify_slice(&signature)
        .map_err(|_| "bad signature")?;
    if to != state.cluster.node_id() {
        return Err("call meant for another node");
    }
    Ok(())
}

async fn serve_invoke(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(why) = verify(&state, &headers, INVOKE_PATH, &body) {
        tracing::warn!(why, "refused a call from another node");
        return (StatusCode::UNAUTHORIZED, why).into_response();
    }
    let request: WireRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let from = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    tracing::debug!(%from, session_id = %request.session_id, "serving a call forwarded by another node");
    let lines: Pin<Box<dyn Stream<Item = Bytes> + Send>> =
        match dispatch::invoke_here(&state, request.into()).await {
            Ok(chunks) => {
                Box::pin(futures::stream::once(async { Line::Open.encode() }).chain(pump(chunks)))
            }
            Err(e) => Box::pin(futures::stream::once(
                async move { Line::error(&e).encode() },
            )),
        };
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines.map(Ok::<_, Infallible>)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The chunk lines of a session with keep-alives between them.
fn pump(chunks: ChunkStream) -> impl Stream<Item = Bytes> + Send {
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    futures::stream::unfold(Some((chunks, tick)), |state| async move {
        let (mut chunks, mut tick) = state?;
        tokio::select! {
            item = chunks.next() => match item {
                Some(Ok(data)) => Some((Line::Chunk { data }.encode(), Some((chunks, tick)))),
                Some(Err(e)) => Some((Line::error(&e).encode(), None)),
                None => Some((Line::End.encode(), None)),
            },
            _ = tick.tick() => Some((Bytes::from_static(b"\n"), Some((chunks, tick)))),
        }
    })
}

// ----- the caller's side --------------------------------------------------

/// Reads newline-delimited lines off a response body.
struct LineReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: BytesMut,
    max: usize,
}

impl LineReader {
    /// The next non-blank line; `Ok(None)` at the end of the body.
    async fn next(&mut self) -> Result<Option<Line>, String> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(at + 1);
                let line = &line[..at];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|e| format!("unreadable line from the owner: {e}"));
            }
            if self.buf.len() > self.max {
                return Err("a line from the owner is too long".into());
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(None),
            }
        }
    }
}

/// The headers that sign a call of this node to `to` at `path`.
pub(super) fn signed(
    state: &AppState,
    request: reqwest::RequestBuilder,
    to: &str,
    path: &str,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let from = state.cluster.node_id();
    let time = unix_now();
    let key = call_key(state.settings.server_key.expose());
    let signature = hex::encode(
        mac(&key, time, from, to, path, body)
            .finalize()
            .into_bytes(),
    );
    request
        .header(FROM_HEADER, from)
        .header(TO_HEADER, to)
        .header(TIME_HEADER, time.to_string())
        .header(SIGNATURE_HEADER, signature)
}

/// Runs `request` on the node `owner`, where its debugging plugin is
/// connected, and returns the chunks as they come.
pub async fn invoke(
    state: &AppState,
    owner: &NodeRecord,
    request: InvokeRequest,
) -> Result<ChunkStream, DaemonError> {
    let unreachable = |e: String| {
        DaemonError::internal_msg(format!(
            "the replica serving this debugging plugin ({}) cannot be reached: {e}",
            owner.id
        ))
    };
    let body = serde_json::to_vec(&WireRequest::from(request))
        .map_err(|e| DaemonError::internal("cannot encode a forwarded call", e))?;
    let request = state
        .cluster
        .client
        .post(format!("{}{INVOKE_PATH}", owner.address));
    let response = signed(state, request, &owner.id, INVOKE_PATH, &body)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if response.status() != reqwest::StatusCode::OK {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(unreachable(format!("it answered {status}: {text}")));
    }
    let mut lines = LineReader {
        body: Box::pin(response.bytes_stream()),
        buf: BytesMut::new(),
        max: state
            .settings
            .plugin_runtime_max_buffer_size
            .saturating_mul(2)
            + 64 * 1024,
    };
    match lines.next().await.map_err(unreachable)? {
        Some(Line::Open) => {}
        Some(Line::Error {
            error_type,
            message,
        }) => return Err(DaemonError::from_type(&error_type, message)),
        Some(other) => return Err(unreachable(format!("unexpected first line {other:?}"))),
        None => return Err(unreachable("it closed the call".into())),
    }
    tracing::debug!(owner = %owner.id, "call forwarded to the replica of the debugging plugin");
    let stream = futures::stream::unfold(Some(lines), |lines| async move {
        let mut lines = lines?;
        match lines.next().await {
            Ok(Some(Line::Chunk { data })) => Some((Ok(data), Some(lines))),
            Ok(Some(Line::Error {
                error_type,
                message,
            })) => Some((Err(DaemonError::from_type(&error_type, message)), None)),
            Ok(Some(Line::End)) => None,
            Ok(Some(Line::Open)) => Some((
                Err(DaemonError::internal_msg(
                    "the owner opened the session twice",
                )),
                None,
            )),
            // The owner went away mid-session.
            Ok(None) | Err(_) => Some((Err(DaemonError::ConnectionClosed), None)),
        }
    });
    Ok(Box::pin(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for line in [
            Line::Open,
            Line::Chunk {
                data: serde_json::json!({"type": "text", "message": {"text": "x"}}),
            },
            Line::Error {
                error_type: "PluginInvokeError".into(),
                message: "m".into(),
            },
            Line::End,
        ] {
            let bytes = line.encode();
            assert!(bytes.ends_with(b"\n"));
            let back: Line = serde_json::from_slice(&bytes[..bytes.len() - 1]).unwrap();
            assert_eq!(back, line);
        }
    }

    #[test]
    fn signatures_bind_every_part() {
        let key = call_key("k");
        let sig = mac(&key, 10, "a", "b", INVOKE_PATH, b"{}")
            .finalize()
            .into_bytes();
        assert!(mac(&key, 10, "a", "b", INVOKE_PATH, b"{}")
            .verify_slice(&sig)
            .is_ok());
        for other in [
            mac(&key, 11, "a", "b", INVOKE_PATH, b"{}"),
            mac(&key, 10, "x", "b", INVOKE_PATH, b"{}"),
            mac(&key, 10, "a", "x", INVOKE_PATH, b"{}"),
            mac(&key, 10, "a", "b", INVOKE_PATH, b"{ }"),
            mac(&call_key("other"), 10, "a", "b", INVOKE_PATH, b"{}"),
        ] {
            assert!(other.verify_slice(&sig).is_err());
        }
        assert_ne!(call_key("k"), b"k".to_vec());
    }
}

/// The internal listener, serving calls forwarded by other nodes.
pub struct InternalListener {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The host part other nodes are told: CLUSTER_INTERNAL_HOST when it names
/// one address, else this machine's host name.
fn advertised_host(bind_host: &str) -> String {
    if !matches!(bind_host, "0.0.0.0" | "::" | "[::]" | "") {
        return bind_host.to_owned();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `address` with `port` unless it names one (`host:port`, `[v6]:port`).
fn with_port(address: &str, port: u16) -> String {
    let has_port = match address.rsplit_once(':') {
        Some((host, p)) => {
            p.chars().all(|c| c.is_ascii_digit())
                && !p.is_empty()
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        address.to_owned()
    } else if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

impl InternalListener {
    /// Binds CLUSTER_INTERNAL_HOST:CLUSTER_INTERNAL_PORT, publishes the
    /// address other nodes reach it at, and serves.
    pub async fn start(
        state: &AppState,
        gateway: Option<std::sync::Arc<crate::mcp::McpGateway>>,
    ) -> Result<Self, String> {
        let settings = &state.settings.cluster;
        let bind = with_port(
            &settings.cluster_internal_host,
            settings.cluster_internal_port,
        );
        let listener = tokio::net::TcpListener::bind(&bind).await.map_err(|e| {
            format!("cannot listen on {bind} (CLUSTER_INTERNAL_HOST/CLUSTER_INTERNAL_PORT): {e}")
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot read the internal listener's address: {e}"))?
            .port();
        let address = match &settings.cluster_internal_address {
            Some(a) if !a.trim().is_empty() => with_port(a.trim(), port),
            _ => with_port(&advertised_host(&settings.cluster_internal_host), port),
        };
        let url = format!("http://{address}");
        state
            .cluster
            .set_address(&state.store, url.clone())
            .await
            .map_err(|e| format!("cannot publish the internal address: {e}"))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(listener, router(state.clone(), gateway))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "internal listener failed");
            }
        });
        tracing::info!(%bind, %url, "internal listener for other replicas started");
        Ok(Self { stop, task })
    }

    /// Stops accepting; calls still open get a moment, then are closed.
    pub async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn ports_are_added_unless_named() {
        assert_eq!(with_port("10.0.0.5", 5004), "10.0.0.5:5004");
        assert_eq!(with_port("10.0.0.5:6000", 5004), "10.0.0.5:6000");
        assert_eq!(with_port("pod-a.svc", 5004), "pod-a.svc:5004");
        assert_eq!(with_port("fd00::1", 5004), "[fd00::1]:5004");
        assert_eq!(with_port("[fd00::1]:7", 5004), "[fd00::1]:7");
        assert_eq!(advertised_host("127.0.0.1"), "127.0.0.1");
    }
}
