//! Plugin isolation, tried the way a hostile plugin would: the real
//! `plugind serve` binary, started with secrets in its environment and its
//! `.env`, runs the `hostile_tool` fixture for tenant B next to `echo_tool`
//! for tenant A. Every probe of the daemon's secrets, files, other plugins
//! and limits must fail, and the daemon and the other plugin carry on.
//!
//! As root (CI) plugins run as uids of their own; as another user the same
//! probes run against the degraded mode (the daemon's uid, Landlock where
//! the kernel has it), where the environment must be just as clean.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod dispatch_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use dispatch_common::{envelopes, fixture_package};

const TENANT_A: &str = "tenant-a";
const TENANT_B: &str = "tenant-b";
const SERVER_KEY: &str = "server-key-isolation-7f3a";
const SECRETS: &[(&str, &str)] = &[
    ("DIFY_INNER_API_KEY", "inner-key-isolation-91c2"),
    ("DB_PASSWORD", "db-password-isolation-44d0"),
    ("AWS_SECRET_ACCESS_KEY", "aws-secret-isolation-b6e1"),
    ("AWS_ACCESS_KEY_ID", "AKIAISOLATION0000"),
];
const DOTENV_SECRET: &str = "dotenv-secret-isolation-52aa";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A `plugind serve` process with a temp storage root and working folder.
struct Daemon {
    child: tokio::process::Child,
    base: String,
    /// The daemon's working folder (holds `.env`) and storage root.
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Daemon {
    /// Starts over `dir`; plugins get uids from `uid_range` (each test its
    /// own: leftovers are killed by uid).
    async fn start(dir: tempfile::TempDir, uid_range: &str) -> Self {
        Self::start_as(
            dir,
            uid_range,
            Path::new(env!("CARGO_BIN_EXE_plugind")),
            None,
            &[],
        )
        .await
    }

    /// Starts `program` as `run_as` (a uid, root only) with `extra` env.
    async fn start_as(
        dir: tempfile::TempDir,
        uid_range: &str,
        program: &Path,
        run_as: Option<u32>,
        extra: &[(&str, String)],
    ) -> Self {
        // Plugin uids must be able to walk down to their folders.
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
        let debug_port = free_port();
        std::fs::write(
            dir.path().join(".env"),
            format!("ISOLATION_DOTENV_SECRET={DOTENV_SECRET}\n"),
        )
        .unwrap();
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("serve")
            .current_dir(dir.path())
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", port.to_string())
            .env("SERVER_KEY", SERVER_KEY)
            .env("PLUGIN_REMOTE_INSTALLING_HOST", "127.0.0.1")
            .env("PLUGIN_REMOTE_INSTALLING_PORT", debug_port.to_string())
            .env("DIFY_INNER_API_URL", "http://127.0.0.1:9")
            .env("PLUGIN_STORAGE_LOCAL_ROOT", dir.path().join("storage"))
            .env("PLATFORM", "local")
            .env("FORCE_VERIFYING_SIGNATURE", "false")
            .env("DB_TYPE", "sqlite")
            .env(
                "UV_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("uv-cache"),
            )
            .env("LOG_LEVEL", "info")
            .envs(SECRETS.iter().copied())
            .env("PLUGIN_UID_RANGE", uid_range)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        if let Ok(python) = std::env::var("PYTHON312") {
            cmd.env("PYTHON_INTERPRETER_PATH", python);
        }
        cmd.envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some(uid) = run_as {
            cmd.uid(uid).gid(uid);
        }
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

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plugind.log")).unwrap_or_default()
    }

    fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn working(&self) -> PathBuf {
        self.storage().join("cwd")
    }

    async fn management(&self, tenant: &str, path: &str, body: Option<Value>) -> Value {
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

    /// Uploads and installs a fixture for `tenant`; returns the identifier
    /// and the installation id.
    async fn install(&self, tenant: &str, fixture: &str) -> (String, String) {
        let form = reqwest::multipart::Form::new()
            .part(
                "dify_pkg",
                reqwest::multipart::Part::bytes(fixture_package(fixture)).file_name("p.difypkg"),
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
        let id = up["data"]["unique_identifier"].as_str().unwrap().to_owned();
        let started = self
            .management(
                tenant,
                "install/identifiers",
                Some(
                    json!({"plugin_unique_identifiers": [id], "source": "package", "metas": [{}]}),
                ),
            )
            .await;
        assert_eq!(started["code"], 0, "{started}");
        let task = started["data"]["task_id"].as_str().unwrap().to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let t = self
                .management(tenant, &format!("install/tasks/{task}"), None)
                .await;
            match t["data"]["status"].as_str() {
                Some("success") => break,
                Some("failed") => panic!("install of {fixture} failed: {t}\n{}", self.log()),
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "install did not end: {t}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let list = self
            .management(tenant, "list?page=1&page_size=100", None)
            .await;
        let installation = list["data"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["plugin_unique_identifier"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))["installation_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (id, installation)
    }

    /// Calls a tool and returns its text messages joined.
    async fn tool(
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
        for e in envelopes(&text) {
            assert_eq!(e["code"], 0, "{e}\n{}", self.log());
            if let Some(t) = e["data"]["message"]["text"].as_str() {
                out.push_str(t);
            }
        }
        out
    }

    /// Runs one `probe` action of the hostile plugin.
    async fn probe(&self, action: &str, target: &str) -> Value {
        let text = self
            .tool(
                TENANT_B,
                "plugind/hostile_tool",
                "hostile_tool",
                "probe",
                json!({"action": action, "target": target}),
            )
            .await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    async fn echo(&self, text: &str) -> String {
        self.tool(
            TENANT_A,
            "plugind/echo_tool",
            "echo_tool",
            "echo",
            json!({"text": text}),
        )
        .await
    }

    async fn stop(mut self) -> tempfile::TempDir {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The unpacked folder of an installed identifier.
fn plugin_dir(daemon: &Daemon, identifier: &str) -> PathBuf {
    daemon
        .working()
        .join(plugind::install::local::package_dir_name(identifier))
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); the state says whether it runs.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

fn assert_refused(answer: &Value, what: &str) {
    assert_eq!(answer["ok"], false, "{what} must fail: {answer}");
}

#[tokio::test]
async fn a_hostile_plugin_reaches_nothing_of_the_daemon_or_other_plugins() {
    let daemon = Daemon::start(tempfile::tempdir().unwrap(), "51000-51999").await;
    hostile_probes(daemon, is_root()).await;
}

/// As root the test also runs the daemon as `nobody`, the way an operator
/// runs it without root: no uid of its own for plugins, but the same clean
/// environment, Landlock and limits. The daemon, uv and the interpreter are
/// copied where `nobody` can run them (the originals live under /root).
#[tokio::test]
async fn a_daemon_without_root_still_confines_its_plugins() {
    if !is_root() {
        eprintln!("not root: the other test already runs the daemon without root");
        return;
    }
    if plugind::runtime::sandbox::landlock_abi() < 6 {
        eprintln!("this kernel lacks Landlock ABI 6: without root nothing but the environment is confined here");
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tools.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let daemon_bin = tools.path().join("plugind");
    std::fs::copy(env!("CARGO_BIN_EXE_plugind"), &daemon_bin).unwrap();
    let uv = tools.path().join("uv");
    std::fs::copy(std::env::var("UV_PATH").expect("UV_PATH is set"), &uv).unwrap();
    let python =
        std::fs::canonicalize(std::env::var("PYTHON312").expect("PYTHON312 is set")).unwrap();
    let prefix = python.parent().unwrap().parent().unwrap();
    let copy = tools.path().join("python");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(prefix)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(copy.join("lib/python3.12/test"));
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let lib = copy.join("lib").to_string_lossy().into_owned();
    let extra = [
        (
            "HOME",
            dir.path().join("home").to_string_lossy().into_owned(),
        ),
        ("UV_PATH", uv.to_string_lossy().into_owned()),
        (
            "UV_CACHE_DIR",
            dir.path().join("uv-cache").to_string_lossy().into_owned(),
        ),
        (
            "PYTHON_INTERPRETER_PATH",
            copy.join("bin")
                .join(python.file_name().unwrap())
                .to_string_lossy()
                .into_owned(),
        ),
        // The copy's libpython is found through the loader path, passed on
        // to plugins on purpose.
        ("LD_LIBRARY_PATH", lib),
        ("PLUGIN_ENV_PASSTHROUGH", "LD_LIBRARY_PATH".to_owned()),
    ];
    let daemon = Daemon::start_as(dir, "53000-53999", &daemon_bin, Some(NOBODY), &extra).await;
    assert!(
        daemon.log().contains("plugind is not root"),
        "{}",
        daemon.log()
    );
    hostile_probes(daemon, false).await;
}

/// Every probe of the hostile plugin, with `own_uid` when plugins run as
/// uids of their own.
async fn hostile_probes(daemon: Daemon, own_uid: bool) {
    let (echo_id, _) = daemon.install(TENANT_A, "echo_tool").await;
    let (hostile_id, hostile_installation) = daemon.install(TENANT_B, "hostile_tool").await;
    assert_eq!(daemon.echo("before").await, "before");

    // Nothing the daemon was started with reaches the plugin.
    let env = daemon.probe("env", "").await;
    let shown = env["result"].to_string();
    for secret in SECRETS
        .iter()
        .map(|(_, v)| *v)
        .chain([SERVER_KEY, DOTENV_SECRET])
    {
        assert!(
            !shown.contains(secret),
            "{secret} reached the plugin: {shown}"
        );
    }
    for name in [
        "SERVER_KEY",
        "DIFY_INNER_API_KEY",
        "DB_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "UV_CACHE_DIR",
    ] {
        assert!(env["result"].get(name).is_none(), "{name} in {shown}");
    }
    let who = daemon.probe("whoami", "").await["result"].clone();
    let home = PathBuf::from(who["home"].as_str().unwrap());
    assert_eq!(env["result"]["HOME"], who["home"]);
    assert!(
        home.starts_with(daemon.working().join(".plugin-data")),
        "HOME {home:?} is the plugin's own"
    );
    assert!(env["result"]["PATH"].as_str().unwrap().starts_with(
        plugin_dir(&daemon, &hostile_id)
            .join(".venv/bin")
            .to_str()
            .unwrap()
    ));

    // Its own data folder is writable.
    assert_eq!(daemon.probe("write_home", "").await["result"], "mine");

    // The daemon's environment, database, .env and storage.
    assert_refused(
        &daemon.probe("parent_environ", "").await,
        "reading the daemon's environ",
    );
    let db = daemon.storage().join("plugind.db");
    assert!(db.is_file());
    assert_refused(
        &daemon.probe("read", db.to_str().unwrap()).await,
        "reading the database",
    );
    let dotenv = daemon.dir.path().join(".env");
    assert_refused(
        &daemon.probe("read", dotenv.to_str().unwrap()).await,
        "reading .env",
    );
    assert_refused(
        &daemon
            .probe("list", daemon.storage().to_str().unwrap())
            .await,
        "listing the storage root",
    );

    // Another tenant's plugin, and its own code.
    let echo_dir = plugin_dir(&daemon, &echo_id);
    let echo_code = echo_dir.join("tools/echo.py");
    assert_refused(
        &daemon.probe("read", echo_code.to_str().unwrap()).await,
        "reading another plugin's code",
    );
    assert_refused(
        &daemon.probe("write", echo_code.to_str().unwrap()).await,
        "writing another plugin's code",
    );
    let own_code = plugin_dir(&daemon, &hostile_id).join("tools/probe.py");
    assert_refused(
        &daemon.probe("write", own_code.to_str().unwrap()).await,
        "writing its own code",
    );
    assert!(!std::fs::read_to_string(&echo_code)
        .unwrap()
        .contains("hostile_tool"));

    // Signals to the daemon.
    let daemon_pid = daemon.child.id().unwrap().to_string();
    assert_refused(
        &daemon.probe("signal", &daemon_pid).await,
        "signalling the daemon",
    );

    if own_uid {
        let uid = who["uid"].as_u64().unwrap() as u32;
        assert!((51_000..=51_999).contains(&uid), "plugin uid {uid}");
        assert_eq!(who["groups"], json!([uid]), "no supplementary groups");
        let echo_home = daemon
            .working()
            .join(".plugin-data")
            .join(echo_dir.file_name().unwrap());
        use std::os::unix::fs::MetadataExt;
        let echo_uid = std::fs::metadata(&echo_home).unwrap().uid();
        assert_ne!(echo_uid, uid, "each plugin has a uid of its own");
    }

    // Memory past resource.memory (256 MiB) fails inside the plugin; the
    // plugin, the daemon and the other plugin carry on.
    let alloc = daemon.probe("allocate", "2048").await;
    assert_refused(&alloc, "allocating 2 GiB");
    assert!(
        alloc["error"].as_str().unwrap().contains("MemoryError"),
        "{alloc}"
    );
    assert_eq!(daemon.probe("write_home", "").await["result"], "mine");
    assert_eq!(daemon.echo("after").await, "after");

    // A child that left the process group and ignores SIGTERM goes when the
    // plugin is uninstalled.
    let forked = daemon.probe("fork", "").await;
    let pid = forked["result"]
        .as_i64()
        .unwrap_or_else(|| panic!("{forked}")) as i32;
    assert!(alive(pid));
    let removed = daemon
        .management(
            TENANT_B,
            "uninstall",
            Some(json!({"plugin_installation_id": hostile_installation})),
        )
        .await;
    assert_eq!(removed["code"], 0, "{removed}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while alive(pid) && own_uid {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plugin's child {pid} outlived its uninstall"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !own_uid {
        // Without a uid of its own a child that called setsid escapes the
        // process group; the death signal does not reach grandchildren.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert_eq!(daemon.echo("still").await, "still");
    daemon.stop().await;
}

#[tokio::test]
async fn a_tampered_code_folder_is_unpacked_again_before_it_runs() {
    let daemon = Daemon::start(tempfile::tempdir().unwrap(), "52000-52999").await;
    let (echo_id, _) = daemon.install(TENANT_A, "echo_tool").await;
    assert_eq!(daemon.echo("x").await, "x");
    let dir = daemon.stop().await;

    // Someone changes the code and adds a module while the daemon is down.
    let code = dir
        .path()
        .join("storage/cwd")
        .join(plugind::install::local::package_dir_name(&echo_id));
    let echo = code.join("tools/echo.py");
    let original = std::fs::read_to_string(&echo).unwrap();
    std::fs::write(
        &echo,
        original.replace("str(tool_parameters.get(\"text\", \"\"))", "\"tampered\""),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&echo).unwrap().contains("tampered"));
    std::fs::write(
        code.join("sitecustomize.py"),
        "raise SystemExit('tampered')\n",
    )
    .unwrap();

    let daemon = Daemon::start(dir, "52000-52999").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let answer = daemon
            .client
            .post(daemon.url(&format!("/plugin/{TENANT_A}/dispatch/tool/invoke")))
            .header("X-Api-Key", SERVER_KEY)
            .header("X-Plugin-ID", "plugind/echo_tool")
            .json(&json!({"user_id": "u", "data": {"provider": "echo_tool", "tool": "echo",
                "credentials": {}, "credential_type": "api-key", "tool_parameters": {"text": "y"}}}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if answer.contains("\"code\":0") {
            assert!(answer.contains("\"text\":\"y\""), "{answer}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{answer}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(std::fs::read_to_string(&echo).unwrap(), original);
    assert!(!code.join("sitecustomize.py").exists());
    assert!(
        daemon.log().contains("does not match its package"),
        "the log says why: {}",
        daemon.log()
    );
    daemon.stop().await;
}
