//! The store: plugins, installations, declarations, install tasks and the
//! other rows of the daemon, over SQLite or PostgreSQL.
//!
//! One [`Store`] wraps an sqlx `Any` pool. The `Any` driver was chosen over an
//! enum of typed pools so that every query is written once: the schema keeps
//! to types both engines share (TEXT, BIGINT, BOOLEAN, BLOB/BYTEA), ids are
//! UUID strings, timestamps are unix microseconds, JSON documents are TEXT,
//! and placeholders are `$n`, which SQLite also accepts. The two engines differ
//! only in how a write transaction starts (SQLite takes the write lock up
//! front with `BEGIN IMMEDIATE`, so two writers never deadlock on a lock
//! upgrade) and in row locks (`FOR UPDATE`, PostgreSQL only). Migrations live
//! in `migrations/sqlite` and `migrations/postgres` and run at start-up.
//!
//! Semantics follow the reference daemon's `internal/types/models/curd`:
//! installing bumps the plugin row's `refers`, uninstalling the last
//! reference removes the plugin and its declaration.

mod cache;
mod debugging;
mod endpoints;
mod kv;
mod listing;
mod models;
mod runtimes;
mod serverless;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::MigrateDatabase;
use sqlx::{AnyPool, Row};

pub use endpoints::{default_expiry, EndpointRecord, NewEndpoint};
pub use kv::SqlKvStore;
pub use models::*;
pub use serverless::ServerlessRuntimeRecord;

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write.
    #[error("unique constraint violated: {0}")]
    UniqueViolation(String),
    /// The tenant already has an installation of this plugin.
    #[error("plugin already installed")]
    AlreadyInstalled,
    /// A row the operation needs does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A stored JSON document does not parse.
    #[error("corrupt {what} in the store: {source}")]
    Corrupt {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Opening the database failed.
    #[error("cannot open the database: {0}")]
    Open(String),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::UniqueViolation(db.message().to_owned())
            }
            _ => StoreError::Database(e),
        }
    }
}

impl From<StoreError> for crate::error::DaemonError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => crate::error::DaemonError::NotFound(m),
            other => crate::error::DaemonError::internal("database error", other),
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The migrations this binary applies to `backend` at start-up.
pub fn migrator(backend: Backend) -> &'static sqlx::migrate::Migrator {
    match backend {
        Backend::Sqlite => &SQLITE_MIGRATIONS,
        Backend::Postgres => &POSTGRES_MIGRATIONS,
    }
}

/// The daemon's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Installed identifiers for the dispatch path; see [`Store::installed_identifier`].
    installations: std::sync::Arc<cache::InstallationCache>,
}

/// Microseconds since the epoch, the stored form of every timestamp.
fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).expect("JSON values serialize")
}

fn parse_json(what: &'static str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt { what, source })
}

/// `$from, $from+1, …` for an IN list of `n` items.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const PLUGIN_COLS: &str = "id, created_at, updated_at, plugin_unique_identifier, plugin_id, refers, install_type, manifest_type, remote_declaration, source";
const INSTALLATION_COLS: &str = "id, created_at, updated_at, tenant_id, plugin_id, plugin_unique_identifier, runtime_type, endpoints_setups, endpoints_active, source, meta";
const PROVIDER_COLS: &str =
    "id, created_at, updated_at, tenant_id, provider, plugin_unique_identifier, plugin_id";
const TASK_COLS: &str =
    "id, created_at, updated_at, status, tenant_id, total_plugins, completed_plugins, plugins";

fn plugin_from_row(r: &AnyRow) -> Result<PluginRecord> {
    let remote: Option<String> = r.try_get("remote_declaration")?;
    Ok(PluginRecord {
        id: r.try_get("id")?,
        created_at: from_micros(r.try_get("created_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
        plugin_unique_identifier: r.try_get("plugin_unique_identifier")?,
        plugin_id: r.try_get("plugin_id")?,
        refers: r.try_get("refers")?,
        install_type: r.try_get("install_type")?,
        manifest_type: r.try_get("manifest_type")?,
        remote_declaration: remote
            .map(|t| parse_json("remote declaration", &t))
            .transpose()?,
        source: r.try_get("source")?,
    })
}

fn installation_from_row(r: &AnyRow) -> Result<Installation> {
    let meta: String = r.try_get("meta")?;
    Ok(Installation {
        id: r.try_get("id")?,
        created_at: from_micros(r.try_get("created_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
        tenant_id: r.try_get("tenant_id")?,
        plugin_id: r.try_get("plugin_id")?,
        plugin_unique_identifier: r.try_get("plugin_unique_identifier")?,
        runtime_type: r.try_get("runtime_type")?,
        endpoints_setups: r.try_get("endpoints_setups")?,
        endpoints_active: r.try_get("endpoints_active")?,
        source: r.try_get("source")?,
        meta: parse_json("installation meta", &meta)?,
    })
}

fn provider_from_row(r: &AnyRow) -> Result<ProviderInstallation> {
    Ok(ProviderInstallation {
        id: r.try_get("id")?,
        created_at: from_micros(r.try_get("created_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
        tenant_id: r.try_get("tenant_id")?,
        provider: r.try_get("provider")?,
        plugin_unique_identifier: r.try_get("plugin_unique_identifier")?,
        plugin_id: r.try_get("plugin_id")?,
    })
}

fn task_from_row(r: &AnyRow) -> Result<InstallTask> {
    let status: String = r.try_get("status")?;
    let plugins: String = r.try_get("plugins")?;
    Ok(InstallTask {
        id: r.try_get("id")?,
        created_at: from_micros(r.try_get("created_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
        status: TaskStatus::parse(&status),
        tenant_id: r.try_get("tenant_id")?,
        total_plugins: r.try_get("total_plugins")?,
        completed_plugins: r.try_get("completed_plugins")?,
        plugins: serde_json::from_str(&plugins).map_err(|source| StoreError::Corrupt {
            what: "install task plugins",
            source,
        })?,
    })
}

impl Store {
    /// Opens the database at `url` (`sqlite://…` or `postgres://…`), creating
    /// the SQLite file and its folder or the PostgreSQL database when missing,
    /// and runs the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Open(
                "database URL must start with sqlite: or postgres://".into(),
            ));
        };
        let url = match backend {
            Backend::Sqlite => {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or(path);
                if let Some(dir) = Path::new(path).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            StoreError::Open(format!("cannot create {}: {e}", dir.display()))
                        })?;
                    }
                }
                format!("sqlite://{path}?mode=rwc")
            }
            Backend::Postgres => {
                if !sqlx::Postgres::database_exists(url).await? {
                    match sqlx::Postgres::create_database(url).await {
                        Ok(()) => {}
                        // Another replica created it in the meantime.
                        Err(_) if sqlx::Postgres::database_exists(url).await? => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                url.to_owned()
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect(&url)
            .await
            .map_err(|e| StoreError::Open(e.to_string()))?;
        if backend == Backend::Sqlite {
            // WAL lets readers proceed while a writer holds the lock; the mode
            // is stored in the file, so setting it once is enough.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        let store = Self {
            pool,
            backend,
            installations: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        migrator(self.backend).run(&self.pool).await?;
        Ok(())
    }

    /// The engine behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for modules that keep their own tables
    /// (the MCP gateway's servers and tokens).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let stmt = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        Ok(self.pool.begin_with(stmt).await?)
    }

    /// ` FOR UPDATE` on PostgreSQL; SQLite's write transaction already holds
    /// the whole database.
    fn lock(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Row counts per table, for diagnostics and tests.
    pub async fn table_counts(&self) -> Result<BTreeMap<&'static str, i64>> {
        let mut out = BTreeMap::new();
        for table in [
            "plugins",
            "plugin_installations",
            "plugin_declarations",
            "install_tasks",
            "endpoints",
            "serverless_runtimes",
            "provider_installations",
            "plugin_storage",
            "debugging_keys",
            "plugin_readmes",
        ] {
            let n: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
            out.insert(table, n);
        }
        Ok(out)
    }

    // ----- declarations -------------------------------------------------

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

    // ----- install tasks -------------------------------------------------

    /// Creates an install task.
    pub async fn create_task(
        &self,
        tenant_id: &str,
        status: TaskStatus,
        plugins: Vec<TaskPluginStatus>,
    ) -> Result<InstallTask> {
        let now = now_micros();
        let task = InstallTask {
            id: new_id(),
            created_at: from_micros(now),
            updated_at: from_micros(now),
            status,
            tenant_id: tenant_id.to_owned(),
            total_plugins: plugins.len() as i64,
            completed_plugins: 0,
            plugins,
        };
        sqlx::query(&format!(
            "INSERT INTO install_tasks ({TASK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&task.id)
        .bind(now)
        .bind(now)
        .bind(task.status.as_str())
        .bind(tenant_id)
        .bind(task.total_plugins)
        .bind(0i64)
        .bind(serde_json::to_string(&task.plugins).expect("task plugins serialize"))
        .execute(&self.pool)
        .await?;
        Ok(task)
    }

    /// A tenant's task.
    pub async fn task(&self, tenant_id: &str, id: &str) -> Result<Option<InstallTask>> {
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLS} FROM install_tasks WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// A tenant's tasks, newest first, one page.
    pub async fn list_tasks(
        &self,
        tenant_id: &str,
        page: i64,
        page_size: i64,
    ) -> Result<Vec<InstallTask>> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLS} FROM install_tasks WHERE tenant_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(tenant_id)
        .bind(page_size)
        .bind((page - 1).max(0) * page_size)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// Deletes a task by id alone (the runner's clean-up of finished tasks).
    pub async fn delete_task_by_id(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM install_tasks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a tenant's task.
    pub async fn delete_task(&self, tenant_id: &str, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM install_tasks WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes every task of a tenant.
    pub async fn delete_all_tasks(&self, tenant_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM install_tasks WHERE tenant_id = $1")
            .bind(tenant_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Drops one plugin from a task; the task goes away when every plugin
    /// left has succeeded (reference semantics).
    pub async fn delete_task_item(
        &self,
        tenant_id: &str,
        id: &str,
        identifier: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLS} FROM install_tasks WHERE id = $1 AND tenant_id = $2{}",
            self.lock()
        ))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(());
        };
        let mut task = task_from_row(&row)?;
        task.plugins
            .retain(|p| p.plugin_unique_identifier != identifier);
        if task.plugins.iter().all(|p| p.status == TaskStatus::Success) {
            sqlx::query("DELETE FROM install_tasks WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        } else {
            write_task(&mut tx, &task).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets one plugin's status (when given) and message in a task, counting
    /// completions and deriving the task's status as the reference does.
    /// Returns the updated task, or `None` when the task or plugin is gone.
    pub async fn update_task_plugin(
        &self,
        task_id: &str,
        identifier: &str,
        status: Option<TaskStatus>,
        message: &str,
    ) -> Result<Option<InstallTask>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLS} FROM install_tasks WHERE id = $1{}",
            self.lock()
        ))
        .bind(task_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut task = task_from_row(&row)?;
        let Some(plugin) = task
            .plugins
            .iter_mut()
            .find(|p| p.plugin_unique_identifier == identifier)
        else {
            return Ok(None);
        };
        plugin.message = message.to_owned();
        let mut completed = 0;
        let mut failed = false;
        if let Some(status) = status {
            let previous = plugin.status;
            plugin.status = status;
            if status == TaskStatus::Success && previous != TaskStatus::Success {
                completed = 1;
            }
            failed = status == TaskStatus::Failed;
        }
        task.completed_plugins += completed;
        if failed {
            task.status = TaskStatus::Failed;
        }
        if task.plugins.iter().all(|p| p.status == TaskStatus::Success) {
            task.status = TaskStatus::Success;
        }
        task.updated_at = from_micros(now_micros());
        write_task(&mut tx, &task).await?;
        tx.commit().await?;
        Ok(Some(task))
    }

    /// Marks every pending or running task as failed, each unfinished plugin
    /// carrying `message`. Run at start-up: such tasks belonged to a daemon
    /// that stopped before finishing them. Returns how many tasks changed.
    pub async fn fail_unfinished_tasks(&self, message: &str) -> Result<u64> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLS} FROM install_tasks WHERE status IN ('pending', 'running'){}",
            self.lock()
        ))
        .fetch_all(&mut *tx)
        .await?;
        let mut n = 0;
        for row in &rows {
            let mut task = task_from_row(row)?;
            task.status = TaskStatus::Failed;
            for p in task
                .plugins
                .iter_mut()
                .filter(|p| p.status != TaskStatus::Success)
            {
                p.status = TaskStatus::Failed;
                p.message = message.to_owned();
            }
            task.updated_at = from_micros(now_micros());
            write_task(&mut tx, &task).await?;
            n += 1;
        }
        tx.commit().await?;
        Ok(n)
    }

    // ----- readmes --------------------------------------------------------

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

    // ----- plugin key-value storage ----------------------------------------

    /// A plugin's stored value.
    pub async fn kv_get(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query(
            "SELECT value FROM plugin_storage WHERE tenant_id = $1 AND plugin_id = $2 AND key = $3",
        )
        .bind(tenant_id)
        .bind(plugin_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("value").map_err(StoreError::from))
            .transpose()
    }

    /// Stores (or replaces) a plugin's value.
    pub async fn kv_set(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
        value: &[u8],
    ) -> Result<()> {
        let now = now_micros();
        sqlx::query(
            "INSERT INTO plugin_storage (id, created_at, updated_at, tenant_id, plugin_id, key, value) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant_id, plugin_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(new_id())
        .bind(now)
        .bind(now)
        .bind(tenant_id)
        .bind(plugin_id)
        .bind(key)
        .bind(value.to_vec())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes a plugin's value; `false` when there was none.
    pub async fn kv_delete(&self, tenant_id: &str, plugin_id: &str, key: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM plugin_storage WHERE tenant_id = $1 AND plugin_id = $2 AND key = $3",
        )
        .bind(tenant_id)
        .bind(plugin_id)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}

async fn write_task(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    task: &InstallTask,
) -> Result<()> {
    sqlx::query(
        "UPDATE install_tasks SET status = $1, completed_plugins = $2, total_plugins = $3, plugins = $4, updated_at = $5 WHERE id = $6",
    )
    .bind(task.status.as_str())
    .bind(task.completed_plugins)
    .bind(task.plugins.len() as i64)
    .bind(serde_json::to_string(&task.plugins).expect("task plugins serialize"))
    .bind(task.updated_at.timestamp_micros())
    .bind(&task.id)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
