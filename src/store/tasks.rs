//! Install tasks: one row per task, its plugins' states as a JSON list.

use super::{
    from_micros, new_id, now_micros, task_from_row, InstallTask, Result, Store, TaskPluginStatus,
    TaskStatus, TASK_COLS,
};

impl Store {
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
