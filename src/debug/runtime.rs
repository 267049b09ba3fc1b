//! A registered debugging connection as a [`PluginRuntime`]: the same
//! session protocol as a local child, over TCP.
//!
//! One task owns the connection ([`serve_connection`]): it reads plugin
//! events, routes session messages through the shared [`SessionTable`],
//! writes queued request lines and watches heartbeats. Callers hold a cheap
//! [`DebugRuntime`] handle that queues lines on a bounded channel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use serde_json::json;
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use crate::runtime::protocol::{request_line, PluginEvent};
use crate::runtime::{
    LineCodec, LineSender, LineTooLong, PluginError, PluginRuntime, RuntimeError, RuntimeState,
    SessionRequest, SessionStream, SessionTable,
};

/// How many lines may wait for the connection's writer.
const WRITE_QUEUE: usize = 64;
/// Longest wait to flush the last lines when closing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The error every open session ends with when the connection goes away.
///
/// The reference sends it as the session's own error
/// (`debugging_runtime/io.go`), so Dify receives a `PluginInvokeError` whose
/// inner `error_type` is `ConnectionClosedError`; a top-level
/// `ConnectionClosedError` is a name the Dify client does not know.
pub fn connection_closed_error() -> PluginError {
    PluginError {
        message: "Connection closed unexpectedly".into(),
        error_type: "ConnectionClosedError".into(),
        args: Some(json!({})),
    }
}

/// Who a debugging runtime belongs to.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// `author/name:version@checksum`, the checksum bound to the tenant.
    pub identity: String,
    /// `author/name`.
    pub plugin_id: String,
    pub tenant_id: String,
    /// The declaration as stored (icons are asset ids).
    pub declaration: serde_json::Value,
}

struct Shared {
    info: RuntimeInfo,
    sessions: Arc<SessionTable>,
    state: watch::Sender<RuntimeState>,
    writer: LineSender,
    cancel: CancellationToken,
    max_execution_timeout: Duration,
}

/// A handle to a debugging plugin connected over TCP. Clones share the
/// connection.
#[derive(Clone)]
pub struct DebugRuntime {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DebugRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugRuntime")
            .field("identity", &self.shared.info.identity)
            .field("tenant_id", &self.shared.info.tenant_id)
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

/// The connection side the owning task drives; made by [`DebugRuntime::new`].
pub struct Connection {
    shared: Arc<Shared>,
    write_rx: mpsc::Receiver<Bytes>,
}

impl DebugRuntime {
    /// A ready handle and the connection half its owning task will drive.
    /// Cancelling `cancel` (or [`DebugRuntime::close`]) closes the connection.
    pub fn new(
        info: RuntimeInfo,
        max_execution_timeout: Duration,
        cancel: CancellationToken,
    ) -> (Self, Connection) {
        let (writer, write_rx) = mpsc::channel(WRITE_QUEUE);
        let (state, _) = watch::channel(RuntimeState::Ready);
        let shared = Arc::new(Shared {
            info,
            sessions: SessionTable::new(),
            state,
            writer,
            cancel,
            max_execution_timeout,
        });
        (
            Self {
                shared: Arc::clone(&shared),
            },
            Connection { shared, write_rx },
        )
    }

    /// Who this runtime belongs to.
    pub fn info(&self) -> &RuntimeInfo {
        &self.shared.info
    }

    /// How many sessions are open.
    pub fn open_sessions(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Asks the owning task to close the connection, without waiting.
    pub fn close(&self) {
        self.shared.cancel.cancel();
    }

    /// Waits until the connection is closed and cleaned up.
    pub async fn closed(&self) {
        let mut rx = self.shared.state.subscribe();
        let _ = rx.wait_for(|s| *s == RuntimeState::Stopped).await;
    }

    /// True when both handles drive the same connection.
    pub fn same(&self, other: &DebugRuntime) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

#[async_trait::async_trait]
impl PluginRuntime for DebugRuntime {
    fn identity(&self) -> &str {
        &self.shared.info.identity
    }

    fn state(&self) -> RuntimeState {
        self.shared.state.borrow().clone()
    }

    async fn wait_ready(&self, _timeout: Duration) -> Result<(), RuntimeError> {
        // A debugging runtime exists only once registered: it is ready at
        // once or gone for good.
        match self.state() {
            RuntimeState::Ready => Ok(()),
            _ => Err(RuntimeError::Unavailable(
                "debugging plugin disconnected".into(),
            )),
        }
    }

    async fn invoke(&self, request: SessionRequest) -> Result<SessionStream, RuntimeError> {
        self.wait_ready(Duration::ZERO).await?;
        let line = request_line(
            &request.header,
            &request.user_id,
            &request.access_type,
            &request.action,
            &request.payload,
        );
        let timeout = request.timeout.unwrap_or(self.shared.max_execution_timeout);
        let writer = self.shared.writer.clone();
        let stream = self
            .shared
            .sessions
            .open(request.header, writer.clone(), timeout)?;
        // The owning task drops the receiver before it fails the open
        // sessions, so a session opened during the close either gets that
        // failure or cannot send its request.
        writer
            .send(line)
            .await
            .map_err(|_| RuntimeError::ConnectionClosed)?;
        Ok(stream)
    }

    async fn shutdown(&self) {
        self.close();
        self.closed().await;
    }
}

/// Timings of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimings {
    /// Silence after which the connection is closed (reference: 60 s).
    pub heartbeat_timeout: Duration,
}

/// Runs a registered connection until the plugin goes away, goes silent, or
/// the runtime is closed. `lines` yields what the plugin writes (after the
/// registration), `sink` is where request lines go. Returns why it ended.
///
/// The caller removes the installation afterwards and then calls
/// [`Connection::finish`].
pub async fn serve_connection<R, W>(
    conn: &mut Connection,
    mut lines: R,
    sink: W,
    timings: ConnectionTimings,
) -> String
where
    R: Stream<Item = std::io::Result<Result<Bytes, LineTooLong>>> + Unpin,
    W: AsyncWrite + Unpin,
{
    let shared = Arc::clone(&conn.shared);
    let id = &shared.info.identity;
    let mut sink = FramedWrite::new(sink, LineCodec::default());
    let tick_every =
        (timings.heartbeat_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(tick_every);
    let mut last_active = Instant::now();
    let reason = loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break "closed by the daemon".to_owned(),
            frame = lines.next() => {
                last_active = Instant::now();
                match frame {
                    None => break "plugin disconnected".to_owned(),
                    Some(Err(e)) => break format!("reading failed: {e}"),
                    Some(Ok(Err(too_long))) => {
                        tracing::warn!(plugin = %id, "debugging plugin wrote a {too_long}");
                    }
                    Some(Ok(Ok(line))) => match PluginEvent::parse(&line) {
                        Ok(PluginEvent::Heartbeat) | Ok(PluginEvent::Other) => {}
                        Ok(PluginEvent::Log(log)) => {
                            // The reference drops these: the author reads them
                            // on the plugin's own console.
                            tracing::debug!(plugin = %id, level = %log.level, "{}", log.message);
                        }
                        Ok(PluginEvent::Error(err)) => {
                            tracing::warn!(plugin = %id, "plugin error event: {err}");
                        }
                        Ok(PluginEvent::Session { session_id, message }) => {
                            let routed = tokio::select! {
                                routed = shared.sessions.route(&session_id, message) => routed,
                                _ = shared.cancel.cancelled() => break "closed by the daemon".to_owned(),
                            };
                            if !routed {
                                tracing::debug!(plugin = %id, %session_id, "message for a closed session dropped");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(plugin = %id, "unexpected line from debugging plugin: {e}");
                        }
                    },
                }
            }
            Some(line) = conn.write_rx.recv() => {
                // A plugin that stops reading must not hold off a close.
                let sent = tokio::select! {
                    sent = sink.send(line) => sent,
                    _ = shared.cancel.cancelled() => break "closed by the daemon".to_owned(),
                };
                if let Err(e) = sent {
                    break format!("writing failed: {e}");
                }
            }
            _ = tick.tick() => {
                if last_active.elapsed() >= timings.heartbeat_timeout {
                    break format!("no heartbeat for {} s", timings.heartbeat_timeout.as_secs());
                }
            }
        }
    };
    // Refuse new sessions, then fail the open ones (see `invoke`).
    shared.state.send_replace(RuntimeState::Stopping);
    conn.write_rx.close();
    shared
        .sessions
        .fail_all(|| RuntimeError::Plugin(connection_closed_error()));
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    reason
}

impl Connection {
    /// Marks the runtime stopped once the caller has cleaned up, waking
    /// whoever waits in [`DebugRuntime::closed`].
    pub fn finish(self) {
        self.shared.state.send_replace(RuntimeState::Stopped);
    }
}
