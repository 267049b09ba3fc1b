//! The local process host with small fake plugins written in Python (no uv,
//! no SDK): launch concurrency, liveness and restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plugind::runtime::{
    LocalOptions, LocalRuntime, PluginRuntime, ProcessSpec, RuntimeError, RuntimeState,
};
use tokio::sync::Semaphore;

const PYENV_PYTHON: &str = "/root/.pyenv/versions/3.12.1/bin/python3.12";

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PLUGIND_TEST_PYTHON") {
        return p.into();
    }
    if Path::new(PYENV_PYTHON).exists() {
        return PYENV_PYTHON.into();
    }
    "python3".into()
}

/// Records its start, waits, checks whether another fake was starting at
/// the same time, then heartbeats once and idles.
const OVERLAP_PROBE: &str = r#"
import json, os, sys, time
d, me = sys.argv[1], sys.argv[2]
open(os.path.join(d, "starting-" + me), "w").close()
time.sleep(0.5)
names = os.listdir(d)
starting = {n[len("starting-"):] for n in names if n.startswith("starting-")}
ready = {n[len("ready-"):] for n in names if n.startswith("ready-")}
if starting - ready - {me}:
    open(os.path.join(d, "overlap"), "w").close()
open(os.path.join(d, "ready-" + me), "w").close()
print(json.dumps({"event": "heartbeat", "session_id": None, "data": {}}), flush=True)
time.sleep(600)
"#;

/// Heartbeats once, then never writes again.
const ONE_HEARTBEAT: &str = r#"
import json, time
print(json.dumps({"event": "heartbeat", "session_id": None, "data": {}}), flush=True)
time.sleep(600)
"#;

fn spec(dir: &Path, script: &str, args: &[&str]) -> ProcessSpec {
    let mut all = vec!["-c".to_owned(), script.to_owned()];
    all.extend(args.iter().map(|a| a.to_string()));
    ProcessSpec {
        identity: "fake/plugin:0.0.1@x".into(),
        program: python(),
        args: all,
        working_dir: dir.to_owned(),
        env: vec![],
        jail: None,
        code_checksum: None,
    }
}

fn options() -> LocalOptions {
    LocalOptions {
        heartbeat_timeout: Duration::from_secs(20),
        backoff_initial: Duration::from_millis(100),
        stop_grace: Duration::from_millis(200),
        ..LocalOptions::default()
    }
}

async fn launch_three(permits: usize) -> (bool, Vec<LocalRuntime>) {
    let dir = tempfile::tempdir().unwrap();
    let sem = Arc::new(Semaphore::new(permits));
    let launches = ["a", "b", "c"].map(|me| {
        let spec = spec(
            dir.path(),
            OVERLAP_PROBE,
            &[dir.path().to_str().unwrap(), me],
        );
        LocalRuntime::start(spec, options(), Arc::clone(&sem))
    });
    let runtimes: Vec<LocalRuntime> = futures::future::join_all(launches)
        .await
        .into_iter()
        .map(|r| r.expect("fake launches"))
        .collect();
    (dir.path().join("overlap").exists(), runtimes)
}

#[tokio::test]
async fn launches_beyond_the_limit_wait_for_a_free_slot() {
    let (overlapped, runtimes) = launch_three(1).await;
    assert!(!overlapped, "two launches ran at once with a limit of 1");
    for rt in &runtimes {
        rt.shutdown().await;
    }
    // The probe does see overlap when the limit allows it.
    let (overlapped, runtimes) = launch_three(3).await;
    assert!(overlapped, "the probe cannot detect concurrent launches");
    for rt in &runtimes {
        rt.shutdown().await;
    }
}

#[tokio::test]
async fn a_silent_plugin_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::start(
        spec(dir.path(), ONE_HEARTBEAT, &[]),
        LocalOptions {
            heartbeat_timeout: Duration::from_secs(2),
            ..options()
        },
        Arc::new(Semaphore::new(1)),
    )
    .await
    .unwrap();
    let first = rt.pid().unwrap();
    let mut states = rt.subscribe();
    states
        .wait_for(|s| *s == RuntimeState::Restarting)
        .await
        .unwrap();
    rt.wait_ready(Duration::from_secs(20)).await.unwrap();
    let second = rt.pid().unwrap();
    assert_ne!(first, second);
    assert!(!Path::new(&format!("/proc/{first}")).exists());
    rt.shutdown().await;
    assert_eq!(rt.state(), RuntimeState::Stopped);
}

#[tokio::test]
async fn a_missing_program_fails_the_launch() {
    let dir = tempfile::tempdir().unwrap();
    let err = LocalRuntime::start(
        ProcessSpec {
            identity: "fake/missing:0.0.1@x".into(),
            program: dir.path().join("no-such-python"),
            args: vec![],
            working_dir: dir.path().to_owned(),
            env: vec![],
            jail: None,
            code_checksum: None,
        },
        options(),
        Arc::new(Semaphore::new(1)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RuntimeError::Launch(_)), "{err:?}");
    assert!(err.to_string().contains("no-such-python"), "{err}");
}
