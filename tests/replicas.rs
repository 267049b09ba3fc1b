//! Three replicas of the real `plugind serve` binary on loopback, over one
//! PostgreSQL database and one shared storage folder, each with its own
//! working path: what is installed through one is served by all, what is
//! uninstalled through one stops everywhere, an install whose replica is
//! killed still ends, and readiness follows registration and draining.
//!
//! Needs PLUGIND_TEST_POSTGRES_URL (scripts/postgres.sh starts a server);
//! without it every test says so and passes. Each test has its own
//! database, folders and plugin uid ranges, and stops what it started.

mod common;
mod dispatch_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use common::daemon::{open_for_plugins, sse_envelopes, Daemon, DaemonSpec};
use dispatch_common::fixture_package;

const TENANT: &str = "5b3c1c2e-7777-4a4a-9c9c-000000000007";
const SERVER_KEY: &str = "server-key-replicas-3c1d";
const ECHO: &str = "plugind/echo_tool";
/// Long enough for a first environment build from the shared uv cache.
const INSTALL_LIMIT: Duration = Duration::from_secs(300);
/// Heartbeat and node timeout of the replicas, in seconds: short, so a
/// dead replica is noticed within the test's patience.
const HEARTBEAT: &str = "1";
const NODE_TIMEOUT: u64 = 4;
/// Calls spread round-robin over the replicas, every answer checked.
const ROUND_ROBIN_CALLS: usize = 3000;

/// The shared database URL, or `None` (with the reason printed).
fn postgres() -> Option<String> {
    match std::env::var("PLUGIND_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: PLUGIND_TEST_POSTGRES_URL is not set (scripts/postgres.sh start prints one)");
            None
        }
    }
}

/// Three replicas and the folders they share.
struct Replicas {
    root: tempfile::TempDir,
    database_url: String,
    nodes: Vec<Daemon>,
}

/// The spec of replica `n` under `root`, with plugin uids from
/// `uid_base + n * 1000`.
fn replica_spec(root: &Path, database_url: &str, n: usize, uid_base: u32) -> DaemonSpec {
    let dir = root.join(format!("replica{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    open_for_plugins(&dir);
    let low = uid_base + n as u32 * 1000;
    let mut spec = DaemonSpec::new(&dir, &format!("{low}-{}", low + 999), SERVER_KEY);
    spec.storage = root.join("storage");
    spec.env.clear();
    spec.env("DATABASE_URL", database_url)
        .env("PLUGIN_WORKING_PATH", dir.join("cwd").display().to_string())
        .env("CLUSTER_NODE_ID", format!("replica-{n}"))
        .env("CLUSTER_INTERNAL_HOST", "127.0.0.1")
        .env("CLUSTER_INTERNAL_ADDRESS", "127.0.0.1")
        .env("CLUSTER_INTERNAL_PORT", "0")
        .env("CLUSTER_HEARTBEAT_INTERVAL", HEARTBEAT)
        .env("CLUSTER_NODE_TIMEOUT", NODE_TIMEOUT.to_string())
        .env("CLUSTER_DRAIN_TIMEOUT", "10")
        .env("DB_MAX_OPEN_CONNS", "10")
}

impl Replicas {
    async fn start(uid_base: u32) -> Option<Self> {
        postgres()?;
        let root = tempfile::tempdir().unwrap();
        open_for_plugins(root.path());
        let database_url = common::fresh_database_url(root.path()).await;
        let mut nodes = Vec::new();
        for n in 1..=3 {
            nodes.push(Daemon::start(replica_spec(root.path(), &database_url, n, uid_base)).await);
        }
        Some(Self {
            root,
            database_url,
            nodes,
        })
    }

    fn node(&self, n: usize) -> &Daemon {
        &self.nodes[n - 1]
    }

    fn working(&self, n: usize) -> PathBuf {
        self.root.path().join(format!("replica{n}")).join("cwd")
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, d)| format!("--- replica {} ---\n{}", i + 1, d.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn stop(self) {
        futures::future::join_all(self.nodes.into_iter().map(Daemon::stop)).await;
    }
}

/// Calls `echo` through `daemon` until it answers (the replica may still
/// be building its copy), at most `limit`; the echoed text.
async fn echo_eventually(
    daemon: &Daemon,
    text: &str,
    limit: Duration,
    logs: impl Fn() -> String,
) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let body = daemon
            .call_tool(TENANT, ECHO, "echo_tool", "echo", json!({"text": text}))
            .await;
        // Not installed here yet: a plain envelope rather than a stream.
        if body.starts_with("data: ") {
            let envelopes = sse_envelopes(&body);
            if envelopes.iter().all(|e| e["code"] == 0) {
                return texts(&envelopes);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer through {}: {body}\n{}",
            daemon.base,
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn texts(envelopes: &[Value]) -> String {
    envelopes
        .iter()
        .filter_map(|e| e["data"]["message"]["text"].as_str())
        .collect()
}

/// Pids of processes whose working folder is under `dir`: the plugins a
/// replica runs from its working path.
fn processes_under(dir: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return vec![];
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            if cwd.starts_with(&dir) {
                out.push(pid);
            }
        }
    }
    out
}

async fn wait_until<F: Fn() -> bool>(
    what: &str,
    limit: Duration,
    done: F,
    logs: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_install_through_one_replica_is_served_by_all_and_an_uninstall_stops_it_everywhere() {
    let Some(replicas) = Replicas::start(61_000).await else {
        return;
    };
    let (identifier, installation) = replicas
        .node(1)
        .install(TENANT, fixture_package("echo_tool"))
        .await;
    assert_eq!(
        echo_eventually(replicas.node(1), "one", INSTALL_LIMIT, || replicas.logs()).await,
        "one"
    );
    // The others heard of it and start their own copies.
    for n in [2, 3] {
        assert_eq!(
            replicas.node(n).installation_id(TENANT, &identifier).await,
            Some(installation.clone()),
            "listed through replica {n}"
        );
        assert_eq!(
            echo_eventually(replicas.node(n), &format!("via {n}"), INSTALL_LIMIT, || {
                replicas.logs()
            })
            .await,
            format!("via {n}")
        );
    }
    for n in 1..=3 {
        assert!(
            !processes_under(&replicas.working(n)).is_empty(),
            "replica {n} runs its own copy\n{}",
            replicas.logs()
        );
    }

    let removed = replicas
        .node(3)
        .management(
            TENANT,
            "uninstall",
            Some(json!({"plugin_installation_id": installation})),
        )
        .await;
    assert_eq!(removed["code"], 0, "{removed}");
    for n in 1..=3 {
        let working = replicas.working(n);
        wait_until(
            &format!("replica {n} still runs the uninstalled plugin"),
            Duration::from_secs(30),
            || processes_under(&working).is_empty(),
            || replicas.logs(),
        )
        .await;
    }
    for n in 1..=3 {
        let body = replicas
            .node(n)
            .call_tool(TENANT, ECHO, "echo_tool", "echo", json!({"text": "gone"}))
            .await;
        let envelope: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(envelope["code"], -404, "replica {n}: {body}");
    }
    replicas.stop().await;
}

#[tokio::test]
async fn an_install_whose_replica_is_killed_ends_and_a_starting_replica_leaves_running_ones_alone()
{
    let Some(mut replicas) = Replicas::start(64_000).await else {
        return;
    };
    // Killed while it builds the plugin's environment: the task must end
    // (never stay running), as seen through another replica.
    let (_, task) = replicas
        .node(1)
        .start_install(TENANT, fixture_package("echo_tool"))
        .await;
    replicas.nodes[0].kill().await;
    let ended = replicas
        .node(2)
        .wait_task(TENANT, &task, Duration::from_secs(60))
        .await;
    let status = ended["status"].as_str().unwrap();
    assert!(status == "failed" || status == "success", "{ended}");
    if status == "failed" {
        assert_eq!(
            ended["plugins"][0]["message"],
            plugind::install::INTERRUPTED_MESSAGE,
            "{ended}"
        );
    }

    // A replica starting while another one installs recovers only tasks
    // whose lease ended: this one succeeds.
    let (identifier, task) = replicas
        .node(2)
        .start_install(TENANT, fixture_package("echo_tool"))
        .await;
    let database_url = replicas.database_url.clone();
    let late = Daemon::start(replica_spec(replicas.root.path(), &database_url, 4, 64_000)).await;
    let done = late.wait_task(TENANT, &task, INSTALL_LIMIT).await;
    assert_eq!(done["status"], "success", "{done}\n{}", replicas.logs());
    // The late replica catches up and serves it too.
    assert_eq!(
        echo_eventually(&late, "late", INSTALL_LIMIT, || late.log()).await,
        "late"
    );
    assert!(late.installation_id(TENANT, &identifier).await.is_some());
    late.stop().await;
    replicas.stop().await;
}

async fn ready(daemon: &Daemon) -> (u16, Value) {
    let r = daemon
        .client
        .get(daemon.url("/health/ready"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn round_robin_calls_succeed_and_a_draining_replica_finishes_its_sessions() {
    let Some(mut replicas) = Replicas::start(67_000).await else {
        return;
    };
    for n in 1..=3 {
        let (status, body) = ready(replicas.node(n)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ready");
        assert_eq!(body["node_id"], format!("replica-{n}"));
    }
    replicas
        .node(1)
        .install(TENANT, fixture_package("echo_tool"))
        .await;
    for n in 1..=3 {
        echo_eventually(replicas.node(n), "warm", INSTALL_LIMIT, || replicas.logs()).await;
    }

    // Three thousand calls spread over the three, a dozen at a time.
    let calls = futures::stream::iter(0..ROUND_ROBIN_CALLS).map(|i| {
        let daemon = replicas.node(i % 3 + 1);
        async move {
            let text = format!("call {i}");
            let body = daemon
                .call_tool(TENANT, ECHO, "echo_tool", "echo", json!({"text": text}))
                .await;
            (i, text, body)
        }
    });
    let answers: Vec<_> = futures::StreamExt::buffer_unordered(calls, 12)
        .collect()
        .await;
    for (i, text, body) in &answers {
        let envelopes = sse_envelopes(body);
        assert!(
            envelopes.iter().all(|e| e["code"] == 0),
            "call {i} through replica {}: {body}",
            i % 3 + 1
        );
        assert_eq!(&texts(&envelopes), text, "call {i}");
    }
    assert_eq!(answers.len(), ROUND_ROBIN_CALLS);

    // SIGTERM while a slow session runs on replica 2: it stops taking work
    // (readiness and new calls answer 503) and the session finishes.
    let slow = {
        let daemon = &replicas.nodes[1];
        let url = daemon.url(&format!("/plugin/{TENANT}/dispatch/tool/invoke"));
        daemon
            .client
            .post(url)
            .header("X-Api-Key", SERVER_KEY)
            .header("X-Plugin-ID", ECHO)
            .json(
                &json!({"user_id": "u", "data": {"provider": "echo_tool", "tool": "slow",
                "credentials": {}, "credential_type": "api-key",
                "tool_parameters": {"count": 8, "delay": 0.5}}}),
            )
            .send()
    };
    let slow = tokio::spawn(async move { slow.await.unwrap().text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pid = replicas.node(2).pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let drained = loop {
        let (status, body) = ready(replicas.node(2)).await;
        if status == 503 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(drained["status"], "draining");
    let refused = replicas
        .node(2)
        .client
        .post(
            replicas
                .node(2)
                .url(&format!("/plugin/{TENANT}/dispatch/tool/invoke")),
        )
        .header("X-Api-Key", SERVER_KEY)
        .header("X-Plugin-ID", ECHO)
        .json(
            &json!({"user_id": "u", "data": {"provider": "echo_tool", "tool": "echo",
            "credentials": {}, "credential_type": "api-key", "tool_parameters": {"text": "x"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    let body = slow.await.unwrap();
    let envelopes = sse_envelopes(&body);
    assert!(envelopes.iter().all(|e| e["code"] == 0), "{body}");
    assert_eq!(
        texts(&envelopes),
        (0..8).map(|i| format!("chunk {i}")).collect::<String>()
    );
    let exit = tokio::time::timeout(Duration::from_secs(30), replicas.nodes[1].child.wait())
        .await
        .expect("the drained replica exits")
        .unwrap();
    assert!(exit.success(), "{exit}\n{}", replicas.node(2).log());
    // Gone from the nodes at once; the others carry on.
    let store = plugind::store::Store::connect(&replicas.database_url, 1)
        .await
        .unwrap();
    let nodes: Vec<String> = store
        .nodes(Duration::from_secs(NODE_TIMEOUT))
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(nodes, ["replica-1", "replica-3"]);
    store.close().await;
    for n in [1, 3] {
        assert_eq!(
            replicas
                .node(n)
                .tool(TENANT, ECHO, "echo_tool", "echo", json!({"text": "after"}))
                .await,
            "after"
        );
    }
    replicas.stop().await;
}

/// The tenant's listed installations of `plugin_id` through `daemon`.
async fn listed(daemon: &Daemon, plugin_id: &str) -> Vec<Value> {
    let list = daemon
        .management(TENANT, "list?page=1&page_size=100", None)
        .await;
    list["data"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["plugin_id"] == plugin_id)
        .collect()
}

/// The owner's count of open plugin sessions, from its metrics.
async fn sessions_in_flight(daemon: &Daemon) -> i64 {
    let text = daemon
        .client
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.split_once("plugin_sessions_in_flight ").map(|(_, v)| v))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no session gauge in {text}"))
}

fn tools_python() -> PathBuf {
    std::env::var_os("TOOLS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/plugind/tools/venv/bin/python")
        })
}

#[tokio::test]
async fn a_debugging_plugin_on_one_replica_is_served_through_all_and_goes_with_it() {
    let Some(mut replicas) = Replicas::start(70_000).await else {
        return;
    };
    let key: Value = replicas
        .node(2)
        .client
        .post(
            replicas
                .node(2)
                .url(&format!("/plugin/{TENANT}/debugging/key")),
        )
        .header("X-Api-Key", SERVER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["data"]["key"].as_str().unwrap().to_owned();
    // Connected to replica 1, with a key replica 2 handed out.
    let _plugin = tokio::process::Command::new(tools_python())
        .args(["-m", "main"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/echo_tool"))
        .env("INSTALL_METHOD", "remote")
        .env(
            "REMOTE_INSTALL_URL",
            format!("127.0.0.1:{}", replicas.node(1).debug_port),
        )
        .env("REMOTE_INSTALL_KEY", &key)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the debugging plugin");
    for n in [1, 2, 3] {
        assert_eq!(
            echo_eventually(
                replicas.node(n),
                &format!("debug {n}"),
                Duration::from_secs(60),
                || replicas.logs()
            )
            .await,
            format!("debug {n}")
        );
    }
    // A forwarded stream arrives whole, chunk by chunk.
    let slow = replicas
        .node(3)
        .tool(
            TENANT,
            ECHO,
            "echo_tool",
            "slow",
            json!({"count": 4, "delay": 0.3}),
        )
        .await;
    assert_eq!(slow, "chunk 0chunk 1chunk 2chunk 3");
    // A plugin error crosses as the plugin's own typed error.
    let failed = replicas
        .node(2)
        .call_tool(TENANT, ECHO, "echo_tool", "fail", json!({}))
        .await;
    let envelopes = sse_envelopes(&failed);
    let last = envelopes.last().unwrap();
    assert_eq!(last["code"], -500, "{failed}");
    let message: Value = serde_json::from_str(last["message"].as_str().unwrap()).unwrap();
    assert_eq!(message["error_type"], "PluginInvokeError", "{failed}");

    // The caller going away ends the owner's session too.
    let mut stream = replicas
        .node(3)
        .client
        .post(
            replicas
                .node(3)
                .url(&format!("/plugin/{TENANT}/dispatch/tool/invoke")),
        )
        .header("X-Api-Key", SERVER_KEY)
        .header("X-Plugin-ID", ECHO)
        .json(
            &json!({"user_id": "u", "data": {"provider": "echo_tool", "tool": "slow",
            "credentials": {}, "credential_type": "api-key",
            "tool_parameters": {"count": 60, "delay": 0.5}}}),
        )
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("chunk 0"),
        "{first:?}"
    );
    assert_eq!(sessions_in_flight(replicas.node(1)).await, 1);
    drop(stream);
    let owner = replicas.node(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while sessions_in_flight(owner).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the owner's session outlived its caller\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The owner dies without a word: the registration is gone from the
    // others within the node timeout (plus a heartbeat or two).
    assert_eq!(listed(replicas.node(2), ECHO).await.len(), 1);
    replicas.nodes[0].kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(NODE_TIMEOUT * 5);
    while !listed(replicas.node(2), ECHO).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead replica's debugging plugin is still installed\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let body = replicas
        .node(3)
        .call_tool(TENANT, ECHO, "echo_tool", "echo", json!({"text": "x"}))
        .await;
    let envelope: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(envelope["code"], -404, "{body}");
    replicas.stop().await;
}

#[tokio::test]
async fn an_mcp_session_opened_on_one_replica_is_served_through_the_others() {
    let Some(replicas) = Replicas::start(73_000).await else {
        return;
    };
    let api = |n: usize, path: &str| {
        replicas
            .node(n)
            .url(&format!("/plugin/{TENANT}/mcp/servers{path}"))
    };
    let created: Value = replicas
        .node(1)
        .client
        .post(api(1, ""))
        .header("X-Api-Key", SERVER_KEY)
        .json(&json!({"name": "replicated", "user_id": "u1", "tools": "all"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["code"], 0, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let path = created["data"]["path"].as_str().unwrap().to_owned();
    let token: Value = replicas
        .node(2)
        .client
        .post(api(2, &format!("/{id}/tokens")))
        .header("X-Api-Key", SERVER_KEY)
        .json(&json!({"name": "tests"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["data"]["token"].as_str().unwrap().to_owned();
    let version = "2025-06-18";
    let post = |n: usize, session: Option<&str>, body: Value| {
        let daemon = replicas.node(n);
        let mut request = daemon
            .client
            .post(daemon.url(&path))
            .bearer_auth(&token)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", version)
            .json(&body);
        if let Some(session) = session {
            request = request.header("Mcp-Session-Id", session);
        }
        request.send()
    };
    let opened = post(
        1,
        None,
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
    )
    .await
    .unwrap();
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let initialized = post(
        2,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await
    .unwrap();
    let status = initialized.status();
    assert_eq!(status, 202, "{}", initialized.text().await.unwrap());
    let listed = post(
        3,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await
    .unwrap();
    assert_eq!(listed.status(), 200);
    let body = listed.text().await.unwrap();
    assert!(body.contains("\"tools\""), "{body}");
    // A session nobody opened is unknown everywhere.
    let unknown = post(
        2,
        Some("no-such-session"),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    // Closed through another replica, it is gone from all.
    let closed = replicas
        .node(2)
        .client
        .delete(replicas.node(2).url(&path))
        .bearer_auth(&token)
        .header("Mcp-Session-Id", &session)
        .header("MCP-Protocol-Version", version)
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 200);
    for n in 1..=3 {
        let after = post(
            n,
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
        )
        .await
        .unwrap();
        assert_eq!(after.status(), 404, "replica {n}");
    }
    replicas.stop().await;
}
