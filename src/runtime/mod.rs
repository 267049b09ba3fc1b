//! Plugin runtimes: the [`PluginRuntime`] trait, the line codec, sessions, and
//! the hosts that run plugins (local child processes here; debug and
//! serverless hosts implement the same trait).
//!
//! Callers (dispatch, endpoints, MCP) hold an `Arc<dyn PluginRuntime>`, open a
//! session with [`PluginRuntime::invoke`], and read a [`SessionStream`] of
//! typed items; dropping the stream cancels the session.

pub mod codec;
pub mod local;
pub mod protocol;
pub mod provision;
pub mod python_env;
pub mod registry;
pub mod sandbox;
pub mod serverless;
pub mod session;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::DaemonError;

pub use codec::{LineCodec, LineTooLong, DEFAULT_MAX_LINE};
pub use local::{LaunchSpec, LocalHost, LocalOptions, LocalRuntime, ProcessSpec};
pub use protocol::{BackwardsEvent, BackwardsRequest, PluginError, SessionHeader};
pub use python_env::{EnvError, EnvPhase, EnvProgress, PythonEnv, PythonEnvConfig};
pub use registry::Registry;
pub use session::{
    BackwardsInvoke, BackwardsReplier, LineSender, SessionItem, SessionStream, SessionTable,
};

/// What can go wrong between a caller and a plugin.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The plugin could not be started (no heartbeat, exited early, bad command).
    #[error("plugin launch failed: {0}")]
    Launch(String),
    /// The plugin's Python environment could not be built.
    #[error(transparent)]
    Environment(#[from] EnvError),
    /// The runtime is not serving sessions right now (restarting, stopping, stopped).
    #[error("plugin runtime unavailable: {0}")]
    Unavailable(String),
    /// The plugin answered the session with its own error.
    #[error("{}", .0.to_json_string())]
    Plugin(PluginError),
    /// The session ran past its time limit. The text is the reference
    /// daemon's, which Dify shows as is.
    #[error("killed by timeout")]
    Timeout,
    /// The plugin process or connection went away while the session was open.
    #[error("plugin connection closed before the session ended")]
    ConnectionClosed,
    /// A session with this id is already open on this runtime.
    #[error("session {0} is already open")]
    DuplicateSession(String),
    /// Reading from or writing to the plugin failed.
    #[error("plugin i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// The request is larger than the host can carry (Lambda: 6 MB).
    #[error("invocation payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    /// The host's invoke API failed (after its retries).
    #[error("plugin invocation failed: {0}")]
    Invoke(String),
}

impl From<RuntimeError> for DaemonError {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::Plugin(e) => DaemonError::PluginInvoke(e.to_json_string()),
            RuntimeError::ConnectionClosed => DaemonError::ConnectionClosed,
            RuntimeError::Timeout => DaemonError::internal_msg("killed by timeout"),
            RuntimeError::PayloadTooLarge { .. } => DaemonError::BadRequest(err.to_string()),
            other => {
                let message = other.to_string();
                DaemonError::internal(message, other)
            }
        }
    }
}

/// Where a runtime is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeState {
    /// Launching; not yet heartbeating.
    Starting,
    /// Serving sessions.
    Ready,
    /// The process went away and is being started again.
    Restarting,
    /// Draining sessions before stopping; new sessions are refused.
    Stopping,
    /// Stopped on request; it will not come back.
    Stopped,
    /// No process runs: it was stopped after PLUGIN_LOCAL_IDLE_TIMEOUT
    /// without a session, or not started yet after a daemon restart. The
    /// next session starts it again.
    Idle,
    /// The first launch failed; the text says why.
    Failed(String),
}

/// One invocation of a plugin: who asks, which access type and action, and
/// the request fields that are flattened into the request line's `data`.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Session id and the context fields sent with every line.
    pub header: SessionHeader,
    /// Tenant the session runs for (hosts that call back out of process,
    /// such as Lambda, bind it into their callback token).
    pub tenant_id: String,
    pub user_id: String,
    /// Access type, e.g. `tool`, `model`, `endpoint`.
    pub access_type: String,
    /// Access action, e.g. `invoke_tool`.
    pub action: String,
    /// Request fields (`provider`, `tool`, `tool_parameters`, …).
    pub payload: Map<String, Value>,
    /// Time limit for this session; `None` uses the host's
    /// PLUGIN_MAX_EXECUTION_TIMEOUT.
    pub timeout: Option<Duration>,
}

impl SessionRequest {
    /// A request with a fresh random session id and no context.
    pub fn new(
        access_type: impl Into<String>,
        action: impl Into<String>,
        user_id: impl Into<String>,
        payload: Map<String, Value>,
    ) -> Self {
        Self {
            header: SessionHeader {
                session_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            },
            tenant_id: String::new(),
            user_id: user_id.into(),
            access_type: access_type.into(),
            action: action.into(),
            payload,
            timeout: None,
        }
    }

    /// The same request with a time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A running plugin, whichever host runs it.
#[async_trait::async_trait]
pub trait PluginRuntime: Send + Sync {
    /// The plugin's unique identifier (`author/name:version@checksum`).
    fn identity(&self) -> &str;

    /// The current state.
    fn state(&self) -> RuntimeState;

    /// Waits until the runtime serves sessions, at most `timeout`. Fails at
    /// once when it has stopped or failed.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), RuntimeError>;

    /// Opens a session and sends its request. The stream yields the
    /// session's items and ends after the plugin's `end`; dropping it
    /// cancels the session.
    async fn invoke(&self, request: SessionRequest) -> Result<SessionStream, RuntimeError>;

    /// Stops gracefully: refuses new sessions, lets open ones finish within
    /// the host's grace period, then ends the plugin.
    async fn shutdown(&self);
}
