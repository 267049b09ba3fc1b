//! Debugging keys (one per tenant, with an expiry) and the remote
//! installations of debugging plugins.
//!
//! The reference keeps keys in Redis with a two-way mapping and a TTL
//! (`internal/service/debugging_service/connection_key.go`); here one row per
//! tenant with `expires_at` gives the same behaviour and survives restarts.

use std::time::Duration;

use sqlx::Row;

use super::{installation_from_row, new_id, now_micros, Installation, Result, Store, StoreError};

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Store {
    /// The tenant's debugging key, created when missing or expired. Fetching
    /// it pushes the expiry to `ttl` from now, so a key in use stays stable.
    pub async fn debugging_key(&self, tenant_id: &str, ttl: Duration) -> Result<String> {
        // Two tries: a concurrent request for the same tenant may insert
        // between our read and our insert; then its key is the answer.
        for _ in 0..2 {
            let now = now_micros();
            let expires = now.saturating_add(micros(ttl));
            let row =
                sqlx::query("SELECT key, expires_at FROM debugging_keys WHERE tenant_id = $1")
                    .bind(tenant_id)
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(row) = row {
                let key: String = row.try_get("key")?;
                let expires_at: i64 = row.try_get("expires_at")?;
                if expires_at > now {
                    sqlx::query(
                        "UPDATE debugging_keys SET expires_at = $1, updated_at = $2 WHERE tenant_id = $3",
                    )
                    .bind(expires)
                    .bind(now)
                    .bind(tenant_id)
                    .execute(&self.pool)
                    .await?;
                    return Ok(key);
                }
                // Expired: replaced by a fresh key, as the reference's TTL
                // would have dropped it.
                sqlx::query("DELETE FROM debugging_keys WHERE tenant_id = $1 AND key = $2")
                    .bind(tenant_id)
                    .bind(&key)
                    .execute(&self.pool)
                    .await?;
            }
            let key = uuid::Uuid::new_v4().to_string();
            let inserted = sqlx::query(
                "INSERT INTO debugging_keys (id, created_at, updated_at, tenant_id, key, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new_id())
            .bind(now)
            .bind(now)
            .bind(tenant_id)
            .bind(&key)
            .bind(expires)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from);
            match inserted {
                Ok(_) => return Ok(key),
                Err(StoreError::UniqueViolation(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::UniqueViolation(
            "debugging key kept changing while it was created".into(),
        ))
    }

    /// The tenant a live debugging key belongs to. A key that is found has
    /// its expiry pushed to `ttl` from now (it is in use).
    pub async fn debugging_key_tenant(&self, key: &str, ttl: Duration) -> Result<Option<String>> {
        let now = now_micros();
        let row =
            sqlx::query("SELECT tenant_id FROM debugging_keys WHERE key = $1 AND expires_at > $2")
                .bind(key)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let tenant_id: String = row.try_get("tenant_id")?;
        sqlx::query("UPDATE debugging_keys SET expires_at = $1, updated_at = $2 WHERE key = $3")
            .bind(now.saturating_add(micros(ttl)))
            .bind(now)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(Some(tenant_id))
    }

    /// Every installation whose runtime type is `runtime_type`, all tenants.
    pub async fn installations_by_runtime_type(
        &self,
        runtime_type: &str,
    ) -> Result<Vec<Installation>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM plugin_installations WHERE runtime_type = $1 ORDER BY created_at, id",
            super::INSTALLATION_COLS
        ))
        .bind(runtime_type)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(installation_from_row).collect()
    }
}
