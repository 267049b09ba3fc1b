//! Serving `/e/{hook_id}/…` against a scripted plugin, so every byte and
//! every moment of the plugin's answer is under the test's control: live
//! streaming, status and headers, limits, timeouts and cancellation.

mod common;
mod dify_double;
mod endpoint_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use plugind::endpoint::{ChunkStream, EndpointCall, Invoker};
use plugind::error::DaemonError;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use dify_double::DifyDouble;
use endpoint_support::{endpoint_package, EndpointApp};

/// Sets the flag when the plugin's stream is dropped (the session would be
/// cancelled).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A plugin whose chunks the test sends one by one.
#[derive(Default)]
struct Scripted {
    calls: Mutex<Vec<EndpointCall>>,
    feeds: Mutex<Vec<mpsc::Receiver<Result<Value, DaemonError>>>>,
    dropped: Arc<AtomicBool>,
}

impl Scripted {
    /// The channel the next session's chunks come from.
    fn feed(&self) -> mpsc::Sender<Result<Value, DaemonError>> {
        let (tx, rx) = mpsc::channel(16);
        self.feeds.lock().unwrap().push(rx);
        tx
    }

    fn calls(&self) -> Vec<EndpointCall> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Invoker for Scripted {
    async fn invoke(&self, call: EndpointCall) -> Result<ChunkStream, DaemonError> {
        self.calls.lock().unwrap().push(call);
        let rx = self
            .feeds
            .lock()
            .unwrap()
            .pop()
            .expect("a feed for this session");
        let flag = DropFlag(self.dropped.clone());
        let stream = futures::stream::unfold((rx, flag), |(mut rx, flag)| async move {
            rx.recv().await.map(|item| (item, (rx, flag)))
        });
        Ok(Box::pin(stream))
    }
}

struct Harness {
    ep: EndpointApp,
    plugin: Arc<Scripted>,
    hook: String,
    endpoint_id: String,
}

async fn harness_with(extra: &[&str]) -> Harness {
    let dify = DifyDouble::start();
    let plugin = Arc::new(Scripted::default());
    let app = endpoint_support::serve_app(&dify.base_url(), extra, Some(plugin.clone())).await;
    let ep = EndpointApp { app, dify };
    let id = ep.install(endpoint_package("ep_serve", true)).await;
    let entry = ep
        .setup(&id, "e", json!({"token": "supersecret", "greeting": "hey"}))
        .await;
    Harness {
        ep,
        plugin,
        hook: entry["hook_id"].as_str().unwrap().to_owned(),
        endpoint_id: entry["id"].as_str().unwrap().to_owned(),
    }
}

async fn harness() -> Harness {
    harness_with(&[]).await
}

impl Harness {
    fn url(&self, path: &str) -> String {
        self.ep.hook_url(&self.hook, path)
    }
}

fn body(text: &[u8]) -> Value {
    json!({"result": hex::encode(text)})
}

#[tokio::test]
async fn each_chunk_reaches_the_client_while_the_plugin_still_runs() {
    let h = harness().await;
    let feed = h.plugin.feed();
    feed.send(Ok(
        json!({"status": 200, "headers": {"Content-Type": "text/event-stream"}}),
    ))
    .await
    .unwrap();
    feed.send(Ok(body(b"data: 0\n\n"))).await.unwrap();

    let mut response = h.ep.app.client.post(h.url("/stream")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("first event arrives while the plugin has not finished")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: 0\n\n");

    feed.send(Ok(body(b"data: 1\n\n"))).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("second event arrives as soon as it is sent")
        .unwrap()
        .unwrap();
    assert_eq!(&second[..], b"data: 1\n\n");
    drop(feed);
    assert!(
        response.chunk().await.unwrap().is_none(),
        "body ends with the session"
    );
}

#[tokio::test]
async fn status_and_every_value_of_repeated_headers_are_sent() {
    let h = harness().await;
    let feed = h.plugin.feed();
    feed.send(Ok(json!({"status": 201, "headers": {"Set-Cookie": ["a=1", "b=2"], "X-One": "1"}, "result": hex::encode("made")})))
        .await
        .unwrap();
    drop(feed);
    let r = h.ep.app.client.get(h.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(r.headers()["x-one"], "1");
    assert_eq!(r.text().await.unwrap(), "made");
}

#[tokio::test]
async fn a_missing_status_is_200() {
    let h = harness().await;
    let feed = h.plugin.feed();
    feed.send(Ok(json!({"headers": {"X-A": "b"}})))
        .await
        .unwrap();
    feed.send(Ok(body(b"ok"))).await.unwrap();
    drop(feed);
    let r = h.ep.app.client.get(h.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn the_plugin_gets_raw_http_and_clear_settings() {
    let h = harness().await;
    drop(h.plugin.feed());
    let payload: Vec<u8> = (0..=255u8).collect();
    let r =
        h.ep.app
            .client
            .patch(h.url("/deep/p%20ath?b=2&a=1&a=0"))
            .header("X-Multi", "one")
            .header("X-Forwarded-For", "10.1.2.3")
            .header("X-Real-IP", "10.1.2.3")
            .header("Content-Type", "application/octet-stream")
            .body(payload.clone())
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200, "an answer without chunks is an empty 200");
    let calls = h.plugin.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.tenant_id, common::TENANT);
    assert_eq!(call.plugin_id, "plugind/ep_serve");
    assert_eq!(call.endpoint_id, h.endpoint_id);
    assert_eq!(
        call.payload["settings"],
        json!({"token": "supersecret", "greeting": "hey"})
    );
    let raw = hex::decode(call.payload["raw_http_request"].as_str().unwrap()).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    assert_eq!(&raw[split + 4..], &payload[..]);
    assert!(
        head.starts_with("PATCH /deep/p%20ath?b=2&a=1&a=0 HTTP/1.1\r\nHost: 127.0.0.1:"),
        "{head}"
    );
    assert!(head.contains("\r\nContent-Length: 256"), "{head}");
    assert!(head.contains("\r\nX-Multi: one"), "{head}");
    assert!(
        head.contains(&format!("\r\nDify-Hook-Id: {}", h.hook)),
        "{head}"
    );
    assert!(
        head.contains(&format!("/e/{}/deep/p%20ath", h.hook)),
        "{head}"
    );
    assert!(!head.contains("10.1.2.3"), "{head}");
}

/// Every character of a hook id, percent-encoded.
fn percent_encoded(hook: &str) -> String {
    hook.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[tokio::test]
async fn a_percent_encoded_hook_id_is_found_and_the_path_keeps_its_encoding() {
    let h = harness().await;
    drop(h.plugin.feed());
    let url = format!(
        "{}/e/{}/a%2Fb/c%20d/%7E?x=%31",
        h.ep.app.base,
        percent_encoded(&h.hook)
    );
    let r = h.ep.app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let calls = h.plugin.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].endpoint_id, h.endpoint_id);
    let raw = hex::decode(calls[0].payload["raw_http_request"].as_str().unwrap()).unwrap();
    let head = String::from_utf8(raw).unwrap();
    assert!(
        head.starts_with("GET /a%2Fb/c%20d/%7E?x=%31 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nDify-Hook-Id: {}\r\n", h.hook)),
        "{head}"
    );
    assert!(
        head.contains(&format!("/e/{}/a%2Fb/c%20d/%7E", h.hook)),
        "{head}"
    );
}

#[tokio::test]
async fn every_method_is_served() {
    let h = harness().await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
        let feed = h.plugin.feed();
        feed.send(Ok(
            json!({"status": 200, "headers": {"X-Method": method}, "result": hex::encode(method)}),
        ))
        .await
        .unwrap();
        drop(feed);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r =
            h.ep.app
                .client
                .request(m, h.url("/any"))
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(r.headers()["x-method"], method);
        let text = r.text().await.unwrap();
        assert_eq!(text, if method == "HEAD" { "" } else { method });
    }
    let methods: Vec<String> = h
        .plugin
        .calls()
        .iter()
        .map(|c| {
            let raw = hex::decode(c.payload["raw_http_request"].as_str().unwrap()).unwrap();
            String::from_utf8_lossy(&raw)
                .split(' ')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        methods,
        ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_never_reaches_the_plugin() {
    let h = harness().await;
    let big = vec![b'x'; plugind::endpoint::serve::DEFAULT_MAX_BODY + 1];
    let r =
        h.ep.app
            .client
            .post(h.url("/up"))
            .body(big.clone())
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 413);

    // Without a Content-Length (chunked upload) the count is what matters.
    let pieces = big
        .chunks(64 * 1024)
        .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
        .collect::<Vec<_>>();
    let r =
        h.ep.app
            .client
            .post(h.url("/up"))
            .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 413);
    assert!(h.plugin.calls().is_empty());

    // Exactly the limit passes, untruncated.
    drop(h.plugin.feed());
    let exact = vec![b'y'; plugind::endpoint::serve::DEFAULT_MAX_BODY];
    let r =
        h.ep.app
            .client
            .post(h.url("/up"))
            .body(exact)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let raw = hex::decode(
        h.plugin.calls()[0].payload["raw_http_request"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(raw.ends_with(&vec![b'y'; plugind::endpoint::serve::DEFAULT_MAX_BODY]));
}

#[tokio::test]
async fn unknown_and_disabled_hooks_are_404() {
    let h = harness().await;
    let r = reqwest::get(h.ep.hook_url("0123456789abcdef0123456789abcdef01234567", "/x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::get(h.ep.hook_url("not-a-hook!", "/x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    h.ep.post("disable", json!({"endpoint_id": h.endpoint_id}))
        .await;
    let r = reqwest::get(h.url("/x")).await.unwrap();
    assert_eq!(r.status(), 404);
    let envelope: Value = r.json().await.unwrap();
    assert_eq!(
        common::error_body(&envelope)["error_type"],
        "PluginDaemonNotFoundError"
    );
    assert!(h.plugin.calls().is_empty());
}

#[tokio::test]
async fn a_plugin_error_before_the_head_is_500() {
    let h = harness().await;
    let feed = h.plugin.feed();
    feed.send(Err(DaemonError::PluginInvoke(
        r#"{"message":"boom","error_type":"ValueError","args":null}"#.into(),
    )))
    .await
    .unwrap();
    let r = reqwest::get(h.url("/x")).await.unwrap();
    assert_eq!(r.status(), 500);
    let envelope: Value = r.json().await.unwrap();
    assert_eq!(
        common::error_body(&envelope)["error_type"],
        "PluginInvokeError"
    );
}

#[tokio::test]
async fn the_time_limit_gives_504_before_the_head_and_ends_a_started_body_cleanly() {
    let h = harness_with(&["--plugin-max-execution-timeout", "1"]).await;
    let silent = h.plugin.feed();
    let r = reqwest::get(h.url("/x")).await.unwrap();
    assert_eq!(r.status(), 504);
    let envelope: Value = r.json().await.unwrap();
    assert_eq!(
        common::error_body(&envelope)["message"],
        "killed by timeout"
    );
    drop(silent);

    let feed = h.plugin.feed();
    feed.send(Ok(json!({"status": 200, "headers": {"Content-Type": "text/plain"}, "result": hex::encode("partial")})))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = reqwest::get(h.url("/x")).await.unwrap();
    assert_eq!(r.status(), 200);
    // The body ends well-formed with only what the plugin sent: no JSON
    // error appended, no broken transfer.
    assert_eq!(r.text().await.unwrap(), "partial");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        h.plugin.dropped.load(Ordering::SeqCst),
        "the session was cancelled"
    );
    drop(feed);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_plugin_session() {
    let h = harness().await;
    let feed = h.plugin.feed();
    feed.send(Ok(
        json!({"status": 200, "headers": {"Content-Type": "text/event-stream"}}),
    ))
    .await
    .unwrap();
    feed.send(Ok(body(b"data: 0\n\n"))).await.unwrap();
    let client = reqwest::Client::new();
    let mut r = client.get(h.url("/stream")).send().await.unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: 0\n\n");
    assert!(!h.plugin.dropped.load(Ordering::SeqCst));
    drop(r);
    drop(client);
    // The server only notices on its next write to the closed connection.
    for i in 0..50 {
        if h.plugin.dropped.load(Ordering::SeqCst) {
            return;
        }
        let _ = feed
            .send(Ok(body(format!("data: {i}\n\n").as_bytes())))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the plugin stream was not dropped after the client left");
}

#[tokio::test]
async fn chunk_stream_items_keep_their_order_under_load() {
    let h = harness().await;
    let feed = h.plugin.feed();
    let writer = tokio::spawn(async move {
        feed.send(Ok(json!({"status": 200}))).await.unwrap();
        for i in 0..500 {
            feed.send(Ok(body(format!("{i},").as_bytes())))
                .await
                .unwrap();
        }
    });
    let r = reqwest::get(h.url("/many")).await.unwrap();
    let mut stream = r.bytes_stream();
    let mut all = Vec::new();
    while let Some(piece) = stream.next().await {
        all.extend_from_slice(&piece.unwrap());
    }
    writer.await.unwrap();
    let expected: String = (0..500).map(|i| format!("{i},")).collect();
    assert_eq!(String::from_utf8(all).unwrap(), expected);
}
