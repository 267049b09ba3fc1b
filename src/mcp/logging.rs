//! MCP logging: `notifications/message` while a tool runs.
//!
//! Plugin `log` chunks and Dify app node events become log notifications
//! at a matching level. Which ones a client gets depends on the revision:
//!
//! - handshake sessions (2025-03-26…2025-11-25): the level the client set
//!   with `logging/setLevel`, kept per session; before it sets one, `info`
//!   (the specification lets the server choose);
//! - per-request revisions (2026-07-28): only a request whose `_meta`
//!   carries `io.modelcontextprotocol/logLevel` gets any, from that level
//!   up (`server/utilities/logging#per-request-log-level` says the server
//!   MUST NOT send them otherwise).
//!
//! A `logLevel` in a handshake-era request's `_meta` also wins over the
//! session's level for that request.

// rmcp marks the logging types deprecated because the 2026-07-28 revision
// deprecates the feature (SEP-2577); it stays in the specification and the
// handshake-era clients use it, so the gateway keeps serving it.
#![allow(deprecated)]

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use rmcp::model::{LoggingMessageNotificationParam, ProtocolVersion, ServerCapabilities};
use rmcp::service::{Peer, RequestContext};
use rmcp::RoleServer;
use serde_json::{Map, Value};

use rmcp::model::LoggingLevel;

/// A log severity, least severe first (RFC 5424 order, as the
/// specification lists them); the gateway's own copy of rmcp's
/// deprecated `LoggingLevel`, with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

const LEVELS: [Level; 8] = [
    Level::Debug,
    Level::Info,
    Level::Notice,
    Level::Warning,
    Level::Error,
    Level::Critical,
    Level::Alert,
    Level::Emergency,
];

impl From<LoggingLevel> for Level {
    fn from(l: LoggingLevel) -> Self {
        match l {
            LoggingLevel::Debug => Level::Debug,
            LoggingLevel::Info => Level::Info,
            LoggingLevel::Notice => Level::Notice,
            LoggingLevel::Warning => Level::Warning,
            LoggingLevel::Error => Level::Error,
            LoggingLevel::Critical => Level::Critical,
            LoggingLevel::Alert => Level::Alert,
            LoggingLevel::Emergency => Level::Emergency,
        }
    }
}

impl From<Level> for LoggingLevel {
    fn from(l: Level) -> Self {
        match l {
            Level::Debug => LoggingLevel::Debug,
            Level::Info => LoggingLevel::Info,
            Level::Notice => LoggingLevel::Notice,
            Level::Warning => LoggingLevel::Warning,
            Level::Error => LoggingLevel::Error,
            Level::Critical => LoggingLevel::Critical,
            Level::Alert => LoggingLevel::Alert,
            Level::Emergency => LoggingLevel::Emergency,
        }
    }
}

/// The gateway's capabilities: tools, and logging (which the
/// specification requires of a server that sends log notifications).
pub fn capabilities() -> ServerCapabilities {
    ServerCapabilities::builder()
        .enable_tools()
        .enable_logging()
        .build()
}

/// The level a handshake session logs at until its client sets one.
pub const DEFAULT_SESSION_LEVEL: Level = Level::Info;

/// The level one MCP session's client chose; shared by the clones of the
/// session's handler.
#[derive(Debug, Clone)]
pub struct SessionLevel(Arc<AtomicU8>);

/// Stored while the client has not chosen a level.
const UNSET: u8 = u8::MAX;

impl Default for SessionLevel {
    fn default() -> Self {
        Self(Arc::new(AtomicU8::new(UNSET)))
    }
}

impl SessionLevel {
    /// Records the client's `logging/setLevel`.
    pub fn set(&self, level: Level) {
        self.0.store(level as u8, Ordering::Relaxed);
    }

    /// The chosen level, if the client chose one.
    pub fn get(&self) -> Option<Level> {
        LEVELS
            .get(usize::from(self.0.load(Ordering::Relaxed)))
            .copied()
    }
}

/// Whether a request lives in the per-request (2026-07-28+) lifecycle.
fn per_request(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

/// The least severe level to send for one request; `None` sends nothing.
pub fn threshold(context: &RequestContext<RoleServer>, session: &SessionLevel) -> Option<Level> {
    if let Some(level) = context.meta.log_level() {
        return Some(level.into());
    }
    if per_request(context) {
        return None;
    }
    Some(session.get().unwrap_or(DEFAULT_SESSION_LEVEL))
}

/// Something worth reporting while a call runs: a progress message and the
/// log record it also becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// The short text of the progress notification.
    pub message: String,
    pub level: Level,
    /// The `data` of the log notification.
    pub data: Value,
}

impl Note {
    /// A note whose log data is `{"message": …}` plus `extra`.
    pub fn new(level: Level, message: String, extra: Map<String, Value>) -> Self {
        let mut data = Map::new();
        data.insert("message".into(), Value::String(message.clone()));
        data.extend(extra);
        Self {
            message,
            level,
            data: Value::Object(data),
        }
    }
}

/// Sends a call's log notifications at or above its threshold.
pub struct Logger {
    peer: Peer<RoleServer>,
    threshold: Option<Level>,
    name: String,
}

impl Logger {
    /// Logs for one call of the tool `name` (the notifications' `logger`).
    pub fn new(peer: Peer<RoleServer>, threshold: Option<Level>, name: String) -> Self {
        Self {
            peer,
            threshold,
            name,
        }
    }

    /// Whether a record at `level` would be sent.
    pub fn enabled(&self, level: Level) -> bool {
        self.threshold.is_some_and(|t| level >= t)
    }

    /// Sends one record if its level passes. A client that went away does
    /// not fail the call.
    pub async fn log(&self, level: Level, data: Value) {
        if !self.enabled(level) {
            return;
        }
        let param =
            LoggingMessageNotificationParam::new(level.into(), data).with_logger(&self.name);
        if let Err(e) = self.peer.notify_logging_message(param).await {
            tracing::debug!(error = %e, "log notification not delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_syslog_order_and_convert_both_ways() {
        for pair in LEVELS.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        for (i, level) in LEVELS.into_iter().enumerate() {
            assert_eq!(level as usize, i);
            assert_eq!(Level::from(LoggingLevel::from(level)), level);
        }
    }

    #[test]
    fn session_level_is_unset_until_chosen_and_shared_by_clones() {
        let level = SessionLevel::default();
        assert_eq!(level.get(), None);
        let clone = level.clone();
        clone.set(Level::Warning);
        assert_eq!(level.get(), Some(Level::Warning));
    }

    #[test]
    fn notes_carry_their_message_in_the_data() {
        let mut extra = Map::new();
        extra.insert("status".into(), Value::String("start".into()));
        let note = Note::new(Level::Info, "step".into(), extra);
        assert_eq!(
            note.data,
            serde_json::json!({"message": "step", "status": "start"})
        );
    }
}
