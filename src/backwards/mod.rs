//! Backwards invocation: a plugin, in the middle of a session, calls back
//! into Dify (models, tools, apps, workflow nodes, file upload) or into the
//! daemon's own plugin storage.
//!
//! The plugin sends a session `invoke` event whose data is
//! `{"type","backwards_request_id","request"}` ([`BackwardsRequest`]). The
//! daemon checks the manifest permission for the type, forwards the call to
//! Dify's inner API (or serves `storage` itself) and answers with
//! [`BackwardsResponse`] events: `response` (one per streamed chunk, or one
//! `struct`), or `error`, and always a final `end`
//! (reference: `internal/core/io_tunnel/backwards_invocation/`).
//!
//! Runtimes call [`handle`] for every `invoke` event, whatever transport the
//! plugin uses, and wrap each response event into a `backwards_response`
//! line of their own.

pub mod client;
pub mod frame;
pub mod permission;
pub mod storage;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

pub use client::{
    EncryptOpt, EncryptRequest, InnerApiClient, InnerApiConfig, InnerApiError, InnerApiStream,
};
pub use permission::Permission;
pub use storage::{KvError, KvStore, MemoryKvStore, PluginStorage, StorageOp};

/// Every invoke type, named as the `dify_plugin` SDK sends it
/// (`core/entities/invocation.py`) and the reference daemon knows it
/// (`dify_invocation/types.go`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum InvokeType {
    Tool,
    Llm,
    LlmStructuredOutput,
    TextEmbedding,
    MultimodalEmbedding,
    Rerank,
    MultimodalRerank,
    Tts,
    Speech2Text,
    Moderation,
    NodeParameterExtractor,
    NodeQuestionClassifier,
    App,
    Storage,
    /// Known to the reference but only used by the daemon itself (endpoint
    /// settings); a plugin asking for it is refused.
    Encrypt,
    SystemSummary,
    UploadFile,
    FetchApp,
    /// A name this daemon does not know; refused as unsupported.
    Other(String),
}

impl InvokeType {
    /// Every known type, in the SDK's order.
    pub const KNOWN: [InvokeType; 18] = [
        Self::Tool,
        Self::Llm,
        Self::LlmStructuredOutput,
        Self::TextEmbedding,
        Self::MultimodalEmbedding,
        Self::Rerank,
        Self::MultimodalRerank,
        Self::Tts,
        Self::Speech2Text,
        Self::Moderation,
        Self::NodeParameterExtractor,
        Self::NodeQuestionClassifier,
        Self::App,
        Self::Storage,
        Self::Encrypt,
        Self::SystemSummary,
        Self::UploadFile,
        Self::FetchApp,
    ];

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Tool => "tool",
            Self::Llm => "llm",
            Self::LlmStructuredOutput => "llm_structured_output",
            Self::TextEmbedding => "text_embedding",
            Self::MultimodalEmbedding => "multimodal_embedding",
            Self::Rerank => "rerank",
            Self::MultimodalRerank => "multimodal_rerank",
            Self::Tts => "tts",
            Self::Speech2Text => "speech2text",
            Self::Moderation => "moderation",
            Self::NodeParameterExtractor => "node_parameter_extractor",
            Self::NodeQuestionClassifier => "node_question_classifier",
            Self::App => "app",
            Self::Storage => "storage",
            Self::Encrypt => "encrypt",
            Self::SystemSummary => "system_summary",
            Self::UploadFile => "upload_file",
            Self::FetchApp => "fetch_app",
            Self::Other(name) => name,
        }
    }

    /// The type a wire name stands for.
    pub fn parse(name: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|t| t.as_str() == name)
            .cloned()
            .unwrap_or_else(|| Self::Other(name.to_owned()))
    }

    /// How the call is forwarded to Dify; `None` for types served elsewhere.
    fn route(&self) -> Option<Route> {
        use Reply::{Stream, Struct};
        let (path, reply, what) = match self {
            Self::Tool => ("invoke/tool", Stream, "tool"),
            Self::Llm => ("invoke/llm", Stream, "llm model"),
            Self::LlmStructuredOutput => (
                "invoke/llm/structured-output",
                Stream,
                "llm with structured output model",
            ),
            Self::TextEmbedding => ("invoke/text-embedding", Struct, "text-embedding model"),
            Self::MultimodalEmbedding => (
                "invoke/multimodal-embedding",
                Struct,
                "multimodal embedding model",
            ),
            Self::Rerank => ("invoke/rerank", Struct, "rerank model"),
            Self::MultimodalRerank => (
                "invoke/multimodal-rerank",
                Struct,
                "multimodal rerank model",
            ),
            Self::Tts => ("invoke/tts", Stream, "tts model"),
            Self::Speech2Text => ("invoke/speech2text", Struct, "speech2text model"),
            Self::Moderation => ("invoke/moderation", Struct, "moderation model"),
            Self::App => ("invoke/app", Stream, "app"),
            Self::NodeParameterExtractor => {
                ("invoke/parameter-extractor", Struct, "parameter extractor")
            }
            Self::NodeQuestionClassifier => {
                ("invoke/question-classifier", Struct, "question classifier")
            }
            Self::SystemSummary => ("invoke/summary", Struct, "summary"),
            Self::UploadFile => ("upload/file/request", Struct, "upload file"),
            Self::FetchApp => ("fetch/app/info", Struct, "fetch app"),
            Self::Storage | Self::Encrypt | Self::Other(_) => return None,
        };
        Some(Route { path, reply, what })
    }

    /// Fields the reference's request structs mark `required`, with the
    /// JSON kind each must have.
    fn required_fields(&self) -> &'static [(&'static str, Kind)] {
        use Kind::{Array, Object, Str};
        const MODEL: &[(&str, Kind)] = &[("provider", Str), ("model", Str)];
        match self {
            Self::Tool => &[("tool_type", Str), ("provider", Str), ("tool", Str)],
            Self::Llm => &[("provider", Str), ("model", Str), ("mode", Str)],
            Self::LlmStructuredOutput => &[
                ("provider", Str),
                ("model", Str),
                ("mode", Str),
                ("structured_output_schema", Object),
            ],
            Self::Tts => &[
                ("provider", Str),
                ("model", Str),
                ("content_text", Str),
                ("voice", Str),
            ],
            Self::TextEmbedding
            | Self::MultimodalEmbedding
            | Self::Rerank
            | Self::MultimodalRerank
            | Self::Speech2Text
            | Self::Moderation => MODEL,
            Self::App | Self::FetchApp => &[("app_id", Str)],
            Self::NodeParameterExtractor => {
                &[("parameters", Array), ("model", Object), ("query", Str)]
            }
            Self::NodeQuestionClassifier => {
                &[("classes", Array), ("model", Object), ("query", Str)]
            }
            Self::SystemSummary => &[("text", Str)],
            Self::UploadFile => &[("filename", Str), ("mimetype", Str)],
            Self::Storage | Self::Encrypt | Self::Other(_) => &[],
        }
    }
}

impl std::fmt::Display for InvokeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Array,
    Object,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Stream,
    Struct,
}

#[derive(Debug, Clone, Copy)]
struct Route {
    path: &'static str,
    reply: Reply,
    /// Names the call in error texts ("invoke {what} failed").
    what: &'static str,
}

/// Errors of this layer that do not become `error` events: the invoke data
/// is too broken to know which request to answer.
#[derive(Debug, thiserror::Error)]
pub enum BackwardsError {
    /// The `invoke` event's data lacks `type`, `backwards_request_id` or
    /// `request` (texts as the reference's).
    #[error("{0}")]
    InvalidRequest(String),
}

/// A backwards call, as read from the plugin's session `invoke` data.
#[derive(Debug, Clone, PartialEq)]
pub struct BackwardsRequest {
    /// What to call.
    pub invoke_type: InvokeType,
    /// The plugin's id for this call; every response event carries it.
    pub backwards_request_id: String,
    /// The call's parameters, passed on to Dify.
    pub request: Map<String, Value>,
}

impl BackwardsRequest {
    /// Reads `{"type","backwards_request_id","request"}`.
    pub fn from_invoke_data(data: &Value) -> Result<Self, BackwardsError> {
        let missing = |what: &str| {
            BackwardsError::InvalidRequest(format!("invoke request missing {what}: {data}"))
        };
        let object = data
            .as_object()
            .ok_or_else(|| BackwardsError::InvalidRequest("invoke request is empty".into()))?;
        let invoke_type = object
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("type"))?;
        let backwards_request_id = object
            .get("backwards_request_id")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("request_id"))?;
        let request = object
            .get("request")
            .and_then(Value::as_object)
            .ok_or_else(|| missing("request"))?;
        Ok(Self {
            invoke_type: InvokeType::parse(invoke_type),
            backwards_request_id: backwards_request_id.to_owned(),
            request: request.clone(),
        })
    }
}

/// Kind of a response event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseEvent {
    /// One chunk (`message` = `stream`) or the whole result (`struct`).
    Response,
    /// The call failed; `message` says why.
    Error,
    /// No more events for this call.
    End,
}

/// One event answering a backwards call, serialized exactly as the
/// reference writes it into a `backwards_response` line:
/// `{"backwards_request_id","event","message","data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackwardsResponse {
    pub backwards_request_id: String,
    pub event: ResponseEvent,
    /// `stream` or `struct` for responses, the error text for errors, empty
    /// for `end`.
    pub message: String,
    /// The payload; `null` for errors and `end`.
    pub data: Value,
}

impl BackwardsResponse {
    /// A `response` event.
    pub fn response(id: &str, message: &str, data: Value) -> Self {
        Self {
            backwards_request_id: id.to_owned(),
            event: ResponseEvent::Response,
            message: message.to_owned(),
            data,
        }
    }

    /// An `error` event.
    pub fn error(id: &str, message: impl Into<String>) -> Self {
        Self {
            backwards_request_id: id.to_owned(),
            event: ResponseEvent::Error,
            message: message.into(),
            data: Value::Null,
        }
    }

    /// The closing `end` event.
    pub fn end(id: &str) -> Self {
        Self {
            backwards_request_id: id.to_owned(),
            event: ResponseEvent::End,
            message: String::new(),
            data: Value::Null,
        }
    }
}

/// What a backwards call runs with: who is calling, what the plugin may do,
/// and the shared clients.
#[derive(Debug, Clone)]
pub struct BackwardsContext {
    /// Tenant of the session.
    pub tenant_id: String,
    /// User of the session (sent to Dify as `user_id`).
    pub user_id: String,
    /// `author/name` of the plugin: the storage namespace.
    pub plugin_id: String,
    /// The manifest's `resource.permission`.
    pub permission: Permission,
    /// Access type of the session the call belongs to (`tool`, `model`,
    /// `endpoint`…). Model sessions may not call back, as in the reference.
    pub access_type: Option<String>,
    /// Dify's inner API.
    pub client: InnerApiClient,
    /// The plugin storage.
    pub storage: PluginStorage,
}

/// The receiving side went away (the plugin or its session is gone).
struct Closed;

/// Writes the events of one call.
struct Events<'a> {
    id: &'a str,
    out: &'a mpsc::Sender<BackwardsResponse>,
}

impl Events<'_> {
    async fn send(&self, event: BackwardsResponse) -> Result<(), Closed> {
        self.out.send(event).await.map_err(|_| Closed)
    }

    async fn response(&self, message: &str, data: Value) -> Result<(), Closed> {
        self.send(BackwardsResponse::response(self.id, message, data))
            .await
    }

    async fn error(&self, message: impl Into<String>) -> Result<(), Closed> {
        self.send(BackwardsResponse::error(self.id, message)).await
    }
}

/// Serves one backwards call: sends its `response` events (each streamed
/// chunk as soon as Dify sends it) or an `error` event on `out`, then `end`.
/// Returns early, without `end`, only when `out` is closed.
///
/// It runs as long as the call does (an app run can take minutes): spawn it
/// on its own task so the plugin's other sessions keep flowing. Each event
/// goes to the plugin wrapped in the session envelope, as
/// `{"session_id",…,"event":"backwards_response","data":<event>}`.
pub async fn handle(
    ctx: &BackwardsContext,
    req: BackwardsRequest,
    out: mpsc::Sender<BackwardsResponse>,
) {
    let events = Events {
        id: &req.backwards_request_id,
        out: &out,
    };
    if serve(ctx, &req, &events).await.is_err() {
        tracing::debug!(
            backwards_request_id = %req.backwards_request_id,
            "backwards response receiver closed"
        );
        return;
    }
    let _ = events.send(BackwardsResponse::end(events.id)).await;
}

async fn serve(
    ctx: &BackwardsContext,
    req: &BackwardsRequest,
    events: &Events<'_>,
) -> Result<(), Closed> {
    if let Some(access) = ctx.access_type.as_deref().filter(|a| *a == "model") {
        return events
            .error(format!("you can not invoke dify from {access}"))
            .await;
    }
    if let Err(refusal) = ctx.permission.check(&req.invoke_type) {
        return events.error(refusal).await;
    }
    if let Err(invalid) = validate(&req.invoke_type, &req.request) {
        return events
            .error(format!(
                "unmarshal backwards invoke request failed: {invalid}"
            ))
            .await;
    }
    if req.invoke_type == InvokeType::Storage {
        return serve_storage(ctx, req, events).await;
    }
    let Some(route) = req.invoke_type.route() else {
        return events
            .error(format!("unsupported invoke type: {}", req.invoke_type))
            .await;
    };

    // The reference adds the session's identity and the type to whatever
    // the plugin sent; Dify reads tenant_id and user_id from the body.
    let mut body = req.request.clone();
    body.insert("tenant_id".into(), Value::String(ctx.tenant_id.clone()));
    body.insert("user_id".into(), Value::String(ctx.user_id.clone()));
    body.insert(
        "type".into(),
        Value::String(req.invoke_type.as_str().to_owned()),
    );
    let body = Value::Object(body);
    let what = route.what;

    match route.reply {
        Reply::Struct => match ctx.client.request_struct(route.path, &body).await {
            Ok(data) => {
                let data = match req.invoke_type {
                    // Dify nests app parameters one level deeper; the
                    // reference unwraps them.
                    InvokeType::FetchApp => match data {
                        Value::Object(mut o) => match o.remove("data") {
                            Some(inner) if !inner.is_null() => inner,
                            _ => return events.error(format!("{what} failed: data is nil")).await,
                        },
                        _ => return events.error(format!("{what} failed: data is nil")).await,
                    },
                    _ => data,
                };
                events.response("struct", data).await
            }
            Err(e) => events.error(failed(req, what, &e)).await,
        },
        Reply::Stream => {
            let mut stream = match ctx.client.request_stream(route.path, &body).await {
                Ok(stream) => stream,
                Err(e) => return events.error(failed(req, what, &e)).await,
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) => events.response("stream", chunk).await?,
                    Err(e) => {
                        let read = if req.invoke_type == InvokeType::Tool {
                            "read tool response failed".to_owned()
                        } else {
                            format!("read {what} failed")
                        };
                        return events.error(format!("{read}: {e}")).await;
                    }
                }
            }
            Ok(())
        }
    }
}

/// The error text for a call Dify refused, worded as the reference's.
fn failed(req: &BackwardsRequest, what: &str, e: &InnerApiError) -> String {
    match req.invoke_type {
        InvokeType::UploadFile | InvokeType::FetchApp => format!("{what} failed: {e}"),
        _ => format!("invoke {what} failed: {e}"),
    }
}

async fn serve_storage(
    ctx: &BackwardsContext,
    req: &BackwardsRequest,
    events: &Events<'_>,
) -> Result<(), Closed> {
    let op = match StorageOp::from_request(&req.request) {
        Ok(op) => op,
        Err(invalid) => {
            return events
                .error(format!(
                    "unmarshal backwards invoke request failed: {invalid}"
                ))
                .await
        }
    };
    match ctx
        .storage
        .execute(
            &ctx.tenant_id,
            &ctx.plugin_id,
            ctx.permission.storage_size(),
            op,
        )
        .await
    {
        Ok(data) => events.response("struct", data).await,
        Err(message) => events.error(message).await,
    }
}

/// Checks the fields the reference's request structs require.
fn validate(invoke_type: &InvokeType, request: &Map<String, Value>) -> Result<(), String> {
    for (name, kind) in invoke_type.required_fields() {
        let value = request.get(*name);
        let ok = match (kind, value) {
            (Kind::Str, Some(Value::String(s))) => !s.is_empty(),
            (Kind::Array, Some(Value::Array(_))) => true,
            (Kind::Object, Some(Value::Object(_))) => true,
            _ => false,
        };
        if !ok {
            let expected = match kind {
                Kind::Str => "a non-empty string",
                Kind::Array => "an array",
                Kind::Object => "an object",
            };
            return Err(format!("field `{name}` is required and must be {expected}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_known_type_round_trips_its_name() {
        for t in InvokeType::KNOWN {
            assert_eq!(InvokeType::parse(t.as_str()), t);
        }
        assert_eq!(
            InvokeType::parse("summary"),
            InvokeType::Other("summary".into())
        );
    }

    #[test]
    fn invoke_data_parses() {
        let req = BackwardsRequest::from_invoke_data(&json!({
            "type": "llm", "backwards_request_id": "r1", "request": {"model": "m"}
        }))
        .unwrap();
        assert_eq!(req.invoke_type, InvokeType::Llm);
        assert_eq!(req.backwards_request_id, "r1");
        assert_eq!(req.request["model"], "m");
    }

    #[test]
    fn invoke_data_without_request_is_refused() {
        let err = BackwardsRequest::from_invoke_data(&json!({
            "type": "llm", "backwards_request_id": "r1"
        }))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invoke request missing request"),
            "{err}"
        );
        assert!(BackwardsRequest::from_invoke_data(&json!(null)).is_err());
    }

    #[test]
    fn events_serialize_as_the_reference_writes_them() {
        assert_eq!(
            serde_json::to_value(BackwardsResponse::response("r", "stream", json!({"a": 1})))
                .unwrap(),
            json!({"backwards_request_id": "r", "event": "response", "message": "stream", "data": {"a": 1}})
        );
        assert_eq!(
            serde_json::to_string(&BackwardsResponse::end("r")).unwrap(),
            r#"{"backwards_request_id":"r","event":"end","message":"","data":null}"#
        );
        assert_eq!(
            serde_json::to_value(BackwardsResponse::error("r", "nope")).unwrap(),
            json!({"backwards_request_id": "r", "event": "error", "message": "nope", "data": null})
        );
    }

    #[test]
    fn required_fields_are_checked() {
        let req = |v: Value| v.as_object().unwrap().clone();
        assert!(validate(&InvokeType::App, &req(json!({"inputs": {}}))).is_err());
        assert!(validate(&InvokeType::App, &req(json!({"app_id": "a"}))).is_ok());
        let err = validate(
            &InvokeType::Tool,
            &req(json!({"tool_type": "builtin", "provider": "p"})),
        )
        .unwrap_err();
        assert!(err.contains("`tool`"), "{err}");
    }
}
