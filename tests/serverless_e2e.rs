//! PLATFORM=serverless end to end: fixture plugins uploaded and installed
//! through the management API are packaged by the real packager (uv,
//! manylinux wheels, the real `plugin-runner` bootstrap), uploaded to S3
//! (moto), deployed through the Lambda control plane (moto, behind the
//! execution emulator), and invoked by the daemon with aws-sdk-lambda's
//! InvokeWithResponseStream: tool calls through HTTP dispatch stream their
//! chunks, a plugin crash inside the function is a typed error and the next
//! call succeeds, and an endpoint serving MCP runs a Dify workflow through
//! backwards calls (plugin storage and app invoke) posted by the bootstrap
//! to `/backwards-invocation/transaction`.

mod common;
mod dify_double;
mod dispatch_common;
mod endpoint_support;
mod lambda_emulator;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use plugind::app_state::AppState;
use plugind::install::lambda_artifact::{host_arch, PackagerBuilder, BOOTSTRAP_FILE};
use plugind::install::serverless::AwsClients;
use plugind::settings::Secret;
use serde_json::{json, Value};

use common::TestApp;
use dify_double::DifyDouble;
use dispatch_common::{data_of, dispatch, tool_data};
use endpoint_support::EndpointApp;
use lambda_emulator::harness::uv_cache;
use lambda_emulator::tools::{plugin_runner_binary, tool_var, Moto};
use lambda_emulator::LambdaEmulator;

const BUCKET: &str = "plugind-e2e";

/// A daemon on PLATFORM=serverless with its doubles.
struct Stack {
    ep: EndpointApp,
    emulator: LambdaEmulator,
    _moto: Moto,
}

async fn stack() -> Stack {
    let moto = Moto::start().await;
    let s3 = moto.s3();
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let role = moto.create_role("plugind-plugin").await;
    let emulator = LambdaEmulator::start(&moto.url, s3.clone(), tool_var("PYTHON312")).await;
    let dify = DifyDouble::start();

    let dir = tempfile::Builder::new()
        .prefix("serverless-e2e")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    // PLUGIN_LAMBDA_BOOTSTRAP_DIR/<arch>/plugin-runner, as an operator lays it out.
    let bootstrap_dir = dir.path().join("bootstrap");
    let arch_dir = bootstrap_dir.join(host_arch().as_str());
    std::fs::create_dir_all(&arch_dir).unwrap();
    std::os::unix::fs::symlink(plugin_runner_binary(), arch_dir.join(BOOTSTRAP_FILE)).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let database_url = common::fresh_database_url(dir.path()).await;
    let callback = format!("http://{addr}");
    let uv = tool_var("UV_PATH");
    let cache = uv_cache();
    let mut settings = common::settings(
        dir.path(),
        &database_url,
        &[
            "--platform",
            "serverless",
            "--plugin-storage-type",
            "aws_s3",
            "--plugin-storage-oss-bucket",
            BUCKET,
            "--plugin-storage-s3-prefix",
            "daemon/",
            "--plugin-lambda-role-arn",
            &role,
            "--plugin-serverless-callback-url",
            &callback,
            "--plugin-lambda-bootstrap-dir",
            bootstrap_dir.to_str().unwrap(),
            "--uv-path",
            uv.to_str().unwrap(),
            "--uv-cache-dir",
            cache.to_str().unwrap(),
        ],
    );
    settings.dify_inner_api_url = dify.base_url();
    settings.dify_inner_api_key = Secret::new(dify_double::KEY);
    settings.validate().expect("valid serverless settings");
    let clients = AwsClients {
        s3,
        lambda: emulator.client(),
        // The daemon retries invocations itself.
        invoke: emulator.client_without_retries(),
    };
    let builder = Arc::new(PackagerBuilder::from_settings(&settings));
    let state = AppState::build_serverless(settings, builder, clients)
        .await
        .unwrap();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let router = plugind::api::app(state.clone());
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    let app = TestApp {
        base: callback,
        client: reqwest::Client::new(),
        state,
        dir,
        database_url,
    };
    Stack {
        ep: EndpointApp { app, dify },
        emulator,
        _moto: moto,
    }
}

impl Stack {
    fn app(&self) -> &TestApp {
        &self.ep.app
    }

    /// Uploads and installs a fixture; waits for the task (packaging,
    /// upload and deployment take a while on a cold uv cache).
    async fn install(&self, fixture: &str) -> String {
        let app = self.app();
        let (_, up) = app
            .upload(dispatch_common::fixture_package(fixture), false)
            .await;
        assert_eq!(up["code"], 0, "{up}");
        let id = up["data"]["unique_identifier"].as_str().unwrap().to_owned();
        let (_, started) = app
            .post(
                "install/identifiers",
                json!({"plugin_unique_identifiers": [id], "source": "package", "metas": [{}]}),
            )
            .await;
        assert_eq!(started["code"], 0, "{started}");
        let task_id = started["data"]["task_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (_, t) = app.get(&format!("install/tasks/{task_id}"), &[]).await;
            match t["data"]["status"].as_str() {
                Some("success") => return id,
                Some("failed") => panic!("install failed: {t}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "install did not finish: {t}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Stack {
    /// Starts the `slow` tool: `count` chunks, `delay` seconds apart.
    async fn slow(&self, plugin_id: &str, count: u32, delay: f64) -> reqwest::Response {
        let body = json!({
            "user_id": "u1", "conversation_id": null, "message_id": null, "app_id": null,
            "endpoint_id": null, "context": {},
            "data": tool_data("slow", json!({"count": count, "delay": delay})),
        });
        dispatch_common::post_dispatch(self.app(), "tool/invoke", Some(plugin_id), &body).await
    }
}

fn texts(data: &[Value]) -> Vec<String> {
    data.iter()
        .filter_map(|d| d["message"]["text"].as_str().map(str::to_owned))
        .collect()
}

/// One test: the artifact build is the slow part, and both plugins share
/// the doubles and the warm uv cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_run_as_lambda_functions_end_to_end() {
    let s = stack().await;
    let tool_id = s.install("echo_tool").await;
    let plugin_id = tool_id.split(':').next().unwrap().to_owned();

    // The installation is on record with the serverless runtime type, and
    // its function exists with a published version.
    let (_, list) = s
        .app()
        .get("list", &[("page", "1"), ("page_size", "10")])
        .await;
    let entry = &list["data"]["list"][0];
    assert_eq!(entry["runtime_type"], "serverless", "{list}");
    let record = s
        .app()
        .state
        .store
        .serverless_runtime(&tool_id)
        .await
        .unwrap()
        .expect("the function is recorded");
    assert_ne!(record.function_version, "$LATEST");

    // A tool call through HTTP dispatch.
    let (status, _, envelopes) = dispatch(
        s.app(),
        "tool/invoke",
        &plugin_id,
        tool_data("echo", json!({"text": "through lambda"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(texts(&data_of(&envelopes)), ["through lambda"]);

    // Chunks stream: the first reaches the caller while the plugin is
    // still sleeping before the last.
    let response = s.slow(&plugin_id, 3, 0.5).await;
    let mut stream = response.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        let before = text.matches("chunk ").count();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        for _ in before..text.matches("chunk ").count() {
            arrivals.push(Instant::now());
        }
    }
    assert_eq!(
        texts(&data_of(&dispatch_common::envelopes(&text))),
        ["chunk 0", "chunk 1", "chunk 2"]
    );
    assert_eq!(arrivals.len(), 3);
    let spread = arrivals[2] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(500),
        "the chunks arrived together ({spread:?} apart): not streamed"
    );

    // A plugin that raises: the error envelope Dify reads.
    let (_, _, envelopes) = dispatch(
        s.app(),
        "tool/invoke",
        &plugin_id,
        tool_data("fail", json!({"reason": "broken on purpose"})),
    )
    .await;
    let last = envelopes.last().unwrap();
    assert_eq!(last["code"], -500, "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("broken on purpose"),
        "{last}"
    );

    // The plugin process dies inside the function mid-call: a typed
    // error for that caller, and the next call starts a fresh child.
    let pids = s.emulator.plugin_pids();
    assert!(!pids.is_empty(), "a warm plugin process runs");
    let response = s.slow(&plugin_id, 20, 0.2).await;
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut killed = false;
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if !killed && text.contains("chunk 0") {
            for pid in &pids {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            killed = true;
        }
    }
    assert!(killed, "no chunk arrived before the kill: {text}");
    let envelopes = dispatch_common::envelopes(&text);
    let last = envelopes.last().unwrap();
    assert_eq!(last["code"], -500, "{last}");
    let error: Value = serde_json::from_str(last["message"].as_str().unwrap())
        .unwrap_or_else(|_| panic!("a typed error body: {last}"));
    assert!(error["error_type"].as_str().is_some(), "{error}");
    let (status, _, envelopes) = dispatch(
        s.app(),
        "tool/invoke",
        &plugin_id,
        tool_data("echo", json!({"text": "after the crash"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(texts(&data_of(&envelopes)), ["after the crash"]);
    let fresh = s.emulator.plugin_pids();
    assert!(
        fresh.iter().all(|p| !pids.contains(p)),
        "{fresh:?} vs {pids:?}"
    );

    // An endpoint plugin on Lambda: its MCP server keeps the MCP session
    // in plugin storage and runs a workflow with app invoke, both backwards
    // calls the bootstrap posts to the daemon.
    let endpoint_id = s.install("mcp_endpoint").await;
    let entry =
        s.ep.setup(
            &endpoint_id,
            "mcp",
            json!({"app": {"app_id": "workflow-app", "app_mode": "workflow"}}),
        )
        .await;
    let hook = entry["hook_id"].as_str().unwrap();
    let url = s.ep.hook_url(hook, "/mcp");
    let client = &s.app().client;
    let init = client
        .post(&url)
        .header("Accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    let session = init
        .headers()
        .get("mcp-session-id")
        .expect("an MCP session id")
        .to_str()
        .unwrap()
        .to_owned();
    let init: Value = init.json().await.unwrap();
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");

    let call = client
        .post(&url)
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Session-Id", &session)
        .json(
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "run_workflow", "arguments": {"name": "Lambda"},
            "_meta": {"progressToken": "p1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), 200);
    assert!(call.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = call.text().await.unwrap();
    let messages: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (result, progress): (Vec<&Value>, Vec<&Value>) =
        messages.iter().partition(|m| m.get("id").is_some());
    assert!(
        progress
            .iter()
            .all(|m| m["method"] == "notifications/progress"),
        "{body}"
    );
    assert!(progress.len() >= 3, "workflow progress: {body}");
    let result = &result.last().expect("a JSON-RPC result")["result"];
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["structuredContent"]["text"], "Hello, Lambda!");

    // The same plugin's plain endpoint route answers through Lambda too.
    let echo = client
        .patch(s.ep.hook_url(hook, "/echo?x=1"))
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(echo.status(), 200);
    let echoed: Value = echo.json().await.unwrap();
    assert_eq!(echoed["path"], "/echo", "{echoed}");
    assert_eq!(echoed["method"], "PATCH", "{echoed}");
    assert_eq!(echoed["body"], "ping", "{echoed}");

    // Every call above reached the endpoint plugin's published version.
    let record = s
        .app()
        .state
        .store
        .serverless_runtime(&endpoint_id)
        .await
        .unwrap()
        .expect("the endpoint plugin's function is recorded");
    let qualified = format!("{}:{}", record.function_name, record.function_version);
    let served = s.emulator.invocations();
    assert!(
        served.iter().filter(|f| **f == qualified).count() >= 3,
        "{qualified} in {served:?}"
    );
}
