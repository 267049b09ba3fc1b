//! Debugging plugins among replicas: the node a debugging plugin connected
//! to records itself as its owner; other nodes forward its calls there
//! ([`super::forward`]). When the owner dies, any node removes the plugin's
//! installation once the owner's heartbeat is past the timeout.

use crate::app_state::AppState;
use crate::store::{NodeRecord, StoreError};

/// The live node other than this one that the debugging plugin
/// `identifier` is connected to, with an address to forward to.
pub async fn owner(state: &AppState, identifier: &str) -> Result<Option<NodeRecord>, StoreError> {
    let cluster = &state.cluster;
    let owner = state
        .store
        .remote_owner(identifier, cluster.options().node_timeout)
        .await?;
    Ok(owner.filter(|n| n.alive && n.id != cluster.node_id() && !n.address.is_empty()))
}

/// Removes the debugging installations no live node serves; `starting`
/// also counts this node's own as leftovers (it holds no connection yet).
/// Returns how many went.
pub async fn remove_orphans(state: &AppState, starting: bool) -> Result<usize, StoreError> {
    let cluster = &state.cluster;
    let timeout = cluster.options().node_timeout;
    let orphans = state
        .store
        .orphaned_remote_installations(cluster.node_id(), timeout, starting)
        .await?;
    for orphan in &orphans {
        tracing::info!(plugin = %orphan.plugin_unique_identifier, tenant = %orphan.tenant_id,
            "removing a debugging installation whose replica is gone");
        state
            .store
            .uninstall_plugin(&orphan.tenant_id, &orphan.id)
            .await?;
        state
            .store
            .forget_remote_owner(
                &orphan.plugin_unique_identifier,
                timeout,
                starting.then_some(cluster.node_id()),
            )
            .await?;
    }
    Ok(orphans.len())
}
