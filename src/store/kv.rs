//! The plugin key/value space over the `plugin_storage` table: the
//! [`KvStore`] that `storage` backwards invocations are served from.

use async_trait::async_trait;
use sqlx::Row;

use super::{new_id, now_micros, Backend, Store, StoreError};
use crate::backwards::{KvError, KvStore};

/// [`KvStore`] over the daemon's database; shares the store's pool.
#[derive(Debug, Clone)]
pub struct SqlKvStore {
    store: Store,
}

impl SqlKvStore {
    /// Storage in `store`'s `plugin_storage` table.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// SQL for the byte length of a stored value.
    fn length_fn(&self) -> &'static str {
        match self.store.backend {
            Backend::Sqlite => "length",
            Backend::Postgres => "octet_length",
        }
    }
}

fn backend(e: impl Into<StoreError>) -> KvError {
    KvError::Backend(e.into().to_string())
}

#[async_trait]
impl KvStore for SqlKvStore {
    async fn get(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        self.store
            .kv_get(tenant_id, plugin_id, key)
            .await
            .map_err(backend)
    }

    async fn set(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
        value: &[u8],
        max_total: u64,
    ) -> Result<(), KvError> {
        // The quota check and the write share one write transaction, so two
        // concurrent writers cannot both pass the check. SQLite's
        // `BEGIN IMMEDIATE` already serializes writers; PostgreSQL takes a
        // transaction-scoped advisory lock per tenant and plugin, because row
        // locks cannot stop a concurrent insert of a new key.
        let mut tx = self.store.begin().await.map_err(backend)?;
        if self.store.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(format!("plugin_storage:{tenant_id}:{plugin_id}"))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        let sql = format!(
            "SELECT CAST(COALESCE(SUM({}(value)), 0) AS BIGINT) AS used FROM plugin_storage \
             WHERE tenant_id = $1 AND plugin_id = $2 AND key <> $3",
            self.length_fn()
        );
        let row = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(plugin_id)
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let used: i64 = row.try_get("used").map_err(backend)?;
        let after = u64::try_from(used)
            .unwrap_or(0)
            .saturating_add(value.len() as u64);
        if after > max_total {
            return Err(KvError::QuotaExceeded);
        }
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
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn del(&self, tenant_id: &str, plugin_id: &str, key: &str) -> Result<bool, KvError> {
        self.store
            .kv_delete(tenant_id, plugin_id, key)
            .await
            .map_err(backend)
    }

    async fn exist(&self, tenant_id: &str, plugin_id: &str, key: &str) -> Result<bool, KvError> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM plugin_storage WHERE tenant_id = $1 AND plugin_id = $2 AND key = $3",
        )
        .bind(tenant_id)
        .bind(plugin_id)
        .bind(key)
        .fetch_optional(&self.store.pool)
        .await
        .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn usage(&self, tenant_id: &str, plugin_id: &str) -> Result<u64, KvError> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM({}(value)), 0) AS BIGINT) AS used FROM plugin_storage \
             WHERE tenant_id = $1 AND plugin_id = $2",
            self.length_fn()
        );
        let row = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(plugin_id)
            .fetch_one(&self.store.pool)
            .await
            .map_err(backend)?;
        let used: i64 = row.try_get("used").map_err(backend)?;
        Ok(u64::try_from(used).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn kv() -> (SqlKvStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kv.db").display());
        (SqlKvStore::new(Store::connect(&url, 4).await.unwrap()), dir)
    }

    #[tokio::test]
    async fn set_get_exist_del_round_trip() {
        let (kv, _dir) = kv().await;
        assert_eq!(kv.get("t", "a/b", "k").await.unwrap(), None);
        kv.set("t", "a/b", "k", b"hello", 100).await.unwrap();
        assert_eq!(
            kv.get("t", "a/b", "k").await.unwrap(),
            Some(b"hello".to_vec())
        );
        assert!(kv.exist("t", "a/b", "k").await.unwrap());
        assert!(!kv.exist("t", "a/c", "k").await.unwrap());
        assert_eq!(kv.usage("t", "a/b").await.unwrap(), 5);
        assert!(kv.del("t", "a/b", "k").await.unwrap());
        assert!(!kv.del("t", "a/b", "k").await.unwrap());
        assert_eq!(kv.usage("t", "a/b").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn quota_counts_other_keys_and_replacement() {
        let (kv, _dir) = kv().await;
        kv.set("t", "p", "a", &[0; 6], 10).await.unwrap();
        // Replacing a value counts only the new size.
        kv.set("t", "p", "a", &[0; 9], 10).await.unwrap();
        assert!(matches!(
            kv.set("t", "p", "b", &[0; 2], 10).await,
            Err(KvError::QuotaExceeded)
        ));
        assert_eq!(kv.get("t", "p", "b").await.unwrap(), None);
        // Another plugin has its own quota.
        kv.set("t", "q", "b", &[0; 10], 10).await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_writers_never_exceed_the_quota() {
        let (kv, _dir) = kv().await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let kv = kv.clone();
            tasks.push(tokio::spawn(async move {
                kv.set("t", "p", &format!("k{i}"), &[1; 40], 100).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 2);
        assert_eq!(kv.usage("t", "p").await.unwrap(), 80);
    }
}

impl Store {
    /// A plugin's stored value.
    pub async fn kv_get(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
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
    ) -> Result<(), StoreError> {
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
    pub async fn kv_delete(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
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
