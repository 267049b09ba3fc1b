//! MCP server records and their access tokens, kept in the daemon's store.
//!
//! A server belongs to one tenant and names what it exposes ([`ServerConfig`]).
//! Provider credentials are sealed ([`super::seal`]) before they reach the
//! database and are only opened to invoke a tool. Access tokens are returned
//! once, at creation; the store keeps their SHA-256.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::seal::Sealer;
use super::McpError;
use crate::store::{ProviderCategory, Store, StoreError};

/// Prefix of every access token, so leaked tokens are easy to recognise.
pub const TOKEN_PREFIX: &str = "pdmcp_";

/// Which plugin tools a server exposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolSelection {
    /// `"all"`: every tool of every tool provider the tenant has installed;
    /// `"none"`: no plugin tool.
    Keyword(String),
    /// The listed tools only.
    List(Vec<ToolRef>),
}

impl Default for ToolSelection {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl ToolSelection {
    /// Whether every installed tool is exposed.
    pub fn is_all(&self) -> bool {
        matches!(self, Self::Keyword(k) if k == "all")
    }
}

/// One exposed plugin tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRef {
    /// `author/name` of the plugin; unset matches any plugin declaring the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_id: Option<String>,
    pub provider: String,
    pub tool: String,
    /// The MCP tool name; unset: `provider__tool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One exposed Dify app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRef {
    pub app_id: String,
    /// The MCP tool name; unset: the app id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Dify app mode (`workflow`, `chat`, `advanced-chat`, `agent-chat`,
    /// `completion`): chat modes take a `query`. Unset: `workflow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl AppRef {
    /// Whether the app is a chat app (it needs a `query`).
    pub fn is_chat(&self) -> bool {
        matches!(
            self.mode.as_deref(),
            Some("chat" | "advanced-chat" | "agent-chat")
        )
    }
}

/// What a server exposes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerConfig {
    #[serde(default)]
    pub tools: ToolSelection,
    #[serde(default)]
    pub apps: Vec<AppRef>,
    /// Values of form-only tool parameters, keyed `provider/tool`.
    #[serde(default)]
    pub fixed_values: BTreeMap<String, Map<String, Value>>,
}

impl ServerConfig {
    /// Refuses selections that cannot mean anything.
    pub fn validate(&self) -> Result<(), McpError> {
        if let ToolSelection::Keyword(k) = &self.tools {
            if k != "all" && k != "none" {
                return Err(McpError::Invalid(format!(
                    "tools must be \"all\", \"none\" or a list, got {k:?}"
                )));
            }
        }
        if let ToolSelection::List(list) = &self.tools {
            if let Some(t) = list
                .iter()
                .find(|t| t.provider.is_empty() || t.tool.is_empty())
            {
                return Err(McpError::Invalid(format!(
                    "tool entries need a provider and a tool, got {t:?}"
                )));
            }
            if let Some(name) = list
                .iter()
                .filter_map(|t| t.name.as_deref())
                .find(|n| !super::schema::valid_tool_name(n))
            {
                return Err(McpError::Invalid(format!(
                    "tool name {name:?} must be 1 to 128 letters, digits, '_', '-' or '.'"
                )));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for app in &self.apps {
            if app.app_id.is_empty() {
                return Err(McpError::Invalid("apps need an app_id".into()));
            }
            if !ids.insert(&app.app_id) {
                return Err(McpError::Invalid(format!(
                    "app {} is listed twice",
                    app.app_id
                )));
            }
        }
        Ok(())
    }
}

/// Provider credentials, keyed by provider name.
pub type Credentials = BTreeMap<String, Map<String, Value>>;

/// A stored MCP server, as the API shows it (credentials never leave sealed).
#[derive(Debug, Clone, Serialize)]
pub struct McpServer {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    /// The Dify user id tool and app calls are made as.
    pub user_id: String,
    pub config: ServerConfig,
    /// Providers that have stored credentials.
    pub credential_providers: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    sealed_credentials: String,
}

/// Fields of a new server.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewServer {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(flatten)]
    pub config: ServerConfig,
    #[serde(default)]
    pub credentials: Credentials,
}

/// A partial update; unset fields keep their value. `credentials` entries
/// replace that provider's credentials; a `null` entry removes them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub user_id: Option<String>,
    pub tools: Option<ToolSelection>,
    pub apps: Option<Vec<AppRef>>,
    pub fixed_values: Option<BTreeMap<String, Map<String, Value>>>,
    pub credentials: Option<BTreeMap<String, Option<Map<String, Value>>>>,
}

/// An access token as listed (the secret itself is never stored).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub server_id: String,
    pub tenant_id: String,
    pub name: String,
    /// The token's first characters, to tell tokens apart.
    pub hint: String,
    pub created_at: DateTime<Utc>,
}

/// What a server's MCP answers depend on, read in one query per request:
/// when it is unchanged, what the gateway built for the server still holds.
///
/// The record's `updated_at` moves on every edit (name, tools, apps, fixed
/// values, credentials); the count and newest creation time of the
/// tenant's tool providers move on every install, uninstall and upgrade,
/// which delete and re-insert those rows. The stamp is read from the
/// store, so edits by `plugind mcp` or another daemon on the same database
/// count too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    server_updated_at: i64,
    tool_providers: i64,
    newest_provider: i64,
}

/// Queries of the MCP tables.
#[derive(Debug, Clone)]
pub struct McpStore {
    store: Store,
    sealer: Sealer,
}

const SERVER_COLS: &str =
    "id, created_at, updated_at, tenant_id, name, description, user_id, config, credentials";
/// The columns of a [`Stamp`], over `mcp_servers s`; `$2` is the tool
/// provider category.
const STAMP_COLS: &str = "s.updated_at AS server_updated_at, \
     (SELECT COUNT(*) FROM provider_installations p WHERE p.tenant_id = s.tenant_id AND p.category = $2) AS tool_providers, \
     (SELECT MAX(p.created_at) FROM provider_installations p WHERE p.tenant_id = s.tenant_id AND p.category = $2) AS newest_provider";
const TOKEN_COLS: &str = "id, created_at, server_id, tenant_id, name, hint";

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// SHA-256 hex of a token, its stored form.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn name_taken(e: sqlx::Error, name: &str) -> McpError {
    match StoreError::from(e) {
        StoreError::UniqueViolation(_) => McpError::NameTaken(name.to_owned()),
        other => McpError::Store(other),
    }
}

fn check_name(name: &str) -> Result<(), McpError> {
    if name.trim().is_empty() || name.len() > 128 {
        return Err(McpError::Invalid("name must be 1 to 128 characters".into()));
    }
    Ok(())
}

impl McpStore {
    /// Queries over `store`, sealing with `sealer`.
    pub fn new(store: Store, sealer: Sealer) -> Self {
        Self { store, sealer }
    }

    fn server_from_row(&self, r: &AnyRow) -> Result<McpServer, McpError> {
        let config: String = r.try_get("config")?;
        let config = serde_json::from_str(&config).map_err(|source| {
            McpError::Store(StoreError::Corrupt {
                what: "mcp server config",
                source,
            })
        })?;
        let id: String = r.try_get("id")?;
        let sealed: String = r.try_get("credentials")?;
        let credential_providers = if sealed.is_empty() {
            Vec::new()
        } else {
            self.open_credentials(&id, &sealed)
                .map(|c| c.into_keys().collect())
                .unwrap_or_default()
        };
        Ok(McpServer {
            id,
            tenant_id: r.try_get("tenant_id")?,
            name: r.try_get("name")?,
            description: r.try_get("description")?,
            user_id: r.try_get("user_id")?,
            config,
            credential_providers,
            created_at: from_micros(r.try_get("created_at")?),
            updated_at: from_micros(r.try_get("updated_at")?),
            sealed_credentials: sealed,
        })
    }

    fn open_credentials(&self, id: &str, sealed: &str) -> Result<Credentials, McpError> {
        let plain = self.sealer.open(sealed, id).map_err(|_| McpError::Unseal)?;
        serde_json::from_slice(&plain).map_err(|_| McpError::Unseal)
    }

    fn seal_credentials(&self, id: &str, creds: &Credentials) -> String {
        if creds.is_empty() {
            return String::new();
        }
        let plain = serde_json::to_vec(creds).expect("credentials serialize");
        self.sealer.seal(&plain, id)
    }

    /// The opened provider credentials of a server.
    pub fn credentials(&self, server: &McpServer) -> Result<Credentials, McpError> {
        if server.sealed_credentials.is_empty() {
            return Ok(Credentials::new());
        }
        self.open_credentials(&server.id, &server.sealed_credentials)
    }

    /// Creates a server.
    pub async fn create(&self, tenant_id: &str, new: NewServer) -> Result<McpServer, McpError> {
        check_name(&new.name)?;
        new.config.validate()?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_micros();
        let config = serde_json::to_string(&new.config).expect("config serializes");
        sqlx::query(
            "INSERT INTO mcp_servers (id, created_at, updated_at, tenant_id, name, description, user_id, config, credentials) \
             VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(now)
        .bind(tenant_id)
        .bind(&new.name)
        .bind(&new.description)
        .bind(&new.user_id)
        .bind(config)
        .bind(self.seal_credentials(&id, &new.credentials))
        .execute(self.store.pool())
        .await
        .map_err(|e| name_taken(e, &new.name))?;
        self.get(tenant_id, &id).await?.ok_or(McpError::NotFound)
    }

    /// A tenant's servers, oldest first.
    pub async fn list(&self, tenant_id: &str) -> Result<Vec<McpServer>, McpError> {
        let rows = sqlx::query(&format!(
            "SELECT {SERVER_COLS} FROM mcp_servers WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(tenant_id)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(|r| self.server_from_row(r)).collect()
    }

    /// One of a tenant's servers.
    pub async fn get(&self, tenant_id: &str, id: &str) -> Result<Option<McpServer>, McpError> {
        let row = sqlx::query(&format!(
            "SELECT {SERVER_COLS} FROM mcp_servers WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(|r| self.server_from_row(r)).transpose()
    }

    /// A server by id alone, for the gateway (the token names the tenant).
    pub async fn get_by_id(&self, id: &str) -> Result<Option<McpServer>, McpError> {
        let row = sqlx::query(&format!(
            "SELECT {SERVER_COLS} FROM mcp_servers WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(|r| self.server_from_row(r)).transpose()
    }

    /// Applies a patch and returns the updated server.
    pub async fn update(
        &self,
        tenant_id: &str,
        id: &str,
        patch: ServerPatch,
    ) -> Result<McpServer, McpError> {
        let current = self.get(tenant_id, id).await?.ok_or(McpError::NotFound)?;
        let mut config = current.config.clone();
        if let Some(tools) = patch.tools {
            config.tools = tools;
        }
        if let Some(apps) = patch.apps {
            config.apps = apps;
        }
        if let Some(fixed) = patch.fixed_values {
            config.fixed_values = fixed;
        }
        config.validate()?;
        let name = patch.name.unwrap_or(current.name.clone());
        check_name(&name)?;
        let sealed = match patch.credentials {
            None => current.sealed_credentials.clone(),
            Some(changes) => {
                let mut creds = self.credentials(&current)?;
                for (provider, value) in changes {
                    match value {
                        Some(v) => creds.insert(provider, v),
                        None => creds.remove(&provider),
                    };
                }
                self.seal_credentials(id, &creds)
            }
        };
        sqlx::query(
            "UPDATE mcp_servers SET updated_at = $1, name = $2, description = $3, user_id = $4, config = $5, credentials = $6 \
             WHERE tenant_id = $7 AND id = $8",
        )
        .bind(now_micros())
        .bind(&name)
        .bind(patch.description.unwrap_or(current.description))
        .bind(patch.user_id.unwrap_or(current.user_id))
        .bind(serde_json::to_string(&config).expect("config serializes"))
        .bind(sealed)
        .bind(tenant_id)
        .bind(id)
        .execute(self.store.pool())
        .await
        .map_err(|e| name_taken(e, &name))?;
        self.get(tenant_id, id).await?.ok_or(McpError::NotFound)
    }

    /// Deletes a server and its tokens. `false` when it did not exist.
    pub async fn delete(&self, tenant_id: &str, id: &str) -> Result<bool, McpError> {
        let mut tx = self.store.pool().begin().await?;
        sqlx::query("DELETE FROM mcp_tokens WHERE tenant_id = $1 AND server_id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM mcp_servers WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Creates an access token for a server; the secret is returned only here.
    pub async fn create_token(
        &self,
        tenant_id: &str,
        server_id: &str,
        name: &str,
    ) -> Result<(TokenInfo, String), McpError> {
        if self.get(tenant_id, server_id).await?.is_none() {
            return Err(McpError::NotFound);
        }
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let secret = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        let info = TokenInfo {
            id: uuid::Uuid::new_v4().to_string(),
            server_id: server_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            hint: format!("{}…", &secret[..TOKEN_PREFIX.len() + 4]),
            created_at: from_micros(now_micros()),
        };
        sqlx::query(
            "INSERT INTO mcp_tokens (id, created_at, server_id, tenant_id, name, token_hash, hint) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&info.id)
        .bind(info.created_at.timestamp_micros())
        .bind(server_id)
        .bind(tenant_id)
        .bind(name)
        .bind(token_hash(&secret))
        .bind(&info.hint)
        .execute(self.store.pool())
        .await?;
        Ok((info, secret))
    }

    /// A server's tokens, oldest first.
    pub async fn list_tokens(
        &self,
        tenant_id: &str,
        server_id: &str,
    ) -> Result<Vec<TokenInfo>, McpError> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM mcp_tokens WHERE tenant_id = $1 AND server_id = $2 ORDER BY created_at, id"
        ))
        .bind(tenant_id)
        .bind(server_id)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token. `false` when it did not exist.
    pub async fn delete_token(
        &self,
        tenant_id: &str,
        server_id: &str,
        token_id: &str,
    ) -> Result<bool, McpError> {
        let done = sqlx::query(
            "DELETE FROM mcp_tokens WHERE tenant_id = $1 AND server_id = $2 AND id = $3",
        )
        .bind(tenant_id)
        .bind(server_id)
        .bind(token_id)
        .execute(self.store.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The server's [`Stamp`] if `secret` is one of its tokens: the access
    /// check and the freshness check in one round trip.
    pub async fn check_access(
        &self,
        server_id: &str,
        secret: &str,
    ) -> Result<Option<Stamp>, McpError> {
        let row = sqlx::query(&format!(
            "SELECT {STAMP_COLS}, \
             (SELECT COUNT(*) FROM mcp_tokens t WHERE t.server_id = s.id AND t.token_hash = $3) AS granted \
             FROM mcp_servers s WHERE s.id = $1"
        ))
        .bind(server_id)
        .bind(ProviderCategory::Tool.as_str())
        .bind(token_hash(secret))
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let granted: i64 = row.try_get("granted")?;
        if granted == 0 {
            return Ok(None);
        }
        stamp_from_row(&row).map(Some)
    }

    /// The server's [`Stamp`]; `None` when it does not exist.
    pub async fn stamp(&self, server_id: &str) -> Result<Option<Stamp>, McpError> {
        let row = sqlx::query(&format!(
            "SELECT {STAMP_COLS} FROM mcp_servers s WHERE s.id = $1"
        ))
        .bind(server_id)
        .bind(ProviderCategory::Tool.as_str())
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(stamp_from_row).transpose()
    }

    /// The token matching `secret` if it grants access to `server_id`.
    pub async fn authenticate(
        &self,
        server_id: &str,
        secret: &str,
    ) -> Result<Option<TokenInfo>, McpError> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM mcp_tokens WHERE token_hash = $1 AND server_id = $2"
        ))
        .bind(token_hash(secret))
        .bind(server_id)
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }
}

fn stamp_from_row(r: &AnyRow) -> Result<Stamp, McpError> {
    Ok(Stamp {
        server_updated_at: r.try_get("server_updated_at")?,
        tool_providers: r.try_get("tool_providers")?,
        newest_provider: r.try_get::<Option<i64>, _>("newest_provider")?.unwrap_or(0),
    })
}

fn token_from_row(r: &AnyRow) -> Result<TokenInfo, McpError> {
    Ok(TokenInfo {
        id: r.try_get("id")?,
        server_id: r.try_get("server_id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        hint: r.try_get("hint")?,
        created_at: from_micros(r.try_get("created_at")?),
    })
}
