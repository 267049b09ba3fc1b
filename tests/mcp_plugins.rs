//! The MCP gateway in front of a real plugin: the `echo_tool` fixture is
//! installed through the management API and runs under the local runtime;
//! the rmcp client and the Python `mcp` clients (2.x in auto and legacy
//! modes, 1.x) list its tools, call each content kind, get progress while
//! the slow tool streams, and cancel calls, which ends the plugin session.

mod common;
mod dispatch_common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::TestApp;
use dispatch_common::{install_fixture, spawn_local, HostTimings};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientRequest, ProgressNotificationParam,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

/// A daemon with echo_tool installed and an MCP server exposing all its
/// tools.
struct Served {
    app: TestApp,
    plugin_unique_id: String,
    url: String,
    token: String,
}

async fn serve_echo_tool() -> Served {
    let app = spawn_local(HostTimings::default()).await;
    let plugin_unique_id = install_fixture(&app, "echo_tool").await;
    let (url, token) = common::create_mcp_server(
        &app.client,
        &app.base,
        json!({
            "name": "echo plugin",
            "user_id": "u1",
            "tools": "all",
            "credentials": {"echo_tool": {"api_key": "k"}}
        }),
    )
    .await;
    Served {
        url,
        token,
        app,
        plugin_unique_id,
    }
}

impl Served {
    /// Sessions the plugin process has open right now.
    fn open_sessions(&self) -> usize {
        self.app
            .state
            .local
            .as_ref()
            .unwrap()
            .runtime(&self.plugin_unique_id)
            .unwrap()
            .open_sessions()
    }
}

/// An rmcp client that forwards the progress notifications it receives.
struct ProgressRecorder {
    tx: mpsc::Sender<ProgressNotificationParam>,
}

impl ClientHandler for ProgressRecorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.tx.try_send(params);
    }
}

async fn rmcp_client(
    s: &Served,
) -> (
    RunningService<RoleClient, ProgressRecorder>,
    mpsc::Receiver<ProgressNotificationParam>,
) {
    let (tx, rx) = mpsc::channel(256);
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(s.url.clone()).auth_header(s.token.clone()),
    );
    let client = ProgressRecorder { tx }.serve(transport).await.unwrap();
    (client, rx)
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned()).with_arguments(args.as_object().unwrap().clone())
}

#[tokio::test]
async fn rmcp_client_calls_every_content_kind_of_the_real_plugin() {
    let s = serve_echo_tool().await;
    let (client, mut progress) = rmcp_client(&s).await;
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "echo plugin");
    // rmcp's client opens with the handshake era's newest revision.
    assert_eq!(info.protocol_version.as_str(), "2025-11-25");

    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "echo_tool__blob",
            "echo_tool__echo",
            "echo_tool__fail",
            "echo_tool__json",
            "echo_tool__slow"
        ]
    );

    let r = client
        .call_tool(call("echo_tool__echo", json!({"text": "hi there"})))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap()["content"],
        json!([{"type": "text", "text": "hi there"}])
    );
    assert_ne!(r.is_error, Some(true));

    let r = client
        .call_tool(call("echo_tool__json", json!({"text": "hey"})))
        .await
        .unwrap();
    assert_eq!(
        r.structured_content,
        Some(json!({"echo": "hey", "length": 3}))
    );
    let v = serde_json::to_value(&r).unwrap();
    let text: Value = serde_json::from_str(v["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, json!({"echo": "hey", "length": 3}));

    // The SDK splits the blob into 8 KiB chunks; the client gets one file.
    let r = client
        .call_tool(call("echo_tool__blob", json!({"size": 50000})))
        .await
        .unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let res = &v["content"][0];
    assert_eq!(res["type"], "resource", "{v}");
    assert_eq!(res["resource"]["mimeType"], "application/octet-stream");
    assert_eq!(res["resource"]["uri"], "attachment:///pattern.bin");
    let blob = base64::engine::general_purpose::STANDARD
        .decode(res["resource"]["blob"].as_str().unwrap())
        .unwrap();
    let expected: Vec<u8> = (0..50000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(blob, expected);

    let r = client
        .call_tool(call("echo_tool__fail", json!({"reason": "boom"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    let text = serde_json::to_value(&r).unwrap()["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("boom"), "{text}");

    // Every request carries a progress token, so the blob's chunks were
    // reported too; only the slow call's steps count below.
    while progress.try_recv().is_ok() {}
    // Streamed chunks are reported as progress, one step per chunk.
    let r = client
        .call_tool(call("echo_tool__slow", json!({"count": 3, "delay": 0.05})))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap()["content"][0]["text"],
        "chunk 0chunk 1chunk 2"
    );
    let mut steps = Vec::new();
    while let Ok(p) = progress.try_recv() {
        steps.push(p.progress);
    }
    assert_eq!(steps, [1.0, 2.0, 3.0]);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn rmcp_client_cancelling_a_call_cancels_the_plugin_session() {
    let s = serve_echo_tool().await;
    let (client, mut progress) = rmcp_client(&s).await;
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(call(
        "echo_tool__slow",
        json!({"count": 100, "delay": 0.2}),
    )));
    let handle = client
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .unwrap();
    // The first chunk shows the plugin is at work.
    let first = tokio::time::timeout(Duration::from_secs(30), progress.recv())
        .await
        .expect("progress while the slow tool runs")
        .unwrap();
    assert_eq!(first.progress, 1.0);
    assert_eq!(s.open_sessions(), 1);
    handle.cancel(Some("enough".into())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.open_sessions() != 0 {
        assert!(
            Instant::now() < deadline,
            "plugin session still open after the client cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The MCP session and the plugin go on serving.
    let r = client
        .call_tool(call("echo_tool__echo", json!({"text": "still here"})))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap()["content"][0]["text"],
        "still here"
    );
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

/// The venv with the newest `mcp` 1.x (tests/python/setup-mcp1.sh).
fn mcp1_python() -> String {
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/setup-mcp1.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup-mcp1.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs tests/python/mcp_client.py. When the script reports a cancelled
/// call, checks that the plugin session ends while the client is still
/// connected. Returns the script's output and, per cancelled call, whether
/// its session ended in time.
async fn python_client(s: &Served, mode: &str, calls: Value) -> (Value, Vec<bool>) {
    let python = if mode == "v1" {
        mcp1_python()
    } else {
        tools_python()
    };
    let mut child = tokio::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_client.py"))
        .arg(&s.url)
        .arg(&s.token)
        .arg(mode)
        .arg(calls.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let read_out = tokio::spawn(async move {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).await.unwrap();
        buf
    });
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut err_text = String::new();
    let mut ended_in_time = Vec::new();
    while let Some(line) = stderr.next_line().await.unwrap() {
        if line.starts_with("cancelled ") {
            // The client sleeps 3 s after the cancel; 2.5 s is the budget.
            let deadline = Instant::now() + Duration::from_millis(2500);
            while s.open_sessions() != 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let connected = child.try_wait().unwrap().is_none();
            ended_in_time.push(s.open_sessions() == 0 && connected);
        }
        err_text.push_str(&line);
        err_text.push('\n');
    }
    let status = child.wait().await.unwrap();
    let out = read_out.await.unwrap();
    assert!(
        status.success(),
        "python client ({mode}) failed: {err_text}"
    );
    (serde_json::from_slice(&out).unwrap(), ended_in_time)
}

fn calls_of_every_kind() -> Value {
    json!([
        ["echo_tool__echo", {"text": "hi"}],
        ["echo_tool__json", {"text": "hey"}],
        ["echo_tool__blob", {"size": 20000}],
        ["echo_tool__fail", {"reason": "nope"}],
        ["echo_tool__slow", {"count": 3, "delay": 0.05}],
        // Cancelled after a second of a 20 s run; the client stays
        // connected for 3 s more, so the session's end is the cancel's doing.
        ["echo_tool__slow", {"count": 100, "delay": 0.2}, {"cancel_after": 1.0, "sleep_after": 3}],
        ["echo_tool__echo", {"text": "after"}]
    ])
}

/// Checks the output of `calls_of_every_kind`, and that the plugin session
/// of the cancelled call ended while the client was still connected.
fn check_every_kind(mode: &str, out: &Value, ended_in_time: &[bool]) {
    assert_eq!(out["tools"].as_array().unwrap().len(), 5, "{mode}: {out}");
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(
        calls[0]["result"]["content"],
        json!([{"type": "text", "text": "hi"}]),
        "{mode}"
    );
    assert_eq!(
        calls[1]["result"]["structuredContent"],
        json!({"echo": "hey", "length": 3}),
        "{mode}"
    );
    let res = &calls[2]["result"]["content"][0];
    assert_eq!(res["type"], "resource", "{mode}");
    assert_eq!(
        res["resource"]["mimeType"], "application/octet-stream",
        "{mode}"
    );
    let blob = base64::engine::general_purpose::STANDARD
        .decode(res["resource"]["blob"].as_str().unwrap())
        .unwrap();
    assert_eq!(blob.len(), 20000, "{mode}");
    assert!(blob.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    assert_eq!(calls[3]["result"]["isError"], true, "{mode}");
    assert!(
        calls[3]["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{mode}"
    );
    let slow = &calls[4];
    assert_eq!(
        slow["result"]["content"][0]["text"], "chunk 0chunk 1chunk 2",
        "{mode}"
    );
    let steps: Vec<f64> = slow["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(steps, [1.0, 2.0, 3.0], "{mode}: {slow}");

    let cancelled = &calls[5];
    assert_eq!(cancelled["cancelled"], true, "{mode}: {cancelled}");
    assert!(
        !cancelled["progress"].as_array().unwrap().is_empty(),
        "{mode}: the slow call had started streaming: {cancelled}"
    );
    assert_eq!(calls[6]["result"]["content"][0]["text"], "after", "{mode}");
    assert_eq!(
        ended_in_time,
        [true],
        "{mode}: the cancelled call's plugin session ended while the client stayed"
    );
}

#[tokio::test]
async fn python_mcp2_auto_mode_negotiates_the_stateless_revision() {
    let s = serve_echo_tool().await;
    let (out, ended) = python_client(&s, "auto", calls_of_every_kind()).await;
    assert!(out["sdk_version"].as_str().unwrap().starts_with("2."));
    assert_eq!(out["protocol_version"], "2026-07-28");
    check_every_kind("auto", &out, &ended);
}

#[tokio::test]
async fn python_mcp2_legacy_mode_uses_the_handshake_revision() {
    let s = serve_echo_tool().await;
    let (out, ended) = python_client(&s, "legacy", calls_of_every_kind()).await;
    assert_eq!(out["protocol_version"], "2025-11-25");
    check_every_kind("legacy", &out, &ended);
}

#[tokio::test]
async fn python_mcp1_client_works_through_the_handshake() {
    let s = serve_echo_tool().await;
    let (out, ended) = python_client(&s, "v1", calls_of_every_kind()).await;
    assert!(out["sdk_version"].as_str().unwrap().starts_with("1."));
    assert_eq!(out["server_name"], "echo plugin");
    assert_eq!(out["protocol_version"], "2025-11-25");
    check_every_kind("v1", &out, &ended);
}
