//! plugind: a serverless-first plugin daemon for Dify.
//!
//! The library holds everything; `main.rs` only parses the command line.

pub mod api;
pub mod app_state;
pub mod backwards;
pub mod debug;
pub mod dispatch;
pub mod doctor;
pub mod endpoint;
pub mod error;
pub mod install;
pub mod lambda_cli;
pub mod mcp;
pub mod metrics;
pub mod package;
pub mod runtime;
pub mod serve;
pub mod settings;
pub mod storage;
pub mod store;
pub mod telemetry;
