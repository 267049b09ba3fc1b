//! Read-only listings across a tenant's installations that the newer
//! management routes need (reference: `internal/service/manage_plugin.go`,
//! `ListInstalledPluginIDs` and `ListModelPluginBindings`).

use sqlx::Row;

use super::models::{Installation, ModelBinding};
use super::{installation_from_row, ProviderCategory, Result, Store, INSTALLATION_COLS};

impl Store {
    /// The plugin ids behind a tenant's providers of one category, oldest
    /// provider first, each id once.
    pub async fn provider_plugin_ids(
        &self,
        tenant_id: &str,
        category: ProviderCategory,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT plugin_id FROM provider_installations WHERE tenant_id = $1 AND category = $2 \
             ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .bind(category.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<String> = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("plugin_id")?;
            if !out.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// A tenant's installations from `offset`, oldest first, at most `limit`.
    pub async fn installations_from(
        &self,
        tenant_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<Installation>> {
        let rows = sqlx::query(&format!(
            "SELECT {INSTALLATION_COLS} FROM plugin_installations WHERE tenant_id = $1 \
             ORDER BY created_at, id LIMIT $2 OFFSET $3"
        ))
        .bind(tenant_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(installation_from_row).collect()
    }

    /// Each model provider of a tenant with the installation that brings
    /// it, installations oldest first.
    pub async fn model_bindings(&self, tenant_id: &str) -> Result<Vec<ModelBinding>> {
        let rows = sqlx::query(
            "SELECT p.provider AS provider, i.id AS installation_id, i.plugin_id AS plugin_id, \
             i.plugin_unique_identifier AS plugin_unique_identifier, \
             i.runtime_type AS runtime_type, i.source AS source \
             FROM provider_installations p JOIN plugin_installations i \
             ON i.tenant_id = p.tenant_id AND i.plugin_id = p.plugin_id \
             AND i.plugin_unique_identifier = p.plugin_unique_identifier \
             WHERE p.tenant_id = $1 AND p.category = $2 \
             ORDER BY i.created_at, i.id, p.created_at, p.id",
        )
        .bind(tenant_id)
        .bind(ProviderCategory::Model.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ModelBinding {
                    provider: r.try_get("provider")?,
                    installation_id: r.try_get("installation_id")?,
                    plugin_id: r.try_get("plugin_id")?,
                    plugin_unique_identifier: r.try_get("plugin_unique_identifier")?,
                    runtime_type: r.try_get("runtime_type")?,
                    source: r.try_get("source")?,
                })
            })
            .collect()
    }
}
