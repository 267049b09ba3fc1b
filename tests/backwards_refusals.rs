//! Backwards calls that must fail: permission refusals, bad requests, and
//! inner API failures (HTTP errors, `error` fields, broken streams). Each
//! becomes `error` events followed by `end`, never a hang.

mod dify_double;

use dify_double::{all_permissions, call, client_for, context, invoke, DifyDouble};
use plugind::backwards::{BackwardsResponse, ResponseEvent};
use serde_json::{json, Value};

/// The error text of a call that failed before any response.
fn only_error(events: &[BackwardsResponse]) -> String {
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0].event, ResponseEvent::Error);
    assert_eq!(events[0].data, Value::Null);
    assert_eq!(events[1].event, ResponseEvent::End);
    assert_eq!(
        events[0].backwards_request_id,
        events[1].backwards_request_id
    );
    events[0].message.clone()
}

fn llm_request() -> Value {
    json!({"provider": "openai", "model": "gpt-4o-mini", "mode": "chat",
           "prompt_messages": [{"role": "user", "content": "hi there"}], "stream": true})
}

#[tokio::test]
async fn each_type_is_refused_without_its_permission() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &json!({}));
    let cases = [
        ("tool", "tool"),
        ("llm", "llm"),
        ("llm_structured_output", "llm"),
        ("system_summary", "llm"),
        ("text_embedding", "text-embedding"),
        ("multimodal_embedding", "text-embedding"),
        ("rerank", "rerank"),
        ("multimodal_rerank", "rerank"),
        ("tts", "tts"),
        ("speech2text", "speech2text"),
        ("moderation", "moderation"),
        ("node_parameter_extractor", "node"),
        ("node_question_classifier", "node"),
        ("app", "app"),
        ("fetch_app", "app"),
        ("storage", "storage"),
    ];
    for (kind, what) in cases {
        let message = only_error(&call(&ctx, invoke(kind, json!({}))).await);
        assert_eq!(
            message,
            format!("permission denied, you need to enable {what} access in plugin manifest"),
            "{kind}"
        );
    }
    assert!(
        double.requests().await.is_empty(),
        "a refused call reached Dify"
    );
}

#[tokio::test]
async fn model_flag_without_master_switch_is_refused() {
    let double = DifyDouble::start();
    let ctx = context(
        double.client(),
        &json!({"model": {"enabled": false, "llm": true}}),
    );
    let message = only_error(&call(&ctx, invoke("llm", llm_request())).await);
    assert_eq!(
        message,
        "permission denied, you need to enable llm access in plugin manifest"
    );
}

#[tokio::test]
async fn upload_needs_no_permission() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &json!(null));
    let events = call(
        &ctx,
        invoke(
            "upload_file",
            json!({"filename": "f.txt", "mimetype": "text/plain"}),
        ),
    )
    .await;
    assert_eq!(events[0].event, ResponseEvent::Response, "{events:#?}");
    assert_eq!(events[0].message, "struct");
}

#[tokio::test]
async fn model_sessions_may_not_call_back() {
    let double = DifyDouble::start();
    let mut ctx = context(double.client(), &all_permissions());
    ctx.access_type = Some("model".into());
    let message = only_error(&call(&ctx, invoke("llm", llm_request())).await);
    assert_eq!(message, "you can not invoke dify from model");
}

#[tokio::test]
async fn unknown_and_encrypt_types_are_unsupported() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    assert_eq!(
        only_error(&call(&ctx, invoke("teleport", json!({}))).await),
        "unsupported invoke type: teleport"
    );
    assert_eq!(
        only_error(&call(&ctx, invoke("encrypt", json!({}))).await),
        "unsupported invoke type: encrypt"
    );
}

#[tokio::test]
async fn missing_required_field_is_refused_before_dify() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    let message = only_error(
        &call(
            &ctx,
            invoke("tool", json!({"tool_type": "builtin", "provider": "p"})),
        )
        .await,
    );
    assert!(
        message.starts_with("unmarshal backwards invoke request failed: field `tool`"),
        "{message}"
    );
    assert!(double.requests().await.is_empty());
}

#[tokio::test]
async fn http_500_on_a_stream_path_is_an_error() {
    let double = DifyDouble::start();
    double.behave("invoke/llm", "http500").await;
    let ctx = context(double.client(), &all_permissions());
    let message = only_error(&call(&ctx, invoke("llm", llm_request())).await);
    assert!(
        message.starts_with(
            "invoke llm model failed: request failed with status code: 500 and respond with:"
        ),
        "{message}"
    );
    assert!(message.contains("Internal Server Error"), "{message}");
}

#[tokio::test]
async fn http_500_on_a_struct_path_is_an_error() {
    let double = DifyDouble::start();
    double.behave("invoke/rerank", "http500").await;
    let ctx = context(double.client(), &all_permissions());
    let message = only_error(
        &call(
            &ctx,
            invoke(
                "rerank",
                json!({"provider": "p", "model": "m", "query": "q", "docs": []}),
            ),
        )
        .await,
    );
    assert!(
        message.starts_with("invoke rerank model failed: request failed with status code: 500"),
        "{message}"
    );
}

#[tokio::test]
async fn error_field_on_a_struct_reply_is_an_error() {
    let double = DifyDouble::start();
    double.behave("invoke/text-embedding", "error").await;
    let ctx = context(double.client(), &all_permissions());
    let message = only_error(
        &call(
            &ctx,
            invoke(
                "text_embedding",
                json!({"provider": "p", "model": "m", "texts": ["x"]}),
            ),
        )
        .await,
    );
    assert_eq!(
        message,
        "invoke text-embedding model failed: request failed: simulated failure in invoke/text-embedding"
    );
}

#[tokio::test]
async fn error_field_on_a_stream_reply_is_an_error() {
    let double = DifyDouble::start();
    double.behave("invoke/tool", "error").await;
    let ctx = context(double.client(), &all_permissions());
    let message = only_error(
        &call(
            &ctx,
            invoke(
                "tool",
                json!({"tool_type": "builtin", "provider": "p", "tool": "t"}),
            ),
        )
        .await,
    );
    // A 200 reply that is one plain JSON object is read as a line-format
    // stream; its `error` ends the call.
    assert_eq!(
        message,
        "read tool response failed: request failed: simulated failure in invoke/tool"
    );
}

#[tokio::test]
async fn error_frame_mid_stream_follows_the_chunks_already_sent() {
    let double = DifyDouble::start();
    double.behave("invoke/app", "stream_error").await;
    let ctx = context(double.client(), &all_permissions());
    let events = call(
        &ctx,
        invoke(
            "app",
            json!({"app_id": "workflow-app", "response_mode": "streaming", "inputs": {}}),
        ),
    )
    .await;
    let kinds: Vec<ResponseEvent> = events.iter().map(|e| e.event).collect();
    assert_eq!(
        kinds,
        [
            ResponseEvent::Response,
            ResponseEvent::Error,
            ResponseEvent::End
        ],
        "{events:#?}"
    );
    assert_eq!(events[0].data["event"], "workflow_started");
    assert_eq!(
        events[1].message,
        "read app failed: request failed: simulated failure after first chunk"
    );
}

#[tokio::test]
async fn dify_side_failure_inside_a_stream_is_an_error() {
    let double = DifyDouble::start();
    let ctx = context(double.client(), &all_permissions());
    // The double raises "app not found" inside the stream, as Dify does.
    let message = only_error(
        &call(
            &ctx,
            invoke(
                "app",
                json!({"app_id": "nope", "response_mode": "streaming"}),
            ),
        )
        .await,
    );
    assert_eq!(message, "read app failed: request failed: app not found");
}

#[tokio::test]
async fn bad_magic_byte_in_a_framed_stream_is_an_error() {
    let double = DifyDouble::start();
    double.behave("invoke/llm", "bad_magic").await;
    let ctx = context(double.client(), &all_permissions());
    let message = only_error(&call(&ctx, invoke("llm", llm_request())).await);
    assert_eq!(message, "read llm model failed: magic number mismatch: 14");
}

#[tokio::test]
async fn frame_cut_short_is_an_error() {
    let double = DifyDouble::start();
    double.behave("invoke/llm", "truncated").await;
    let ctx = context(double.client(), &all_permissions());
    let message = only_error(&call(&ctx, invoke("llm", llm_request())).await);
    assert!(
        message.starts_with("read llm model failed: stream ended inside a frame"),
        "{message}"
    );
}

#[tokio::test]
async fn wrong_inner_api_key_is_an_error() {
    let double = DifyDouble::start();
    let ctx = context(client_for(&double.base_url(), "wrong"), &all_permissions());
    let message = only_error(&call(&ctx, invoke("llm", llm_request())).await);
    assert!(
        message.starts_with("invoke llm model failed: request failed with status code: 404"),
        "{message}"
    );
    let message = only_error(&call(&ctx, invoke("system_summary", json!({"text": "t"}))).await);
    assert!(
        message.starts_with("invoke summary failed: request failed with status code: 404"),
        "{message}"
    );
}

#[tokio::test]
async fn unreachable_dify_is_an_error() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ctx = context(
        client_for(&format!("http://127.0.0.1:{port}"), "k"),
        &all_permissions(),
    );
    let message = only_error(&call(&ctx, invoke("fetch_app", json!({"app_id": "a"}))).await);
    assert!(message.starts_with("fetch app failed: "), "{message}");
}
