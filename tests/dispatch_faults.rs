//! Faults on the dispatch path with real plugin processes: a plugin killed
//! mid-stream, a plugin that never heartbeats, a session past its time
//! limit, a client that goes away, and a daemon restart.

mod common;
mod dispatch_common;

use std::time::{Duration, Instant};

use common::error_body;
use dispatch_common::*;
use plugind::runtime::PluginRuntime;
use serde_json::{json, Value};

const PLUGIN: &str = "plugind/echo_tool";

fn slow(count: u32, delay: f64) -> Value {
    json!({"user_id": "u1", "data": tool_data("slow", json!({"count": count, "delay": delay}))})
}

#[tokio::test]
async fn a_plugin_killed_mid_stream_gives_a_typed_error_and_comes_back() {
    let app = spawn_local(HostTimings::default()).await;
    let id = install_fixture(&app, "echo_tool").await;
    let local = app.state.local.clone().unwrap();
    let runtime = local.runtime(&id).unwrap();
    let pid = runtime.pid().unwrap();

    let mut r = post_dispatch(&app, "tool/invoke", Some(PLUGIN), &slow(20, 0.3)).await;
    let first = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert_eq!(envelopes(&first)[0]["data"]["message"]["text"], "chunk 0");

    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(1), r.text())
        .await
        .expect("the stream ends within a second of the kill")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    let env = envelopes(&rest);
    let last = env.last().unwrap();
    assert_eq!(last["code"], -500);
    let outer = error_body(last);
    assert_eq!(outer["error_type"], "PluginInvokeError");
    let inner: Value = serde_json::from_str(outer["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["error_type"], "PluginConnectionClosedError");

    // The supervisor restarts the plugin; the next call waits for it.
    let (_, _, env) = dispatch(
        &app,
        "tool/invoke",
        PLUGIN,
        tool_data("echo", json!({"text": "again"})),
    )
    .await;
    assert_eq!(data_of(&env)[0]["message"]["text"], "again");
    assert_ne!(runtime.pid(), Some(pid));
    let metrics = plugind::metrics::render();
    assert!(
        metrics.contains(&format!(
            r#"plugind_plugin_restarts_total{{plugin="{id}"}}"#
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_plugin_that_never_heartbeats_fails_its_install_task() {
    let app = spawn_local(HostTimings {
        heartbeat_timeout: Duration::from_secs(3),
        ..HostTimings::default()
    })
    .await;
    let files: Vec<_> = fixture_files("echo_tool")
        .into_iter()
        .map(|(name, data)| match name.as_str() {
            "manifest.yaml" => (
                name,
                String::from_utf8(data)
                    .unwrap()
                    .replace("name: echo_tool", "name: mute_tool")
                    .into_bytes(),
            ),
            // Starts, prints nothing and never heartbeats.
            "main.py" => (name, b"import time\ntime.sleep(3600)\n".to_vec()),
            _ => (name, data),
        })
        .collect();
    let (id, task) = install(&app, zip_files(&files)).await;
    assert_eq!(task["status"], "failed", "{task}");
    let message = task["plugins"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("did not start") && message.contains("no heartbeat within 3 s"),
        "{message}"
    );
    assert!(app.state.registry.get(&id).is_none());
    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    assert_eq!(list["data"]["total"], 0, "{list}");
}

#[tokio::test]
async fn a_session_past_the_time_limit_is_killed_by_timeout() {
    let app = spawn_local(HostTimings {
        max_execution_timeout: Duration::from_secs(2),
        ..HostTimings::default()
    })
    .await;
    let id = install_fixture(&app, "echo_tool").await;
    let r = post_dispatch(&app, "tool/invoke", Some(PLUGIN), &slow(10, 0.5)).await;
    assert_eq!(r.status(), 200);
    let env = envelopes(&r.text().await.unwrap());
    let last = env.last().unwrap();
    assert_eq!(last["code"], -500);
    let body = error_body(last);
    assert_eq!(body["error_type"], "PluginDaemonInternalServerError");
    assert_eq!(body["message"], "killed by timeout");
    // The chunks sent before the limit came through.
    assert!(env.len() >= 3, "{env:?}");
    assert_eq!(env[0]["data"]["message"]["text"], "chunk 0");
    let runtime = app.state.local.as_ref().unwrap().runtime(&id).unwrap();
    assert_eq!(runtime.open_sessions(), 0);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_session() {
    let app = spawn_local(HostTimings::default()).await;
    let id = install_fixture(&app, "echo_tool").await;
    let runtime = app.state.local.as_ref().unwrap().runtime(&id).unwrap();

    let mut r = post_dispatch(&app, "tool/invoke", Some(PLUGIN), &slow(50, 0.2)).await;
    let _first = r.chunk().await.unwrap().unwrap();
    assert_eq!(runtime.open_sessions(), 1);
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(5);
    while runtime.open_sessions() != 0 {
        assert!(
            Instant::now() < deadline,
            "session still open after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The plugin keeps serving other sessions.
    let (_, _, env) = dispatch(
        &app,
        "tool/invoke",
        PLUGIN,
        tool_data("echo", json!({"text": "still here"})),
    )
    .await;
    assert_eq!(data_of(&env)[0]["message"]["text"], "still here");
}

#[tokio::test]
async fn a_restarted_daemon_relaunches_installed_plugins() {
    let app = spawn_local(HostTimings::default()).await;
    let id = install_fixture(&app, "echo_tool").await;
    let (_, _, env) = dispatch(
        &app,
        "tool/invoke",
        PLUGIN,
        tool_data("echo", json!({"text": "one"})),
    )
    .await;
    assert_eq!(data_of(&env)[0]["message"]["text"], "one");
    let old_pid = app
        .state
        .local
        .as_ref()
        .unwrap()
        .runtime(&id)
        .unwrap()
        .pid();

    // Stop the first daemon's plugins, keep its folder and database.
    app.state.registry.shutdown_all().await;
    assert!(app.state.registry.get(&id).is_none());
    let common::TestApp {
        dir, database_url, ..
    } = app;

    let again = serve_local(dir, database_url, HostTimings::default()).await;
    let runtime = again.state.registry.get(&id).expect("relaunched");
    assert_eq!(runtime.state(), plugind::runtime::RuntimeState::Ready);
    assert_ne!(
        again
            .state
            .local
            .as_ref()
            .unwrap()
            .runtime(&id)
            .unwrap()
            .pid(),
        old_pid
    );
    let (_, _, env) = dispatch(
        &again,
        "tool/invoke",
        PLUGIN,
        tool_data("echo", json!({"text": "two"})),
    )
    .await;
    assert_eq!(data_of(&env)[0]["message"]["text"], "two");
}

#[tokio::test]
async fn uninstalling_the_last_installation_stops_the_plugin() {
    let app = spawn_local(HostTimings::default()).await;
    let id = install_fixture(&app, "echo_tool").await;
    let local = app.state.local.clone().unwrap();
    let runtime = local.runtime(&id).unwrap();
    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    let installation_id = list["data"]["list"][0]["installation_id"]
        .as_str()
        .or_else(|| list["data"]["list"][0]["id"].as_str())
        .unwrap()
        .to_owned();
    let (_, done) = app
        .post(
            "uninstall",
            json!({"plugin_installation_id": installation_id}),
        )
        .await;
    assert_eq!(done["code"], 0, "{done}");
    assert!(app.state.registry.get(&id).is_none());
    assert_eq!(runtime.state(), plugind::runtime::RuntimeState::Stopped);
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
async fn an_oversize_line_restarts_that_plugin_and_others_carry_on() {
    let app = spawn_local(HostTimings::default()).await;
    let extras = install_fixture(&app, "echo_extras").await;
    install_fixture(&app, "echo_tool").await;
    let local = app.state.local.clone().unwrap();
    let runtime = local.runtime(&extras).unwrap();
    let pid = runtime.pid().unwrap();

    // The other plugin is mid-stream while the oversize line arrives.
    let other = post_dispatch(&app, "tool/invoke", Some(PLUGIN), &slow(4, 0.3)).await;
    assert_eq!(other.status(), 200);

    // One text message longer than the 5 MiB cap.
    let big = json!({
        "provider": "echo_extras",
        "tool": "big",
        "credentials": {},
        "credential_type": "api-key",
        "tool_parameters": {"size": 6 * 1024 * 1024},
    });
    let (status, _, env) = dispatch(&app, "tool/invoke", "plugind/echo_extras", big).await;
    assert_eq!(status, 200);
    assert_eq!(env.len(), 1, "nothing of the oversize message came through");
    assert_eq!(env[0]["code"], -500);
    let outer = error_body(&env[0]);
    assert_eq!(outer["error_type"], "PluginInvokeError");
    let inner: Value = serde_json::from_str(outer["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["error_type"], "PluginConnectionClosedError");

    // The other plugin's stream completes untouched.
    let rest = envelopes(&other.text().await.unwrap());
    let texts: Vec<_> = data_of(&rest)
        .iter()
        .map(|d| d["message"]["text"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![
            json!("chunk 0"),
            json!("chunk 1"),
            json!("chunk 2"),
            json!("chunk 3")
        ]
    );

    // The instance was replaced; the next call to it succeeds.
    let small = json!({
        "provider": "echo_extras",
        "tool": "big",
        "credentials": {},
        "credential_type": "api-key",
        "tool_parameters": {"size": 3},
    });
    let (_, _, env) = dispatch(&app, "tool/invoke", "plugind/echo_extras", small).await;
    assert_eq!(data_of(&env)[0]["message"]["text"], "xxx");
    assert_ne!(runtime.pid(), Some(pid));
    let metrics = plugind::metrics::render();
    assert!(
        metrics.contains(&format!(
            r#"plugind_plugin_restarts_total{{plugin="{extras}"}}"#
        )),
        "{metrics}"
    );
    // The daemon serves the other plugin as before.
    let (_, _, env) = dispatch(
        &app,
        "tool/invoke",
        PLUGIN,
        tool_data("echo", json!({"text": "after"})),
    )
    .await;
    assert_eq!(data_of(&env)[0]["message"]["text"], "after");
}

#[tokio::test]
async fn two_hundred_concurrent_sessions_each_get_their_own_answer() {
    const SESSIONS: usize = 200;
    let app = spawn_local(HostTimings::default()).await;
    let id = install_fixture(&app, "echo_tool").await;
    let runtime = app.state.local.as_ref().unwrap().runtime(&id).unwrap();
    let pid = runtime.pid();
    let app = std::sync::Arc::new(app);

    // Half the calls echo text, half answer JSON, each with its own input,
    // all in flight at once over separate connections.
    let calls = (0..SESSIONS).map(|i| {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            let text = format!("caller-{i}-{}", "z".repeat(i % 17));
            let tool = if i % 2 == 0 { "echo" } else { "json" };
            let (status, _, env) = dispatch(
                &app,
                "tool/invoke",
                PLUGIN,
                tool_data(tool, json!({"text": text})),
            )
            .await;
            (i, text, tool, status, env)
        })
    });
    let answers = futures::future::join_all(calls).await;
    assert_eq!(answers.len(), SESSIONS);
    for answer in answers {
        let (i, text, tool, status, env) = answer.unwrap();
        assert_eq!(status, 200, "caller {i}");
        let data = data_of(&env);
        assert_eq!(data.len(), 1, "caller {i}: {data:?}");
        let expected = if tool == "echo" {
            json!({"type": "text", "message": {"text": text}, "meta": null})
        } else {
            json!({"type": "json",
                   "message": {"json_object": {"echo": text, "length": text.chars().count()}},
                   "meta": null})
        };
        assert_eq!(data[0], expected, "caller {i}");
    }
    assert_eq!(runtime.open_sessions(), 0);
    assert_eq!(runtime.pid(), pid, "served by one process, no restart");
}
