//! A real `dify_plugin` plugin (tests/fixtures/mcp_endpoint) installed
//! through the API, on the local platform, with Dify's inner API played by
//! the test double: an MCP server living in the plugin's endpoint serves the
//! Python `mcp` clients (2.x in legacy mode, and 1.x) through
//! `/e/{hook_id}/mcp`, and its echo routes exercise serving (PATCH, HEAD,
//! binary bodies, headers, 413, a caller that leaves mid-stream).
//!
//! Needs the tools venv (scripts/setup-python.sh); the 1.x client gets its
//! own venv from tests/python/setup-mcp1.sh.

mod common;
mod dify_double;
mod dispatch_common;
mod endpoint_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use plugind::app_state::AppState;
use plugind::settings::Secret;
use serde_json::{json, Value};
use tokio::time::Instant;

use common::{TestApp, TENANT};
use dify_double::DifyDouble;
use dispatch_common::HostTimings;
use endpoint_support::EndpointApp;

/// What the double's workflow answers for input `name`.
const WORKFLOW_APP: &str = "workflow-app";

/// A daemon on the local platform whose inner API is a fresh double, with
/// the fixture installed and one endpoint set up.
struct McpFixture {
    ep: EndpointApp,
    identifier: String,
    hook: String,
}

async fn spawn_mcp() -> McpFixture {
    let dify = DifyDouble::start();
    let dir = tempfile::Builder::new()
        .prefix("endpoint-mcp")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let database_url = common::fresh_database_url(dir.path()).await;
    let mut settings = common::settings(dir.path(), &database_url, &[]);
    settings.dify_inner_api_url = dify.base_url();
    settings.dify_inner_api_key = Secret::new(dify_double::KEY);
    let state = AppState::build_local(settings, dispatch_common::host(HostTimings::default()))
        .await
        .unwrap();
    let base = common::serve_router(plugind::api::app(state.clone())).await;
    let app = TestApp {
        base,
        client: reqwest::Client::new(),
        state,
        dir,
        database_url,
    };
    let identifier = dispatch_common::install_fixture(&app, "mcp_endpoint").await;
    let ep = EndpointApp { app, dify };
    let entry = ep
        .setup(
            &identifier,
            "mcp",
            json!({"app": {"app_id": WORKFLOW_APP, "app_mode": "workflow"}}),
        )
        .await;
    let hook = entry["hook_id"].as_str().unwrap().to_owned();
    McpFixture {
        ep,
        identifier,
        hook,
    }
}

impl McpFixture {
    fn url(&self, path: &str) -> String {
        self.ep.hook_url(&self.hook, path)
    }

    fn client(&self) -> &reqwest::Client {
        &self.ep.app.client
    }

    fn open_sessions(&self) -> usize {
        self.ep
            .app
            .state
            .local
            .as_ref()
            .expect("local platform")
            .runtime(&self.identifier)
            .expect("the plugin runs")
            .open_sessions()
    }

    /// Waits until the plugin has no open session.
    async fn until_idle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.open_sessions() != 0 {
            assert!(
                Instant::now() < deadline,
                "{} plugin session(s) still open",
                self.open_sessions()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The tools venv's python (mcp 2.x).
fn tools_python() -> PathBuf {
    if let Some(p) = std::env::var_os("TOOLS_PYTHON") {
        return p.into();
    }
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-python.sh"))
        .arg("--print-env-file")
        .output()
        .expect("scripts/setup-python.sh runs");
    assert!(out.status.success(), "setup-python.sh failed: {out:?}");
    let env_file = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::read_to_string(env_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("export TOOLS_PYTHON="))
        .map(|v| PathBuf::from(v.trim_matches('"')))
        .expect("env file names TOOLS_PYTHON")
}

/// The python of the mcp 1.x venv, made on first use.
fn mcp1_python() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/setup-mcp1.sh"))
        .output()
        .expect("tests/python/setup-mcp1.sh runs");
    assert!(out.status.success(), "setup-mcp1.sh failed: {out:?}");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs tests/python/mcp_endpoint_client.py and returns what it printed.
async fn run_client(python: &Path, url: &str, arguments: Value) -> Value {
    let out = tokio::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/mcp_endpoint_client.py"
        ))
        .arg(url)
        .arg(arguments.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the client finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// What both clients must see: the tool built from the app's form, the
/// workflow's output, progress that arrived while the workflow still ran,
/// and the backwards calls at the double.
async fn assert_workflow_call(f: &McpFixture, out: &Value, name: &str) {
    assert_eq!(out["protocol_version"], "2025-06-18", "{out}");
    let tools = out["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1, "{out}");
    assert_eq!(tools[0]["name"], "run_workflow");
    assert_eq!(
        tools[0]["inputSchema"]["properties"]["name"]["type"],
        "string"
    );
    assert_eq!(tools[0]["inputSchema"]["required"], json!(["name"]));

    let result = &out["result"];
    assert_eq!(result["isError"], false, "{out}");
    let greeting = format!("Hello, {name}!");
    assert_eq!(result["content"][0]["type"], "text");
    assert_eq!(result["content"][0]["text"], greeting.as_str());
    assert_eq!(result["structuredContent"]["text"], greeting.as_str());

    // One notification per workflow event, in order.
    let progress = out["progress"].as_array().unwrap();
    let messages: Vec<&str> = progress
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.first(), Some(&"workflow_started"), "{messages:?}");
    assert_eq!(messages.last(), Some(&"workflow_finished"), "{messages:?}");
    assert!(messages.contains(&"node_started: LLM"), "{messages:?}");
    let texts: String = messages
        .iter()
        .filter_map(|m| m.strip_prefix("text_chunk: "))
        .collect();
    assert_eq!(texts, greeting);
    let counters: Vec<f64> = progress
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert!(counters.windows(2).all(|w| w[0] < w[1]), "{counters:?}");

    // The double sends the workflow's 12 events 50 ms apart: a stream that
    // was held back would deliver the first one together with the result.
    let first_at = progress[0]["at"].as_f64().unwrap();
    let result_at = out["result_at"].as_f64().unwrap();
    assert!(
        result_at - first_at >= 0.3,
        "first event at {first_at:.3}s, result at {result_at:.3}s"
    );

    let requests = f.ep.dify.requests().await;
    let runs: Vec<&Value> = requests
        .iter()
        .filter(|r| r["path"] == "invoke/app")
        .collect();
    assert_eq!(runs.len(), 1, "{requests:?}");
    let body = &runs[0]["body"];
    assert_eq!(body["app_id"], WORKFLOW_APP);
    assert_eq!(body["inputs"], json!({"name": name}));
    assert_eq!(body["response_mode"], "streaming");
    assert_eq!(body["tenant_id"], TENANT);
    assert_eq!(runs[0]["headers"]["x-inner-api-key"], dify_double::KEY);
    assert!(
        requests
            .iter()
            .any(|r| r["path"] == "fetch/app/info" && r["body"]["app_id"] == WORKFLOW_APP),
        "{requests:?}"
    );
}

#[tokio::test]
async fn python_mcp_2_client_in_legacy_mode_runs_the_workflow_tool_with_live_progress() {
    let f = spawn_mcp().await;
    let out = run_client(&tools_python(), &f.url("/mcp"), json!({"name": "plugind"})).await;
    assert!(
        out["mcp_version"].as_str().unwrap().starts_with("2."),
        "{out}"
    );
    assert_workflow_call(&f, &out, "plugind").await;
}

#[tokio::test]
async fn python_mcp_1_client_runs_the_workflow_tool_and_ends_its_session() {
    let f = spawn_mcp().await;
    let out = run_client(&mcp1_python(), &f.url("/mcp"), json!({"name": "one"})).await;
    let version = out["mcp_version"].as_str().unwrap();
    assert!(version.starts_with("1."), "{out}");
    assert_workflow_call(&f, &out, "one").await;

    // The client sent DELETE on exit: its MCP session is gone from the
    // plugin's storage.
    let session_id = out["session_id"].as_str().expect("1.x reports its session");
    let r = f
        .client()
        .post(f.url("/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Session-Id", session_id)
        .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}
    }})
}

#[tokio::test]
async fn mcp_sessions_live_in_plugin_storage_with_a_get_stream_and_delete() {
    let f = spawn_mcp().await;
    let accept = "application/json, text/event-stream";
    let post = |session: Option<&str>, body: Value| {
        let mut req = f
            .client()
            .post(f.url("/mcp"))
            .header("Accept", accept)
            .json(&body);
        if let Some(id) = session {
            req = req
                .header("Mcp-Session-Id", id)
                .header("MCP-Protocol-Version", "2025-06-18");
        }
        req.send()
    };

    let r = post(None, initialize()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], 1);
    assert_eq!(body["result"]["protocolVersion"], "2025-06-18");

    // Every later request needs a session the plugin knows.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(post(None, list.clone()).await.unwrap().status(), 400);
    assert_eq!(
        post(Some("no-such-session"), list.clone())
            .await
            .unwrap()
            .status(),
        404
    );
    let r = post(
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    let r = post(Some(&session), list.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"]["tools"][0]["name"], "run_workflow");

    // The GET stream opens with a notification and stays open…
    let mut stream = f
        .client()
        .get(f.url("/mcp"))
        .header("Accept", "text/event-stream")
        .header("Mcp-Session-Id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let first = stream.chunk().await.unwrap().unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.starts_with("event: message\ndata: "), "{first:?}");
    assert!(first.contains("stream open"), "{first:?}");

    // …until DELETE ends the session.
    let r = f
        .client()
        .delete(f.url("/mcp"))
        .header("Mcp-Session-Id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while stream.chunk().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the GET stream outlived its session");
    assert_eq!(post(Some(&session), list).await.unwrap().status(), 404);
    f.until_idle(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn patch_reaches_the_plugin_with_its_query_and_body() {
    let f = spawn_mcp().await;
    let r = f
        .client()
        .patch(f.url("/echo?b=2&a=1"))
        .header("Content-Type", "text/plain")
        .body("patched body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"method": "PATCH", "path": "/echo", "query": "b=2&a=1",
               "content_type": "text/plain", "body": "patched body"})
    );
}

#[tokio::test]
async fn binary_bodies_go_both_ways_intact() {
    let f = spawn_mcp().await;
    // Every byte value, 1 MiB: well past one response chunk.
    let data: Vec<u8> = (0..1024 * 1024).map(|i| (i % 256) as u8).collect();
    let r = f
        .client()
        .post(f.url("/binary"))
        .header("Content-Type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        r.headers()["x-body-length"],
        data.len().to_string().as_str()
    );
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    assert_eq!(r.headers()["x-body-sha256"], digest.as_str());
    let back = r.bytes().await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back[..] == data[..], "the body came back changed");
}

#[tokio::test]
async fn head_answers_the_plugins_status_and_headers_without_a_body() {
    let f = spawn_mcp().await;
    let r = f.client().head(f.url("/headers")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers().contains_key("x-header-count"));
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn request_headers_reach_the_plugin_without_proxy_traces() {
    let f = spawn_mcp().await;
    let r = f
        .client()
        .get(f.url("/headers"))
        .header("X-Custom", "kept")
        .header("X-Multi", "a")
        .header("X-Forwarded-For", "10.0.0.1")
        .header("X-Forwarded-Proto", "https")
        .header("X-Real-Ip", "10.0.0.2")
        .header("Dify-Hook-Id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let count: usize = r.headers()["x-header-count"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let seen: Vec<(String, String)> = r.json().await.unwrap();
    assert_eq!(seen.len(), count);
    let values = |name: &str| -> Vec<&str> {
        seen.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("X-Custom"), ["kept"]);
    assert_eq!(values("X-Multi"), ["a"]);
    assert!(values("X-Forwarded-For").is_empty(), "{seen:?}");
    assert!(values("X-Forwarded-Proto").is_empty(), "{seen:?}");
    assert!(values("X-Real-Ip").is_empty(), "{seen:?}");
    // The daemon's own hook headers win over the caller's.
    assert_eq!(values("Dify-Hook-Id"), [f.hook.as_str()]);
    let host = f.ep.app.base.trim_start_matches("http://");
    assert_eq!(
        values("Dify-Hook-Url"),
        [format!("https://{host}/e/{}/headers", f.hook).as_str()]
    );
    assert_eq!(values("Host"), [host]);
}

#[tokio::test]
async fn repeated_request_headers_reach_the_plugin_as_separate_lines() {
    let f = spawn_mcp().await;
    let r = f
        .client()
        .get(f.url("/headers"))
        .header("X-Multi", "a")
        .header("X-Multi", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Vec<(String, String)> = r.json().await.unwrap();
    let values: Vec<&str> = seen
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-multi"))
        .map(|(_, v)| v.as_str())
        .collect();
    // Each value is its own header line, as the reference writes them; the
    // SDK (dify_plugin 0.10) builds a WSGI environ from the lines, where the
    // last one wins. A joined "a, b" line would show up whole.
    assert_eq!(values, ["b"], "{seen:?}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_before_the_plugin() {
    let f = spawn_mcp().await;
    let limit = plugind::endpoint::serve::DEFAULT_MAX_BODY;
    let r = f
        .client()
        .post(f.url("/binary"))
        .body(vec![7u8; limit + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Without a Content-Length the limit holds while reading.
    let pieces = (0..=limit / (1024 * 1024))
        .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 1024 * 1024])));
    let r = f
        .client()
        .post(f.url("/binary"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(f.open_sessions(), 0);

    // At the limit exactly, the plugin gets it all.
    let r = f
        .client()
        .post(f.url("/binary"))
        .body(vec![7u8; limit])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-body-length"], limit.to_string().as_str());
    assert_eq!(r.bytes().await.unwrap().len(), limit);
}

#[tokio::test]
async fn a_caller_that_leaves_mid_stream_cancels_the_plugin_session() {
    let f = spawn_mcp().await;
    let mut r = f
        .client()
        .get(f.url("/ticks?count=200&delay=0.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: {\"tick\": 0}\n\n");
    assert_eq!(f.open_sessions(), 1);
    drop(r);
    f.until_idle(Duration::from_secs(5)).await;

    // The plugin keeps serving.
    let r = f
        .client()
        .get(f.url("/ticks?count=2&delay=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "data: {\"tick\": 0}\n\ndata: {\"tick\": 1}\n\n"
    );
}
