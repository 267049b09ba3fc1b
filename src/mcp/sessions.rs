//! The session store of one MCP server: rmcp's in-memory sessions, plus the
//! protocol revision each one negotiated.
//!
//! The revision decides what a session may send: JSON-RPC batches are part
//! of 2025-03-26 and were removed in 2025-06-18 (see [`super::batch`]).
//! Clients of 2025-03-26 send no `MCP-Protocol-Version` header, so the
//! negotiated revision is the one reliable signal, and it is only known
//! where the `initialize` answer passes: here.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, ProtocolVersion, ServerJsonRpcMessage, ServerResult};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{
    EventStore, RestoreOutcome, ServerSseMessage, SessionId, SessionManager,
};

/// rmcp's [`LocalSessionManager`] that remembers each session's revision.
///
/// rmcp closes a session through [`SessionManager::close_session`] whether
/// the client deleted it, it idled out or the server went away, so an entry
/// lives exactly as long as its session.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: LocalSessionManager,
    versions: Mutex<HashMap<SessionId, ProtocolVersion>>,
    /// Where sessions are recorded for other replicas to find.
    tracker: Option<Tracker>,
}

/// Records each session's node in the store, so a replica receiving one
/// of its requests forwards it here (`crate::cluster::mcp`).
#[derive(Debug)]
pub struct Tracker {
    pub store: crate::store::Store,
    pub node_id: String,
    pub server_id: String,
}

impl Sessions {
    /// Sessions recorded through `tracker`.
    pub fn tracked(tracker: Tracker) -> Self {
        Self {
            tracker: Some(tracker),
            ..Self::default()
        }
    }

    /// The revision session `id` negotiated; `None` for an unknown session.
    pub fn version(&self, id: &str) -> Option<ProtocolVersion> {
        self.versions
            .lock()
            .expect("versions lock")
            .get(id)
            .cloned()
    }

    /// Whether session `id` is open.
    pub async fn is_open(&self, id: &str) -> bool {
        self.inner
            .sessions
            .read()
            .await
            .contains_key(&SessionId::from(id))
    }
}

impl SessionManager for Sessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let (id, transport) = self.inner.create_session().await?;
        if let Some(t) = &self.tracker {
            if let Err(e) = t
                .store
                .record_mcp_session(&id, &t.server_id, &t.node_id)
                .await
            {
                // The session still works through this replica.
                tracing::warn!(error = %e, "cannot record an MCP session for the other replicas");
            }
        }
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        let response = self.inner.initialize_session(id, message).await?;
        if let ServerJsonRpcMessage::Response(r) = &response {
            if let ServerResult::InitializeResult(init) = &r.result {
                self.versions
                    .lock()
                    .expect("versions lock")
                    .insert(id.clone(), init.protocol_version.clone());
            }
        }
        Ok(response)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.versions.lock().expect("versions lock").remove(id);
        if let Some(t) = &self.tracker {
            if let Err(e) = t.store.forget_mcp_session(id).await {
                tracing::warn!(error = %e, "cannot forget a closed MCP session");
            }
        }
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_stream(id, message).await
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.resume(id, last_event_id).await
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }

    fn event_store(&self) -> Option<std::sync::Arc<dyn EventStore>> {
        self.inner.event_store()
    }
}
