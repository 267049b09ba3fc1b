//! The MCP gateway: a tenant's plugin tools and Dify apps served as MCP
//! servers over Streamable HTTP, through the `rmcp` SDK.
//!
//! - [`records`]: MCP server records and access tokens in the store;
//! - [`seal`]: provider credentials sealed at rest;
//! - [`schema`]: tool declarations and app forms → MCP tools;
//! - [`content`]: plugin tool chunks → MCP tool results;
//! - [`logging`]: `notifications/message` while a tool runs;
//! - [`apps`]: Dify apps run through the inner API;
//! - [`handler`]: the rmcp `ServerHandler` of one server;
//! - [`gateway`]: `/mcp/{server_id}/mcp` with bearer auth, Origin and Host checks;
//! - [`sessions`]: rmcp's sessions with the revision each negotiated;
//! - [`jsonrpc`]: malformed bodies and batches, which rmcp does not read;
//! - [`page`]: the page a browser sees at a server's URL;
//! - [`cli`]: `plugind mcp …`.

pub mod apps;
pub mod cli;
pub mod content;
pub mod gateway;
pub mod handler;
pub mod invoker;
pub mod jsonrpc;
pub mod logging;
pub mod page;
pub mod records;
pub mod schema;
pub mod seal;
pub mod sessions;

use serde_json::{Map, Value};

use crate::error::DaemonError;

pub use gateway::{server_path, McpGateway, PluginInvoker};
pub use records::{McpServer, McpStore, ServerConfig, TokenInfo};

/// Failures of the MCP layer, before they become HTTP answers or MCP errors.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The request names or configures something invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such server for this tenant.
    #[error("mcp server not found")]
    NotFound,
    /// Another server of the tenant already has this name.
    #[error("an mcp server named {0:?} already exists")]
    NameTaken(String),
    /// Sealed credentials could not be opened (wrong key or altered row).
    #[error("stored credentials cannot be opened; was MCP_ENCRYPTION_KEY changed?")]
    Unseal,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<McpError> for DaemonError {
    fn from(e: McpError) -> Self {
        match e {
            McpError::Invalid(m) => DaemonError::BadRequest(m),
            McpError::NameTaken(_) => DaemonError::BadRequest(e.to_string()),
            McpError::NotFound => DaemonError::NotFound(e.to_string()),
            McpError::Unseal => DaemonError::internal_msg(e.to_string()),
            McpError::Store(s) => s.into(),
        }
    }
}

impl From<sqlx::Error> for McpError {
    fn from(e: sqlx::Error) -> Self {
        McpError::Store(e.into())
    }
}

/// A server as listings show it (management API, `plugind mcp`): the
/// record and, as `path`, where MCP clients connect under the daemon's URL.
pub fn shown(server: &McpServer) -> Value {
    let mut v = serde_json::to_value(server).expect("servers serialize");
    v["path"] = Value::String(server_path(&server.id));
    v
}

/// The response chunks of one plugin session (the dispatch path's type).
pub use crate::dispatch::ChunkStream;

/// One tool call as the gateway hands it to the plugin invocation path.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub tenant_id: String,
    /// `author/name` of the installed plugin.
    pub plugin_id: String,
    pub user_id: String,
    /// Request fields: `provider`, `tool`, `tool_parameters`, `credentials`,
    /// `credential_type`.
    pub payload: Map<String, Value>,
}
