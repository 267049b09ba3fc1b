//! Serving `/e/{hook_id}/…` with a real `dify_plugin` plugin
//! (tests/fixtures/echo_endpoint) running under the local runtime.
//!
//! uv is found through UV_PATH, then PATH; Python 3.12 through
//! PLUGIND_TEST_PYTHON or the pyenv install (see scripts/setup-python.sh).

mod common;
mod dify_double;
mod endpoint_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugind::runtime::python_env::{self, no_progress};
use plugind::runtime::{LaunchSpec, LocalHost, LocalOptions, PythonEnvConfig};
use serde_json::json;

use endpoint_support::{fixture_dir, fixture_package, spawn, EndpointApp};

const PYENV_PYTHON: &str = "/root/.pyenv/versions/3.12.1/bin/python3.12";

fn python() -> PathBuf {
    std::env::var_os("PLUGIND_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PYENV_PYTHON.into())
}

fn env_config() -> PythonEnvConfig {
    PythonEnvConfig {
        uv_path: std::env::var_os("UV_PATH").map(PathBuf::from),
        python_interpreter_path: Some(python()),
        pip_mirror_url: None,
        pip_extra_args: vec![],
        uv_cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("uv-cache"),
        init_timeout: Duration::from_secs(300),
        search_path: std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default(),
        pyenv_root: std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")),
        build_env: plugind::runtime::python_env::default_build_env(),
        stage_dir: None,
        tools_dir: None,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Installs the fixture, starts it under the local runtime and registers
/// it, then sets up an endpoint. Returns the app and the hook id.
async fn running(fixture: &str, settings: serde_json::Value) -> (EndpointApp, String) {
    let ep = spawn().await;
    let identifier = ep.install(fixture_package(fixture)).await;
    let dir = tempfile::Builder::new()
        .prefix(fixture)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    copy_dir(&fixture_dir(fixture), &dir);
    python_env::ensure_env(&env_config(), &dir, Some("3.12"), no_progress())
        .await
        .expect("fixture environment builds");
    let host = LocalHost::new(
        env_config(),
        LocalOptions {
            heartbeat_timeout: Duration::from_secs(60),
            max_execution_timeout: Duration::from_secs(60),
            ..LocalOptions::default()
        },
        2,
    );
    let runtime = host
        .launch(
            LaunchSpec {
                identity: identifier.clone(),
                working_dir: dir,
                entrypoint: "main".into(),
                runner_version: Some("3.12".into()),
                env: vec![],
                memory: None,
                package_files: None,
            },
            no_progress(),
        )
        .await
        .expect("plugin launches");
    ep.app
        .state
        .registry
        .insert(identifier.clone(), Arc::new(runtime));
    let entry = ep.setup(&identifier, "e", settings).await;
    let hook = entry["hook_id"].as_str().unwrap().to_owned();
    (ep, hook)
}

#[tokio::test]
async fn echo_endpoint_serves_get_head_and_live_sse() {
    let (ep, hook) = running("echo_endpoint", json!({"greeting": "hi"})).await;
    let client = &ep.app.client;

    let r = client
        .get(ep.hook_url(&hook, "/hello?name=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-endpoint"], "hello");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "hi, x");

    // The same hook id with every character percent-encoded, and a path
    // with an encoded character of its own.
    let encoded: String = hook.bytes().map(|b| format!("%{b:02X}")).collect();
    let r = client
        .get(format!("{}/e/{encoded}/hell%6F?name=y", ep.app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-endpoint"], "hello");
    assert_eq!(r.text().await.unwrap(), "hi, y");

    let r = client
        .head(ep.hook_url(&hook, "/hello?name=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-endpoint"], "hello");
    assert_eq!(r.text().await.unwrap(), "");

    // Unknown paths are the plugin's 404.
    let r = client
        .get(ep.hook_url(&hook, "/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // 5 events, 300 ms apart: the first must arrive long before the last
    // is produced.
    let started = Instant::now();
    let mut r = client
        .post(ep.hook_url(&hook, "/stream"))
        .json(&json!({"count": 5, "delay": 0.3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let first = r.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"data: {\"index\": 0}\n\n");
    let mut rest = Vec::new();
    while let Some(piece) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&piece);
    }
    let total = started.elapsed();
    assert!(String::from_utf8(rest)
        .unwrap()
        .ends_with("data: [DONE]\n\n"));
    assert!(
        total - first_at >= Duration::from_millis(900),
        "first event at {first_at:?}, stream ended at {total:?}"
    );
}
