//! The HTTP API: the Dify-compatible management and dispatch routes.

pub mod envelope;

use axum::routing::get;
use axum::Router;

/// The daemon's router. Kept apart from serving so tests can drive it with
/// `tower::ServiceExt::oneshot`.
pub fn app() -> Router {
    Router::new().route("/health/check", get(health_check))
}

async fn health_check() -> envelope::ApiResult<serde_json::Value> {
    envelope::ok(serde_json::json!({"status": "ok", "pool_status": {}}))
}
