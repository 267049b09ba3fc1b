//! The rows replicas coordinate through: nodes and their heartbeats.
//!
//! Liveness is judged by the database's clock, never by a replica's: two
//! machines whose clocks disagree still agree on which node went silent.
//! Every timestamp written here is therefore an SQL expression
//! ([`Store::now_sql`]) rather than a bound value.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{
    from_micros, installation_from_row, new_id, now_micros, task_from_row, Backend, InstallTask,
    Installation, Result, Store, TaskPluginStatus, TaskStatus, INSTALLATION_COLS, TASK_COLS,
};

/// A node as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    /// Base URL of its internal listener; empty when it has none.
    pub address: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub draining: bool,
    /// Whether its last heartbeat is within the timeout the query was given.
    pub alive: bool,
}

pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn node_from_row(r: &AnyRow) -> Result<NodeRecord> {
    Ok(NodeRecord {
        id: r.try_get("id")?,
        address: r.try_get("address")?,
        started_at: from_micros(r.try_get("started_at")?),
        heartbeat_at: from_micros(r.try_get("heartbeat_at")?),
        draining: r.try_get("draining")?,
        alive: r.try_get::<i64, _>("alive")? != 0,
    })
}

impl Store {
    /// Forgets the installed identifiers kept for the dispatch path: another
    /// node changed installations.
    pub fn forget_installations(&self) {
        drop(self.installations.change());
    }

    /// The database's current time in unix microseconds, as SQL.
    pub(super) fn now_sql(&self) -> &'static str {
        match self.backend {
            // clock_timestamp, not now(): now() is frozen at the start of
            // the transaction.
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS BIGINT)",
        }
    }

    /// Records this node as started now with a fresh heartbeat. `only`
    /// removes every other node first: on SQLite one daemon owns the file,
    /// so any other row is a previous run's.
    pub async fn register_node(&self, id: &str, address: &str, only: bool) -> Result<()> {
        let now = self.now_sql();
        let mut tx = self.begin().await?;
        if only {
            sqlx::query("DELETE FROM cluster_nodes WHERE id <> $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&format!(
            "INSERT INTO cluster_nodes (id, address, started_at, heartbeat_at, draining) \
             VALUES ($1, $2, {now}, {now}, FALSE) \
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, draining = FALSE"
        ))
        .bind(id)
        .bind(address)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets the address other nodes reach this one at.
    pub async fn set_node_address(&self, id: &str, address: &str) -> Result<()> {
        sqlx::query("UPDATE cluster_nodes SET address = $1 WHERE id = $2")
            .bind(address)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Refreshes the node's heartbeat. `false` when its row is gone: other
    /// nodes judged it dead and took its rows over.
    pub async fn node_heartbeat(&self, id: &str) -> Result<bool> {
        let done = sqlx::query(&format!(
            "UPDATE cluster_nodes SET heartbeat_at = {} WHERE id = $1",
            self.now_sql()
        ))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks the node as draining (stopping after its open work).
    pub async fn set_node_draining(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE cluster_nodes SET draining = TRUE WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes the node's row (a clean stop).
    pub async fn remove_node(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM cluster_nodes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every node, oldest first, `alive` judged against `timeout`.
    pub async fn nodes(&self, timeout: Duration) -> Result<Vec<NodeRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT id, address, started_at, heartbeat_at, draining, \
             CAST(CASE WHEN heartbeat_at >= {} - $1 THEN 1 ELSE 0 END AS BIGINT) AS alive \
             FROM cluster_nodes ORDER BY started_at, id",
            self.now_sql()
        ))
        .bind(micros(timeout))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(node_from_row).collect()
    }

    /// One node, `alive` judged against `timeout`.
    pub async fn node(&self, id: &str, timeout: Duration) -> Result<Option<NodeRecord>> {
        let row = sqlx::query(&format!(
            "SELECT id, address, started_at, heartbeat_at, draining, \
             CAST(CASE WHEN heartbeat_at >= {} - $1 THEN 1 ELSE 0 END AS BIGINT) AS alive \
             FROM cluster_nodes WHERE id = $2",
            self.now_sql()
        ))
        .bind(micros(timeout))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(node_from_row).transpose()
    }

    /// Deletes the nodes silent for longer than `timeout` and returns their
    /// ids. Each row is deleted by exactly one caller, so when several nodes
    /// reap at once every dead node is taken over once.
    pub async fn reap_dead_nodes(&self, timeout: Duration) -> Result<Vec<String>> {
        let now = self.now_sql();
        let dead = sqlx::query(&format!(
            "SELECT id FROM cluster_nodes WHERE heartbeat_at < {now} - $1"
        ))
        .bind(micros(timeout))
        .fetch_all(&self.pool)
        .await?;
        let mut reaped = Vec::new();
        for row in dead {
            let id: String = row.try_get("id")?;
            let done = sqlx::query(&format!(
                "DELETE FROM cluster_nodes WHERE id = $1 AND heartbeat_at < {now} - $2"
            ))
            .bind(&id)
            .bind(micros(timeout))
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 1 {
                reaped.push(id);
            }
        }
        Ok(reaped)
    }
}

impl Store {
    /// Takes the build lock `key` for `holder` (of node `node_id`) unless a
    /// live holder has it; `true` when taken.
    pub async fn try_lock_build(
        &self,
        key: &str,
        holder: &str,
        node_id: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let now = self.now_sql();
        let done = sqlx::query(&format!(
            "INSERT INTO build_locks (key, holder, node_id, expires_at) VALUES ($1, $2, $3, {now} + $4) \
             ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, node_id = excluded.node_id, \
             expires_at = excluded.expires_at WHERE build_locks.expires_at < {now}"
        ))
        .bind(key)
        .bind(holder)
        .bind(node_id)
        .bind(micros(ttl))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Releases the build lock `key` if `holder` still has it.
    pub async fn unlock_build(&self, key: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM build_locks WHERE key = $1 AND holder = $2")
            .bind(key)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Pushes the expiry of every lease `node_id` holds to `ttl` from now.
    pub async fn renew_leases(&self, node_id: &str, ttl: Duration) -> Result<()> {
        let now = self.now_sql();
        sqlx::query(&format!(
            "UPDATE build_locks SET expires_at = {now} + $1 WHERE node_id = $2"
        ))
        .bind(micros(ttl))
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        sqlx::query(&format!(
            "UPDATE install_tasks SET lease_expires_at = {now} + $1 \
             WHERE node_id = $2 AND status IN ('pending', 'running')"
        ))
        .bind(micros(ttl))
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lets every lease `node_id` holds expire now (a node handing its work
    /// over as it stops).
    pub async fn release_leases(&self, node_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM build_locks WHERE node_id = $1")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "UPDATE install_tasks SET lease_expires_at = 0 \
             WHERE node_id = $1 AND status IN ('pending', 'running')",
        )
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Unfinished tasks whose lease ended: none taken, expired, or held by a
/// node that is gone. `$1` is the node asking, `$2` whether its own leases
/// count as ended (a node starting again under the same id).
fn expired_task_condition(now: &str) -> String {
    format!(
        "status IN ('pending', 'running') AND (lease_expires_at IS NULL OR lease_expires_at < {now} \
         OR node_id IS NULL OR node_id NOT IN (SELECT id FROM cluster_nodes) \
         OR (node_id = $1 AND $2))"
    )
}

impl Store {
    /// Creates an install task leased by `node_id` for `ttl`.
    pub async fn create_leased_task(
        &self,
        tenant_id: &str,
        status: TaskStatus,
        plugins: Vec<TaskPluginStatus>,
        node_id: &str,
        ttl: Duration,
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
            "INSERT INTO install_tasks ({TASK_COLS}, node_id, lease_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {} + $10)",
            self.now_sql()
        ))
        .bind(&task.id)
        .bind(now)
        .bind(now)
        .bind(task.status.as_str())
        .bind(tenant_id)
        .bind(task.total_plugins)
        .bind(0i64)
        .bind(serde_json::to_string(&task.plugins).expect("task plugins serialize"))
        .bind(node_id)
        .bind(micros(ttl))
        .execute(&self.pool)
        .await?;
        Ok(task)
    }

    /// Takes over the unfinished tasks whose lease ended, leasing each to
    /// `node_id` for `ttl`; `own` counts `node_id`'s own leases as ended.
    /// A task is taken by one node only, however many ask at once.
    pub async fn claim_expired_tasks(
        &self,
        node_id: &str,
        ttl: Duration,
        own: bool,
    ) -> Result<Vec<InstallTask>> {
        let now = self.now_sql();
        let condition = expired_task_condition(now);
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLS} FROM install_tasks WHERE {condition}"
        ))
        .bind(node_id)
        .bind(own)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for row in &rows {
            let task = task_from_row(row)?;
            let done = sqlx::query(&format!(
                "UPDATE install_tasks SET node_id = $3, lease_expires_at = {now} + $4 \
                 WHERE id = $5 AND {condition}"
            ))
            .bind(node_id)
            .bind(own)
            .bind(node_id)
            .bind(micros(ttl))
            .bind(&task.id)
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 1 {
                claimed.push(task);
            }
        }
        Ok(claimed)
    }
}

impl Store {
    /// Records that the debugging plugin `identifier` is connected to
    /// `node_id` through the connection `holder` (taking it over from any
    /// earlier connection).
    pub async fn claim_remote(
        &self,
        identifier: &str,
        tenant_id: &str,
        plugin_id: &str,
        node_id: &str,
        holder: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO remote_owners (plugin_unique_identifier, tenant_id, plugin_id, node_id, holder, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (plugin_unique_identifier) DO UPDATE SET \
             tenant_id = excluded.tenant_id, plugin_id = excluded.plugin_id, node_id = excluded.node_id, \
             holder = excluded.holder, created_at = excluded.created_at",
        )
        .bind(identifier)
        .bind(tenant_id)
        .bind(plugin_id)
        .bind(node_id)
        .bind(holder)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets the claim of the connection `holder` on `identifier` (no-op
    /// when a later connection took it over).
    pub async fn release_remote(&self, identifier: &str, holder: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM remote_owners WHERE plugin_unique_identifier = $1 AND holder = $2",
        )
        .bind(identifier)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The node the debugging plugin `identifier` is connected to, `alive`
    /// judged against `timeout`.
    pub async fn remote_owner(
        &self,
        identifier: &str,
        timeout: Duration,
    ) -> Result<Option<NodeRecord>> {
        let row = sqlx::query(&format!(
            "SELECT n.id, n.address, n.started_at, n.heartbeat_at, n.draining, \
             CAST(CASE WHEN n.heartbeat_at >= {} - $1 THEN 1 ELSE 0 END AS BIGINT) AS alive \
             FROM remote_owners o JOIN cluster_nodes n ON n.id = o.node_id \
             WHERE o.plugin_unique_identifier = $2",
            self.now_sql()
        ))
        .bind(micros(timeout))
        .bind(identifier)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(node_from_row).transpose()
    }

    /// Debugging installations no live node serves: no owner row, an owner
    /// node gone or silent past `timeout`, or (`own`) owned by `node_id`
    /// itself, which has just started and holds no connection yet.
    pub async fn orphaned_remote_installations(
        &self,
        node_id: &str,
        timeout: Duration,
        own: bool,
    ) -> Result<Vec<Installation>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM plugin_installations i WHERE i.runtime_type = 'remote' AND NOT EXISTS ( \
             SELECT 1 FROM remote_owners o JOIN cluster_nodes n ON n.id = o.node_id \
             WHERE o.plugin_unique_identifier = i.plugin_unique_identifier \
             AND n.heartbeat_at >= {} - $1 AND NOT (o.node_id = $2 AND $3)) \
             ORDER BY i.created_at, i.id",
            INSTALLATION_COLS
                .split(", ")
                .map(|c| format!("i.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.now_sql()
        ))
        .bind(micros(timeout))
        .bind(node_id)
        .bind(own)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(installation_from_row).collect()
    }

    /// Removes the owner row of `identifier` if its node is gone or silent
    /// past `timeout`, or is `stale_node` (this node's earlier run), after
    /// its leftover installation was removed. A row a live node claimed
    /// meanwhile stays.
    pub async fn forget_remote_owner(
        &self,
        identifier: &str,
        timeout: Duration,
        stale_node: Option<&str>,
    ) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM remote_owners WHERE plugin_unique_identifier = $1 AND (node_id = $2 OR node_id NOT IN \
             (SELECT id FROM cluster_nodes WHERE heartbeat_at >= {} - $3))",
            self.now_sql()
        ))
        .bind(identifier)
        .bind(stale_node.unwrap_or(""))
        .bind(micros(timeout))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Store {
    /// Records that MCP session `session_id` of `server_id` lives on `node_id`.
    pub async fn record_mcp_session(
        &self,
        session_id: &str,
        server_id: &str,
        node_id: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO mcp_sessions (session_id, server_id, node_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (session_id) DO UPDATE SET server_id = excluded.server_id, node_id = excluded.node_id",
        )
        .bind(session_id)
        .bind(server_id)
        .bind(node_id)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets an MCP session (closed).
    pub async fn forget_mcp_session(&self, session_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM mcp_sessions WHERE session_id = $1")
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The node holding MCP session `session_id` of `server_id`, `alive`
    /// judged against `timeout`.
    pub async fn mcp_session_node(
        &self,
        session_id: &str,
        server_id: &str,
        timeout: Duration,
    ) -> Result<Option<NodeRecord>> {
        let row = sqlx::query(&format!(
            "SELECT n.id, n.address, n.started_at, n.heartbeat_at, n.draining, \
             CAST(CASE WHEN n.heartbeat_at >= {} - $1 THEN 1 ELSE 0 END AS BIGINT) AS alive \
             FROM mcp_sessions s JOIN cluster_nodes n ON n.id = s.node_id \
             WHERE s.session_id = $2 AND s.server_id = $3",
            self.now_sql()
        ))
        .bind(micros(timeout))
        .bind(session_id)
        .bind(server_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(node_from_row).transpose()
    }

    /// Forgets the MCP sessions of nodes gone or silent past `timeout`:
    /// they died with their node.
    pub async fn forget_dead_mcp_sessions(&self, timeout: Duration) -> Result<u64> {
        let done = sqlx::query(&format!(
            "DELETE FROM mcp_sessions WHERE node_id NOT IN \
             (SELECT id FROM cluster_nodes WHERE heartbeat_at >= {} - $1)",
            self.now_sql()
        ))
        .bind(micros(timeout))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
