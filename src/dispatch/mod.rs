//! The one invocation path: dispatch routes, endpoints and MCP all call
//! [`invoke`] to run an action of a tenant's installed plugin and read its
//! response chunks.
//!
//! [`invoke`] resolves the tenant's installation, finds the running runtime
//! in the registry (whatever host runs it), opens a session and serves the
//! plugin's backwards calls itself, so callers only ever see the chunks
//! (reference: `internal/core/io_tunnel/generic.go`).

pub mod polling;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use crate::app_state::AppState;
use crate::backwards::{self, BackwardsContext, BackwardsResponse, Permission, ResponseEvent};
use crate::error::DaemonError;
use crate::runtime::{
    BackwardsEvent, BackwardsInvoke, PluginRuntime, SessionHeader, SessionItem, SessionRequest,
    SessionStream,
};

/// How many backwards response events may wait for the plugin's stdin.
const BACKWARDS_BUFFER: usize = 16;

/// One call of a plugin action on behalf of a tenant.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub tenant_id: String,
    /// `author/name`: selects the tenant's installation.
    pub plugin_id: String,
    /// Access type (`tool`, `model`, `agent_strategy`, …).
    pub access_type: String,
    /// Access action (`invoke_tool`, `invoke_llm`, …).
    pub action: String,
    pub user_id: String,
    /// Context fields of the session. An empty `session_id` gets a fresh one.
    pub header: SessionHeader,
    /// Request fields, flattened into the request line's `data`.
    pub payload: Map<String, Value>,
    /// Session time limit; `None` uses PLUGIN_MAX_EXECUTION_TIMEOUT.
    pub timeout: Option<Duration>,
}

/// The response chunks of one session, as the plugin sent them. Ends after
/// the plugin's `end`, or after one `Err` (plugin error, timeout, closed
/// connection). Dropping it cancels the session and its backwards calls.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Value, DaemonError>> + Send>>;

/// Opens a session on the tenant's installation of `req.plugin_id`.
///
/// Fails with [`DaemonError::PluginNotFound`] when the tenant has no such
/// installation, and with an internal error when its runtime is not running.
pub async fn invoke(state: &AppState, req: InvokeRequest) -> Result<ChunkStream, DaemonError> {
    let mut header = req.header;
    if header.session_id.is_empty() {
        header.session_id = uuid::Uuid::new_v4().to_string();
    }
    let span = tracing::info_span!(
        "session",
        session_id = %header.session_id,
        plugin_id = %req.plugin_id,
        access = %req.access_type,
        action = %req.action,
    );
    async move {
        let identifier = state
            .store
            .installed_identifier(&req.tenant_id, &req.plugin_id)
            .await?
            .ok_or(DaemonError::PluginNotFound)?;
        let runtime = state.registry.get(&identifier).ok_or_else(|| {
            tracing::warn!(%identifier, "installed plugin has no running runtime");
            DaemonError::internal_msg(format!("plugin {identifier} is not running"))
        })?;
        let session = runtime
            .invoke(SessionRequest {
                header,
                tenant_id: req.tenant_id.clone(),
                user_id: req.user_id.clone(),
                access_type: req.access_type.clone(),
                action: req.action,
                payload: req.payload,
                timeout: req.timeout,
            })
            .await?;
        tracing::debug!("session opened");
        let cancel = CancellationToken::new();
        let pump = Pump {
            session,
            state: state.clone(),
            identifier,
            tenant_id: req.tenant_id,
            user_id: req.user_id,
            plugin_id: req.plugin_id,
            access_type: req.access_type,
            context: None,
            cancel: cancel.clone(),
            _guard: cancel.drop_guard(),
            _runtime: runtime,
            span: tracing::Span::current(),
            _in_flight: crate::metrics::SessionGuard::new(),
        };
        let stream = futures::stream::unfold(Some(pump), |pump| async move {
            let mut pump = pump?;
            let span = pump.span.clone();
            match pump.next().instrument(span).await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some(pump))),
                // Nothing follows an error.
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        });
        Ok(Box::pin(stream) as ChunkStream)
    }
    .instrument(span)
    .await
}

/// Drives one session: yields chunks and serves backwards calls on the side.
struct Pump {
    session: SessionStream,
    state: AppState,
    identifier: String,
    tenant_id: String,
    user_id: String,
    plugin_id: String,
    access_type: String,
    /// Built at the first backwards call: most sessions make none.
    context: Option<Arc<BackwardsContext>>,
    /// Cancels the backwards calls still running when the session goes.
    cancel: CancellationToken,
    _guard: DropGuard,
    /// Keeps the runtime alive while its session is read.
    _runtime: Arc<dyn PluginRuntime>,
    span: tracing::Span,
    _in_flight: crate::metrics::SessionGuard,
}

impl Pump {
    async fn next(&mut self) -> Option<Result<Value, DaemonError>> {
        loop {
            match self.session.next().await? {
                Ok(SessionItem::Chunk(chunk)) => return Some(Ok(chunk)),
                Ok(SessionItem::Invoke(invoke)) => self.serve_backwards(invoke).await,
                Err(e) => {
                    tracing::debug!(error = %e, "session failed");
                    return Some(Err(e.into()));
                }
            }
        }
    }

    async fn context(&mut self) -> Result<Arc<BackwardsContext>, DaemonError> {
        if let Some(ctx) = &self.context {
            return Ok(Arc::clone(ctx));
        }
        let declaration = self
            .state
            .store
            .declaration(&self.identifier)
            .await?
            .unwrap_or(Value::Null);
        let permission = Permission::from_json(
            declaration
                .pointer("/resource/permission")
                .unwrap_or(&Value::Null),
        );
        let ctx = Arc::new(BackwardsContext {
            tenant_id: self.tenant_id.clone(),
            user_id: self.user_id.clone(),
            plugin_id: self.plugin_id.clone(),
            permission,
            access_type: Some(self.access_type.clone()),
            client: self.state.inner_api.clone(),
            storage: self.state.plugin_storage.clone(),
        });
        self.context = Some(Arc::clone(&ctx));
        Ok(ctx)
    }

    /// Starts serving one backwards call on its own task, so the session's
    /// chunks (and other calls) keep flowing while Dify answers.
    async fn serve_backwards(&mut self, invoke: BackwardsInvoke) {
        let BackwardsInvoke { request, reply } = invoke;
        let data = serde_json::json!({
            "type": request.kind,
            "backwards_request_id": request.backwards_request_id,
            "request": request.request,
        });
        let parsed = match backwards::BackwardsRequest::from_invoke_data(&data) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(error = %e, "malformed backwards call");
                let _ = reply.fail(&e.to_string()).await;
                return;
            }
        };
        let ctx = match self.context().await {
            Ok(ctx) => ctx,
            Err(e) => {
                e.log();
                let _ = reply.fail(&e.to_string()).await;
                return;
            }
        };
        tracing::debug!(
            kind = %parsed.invoke_type,
            backwards_request_id = %parsed.backwards_request_id,
            "backwards call"
        );
        let cancel = self.cancel.clone();
        let task = async move {
            let (tx, mut rx) = mpsc::channel::<BackwardsResponse>(BACKWARDS_BUFFER);
            let handler = backwards::handle(&ctx, parsed, tx);
            let relay = async {
                while let Some(event) = rx.recv().await {
                    let event = match event.event {
                        ResponseEvent::Response => BackwardsEvent::Response {
                            message: event.message,
                            data: event.data,
                        },
                        ResponseEvent::Error => BackwardsEvent::Error(event.message),
                        ResponseEvent::End => BackwardsEvent::End,
                    };
                    if reply.send(&event).await.is_err() {
                        // The plugin went away; the handler stops when its
                        // receiver (this loop's channel) is dropped.
                        break;
                    }
                }
            };
            tokio::select! {
                _ = async { tokio::join!(handler, relay) } => {}
                _ = cancel.cancelled() => {
                    tracing::debug!("backwards call cancelled with its session");
                }
            }
        };
        tokio::spawn(task.instrument(self.span.clone()));
    }
}
