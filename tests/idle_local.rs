//! Idle stopping through the daemon, with real `dify_plugin` plugins: a
//! streamed endpoint keeps its plugin up, a stopped plugin uninstalls, and
//! after a restart plugins start at their first call.
//!
//! uv and Python 3.12 come from the env file `scripts/setup-python.sh`
//! writes (see tests/dispatch_common).

mod common;
mod dify_double;
mod dispatch_common;
mod endpoint_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use plugind::runtime::python_env::no_progress;
use plugind::runtime::{LaunchSpec, LocalRuntime, PluginRuntime, RuntimeState};
use serde_json::json;

use common::error_body;
use dispatch_common::{
    data_of, dispatch, install_fixture, serve_local, spawn_local, tool_data, HostTimings,
};

const PLUGIN: &str = "plugind/echo_tool";
const IDLE: Duration = Duration::from_secs(1);

fn idle_timings() -> HostTimings {
    HostTimings {
        idle_timeout: Some(IDLE),
        ..HostTimings::default()
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

/// Waits (bounded) until `runtime` is in `state`.
async fn wait_state(runtime: &LocalRuntime, state: RuntimeState) {
    let mut states = runtime.subscribe();
    tokio::time::timeout(Duration::from_secs(20), states.wait_for(|s| *s == state))
        .await
        .unwrap_or_else(|_| panic!("not {state:?} in 20 s: {:?}", runtime.state()))
        .unwrap();
}

#[tokio::test]
async fn a_streamed_endpoint_keeps_its_plugin_up_and_it_stops_after() {
    let ep = endpoint_support::spawn().await;
    let identifier = ep
        .install(endpoint_support::fixture_package("echo_endpoint"))
        .await;
    let dir = tempfile::Builder::new()
        .prefix("echo_endpoint")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    copy_dir(&endpoint_support::fixture_dir("echo_endpoint"), dir.path());
    let runtime = dispatch_common::host(idle_timings())
        .launch(
            LaunchSpec {
                identity: identifier.clone(),
                working_dir: dir.path().to_owned(),
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
        .insert(identifier.clone(), Arc::new(runtime.clone()));
    let entry = ep.setup(&identifier, "e", json!({"greeting": "hi"})).await;
    let hook = entry["hook_id"].as_str().unwrap().to_owned();
    let pid = runtime.pid().unwrap();

    // Ten events 400 ms apart: four idle timeouts of streaming.
    let mut r = ep
        .app
        .client
        .post(ep.hook_url(&hook, "/stream"))
        .json(&json!({"count": 10, "delay": 0.4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = Vec::new();
    while let Some(piece) = r.chunk().await.unwrap() {
        body.extend_from_slice(&piece);
        assert_eq!(runtime.state(), RuntimeState::Ready);
    }
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("data: {\"index\": 9}\n\n"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(runtime.pid(), Some(pid));
    assert_eq!(runtime.starts(), 1);

    // With the stream over, nothing holds it.
    wait_state(&runtime, RuntimeState::Idle).await;
    let r = ep
        .app
        .client
        .get(ep.hook_url(&hook, "/hello?name=again"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hi, again");
    assert_eq!(runtime.starts(), 2);
    runtime.shutdown().await;
}

#[tokio::test]
async fn uninstalling_a_stopped_plugin_works() {
    let app = spawn_local(idle_timings()).await;
    let id = install_fixture(&app, "echo_tool").await;
    let local = app.state.local.clone().unwrap();
    let runtime = local.runtime(&id).unwrap();
    wait_state(&runtime, RuntimeState::Idle).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while runtime.pid().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle child still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    let installation_id = list["data"]["list"][0]["installation_id"]
        .as_str()
        .or_else(|| list["data"]["list"][0]["id"].as_str())
        .unwrap()
        .to_owned();
    let (_, done) = tokio::time::timeout(
        Duration::from_secs(30),
        app.post(
            "uninstall",
            json!({"plugin_installation_id": installation_id}),
        ),
    )
    .await
    .expect("uninstall returns");
    assert_eq!(done["code"], 0, "{done}");
    assert!(app.state.registry.get(&id).is_none());
    assert_eq!(runtime.state(), RuntimeState::Stopped);
    assert_eq!(runtime.starts(), 1, "the uninstall started the plugin");
    assert!(!local.plugin_dir(&id).exists());
    let (status, _, env) = dispatch(
        &app,
        "tool/invoke",
        PLUGIN,
        tool_data("echo", json!({"text": "x"})),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(error_body(&env[0])["error_type"], "PluginNotFoundError");
}

#[tokio::test]
async fn after_a_restart_a_plugin_starts_at_its_first_call() {
    let app = spawn_local(idle_timings()).await;
    let id = install_fixture(&app, "echo_tool").await;
    app.state.registry.shutdown_all().await;
    let common::TestApp {
        dir, database_url, ..
    } = app;

    let again = serve_local(dir, database_url, idle_timings()).await;
    let runtime = again.state.local.as_ref().unwrap().runtime(&id).unwrap();
    assert_eq!(runtime.state(), RuntimeState::Idle);
    assert_eq!(runtime.pid(), None);
    assert_eq!(runtime.starts(), 0);

    let (status, _, env) = dispatch(
        &again,
        "tool/invoke",
        PLUGIN,
        tool_data("echo", json!({"text": "cold"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(data_of(&env)[0]["message"]["text"], "cold");
    assert_eq!(runtime.starts(), 1);
    let metrics = again
        .client
        .get(format!("{}/metrics", again.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"plugind_plugin_start_duration_seconds_count{cause="demand"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("plugind_plugin_processes "), "{metrics}");
    again.state.registry.shutdown_all().await;
}

#[tokio::test]
async fn installing_an_idle_plugin_for_another_tenant_proves_it_starts() {
    const OTHER: &str = "5b3c1c2e-2222-4a4a-9c9c-000000000002";
    let app = spawn_local(idle_timings()).await;
    let id = install_fixture(&app, "echo_tool").await;
    let runtime = app.state.local.as_ref().unwrap().runtime(&id).unwrap();
    wait_state(&runtime, RuntimeState::Idle).await;

    let management = |path: &str| format!("{}/plugin/{OTHER}/management/{path}", app.base);
    let started: serde_json::Value = app
        .client
        .post(management("install/identifiers"))
        .header("X-Api-Key", common::KEY)
        .json(&json!({"plugin_unique_identifiers": [id], "source": "package", "metas": [{}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(started["code"], 0, "{started}");
    let task_id = started["data"]["task_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let task: serde_json::Value = app
            .client
            .get(management(&format!("install/tasks/{task_id}")))
            .header("X-Api-Key", common::KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match task["data"]["status"].as_str() {
            Some("success") => break,
            Some("failed") => panic!("install failed: {task}"),
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "{task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The install task saw the plugin start again.
    assert_eq!(runtime.starts(), 2);
    app.state.registry.shutdown_all().await;
}
