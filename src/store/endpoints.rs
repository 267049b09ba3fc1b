//! Endpoint rows: one per `/e/{hook_id}` a tenant set up for a plugin, with
//! the installation's `endpoints_setups` / `endpoints_active` counters kept
//! in the same transaction (reference: `install_service/endpoint.go`).

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{from_micros, now_micros, Result, Store, StoreError};

const ENDPOINT_COLS: &str =
    "id, created_at, updated_at, name, hook_id, tenant_id, user_id, plugin_id, expired_at, enabled, settings";

/// The columns as selected: sqlx's `Any` driver cannot decode an SQLite
/// BOOLEAN column, so `enabled` is read as a BIGINT on both engines.
const ENDPOINT_SELECT: &str =
    "id, created_at, updated_at, name, hook_id, tenant_id, user_id, plugin_id, expired_at, \
     CAST(CASE WHEN enabled THEN 1 ELSE 0 END AS BIGINT) AS enabled, settings";

/// An endpoint as stored, serialized with the reference's field names
/// (`models.Endpoint`). `settings` holds the encrypted form.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointRecord {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub name: String,
    pub hook_id: String,
    pub tenant_id: String,
    pub user_id: String,
    /// `author/name`.
    pub plugin_id: String,
    pub expired_at: DateTime<Utc>,
    pub enabled: bool,
    pub settings: Map<String, Value>,
}

/// A new endpoint.
#[derive(Debug, Clone)]
pub struct NewEndpoint<'a> {
    /// Chosen by the caller so the settings can be encrypted under this
    /// identity before the row exists.
    pub id: &'a str,
    pub hook_id: &'a str,
    pub tenant_id: &'a str,
    pub user_id: &'a str,
    pub plugin_id: &'a str,
    pub name: &'a str,
    pub settings: &'a Map<String, Value>,
}

/// The expiry the reference writes on every endpoint: 2050-01-01 UTC.
/// Nothing reads it; it is kept because listings show it.
pub fn default_expiry() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2050, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date")
}

fn endpoint_from_row(r: &AnyRow) -> Result<EndpointRecord> {
    let settings: String = r.try_get("settings")?;
    let settings =
        match serde_json::from_str::<Value>(&settings).map_err(|source| StoreError::Corrupt {
            what: "endpoint settings",
            source,
        })? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
    Ok(EndpointRecord {
        id: r.try_get("id")?,
        created_at: from_micros(r.try_get("created_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
        name: r.try_get("name")?,
        hook_id: r.try_get("hook_id")?,
        tenant_id: r.try_get("tenant_id")?,
        user_id: r.try_get("user_id")?,
        plugin_id: r.try_get("plugin_id")?,
        expired_at: from_micros(r.try_get("expired_at")?),
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        settings,
    })
}

fn settings_text(settings: &Map<String, Value>) -> String {
    serde_json::to_string(settings).expect("JSON maps serialize")
}

impl Store {
    /// Creates an endpoint, enabled, and counts it as set up and active on
    /// the tenant's installation.
    pub async fn insert_endpoint(&self, new: &NewEndpoint<'_>) -> Result<EndpointRecord> {
        let now = now_micros();
        let expiry = default_expiry().timestamp_micros();
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO endpoints ({ENDPOINT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(new.id)
        .bind(now)
        .bind(now)
        .bind(new.name)
        .bind(new.hook_id)
        .bind(new.tenant_id)
        .bind(new.user_id)
        .bind(new.plugin_id)
        .bind(expiry)
        .bind(true)
        .bind(settings_text(new.settings))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE plugin_installations SET endpoints_setups = endpoints_setups + 1, \
             endpoints_active = endpoints_active + 1, updated_at = $1 \
             WHERE tenant_id = $2 AND plugin_id = $3",
        )
        .bind(now)
        .bind(new.tenant_id)
        .bind(new.plugin_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(EndpointRecord {
            id: new.id.to_owned(),
            created_at: from_micros(now),
            updated_at: from_micros(now),
            name: new.name.to_owned(),
            hook_id: new.hook_id.to_owned(),
            tenant_id: new.tenant_id.to_owned(),
            user_id: new.user_id.to_owned(),
            plugin_id: new.plugin_id.to_owned(),
            expired_at: from_micros(expiry),
            enabled: true,
            settings: new.settings.clone(),
        })
    }

    /// The endpoint behind a hook id.
    pub async fn endpoint_by_hook(&self, hook_id: &str) -> Result<Option<EndpointRecord>> {
        sqlx::query(&format!(
            "SELECT {ENDPOINT_SELECT} FROM endpoints WHERE hook_id = $1"
        ))
        .bind(hook_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(endpoint_from_row)
        .transpose()
    }

    /// A tenant's endpoint by id.
    pub async fn endpoint(&self, tenant_id: &str, id: &str) -> Result<Option<EndpointRecord>> {
        sqlx::query(&format!(
            "SELECT {ENDPOINT_SELECT} FROM endpoints WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(endpoint_from_row)
        .transpose()
    }

    /// A page (1-based) of a tenant's endpoints, newest first, optionally of
    /// one plugin only.
    pub async fn list_endpoints(
        &self,
        tenant_id: &str,
        plugin_id: Option<&str>,
        page: i64,
        page_size: i64,
    ) -> Result<Vec<EndpointRecord>> {
        let offset = (page.max(1) - 1) * page_size;
        let rows = match plugin_id {
            Some(plugin_id) => {
                sqlx::query(&format!(
                "SELECT {ENDPOINT_SELECT} FROM endpoints WHERE tenant_id = $1 AND plugin_id = $2 \
                     ORDER BY created_at DESC, id LIMIT $3 OFFSET $4"
            ))
                .bind(tenant_id)
                .bind(plugin_id)
                .bind(page_size)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {ENDPOINT_SELECT} FROM endpoints WHERE tenant_id = $1 \
                     ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
                ))
                .bind(tenant_id)
                .bind(page_size)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(endpoint_from_row).collect()
    }

    /// Renames an endpoint and replaces its (encrypted) settings. `false`
    /// when the endpoint does not exist.
    pub async fn update_endpoint(
        &self,
        tenant_id: &str,
        id: &str,
        name: &str,
        settings: &Map<String, Value>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE endpoints SET name = $1, settings = $2, updated_at = $3 WHERE id = $4 AND tenant_id = $5",
        )
        .bind(name)
        .bind(settings_text(settings))
        .bind(now_micros())
        .bind(id)
        .bind(tenant_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes an endpoint and uncounts it. `None` when it does not exist.
    pub async fn delete_endpoint(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<EndpointRecord>> {
        let mut tx = self.begin().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {ENDPOINT_SELECT} FROM endpoints WHERE id = $1 AND tenant_id = $2{}",
            self.lock()
        ))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let endpoint = endpoint_from_row(&row)?;
        sqlx::query("DELETE FROM endpoints WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // The reference takes one off both counters whatever the state, so
        // removing a disabled endpoint leaves `endpoints_active` one low; here
        // only an enabled endpoint counts as active.
        let active = i64::from(endpoint.enabled);
        sqlx::query(
            "UPDATE plugin_installations SET endpoints_setups = endpoints_setups - 1, \
             endpoints_active = endpoints_active - $1, updated_at = $2 \
             WHERE tenant_id = $3 AND plugin_id = $4",
        )
        .bind(active)
        .bind(now_micros())
        .bind(tenant_id)
        .bind(&endpoint.plugin_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(endpoint))
    }

    /// Enables or disables an endpoint, moving the installation's active
    /// count only when the state changes. `None` when it does not exist.
    pub async fn set_endpoint_enabled(
        &self,
        tenant_id: &str,
        id: &str,
        enabled: bool,
    ) -> Result<Option<EndpointRecord>> {
        let mut tx = self.begin().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {ENDPOINT_SELECT} FROM endpoints WHERE id = $1 AND tenant_id = $2{}",
            self.lock()
        ))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let mut endpoint = endpoint_from_row(&row)?;
        if endpoint.enabled != enabled {
            let now = now_micros();
            sqlx::query("UPDATE endpoints SET enabled = $1, updated_at = $2 WHERE id = $3")
                .bind(enabled)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE plugin_installations SET endpoints_active = endpoints_active + $1, \
                 updated_at = $2 WHERE tenant_id = $3 AND plugin_id = $4",
            )
            .bind(if enabled { 1i64 } else { -1i64 })
            .bind(now)
            .bind(tenant_id)
            .bind(&endpoint.plugin_id)
            .execute(&mut *tx)
            .await?;
            endpoint.enabled = enabled;
            endpoint.updated_at = from_micros(now);
        }
        tx.commit().await?;
        Ok(Some(endpoint))
    }

    /// Deletes every endpoint a tenant set up for a plugin (on uninstall);
    /// returns how many went.
    pub async fn delete_plugin_endpoints(&self, tenant_id: &str, plugin_id: &str) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM endpoints WHERE tenant_id = $1 AND plugin_id = $2")
                .bind(tenant_id)
                .bind(plugin_id)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
