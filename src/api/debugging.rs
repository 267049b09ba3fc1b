//! `POST /plugin/{tenant_id}/debugging/key`: the tenant's key for debugging
//! plugins (reference: `controllers/remote_debugging.go`,
//! `service/debugging.go`). Mounted only when remote installing is enabled,
//! as in the reference.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::Router;
use serde::Serialize;

use super::envelope::{ok, ApiResult};
use crate::app_state::AppState;
use crate::debug::KEY_TTL;

/// The reply: `{"key": uuid}`.
#[derive(Debug, Serialize)]
pub struct DebuggingKey {
    pub key: String,
}

/// The debugging routes, empty when PLUGIN_REMOTE_INSTALLING_ENABLED is off.
/// The caller applies the API key check.
pub fn routes(state: &AppState) -> Router<AppState> {
    if !state.settings.plugin_remote_installing_enabled {
        return Router::new();
    }
    Router::new().route("/plugin/{tenant_id}/debugging/key", post(debugging_key))
}

/// Returns the tenant's key, creating it when missing or expired; each call
/// pushes its expiry two hours out.
pub async fn debugging_key(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> ApiResult<DebuggingKey> {
    let key = state.store.debugging_key(&tenant_id, KEY_TTL).await?;
    ok(DebuggingKey { key })
}
