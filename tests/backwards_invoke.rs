//! Backwards calls forwarded to Dify's inner API (the Python double):
//! every invoke type yields its response events, then `end`.

mod dify_double;

use dify_double::{all_permissions, call, context, invoke, DifyDouble, KEY};
use plugind::backwards::{
    handle, BackwardsRequest, BackwardsResponse, EncryptOpt, EncryptRequest, ResponseEvent,
};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

/// The `data` of every `response` event, checking the call ended cleanly:
/// only responses with `message`, then exactly one `end`.
fn responses(events: &[BackwardsResponse], message: &str) -> Vec<Value> {
    let (end, body) = events.split_last().expect("at least an end event");
    assert_eq!(end.event, ResponseEvent::End, "{events:#?}");
    assert_eq!(end.message, "");
    assert_eq!(end.data, Value::Null);
    for event in body {
        assert_eq!(event.event, ResponseEvent::Response, "{events:#?}");
        assert_eq!(event.message, message, "{events:#?}");
        assert_eq!(event.backwards_request_id, end.backwards_request_id);
    }
    body.iter().map(|e| e.data.clone()).collect()
}

fn one_struct(events: &[BackwardsResponse]) -> Value {
    let mut data = responses(events, "struct");
    assert_eq!(data.len(), 1, "{events:#?}");
    data.remove(0)
}

fn llm_request() -> Value {
    json!({
        "provider": "openai", "model": "gpt-4o-mini", "model_type": "llm", "mode": "chat",
        "completion_params": {"temperature": 0.1},
        "prompt_messages": [{"role": "user", "content": "hello there"}],
        "tools": [], "stop": [], "stream": true
    })
}

#[tokio::test]
async fn llm_streams_chunks_and_sends_session_identity() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let events = call(&ctx, invoke("llm", llm_request())).await;
    let chunks = responses(&events, "stream");
    assert!(chunks.len() > 1, "{chunks:#?}");
    let text: String = chunks
        .iter()
        .map(|c| c["delta"]["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Echo: hello there");
    assert_eq!(chunks.last().unwrap()["delta"]["finish_reason"], "stop");
    assert_eq!(events[0].backwards_request_id, "req-llm");

    let requests = double.requests().await;
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent["path"], "invoke/llm");
    assert_eq!(sent["headers"]["x-inner-api-key"], KEY);
    assert_eq!(sent["body"]["tenant_id"], "tenant-1");
    assert_eq!(sent["body"]["user_id"], "user-1");
    assert_eq!(sent["body"]["type"], "llm");
    assert_eq!(sent["body"]["model"], "gpt-4o-mini");
    assert_eq!(sent["body"]["prompt_messages"][0]["content"], "hello there");
}

#[tokio::test]
async fn structured_output_uses_its_own_path() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let mut request = llm_request();
    request["structured_output_schema"] = json!({"type": "object"});
    let events = call(&ctx, invoke("llm_structured_output", request)).await;
    let chunks = responses(&events, "stream");
    assert_eq!(
        chunks.last().unwrap()["structured_output"]["answer"],
        "Echo: hello there"
    );
    assert_eq!(
        double.requests().await[0]["path"],
        "invoke/llm/structured-output"
    );
}

#[tokio::test]
async fn tool_streams_tool_messages() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let events = call(
        &ctx,
        invoke(
            "tool",
            json!({"tool_type": "builtin", "provider": "time", "tool": "current_time",
                   "tool_parameters": {"tz": "UTC"}}),
        ),
    )
    .await;
    let chunks = responses(&events, "stream");
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0]["type"], "text");
    assert_eq!(
        chunks[0]["message"]["text"],
        "tool time/current_time says hi"
    );
    assert_eq!(chunks[1]["message"]["json_object"]["echo"]["tz"], "UTC");
}

#[tokio::test]
async fn tts_streams_audio_chunks() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let events = call(
        &ctx,
        invoke(
            "tts",
            json!({"provider": "openai", "model": "tts-1", "model_type": "tts",
                   "content_text": "spoken words", "voice": "alloy"}),
        ),
    )
    .await;
    let audio: String = responses(&events, "stream")
        .iter()
        .map(|c| c["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(hex::decode(audio).unwrap(), b"spoken words");
    assert_eq!(double.requests().await[0]["body"]["tenant_id"], "tenant-1");
}

#[tokio::test]
async fn workflow_app_streams_every_event_in_order() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let events = call(
        &ctx,
        invoke(
            "app",
            json!({"app_id": "workflow-app", "inputs": {"name": "Ann"},
                   "response_mode": "streaming", "files": []}),
        ),
    )
    .await;
    let chunks = responses(&events, "stream");
    let kinds: Vec<&str> = chunks
        .iter()
        .map(|c| c["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"workflow_started"));
    assert_eq!(kinds.last(), Some(&"workflow_finished"));
    assert_eq!(kinds.iter().filter(|k| **k == "node_started").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "node_finished").count(), 3);
    let text: String = chunks
        .iter()
        .filter(|c| c["event"] == "text_chunk")
        .map(|c| c["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello, Ann!");
    let finished = chunks.last().unwrap();
    assert_eq!(finished["data"]["status"], "succeeded");
    assert_eq!(finished["data"]["outputs"]["text"], "Hello, Ann!");
    // The plugin's own fields reach Dify, `files` included.
    assert_eq!(double.requests().await[0]["body"]["files"], json!([]));
}

#[tokio::test]
async fn app_events_reach_the_plugin_before_the_run_ends() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let req = BackwardsRequest::from_invoke_data(&invoke(
        "app",
        json!({"app_id": "workflow-app", "inputs": {"name": "Bo"}, "response_mode": "streaming"}),
    ))
    .unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(async move { handle(&ctx, req, tx).await });
    let first = rx.recv().await.unwrap();
    assert_eq!(first.data["event"], "workflow_started");
    // The double pauses between frames; a buffering implementation would
    // only deliver the first event once the whole run had been read.
    assert!(
        !task.is_finished(),
        "the call finished before its first event was read"
    );
    let mut rest = Vec::new();
    while let Some(event) = rx.recv().await {
        rest.push(event);
    }
    task.await.unwrap();
    assert_eq!(rest.last().unwrap().event, ResponseEvent::End);
    assert_eq!(rest[rest.len() - 2].data["event"], "workflow_finished");
}

#[tokio::test]
async fn blocking_app_and_chat_app_answers() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let events = call(
        &ctx,
        invoke(
            "app",
            json!({"app_id": "workflow-app", "inputs": {"name": "Cy"}, "response_mode": "blocking"}),
        ),
    )
    .await;
    let chunks = responses(&events, "stream");
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0]["data"]["outputs"]["text"], "Hello, Cy!");

    let events = call(
        &ctx,
        invoke(
            "app",
            json!({"app_id": "chat-app", "query": "ping", "inputs": {}, "response_mode": "streaming",
                   "conversation_id": "conv-1"}),
        ),
    )
    .await;
    let chunks = responses(&events, "stream");
    let answer: String = chunks
        .iter()
        .filter(|c| c["event"] == "message")
        .map(|c| c["answer"].as_str().unwrap())
        .collect();
    assert_eq!(answer, "You said: ping");
    assert_eq!(chunks.last().unwrap()["event"], "message_end");
    assert_eq!(chunks[0]["conversation_id"], "conv-1");
}

#[tokio::test]
async fn model_struct_calls_answer_one_struct() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let model = |extra: Value| {
        let mut base = json!({"provider": "openai", "model": "m-1"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    };

    let data = one_struct(
        &call(
            &ctx,
            invoke(
                "text_embedding",
                model(json!({"texts": ["a b", "c"], "input_type": "document"})),
            ),
        )
        .await,
    );
    assert_eq!(data["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(data["usage"]["total_tokens"], 3);

    let data = one_struct(
        &call(
            &ctx,
            invoke(
                "multimodal_embedding",
                model(json!({"documents": [{"content": "x", "content_type": "text"}]})),
            ),
        )
        .await,
    );
    assert_eq!(data["embeddings"].as_array().unwrap().len(), 1);

    let data = one_struct(
        &call(
            &ctx,
            invoke(
                "rerank",
                model(
                    json!({"query": "red fox", "docs": ["blue sky", "red fox jumps"], "top_n": 1}),
                ),
            ),
        )
        .await,
    );
    assert_eq!(
        data["docs"],
        json!([{"index": 1, "text": "red fox jumps", "score": 1.0}])
    );

    let data = one_struct(
        &call(
            &ctx,
            invoke(
                "multimodal_rerank",
                model(
                    json!({"query": "cat", "docs": [{"content": "a cat", "content_type": "text"}]}),
                ),
            ),
        )
        .await,
    );
    assert_eq!(data["docs"][0]["score"], 1.0);

    let data = one_struct(
        &call(
            &ctx,
            invoke(
                "speech2text",
                model(json!({"file": hex::encode("said aloud")})),
            ),
        )
        .await,
    );
    assert_eq!(data["result"], "said aloud");

    let data = one_struct(
        &call(
            &ctx,
            invoke("moderation", model(json!({"text": "this is forbidden"}))),
        )
        .await,
    );
    assert_eq!(data["result"], true);

    let paths: Vec<String> = double
        .requests()
        .await
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "invoke/text-embedding",
            "invoke/multimodal-embedding",
            "invoke/rerank",
            "invoke/multimodal-rerank",
            "invoke/speech2text",
            "invoke/moderation"
        ]
    );
}

#[tokio::test]
async fn workflow_nodes_summary_and_upload() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let model =
        json!({"provider": "openai", "name": "gpt-4o", "mode": "chat", "completion_params": {}});

    let data = one_struct(
        &call(
            &ctx,
            invoke(
                "node_parameter_extractor",
                json!({"parameters": [{"name": "city", "type": "string", "description": "", "required": true}],
                       "model": model, "instruction": "", "query": "Paris"}),
            ),
        )
        .await,
    );
    assert_eq!(data["outputs"]["city"], "Paris");
    assert_eq!(data["outputs"]["__is_success"], 1);

    let data = one_struct(
        &call(
            &ctx,
            invoke(
                "node_question_classifier",
                json!({"classes": [{"id": "1", "name": "weather"}, {"id": "2", "name": "sport"}],
                       "model": model, "query": "sport news please"}),
            ),
        )
        .await,
    );
    assert_eq!(data["outputs"]["class_id"], "2");

    let data = one_struct(
        &call(
            &ctx,
            invoke(
                "system_summary",
                json!({"text": "short text", "instruction": ""}),
            ),
        )
        .await,
    );
    assert_eq!(data, json!({"summary": "short text"}));

    let data = one_struct(
        &call(
            &ctx,
            invoke(
                "upload_file",
                json!({"filename": "a.png", "mimetype": "image/png"}),
            ),
        )
        .await,
    );
    let url = data["url"].as_str().unwrap();
    assert!(url.contains("/files/upload/for-plugin?"), "{url}");
    assert!(url.contains("tenant_id=tenant-1"), "{url}");

    let paths: Vec<String> = double
        .requests()
        .await
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "invoke/parameter-extractor",
            "invoke/question-classifier",
            "invoke/summary",
            "upload/file/request"
        ]
    );
}

#[tokio::test]
async fn fetch_app_returns_the_parameters_unwrapped() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let data =
        one_struct(&call(&ctx, invoke("fetch_app", json!({"app_id": "workflow-app"}))).await);
    assert_eq!(data["user_input_form"][0]["text-input"]["variable"], "name");
    assert!(data.get("data").is_none(), "{data}");
    assert_eq!(double.requests().await[0]["path"], "fetch/app/info");

    let events = call(&ctx, invoke("fetch_app", json!({"app_id": "missing"}))).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0].event, ResponseEvent::Error);
    assert_eq!(
        events[0].message,
        "fetch app failed: request failed: app not found"
    );
    assert_eq!(events[1].event, ResponseEvent::End);
}

#[tokio::test]
async fn old_line_format_stream_replies_are_accepted() {
    let double = DifyDouble::start();
    double.behave("invoke/llm", "json_lines").await;
    let ctx = context(double.client(), &all_permissions());
    let events = call(&ctx, invoke("llm", llm_request())).await;
    let text: String = responses(&events, "stream")
        .iter()
        .map(|c| c["delta"]["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Echo: hello there");
}

fn encrypt_request(opt: EncryptOpt, data: Value) -> EncryptRequest {
    let data: Map<String, Value> = data.as_object().unwrap().clone();
    EncryptRequest {
        tenant_id: "tenant-1".into(),
        user_id: "user-1".into(),
        opt,
        namespace: "endpoint".into(),
        identity: "endpoint-42".into(),
        data,
        config: vec![
            json!({"name": "api_key", "type": "secret-input", "required": true}),
            json!({"name": "region", "type": "text-input", "required": false}),
        ],
    }
}

#[tokio::test]
async fn encrypt_decrypt_and_clear_endpoint_settings() {
    let double = DifyDouble::start();
    let client = double.client();
    let plain = json!({"api_key": "sk-123", "region": "eu"});

    let encrypted = client
        .encrypt(&encrypt_request(EncryptOpt::Encrypt, plain.clone()))
        .await
        .unwrap();
    assert_ne!(encrypted["api_key"], "sk-123");
    assert_eq!(encrypted["region"], "eu");

    let decrypted = client
        .encrypt(&encrypt_request(
            EncryptOpt::Decrypt,
            Value::Object(encrypted),
        ))
        .await
        .unwrap();
    assert_eq!(Value::Object(decrypted), plain);

    let cleared = client
        .encrypt(&encrypt_request(EncryptOpt::Clear, json!({})))
        .await
        .unwrap();
    assert!(cleared.is_empty());

    let requests = double.requests().await;
    assert_eq!(requests.len(), 3);
    let body = &requests[0]["body"];
    assert_eq!(requests[0]["path"], "invoke/encrypt");
    assert_eq!(body["type"], "encrypt");
    assert_eq!(body["opt"], "encrypt");
    assert_eq!(body["namespace"], "endpoint");
    assert_eq!(body["identity"], "endpoint-42");
    assert_eq!(body["tenant_id"], "tenant-1");
    assert_eq!(body["config"][0]["type"], "secret-input");
}

#[tokio::test]
async fn encrypt_without_secret_fields_does_not_call_dify() {
    let double = DifyDouble::start();
    let mut request = encrypt_request(EncryptOpt::Encrypt, json!({"region": "eu"}));
    request.config.retain(|c| c["type"] != "secret-input");
    let out = double.client().encrypt(&request).await.unwrap();
    assert_eq!(Value::Object(out), json!({"region": "eu"}));
    assert!(double.requests().await.is_empty());
}
