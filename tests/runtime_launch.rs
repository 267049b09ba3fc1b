//! Bounded parallel launches (PLUGIN_LOCAL_LAUNCHING_CONCURRENT): plugins
//! started together, as a restart starts every installed plugin, come up
//! side by side but never more at once than the limit. A small fake plugin
//! written in Python (no uv, no SDK) reports how many starts it saw under
//! way beside its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plugind::runtime::{LocalOptions, LocalRuntime, PluginRuntime, ProcessSpec};
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

/// Marks its start in the shared folder, then waits before its heartbeat
/// until another start is under way beside it or every plugin has started
/// (at most `wait` seconds), and writes down the most starts it saw under way at once
/// (its own included). `ready-<name>` is written before the heartbeat, so
/// the daemon still holds this start's launch slot while it is counted.
const FAKE: &str = r#"
import json, os, sys, time
d, name, total, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
open(os.path.join(d, "starting-" + name), "w").close()
def count(prefix):
    return sum(1 for f in os.listdir(d) if f.startswith(prefix))
most, deadline = 0, time.time() + wait
while True:
    under_way = count("starting-") - count("ready-")
    most = max(most, under_way)
    if under_way >= 2 or count("starting-") == total or time.time() > deadline:
        break
    time.sleep(0.02)
time.sleep(0.2)
most = max(most, count("starting-") - count("ready-"))
with open(os.path.join(d, "seen-" + name), "w") as f:
    f.write(str(most))
open(os.path.join(d, "ready-" + name), "w").close()
sys.stdout.write(json.dumps({"event": "heartbeat", "session_id": None, "data": {}}) + "\n")
sys.stdout.flush()
for line in sys.stdin:
    pass
"#;

fn spec(dir: &Path, name: &str, total: usize, wait: f64) -> ProcessSpec {
    ProcessSpec {
        identity: format!("fake/launch_{name}:0.0.1@x"),
        program: python(),
        args: vec![
            "-c".to_owned(),
            FAKE.to_owned(),
            dir.to_str().unwrap().to_owned(),
            name.to_owned(),
            total.to_string(),
            wait.to_string(),
        ],
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
        stop_grace: Duration::from_millis(500),
        ..LocalOptions::default()
    }
}

/// The most starts each plugin saw under way at once.
fn seen(dir: &Path, total: usize) -> Vec<usize> {
    (0..total)
        .map(|n| {
            std::fs::read_to_string(dir.join(format!("seen-{n}")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_started_together_launch_side_by_side_within_the_limit() {
    const TOTAL: usize = 5;
    const LIMIT: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let permits = Arc::new(Semaphore::new(LIMIT));
    let started = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all((0..TOTAL).map(|n| {
            LocalRuntime::start(
                spec(dir.path(), &n.to_string(), TOTAL, 5.0),
                options(),
                Arc::clone(&permits),
            )
        })),
    )
    .await
    .expect("every launch ends within a minute");
    let runtimes: Vec<LocalRuntime> = started
        .into_iter()
        .map(|r| r.expect("the plugin starts"))
        .collect();
    let seen = seen(dir.path(), TOTAL);
    assert!(
        seen.iter().all(|&s| s <= LIMIT),
        "no start saw more than {LIMIT} under way: {seen:?}"
    );
    assert!(
        seen.iter().any(|&s| s == LIMIT),
        "starts ran side by side, {LIMIT} at once: {seen:?}"
    );
    assert_eq!(
        permits.available_permits(),
        LIMIT,
        "a started plugin gives its launch slot back"
    );
    for rt in &runtimes {
        rt.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_limit_of_one_plugins_start_one_after_another() {
    const TOTAL: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let permits = Arc::new(Semaphore::new(1));
    let started = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all((0..TOTAL).map(|n| {
            LocalRuntime::start(
                spec(dir.path(), &n.to_string(), TOTAL, 1.0),
                options(),
                Arc::clone(&permits),
            )
        })),
    )
    .await
    .expect("every launch ends within a minute");
    let runtimes: Vec<LocalRuntime> = started
        .into_iter()
        .map(|r| r.expect("the plugin starts"))
        .collect();
    assert_eq!(seen(dir.path(), TOTAL), vec![1; TOTAL]);
    for rt in &runtimes {
        rt.shutdown().await;
    }
}
