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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, Semaphore};

use common::{KEY, TENANT};

const WARMUP: usize = 50;
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

/// CPU seconds (user + system) of process `pid` (`self` for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
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

/// A `kB` field of `/proc/<pid>/status`, in MiB.
fn status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// RSS of process `pid` with its parts, for printing.
fn memory(pid: &str) -> String {
    format!(
        "{:.1} MiB (heap and stacks {:.1}, mapped binary and libraries {:.1})",
        rss_mib(pid),
        status_mib(pid, "RssAnon"),
        status_mib(pid, "RssFile"),
    )
}

/// Resident set size of process `pid`, in MiB.
fn rss_mib(pid: &str) -> f64 {
    status_mib(pid, "VmRSS")
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Figures {
    p50: Duration,
    p99: Duration,
    rps: f64,
    cpu_us: f64,
    rss: f64,
    load: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<30} p50={:>8.3} ms  p99={:>8.3} ms  {:>7.0} req/s  cpu={:>6.1} us/req  rss={:>5.1} MiB  load {}",
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.rps,
        f.cpu_us,
        f.rss,
        f.load,
    );
}

/// Runs `calls` calls of `call` at `concurrency`, after a warm-up; CPU and
/// RSS are those of process `pid`.
async fn measure<F, Fut>(pid: &str, call: F, calls: usize, concurrency: usize) -> Figures
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for i in 0..WARMUP.max(concurrency) {
        call(i).await;
    }
    let limit = Arc::new(Semaphore::new(concurrency));
    let cpu = cpu_seconds(pid);
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
    let cpu = cpu_seconds(pid) - cpu;
    samples.sort();
    Figures {
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        rps: calls as f64 / wall.as_secs_f64(),
        cpu_us: cpu / calls as f64 * 1e6,
        rss: rss_mib(pid),
        load: load_average(),
    }
}

/// A free loopback port (bound, then released for the daemon to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The variables `scripts/setup-python.sh` wrote, overridden by the
/// environment.
fn tools_env(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    let dir = std::env::var_os("PLUGIND_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/plugind/tools"))
        })?;
    std::fs::read_to_string(dir.join("env.sh"))
        .ok()?
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

/// `plugind serve` as its own process over a temp folder.
struct Daemon {
    child: tokio::process::Child,
    pid: String,
    base: String,
    debug_port: u16,
    working: PathBuf,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start() -> Self {
        // Under the system temp folder: as root the daemon runs each plugin
        // as its own uid, which must be able to walk down to its folder.
        let dir = tempfile::Builder::new()
            .prefix("bench-dispatch")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let root = dir.path().join("storage");
        let working = dir.path().join("cwd");
        let port = free_port();
        let debug_port = free_port();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_plugind"));
        cmd.arg("serve")
            .current_dir(dir.path())
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", port.to_string())
            .env("SERVER_KEY", KEY)
            .env("DIFY_INNER_API_URL", "http://127.0.0.1:9")
            .env("DIFY_INNER_API_KEY", "inner")
            .env("PLATFORM", "local")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", dir.path().join("db/plugind.db").display()),
            )
            .env("PLUGIN_STORAGE_LOCAL_ROOT", &root)
            .env("PLUGIN_WORKING_PATH", &working)
            .env("FORCE_VERIFYING_SIGNATURE", "false")
            .env(
                "UV_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("uv-cache"),
            )
            .env("PLUGIN_REMOTE_INSTALLING_ENABLED", "true")
            .env("PLUGIN_REMOTE_INSTALLING_HOST", "127.0.0.1")
            .env("PLUGIN_REMOTE_INSTALLING_PORT", debug_port.to_string())
            .env("LOG_LEVEL", "INFO")
            // Ten plugins running throughout, nine of them never called.
            .env("PLUGIN_LOCAL_IDLE_TIMEOUT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(uv) = tools_env("UV_PATH") {
            cmd.env("UV_PATH", uv);
        }
        if let Some(python) = tools_env("PYTHON312") {
            cmd.env("PYTHON_INTERPRETER_PATH", python);
        }
        let child = cmd.spawn().expect("plugind serve starts");
        let pid = child.id().expect("daemon pid").to_string();
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(CONCURRENCY * 2)
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .get(format!("{base}/health/check"))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "daemon did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            pid,
            base,
            debug_port,
            working,
            client,
            _dir: dir,
        }
    }

    fn management(&self, tenant: &str, path: &str) -> String {
        format!("{}/plugin/{tenant}/management/{path}", self.base)
    }

    /// Uploads and installs a package for [`TENANT`]; returns the
    /// identifier once the install task succeeded.
    async fn install(&self, pkg: Vec<u8>) -> String {
        let form = reqwest::multipart::Form::new()
            .part(
                "dify_pkg",
                reqwest::multipart::Part::bytes(pkg).file_name("dify_pkg"),
            )
            .text("verify_signature", "false");
        let up: Value = self
            .client
            .post(self.management(TENANT, "install/upload/package"))
            .header("X-Api-Key", KEY)
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(up["code"], 0, "{up}");
        let id = up["data"]["unique_identifier"].as_str().unwrap().to_owned();
        let started: Value = self
            .client
            .post(self.management(TENANT, "install/identifiers"))
            .header("X-Api-Key", KEY)
            .json(&json!({"plugin_unique_identifiers": [id], "source": "package", "metas": [{}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(started["code"], 0, "{started}");
        let task_id = started["data"]["task_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let t: Value = self
                .client
                .get(self.management(TENANT, &format!("install/tasks/{task_id}")))
                .header("X-Api-Key", KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match t["data"]["status"].as_str() {
                Some("success") => return id,
                Some("failed") => panic!("install failed: {t}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "install did not finish: {t}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where the daemon unpacked (and built the venv of) `identifier`.
    fn plugin_dir(&self, identifier: &str) -> PathBuf {
        self.working
            .join(plugind::install::local::package_dir_name(identifier))
    }

    async fn debugging_key(&self, tenant: &str) -> String {
        let body: Value = self
            .client
            .post(format!("{}/plugin/{tenant}/debugging/key", self.base))
            .header("X-Api-Key", KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["code"], 0, "{body}");
        body["data"]["key"].as_str().unwrap().to_owned()
    }

    /// Whether `plugin_id` is in the tenant's management list.
    async fn listed(&self, tenant: &str, plugin_id: &str) -> bool {
        let body: Value = self
            .client
            .get(self.management(tenant, "list"))
            .header("X-Api-Key", KEY)
            .query(&[("page", "1"), ("page_size", "100")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]["list"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["plugin_id"] == plugin_id))
    }

    async fn wait_listed(&self, tenant: &str, plugin_id: &str, present: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.listed(tenant, plugin_id).await != present {
            assert!(
                Instant::now() < deadline,
                "{plugin_id} listed != {present} after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One echo call through HTTP dispatch; asserts the answer.
    async fn echo(&self, tenant: &str, i: usize) {
        let url = format!("{}/plugin/{tenant}/dispatch/tool/invoke", self.base);
        post_echo(&self.client, &url, i).await;
    }

    async fn stop(mut self) {
        if let Ok(pid) = self.pid.parse::<i32>() {
            // SIGTERM: the daemon stops its plugins before exiting.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

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

/// One echo request as Dify sends it to `url`; asserts the answer.
async fn post_echo(client: &reqwest::Client, url: &str, i: usize) {
    let text = format!("hi {i}");
    let body = json!({"user_id": "u1",
        "data": dispatch_common::tool_data("echo", json!({"text": text}))});
    let r = client
        .post(url)
        .header("X-Api-Key", KEY)
        .header("X-Plugin-ID", "plugind/echo_tool")
        .json(&body)
        .send()
        .await
        .expect("the server answers");
    let body = r.text().await.expect("body");
    assert!(body.contains(&format!("\"text\":\"{text}\"")), "{body}");
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

/// The echo_tool fixture renamed, so several copies install side by side.
fn renamed_echo_tool(n: usize) -> Vec<u8> {
    let files: Vec<_> = dispatch_common::fixture_files("echo_tool")
        .into_iter()
        .map(|(name, data)| {
            if name == "manifest.yaml" {
                let text = String::from_utf8(data)
                    .unwrap()
                    .replace("name: echo_tool", &format!("name: echo_tool_{n}"));
                (name, text.into_bytes())
            } else {
                (name, data)
            }
        })
        .collect();
    dispatch_common::zip_files(&files)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let daemon = Arc::new(Daemon::start().await);
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
                async move { post_echo(&daemon.client, &url, i).await }
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
