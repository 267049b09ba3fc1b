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
//!
//! This module holds the connection, the shared row mappers and the
//! records; each aggregate's queries live in a module of their own:
//! `plugins` (plugins, declarations, installations, providers, readmes),
//! `tasks`, `endpoints`, `kv` (plugin storage), `serverless` and `runtimes`,
//! `debugging`, `cluster` (nodes, leases, build locks, forwarded owners and
//! MCP sessions) and `listing`.

mod cache;
mod cluster;
mod debugging;
mod endpoints;
mod kv;
mod listing;
mod models;
mod plugins;
mod runtimes;
mod serverless;
mod tasks;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::MigrateDatabase;
use sqlx::{AnyPool, Row};

pub use cluster::NodeRecord;
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
}
