//! Test helpers: a real daemon on 127.0.0.1:0 over a fresh temp SQLite file
//! (or a fresh PostgreSQL database when PLUGIND_TEST_POSTGRES_URL is set), and
//! real `.difypkg` zips built in memory; [`daemon`] starts the real
//! `plugind serve` binary instead.
#![allow(dead_code)]

pub mod daemon;

use std::io::Write;
use std::sync::Arc;

use clap::Parser;
use plugind::app_state::AppState;
use plugind::install::{InstallStep, NoopInstallStep};
use plugind::settings::Settings;
use plugind::store::Store;
use serde_json::Value;

pub const KEY: &str = "test-server-key";
pub const TENANT: &str = "5b3c1c2e-1111-4a4a-9c9c-000000000001";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
}

/// A fresh database URL: a temp SQLite file under `dir`, or a new database
/// on the server named by PLUGIND_TEST_POSTGRES_URL.
pub async fn fresh_database_url(dir: &std::path::Path) -> String {
    match std::env::var("PLUGIND_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => {
            let name = format!("plugind_test_{}", uuid::Uuid::new_v4().simple());
            let (head, query) = match base.split_once('?') {
                Some((h, q)) => (h.to_owned(), format!("?{q}")),
                None => (base.clone(), String::new()),
            };
            let server = head.rsplit_once('/').map(|(s, _)| s).unwrap_or(&head);
            format!("{server}/{name}{query}")
        }
        _ => format!("sqlite://{}", dir.join("db").join("plugind.db").display()),
    }
}

/// Opens a fresh store.
pub async fn fresh_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    (Store::connect(&url, 5).await.unwrap(), dir)
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    pub database_url: String,
}

pub fn settings(dir: &std::path::Path, database_url: &str, extra: &[&str]) -> Settings {
    let root = dir.join("storage");
    let mut args: Vec<String> = [
        "plugind",
        "--server-key",
        KEY,
        "--dify-inner-api-url",
        "http://127.0.0.1:9",
        "--dify-inner-api-key",
        "inner",
        "--database-url",
        database_url,
        "--plugin-storage-local-root",
        root.to_str().unwrap(),
        "--db-max-open-conns",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--force-verifying-signature") {
        args.extend(["--force-verifying-signature".into(), "false".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Cli::try_parse_from(args).unwrap().settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[], Arc::new(NoopInstallStep)).await
}

pub async fn spawn_app_with(extra: &[&str], step: Arc<dyn InstallStep>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    serve(dir, database_url, extra, step).await
}

/// Starts a daemon over an existing folder and database.
/// Serves `router` (the daemon's API) on a free loopback port as `plugind
/// serve` does: no delay on small response pieces, the HTTP timeouts;
/// returns its base URL. Every in-process test daemon is served here.
pub async fn serve_router(router: axum::Router) -> String {
    serve_router_with(router, plugind::serve::HttpTimeouts::default()).await
}

/// As [`serve_router`], with other HTTP timeouts.
pub async fn serve_router_with(
    router: axum::Router,
    timeouts: plugind::serve::HttpTimeouts,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Small response pieces go out at once instead of waiting for the
    // client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(plugind::serve::serve_http(
        listener,
        router,
        timeouts,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

pub async fn serve(
    dir: tempfile::TempDir,
    database_url: String,
    extra: &[&str],
    step: Arc<dyn InstallStep>,
) -> TestApp {
    let settings = settings(dir.path(), &database_url, extra);
    let state = AppState::build_with_step(settings, step).await.unwrap();
    let base = serve_router(plugind::api::app(state.clone())).await;
    TestApp {
        base,
        client: reqwest::Client::new(),
        state,
        dir,
        database_url,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}/plugin/{TENANT}/management/{path}", self.base)
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .header("X-Api-Key", KEY)
            .query(query)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("X-Api-Key", KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn upload(&self, pkg: Vec<u8>, verify: bool) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .part(
                "dify_pkg",
                reqwest::multipart::Part::bytes(pkg).file_name("dify_pkg"),
            )
            .text("verify_signature", if verify { "true" } else { "false" });
        let r = self
            .client
            .post(self.url("install/upload/package"))
            .header("X-Api-Key", KEY)
            .multipart(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Uploads then installs a package and waits for its task to finish.
    pub async fn install(&self, pkg: Vec<u8>) -> (String, Value) {
        let (_, up) = self.upload(pkg, false).await;
        assert_eq!(up["code"], 0, "{up}");
        let id = up["data"]["unique_identifier"].as_str().unwrap().to_owned();
        let (_, started) = self
            .post(
                "install/identifiers",
                serde_json::json!({"plugin_unique_identifiers": [id], "source": "package", "metas": [{}]}),
            )
            .await;
        assert_eq!(started["code"], 0, "{started}");
        let task_id = started["data"]["task_id"].as_str().unwrap().to_owned();
        let task = self.wait_task(&task_id).await;
        (id, task)
    }

    /// Polls a task until it leaves pending/running.
    pub async fn wait_task(&self, task_id: &str) -> Value {
        for _ in 0..200 {
            let (_, t) = self.get(&format!("install/tasks/{task_id}"), &[]).await;
            let status = t["data"]["status"].as_str().unwrap_or("").to_owned();
            if status == "success" || status == "failed" {
                return t["data"].clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("task {task_id} did not finish");
    }

    /// Files under the storage root, relative paths.
    pub fn stored_files(&self) -> Vec<String> {
        let root = self.dir.path().join("storage");
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// Row counts of every table that is not empty.
    pub async fn nonempty_tables(&self) -> Vec<(String, i64)> {
        self.state
            .store
            .table_counts()
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| (t.to_owned(), n))
            .collect()
    }
}

/// The message of an error envelope, decoded.
pub fn error_body(envelope: &Value) -> Value {
    serde_json::from_str(envelope["message"].as_str().unwrap()).unwrap()
}

pub const ICON: &[u8] = b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>";

/// A tool plugin package `langgenius/<name>` at `version`, built in memory.
pub fn tool_package(name: &str, version: &str) -> Vec<u8> {
    tool_package_with_provider_icon(name, version, "icon.svg")
}

/// [`tool_package`] whose tool provider names `provider_icon` as its icon.
pub fn tool_package_with_provider_icon(name: &str, version: &str, provider_icon: &str) -> Vec<u8> {
    let manifest = format!(
        r#"version: {version}
type: plugin
author: langgenius
name: {name}
label:
  en_US: Echo {name}
description:
  en_US: Repeats its input
icon: icon.svg
resource:
  memory: 1048576
  permission: {{}}
plugins:
  tools:
    - provider/{name}.yaml
meta:
  version: 0.0.1
  arch: [amd64]
  runner:
    language: python
    version: "3.12"
    entrypoint: main
created_at: 2024-01-01T00:00:00Z
"#
    );
    let provider = format!(
        r#"identity:
  author: langgenius
  name: {name}
  label:
    en_US: Echo
  description:
    en_US: Echo provider
  icon: {provider_icon}
tools:
  - tools/echo.yaml
"#
    );
    let tool = r#"identity:
  name: echo
  author: langgenius
  label:
    en_US: Echo
description:
  human:
    en_US: Echo
  llm: Echo
parameters: []
"#;
    build_zip(&[
        ("manifest.yaml", manifest.as_bytes()),
        (&format!("provider/{name}.yaml"), provider.as_bytes()),
        ("tools/echo.yaml", tool.as_bytes()),
        ("_assets/icon.svg", ICON),
        ("README.md", format!("# {name} {version}").as_bytes()),
        ("main.py", b"print('hi')\n"),
    ])
}

/// A zip of the given files.
pub fn build_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Creates an MCP server for [`TENANT`] through the management API on the
/// daemon at `base`, issues it a token, and returns the server's URL (the
/// `path` the API shows) and the token.
pub async fn create_mcp_server(
    client: &reqwest::Client,
    base: &str,
    body: serde_json::Value,
) -> (String, String) {
    let api = format!("{base}/plugin/{TENANT}/mcp/servers");
    let created: serde_json::Value = client
        .post(&api)
        .header("X-Api-Key", KEY)
        .json(&body)
        .send()
        .await
        .expect("create the MCP server")
        .json()
        .await
        .expect("an envelope");
    assert_eq!(created["code"], 0, "{created}");
    let id = created["data"]["id"]
        .as_str()
        .expect("server id")
        .to_owned();
    let token: serde_json::Value = client
        .post(format!("{api}/{id}/tokens"))
        .header("X-Api-Key", KEY)
        .json(&serde_json::json!({"name": "tests"}))
        .send()
        .await
        .expect("create a token")
        .json()
        .await
        .expect("an envelope");
    let token = token["data"]["token"].as_str().expect("a token").to_owned();
    let path = created["data"]["path"].as_str().expect("server path");
    (format!("{base}{path}"), token)
}
