//! A test double of AWS Lambda *execution* (not product code).
//!
//! - Control plane: every request that is not an invoke is proxied to moto
//!   (CreateFunction, GetFunction, UpdateFunctionCode, PublishVersion,
//!   DeleteFunction, tags…), so one `aws-sdk-lambda` client pointed at the
//!   emulator sees moto's control plane. The emulator reads the requests
//!   that define code and configuration on the way through and remembers,
//!   per function and per published version, the code location (S3 bucket
//!   and key, or an inline zip), environment, timeout and memory.
//! - Execution: `Invoke` and `InvokeWithResponseStream` fetch the artifact
//!   from S3 (moto), unpack it, and start its `bin/plugin-runner` as the
//!   managed Python runtime would start an `AWS_LAMBDA_EXEC_WRAPPER` (the
//!   runtime's interpreter command as arguments), with a Runtime API of its
//!   own. The response stream comes back as AWS event-stream frames
//!   (`PayloadChunk`… `InvokeComplete`; routes `POST /2015-03-31/functions/{name}/invocations`
//!   and `POST /2021-11-15/functions/{name}/response-streaming-invocations`), the bytes exactly as the bootstrap
//!   wrote them (including `lambda_runtime`'s metadata prelude, as AWS does).
//!   One execution environment per function version, kept warm; invocations
//!   of one version queue on it (AWS would start more environments).
//! - Faults: `inject` makes the next invoke calls answer throttling or 5xx;
//!   a function's timeout kills its environment (`Sandbox.Timedout`).

#![allow(dead_code)]

pub mod harness;
pub mod tools;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_smithy_types::event_stream::{Header, HeaderValue as EsValue, Message};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

/// Lambda's budget for an execution environment's init phase.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The region the doubles answer for.
pub const REGION: &str = "us-east-1";
/// The account id moto uses.
pub const ACCOUNT: &str = "123456789012";

/// A fault the next invoke call answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429 `TooManyRequestsException`.
    Throttle,
    /// HTTP 500 `ServiceException`.
    ServiceError,
}

/// Where a function's code is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Code {
    S3 { bucket: String, key: String },
    Zip(Arc<Vec<u8>>),
}

/// One version's configuration.
#[derive(Debug, Clone)]
struct FunctionConfig {
    code: Code,
    env: BTreeMap<String, String>,
    timeout: Duration,
    memory: u64,
    /// Bumped on every code or configuration change of `$LATEST`, so a
    /// stale warm environment is replaced.
    revision: u64,
}

#[derive(Debug, Default)]
struct FunctionRecord {
    latest: Option<FunctionConfig>,
    versions: HashMap<String, FunctionConfig>,
}

/// What the runtime side reports about one invocation.
enum InvocationEvent {
    /// The runtime took the invocation from `/next`: the timeout starts.
    Delivered,
    /// The bootstrap began its response (with its Content-Type).
    Started(String),
    Chunk(Bytes),
    Done,
    /// The function failed (`/error`, or the environment died or timed out).
    Failed {
        code: String,
        details: String,
    },
}

struct Invocation {
    id: String,
    payload: Bytes,
    timeout: Duration,
    arn: String,
    events: mpsc::Sender<InvocationEvent>,
}

/// One started bootstrap and its Runtime API.
struct ExecEnv {
    key: String,
    revision: u64,
    pid: u32,
    queue: mpsc::Sender<Invocation>,
    exited: watch::Receiver<bool>,
    child: Mutex<Option<tokio::process::Child>>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl ExecEnv {
    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.start_kill();
        }
        self.server.abort();
    }
}

impl Drop for ExecEnv {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Shared {
    moto: String,
    http: reqwest::Client,
    s3: aws_sdk_s3::Client,
    python: PathBuf,
    functions: Mutex<HashMap<String, FunctionRecord>>,
    envs: Mutex<HashMap<String, Arc<ExecEnv>>>,
    /// Serializes environment start-ups, so two first calls start one.
    starting: tokio::sync::Mutex<()>,
    faults: Mutex<VecDeque<Fault>>,
    logs: Arc<Mutex<Vec<String>>>,
    invocations: Mutex<Vec<String>>,
    revision: Mutex<u64>,
    runtime_times: Arc<Mutex<Vec<Duration>>>,
}

/// The running emulator.
pub struct LambdaEmulator {
    /// `http://127.0.0.1:<port>`: the Lambda endpoint for aws-sdk-lambda.
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for LambdaEmulator {
    fn drop(&mut self) {
        self.server.abort();
        for (_, env) in self.shared.envs.lock().unwrap().drain() {
            env.kill();
        }
    }
}

impl LambdaEmulator {
    /// Starts the emulator in front of a moto server. `python` plays the
    /// managed runtime's interpreter.
    pub async fn start(moto_url: &str, s3: aws_sdk_s3::Client, python: PathBuf) -> Self {
        let shared = Arc::new(Shared {
            moto: moto_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            s3,
            python,
            functions: Mutex::default(),
            envs: Mutex::default(),
            starting: tokio::sync::Mutex::new(()),
            faults: Mutex::default(),
            logs: Arc::default(),
            invocations: Mutex::default(),
            revision: Mutex::new(0),
            runtime_times: Arc::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Small stream chunks go out at once, as on AWS's front end.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = axum::Router::new()
            .fallback(front)
            .with_state(shared.clone())
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            shared,
            server,
        }
    }

    /// An aws-sdk-lambda client for this emulator (the SDK's standard
    /// retries on).
    pub fn client(&self) -> aws_sdk_lambda::Client {
        self.client_with(aws_sdk_lambda::config::retry::RetryConfig::standard())
    }

    /// A client that makes exactly one attempt per call.
    pub fn client_without_retries(&self) -> aws_sdk_lambda::Client {
        self.client_with(aws_sdk_lambda::config::retry::RetryConfig::disabled())
    }

    fn client_with(
        &self,
        retry: aws_sdk_lambda::config::retry::RetryConfig,
    ) -> aws_sdk_lambda::Client {
        let config = aws_sdk_lambda::Config::builder()
            .retry_config(retry)
            .behavior_version_latest()
            .region(aws_sdk_lambda::config::Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_lambda::config::Credentials::new(
                "test", "test", None, None, "static",
            ))
            .build();
        aws_sdk_lambda::Client::from_conf(config)
    }

    /// Makes the next invoke calls fail, in order.
    pub fn inject(&self, faults: &[Fault]) {
        self.shared
            .faults
            .lock()
            .unwrap()
            .extend(faults.iter().copied());
    }

    /// Every output line of every bootstrap started so far.
    pub fn logs(&self) -> Vec<String> {
        self.shared.logs.lock().unwrap().clone()
    }

    /// Pids of the running bootstraps (one per warm environment).
    pub fn bootstrap_pids(&self) -> Vec<u32> {
        let envs = self.shared.envs.lock().unwrap();
        let mut pids: Vec<u32> = envs
            .values()
            .filter(|e| !*e.exited.borrow())
            .map(|e| e.pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Pids of the plugin processes the bootstraps run.
    pub fn plugin_pids(&self) -> Vec<u32> {
        self.bootstrap_pids()
            .into_iter()
            .flat_map(tools::child_pids)
            .collect()
    }

    /// Stops every warm environment: the next call starts cold.
    pub fn stop_environments(&self) {
        for (_, env) in self.shared.envs.lock().unwrap().drain() {
            env.kill();
        }
    }

    /// For each completed invocation, the time from the Runtime API handing
    /// it to the bootstrap to the end of the bootstrap's response.
    pub fn runtime_times(&self) -> Vec<Duration> {
        self.shared.runtime_times.lock().unwrap().clone()
    }

    /// `function:qualifier` of every invoke call served, in order.
    pub fn invocations(&self) -> Vec<String> {
        self.shared.invocations.lock().unwrap().clone()
    }
}

/// Routes invoke calls to the execution side and all else to moto.
async fn front(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let is_invoke = req.method() == Method::POST
        && segments.len() == 4
        && segments[1] == "functions"
        && ((segments[0] == "2015-03-31" && segments[3] == "invocations")
            || (segments[0] == "2021-11-15" && segments[3] == "response-streaming-invocations"));
    if is_invoke {
        let streaming = segments[3] == "response-streaming-invocations";
        let qualifier = query_param(&query, "Qualifier");
        let (name, qualifier) = function_name(&segments[2], qualifier);
        let body =
            match axum::body::to_bytes(req.into_body(), 7 * 1024 * 1024).await {
                Ok(b) => b,
                Err(_) => return aws_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLargeException",
                    "Request must be smaller than 6291456 bytes for the InvokeFunction operation",
                ),
            };
        return invoke(shared, name, qualifier, body, streaming).await;
    }
    proxy(shared, req, segments, query).await
}

/// `name` may be a name, a partial ARN or an ARN, with a `:qualifier`.
fn function_name(raw: &str, qualifier: Option<String>) -> (String, String) {
    let rest = raw.split_once(":function:").map(|(_, r)| r).unwrap_or(raw);
    let (name, q) = match rest.split_once(':') {
        Some((n, q)) => (n.to_owned(), Some(q.to_owned())),
        None => (rest.to_owned(), None),
    };
    (name, qualifier.or(q).unwrap_or_else(|| "$LATEST".into()))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut res = (
        status,
        axum::Json(json!({"Type": "Service", "message": message, "Message": message})),
    )
        .into_response();
    res.headers_mut()
        .insert("x-amzn-ErrorType", HeaderValue::from_str(kind).unwrap());
    res
}

/// Forwards a control-plane call to moto and records what it defines.
async fn proxy(
    shared: Arc<Shared>,
    req: Request,
    segments: Vec<String>,
    query: String,
) -> Response {
    let method = req.method().clone();
    let headers = req.headers().clone();
    let uri = req.uri().clone();
    let body = match axum::body::to_bytes(req.into_body(), 256 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let url = format!(
        "{}{}",
        shared.moto,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut out = shared.http.request(method.clone(), url).body(body.clone());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            out = out.header(name, value);
        }
    }
    let answer = match out.send().await {
        Ok(a) => a,
        Err(e) => return aws_error(StatusCode::BAD_GATEWAY, "ServiceException", &e.to_string()),
    };
    let status = answer.status();
    let mut res_headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            res_headers.append(name, value.clone());
        }
    }
    let res_body = answer.bytes().await.unwrap_or_default();
    if status.is_success()
        && segments.first().map(String::as_str) == Some("2015-03-31")
        && segments.get(1).map(String::as_str) == Some("functions")
    {
        record(&shared, &method, &segments, &query, &body, &res_body);
    }
    let mut res = Response::new(Body::from(res_body));
    *res.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap();
    *res.headers_mut() = res_headers;
    res
}

/// Remembers code and configuration from a successful control-plane call.
fn record(
    shared: &Shared,
    method: &Method,
    segments: &[String],
    query: &str,
    body: &[u8],
    answer: &[u8],
) {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let answer: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
    let next_revision = || {
        let mut r = shared.revision.lock().unwrap();
        *r += 1;
        *r
    };
    let mut functions = shared.functions.lock().unwrap();
    match (method.as_str(), segments.len()) {
        // CreateFunction
        ("POST", 2) => {
            let Some(name) = request["FunctionName"].as_str() else {
                return;
            };
            let (name, _) = function_name(name, None);
            let Some(code) = code_of(&request["Code"]) else {
                return;
            };
            let config = FunctionConfig {
                code,
                env: env_of(&request),
                timeout: Duration::from_secs(request["Timeout"].as_u64().unwrap_or(3)),
                memory: request["MemorySize"].as_u64().unwrap_or(128),
                revision: next_revision(),
            };
            let record = functions.entry(name).or_default();
            record.versions.clear();
            if request["Publish"].as_bool() == Some(true) {
                if let Some(v) = answer["Version"].as_str() {
                    record.versions.insert(v.to_owned(), config.clone());
                }
            }
            record.latest = Some(config);
        }
        // DeleteFunction
        ("DELETE", 3) => {
            let (name, _) = function_name(&segments[2], None);
            match query_param(query, "Qualifier") {
                Some(q) => {
                    if let Some(r) = functions.get_mut(&name) {
                        r.versions.remove(&q);
                    }
                }
                None => {
                    functions.remove(&name);
                }
            }
        }
        // UpdateFunctionCode, UpdateFunctionConfiguration, PublishVersion
        (m, 4) => {
            let (name, _) = function_name(&segments[2], None);
            let Some(record) = functions.get_mut(&name) else {
                return;
            };
            let Some(latest) = record.latest.as_mut() else {
                return;
            };
            match (m, segments[3].as_str()) {
                ("PUT", "code") => {
                    if let Some(code) = code_of(&request) {
                        latest.code = code;
                        latest.revision = next_revision();
                    }
                    if request["Publish"].as_bool() == Some(true) {
                        if let Some(v) = answer["Version"].as_str() {
                            let snapshot = latest.clone();
                            record.versions.insert(v.to_owned(), snapshot);
                        }
                    }
                }
                ("PUT", "configuration") => {
                    if request.get("Environment").is_some() {
                        latest.env = env_of(&request);
                    }
                    if let Some(t) = request["Timeout"].as_u64() {
                        latest.timeout = Duration::from_secs(t);
                    }
                    if let Some(m) = request["MemorySize"].as_u64() {
                        latest.memory = m;
                    }
                    latest.revision = next_revision();
                }
                ("POST", "versions") => {
                    if let Some(v) = answer["Version"].as_str() {
                        let snapshot = latest.clone();
                        record.versions.insert(v.to_owned(), snapshot);
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

fn code_of(code: &Value) -> Option<Code> {
    if let (Some(bucket), Some(key)) = (code["S3Bucket"].as_str(), code["S3Key"].as_str()) {
        return Some(Code::S3 {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        });
    }
    let zip = code["ZipFile"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(zip).ok()?;
    Some(Code::Zip(Arc::new(bytes)))
}

fn env_of(request: &Value) -> BTreeMap<String, String> {
    request["Environment"]["Variables"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Serves one Invoke or InvokeWithResponseStream call.
async fn invoke(
    shared: Arc<Shared>,
    name: String,
    qualifier: String,
    payload: Bytes,
    streaming: bool,
) -> Response {
    if let Some(fault) = shared.faults.lock().unwrap().pop_front() {
        return match fault {
            Fault::Throttle => aws_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                "Rate Exceeded.",
            ),
            Fault::ServiceError => aws_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "An internal error occurred.",
            ),
        };
    }
    if payload.len() > 6 * 1024 * 1024 {
        return aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            "Request must be smaller than 6291456 bytes for the InvokeFunction operation",
        );
    }
    let arn = format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}");
    let config = {
        let functions = shared.functions.lock().unwrap();
        let record = functions.get(&name);
        match record {
            Some(r) if qualifier == "$LATEST" => r.latest.clone(),
            Some(r) => r.versions.get(&qualifier).cloned(),
            None => None,
        }
    };
    let Some(config) = config else {
        return aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {arn}:{qualifier}"),
        );
    };
    shared
        .invocations
        .lock()
        .unwrap()
        .push(format!("{name}:{qualifier}"));
    let env = match exec_env(&shared, &name, &qualifier, &config).await {
        Ok(env) => env,
        Err(e) => {
            return aws_error(
                StatusCode::BAD_GATEWAY,
                "ServiceException",
                &format!("cannot start the execution environment: {e}"),
            )
        }
    };
    let (events_tx, mut events) = mpsc::channel(64);
    let invocation = Invocation {
        id: uuid::Uuid::new_v4().to_string(),
        payload,
        timeout: config.timeout,
        arn: format!("{arn}:{qualifier}"),
        events: events_tx,
    };
    if env.queue.send(invocation).await.is_err() {
        return aws_error(
            StatusCode::BAD_GATEWAY,
            "ServiceException",
            "the execution environment is gone",
        );
    }
    // Watches the invocation: the function's timeout and the bootstrap's
    // death end it as AWS would, and the environment is dropped.
    let (tx, rx) = mpsc::channel::<InvocationEvent>(64);
    let timeout = config.timeout;
    let key = env.key.clone();
    let watcher_shared = shared.clone();
    let mut exited = env.exited.clone();
    tokio::spawn(async move {
        // Until the runtime takes the invocation, AWS's init budget applies.
        let sleep = tokio::time::sleep(INIT_TIMEOUT);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(InvocationEvent::Delivered) => {
                        sleep.as_mut().reset(tokio::time::Instant::now() + timeout);
                    }
                    Some(ev) => {
                        let last = matches!(ev, InvocationEvent::Done | InvocationEvent::Failed { .. });
                        if tx.send(ev).await.is_err() || last {
                            return;
                        }
                    }
                    None => return,
                },
                _ = &mut sleep => {
                    drop_env(&watcher_shared, &key);
                    let details = format!("Task timed out after {:.2} seconds", timeout.as_secs_f64());
                    let _ = tx.send(InvocationEvent::Failed { code: "Sandbox.Timedout".into(), details }).await;
                    return;
                }
                _ = async { exited.wait_for(|e| *e).await.is_ok() } => {
                    drop_env(&watcher_shared, &key);
                    let _ = tx.send(InvocationEvent::Failed { code: "Runtime.ExitError".into(), details: "the runtime exited".into() }).await;
                    return;
                }
            }
        }
    });
    let mut rx = rx;
    // Headers wait for the bootstrap's response to begin.
    let mut content_type = "application/json".to_owned();
    let mut first = None;
    match rx.recv().await {
        Some(InvocationEvent::Started(ct)) => content_type = ct,
        Some(other) => first = Some(other),
        None => {}
    }
    if streaming {
        let stream =
            futures::stream::unfold((first, rx, false), |(mut first, mut rx, done)| async move {
                if done {
                    return None;
                }
                let ev = match first.take() {
                    Some(ev) => Some(ev),
                    None => rx.recv().await,
                };
                let (frame, done) = match ev {
                    Some(InvocationEvent::Chunk(b)) => (payload_chunk(b), false),
                    Some(InvocationEvent::Started(_)) | Some(InvocationEvent::Delivered) => {
                        (Bytes::new(), false)
                    }
                    Some(InvocationEvent::Done) | None => (invoke_complete(None), true),
                    Some(InvocationEvent::Failed { code, details }) => {
                        (invoke_complete(Some((code, details))), true)
                    }
                };
                Some((Ok::<Bytes, std::io::Error>(frame), (first, rx, done)))
            });
        let mut res = Response::new(Body::from_stream(stream));
        let h = res.headers_mut();
        h.insert(
            "Content-Type",
            HeaderValue::from_str(&content_type).unwrap(),
        );
        h.insert(
            "X-Amz-Executed-Version",
            HeaderValue::from_str(&qualifier).unwrap(),
        );
        return res;
    }
    let mut body = BytesMut::new();
    let mut error = None;
    let mut next = first;
    loop {
        let ev = match next.take() {
            Some(ev) => Some(ev),
            None => rx.recv().await,
        };
        match ev {
            Some(InvocationEvent::Chunk(b)) => body.extend_from_slice(&b),
            Some(InvocationEvent::Started(_)) | Some(InvocationEvent::Delivered) => {}
            Some(InvocationEvent::Done) | None => break,
            Some(InvocationEvent::Failed { code, details }) => {
                error = Some(code);
                body = BytesMut::from(details.as_bytes());
                break;
            }
        }
    }
    let mut res = Response::new(Body::from(body.freeze()));
    let h = res.headers_mut();
    h.insert(
        "Content-Type",
        HeaderValue::from_str(&content_type).unwrap(),
    );
    h.insert(
        "X-Amz-Executed-Version",
        HeaderValue::from_str(&qualifier).unwrap(),
    );
    if let Some(code) = error {
        tracing::debug!("function error {code}");
        h.insert(
            "X-Amz-Function-Error",
            HeaderValue::from_static("Unhandled"),
        );
    }
    res
}

fn payload_chunk(bytes: Bytes) -> Bytes {
    let message = Message::new(bytes)
        .add_header(Header::new(
            ":message-type",
            EsValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            EsValue::String("PayloadChunk".into()),
        ))
        .add_header(Header::new(
            ":content-type",
            EsValue::String("application/octet-stream".into()),
        ));
    frame(&message)
}

fn invoke_complete(error: Option<(String, String)>) -> Bytes {
    let body = match error {
        Some((code, details)) => {
            json!({"ErrorCode": code, "ErrorDetails": details, "LogResult": ""})
        }
        None => json!({}),
    };
    let message = Message::new(Bytes::from(body.to_string()))
        .add_header(Header::new(
            ":message-type",
            EsValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            EsValue::String("InvokeComplete".into()),
        ))
        .add_header(Header::new(
            ":content-type",
            EsValue::String("application/json".into()),
        ));
    frame(&message)
}

fn frame(message: &Message) -> Bytes {
    let mut buf = BytesMut::new();
    aws_smithy_eventstream::frame::write_message_to(message, &mut buf).expect("frame encodes");
    buf.freeze()
}

fn drop_env(shared: &Shared, key: &str) {
    if let Some(env) = shared.envs.lock().unwrap().remove(key) {
        env.kill();
    }
}

/// The warm environment of a function version, started when missing, dead
/// or built from older code.
async fn exec_env(
    shared: &Arc<Shared>,
    name: &str,
    qualifier: &str,
    config: &FunctionConfig,
) -> Result<Arc<ExecEnv>, String> {
    let key = format!("{name}:{qualifier}");
    let _starting = shared.starting.lock().await;
    {
        let mut envs = shared.envs.lock().unwrap();
        if let Some(env) = envs.get(&key) {
            if env.revision == config.revision && !*env.exited.borrow() {
                return Ok(env.clone());
            }
            if let Some(old) = envs.remove(&key) {
                old.kill();
            }
        }
    }
    let zip = match &config.code {
        Code::Zip(bytes) => bytes.as_ref().clone(),
        Code::S3 { bucket, key } => shared
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| format!("s3://{bucket}/{key}: {e:?}"))?
            .body
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .into_bytes()
            .to_vec(),
    };
    let dir = tempfile::Builder::new()
        .prefix("lambda-task-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let task = dir.path().join("task");
    unpack(&zip, &task)?;
    let env = start_env(shared, &key, name, qualifier, config, dir, &task).await?;
    shared.envs.lock().unwrap().insert(key, env.clone());
    Ok(env)
}

fn unpack(zip: &[u8], dest: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(|e| e.to_string())?;
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).map_err(|e| e.to_string())?;
        let rel = file.enclosed_name().ok_or("unsafe path in the artifact")?;
        let path = dest.join(rel);
        if file.is_dir() {
            std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
        let mut out = std::fs::File::create(&path).map_err(|e| e.to_string())?;
        std::io::copy(&mut file, &mut out).map_err(|e| e.to_string())?;
        let mode = file.unix_mode().unwrap_or(0o644) & 0o777;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runtime API state of one environment.
struct RuntimeApi {
    /// One poller (the bootstrap) takes invocations from here.
    next: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    inflight: Mutex<HashMap<String, (mpsc::Sender<InvocationEvent>, std::time::Instant)>>,
    init_error: Mutex<Option<String>>,
    times: Arc<Mutex<Vec<Duration>>>,
}

async fn start_env(
    shared: &Arc<Shared>,
    key: &str,
    name: &str,
    qualifier: &str,
    config: &FunctionConfig,
    dir: tempfile::TempDir,
    task: &Path,
) -> Result<Arc<ExecEnv>, String> {
    let (queue, rx) = mpsc::channel(16);
    let api = Arc::new(RuntimeApi {
        next: tokio::sync::Mutex::new(rx),
        inflight: Mutex::default(),
        init_error: Mutex::default(),
        times: shared.runtime_times.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let runtime_api = listener.local_addr().unwrap().to_string();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = axum::Router::new()
        .fallback(runtime_route)
        .with_state(api.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // The managed runtime execs AWS_LAMBDA_EXEC_WRAPPER with its own start
    // command; paths under /var/task are this unpacked folder.
    let wrapper = config
        .env
        .get("AWS_LAMBDA_EXEC_WRAPPER")
        .map(|w| match w.strip_prefix("/var/task/") {
            Some(rel) => task.join(rel),
            None => PathBuf::from(w),
        })
        .unwrap_or_else(|| task.join("bin/plugin-runner"));
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(&wrapper);
    cmd.arg(&shared.python)
        .args(["-u", "/var/runtime/bootstrap.py"])
        .current_dir(task)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("LANG", "C.UTF-8")
        .env("TMPDIR", dir.path())
        .envs(config.env.iter())
        .env("AWS_LAMBDA_RUNTIME_API", &runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", qualifier)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", config.memory.to_string())
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "emulator")
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("LAMBDA_TASK_ROOT", task)
        .env("LAMBDA_RUNTIME_DIR", "/var/runtime")
        .env("_HANDLER", "plugind.handler")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", wrapper.display()))?;
    let pid = child.id().unwrap_or_default();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let logs = shared.logs.clone();
        let echo = std::env::var_os("PLUGIND_EMULATOR_LOG").is_some();
        let tag = key.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[{tag}] {line}");
                }
                logs.lock().unwrap().push(line);
            }
        });
    }
    let (exit_tx, exited) = watch::channel(false);
    let env = Arc::new(ExecEnv {
        key: key.to_owned(),
        revision: config.revision,
        pid,
        queue,
        exited,
        child: Mutex::new(None),
        server,
        _dir: dir,
    });
    // Reaps the bootstrap and tells waiting invocations when it dies.
    let weak = Arc::downgrade(&env);
    tokio::spawn(async move {
        let _ = child.wait().await;
        let _ = exit_tx.send(true);
        drop(weak);
    });
    Ok(env)
}

/// The Runtime API the bootstrap polls.
async fn runtime_route(State(api): State<Arc<RuntimeApi>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method().as_str(), segments.as_slice()) {
        ("GET", ["2018-06-01", "runtime", "invocation", "next"]) => {
            let invocation = {
                let mut next = api.next.lock().await;
                next.recv().await
            };
            let Some(inv) = invocation else {
                return StatusCode::GONE.into_response();
            };
            // AWS starts the function's timeout when the runtime takes the
            // invocation; the init phase before it has its own budget.
            let deadline = SystemTime::now() + inv.timeout;
            let deadline_ms = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            let _ = inv.events.send(InvocationEvent::Delivered).await;
            api.inflight
                .lock()
                .unwrap()
                .insert(inv.id.clone(), (inv.events, std::time::Instant::now()));
            let mut res = Response::new(Body::from(inv.payload));
            let h = res.headers_mut();
            h.insert(
                "Lambda-Runtime-Aws-Request-Id",
                HeaderValue::from_str(&inv.id).unwrap(),
            );
            h.insert(
                "Lambda-Runtime-Deadline-Ms",
                HeaderValue::from_str(&deadline_ms.to_string()).unwrap(),
            );
            h.insert(
                "Lambda-Runtime-Invoked-Function-Arn",
                HeaderValue::from_str(&inv.arn).unwrap(),
            );
            h.insert(
                "Lambda-Runtime-Trace-Id",
                HeaderValue::from_static("Root=1-00000000-000000000000000000000000;Sampled=0"),
            );
            h.insert("Content-Type", HeaderValue::from_static("application/json"));
            res
        }
        ("POST", ["2018-06-01", "runtime", "invocation", id, "response"]) => {
            let Some((events, delivered)) = api.inflight.lock().unwrap().remove(*id) else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            let content_type = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            let _ = events.send(InvocationEvent::Started(content_type)).await;
            let mut body = req.into_body().into_data_stream();
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(chunk) if chunk.is_empty() => {}
                    Ok(chunk) => {
                        let _ = events.send(InvocationEvent::Chunk(chunk)).await;
                    }
                    Err(e) => {
                        let _ = events
                            .send(InvocationEvent::Failed {
                                code: "Runtime.StreamError".into(),
                                details: e.to_string(),
                            })
                            .await;
                        return StatusCode::ACCEPTED.into_response();
                    }
                }
            }
            api.times.lock().unwrap().push(delivered.elapsed());
            let _ = events.send(InvocationEvent::Done).await;
            StatusCode::ACCEPTED.into_response()
        }
        ("POST", ["2018-06-01", "runtime", "invocation", id, "error"]) => {
            let Some((events, _)) = api.inflight.lock().unwrap().remove(*id) else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            let body = axum::body::to_bytes(req.into_body(), 1024 * 1024)
                .await
                .unwrap_or_default();
            let _ = events
                .send(InvocationEvent::Failed {
                    code: "Unhandled".into(),
                    details: String::from_utf8_lossy(&body).into_owned(),
                })
                .await;
            StatusCode::ACCEPTED.into_response()
        }
        ("POST", ["2018-06-01", "runtime", "init", "error"]) => {
            let body = axum::body::to_bytes(req.into_body(), 1024 * 1024)
                .await
                .unwrap_or_default();
            *api.init_error.lock().unwrap() = Some(String::from_utf8_lossy(&body).into_owned());
            StatusCode::ACCEPTED.into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Reads a whole InvokeWithResponseStream answer: the payload bytes in
/// order (each chunk kept apart) and the InvokeComplete error, if any.
pub async fn read_stream(
    mut output: aws_sdk_lambda::operation::invoke_with_response_stream::InvokeWithResponseStreamOutput,
) -> (Vec<Bytes>, Option<(String, String)>) {
    use aws_sdk_lambda::types::InvokeWithResponseStreamResponseEvent as Ev;
    let mut chunks = Vec::new();
    let mut error = None;
    while let Some(event) = output
        .event_stream
        .recv()
        .await
        .expect("event stream reads")
    {
        match event {
            Ev::PayloadChunk(chunk) => {
                if let Some(p) = chunk.payload {
                    chunks.push(Bytes::from(p.into_inner()));
                }
            }
            Ev::InvokeComplete(done) => {
                if let Some(code) = done.error_code {
                    error = Some((code, done.error_details.unwrap_or_default()));
                }
            }
            _ => {}
        }
    }
    (chunks, error)
}

/// Strips `lambda_runtime`'s metadata prelude (JSON, then 8 NUL bytes) from
/// the front of a streamed body, as a reader of an
/// `application/vnd.awslambda.http-integration-response` stream must.
pub fn strip_prelude(body: &[u8]) -> &[u8] {
    let zeros = [0u8; 8];
    match body.windows(8).position(|w| w == zeros) {
        Some(pos) if body.first() == Some(&b'{') => &body[pos + 8..],
        _ => body,
    }
}
