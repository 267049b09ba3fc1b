//! The debug runtime end to end: the key route, the TCP listener with a
//! real `dify_plugin` plugin (tests/fixtures/echo_tool, INSTALL_METHOD=remote)
//! and with hand-written clients for the refusals, each checked against a
//! registered connection that must keep working.
//!
//! The real plugin runs under the tools venv's Python (TOOLS_PYTHON, written
//! by `scripts/setup-python.sh`).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use plugind::app_state::AppState;
use plugind::debug::{DebugOptions, DebugServer};
use plugind::runtime::{PluginRuntime, RuntimeError, SessionItem, SessionRequest, SessionStream};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use common::{TestApp, KEY, TENANT};

const OTHER_TENANT: &str = "5b3c1c2e-2222-4a4a-9c9c-000000000002";

struct Harness {
    app: TestApp,
    server: DebugServer,
}

fn quick_options() -> DebugOptions {
    DebugOptions {
        handshake_timeout: Duration::from_millis(500),
        registration_timeout: Duration::from_secs(30),
        heartbeat_timeout: Duration::from_secs(60),
        max_execution_timeout: Duration::from_secs(60),
        ..DebugOptions::default()
    }
}

async fn start(options: DebugOptions) -> Harness {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "plugind=info".into()))
        .with_test_writer()
        .try_init();
    let app = common::spawn_app().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = DebugServer::start(app.state.clone(), listener, options)
        .await
        .unwrap();
    Harness { app, server }
}

impl Harness {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    async fn key(&self, tenant: &str) -> String {
        let r = self
            .app
            .client
            .post(format!("{}/plugin/{tenant}/debugging/key", self.app.base))
            .header("X-Api-Key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], 0, "{body}");
        body["data"]["key"].as_str().unwrap().to_owned()
    }

    /// The tenant's installations as the management list shows them.
    async fn list(&self, tenant: &str) -> Vec<Value> {
        // The list reads installations and declarations one after the
        // other, so an uninstall landing in between fails one listing;
        // asking again sees the settled state.
        let mut last = Value::Null;
        for _ in 0..5 {
            match self.try_list(tenant).await {
                Ok(list) => return list,
                Err(body) => last = body,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("listing keeps failing: {last}");
    }

    async fn try_list(&self, tenant: &str) -> Result<Vec<Value>, Value> {
        let r = self
            .app
            .client
            .get(format!("{}/plugin/{tenant}/management/list", self.app.base))
            .header("X-Api-Key", KEY)
            .query(&[("page", "1"), ("page_size", "100")])
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        if body["code"] != 0 {
            return Err(body);
        }
        Ok(body["data"]["list"].as_array().unwrap().clone())
    }

    /// Waits until `plugin_id` is (or is no longer) listed for the tenant;
    /// returns its entry when present.
    async fn wait_listed(&self, tenant: &str, plugin_id: &str, present: bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self
                .list(tenant)
                .await
                .into_iter()
                .find(|p| p["plugin_id"] == plugin_id);
            if found.is_some() == present {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{plugin_id} still {} after 60 s",
                if present { "missing" } else { "listed" }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn runtime(&self, identifier: &str) -> std::sync::Arc<dyn PluginRuntime> {
        self.app
            .state
            .registry
            .get(identifier)
            .expect("runtime registered")
    }
}

impl Harness {
    /// `POST dispatch/tool/invoke` as Dify sends it; returns the HTTP
    /// status and the envelopes (each SSE `data:` line, or the one JSON
    /// body of a refusal).
    async fn dispatch_tool(
        &self,
        tenant: &str,
        plugin_id: &str,
        tool: &str,
        params: Value,
    ) -> (u16, Vec<Value>) {
        let r = self
            .app
            .client
            .post(format!(
                "{}/plugin/{tenant}/dispatch/tool/invoke",
                self.app.base
            ))
            .header("X-Api-Key", KEY)
            .header("X-Plugin-ID", plugin_id)
            .json(&json!({
                "user_id": "u1",
                "data": {
                    "provider": plugin_id.split('/').nth(1).unwrap(),
                    "tool": tool,
                    "tool_parameters": params,
                    "credentials": {"api_key": "k"},
                    "credential_type": "api-key",
                }
            }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        let envelopes = if body.starts_with("data: ") {
            body.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        } else {
            vec![serde_json::from_str(&body).unwrap()]
        };
        (status, envelopes)
    }
}

fn tool_request(tool: &str, params: Value) -> SessionRequest {
    let payload = json!({
        "provider": "echo_tool",
        "tool": tool,
        "tool_parameters": params,
        "credentials": {"api_key": "k"},
        "credential_type": "api-key",
    });
    SessionRequest::new(
        "tool",
        "invoke_tool",
        "u1",
        payload.as_object().unwrap().clone(),
    )
}

/// Every chunk of a session, or the error that ended it.
async fn collect(mut stream: SessionStream) -> Result<Vec<Value>, RuntimeError> {
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        match item? {
            SessionItem::Chunk(v) => out.push(v),
            SessionItem::Invoke(i) => panic!("unexpected backwards call {:?}", i.request),
        }
    }
    Ok(out)
}

fn texts(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .map(|c| c["message"]["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// ----- a real SDK plugin ---------------------------------------------------

fn tools_python() -> PathBuf {
    if let Some(p) = std::env::var_os("TOOLS_PYTHON") {
        return p.into();
    }
    let default = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/plugind/tools/venv/bin/python");
    assert!(
        default.exists(),
        "no Python with dify_plugin: run scripts/setup-python.sh and source its env file"
    );
    default
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Starts the echo_tool fixture as a debugging plugin of `addr`.
fn spawn_sdk_plugin(addr: SocketAddr, key: &str) -> Child {
    Command::new(tools_python())
        .args(["-m", "main"])
        .current_dir(fixture("echo_tool"))
        .env("INSTALL_METHOD", "remote")
        .env("REMOTE_INSTALL_URL", format!("127.0.0.1:{}", addr.port()))
        .env("REMOTE_INSTALL_KEY", key)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            if std::env::var_os("PLUGIND_TEST_PLUGIN_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            },
        )
        .kill_on_drop(true)
        .spawn()
        .expect("start the fixture plugin")
}

#[tokio::test]
async fn real_plugin_registers_answers_and_goes_away_when_killed() {
    let h = start(quick_options()).await;
    let key = h.key(TENANT).await;
    let mut plugin = spawn_sdk_plugin(h.addr(), &key);

    let entry = h
        .wait_listed(TENANT, "plugind/echo_tool", true)
        .await
        .unwrap();
    assert_eq!(entry["runtime_type"], "remote");
    assert_eq!(entry["source"], "remote");
    assert_eq!(entry["declaration"]["name"], "echo_tool");
    assert_eq!(
        entry["declaration"]["tool"]["identity"]["name"],
        "echo_tool"
    );
    let identifier = entry["plugin_unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        identifier.starts_with("plugind/echo_tool:0.0.1@"),
        "{identifier}"
    );
    // Only this tenant sees it.
    assert!(h.list(OTHER_TENANT).await.is_empty());

    // The icon became an asset the asset route serves.
    let icon = entry["declaration"]["icon"].as_str().unwrap();
    assert!(icon.ends_with(".svg") && icon.len() > 64, "{icon}");
    let r = h
        .app
        .client
        .get(format!("{}/plugin/{TENANT}/asset/{icon}", h.app.base))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served = r.bytes().await.unwrap();
    let on_disk = std::fs::read(fixture("echo_tool/_assets/icon.svg")).unwrap();
    assert_eq!(served.as_ref(), on_disk.as_slice());

    // A tool call through the runtime found in the registry.
    let runtime = h.runtime(&identifier);
    assert_eq!(runtime.identity(), identifier);
    let chunks = collect(
        runtime
            .invoke(tool_request("echo", json!({"text": "hi"})))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(texts(&chunks), ["hi"]);
    assert_eq!(chunks[0]["type"], "text");

    // The same through Dify's HTTP dispatch route.
    let (status, envelopes) = h
        .dispatch_tool(
            TENANT,
            "plugind/echo_tool",
            "echo",
            json!({"text": "over http"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(envelopes.len(), 1, "{envelopes:?}");
    assert_eq!(envelopes[0]["code"], 0);
    assert_eq!(envelopes[0]["data"]["message"]["text"], "over http");
    // Another tenant has no such installation.
    let (_, other) = h
        .dispatch_tool(
            OTHER_TENANT,
            "plugind/echo_tool",
            "echo",
            json!({"text": "x"}),
        )
        .await;
    assert_eq!(
        common::error_body(&other[0])["error_type"],
        "PluginNotFoundError"
    );

    // A plugin error stays the plugin's own.
    let err = collect(
        runtime
            .invoke(tool_request("fail", json!({"reason": "boom"})))
            .await
            .unwrap(),
    )
    .await
    .unwrap_err();
    match err {
        RuntimeError::Plugin(e) => {
            assert_eq!(e.error_type, "ValueError");
            assert_eq!(e.message, "boom");
        }
        other => panic!("expected the plugin's error, got {other:?}"),
    }

    // An in-flight call when the plugin dies gets the typed error.
    let mut slow = runtime
        .invoke(tool_request("slow", json!({"count": 100, "delay": 0.1})))
        .await
        .unwrap();
    match slow.next().await {
        Some(Ok(SessionItem::Chunk(c))) => assert_eq!(c["message"]["text"], "chunk 0"),
        other => panic!("expected a first chunk, got {other:?}"),
    }
    plugin.kill().await.unwrap();
    let err = loop {
        match slow.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the session ended without an error"),
        }
    };
    match &err {
        RuntimeError::Plugin(e) => {
            assert_eq!(e.error_type, "ConnectionClosedError");
            assert_eq!(e.message, "Connection closed unexpectedly");
        }
        other => panic!("expected ConnectionClosedError, got {other:?}"),
    }
    // As Dify sees it: a PluginInvokeError wrapping the closed connection.
    let daemon: plugind::error::DaemonError = err.into();
    assert_eq!(daemon.error_type(), "PluginInvokeError");
    let inner: Value = serde_json::from_str(&daemon.to_string()).unwrap();
    assert_eq!(inner["error_type"], "ConnectionClosedError");

    h.wait_listed(TENANT, "plugind/echo_tool", false).await;
    assert!(h.app.state.registry.get(&identifier).is_none());
    assert!(h
        .app
        .state
        .store
        .installation_by_plugin_id(TENANT, "plugind/echo_tool")
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        runtime
            .invoke(tool_request("echo", json!({"text": "late"})))
            .await,
        Err(RuntimeError::Unavailable(_))
    ));
    let (_, gone) = h
        .dispatch_tool(TENANT, "plugind/echo_tool", "echo", json!({"text": "late"}))
        .await;
    assert_eq!(
        common::error_body(&gone[0])["error_type"],
        "PluginNotFoundError"
    );

    // Restarted, it registers again under the same identifier and answers.
    let _plugin = spawn_sdk_plugin(h.addr(), &key);
    let entry = h
        .wait_listed(TENANT, "plugind/echo_tool", true)
        .await
        .unwrap();
    assert_eq!(entry["plugin_unique_identifier"], identifier.as_str());
    let chunks = collect(
        h.runtime(&identifier)
            .invoke(tool_request("json", json!({"text": "again"})))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        chunks[0]["message"]["json_object"],
        json!({"echo": "again", "length": 5})
    );
    h.server.shutdown().await;
    assert!(h.list(TENANT).await.is_empty());
}

// ----- a hand-written plugin ------------------------------------------------

const ICON: &[u8] = b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>";

fn line(v: Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(&v).unwrap();
    b.extend_from_slice(b"\n\n");
    b
}

fn manifest(name: &str) -> Value {
    json!({
        "version": "0.0.1", "type": "plugin", "author": "plugind", "name": name,
        "description": {"en_US": "fake"}, "label": {"en_US": name}, "icon": "icon.svg",
        "icon_dark": null, "created_at": "2025-01-01T00:00:00Z",
        "resource": {"memory": 1048576, "permission": {}},
        "plugins": {"tools": [format!("provider/{name}.yaml")]},
        "meta": {"version": "0.0.1", "arch": ["amd64"], "runner": {"language": "python", "version": "3.12", "entrypoint": "main"}}
    })
}

/// The registration lines of a tool plugin `plugind/<name>`, after the handshake.
fn registration(name: &str) -> Vec<u8> {
    let mut out = line(json!({"type": "manifest_declaration", "data": manifest(name)}));
    out.extend(line(json!({"type": "tool_declaration", "data": [{
        "identity": {"author": "plugind", "name": name, "label": {"en_US": name}, "icon": "icon.svg"},
        "tools": []
    }]})));
    out.extend(line(json!({"type": "asset_chunk", "data": {
        "filename": "icon.svg",
        "data": base64::engine::general_purpose::STANDARD.encode(ICON),
        "end": true
    }})));
    out.extend(line(json!({"type": "end", "data": {}})));
    out
}

fn handshake(key: &str) -> Vec<u8> {
    line(json!({"type": "handshake", "data": {"key": key}}))
}

/// A plugin written by hand: it registers, heartbeats (unless told not to)
/// and answers every tool request with its `text` parameter.
struct FakePlugin {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePlugin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_plugin(addr: SocketAddr, key: &str, name: &str, heartbeat: bool) -> FakePlugin {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&handshake(key)).await.unwrap();
    stream.write_all(&registration(name)).await.unwrap();
    let task = tokio::spawn(async move {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read).lines();
        let mut beat = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = beat.tick(), if heartbeat => {
                    let hb = line(json!({"event": "heartbeat", "session_id": null, "data": {}}));
                    if write.write_all(&hb).await.is_err() { return; }
                }
                l = reader.next_line() => {
                    let Ok(Some(l)) = l else { return };
                    let Ok(req) = serde_json::from_str::<Value>(&l) else { continue };
                    if req["event"] != "request" { continue; }
                    let sid = req["session_id"].clone();
                    let text = req["data"]["tool_parameters"]["text"].clone();
                    let mut out = line(json!({"event": "session", "session_id": sid, "data": {
                        "type": "stream", "data": {"type": "text", "message": {"text": text}, "meta": null}}}));
                    out.extend(line(json!({"event": "session", "session_id": sid, "data": {"type": "end", "data": {}}})));
                    if write.write_all(&out).await.is_err() { return; }
                }
            }
        }
    });
    FakePlugin { task }
}

/// Registers a hand-written plugin and returns it with its identifier.
async fn registered_fake(h: &Harness, tenant: &str, name: &str) -> (FakePlugin, String) {
    let key = h.key(tenant).await;
    let fake = fake_plugin(h.addr(), &key, name, true).await;
    let entry = h
        .wait_listed(tenant, &format!("plugind/{name}"), true)
        .await
        .unwrap();
    let id = entry["plugin_unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    (fake, id)
}

/// The registered plugin still answers.
async fn still_answers(h: &Harness, identifier: &str) {
    let chunks = collect(
        h.runtime(identifier)
            .invoke(tool_request("echo", json!({"text": "alive"})))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(texts(&chunks), ["alive"]);
}

/// Sends `bytes`, then reads until the daemon closes; returns what it wrote.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the daemon closes the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn key_route_gives_one_stable_key_per_tenant_that_survives_a_restart() {
    let h = start(quick_options()).await;
    let a = h.key(TENANT).await;
    assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
    assert_eq!(h.key(TENANT).await, a);
    let b = h.key(OTHER_TENANT).await;
    assert_ne!(a, b);
    // Without the server key: refused.
    let r = h
        .app
        .client
        .post(format!("{}/plugin/{TENANT}/debugging/key", h.app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A second daemon over the same database hands out the same key.
    let settings = common::settings(h.app.dir.path(), &h.app.database_url, &[]);
    let again = AppState::build(settings).await.unwrap();
    assert_eq!(
        again
            .store
            .debugging_key(TENANT, plugind::debug::KEY_TTL)
            .await
            .unwrap(),
        a
    );
}

#[tokio::test]
async fn key_route_is_absent_when_remote_installing_is_disabled() {
    let app = common::spawn_app_with(
        &["--plugin-remote-installing-enabled", "false"],
        std::sync::Arc::new(plugind::install::NoopInstallStep),
    )
    .await;
    let r = app
        .client
        .post(format!("{}/plugin/{TENANT}/debugging/key", app.base))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn keys_expire_when_unused_and_are_refreshed_by_use() {
    let (store, _dir) = common::fresh_store().await;
    let ttl = Duration::from_millis(300);
    let k = store.debugging_key(TENANT, ttl).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Use pushes the expiry out again.
    assert_eq!(
        store
            .debugging_key_tenant(&k, ttl)
            .await
            .unwrap()
            .as_deref(),
        Some(TENANT)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.debugging_key(TENANT, ttl).await.unwrap(), k);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.debugging_key_tenant(&k, ttl).await.unwrap(), None);
    let fresh = store.debugging_key(TENANT, ttl).await.unwrap();
    assert_ne!(fresh, k);
}

#[tokio::test]
async fn wrong_key_gets_the_reference_text_and_others_carry_on() {
    let h = start(quick_options()).await;
    let (_fake, id) = registered_fake(&h, TENANT, "fake_a").await;
    let mut bytes = handshake("00000000-0000-4000-8000-000000000000");
    bytes.extend(registration("fake_b"));
    assert_eq!(
        exchange(h.addr(), &bytes).await,
        "handshake failed, invalid key\n"
    );
    still_answers(&h, &id).await;
    assert_eq!(h.list(TENANT).await.len(), 1);
}

#[tokio::test]
async fn no_handshake_within_the_timeout_closes_the_connection() {
    let h = start(quick_options()).await;
    let (_fake, id) = registered_fake(&h, TENANT, "fake_a").await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(h.addr()).await.unwrap();
    assert_eq!(read_to_close(&mut silent).await, "");
    assert!(started.elapsed() >= Duration::from_millis(400));
    still_answers(&h, &id).await;
}

#[tokio::test]
async fn garbage_and_oversize_lines_are_refused_without_harm() {
    let h = start(DebugOptions {
        max_line: 64 * 1024,
        ..quick_options()
    })
    .await;
    let (_fake, id) = registered_fake(&h, TENANT, "fake_a").await;
    assert_eq!(
        exchange(h.addr(), b"GET / HTTP/1.1\r\n\r\n").await,
        "handshake failed, invalid handshake message\n"
    );
    assert_eq!(
        exchange(h.addr(), &line(json!({"type": "end", "data": {}}))).await,
        "handshake failed, invalid handshake message\n"
    );
    let key = h.key(TENANT).await;
    let mut oversize = handshake(&key);
    oversize.extend(std::iter::repeat_n(b'x', 100 * 1024));
    oversize.push(b'\n');
    assert_eq!(
        exchange(h.addr(), &oversize).await,
        "registration failed, line too long\n"
    );
    still_answers(&h, &id).await;
}

#[tokio::test]
async fn oversize_and_garbage_lines_from_a_registered_plugin_are_dropped() {
    let h = start(DebugOptions {
        max_line: 64 * 1024,
        ..quick_options()
    })
    .await;
    let key = h.key(TENANT).await;
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    stream.write_all(&handshake(&key)).await.unwrap();
    stream.write_all(&registration("raw")).await.unwrap();
    let entry = h.wait_listed(TENANT, "plugind/raw", true).await.unwrap();
    let id = entry["plugin_unique_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut junk: Vec<u8> = std::iter::repeat_n(b'y', 200 * 1024).collect();
    junk.extend(b"\nnot json at all\n{\"event\":\"session\"}\n");
    stream.write_all(&junk).await.unwrap();
    // Still registered and serving: answer one request by hand.
    let stream_call = h
        .runtime(&id)
        .invoke(tool_request("echo", json!({"text": "x"})))
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).lines();
    let req: Value = serde_json::from_str(&reader.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(req["event"], "request");
    assert_eq!(req["data"]["action"], "invoke_tool");
    let sid = req["session_id"].clone();
    write
        .write_all(&line(json!({"event": "session", "session_id": sid,
            "data": {"type": "stream", "data": {"type": "text", "message": {"text": "by hand"}}}})))
        .await
        .unwrap();
    write
        .write_all(&line(json!({"event": "session", "session_id": sid,
            "data": {"type": "end", "data": {}}})))
        .await
        .unwrap();
    assert_eq!(texts(&collect(stream_call).await.unwrap()), ["by hand"]);
}

#[tokio::test]
async fn registration_without_any_declaration_is_refused() {
    let h = start(quick_options()).await;
    let (_fake, id) = registered_fake(&h, TENANT, "fake_a").await;
    let key = h.key(TENANT).await;
    let mut bytes = handshake(&key);
    bytes.extend(line(
        json!({"type": "manifest_declaration", "data": manifest("empty")}),
    ));
    bytes.extend(line(json!({"type": "end", "data": {}})));
    assert_eq!(
        exchange(h.addr(), &bytes).await,
        "no registration transferred, cannot initialize\n"
    );
    // An icon without its file is refused too, and leaves nothing behind.
    let mut bytes = handshake(&key);
    let full = registration("no_icon");
    let text = String::from_utf8(full).unwrap();
    let without_asset: String = text
        .split("\n\n")
        .filter(|l| !l.contains("asset_chunk"))
        .map(|l| format!("{l}\n\n"))
        .collect();
    bytes.extend(without_asset.into_bytes());
    let reply = exchange(h.addr(), &bytes).await;
    assert!(
        reply.starts_with(
            "assets remap failed, invalid assets data, cannot remap: file not found: icon.svg"
        ),
        "{reply}"
    );
    let listed: Vec<Value> = h.list(TENANT).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    still_answers(&h, &id).await;
}

#[tokio::test]
async fn too_many_connections_for_one_tenant_are_refused() {
    let h = start(DebugOptions {
        max_tenant_conn: 1,
        ..quick_options()
    })
    .await;
    let (_fake, id) = registered_fake(&h, TENANT, "fake_a").await;
    let key = h.key(TENANT).await;
    let mut bytes = handshake(&key);
    bytes.extend(registration("fake_b"));
    let reply = exchange(h.addr(), &bytes).await;
    assert!(
        reply.starts_with("too many debugging connections for this workspace"),
        "{reply}"
    );
    // Another tenant is not affected.
    let (_other, other_id) = registered_fake(&h, OTHER_TENANT, "fake_b").await;
    still_answers(&h, &id).await;
    still_answers(&h, &other_id).await;
}

#[tokio::test]
async fn too_many_connections_in_total_are_refused() {
    let h = start(DebugOptions {
        max_conn: 1,
        ..quick_options()
    })
    .await;
    let (fake, id) = registered_fake(&h, TENANT, "fake_a").await;
    let key = h.key(OTHER_TENANT).await;
    let mut bytes = handshake(&key);
    bytes.extend(registration("fake_b"));
    assert_eq!(
        exchange(h.addr(), &bytes).await,
        "server is busy now, please try again later\n"
    );
    still_answers(&h, &id).await;
    // Once the first goes, the slot is free again.
    drop(fake);
    h.wait_listed(TENANT, "plugind/fake_a", false).await;
    let (_b, b_id) = registered_fake(&h, OTHER_TENANT, "fake_b").await;
    still_answers(&h, &b_id).await;
}

#[tokio::test]
async fn a_silent_plugin_is_closed_after_the_heartbeat_timeout() {
    let h = start(DebugOptions {
        heartbeat_timeout: Duration::from_millis(600),
        ..quick_options()
    })
    .await;
    let key = h.key(TENANT).await;
    let (_alive, id) = registered_fake(&h, TENANT, "beating").await;
    let _silent = fake_plugin(h.addr(), &key, "silent", false).await;
    h.wait_listed(TENANT, "plugind/silent", true).await;
    h.wait_listed(TENANT, "plugind/silent", false).await;
    // The heartbeating one stays.
    tokio::time::sleep(Duration::from_millis(800)).await;
    still_answers(&h, &id).await;
}

#[tokio::test]
async fn a_reconnecting_plugin_replaces_its_earlier_connection() {
    let h = start(quick_options()).await;
    let (first, id) = registered_fake(&h, TENANT, "fake_a").await;
    let first_runtime = h.runtime(&id);
    // The same plugin connects again before the first connection is gone.
    let key = h.key(TENANT).await;
    let _second = fake_plugin(h.addr(), &key, "fake_a", true).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let current = h.app.state.registry.get(&id);
        let replaced = current.is_some_and(|c| {
            !std::ptr::addr_eq(
                std::sync::Arc::as_ptr(&c),
                std::sync::Arc::as_ptr(&first_runtime),
            )
        });
        if replaced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first connection was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(first_runtime.state(), plugind::runtime::RuntimeState::Ready);
    let entry = h.wait_listed(TENANT, "plugind/fake_a", true).await.unwrap();
    assert_eq!(entry["plugin_unique_identifier"], id.as_str());
    drop(first);
    still_answers(&h, &id).await;
    assert_eq!(h.list(TENANT).await.len(), 1);
}

#[tokio::test]
async fn a_dispatch_in_flight_when_the_plugin_disconnects_ends_with_the_typed_error() {
    let h = start(quick_options()).await;
    let key = h.key(TENANT).await;
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    stream.write_all(&handshake(&key)).await.unwrap();
    stream.write_all(&registration("mute")).await.unwrap();
    h.wait_listed(TENANT, "plugind/mute", true).await;
    let call = {
        let base = h.app.base.clone();
        let client = h.app.client.clone();
        tokio::spawn(async move {
            let r = client
                .post(format!("{base}/plugin/{TENANT}/dispatch/tool/invoke"))
                .header("X-Api-Key", KEY)
                .header("X-Plugin-ID", "plugind/mute")
                .json(&json!({"user_id": "u1", "data": {"provider": "mute", "tool": "t", "tool_parameters": {}}}))
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        })
    };
    // The request reaches the plugin, which then goes away without answering.
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read).lines();
    let req: Value = serde_json::from_str(&reader.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(req["data"]["tool"], "t");
    drop(reader);
    drop(write);
    let body = call.await.unwrap();
    let last: Value = serde_json::from_str(
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["code"], -500);
    let err = common::error_body(&last);
    assert_eq!(err["error_type"], "PluginInvokeError");
    let inner: Value = serde_json::from_str(err["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["error_type"], "ConnectionClosedError");
    assert_eq!(inner["message"], "Connection closed unexpectedly");
    h.wait_listed(TENANT, "plugind/mute", false).await;
}
