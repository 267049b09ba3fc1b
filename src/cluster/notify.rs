//! Change notification between replicas over PostgreSQL LISTEN/NOTIFY.
//!
//! Triggers (migrations/postgres/0032_change_notify.sql) send one JSON
//! payload per committed change of plugins, installations, serverless
//! runtimes and MCP servers and tokens on [`CHANNEL`]; every node listens
//! and republishes them on its in-process bus as [`Event::Change`]. When the
//! listening connection drops, notifications sent meanwhile are lost, so a
//! reconnection publishes [`Event::Resync`]: consumers then read the state
//! afresh instead of relying on what they heard. SQLite has one daemon and
//! no listener.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// The channel the triggers notify.
pub const CHANNEL: &str = "plugind_changes";

/// Events on the bus; dropped for subscribers that lag.
pub const BUS_CAPACITY: usize = 1024;

/// One changed row, as the trigger names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Change {
    /// The table (`plugins`, `plugin_installations`, `serverless_runtimes`,
    /// `mcp_servers`, `mcp_tokens`).
    pub table: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub op: String,
    /// The plugin unique identifier, on the plugin tables.
    #[serde(default)]
    pub identifier: Option<String>,
    /// `local`, `serverless` or `remote`, on `plugins`.
    #[serde(default)]
    pub install_type: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub plugin_id: Option<String>,
    /// The MCP server's id, on the MCP tables.
    #[serde(default)]
    pub id: Option<String>,
}

impl Change {
    /// Whether the row was deleted.
    pub fn is_delete(&self) -> bool {
        self.op == "DELETE"
    }
}

/// What the bus carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A row changed somewhere (on this node or another).
    Change(Change),
    /// Changes may have been missed: read everything again.
    Resync,
}

/// Listens on [`CHANNEL`] until `cancel`, reconnecting with backoff.
pub async fn listen(cluster: Arc<Cluster>, url: String, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    let mut connected_before = false;
    loop {
        let listener = tokio::select! {
            _ = cancel.cancelled() => return,
            l = connect(&url) => l,
        };
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for changes; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        if connected_before {
            tracing::info!("listening for changes again; resynchronising");
            cluster.publish(Event::Resync);
        }
        connected_before = true;
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(notification)) => match serde_json::from_str(notification.payload()) {
                    Ok(change) => cluster.publish(Event::Change(change)),
                    Err(e) => {
                        tracing::warn!(error = %e, payload = notification.payload(), "unreadable change notification")
                    }
                },
                // The connection dropped; reconnect explicitly so the resync
                // happens once listening again, not at the next message.
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "change listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_payloads_parse() {
        let c: Change = serde_json::from_str(
            r#"{"table":"plugins","op":"DELETE","identifier":"a/b:1@x","install_type":"local"}"#,
        )
        .unwrap();
        assert!(c.is_delete());
        assert_eq!(c.install_type.as_deref(), Some("local"));
        let c: Change =
            serde_json::from_str(r#"{"table":"mcp_tokens","op":"INSERT","id":"s1"}"#).unwrap();
        assert_eq!(c.id.as_deref(), Some("s1"));
        assert!(!c.is_delete());
    }
}
