//! The serverless host: every plugin is an AWS Lambda function, and each
//! session is one `InvokeWithResponseStream` call on the function version
//! recorded at install.
//!
//! The invocation payload is the session's request line (PROTOCOL.md §2)
//! with two context fields added for the `plugin-runner` bootstrap:
//! `plugind_token` (a signed, expiring token bound to the session, tenant
//! and plugin) and `plugind_url` (where the bootstrap posts the plugin's
//! backwards calls). The streamed response body is the plugin's own session
//! lines, which are routed into the same [`SessionStream`] the other hosts
//! give, so dispatch never knows the plugin runs on Lambda.
//!
//! Throttling and transient 5xx answers are retried with jittered
//! exponential backoff, but only while no chunk has reached the caller:
//! after that a retry would repeat output.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_lambda::error::{DisplayErrorContext, SdkError};
use aws_sdk_lambda::operation::invoke_with_response_stream::InvokeWithResponseStreamError;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvokeWithResponseStreamResponseEvent as Event;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::protocol::{request_line, PluginEvent, SessionMessage};
use super::{
    PluginError, PluginRuntime, RuntimeError, RuntimeState, SessionRequest, SessionStream,
    SessionTable,
};
use crate::settings::Settings;

/// Lambda's largest synchronous invocation payload.
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// How much longer than its session a callback token stays valid: the
/// bootstrap may still post a backwards call just before the session ends.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// `error_type` of the typed error a failed Lambda function gives callers.
pub const FUNCTION_ERROR_TYPE: &str = "PluginLambdaFunctionError";

type HmacSha256 = Hmac<Sha256>;

/// What a backwards-invocation token vouches for. Everything the daemon
/// needs to serve the call travels in the token, so any daemon replica can
/// serve it without shared session state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub session_id: String,
    pub tenant_id: String,
    /// `author/name`.
    pub plugin_id: String,
    /// The plugin unique identifier (its manifest gives the permissions).
    pub identifier: String,
    pub user_id: String,
    pub access_type: String,
    /// Expiry, unix seconds.
    pub exp: u64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token belongs to another session")]
    WrongSession,
}

/// Seconds since the unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn mac(key: &[u8], payload: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    mac
}

/// Signs `claims`: `base64url(JSON claims).base64url(HMAC-SHA256)`. The MAC
/// covers the whole encoded claims (session, tenant, plugin, expiry and the
/// rest), so no field can be changed.
pub fn sign_token(key: &[u8], claims: &TokenClaims) -> String {
    let payload = b64().encode(serde_json::to_vec(claims).unwrap_or_default());
    let tag = mac(key, &payload).finalize().into_bytes();
    format!("{payload}.{}", b64().encode(tag))
}

/// Checks a token's signature, expiry (against `now`, unix seconds) and
/// session; returns its claims.
pub fn verify_token(
    key: &[u8],
    token: &str,
    session_id: &str,
    now: u64,
) -> Result<TokenClaims, TokenError> {
    let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let tag = b64().decode(tag).map_err(|_| TokenError::Malformed)?;
    mac(key, payload)
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    let raw = b64().decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: TokenClaims = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if claims.session_id != session_id {
        return Err(TokenError::WrongSession);
    }
    Ok(claims)
}

/// Settings shared by every serverless runtime.
#[derive(Clone)]
pub struct ServerlessConfig {
    /// Daemon URL the bootstrap posts backwards calls to.
    pub callback_url: String,
    /// Key signing the callback tokens.
    pub token_key: Arc<Vec<u8>>,
    /// Retries of a throttled or 5xx invocation before its first chunk.
    pub max_retries: u32,
    /// First backoff delay; doubled on each retry, with jitter.
    pub backoff_base: Duration,
    /// Session time limit when the request names none.
    pub default_timeout: Duration,
    /// Longest line the plugin may send.
    pub max_line: usize,
    /// Largest invocation payload sent (MAX_SERVERLESS_REQUEST_BYTES, at
    /// most [`MAX_PAYLOAD`]).
    pub max_request_bytes: usize,
}

impl std::fmt::Debug for ServerlessConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerlessConfig")
            .field("callback_url", &self.callback_url)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl ServerlessConfig {
    /// The configuration of the settings.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            callback_url: settings
                .plugin_serverless_callback_url
                .clone()
                .unwrap_or_default(),
            token_key: Arc::new(settings.serverless_token_key()),
            max_retries: settings.max_serverless_retry_times,
            backoff_base: Duration::from_millis(200),
            default_timeout: Duration::from_secs(settings.plugin_max_execution_timeout),
            max_line: settings.plugin_runtime_max_buffer_size,
            max_request_bytes: settings.max_serverless_request_bytes.min(MAX_PAYLOAD),
        }
    }
}

/// A Lambda client for invocations: the SDK's own retries are off because
/// [`ServerlessRuntime`] retries itself, and only before the first chunk.
pub fn invoke_client(sdk: &aws_config::SdkConfig) -> aws_sdk_lambda::Client {
    let config = aws_sdk_lambda::config::Builder::from(sdk)
        .retry_config(aws_sdk_lambda::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_lambda::Client::from_conf(config)
}

/// A plugin running as a published Lambda function version.
pub struct ServerlessRuntime {
    identity: String,
    function_name: String,
    version: String,
    client: aws_sdk_lambda::Client,
    config: ServerlessConfig,
    state: Mutex<RuntimeState>,
}

impl std::fmt::Debug for ServerlessRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerlessRuntime")
            .field("identity", &self.identity)
            .field("function_name", &self.function_name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ServerlessRuntime {
    /// The runtime of `identity`, invoking `function_name:version`.
    pub fn new(
        identity: impl Into<String>,
        function_name: impl Into<String>,
        version: impl Into<String>,
        client: aws_sdk_lambda::Client,
        config: ServerlessConfig,
    ) -> Self {
        Self {
            identity: identity.into(),
            function_name: function_name.into(),
            version: version.into(),
            client,
            config,
            state: Mutex::new(RuntimeState::Ready),
        }
    }

    /// The function this runtime invokes.
    pub fn function_name(&self) -> &str {
        &self.function_name
    }

    /// The published version it invokes.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn plugin_id(&self) -> &str {
        self.identity.split(':').next().unwrap_or(&self.identity)
    }

    /// The invocation payload: the request line, its context carrying the
    /// callback token and URL.
    pub fn payload(
        &self,
        request: &SessionRequest,
        timeout: Duration,
    ) -> Result<Vec<u8>, RuntimeError> {
        let claims = TokenClaims {
            session_id: request.header.session_id.clone(),
            tenant_id: request.tenant_id.clone(),
            plugin_id: self.plugin_id().to_owned(),
            identifier: self.identity.clone(),
            user_id: request.user_id.clone(),
            access_type: request.access_type.clone(),
            exp: unix_now() + timeout.as_secs() + TOKEN_MARGIN.as_secs(),
        };
        let token = sign_token(&self.config.token_key, &claims);
        let mut header = request.header.clone();
        let mut context = match std::mem::take(&mut header.context) {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        context.insert("plugind_token".into(), Value::String(token));
        context.insert(
            "plugind_url".into(),
            Value::String(self.config.callback_url.clone()),
        );
        header.context = Value::Object(context);
        let line = request_line(
            &header,
            &request.user_id,
            &request.access_type,
            &request.action,
            &request.payload,
        );
        let limit = self.config.max_request_bytes.min(MAX_PAYLOAD);
        if line.len() > limit {
            return Err(RuntimeError::PayloadTooLarge {
                size: line.len(),
                limit,
            });
        }
        Ok(line.to_vec())
    }
}

#[async_trait::async_trait]
impl PluginRuntime for ServerlessRuntime {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn state(&self) -> RuntimeState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn wait_ready(&self, _timeout: Duration) -> Result<(), RuntimeError> {
        // A published version is ready by construction: the install waited
        // for it to become Active.
        match self.state() {
            RuntimeState::Ready => Ok(()),
            other => Err(RuntimeError::Unavailable(format!("{other:?}"))),
        }
    }

    async fn invoke(&self, request: SessionRequest) -> Result<SessionStream, RuntimeError> {
        if self.state() != RuntimeState::Ready {
            return Err(RuntimeError::Unavailable(format!(
                "plugin {} is stopped",
                self.identity
            )));
        }
        let timeout = request.timeout.unwrap_or(self.config.default_timeout);
        let payload = self.payload(&request, timeout)?;
        // One table per invocation: the Lambda stream carries one session,
        // and failing "all" of it fails exactly this one with a typed error.
        let table = SessionTable::new();
        // Backwards calls travel over the callback route, never this stream,
        // so nothing is ever written back; the closed channel says so.
        let (writer, _) = mpsc::channel(1);
        let session_id = request.header.session_id.clone();
        let stream = table.open(request.header, writer, timeout)?;
        let watched = Arc::clone(&table);
        let invocation = Invocation {
            client: self.client.clone(),
            function_name: self.function_name.clone(),
            version: self.version.clone(),
            payload,
            table,
            session_id,
            max_retries: self.config.max_retries,
            backoff_base: self.config.backoff_base,
            max_line: self.config.max_line,
        };
        let span =
            tracing::debug_span!("lambda", function = %self.function_name, version = %self.version);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                // The session stream enforces the caller's deadline; this
                // bound only makes sure the task never outlives it by much.
                // A caller that leaves ends the call (and its Lambda stream).
                let _ = tokio::time::timeout(timeout + TOKEN_MARGIN, async {
                    tokio::select! {
                        _ = invocation.run() => {}
                        _ = caller_gone(&watched) => {
                            tracing::debug!("caller left; dropping the Lambda stream");
                        }
                    }
                })
                .await;
            },
            span,
        ));
        Ok(stream)
    }

    async fn shutdown(&self) {
        // Invocations in flight run to their end on Lambda; new ones are refused.
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = RuntimeState::Stopped;
    }
}

/// How often a running invocation checks that its caller still reads.
const CALLER_CHECK: Duration = Duration::from_millis(500);

/// Resolves once the session's reader went away (its entry left the table).
async fn caller_gone(table: &SessionTable) {
    loop {
        tokio::time::sleep(CALLER_CHECK).await;
        if table.is_empty() {
            return;
        }
    }
}

/// How an invoke call failed.
#[derive(Debug)]
enum Failure {
    /// Throttled or a transient server fault: worth another try.
    Retryable(String),
    /// Lambda refused the payload size.
    TooLarge(String),
    /// Anything else; final.
    Final(RuntimeError),
}

fn classify(
    e: &SdkError<InvokeWithResponseStreamError, aws_sdk_lambda::config::http::HttpResponse>,
) -> Failure {
    let text = DisplayErrorContext(e).to_string();
    let status = e.raw_response().map(|r| r.status().as_u16());
    if let Some(service) = e.as_service_error() {
        if service.is_request_too_large_exception() || status == Some(413) {
            return Failure::TooLarge(text);
        }
        if service.is_too_many_requests_exception()
            || service.is_service_exception()
            || service.is_ec2_throttled_exception()
            || service.is_resource_not_ready_exception()
            || status.is_some_and(|s| s == 429 || s >= 500)
        {
            return Failure::Retryable(text);
        }
        return Failure::Final(RuntimeError::Invoke(text));
    }
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            Failure::Retryable(text)
        }
        _ if status.is_some_and(|s| s == 429 || s >= 500) => Failure::Retryable(text),
        _ => Failure::Final(RuntimeError::Invoke(text)),
    }
}

/// What reading one response stream came to.
enum Outcome {
    /// The session ended (end, error, or the caller left).
    Done,
    /// Failed before any chunk reached the caller; may be retried.
    FailedEarly(String),
    /// Failed for good.
    Failed(RuntimeError),
}

/// One session's invocation, owned by its task.
struct Invocation {
    client: aws_sdk_lambda::Client,
    function_name: String,
    version: String,
    payload: Vec<u8>,
    table: Arc<SessionTable>,
    session_id: String,
    max_retries: u32,
    backoff_base: Duration,
    max_line: usize,
}

impl Invocation {
    fn fail(&self, error: RuntimeError) {
        tracing::debug!(error = %error, "lambda invocation failed");
        let text = error.to_string();
        // `fail_all` wants a factory; the table holds this one session, so
        // the typed error is handed out once.
        let slot = Mutex::new(Some(error));
        self.table.fail_all(|| {
            slot.lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| RuntimeError::Invoke(text.clone()))
        });
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.backoff_base.saturating_mul(1 << attempt.min(10));
        let low = ceiling / 2;
        let jitter =
            rand::thread_rng().gen_range(0..=ceiling.saturating_sub(low).as_millis() as u64);
        low + Duration::from_millis(jitter)
    }

    async fn run(self) {
        let mut attempt = 0u32;
        loop {
            let sent = self
                .client
                .invoke_with_response_stream()
                .function_name(&self.function_name)
                .qualifier(&self.version)
                .payload(Blob::new(self.payload.clone()))
                .send()
                .await;
            let retry_reason = match sent {
                Ok(out) => match self.read(out).await {
                    Outcome::Done => return,
                    Outcome::Failed(e) => return self.fail(e),
                    Outcome::FailedEarly(reason) => reason,
                },
                Err(e) => match classify(&e) {
                    Failure::Retryable(reason) => reason,
                    Failure::TooLarge(reason) => {
                        tracing::debug!(%reason, "payload refused");
                        return self.fail(RuntimeError::PayloadTooLarge {
                            size: self.payload.len(),
                            limit: MAX_PAYLOAD,
                        });
                    }
                    Failure::Final(e) => return self.fail(e),
                },
            };
            if self.table.is_empty() {
                // The caller went away; nobody waits for a retry.
                return;
            }
            if attempt >= self.max_retries {
                return self.fail(RuntimeError::Invoke(format!(
                    "Lambda invocation failed after {} attempts: {retry_reason}",
                    attempt + 1
                )));
            }
            let delay = self.backoff(attempt);
            attempt += 1;
            tracing::info!(attempt, ?delay, reason = %retry_reason, "retrying Lambda invocation");
            tokio::time::sleep(delay).await;
        }
    }

    /// Reads the event stream, routing the plugin's session lines.
    async fn read(
        &self,
        mut out: aws_sdk_lambda::operation::invoke_with_response_stream::InvokeWithResponseStreamOutput,
    ) -> Outcome {
        let mut buf: Vec<u8> = Vec::new();
        let mut delivered = false;
        let mut prelude_seen = false;
        loop {
            let event = match out.event_stream.recv().await {
                Ok(event) => event,
                Err(e) => {
                    let text =
                        format!("Lambda response stream failed: {}", DisplayErrorContext(&e));
                    return if delivered {
                        Outcome::Failed(RuntimeError::Invoke(text))
                    } else {
                        Outcome::FailedEarly(text)
                    };
                }
            };
            match event {
                Some(Event::PayloadChunk(update)) => {
                    if let Some(blob) = update.payload {
                        buf.extend_from_slice(blob.as_ref());
                    }
                    if !prelude_seen {
                        match scan_prelude(&buf) {
                            Prelude::Undecided => {}
                            Prelude::Absent => prelude_seen = true,
                            Prelude::Ends(end) => {
                                buf.drain(..end);
                                prelude_seen = true;
                            }
                        }
                    }
                    while let Some(pos) = buf
                        .iter()
                        .position(|b| *b == b'\n')
                        .filter(|_| prelude_seen)
                    {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        if let Some(outcome) =
                            self.line(&line[..line.len() - 1], &mut delivered).await
                        {
                            return outcome;
                        }
                    }
                    if buf.len() > self.max_line {
                        return Outcome::Failed(RuntimeError::Invoke(format!(
                            "plugin line longer than {} bytes",
                            self.max_line
                        )));
                    }
                }
                Some(Event::InvokeComplete(done)) => {
                    if let Some(outcome) =
                        self.line(&std::mem::take(&mut buf), &mut delivered).await
                    {
                        return outcome;
                    }
                    if let Some(code) = done.error_code.filter(|c| !c.is_empty()) {
                        let details = done.error_details.unwrap_or_default();
                        return Outcome::Failed(function_error(&code, &details));
                    }
                    return Outcome::Failed(RuntimeError::ConnectionClosed);
                }
                Some(_) => {}
                None => {
                    if let Some(outcome) =
                        self.line(&std::mem::take(&mut buf), &mut delivered).await
                    {
                        return outcome;
                    }
                    return Outcome::Failed(RuntimeError::ConnectionClosed);
                }
            }
        }
    }

    /// Handles one line; `Some` when the session is over.
    async fn line(&self, line: &[u8], delivered: &mut bool) -> Option<Outcome> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let event = match PluginEvent::parse(line) {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(error = %e, "skipping a non-protocol line from Lambda");
                return None;
            }
        };
        let PluginEvent::Session {
            session_id,
            message,
        } = event
        else {
            return None;
        };
        if session_id != self.session_id {
            tracing::warn!(%session_id, "line of another session in a Lambda stream");
            return None;
        }
        let last = match &message {
            SessionMessage::Stream(_) => false,
            SessionMessage::End | SessionMessage::Error(_) => true,
            SessionMessage::Invoke(_) => {
                tracing::warn!(
                    "backwards call relayed in the response stream; the bootstrap should post it"
                );
                return None;
            }
        };
        if !self.table.route(&self.session_id, message).await {
            // The caller went away: stop reading, which ends the stream.
            return Some(Outcome::Done);
        }
        *delivered = true;
        last.then_some(Outcome::Done)
    }
}

/// Where a streamed body's metadata prelude ends.
#[derive(Debug, PartialEq, Eq)]
enum Prelude {
    /// Not enough bytes yet to tell.
    Undecided,
    /// The body starts with session lines.
    Absent,
    /// The prelude takes the first `n` bytes.
    Ends(usize),
}

/// `lambda_runtime` opens every streamed response with a metadata prelude
/// (one JSON object, then eight NUL bytes) meant for function URLs; the
/// Invoke API passes it through, so it precedes the plugin's first line.
/// The prelude is one line of JSON without a newline, so a newline before
/// the NULs means there is none.
fn scan_prelude(buf: &[u8]) -> Prelude {
    const DELIMITER: [u8; 8] = [0; 8];
    match buf.first() {
        None => return Prelude::Undecided,
        Some(b'{') => {}
        Some(_) => return Prelude::Absent,
    }
    let newline = buf.iter().position(|b| *b == b'\n');
    let delimiter = buf.windows(DELIMITER.len()).position(|w| w == DELIMITER);
    match (delimiter, newline) {
        (Some(d), Some(n)) if n < d => Prelude::Absent,
        (Some(d), _) => Prelude::Ends(d + DELIMITER.len()),
        (None, Some(_)) => Prelude::Absent,
        (None, None) => Prelude::Undecided,
    }
}

/// The typed error of a function that failed: timeouts read as the
/// daemon's own timeout, the rest as a plugin error naming Lambda's code.
fn function_error(code: &str, details: &str) -> RuntimeError {
    let lower = format!("{code} {details}").to_ascii_lowercase();
    if lower.contains("timedout") || lower.contains("timed out") {
        return RuntimeError::Timeout;
    }
    let message = serde_json::from_str::<Value>(details)
        .ok()
        .and_then(|v| {
            v.get("errorMessage")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| details.to_owned());
    RuntimeError::Plugin(PluginError {
        message: if message.is_empty() {
            code.to_owned()
        } else {
            message
        },
        error_type: FUNCTION_ERROR_TYPE.to_owned(),
        args: Some(serde_json::json!({ "error_code": code })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> TokenClaims {
        TokenClaims {
            session_id: "s1".into(),
            tenant_id: "t1".into(),
            plugin_id: "a/b".into(),
            identifier: "a/b:0.0.1@c".into(),
            user_id: "u".into(),
            access_type: "tool".into(),
            exp,
        }
    }

    #[test]
    fn tokens_round_trip() {
        let token = sign_token(b"key", &claims(100));
        assert_eq!(verify_token(b"key", &token, "s1", 99).unwrap(), claims(100));
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let token = sign_token(b"key", &claims(100));
        assert_eq!(
            verify_token(b"other", &token, "s1", 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_token(b"key", &token, "s1", 100),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_token(b"key", &token, "s2", 0),
            Err(TokenError::WrongSession)
        );
        // Claims edited after signing.
        let (_, tag) = token.split_once('.').unwrap();
        let mut edited = claims(100);
        edited.tenant_id = "t2".into();
        let payload = b64().encode(serde_json::to_vec(&edited).unwrap());
        assert_eq!(
            verify_token(b"key", &format!("{payload}.{tag}"), "s1", 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_token(b"key", "garbage", "s1", 0),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn the_metadata_prelude_is_found_and_only_it() {
        let prelude = br#"{"statusCode":200,"headers":{},"cookies":[]}"#;
        let mut body = prelude.to_vec();
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(b"{\"session_id\":\"s\"}\n");
        assert_eq!(scan_prelude(&body), Prelude::Ends(prelude.len() + 8));
        assert_eq!(scan_prelude(&body[..10]), Prelude::Undecided);
        assert_eq!(scan_prelude(b""), Prelude::Undecided);
        assert_eq!(scan_prelude(b"{\"session_id\":\"s\"}\n{"), Prelude::Absent);
        assert_eq!(scan_prelude(b"plain\n"), Prelude::Absent);
    }

    #[test]
    fn function_errors_are_typed() {
        assert!(matches!(
            function_error("Sandbox.Timedout", "Task timed out after 3.00 seconds"),
            RuntimeError::Timeout
        ));
        match function_error(
            "Unhandled",
            r#"{"errorMessage":"boom","errorType":"Runtime.ExitError"}"#,
        ) {
            RuntimeError::Plugin(e) => {
                assert_eq!(e.message, "boom");
                assert_eq!(e.error_type, FUNCTION_ERROR_TYPE);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payloads_over_max_serverless_request_bytes_are_refused() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let config = ServerlessConfig {
            callback_url: "http://daemon.test".into(),
            token_key: Arc::new(b"key".to_vec()),
            max_retries: 0,
            backoff_base: Duration::from_millis(1),
            default_timeout: Duration::from_secs(5),
            max_line: 1 << 20,
            max_request_bytes: 4096,
        };
        let runtime = ServerlessRuntime::new("a/b:0.0.1@c", "f", "1", invoke_client(&sdk), config);
        let mut small = serde_json::Map::new();
        small.insert("q".into(), Value::String("x".repeat(100)));
        let request = SessionRequest::new("tool", "invoke_tool", "u", small);
        assert!(runtime.payload(&request, Duration::from_secs(5)).is_ok());
        let mut big = serde_json::Map::new();
        big.insert("q".into(), Value::String("x".repeat(5000)));
        let request = SessionRequest::new("tool", "invoke_tool", "u", big);
        match runtime.payload(&request, Duration::from_secs(5)) {
            Err(RuntimeError::PayloadTooLarge { limit, .. }) => assert_eq!(limit, 4096),
            other => panic!("{other:?}"),
        }
    }
}
