//! The MCP gateway end to end: management API, bearer auth, Origin checks,
//! both URLs of a server, session close, JSON-RPC errors for bodies that
//! are not a message, batches by revision, and real MCP clients (rmcp and
//! the Python `mcp` package) listing and calling the fixture `echo_tool`
//! plugin's tools. Tool sessions are played
//! by an invoker that answers with the chunks the real plugin sends
//! (tests/fixtures/README.md), so every content kind is exercised.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::{TestApp, KEY, TENANT};
use futures::StreamExt;
use plugind::app_state::AppState;
use plugind::error::DaemonError;
use plugind::install::NoopInstallStep;
use plugind::mcp::{ChunkStream, McpGateway, PluginInvoker, ToolCall};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};

/// Answers tool calls as the echo_tool fixture does, and records them.
#[derive(Default)]
struct EchoInvoker {
    calls: Mutex<Vec<ToolCall>>,
}

fn text(t: &str) -> Value {
    json!({"type": "text", "message": {"text": t}, "meta": null})
}

#[async_trait::async_trait]
impl PluginInvoker for EchoInvoker {
    async fn invoke(&self, call: ToolCall) -> Result<ChunkStream, DaemonError> {
        self.calls.lock().unwrap().push(call.clone());
        let params = call.payload["tool_parameters"].clone();
        let s = |k: &str| params[k].as_str().unwrap_or("").to_owned();
        let chunks: Vec<Result<Value, DaemonError>> = match call.payload["tool"].as_str().unwrap() {
            "echo" => vec![Ok(text(&s("text")))],
            "json" => vec![Ok(
                json!({"type": "json", "message": {"json_object": {"echo": s("text"), "length": s("text").len()}}, "meta": null}),
            )],
            "blob" => {
                let size = params["size"].as_u64().unwrap_or(20000) as usize;
                let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                let meta =
                    json!({"mime_type": "application/octet-stream", "filename": "pattern.bin"});
                let mut out: Vec<_> = data
                    .chunks(8192)
                    .enumerate()
                    .map(|(i, piece)| Ok(json!({"type": "blob_chunk", "message": {"id": "b1", "sequence": i,
                        "total_length": size, "blob": base64::engine::general_purpose::STANDARD.encode(piece), "end": false}, "meta": meta})))
                    .collect();
                out.push(Ok(
                    json!({"type": "blob_chunk", "message": {"id": "b1", "sequence": out.len(),
                    "total_length": size, "blob": "", "end": true}, "meta": meta}),
                ));
                out
            }
            "fail" => vec![Err(DaemonError::PluginInvoke(
                json!({"message": s("reason"), "error_type": "ValueError", "args": {}}).to_string(),
            ))],
            "slow" => {
                let count = params["count"].as_u64().unwrap_or(3);
                let delay = params["delay"].as_f64().unwrap_or(0.1);
                let stream = futures::stream::iter(0..count).then(move |i| async move {
                    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
                    Ok(text(&format!("chunk {i}")))
                });
                return Ok(Box::pin(stream));
            }
            other => panic!("unexpected tool {other}"),
        };
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
}

struct Fixture {
    app: TestApp,
    invoker: Arc<EchoInvoker>,
    server_id: String,
    /// The path the management API shows for the server.
    path: String,
    token: String,
}

impl Fixture {
    /// The URL clients are given: the path the management API shows.
    fn mcp_url(&self) -> String {
        format!("{}{}", self.app.base, self.path)
    }

    /// The server's first URL, which configured clients still use.
    fn legacy_url(&self) -> String {
        format!("{}/mcp/{}", self.app.base, self.server_id)
    }

    fn api(&self, path: &str) -> String {
        format!("{}/plugin/{TENANT}/mcp/servers{path}", self.app.base)
    }
}

/// The echo_tool fixture folder as a package.
fn echo_tool_package() -> Vec<u8> {
    echo_tool_package_with(|_, data| data)
}

/// The echo_tool fixture as a package, each file passed through `edit`
/// (given its path in the package).
fn echo_tool_package_with(edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/echo_tool");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("__pycache__") {
                    stack.push(p);
                }
            } else {
                let rel = p.strip_prefix(&root).unwrap().to_str().unwrap().to_owned();
                let data = edit(&rel, std::fs::read(&p).unwrap());
                files.push((rel, data));
            }
        }
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    common::build_zip(&refs)
}

async fn start(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let database_url = common::fresh_database_url(dir.path()).await;
    let settings = common::settings(dir.path(), &database_url, extra);
    // The scripted invoker plays the plugin, so installing only records
    // its declarations.
    let state = AppState::build_with_step(settings, Arc::new(NoopInstallStep))
        .await
        .unwrap();
    let invoker = Arc::new(EchoInvoker::default());
    let gateway = McpGateway::new(state.clone(), invoker.clone());
    let router = plugind::api::app_with_mcp(state.clone(), gateway);
    let base = common::serve_router(router).await;
    let app = TestApp {
        base,
        client: reqwest::Client::new(),
        state,
        dir,
        database_url,
    };
    let (_, task) = app.install(echo_tool_package()).await;
    assert_eq!(task["status"], "success", "{task}");
    let mut f = Fixture {
        app,
        invoker,
        server_id: String::new(),
        path: String::new(),
        token: String::new(),
    };
    let created: Value = f
        .app
        .client
        .post(f.api(""))
        .header("X-Api-Key", KEY)
        .json(&json!({
            "name": "echo server",
            "description": "Echo tools",
            "user_id": "u1",
            "tools": "all",
            "fixed_values": {"echo_tool/slow": {"delay": 0.05}},
            "credentials": {"echo_tool": {"api_key": "top-secret-key"}}
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["code"], 0, "{created}");
    f.server_id = created["data"]["id"].as_str().unwrap().to_owned();
    f.path = created["data"]["path"].as_str().unwrap().to_owned();
    let token: Value = f
        .app
        .client
        .post(f.api(&format!("/{}/tokens", f.server_id)))
        .header("X-Api-Key", KEY)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    f.token = token["data"]["token"].as_str().unwrap().to_owned();
    f
}

#[tokio::test]
async fn records_keep_credentials_sealed_and_tokens_hashed() {
    let f = start(&[]).await;
    let got: Value = f
        .app
        .client
        .get(f.api(&format!("/{}", f.server_id)))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["data"]["name"], "echo server");
    assert_eq!(got["data"]["credential_providers"], json!(["echo_tool"]));
    assert!(!got.to_string().contains("top-secret-key"));
    let pool = f.app.state.store.pool();
    let row: (String,) = sqlx::query_as("SELECT credentials FROM mcp_servers")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(!row.0.is_empty() && !row.0.contains("top-secret"));
    let hash: (String,) = sqlx::query_as("SELECT token_hash FROM mcp_tokens")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_ne!(hash.0, f.token);
    assert_eq!(hash.0, plugind::mcp::records::token_hash(&f.token));
    // Without the key the management API refuses.
    let r = f.app.client.get(f.api("")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Duplicate names are refused; delete removes the server and its tokens.
    let dup: Value = f
        .app
        .client
        .post(f.api(""))
        .header("X-Api-Key", KEY)
        .json(&json!({"name": "echo server"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dup["code"], -400, "{dup}");
    let del: Value = f
        .app
        .client
        .post(f.api(&format!("/{}/delete", f.server_id)))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(del["data"], true);
    let r = f
        .app
        .client
        .post(f.mcp_url())
        .bearer_auth(&f.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a deleted server's tokens are gone");
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_a_challenge_pointing_at_the_metadata() {
    let f = start(&[]).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = f
        .app
        .client
        .post(f.mcp_url())
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let expected = format!(
        "{}/.well-known/oauth-protected-resource/mcp/{}/mcp",
        f.app.base, f.server_id
    );
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{expected}\"")
    );
    let meta: Value = reqwest::get(&expected).await.unwrap().json().await.unwrap();
    assert_eq!(meta["resource"], f.mcp_url());
    assert_eq!(meta["bearer_methods_supported"], json!(["header"]));

    let r = f
        .app
        .client
        .post(f.mcp_url())
        .bearer_auth("pdmcp_wrong")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));

    // A token of one server does not open another.
    let other: Value = f
        .app
        .client
        .post(f.api(""))
        .header("X-Api-Key", KEY)
        .json(&json!({"name": "other"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_url = format!(
        "{}/mcp/{}",
        f.app.base,
        other["data"]["id"].as_str().unwrap()
    );
    let r = f
        .app
        .client
        .post(other_url)
        .bearer_auth(&f.token)
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn foreign_origins_are_forbidden_and_allowed_ones_pass() {
    let f = start(&["--mcp-allowed-origins", "https://app.example.com"]).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let send = |origin: &'static str| {
        f.app
            .client
            .post(f.mcp_url())
            .bearer_auth(&f.token)
            .header("Origin", origin)
            .header("Accept", "application/json, text/event-stream")
            .json(&init)
            .send()
    };
    assert_eq!(
        send("https://evil.example.com").await.unwrap().status(),
        403
    );
    let ok = send("https://app.example.com").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().get("mcp-session-id").is_some());
}

#[tokio::test]
async fn rmcp_client_lists_and_calls_every_content_kind() {
    let f = start(&[]).await;
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(f.mcp_url()).auth_header(f.token.clone()),
    );
    let client = ().serve(transport).await.unwrap();
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "echo server");
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
    let slow = tools.iter().find(|t| t.name == "echo_tool__slow").unwrap();
    let schema = Value::Object((*slow.input_schema).clone());
    assert_eq!(
        schema["properties"]["count"],
        json!({"type": "number", "default": 3, "description": "How many chunks to send"})
    );
    assert!(
        schema["properties"].get("delay").is_none(),
        "fixed values are hidden"
    );
    let echo = tools.iter().find(|t| t.name == "echo_tool__echo").unwrap();
    assert_eq!(echo.input_schema["required"], json!(["text"]));

    let call = |name: &'static str, args: Value| {
        CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone())
    };
    let r = client
        .call_tool(call("echo_tool__echo", json!({"text": "hi"})))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap()["content"],
        json!([{"type": "text", "text": "hi"}])
    );
    let r = client
        .call_tool(call("echo_tool__json", json!({"text": "hi"})))
        .await
        .unwrap();
    assert_eq!(
        r.structured_content,
        Some(json!({"echo": "hi", "length": 2}))
    );
    let r = client
        .call_tool(call("echo_tool__blob", json!({"size": 20000})))
        .await
        .unwrap();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["content"][0]["type"], "resource");
    assert_eq!(
        v["content"][0]["resource"]["mimeType"],
        "application/octet-stream"
    );
    let blob = base64::engine::general_purpose::STANDARD
        .decode(v["content"][0]["resource"]["blob"].as_str().unwrap())
        .unwrap();
    assert_eq!(blob.len(), 20000);
    assert_eq!(blob[300], (300 % 251) as u8);
    let r = client
        .call_tool(call("echo_tool__fail", json!({"reason": "boom"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(
        serde_json::to_value(&r).unwrap()["content"][0]["text"],
        "ValueError: boom"
    );
    let err = client.call_tool(call("nope", json!({}))).await.unwrap_err();
    assert!(err.to_string().contains("unknown tool"), "{err}");

    // The plugin got the provider's credentials and the fixed values.
    let calls = f.invoker.calls.lock().unwrap().clone();
    assert_eq!(
        calls[0].payload["credentials"],
        json!({"api_key": "top-secret-key"})
    );
    assert_eq!(calls[0].payload["provider"], "echo_tool");
    assert_eq!(calls[0].user_id, "u1");
    assert_eq!(calls[0].tenant_id, TENANT);
    assert_eq!(calls[0].plugin_id, "plugind/echo_tool");
    client.cancel().await.unwrap();
}

fn tools_python() -> Option<String> {
    let env = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/setup-python.sh"
        ))
        .arg("--print-env-file")
        .output()
        .ok()?;
    let file = String::from_utf8(env.stdout).ok()?;
    let text = std::fs::read_to_string(file.trim()).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("export TOOLS_PYTHON="))
        .map(|v| v.trim_matches('"').to_owned())
}

/// The venv with the newest `mcp` 1.x (tests/python/setup-mcp1.sh).
fn mcp1_python() -> String {
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/setup-mcp1.sh"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup-mcp1.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs tests/python/mcp_client.py in `mode` ("v1" runs the 1.x SDK).
async fn python_client(f: &Fixture, mode: &str, calls: Value) -> Value {
    let python = if mode == "v1" {
        mcp1_python()
    } else {
        tools_python().expect("the tools venv (scripts/setup-python.sh)")
    };
    let out = tokio::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/mcp_client.py"
        ))
        .arg(f.mcp_url())
        .arg(&f.token)
        .arg(mode)
        .arg(calls.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn python_clients_1_and_2_in_both_eras_get_results_and_progress() {
    let f = start(&[]).await;
    for mode in ["legacy", "auto", "v1"] {
        let out = python_client(
            &f,
            mode,
            json!([
                ["echo_tool__json", {"text": "hey"}],
                ["echo_tool__slow", {"count": 3}],
                ["echo_tool__fail", {"reason": "nope"}]
            ]),
        )
        .await;
        assert_eq!(out["tools"].as_array().unwrap().len(), 5, "{mode}: {out}");
        let json_call = &out["calls"][0]["result"];
        assert_eq!(
            json_call["structuredContent"],
            json!({"echo": "hey", "length": 3}),
            "{mode}"
        );
        let slow = &out["calls"][1];
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
        assert_eq!(out["calls"][2]["result"]["isError"], true, "{mode}");
        // The SDK accepted the answer to its closing DELETE.
        let warnings = out["warnings"].as_array().unwrap();
        assert!(
            !warnings
                .iter()
                .any(|w| w.as_str().unwrap().contains("Session termination failed")),
            "{mode}: {warnings:?}"
        );
    }
}

async fn tool_names(client: &rmcp::service::RunningService<rmcp::RoleClient, ()>) -> Vec<String> {
    let mut names: Vec<_> = client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

/// What the gateway keeps between calls is refreshed when the record, its
/// credentials or the tenant's plugins change, even inside an open session.
#[tokio::test]
async fn open_sessions_see_record_edits_installs_uninstalls_and_upgrades() {
    let f = start(&[]).await;
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(f.mcp_url()).auth_header(f.token.clone()),
    );
    let client = ().serve(transport).await.unwrap();
    assert_eq!(tool_names(&client).await.len(), 5);
    let echo = |name: &'static str| {
        CallToolRequestParams::new(name)
            .with_arguments(json!({"text": "hi"}).as_object().unwrap().clone())
    };
    client.call_tool(echo("echo_tool__echo")).await.unwrap();

    // A record edit: one tool under another name, new credentials.
    let updated: Value = f
        .app
        .client
        .post(f.api(&format!("/{}/update", f.server_id)))
        .header("X-Api-Key", KEY)
        .json(&json!({
            "tools": [{"provider": "echo_tool", "tool": "echo", "name": "say"}],
            "credentials": {"echo_tool": {"api_key": "rotated"}}
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["code"], 0, "{updated}");
    assert_eq!(tool_names(&client).await, ["say"]);
    let err = client.call_tool(echo("echo_tool__echo")).await.unwrap_err();
    assert!(err.to_string().contains("unknown tool"), "{err}");
    client.call_tool(echo("say")).await.unwrap();
    let last = f.invoker.calls.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.payload["credentials"], json!({"api_key": "rotated"}));
    assert_eq!(last.payload["tool"], "echo");

    // Back to every tool, then the plugin goes away and comes back.
    let back: Value = f
        .app
        .client
        .post(f.api(&format!("/{}/update", f.server_id)))
        .header("X-Api-Key", KEY)
        .json(&json!({"tools": "all"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(back["code"], 0, "{back}");
    assert_eq!(tool_names(&client).await.len(), 5);
    let (_, list) = f
        .app
        .get("list", &[("page", "1"), ("page_size", "10")])
        .await;
    let installation = list["data"]["list"][0]["id"].as_str().unwrap().to_owned();
    let old = list["data"]["list"][0]["plugin_unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, un) = f
        .app
        .post("uninstall", json!({"plugin_installation_id": installation}))
        .await;
    assert_eq!(un["data"], true, "{un}");
    assert!(tool_names(&client).await.is_empty());
    let err = client.call_tool(echo("echo_tool__echo")).await.unwrap_err();
    assert!(err.to_string().contains("unknown tool"), "{err}");
    let (_, task) = f.app.install(echo_tool_package()).await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(tool_names(&client).await.len(), 5);

    // An upgrade to a version without the blob tool.
    let v2 = echo_tool_package_with(|path, data| {
        let text = String::from_utf8(data.clone()).unwrap_or_default();
        match path {
            "manifest.yaml" => text
                .replace("version: 0.0.1", "version: 0.0.2")
                .into_bytes(),
            "provider/echo_tool.yaml" => text.replace("  - tools/blob.yaml\n", "").into_bytes(),
            _ => data,
        }
    });
    let (_, up) = f.app.upload(v2, false).await;
    let new = up["data"]["unique_identifier"].as_str().unwrap().to_owned();
    let (_, list) = f
        .app
        .get("list", &[("page", "1"), ("page_size", "10")])
        .await;
    let current = list["data"]["list"][0]["plugin_unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(current, old);
    let (_, started) = f
        .app
        .post(
            "install/upgrade",
            json!({"original_plugin_unique_identifier": current,
                "new_plugin_unique_identifier": new, "source": "package"}),
        )
        .await;
    let task = f
        .app
        .wait_task(started["data"]["task_id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(
        tool_names(&client).await,
        [
            "echo_tool__echo",
            "echo_tool__fail",
            "echo_tool__json",
            "echo_tool__slow"
        ]
    );
    client.cancel().await.unwrap();
}

const ACCEPT: &str = "application/json, text/event-stream";

/// A POST to the server as a client of protocol `version` sends it: in
/// `session` when given, with the `MCP-Protocol-Version` header from
/// 2025-06-18 on (2025-03-26 has no such header).
fn post_as(f: &Fixture, version: &str, session: Option<&str>) -> reqwest::RequestBuilder {
    let mut request = f
        .app
        .client
        .post(f.mcp_url())
        .bearer_auth(&f.token)
        .header("Accept", ACCEPT);
    if version >= "2025-06-18" {
        request = request.header("MCP-Protocol-Version", version);
    }
    if let Some(session) = session {
        request = request.header("Mcp-Session-Id", session);
    }
    request
}

/// Opens a session on `version` over plain HTTP (initialize, then
/// notifications/initialized) and returns its id.
async fn open_session(f: &Fixture, version: &str) -> String {
    let r = post_as(f, "", None)
        .json(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let body = r.text().await.unwrap();
    assert!(
        body.contains(&format!("\"protocolVersion\":\"{version}\"")),
        "{body}"
    );
    let r = post_as(f, version, Some(&session))
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    session
}

/// The JSON-RPC error of a 400 answer, checked to be one.
async fn json_rpc_error(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert!(v.as_object().unwrap().contains_key("id"), "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    v
}

#[tokio::test]
async fn closing_a_session_answers_200_and_ends_it() {
    let f = start(&[]).await;
    for version in ["2025-03-26", "2025-06-18", "2025-11-25"] {
        let session = open_session(&f, version).await;
        let mut close = f
            .app
            .client
            .delete(f.mcp_url())
            .bearer_auth(&f.token)
            .header("Mcp-Session-Id", &session);
        if version >= "2025-06-18" {
            close = close.header("MCP-Protocol-Version", version);
        }
        let r = close.send().await.unwrap();
        // Dify's MCP client takes only 200; the Python SDK 200 or 204.
        assert_eq!(r.status(), 200, "{version}");
        let r = post_as(&f, version, Some(&session))
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{version}: the session is gone");
    }
}

#[tokio::test]
async fn bodies_that_are_not_a_message_get_json_rpc_errors() {
    let f = start(&[]).await;
    let session = open_session(&f, "2025-06-18").await;
    let send = |body: &'static str| {
        post_as(&f, "2025-06-18", Some(&session))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let v = json_rpc_error(
        send(r#"{"jsonrpc": "2.0", "id": 1, "method""#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["error"]["code"], -32700, "{v}");
    assert_eq!(v["id"], Value::Null);
    for (body, id) in [
        ("42", Value::Null),
        (r#"{"jsonrpc": "2.0", "id": 7, "method": 5}"#, json!(7)),
        (
            r#"{"jsonrpc": "1.0", "id": "a", "method": "tools/list"}"#,
            json!("a"),
        ),
        (
            r#"{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": "echo"}"#,
            json!(8),
        ),
        ("[]", Value::Null),
    ] {
        let v = json_rpc_error(send(body).await.unwrap()).await;
        assert_eq!(v["error"]["code"], -32600, "{body}: {v}");
        assert_eq!(v["id"], id, "{body}");
    }
    // A body declared as something else than JSON is refused as such.
    let r = post_as(&f, "2025-06-18", Some(&session))
        .header("Content-Type", "text/plain")
        .body(r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // A body over rmcp's limit (4 MiB) is refused as too large.
    let r = post_as(&f, "2025-06-18", Some(&session))
        .header("Content-Type", "application/json")
        .body(vec![b' '; 4 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // The session still works.
    let r = post_as(&f, "2025-06-18", Some(&session))
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn batches_are_answered_in_2025_03_26_sessions() {
    let f = start(&[]).await;
    let session = open_session(&f, "2025-03-26").await;
    let call = |id: Value, name: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": args}})
    };
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
        call(json!("two"), "echo_tool__echo", json!({"text": "hi"})),
        call(json!(3), "echo_tool__slow", json!({"count": 2})),
        {"nonsense": true},
        {"jsonrpc": "2.0", "id": 4, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}},
        {"jsonrpc": "2.0", "id": 5, "method": "no/such/method"},
    ]);
    let r = post_as(&f, "2025-03-26", Some(&session))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let answers: Vec<Value> = r.json().await.unwrap();
    // One answer per request, in the batch's order; none for the
    // notification.
    let ids: Vec<&Value> = answers.iter().map(|a| &a["id"]).collect();
    assert_eq!(
        ids,
        [
            &json!(1),
            &json!("two"),
            &json!(3),
            &Value::Null,
            &json!(4),
            &json!(5)
        ],
        "{answers:?}"
    );
    assert!(answers.iter().all(|a| a["jsonrpc"] == "2.0"));
    assert_eq!(answers[0]["result"]["tools"].as_array().unwrap().len(), 5);
    assert_eq!(
        answers[1]["result"]["content"],
        json!([{"type": "text", "text": "hi"}])
    );
    assert_eq!(answers[2]["result"]["content"][0]["text"], "chunk 0chunk 1");
    assert_eq!(answers[3]["error"]["code"], -32600, "{}", answers[3]);
    assert_eq!(answers[4]["error"]["code"], -32600, "{}", answers[4]);
    assert_eq!(answers[5]["error"]["code"], -32601, "{}", answers[5]);
    let tools: Vec<_> = f
        .invoker
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.payload["tool"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tools.len(), 2, "each call ran once: {tools:?}");

    // A batch of notifications only has nothing to answer.
    let r = post_as(&f, "2025-03-26", Some(&session))
        .json(&json!([{"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.bytes().await.unwrap().is_empty());

    // A batch larger than the gateway takes is refused whole.
    let many: Vec<Value> = (0..=plugind::mcp::jsonrpc::MAX_BATCH)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "tools/list"}))
        .collect();
    let r = post_as(&f, "2025-03-26", Some(&session))
        .json(&many)
        .send()
        .await
        .unwrap();
    let v = json_rpc_error(r).await;
    assert_eq!(v["error"]["code"], -32600, "{v}");
}

#[tokio::test]
async fn batches_are_refused_from_2025_06_18_on() {
    let f = start(&[]).await;
    let batch = json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "echo_tool__echo", "arguments": {"text": "hi"}}}]);
    for version in ["2025-06-18", "2025-11-25"] {
        let session = open_session(&f, version).await;
        let r = post_as(&f, version, Some(&session))
            .json(&batch)
            .send()
            .await
            .unwrap();
        let v = json_rpc_error(r).await;
        assert_eq!(v["error"]["code"], -32600, "{version}: {v}");
        assert_eq!(v["id"], Value::Null);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("2025-06-18"), "{message}");
        assert!(message.contains(version), "{message}");
    }
    // Without a session (2026-07-28 has none) there is no revision that
    // allows one.
    let r = post_as(&f, "2026-07-28", None)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(json_rpc_error(r).await["error"]["code"], -32600);
    // A session the server does not know is answered as rmcp answers one.
    let r = post_as(&f, "2025-03-26", Some("no-such-session"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(f.invoker.calls.lock().unwrap().is_empty(), "nothing ran");
}

#[tokio::test]
async fn both_urls_serve_real_clients_and_describe_themselves() {
    let f = start(&[]).await;
    assert_eq!(f.path, format!("/mcp/{}/mcp", f.server_id));
    let listed: Value = f
        .app
        .client
        .get(f.api(""))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"]["list"][0]["path"], f.path.as_str());

    for url in [f.mcp_url(), f.legacy_url()] {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header(f.token.clone()),
        );
        let client = ().serve(transport).await.unwrap();
        assert_eq!(tool_names(&client).await.len(), 5, "{url}");
        let r = client
            .call_tool(
                CallToolRequestParams::new("echo_tool__echo")
                    .with_arguments(json!({"text": url}).as_object().unwrap().clone()),
            )
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap()["content"][0]["text"],
            url.as_str()
        );
        client.cancel().await.unwrap();

        // Each URL's challenge names its own metadata, whose resource is
        // that URL.
        let r = f.app.client.post(&url).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let path = url.strip_prefix(&f.app.base).unwrap();
        let metadata_url = format!("{}/.well-known/oauth-protected-resource{path}", f.app.base);
        assert_eq!(
            r.headers()["www-authenticate"],
            format!("Bearer resource_metadata=\"{metadata_url}\"").as_str()
        );
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("OAuth sign-in is not offered"),
            "{body}"
        );
        let meta: Value = reqwest::get(&metadata_url)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(meta["resource"], url.as_str());
        // No authorization server: the tokens come from the owner, and the
        // documentation (the server's page) says how to use one.
        assert!(meta.get("authorization_servers").is_none(), "{meta}");
        assert_eq!(meta["resource_documentation"], f.mcp_url());
    }
    let page = f
        .app
        .client
        .get(f.mcp_url())
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("There is no OAuth sign-in"));
    assert!(page.contains(&format!("id=\"server-url\">{}<", f.mcp_url())));
}
