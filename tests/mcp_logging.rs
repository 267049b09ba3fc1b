//! Log notifications from a real plugin: the `conformance_tool` fixture's
//! `log_levels` tool logs a started step and a failed one; the gateway
//! sends them as `notifications/message` at `info` and `error`. The rmcp
//! client chooses its level with `logging/setLevel` (handshake era); the
//! Python `mcp` 2.x client carries it in each request's `_meta`
//! (2026-07-28). A level above a record's suppresses it.

// The logging types are deprecated in rmcp (SEP-2577) but still what
// handshake-era clients use.
#![allow(deprecated)]

mod common;
mod dispatch_common;

use std::path::Path;
use std::time::Duration;

use common::TestApp;
use dispatch_common::{install_fixture, spawn_local, HostTimings};
use rmcp::model::{
    CallToolRequestParams, LoggingLevel, LoggingMessageNotificationParam, SetLevelRequestParams,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const LOG_TOOL: &str = "conformance__log_levels";

struct Served {
    _app: TestApp,
    url: String,
    token: String,
}

async fn serve_conformance_tool() -> Served {
    let app = spawn_local(HostTimings::default()).await;
    install_fixture(&app, "conformance_tool").await;
    let (url, token) = common::create_mcp_server(
        &app.client,
        &app.base,
        json!({"name": "logs", "user_id": "u1", "tools": "all"}),
    )
    .await;
    Served {
        url,
        token,
        _app: app,
    }
}

/// An rmcp client that forwards the log records it receives.
struct LogRecorder {
    tx: mpsc::Sender<LoggingMessageNotificationParam>,
}

impl ClientHandler for LogRecorder {
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.tx.try_send(params);
    }
}

async fn rmcp_client(
    s: &Served,
) -> (
    RunningService<RoleClient, LogRecorder>,
    mpsc::Receiver<LoggingMessageNotificationParam>,
) {
    let (tx, rx) = mpsc::channel(64);
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(s.url.clone()).auth_header(s.token.clone()),
    );
    let client = LogRecorder { tx }.serve(transport).await.unwrap();
    (client, rx)
}

async fn next_log(
    rx: &mut mpsc::Receiver<LoggingMessageNotificationParam>,
) -> LoggingMessageNotificationParam {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a log notification")
        .expect("client running")
}

#[tokio::test]
async fn rmcp_client_gets_plugin_logs_at_their_level_and_above_its_chosen_level() {
    let s = serve_conformance_tool().await;
    let (client, mut logs) = rmcp_client(&s).await;
    let caps = client.peer_info().unwrap().capabilities.clone();
    assert!(caps.logging.is_some(), "logging capability declared");

    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .unwrap();
    let r = client
        .call_tool(CallToolRequestParams::new(LOG_TOOL))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap()["content"][0]["text"],
        "done"
    );
    let started = next_log(&mut logs).await;
    assert_eq!(started.level, LoggingLevel::Info);
    assert_eq!(started.logger.as_deref(), Some(LOG_TOOL));
    assert_eq!(
        started.data,
        json!({"message": "fetch page", "status": "start"})
    );
    let failed = next_log(&mut logs).await;
    assert_eq!(failed.level, LoggingLevel::Error);
    assert_eq!(
        failed.data,
        json!({"message": "fetch page", "status": "error", "error": "timed out",
            "data": {"url": "https://example.com"}})
    );

    // Above info, the started step is not sent: the first record of the
    // next call (they arrive in order on one stream) is the failed one.
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Warning))
        .await
        .unwrap();
    client
        .call_tool(CallToolRequestParams::new(LOG_TOOL))
        .await
        .unwrap();
    let first = next_log(&mut logs).await;
    assert_eq!(first.level, LoggingLevel::Error, "{first:?}");
    assert_eq!(first.data["status"], "error");

    // Above error, nothing of this call; a later info-level call's records
    // come first again.
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Critical))
        .await
        .unwrap();
    client
        .call_tool(CallToolRequestParams::new(LOG_TOOL))
        .await
        .unwrap();
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await
        .unwrap();
    client
        .call_tool(CallToolRequestParams::new("conformance__tool_with_logging"))
        .await
        .unwrap();
    let next = next_log(&mut logs).await;
    assert_eq!(
        next.logger.as_deref(),
        Some("conformance__tool_with_logging")
    );
    assert_eq!(next.data["message"], "Tool execution started");
    client.cancel().await.unwrap();
}

fn tools_python() -> String {
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-python.sh"))
        .arg("--print-env-file")
        .output()
        .unwrap();
    let text = std::fs::read_to_string(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("export TOOLS_PYTHON="))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("TOOLS_PYTHON in the tools env file")
}

/// Runs tests/python/mcp_logging_client.py: one call of `tool` with
/// `level` in every request's `_meta` ("none": without it).
async fn python_call_with_level(s: &Served, python: &str, tool: &str, level: &str) -> Value {
    let out = tokio::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_logging_client.py"))
        .args([&s.url, &s.token, tool, level])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "mcp_logging_client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn python_mcp2_per_request_log_level_selects_the_records() {
    let s = serve_conformance_tool().await;
    let python = tools_python();

    let out = python_call_with_level(&s, &python, LOG_TOOL, "info").await;
    assert_eq!(out["protocol_version"], "2026-07-28");
    assert_eq!(out["result"]["content"][0]["text"], "done");
    let logs = out["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 2, "{out}");
    assert_eq!(logs[0]["level"], "info");
    assert_eq!(logs[0]["logger"], LOG_TOOL);
    assert_eq!(
        logs[0]["data"],
        json!({"message": "fetch page", "status": "start"})
    );
    assert_eq!(logs[1]["level"], "error");
    assert_eq!(logs[1]["data"]["error"], "timed out");

    let out = python_call_with_level(&s, &python, LOG_TOOL, "error").await;
    let levels: Vec<&Value> = out["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["level"])
        .collect();
    assert_eq!(levels, [&json!("error")], "{out}");

    // Without a level in `_meta`, the revision forbids log records.
    let out = python_call_with_level(&s, &python, LOG_TOOL, "none").await;
    assert_eq!(out["result"]["content"][0]["text"], "done");
    assert_eq!(out["logs"], json!([]), "{out}");
}
