//! The production [`PluginInvoker`]: a tool call runs as a `tool`/
//! `invoke_tool` session on the tenant's installed plugin, whatever host
//! runs it (local, debug or serverless).

use std::sync::Arc;

use futures::StreamExt;

use super::{ChunkStream, PluginInvoker, ToolCall};
use crate::app_state::AppState;
use crate::error::DaemonError;
use crate::runtime::{SessionItem, SessionRequest};

/// Runs tools through the runtime registry of the daemon's state.
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
        let installation = self
            .state
            .store
            .installation_by_plugin_id(&call.tenant_id, &call.plugin_id)
            .await?
            .ok_or(DaemonError::PluginNotFound)?;
        let identifier = installation.plugin_unique_identifier;
        let runtime = self.state.registry.get(&identifier).ok_or_else(|| {
            DaemonError::internal_msg(format!("plugin {identifier} is not running"))
        })?;
        let session = runtime
            .invoke(SessionRequest::new(
                "tool",
                "invoke_tool",
                call.user_id,
                call.payload,
            ))
            .await?;
        let chunks = session.filter_map(|item| async move {
            match item {
                Ok(SessionItem::Chunk(chunk)) => Some(Ok(chunk)),
                // Backwards calls are served by the dispatch path (issue 7
                // switches to it once it is in the tree); refuse them so the
                // plugin is not left waiting.
                Ok(SessionItem::Invoke(invoke)) => {
                    let _ = invoke
                        .reply
                        .fail("backwards calls are not available to MCP tool calls")
                        .await;
                    let _ = invoke.reply.end().await;
                    None
                }
                Err(e) => Some(Err(DaemonError::from(e))),
            }
        });
        Ok(Box::pin(chunks))
    }
}
