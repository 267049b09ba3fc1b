//! Shared by the endpoint tests: a daemon whose inner API is the Dify test
//! double, endpoint packages built in memory or from fixture folders, and
//! setting up an endpoint through the management routes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plugind::api::endpoint::{routes_with, EndpointContext};
use plugind::app_state::AppState;
use plugind::endpoint::Invoker;
use plugind::install::NoopInstallStep;
use plugind::settings::Secret;
use serde_json::{json, Value};

use crate::common::{self, TestApp};
use crate::dify_double::{self, DifyDouble};

/// A daemon plus the Dify double it encrypts settings with.
pub struct EndpointApp {
    pub app: TestApp,
    pub dify: DifyDouble,
}

pub async fn spawn() -> EndpointApp {
    spawn_with(&[]).await
}

pub async fn spawn_with(extra: &[&str]) -> EndpointApp {
    let dify = DifyDouble::start();
    let app = serve_app(&dify.base_url(), extra, None).await;
    EndpointApp { app, dify }
}

/// A daemon over a fresh database whose inner API is `inner_url`. With
/// `invoker`, plugins are reached through it instead of the registry.
pub async fn serve_app(
    inner_url: &str,
    extra: &[&str],
    invoker: Option<Arc<dyn Invoker>>,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let database_url = common::fresh_database_url(dir.path()).await;
    let mut settings = common::settings(dir.path(), &database_url, extra);
    settings.dify_inner_api_url = inner_url.to_owned();
    settings.dify_inner_api_key = Secret::new(dify_double::KEY);
    let state = AppState::build_with_step(settings, Arc::new(NoopInstallStep))
        .await
        .unwrap();
    let app = match invoker {
        None => plugind::api::app(state.clone()),
        Some(invoker) => {
            // The daemon's routes, with the public endpoint routes of a
            // context that reaches plugins through `invoker` in front.
            let ctx = EndpointContext::with_invoker(&state, invoker).unwrap();
            routes_with(ctx)
                .public
                .with_state(state.clone())
                .fallback_service(plugind::api::app(state.clone()))
        }
    };
    let base = common::serve_router(app).await;
    TestApp {
        base,
        client: reqwest::Client::new(),
        state,
        dir,
        database_url,
    }
}

/// An endpoint plugin `plugind/<name>` with settings `greeting`
/// (text-input) and `token` (secret-input, required), built in memory.
pub fn endpoint_package(name: &str, permitted: bool) -> Vec<u8> {
    let permission = if permitted {
        "permission:\n    endpoint:\n      enabled: true"
    } else {
        "permission: {}"
    };
    let manifest = format!(
        r#"version: 0.0.1
type: plugin
author: plugind
name: {name}
label:
  en_US: {name}
description:
  en_US: Endpoint test plugin
icon: icon.svg
resource:
  memory: 1048576
  {permission}
plugins:
  endpoints:
    - group/{name}.yaml
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
    let group = r#"settings:
  - name: greeting
    type: text-input
    required: false
    label:
      en_US: Greeting
  - name: token
    type: secret-input
    required: true
    label:
      en_US: Token
endpoints:
  - endpoints/x.yaml
"#;
    let endpoint = "path: /x\nmethod: GET\nextra:\n  python:\n    source: endpoints/x.py\n";
    common::build_zip(&[
        ("manifest.yaml", manifest.as_bytes()),
        (&format!("group/{name}.yaml"), group.as_bytes()),
        ("endpoints/x.yaml", endpoint.as_bytes()),
        ("endpoints/x.py", b"\n"),
        ("_assets/icon.svg", common::ICON),
        ("main.py", b"\n"),
    ])
}

/// A fixture folder (tests/fixtures/<name>) zipped as a package.
pub fn fixture_package(name: &str) -> Vec<u8> {
    let root = fixture_dir(name);
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let owned: Vec<(String, Vec<u8>)> = files
        .into_iter()
        .map(|rel| {
            let data = std::fs::read(root.join(&rel)).unwrap();
            (rel, data)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = owned
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    common::build_zip(&refs)
}

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "__pycache__" || name == ".venv" || name.ends_with(".pyc") {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
}

impl EndpointApp {
    pub fn endpoint_url(&self, path: &str) -> String {
        format!(
            "{}/plugin/{}/endpoint/{path}",
            self.app.base,
            common::TENANT
        )
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .app
            .client
            .get(self.endpoint_url(path))
            .header("X-Api-Key", common::KEY)
            .query(query)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .app
            .client
            .post(self.endpoint_url(path))
            .header("X-Api-Key", common::KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Installs a package and returns its identifier.
    pub async fn install(&self, pkg: Vec<u8>) -> String {
        let (id, task) = self.app.install(pkg).await;
        assert_eq!(task["status"], "success", "{task}");
        id
    }

    /// Sets up an endpoint and returns its listing entry.
    pub async fn setup(&self, identifier: &str, name: &str, settings: Value) -> Value {
        let (status, body) = self
            .post(
                "setup",
                json!({"plugin_unique_identifier": identifier, "user_id": "u1",
                       "name": name, "settings": settings}),
            )
            .await;
        assert_eq!((status, &body["code"]), (200, &json!(0)), "{body}");
        assert_eq!(body["data"], true);
        let plugin_id = identifier.split(':').next().unwrap();
        let (_, list) = self
            .get(
                "list/plugin",
                &[
                    ("plugin_id", plugin_id),
                    ("page", "1"),
                    ("page_size", "100"),
                ],
            )
            .await;
        list["data"]
            .as_array()
            .unwrap_or_else(|| panic!("listing failed: {list}"))
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .expect("the new endpoint is listed")
    }

    /// The public URL of a hook.
    pub fn hook_url(&self, hook_id: &str, path: &str) -> String {
        format!("{}/e/{hook_id}{path}", self.app.base)
    }
}
