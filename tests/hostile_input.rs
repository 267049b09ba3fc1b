//! Hostile input over HTTP: a package whose manifest nests 200 000 levels
//! deep is refused with the usual bad-request envelope, and with short
//! server timeouts (so each test is quick) clients that trickle a request
//! head, sit idle or never finish a body are disconnected, while a dispatch
//! SSE stream that runs far longer than every timeout reaches its end.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{TestApp, KEY, TENANT};
use plugind::app_state::AppState;
use plugind::install::NoopInstallStep;
use plugind::runtime::protocol::SessionMessage;
use plugind::runtime::{
    PluginRuntime, RuntimeError, RuntimeState, SessionRequest, SessionStream, SessionTable,
};
use plugind::serve::HttpTimeouts;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const SHORT: HttpTimeouts = HttpTimeouts {
    header_read: Duration::from_millis(400),
    body_read: Duration::from_millis(400),
};

/// How long a test waits for the server to close a connection before it
/// gives up: far beyond the short timeouts, so only a missing timeout
/// reaches it.
const PATIENCE: Duration = Duration::from_secs(15);

/// The daemon over a fresh database, served as `plugind serve` serves it
/// but with `timeouts`.
async fn spawn(timeouts: HttpTimeouts) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let database_url = common::fresh_database_url(dir.path()).await;
    let settings = common::settings(dir.path(), &database_url, &[]);
    let state = AppState::build_with_step(settings, Arc::new(NoopInstallStep))
        .await
        .unwrap();
    let base = common::serve_router_with(plugind::api::app(state.clone()), timeouts).await;
    TestApp {
        base,
        client: reqwest::Client::new(),
        state,
        dir,
        database_url,
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection; returns what it sent, or
/// `None` if it was still open after [`PATIENCE`].
async fn until_closed(read: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let reading = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, reading).await.ok()?;
    Some(received)
}

/// Sends `lines` one every 100 ms until the server stops taking them or
/// `count` are sent.
fn trickle(mut write: tokio::net::tcp::OwnedWriteHalf, count: usize, line: &'static [u8]) {
    tokio::spawn(async move {
        for _ in 0..count {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(line).await.is_err() {
                return;
            }
        }
    });
}

#[tokio::test]
async fn a_manifest_nested_200_000_deep_is_a_bad_request_envelope() {
    let app = spawn(HttpTimeouts::default()).await;
    let deep = "{a: ".repeat(200_000) + "1" + &"}".repeat(200_000);
    let package = common::build_zip(&[
        ("manifest.yaml", deep.as_bytes()),
        ("_assets/icon.svg", common::ICON),
    ]);
    let started = std::time::Instant::now();
    let (status, body) = app.upload(package, false).await;
    println!(
        "{} byte manifest refused in {:?}",
        deep.len(),
        started.elapsed()
    );
    // As for every other bad package: HTTP 200 with a -400 envelope.
    assert_eq!(status, 200);
    assert_eq!(body["code"], -400, "{body}");
    assert!(body["data"].is_null(), "{body}");
    let error = common::error_body(&body);
    assert_eq!(error["error_type"], "PluginDaemonBadRequestError");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("manifest.yaml") && message.contains("nests deeper than 64 levels"),
        "{message}"
    );
    assert!(app.nonempty_tables().await.is_empty());
}

#[tokio::test]
async fn a_client_that_trickles_its_request_head_is_disconnected() {
    let app = spawn(SHORT).await;
    let (mut read, mut write) = connect(&app).await.into_split();
    write
        .write_all(b"GET /health/check HTTP/1.1\r\nHost: plugind\r\n")
        .await
        .unwrap();
    // One header line every 100 ms for as long as 30 s: the head is never
    // complete before the server gives up on it.
    trickle(write, 300, b"X-Slow: a\r\n");
    let received = until_closed(&mut read)
        .await
        .expect("the server closes the connection");
    assert!(
        !received.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let app = spawn(SHORT).await;
    let (mut read, mut write) = connect(&app).await.into_split();
    write
        .write_all(b"GET /health/check HTTP/1.1\r\nHost: plugind\r\n\r\n")
        .await
        .unwrap();
    let received = until_closed(&mut read)
        .await
        .expect("the server closes the idle connection");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
}

#[tokio::test]
async fn a_body_that_never_ends_is_refused_and_the_connection_closed() {
    let app = spawn(SHORT).await;
    let (mut read, mut write) = connect(&app).await.into_split();
    let head = format!(
        "POST /plugin/{TENANT}/management/install/identifiers HTTP/1.1\r\nHost: plugind\r\n\
         X-Api-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"data\": "
    );
    write.write_all(head.as_bytes()).await.unwrap();
    trickle(write, 300, b" ");
    let received = until_closed(&mut read)
        .await
        .expect("the server answers and closes the connection");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("request body not received within"), "{text}");
}

/// A runtime whose plugin answers every session with `chunks` text chunks,
/// one every `gap`, then ends it.
struct Ticker {
    identity: String,
    table: Arc<SessionTable>,
    writer: mpsc::Sender<Bytes>,
    chunks: usize,
    gap: Duration,
}

#[async_trait::async_trait]
impl PluginRuntime for Ticker {
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
        let timeout = request.timeout.unwrap_or(Duration::from_secs(60));
        let session = request.header.session_id.clone();
        let stream = self
            .table
            .open(request.header.clone(), self.writer.clone(), timeout)?;
        let (table, chunks, gap) = (self.table.clone(), self.chunks, self.gap);
        tokio::spawn(async move {
            for i in 0..chunks {
                tokio::time::sleep(gap).await;
                let chunk =
                    json!({"type": "text", "message": {"text": format!("tick {i}")}, "meta": null});
                table.route(&session, SessionMessage::Stream(chunk)).await;
            }
            table.route(&session, SessionMessage::End).await;
        });
        Ok(stream)
    }
    async fn shutdown(&self) {}
}

#[tokio::test]
async fn a_dispatch_stream_outlasting_every_timeout_is_not_cut() {
    let app = spawn(SHORT).await;
    let (identifier, task) = app.install(common::tool_package("echo", "0.0.1")).await;
    assert_eq!(task["status"], "success", "{task}");
    let (writer, _written) = mpsc::channel(16);
    // 12 chunks 250 ms apart: 3 s, over seven times each timeout.
    let chunks = 12;
    app.state.registry.insert(
        identifier.clone(),
        Arc::new(Ticker {
            identity: identifier,
            table: SessionTable::new(),
            writer,
            chunks,
            gap: Duration::from_millis(250),
        }),
    );
    let body = json!({
        "user_id": "u1",
        "data": {"provider": "echo", "tool": "echo", "credentials": {},
                 "credential_type": "api-key", "tool_parameters": {}},
    });
    let r = app
        .client
        .post(format!("{}/plugin/{TENANT}/dispatch/tool/invoke", app.base))
        .header("X-Api-Key", KEY)
        .header("X-Plugin-ID", "langgenius/echo")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("the stream ends cleanly");
    let texts: Vec<String> = text
        .split("\n\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let envelope: Value = serde_json::from_str(l.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(envelope["code"], 0, "{envelope}");
            envelope["data"]["message"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..chunks).map(|i| format!("tick {i}")).collect();
    assert_eq!(texts, expected);
}
