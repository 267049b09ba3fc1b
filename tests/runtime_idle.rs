//! Idle stopping of local plugins (PLUGIN_LOCAL_IDLE_TIMEOUT) with a small
//! fake plugin written in Python (no uv, no SDK): a plugin without sessions
//! is stopped and started again by the next call, concurrent first calls
//! share one start, an open session keeps its plugin up, and with no idle
//! timeout nothing is ever stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use plugind::runtime::{
    LocalOptions, LocalRuntime, PluginRuntime, ProcessSpec, RuntimeError, RuntimeState,
    SessionItem, SessionRequest,
};
use serde_json::{json, Value};
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

/// Leaves a `start-<pid>` file in its folder, waits a moment (so calls can
/// pile up behind its start), heartbeats, then answers each request with
/// `repeat` chunks `delay` seconds apart and an end. A file named `fail`
/// in its folder makes it exit before its heartbeat.
const FAKE: &str = r#"
import json, os, sys, time
d = sys.argv[1]
open(os.path.join(d, "start-%d" % os.getpid()), "w").close()
if os.path.exists(os.path.join(d, "fail")):
    sys.stderr.write("asked to fail at start\n")
    sys.exit(3)
time.sleep(0.3)
def send(o):
    sys.stdout.write(json.dumps(o) + "\n")
    sys.stdout.flush()
send({"event": "heartbeat", "session_id": None, "data": {}})
for line in sys.stdin:
    msg = json.loads(line)
    sid, data = msg["session_id"], msg["data"]
    for i in range(int(data.get("repeat", 1))):
        time.sleep(float(data.get("delay", 0)))
        send({"event": "session", "session_id": sid,
              "data": {"type": "stream", "data": {"i": i, "pid": os.getpid()}}})
    send({"event": "session", "session_id": sid, "data": {"type": "end", "data": {}}})
"#;

fn spec(dir: &Path) -> ProcessSpec {
    ProcessSpec {
        identity: "fake/idle:0.0.1@x".into(),
        program: python(),
        args: vec![
            "-c".to_owned(),
            FAKE.to_owned(),
            dir.to_str().unwrap().to_owned(),
        ],
        working_dir: dir.to_owned(),
        env: vec![],
        jail: None,
        code_checksum: None,
    }
}

fn options(idle: Option<Duration>) -> LocalOptions {
    LocalOptions {
        heartbeat_timeout: Duration::from_secs(20),
        backoff_initial: Duration::from_millis(100),
        stop_grace: Duration::from_millis(500),
        idle_timeout: idle,
        ..LocalOptions::default()
    }
}

/// How many processes the fake has started in `dir`.
fn started(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("start-")
        })
        .count()
}

fn request(repeat: u32, delay: f64) -> SessionRequest {
    let Value::Object(payload) = json!({"repeat": repeat, "delay": delay}) else {
        unreachable!()
    };
    SessionRequest::new("tool", "invoke_tool", "u1", payload)
}

/// Runs one session; returns its chunks' `i` values and the pid that
/// answered.
async fn call(rt: &LocalRuntime, repeat: u32, delay: f64) -> Result<(Vec<u64>, u64), RuntimeError> {
    let mut stream = rt.invoke(request(repeat, delay)).await?;
    let (mut seen, mut pid) = (vec![], 0);
    while let Some(item) = stream.next().await {
        match item? {
            SessionItem::Chunk(chunk) => {
                seen.push(chunk["i"].as_u64().unwrap());
                pid = chunk["pid"].as_u64().unwrap();
            }
            SessionItem::Invoke(_) => panic!("unexpected backwards call"),
        }
    }
    Ok((seen, pid))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (bounded) until the runtime is in `state`.
async fn wait_state(rt: &LocalRuntime, state: RuntimeState, within: Duration) {
    let mut states = rt.subscribe();
    tokio::time::timeout(within, states.wait_for(|s| *s == state))
        .await
        .unwrap_or_else(|_| panic!("not {state:?} within {within:?}: {:?}", rt.state()))
        .unwrap();
}

#[tokio::test]
async fn an_idle_plugin_is_stopped_and_the_next_call_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::start(
        spec(dir.path()),
        options(Some(Duration::from_secs(1))),
        Arc::new(Semaphore::new(2)),
    )
    .await
    .unwrap();
    let first = rt.pid().unwrap();
    assert_eq!(call(&rt, 2, 0.0).await.unwrap().0, vec![0, 1]);

    wait_state(&rt, RuntimeState::Idle, Duration::from_secs(10)).await;
    // The process is gone and reaped, not merely forgotten.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while alive(first) || rt.pid().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle child still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rt.open_sessions(), 0);

    let (seen, pid) = call(&rt, 3, 0.0).await.unwrap();
    assert_eq!(seen, vec![0, 1, 2]);
    assert_ne!(pid, u64::from(first));
    assert_eq!(rt.pid(), Some(pid as u32));
    assert_eq!(rt.state(), RuntimeState::Ready);
    assert_eq!(rt.starts(), 2);
    assert_eq!(started(dir.path()), 2);
    rt.shutdown().await;
    assert_eq!(rt.state(), RuntimeState::Stopped);
}

#[tokio::test]
async fn twenty_concurrent_first_calls_start_the_plugin_once() {
    let dir = tempfile::tempdir().unwrap();
    // Registered the way a daemon restart does with idle stopping on.
    let rt = LocalRuntime::dormant(
        spec(dir.path()),
        options(Some(Duration::from_secs(30))),
        Arc::new(Semaphore::new(2)),
    );
    assert_eq!(rt.state(), RuntimeState::Idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(started(dir.path()), 0, "a dormant plugin started by itself");

    let calls = (0..20).map(|_| {
        let rt = rt.clone();
        async move { call(&rt, 1, 0.0).await }
    });
    let answers = futures::future::join_all(calls).await;
    let pids: std::collections::BTreeSet<u64> = answers
        .into_iter()
        .map(|a| {
            let (seen, pid) = a.expect("every call is answered");
            assert_eq!(seen, vec![0]);
            pid
        })
        .collect();
    assert_eq!(pids.len(), 1, "answered by several processes: {pids:?}");
    assert_eq!(started(dir.path()), 1);
    assert_eq!(rt.starts(), 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_open_session_keeps_its_plugin_up_past_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::start(
        spec(dir.path()),
        options(Some(Duration::from_secs(1))),
        Arc::new(Semaphore::new(2)),
    )
    .await
    .unwrap();
    let pid = rt.pid().unwrap();
    // Three times the idle timeout, streaming all along.
    let (seen, answered_by) = call(&rt, 12, 0.25).await.unwrap();
    assert_eq!(seen, (0..12).collect::<Vec<_>>());
    assert_eq!(answered_by, u64::from(pid));
    assert_eq!(rt.pid(), Some(pid));
    assert_eq!(rt.starts(), 1);
    // Once the session is over, the timeout counts from its end.
    wait_state(&rt, RuntimeState::Idle, Duration::from_secs(10)).await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_failed_start_on_demand_fails_its_callers_and_the_next_call_tries_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::dormant(
        spec(dir.path()),
        options(Some(Duration::from_secs(30))),
        Arc::new(Semaphore::new(2)),
    );
    std::fs::write(dir.path().join("fail"), b"").unwrap();
    let calls = (0..3).map(|_| {
        let rt = rt.clone();
        async move { call(&rt, 1, 0.0).await }
    });
    for answer in futures::future::join_all(calls).await {
        match answer {
            Err(RuntimeError::Launch(why)) => {
                assert!(why.contains("asked to fail at start"), "{why}")
            }
            other => panic!("expected a launch error, got {other:?}"),
        }
    }
    assert_eq!(started(dir.path()), 1, "the waiting calls shared one start");
    assert_eq!(rt.state(), RuntimeState::Idle);

    std::fs::remove_file(dir.path().join("fail")).unwrap();
    assert_eq!(call(&rt, 1, 0.0).await.unwrap().0, vec![0]);
    assert_eq!(started(dir.path()), 2);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_idle_plugin_shuts_down_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::dormant(
        spec(dir.path()),
        options(Some(Duration::from_secs(30))),
        Arc::new(Semaphore::new(1)),
    );
    tokio::time::timeout(Duration::from_secs(5), rt.shutdown())
        .await
        .expect("shutdown of an idle plugin returns");
    assert_eq!(rt.state(), RuntimeState::Stopped);
    assert_eq!(started(dir.path()), 0);
    assert!(matches!(
        rt.invoke(request(1, 0.0)).await,
        Err(RuntimeError::Unavailable(_))
    ));
}

#[tokio::test]
async fn without_an_idle_timeout_nothing_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::start(spec(dir.path()), options(None), Arc::new(Semaphore::new(1)))
        .await
        .unwrap();
    let pid = rt.pid().unwrap();
    call(&rt, 1, 0.0).await.unwrap();
    // Several liveness ticks with no session.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rt.state(), RuntimeState::Ready);
    assert_eq!(rt.pid(), Some(pid));
    assert!(alive(pid));
    assert_eq!(call(&rt, 1, 0.0).await.unwrap().1, u64::from(pid));
    assert_eq!(started(dir.path()), 1);
    rt.shutdown().await;
}
