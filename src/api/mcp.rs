//! Management of a tenant's MCP servers under `/plugin/{tenant_id}/mcp`
//! (X-Api-Key, envelope): servers and their access tokens. The servers
//! themselves are served by [`crate::mcp::gateway`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::api::envelope::{ok, Envelope};
use crate::api::extract::{ApiError, Input};
use crate::error::DaemonError;
use crate::mcp::records::{NewServer, ServerPatch};
use crate::mcp::{shown, McpError, McpGateway};

type Result<T = Value> = std::result::Result<Envelope<T>, ApiError>;

impl From<McpError> for ApiError {
    fn from(e: McpError) -> Self {
        match e {
            McpError::Invalid(m) => ApiError::Invalid(m),
            other => ApiError::Daemon(other.into()),
        }
    }
}

/// The management routes, guarded by the caller's X-Api-Key layer.
pub fn routes<S: Clone + Send + Sync + 'static>(gateway: Arc<McpGateway>) -> Router<S> {
    let base = "/plugin/{tenant_id}/mcp/servers";
    Router::new()
        .route(base, get(list).post(create))
        .route(&format!("{base}/{{id}}"), get(fetch))
        .route(&format!("{base}/{{id}}/update"), post(update))
        .route(&format!("{base}/{{id}}/delete"), post(delete))
        .route(
            &format!("{base}/{{id}}/tokens"),
            get(list_tokens).post(create_token),
        )
        .route(
            &format!("{base}/{{id}}/tokens/{{token_id}}/delete"),
            post(delete_token),
        )
        .with_state(gateway)
}

fn body<T: DeserializeOwned>(input: Input) -> std::result::Result<T, ApiError> {
    serde_json::from_value(Value::Object(input.0))
        .map_err(|e| ApiError::Invalid(format!("invalid body: {e}")))
}

async fn list(State(gw): State<Arc<McpGateway>>, Path(tenant_id): Path<String>) -> Result {
    let servers = gw.records().list(&tenant_id).await?;
    ok(json!({"list": servers.iter().map(shown).collect::<Vec<_>>()})).map_err(Into::into)
}

async fn create(
    State(gw): State<Arc<McpGateway>>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let new: NewServer = body(input)?;
    let server = gw.records().create(&tenant_id, new).await?;
    ok(shown(&server)).map_err(Into::into)
}

async fn fetch(
    State(gw): State<Arc<McpGateway>>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> Result {
    let server = gw
        .records()
        .get(&tenant_id, &id)
        .await?
        .ok_or(McpError::NotFound)?;
    ok(shown(&server)).map_err(Into::into)
}

async fn update(
    State(gw): State<Arc<McpGateway>>,
    Path((tenant_id, id)): Path<(String, String)>,
    input: Input,
) -> Result {
    let patch: ServerPatch = body(input)?;
    let server = gw.records().update(&tenant_id, &id, patch).await?;
    ok(shown(&server)).map_err(Into::into)
}

async fn delete(
    State(gw): State<Arc<McpGateway>>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> Result<bool> {
    let deleted = gw.records().delete(&tenant_id, &id).await?;
    if deleted {
        gw.forget(&id);
    }
    ok(deleted).map_err(Into::into)
}

async fn list_tokens(
    State(gw): State<Arc<McpGateway>>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> Result {
    if gw.records().get(&tenant_id, &id).await?.is_none() {
        return Err(McpError::NotFound.into());
    }
    let tokens = gw.records().list_tokens(&tenant_id, &id).await?;
    ok(json!({"list": tokens})).map_err(Into::into)
}

/// The token itself is in this answer only; the store keeps its hash.
async fn create_token(
    State(gw): State<Arc<McpGateway>>,
    Path((tenant_id, id)): Path<(String, String)>,
    input: Input,
) -> Result {
    let name = input.opt_str("name").unwrap_or_default();
    let (info, token) = gw.records().create_token(&tenant_id, &id, &name).await?;
    ok(json!({"token": token, "info": info})).map_err(Into::into)
}

/// Revoking a token also ends the server's open sessions, which may have
/// been opened with it.
async fn delete_token(
    State(gw): State<Arc<McpGateway>>,
    Path((tenant_id, id, token_id)): Path<(String, String, String)>,
) -> Result<bool> {
    let deleted = gw
        .records()
        .delete_token(&tenant_id, &id, &token_id)
        .await
        .map_err(DaemonError::from)?;
    if deleted {
        gw.forget(&id);
    }
    ok(deleted).map_err(Into::into)
}
