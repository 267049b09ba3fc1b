//! The management routes under `/plugin/{tenant_id}/management` and the
//! asset route (reference: `internal/server/controllers/plugins.go` and the
//! services in `internal/service/`; shapes as Dify's
//! `api/core/plugin/impl/*.py` parse them).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::envelope::Envelope;
use super::extract::{parse_identifier, ApiError, Input};
use crate::app_state::AppState;
use crate::error::DaemonError;
use crate::package::{PluginCategory, PluginUniqueIdentifier};
use crate::store::{Installation, ProviderCategory, ProviderInstallation};

type Result<T = Response> = std::result::Result<T, ApiError>;

fn ok(data: impl serde::Serialize) -> Result {
    Ok(Envelope::success(data).into_response())
}

fn too_large() -> ApiError {
    DaemonError::BadRequest("file size exceeds the maximum limit".into()).into()
}

/// Reads one uploaded file field (at most `max` bytes) and the
/// `verify_signature` flag from a multipart form.
async fn read_upload(
    multipart: std::result::Result<Multipart, MultipartRejection>,
    file_field: &str,
    max: u64,
) -> Result<(Bytes, bool)> {
    let mut multipart = multipart.map_err(|e| DaemonError::BadRequest(e.body_text()))?;
    let mut file = None;
    let mut verify = false;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(DaemonError::BadRequest(e.body_text()).into()),
        };
        match field.name() {
            Some(name) if name == file_field => {
                let mut field = field;
                let mut buf = Vec::new();
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            if (buf.len() + chunk.len()) as u64 > max {
                                return Err(too_large());
                            }
                            buf.extend_from_slice(&chunk);
                        }
                        Ok(None) => break,
                        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                            return Err(too_large())
                        }
                        Err(e) => return Err(DaemonError::BadRequest(e.body_text()).into()),
                    }
                }
                file = Some(Bytes::from(buf));
            }
            Some("verify_signature") => {
                verify = field
                    .text()
                    .await
                    .map_err(|e| DaemonError::BadRequest(e.body_text()))?
                    == "true";
            }
            _ => {}
        }
    }
    let file = file.ok_or_else(|| {
        DaemonError::BadRequest(format!("http: no such file: {file_field} is required"))
    })?;
    Ok((file, verify))
}

/// `POST install/upload/package`: multipart `dify_pkg` + `verify_signature`.
pub async fn upload_package(
    State(state): State<AppState>,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Result {
    let max = state.packages.settings().max_package_size;
    let (bytes, verify) = read_upload(multipart, "dify_pkg", max).await?;
    ok(state.packages.upload(bytes, verify).await?)
}

/// `POST install/upload/bundle`: multipart `dify_bundle` + `verify_signature`
/// → one `{type, value}` per dependency of the bundle.
pub async fn upload_bundle(
    State(state): State<AppState>,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Result {
    let max = state.packages.settings().max_bundle_size;
    let (bytes, verify) = read_upload(multipart, "dify_bundle", max).await?;
    ok(state.packages.upload_bundle(bytes, verify).await?)
}

#[derive(Deserialize)]
struct InstallRequest {
    plugin_unique_identifiers: Vec<String>,
    source: String,
    #[serde(default)]
    metas: Option<Vec<Option<Value>>>,
}

/// `POST install/identifiers` → `{all_installed, task_id}`.
pub async fn install_identifiers(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let req: InstallRequest = input.parse()?;
    if req.source.is_empty() {
        return Err(ApiError::Invalid("source is required".into()));
    }
    if req.plugin_unique_identifiers.len() > 64 {
        return Err(ApiError::Invalid("at most 64 plugins at once".into()));
    }
    let ids = req
        .plugin_unique_identifiers
        .iter()
        .map(|s| parse_identifier(s))
        .collect::<Result<Vec<_>>>()?;
    let metas: Vec<Value> = req
        .metas
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.unwrap_or_else(|| json!({})))
        .collect();
    if metas.len() != ids.len() {
        return Err(DaemonError::BadRequest(
            "the number of metas must be equal to the number of plugin unique identifiers".into(),
        )
        .into());
    }
    ok(state
        .installer
        .install(&tenant_id, &ids, &req.source, metas)
        .await?)
}

#[derive(Deserialize)]
struct UpgradeRequest {
    original_plugin_unique_identifier: String,
    new_plugin_unique_identifier: String,
    source: String,
    #[serde(default)]
    meta: Option<Value>,
}

/// `POST install/upgrade` → `{all_installed, task_id}`.
pub async fn upgrade(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let req: UpgradeRequest = input.parse()?;
    if req.source.is_empty() {
        return Err(ApiError::Invalid("source is required".into()));
    }
    let original = parse_identifier(&req.original_plugin_unique_identifier)?;
    let new = parse_identifier(&req.new_plugin_unique_identifier)?;
    if original == new {
        return Err(DaemonError::BadRequest(
            "original and new plugin unique identifier are the same".into(),
        )
        .into());
    }
    if original.plugin_id() != new.plugin_id() {
        return Err(
            DaemonError::BadRequest("original and new plugin id are different".into()).into(),
        );
    }
    let meta = req
        .meta
        .filter(|m| !m.is_null())
        .unwrap_or_else(|| json!({}));
    ok(state
        .installer
        .upgrade(&tenant_id, &original, &new, &req.source, meta)
        .await?)
}

/// `GET install/tasks?page&page_size`.
pub async fn list_tasks(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let (page, size) = input.page()?;
    ok(state.store.list_tasks(&tenant_id, page, size).await?)
}

/// `GET install/tasks/{id}`.
pub async fn get_task(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> Result {
    // The reference answers an internal error for a missing task; not found
    // is what happened.
    match state.store.task(&tenant_id, &id).await? {
        Some(task) => ok(task),
        None => Err(DaemonError::NotFound("install task not found".into()).into()),
    }
}

/// Refuses an installation or task id that is not a UUID. The reference
/// looks such an id up in a `uuid` column, which PostgreSQL refuses with an
/// internal error; it is the caller's mistake, so it is answered as one. A
/// well-formed id that names nothing of this tenant's is not an error: the
/// reference answers `true` for it, and so does this daemon.
fn require_uuid(name: &str, value: &str) -> Result<()> {
    uuid::Uuid::parse_str(value).map(|_| ()).map_err(|_| {
        DaemonError::BadRequest(format!("{name} must be a UUID, got {value:?}")).into()
    })
}

/// `POST install/tasks/{id}/delete` → `true`, also when the tenant has no
/// such task (reference: `DeletePluginInstallationTask` deletes by id and
/// tenant and reports no count).
pub async fn delete_task(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> Result {
    require_uuid("task id", &id)?;
    state.store.delete_task(&tenant_id, &id).await?;
    ok(true)
}

/// `POST install/tasks/delete_all`.
pub async fn delete_all_tasks(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result {
    state.store.delete_all_tasks(&tenant_id).await?;
    ok(true)
}

/// `POST install/tasks/{id}/delete/{*identifier}`.
pub async fn delete_task_item(
    State(state): State<AppState>,
    Path((tenant_id, id, identifier)): Path<(String, String, String)>,
) -> Result {
    require_uuid("task id", &id)?;
    let identifier: PluginUniqueIdentifier = identifier
        .trim_start_matches('/')
        .parse()
        .map_err(|e: crate::package::IdentifierError| DaemonError::BadRequest(e.to_string()))?;
    state
        .store
        .delete_task_item(&tenant_id, &id, &identifier.to_string())
        .await?;
    ok(true)
}

/// `GET decode/from_identifier` (identifier in the query or a JSON body).
pub async fn decode_from_identifier(State(state): State<AppState>, input: Input) -> Result {
    let id = input.identifier("plugin_unique_identifier")?;
    ok(state.packages.decode_from_identifier(&id).await?)
}

/// `GET fetch/manifest`.
pub async fn fetch_manifest(State(state): State<AppState>, input: Input) -> Result {
    let id = input.identifier("plugin_unique_identifier")?;
    match state.store.declaration(&id.to_string()).await? {
        Some(decl) => ok(decl),
        // Reference quirk kept: a bad request, not a not-found.
        None => Err(DaemonError::BadRequest("plugin not found".into()).into()),
    }
}

/// `GET fetch/identifier` → whether the package is installed anywhere.
pub async fn fetch_identifier(State(state): State<AppState>, input: Input) -> Result {
    let id = input.identifier("plugin_unique_identifier")?;
    ok(state.store.plugin(&id.to_string()).await?.is_some())
}

/// `GET fetch/readme` → `{content, language}`.
pub async fn fetch_readme(State(state): State<AppState>, input: Input) -> Result {
    let id = input.identifier("plugin_unique_identifier")?;
    let language = input.opt_str("language").unwrap_or_default();
    ok(state.packages.readme(&id, &language).await?)
}

/// `POST uninstall` `{plugin_installation_id}` → `true`, also when the
/// tenant has no such installation (another tenant's included: nothing of
/// theirs is touched), as the reference's `UninstallPlugin` answers.
pub async fn uninstall(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let id = input.str("plugin_installation_id")?;
    require_uuid("plugin_installation_id", &id)?;
    state.installer.uninstall(&tenant_id, &id).await?;
    ok(true)
}

/// Declarations looked up once per request.
struct Declarations<'a> {
    state: &'a AppState,
    cache: HashMap<String, Value>,
}

impl<'a> Declarations<'a> {
    fn new(state: &'a AppState) -> Self {
        Self {
            state,
            cache: HashMap::new(),
        }
    }

    async fn get(&mut self, identifier: &str) -> Result<Value> {
        self.find(identifier).await?.ok_or_else(|| {
            DaemonError::internal_msg(format!("declaration of {identifier} is missing")).into()
        })
    }

    /// The declaration, or `None` when it is gone (its last installation was
    /// removed since the caller listed it).
    async fn find(&mut self, identifier: &str) -> Result<Option<Value>> {
        if let Some(d) = self.cache.get(identifier) {
            return Ok(Some(d.clone()));
        }
        let found = self.state.store.declaration(identifier).await?;
        if let Some(decl) = &found {
            self.cache.insert(identifier.to_owned(), decl.clone());
        }
        Ok(found)
    }
}

fn checksum_of(identifier: &str) -> &str {
    identifier.split_once('@').map(|(_, c)| c).unwrap_or("")
}

fn version_of(identifier: &str) -> &str {
    let rest = identifier.split_once(':').map(|(_, r)| r).unwrap_or("");
    rest.split_once('@').map(|(v, _)| v).unwrap_or(rest)
}

/// `GET list?page&page_size` → `{list, total}`.
pub async fn list_plugins(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let (page, size) = input.page()?;
    let (installations, total) = state
        .store
        .list_installations(&tenant_id, page, size)
        .await?;
    let mut decls = Declarations::new(&state);
    let mut list = Vec::with_capacity(installations.len());
    for inst in installations {
        // An uninstall between the two reads drops the row rather than
        // failing the whole listing.
        let Some(decl) = decls.find(&inst.plugin_unique_identifier).await? else {
            continue;
        };
        list.push(plugin_entry(inst, decl));
    }
    ok(json!({"list": list, "total": total}))
}

/// One installed plugin as the plugin lists show it.
fn plugin_entry(inst: Installation, decl: Value) -> Value {
    json!({
        "id": inst.id,
        "name": decl.get("name").cloned().unwrap_or(Value::Null),
        "plugin_id": inst.plugin_id,
        "tenant_id": inst.tenant_id,
        "plugin_unique_identifier": inst.plugin_unique_identifier,
        "endpoints_active": inst.endpoints_active,
        "endpoints_setups": inst.endpoints_setups,
        "installation_id": inst.id,
        "version": decl.get("version").cloned().unwrap_or(Value::Null),
        "checksum": checksum_of(&inst.plugin_unique_identifier),
        "declaration": decl,
        "runtime_type": inst.runtime_type,
        "created_at": inst.created_at,
        "updated_at": inst.updated_at,
        "source": inst.source,
        "meta": inst.meta,
    })
}

/// How many installations one scan step reads (the reference's
/// `pluginCategoryListScanPageSize`).
const SCAN_PAGE: i64 = 256;

/// The tags a plugin may carry (`manifest_entities/tags.go`).
const PLUGIN_TAGS: [&str; 19] = [
    "search",
    "image",
    "videos",
    "weather",
    "finance",
    "design",
    "travel",
    "social",
    "news",
    "medical",
    "productivity",
    "education",
    "business",
    "entertainment",
    "utilities",
    "agent",
    "rag",
    "other",
    "trigger",
];

fn parse_category(name: &str) -> Option<PluginCategory> {
    use PluginCategory as C;
    [
        C::Tool,
        C::Model,
        C::Extension,
        C::AgentStrategy,
        C::Datasource,
        C::Trigger,
    ]
    .into_iter()
    .find(|c| c.as_str() == name)
}

/// The category of a stored declaration, with the precedence of
/// `PluginDeclaration.Category()`: a provider, or a non-empty list of
/// provider files, of the first kind found.
fn declared_category(decl: &Value) -> PluginCategory {
    let present = |field: &str| decl.get(field).is_some_and(|v| !v.is_null());
    let listed = |field: &str| {
        decl.get("plugins")
            .and_then(|p| p.get(field))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if present("tool") || listed("tools") {
        PluginCategory::Tool
    } else if present("model") || listed("models") {
        PluginCategory::Model
    } else if present("datasource") || listed("datasources") {
        PluginCategory::Datasource
    } else if present("agent_strategy") || listed("agent_strategies") {
        PluginCategory::AgentStrategy
    } else if present("trigger") || listed("triggers") {
        PluginCategory::Trigger
    } else {
        PluginCategory::Extension
    }
}

/// Calls `each` with every installation of a tenant, oldest first, with its
/// declaration, until it answers `false`.
async fn scan_installations(
    state: &AppState,
    tenant_id: &str,
    mut each: impl FnMut(Installation, Value) -> bool,
) -> Result<()> {
    let mut decls = Declarations::new(state);
    let mut offset = 0;
    loop {
        let page = state
            .store
            .installations_from(tenant_id, offset, SCAN_PAGE)
            .await?;
        let full = page.len() as i64 == SCAN_PAGE;
        for inst in page {
            let Some(decl) = decls.find(&inst.plugin_unique_identifier).await? else {
                continue;
            };
            if !each(inst, decl) {
                return Ok(());
            }
        }
        if !full {
            return Ok(());
        }
        offset += SCAN_PAGE;
    }
}

/// `GET installation/ids?category=` → `{plugin_ids}`: the plugins of a
/// tenant that bring a provider of that category (for `extension`, the
/// plugins whose declaration has none).
pub async fn installed_plugin_ids(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    let name = input.str("category")?;
    let category = parse_category(&name)
        .ok_or_else(|| DaemonError::BadRequest("invalid plugin category".into()))?;
    let provider = match category {
        PluginCategory::Tool => Some(ProviderCategory::Tool),
        PluginCategory::Model => Some(ProviderCategory::Model),
        PluginCategory::Datasource => Some(ProviderCategory::Datasource),
        PluginCategory::AgentStrategy => Some(ProviderCategory::AgentStrategy),
        PluginCategory::Trigger => Some(ProviderCategory::Trigger),
        PluginCategory::Extension => None,
    };
    let plugin_ids = match provider {
        Some(p) => state.store.provider_plugin_ids(&tenant_id, p).await?,
        None => {
            let mut ids = Vec::new();
            scan_installations(&state, &tenant_id, |inst, decl| {
                if declared_category(&decl) == PluginCategory::Extension {
                    ids.push(inst.plugin_id);
                }
                true
            })
            .await?;
            ids
        }
    };
    ok(json!({ "plugin_ids": plugin_ids }))
}

/// The text of an i18n object in `language`, else English.
fn localized<'a>(value: Option<&'a Value>, language: &str) -> &'a str {
    let pick = |key: &str| {
        value
            .and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let key = match language {
        "ja_JP" | "zh_Hans" | "pt_BR" => language,
        _ => "en_US",
    };
    match pick(key) {
        "" => pick("en_US"),
        text => text,
    }
}

/// The filters of a category listing.
struct ListFilter {
    query: String,
    tags: Vec<String>,
    language: String,
}

impl ListFilter {
    fn matches(&self, plugin_id: &str, decl: &Value) -> bool {
        if !self.tags.is_empty() {
            let has = decl
                .get("tags")
                .and_then(Value::as_array)
                .is_some_and(|own| {
                    own.iter()
                        .filter_map(Value::as_str)
                        .any(|t| self.tags.iter().any(|want| want == t))
                });
            if !has {
                return false;
            }
        }
        if self.query.is_empty() {
            return true;
        }
        let needle = self.query.to_lowercase();
        let name = decl.get("name").and_then(Value::as_str).unwrap_or("");
        [
            plugin_id,
            name,
            localized(decl.get("label"), &self.language),
            localized(decl.get("description"), &self.language),
        ]
        .iter()
        .any(|text| text.to_lowercase().contains(&needle))
    }
}

/// `GET {category}/list?page&page_size[&query][&tags…][&language]` →
/// `{list, has_more}`: installed plugins of one category, filtered by a
/// case-insensitive text query and any of the tags.
pub async fn list_plugins_by_category(
    State(state): State<AppState>,
    Path((tenant_id, category)): Path<(String, String)>,
    query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
    input: Input,
) -> Result {
    let Query(pairs) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let (page, size) = input.page()?;
    let text = input.opt_str("query").unwrap_or_default();
    if text.chars().count() > 256 {
        return Err(ApiError::Invalid(
            "query must be at most 256 characters".into(),
        ));
    }
    let language = input.opt_str("language").unwrap_or_default();
    if !["", "en_US", "zh_Hans", "ja_JP", "pt_BR"].contains(&language.as_str()) {
        return Err(ApiError::Invalid(
            "language must be one of en_US zh_Hans ja_JP pt_BR".into(),
        ));
    }
    let tags: Vec<String> = pairs
        .into_iter()
        .filter(|(k, _)| k == "tags")
        .map(|(_, v)| v)
        .collect();
    if tags.len() > 128 {
        return Err(ApiError::Invalid("at most 128 tags".into()));
    }
    if let Some(bad) = tags.iter().find(|t| !PLUGIN_TAGS.contains(&t.as_str())) {
        return Err(ApiError::Invalid(format!("invalid plugin tag {bad:?}")));
    }
    let category = parse_category(&category)
        .ok_or_else(|| DaemonError::BadRequest("invalid plugin category".into()))?;
    let filter = ListFilter {
        query: text,
        tags,
        language,
    };

    let mut skip = (page - 1).saturating_mul(size);
    // One more than a page tells whether another page follows.
    let want = (size + 1) as usize;
    let mut list = Vec::with_capacity(want);
    scan_installations(&state, &tenant_id, |inst, decl| {
        if declared_category(&decl) != category || !filter.matches(&inst.plugin_id, &decl) {
            return true;
        }
        if skip > 0 {
            skip -= 1;
            return true;
        }
        list.push(plugin_entry(inst, decl));
        list.len() < want
    })
    .await?;
    let has_more = list.len() > size as usize;
    list.truncate(size as usize);
    ok(json!({ "list": list, "has_more": has_more }))
}

/// `GET models/bindings` → each model provider of the tenant with the
/// installation bringing it: `[{provider, installation_id, plugin_id,
/// plugin_unique_identifier, runtime_type, source, version, verified}]`.
pub async fn list_model_bindings(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result {
    let bindings = state.store.model_bindings(&tenant_id).await?;
    let mut decls = Declarations::new(&state);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(bindings.len());
    for b in bindings {
        let identifier: PluginUniqueIdentifier =
            b.plugin_unique_identifier
                .parse()
                .map_err(|e: crate::package::IdentifierError| {
                    DaemonError::UniqueIdentifier(e.to_string())
                })?;
        let version = version_of(&identifier.to_string()).to_owned();
        if !seen.insert((b.plugin_id.clone(), b.provider.clone())) {
            continue;
        }
        let decl = decls.get(&b.plugin_unique_identifier).await?;
        out.push(json!({
            "provider": b.provider,
            "installation_id": b.installation_id,
            "plugin_id": b.plugin_id,
            "plugin_unique_identifier": b.plugin_unique_identifier,
            "runtime_type": b.runtime_type,
            "source": b.source,
            "version": version,
            "verified": decl.get("verified").and_then(Value::as_bool).unwrap_or(false),
        }));
    }
    ok(out)
}

async fn installation_with_declaration(
    decls: &mut Declarations<'_>,
    inst: Installation,
) -> Result<Value> {
    let decl = decls.get(&inst.plugin_unique_identifier).await?;
    let version = version_of(&inst.plugin_unique_identifier).to_owned();
    let checksum = checksum_of(&inst.plugin_unique_identifier).to_owned();
    let mut v = serde_json::to_value(inst).expect("installations serialize");
    let obj = v.as_object_mut().expect("installations are objects");
    obj.insert("version".into(), Value::String(version));
    obj.insert("checksum".into(), Value::String(checksum));
    obj.insert("declaration".into(), decl);
    Ok(v)
}

/// `POST installation/fetch/batch` `{plugin_ids}`.
pub async fn fetch_installations(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    #[derive(Deserialize)]
    struct Req {
        plugin_ids: Vec<String>,
    }
    let req: Req = input.parse()?;
    if req.plugin_ids.len() > 256 {
        return Err(ApiError::Invalid("at most 256 plugin ids".into()));
    }
    let installations = state
        .store
        .installations_by_plugin_ids(&tenant_id, &req.plugin_ids)
        .await?;
    let mut decls = Declarations::new(&state);
    let mut out = Vec::with_capacity(installations.len());
    for inst in installations {
        out.push(installation_with_declaration(&mut decls, inst).await?);
    }
    ok(out)
}

/// `POST installation/missing` `{plugin_unique_identifiers}` →
/// `[{plugin_unique_identifier, current_identifier}]` for each one the tenant
/// lacks or has at another version.
pub async fn missing_installations(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    #[derive(Deserialize)]
    struct Req {
        plugin_unique_identifiers: Vec<String>,
    }
    let req: Req = input.parse()?;
    if req.plugin_unique_identifiers.len() > 256 {
        return Err(ApiError::Invalid("at most 256 identifiers".into()));
    }
    let ids = req
        .plugin_unique_identifiers
        .iter()
        .map(|s| parse_identifier(s))
        .collect::<Result<Vec<_>>>()?;
    let plugin_ids: Vec<String> = ids.iter().map(|i| i.plugin_id().to_owned()).collect();
    let installed = state
        .store
        .installations_by_plugin_ids(&tenant_id, &plugin_ids)
        .await?;
    let mut out = Vec::new();
    for id in &ids {
        let id_text = id.to_string();
        match installed.iter().find(|i| i.plugin_id == id.plugin_id()) {
            Some(i) if i.plugin_unique_identifier == id_text => {}
            Some(i) => out.push(json!({
                "plugin_unique_identifier": id_text,
                "current_identifier": i.plugin_unique_identifier,
            })),
            None => out.push(json!({
                "plugin_unique_identifier": id_text,
                "current_identifier": "",
            })),
        }
    }
    ok(out)
}

async fn provider_entry(
    decls: &mut Declarations<'_>,
    category: ProviderCategory,
    provider: ProviderInstallation,
) -> Result<Value> {
    let decl = decls.get(&provider.plugin_unique_identifier).await?;
    let mut v = serde_json::to_value(provider).expect("providers serialize");
    let obj = v.as_object_mut().expect("providers are objects");
    obj.insert(
        "declaration".into(),
        decl.get(category.declaration_field())
            .cloned()
            .unwrap_or(Value::Null),
    );
    if category == ProviderCategory::AgentStrategy {
        obj.insert(
            "meta".into(),
            decl.get("meta").cloned().unwrap_or_else(|| json!({})),
        );
    }
    Ok(v)
}

async fn list_category(
    state: AppState,
    tenant_id: String,
    input: Input,
    category: ProviderCategory,
) -> Result {
    let (page, size) = input.page()?;
    let providers = state
        .store
        .list_providers(&tenant_id, category, page, size)
        .await?;
    let mut decls = Declarations::new(&state);
    let mut out = Vec::with_capacity(providers.len());
    for p in providers {
        out.push(provider_entry(&mut decls, category, p).await?);
    }
    ok(out)
}

async fn get_category(
    state: AppState,
    tenant_id: String,
    input: Input,
    category: ProviderCategory,
) -> Result {
    let plugin_id = input.str("plugin_id")?;
    let provider = input.str("provider")?;
    let found = state
        .store
        .provider(&tenant_id, category, &plugin_id)
        .await?
        .filter(|p| p.provider == provider)
        .ok_or(DaemonError::PluginNotFound)?;
    let mut decls = Declarations::new(&state);
    ok(provider_entry(&mut decls, category, found).await?)
}

macro_rules! category_routes {
    ($list:ident, $get:ident, $cat:expr) => {
        /// Lists the tenant's providers of this category, one page.
        pub async fn $list(
            State(state): State<AppState>,
            Path(tenant_id): Path<String>,
            input: Input,
        ) -> Result {
            list_category(state, tenant_id, input, $cat).await
        }

        /// One provider of this category by `plugin_id` and `provider`.
        pub async fn $get(
            State(state): State<AppState>,
            Path(tenant_id): Path<String>,
            input: Input,
        ) -> Result {
            get_category(state, tenant_id, input, $cat).await
        }
    };
}

category_routes!(list_tools, get_tool, ProviderCategory::Tool);
category_routes!(
    list_agent_strategies,
    get_agent_strategy,
    ProviderCategory::AgentStrategy
);
category_routes!(
    list_datasources,
    get_datasource,
    ProviderCategory::Datasource
);
category_routes!(list_triggers, get_trigger, ProviderCategory::Trigger);

/// `GET models?page&page_size`.
pub async fn list_models(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    list_category(state, tenant_id, input, ProviderCategory::Model).await
}

/// `POST tools/check_existence` `{provider_ids: [{plugin_id, provider_name}]}`
/// → one bool per entry.
pub async fn check_tool_existence(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    input: Input,
) -> Result {
    #[derive(Deserialize)]
    struct ProviderId {
        plugin_id: String,
        provider_name: String,
    }
    #[derive(Deserialize)]
    struct Req {
        provider_ids: Vec<ProviderId>,
    }
    let req: Req = input.parse()?;
    if req
        .provider_ids
        .iter()
        .any(|p| p.plugin_id.is_empty() || p.provider_name.is_empty())
    {
        return Err(ApiError::Invalid(
            "plugin_id and provider_name are required".into(),
        ));
    }
    let plugin_ids: Vec<String> = req
        .provider_ids
        .iter()
        .map(|p| p.plugin_id.clone())
        .collect();
    let found = state
        .store
        .providers_by_plugin_ids(&tenant_id, ProviderCategory::Tool, &plugin_ids)
        .await?;
    let out: Vec<bool> = req
        .provider_ids
        .iter()
        .map(|p| {
            found
                .iter()
                .any(|f| f.plugin_id == p.plugin_id && f.provider == p.provider_name)
        })
        .collect();
    ok(out)
}

/// `GET /plugin/{tenant_id}/asset/{id}`: the raw bytes of an asset.
pub async fn asset(
    State(state): State<AppState>,
    Path((_tenant_id, id)): Path<(String, String)>,
) -> Result {
    match state.packages.asset(&id).await? {
        Some(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => {
            let err = DaemonError::NotFound("asset not found".into());
            Ok((
                StatusCode::NOT_FOUND,
                axum::Json(super::envelope::error_envelope_json(&err)),
            )
                .into_response())
        }
    }
}

/// `GET /plugin/{tenant_id}/extract-asset/?plugin_unique_identifier&file_path`:
/// the raw bytes of a file under an uploaded package's `_assets/`, which
/// Dify's console serves for packages not installed yet. Dify reads any
/// answer but HTTP 200 as a failure and any 200 as the file itself, so every
/// refusal here carries a 4xx/5xx status (the envelope is for people).
pub async fn extract_asset(State(state): State<AppState>, input: Input) -> Result {
    let id = input.identifier("plugin_unique_identifier")?;
    let path = input.str("file_path")?;
    match state.packages.package_asset(&id, &path).await {
        Ok(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        Err(err) => {
            let status = match &err {
                DaemonError::BadRequest(_) => StatusCode::BAD_REQUEST,
                DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            err.log();
            Ok((
                status,
                axum::Json(super::envelope::error_envelope_json(&err)),
            )
                .into_response())
        }
    }
}
