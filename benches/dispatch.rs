//! Dispatch cost against the floor, on the real `echo_tool` plugin.
//!
//! (a) the floor: this process writes request lines straight to the stdin of
//! the echo plugin (`python -m main` in its venv) and reads the answers;
//! (b) the same calls through plugind's HTTP dispatch route, daemon in
//! process. At concurrency 1 and 64: p50/p99 latency, requests/s, CPU of
//! this process per request (for (b) the daemon and the HTTP client), and
//! RSS. Then the RSS with 10 plugins installed. Prints figures, asserts
//! nothing beyond each answer being right. Run with
//! `cargo bench --bench dispatch` after `scripts/setup-python.sh`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, Semaphore};

const WARMUP: usize = 50;
const CALLS_SEQUENTIAL: usize = 500;
const CALLS_CONCURRENT: usize = 3000;
const CONCURRENCY: usize = 64;
const INSTALLED: usize = 10;

/// CPU seconds (user + system) of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let hz = 100.0; // USER_HZ on Linux
    (ticks(11) + ticks(12)) / hz
}

/// Resident set size of this process, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Figures {
    p50: Duration,
    p99: Duration,
    rps: f64,
    cpu_us: f64,
    rss: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<28} p50={:>8.3} ms  p99={:>8.3} ms  {:>8.0} req/s  cpu={:>7.1} us/req  rss={:>6.1} MiB",
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.rps,
        f.cpu_us,
        f.rss
    );
}

/// Runs `calls` calls of `call` at `concurrency`, after a warm-up.
async fn measure<F, Fut>(call: F, calls: usize, concurrency: usize) -> Figures
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for i in 0..WARMUP {
        call(i).await;
    }
    let limit = Arc::new(Semaphore::new(concurrency));
    let cpu = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(calls);
    for i in 0..calls {
        let permit = Arc::clone(&limit).acquire_owned().await.unwrap();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            call(i).await;
            drop(permit);
            t.elapsed()
        }));
    }
    let mut samples = Vec::with_capacity(calls);
    for t in tasks {
        samples.push(t.await.unwrap());
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds() - cpu;
    samples.sort();
    Figures {
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        rps: calls as f64 / wall.as_secs_f64(),
        cpu_us: cpu / calls as f64 * 1e6,
        rss: rss_mib(),
    }
}

/// A client speaking the line protocol straight to a plugin's stdio.
#[derive(Clone)]
struct RawPlugin {
    lines: mpsc::Sender<String>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
}

impl RawPlugin {
    async fn start(dir: &std::path::Path) -> (Self, tokio::process::Child) {
        let mut child = tokio::process::Command::new(dir.join(".venv/bin/python"))
            .args(["-m", "main"])
            .current_dir(dir)
            .env("INSTALL_METHOD", "local")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("plugin starts");
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

/// Makes every session id of the floor client distinct.
static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let app = dispatch_common::spawn_local(dispatch_common::HostTimings::default()).await;
        let id = dispatch_common::install_fixture(&app, "echo_tool").await;
        let dir = app.state.local.as_ref().unwrap().plugin_dir(&id);
        let app = Arc::new(app);
        println!("echo tool, one text message per call; {CALLS_SEQUENTIAL} calls at concurrency 1, {CALLS_CONCURRENT} at {CONCURRENCY}");

        let (raw, child) = RawPlugin::start(&dir).await;
        let floor_call = move |i: usize| {
            let raw = raw.clone();
            async move {
                let text = format!("hi {i}");
                let chunk = raw.echo(i, &text).await;
                assert_eq!(chunk["message"]["text"], json!(text));
            }
        };
        let a1 = measure(floor_call.clone(), CALLS_SEQUENTIAL, 1).await;
        let a64 = measure(floor_call, CALLS_CONCURRENT, CONCURRENCY).await;
        drop(child);

        let http_call = {
            let app = Arc::clone(&app);
            move |i: usize| {
                let app = Arc::clone(&app);
                async move {
                    let text = format!("hi {i}");
                    let body = json!({"user_id": "u1",
                        "data": dispatch_common::tool_data("echo", json!({"text": text}))});
                    let r = dispatch_common::post_dispatch(
                        &app,
                        "tool/invoke",
                        Some("plugind/echo_tool"),
                        &body,
                    )
                    .await;
                    let body = r.text().await.expect("body");
                    assert!(body.contains(&format!("\"text\":\"{text}\"")), "{body}");
                }
            }
        };
        let b1 = measure(http_call.clone(), CALLS_SEQUENTIAL, 1).await;
        let b64 = measure(http_call, CALLS_CONCURRENT, CONCURRENCY).await;

        print("(a) floor, stdin, c=1", &a1);
        print("(b) http dispatch, c=1", &b1);
        print(&format!("(a) floor, stdin, c={CONCURRENCY}"), &a64);
        print(&format!("(b) http dispatch, c={CONCURRENCY}"), &b64);
        println!(
            "(b)/(a) p50 at c=1: {:.3} (target <= 1.15); (b)/(a) req/s at c={CONCURRENCY}: {:.1} % (target >= 90 %)",
            b1.p50.as_secs_f64() / a1.p50.as_secs_f64(),
            b64.rps / a64.rps * 100.0
        );

        // Nine more plugins: copies of echo_tool under other names.
        for n in 1..INSTALLED {
            let files: Vec<_> = dispatch_common::fixture_files("echo_tool")
                .into_iter()
                .map(|(name, data)| {
                    if name == "manifest.yaml" {
                        let text = String::from_utf8(data).unwrap().replace(
                            "name: echo_tool",
                            &format!("name: echo_tool_{n}"),
                        );
                        (name, text.into_bytes())
                    } else {
                        (name, data)
                    }
                })
                .collect();
            let (_, task) = dispatch_common::install(&app, dispatch_common::zip_files(&files)).await;
            assert_eq!(task["status"], "success", "{task}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "daemon process RSS with {INSTALLED} plugins installed and running: {:.1} MiB (target <= 30 MiB)",
            rss_mib()
        );
        app.state.registry.shutdown_all().await;
    });
}
