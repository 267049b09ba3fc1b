//! The real `plugind serve` binary as a child process on loopback: started
//! with a given environment, waited on until `/health/check` answers, and
//! stopped with SIGTERM (or killed with SIGKILL). Its output goes to a log
//! file that failures quote. The child is killed if the test panics.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

/// How to start one daemon.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// The process's working folder (where it would read `.env`).
    pub dir: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// PLUGIN_STORAGE_LOCAL_ROOT.
    pub storage: PathBuf,
    /// PLUGIN_UID_RANGE: each daemon of a test needs its own, since a
    /// plugin's leftovers are killed by uid.
    pub uid_range: String,
    pub server_key: String,
    /// More variables, set after the defaults (so they win).
    pub env: Vec<(String, String)>,
    /// Variables removed from the environment the test runs in, after the
    /// defaults and before `env`.
    pub remove: Vec<String>,
    /// The binary (a copy of `plugind`, for a uid that cannot reach the
    /// build folder).
    pub program: PathBuf,
    /// A uid (and gid) to run the daemon as; root only.
    pub run_as: Option<u32>,
    /// SERVER_PORT, chosen when the spec is made, so settings that name
    /// the daemon's own address (a callback URL) can be set before it runs.
    pub port: u16,
}

impl DaemonSpec {
    /// A daemon over `dir` (storage under `dir/storage`, log `dir/plugind.log`)
    /// on embedded SQLite.
    pub fn new(dir: &Path, uid_range: &str, server_key: &str) -> Self {
        Self {
            dir: dir.to_owned(),
            log: dir.join("plugind.log"),
            storage: dir.join("storage"),
            uid_range: uid_range.to_owned(),
            server_key: server_key.to_owned(),
            env: vec![("DB_TYPE".into(), "sqlite".into())],
            remove: Vec::new(),
            program: PathBuf::from(env!("CARGO_BIN_EXE_plugind")),
            run_as: None,
            port: free_port(),
        }
    }

    /// `http://127.0.0.1:<port>`: where the daemon will serve.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Adds (or overrides) a variable.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Leaves `name` out of the daemon's environment.
    pub fn without(mut self, name: &str) -> Self {
        self.remove.push(name.to_owned());
        self
    }
}

/// Lets plugin uids walk down to folders under `dir` (tempfile makes 0700).
pub fn open_for_plugins(dir: &Path) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `plugind serve`.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub base: String,
    pub debug_port: u16,
    pub spec: DaemonSpec,
    pub client: reqwest::Client,
}

impl Daemon {
    /// Starts the daemon and waits until `/health/check` answers.
    pub async fn start(spec: DaemonSpec) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .unwrap();
        let port = spec.port;
        let debug_port = free_port();
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.arg("serve")
            .current_dir(&spec.dir)
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", port.to_string())
            .env("SERVER_KEY", &spec.server_key)
            .env("PLUGIN_REMOTE_INSTALLING_HOST", "127.0.0.1")
            .env("PLUGIN_REMOTE_INSTALLING_PORT", debug_port.to_string())
            .env("DIFY_INNER_API_URL", "http://127.0.0.1:9")
            .env("DIFY_INNER_API_KEY", "inner-test-key")
            .env("PLUGIN_STORAGE_LOCAL_ROOT", &spec.storage)
            .env("PLATFORM", "local")
            .env("FORCE_VERIFYING_SIGNATURE", "false")
            .env(
                "UV_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("uv-cache"),
            )
            .env("LOG_LEVEL", "info")
            .env("PLUGIN_UID_RANGE", &spec.uid_range)
            .env_remove("DATABASE_URL")
            .env_remove("DB_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        if let Ok(python) = std::env::var("PYTHON312") {
            cmd.env("PYTHON_INTERPRETER_PATH", python);
        }
        for name in &spec.remove {
            cmd.env_remove(name);
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(uid) = spec.run_as {
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().expect("plugind starts");
        let mut daemon = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            debug_port,
            spec,
            client: reqwest::Client::new(),
        };
        for _ in 0..300 {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("plugind exited with {status}:\n{}", daemon.log());
            }
            if let Ok(r) = daemon.client.get(daemon.url("/health/check")).send().await {
                if r.status().is_success() {
                    return daemon;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("plugind did not start:\n{}", daemon.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What the daemon wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.spec.log).unwrap_or_default()
    }

    /// PLUGIN_STORAGE_LOCAL_ROOT.
    pub fn storage(&self) -> PathBuf {
        self.spec.storage.clone()
    }

    /// PLUGIN_WORKING_PATH's default.
    pub fn working(&self) -> PathBuf {
        self.storage().join("cwd")
    }

    /// The unpacked folder of an installed identifier.
    pub fn plugin_dir(&self, identifier: &str) -> PathBuf {
        self.working()
            .join(plugind::install::local::package_dir_name(identifier))
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.id().map(|p| p as i32)
    }

    /// A management call: POST with `body`, else GET.
    pub async fn management(&self, tenant: &str, path: &str, body: Option<Value>) -> Value {
        let url = self.url(&format!("/plugin/{tenant}/management/{path}"));
        let req = match body {
            Some(body) => self.client.post(url).json(&body),
            None => self.client.get(url),
        };
        req.header("X-Api-Key", &self.spec.server_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Uploads a package for `tenant`; returns its unique identifier.
    pub async fn upload(&self, tenant: &str, package: Vec<u8>) -> String {
        let form = reqwest::multipart::Form::new()
            .part(
                "dify_pkg",
                reqwest::multipart::Part::bytes(package).file_name("p.difypkg"),
            )
            .text("verify_signature", "false");
        let up: Value = self
            .client
            .post(self.url(&format!(
                "/plugin/{tenant}/management/install/upload/package"
            )))
            .header("X-Api-Key", &self.spec.server_key)
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(up["code"], 0, "{up}");
        up["data"]["unique_identifier"].as_str().unwrap().to_owned()
    }

    /// Starts installing an uploaded identifier; returns the task id.
    pub async fn install_identifier(&self, tenant: &str, identifier: &str) -> String {
        let started = self
            .management(
                tenant,
                "install/identifiers",
                Some(
                    json!({"plugin_unique_identifiers": [identifier], "source": "package", "metas": [{}]}),
                ),
            )
            .await;
        assert_eq!(started["code"], 0, "{started}");
        started["data"]["task_id"].as_str().unwrap().to_owned()
    }

    /// Uploads a package and starts installing it for `tenant`; returns the
    /// identifier and the task id.
    pub async fn start_install(&self, tenant: &str, package: Vec<u8>) -> (String, String) {
        let id = self.upload(tenant, package).await;
        let task = self.install_identifier(tenant, &id).await;
        (id, task)
    }

    /// Polls a task until it leaves pending/running, at most `limit`;
    /// returns the task.
    pub async fn wait_task(&self, tenant: &str, task: &str, limit: Duration) -> Value {
        self.wait_task_messages(tenant, task, limit).await.0
    }

    /// As [`Self::wait_task`], with every distinct plugin message seen on
    /// the way, in order.
    pub async fn wait_task_messages(
        &self,
        tenant: &str,
        task: &str,
        limit: Duration,
    ) -> (Value, Vec<String>) {
        let mut seen: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let t = self
                .management(tenant, &format!("install/tasks/{task}"), None)
                .await;
            for plugin in t["data"]["plugins"].as_array().into_iter().flatten() {
                if let Some(m) = plugin["message"].as_str() {
                    if seen.last().map(String::as_str) != Some(m) {
                        seen.push(m.to_owned());
                    }
                }
            }
            if matches!(t["data"]["status"].as_str(), Some("success" | "failed")) {
                return (t["data"].clone(), seen);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {task} did not end: {t}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Uploads and installs a package for `tenant`, asserting success;
    /// returns the identifier and the installation id.
    pub async fn install(&self, tenant: &str, package: Vec<u8>) -> (String, String) {
        let (id, task) = self.start_install(tenant, package).await;
        let t = self
            .wait_task(tenant, &task, Duration::from_secs(300))
            .await;
        assert_eq!(
            t["status"],
            "success",
            "install failed: {t}\n{}",
            self.log()
        );
        let installation = self
            .installation_id(tenant, &id)
            .await
            .unwrap_or_else(|| panic!("{id} not listed"));
        (id, installation)
    }

    /// The installation id of `identifier` for `tenant`, if listed.
    pub async fn installation_id(&self, tenant: &str, identifier: &str) -> Option<String> {
        let list = self
            .management(tenant, "list?page=1&page_size=100", None)
            .await;
        list["data"]["list"]
            .as_array()?
            .iter()
            .find(|p| p["plugin_unique_identifier"] == identifier)
            .and_then(|p| p["installation_id"].as_str())
            .map(str::to_owned)
    }

    /// Calls a tool; the SSE body as received.
    pub async fn call_tool(
        &self,
        tenant: &str,
        plugin: &str,
        provider: &str,
        tool: &str,
        params: Value,
    ) -> String {
        let body = json!({
            "user_id": "u1",
            "conversation_id": null,
            "message_id": null,
            "app_id": null,
            "endpoint_id": null,
            "context": {},
            "data": {
                "provider": provider,
                "tool": tool,
                "credentials": {"api_key": "k"},
                "credential_type": "api-key",
                "tool_parameters": params,
            },
        });
        self.client
            .post(self.url(&format!("/plugin/{tenant}/dispatch/tool/invoke")))
            .header("X-Api-Key", &self.spec.server_key)
            .header("X-Plugin-ID", plugin)
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Calls a tool and returns its text messages joined, asserting every
    /// envelope succeeded.
    pub async fn tool(
        &self,
        tenant: &str,
        plugin: &str,
        provider: &str,
        tool: &str,
        params: Value,
    ) -> String {
        let body = self.call_tool(tenant, plugin, provider, tool, params).await;
        let mut out = String::new();
        for e in sse_envelopes(&body) {
            assert_eq!(e["code"], 0, "{e}\n{}", self.log());
            if let Some(t) = e["data"]["message"]["text"].as_str() {
                out.push_str(t);
            }
        }
        out
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit; SIGKILL
    /// after that.
    pub async fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        }
    }

    /// SIGTERM, at most 20 s, then SIGKILL.
    pub async fn stop(mut self) {
        self.terminate(Duration::from_secs(20)).await;
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The envelopes of an SSE body (`data: <json>` lines).
pub fn sse_envelopes(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let json = l
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {l:?}"));
            serde_json::from_str(json).unwrap()
        })
        .collect()
}
