//! Keeps this node in step with changes made through any node: what the
//! bus reports is applied here (the installation cache forgets, plugins
//! start and stop). Every handler is idempotent, since a node also hears
//! its own changes.

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::notify::{Change, Event};
use crate::app_state::AppState;

/// Applies bus events until `cancel`.
pub async fn run(state: AppState, cancel: CancellationToken) {
    let mut events = state.cluster.subscribe();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Ok(Event::Change(change)) => apply(&state, &change),
            Ok(Event::Resync) => resync(&state),
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "change events missed; resynchronising");
                resync(&state);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

fn apply(state: &AppState, change: &Change) {
    tracing::debug!(?change, "change heard");
    match change.table.as_str() {
        "plugin_installations" => state.store.forget_installations(),
        "plugins" if change.install_type.as_deref() == Some("local") => {
            let Some(identifier) = change.identifier.clone() else {
                return;
            };
            if change.is_delete() {
                let state = state.clone();
                tokio::spawn(async move { super::launcher::stop_here(&state, &identifier).await });
            } else {
                super::launcher::spawn_ensure_local(state, &identifier);
            }
        }
        "serverless_runtimes" => {
            let (Some(step), Some(identifier)) =
                (state.serverless.clone(), change.identifier.clone())
            else {
                return;
            };
            tokio::spawn(async move {
                if let Err(e) = step.sync_registered(&identifier).await {
                    tracing::warn!(%identifier, "cannot follow a Lambda function change: {e}");
                }
            });
        }
        _ => {}
    }
}

/// Reads everything again after changes may have been missed.
fn resync(state: &AppState) {
    state.store.forget_installations();
    let state = state.clone();
    tokio::spawn(async move {
        super::launcher::stop_uninstalled(&state).await;
        super::launcher::catch_up(&state, state.settings.plugin_local_launching_concurrent).await;
        if let Some(step) = &state.serverless {
            if let Err(e) = step.register_installed().await {
                tracing::warn!("cannot register Lambda functions again: {e}");
            }
        }
    });
}

/// Ends the open MCP sessions of servers deleted, or whose tokens were
/// revoked, through any node (the node that served the request already
/// did). Follows the bus for as long as `gateway` lives.
pub fn follow_mcp(state: &AppState, gateway: &std::sync::Arc<crate::mcp::McpGateway>) {
    if !state.cluster.is_shared() || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let mut events = state.cluster.subscribe();
    let gateway = std::sync::Arc::downgrade(gateway);
    tokio::spawn(async move {
        loop {
            let change = match events.recv().await {
                Ok(Event::Change(change)) => change,
                Ok(Event::Resync) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            let Some(gateway) = gateway.upgrade() else {
                return;
            };
            let ends_sessions = change.is_delete()
                && (change.table == "mcp_servers" || change.table == "mcp_tokens");
            if let (true, Some(id)) = (ends_sessions, &change.id) {
                gateway.forget(id);
            }
        }
    });
}
