//! Dispatch routes against real `dify_plugin` fixture plugins installed
//! through the management API on the local platform: every envelope of each
//! stream checked field by field.

mod common;
mod dispatch_common;

use base64::Engine;
use common::{error_body, KEY, TENANT};
use dispatch_common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn tool_routes_stream_what_the_plugin_sends() {
    let app = spawn_local(HostTimings::default()).await;
    let id = install_fixture(&app, "echo_tool").await;
    let plugin = "plugind/echo_tool";
    assert!(id.starts_with("plugind/echo_tool:0.0.1@"), "{id}");

    // text
    let (status, ctype, env) = dispatch(
        &app,
        "tool/invoke",
        plugin,
        tool_data("echo", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/event-stream");
    assert_eq!(
        env,
        vec![json!({"code": 0, "message": "success",
                    "data": {"type": "text", "message": {"text": "hi"}, "meta": null}})]
    );

    // json
    let (_, _, env) = dispatch(
        &app,
        "tool/invoke",
        plugin,
        tool_data("json", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(
        data_of(&env),
        vec![
            json!({"type": "json", "message": {"json_object": {"echo": "hi", "length": 2}}, "meta": null})
        ]
    );

    // blob: chunks passed through unmerged, in order, same id
    let (_, _, env) = dispatch(
        &app,
        "tool/invoke",
        plugin,
        tool_data("blob", json!({"size": 20000})),
    )
    .await;
    let chunks = data_of(&env);
    assert_eq!(chunks.len(), 4, "{chunks:?}");
    let blob_id = chunks[0]["message"]["id"].as_str().unwrap().to_owned();
    let mut bytes = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["type"], "blob_chunk");
        assert_eq!(c["message"]["id"], blob_id.as_str());
        assert_eq!(c["message"]["sequence"], i);
        assert_eq!(c["message"]["total_length"], 20000);
        assert_eq!(
            c["meta"],
            json!({"mime_type": "application/octet-stream", "filename": "pattern.bin"})
        );
        assert_eq!(c["message"]["end"], i == 3);
        bytes.extend(
            base64::engine::general_purpose::STANDARD
                .decode(c["message"]["blob"].as_str().unwrap())
                .unwrap(),
        );
    }
    assert_eq!(bytes.len(), 20000);
    assert!(bytes
        .iter()
        .enumerate()
        .all(|(i, b)| *b as usize == i % 251));

    // error: one error envelope wrapping the plugin's error
    let (status, _, env) = dispatch(
        &app,
        "tool/invoke",
        plugin,
        tool_data("fail", json!({"reason": "boom"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(env.len(), 1);
    assert_eq!(env[0]["code"], -500);
    assert_eq!(env[0]["data"], Value::Null);
    let outer = error_body(&env[0]);
    assert_eq!(outer["error_type"], "PluginInvokeError");
    let inner: Value = serde_json::from_str(outer["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["error_type"], "ValueError");
    assert_eq!(inner["message"], "boom");
    assert!(inner["args"]["traceback"]
        .as_str()
        .unwrap()
        .contains("Traceback"));

    // slow: chunks arrive one by one, before the stream ends
    let body =
        json!({"user_id": "u1", "data": tool_data("slow", json!({"count": 3, "delay": 0.3}))});
    let mut r = post_dispatch(&app, "tool/invoke", Some(plugin), &body).await;
    let first = r.chunk().await.unwrap().unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert_eq!(
        envelopes(&first)[0]["data"]["message"]["text"],
        "chunk 0",
        "{first}"
    );
    let rest = r.text().await.unwrap();
    let texts: Vec<_> = envelopes(&format!("{first}{rest}"))
        .iter()
        .map(|e| e["data"]["message"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["chunk 0", "chunk 1", "chunk 2"]);

    // credentials
    let (_, _, env) = dispatch(
        &app,
        "tool/validate_credentials",
        plugin,
        json!({"provider": "echo_tool", "credentials": {"api_key": "good"}}),
    )
    .await;
    assert_eq!(data_of(&env), vec![json!({"result": true})]);
    let (_, _, env) = dispatch(
        &app,
        "tool/validate_credentials",
        plugin,
        json!({"provider": "echo_tool", "credentials": {"api_key": "bad"}}),
    )
    .await;
    assert_eq!(env.len(), 1);
    let inner: Value =
        serde_json::from_str(error_body(&env[0])["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["error_type"], "ToolProviderCredentialValidationError");
    assert_eq!(inner["message"], "api_key is bad");

    // The request counter saw these routes.
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"plugind_dispatch_requests_total{outcome="ok",route="tool/invoke"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"plugind_dispatch_requests_total{outcome="error",route="tool/invoke"}"#)
    );
}

#[tokio::test]
async fn llm_polling_starts_checks_and_answers_one_envelope_each_time() {
    let app = spawn_local(HostTimings::default()).await;
    install_fixture(&app, "echo_model").await;
    let plugin = "plugind/echo_model";
    let model = |credentials: Value, extra: Value| {
        let mut data = json!({"provider": "echo_model", "model_type": "llm", "model": "echo-llm",
                              "credentials": credentials});
        data.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        data
    };
    let start = |text: &str| {
        json!({"prompt_messages": [{"role": "user", "content": text}], "model_parameters": {},
               "tools": [], "stop": [], "stream": false})
    };

    let (status, ctype, env) = dispatch(
        &app,
        "model/polling/start",
        plugin,
        model(json!({"api_key": "k", "checks": 1}), start("hi there")),
    )
    .await;
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    assert_eq!(
        env,
        vec![json!({"code": 0, "message": "success", "data": {
            "status": "running", "plugin_state": {"text": "hi there", "left": 1},
            "next_check_after_seconds": 1, "expires_after_seconds": 60, "max_attempts": 2}})]
    );
    let mut state = env[0]["data"]["plugin_state"].clone();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let (status, ctype, env) = dispatch(
            &app,
            "model/polling/check",
            plugin,
            model(json!({"api_key": "k"}), json!({"plugin_state": state})),
        )
        .await;
        assert_eq!((status, ctype.as_str()), (200, "application/json"));
        let data = data_of(&env).remove(0);
        if let Some(next) = data.get("plugin_state") {
            state = next.clone();
        }
        answers.push(data);
    }
    assert_eq!(
        answers[0],
        json!({"status": "running", "plugin_state": {"text": "hi there", "left": 0},
               "next_check_after_seconds": 1})
    );
    assert_eq!(answers[1]["status"], "succeeded");
    let result = &answers[1]["result"];
    assert_eq!(result["model"], "echo-llm");
    assert_eq!(result["message"]["content"], "echo: hi there");
    assert_eq!(result["usage"]["prompt_tokens"], 2);
    assert_eq!(result["usage"]["completion_tokens"], 3);

    // A job that fails is an answer, not an error.
    let (_, _, env) = dispatch(
        &app,
        "model/polling/check",
        plugin,
        model(
            json!({"api_key": "k"}),
            json!({"plugin_state": {"text": "fail", "left": 0}}),
        ),
    )
    .await;
    assert_eq!(
        data_of(&env),
        vec![json!({"status": "failed", "error": "the job failed"})]
    );

    // The plugin's own error keeps the reference's HTTP 500.
    let (status, ctype, env) = dispatch(
        &app,
        "model/polling/start",
        plugin,
        model(json!({"api_key": "bad"}), start("hi")),
    )
    .await;
    assert_eq!((status, ctype.as_str()), (500, "application/json"));
    assert_eq!(env[0]["code"], -500);
    let outer = error_body(&env[0]);
    assert_eq!(outer["error_type"], "PluginInvokeError");
    let inner: Value = serde_json::from_str(outer["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["error_type"], "InvokeError");
    assert!(
        inner["message"]
            .as_str()
            .unwrap()
            .contains("api_key is bad"),
        "{inner}"
    );

    // An uninstalled plugin, as on every dispatch route.
    let (status, _, env) = dispatch(
        &app,
        "model/polling/check",
        "plugind/nothing",
        model(json!({}), json!({"plugin_state": {"left": 0}})),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(error_body(&env[0])["error_type"], "PluginNotFoundError");
}

#[tokio::test]
async fn model_routes_answer_for_the_echo_model() {
    let app = spawn_local(HostTimings::default()).await;
    install_fixture(&app, "echo_model").await;
    let plugin = "plugind/echo_model";
    let creds = json!({"api_key": "k"});

    let (_, _, env) = dispatch(
        &app,
        "llm/invoke",
        plugin,
        json!({"provider": "echo_model", "model_type": "llm", "model": "echo-llm",
               "credentials": creds, "model_parameters": {},
               "prompt_messages": [{"role": "user", "content": "hi there"}],
               "tools": [], "stop": [], "stream": true}),
    )
    .await;
    let chunks = data_of(&env);
    let contents: Vec<_> = chunks
        .iter()
        .map(|c| c["delta"]["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["echo: ", "hi ", "there"]);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["model"], "echo-llm");
        assert_eq!(c["delta"]["index"], i);
        assert_eq!(c["delta"]["message"]["role"], "assistant");
    }
    assert_eq!(chunks[0]["delta"]["usage"], Value::Null);
    let usage = &chunks[2]["delta"]["usage"];
    assert_eq!(usage["prompt_tokens"], 2);
    assert_eq!(usage["completion_tokens"], 3);
    assert_eq!(usage["total_tokens"], 5);
    assert_eq!(chunks[2]["delta"]["finish_reason"], "stop");

    let (_, _, env) = dispatch(
        &app,
        "llm/num_tokens",
        plugin,
        json!({"provider": "echo_model", "model_type": "llm", "model": "echo-llm",
               "credentials": creds,
               "prompt_messages": [{"role": "user", "content": "hi there"}], "tools": []}),
    )
    .await;
    assert_eq!(data_of(&env), vec![json!({"num_tokens": 2})]);

    let (_, _, env) = dispatch(
        &app,
        "text_embedding/invoke",
        plugin,
        json!({"provider": "echo_model", "model_type": "text-embedding", "model": "echo-embedding",
               "credentials": creds, "texts": ["a b"], "input_type": "document"}),
    )
    .await;
    let data = data_of(&env);
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["model"], "echo-embedding");
    assert_eq!(
        data[0]["embeddings"],
        json!([[0.784314, 0.407843, 0.478431, 0.031373, 0.666667, 0.364706, 0.431373, 0.823529]])
    );
    assert_eq!(data[0]["usage"]["tokens"], 2);

    let (_, _, env) = dispatch(
        &app,
        "text_embedding/num_tokens",
        plugin,
        json!({"provider": "echo_model", "model_type": "text-embedding", "model": "echo-embedding",
               "credentials": creds, "texts": ["a b", "c"]}),
    )
    .await;
    assert_eq!(data_of(&env), vec![json!({"num_tokens": [2, 1]})]);

    let (_, _, env) = dispatch(
        &app,
        "model/schema",
        plugin,
        json!({"provider": "echo_model", "model_type": "llm", "model": "echo-llm", "credentials": creds}),
    )
    .await;
    let schema = &data_of(&env)[0]["model_schema"];
    assert_eq!(schema["model"], "echo-llm");
    assert_eq!(schema["model_type"], "llm");
    assert_eq!(schema["fetch_from"], "predefined-model");
    assert_eq!(
        schema["model_properties"],
        json!({"mode": "chat", "context_size": 4096})
    );

    let (_, _, env) = dispatch(
        &app,
        "model/validate_provider_credentials",
        plugin,
        json!({"provider": "echo_model", "credentials": creds}),
    )
    .await;
    assert_eq!(
        data_of(&env),
        vec![json!({"result": true, "credentials": {"api_key": "k"}})]
    );
    let (_, _, env) = dispatch(
        &app,
        "model/validate_model_credentials",
        plugin,
        json!({"provider": "echo_model", "model_type": "llm", "model": "echo-llm", "credentials": creds}),
    )
    .await;
    assert_eq!(data_of(&env)[0]["result"], true);

    for (route, data) in [
        (
            "model/validate_provider_credentials",
            json!({"provider": "echo_model", "credentials": {"api_key": "bad"}}),
        ),
        (
            "model/validate_model_credentials",
            json!({"provider": "echo_model", "model_type": "llm", "model": "echo-llm",
                   "credentials": {"api_key": "bad"}}),
        ),
    ] {
        let (_, _, env) = dispatch(&app, route, plugin, data).await;
        assert_eq!(env.len(), 1, "{route}");
        assert_eq!(env[0]["code"], -500);
        let outer = error_body(&env[0]);
        assert_eq!(outer["error_type"], "PluginInvokeError");
        let inner: Value = serde_json::from_str(outer["message"].as_str().unwrap()).unwrap();
        assert_eq!(
            inner["error_type"], "CredentialsValidateFailedError",
            "{route}"
        );
        assert_eq!(inner["message"], "api_key is bad");
    }
}

#[tokio::test]
async fn agent_strategy_streams_logs_text_and_json() {
    let app = spawn_local(HostTimings::default()).await;
    install_fixture(&app, "echo_agent").await;
    let (_, _, env) = dispatch(
        &app,
        "agent_strategy/invoke",
        "plugind/echo_agent",
        json!({"agent_strategy_provider": "echo_agent", "agent_strategy": "echo",
               "agent_strategy_params": {"query": "hi", "rounds": 2}}),
    )
    .await;
    let chunks = data_of(&env);
    let kinds: Vec<_> = chunks.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["log", "text", "text", "json", "log"]);
    assert_eq!(chunks[0]["message"]["status"], "start");
    assert_eq!(chunks[0]["message"]["label"], "echo strategy");
    assert_eq!(chunks[1]["message"]["text"], "round 0: hi\n");
    assert_eq!(chunks[2]["message"]["text"], "round 1: hi\n");
    assert_eq!(
        chunks[3]["message"]["json_object"],
        json!({"query": "hi", "rounds": 2})
    );
    assert_eq!(chunks[4]["message"]["status"], "success");
    assert_eq!(
        chunks[4]["message"]["parent_id"],
        chunks[0]["message"]["id"]
    );
}

#[tokio::test]
async fn refusals_before_the_stream_use_the_reference_statuses() {
    // No plugin process is needed to refuse.
    let app = spawn_local(HostTimings::default()).await;
    let body = json!({"user_id": "u", "data": tool_data("echo", json!({}))});

    let r = post_dispatch(&app, "tool/invoke", None, &body).await;
    assert_eq!(r.status(), 400);
    let env: Value = r.json().await.unwrap();
    assert_eq!(env["code"], -400);
    assert_eq!(
        error_body(&env)["error_type"],
        "PluginDaemonBadRequestError"
    );
    assert_eq!(error_body(&env)["message"], "plugin_id is required");

    let r = post_dispatch(&app, "tool/invoke", Some("plugind/missing"), &body).await;
    assert_eq!(r.status(), 404);
    let env: Value = r.json().await.unwrap();
    assert_eq!(env["code"], -404);
    assert_eq!(error_body(&env)["error_type"], "PluginNotFoundError");

    for bad in [json!({"user_id": "u"}), json!({"data": {"provider": "p"}})] {
        let r = post_dispatch(&app, "tool/invoke", Some("plugind/missing"), &bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        let env: Value = r.json().await.unwrap();
        assert_eq!(
            error_body(&env)["error_type"],
            "PluginDaemonBadRequestError"
        );
    }
    let r = app
        .client
        .post(dispatch_url(&app, "llm/invoke"))
        .header("X-Api-Key", KEY)
        .header("X-Plugin-ID", "plugind/x")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = app
        .client
        .post(format!("{}/plugin/{TENANT}/dispatch/tool/invoke", app.base))
        .header("X-Api-Key", "wrong")
        .header("X-Plugin-ID", "plugind/x")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
