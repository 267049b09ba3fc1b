//! How an endpoint request reaches its plugin. Serving only needs "open an
//! `endpoint`/`invoke_endpoint` session and read its chunks", so it goes
//! through the [`Invoker`] trait: the daemon plugs in its dispatch path, and
//! tests can plug in a scripted plugin to drive the HTTP side exactly.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::app_state::AppState;
pub use crate::dispatch::ChunkStream;
use crate::dispatch::{self, InvokeRequest};
use crate::error::DaemonError;
use crate::runtime::SessionHeader;

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

/// The daemon's invoker: the same dispatch path as HTTP dispatch, so the
/// plugin's backwards calls (apps, storage…) are answered.
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
        let header = SessionHeader {
            endpoint_id: Some(call.endpoint_id),
            ..SessionHeader::default()
        };
        dispatch::invoke(
            &self.state,
            InvokeRequest {
                tenant_id: call.tenant_id,
                plugin_id: call.plugin_id,
                access_type: ACCESS_TYPE.to_owned(),
                action: ACTION.to_owned(),
                user_id: String::new(),
                header,
                payload: call.payload,
                timeout: Some(call.timeout),
            },
        )
        .await
    }
}
