//! Dify apps as MCP tools, run through Dify's inner API: `fetch/app/info`
//! gives the input form, `invoke/app` (streamed) runs the app. Workflow
//! outputs become structured content, chat answers text, node events
//! progress notifications.

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{json, Map, Value};

use super::handler::Reporter;
use super::logging::{Level, Note};
use super::records::AppRef;
use crate::backwards::{InnerApiClient, InnerApiError};

/// The app's parameters (`user_input_form` and its features).
pub async fn fetch_info(
    client: &InnerApiClient,
    tenant_id: &str,
    user_id: &str,
    app_id: &str,
) -> Result<Value, InnerApiError> {
    let body = json!({"tenant_id": tenant_id, "user_id": user_id, "app_id": app_id});
    let data = client.request_struct("fetch/app/info", &body).await?;
    // The inner API wraps the parameters in one more `data` object.
    Ok(match data {
        Value::Object(mut m) if m.contains_key("data") && !m.contains_key("user_input_form") => {
            m.remove("data").unwrap_or(Value::Null)
        }
        other => other,
    })
}

/// What the app produced so far.
#[derive(Default)]
struct Outcome {
    answer: String,
    outputs: Option<Value>,
    error: Option<String>,
}

impl Outcome {
    /// Takes one streamed (or blocking) event; returns what is worth
    /// reporting: node events log at `info`, failed nodes at `error`.
    fn push(&mut self, event: &Value) -> Option<Note> {
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        let data = event.get("data").unwrap_or(&Value::Null);
        let title = || {
            data.get("title")
                .or_else(|| data.get("node_id"))
                .and_then(Value::as_str)
                .unwrap_or("node")
                .to_owned()
        };
        let node = |status: &str| {
            let mut extra = Map::new();
            extra.insert("node".into(), Value::String(title()));
            if let Some(t) = data.get("node_type").filter(|t| t.is_string()) {
                extra.insert("node_type".into(), t.clone());
            }
            extra.insert("status".into(), Value::String(status.to_owned()));
            if let Some(e) = data
                .get("error")
                .filter(|e| e.as_str().is_some_and(|e| !e.is_empty()))
            {
                extra.insert("error".into(), e.clone());
            }
            let level = if matches!(status, "failed" | "exception") {
                Level::Error
            } else {
                Level::Info
            };
            Note::new(level, format!("{} {status}", title()), extra)
        };
        match kind {
            "node_started" => Some(node("started")),
            "node_finished" => Some(node(
                data.get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("finished"),
            )),
            "workflow_started" => Some(Note::new(
                Level::Info,
                "workflow started".to_owned(),
                Map::new(),
            )),
            "message" | "agent_message" => {
                if let Some(a) = event.get("answer").and_then(Value::as_str) {
                    self.answer.push_str(a);
                }
                None
            }
            "error" => {
                self.error = Some(
                    event
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("app failed")
                        .to_owned(),
                );
                None
            }
            _ => {
                // `workflow_finished` when streamed; the blocking reply has
                // no `event` but the same `data`.
                if kind == "workflow_finished" || (kind.is_empty() && data.get("outputs").is_some())
                {
                    let status = data.get("status").and_then(Value::as_str);
                    if matches!(status, Some("failed" | "stopped")) {
                        self.error = Some(
                            data.get("error")
                                .and_then(Value::as_str)
                                .unwrap_or("workflow failed")
                                .to_owned(),
                        );
                    }
                    self.outputs = Some(data.get("outputs").cloned().unwrap_or(json!({})));
                }
                None
            }
        }
    }

    fn finish(self, app: &AppRef) -> CallToolResult {
        if let Some(e) = self.error {
            return CallToolResult::error(vec![ContentBlock::text(e)]);
        }
        if app.is_chat() || self.outputs.is_none() && !self.answer.is_empty() {
            return CallToolResult::success(vec![ContentBlock::text(self.answer)]);
        }
        let outputs = match self.outputs.unwrap_or_else(|| json!({})) {
            Value::Object(m) => Value::Object(m),
            other => json!({"result": other}),
        };
        let mut result = CallToolResult::success(vec![ContentBlock::text(outputs.to_string())]);
        result.structured_content = Some(outputs);
        result
    }
}

/// Runs the app with the caller's arguments, reporting node events as
/// progress; the stream keeps the call alive however long the app runs.
pub async fn run(
    client: &InnerApiClient,
    tenant_id: &str,
    user_id: &str,
    app: &AppRef,
    mut args: Map<String, Value>,
    reporter: &mut Reporter,
) -> CallToolResult {
    let query = if app.is_chat() {
        match args.remove("query") {
            Some(Value::String(q)) => q,
            _ => return CallToolResult::error(vec![ContentBlock::text("query is required")]),
        }
    } else {
        String::new()
    };
    let body = json!({
        "tenant_id": tenant_id,
        "user_id": user_id,
        "type": "app",
        "app_id": app.app_id,
        "inputs": args,
        "query": query,
        "response_mode": "streaming",
        "conversation_id": "",
        "files": [],
    });
    let mut stream = match client.request_stream("invoke/app", &body).await {
        Ok(s) => s,
        Err(e) => return CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
    };
    let mut outcome = Outcome::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                let note = outcome.push(&event);
                reporter.step(note).await;
            }
            Err(e) => {
                outcome.error = Some(e.to_string());
                break;
            }
        }
    }
    outcome.finish(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(mode: &str) -> AppRef {
        AppRef {
            app_id: "a".into(),
            name: None,
            description: None,
            mode: Some(mode.into()),
        }
    }

    #[test]
    fn workflow_outputs_are_structured() {
        let mut o = Outcome::default();
        let n = o
            .push(&json!({"event": "node_started", "data": {"title": "LLM", "node_type": "llm"}}))
            .unwrap();
        assert_eq!(n.message, "LLM started");
        assert_eq!(n.level, Level::Info);
        assert_eq!(
            n.data,
            json!({"message": "LLM started", "node": "LLM", "node_type": "llm", "status": "started"})
        );
        let n = o
            .push(&json!({"event": "node_finished", "data": {"title": "HTTP", "status": "failed", "error": "502"}}))
            .unwrap();
        assert_eq!(n.level, Level::Error);
        assert_eq!(n.data["error"], "502");
        o.push(&json!({"event": "workflow_finished", "data": {"status": "succeeded", "outputs": {"text": "hi"}}}));
        let r = serde_json::to_value(o.finish(&app("workflow"))).unwrap();
        assert_eq!(r["structuredContent"], json!({"text": "hi"}));
        assert_eq!(r["isError"], false);
    }

    #[test]
    fn chat_answers_are_text_and_failures_are_errors() {
        let mut o = Outcome::default();
        o.push(&json!({"event": "message", "answer": "You "}));
        o.push(&json!({"event": "message", "answer": "said"}));
        let r = serde_json::to_value(o.finish(&app("advanced-chat"))).unwrap();
        assert_eq!(r["content"][0]["text"], "You said");
        let mut o = Outcome::default();
        o.push(&json!({"event": "workflow_finished", "data": {"status": "failed", "error": "bad input", "outputs": null}}));
        let r = serde_json::to_value(o.finish(&app("workflow"))).unwrap();
        assert_eq!(r["isError"], true);
        assert_eq!(r["content"][0]["text"], "bad input");
    }
}
