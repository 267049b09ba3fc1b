//! The daemon's error table: every failure that reaches a caller becomes one
//! [`DaemonError`], and this module is the one place that maps each variant to
//! the `error_type` and negative code the Dify client dispatches on
//! (reference: `internal/types/exception/`).

use serde::Serialize;

/// An error as the Dify API server sees it.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The request is malformed or refers to something invalid.
    #[error("{0}")]
    BadRequest(String),
    /// A plugin unique identifier does not parse.
    #[error("{0}")]
    UniqueIdentifier(String),
    /// A generic missing record (installation task, asset, endpoint…).
    #[error("{0}")]
    NotFound(String),
    /// The plugin is not installed for this tenant.
    #[error("plugin not found")]
    PluginNotFound,
    /// A missing record the reference reports as an internal error, whose
    /// message Dify matches (removing an endpoint that is gone: Dify's
    /// `delete_endpoint` takes "record not found" in an internal error as
    /// done). Logged as the client error it is.
    #[error("{0}")]
    GoneAsInternal(String),
    /// Missing or wrong `X-Api-Key`.
    #[error("unauthorized")]
    Unauthorized,
    /// The plugin lacks a permission from its manifest.
    #[error("{0}")]
    PermissionDenied(String),
    /// The plugin itself failed; the payload is the plugin's own
    /// `{message,error_type,args}` object, passed on as a JSON string.
    #[error("{0}")]
    PluginInvoke(String),
    /// A plugin connection closed while a session was still open.
    #[error("connection closed")]
    ConnectionClosed,
    /// Anything else. The cause is logged with its whole chain; the caller
    /// sees only the short message.
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<anyhow::Error>,
    },
}

/// The JSON object that travels, serialized to a string, in an error
/// envelope's `message` field.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub message: &'a str,
    pub error_type: &'a str,
    pub args: Option<serde_json::Value>,
}

impl DaemonError {
    /// An internal error with a message for the caller and a cause for the log.
    pub fn internal(message: impl Into<String>, source: impl Into<anyhow::Error>) -> Self {
        Self::Internal {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An internal error with only a message.
    pub fn internal_msg(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// The `error_type` name the Dify client maps to an exception class.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "PluginDaemonBadRequestError",
            Self::UniqueIdentifier(_) => "PluginUniqueIdentifierError",
            Self::NotFound(_) => "PluginDaemonNotFoundError",
            Self::PluginNotFound => "PluginNotFoundError",
            Self::Unauthorized => "PluginDaemonUnauthorizedError",
            Self::PermissionDenied(_) => "PluginPermissionDeniedError",
            Self::PluginInvoke(_) => "PluginInvokeError",
            // Reference quirk: the constant is named PluginConnectionClosedError
            // but its wire value is "ConnectionClosedError".
            Self::ConnectionClosed => "ConnectionClosedError",
            Self::GoneAsInternal(_) | Self::Internal { .. } => "PluginDaemonInternalServerError",
        }
    }

    /// The envelope's negative `code`.
    pub fn code(&self) -> i32 {
        match self {
            Self::BadRequest(_) | Self::UniqueIdentifier(_) => -400,
            Self::NotFound(_) | Self::PluginNotFound => -404,
            Self::Unauthorized => -401,
            Self::PermissionDenied(_) => -403,
            Self::PluginInvoke(_)
            | Self::ConnectionClosed
            | Self::GoneAsInternal(_)
            | Self::Internal { .. } => -500,
        }
    }

    /// The envelope's `message`: a JSON string of `{message,error_type,args}`.
    pub fn envelope_message(&self) -> String {
        let message = self.to_string();
        serde_json::to_string(&ErrorBody {
            message: &message,
            error_type: self.error_type(),
            args: None,
        })
        .expect("error body serializes")
    }

    /// Logs internal errors with their cause chain; client errors at debug.
    pub fn log(&self) {
        match self {
            Self::Internal {
                message,
                source: Some(source),
            } => tracing::error!(error = %message, cause = ?source, "internal error"),
            Self::Internal { message, .. } => tracing::error!(error = %message, "internal error"),
            other => {
                tracing::debug!(error_type = other.error_type(), error = %other, "request refused")
            }
        }
    }
}

/// Shorthand for results whose error reaches a caller.
pub type DaemonResult<T> = Result<T, DaemonError>;
