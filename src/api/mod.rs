//! The HTTP API: `/health/check` and the Dify-compatible management routes
//! under `/plugin/{tenant_id}`, guarded by the `X-Api-Key` check.

pub mod debugging;
pub mod dispatch;
pub mod endpoint;
pub mod envelope;
pub mod extract;
pub mod management;
pub mod mcp;
pub mod serverless;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app_state::AppState;
use crate::error::DaemonError;
use crate::settings::Platform;

/// Room for the multipart framing around an uploaded file.
const MULTIPART_SLACK: u64 = 1024 * 1024;

/// The daemon's router. Kept apart from serving so tests can drive it with
/// `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    let invoker = crate::mcp::invoker::RuntimeInvoker::new(state.clone());
    let gateway = crate::mcp::McpGateway::new(state.clone(), invoker);
    app_with_mcp(state, gateway)
}

/// [`app`] with a given MCP gateway (tests run tools through their own
/// invoker this way).
pub fn app_with_mcp(state: AppState, gateway: std::sync::Arc<crate::mcp::McpGateway>) -> Router {
    let upload_limit = state
        .settings
        .max_plugin_package_size
        .max(state.settings.max_bundle_package_size)
        .saturating_add(MULTIPART_SLACK);
    let endpoints = endpoint::routes(&state);
    let m = "/plugin/{tenant_id}/management";
    use management as h;
    let plugin_routes = Router::new()
        .route(
            &format!("{m}/install/upload/package"),
            post(h::upload_package).layer(DefaultBodyLimit::max(
                usize::try_from(upload_limit).unwrap_or(usize::MAX),
            )),
        )
        .route(
            &format!("{m}/install/upload/bundle"),
            post(h::upload_bundle).layer(DefaultBodyLimit::max(
                usize::try_from(upload_limit).unwrap_or(usize::MAX),
            )),
        )
        .route(
            &format!("{m}/install/identifiers"),
            post(h::install_identifiers),
        )
        .route(&format!("{m}/install/upgrade"), post(h::upgrade))
        .route(&format!("{m}/install/tasks"), get(h::list_tasks))
        .route(
            &format!("{m}/install/tasks/delete_all"),
            post(h::delete_all_tasks),
        )
        .route(&format!("{m}/install/tasks/{{id}}"), get(h::get_task))
        .route(
            &format!("{m}/install/tasks/{{id}}/delete"),
            post(h::delete_task),
        )
        .route(
            &format!("{m}/install/tasks/{{id}}/delete/{{*identifier}}"),
            post(h::delete_task_item),
        )
        .route(
            &format!("{m}/decode/from_identifier"),
            get(h::decode_from_identifier),
        )
        .route(&format!("{m}/fetch/manifest"), get(h::fetch_manifest))
        .route(&format!("{m}/fetch/identifier"), get(h::fetch_identifier))
        .route(&format!("{m}/fetch/readme"), get(h::fetch_readme))
        .route(&format!("{m}/uninstall"), post(h::uninstall))
        .route(&format!("{m}/list"), get(h::list_plugins))
        .route(
            &format!("{m}/installation/ids"),
            get(h::installed_plugin_ids),
        )
        .route(
            &format!("{m}/{{category}}/list"),
            get(h::list_plugins_by_category),
        )
        .route(&format!("{m}/models/bindings"), get(h::list_model_bindings))
        .route(
            &format!("{m}/installation/fetch/batch"),
            post(h::fetch_installations),
        )
        .route(
            &format!("{m}/installation/missing"),
            post(h::missing_installations),
        )
        .route(&format!("{m}/models"), get(h::list_models))
        .route(&format!("{m}/tools"), get(h::list_tools))
        .route(&format!("{m}/tool"), get(h::get_tool))
        .route(
            &format!("{m}/tools/check_existence"),
            post(h::check_tool_existence),
        )
        .route(
            &format!("{m}/agent_strategies"),
            get(h::list_agent_strategies),
        )
        .route(&format!("{m}/agent_strategy"), get(h::get_agent_strategy))
        .route(&format!("{m}/datasources"), get(h::list_datasources))
        .route(&format!("{m}/datasource"), get(h::get_datasource))
        .route(&format!("{m}/triggers"), get(h::list_triggers))
        .route(&format!("{m}/trigger"), get(h::get_trigger))
        .route("/plugin/{tenant_id}/asset/{id}", get(h::asset))
        // Dify asks with the trailing slash (the reference's route); without
        // it is answered the same.
        .route("/plugin/{tenant_id}/extract-asset/", get(h::extract_asset))
        .route("/plugin/{tenant_id}/extract-asset", get(h::extract_asset))
        .merge(mcp::routes(gateway.clone()))
        .merge(endpoints.management)
        .merge(debugging::routes(&state))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let mut router = Router::new()
        .route("/health/check", get(health_check))
        .merge(plugin_routes)
        .merge(dispatch::router(state.clone()))
        .merge(gateway.routes())
        .merge(serverless::routes());
    // As in the reference, a disabled feature's routes are absent (404).
    if state.settings.plugin_endpoint_enabled {
        router = router.merge(endpoints.public);
    }
    if state.settings.prometheus_enabled {
        router = router.route("/metrics", get(crate::metrics::handler));
    }
    router.with_state(state)
}

/// Refuses requests whose `X-Api-Key` is not SERVER_KEY. Both sides are
/// hashed first so the comparison is constant-time whatever their lengths.
async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("X-Api-Key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let expected = state.settings.server_key.expose().as_bytes();
    let same: bool = Sha256::digest(given)
        .as_slice()
        .ct_eq(Sha256::digest(expected).as_slice())
        .into();
    if !same {
        return DaemonError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// The reference answers a bare JSON object here, not an envelope
/// (`controllers/health_check.go`).
async fn health_check(State(state): State<AppState>) -> Json<serde_json::Value> {
    let platform = match state.settings.platform {
        Platform::Local => "local",
        Platform::Serverless => "serverless",
    };
    Json(serde_json::json!({
        "status": "ok",
        "pool_status": {},
        "version": env!("CARGO_PKG_VERSION"),
        "build_time": "",
        "platform": platform,
        "active_requests": 0,
        "active_dispatch_requests": 0,
    }))
}
