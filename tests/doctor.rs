//! `plugind doctor`, run as the built binary against a loopback stand-in of
//! Dify's inner API: every check passing exits 0; each broken thing is
//! named on its own line and the exit status is not 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use plugind::store::{NewInstallation, Store};
use serde_json::{json, Value};

const TENANT: &str = "0c5e5b3f-6a1d-4b61-9d3c-1f2e3d4c5b6a";
const INNER_KEY: &str = "inner-key-for-doctor";

/// Dify's plugin inner API as `api/controllers/inner_api/plugin/` answers
/// it, in its order of checks: the tenant (400), the key (404), the
/// payload (400 "invalid payload").
#[derive(Clone)]
struct DifyStandIn {
    key: String,
    tenants: Vec<String>,
    /// Keys that reached the key check.
    seen_keys: Arc<Mutex<Vec<String>>>,
}

async fn inner_api(
    State(dify): State<DifyStandIn>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let invalid = |message: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "invalid_param", "message": message, "status": 400})),
        )
    };
    let tenant = body["tenant_id"].as_str().unwrap_or("");
    if tenant.is_empty() {
        return invalid("tenant_id is required");
    }
    if !dify.tenants.iter().any(|t| t == tenant) {
        return invalid("tenant not found");
    }
    let key = headers
        .get("X-Inner-Api-Key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    dify.seen_keys.lock().unwrap().push(key.clone());
    if key != dify.key {
        return (
            StatusCode::NOT_FOUND,
            Json(
                json!({"code": "not_found", "message": "The requested URL was not found on the server.", "status": 404}),
            ),
        );
    }
    if body.get("opt").is_none() {
        return invalid("invalid payload: 3 validation errors for RequestInvokeEncrypt");
    }
    (StatusCode::OK, Json(json!({"data": {}, "error": ""})))
}

async fn start_dify(key: &str, tenants: &[&str]) -> (String, DifyStandIn) {
    let dify = DifyStandIn {
        key: key.to_owned(),
        tenants: tenants.iter().map(|t| t.to_string()).collect(),
        seen_keys: Default::default(),
    };
    let app = Router::new()
        .route("/inner/api/{*path}", post(inner_api))
        .with_state(dify.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), dify)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    free_port()
}

/// The environment of a healthy local daemon under `dir`.
fn healthy_env(dir: &Path, dify_url: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("SERVER_KEY", "doctor-server-key".to_owned()),
        ("SERVER_HOST", "127.0.0.1".to_owned()),
        ("SERVER_PORT", free_port().to_string()),
        ("PLUGIN_REMOTE_INSTALLING_HOST", "127.0.0.1".to_owned()),
        ("PLUGIN_REMOTE_INSTALLING_PORT", free_port().to_string()),
        ("DIFY_INNER_API_URL", dify_url.to_owned()),
        ("DIFY_INNER_API_KEY", INNER_KEY.to_owned()),
        (
            "PLUGIN_STORAGE_LOCAL_ROOT",
            dir.join("storage").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // The machine's uv and interpreter, as scripts/test.sh exports them.
    for name in [
        "PATH",
        "HOME",
        "UV_PATH",
        "PYTHON_INTERPRETER_PATH",
        "PYENV_ROOT",
    ] {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.to_owned(), v);
        }
    }
    env
}

struct Outcome {
    code: i32,
    stdout: String,
}

impl Outcome {
    /// The report line of check `name`.
    fn line(&self, name: &str) -> &str {
        let prefix = format!("{name}:");
        self.stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {name} line in:\n{}", self.stdout))
    }
}

/// Runs `plugind doctor` with exactly `env`, in `dir` (so no `.env` of the
/// repository is read).
async fn doctor(dir: &Path, env: &BTreeMap<String, String>, args: &[&str]) -> Outcome {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_plugind"))
        .arg("doctor")
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("doctor finishes")
        .expect("doctor runs");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// A plugind database under `dir` with one installation of `tenant`.
async fn database_with_tenant(dir: &Path, tenant: &str) -> PathBuf {
    let path = dir.join("db").join("plugind.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()), 1)
        .await
        .unwrap();
    let declaration = json!({"meta": {"runner": {"language": "python", "version": "3.12"}}});
    store
        .install_plugin(&NewInstallation {
            tenant_id: tenant,
            identifier: "langgenius/echo:0.0.1@0123456789abcdef",
            plugin_id: "langgenius/echo",
            install_type: "local",
            declaration: &declaration,
            source: "package",
            meta: &json!({}),
        })
        .await
        .unwrap();
    store.close().await;
    path
}

#[tokio::test]
async fn every_check_passes_and_the_exit_status_is_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (url, dify) = start_dify(INNER_KEY, &[TENANT]).await;
    let db = database_with_tenant(dir.path(), TENANT).await;
    let mut env = healthy_env(dir.path(), &url);
    env.insert("DATABASE_URL".into(), format!("sqlite://{}", db.display()));
    let out = doctor(dir.path(), &env, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(!out.stdout.contains("FAILED"), "{}", out.stdout);
    for name in [
        "settings",
        "database",
        "storage",
        "working folder",
        "uv",
        "python 3.12",
        "server port",
        "debugging port",
        "dify inner api",
    ] {
        let line = out.line(name);
        assert!(line.contains(" ok") || line.contains("warning:"), "{line}");
    }
    assert!(
        out.line("database").contains("up to date"),
        "{}",
        out.stdout
    );
    // The key was checked with the tenant the database records.
    assert!(
        out.line("dify inner api").contains("accepted the key"),
        "{}",
        out.stdout
    );
    assert_eq!(*dify.seen_keys.lock().unwrap(), vec![INNER_KEY.to_owned()]);
    assert!(out.stdout.ends_with("checks passed\n"), "{}", out.stdout);
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _dify) = start_dify(INNER_KEY, &[TENANT]).await;
    let mut env = healthy_env(dir.path(), &url);
    env.insert(
        "DATABASE_URL".into(),
        format!(
            "postgres://plugind:secret@127.0.0.1:{}/plugind",
            closed_port()
        ),
    );
    let out = doctor(dir.path(), &env, &["--tenant-id", TENANT, "--timeout", "5"]).await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    let line = out.line("database");
    assert!(line.contains("FAILED"), "{line}");
    assert!(line.contains("DB_HOST"), "{line}");
    assert!(!line.contains("secret"), "the password stays out: {line}");
    // The other checks still ran and passed.
    assert!(out.line("dify inner api").contains(" ok"), "{}", out.stdout);
}

#[tokio::test]
async fn storage_that_cannot_be_written_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _dify) = start_dify(INNER_KEY, &[TENANT]).await;
    // A file where the storage folder should be: no folder can be made
    // under it, whoever runs the test (root ignores permission bits).
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let mut env = healthy_env(dir.path(), &url);
    env.insert(
        "PLUGIN_STORAGE_LOCAL_ROOT".into(),
        blocker.join("storage").display().to_string(),
    );
    env.insert(
        "DATABASE_URL".into(),
        format!("sqlite://{}", dir.path().join("db/plugind.db").display()),
    );
    let out = doctor(dir.path(), &env, &["--tenant-id", TENANT]).await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    let line = out.line("storage");
    assert!(line.contains("FAILED"), "{line}");
    assert!(line.contains("PLUGIN_STORAGE_LOCAL_ROOT"), "{line}");
    assert!(line.contains("is not a folder"), "{line}");
    assert!(out.line("database").contains(" ok"), "{}", out.stdout);
}

#[tokio::test]
async fn a_wrong_inner_api_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (url, dify) = start_dify("the-key-dify-has", &[TENANT]).await;
    let env = healthy_env(dir.path(), &url);
    let out = doctor(dir.path(), &env, &["--tenant-id", TENANT]).await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    let line = out.line("dify inner api");
    assert!(line.contains("FAILED"), "{line}");
    assert!(line.contains("DIFY_INNER_API_KEY"), "{line}");
    assert!(line.contains("PLUGIN_DIFY_INNER_API_KEY"), "{line}");
    assert_eq!(*dify.seen_keys.lock().unwrap(), vec![INNER_KEY.to_owned()]);
}

#[tokio::test]
async fn without_a_known_tenant_the_key_is_a_warning_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (url, dify) = start_dify(INNER_KEY, &[TENANT]).await;
    let env = healthy_env(dir.path(), &url);
    let out = doctor(dir.path(), &env, &[]).await;
    let line = out.line("dify inner api");
    assert!(line.contains("warning:"), "{line}");
    assert!(line.contains("--tenant-id"), "{line}");
    assert!(dify.seen_keys.lock().unwrap().is_empty());
    assert_eq!(out.code, 0, "{}", out.stdout);
}

#[tokio::test]
async fn serverless_without_the_bootstrap_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _dify) = start_dify(INNER_KEY, &[TENANT]).await;
    let bootstraps = dir.path().join("bootstrap");
    std::fs::create_dir_all(&bootstraps).unwrap();
    let mut env = healthy_env(dir.path(), &url);
    for (k, v) in [
        ("PLATFORM", "serverless".to_owned()),
        ("PLUGIN_STORAGE_TYPE", "aws_s3".to_owned()),
        ("PLUGIN_STORAGE_OSS_BUCKET", "plugind-doctor".to_owned()),
        (
            "PLUGIN_LAMBDA_ROLE_ARN",
            "arn:aws:iam::123456789012:role/plugind-plugin".to_owned(),
        ),
        (
            "PLUGIN_SERVERLESS_CALLBACK_URL",
            "https://plugind.example.com".to_owned(),
        ),
        (
            "PLUGIN_LAMBDA_BOOTSTRAP_DIR",
            bootstraps.display().to_string(),
        ),
        ("AWS_REGION", "us-east-1".to_owned()),
        // Nothing answers there; the AWS checks fail fast, which is not
        // what this test looks at.
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", closed_port()),
        ),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ] {
        env.insert(k.to_owned(), v);
    }
    let out = doctor(dir.path(), &env, &["--tenant-id", TENANT, "--timeout", "5"]).await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    let line = out.line("lambda bootstrap");
    assert!(line.contains("FAILED"), "{line}");
    assert!(line.contains("x86_64/plugin-runner"), "{line}");
    assert!(line.contains("PLUGIN_LAMBDA_BOOTSTRAP_DIR"), "{line}");
    assert!(
        out.line("aws credentials").contains(" ok"),
        "{}",
        out.stdout
    );
    // No interpreter check on Lambda: the function's runtime brings Python.
    assert!(!out.stdout.contains("python 3.12:"), "{}", out.stdout);
}

#[tokio::test]
async fn settings_that_do_not_parse_are_the_one_failure_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = healthy_env(dir.path(), "http://127.0.0.1:9");
    env.insert("SERVER_PORT".into(), "seventy".into());
    env.remove("SERVER_KEY");
    let out = doctor(dir.path(), &env, &[]).await;
    assert_ne!(out.code, 0);
    let line = out.line("settings");
    assert!(line.contains("FAILED"), "{line}");
    assert!(
        line.contains("SERVER_PORT") || line.contains("SERVER_KEY"),
        "{line}"
    );
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
}
