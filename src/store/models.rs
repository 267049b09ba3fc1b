//! Rows of the store, serialized with the reference daemon's JSON field names
//! (`internal/types/models/*.go`), since several routes return them as is.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A package known to the daemon, shared by every tenant that installed it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRecord {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub plugin_unique_identifier: String,
    /// `author/name`; the reference names this JSON field `id` too, but the
    /// record's own id must win, so it keeps its column name here.
    pub plugin_id: String,
    /// How many installations use this package.
    pub refers: i64,
    pub install_type: String,
    pub manifest_type: String,
    /// The declaration of a remote (debugging) plugin.
    pub remote_declaration: Option<Value>,
    pub source: String,
}

/// One tenant's installation of a plugin.
#[derive(Debug, Clone, Serialize)]
pub struct Installation {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub tenant_id: String,
    pub plugin_id: String,
    pub plugin_unique_identifier: String,
    pub runtime_type: String,
    pub endpoints_setups: i64,
    pub endpoints_active: i64,
    pub source: String,
    pub meta: Value,
}

/// A provider a tenant's installation brings (a tool provider, a model
/// provider…). The reference keeps one table per category; their rows are
/// identical, so here they share one table with a category column.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderInstallation {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub tenant_id: String,
    pub provider: String,
    pub plugin_unique_identifier: String,
    pub plugin_id: String,
}

/// A model provider of a tenant joined with the installation bringing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelBinding {
    pub provider: String,
    pub installation_id: String,
    pub plugin_id: String,
    pub plugin_unique_identifier: String,
    pub runtime_type: String,
    pub source: String,
}

/// The kinds of provider a declaration can bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderCategory {
    Tool,
    Model,
    AgentStrategy,
    Datasource,
    Trigger,
}

impl ProviderCategory {
    /// Every category.
    pub const ALL: [ProviderCategory; 5] = [
        Self::Tool,
        Self::Model,
        Self::AgentStrategy,
        Self::Datasource,
        Self::Trigger,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Model => "model",
            Self::AgentStrategy => "agent_strategy",
            Self::Datasource => "datasource",
            Self::Trigger => "trigger",
        }
    }

    /// The declaration field holding this category's provider.
    pub fn declaration_field(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Model => "model",
            Self::AgentStrategy => "agent_strategy",
            Self::Datasource => "datasource",
            Self::Trigger => "trigger",
        }
    }

    /// The providers a declaration (as JSON) declares, with their names:
    /// `identity.name`, or `provider` for models (as the reference reads them).
    pub fn declared(declaration: &Value) -> Vec<(ProviderCategory, String)> {
        Self::ALL
            .into_iter()
            .filter_map(|c| {
                let provider = declaration.get(c.declaration_field())?;
                if provider.is_null() {
                    return None;
                }
                let name = match c {
                    Self::Model => provider.get("provider"),
                    _ => provider.get("identity").and_then(|i| i.get("name")),
                };
                Some((c, name.and_then(Value::as_str).unwrap_or("").to_owned()))
            })
            .collect()
    }
}

/// The state of an install task or of one plugin in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Success,
    Failed,
}

impl TaskStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name; unknown names read as failed.
    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "success" => Self::Success,
            _ => Self::Failed,
        }
    }
}

/// One plugin of an install task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPluginStatus {
    pub plugin_unique_identifier: String,
    pub labels: Value,
    pub icon: String,
    pub icon_dark: String,
    pub plugin_id: String,
    pub status: TaskStatus,
    pub message: String,
    pub source: String,
}

/// A background installation, polled by Dify.
#[derive(Debug, Clone, Serialize)]
pub struct InstallTask {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status: TaskStatus,
    pub tenant_id: String,
    pub total_plugins: i64,
    pub completed_plugins: i64,
    pub plugins: Vec<TaskPluginStatus>,
}

/// What [`super::Store::install_plugin`] writes.
#[derive(Debug, Clone)]
pub struct NewInstallation<'a> {
    pub tenant_id: &'a str,
    pub identifier: &'a str,
    pub plugin_id: &'a str,
    /// The runtime type: `local`, `remote` or `serverless`.
    pub install_type: &'a str,
    pub declaration: &'a Value,
    pub source: &'a str,
    pub meta: &'a Value,
}

/// The rows an installation created.
#[derive(Debug, Clone)]
pub struct Installed {
    pub plugin: PluginRecord,
    pub installation: Installation,
}

/// What an uninstall removed.
#[derive(Debug, Clone)]
pub struct Uninstalled {
    pub installation: Installation,
    /// The plugin row as it was after its `refers` went down.
    pub plugin: Option<PluginRecord>,
    /// The last reference went: the plugin and declaration rows are gone.
    pub plugin_deleted: bool,
}

/// What [`super::Store::upgrade_plugin`] changes.
#[derive(Debug, Clone)]
pub struct UpgradeInstallation<'a> {
    pub tenant_id: &'a str,
    pub original_identifier: &'a str,
    pub new_identifier: &'a str,
    pub plugin_id: &'a str,
    pub install_type: &'a str,
    pub new_declaration: &'a Value,
    pub source: &'a str,
    pub meta: &'a Value,
}

/// The outcome of an upgrade.
#[derive(Debug, Clone)]
pub struct Upgraded {
    /// The original package's plugin row, when the upgrade removed its last
    /// reference.
    pub deleted_plugin: Option<PluginRecord>,
}
