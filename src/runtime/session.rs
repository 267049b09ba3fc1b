//! Sessions multiplexed over one plugin connection: the table that routes
//! plugin messages by session id, and the [`SessionStream`] a caller reads.
//!
//! The table is shared by every host that speaks the line protocol (local
//! stdio, debug TCP). The task owning the connection routes messages into it;
//! a caller's stream removes its own entry when dropped, so a disconnected
//! client cancels its session without involving the owner task.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use super::protocol::{
    backwards_response_line, BackwardsEvent, BackwardsRequest, SessionHeader, SessionMessage,
};
use super::RuntimeError;

/// The bounded channel of encoded lines that reaches a plugin connection's
/// writer.
pub type LineSender = mpsc::Sender<Bytes>;

/// How many undelivered items one session may buffer before the connection
/// waits for its reader.
pub const SESSION_BUFFER: usize = 64;

/// One item of a session, as a caller sees it.
#[derive(Debug)]
pub enum SessionItem {
    /// One response chunk, as the plugin sent it.
    Chunk(Value),
    /// The plugin calls back into Dify; answer through the replier.
    Invoke(BackwardsInvoke),
}

/// A backwards call and the way to answer it on the same connection.
#[derive(Debug)]
pub struct BackwardsInvoke {
    pub request: BackwardsRequest,
    pub reply: BackwardsReplier,
}

/// Writes `backwards_response` lines for one backwards call.
#[derive(Debug, Clone)]
pub struct BackwardsReplier {
    header: Arc<SessionHeader>,
    request_id: String,
    writer: LineSender,
}

impl BackwardsReplier {
    /// A replier for `request_id` in the session `header`, writing to `writer`.
    pub fn new(header: Arc<SessionHeader>, request_id: String, writer: LineSender) -> Self {
        Self {
            header,
            request_id,
            writer,
        }
    }

    /// Sends one response line.
    pub async fn send(&self, event: &BackwardsEvent) -> Result<(), RuntimeError> {
        let line = backwards_response_line(&self.header, &self.request_id, event);
        self.writer
            .send(line)
            .await
            .map_err(|_| RuntimeError::ConnectionClosed)
    }

    /// Sends a result chunk (`message` is `"stream"` or `"struct"`).
    pub async fn respond(&self, message: &str, data: Value) -> Result<(), RuntimeError> {
        self.send(&BackwardsEvent::Response {
            message: message.to_owned(),
            data,
        })
        .await
    }

    /// Reports a failure, then ends the call as the protocol requires.
    pub async fn fail(&self, text: &str) -> Result<(), RuntimeError> {
        self.send(&BackwardsEvent::Error(text.to_owned())).await?;
        self.end().await
    }

    /// Ends the call.
    pub async fn end(&self) -> Result<(), RuntimeError> {
        self.send(&BackwardsEvent::End).await
    }

    /// The backwards request id being answered.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
}

/// What travels through a session's channel.
#[derive(Debug)]
enum Delivery {
    Item(SessionItem),
    End,
    Failed(RuntimeError),
}

struct Entry {
    tx: mpsc::Sender<Delivery>,
    header: Arc<SessionHeader>,
    writer: LineSender,
}

/// The open sessions of one plugin connection, keyed by session id.
#[derive(Default)]
pub struct SessionTable {
    // A std mutex: it is only held for map operations, never across `.await`.
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("open", &self.len())
            .finish()
    }
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated,
        // so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session before its request is sent, so no answer can
    /// arrive unrouted. `writer` is where backwards responses go.
    pub fn open(
        self: &Arc<Self>,
        header: SessionHeader,
        writer: LineSender,
        timeout: Duration,
    ) -> Result<SessionStream, RuntimeError> {
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        let id = header.session_id.clone();
        {
            let mut entries = self.lock();
            if entries.contains_key(&id) {
                return Err(RuntimeError::DuplicateSession(id));
            }
            entries.insert(
                id.clone(),
                Entry {
                    tx,
                    header: Arc::new(header),
                    writer,
                },
            );
        }
        Ok(SessionStream {
            rx,
            table: Some(Arc::clone(self)),
            session_id: id,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            done: false,
        })
    }

    /// Routes one plugin message to its session. Returns false when no such
    /// session is open (finished, cancelled or unknown).
    pub async fn route(&self, session_id: &str, message: SessionMessage) -> bool {
        let (tx, delivery) = {
            let mut entries = self.lock();
            match message {
                SessionMessage::End | SessionMessage::Error(_) => {
                    let Some(entry) = entries.remove(session_id) else {
                        return false;
                    };
                    let delivery = match message {
                        SessionMessage::Error(e) => Delivery::Failed(RuntimeError::Plugin(e)),
                        _ => Delivery::End,
                    };
                    (entry.tx, delivery)
                }
                SessionMessage::Stream(chunk) => {
                    let Some(entry) = entries.get(session_id) else {
                        return false;
                    };
                    (entry.tx.clone(), Delivery::Item(SessionItem::Chunk(chunk)))
                }
                SessionMessage::Invoke(request) => {
                    let Some(entry) = entries.get(session_id) else {
                        return false;
                    };
                    let reply = BackwardsReplier::new(
                        Arc::clone(&entry.header),
                        request.backwards_request_id.clone(),
                        entry.writer.clone(),
                    );
                    (
                        entry.tx.clone(),
                        Delivery::Item(SessionItem::Invoke(BackwardsInvoke { request, reply })),
                    )
                }
            }
        };
        // Waiting here is the backpressure a slow reader puts on its plugin.
        // A reader that went away drops its receiver, so this never hangs on it.
        if tx.send(delivery).await.is_err() {
            self.lock().remove(session_id);
            return false;
        }
        true
    }

    /// Ends every open session with `error` (the connection went away).
    pub fn fail_all(&self, error: impl Fn() -> RuntimeError) {
        let drained: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        for entry in drained {
            // The buffer may be full; then dropping the sender still ends the
            // stream, which reports a closed connection.
            let _ = entry.tx.try_send(Delivery::Failed(error()));
        }
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, session_id: &str) {
        self.lock().remove(session_id);
    }
}

/// The items of one session, ending after the plugin's `end`.
///
/// Yields `Ok` items, then either nothing more (clean end) or one `Err`
/// (plugin error, timeout, closed connection) and nothing more. Dropping it
/// cancels the session.
pub struct SessionStream {
    rx: mpsc::Receiver<Delivery>,
    table: Option<Arc<SessionTable>>,
    session_id: String,
    deadline: Pin<Box<Sleep>>,
    done: bool,
}

impl std::fmt::Debug for SessionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStream")
            .field("session_id", &self.session_id)
            .field("done", &self.done)
            .finish()
    }
}

impl SessionStream {
    /// The session's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(table) = self.table.take() {
            table.remove(&self.session_id);
        }
    }
}

impl Stream for SessionStream {
    type Item = Result<SessionItem, RuntimeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Delivery::Item(item))) => return Poll::Ready(Some(Ok(item))),
            Poll::Ready(Some(Delivery::End)) => {
                self.finish();
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Delivery::Failed(e))) => {
                self.finish();
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {
                self.finish();
                return Poll::Ready(Some(Err(RuntimeError::ConnectionClosed)));
            }
            Poll::Pending => {}
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.finish();
            return Poll::Ready(Some(Err(RuntimeError::Timeout)));
        }
        Poll::Pending
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        if let Some(table) = self.table.take() {
            table.remove(&self.session_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::protocol::PluginError;
    use futures::StreamExt;
    use serde_json::json;

    fn header(id: &str) -> SessionHeader {
        SessionHeader {
            session_id: id.into(),
            ..Default::default()
        }
    }

    fn open(
        table: &Arc<SessionTable>,
        id: &str,
        timeout: Duration,
    ) -> (SessionStream, mpsc::Receiver<Bytes>) {
        let (wtx, wrx) = mpsc::channel(8);
        (table.open(header(id), wtx, timeout).unwrap(), wrx)
    }

    #[tokio::test]
    async fn routes_chunks_to_their_session_and_ends() {
        let table = SessionTable::new();
        let (mut a, _wa) = open(&table, "a", Duration::from_secs(10));
        let (mut b, _wb) = open(&table, "b", Duration::from_secs(10));
        assert!(table.route("b", SessionMessage::Stream(json!(2))).await);
        assert!(table.route("a", SessionMessage::Stream(json!(1))).await);
        assert!(table.route("a", SessionMessage::End).await);
        assert!(!table.route("a", SessionMessage::Stream(json!(3))).await);
        match a.next().await {
            Some(Ok(SessionItem::Chunk(v))) => assert_eq!(v, json!(1)),
            other => panic!("{other:?}"),
        }
        assert!(a.next().await.is_none());
        match b.next().await {
            Some(Ok(SessionItem::Chunk(v))) => assert_eq!(v, json!(2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn plugin_error_is_typed_and_final() {
        let table = SessionTable::new();
        let (mut s, _w) = open(&table, "s", Duration::from_secs(10));
        let err = PluginError {
            message: "bad".into(),
            error_type: "ValueError".into(),
            args: None,
        };
        table.route("s", SessionMessage::Error(err.clone())).await;
        match s.next().await {
            Some(Err(RuntimeError::Plugin(e))) => assert_eq!(e, err),
            other => panic!("{other:?}"),
        }
        assert!(s.next().await.is_none());
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn dropping_the_stream_cancels_the_session() {
        let table = SessionTable::new();
        let (s, _w) = open(&table, "s", Duration::from_secs(10));
        assert_eq!(table.len(), 1);
        drop(s);
        assert!(table.is_empty());
        assert!(!table.route("s", SessionMessage::Stream(json!(1))).await);
    }

    #[tokio::test]
    async fn duplicate_ids_are_refused() {
        let table = SessionTable::new();
        let (_s, _w) = open(&table, "s", Duration::from_secs(10));
        let (wtx, _wrx) = mpsc::channel(1);
        assert!(matches!(
            table.open(header("s"), wtx, Duration::from_secs(1)),
            Err(RuntimeError::DuplicateSession(_))
        ));
    }

    #[tokio::test]
    async fn timeout_ends_the_session_with_the_reference_text() {
        let table = SessionTable::new();
        let (mut s, _w) = open(&table, "s", Duration::from_millis(200));
        let err = s.next().await.unwrap().unwrap_err();
        assert!(matches!(err, RuntimeError::Timeout));
        assert_eq!(err.to_string(), "killed by timeout");
        assert!(table.is_empty());
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn failing_all_reports_to_every_session() {
        let table = SessionTable::new();
        let (mut a, _wa) = open(&table, "a", Duration::from_secs(10));
        let (mut b, _wb) = open(&table, "b", Duration::from_secs(10));
        table.fail_all(|| RuntimeError::ConnectionClosed);
        assert!(matches!(
            a.next().await,
            Some(Err(RuntimeError::ConnectionClosed))
        ));
        assert!(matches!(
            b.next().await,
            Some(Err(RuntimeError::ConnectionClosed))
        ));
    }

    #[tokio::test]
    async fn invoke_items_answer_on_the_connection() {
        let table = SessionTable::new();
        let (mut s, mut writes) = open(&table, "s", Duration::from_secs(10));
        table
            .route(
                "s",
                SessionMessage::Invoke(BackwardsRequest {
                    kind: "storage".into(),
                    backwards_request_id: "b1".into(),
                    request: json!({}),
                }),
            )
            .await;
        let Some(Ok(SessionItem::Invoke(inv))) = s.next().await else {
            panic!("expected an invoke item")
        };
        assert_eq!(inv.request.kind, "storage");
        inv.reply
            .respond("struct", json!({"data":"x"}))
            .await
            .unwrap();
        inv.reply.end().await.unwrap();
        let first: Value = serde_json::from_slice(&writes.recv().await.unwrap()).unwrap();
        assert_eq!(first["session_id"], "s");
        assert_eq!(first["event"], "backwards_response");
        assert_eq!(first["data"]["backwards_request_id"], "b1");
        assert_eq!(first["data"]["event"], "response");
        let second: Value = serde_json::from_slice(&writes.recv().await.unwrap()).unwrap();
        assert_eq!(second["data"]["event"], "end");
    }
}
