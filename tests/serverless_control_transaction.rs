//! `POST /backwards-invocation/transaction`: a Lambda-hosted plugin's
//! backwards calls, authorised by the token the daemon signed.

mod common;

use std::io::Read;

use plugind::runtime::serverless::{sign_token, unix_now, TokenClaims};
use serde_json::{json, Value};

const SESSION: &str = "sess-tx";

/// The fixture tool package with plugin storage allowed.
fn storage_package() -> Vec<u8> {
    let pkg = common::tool_package("tx_echo", "0.0.1");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(pkg)).unwrap();
    let mut files = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        let name = f.name().to_owned();
        if name == "manifest.yaml" {
            data = String::from_utf8(data)
                .unwrap()
                .replace(
                    "permission: {}",
                    "permission:\n    storage:\n      enabled: true\n      size: 1048576",
                )
                .into_bytes();
        }
        files.push((name, data));
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    common::build_zip(&refs)
}

fn claims(identifier: &str, exp: u64) -> TokenClaims {
    TokenClaims {
        session_id: SESSION.into(),
        tenant_id: common::TENANT.into(),
        plugin_id: identifier.split(':').next().unwrap().into(),
        identifier: identifier.into(),
        user_id: "u1".into(),
        access_type: "tool".into(),
        exp,
    }
}

fn key(app: &common::TestApp) -> Vec<u8> {
    app.state.settings.serverless_token_key()
}

async fn post(
    app: &common::TestApp,
    token: Option<&str>,
    session: &str,
    body: Value,
) -> (u16, Vec<Value>) {
    let mut req = app
        .client
        .post(format!("{}/backwards-invocation/transaction", app.base))
        .header("Dify-Plugin-Session-ID", session)
        .json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let lines = if status == 200 {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        vec![serde_json::from_str(&text).unwrap()]
    };
    (status, lines)
}

fn invoke_line(request_id: &str, request: Value) -> Value {
    json!({
        "session_id": SESSION,
        "event": "session",
        "data": {"type": "invoke", "data": {
            "type": "storage", "backwards_request_id": request_id, "request": request
        }}
    })
}

async fn installed() -> (common::TestApp, String) {
    let app = common::spawn_app().await;
    let (id, task) = app.install(storage_package()).await;
    assert_eq!(task["status"], "success", "{task}");
    (app, id)
}

#[tokio::test]
async fn a_valid_token_runs_the_call_and_streams_backwards_responses() {
    let (app, id) = installed().await;
    let token = sign_token(&key(&app), &claims(&id, unix_now() + 60));
    let set = invoke_line(
        "b1",
        json!({"opt": "set", "key": "greeting", "value": hex::encode("hello")}),
    );
    let (status, lines) = post(&app, Some(&token), SESSION, set).await;
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(lines.last().unwrap()["event"], "end");
    assert!(lines.iter().all(|l| l["backwards_request_id"] == "b1"));
    assert_eq!(lines[0]["event"], "response", "{lines:?}");

    // The bare invoke data works too, and sees what the first call stored
    // under the token's tenant and plugin.
    let get = json!({"type": "storage", "backwards_request_id": "b2",
                     "request": {"opt": "get", "key": "greeting"}});
    let (status, lines) = post(&app, Some(&token), SESSION, get).await;
    assert_eq!(status, 200);
    assert_eq!(lines[0]["event"], "response");
    assert_eq!(lines[0]["data"]["data"], hex::encode("hello"), "{lines:?}");
    assert_eq!(lines.last().unwrap()["event"], "end");
}

#[tokio::test]
async fn forged_expired_foreign_and_missing_tokens_are_refused() {
    let (app, id) = installed().await;
    let body = invoke_line("b1", json!({"opt": "exist", "key": "k"}));
    let forged = sign_token(b"not the daemon's key", &claims(&id, unix_now() + 60));
    let expired = sign_token(&key(&app), &claims(&id, unix_now() - 1));
    let valid = sign_token(&key(&app), &claims(&id, unix_now() + 60));
    for (token, session) in [
        (Some(forged.as_str()), SESSION),
        (Some(expired.as_str()), SESSION),
        (Some(valid.as_str()), "another-session"),
        (Some("garbage"), SESSION),
        (None, SESSION),
    ] {
        let (status, body) = post(&app, token, session, body.clone()).await;
        assert_eq!(status, 401, "{token:?} {session}");
        assert_eq!(body[0]["code"], -401);
        let message: Value = serde_json::from_str(body[0]["message"].as_str().unwrap()).unwrap();
        assert_eq!(message["error_type"], "PluginDaemonUnauthorizedError");
    }
    // Nothing was run: the key was never stored by anyone.
    let (status, lines) = post(&app, Some(&valid), SESSION, body).await;
    assert_eq!(status, 200);
    assert_eq!(lines[0]["data"]["data"], false, "{lines:?}");
}

#[tokio::test]
async fn the_manifest_permissions_still_apply() {
    let app = common::spawn_app().await;
    // The plain fixture declares no storage permission.
    let (id, task) = app.install(common::tool_package("tx_plain", "0.0.1")).await;
    assert_eq!(task["status"], "success");
    let token = sign_token(&key(&app), &claims(&id, unix_now() + 60));
    let (status, lines) = post(
        &app,
        Some(&token),
        SESSION,
        invoke_line("b9", json!({"opt": "get", "key": "k"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(lines[0]["event"], "error", "{lines:?}");
    assert_eq!(lines.last().unwrap()["event"], "end");
}

#[tokio::test]
async fn malformed_bodies_are_bad_requests() {
    let (app, id) = installed().await;
    let token = sign_token(&key(&app), &claims(&id, unix_now() + 60));
    let (status, _) = post(&app, Some(&token), SESSION, json!({"no": "type"})).await;
    assert_eq!(status, 400);
}
