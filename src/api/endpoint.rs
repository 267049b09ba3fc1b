//! Endpoint routes: management under `/plugin/{tenant_id}/endpoint/…`
//! (setup, list, list/plugin, update, remove, enable, disable; answers as
//! Dify's `api/core/plugin/impl/endpoint.py` parses them) and the public,
//! unauthenticated `/e/{hook_id}/…` that serves plugin endpoints
//! (reference: `internal/server/controllers/endpoint.go`, `http_server.go`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Router};
use serde_json::{Map, Value};

use super::envelope::Envelope;
use super::extract::{ApiError, Input};
use crate::app_state::AppState;
use crate::endpoint::invoke::RuntimeInvoker;
use crate::endpoint::service::MAX_PAGE_SIZE;
use crate::endpoint::{EndpointServer, EndpointService, Invoker, ServeOptions};
use crate::error::DaemonError;

type Result<T = Response> = std::result::Result<T, ApiError>;

/// What the endpoint handlers share.
#[derive(Clone)]
pub struct EndpointContext {
    pub service: EndpointService,
    pub server: EndpointServer,
}

impl EndpointContext {
    /// The daemon's context: Dify's inner API from the settings, plugins
    /// reached through the runtime registry.
    pub fn from_state(state: &AppState) -> std::result::Result<Self, DaemonError> {
        Self::with_invoker(state, Arc::new(RuntimeInvoker::new(state.clone())))
    }

    /// A context with another way of reaching plugins.
    pub fn with_invoker(
        state: &AppState,
        invoker: Arc<dyn Invoker>,
    ) -> std::result::Result<Self, DaemonError> {
        let service = EndpointService::new(state.store.clone(), Arc::new(state.inner_api.clone()));
        let options = ServeOptions {
            max_body: crate::endpoint::serve::DEFAULT_MAX_BODY,
            timeout: Duration::from_secs(state.settings.plugin_max_execution_timeout),
        };
        let server = EndpointServer::new(service.clone(), invoker, options);
        Ok(Self { service, server })
    }
}

/// The two routers: management (to be put behind the API key check) and
/// the public `/e/…` routes.
pub struct EndpointRoutes {
    pub management: Router<AppState>,
    pub public: Router<AppState>,
}

/// Builds the endpoint routes over `ctx`.
pub fn routes_with(ctx: EndpointContext) -> EndpointRoutes {
    let ctx = Arc::new(ctx);
    let e = "/plugin/{tenant_id}/endpoint";
    let management = Router::new()
        .route(&format!("{e}/setup"), post(setup))
        .route(&format!("{e}/list"), get(list))
        .route(&format!("{e}/list/plugin"), get(list_plugin))
        .route(&format!("{e}/update"), post(update))
        .route(&format!("{e}/remove"), post(remove))
        .route(&format!("{e}/enable"), post(enable))
        .route(&format!("{e}/disable"), post(disable))
        .layer(Extension(ctx.clone()));
    // Every method is routed: the reference forgets PATCH, and which
    // methods a path accepts is the plugin's business.
    let public = Router::new()
        .route("/e/{hook_id}", any(serve_root))
        .route("/e/{hook_id}/", any(serve_root))
        .route("/e/{hook_id}/{*path}", any(serve_path))
        .layer(Extension(ctx));
    EndpointRoutes { management, public }
}

/// The daemon's endpoint routes. If the context cannot be built (the
/// inner API client fails to start) every endpoint route answers that
/// error instead of the daemon refusing to start.
pub fn routes(state: &AppState) -> EndpointRoutes {
    match EndpointContext::from_state(state) {
        Ok(ctx) => routes_with(ctx),
        Err(err) => {
            err.log();
            let message = err.to_string();
            let broken = move || {
                let message = message.clone();
                async move { DaemonError::internal_msg(message).into_response() }
            };
            EndpointRoutes {
                management: Router::new()
                    .route("/plugin/{tenant_id}/endpoint/{*rest}", any(broken.clone())),
                public: Router::new().route("/e/{*rest}", any(broken)),
            }
        }
    }
}

fn done() -> Result {
    Ok(Envelope::success(true).into_response())
}

fn settings(input: &Input) -> Result<Map<String, Value>> {
    match input.0.get("settings") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(ApiError::Invalid("settings must be an object".into())),
    }
}

fn page(input: &Input) -> Result<(i64, i64)> {
    let (page, size) = input.page()?;
    if size > MAX_PAGE_SIZE {
        return Err(ApiError::Invalid(format!(
            "page_size must be at most {MAX_PAGE_SIZE}"
        )));
    }
    Ok((page, size))
}

async fn setup(
    Extension(ctx): Extension<Arc<EndpointContext>>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let identifier = input.identifier("plugin_unique_identifier")?;
    let user_id = input.str("user_id")?;
    let name = input.str("name")?;
    let settings = settings(&input)?;
    ctx.service
        .setup(
            &tenant_id,
            &user_id,
            &identifier.to_string(),
            &name,
            settings,
        )
        .await
        .map_err(DaemonError::from)?;
    done()
}

async fn list(
    Extension(ctx): Extension<Arc<EndpointContext>>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let (page, size) = page(&input)?;
    let items = ctx
        .service
        .list(&tenant_id, None, page, size)
        .await
        .map_err(DaemonError::from)?;
    Ok(Envelope::success(items).into_response())
}

async fn list_plugin(
    Extension(ctx): Extension<Arc<EndpointContext>>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let plugin_id = input.str("plugin_id")?;
    let (page, size) = page(&input)?;
    let items = ctx
        .service
        .list(&tenant_id, Some(&plugin_id), page, size)
        .await
        .map_err(DaemonError::from)?;
    Ok(Envelope::success(items).into_response())
}

async fn update(
    Extension(ctx): Extension<Arc<EndpointContext>>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let endpoint_id = input.str("endpoint_id")?;
    let user_id = input.str("user_id")?;
    let name = input.str("name")?;
    let settings = settings(&input)?;
    ctx.service
        .update(&tenant_id, &user_id, &endpoint_id, &name, settings)
        .await
        .map_err(DaemonError::from)?;
    done()
}

async fn remove(
    Extension(ctx): Extension<Arc<EndpointContext>>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let endpoint_id = input.str("endpoint_id")?;
    ctx.service
        .remove(&tenant_id, &endpoint_id)
        .await
        .map_err(DaemonError::from)?;
    done()
}

async fn set_enabled(ctx: &EndpointContext, tenant_id: &str, input: &Input, on: bool) -> Result {
    let endpoint_id = input.str("endpoint_id")?;
    ctx.service
        .set_enabled(tenant_id, &endpoint_id, on)
        .await
        .map_err(DaemonError::from)?;
    done()
}

async fn enable(
    Extension(ctx): Extension<Arc<EndpointContext>>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    set_enabled(&ctx, &tenant_id, &input, true).await
}

async fn disable(
    Extension(ctx): Extension<Arc<EndpointContext>>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    set_enabled(&ctx, &tenant_id, &input, false).await
}

/// The path after `/e/{hook_id}`, still percent-encoded as the caller sent
/// it. The router hands over the hook id decoded, so its length says
/// nothing about where it ends in the URI (`%30%34…` is three times as
/// long as `04…`): the raw hook segment ends at the first `/` after `/e/`,
/// since an encoded `%2F` does not split segments.
fn raw_suffix(uri_path: &str) -> &str {
    let rest = uri_path.strip_prefix("/e/").unwrap_or_default();
    rest.find('/').map_or("", |slash| &rest[slash..])
}

async fn serve_root(
    Extension(ctx): Extension<Arc<EndpointContext>>,
    Path(hook_id): Path<String>,
    req: Request,
) -> Response {
    let path = raw_suffix(req.uri().path()).to_owned();
    ctx.server.handle(&hook_id, &path, req).await
}

async fn serve_path(
    Extension(ctx): Extension<Arc<EndpointContext>>,
    Path((hook_id, _)): Path<(String, String)>,
    req: Request,
) -> Response {
    let path = raw_suffix(req.uri().path()).to_owned();
    ctx.server.handle(&hook_id, &path, req).await
}

#[cfg(test)]
mod tests {
    use super::raw_suffix;

    #[test]
    fn the_suffix_follows_the_raw_hook_segment() {
        assert_eq!(raw_suffix("/e/abc"), "");
        assert_eq!(raw_suffix("/e/abc/"), "/");
        assert_eq!(raw_suffix("/e/abc/x/y"), "/x/y");
        assert_eq!(raw_suffix("/e/%61%62%63/x%2Fy/%7E"), "/x%2Fy/%7E");
    }
}
