//! The production [`PluginInvoker`]: a tool call runs as a `tool`/
//! `invoke_tool` session through [`crate::dispatch::invoke`], the same path
//! as HTTP dispatch, whatever host runs the plugin (local, debug or
//! serverless) and with the plugin's backwards calls answered.

use std::sync::Arc;

use super::{ChunkStream, PluginInvoker, ToolCall};
use crate::app_state::AppState;
use crate::dispatch::{self, InvokeRequest};
use crate::error::DaemonError;
use crate::runtime::SessionHeader;

/// Runs tools through the daemon's dispatch path.
#[derive(Clone)]
pub struct RuntimeInvoker {
    state: AppState,
}

impl RuntimeInvoker {
    pub fn new(state: AppState) -> Arc<Self> {
        Arc::new(Self { state })
    }
}

#[async_trait::async_trait]
impl PluginInvoker for RuntimeInvoker {
    async fn invoke(&self, call: ToolCall) -> Result<ChunkStream, DaemonError> {
        dispatch::invoke(
            &self.state,
            InvokeRequest {
                tenant_id: call.tenant_id,
                plugin_id: call.plugin_id,
                access_type: "tool".to_owned(),
                action: "invoke_tool".to_owned(),
                user_id: call.user_id,
                header: SessionHeader::default(),
                payload: call.payload,
                timeout: None,
            },
        )
        .await
    }
}
