//! The `serverless_runtimes` table: which Lambda function and published
//! version run each plugin package (reference:
//! `internal/types/models/serverless_runtime.go`).

use sqlx::Row;

use super::{new_id, now_micros, Result, Store, StoreError};

/// One deployed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerlessRuntimeRecord {
    pub plugin_unique_identifier: String,
    pub function_name: String,
    /// The published version sessions invoke.
    pub function_version: String,
    /// The function ARN (the reference keeps a function URL here).
    pub function_url: String,
    /// sha256 of the artifact the version runs.
    pub checksum: String,
}

impl Store {
    /// Records (or replaces) where `record.plugin_unique_identifier` runs.
    pub async fn upsert_serverless_runtime(&self, record: &ServerlessRuntimeRecord) -> Result<()> {
        let now = now_micros();
        sqlx::query(
            "INSERT INTO serverless_runtimes \
             (id, created_at, updated_at, plugin_unique_identifier, function_url, function_name, function_version, type, checksum) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'serverless', $8) \
             ON CONFLICT (plugin_unique_identifier) DO UPDATE SET \
             updated_at = excluded.updated_at, function_url = excluded.function_url, \
             function_name = excluded.function_name, function_version = excluded.function_version, \
             checksum = excluded.checksum",
        )
        .bind(new_id())
        .bind(now)
        .bind(now)
        .bind(&record.plugin_unique_identifier)
        .bind(&record.function_url)
        .bind(&record.function_name)
        .bind(&record.function_version)
        .bind(&record.checksum)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Where `identifier` runs, if it was deployed.
    pub async fn serverless_runtime(
        &self,
        identifier: &str,
    ) -> Result<Option<ServerlessRuntimeRecord>> {
        let row = sqlx::query(
            "SELECT plugin_unique_identifier, function_url, function_name, function_version, checksum \
             FROM serverless_runtimes WHERE plugin_unique_identifier = $1",
        )
        .bind(identifier)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| -> Result<_> {
            let get = |c: &str| row.try_get::<String, _>(c).map_err(StoreError::from);
            Ok(ServerlessRuntimeRecord {
                plugin_unique_identifier: get("plugin_unique_identifier")?,
                function_url: get("function_url")?,
                function_name: get("function_name")?,
                function_version: get("function_version")?,
                checksum: get("checksum")?,
            })
        })
        .transpose()
    }

    /// Every deployed package, oldest first.
    pub async fn serverless_runtimes(&self) -> Result<Vec<ServerlessRuntimeRecord>> {
        let rows = sqlx::query(
            "SELECT plugin_unique_identifier FROM serverless_runtimes ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("plugin_unique_identifier")?;
            if let Some(record) = self.serverless_runtime(&id).await? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Forgets where `identifier` ran. Absent rows are not an error.
    pub async fn delete_serverless_runtime(&self, identifier: &str) -> Result<()> {
        sqlx::query("DELETE FROM serverless_runtimes WHERE plugin_unique_identifier = $1")
            .bind(identifier)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
