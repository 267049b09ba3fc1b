//! `plugind mcp …` run as a process against a daemon's database: create a
//! server, issue a token, list, revoke and delete; the running daemon
//! serves what the command created.

mod common;
mod dispatch_common;

use std::process::Output;
use std::sync::Arc;

use common::{KEY, TENANT};
use plugind::app_state::AppState;
use plugind::install::NoopInstallStep;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};

struct Daemon {
    base: String,
    database_url: String,
    dir: tempfile::TempDir,
}

/// A daemon with the echo_tool declarations installed.
async fn daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let database_url = common::fresh_database_url(dir.path()).await;
    let settings = common::settings(dir.path(), &database_url, &[]);
    let state = AppState::build_with_step(settings, Arc::new(NoopInstallStep))
        .await
        .unwrap();
    let base = common::serve_router(plugind::api::app(state.clone())).await;
    let app = common::TestApp {
        base: base.clone(),
        client: reqwest::Client::new(),
        state,
        dir,
        database_url: database_url.clone(),
    };
    let (_, task) = app
        .install(dispatch_common::fixture_package("echo_tool"))
        .await;
    assert_eq!(task["status"], "success", "{task}");
    Daemon {
        base,
        database_url,
        dir: app.dir,
    }
}

/// Runs `plugind mcp ARGS` with the daemon's settings in the environment.
async fn plugind_mcp(d: &Daemon, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_plugind"))
        .arg("mcp")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SERVER_KEY", KEY)
        .env("DATABASE_URL", &d.database_url)
        .env("DIFY_INNER_API_URL", "http://127.0.0.1:9")
        .env("DIFY_INNER_API_KEY", "inner")
        .current_dir(d.dir.path())
        .output()
        .await
        .unwrap()
}

async fn json_of(d: &Daemon, args: &[&str]) -> Value {
    let out = plugind_mcp(d, args).await;
    assert!(
        out.status.success(),
        "plugind mcp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn initialize_status(d: &Daemon, server_id: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/mcp/{server_id}", d.base))
        .bearer_auth(token)
        .header("Accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn created_servers_and_tokens_are_served_by_the_daemon() {
    let d = daemon().await;
    let server = json_of(
        &d,
        &[
            "create",
            "--tenant",
            TENANT,
            "--name",
            "from the cli",
            "--user-id",
            "u9",
            "--tool",
            "echo_tool/echo",
            "--tool",
            "echo_tool/json",
            "--credentials",
            r#"echo_tool={"api_key": "cli-secret"}"#,
        ],
    )
    .await;
    assert_eq!(server["name"], "from the cli");
    assert_eq!(server["credential_providers"], json!(["echo_tool"]));
    assert!(!server.to_string().contains("cli-secret"));
    let id = server["id"].as_str().unwrap().to_owned();
    // The path printed is the one Dify's MCP client takes for Streamable
    // HTTP at once (its last segment is `mcp`).
    let path = format!("/mcp/{id}/mcp");
    assert_eq!(server["path"], path.as_str());

    let issued = json_of(&d, &["token", "--tenant", TENANT, &id, "--name", "laptop"]).await;
    let token = issued["token"].as_str().unwrap().to_owned();
    assert_eq!(issued["info"]["name"], "laptop");

    let listed = json_of(&d, &["list", "--tenant", TENANT]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["path"], path.as_str());
    // Another tenant sees nothing.
    let other = json_of(&d, &["list", "--tenant", "someone-else"]).await;
    assert_eq!(other, json!([]));

    // The daemon serves the server with the token the command printed.
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}{path}", d.base))
            .auth_header(token.clone()),
    );
    let client = ().serve(transport).await.unwrap();
    assert_eq!(
        client
            .peer_info()
            .unwrap()
            .server_info
            .as_ref()
            .unwrap()
            .name,
        "from the cli"
    );
    let mut names: Vec<_> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["echo_tool__echo", "echo_tool__json"]);
    client.cancel().await.unwrap();

    let token_id = issued["info"]["id"].as_str().unwrap();
    let revoked = json_of(&d, &["revoke", "--tenant", TENANT, &id, token_id]).await;
    assert_eq!(revoked, json!({"revoked": true}));
    assert_eq!(initialize_status(&d, &id, &token).await, 401);

    let deleted = json_of(&d, &["delete", "--tenant", TENANT, &id]).await;
    assert_eq!(deleted, json!({"deleted": true}));
    assert_eq!(json_of(&d, &["list", "--tenant", TENANT]).await, json!([]));
}

#[tokio::test]
async fn malformed_arguments_fail_with_a_message() {
    let d = daemon().await;
    let out = plugind_mcp(
        &d,
        &[
            "create", "--tenant", TENANT, "--name", "x", "--tool", "no-slash",
        ],
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provider/tool"), "{err}");
    let out = plugind_mcp(
        &d,
        &[
            "create",
            "--tenant",
            TENANT,
            "--name",
            "x",
            "--credentials",
            "echo_tool=not json",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials of echo_tool"));
    // Nothing was created by the failed commands.
    assert_eq!(json_of(&d, &["list", "--tenant", TENANT]).await, json!([]));
}
