//! The debug runtime: plugin authors run their plugin on their own machine
//! with `INSTALL_METHOD=remote` and it connects here over TCP with a
//! per-tenant key (PROTOCOL.md §4; reference:
//! `internal/core/debugging_runtime/`).
//!
//! [`DebugServer`] accepts connections, checks the key, takes the plugin's
//! registration, stores its assets, and then serves the connection as a
//! [`DebugRuntime`]: registered in the runtime [`crate::runtime::Registry`]
//! under its remote unique identifier and installed for the tenant with
//! runtime type `remote`, so dispatch finds it like any other installation.
//! When the connection goes, open sessions fail, the installation and the
//! registry entry go too.

pub mod registration;
pub mod runtime;
pub mod server;

pub use registration::{RegisterError, MAX_ASSET_BYTES};
pub use runtime::{connection_closed_error, DebugRuntime, RuntimeInfo};
pub use server::{DebugOptions, DebugServer, DebugServerError, KEY_TTL, RUNTIME_TYPE};
