//! What the benches that run `plugind serve` as its own process share: the
//! daemon over a temp folder, installs through the management API, echo
//! calls, and figures read from `/proc` (CPU, RSS, load average).

// Each bench uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::common::{KEY, TENANT};
use crate::dispatch_common;

/// Calls made before each measured run.
pub const WARMUP: usize = 50;
/// Idle connections the bench client keeps per host (twice the highest
/// concurrency the benches use).
const POOL_IDLE: usize = 128;
/// The echo plugin's id.
pub const ECHO: &str = "plugind/echo_tool";

/// CPU seconds (user + system) of process `pid` (`self` for this one).
pub fn cpu_seconds(pid: &str) -> f64 {
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
pub fn status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// RSS of process `pid` with its parts, for printing.
pub fn memory(pid: &str) -> String {
    format!(
        "{:.1} MiB (heap and stacks {:.1}, mapped binary and libraries {:.1})",
        rss_mib(pid),
        status_mib(pid, "RssAnon"),
        status_mib(pid, "RssFile"),
    )
}

/// Resident set size of process `pid`, in MiB.
pub fn rss_mib(pid: &str) -> f64 {
    status_mib(pid, "VmRSS")
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
pub struct Figures {
    pub p50: Duration,
    pub p99: Duration,
    pub rps: f64,
    pub cpu_us: f64,
    pub rss: f64,
    pub load: String,
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn print(name: &str, f: &Figures) {
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
pub async fn measure<F, Fut>(pid: &str, call: F, calls: usize, concurrency: usize) -> Figures
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
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The variables `scripts/setup-python.sh` wrote, overridden by the
/// environment.
pub fn tools_env(name: &str) -> Option<String> {
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
pub struct Daemon {
    child: tokio::process::Child,
    /// The daemon's pid, as `/proc` names it.
    pub pid: String,
    pub base: String,
    pub debug_port: u16,
    working: PathBuf,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon with `env` added to the bench's settings.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        // Under the system temp folder: as root the daemon runs each plugin
        // as its own uid, which must be able to walk down to its folder.
        let dir = tempfile::Builder::new()
            .prefix("bench-daemon")
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
            .envs(env.iter().copied())
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
            .pool_max_idle_per_host(POOL_IDLE)
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

    pub fn management(&self, tenant: &str, path: &str) -> String {
        format!("{}/plugin/{tenant}/management/{path}", self.base)
    }

    /// Uploads and installs a package for [`TENANT`]; returns the
    /// identifier once the install task succeeded.
    pub async fn install(&self, pkg: Vec<u8>) -> String {
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
    pub fn plugin_dir(&self, identifier: &str) -> PathBuf {
        self.working
            .join(plugind::install::local::package_dir_name(identifier))
    }

    pub async fn debugging_key(&self, tenant: &str) -> String {
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
    pub async fn listed(&self, tenant: &str, plugin_id: &str) -> bool {
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

    pub async fn wait_listed(&self, tenant: &str, plugin_id: &str, present: bool) {
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
    pub async fn echo(&self, tenant: &str, i: usize) {
        let url = format!("{}/plugin/{tenant}/dispatch/tool/invoke", self.base);
        post_echo(&self.client, &url, ECHO, i).await;
    }

    /// SIGKILL: the daemon gets no chance to clean up (its plugins die
    /// with it through their death signal).
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    pub async fn stop(mut self) {
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
/// One echo request as Dify sends it to `url`, for `plugin_id`; asserts
/// the answer.
pub async fn post_echo(client: &reqwest::Client, url: &str, plugin_id: &str, i: usize) {
    let text = format!("hi {i}");
    let body = json!({"user_id": "u1",
        "data": dispatch_common::tool_data("echo", json!({"text": text}))});
    let r = client
        .post(url)
        .header("X-Api-Key", KEY)
        .header("X-Plugin-ID", plugin_id)
        .json(&body)
        .send()
        .await
        .expect("the server answers");
    let body = r.text().await.expect("body");
    assert!(body.contains(&format!("\"text\":\"{text}\"")), "{body}");
}
/// The echo_tool fixture renamed, so several copies install side by side.
pub fn renamed_echo_tool(n: usize) -> Vec<u8> {
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
