//! The real `plugind serve` binary as a child process on 127.0.0.1, over a
//! temp storage root and working folder, driven through its HTTP API the
//! way Dify drives it: upload, install task, dispatch.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

/// The daemon's `X-Api-Key`.
pub const SERVER_KEY: &str = "server-key-daemon-7f3a";

/// A `plugind serve` process; killed when dropped.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub base: String,
    /// The daemon's working folder (holds `.env` and `plugind.log`) and
    /// storage root.
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

/// A loopback port nothing listens on (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// Starts over `dir` with the embedded defaults (SQLite, local storage
    /// under `dir/storage`, the local platform, the uv cache shared by test
    /// runs); `configure` adds or removes variables of the command last.
    /// Its stdout and stderr go to `dir/plugind.log`.
    pub async fn start(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut tokio::process::Command),
    ) -> Self {
        // Plugin uids (as root) must be able to walk down to their folders.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("plugind.log"))
            .unwrap();
        let port = free_port();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_plugind"));
        cmd.arg("serve")
            .current_dir(dir.path())
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", port.to_string())
            .env("SERVER_KEY", SERVER_KEY)
            .env("PLUGIN_REMOTE_INSTALLING_HOST", "127.0.0.1")
            .env("PLUGIN_REMOTE_INSTALLING_PORT", free_port().to_string())
            .env("DIFY_INNER_API_URL", "http://127.0.0.1:9")
            .env("DIFY_INNER_API_KEY", "inner-key-daemon-20c4")
            .env("PLUGIN_STORAGE_LOCAL_ROOT", dir.path().join("storage"))
            .env("PLATFORM", "local")
            .env("FORCE_VERIFYING_SIGNATURE", "false")
            .env("DB_TYPE", "sqlite")
            .env(
                "UV_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("uv-cache"),
            )
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        configure(&mut cmd);
        let child = cmd.spawn().expect("plugind starts");
        let daemon = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            client: reqwest::Client::new(),
        };
        for _ in 0..300 {
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

    /// What the daemon printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plugind.log")).unwrap_or_default()
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
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

    /// A management route of `tenant`: POST with `body`, else GET.
    pub async fn management(&self, tenant: &str, path: &str, body: Option<Value>) -> Value {
        let url = self.url(&format!("/plugin/{tenant}/management/{path}"));
        let req = match body {
            Some(body) => self.client.post(url).json(&body),
            None => self.client.get(url),
        };
        req.header("X-Api-Key", SERVER_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Uploads a package for `tenant`; returns its unique identifier.
    pub async fn upload(&self, tenant: &str, pkg: Vec<u8>) -> String {
        let form = reqwest::multipart::Form::new()
            .part(
                "dify_pkg",
                reqwest::multipart::Part::bytes(pkg).file_name("p.difypkg"),
            )
            .text("verify_signature", "false");
        let up: Value = self
            .client
            .post(self.url(&format!(
                "/plugin/{tenant}/management/install/upload/package"
            )))
            .header("X-Api-Key", SERVER_KEY)
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
    pub async fn start_install(&self, tenant: &str, identifier: &str) -> String {
        let started = self
            .management(
                tenant,
                "install/identifiers",
                Some(json!({"plugin_unique_identifiers": [identifier], "source": "package", "metas": [{}]})),
            )
            .await;
        assert_eq!(started["code"], 0, "{started}");
        started["data"]["task_id"].as_str().unwrap().to_owned()
    }

    /// Polls a task until it succeeds or fails (at most five minutes) and
    /// returns its last state, with every distinct plugin message seen on
    /// the way, in order.
    pub async fn wait_task(&self, tenant: &str, task: &str) -> (Value, Vec<String>) {
        let mut seen: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
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
                return (t, seen);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "install did not end: {t}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Uploads and installs a package for `tenant` and asserts it succeeded;
    /// returns the identifier and the installation id.
    pub async fn install(&self, tenant: &str, pkg: Vec<u8>) -> (String, String) {
        let id = self.upload(tenant, pkg).await;
        let task = self.start_install(tenant, &id).await;
        let (t, _) = self.wait_task(tenant, &task).await;
        assert_eq!(t["data"]["status"], "success", "{t}\n{}", self.log());
        let installation = self.installation(tenant, &id).await;
        (id, installation)
    }

    /// The installation id of `identifier` for `tenant`.
    pub async fn installation(&self, tenant: &str, identifier: &str) -> String {
        let list = self
            .management(tenant, "list?page=1&page_size=100", None)
            .await;
        list["data"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["plugin_unique_identifier"] == identifier)
            .unwrap_or_else(|| panic!("{identifier} not listed: {list}"))["installation_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Calls a tool and returns its text messages joined; every envelope
    /// must be a success.
    pub async fn tool(
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
        let text = self
            .client
            .post(self.url(&format!("/plugin/{tenant}/dispatch/tool/invoke")))
            .header("X-Api-Key", SERVER_KEY)
            .header("X-Plugin-ID", plugin)
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut out = String::new();
        for line in text.split("\n\n").filter(|l| !l.is_empty()) {
            let json = line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {line:?}"));
            let e: Value = serde_json::from_str(json).unwrap();
            assert_eq!(e["code"], 0, "{e}\n{}", self.log());
            if let Some(t) = e["data"]["message"]["text"].as_str() {
                out.push_str(t);
            }
        }
        out
    }

    /// SIGTERM, at most 20 s to drain, then kill; returns the folder for a
    /// next start.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.dir
    }
}
