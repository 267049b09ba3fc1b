//! Starts the Dify inner API test double (`server.py`) and builds the
//! backwards-invocation context the tests run against it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use plugind::backwards::{
    handle, BackwardsContext, BackwardsRequest, BackwardsResponse, InnerApiClient, InnerApiConfig,
    MemoryKvStore, Permission, PluginStorage,
};
use plugind::settings::Secret;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Python with only the standard library is needed.
pub const PYTHON: &str = "/root/.pyenv/versions/3.12.1/bin/python3.12";
/// The key the double expects.
pub const KEY: &str = "test-inner-key";

/// A running double; killed and reaped on drop.
pub struct DifyDouble {
    child: Child,
    pub port: u16,
}

impl DifyDouble {
    pub fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dify_double/server.py");
        let python = std::env::var("PLUGIND_TEST_PYTHON").unwrap_or_else(|_| PYTHON.to_owned());
        let mut child = Command::new(python)
            .arg(script)
            .arg("0")
            .arg(KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the dify double");
        let stdout = child.stdout.take().expect("double stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the double's port");
        let port = line.trim().parse().expect("the double prints its port");
        Self { child, port }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every inner API request the double received.
    pub async fn requests(&self) -> Vec<Value> {
        reqwest::get(format!("{}/__requests", self.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Changes how `path` answers (see server.py).
    pub async fn behave(&self, path: &str, kind: &str) {
        reqwest::Client::new()
            .post(format!("{}/__behaviour", self.base_url()))
            .json(&json!({"path": path, "kind": kind}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    pub fn client(&self) -> InnerApiClient {
        client_for(&self.base_url(), KEY)
    }
}

impl Drop for DifyDouble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client_for(base_url: &str, key: &str) -> InnerApiClient {
    InnerApiClient::new(InnerApiConfig {
        base_url: base_url.to_owned(),
        api_key: Secret::new(key),
        write_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(30),
        max_message: 1024 * 1024,
    })
    .unwrap()
}

/// Every permission granted, 4 KiB of storage.
pub fn all_permissions() -> Value {
    json!({
        "tool": {"enabled": true},
        "model": {"enabled": true, "llm": true, "text_embedding": true, "rerank": true,
                  "tts": true, "speech2text": true, "moderation": true},
        "node": {"enabled": true},
        "endpoint": {"enabled": true},
        "app": {"enabled": true},
        "storage": {"enabled": true, "size": 4096}
    })
}

pub fn context(client: InnerApiClient, permission: &Value) -> BackwardsContext {
    BackwardsContext {
        tenant_id: "tenant-1".into(),
        user_id: "user-1".into(),
        plugin_id: "langgenius/demo".into(),
        permission: Permission::from_json(permission),
        access_type: Some("tool".into()),
        client,
        storage: PluginStorage::new(Arc::new(MemoryKvStore::new()), 1024 * 1024),
    }
}

/// Runs one call from its `invoke` data and collects every event.
pub async fn call(ctx: &BackwardsContext, invoke: Value) -> Vec<BackwardsResponse> {
    let req = BackwardsRequest::from_invoke_data(&invoke).expect("valid invoke data");
    let (tx, mut rx) = mpsc::channel(4);
    let ctx = ctx.clone();
    let task = tokio::spawn(async move { handle(&ctx, req, tx).await });
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    task.await.unwrap();
    events
}

/// `{"type","backwards_request_id","request"}` for a call.
pub fn invoke(kind: &str, request: Value) -> Value {
    json!({"type": kind, "backwards_request_id": format!("req-{kind}"), "request": request})
}
