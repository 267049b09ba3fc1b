//! The `plugin-runner` bootstrap inside the Lambda emulator: the artifact
//! built from a fixture plugin, uploaded to S3 (moto), created through the
//! Lambda control plane and invoked with aws-sdk-lambda's
//! InvokeWithResponseStream.

mod lambda_emulator;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_lambda::types::InvokeWithResponseStreamResponseEvent as Ev;
use axum::http::HeaderMap;
use lambda_emulator::harness::{deploy, fixture_artifact, lines, tool_request, Deployed};
use lambda_emulator::Fault;
use serde_json::{json, Value};

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["data"]["type"] == "stream")
        .filter_map(|l| {
            l["data"]["data"]["message"]["text"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn last_type(lines: &[Value]) -> String {
    lines
        .last()
        .map(|l| l["data"]["type"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

async fn echo(d: &Deployed, session: &str, text: &str) -> Vec<Value> {
    let (chunks, error) = d
        .invoke(&tool_request(
            session,
            "echo_tool",
            "echo",
            json!({"text": text}),
            json!({}),
        ))
        .await;
    assert_eq!(error, None, "logs: {:#?}", d.emulator.logs());
    lines(&chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_stream_in_order_as_the_plugin_writes_them() {
    let d = deploy(&fixture_artifact("echo_tool"), &[], 60).await;
    let mut output = d
        .start(&tool_request(
            "s1",
            "echo_tool",
            "slow",
            json!({"count": 3, "delay": 0.5}),
            json!({}),
        ))
        .await;
    assert_eq!(output.executed_version(), Some(d.version.as_str()));
    let mut arrivals: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut completed = false;
    while let Some(event) = output.event_stream.recv().await.unwrap() {
        match event {
            Ev::PayloadChunk(c) => arrivals.push((Instant::now(), c.payload.unwrap().into_inner())),
            Ev::InvokeComplete(done) => {
                assert_eq!(done.error_code, None);
                completed = true;
            }
            _ => {}
        }
    }
    assert!(completed, "the stream ends with InvokeComplete");
    let chunks: Vec<bytes::Bytes> = arrivals
        .iter()
        .map(|(_, b)| bytes::Bytes::from(b.clone()))
        .collect();
    let all = lines(&chunks);
    assert_eq!(texts(&all), ["chunk 0", "chunk 1", "chunk 2"]);
    assert_eq!(last_type(&all), "end");
    assert!(
        all.iter()
            .all(|l| l["session_id"] == "s1" && l["event"] == "session"),
        "{all:?}"
    );
    // Lines are relayed one by one as the plugin writes them, not buffered
    // until the session ends.
    let first_text = arrivals
        .iter()
        .position(|(_, b)| String::from_utf8_lossy(b).contains("chunk 0"))
        .expect("a chunk carries chunk 0");
    let last = arrivals.last().unwrap().0;
    assert!(
        last.duration_since(arrivals[first_text].0) >= Duration::from_millis(500),
        "chunk 0 arrived with the end of the stream"
    );
    assert!(!String::from_utf8_lossy(&arrivals[first_text].1).contains("chunk 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_second_call_reuses_the_plugin_process() {
    let d = deploy(&fixture_artifact("echo_tool"), &[], 60).await;
    let started = Instant::now();
    let first = echo(&d, "w1", "one").await;
    let cold = started.elapsed();
    assert_eq!(texts(&first), ["one"]);
    let pids = d.emulator.plugin_pids();
    assert_eq!(pids.len(), 1, "one plugin child: {pids:?}");

    let started = Instant::now();
    let second = echo(&d, "w2", "two").await;
    let warm = started.elapsed();
    assert_eq!(texts(&second), ["two"]);
    assert_eq!(second[0]["session_id"], "w2");
    assert_eq!(
        d.emulator.plugin_pids(),
        pids,
        "the same child served both calls"
    );
    let starts = d
        .emulator
        .logs()
        .iter()
        .filter(|l| l.contains("plugin started"))
        .count();
    assert_eq!(starts, 1);
    println!("cold call {cold:?}, warm call {warm:?}");
    assert!(warm < cold, "warm {warm:?} vs cold {cold:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_are_relayed_as_the_plugin_wrote_them() {
    let d = deploy(&fixture_artifact("echo_tool"), &[], 60).await;
    let (chunks, error) = d
        .invoke(&tool_request(
            "f1",
            "echo_tool",
            "fail",
            json!({"reason": "boom"}),
            json!({}),
        ))
        .await;
    assert_eq!(error, None);
    let all = lines(&chunks);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["data"]["type"], "error");
    assert_eq!(all[0]["data"]["data"]["error_type"], "ValueError");
    assert_eq!(all[0]["data"]["data"]["message"], "boom");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_crash_gives_a_typed_error_and_the_next_call_succeeds() {
    let d = deploy(&fixture_artifact("echo_tool"), &[], 60).await;
    let mut output = d
        .start(&tool_request(
            "c1",
            "echo_tool",
            "slow",
            json!({"count": 5, "delay": 1}),
            json!({}),
        ))
        .await;
    let pids = d.emulator.plugin_pids();
    assert_eq!(pids.len(), 1);
    let mut chunks = Vec::new();
    let mut killed = false;
    while let Some(event) = output.event_stream.recv().await.unwrap() {
        if let Ev::PayloadChunk(c) = event {
            let bytes = bytes::Bytes::from(c.payload.unwrap().into_inner());
            if !killed && String::from_utf8_lossy(&bytes).contains("chunk 0") {
                let status = std::process::Command::new("kill")
                    .args(["-9", &pids[0].to_string()])
                    .status()
                    .unwrap();
                assert!(status.success());
                killed = true;
            }
            chunks.push(bytes);
        }
    }
    assert!(killed);
    let all = lines(&chunks);
    assert_eq!(texts(&all), ["chunk 0"]);
    let last = all.last().unwrap();
    assert_eq!(last["session_id"], "c1");
    assert_eq!(last["data"]["type"], "error");
    assert_eq!(
        last["data"]["data"]["error_type"],
        "PluginDaemonInternalServerError"
    );
    assert!(
        last["data"]["data"]["message"]
            .as_str()
            .unwrap()
            .contains("exited"),
        "{last}"
    );

    let next = echo(&d, "c2", "again").await;
    assert_eq!(texts(&next), ["again"]);
    let new_pids = d.emulator.plugin_pids();
    assert_eq!(new_pids.len(), 1);
    assert_ne!(new_pids, pids, "a fresh child serves the next call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_plugin_is_killed_at_the_payload_limit() {
    let d = deploy(
        &fixture_artifact("echo_tool"),
        &[("PLUGIN_MAX_EXECUTION_TIMEOUT", "120")],
        60,
    )
    .await;
    let warm = echo(&d, "h0", "warm").await;
    assert_eq!(texts(&warm), ["warm"]);
    let pids = d.emulator.plugin_pids();
    let (chunks, error) = d
        .invoke(&tool_request(
            "h1",
            "echo_tool",
            "slow",
            json!({"count": 1, "delay": 30}),
            json!({"plugind_timeout": 1}),
        ))
        .await;
    assert_eq!(error, None);
    let all = lines(&chunks);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        all[0]["data"]["data"]["error_type"],
        "PluginDaemonInternalServerError"
    );
    assert_eq!(all[0]["data"]["data"]["message"], "killed by timeout");
    assert_eq!(texts(&echo(&d, "h2", "after").await), ["after"]);
    assert_ne!(d.emulator.plugin_pids(), pids);
}

/// What the stub daemon saw.
#[derive(Default)]
struct Seen {
    calls: Vec<(Option<String>, Option<String>, Value)>,
    store: HashMap<String, String>,
}

/// A stub of the daemon's `/backwards-invocation/transaction`: serves
/// storage calls for the token `good-token`, refuses any other.
async fn stub_daemon() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/backwards-invocation/transaction",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let line: Value = serde_json::from_str(&body).unwrap();
                let auth = header("authorization");
                state.lock().unwrap().calls.push((auth.clone(), header("dify-plugin-session-id"), line.clone()));
                if auth.as_deref() != Some("Bearer good-token") {
                    return (axum::http::StatusCode::UNAUTHORIZED, "invalid token".to_owned());
                }
                let invoke = &line["data"]["data"];
                let id = invoke["backwards_request_id"].as_str().unwrap().to_owned();
                let request = &invoke["request"];
                let key = request["key"].as_str().unwrap().to_owned();
                match request["opt"].as_str().unwrap() {
                    "set" => {
                        state.lock().unwrap().store.insert(key, request["value"].as_str().unwrap().to_owned());
                        // Whole daemon→plugin lines, as the reference daemon writes them.
                        let sid = line["session_id"].as_str().unwrap();
                        let resp = json!({"session_id": sid, "event": "backwards_response",
                            "data": {"backwards_request_id": id, "event": "response", "message": "struct", "data": {"data": "ok"}}});
                        let end = json!({"session_id": sid, "event": "backwards_response",
                            "data": {"backwards_request_id": id, "event": "end", "message": "", "data": {}}});
                        (axum::http::StatusCode::OK, format!("{resp}\n\n\n\n{end}\n\n"))
                    }
                    _ => {
                        let value = state.lock().unwrap().store.get(&key).cloned().unwrap_or_default();
                        // Bare response objects: the bootstrap wraps them.
                        let resp = json!({"backwards_request_id": id, "event": "response", "message": "struct", "data": {"data": value}});
                        let end = json!({"backwards_request_id": id, "event": "end", "message": "", "data": {}});
                        (axum::http::StatusCode::OK, format!("{resp}\n{end}\n"))
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backwards_calls_reach_the_daemon_with_the_token_and_answers_reach_the_plugin() {
    let (daemon, seen) = stub_daemon().await;
    let d = deploy(&fixture_artifact("rt_echo"), &[], 60).await;
    let context = json!({"plugind_url": daemon, "plugind_token": "good-token", "trace": "t1"});
    let (chunks, error) = d
        .invoke(&tool_request(
            "b1",
            "echo",
            "echo",
            json!({"text": "x", "store": "v1"}),
            context,
        ))
        .await;
    assert_eq!(error, None, "logs: {:#?}", d.emulator.logs());
    let all = lines(&chunks);
    assert_eq!(texts(&all), ["stored:v1", "x#0"], "{all:?}");
    assert_eq!(last_type(&all), "end");
    assert!(
        all.iter().all(|l| l["data"]["type"] != "invoke"),
        "invoke events are not relayed"
    );

    let seen = seen.lock().unwrap();
    assert_eq!(seen.calls.len(), 2, "set and get");
    for (auth, session, line) in &seen.calls {
        assert_eq!(auth.as_deref(), Some("Bearer good-token"));
        assert_eq!(session.as_deref(), Some("b1"));
        assert_eq!(line["event"], "session");
        assert_eq!(line["data"]["type"], "invoke");
        assert_eq!(line["data"]["data"]["type"], "storage");
    }
    assert_eq!(
        seen.store.get("rt_echo").map(String::as_str),
        Some(hex_of("v1").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backwards_call_fails_the_session_not_the_runner() {
    let (daemon, seen) = stub_daemon().await;
    let d = deploy(&fixture_artifact("rt_echo"), &[], 60).await;
    let context = json!({"plugind_url": daemon, "plugind_token": "forged"});
    let (chunks, error) = d
        .invoke(&tool_request(
            "r1",
            "echo",
            "echo",
            json!({"text": "x", "store": "v1"}),
            context,
        ))
        .await;
    assert_eq!(error, None);
    let all = lines(&chunks);
    let last = all.last().unwrap();
    assert_eq!(last["data"]["type"], "error", "{all:?}");
    assert!(
        last["data"]["data"]["message"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{last}"
    );
    assert_eq!(seen.lock().unwrap().calls.len(), 1);
    // The plugin and the runner live on.
    let pids = d.emulator.plugin_pids();
    let (chunks, error) = d
        .invoke(&tool_request(
            "r2",
            "echo",
            "echo",
            json!({"text": "y"}),
            json!({}),
        ))
        .await;
    assert_eq!(error, None);
    assert_eq!(texts(&lines(&chunks)), ["y#0"]);
    assert_eq!(d.emulator.plugin_pids(), pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_faults_are_typed_and_the_lambda_deadline_is_kept() {
    let d = deploy(&fixture_artifact("echo_tool"), &[], 2).await;
    d.emulator.inject(&[Fault::Throttle, Fault::ServiceError]);
    let request = serde_json::to_vec(&tool_request(
        "t1",
        "echo_tool",
        "echo",
        json!({"text": "a"}),
        json!({}),
    ))
    .unwrap();
    let once = d.emulator.client_without_retries();
    let call = || {
        once.invoke_with_response_stream()
            .function_name(&d.function)
            .qualifier(&d.version)
            .payload(aws_sdk_lambda::primitives::Blob::new(request.clone()))
            .send()
    };
    let err = call().await.unwrap_err().into_service_error();
    assert!(err.is_too_many_requests_exception(), "{err:?}");
    let err = call().await.unwrap_err().into_service_error();
    assert!(err.is_service_exception(), "{err:?}");
    // The SDK's own retries ride over a throttle.
    d.emulator.inject(&[Fault::Throttle]);
    let (chunks, error) = d
        .invoke(&tool_request(
            "t0",
            "echo_tool",
            "echo",
            json!({"text": "b"}),
            json!({}),
        ))
        .await;
    assert_eq!(error, None);
    assert_eq!(texts(&lines(&chunks)), ["b"]);
    assert_eq!(
        d.emulator.invocations().len(),
        1,
        "faults are answered before execution"
    );
    // The function's own timeout (2 s) is shorter than the plugin's limit:
    // the bootstrap ends the session with a typed error before Lambda's
    // deadline instead of letting Lambda cut the stream.
    let (chunks, error) = d
        .invoke(&tool_request(
            "t2",
            "echo_tool",
            "slow",
            json!({"count": 1, "delay": 10}),
            json!({}),
        ))
        .await;
    assert_eq!(error, None);
    let all = lines(&chunks);
    assert_eq!(
        all.last().unwrap()["data"]["data"]["message"],
        "killed by timeout",
        "{all:?}"
    );
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
