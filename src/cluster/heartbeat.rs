//! The heartbeat loop of a node: refresh its row every interval, and take
//! over what nodes that went silent left behind.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::app_state::AppState;

/// Runs until `cancel`: a heartbeat, then a reap, every interval.
pub async fn run(cluster: Arc<Cluster>, state: AppState, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(cluster.options().heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        beat(&cluster, &state).await;
        reap(&cluster, &state).await;
        if cluster.is_shared() {
            super::launcher::stop_uninstalled(&state).await;
        }
    }
}

/// One heartbeat. A node whose row is gone was judged dead (a long pause,
/// a lost database): it registers again, and what it held was taken over.
async fn beat(cluster: &Cluster, state: &AppState) {
    match state.store.node_heartbeat(cluster.node_id()).await {
        Ok(true) => {
            cluster.beat();
            if let Err(e) = state
                .store
                .renew_leases(cluster.node_id(), cluster.options().node_timeout)
                .await
            {
                tracing::warn!(error = %e, "cannot renew leases");
            }
        }
        Ok(false) => {
            tracing::warn!(node_id = %cluster.node_id(), "this node's row was taken over by another node; registering again");
            if let Err(e) = cluster.register(&state.store).await {
                tracing::error!(error = %e, "cannot register the node again");
            }
        }
        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
    }
}

/// Takes over the rows of dead nodes.
async fn reap(cluster: &Cluster, state: &AppState) {
    match state
        .store
        .reap_dead_nodes(cluster.options().node_timeout)
        .await
    {
        Ok(reaped) => {
            for id in reaped {
                tracing::warn!(node_id = %id, "node silent past the timeout; taken over");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot reap dead nodes"),
    }
    if let Err(e) = state.installer.recover_expired().await {
        tracing::warn!(error = %e, "cannot take over expired install tasks");
    }
    if cluster.is_shared() {
        if let Err(e) = super::remote::remove_orphans(state, false).await {
            tracing::warn!(error = %e, "cannot remove debugging installations of dead nodes");
        }
        if let Err(e) = state
            .store
            .forget_dead_mcp_sessions(cluster.options().node_timeout)
            .await
        {
            tracing::warn!(error = %e, "cannot forget MCP sessions of dead nodes");
        }
    }
}
