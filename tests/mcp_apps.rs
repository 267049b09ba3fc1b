//! Dify apps as MCP tools against the Dify inner API double: the app's form
//! (`fetch/app/info`) becomes the inputSchema, calls run the app through
//! `invoke/app` (streamed), workflow outputs come back as structured
//! content, chat answers as text and node events as progress.

mod common;
mod dify_double;

use std::path::Path;
use std::sync::Arc;

use common::TENANT;
use dify_double::DifyDouble;
use plugind::app_state::AppState;
use plugind::install::NoopInstallStep;
use plugind::settings::Secret;
use rmcp::model::{CallToolRequestParams, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

struct Served {
    double: DifyDouble,
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

/// A daemon whose inner API is the double, with one MCP server exposing
/// the double's workflow app, its chat app and an app it does not know.
async fn serve_apps() -> Served {
    let double = DifyDouble::start();
    let dir = tempfile::tempdir().unwrap();
    let database_url = common::fresh_database_url(dir.path()).await;
    let mut settings = common::settings(dir.path(), &database_url, &[]);
    settings.dify_inner_api_url = double.base_url();
    settings.dify_inner_api_key = Secret::new(dify_double::KEY);
    let state = AppState::build_with_step(settings, Arc::new(NoopInstallStep))
        .await
        .unwrap();
    let base = common::serve_router(plugind::api::app(state)).await;
    let client = reqwest::Client::new();
    let (url, token) = common::create_mcp_server(
        &client,
        &base,
        json!({
            "name": "apps",
            "user_id": "u1",
            "apps": [
                {"app_id": "workflow-app", "name": "greet", "description": "Greets someone"},
                {"app_id": "chat-app", "mode": "advanced-chat"},
                {"app_id": "missing-app"}
            ]
        }),
    )
    .await;
    Served {
        double,
        url,
        token,
        _dir: dir,
    }
}

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

async fn client(
    s: &Served,
) -> (
    RunningService<RoleClient, ProgressRecorder>,
    mpsc::Receiver<ProgressNotificationParam>,
) {
    let (tx, rx) = mpsc::channel(256);
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(s.url.clone()).auth_header(s.token.clone()),
    );
    (ProgressRecorder { tx }.serve(transport).await.unwrap(), rx)
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned()).with_arguments(args.as_object().unwrap().clone())
}

#[tokio::test]
async fn app_forms_become_input_schemas() {
    let s = serve_apps().await;
    let (c, _) = client(&s).await;
    let tools = c.list_all_tools().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    // The app the inner API does not know is left out, not an error.
    assert_eq!(names, ["greet", "chat-app"]);
    let greet = Value::Object((*tools[0].input_schema).clone());
    assert_eq!(tools[0].description.as_deref(), Some("Greets someone"));
    assert_eq!(greet["type"], "object");
    assert_eq!(
        greet["properties"]["name"],
        json!({"type": "string", "maxLength": 48, "description": "Name"})
    );
    assert_eq!(greet["required"], json!(["name"]));
    let chat = Value::Object((*tools[1].input_schema).clone());
    assert_eq!(
        chat["properties"]["tone"],
        json!({"type": "string", "enum": ["calm", "lively"], "description": "Tone", "default": "calm"})
    );
    assert_eq!(chat["properties"]["query"]["type"], "string");
    assert_eq!(chat["required"], json!(["query"]));
    let asked: Vec<Value> = s
        .double
        .requests()
        .await
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with("fetch/app/info"))
        .map(|r| r["body"].clone())
        .collect();
    assert_eq!(asked.len(), 3);
    assert_eq!(asked[0]["tenant_id"], TENANT);
    assert_eq!(asked[0]["user_id"], "u1");
    assert_eq!(asked[0]["app_id"], "workflow-app");
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn a_workflow_app_returns_its_outputs_as_structured_content_with_node_progress() {
    let s = serve_apps().await;
    let (c, mut progress) = client(&s).await;
    let r = c
        .call_tool(call("greet", json!({"name": "Ada"})))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert_eq!(r.structured_content, Some(json!({"text": "Hello, Ada!"})));
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["content"][0]["text"], r#"{"text":"Hello, Ada!"}"#);
    let mut messages = Vec::new();
    let mut steps = Vec::new();
    while let Ok(p) = progress.try_recv() {
        steps.push(p.progress);
        if let Some(m) = p.message {
            messages.push(m);
        }
    }
    for expected in [
        "workflow started",
        "Start started",
        "LLM started",
        "LLM succeeded",
        "End succeeded",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "{expected:?} not in {messages:?}"
        );
    }
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "progress rises: {steps:?}"
    );
    let run = s
        .double
        .requests()
        .await
        .into_iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("invoke/app"))
        .unwrap();
    assert_eq!(run["body"]["app_id"], "workflow-app");
    assert_eq!(run["body"]["response_mode"], "streaming");
    assert_eq!(run["body"]["inputs"], json!({"name": "Ada"}));
    assert_eq!(run["body"]["tenant_id"], TENANT);
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn a_chat_app_answers_in_text() {
    let s = serve_apps().await;
    let (c, _) = client(&s).await;
    let r = c
        .call_tool(call(
            "chat-app",
            json!({"query": "good morning", "tone": "lively"}),
        ))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert_eq!(
        serde_json::to_value(&r).unwrap()["content"],
        json!([{"type": "text", "text": "You said: good morning"}])
    );
    assert!(r.structured_content.is_none());
    let run = s
        .double
        .requests()
        .await
        .into_iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("invoke/app"))
        .unwrap();
    assert_eq!(run["body"]["query"], "good morning");
    assert_eq!(run["body"]["inputs"], json!({"tone": "lively"}));
    // Without a query the app is not run.
    let r = c.call_tool(call("chat-app", json!({}))).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn an_app_failing_mid_stream_is_an_error_result() {
    let s = serve_apps().await;
    s.double.behave("invoke/app", "stream_error").await;
    let (c, _) = client(&s).await;
    let r = c
        .call_tool(call("greet", json!({"name": "Ada"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    let text = serde_json::to_value(&r).unwrap()["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("simulated failure"), "{text}");
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn python_client_in_auto_mode_runs_apps_with_progress() {
    let s = serve_apps().await;
    let env = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-python.sh"))
        .arg("--print-env-file")
        .output()
        .unwrap();
    let env = std::fs::read_to_string(String::from_utf8(env.stdout).unwrap().trim()).unwrap();
    let python = env
        .lines()
        .find_map(|l| l.strip_prefix("export TOOLS_PYTHON="))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let calls = json!([["greet", {"name": "Bo"}], ["chat-app", {"query": "hey"}]]);
    let out = tokio::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_client.py"))
        .arg(&s.url)
        .arg(&s.token)
        .arg("auto")
        .arg(calls.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["protocol_version"], "2026-07-28");
    let greet = &out["calls"][0];
    assert_eq!(
        greet["result"]["structuredContent"],
        json!({"text": "Hello, Bo!"})
    );
    let messages: Vec<&str> = greet["progress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["message"].as_str())
        .collect();
    assert!(messages.contains(&"LLM succeeded"), "{messages:?}");
    assert_eq!(
        out["calls"][1]["result"]["content"][0]["text"],
        "You said: hey"
    );
}
