//! The rmcp [`ServerHandler`] of one MCP server record: lists its tools and
//! runs them, plugin tools through the plugin invocation path and Dify apps
//! through the inner API.
//!
//! Each request reads the server's [`Stamp`] (with the token check, in one
//! query); what the gateway built for the server (record, opened
//! credentials, plugin tools with their schemas) is kept in a [`Snapshot`]
//! and rebuilt only when the stamp moves. Edits, deletions, installs,
//! uninstalls and upgrades so take effect at once, even for open sessions,
//! while a call costs one store query.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, DiscoverResult, Implementation,
    InitializeRequestParams, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, ServerConfig,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use super::content::{error_result, Collector};
use super::logging::{self, Logger, Note, SessionLevel};
use super::records::{Credentials, McpServer, McpStore, Stamp, ToolSelection};
use super::schema::{self, Entry, Target};
use super::{apps, McpError, PluginInvoker, ToolCall};
use crate::app_state::AppState;
use crate::backwards::InnerApiClient;
use crate::store::ProviderCategory;

/// Providers read per page when listing a tenant's tools.
const PROVIDER_PAGE: i64 = 256;

/// What one server's requests need, valid while its [`Stamp`] holds.
pub struct Snapshot {
    pub stamp: Stamp,
    pub server: McpServer,
    /// The opened provider credentials; `None` when they do not open (the
    /// calls that need them then fail, the listing does not).
    pub credentials: Option<Credentials>,
    /// The plugin tools the server exposes, schemas built.
    pub plugin_entries: Vec<Entry>,
}

/// What every server's handler shares.
pub struct Core {
    pub state: AppState,
    pub records: McpStore,
    pub invoker: Arc<dyn PluginInvoker>,
    /// Dify's inner API, for app tools; `None` if it cannot be configured.
    pub inner: Option<InnerApiClient>,
    /// The latest snapshot of each server in use; entries go when the
    /// server is deleted through the API (a stale one is only replaced).
    pub snapshots: Mutex<HashMap<String, Arc<Snapshot>>>,
}

impl Core {
    /// A gateway core with no snapshots yet.
    pub fn new(
        state: AppState,
        records: McpStore,
        invoker: Arc<dyn PluginInvoker>,
        inner: Option<InnerApiClient>,
    ) -> Self {
        Self {
            state,
            records,
            invoker,
            inner,
            snapshots: Mutex::new(HashMap::new()),
        }
    }

    /// The server's snapshot for `stamp` (read here when `None`), rebuilt
    /// if the kept one is older; `None` when the server does not exist.
    pub async fn snapshot(
        &self,
        server_id: &str,
        stamp: Option<Stamp>,
    ) -> Result<Option<Arc<Snapshot>>, McpError> {
        let stamp = match stamp {
            Some(s) => s,
            None => match self.records.stamp(server_id).await? {
                Some(s) => s,
                None => {
                    self.forget(server_id);
                    return Ok(None);
                }
            },
        };
        let kept = self
            .snapshots
            .lock()
            .expect("snapshots lock")
            .get(server_id)
            .filter(|s| s.stamp == stamp)
            .cloned();
        if kept.is_some() {
            return Ok(kept);
        }
        // Built from reads made after the stamp's: if something changes
        // meanwhile, the next request's stamp differs and rebuilds.
        let Some(server) = self.records.get_by_id(server_id).await? else {
            self.forget(server_id);
            return Ok(None);
        };
        let credentials = match self.records.credentials(&server) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(server = %server.id, error = %e, "cannot open stored credentials");
                None
            }
        };
        let plugin_entries = self.plugin_entries(&server).await?;
        let snapshot = Arc::new(Snapshot {
            stamp,
            server,
            credentials,
            plugin_entries,
        });
        self.snapshots
            .lock()
            .expect("snapshots lock")
            .insert(server_id.to_owned(), snapshot.clone());
        Ok(Some(snapshot))
    }

    /// Drops a server's snapshot.
    pub fn forget(&self, server_id: &str) {
        self.snapshots
            .lock()
            .expect("snapshots lock")
            .remove(server_id);
    }

    /// The plugin tools `server` exposes.
    pub async fn plugin_entries(&self, server: &McpServer) -> Result<Vec<Entry>, McpError> {
        let list = match &server.config.tools {
            ToolSelection::Keyword(k) if k == "all" => None,
            ToolSelection::List(list) if !list.is_empty() => Some(list),
            _ => return Ok(Vec::new()),
        };
        let mut providers = Vec::new();
        for page in 1.. {
            let batch = self
                .state
                .store
                .list_providers(
                    &server.tenant_id,
                    ProviderCategory::Tool,
                    page,
                    PROVIDER_PAGE,
                )
                .await?;
            let done = (batch.len() as i64) < PROVIDER_PAGE;
            providers.extend(batch);
            if done {
                break;
            }
        }
        let mut out = Vec::new();
        let mut names = HashSet::new();
        for p in providers {
            let Some(decl) = self
                .state
                .store
                .declaration(&p.plugin_unique_identifier)
                .await?
            else {
                continue;
            };
            let Some(provider_decl) = decl.get("tool") else {
                continue;
            };
            let provider = provider_decl
                .pointer("/identity/name")
                .and_then(Value::as_str)
                .unwrap_or(&p.provider);
            for t in provider_decl
                .get("tools")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(tool) = t.pointer("/identity/name").and_then(Value::as_str) else {
                    continue;
                };
                let chosen = match list {
                    None => Some(None),
                    Some(list) => list
                        .iter()
                        .find(|r| {
                            r.provider == provider
                                && r.tool == tool
                                && r.plugin_id.as_deref().is_none_or(|id| id == p.plugin_id)
                        })
                        .map(|r| r.name.as_deref()),
                };
                let Some(alias) = chosen else {
                    continue;
                };
                let fixed = server
                    .config
                    .fixed_values
                    .get(&format!("{provider}/{tool}"));
                let Some(mut entry) = schema::plugin_tool(&p.plugin_id, provider, t, fixed) else {
                    continue;
                };
                if let Some(alias) = alias {
                    entry.tool.name = alias.to_owned().into();
                }
                if names.insert(entry.tool.name.clone()) {
                    out.push(entry);
                } else {
                    tracing::warn!(server = %server.id, name = %entry.tool.name, "two tools share a name; keeping the first");
                }
            }
        }
        Ok(out)
    }

    /// The app tools `server` exposes. Apps whose form cannot be read are
    /// left out (and logged) rather than failing the whole listing.
    pub async fn app_entries(&self, server: &McpServer) -> Vec<Entry> {
        let mut out = Vec::new();
        let Some(inner) = &self.inner else {
            return out;
        };
        for app in &server.config.apps {
            match apps::fetch_info(inner, &server.tenant_id, &server.user_id, &app.app_id).await {
                Ok(info) => out.push(schema::app_tool(app, &info)),
                Err(e) => {
                    tracing::warn!(server = %server.id, app = %app.app_id, error = %e, "cannot read app form")
                }
            }
        }
        out
    }
}

/// Reports a running call to its client: `notifications/progress` when
/// the request carried a progress token, one step per chunk or event, and
/// `notifications/message` as [`logging`] decides.
pub struct Reporter {
    peer: Peer<RoleServer>,
    token: Option<ProgressToken>,
    count: u32,
    logger: Logger,
}

impl Reporter {
    /// The reporter of one call of the tool `tool`.
    pub fn new(context: &RequestContext<RoleServer>, level: &SessionLevel, tool: &str) -> Self {
        Self {
            peer: context.peer.clone(),
            token: context.meta.get_progress_token(),
            count: 0,
            logger: Logger::new(
                context.peer.clone(),
                logging::threshold(context, level),
                tool.to_owned(),
            ),
        }
    }

    /// One more step, with what it is worth reporting. A client that went
    /// away does not fail the call.
    pub async fn step(&mut self, note: Option<Note>) {
        if let Some(token) = &self.token {
            self.count += 1;
            let mut p = ProgressNotificationParam::new(token.clone(), f64::from(self.count));
            if let Some(n) = &note {
                p = p.with_message(n.message.clone());
            }
            if let Err(e) = self.peer.notify_progress(p).await {
                tracing::debug!(error = %e, "progress notification not delivered");
            }
        }
        if let Some(n) = note {
            self.logger.log(n.level, n.data).await;
        }
    }
}

/// The handler of one server; rmcp makes one per session (or per request
/// in the stateless era).
#[derive(Clone)]
pub struct McpHandler {
    core: Arc<Core>,
    server_id: String,
    log_level: SessionLevel,
}

fn internal(e: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(e.to_string(), None)
}

impl McpHandler {
    pub fn new(core: Arc<Core>, server_id: String) -> Self {
        Self {
            core,
            server_id,
            log_level: SessionLevel::default(),
        }
    }

    /// The server's snapshot, with the stamp the gateway read along with
    /// the token check when the request came over HTTP.
    async fn snapshot(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<Arc<Snapshot>, ErrorData> {
        let stamp = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Stamp>())
            .copied();
        self.core
            .snapshot(&self.server_id, stamp)
            .await
            .map_err(internal)?
            .ok_or_else(|| ErrorData::invalid_request("this MCP server no longer exists", None))
    }

    fn info_for(&self, server: &McpServer) -> ServerConfig {
        let mut info = self.get_info().with_server_info(Implementation::new(
            server.name.clone(),
            env!("CARGO_PKG_VERSION"),
        ));
        if !server.description.is_empty() {
            info = info.with_instructions(server.description.clone());
        }
        info
    }

    async fn call_plugin(
        &self,
        snapshot: &Snapshot,
        entry: Entry,
        args: Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let Target::Plugin {
            plugin_id,
            provider,
            tool,
        } = entry.target
        else {
            unreachable!("plugin entries have plugin targets");
        };
        let mut params = args;
        params.extend(entry.fixed);
        let server = &snapshot.server;
        let credentials = snapshot
            .credentials
            .as_ref()
            .ok_or_else(|| internal(McpError::Unseal))?;
        let mut payload = Map::new();
        payload.insert("provider".into(), json!(provider));
        payload.insert("tool".into(), json!(tool));
        payload.insert("tool_parameters".into(), Value::Object(params));
        payload.insert(
            "credentials".into(),
            Value::Object(credentials.get(&provider).cloned().unwrap_or_default()),
        );
        payload.insert("credential_type".into(), json!("api-key"));
        let call = ToolCall {
            tenant_id: server.tenant_id.clone(),
            plugin_id,
            user_id: server.user_id.clone(),
            payload,
        };
        let mut reporter = Reporter::new(context, &self.log_level, &entry.tool.name);
        let mut stream = match self.core.invoker.invoke(call).await {
            Ok(s) => s,
            Err(e) => return Ok(error_result(&e)),
        };
        let mut collector = Collector::new();
        loop {
            // Dropping the stream on cancellation cancels the plugin session.
            let item = tokio::select! {
                _ = context.ct.cancelled() => {
                    return Err(ErrorData::internal_error("request cancelled", None));
                }
                item = stream.next() => item,
            };
            match item {
                None => break,
                Some(Ok(chunk)) => {
                    let note = collector.push(&chunk);
                    if collector.failed() {
                        break;
                    }
                    reporter.step(note).await;
                }
                Some(Err(e)) => return Ok(error_result(&e)),
            }
        }
        Ok(collector.finish(entry.has_output_schema))
    }
}

impl ServerHandler for McpHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(logging::capabilities())
            .with_server_info(Implementation::new("plugind", env!("CARGO_PKG_VERSION")))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let snapshot = self.snapshot(&context).await?;
        let negotiated = self.negotiate_initialize(&request)?;
        let info = self
            .info_for(&snapshot.server)
            .with_protocol_version(negotiated.protocol_version);
        Ok(info)
    }

    async fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, ErrorData> {
        let snapshot = self.snapshot(&context).await?;
        Ok(DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.info_for(&snapshot.server),
        ))
    }

    // Deprecated in rmcp with the 2026-07-28 revision, still the handshake
    // era's way to choose a level (see [`logging`]).
    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.log_level.set(request.level.into());
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let snapshot = self.snapshot(&context).await?;
        let mut tools: Vec<_> = snapshot
            .plugin_entries
            .iter()
            .map(|e| e.tool.clone())
            .collect();
        tools.extend(
            self.core
                .app_entries(&snapshot.server)
                .await
                .into_iter()
                .map(|e| e.tool),
        );
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let snapshot = self.snapshot(&context).await?;
        let server = &snapshot.server;
        let args = request.arguments.clone().unwrap_or_default();
        let name = request.name.as_ref();
        if let Some(app) = server
            .config
            .apps
            .iter()
            .find(|a| schema::app_tool_name(a) == name)
            .cloned()
        {
            let Some(inner) = &self.core.inner else {
                return Err(internal("Dify's inner API is not configured"));
            };
            let mut reporter = Reporter::new(&context, &self.log_level, name);
            let run = apps::run(
                inner,
                &server.tenant_id,
                &server.user_id,
                &app,
                args,
                &mut reporter,
            );
            return tokio::select! {
                _ = context.ct.cancelled() => Err(ErrorData::internal_error("request cancelled", None)),
                result = run => Ok(result.into()),
            };
        }
        let entry = snapshot
            .plugin_entries
            .iter()
            .find(|e| e.tool.name == name)
            .cloned()
            .ok_or_else(|| ErrorData::invalid_params(format!("unknown tool: {name}"), None))?;
        Ok(self
            .call_plugin(&snapshot, entry, args, &context)
            .await?
            .into())
    }
}
