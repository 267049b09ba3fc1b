//! ServerlessRuntime against a scripted Lambda endpoint that answers the
//! real InvokeWithResponseStream wire format (AWS event-stream frames) to
//! the real aws-sdk-lambda client.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Request, Response, StatusCode};
use futures::StreamExt;
use plugind::runtime::serverless::{
    invoke_client, verify_token, ServerlessConfig, ServerlessRuntime, FUNCTION_ERROR_TYPE,
};
use plugind::runtime::{PluginRuntime, RuntimeError, SessionItem, SessionRequest};
use serde_json::{json, Map, Value};

const SESSION: &str = "sess-1";
const KEY: &[u8] = b"token-key";

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn string_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(7);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// One event-stream message.
fn frame(event_type: &str, content_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    string_header(&mut headers, ":event-type", event_type);
    string_header(&mut headers, ":content-type", content_type);
    string_header(&mut headers, ":message-type", "event");
    let total = 12 + headers.len() + payload.len() + 4;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_be_bytes());
    msg.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&msg);
    msg.extend_from_slice(&prelude_crc.to_be_bytes());
    msg.extend_from_slice(&headers);
    msg.extend_from_slice(payload);
    let crc = crc32(&msg);
    msg.extend_from_slice(&crc.to_be_bytes());
    msg
}

fn chunk(bytes: &[u8]) -> Vec<u8> {
    frame("PayloadChunk", "application/octet-stream", bytes)
}

fn complete(error: Option<(&str, &str)>) -> Vec<u8> {
    let body = match error {
        Some((code, details)) => {
            json!({"ErrorCode": code, "ErrorDetails": details, "LogResult": ""})
        }
        None => json!({}),
    };
    frame(
        "InvokeComplete",
        "application/json",
        body.to_string().as_bytes(),
    )
}

fn session_line(kind: &str, data: Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({
        "session_id": SESSION, "event": "session", "data": {"type": kind, "data": data}
    }))
    .unwrap();
    line.extend_from_slice(b"\n\n");
    line
}

/// What the scripted endpoint answers to one call.
enum Reply {
    /// An AWS error: status and `x-amzn-ErrorType`.
    Error(u16, &'static str),
    /// A 200 event stream of these frames; `then_break` aborts the
    /// connection after them instead of ending cleanly.
    Frames {
        frames: Vec<Vec<u8>>,
        then_break: bool,
    },
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    calls: Mutex<Vec<(String, Value)>>,
}

async fn endpoint(State(script): State<Arc<Script>>, req: Request<Body>) -> Response<Body> {
    let uri = req.uri().to_string();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap();
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    script.calls.lock().unwrap().push((uri, payload));
    let reply = script.replies.lock().unwrap().pop_front();
    match reply {
        Some(Reply::Error(status, kind)) => Response::builder()
            .status(status)
            .header("x-amzn-ErrorType", kind)
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"message": kind, "Type": "Service"}).to_string(),
            ))
            .unwrap(),
        Some(Reply::Frames { frames, then_break }) => {
            let mut items: Vec<Result<Bytes, std::io::Error>> =
                frames.into_iter().map(|f| Ok(Bytes::from(f))).collect();
            if then_break {
                items.push(Err(std::io::Error::other("connection lost")));
            }
            let stream = futures::stream::iter(items).then(|item| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                item
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/vnd.amazon.eventstream")
                .header("X-Amz-Executed-Version", "7")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("x-amzn-ErrorType", "ResourceNotFoundException")
            .body(Body::from("{}"))
            .unwrap(),
    }
}

struct Fixture {
    script: Arc<Script>,
    runtime: ServerlessRuntime,
}

async fn fixture(replies: Vec<Reply>, max_retries: u32) -> Fixture {
    let script = Arc::new(Script::default());
    script.replies.lock().unwrap().extend(replies);
    let app = axum::Router::new()
        .fallback(endpoint)
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
            aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test"),
        ))
        .build();
    let config = ServerlessConfig {
        callback_url: "http://daemon.test:5002".into(),
        token_key: Arc::new(KEY.to_vec()),
        max_retries,
        backoff_base: Duration::from_millis(10),
        default_timeout: Duration::from_secs(20),
        max_line: 5 * 1024 * 1024,
        max_request_bytes: plugind::runtime::serverless::MAX_PAYLOAD,
    };
    let runtime = ServerlessRuntime::new(
        "langgenius/echo:0.0.1@abc",
        "plugind-langgenius-echo-0123",
        "3",
        invoke_client(&sdk),
        config,
    );
    Fixture { script, runtime }
}

fn request(payload: Map<String, Value>) -> SessionRequest {
    let mut req = SessionRequest::new("tool", "invoke_tool", "user-1", payload);
    req.header.session_id = SESSION.into();
    req.header.context = json!({"trace": "t1"});
    req.tenant_id = "tenant-1".into();
    req
}

fn tool_payload() -> Map<String, Value> {
    json!({"provider": "echo", "tool": "echo", "tool_parameters": {"text": "hi"}})
        .as_object()
        .unwrap()
        .clone()
}

/// Reads a session to its end: the chunks, and the final error if any.
async fn collect(
    runtime: &ServerlessRuntime,
    req: SessionRequest,
) -> (Vec<Value>, Option<RuntimeError>) {
    let mut stream = runtime.invoke(req).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the session ends")
    {
        match item {
            Ok(SessionItem::Chunk(c)) => chunks.push(c),
            Ok(SessionItem::Invoke(_)) => panic!("no backwards call travels in the stream"),
            Err(e) => return (chunks, Some(e)),
        }
    }
    (chunks, None)
}

fn ok_frames() -> Reply {
    let first = session_line("stream", json!({"type": "text", "message": {"text": "a"}}));
    let (head, tail) = first.split_at(17);
    let mut second = b"{\"event\":\"heartbeat\",\"session_id\":null,\"data\":{}}\n".to_vec();
    second.extend(session_line(
        "stream",
        json!({"type": "text", "message": {"text": "b"}}),
    ));
    Reply::Frames {
        frames: vec![
            chunk(head),
            chunk(tail),
            chunk(&second),
            chunk(&session_line("end", json!({}))),
            complete(None),
        ],
        then_break: false,
    }
}

#[tokio::test]
async fn frames_become_session_items_and_the_payload_is_the_request_line() {
    let f = fixture(vec![ok_frames()], 3).await;
    let (chunks, error) = collect(&f.runtime, request(tool_payload())).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        chunks,
        vec![
            json!({"type": "text", "message": {"text": "a"}}),
            json!({"type": "text", "message": {"text": "b"}})
        ]
    );
    let calls = f.script.calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    let (uri, payload) = &calls[0];
    assert!(
        uri.contains("/functions/plugind-langgenius-echo-0123/response-streaming-invocations"),
        "{uri}"
    );
    assert!(uri.contains("Qualifier=3"), "{uri}");
    assert_eq!(payload["session_id"], SESSION);
    assert_eq!(payload["event"], "request");
    assert_eq!(payload["data"]["type"], "tool");
    assert_eq!(payload["data"]["action"], "invoke_tool");
    assert_eq!(payload["data"]["user_id"], "user-1");
    assert_eq!(payload["data"]["tool_parameters"], json!({"text": "hi"}));
    assert_eq!(payload["context"]["trace"], "t1");
    assert_eq!(payload["context"]["plugind_url"], "http://daemon.test:5002");
    let token = payload["context"]["plugind_token"].as_str().unwrap();
    let claims = verify_token(
        KEY,
        token,
        SESSION,
        plugind::runtime::serverless::unix_now(),
    )
    .unwrap();
    assert_eq!(claims.tenant_id, "tenant-1");
    assert_eq!(claims.plugin_id, "langgenius/echo");
    assert_eq!(claims.identifier, "langgenius/echo:0.0.1@abc");
    assert_eq!(claims.user_id, "user-1");
    assert_eq!(claims.access_type, "tool");
}

#[tokio::test]
async fn throttling_and_server_errors_before_the_first_chunk_are_retried() {
    let f = fixture(
        vec![
            Reply::Error(429, "TooManyRequestsException"),
            Reply::Error(500, "ServiceException"),
            Reply::Error(502, "ServiceException"),
            ok_frames(),
        ],
        3,
    )
    .await;
    let (chunks, error) = collect(&f.runtime, request(tool_payload())).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(chunks.len(), 2);
    assert_eq!(f.script.calls.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn retries_stop_at_the_configured_count() {
    let f = fixture(
        (0..5)
            .map(|_| Reply::Error(429, "TooManyRequestsException"))
            .collect(),
        2,
    )
    .await;
    let (chunks, error) = collect(&f.runtime, request(tool_payload())).await;
    assert!(chunks.is_empty());
    match error {
        Some(RuntimeError::Invoke(text)) => assert!(text.contains("3 attempts"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.script.calls.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_failure_after_the_first_chunk_is_not_retried() {
    let f = fixture(
        vec![
            Reply::Frames {
                frames: vec![chunk(&session_line("stream", json!({"n": 1})))],
                then_break: true,
            },
            ok_frames(),
        ],
        3,
    )
    .await;
    let (chunks, error) = collect(&f.runtime, request(tool_payload())).await;
    assert_eq!(chunks, vec![json!({"n": 1})]);
    assert!(error.is_some(), "the broken stream ends with an error");
    // Give a wrongful retry time to happen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(f.script.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let f = fixture(
        vec![
            Reply::Error(400, "InvalidRequestContentException"),
            ok_frames(),
        ],
        3,
    )
    .await;
    let (_, error) = collect(&f.runtime, request(tool_payload())).await;
    assert!(matches!(error, Some(RuntimeError::Invoke(_))), "{error:?}");
    assert_eq!(f.script.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_function_error_is_a_typed_plugin_error() {
    let f = fixture(
        vec![Reply::Frames {
            frames: vec![
                chunk(br#"{"errorMessage":"plugin crashed","errorType":"Runtime.ExitError"}"#),
                complete(Some((
                    "Unhandled",
                    r#"{"errorMessage":"plugin crashed","errorType":"Runtime.ExitError"}"#,
                ))),
            ],
            then_break: false,
        }],
        3,
    )
    .await;
    let (_, error) = collect(&f.runtime, request(tool_payload())).await;
    match error {
        Some(RuntimeError::Plugin(e)) => {
            assert_eq!(e.error_type, FUNCTION_ERROR_TYPE);
            assert_eq!(e.message, "plugin crashed");
            assert_eq!(e.args, Some(json!({"error_code": "Unhandled"})));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.script.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_function_timeout_reads_as_the_daemon_timeout() {
    let f = fixture(
        vec![Reply::Frames {
            frames: vec![
                chunk(&session_line("stream", json!({"n": 1}))),
                complete(Some((
                    "Sandbox.Timedout",
                    "Task timed out after 900.00 seconds",
                ))),
            ],
            then_break: false,
        }],
        3,
    )
    .await;
    let (chunks, error) = collect(&f.runtime, request(tool_payload())).await;
    assert_eq!(chunks.len(), 1);
    let error = error.expect("a timeout");
    assert!(matches!(error, RuntimeError::Timeout));
    assert_eq!(error.to_string(), "killed by timeout");
}

#[tokio::test]
async fn the_plugins_own_error_passes_through() {
    let f = fixture(
        vec![Reply::Frames {
            frames: vec![
                chunk(&session_line(
                    "error",
                    json!({"error_type": "ValueError", "message": "bad input", "args": {}}),
                )),
                complete(None),
            ],
            then_break: false,
        }],
        3,
    )
    .await;
    let (_, error) = collect(&f.runtime, request(tool_payload())).await;
    match error {
        Some(RuntimeError::Plugin(e)) => {
            assert_eq!(e.error_type, "ValueError");
            assert_eq!(e.message, "bad input");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stream_that_ends_without_end_is_a_closed_connection() {
    let f = fixture(
        vec![Reply::Frames {
            frames: vec![
                chunk(&session_line("stream", json!({"n": 1}))),
                complete(None),
            ],
            then_break: false,
        }],
        3,
    )
    .await;
    let (chunks, error) = collect(&f.runtime, request(tool_payload())).await;
    assert_eq!(chunks.len(), 1);
    assert!(
        matches!(error, Some(RuntimeError::ConnectionClosed)),
        "{error:?}"
    );
}

#[tokio::test]
async fn payloads_over_six_megabytes_are_refused_before_calling_lambda() {
    let f = fixture(vec![ok_frames()], 3).await;
    let mut payload = tool_payload();
    payload.insert(
        "blob".into(),
        Value::String("x".repeat(6 * 1024 * 1024 + 1)),
    );
    let err = f.runtime.invoke(request(payload)).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::PayloadTooLarge { .. }),
        "{err:?}"
    );
    let daemon: plugind::error::DaemonError = err.into();
    assert_eq!(daemon.code(), -400);
    assert!(f.script.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_stopped_runtime_refuses_sessions() {
    let f = fixture(vec![ok_frames()], 3).await;
    f.runtime.shutdown().await;
    assert!(matches!(
        f.runtime.invoke(request(tool_payload())).await,
        Err(RuntimeError::Unavailable(_))
    ));
}
