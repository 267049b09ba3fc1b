//! Local plugins on every node: each node runs every installed local
//! plugin, from its own working path (unpacked from the stored package, its
//! environment built here when the path is not shared with the node that
//! installed it).
//!
//! Starts come from several places that may race: the start-up catch-up,
//! change notifications, a dispatch that finds no runtime. Each goes
//! through [`ensure_local`], so a plugin is started once however many ask,
//! and the start runs on its own task: a caller that gives up does not
//! abandon it halfway.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};

use crate::app_state::AppState;
use crate::runtime::{PluginRuntime, RuntimeState};

type Launch = Shared<BoxFuture<'static, Result<(), String>>>;

/// The starts in flight on this node, by identifier.
#[derive(Default)]
pub struct Launches {
    inflight: Mutex<HashMap<String, Launch>>,
}

impl std::fmt::Debug for Launches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launches").finish_non_exhaustive()
    }
}

impl Launches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Launch>> {
        // Held for map operations only; a panic cannot leave it half-updated.
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_launching(&self, identifier: &str) -> bool {
        self.lock().contains_key(identifier)
    }
}

/// The runtime of `identifier` on this node, if it serves or is coming up.
pub fn running(state: &AppState, identifier: &str) -> Option<Arc<dyn PluginRuntime>> {
    state
        .registry
        .get(identifier)
        .filter(|r| !matches!(r.state(), RuntimeState::Stopped | RuntimeState::Failed(_)))
}

/// Makes sure the installed local plugin `identifier` runs on this node,
/// starting it once for every caller; the error says why it did not start.
pub async fn ensure_local(state: &AppState, identifier: &str) -> Result<(), String> {
    if state.local.is_none() {
        return Err("this node does not run local plugins".into());
    }
    if running(state, identifier).is_some() {
        return Ok(());
    }
    let launch = {
        let mut inflight = state.cluster.launches.lock();
        match inflight.get(identifier) {
            Some(launch) => launch.clone(),
            None => {
                let task = {
                    let state = state.clone();
                    let identifier = identifier.to_owned();
                    tokio::spawn(async move {
                        let result = launch_here(&state, &identifier).await;
                        state.cluster.launches.lock().remove(&identifier);
                        result
                    })
                };
                let launch = async move {
                    task.await
                        .unwrap_or_else(|e| Err(format!("the start stopped: {e}")))
                }
                .boxed()
                .shared();
                inflight.insert(identifier.to_owned(), launch.clone());
                launch
            }
        }
    };
    launch.await
}

async fn launch_here(state: &AppState, identifier: &str) -> Result<(), String> {
    let local = state
        .local
        .as_ref()
        .ok_or("this node does not run local plugins")?;
    let started = super::leases::with_build_lock(
        state,
        &super::leases::local_build_key(state, identifier),
        || async { local.ensure_running(&state.store, identifier).await },
    )
    .await;
    started.map_err(|e| e.to_string())?;
    // Uninstalled while it started: the stop already went by.
    let installed = state
        .store
        .plugin(identifier)
        .await
        .ok()
        .flatten()
        .is_some();
    if !installed && !state.installer.is_installing(identifier) {
        tracing::info!(%identifier, "uninstalled while starting; stopping it");
        stop_here(state, identifier).await;
        return Err(format!("{identifier} was uninstalled"));
    }
    Ok(())
}

/// Like [`ensure_local`], waiting at most `wait`.
pub async fn ensure_local_within(
    state: &AppState,
    identifier: &str,
    wait: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(wait, ensure_local(state, identifier)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "still starting on this node after {} s",
            wait.as_secs()
        )),
    }
}

/// Starts in the background; failures are logged.
pub fn spawn_ensure_local(state: &AppState, identifier: &str) {
    let state = state.clone();
    let identifier = identifier.to_owned();
    tokio::spawn(async move {
        match ensure_local(&state, &identifier).await {
            Ok(()) => tracing::debug!(%identifier, "plugin runs on this node"),
            Err(e) => tracing::error!(%identifier, "cannot start the plugin on this node: {e}"),
        }
    });
}

/// Stops and removes this node's copy of `identifier`, unless an install
/// of it runs here (its runtime comes up before its row exists).
pub async fn stop_here(state: &AppState, identifier: &str) {
    let Some(local) = &state.local else { return };
    if state.installer.is_installing(identifier) {
        return;
    }
    if local.runtime(identifier).is_none() && state.registry.get(identifier).is_none() {
        return;
    }
    use crate::install::InstallStep;
    match local.remove_runtime(identifier).await {
        Ok(()) => tracing::info!(%identifier, "plugin uninstalled; stopped on this node"),
        Err(e) => tracing::warn!(%identifier, "cannot remove the plugin's copy: {e}"),
    }
}

/// Starts every installed local plugin this node does not run yet, at most
/// `concurrency` at a time: a node that starts, or heard nothing for a
/// while, catches up.
pub async fn catch_up(state: &AppState, concurrency: usize) {
    if state.local.is_none() {
        return;
    }
    let plugins = match state.store.plugins_by_install_type("local").await {
        Ok(plugins) => plugins,
        Err(e) => {
            tracing::error!(error = %e, "cannot list installed plugins to start");
            return;
        }
    };
    let missing: Vec<String> = plugins
        .into_iter()
        .map(|p| p.plugin_unique_identifier)
        .filter(|id| running(state, id).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    tracing::info!(count = missing.len(), "starting installed plugins");
    futures::StreamExt::for_each_concurrent(
        futures::stream::iter(missing),
        concurrency.max(1),
        |identifier| async move {
            match ensure_local(state, &identifier).await {
                Ok(()) => tracing::info!(%identifier, "plugin started"),
                Err(e) => tracing::error!(%identifier, "start failed: {e}"),
            }
        },
    )
    .await;
}

/// Stops the local plugins this node runs that are no longer installed: a
/// missed notification costs a process until the next check, never more.
pub async fn stop_uninstalled(state: &AppState) {
    let Some(local) = &state.local else { return };
    let installed: HashSet<String> = match state.store.plugins_by_install_type("local").await {
        Ok(plugins) => plugins
            .into_iter()
            .map(|p| p.plugin_unique_identifier)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list installed plugins");
            return;
        }
    };
    for (identifier, _) in state.registry.list() {
        let stale = local.runtime(&identifier).is_some()
            && !installed.contains(&identifier)
            && !state.cluster.launches.is_launching(&identifier);
        if stale {
            stop_here(state, &identifier).await;
        }
    }
}
