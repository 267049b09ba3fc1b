//! Plugin endpoints: public URLs `/e/{hook_id}/…` that a tenant sets up for a
//! plugin, and the serving of requests to them.
//!
//! A request is read whole (up to a limit), written out as raw HTTP/1.1
//! ([`raw_http`]) and sent to the plugin as an `endpoint`/`invoke_endpoint`
//! session with the endpoint's decrypted settings. The plugin answers with
//! chunks ([`response`]): status and headers first, then hex body pieces,
//! each written to the caller as soon as it arrives so server-sent events
//! stream live. Dropping the response body (the caller went away) drops the
//! session stream, which cancels the session.
//!
//! Management ([`service`]) keeps the endpoint rows, validates settings
//! against the declaration ([`config`]) and has Dify encrypt secrets.

pub mod config;
pub mod hook;
pub mod invoke;
pub mod raw_http;
pub mod response;
pub mod serve;
pub mod service;

use crate::backwards::InnerApiError;
use crate::error::DaemonError;
use crate::store::StoreError;

pub use invoke::{ChunkStream, EndpointCall, Invoker};
pub use serve::{EndpointServer, ServeOptions};
pub use service::EndpointService;

/// Failures of endpoint management and serving.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// No endpoint, or no installation behind it.
    #[error("{0}")]
    NotFound(String),
    /// The endpoint to remove is gone (or is another tenant's).
    #[error("failed to remove endpoint: record not found")]
    RemoveGone,
    /// The tenant has not installed the plugin.
    #[error("plugin not found")]
    PluginNotFound,
    /// The manifest does not ask for the endpoint permission.
    #[error("permission denied, you need to enable endpoint access in plugin manifest")]
    PermissionDenied,
    /// The plugin declares no endpoint group.
    #[error("plugin does not have an endpoint")]
    NoEndpoint,
    /// The settings do not match the declaration.
    #[error("failed to validate settings: {0}")]
    InvalidSettings(String),
    /// Dify's encryption service failed.
    #[error("failed to {opt} settings: {source}")]
    Encrypt {
        opt: &'static str,
        #[source]
        source: InnerApiError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<EndpointError> for DaemonError {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::NotFound(m) => DaemonError::NotFound(m),
            // The reference's answer, word for word (`setup_endpoint.go`
            // wraps gorm's "record not found" in an internal error): Dify's
            // `delete_endpoint` recognises it and treats the removal as done.
            EndpointError::RemoveGone => DaemonError::GoneAsInternal(e.to_string()),
            EndpointError::PluginNotFound => DaemonError::PluginNotFound,
            EndpointError::PermissionDenied => DaemonError::PermissionDenied(e.to_string()),
            EndpointError::NoEndpoint | EndpointError::InvalidSettings(_) => {
                DaemonError::BadRequest(e.to_string())
            }
            EndpointError::Encrypt { .. } => {
                let message = e.to_string();
                DaemonError::internal(message, e)
            }
            EndpointError::Store(s) => s.into(),
        }
    }
}
