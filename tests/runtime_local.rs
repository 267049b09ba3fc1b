//! The local runtime against a real `dify_plugin` plugin (tests/fixtures/rt_echo):
//! environment building, launch, sessions, faults.
//!
//! uv is found through UV_PATH, then PATH, then `python3.12 -m uv`; Python 3.12
//! through PLUGIND_TEST_PYTHON, the pyenv install, or PATH.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use plugind::runtime::python_env::{self, no_progress, EnvPhase, EnvProgress, ProgressFn};
use plugind::runtime::{
    LaunchSpec, LocalHost, LocalOptions, LocalRuntime, PluginRuntime, ProcessSpec, PythonEnvConfig,
    RuntimeError, RuntimeState, SessionItem, SessionRequest,
};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

const PYENV_PYTHON: &str = "/root/.pyenv/versions/3.12.1/bin/python3.12";

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PLUGIND_TEST_PYTHON") {
        return p.into();
    }
    if Path::new(PYENV_PYTHON).exists() {
        return PYENV_PYTHON.into();
    }
    "python3.12".into()
}

fn env_config() -> PythonEnvConfig {
    let search_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    PythonEnvConfig {
        uv_path: std::env::var_os("UV_PATH").map(PathBuf::from),
        python_interpreter_path: Some(python()),
        pip_mirror_url: None,
        pip_extra_args: vec![],
        // Shared by every test run, so dependencies install from disk.
        uv_cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("uv-cache"),
        init_timeout: Duration::from_secs(300),
        search_path,
        pyenv_root: std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")),
        build_env: plugind::runtime::python_env::default_build_env(),
        stage_dir: None,
        tools_dir: None,
    }
}

fn options() -> LocalOptions {
    LocalOptions {
        heartbeat_timeout: Duration::from_secs(60),
        max_execution_timeout: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(200),
        stop_grace: Duration::from_secs(2),
        ..LocalOptions::default()
    }
}

fn host() -> LocalHost {
    LocalHost::new(env_config(), options(), 2)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("rt_echo")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rt_echo"),
        dir.path(),
    );
    dir
}

/// One prepared copy of the fixture, shared by the tests that only run it.
static PREPARED: OnceCell<PathBuf> = OnceCell::const_new();

async fn prepared_plugin() -> PathBuf {
    PREPARED
        .get_or_init(|| async {
            // Kept for the whole test run; removed with the target dir.
            let dir = fixture_copy().keep();
            python_env::ensure_env(&env_config(), &dir, Some("3.12"), no_progress())
                .await
                .expect("fixture environment builds");
            dir
        })
        .await
        .clone()
}

fn spec(dir: &Path) -> LaunchSpec {
    LaunchSpec {
        identity: "plugind/rt_echo:0.0.1@test".into(),
        working_dir: dir.to_owned(),
        entrypoint: "main".into(),
        runner_version: Some("3.12".into()),
        env: vec![],
        memory: None,
        package_files: None,
    }
}

async fn launch() -> LocalRuntime {
    let dir = prepared_plugin().await;
    host()
        .launch(spec(&dir), no_progress())
        .await
        .expect("plugin launches")
}

fn echo(params: Value) -> SessionRequest {
    let payload = json!({
        "provider": "echo",
        "tool": "echo",
        "tool_parameters": params,
        "credentials": {},
        "credential_type": "api-key",
    });
    let Value::Object(payload) = payload else {
        unreachable!()
    };
    SessionRequest::new("tool", "invoke_tool", "u1", payload)
}

/// Reads a whole session: the texts of its chunks, and how it ended.
async fn collect(
    mut stream: plugind::runtime::SessionStream,
) -> (Vec<String>, Option<RuntimeError>) {
    let mut texts = vec![];
    while let Some(item) = stream.next().await {
        match item {
            Ok(SessionItem::Chunk(chunk)) => {
                assert_eq!(chunk["type"], "text", "{chunk}");
                texts.push(chunk["message"]["text"].as_str().unwrap().to_owned());
            }
            Ok(SessionItem::Invoke(inv)) => panic!("unexpected backwards call {:?}", inv.request),
            Err(e) => return (texts, Some(e)),
        }
    }
    (texts, None)
}

fn expected(text: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{text}#{i}")).collect()
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still show one.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn environment_is_built_then_reused_and_a_half_built_one_is_rebuilt() {
    let dir = fixture_copy();
    let cfg = env_config();
    let seen: Arc<Mutex<Vec<EnvProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let progress: ProgressFn = Arc::new(move |p| sink.lock().unwrap().push(p));

    let built = python_env::ensure_env(&cfg, dir.path(), Some("3.12"), progress.clone())
        .await
        .unwrap();
    assert!(!built.reused);
    assert!(built.python.ends_with(".venv/bin/python"));
    assert!(python_env::is_complete(dir.path()));
    {
        let seen = seen.lock().unwrap();
        let phases: Vec<EnvPhase> = seen.iter().map(|p| p.phase).collect();
        for phase in [
            EnvPhase::CreatingVenv,
            EnvPhase::InstallingDependencies,
            EnvPhase::Compiling,
            EnvPhase::Ready,
        ] {
            assert!(phases.contains(&phase), "{phases:?}");
        }
        // uv's own output reaches the progress receiver.
        assert!(
            seen.iter()
                .any(|p| p.phase == EnvPhase::InstallingDependencies && p.line.is_some()),
            "no install output in {seen:?}"
        );
    }
    // The interpreter follows meta.runner.version.
    let version = std::process::Command::new(&built.python)
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains("3.12"));

    let again = python_env::ensure_env(&cfg, dir.path(), Some("3.12"), no_progress())
        .await
        .unwrap();
    assert!(again.reused);

    // A build interrupted before its marker is thrown away and redone.
    std::fs::remove_file(dir.path().join(python_env::MARKER)).unwrap();
    std::fs::write(dir.path().join(".venv/leftover"), "half-built").unwrap();
    let rebuilt = python_env::ensure_env(&cfg, dir.path(), Some("3.12"), no_progress())
        .await
        .unwrap();
    assert!(!rebuilt.reused);
    assert!(!dir.path().join(".venv/leftover").exists());
    assert!(python_env::is_complete(dir.path()));
}

#[tokio::test]
async fn a_failed_install_says_what_failed_with_uv_output() {
    let dir = fixture_copy();
    std::fs::write(
        dir.path().join("requirements.txt"),
        "plugind-no-such-package-4a1f9c==0.0.1\n",
    )
    .unwrap();
    let mut cfg = env_config();
    // No index: resolution fails fast and offline.
    cfg.pip_extra_args = vec!["--offline".into()];
    let err = python_env::ensure_env(&cfg, dir.path(), Some("3.12"), no_progress())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("dependency installation failed"), "{text}");
    assert!(text.contains("plugind-no-such-package-4a1f9c"), "{text}");
    assert!(!python_env::is_complete(dir.path()));
}

#[tokio::test]
async fn launch_is_ready_at_first_heartbeat_and_a_tool_call_streams_chunks() {
    let rt = launch().await;
    assert_eq!(rt.state(), RuntimeState::Ready);
    assert_eq!(rt.identity(), "plugind/rt_echo:0.0.1@test");
    let stream = rt
        .invoke(echo(json!({"text": "hello", "repeat": 3})))
        .await
        .unwrap();
    let (texts, err) = collect(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(texts, expected("hello", 3));
    assert_eq!(rt.open_sessions(), 0);
    rt.shutdown().await;
}

#[tokio::test]
async fn concurrent_sessions_share_one_process() {
    let rt = launch().await;
    let pid = rt.pid().unwrap();
    let calls = (0..8).map(|i| {
        let rt = rt.clone();
        async move {
            let text = format!("s{i}");
            let stream = rt
                .invoke(echo(json!({"text": text, "repeat": 4, "delay": 0.05})))
                .await
                .unwrap();
            (text, collect(stream).await)
        }
    });
    for (text, (texts, err)) in futures::future::join_all(calls).await {
        assert!(err.is_none(), "{err:?}");
        assert_eq!(texts, expected(&text, 4));
    }
    assert_eq!(rt.pid(), Some(pid));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_plugin_error_is_typed() {
    let rt = launch().await;
    let stream = rt
        .invoke(echo(json!({"text": "x", "repeat": 1, "fail": true})))
        .await
        .unwrap();
    let (texts, err) = collect(stream).await;
    assert_eq!(texts, expected("x", 1));
    match err {
        Some(RuntimeError::Plugin(e)) => {
            assert!(!e.error_type.is_empty());
            assert!(e.message.contains("echo was asked to fail"), "{e:?}");
        }
        other => panic!("expected a plugin error, got {other:?}"),
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn killing_the_plugin_mid_stream_fails_fast_and_the_next_call_succeeds() {
    let rt = launch().await;
    let pid = rt.pid().unwrap();
    let mut stream = rt
        .invoke(echo(json!({"text": "k", "repeat": 100, "delay": 0.1})))
        .await
        .unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Ok(SessionItem::Chunk(_)))
    ));
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed_at = Instant::now();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => break e,
            Ok(None) => panic!("stream ended without an error"),
            Err(_) => panic!("no error 5 s after the kill"),
        }
    };
    assert!(
        killed_at.elapsed() < Duration::from_secs(1),
        "error took {:?}",
        killed_at.elapsed()
    );
    assert!(matches!(err, RuntimeError::ConnectionClosed), "{err:?}");

    // The call waits for the restarted process.
    let stream = rt
        .invoke(echo(json!({"text": "after", "repeat": 2})))
        .await
        .unwrap();
    let (texts, err) = collect(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(texts, expected("after", 2));
    let new_pid = rt.pid().unwrap();
    assert_ne!(new_pid, pid);
    assert!(!alive(pid), "the killed child was not reaped");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_plugin_that_never_heartbeats_fails_to_launch_clearly() {
    let host = LocalHost::new(
        env_config(),
        LocalOptions {
            heartbeat_timeout: Duration::from_secs(2),
            ..options()
        },
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = host
        .start(ProcessSpec {
            identity: "fake/silent:0.0.1@x".into(),
            program: python(),
            args: vec![
                "-c".into(),
                "import sys, time\nprint('warming up forever', file=sys.stderr, flush=True)\ntime.sleep(600)".into(),
            ],
            working_dir: dir.path().to_owned(),
            env: vec![],
            jail: None,
            code_checksum: None,
        })
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RuntimeError::Launch(_)), "{err:?}");
    assert!(text.contains("no heartbeat within 2 s"), "{text}");
    assert!(text.contains("warming up forever"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_plugin_that_crashes_at_start_reports_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.py"),
        "import no_such_module_for_plugind\n",
    )
    .unwrap();
    let err = host()
        .start(ProcessSpec {
            identity: "fake/broken:0.0.1@x".into(),
            program: python(),
            args: vec!["-m".into(), "broken".into()],
            working_dir: dir.path().to_owned(),
            env: vec![],
            jail: None,
            code_checksum: None,
        })
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no_such_module_for_plugind"), "{text}");
}

#[tokio::test]
async fn garbage_lines_on_stdout_do_not_break_sessions() {
    let rt = launch().await;
    let pid = rt.pid().unwrap();
    let noisy = rt
        .invoke(echo(json!({"text": "noisy", "repeat": 2, "noise": true})))
        .await
        .unwrap();
    let quiet = rt
        .invoke(echo(json!({"text": "quiet", "repeat": 3, "delay": 0.1})))
        .await
        .unwrap();
    let ((noisy_texts, noisy_err), (quiet_texts, quiet_err)) =
        tokio::join!(collect(noisy), collect(quiet));
    assert!(noisy_err.is_none(), "{noisy_err:?}");
    assert!(quiet_err.is_none(), "{quiet_err:?}");
    assert_eq!(noisy_texts, expected("noisy", 2));
    assert_eq!(quiet_texts, expected("quiet", 3));
    assert_eq!(rt.pid(), Some(pid));
    assert_eq!(rt.state(), RuntimeState::Ready);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_oversize_line_fails_open_sessions_and_restarts_the_process() {
    let rt = launch().await;
    let pid = rt.pid().unwrap();
    let slow = rt
        .invoke(echo(json!({"text": "slow", "repeat": 5, "delay": 2})))
        .await
        .unwrap();
    let loud = rt
        .invoke(echo(json!({"text": "loud", "oversize": true})))
        .await
        .unwrap();
    let ((_, slow_err), (loud_texts, loud_err)) = tokio::join!(collect(slow), collect(loud));
    assert!(loud_texts.is_empty(), "{loud_texts:?}");
    for err in [slow_err, loud_err] {
        let err = err.expect("the session must fail");
        assert!(matches!(err, RuntimeError::ConnectionClosed), "{err:?}");
    }
    // A new process serves the next call.
    let (texts, err) = collect(rt.invoke(echo(json!({"text": "next"}))).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(texts, expected("next", 1));
    assert_ne!(rt.pid(), Some(pid));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_session_past_its_time_limit_is_killed_by_timeout() {
    let rt = launch().await;
    let started = Instant::now();
    let stream = rt
        .invoke(
            echo(json!({"text": "slow", "repeat": 1, "delay": 30}))
                .with_timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let (texts, err) = collect(stream).await;
    assert!(texts.is_empty());
    let err = err.expect("the session must fail");
    assert!(matches!(err, RuntimeError::Timeout), "{err:?}");
    assert_eq!(err.to_string(), "killed by timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(rt.open_sessions(), 0);
    // The process is still serving.
    let (texts, err) = collect(rt.invoke(echo(json!({"text": "next"}))).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(texts, expected("next", 1));
    rt.shutdown().await;
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_session() {
    let rt = launch().await;
    let mut stream = rt
        .invoke(echo(json!({"text": "d", "repeat": 50, "delay": 0.05})))
        .await
        .unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Ok(SessionItem::Chunk(_)))
    ));
    assert_eq!(rt.open_sessions(), 1);
    drop(stream);
    assert_eq!(rt.open_sessions(), 0);
    // Late chunks of the cancelled session are dropped; others still work.
    let (texts, err) = collect(
        rt.invoke(echo(json!({"text": "e", "repeat": 2})))
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(texts, expected("e", 2));
    rt.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_the_process_and_refuses_new_sessions() {
    let rt = launch().await;
    let pid = rt.pid().unwrap();
    rt.shutdown().await;
    assert_eq!(rt.state(), RuntimeState::Stopped);
    assert!(!alive(pid), "child still running after shutdown");
    let err = rt.invoke(echo(json!({"text": "late"}))).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn dropping_the_last_handle_kills_the_process() {
    let rt = launch().await;
    let pid = rt.pid().unwrap();
    drop(rt);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(pid), "child outlived its last handle");
}

#[tokio::test]
async fn backwards_calls_are_answered_on_the_same_session() {
    let rt = launch().await;
    let mut stream = rt
        .invoke(echo(json!({"text": "b", "repeat": 1, "store": "kept"})))
        .await
        .unwrap();
    let mut saved: Option<String> = None;
    let mut texts = vec![];
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            SessionItem::Chunk(chunk) => {
                texts.push(chunk["message"]["text"].as_str().unwrap().to_owned())
            }
            SessionItem::Invoke(call) => {
                assert_eq!(call.request.kind, "storage");
                let req = &call.request.request;
                match req["opt"].as_str().unwrap() {
                    "set" => {
                        saved = Some(req["value"].as_str().unwrap().to_owned());
                        call.reply
                            .respond("struct", json!({"data": "ok"}))
                            .await
                            .unwrap();
                    }
                    "get" => {
                        let value = saved.clone().expect("get after set");
                        call.reply
                            .respond("struct", json!({"data": value}))
                            .await
                            .unwrap();
                    }
                    other => panic!("unexpected storage op {other}"),
                }
                call.reply.end().await.unwrap();
            }
        }
    }
    // The value travelled hex-encoded, as the SDK sends it.
    assert_eq!(saved.as_deref(), Some("6b657074"));
    assert_eq!(texts, ["stored:kept", "b#0"]);
    rt.shutdown().await;
}
