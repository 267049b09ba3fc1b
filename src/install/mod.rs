//! Install tasks, upgrades and uninstalls (reference: `internal/service/
//! install_plugin.go`, `internal/tasks/`).
//!
//! Installing answers at once with a task id; a background tokio task per
//! plugin runs the [`InstallStep`] (where a runtime builds its environment and
//! launches the plugin), then records the installation and completes the
//! task. Dify polls the task. Every path ends the task as success or failed,
//! even when the step panics.

pub mod lambda_artifact;
pub mod local;
pub mod packages;
pub mod serverless;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use crate::error::{DaemonError, DaemonResult};
use crate::package::PluginUniqueIdentifier;
use crate::store::{
    NewInstallation, Store, StoreError, TaskPluginStatus, TaskStatus, UpgradeInstallation,
};

/// Message given to tasks a stopped daemon left unfinished.
pub const INTERRUPTED_MESSAGE: &str = "An unexpected daemon shutdown occurred";

/// A failure of an [`InstallStep`]; its text becomes the task's message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InstallStepError(pub String);

/// One plugin to bring up.
#[derive(Debug, Clone)]
pub struct InstallJob {
    pub tenant_id: String,
    pub identifier: String,
    pub plugin_id: String,
    pub declaration: Value,
    /// Storage key of the uploaded package.
    pub package_key: String,
}

/// Lets an [`InstallStep`] report progress into the task.
pub struct Progress {
    store: Store,
    task_ids: Vec<String>,
    identifier: String,
}

impl Progress {
    /// Shows `message` as the plugin's current task message.
    pub async fn info(&self, message: &str) {
        for task_id in &self.task_ids {
            if let Err(e) = self
                .store
                .update_task_plugin(task_id, &self.identifier, None, &truncate(message))
                .await
            {
                tracing::error!(error = %e, task_id, "cannot update install task");
            }
        }
    }
}

/// The runtime-specific part of installing: build the environment and launch
/// the plugin, or tear it down when the last installation goes.
#[async_trait]
pub trait InstallStep: Send + Sync + 'static {
    /// Makes the plugin runnable. Called before the installation is recorded.
    async fn ensure_runtime(
        &self,
        job: &InstallJob,
        progress: &Progress,
    ) -> Result<(), InstallStepError>;

    /// Stops and removes a package no installation uses any more.
    async fn remove_runtime(&self, identifier: &str) -> Result<(), InstallStepError>;
}

/// The step for runtimes that need no preparation.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopInstallStep;

#[async_trait]
impl InstallStep for NoopInstallStep {
    async fn ensure_runtime(&self, _: &InstallJob, _: &Progress) -> Result<(), InstallStepError> {
        Ok(())
    }
    async fn remove_runtime(&self, _: &str) -> Result<(), InstallStepError> {
        Ok(())
    }
}

/// The answer of install and upgrade: `{all_installed, task_id}`.
#[derive(Debug, Clone, Serialize)]
pub struct InstallStart {
    pub all_installed: bool,
    pub task_id: String,
}

/// Task messages are capped as in the reference: long ones keep their head
/// and tail.
fn truncate(message: &str) -> String {
    if message.len() <= 1024 {
        return message.to_owned();
    }
    let mut head = 512;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - 512;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}...{}", &message[..head], &message[tail..])
}

/// "15 minutes", "1 minute", "250 ms".
fn human_duration(d: Duration) -> String {
    match d.as_secs() {
        0 => format!("{} ms", d.as_millis()),
        60 => "1 minute".into(),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

/// Runs installs, upgrades and uninstalls.
pub struct Installer {
    store: Store,
    step: Arc<dyn InstallStep>,
    runtime_type: String,
    package_prefix: String,
    finished_task_ttl: Duration,
    install_timeout: Duration,
}

enum JobKind {
    Install { meta: Value },
    Upgrade { original: String, meta: Value },
}

impl Installer {
    /// An installer recording installations of `runtime_type` (`local` or
    /// `serverless`); packages are read from `package_prefix` in storage.
    pub fn new(
        store: Store,
        step: Arc<dyn InstallStep>,
        runtime_type: impl Into<String>,
        package_prefix: impl Into<String>,
    ) -> Self {
        Self {
            store,
            step,
            runtime_type: runtime_type.into(),
            package_prefix: package_prefix.into(),
            // The reference drops succeeded tasks after two minutes.
            finished_task_ttl: Duration::from_secs(120),
            // PLUGIN_INSTALL_TIMEOUT's default.
            install_timeout: Duration::from_secs(15 * 60),
        }
    }

    /// How long one plugin's install or upgrade may take before its task
    /// fails (PLUGIN_INSTALL_TIMEOUT). The step is dropped then, which
    /// stops whatever it had started (children are killed on drop).
    pub fn with_install_timeout(mut self, timeout: Duration) -> Self {
        self.install_timeout = timeout;
        self
    }

    /// How long a succeeded task stays visible.
    pub fn with_finished_task_ttl(mut self, ttl: Duration) -> Self {
        self.finished_task_ttl = ttl;
        self
    }

    /// Fails the tasks a previous daemon left pending or running.
    pub async fn recover(&self) -> Result<u64, StoreError> {
        let n = self
            .store
            .fail_unfinished_tasks(INTERRUPTED_MESSAGE)
            .await?;
        if n > 0 {
            tracing::warn!(tasks = n, "marked interrupted install tasks as failed");
        }
        Ok(n)
    }

    async fn declaration(&self, identifier: &str) -> DaemonResult<Value> {
        // The reference answers an internal error here; a bad request tells
        // the caller what to fix.
        self.store.declaration(identifier).await?.ok_or_else(|| {
            DaemonError::BadRequest(format!(
                "plugin {identifier} not found, please upload it firstly"
            ))
        })
    }

    fn status_for(
        identifier: &PluginUniqueIdentifier,
        declaration: &Value,
        source: &str,
    ) -> TaskPluginStatus {
        let text = |k: &str| {
            declaration
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        TaskPluginStatus {
            plugin_unique_identifier: identifier.to_string(),
            labels: declaration
                .get("label")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default())),
            icon: text("icon"),
            icon_dark: text("icon_dark"),
            plugin_id: identifier.plugin_id().to_owned(),
            status: TaskStatus::Pending,
            message: String::new(),
            source: source.to_owned(),
        }
    }

    /// Installs packages for a tenant. Answers `all_installed` when the
    /// tenant already has every plugin, else starts a task.
    pub async fn install(
        self: &Arc<Self>,
        tenant_id: &str,
        identifiers: &[PluginUniqueIdentifier],
        source: &str,
        metas: Vec<Value>,
    ) -> DaemonResult<InstallStart> {
        let mut all_installed = true;
        for id in identifiers {
            if self
                .store
                .installation_by_plugin_id(tenant_id, id.plugin_id())
                .await?
                .is_none()
            {
                all_installed = false;
            }
        }
        if all_installed {
            return Ok(InstallStart {
                all_installed: true,
                task_id: String::new(),
            });
        }
        let mut declarations = Vec::with_capacity(identifiers.len());
        for id in identifiers {
            declarations.push(self.declaration(&id.to_string()).await?);
        }
        let statuses = identifiers
            .iter()
            .zip(&declarations)
            .map(|(id, d)| Self::status_for(id, d, source))
            .collect();
        let task = self
            .store
            .create_task(tenant_id, TaskStatus::Running, statuses)
            .await?;
        for ((id, declaration), meta) in identifiers.iter().zip(declarations).zip(metas) {
            let job = self.job(tenant_id, id, declaration);
            self.spawn(
                task.id.clone(),
                job,
                source.to_owned(),
                JobKind::Install { meta },
            );
        }
        Ok(InstallStart {
            all_installed: false,
            task_id: task.id,
        })
    }

    fn job(&self, tenant_id: &str, id: &PluginUniqueIdentifier, declaration: Value) -> InstallJob {
        InstallJob {
            tenant_id: tenant_id.to_owned(),
            identifier: id.to_string(),
            plugin_id: id.plugin_id().to_owned(),
            declaration,
            package_key: format!("{}/{}", self.package_prefix, id),
        }
    }

    /// Moves a tenant's installation to another package of the same plugin.
    pub async fn upgrade(
        self: &Arc<Self>,
        tenant_id: &str,
        original: &PluginUniqueIdentifier,
        new: &PluginUniqueIdentifier,
        source: &str,
        meta: Value,
    ) -> DaemonResult<InstallStart> {
        if self
            .store
            .installation_by_identifier(tenant_id, &original.to_string())
            .await?
            .is_none()
        {
            return Err(DaemonError::NotFound(
                "plugin installation not found for this tenant".into(),
            ));
        }
        let declaration = self.declaration(&new.to_string()).await?;
        if self.store.plugin(&new.to_string()).await?.is_some() {
            // The package already runs for another tenant: switch at once.
            self.record_upgrade(
                tenant_id,
                &original.to_string(),
                new,
                &declaration,
                source,
                &meta,
            )
            .await?;
            return Ok(InstallStart {
                all_installed: true,
                task_id: String::new(),
            });
        }
        let status = Self::status_for(new, &declaration, source);
        let task = self
            .store
            .create_task(tenant_id, TaskStatus::Running, vec![status])
            .await?;
        let job = self.job(tenant_id, new, declaration);
        self.spawn(
            task.id.clone(),
            job,
            source.to_owned(),
            JobKind::Upgrade {
                original: original.to_string(),
                meta,
            },
        );
        Ok(InstallStart {
            all_installed: false,
            task_id: task.id,
        })
    }

    async fn record_upgrade(
        &self,
        tenant_id: &str,
        original: &str,
        new: &PluginUniqueIdentifier,
        declaration: &Value,
        source: &str,
        meta: &Value,
    ) -> DaemonResult<()> {
        let new_id = new.to_string();
        let outcome = self
            .store
            .upgrade_plugin(&UpgradeInstallation {
                tenant_id,
                original_identifier: original,
                new_identifier: &new_id,
                plugin_id: new.plugin_id(),
                install_type: &self.runtime_type,
                new_declaration: declaration,
                source,
                meta,
            })
            .await?;
        if outcome.deleted_plugin.is_some() {
            if let Err(e) = self.step.remove_runtime(original).await {
                tracing::error!(error = %e, identifier = original, "cannot remove the replaced plugin");
            }
        }
        Ok(())
    }

    /// Removes a tenant's installation; an unknown id is not an error.
    pub async fn uninstall(&self, tenant_id: &str, installation_id: &str) -> DaemonResult<()> {
        let Some(outcome) = self
            .store
            .uninstall_plugin(tenant_id, installation_id)
            .await?
        else {
            return Ok(());
        };
        if outcome.plugin_deleted {
            let identifier = &outcome.installation.plugin_unique_identifier;
            self.step
                .remove_runtime(identifier)
                .await
                .map_err(|e| DaemonError::internal("cannot stop the plugin", e))?;
        }
        Ok(())
    }

    fn spawn(self: &Arc<Self>, task_id: String, job: InstallJob, source: String, kind: JobKind) {
        let this = self.clone();
        tokio::spawn(async move {
            let identifier = job.identifier.clone();
            let inner = {
                let this = this.clone();
                let task_id = task_id.clone();
                let limit = this.install_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(limit, this.run_job(&task_id, job, &source, kind))
                        .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => Err(format!(
                            "installation timed out after {} (PLUGIN_INSTALL_TIMEOUT)",
                            human_duration(limit)
                        )),
                    }
                })
            };
            let outcome = match inner.await {
                Ok(outcome) => outcome,
                Err(e) => Err(format!("installation stopped unexpectedly: {e}")),
            };
            let (status, message) = match outcome {
                Ok(message) => (TaskStatus::Success, message),
                Err(message) => (TaskStatus::Failed, message),
            };
            match this
                .store
                .update_task_plugin(&task_id, &identifier, Some(status), &truncate(&message))
                .await
            {
                Ok(Some(task)) if task.status == TaskStatus::Success => {
                    let ttl = this.finished_task_ttl;
                    let store = this.store.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(ttl).await;
                        if let Err(e) = store.delete_task_by_id(&task_id).await {
                            tracing::warn!(error = %e, task_id, "cannot drop a finished install task");
                        }
                    });
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, task_id, "cannot finish install task"),
            }
        });
    }

    /// Runs one job; the message of its final status.
    async fn run_job(
        &self,
        task_id: &str,
        job: InstallJob,
        source: &str,
        kind: JobKind,
    ) -> Result<String, String> {
        self.store
            .update_task_plugin(
                task_id,
                &job.identifier,
                Some(TaskStatus::Running),
                "starting",
            )
            .await
            .map_err(|e| e.to_string())?;
        let progress = Progress {
            store: self.store.clone(),
            task_ids: vec![task_id.to_owned()],
            identifier: job.identifier.clone(),
        };
        self.step
            .ensure_runtime(&job, &progress)
            .await
            .map_err(|e| format!("failed to start installation: {e}"))?;
        match kind {
            JobKind::Install { meta } => {
                let recorded = self
                    .store
                    .install_plugin(&NewInstallation {
                        tenant_id: &job.tenant_id,
                        identifier: &job.identifier,
                        plugin_id: &job.plugin_id,
                        install_type: &self.runtime_type,
                        declaration: &job.declaration,
                        source,
                        meta: &meta,
                    })
                    .await;
                match recorded {
                    Ok(_) | Err(StoreError::AlreadyInstalled) => Ok("installed".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
            JobKind::Upgrade { original, meta } => {
                let new: PluginUniqueIdentifier = job
                    .identifier
                    .parse()
                    .map_err(|e: crate::package::IdentifierError| e.to_string())?;
                self.record_upgrade(
                    &job.tenant_id,
                    &original,
                    &new,
                    &job.declaration,
                    source,
                    &meta,
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok("upgraded".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_keep_head_and_tail() {
        let msg = format!("{}{}", "a".repeat(600), "é".repeat(600));
        let t = truncate(&msg);
        assert!(t.len() <= 1027, "{}", t.len());
        assert!(t.starts_with("aaa") && t.ends_with("é") && t.contains("..."));
        assert_eq!(truncate("short"), "short");
    }
}
