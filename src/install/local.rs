//! The install step of the local platform: unpack the uploaded package into
//! the working folder, build its uv environment, launch it as a child
//! process and register it; stop it when its last installation goes
//! (reference: `internal/core/plugin_manager/install_to_local.go`).
//!
//! An install always proves the plugin starts. At daemon start, with idle
//! stopping on, installed plugins are prepared (folder verified,
//! environment checked) and registered without a process: each starts at
//! its first call.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{InstallJob, InstallStep, InstallStepError, Progress};
use crate::package::{self, DecodeLimits};
use crate::runtime::sandbox::code;
use crate::runtime::{
    EnvProgress, LaunchSpec, LocalHost, LocalRuntime, PluginRuntime, Registry, RuntimeState,
};
use crate::storage::Storage;
use crate::store::Store;

/// How many progress lines may wait for the task record.
const PROGRESS_QUEUE: usize = 64;

/// Whether a launch must see the plugin start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Start it and wait for its first heartbeat (installs, and daemon
    /// starts without idle stopping).
    Now,
    /// Register it without a process; its first session starts it.
    OnDemand,
}

/// Runs plugins as local child processes.
pub struct LocalInstallStep {
    host: LocalHost,
    storage: Arc<dyn Storage>,
    registry: Arc<Registry>,
    /// PLUGIN_WORKING_PATH: one folder per unpacked package.
    working_path: PathBuf,
    /// Storage key prefix of uploaded packages.
    package_prefix: String,
    max_package_size: u64,
    /// The same runtimes as in the registry, with their local handles
    /// (process id, open sessions) for diagnostics.
    runtimes: Mutex<HashMap<String, LocalRuntime>>,
}

impl std::fmt::Debug for LocalInstallStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalInstallStep")
            .field("working_path", &self.working_path)
            .finish_non_exhaustive()
    }
}

/// The folder name of a package: its identifier with the characters that
/// are not safe in a path (`/`, `:`) replaced.
pub fn package_dir_name(identifier: &str) -> String {
    identifier
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '@' => c,
            _ => '_',
        })
        .collect()
}

impl LocalInstallStep {
    /// A step launching through `host`, registering into `registry`, reading
    /// packages from `storage` under `package_prefix` and unpacking them under
    /// `working_path`.
    pub fn new(
        host: LocalHost,
        storage: Arc<dyn Storage>,
        registry: Arc<Registry>,
        working_path: PathBuf,
        package_prefix: impl Into<String>,
        max_package_size: u64,
    ) -> Self {
        Self {
            host,
            storage,
            registry,
            working_path,
            package_prefix: package_prefix.into(),
            max_package_size,
            runtimes: Mutex::new(HashMap::new()),
        }
    }

    /// The local handle of a running plugin.
    pub fn runtime(&self, identifier: &str) -> Option<LocalRuntime> {
        self.runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(identifier)
            .cloned()
    }

    /// Where `identifier` is unpacked.
    pub fn plugin_dir(&self, identifier: &str) -> PathBuf {
        self.working_path.join(package_dir_name(identifier))
    }

    /// Unpacks the stored package unless a previous install already did and
    /// the folder still matches the package; a folder that does not is
    /// removed and unpacked again, never run. The files land in a temporary
    /// folder that is renamed into place, so a crash never leaves a
    /// half-written plugin folder behind. Returns the package's file names
    /// when it unpacked.
    async fn unpack(
        &self,
        identifier: &str,
    ) -> Result<(PathBuf, Option<Arc<BTreeSet<String>>>), InstallStepError> {
        let dir = self.plugin_dir(identifier);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            let expected = code::identifier_checksum(identifier).map(str::to_owned);
            let check_dir = dir.clone();
            let checked = tokio::task::spawn_blocking(move || match expected {
                Some(sum) => code::verify(&check_dir, &sum).map_err(|e| e.to_string()),
                None => Err("the identifier carries no checksum".to_owned()),
            })
            .await
            .map_err(|e| InstallStepError(format!("checking the plugin folder stopped: {e}")))?;
            match checked {
                Ok(()) => return Ok((dir, None)),
                Err(why) => {
                    tracing::error!(%identifier, dir = %dir.display(), "the plugin folder does not match its package ({why}); unpacking it again");
                    tokio::fs::remove_dir_all(&dir).await.map_err(|e| {
                        InstallStepError(format!("cannot remove {}: {e}", dir.display()))
                    })?;
                }
            }
        }
        let key = format!("{}/{identifier}", self.package_prefix);
        let bytes =
            self.storage.get(&key).await.map_err(|e| {
                InstallStepError(format!("cannot read the package {identifier}: {e}"))
            })?;
        let limits = DecodeLimits::for_package_size(self.max_package_size);
        let working_path = self.working_path.clone();
        let target = dir.clone();
        let files = tokio::task::spawn_blocking(move || {
            write_package(&bytes, &limits, &working_path, &target)
        })
        .await
        .map_err(|e| InstallStepError(format!("unpacking stopped: {e}")))??;
        Ok((dir, Some(Arc::new(files))))
    }

    /// Unpacks, builds the environment and launches `identifier`, reporting
    /// progress lines through `report`; registers the plugin.
    async fn launch<F, Fut>(
        &self,
        identifier: &str,
        declaration: &Value,
        start: Start,
        mut report: F,
    ) -> Result<(), InstallStepError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        if let Some(running) = self.registry.get(identifier) {
            match running.state() {
                RuntimeState::Stopped | RuntimeState::Failed(_) => {}
                // Registered but not running: an install still proves it
                // starts.
                RuntimeState::Idle if start == Start::Now => {
                    report("starting the plugin".into()).await;
                    running
                        .wait_ready(self.host.options().heartbeat_timeout)
                        .await
                        .map_err(|e| {
                            InstallStepError(format!("plugin {identifier} did not start: {e}"))
                        })?;
                    report("plugin ready".into()).await;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        report("unpacking the package".into()).await;
        let (dir, package_files) = self.unpack(identifier).await?;
        let runner = declaration.pointer("/meta/runner");
        let entrypoint = runner
            .and_then(|r| r.get("entrypoint"))
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .unwrap_or("main")
            .to_owned();
        let runner_version = runner
            .and_then(|r| r.get("version"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let spec = LaunchSpec {
            identity: identifier.to_owned(),
            working_dir: dir,
            entrypoint,
            runner_version,
            env: vec![],
            memory: declaration
                .pointer("/resource/memory")
                .and_then(Value::as_u64),
            package_files,
        };
        // The environment builder reports synchronously; its lines go through
        // a bounded queue to the task record. When the queue is full a line
        // is dropped: progress text is informational.
        let (tx, mut rx) = mpsc::channel::<String>(PROGRESS_QUEUE);
        let progress = Arc::new(move |p: EnvProgress| {
            let text = match p.line {
                Some(line) => format!("{}: {line}", p.phase.label()),
                None => p.phase.label().to_owned(),
            };
            let _ = tx.try_send(text);
        });
        let prepare = self.host.prepare(spec, progress);
        tokio::pin!(prepare);
        let prepared = loop {
            tokio::select! {
                prepared = &mut prepare => break prepared,
                Some(line) = rx.recv() => report(line).await,
            }
        };
        while let Ok(line) = rx.try_recv() {
            report(line).await;
        }
        let fail = |e| InstallStepError(format!("plugin {identifier} did not start: {e}"));
        let process = prepared.map_err(fail)?;
        let runtime = match start {
            Start::Now => self.host.start(process).await.map_err(fail)?,
            Start::OnDemand => self.host.dormant(process),
        };
        watch_restarts(&runtime);
        self.runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(identifier.to_owned(), runtime.clone());
        report(match start {
            Start::Now => "plugin ready".into(),
            Start::OnDemand => "plugin ready to start at its first call".into(),
        })
        .await;
        if let Some(old) = self
            .registry
            .insert(identifier.to_owned(), Arc::new(runtime))
        {
            // Two launches raced; the newest one serves.
            tokio::spawn(async move { old.shutdown().await });
        }
        Ok(())
    }

    /// Launches every local plugin recorded in `store`, at most
    /// `concurrency` at a time. A plugin that fails to start is logged and
    /// left out; the others still come up. With idle stopping on, plugins
    /// are prepared and registered but started by their first call.
    pub async fn relaunch_installed(&self, store: &Store, concurrency: usize) {
        let plugins = match store.plugins_by_install_type("local").await {
            Ok(plugins) => plugins,
            Err(e) => {
                tracing::error!(error = %e, "cannot list installed plugins to relaunch");
                return;
            }
        };
        if plugins.is_empty() {
            return;
        }
        let start = self.unattended_start();
        let count = plugins.len();
        tracing::info!(
            count,
            on_demand = start == Start::OnDemand,
            "relaunching installed plugins"
        );
        let began = Instant::now();
        // Each plugin's own time, to show in the log whether launches ran
        // side by side (the slowest sets the pace) or one after another
        // (the sum does).
        let took = Mutex::new(Vec::with_capacity(count));
        let took = &took;
        futures::StreamExt::for_each_concurrent(
            futures::stream::iter(plugins),
            concurrency.max(1),
            |plugin| async move {
                let identifier = plugin.plugin_unique_identifier;
                let declaration = match store.declaration(&identifier).await {
                    Ok(Some(d)) => d,
                    Ok(None) => {
                        tracing::error!(%identifier, "installed plugin has no declaration");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(%identifier, error = %e, "cannot read a declaration");
                        return;
                    }
                };
                let started = Instant::now();
                let result = self
                    .launch(&identifier, &declaration, start, |line| {
                        let identifier = identifier.clone();
                        async move { tracing::debug!(%identifier, "{line}") }
                    })
                    .await;
                took.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(started.elapsed());
                match result {
                    Ok(()) => tracing::info!(%identifier, "plugin relaunched"),
                    Err(e) => tracing::error!(%identifier, "relaunch failed: {e}"),
                }
            },
        )
        .await;
        let took = std::mem::take(&mut *took.lock().unwrap_or_else(|e| e.into_inner()));
        let slowest = took.iter().max().copied().unwrap_or_default();
        let sum: std::time::Duration = took.iter().sum();
        tracing::info!(
            count,
            concurrency,
            wall_ms = began.elapsed().as_millis() as u64,
            slowest_ms = slowest.as_millis() as u64,
            sum_ms = sum.as_millis() as u64,
            "installed plugins relaunched"
        );
    }
}

impl LocalInstallStep {
    /// How a plugin no install is waiting for starts (daemon start,
    /// another replica's install, dispatch catching up): with idle stopping
    /// on it is only registered and its first session starts it.
    fn unattended_start(&self) -> Start {
        if self.host.options().idle_timeout.is_some() {
            Start::OnDemand
        } else {
            Start::Now
        }
    }

    /// Makes sure the installed package `identifier` runs on this node
    /// (unpacked from storage and its environment built when this node's
    /// working path lacks them); a no-op when it already runs. Callers that
    /// may race (change notifications, dispatch, start-up) go through one
    /// start per identifier: `crate::cluster::launcher`.
    pub async fn ensure_running(
        &self,
        store: &Store,
        identifier: &str,
    ) -> Result<(), InstallStepError> {
        let declaration = store
            .declaration(identifier)
            .await
            .map_err(|e| InstallStepError(format!("cannot read the declaration: {e}")))?
            .ok_or_else(|| InstallStepError(format!("{identifier} has no declaration")))?;
        let started = Instant::now();
        let result = self
            .launch(
                identifier,
                &declaration,
                self.unattended_start(),
                |line| async move { tracing::debug!(%identifier, "{line}") },
            )
            .await;
        crate::metrics::record_install(result.is_ok(), started.elapsed());
        result
    }
}

#[async_trait]
impl InstallStep for LocalInstallStep {
    async fn ensure_runtime(
        &self,
        job: &InstallJob,
        progress: &Progress,
    ) -> Result<(), InstallStepError> {
        let started = Instant::now();
        let result = self
            .launch(
                &job.identifier,
                &job.declaration,
                Start::Now,
                |line| async move { progress.info(&line).await },
            )
            .await;
        crate::metrics::record_install(result.is_ok(), started.elapsed());
        if result.is_err() && self.registry.get(&job.identifier).is_none() {
            // A failed install leaves nothing behind: the next attempt
            // unpacks and builds afresh.
            self.remove_folders(&job.identifier).await;
        }
        result
    }

    async fn remove_runtime(&self, identifier: &str) -> Result<(), InstallStepError> {
        self.runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(identifier);
        if let Some(runtime) = self.registry.remove(identifier) {
            runtime.shutdown().await;
        }
        let dir = self.plugin_dir(identifier);
        if let Err(e) = self.host.sandbox().remove_data(&dir) {
            tracing::warn!(%identifier, "cannot remove the plugin's data folder: {e}");
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(InstallStepError(format!(
                "cannot remove {}: {e}",
                dir.display()
            ))),
        }
    }
}

impl LocalInstallStep {
    /// Removes a plugin's code and data folders, logging what cannot go.
    async fn remove_folders(&self, identifier: &str) {
        let dir = self.plugin_dir(identifier);
        if let Err(e) = self.host.sandbox().remove_data(&dir) {
            tracing::warn!(%identifier, "cannot remove the plugin's data folder: {e}");
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => tracing::info!(%identifier, "removed the folder of a failed install"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(%identifier, "cannot remove {}: {e}", dir.display()),
        }
    }

    /// Removes what interrupted unpacks and interpreter copies left in the
    /// working path (their temporary folders), once at start. Only folders
    /// older than an hour go: another replica sharing the path may be
    /// unpacking right now.
    pub async fn sweep_leftovers(&self) {
        let Ok(mut entries) = tokio::fs::read_dir(&self.working_path).await else {
            return;
        };
        let stale = std::time::Duration::from_secs(3600);
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(".unpack-") {
                continue;
            }
            let old = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= stale);
            if old {
                match tokio::fs::remove_dir_all(entry.path()).await {
                    Ok(()) => {
                        tracing::info!(folder = %entry.path().display(), "removed an interrupted unpack")
                    }
                    Err(e) => {
                        tracing::warn!(folder = %entry.path().display(), "cannot remove an interrupted unpack: {e}")
                    }
                }
            }
        }
    }
}

/// Counts the runtime's restarts until it is gone.
fn watch_restarts(runtime: &LocalRuntime) {
    let mut states = runtime.subscribe();
    let identity = runtime.identity().to_owned();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let state = states.borrow_and_update().clone();
            match state {
                RuntimeState::Restarting => crate::metrics::record_restart(&identity),
                RuntimeState::Stopped | RuntimeState::Failed(_) => break,
                _ => {}
            }
        }
    });
}

/// Decodes `bytes` and writes its files to `target` through a temporary
/// folder in `working_path`.
fn write_package(
    bytes: &[u8],
    limits: &DecodeLimits,
    working_path: &Path,
    target: &Path,
) -> Result<BTreeSet<String>, InstallStepError> {
    let fail = |what: String| InstallStepError(what);
    let decoded = package::decode(bytes, limits)
        .map_err(|e| fail(format!("cannot decode the package: {e}")))?;
    std::fs::create_dir_all(working_path)
        .map_err(|e| fail(format!("cannot create {}: {e}", working_path.display())))?;
    let temp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(working_path)
        .map_err(|e| {
            fail(format!(
                "cannot create a folder in {}: {e}",
                working_path.display()
            ))
        })?;
    for (name, data) in &decoded.files {
        let relative = safe_relative(name)
            .ok_or_else(|| fail(format!("the package holds an unsafe path: {name}")))?;
        // The folder is checked against the package checksum before every
        // launch, which only works when each file lands under its own name.
        if relative.to_str() != Some(name.as_str()) {
            return Err(fail(format!(
                "the package holds a path that is not in canonical form: {name}"
            )));
        }
        let path = temp.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, data)
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    }
    let temp = temp.keep();
    let names = decoded.files.keys().cloned().collect();
    if let Err(e) = std::fs::rename(&temp, target) {
        let _ = std::fs::remove_dir_all(&temp);
        // Another install of the same package finished first.
        if !target.exists() {
            return Err(fail(format!(
                "cannot move the plugin into {}: {e}",
                target.display()
            )));
        }
    }
    Ok(names)
}

/// `name` as a relative path with only normal components.
fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(safe_relative("a/b.py"), Some(PathBuf::from("a/b.py")));
        assert_eq!(safe_relative("./a"), Some(PathBuf::from("a")));
        assert_eq!(safe_relative("../a"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative("a/../../b"), None);
        assert_eq!(safe_relative(""), None);
    }

    #[test]
    fn folder_names_are_path_safe() {
        assert_eq!(
            package_dir_name("author/name:0.0.1@abc"),
            "author_name_0.0.1@abc"
        );
    }
}
