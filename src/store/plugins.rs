//! Plugins, their declarations and readmes, and the installations and
//! provider rows of each tenant: installing bumps the plugin row's
//! `refers`, uninstalling the last reference removes the plugin and its
//! declaration, as the reference's `curd` does.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::Row;

use super::{
    installation_from_row, json_text, new_id, now_micros, parse_json, placeholders,
    plugin_from_row, provider_from_row, Installation, Installed, NewInstallation, PluginRecord,
    ProviderCategory, ProviderInstallation, Result, Store, StoreError, Uninstalled,
    UpgradeInstallation, Upgraded, INSTALLATION_COLS, PLUGIN_COLS, PROVIDER_COLS,
};

impl Store {
    /// Records the declaration of an uploaded package. Returns `false` when
    /// one was already stored (the first one wins, as in the reference).
    pub async fn insert_declaration(
        &self,
        identifier: &str,
        plugin_id: &str,
        declaration: &Value,
    ) -> Result<bool> {
        let now = now_micros();
        let done = sqlx::query(
            "INSERT INTO plugin_declarations (id, created_at, updated_at, plugin_unique_identifier, plugin_id, declaration) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (plugin_unique_identifier) DO NOTHING",
        )
        .bind(new_id())
        .bind(now)
        .bind(now)
        .bind(identifier)
        .bind(plugin_id)
        .bind(json_text(declaration))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The stored declaration of a package: the uploaded one, or the remote
    /// declaration of a debugging plugin.
    pub async fn declaration(&self, identifier: &str) -> Result<Option<Value>> {
        let row = sqlx::query(
            "SELECT declaration FROM plugin_declarations WHERE plugin_unique_identifier = $1",
        )
        .bind(identifier)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            // Rows written by an earlier version get today's list defaults.
            return Ok(Some(crate::package::declaration::restate(parse_json(
                "declaration",
                row.try_get("declaration")?,
            )?)));
        }
        let row = sqlx::query(
            "SELECT remote_declaration FROM plugins WHERE plugin_unique_identifier = $1 AND install_type = 'remote'",
        )
        .bind(identifier)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => {
                let text: Option<String> = row.try_get("remote_declaration")?;
                text.map(|t| parse_json("remote declaration", &t))
                    .transpose()
            }
            None => Ok(None),
        }
    }

    /// Removes a declaration no plugin row uses any more (undoing an upload).
    pub async fn delete_unused_declaration(&self, identifier: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM plugin_declarations WHERE plugin_unique_identifier = $1 \
             AND NOT EXISTS (SELECT 1 FROM plugins WHERE plugins.plugin_unique_identifier = $1)",
        )
        .bind(identifier)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    // ----- plugins and installations ------------------------------------

    /// The plugin row of a unique identifier.
    pub async fn plugin(&self, identifier: &str) -> Result<Option<PluginRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {PLUGIN_COLS} FROM plugins WHERE plugin_unique_identifier = $1"
        ))
        .bind(identifier)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(plugin_from_row).transpose()
    }

    /// Installs a plugin for a tenant in one transaction: the plugin row (its
    /// `refers` counted up), the installation and one provider row per
    /// category the declaration declares.
    pub async fn install_plugin(&self, new: &NewInstallation<'_>) -> Result<Installed> {
        let _change = self.installations.change();
        let mut tx = self.begin().await?;
        let existing = sqlx::query(
            "SELECT id FROM plugin_installations WHERE tenant_id = $1 AND plugin_id = $2",
        )
        .bind(new.tenant_id)
        .bind(new.plugin_id)
        .fetch_optional(&mut *tx)
        .await?;
        if existing.is_some() {
            return Err(StoreError::AlreadyInstalled);
        }
        let now = now_micros();
        let remote = (new.install_type == "remote").then(|| json_text(new.declaration));
        sqlx::query(
            "INSERT INTO plugins (id, created_at, updated_at, plugin_unique_identifier, plugin_id, refers, install_type, manifest_type, remote_declaration, source) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, 'plugin', $7, $8) ON CONFLICT (plugin_unique_identifier) DO NOTHING",
        )
        .bind(new_id())
        .bind(now)
        .bind(now)
        .bind(new.identifier)
        .bind(new.plugin_id)
        .bind(new.install_type)
        .bind(remote)
        .bind(new.source)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE plugins SET refers = refers + 1, updated_at = $1 WHERE plugin_unique_identifier = $2",
        )
        .bind(now)
        .bind(new.identifier)
        .execute(&mut *tx)
        .await?;
        let installation_id = new_id();
        let inserted = sqlx::query(&format!(
            "INSERT INTO plugin_installations ({INSTALLATION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, $8, $9)"
        ))
        .bind(&installation_id)
        .bind(now)
        .bind(now)
        .bind(new.tenant_id)
        .bind(new.plugin_id)
        .bind(new.identifier)
        .bind(new.install_type)
        .bind(new.source)
        .bind(json_text(new.meta))
        .execute(&mut *tx)
        .await;
        match inserted.map_err(StoreError::from) {
            Err(StoreError::UniqueViolation(_)) => return Err(StoreError::AlreadyInstalled),
            other => {
                other?;
            }
        }
        insert_providers(
            &mut tx,
            new.tenant_id,
            new.identifier,
            new.plugin_id,
            new.declaration,
            now,
        )
        .await?;
        let plugin = sqlx::query(&format!(
            "SELECT {PLUGIN_COLS} FROM plugins WHERE plugin_unique_identifier = $1"
        ))
        .bind(new.identifier)
        .fetch_one(&mut *tx)
        .await?;
        let plugin = plugin_from_row(&plugin)?;
        let installation = sqlx::query(&format!(
            "SELECT {INSTALLATION_COLS} FROM plugin_installations WHERE id = $1"
        ))
        .bind(&installation_id)
        .fetch_one(&mut *tx)
        .await?;
        let installation = installation_from_row(&installation)?;
        tx.commit().await?;
        Ok(Installed {
            plugin,
            installation,
        })
    }

    /// Removes a tenant's installation. `None` when it does not exist. When
    /// it was the last reference, the plugin row, its declaration, readmes and
    /// serverless runtime go too (`plugin_deleted`).
    pub async fn uninstall_plugin(
        &self,
        tenant_id: &str,
        installation_id: &str,
    ) -> Result<Option<Uninstalled>> {
        let _change = self.installations.change();
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {INSTALLATION_COLS} FROM plugin_installations WHERE id = $1 AND tenant_id = $2{}",
            self.lock()
        ))
        .bind(installation_id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let installation = installation_from_row(&row)?;
        let identifier = installation.plugin_unique_identifier.clone();
        let now = now_micros();
        sqlx::query(
            "UPDATE plugins SET refers = refers - 1, updated_at = $1 WHERE plugin_unique_identifier = $2",
        )
        .bind(now)
        .bind(&identifier)
        .execute(&mut *tx)
        .await?;
        let plugin = sqlx::query(&format!(
            "SELECT {PLUGIN_COLS} FROM plugins WHERE plugin_unique_identifier = $1"
        ))
        .bind(&identifier)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(plugin_from_row)
        .transpose()?;
        sqlx::query("DELETE FROM plugin_installations WHERE id = $1")
            .bind(installation_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM provider_installations WHERE tenant_id = $1 AND plugin_id = $2")
            .bind(tenant_id)
            .bind(&installation.plugin_id)
            .execute(&mut *tx)
            .await?;
        // Endpoints go with the installation, except a debugging (remote)
        // one's, which wait for the plugin to reconnect (reference:
        // `install_service/curd.go::UninstallPlugin`).
        if installation.runtime_type != "remote" {
            sqlx::query("DELETE FROM endpoints WHERE tenant_id = $1 AND plugin_id = $2")
                .bind(tenant_id)
                .bind(&installation.plugin_id)
                .execute(&mut *tx)
                .await?;
        }
        let plugin_deleted = plugin.as_ref().is_none_or(|p| p.refers <= 0);
        if plugin_deleted {
            delete_plugin_rows(&mut tx, &identifier).await?;
        }
        tx.commit().await?;
        Ok(Some(Uninstalled {
            installation,
            plugin,
            plugin_deleted,
        }))
    }

    /// Moves a tenant's installation from one package to another of the same
    /// plugin, in one transaction.
    pub async fn upgrade_plugin(&self, up: &UpgradeInstallation<'_>) -> Result<Upgraded> {
        let _change = self.installations.change();
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {INSTALLATION_COLS} FROM plugin_installations WHERE plugin_unique_identifier = $1 AND tenant_id = $2{}",
            self.lock()
        ))
        .bind(up.original_identifier)
        .bind(up.tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound("plugin has not been installed".into()));
        };
        let installation = installation_from_row(&row)?;
        let now = now_micros();
        let remote = (up.install_type == "remote").then(|| json_text(up.new_declaration));
        sqlx::query(
            "INSERT INTO plugins (id, created_at, updated_at, plugin_unique_identifier, plugin_id, refers, install_type, manifest_type, remote_declaration, source) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, 'plugin', $7, $8) ON CONFLICT (plugin_unique_identifier) DO NOTHING",
        )
        .bind(new_id())
        .bind(now)
        .bind(now)
        .bind(up.new_identifier)
        .bind(up.plugin_id)
        .bind(up.install_type)
        .bind(remote)
        .bind(up.source)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE plugin_installations SET plugin_unique_identifier = $1, source = $2, meta = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(up.new_identifier)
        .bind(up.source)
        .bind(json_text(up.meta))
        .bind(now)
        .bind(&installation.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE plugins SET refers = refers - 1, updated_at = $1 WHERE plugin_unique_identifier = $2",
        )
        .bind(now)
        .bind(up.original_identifier)
        .execute(&mut *tx)
        .await?;
        let original = sqlx::query(&format!(
            "SELECT {PLUGIN_COLS} FROM plugins WHERE plugin_unique_identifier = $1"
        ))
        .bind(up.original_identifier)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(plugin_from_row)
        .transpose()?;
        let mut deleted_plugin = None;
        if let Some(original) = original.filter(|p| p.refers <= 0) {
            delete_plugin_rows(&mut tx, up.original_identifier).await?;
            deleted_plugin = Some(original);
        }
        sqlx::query(
            "UPDATE plugins SET refers = refers + 1, updated_at = $1 WHERE plugin_unique_identifier = $2",
        )
        .bind(now)
        .bind(up.new_identifier)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM provider_installations WHERE tenant_id = $1 AND plugin_id = $2")
            .bind(up.tenant_id)
            .bind(&installation.plugin_id)
            .execute(&mut *tx)
            .await?;
        insert_providers(
            &mut tx,
            up.tenant_id,
            up.new_identifier,
            up.plugin_id,
            up.new_declaration,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Upgraded { deleted_plugin })
    }

    /// A tenant's installations, oldest first, one page, and the total count.
    pub async fn list_installations(
        &self,
        tenant_id: &str,
        page: i64,
        page_size: i64,
    ) -> Result<(Vec<Installation>, i64)> {
        let total: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM plugin_installations WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        let rows = sqlx::query(&format!(
            "SELECT {INSTALLATION_COLS} FROM plugin_installations WHERE tenant_id = $1 \
             ORDER BY created_at, id LIMIT $2 OFFSET $3"
        ))
        .bind(tenant_id)
        .bind(page_size)
        .bind((page - 1).max(0) * page_size)
        .fetch_all(&self.pool)
        .await?;
        let list = rows
            .iter()
            .map(installation_from_row)
            .collect::<Result<_>>()?;
        Ok((list, total))
    }

    /// A tenant's installations of the given plugin ids (at most 256).
    pub async fn installations_by_plugin_ids(
        &self,
        tenant_id: &str,
        plugin_ids: &[String],
    ) -> Result<Vec<Installation>> {
        if plugin_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {INSTALLATION_COLS} FROM plugin_installations WHERE tenant_id = $1 AND plugin_id IN ({}) \
             ORDER BY created_at, id LIMIT 256",
            placeholders(2, plugin_ids.len())
        );
        let mut q = sqlx::query(&sql).bind(tenant_id);
        for id in plugin_ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(installation_from_row).collect()
    }

    /// A tenant's installation by its id.
    pub async fn installation(&self, tenant_id: &str, id: &str) -> Result<Option<Installation>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTALLATION_COLS} FROM plugin_installations WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(installation_from_row).transpose()
    }

    /// A tenant's installation of a plugin (`author/name`).
    pub async fn installation_by_plugin_id(
        &self,
        tenant_id: &str,
        plugin_id: &str,
    ) -> Result<Option<Installation>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTALLATION_COLS} FROM plugin_installations WHERE tenant_id = $1 AND plugin_id = $2"
        ))
        .bind(tenant_id)
        .bind(plugin_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(installation_from_row).transpose()
    }

    /// The unique identifier of the package serving a tenant's plugin
    /// (`author/name`), `None` when not installed. Answered from memory while
    /// no install, uninstall or upgrade has finished since, for at most
    /// a second: the dispatch path asks this on every call.
    pub async fn installed_identifier(
        &self,
        tenant_id: &str,
        plugin_id: &str,
    ) -> Result<Option<String>> {
        if let Some(identifier) = self.installations.get(tenant_id, plugin_id) {
            return Ok(Some(identifier.to_string()));
        }
        let generation = self.installations.generation();
        let row = sqlx::query(
            "SELECT plugin_unique_identifier FROM plugin_installations WHERE tenant_id = $1 AND plugin_id = $2",
        )
        .bind(tenant_id)
        .bind(plugin_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let identifier: String = row.try_get("plugin_unique_identifier")?;
        self.installations
            .fill(tenant_id, plugin_id, &identifier, generation);
        Ok(Some(identifier))
    }

    /// A tenant's installation of one exact package.
    pub async fn installation_by_identifier(
        &self,
        tenant_id: &str,
        identifier: &str,
    ) -> Result<Option<Installation>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTALLATION_COLS} FROM plugin_installations WHERE tenant_id = $1 AND plugin_unique_identifier = $2"
        ))
        .bind(tenant_id)
        .bind(identifier)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(installation_from_row).transpose()
    }

    // ----- provider installations ---------------------------------------

    /// A tenant's providers of one category, one page.
    pub async fn list_providers(
        &self,
        tenant_id: &str,
        category: ProviderCategory,
        page: i64,
        page_size: i64,
    ) -> Result<Vec<ProviderInstallation>> {
        let rows = sqlx::query(&format!(
            "SELECT {PROVIDER_COLS} FROM provider_installations WHERE tenant_id = $1 AND category = $2 \
             ORDER BY created_at, id LIMIT $3 OFFSET $4"
        ))
        .bind(tenant_id)
        .bind(category.as_str())
        .bind(page_size)
        .bind((page - 1).max(0) * page_size)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(provider_from_row).collect()
    }

    /// A tenant's provider of one category declared by a plugin.
    pub async fn provider(
        &self,
        tenant_id: &str,
        category: ProviderCategory,
        plugin_id: &str,
    ) -> Result<Option<ProviderInstallation>> {
        let row = sqlx::query(&format!(
            "SELECT {PROVIDER_COLS} FROM provider_installations WHERE tenant_id = $1 AND category = $2 AND plugin_id = $3"
        ))
        .bind(tenant_id)
        .bind(category.as_str())
        .bind(plugin_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(provider_from_row).transpose()
    }

    /// A tenant's providers of one category declared by the given plugins.
    pub async fn providers_by_plugin_ids(
        &self,
        tenant_id: &str,
        category: ProviderCategory,
        plugin_ids: &[String],
    ) -> Result<Vec<ProviderInstallation>> {
        if plugin_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {PROVIDER_COLS} FROM provider_installations WHERE tenant_id = $1 AND category = $2 AND plugin_id IN ({}) LIMIT 256",
            placeholders(3, plugin_ids.len())
        );
        let mut q = sqlx::query(&sql).bind(tenant_id).bind(category.as_str());
        for id in plugin_ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(provider_from_row).collect()
    }

    /// The cached readmes of a package, language → markdown.
    pub async fn readmes(&self, identifier: &str) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query(
            "SELECT language, content FROM plugin_readmes WHERE plugin_unique_identifier = $1",
        )
        .bind(identifier)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("language")?, r.try_get("content")?)))
            .collect()
    }

    /// Caches the readmes of a package.
    pub async fn save_readmes(
        &self,
        identifier: &str,
        readmes: &BTreeMap<String, String>,
    ) -> Result<()> {
        let now = now_micros();
        let mut tx = self.begin().await?;
        for (language, content) in readmes {
            sqlx::query(
                "INSERT INTO plugin_readmes (id, created_at, updated_at, plugin_unique_identifier, language, content) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (plugin_unique_identifier, language) DO NOTHING",
            )
            .bind(new_id())
            .bind(now)
            .bind(now)
            .bind(identifier)
            .bind(language)
            .bind(content)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn insert_providers(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tenant_id: &str,
    identifier: &str,
    plugin_id: &str,
    declaration: &Value,
    now: i64,
) -> Result<()> {
    for (category, provider) in ProviderCategory::declared(declaration) {
        sqlx::query(
            "INSERT INTO provider_installations (id, created_at, updated_at, category, tenant_id, provider, plugin_unique_identifier, plugin_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(new_id())
        .bind(now)
        .bind(now)
        .bind(category.as_str())
        .bind(tenant_id)
        .bind(provider)
        .bind(identifier)
        .bind(plugin_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn delete_plugin_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    identifier: &str,
) -> Result<()> {
    for table in [
        "plugins",
        "plugin_declarations",
        "serverless_runtimes",
        "plugin_readmes",
    ] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE plugin_unique_identifier = $1"
        ))
        .bind(identifier)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
