//! How an endpoint request reaches its plugin. Serving only needs "open an
//! `endpoint`/`invoke_endpoint` session and read its chunks", so it goes
//! through the [`Invoker`] trait: the daemon plugs in its dispatch path, and
//! tests can plug in a scripted plugin to drive the HTTP side exactly.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::{Map, Value};

use crate::app_state::AppState;
use crate::error::DaemonError;
use crate::runtime::{SessionItem, SessionRequest};

/// The chunks of a session; dropping the stream cancels the session.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Value, DaemonError>> + Send>>;

/// The access type of endpoint sessions.
pub const ACCESS_TYPE: &str = "endpoint";
/// The action of endpoint sessions.
pub const ACTION: &str = "invoke_endpoint";

/// One endpoint session to open.
#[derive(Debug, Clone)]
pub struct EndpointCall {
    pub tenant_id: String,
    /// `author/name`.
    pub plugin_id: String,
    /// The endpoint's id, sent in the session header's `endpoint_id`.
    pub endpoint_id: String,
    /// `{"raw_http_request": <hex>, "settings": {…}}`.
    pub payload: Map<String, Value>,
    /// The session's time limit.
    pub timeout: Duration,
}

/// Opens endpoint sessions.
#[async_trait::async_trait]
pub trait Invoker: Send + Sync {
    async fn invoke(&self, call: EndpointCall) -> Result<ChunkStream, DaemonError>;
}

/// The daemon's invoker: the tenant's installation, its running runtime, a
/// session on it.
pub struct RuntimeInvoker {
    state: AppState,
}

impl RuntimeInvoker {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[async_trait::async_trait]
impl Invoker for RuntimeInvoker {
    async fn invoke(&self, call: EndpointCall) -> Result<ChunkStream, DaemonError> {
        let installation = self
            .state
            .store
            .installation_by_plugin_id(&call.tenant_id, &call.plugin_id)
            .await?
            .ok_or(DaemonError::PluginNotFound)?;
        let runtime = self
            .state
            .registry
            .get(&installation.plugin_unique_identifier)
            .ok_or(DaemonError::PluginNotFound)?;
        let mut request =
            SessionRequest::new(ACCESS_TYPE, ACTION, "", call.payload).with_timeout(call.timeout);
        request.header.endpoint_id = Some(call.endpoint_id);
        let session = runtime.invoke(request).await?;
        Ok(Box::pin(session.filter_map(|item| async move {
            match item {
                Ok(SessionItem::Chunk(v)) => Some(Ok(v)),
                Ok(SessionItem::Invoke(call)) => {
                    // Answered with an error so the plugin does not wait.
                    let _ = call
                        .reply
                        .fail("backwards invocation is not available here")
                        .await;
                    let _ = call.reply.end().await;
                    None
                }
                Err(e) => Some(Err(e.into())),
            }
        })))
    }
}
