//! Queries the runtime hosts need at start-up: which packages to relaunch.

use super::{plugin_from_row, PluginRecord, Result, Store, PLUGIN_COLS};

impl Store {
    /// Every installed package of `install_type` (`local`, `serverless`),
    /// oldest first: what a starting daemon brings back up.
    pub async fn plugins_by_install_type(&self, install_type: &str) -> Result<Vec<PluginRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {PLUGIN_COLS} FROM plugins WHERE install_type = $1 ORDER BY created_at"
        ))
        .bind(install_type)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(plugin_from_row).collect()
    }
}
