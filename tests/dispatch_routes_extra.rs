//! The OAuth, dynamic-select, datasource and trigger dispatch routes against
//! real `dify_plugin` fixture plugins (`echo_extras`, `echo_datasource`,
//! `echo_trigger`), with requests shaped as Dify's plugin client sends them
//! (`api/core/plugin/impl/{oauth,dynamic_select,datasource,trigger}.py`) and
//! each stream checked as that client parses it: a single-result route is
//! read as its first envelope's `data`.

mod common;
mod dispatch_common;

use base64::Engine;
use common::error_body;
use dispatch_common::*;
use serde_json::{json, Value};

/// Posts `data` on `route` for `plugin`; returns the envelopes, asserting the
/// route streamed.
async fn call(app: &common::TestApp, route: &str, plugin: &str, data: Value) -> Vec<Value> {
    let (status, ctype, env) = dispatch(app, route, plugin, data).await;
    assert_eq!(status, 200, "{route}: {env:?}");
    assert_eq!(ctype, "text/event-stream", "{route}");
    env
}

/// The one result of a single-result route, as Dify reads it (first chunk).
async fn single(app: &common::TestApp, route: &str, plugin: &str, data: Value) -> Value {
    let env = call(app, route, plugin, data).await;
    let data = data_of(&env);
    assert_eq!(data.len(), 1, "{route}: {data:?}");
    data.into_iter().next().unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The last envelope is a plugin error of `error_type` with `message`.
fn assert_plugin_error(env: &[Value], error_type: &str, message: &str) {
    let last = env.last().unwrap();
    assert_eq!(last["code"], -500, "{last}");
    let outer = error_body(last);
    assert_eq!(outer["error_type"], "PluginInvokeError", "{outer}");
    let inner: Value = serde_json::from_str(outer["message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["error_type"], error_type, "{inner}");
    assert_eq!(inner["message"], message, "{inner}");
}

#[tokio::test]
async fn oauth_and_dynamic_select_routes_answer_for_the_extras_tool() {
    let app = spawn_local(HostTimings::default()).await;
    install_fixture(&app, "echo_extras").await;
    let plugin = "plugind/echo_extras";
    let system = json!({"client_id": "cid"});

    let url = single(
        &app,
        "oauth/get_authorization_url",
        plugin,
        json!({"provider": "echo_extras", "redirect_uri": "https://dify/cb",
               "system_credentials": system}),
    )
    .await;
    assert_eq!(
        url,
        json!({"authorization_url":
            "https://auth.example/authorize?client_id=cid&redirect_uri=https%3A%2F%2Fdify%2Fcb"})
    );

    // The callback request travels hex-encoded, as Dify serializes it.
    let raw = b"GET /cb?code=abc123&state=s HTTP/1.1\r\nHost: dify\r\n\r\n";
    let creds = single(
        &app,
        "oauth/get_credentials",
        plugin,
        json!({"provider": "echo_extras", "redirect_uri": "https://dify/cb",
               "system_credentials": system, "raw_http_request": hex(raw)}),
    )
    .await;
    assert_eq!(
        creds,
        json!({"metadata": {},
               "credentials": {"access_token": "token-abc123", "client_id": "cid", "method": "GET"},
               "expires_at": 1700000000})
    );

    let refreshed = single(
        &app,
        "oauth/refresh_credentials",
        plugin,
        json!({"provider": "echo_extras", "redirect_uri": "https://dify/cb",
               "system_credentials": system, "credentials": {"access_token": "t1"}}),
    )
    .await;
    assert_eq!(
        refreshed,
        json!({"credentials": {"access_token": "t1-refreshed"}, "expires_at": 1800000000})
    );

    let options = single(
        &app,
        "dynamic_select/fetch_parameter_options",
        plugin,
        json!({"provider": "echo_extras", "credentials": {"api_key": "k9"},
               "provider_action": "pick", "parameter": "choice"}),
    )
    .await;
    let options = options["options"].as_array().unwrap();
    let values: Vec<_> = options.iter().map(|o| o["value"].clone()).collect();
    assert_eq!(values, vec![json!("red"), json!("green"), json!("key-k9")]);
    assert_eq!(options[0]["label"]["en_US"], "Red");

    // A parameter without options is the plugin's error, typed as such.
    let env = call(
        &app,
        "dynamic_select/fetch_parameter_options",
        plugin,
        json!({"provider": "echo_extras", "credentials": {},
               "provider_action": "pick", "parameter": "other"}),
    )
    .await;
    assert_plugin_error(&env, "ValueError", "no options for other");
}

#[tokio::test]
async fn datasource_routes_answer_for_each_provider_kind() {
    let app = spawn_local(HostTimings::default()).await;
    install_fixture(&app, "echo_datasource").await;
    let plugin = "plugind/echo_datasource";
    let key = json!({"api_key": "k"});

    let ok = single(
        &app,
        "datasource/validate_credentials",
        plugin,
        json!({"provider": "echo_crawl", "credentials": key}),
    )
    .await;
    assert_eq!(ok, json!({"result": true}));
    // The SDK sends `end` after this error; the stream still ends with it.
    let env = call(
        &app,
        "datasource/validate_credentials",
        plugin,
        json!({"provider": "echo_docs", "credentials": {"api_key": "bad"}}),
    )
    .await;
    assert_eq!(env.len(), 1, "{env:?}");
    assert_plugin_error(&env, "ValueError", "api_key is bad");

    // Website crawl: a progress message, then the finished crawl.
    let env = call(
        &app,
        "datasource/get_website_crawl",
        plugin,
        json!({"provider": "echo_crawl", "datasource": "crawl", "credentials": key,
               "datasource_parameters": {"url": "https://site", "pages": 2}}),
    )
    .await;
    let crawl = data_of(&env);
    assert_eq!(crawl.len(), 2, "{crawl:?}");
    assert_eq!(
        crawl[0],
        json!({"result": {"status": "processing", "web_info_list": [], "total": 2, "completed": 0}})
    );
    assert_eq!(crawl[1]["result"]["status"], "completed");
    assert_eq!(crawl[1]["result"]["completed"], 2);
    assert_eq!(
        crawl[1]["result"]["web_info_list"][1],
        json!({"source_url": "https://site/page1", "content": "content of page 1",
               "title": "Page 1", "description": "page 1 of https://site"})
    );

    let pages = single(
        &app,
        "datasource/get_online_document_pages",
        plugin,
        json!({"provider": "echo_docs", "datasource": "docs", "credentials": key,
               "datasource_parameters": {}}),
    )
    .await;
    let workspace = &pages["result"][0];
    assert_eq!(workspace["workspace_id"], "w1");
    assert_eq!(workspace["total"], 2);
    assert_eq!(
        workspace["pages"][1],
        json!({"page_id": "p1", "page_name": "Page 1", "page_icon": null, "type": "page",
               "last_edited_time": "2025-01-01T00:00:00Z", "parent_id": null})
    );

    let env = call(
        &app,
        "datasource/get_online_document_page_content",
        plugin,
        json!({"provider": "echo_docs", "datasource": "docs", "credentials": key,
               "page": {"workspace_id": "w1", "page_id": "p1", "type": "page"}}),
    )
    .await;
    let variables: Vec<_> = data_of(&env)
        .into_iter()
        .map(|m| {
            assert_eq!(m["type"], "variable", "{m}");
            (
                m["message"]["variable_name"].clone(),
                m["message"]["variable_value"].clone(),
            )
        })
        .collect();
    assert_eq!(
        variables,
        vec![
            (json!("workspace_id"), json!("w1")),
            (json!("page_id"), json!("p1")),
            (json!("content"), json!("content of p1")),
        ]
    );

    let files = single(
        &app,
        "datasource/online_drive_browse_files",
        plugin,
        json!({"provider": "echo_drive", "datasource": "drive", "credentials": key,
               "request": {"bucket": null, "prefix": "dir/", "max_keys": 20,
                           "next_page_parameters": null}}),
    )
    .await;
    assert_eq!(
        files,
        json!({"result": [{"bucket": null, "is_truncated": false, "next_page_parameters": null,
            "files": [{"id": "f1", "name": "dir/f1.txt", "size": 11, "type": "file"},
                      {"id": "f2", "name": "dir/f2.txt", "size": 12, "type": "file"}]}]})
    );

    let file = single(
        &app,
        "datasource/online_drive_download_file",
        plugin,
        json!({"provider": "echo_drive", "datasource": "drive", "credentials": key,
               "request": {"bucket": null, "id": "f2"}}),
    )
    .await;
    assert_eq!(file["type"], "blob");
    assert_eq!(
        file["meta"],
        json!({"mime_type": "text/plain", "filename": "f2.txt"})
    );
    let blob = base64::engine::general_purpose::STANDARD
        .decode(file["message"]["blob"].as_str().unwrap())
        .unwrap();
    assert_eq!(blob, b"second file\n");
}

#[tokio::test]
async fn trigger_routes_answer_for_the_echo_trigger() {
    let app = spawn_local(HostTimings::default()).await;
    install_fixture(&app, "echo_trigger").await;
    let plugin = "plugind/echo_trigger";
    let key = json!({"api_key": "k"});

    let ok = single(
        &app,
        "trigger/validate_credentials",
        plugin,
        json!({"provider": "echo_trigger", "credentials": key}),
    )
    .await;
    assert_eq!(ok, json!({"result": true}));
    let env = call(
        &app,
        "trigger/validate_credentials",
        plugin,
        json!({"provider": "echo_trigger", "credentials": {"api_key": "bad"}}),
    )
    .await;
    assert_plugin_error(&env, "ValueError", "api_key is bad");

    let subscribed = single(
        &app,
        "trigger/subscribe",
        plugin,
        json!({"provider": "echo_trigger", "credentials": key, "credential_type": "api-key",
               "endpoint": "https://dify/hook/1", "parameters": {"channel": "c1"}}),
    )
    .await;
    let subscription = subscribed["subscription"].clone();
    assert_eq!(
        subscription,
        json!({"expires_at": 1700000000, "endpoint": "https://dify/hook/1",
               "parameters": {"channel": "c1"}, "properties": {"webhook_id": "hook-c1"}})
    );

    // The webhook call as Dify forwards it: the raw request, hex-encoded.
    let body = br#"{"message":"hi","user":"u-42"}"#;
    let mut raw = format!(
        "POST /hook/1 HTTP/1.1\r\nHost: dify\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    let dispatched = single(
        &app,
        "trigger/dispatch_event",
        plugin,
        json!({"provider": "echo_trigger", "subscription": subscription, "credentials": key,
               "credential_type": "api-key", "raw_http_request": hex(&raw)}),
    )
    .await;
    assert_eq!(dispatched["user_id"], "u-42");
    assert_eq!(dispatched["events"], json!(["ping"]));
    assert_eq!(
        dispatched["payload"],
        json!({"message": "hi", "endpoint": "https://dify/hook/1"})
    );
    let response = String::from_utf8(unhex(dispatched["response"].as_str().unwrap())).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"received": "hi"}"#), "{response}");

    let invoked = single(
        &app,
        "trigger/invoke_event",
        plugin,
        json!({"provider": "echo_trigger", "event": "ping", "credentials": key,
               "credential_type": "api-key", "subscription": subscription,
               "raw_http_request": hex(&raw), "parameters": {"prefix": "> "},
               "payload": dispatched["payload"]}),
    )
    .await;
    assert_eq!(
        invoked,
        json!({"variables": {"message": "> hi", "method": "POST"}, "cancelled": false})
    );
    let ignored = single(
        &app,
        "trigger/invoke_event",
        plugin,
        json!({"provider": "echo_trigger", "event": "ping", "credentials": key,
               "credential_type": "api-key", "subscription": subscription,
               "raw_http_request": hex(&raw), "parameters": {}, "payload": {}}),
    )
    .await;
    assert_eq!(ignored, json!({"variables": {}, "cancelled": true}));

    let refreshed = single(
        &app,
        "trigger/refresh",
        plugin,
        json!({"provider": "echo_trigger", "subscription": subscription, "credentials": key,
               "credential_type": "api-key"}),
    )
    .await;
    assert_eq!(refreshed["subscription"]["expires_at"], 1700003600);
    assert_eq!(
        refreshed["subscription"]["properties"],
        subscription["properties"]
    );

    let removed = single(
        &app,
        "trigger/unsubscribe",
        plugin,
        json!({"provider": "echo_trigger", "subscription": subscription, "credentials": key,
               "credential_type": "api-key"}),
    )
    .await;
    assert_eq!(
        removed,
        json!({"subscription": {"success": true, "message": "deleted hook-c1"}})
    );
}
