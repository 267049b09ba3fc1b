//! `dispatch::invoke` against an in-memory runtime that speaks the session
//! protocol: installation lookup, chunk pass-through, backwards calls served
//! in-session (plugin storage over the database), errors and cancellation;
//! and the dispatch routes over HTTP on the same runtime: the body limit and
//! the polling routes' one-envelope answers.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{spawn_app, TestApp, TENANT};
use futures::StreamExt;
use plugind::dispatch::{self, InvokeRequest};
use plugind::error::DaemonError;
use plugind::runtime::protocol::SessionMessage;
use plugind::runtime::{
    BackwardsRequest, PluginError, PluginRuntime, RuntimeError, RuntimeState, SessionHeader,
    SessionRequest, SessionStream, SessionTable,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};

/// A runtime whose "plugin" is the test: requests arrive on a channel, the
/// test routes answers into the session table and reads what the daemon
/// writes back.
struct FakeRuntime {
    identity: String,
    table: Arc<SessionTable>,
    writer: mpsc::Sender<Bytes>,
    requests: mpsc::Sender<SessionRequest>,
}

#[async_trait::async_trait]
impl PluginRuntime for FakeRuntime {
    fn identity(&self) -> &str {
        &self.identity
    }
    fn state(&self) -> RuntimeState {
        RuntimeState::Ready
    }
    async fn wait_ready(&self, _: Duration) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn invoke(&self, request: SessionRequest) -> Result<SessionStream, RuntimeError> {
        let timeout = request.timeout.unwrap_or(Duration::from_secs(30));
        let stream = self
            .table
            .open(request.header.clone(), self.writer.clone(), timeout)?;
        self.requests
            .send(request)
            .await
            .map_err(|_| RuntimeError::ConnectionClosed)?;
        Ok(stream)
    }
    async fn shutdown(&self) {}
}

struct Plugin {
    table: Arc<SessionTable>,
    requests: Mutex<mpsc::Receiver<SessionRequest>>,
    written: Mutex<mpsc::Receiver<Bytes>>,
}

impl Plugin {
    async fn request(&self) -> SessionRequest {
        tokio::time::timeout(Duration::from_secs(5), self.requests.lock().await.recv())
            .await
            .expect("a request reaches the plugin")
            .unwrap()
    }
    async fn written(&self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(5), self.written.lock().await.recv())
            .await
            .expect("the daemon writes to the plugin")
            .unwrap();
        serde_json::from_slice(&line).unwrap()
    }
}

/// The common tool package with storage permission (1 KiB).
fn storage_package() -> Vec<u8> {
    let original = common::tool_package("kv", "0.0.1");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(original)).unwrap();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut data = Vec::new();
        file.read_to_end(&mut data).unwrap();
        if file.name() == "manifest.yaml" {
            data = String::from_utf8(data)
                .unwrap()
                .replace(
                    "  permission: {}",
                    "  permission:\n    storage:\n      enabled: true\n      size: 1024",
                )
                .into_bytes();
        }
        w.start_file(file.name(), zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(&data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

async fn setup() -> (TestApp, Plugin) {
    let app = spawn_app().await;
    let (identifier, task) = app.install(storage_package()).await;
    assert_eq!(task["status"], "success", "{task}");
    let table = SessionTable::new();
    let (writer, written) = mpsc::channel(64);
    let (requests_tx, requests) = mpsc::channel(8);
    app.state.registry.insert(
        identifier.clone(),
        Arc::new(FakeRuntime {
            identity: identifier,
            table: table.clone(),
            writer,
            requests: requests_tx,
        }),
    );
    (
        app,
        Plugin {
            table,
            requests: Mutex::new(requests),
            written: Mutex::new(written),
        },
    )
}

fn request(plugin_id: &str) -> InvokeRequest {
    let Value::Object(payload) =
        json!({"provider": "kv", "tool": "echo", "tool_parameters": {"text": "hi"}})
    else {
        unreachable!()
    };
    InvokeRequest {
        tenant_id: TENANT.into(),
        plugin_id: plugin_id.into(),
        access_type: "tool".into(),
        action: "invoke_tool".into(),
        user_id: "u1".into(),
        header: SessionHeader {
            app_id: Some("app-1".into()),
            ..Default::default()
        },
        payload,
        timeout: None,
    }
}

#[tokio::test]
async fn an_uninstalled_plugin_is_not_found() {
    let (app, _plugin) = setup().await;
    let err = dispatch::invoke(&app.state, request("langgenius/other"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, DaemonError::PluginNotFound), "{err:?}");
    let mut other_tenant = request("langgenius/kv");
    other_tenant.tenant_id = "someone-else".into();
    let err = dispatch::invoke(&app.state, other_tenant)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, DaemonError::PluginNotFound), "{err:?}");
}

#[tokio::test]
async fn chunks_pass_through_and_the_stream_ends_with_the_session() {
    let (app, plugin) = setup().await;
    let mut stream = dispatch::invoke(&app.state, request("langgenius/kv"))
        .await
        .unwrap();
    let req = plugin.request().await;
    assert_eq!(req.access_type, "tool");
    assert_eq!(req.action, "invoke_tool");
    assert_eq!(req.user_id, "u1");
    assert_eq!(req.header.app_id.as_deref(), Some("app-1"));
    assert!(!req.header.session_id.is_empty());
    assert_eq!(req.payload["tool_parameters"], json!({"text": "hi"}));
    let sid = req.header.session_id.clone();
    let chunk = json!({"type": "text", "message": {"text": "hi"}, "meta": null});
    assert!(
        plugin
            .table
            .route(&sid, SessionMessage::Stream(chunk.clone()))
            .await
    );
    assert!(plugin.table.route(&sid, SessionMessage::End).await);
    assert_eq!(stream.next().await.unwrap().unwrap(), chunk);
    assert!(stream.next().await.is_none());
    assert!(plugin.table.is_empty());
}

#[tokio::test]
async fn plugin_errors_become_plugin_invoke_errors() {
    let (app, plugin) = setup().await;
    let mut stream = dispatch::invoke(&app.state, request("langgenius/kv"))
        .await
        .unwrap();
    let sid = plugin.request().await.header.session_id;
    plugin
        .table
        .route(
            &sid,
            SessionMessage::Error(PluginError {
                message: "boom".into(),
                error_type: "ValueError".into(),
                args: Some(json!({})),
            }),
        )
        .await;
    match stream.next().await {
        Some(Err(DaemonError::PluginInvoke(text))) => {
            let inner: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                inner,
                json!({"message": "boom", "error_type": "ValueError", "args": {}})
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_session_past_its_timeout_is_killed_by_timeout() {
    let (app, plugin) = setup().await;
    let mut req = request("langgenius/kv");
    req.timeout = Some(Duration::from_millis(300));
    let mut stream = dispatch::invoke(&app.state, req).await.unwrap();
    let _ = plugin.request().await;
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.error_type(), "PluginDaemonInternalServerError");
    assert_eq!(err.to_string(), "killed by timeout");
    assert!(plugin.table.is_empty());
}

#[tokio::test]
async fn storage_calls_are_answered_in_session_from_the_database() {
    let (app, plugin) = setup().await;
    let mut stream = dispatch::invoke(&app.state, request("langgenius/kv"))
        .await
        .unwrap();
    let sid = plugin.request().await.header.session_id;
    let call = |id: &str, request: Value| {
        SessionMessage::Invoke(BackwardsRequest {
            kind: "storage".into(),
            backwards_request_id: id.into(),
            request,
        })
    };
    // The backwards call is served while the caller reads the stream.
    let reader = tokio::spawn(async move {
        let mut chunks = Vec::new();
        while let Some(item) = stream.next().await {
            chunks.push(item.unwrap());
        }
        chunks
    });
    plugin
        .table
        .route(
            &sid,
            call(
                "b1",
                json!({"opt": "set", "key": "k", "value": hex::encode(b"hello")}),
            ),
        )
        .await;
    let first = plugin.written().await;
    assert_eq!(first["session_id"], sid);
    assert_eq!(first["app_id"], "app-1");
    assert_eq!(first["event"], "backwards_response");
    assert_eq!(
        first["data"],
        json!({"backwards_request_id": "b1", "event": "response", "message": "struct", "data": {"data": "ok"}})
    );
    assert_eq!(plugin.written().await["data"]["event"], "end");
    assert_eq!(
        app.state
            .store
            .kv_get(TENANT, "langgenius/kv", "k")
            .await
            .unwrap(),
        Some(b"hello".to_vec())
    );

    // Past the manifest's 1 KiB the write is refused with an error event.
    plugin
        .table
        .route(
            &sid,
            call(
                "b2",
                json!({"opt": "set", "key": "big", "value": hex::encode([7u8; 2000])}),
            ),
        )
        .await;
    let refused = plugin.written().await;
    assert_eq!(refused["data"]["backwards_request_id"], "b2");
    assert_eq!(refused["data"]["event"], "error");
    assert!(
        refused["data"]["message"]
            .as_str()
            .unwrap()
            .contains("allocated size is greater than max storage size"),
        "{refused}"
    );
    assert_eq!(plugin.written().await["data"]["event"], "end");

    // A malformed call gets an error and an end too.
    plugin
        .table
        .route(&sid, call("b3", json!("not an object")))
        .await;
    let bad = plugin.written().await;
    assert_eq!(bad["data"]["event"], "error");
    assert_eq!(plugin.written().await["data"]["event"], "end");

    plugin
        .table
        .route(&sid, SessionMessage::Stream(json!({"n": 1})))
        .await;
    plugin.table.route(&sid, SessionMessage::End).await;
    assert_eq!(reader.await.unwrap(), vec![json!({"n": 1})]);
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_session() {
    let (app, plugin) = setup().await;
    let stream = dispatch::invoke(&app.state, request("langgenius/kv"))
        .await
        .unwrap();
    let sid = plugin.request().await.header.session_id;
    assert_eq!(plugin.table.len(), 1);
    drop(stream);
    assert!(plugin.table.is_empty());
    assert!(
        !plugin
            .table
            .route(&sid, SessionMessage::Stream(json!(1)))
            .await
    );
}

/// POSTs a dispatch route of the daemon for `langgenius/kv` with a raw body.
async fn post_route(app: &TestApp, route: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(format!("{}/plugin/{TENANT}/dispatch/{route}", app.base))
        .header("X-Api-Key", common::KEY)
        .header("X-Plugin-ID", "langgenius/kv")
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A tool invocation body of exactly `len` bytes, and the length of the
/// text parameter that pads it.
fn body_of_length(len: usize) -> (Vec<u8>, usize) {
    let with = |pad: usize| {
        serde_json::to_vec(
            &json!({"user_id": "u1", "data": {"provider": "kv", "tool": "echo",
            "tool_parameters": {"text": "x".repeat(pad)}}}),
        )
        .unwrap()
    };
    let pad = len - with(0).len();
    let body = with(pad);
    assert_eq!(body.len(), len);
    (body, pad)
}

#[tokio::test]
async fn a_dispatch_body_over_the_limit_is_refused_with_an_envelope() {
    let (app, plugin) = setup().await;
    let limit = plugind::api::dispatch::MAX_BODY;
    let r = post_route(&app, "tool/invoke", body_of_length(limit + 1).0).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], -400, "{body}");
    assert_eq!(body["data"], Value::Null);
    let error = common::error_body(&body);
    assert_eq!(error["error_type"], "PluginDaemonBadRequestError");
    assert_eq!(
        error["message"],
        format!("request body is larger than {limit} bytes")
    );
    assert!(plugin.table.is_empty());

    // A body of exactly the limit reaches the plugin.
    let (body, pad) = body_of_length(limit);
    let call = tokio::spawn({
        let app_base = app.base.clone();
        let client = app.client.clone();
        async move {
            client
                .post(format!("{app_base}/plugin/{TENANT}/dispatch/tool/invoke"))
                .header("X-Api-Key", common::KEY)
                .header("X-Plugin-ID", "langgenius/kv")
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    let req = plugin.request().await;
    assert_eq!(
        req.payload["tool_parameters"]["text"]
            .as_str()
            .unwrap()
            .len(),
        pad
    );
    plugin
        .table
        .route(&req.header.session_id, SessionMessage::End)
        .await;
    assert_eq!(call.await.unwrap(), "");
}

/// Starts a polling route call in the background; the daemon's answer is
/// its HTTP status, content type and JSON body.
fn start_polling_call(
    app: &TestApp,
    route: &'static str,
    data: Value,
) -> tokio::task::JoinHandle<(u16, String, Value)> {
    let url = format!("{}/plugin/{TENANT}/dispatch/{route}", app.base);
    let client = app.client.clone();
    tokio::spawn(async move {
        let r = client
            .post(url)
            .header("X-Api-Key", common::KEY)
            .header("X-Plugin-ID", "langgenius/kv")
            .json(&json!({"user_id": "u1", "app_id": "app-1", "data": data}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
        (status, ctype, r.json().await.unwrap())
    })
}

fn polling_data(extra: Value) -> Value {
    let mut data =
        json!({"provider": "kv", "model": "m", "model_type": "llm", "credentials": {"k": "v"}});
    data.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    data
}

#[tokio::test]
async fn polling_routes_send_model_actions_and_answer_the_last_result_as_one_envelope() {
    let (app, plugin) = setup().await;

    let call = start_polling_call(
        &app,
        "model/polling/start",
        polling_data(json!({"prompt_messages": [], "model_parameters": {}, "stream": false})),
    );
    let req = plugin.request().await;
    assert_eq!(
        (req.access_type.as_str(), req.action.as_str()),
        ("model", "start_polling")
    );
    assert_eq!(req.user_id, "u1");
    assert_eq!(req.header.app_id.as_deref(), Some("app-1"));
    assert_eq!(req.payload["model"], "m");
    assert_eq!(req.payload["stream"], false);
    let sid = req.header.session_id;
    // The reference keeps the last result the plugin sends.
    for chunk in [
        json!({"status": "running", "plugin_state": {"step": 0}}),
        json!({"status": "running", "plugin_state": {"step": 1}, "result": null, "error": null,
               "next_check_after_seconds": 5, "expires_after_seconds": null, "max_attempts": 3}),
    ] {
        plugin
            .table
            .route(&sid, SessionMessage::Stream(chunk))
            .await;
    }
    plugin.table.route(&sid, SessionMessage::End).await;
    let (status, ctype, body) = call.await.unwrap();
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    assert_eq!(
        body,
        json!({"code": 0, "message": "success", "data": {"status": "running",
               "plugin_state": {"step": 1}, "next_check_after_seconds": 5, "max_attempts": 3}})
    );

    let call = start_polling_call(
        &app,
        "model/polling/check",
        polling_data(json!({"plugin_state": {"step": 1}})),
    );
    let req = plugin.request().await;
    assert_eq!(
        (req.access_type.as_str(), req.action.as_str()),
        ("model", "check_polling")
    );
    assert_eq!(req.payload["plugin_state"], json!({"step": 1}));
    let result = json!({"model": "m", "message": {"role": "assistant", "content": "done"}});
    plugin
        .table
        .route(
            &req.header.session_id,
            SessionMessage::Stream(json!({"status": "succeeded", "result": result})),
        )
        .await;
    plugin
        .table
        .route(&req.header.session_id, SessionMessage::End)
        .await;
    let (status, _, body) = call.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        json!({"status": "succeeded", "result": result})
    );
}

#[tokio::test]
async fn polling_failures_keep_the_reference_status_and_name_what_failed() {
    let (app, plugin) = setup().await;
    let start = || {
        start_polling_call(
            &app,
            "model/polling/start",
            polling_data(json!({"prompt_messages": []})),
        )
    };

    // The plugin's own error: a PluginInvokeError carrying it.
    let call = start();
    let sid = plugin.request().await.header.session_id;
    plugin
        .table
        .route(
            &sid,
            SessionMessage::Error(PluginError {
                message: "quota".into(),
                error_type: "InvokeRateLimitError".into(),
                args: None,
            }),
        )
        .await;
    let (status, ctype, body) = call.await.unwrap();
    assert_eq!((status, ctype.as_str()), (500, "application/json"));
    assert_eq!(body["code"], -500);
    let outer = common::error_body(&body);
    assert_eq!(outer["error_type"], "PluginInvokeError");
    let inner: Value = serde_json::from_str(outer["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["error_type"], "InvokeRateLimitError");
    assert_eq!(inner["message"], "quota");

    // A result its status does not allow: the reference's unmarshal error.
    let call = start();
    let sid = plugin.request().await.header.session_id;
    plugin
        .table
        .route(&sid, SessionMessage::Stream(json!({"status": "running"})))
        .await;
    plugin.table.route(&sid, SessionMessage::End).await;
    let (status, _, body) = call.await.unwrap();
    assert_eq!(status, 500);
    let outer = common::error_body(&body);
    assert_eq!(outer["error_type"], "PluginInvokeError");
    let inner: Value = serde_json::from_str(outer["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["error_type"], "unmarshal_error");
    assert!(
        inner["message"].as_str().unwrap().contains("plugin_state"),
        "{inner}"
    );

    // No result at all.
    let call = start();
    let sid = plugin.request().await.header.session_id;
    plugin.table.route(&sid, SessionMessage::End).await;
    let (status, _, body) = call.await.unwrap();
    assert_eq!(status, 500);
    assert_eq!(
        common::error_body(&body),
        json!({"message": "no polling result received from plugin",
               "error_type": "PluginDaemonInternalServerError", "args": null})
    );

    // Refused before any session: the check needs a state to check.
    for data in [
        polling_data(json!({})),
        polling_data(json!({"plugin_state": {}})),
    ] {
        let (status, _, body) = start_polling_call(&app, "model/polling/check", data)
            .await
            .unwrap();
        assert_eq!(status, 400);
        assert_eq!(body["code"], -400, "{body}");
    }
    assert!(plugin.table.is_empty());
}
