//! Plugin tool chunks (`{type, message, meta}`) → one MCP tool result.
//!
//! | chunk | MCP |
//! | --- | --- |
//! | `text` | text (adjacent texts joined) |
//! | `json` | structuredContent + its JSON as text |
//! | `variable` | a key of structuredContent (streamed values appended) |
//! | `image`, `image_link`, `link`, `binary_link`, `file` with a URL | resource link |
//! | `blob`, `blob_chunk`s | image/audio content, else an embedded resource with the MIME type (text for text types) |
//! | `log` | progress message and `notifications/message` ([`super::logging`]) |
//!
//! A plugin error ends the call as an `isError` result carrying the
//! plugin's message.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rmcp::model::{CallToolResult, ContentBlock, Resource, ResourceContents};
use serde_json::{Map, Value};

use super::logging::{Level, Note};
use crate::error::DaemonError;

/// Largest file a tool may stream back through `blob_chunk`s.
pub const MAX_BLOB: usize = 64 * 1024 * 1024;

/// Builds a tool result from chunks as they arrive.
#[derive(Debug, Default)]
pub struct Collector {
    content: Vec<ContentBlock>,
    json: Vec<Value>,
    variables: Map<String, Value>,
    blobs: HashMap<String, Vec<u8>>,
    files: usize,
    failure: Option<String>,
}

/// MIME types whose files are text.
fn is_textual(mime: &str) -> bool {
    let essence = mime.split(';').next().unwrap_or("").trim();
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/json" | "application/xml" | "application/yaml" | "application/javascript"
        )
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// A plugin `log` chunk (`{label, status, data, error, …}`) as a note: the
/// `error` status logs at `error`, `start` and `success` at `info`.
fn log_note(message: &Value) -> Note {
    let label = str_at(message, "/label").unwrap_or("log");
    let status = str_at(message, "/status").unwrap_or("");
    let text = format!("{label}: {status}")
        .trim_end_matches([':', ' '])
        .to_owned();
    let level = if status == "error" {
        Level::Error
    } else {
        Level::Info
    };
    // The record is headed by the log's own label, not the progress text.
    let mut data = Map::new();
    data.insert("message".into(), Value::String(label.to_owned()));
    if !status.is_empty() {
        data.insert("status".into(), Value::String(status.to_owned()));
    }
    if let Some(d) = message.get("data").filter(|d| match d {
        Value::Object(m) => !m.is_empty(),
        other => !other.is_null(),
    }) {
        data.insert("data".into(), d.clone());
    }
    if let Some(error) = str_at(message, "/error").filter(|e| !e.is_empty()) {
        data.insert("error".into(), Value::String(error.to_owned()));
    }
    Note {
        message: text,
        level,
        data: Value::Object(data),
    }
}

impl Collector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a chunk made the call fail (an oversized blob).
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    fn push_text(&mut self, text: &str) {
        if let Some(ContentBlock::Text(last)) = self.content.last_mut() {
            last.text.push_str(text);
        } else {
            self.content.push(ContentBlock::text(text));
        }
    }

    fn push_link(&mut self, uri: &str, name: &str, mime: Option<&str>) {
        if uri.is_empty() {
            return;
        }
        let mut r = Resource::new(uri, name);
        if let Some(m) = mime {
            r = r.with_mime_type(m);
        }
        self.content.push(ContentBlock::resource_link(r));
    }

    fn push_blob(&mut self, bytes: &[u8], meta: &Value) {
        self.files += 1;
        let mime = str_at(meta, "/mime_type").unwrap_or("application/octet-stream");
        if mime.starts_with("image/") {
            self.content
                .push(ContentBlock::image(STANDARD.encode(bytes), mime));
            return;
        }
        if mime.starts_with("audio/") {
            self.content
                .push(ContentBlock::audio(STANDARD.encode(bytes), mime));
            return;
        }
        let filename = str_at(meta, "/filename")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("file-{}", self.files));
        let uri = format!("attachment:///{filename}");
        // Text files travel as text, which a model can read as it is.
        let contents = match std::str::from_utf8(bytes) {
            Ok(text) if is_textual(mime) => ResourceContents::text(text, uri),
            _ => ResourceContents::blob(STANDARD.encode(bytes), uri),
        };
        self.content
            .push(ContentBlock::resource(contents.with_mime_type(mime)));
    }

    /// Takes one chunk; returns what is worth reporting, if anything.
    pub fn push(&mut self, chunk: &Value) -> Option<Note> {
        let kind = chunk.get("type").and_then(Value::as_str).unwrap_or("");
        let message = chunk.get("message").unwrap_or(&Value::Null);
        let meta = chunk.get("meta").unwrap_or(&Value::Null);
        match kind {
            "text" => {
                let text = str_at(message, "/text").unwrap_or("");
                self.push_text(text);
                None
            }
            "json" => {
                let value = message.get("json_object").cloned().unwrap_or(Value::Null);
                self.push_text(&value.to_string());
                self.json.push(value);
                None
            }
            "variable" => {
                let name = str_at(message, "/variable_name")?.to_owned();
                let value = message
                    .get("variable_value")
                    .cloned()
                    .unwrap_or(Value::Null);
                let streamed = message
                    .get("stream")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                match (streamed, self.variables.get_mut(&name), &value) {
                    (true, Some(Value::String(acc)), Value::String(more)) => acc.push_str(more),
                    _ => {
                        self.variables.insert(name, value);
                    }
                }
                None
            }
            "image" | "image_link" | "link" | "binary_link" => {
                let uri = str_at(message, "/text").unwrap_or("");
                let name = if kind == "link" { uri } else { kind };
                self.push_link(uri, name, str_at(meta, "/mime_type"));
                None
            }
            "file" => {
                let url = str_at(meta, "/file/url")
                    .or_else(|| str_at(meta, "/file/remote_url"))
                    .unwrap_or("");
                let name = str_at(meta, "/file/filename").unwrap_or("file");
                let mime = str_at(meta, "/file/mime_type");
                self.push_link(url, name, mime);
                None
            }
            "blob" => {
                let bytes = message
                    .get("blob")
                    .and_then(Value::as_str)
                    .and_then(|b| STANDARD.decode(b).ok())
                    .unwrap_or_default();
                self.push_blob(&bytes, meta);
                None
            }
            "blob_chunk" => {
                let id = str_at(message, "/id").unwrap_or("").to_owned();
                let piece = str_at(message, "/blob")
                    .and_then(|b| STANDARD.decode(b).ok())
                    .unwrap_or_default();
                let buf = self.blobs.entry(id.clone()).or_default();
                if buf.len() + piece.len() > MAX_BLOB {
                    self.blobs.remove(&id);
                    self.failure = Some(format!("file larger than {MAX_BLOB} bytes"));
                    return None;
                }
                buf.extend_from_slice(&piece);
                if message.get("end").and_then(Value::as_bool).unwrap_or(false) {
                    let bytes = self.blobs.remove(&id).unwrap_or_default();
                    self.push_blob(&bytes, meta);
                }
                None
            }
            "log" => Some(log_note(message)),
            _ => None,
        }
    }

    /// The structured output: the variables over the merged JSON objects;
    /// non-object JSON goes under `result`.
    fn structured(&mut self) -> Option<Value> {
        if self.json.is_empty() && self.variables.is_empty() {
            return None;
        }
        let mut out = Map::new();
        let json = std::mem::take(&mut self.json);
        if json.iter().all(Value::is_object) {
            for v in json {
                if let Value::Object(m) = v {
                    out.extend(m);
                }
            }
        } else if json.len() == 1 {
            out.insert("result".into(), json.into_iter().next().expect("one"));
        } else {
            out.insert("result".into(), Value::Array(json));
        }
        out.extend(std::mem::take(&mut self.variables));
        Some(Value::Object(out))
    }

    /// The result of a call whose chunks all arrived. With an output schema
    /// there is always structured content, as clients then require it.
    pub fn finish(mut self, has_output_schema: bool) -> CallToolResult {
        if let Some(reason) = self.failure.take() {
            return CallToolResult::error(vec![ContentBlock::text(reason)]);
        }
        let structured = self
            .structured()
            .or_else(|| has_output_schema.then(|| Value::Object(Map::new())));
        let mut result = CallToolResult::success(self.content);
        result.structured_content = structured;
        result
    }
}

/// The caller-facing text of a failed call. Plugin errors carry their own
/// `{message, error_type}` JSON; its message is what the caller should read.
pub fn error_text(err: &DaemonError) -> String {
    match err {
        DaemonError::PluginInvoke(body) => match serde_json::from_str::<Value>(body) {
            Ok(v) => {
                let message = str_at(&v, "/message").unwrap_or(body);
                match str_at(&v, "/error_type").filter(|t| !t.is_empty()) {
                    Some(t) => format!("{t}: {message}"),
                    None => message.to_owned(),
                }
            }
            Err(_) => body.clone(),
        },
        other => other.to_string(),
    }
}

/// An `isError` result for a failed call.
pub fn error_result(err: &DaemonError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error_text(err))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(chunks: &[Value], schema: bool) -> Value {
        let mut c = Collector::new();
        for ch in chunks {
            c.push(ch);
        }
        serde_json::to_value(c.finish(schema)).unwrap()
    }

    #[test]
    fn texts_join_and_json_is_structured_and_text() {
        let r = run(
            &[
                json!({"type": "text", "message": {"text": "a"}, "meta": null}),
                json!({"type": "text", "message": {"text": "b"}, "meta": null}),
                json!({"type": "json", "message": {"json_object": {"echo": "hi", "length": 2}}}),
            ],
            false,
        );
        assert_eq!(
            r["content"][0],
            json!({"type": "text", "text": "ab{\"echo\":\"hi\",\"length\":2}"})
        );
        assert_eq!(r["structuredContent"], json!({"echo": "hi", "length": 2}));
        assert_eq!(r["isError"], false);
    }

    #[test]
    fn blob_chunks_become_one_embedded_resource() {
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        let meta = json!({"mime_type": "application/octet-stream", "filename": "pattern.bin"});
        let mut chunks = Vec::new();
        for (i, piece) in data.chunks(8192).enumerate() {
            chunks.push(json!({"type": "blob_chunk", "message": {"id": "x", "sequence": i,
                "total_length": 20000, "blob": STANDARD.encode(piece), "end": false}, "meta": meta}));
        }
        chunks.push(
            json!({"type": "blob_chunk", "message": {"id": "x", "sequence": 3,
            "total_length": 20000, "blob": "", "end": true}, "meta": meta}),
        );
        let r = run(&chunks, false);
        let res = &r["content"][0];
        assert_eq!(res["type"], "resource");
        assert_eq!(res["resource"]["mimeType"], "application/octet-stream");
        assert_eq!(res["resource"]["uri"], "attachment:///pattern.bin");
        let back = STANDARD
            .decode(res["resource"]["blob"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn images_links_and_variables() {
        let png = STANDARD.encode(b"\x89PNG");
        let r = run(
            &[
                json!({"type": "blob", "message": {"blob": png}, "meta": {"mime_type": "image/png"}}),
                json!({"type": "link", "message": {"text": "https://example.com/a"}}),
                json!({"type": "image", "message": {"text": "https://example.com/i.png"}}),
                json!({"type": "variable", "message": {"variable_name": "out", "variable_value": "he", "stream": true}}),
                json!({"type": "variable", "message": {"variable_name": "out", "variable_value": "llo", "stream": true}}),
            ],
            true,
        );
        assert_eq!(
            r["content"][0],
            json!({"type": "image", "data": png, "mimeType": "image/png"})
        );
        assert_eq!(r["content"][1]["type"], "resource_link");
        assert_eq!(r["content"][1]["uri"], "https://example.com/a");
        assert_eq!(r["content"][2]["uri"], "https://example.com/i.png");
        assert_eq!(r["structuredContent"], json!({"out": "hello"}));
    }

    #[test]
    fn text_files_are_embedded_as_text_and_others_as_blobs() {
        let r = run(
            &[
                json!({"type": "blob", "message": {"blob": STANDARD.encode(b"{\"a\":1}")},
                    "meta": {"mime_type": "application/json", "filename": "a.json"}}),
                json!({"type": "blob", "message": {"blob": STANDARD.encode(b"\xff\xfe")},
                    "meta": {"mime_type": "text/plain"}}),
            ],
            false,
        );
        assert_eq!(
            r["content"][0]["resource"],
            json!({"uri": "attachment:///a.json", "mimeType": "application/json", "text": "{\"a\":1}"})
        );
        // Not UTF-8, so a blob whatever the type says.
        assert_eq!(
            r["content"][1]["resource"]["blob"],
            STANDARD.encode(b"\xff\xfe")
        );
        assert_eq!(r["content"][1]["resource"]["uri"], "attachment:///file-2");
    }

    #[test]
    fn output_schema_always_gets_structured_content() {
        let r = run(&[json!({"type": "text", "message": {"text": "x"}})], true);
        assert_eq!(r["structuredContent"], json!({}));
        let r = run(&[json!({"type": "text", "message": {"text": "x"}})], false);
        assert!(r.get("structuredContent").is_none());
    }

    #[test]
    fn logs_are_progress_messages_and_log_records() {
        let mut c = Collector::new();
        let n = c
            .push(&json!({"type": "log", "message": {"label": "step", "status": "start", "data": {}}}))
            .unwrap();
        assert_eq!(n.message, "step: start");
        assert_eq!(n.level, Level::Info);
        assert_eq!(n.data, json!({"message": "step", "status": "start"}));
        let n = c
            .push(
                &json!({"type": "log", "message": {"label": "fetch", "status": "error",
                "error": "timed out", "data": {"url": "https://example.com"}}}),
            )
            .unwrap();
        assert_eq!(n.level, Level::Error);
        assert_eq!(
            n.data,
            json!({"message": "fetch", "status": "error", "error": "timed out",
                "data": {"url": "https://example.com"}})
        );
        assert!(c
            .push(&json!({"type": "text", "message": {"text": "x"}}))
            .is_none());
    }

    #[test]
    fn plugin_errors_read_as_their_message() {
        let err = DaemonError::PluginInvoke(
            json!({"message": "boom", "error_type": "ValueError", "args": null}).to_string(),
        );
        let r = serde_json::to_value(error_result(&err)).unwrap();
        assert_eq!(r["isError"], true);
        assert_eq!(r["content"][0]["text"], "ValueError: boom");
    }
}
