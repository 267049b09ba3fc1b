//! Dispatch cost against the floor, on the real `echo_tool` plugin.
//!
//! The daemon runs as its own process (the built `plugind serve`, over a
//! temp storage root and SQLite file), so its CPU and memory are read from
//! `/proc/<pid>` apart from this client's.
//!
//! (a) the floor: this process writes request lines straight to the stdin of
//! the echo plugin (`python -m main` in the venv the daemon built) and reads
//! the answers;
//! (b) the same calls through the daemon's HTTP dispatch route, the plugin
//! installed and run by the daemon (local runtime);
//! (c) the same calls through HTTP dispatch to the same plugin attached over
//! the debugging TCP listener (`INSTALL_METHOD=remote`, key from the
//! debugging key route), for another tenant;
//! (d) the HTTP floor: the same request, from the same client, to a minimal
//! hyper server on loopback (its own runtime thread in this process) that
//! reads the body, parses it and answers with one SSE line shaped like the
//! daemon's. (b) − (a) against (d) says how much the daemon adds beyond
//! one HTTP exchange.
//!
//! At concurrency 1 and 64: p50/p99 latency, requests/s, CPU per request
//! (for (a) this process, for (b) and (c) the daemon process alone) and RSS
//! (for (a) this process, for (b) and (c) the daemon's). Ten plugins (the
//! echo plugin and nine renamed copies) are installed and running
//! throughout; the daemon's RSS is printed before the first call and after
//! the last. Prints figures, asserts nothing beyond
//! each answer being right. Run with `cargo bench --bench dispatch` after
//! `scripts/setup-python.sh`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/dispatch_common/mod.rs"]
mod dispatch_common;
mod serve_process;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use common::TENANT;
use serve_process::{
    load_average, measure, memory, post_echo, print, renamed_echo_tool, Daemon, ECHO,
};

const CALLS_SEQUENTIAL: usize = 500;
const CALLS_CONCURRENT: usize = 3000;
/// DISPATCH_BENCH_REPEAT multiplies the call counts (longer runs for a
/// profiler to attach to); 1 when unset.
fn repeat() -> usize {
    std::env::var("DISPATCH_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}
const CONCURRENCY: usize = 64;
const INSTALLED: usize = 10;
/// The tenant the debugging plugin registers for.
const DEBUG_TENANT: &str = "5b3c1c2e-3333-4a4a-9c9c-000000000003";

/// Runs the plugin's own venv python in `dir` with `env`.
fn spawn_plugin(dir: &Path, env: &[(&str, String)], piped: bool) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(dir.join(".venv/bin/python"));
    cmd.args(["-m", "main"])
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(if piped { Stdio::piped() } else { Stdio::null() })
        .stdin(if piped { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd.spawn().expect("plugin starts")
}

/// A client speaking the line protocol straight to a plugin's stdio.
#[derive(Clone)]
struct RawPlugin {
    lines: mpsc::Sender<String>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
}

impl RawPlugin {
    async fn start(dir: &Path) -> (Self, tokio::process::Child) {
        let mut child = spawn_plugin(dir, &[("INSTALL_METHOD", "local".into())], true);
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>> = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        let routes = Arc::clone(&waiting);
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            // The answer's stream chunk is kept until its session ends.
            let mut chunks: HashMap<String, Value> = HashMap::new();
            while let Ok(Some(line)) = stdout.next_line().await {
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                match msg["event"].as_str() {
                    Some("heartbeat") => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Some("session") => {
                        let sid = msg["session_id"].as_str().unwrap_or("").to_owned();
                        match msg["data"]["type"].as_str() {
                            Some("stream") => {
                                chunks.insert(sid, msg["data"]["data"].clone());
                            }
                            _ => {
                                let chunk = chunks.remove(&sid).unwrap_or(Value::Null);
                                let tx = routes.lock().unwrap().remove(&sid);
                                if let Some(tx) = tx {
                                    let _ = tx.send(chunk);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        let (lines, mut rx) = mpsc::channel::<String>(256);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        ready_rx.await.expect("plugin heartbeats");
        (Self { lines, waiting }, child)
    }

    async fn echo(&self, i: usize, text: &str) -> Value {
        let n = NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sid = format!("bench-{i}-{n}");
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(sid.clone(), tx);
        let mut data = dispatch_common::tool_data("echo", json!({"text": text}));
        data["user_id"] = json!("u1");
        data["type"] = json!("tool");
        data["action"] = json!("invoke_tool");
        let line = json!({
            "session_id": sid, "conversation_id": null, "message_id": null, "app_id": null,
            "endpoint_id": null, "context": {}, "event": "request", "data": data,
        });
        self.lines.send(format!("{line}\n")).await.unwrap();
        rx.await.unwrap()
    }
}

/// (d): a minimal hyper HTTP/1 server on its own runtime thread, answering
/// each request with one SSE line carrying the echo chunk. Returns its URL.
fn http_floor() -> String {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};

    async fn answer(
        req: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let request: Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let text = request
            .pointer("/data/tool_parameters/text")
            .cloned()
            .unwrap_or(Value::Null);
        let envelope = json!({"code": 0, "message": "success",
            "data": {"type": "text", "message": {"text": text}, "meta": null}});
        let line = format!("data: {envelope}\n\n");
        Ok(hyper::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from(line)))
            .expect("a valid response"))
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "http://{}/dispatch/tool/invoke",
        listener.local_addr().unwrap()
    );
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper::service::service_fn(answer),
                        )
                        .await;
                });
            }
        });
    });
    url
}

/// Makes every session id of the floor client distinct.
static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let daemon = Arc::new(Daemon::start(&[
            // Ten plugins running throughout, nine of them never called.
            ("PLUGIN_LOCAL_IDLE_TIMEOUT", "0"),
        ])
        .await);
        let id = daemon
            .install(dispatch_common::fixture_package("echo_tool"))
            .await;
        let dir = daemon.plugin_dir(&id);
        // Nine more plugins, copies of echo_tool under other names, so that
        // every figure is taken with ten plugins running.
        for n in 1..INSTALLED {
            daemon.install(renamed_echo_tool(n)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle = memory(&daemon.pid);
        println!(
            "echo tool, one text message per call; {CALLS_SEQUENTIAL} calls at concurrency 1, \
             {CALLS_CONCURRENT} at {CONCURRENCY}; daemon pid {} (its own process)",
            daemon.pid
        );

        let (raw, child) = RawPlugin::start(&dir).await;
        let floor_call = move |i: usize| {
            let raw = raw.clone();
            async move {
                let text = format!("hi {i}");
                let chunk = raw.echo(i, &text).await;
                assert_eq!(chunk["message"]["text"], json!(text));
            }
        };
        let a1 = measure("self", floor_call.clone(), CALLS_SEQUENTIAL, 1).await;
        let a64 = measure("self", floor_call, CALLS_CONCURRENT, CONCURRENCY).await;
        drop(child);

        let http_call = |tenant: &'static str| {
            let daemon = Arc::clone(&daemon);
            move |i: usize| {
                let daemon = Arc::clone(&daemon);
                async move { daemon.echo(tenant, i).await }
            }
        };
        let pid = daemon.pid.clone();
        let b1 = measure(&pid, http_call(TENANT), CALLS_SEQUENTIAL * repeat(), 1).await;
        let b64 = measure(&pid, http_call(TENANT), CALLS_CONCURRENT * repeat(), CONCURRENCY).await;

        // The same plugin attached over the debugging listener.
        let key = daemon.debugging_key(DEBUG_TENANT).await;
        let mut remote = spawn_plugin(
            &dir,
            &[
                ("INSTALL_METHOD", "remote".into()),
                (
                    "REMOTE_INSTALL_URL",
                    format!("127.0.0.1:{}", daemon.debug_port),
                ),
                ("REMOTE_INSTALL_KEY", key),
            ],
            false,
        );
        daemon
            .wait_listed(DEBUG_TENANT, "plugind/echo_tool", true)
            .await;
        let c1 = measure(&pid, http_call(DEBUG_TENANT), CALLS_SEQUENTIAL, 1).await;
        let c64 = measure(
            &pid,
            http_call(DEBUG_TENANT),
            CALLS_CONCURRENT,
            CONCURRENCY,
        )
        .await;
        let _ = remote.kill().await;
        daemon
            .wait_listed(DEBUG_TENANT, "plugind/echo_tool", false)
            .await;

        // (d) the HTTP floor, with the same client.
        let floor_url = http_floor();
        let http_floor_call = {
            let daemon = Arc::clone(&daemon);
            let url = floor_url.clone();
            move |i: usize| {
                let daemon = Arc::clone(&daemon);
                let url = url.clone();
                async move { post_echo(&daemon.client, &url, ECHO, i).await }
            }
        };
        let d1 = measure("self", http_floor_call.clone(), CALLS_SEQUENTIAL, 1).await;
        let d64 = measure("self", http_floor_call, CALLS_CONCURRENT, CONCURRENCY).await;

        print("(a) floor, stdin, c=1", &a1);
        print("(b) http dispatch, c=1", &b1);
        print("(c) http dispatch, debug, c=1", &c1);
        print("(d) http floor, hyper, c=1", &d1);
        print(&format!("(a) floor, stdin, c={CONCURRENCY}"), &a64);
        print(&format!("(b) http dispatch, c={CONCURRENCY}"), &b64);
        print(&format!("(c) http dispatch, debug, c={CONCURRENCY}"), &c64);
        print(&format!("(d) http floor, hyper, c={CONCURRENCY}"), &d64);
        let added = b1.p50.as_secs_f64() - a1.p50.as_secs_f64();
        println!(
            "added latency at c=1, (b) - (a) p50: {:.3} ms = {:.2} x the (d) round trip of {:.3} ms (target <= 1.25)",
            added * 1e3,
            added / d1.p50.as_secs_f64(),
            d1.p50.as_secs_f64() * 1e3,
        );
        println!(
            "daemon CPU per call at c=1: {:.1} us (target <= 60); (b)/(a) req/s at c={CONCURRENCY}: {:.1} % (target >= 95 %)",
            b1.cpu_us,
            b64.rps / a64.rps * 100.0
        );
        println!(
            "(b)/(a) p50 at c=1: {:.3}",
            b1.p50.as_secs_f64() / a1.p50.as_secs_f64()
        );
        println!(
            "(c)/(a) p50 at c=1: {:.3}; (c)/(a) req/s at c={CONCURRENCY}: {:.1} %",
            c1.p50.as_secs_f64() / a1.p50.as_secs_f64(),
            c64.rps / a64.rps * 100.0
        );

        println!(
            "daemon RSS with {INSTALLED} plugins installed and running, before any call: {rss_idle} (target <= 30 MiB)"
        );
        println!(
            "daemon RSS with {INSTALLED} plugins installed and running, after the runs above: {} (target <= 30 MiB)",
            memory(&pid)
        );
        // What the daemon's allocator gives back a few seconds after the
        // load, once idle connections have closed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        println!(
            "daemon RSS 5 s after the runs: {}; load {}",
            memory(&pid),
            load_average()
        );
        if let Ok(daemon) = Arc::try_unwrap(daemon) {
            daemon.stop().await;
        }
    });
}
