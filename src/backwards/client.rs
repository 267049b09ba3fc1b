//! HTTP client of Dify's inner API (`{DIFY_INNER_API_URL}/inner/api/…`),
//! built once and shared (reference: `dify_invocation/calldify/`).
//!
//! Struct replies are one JSON object `{"data":…,"error":""}`; stream replies
//! are a sequence of such objects, length-prefixed (see [`super::frame`]).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio_util::codec::FramedRead;
use tokio_util::io::StreamReader;

use super::frame::{line_payload, FrameError, InnerStreamDecoder};
use crate::settings::{Secret, Settings};

/// Failures talking to the inner API. The texts follow the reference's,
/// since they reach the plugin as error messages.
#[derive(Debug, thiserror::Error)]
pub enum InnerApiError {
    /// Connecting, sending or reading failed (includes timeouts).
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// Dify answered with a status other than 2xx and no usable body.
    #[error("request failed with status code: {status} and respond with: {body}")]
    Status { status: u16, body: String },
    /// Dify answered with its `error` field set.
    #[error("request failed: {0}")]
    Remote(String),
    /// Dify answered without `data`.
    #[error("data is nil")]
    NoData,
    /// The reply is not the JSON Dify sends.
    #[error("invalid response: {0}")]
    Decode(String),
    /// A streamed reply could not be cut into messages.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The client could not be built (bad base URL, TLS setup).
    #[error("inner api client: {0}")]
    Config(String),
}

/// How to reach the inner API.
#[derive(Debug, Clone)]
pub struct InnerApiConfig {
    /// `DIFY_INNER_API_URL`, e.g. `http://api:5001`.
    pub base_url: String,
    /// `DIFY_INNER_API_KEY`, sent as `X-Inner-Api-Key`.
    pub api_key: Secret,
    /// Longest wait to connect (`DIFY_BACKWARDS_INVOCATION_WRITE_TIMEOUT`).
    pub write_timeout: Duration,
    /// Longest a whole call may take, streamed body included
    /// (`DIFY_BACKWARDS_INVOCATION_READ_TIMEOUT`).
    pub read_timeout: Duration,
    /// Largest message in a reply, in bytes.
    pub max_message: usize,
}

impl InnerApiConfig {
    /// The configuration the settings describe.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            base_url: settings.dify_inner_api_url.clone(),
            api_key: settings.dify_inner_api_key.clone(),
            write_timeout: Duration::from_millis(settings.dify_backwards_invocation_write_timeout),
            read_timeout: Duration::from_millis(settings.dify_backwards_invocation_read_timeout),
            max_message: settings.response_max_buffer_size,
        }
    }
}

/// One `{"data","error"}` message of a reply.
#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

impl Reply {
    fn into_data(self) -> Result<Value, InnerApiError> {
        match (self.error, self.data) {
            (Some(error), _) if !error.is_empty() => Err(InnerApiError::Remote(error)),
            (_, None | Some(Value::Null)) => Err(InnerApiError::NoData),
            (_, Some(data)) => Ok(data),
        }
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<Bytes, FrameError>> + Send>>;

/// The `data` values of a stream reply, read as they arrive.
pub struct InnerApiStream {
    messages: Messages,
    done: bool,
}

impl std::fmt::Debug for InnerApiStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InnerApiStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl InnerApiStream {
    /// The next `data` value; `None` at the end. After an error the stream
    /// is over. Messages that are not JSON objects are skipped, as the
    /// reference skips stream data it cannot parse.
    pub async fn next(&mut self) -> Option<Result<Value, InnerApiError>> {
        while !self.done {
            let message = match self.messages.next().await {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                Some(Ok(message)) => message,
            };
            let Some(payload) = line_payload(&message) else {
                continue;
            };
            let reply: Reply = match serde_json::from_slice(payload) {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping inner api stream data that does not parse");
                    continue;
                }
            };
            let item = reply.into_data();
            if item.is_err() {
                self.done = true;
            }
            return Some(item);
        }
        None
    }
}

/// Client of Dify's inner API; cheap to clone, built once.
#[derive(Debug, Clone)]
pub struct InnerApiClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    read_timeout: Duration,
    max_message: usize,
}

impl InnerApiClient {
    /// Builds the client (one connection pool for the daemon's life).
    pub fn new(config: InnerApiConfig) -> Result<Self, InnerApiError> {
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(InnerApiError::Config(format!(
                "base url must be http:// or https://, got {base_url:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.write_timeout)
            .pool_idle_timeout(Duration::from_secs(120))
            .tcp_keepalive(Duration::from_secs(120))
            .build()
            .map_err(|e| InnerApiError::Config(e.to_string()))?;
        Ok(Self {
            http,
            base_url,
            api_key: config.api_key,
            read_timeout: config.read_timeout,
            max_message: config.max_message,
        })
    }

    /// The full URL of an inner API path such as `invoke/llm`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}/inner/api/{}",
            self.base_url,
            path.trim_start_matches('/')
        )
    }

    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response, InnerApiError> {
        Ok(self
            .http
            .post(self.url(path))
            .header("X-Inner-Api-Key", self.api_key.expose())
            .timeout(self.read_timeout)
            .json(body)
            .send()
            .await?)
    }

    /// Calls a path answering one `{"data","error"}` object; returns `data`.
    pub async fn request_struct(&self, path: &str, body: &Value) -> Result<Value, InnerApiError> {
        let response = self.post(path, body).await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let reply = serde_json::from_slice::<Reply>(&bytes);
        let has_error = |r: &Reply| r.error.as_deref().is_some_and(|e| !e.is_empty());
        match reply {
            // Dify reports failures in `error` with status 200; keep that
            // text whatever the status.
            Ok(reply) if status.is_success() || has_error(&reply) => reply.into_data(),
            Err(e) if status.is_success() => Err(InnerApiError::Decode(e.to_string())),
            // A bare 4xx/5xx (wrong key → 404, crash → 500): the status says more
            // than an empty `data` would.
            _ => Err(InnerApiError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }

    /// Calls a path answering a stream; the reply is read lazily, so each
    /// message can be passed on as soon as it arrives.
    pub async fn request_stream(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<InnerApiStream, InnerApiError> {
        let response = self.post(path, body).await?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            return Err(InnerApiError::Status {
                status: status.as_u16(),
                body,
            });
        }
        let reader = StreamReader::new(response.bytes_stream().map_err(std::io::Error::other));
        let messages = FramedRead::new(reader, InnerStreamDecoder::new(self.max_message));
        Ok(InnerApiStream {
            messages: Box::pin(messages),
            done: false,
        })
    }

    /// Encrypts, decrypts or clears endpoint settings through Dify
    /// (`invoke/encrypt`), for the daemon's own use. As in the reference,
    /// Dify is only asked when `config` has a `secret-input` field; otherwise
    /// `data` comes back unchanged.
    pub async fn encrypt(
        &self,
        request: &EncryptRequest,
    ) -> Result<Map<String, Value>, InnerApiError> {
        if !request.needs_dify() {
            return Ok(request.data.clone());
        }
        let body = serde_json::json!({
            "tenant_id": request.tenant_id,
            "user_id": request.user_id,
            "type": "encrypt",
            "opt": request.opt.as_str(),
            "namespace": request.namespace,
            "identity": request.identity,
            "data": request.data,
            "config": request.config,
        });
        match self.request_struct("invoke/encrypt", &body).await? {
            Value::Object(mut outer) => match outer.remove("data") {
                Some(Value::Object(data)) => Ok(data),
                Some(Value::Null) | None => Ok(Map::new()),
                Some(other) => Err(InnerApiError::Decode(format!(
                    "encrypt data is not an object: {other}"
                ))),
            },
            other => Err(InnerApiError::Decode(format!(
                "encrypt reply is not an object: {other}"
            ))),
        }
    }
}

/// What `invoke/encrypt` does with the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptOpt {
    Encrypt,
    Decrypt,
    /// Drops Dify's cache of the decrypted values.
    Clear,
}

impl EncryptOpt {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Clear => "clear",
        }
    }
}

/// A request to `invoke/encrypt` (reference: `InvokeEncryptRequest`).
#[derive(Debug, Clone)]
pub struct EncryptRequest {
    pub tenant_id: String,
    pub user_id: String,
    pub opt: EncryptOpt,
    /// Always `endpoint` in the reference.
    pub namespace: String,
    /// Cache identity, e.g. the endpoint id.
    pub identity: String,
    /// The settings to transform.
    pub data: Map<String, Value>,
    /// The provider config fields (`{"name","type",…}`) describing `data`.
    pub config: Vec<Value>,
}

impl EncryptRequest {
    /// Whether any config field is a secret, i.e. whether Dify must be asked.
    pub fn needs_dify(&self) -> bool {
        self.config
            .iter()
            .any(|c| c.get("type").and_then(Value::as_str) == Some("secret-input"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reply_error_wins_over_data() {
        let r: Reply = serde_json::from_value(json!({"data": 1, "error": "boom"})).unwrap();
        assert_eq!(
            r.into_data().unwrap_err().to_string(),
            "request failed: boom"
        );
        let r: Reply = serde_json::from_value(json!({"data": null, "error": ""})).unwrap();
        assert!(matches!(r.into_data(), Err(InnerApiError::NoData)));
        let r: Reply = serde_json::from_value(json!({"data": {"a": 1}})).unwrap();
        assert_eq!(r.into_data().unwrap(), json!({"a": 1}));
    }

    #[test]
    fn encrypt_skips_dify_without_secret_fields() {
        let mut request = EncryptRequest {
            tenant_id: "t".into(),
            user_id: "u".into(),
            opt: EncryptOpt::Encrypt,
            namespace: "endpoint".into(),
            identity: "e".into(),
            data: Map::new(),
            config: vec![json!({"name": "k", "type": "text-input"})],
        };
        assert!(!request.needs_dify());
        request
            .config
            .push(json!({"name": "s", "type": "secret-input"}));
        assert!(request.needs_dify());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn timeouts_come_from_settings_with_reference_defaults() {
        use clap::Parser;
        let base = [
            "plugind",
            "--server-key",
            "k",
            "--dify-inner-api-url",
            "http://dify",
            "--dify-inner-api-key",
            "i",
        ];
        let config = InnerApiConfig::from_settings(&Cli::try_parse_from(base).unwrap().settings);
        assert_eq!(config.write_timeout, Duration::from_millis(5000));
        assert_eq!(config.read_timeout, Duration::from_millis(240_000));
        assert_eq!(config.api_key.expose(), "i");

        let mut args = base.to_vec();
        args.extend(["--dify-backwards-invocation-read-timeout", "1500"]);
        let config = InnerApiConfig::from_settings(&Cli::try_parse_from(args).unwrap().settings);
        assert_eq!(config.read_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn url_joins_without_double_slashes() {
        let client = InnerApiClient::new(InnerApiConfig {
            base_url: "http://dify:5001/".into(),
            api_key: Secret::new("k"),
            write_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            max_message: 1024,
        })
        .unwrap();
        assert_eq!(
            client.url("/invoke/llm/structured-output"),
            "http://dify:5001/inner/api/invoke/llm/structured-output"
        );
    }
}
