//! Helpers of the dispatch tests: a daemon on the local platform whose
//! plugins are real `dify_plugin` processes, the fixture plugins packaged in
//! memory, and an SSE reader.
//!
//! uv and Python 3.12 come from the env file `scripts/setup-python.sh`
//! writes (run the script once on a fresh machine); UV_PATH and PYTHON312 in
//! the environment win over it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugind::app_state::AppState;
use plugind::runtime::{LocalHost, LocalOptions, PythonEnvConfig};
use serde_json::Value;

use crate::common::{self, TestApp, KEY, TENANT};

/// The variables `scripts/setup-python.sh` exports.
fn tools_env() -> Vec<(String, String)> {
    let file = std::env::var_os("PLUGIND_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/plugind/tools")))
        .map(|d| d.join("env.sh"));
    let path = match file {
        Some(f) if f.exists() => f,
        _ => {
            let out = std::process::Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-python.sh"))
                .arg("--print-env-file")
                .output()
                .expect("scripts/setup-python.sh runs");
            assert!(out.status.success(), "setup-python.sh failed: {out:?}");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    };
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// A tool of the test machine (UV_PATH, PYTHON312…): from this process's
/// environment, else from the tools env file.
pub fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from).or_else(|| {
        tools_env()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| PathBuf::from(v))
    })
}

/// Timings of a test host.
#[derive(Clone, Debug)]
pub struct HostTimings {
    pub heartbeat_timeout: Duration,
    pub max_execution_timeout: Duration,
    /// PLUGIN_LOCAL_IDLE_TIMEOUT; `None` keeps plugins running.
    pub idle_timeout: Option<Duration>,
}

impl Default for HostTimings {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(60),
            max_execution_timeout: Duration::from_secs(60),
            idle_timeout: None,
        }
    }
}

/// A local host on the tools uv and Python 3.12, sharing one uv cache
/// across test runs so dependencies install from disk.
pub fn host(timings: HostTimings) -> LocalHost {
    let search_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let env = PythonEnvConfig {
        uv_path: tool("UV_PATH"),
        python_interpreter_path: tool("PYTHON312"),
        pip_mirror_url: None,
        pip_extra_args: vec![],
        uv_cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("uv-cache"),
        init_timeout: Duration::from_secs(300),
        search_path,
        pyenv_root: std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")),
        build_env: plugind::runtime::python_env::default_build_env(),
        stage_dir: None,
        tools_dir: None,
    };
    let options = LocalOptions {
        heartbeat_timeout: timings.heartbeat_timeout,
        max_execution_timeout: timings.max_execution_timeout,
        idle_timeout: timings.idle_timeout,
        backoff_initial: Duration::from_millis(200),
        stop_grace: Duration::from_secs(2),
        ..LocalOptions::default()
    };
    LocalHost::new(env, options, 2)
}

/// A daemon on the local platform over a fresh folder and database.
pub async fn spawn_local(timings: HostTimings) -> TestApp {
    let dir = tempfile::Builder::new()
        .prefix("dispatch")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let database_url = common::fresh_database_url(dir.path()).await;
    serve_local(dir, database_url, timings).await
}

/// A daemon over an existing folder and database; installed plugins are
/// relaunched before it returns.
pub async fn serve_local(
    dir: tempfile::TempDir,
    database_url: String,
    timings: HostTimings,
) -> TestApp {
    let settings = common::settings(dir.path(), &database_url, &[]);
    let state = AppState::build_local(settings, host(timings))
        .await
        .unwrap();
    if let Some(local) = &state.local {
        local.relaunch_installed(&state.store, 2).await;
    }
    let base = common::serve_router(plugind::api::app(state.clone())).await;
    TestApp {
        base,
        client: reqwest::Client::new(),
        state,
        dir,
        database_url,
    }
}

/// The files of a fixture folder, minus what a packager leaves out.
pub fn fixture_files(name: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if matches!(file_name.as_str(), ".venv" | "__pycache__") || file_name.ends_with(".pyc")
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A `.difypkg` of `files`.
pub fn zip_files(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        w.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A fixture plugin packaged.
pub fn fixture_package(name: &str) -> Vec<u8> {
    zip_files(&fixture_files(name))
}

/// Uploads and installs a package; waits (environment build included) for
/// the task to finish and returns the identifier and the task.
pub async fn install(app: &TestApp, pkg: Vec<u8>) -> (String, Value) {
    let (_, up) = app.upload(pkg, false).await;
    assert_eq!(up["code"], 0, "{up}");
    let id = up["data"]["unique_identifier"].as_str().unwrap().to_owned();
    let (_, started) = app
        .post(
            "install/identifiers",
            serde_json::json!({"plugin_unique_identifiers": [id], "source": "package", "metas": [{}]}),
        )
        .await;
    assert_eq!(started["code"], 0, "{started}");
    let task_id = started["data"]["task_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let (_, t) = app.get(&format!("install/tasks/{task_id}"), &[]).await;
        let status = t["data"]["status"].as_str().unwrap_or("").to_owned();
        if status == "success" || status == "failed" {
            return (id, t["data"].clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "install task did not finish: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Installs a fixture and asserts the task succeeded.
pub async fn install_fixture(app: &TestApp, name: &str) -> String {
    let (id, task) = install(app, fixture_package(name)).await;
    assert_eq!(task["status"], "success", "{task}");
    id
}

/// The URL of a dispatch route.
pub fn dispatch_url(app: &TestApp, route: &str) -> String {
    format!("{}/plugin/{TENANT}/dispatch/{route}", app.base)
}

/// Posts a dispatch request for `plugin_id`.
pub async fn post_dispatch(
    app: &TestApp,
    route: &str,
    plugin_id: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(dispatch_url(app, route))
        .header("X-Api-Key", KEY)
        .json(body);
    if let Some(id) = plugin_id {
        req = req.header("X-Plugin-ID", id);
    }
    req.send().await.unwrap()
}

/// The envelopes of an SSE body; asserts the line format on the way.
pub fn envelopes(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\n\n") || body.is_empty(), "{body:?}");
    body.split("\n\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let json = l
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {l:?}"));
            serde_json::from_str(json).unwrap()
        })
        .collect()
}

/// Runs a dispatch route to the end: HTTP status, content type, envelopes.
pub async fn dispatch(
    app: &TestApp,
    route: &str,
    plugin_id: &str,
    data: Value,
) -> (u16, String, Vec<Value>) {
    let body = serde_json::json!({
        "user_id": "u1",
        "conversation_id": null,
        "message_id": null,
        "app_id": null,
        "endpoint_id": null,
        "context": {},
        "data": data,
    });
    let r = post_dispatch(app, route, Some(plugin_id), &body).await;
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    let envelopes = if ctype.starts_with("text/event-stream") {
        envelopes(&text)
    } else {
        vec![serde_json::from_str(&text).unwrap()]
    };
    (status, ctype, envelopes)
}

/// The `data` of success envelopes; panics on an error envelope.
pub fn data_of(envelopes: &[Value]) -> Vec<Value> {
    envelopes
        .iter()
        .map(|e| {
            assert_eq!(e["code"], 0, "{e}");
            assert_eq!(e["message"], "success", "{e}");
            e["data"].clone()
        })
        .collect()
}

/// A tool invocation's `data`.
pub fn tool_data(tool: &str, params: Value) -> Value {
    serde_json::json!({
        "provider": "echo_tool",
        "tool": tool,
        "credentials": {"api_key": "k"},
        "credential_type": "api-key",
        "tool_parameters": params,
    })
}
