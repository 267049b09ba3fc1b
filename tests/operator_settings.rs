//! The reference's operator settings plugind acts on: PLUGIN_INSTALL_TIMEOUT
//! bounds an install, PROMETHEUS_ENABLED and PLUGIN_ENDPOINT_ENABLED remove
//! their routes, LOG_FILE receives the log (with the start-up note naming
//! settings plugind only accepts).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use plugind::app_state::AppState;
use plugind::install::{InstallJob, InstallStep, InstallStepError, Installer, Progress};

/// A step that never finishes, and tells when it was dropped.
struct Hanging {
    dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl InstallStep for Hanging {
    async fn ensure_runtime(&self, _: &InstallJob, _: &Progress) -> Result<(), InstallStepError> {
        let _guard = SetOnDrop(self.dropped.clone());
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
    async fn remove_runtime(&self, _: &str) -> Result<(), InstallStepError> {
        Ok(())
    }
}

#[tokio::test]
async fn an_install_past_the_install_timeout_fails_its_task_and_stops_the_step() {
    let dropped = Arc::new(AtomicBool::new(false));
    let step = Arc::new(Hanging {
        dropped: dropped.clone(),
    });
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database_url(dir.path()).await;
    let settings = common::settings(dir.path(), &url, &[]);
    assert_eq!(settings.install_timeout(), Duration::from_secs(15 * 60));
    let mut state = AppState::build_with_step(settings, step.clone())
        .await
        .unwrap();
    // The setting counts minutes; the same bound, shorter, keeps the test quick.
    state.installer = Arc::new(
        Installer::new(state.store.clone(), step, "local", "plugin_packages")
            .with_install_timeout(Duration::from_millis(300)),
    );
    let app = serve(state).await;
    let (_, task) = app.install(common::tool_package("slow", "0.0.1")).await;
    assert_eq!(task["status"], "failed", "{task}");
    let message = task["plugins"][0]["message"].as_str().unwrap();
    assert!(message.contains("timed out"), "{message}");
    assert!(message.contains("PLUGIN_INSTALL_TIMEOUT"), "{message}");
    assert!(dropped.load(Ordering::SeqCst), "the step was stopped");
    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    assert_eq!(
        list["data"]["list"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
}

async fn serve(state: AppState) -> common::TestApp {
    let base = common::serve_router(plugind::api::app(state.clone())).await;
    common::TestApp {
        base,
        client: reqwest::Client::new(),
        state,
        dir: tempfile::tempdir().unwrap(),
        database_url: String::new(),
    }
}

async fn status_and_body(url: String) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn metrics_and_endpoints_are_served_by_default() {
    let app = common::spawn_app().await;
    let (status, body) = status_and_body(format!("{}/metrics", app.base)).await;
    assert_eq!(status, 200);
    assert!(body.contains("plugind_"), "{body}");
    // An unknown hook is the endpoint server's own answer, an envelope.
    let (status, body) = status_and_body(format!("{}/e/nohook/x", app.base)).await;
    assert_eq!(status, 404);
    let envelope: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(envelope["message"].is_string(), "{envelope}");
}

#[tokio::test]
async fn metrics_and_endpoints_can_be_turned_off() {
    let app = common::spawn_app_with(
        &[
            "--prometheus-enabled",
            "false",
            "--plugin-endpoint-enabled",
            "false",
        ],
        Arc::new(plugind::install::NoopInstallStep),
    )
    .await;
    for path in ["/metrics", "/e/nohook/x", "/e/nohook"] {
        let (status, body) = status_and_body(format!("{}{path}", app.base)).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.is_empty(), "{path} is not routed at all: {body}");
    }
    // The rest of the daemon is unaffected.
    let (status, _) = status_and_body(format!("{}/health/check", app.base)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn log_file_receives_the_log_and_the_note_on_accepted_settings() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs").join("plugind.log");
    let port = |()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plugind"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SERVER_KEY", "k")
        .env("DIFY_INNER_API_URL", "http://127.0.0.1:9")
        .env("DIFY_INNER_API_KEY", "i")
        .env("SERVER_HOST", "127.0.0.1")
        .env("SERVER_PORT", port(()).to_string())
        .env("PLUGIN_REMOTE_INSTALLING_HOST", "127.0.0.1")
        .env("PLUGIN_REMOTE_INSTALLING_PORT", port(()).to_string())
        .env("PLUGIN_STORAGE_LOCAL_ROOT", dir.path().join("storage"))
        .env("LOG_FILE", &log)
        .env("SERVER_TZ", "Asia/Shanghai")
        // Empty counts as unset: no empty mirror URL, no empty candidate.
        .env("PIP_MIRROR_URL", "")
        .env("DB_PASSWORD", "")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut text = String::new();
    for _ in 0..600 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("plugind listening") {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("plugind serve exited ({status}); log:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await.unwrap();
    assert!(text.contains("plugind listening"), "{text}");
    assert_eq!(
        text.matches("SERVER_TZ=Asia/Shanghai is accepted but has no effect")
            .count(),
        1,
        "{text}"
    );
    assert!(!text.contains("\u{1b}["), "no colour codes in the file");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
