//! Replicas over one PostgreSQL: what three cost and give against one.
//!
//! Three `plugind serve` processes share one fresh PostgreSQL database and
//! one package storage folder, each with its own working path; the
//! `echo_tool` fixture is installed through replica 1 and every replica
//! runs its own copy. Then:
//!
//! 1. throughput and p50/p99 of echo calls at concurrency 64 through
//!    replica 1 alone;
//! 2. the same through all three, round-robin (the client spreads calls as
//!    a load balancer would);
//! 3. `kill -9` of replica 1, then the time until the first successful call
//!    through replica 2 or 3, and until they see replica 1 dead
//!    (`cluster_nodes` has lost it, so its rows are taken over).
//!
//! The daemons and the client share this machine's cores, so (2) measures
//! contention as much as scale-out: the figures say what one more replica
//! costs here, not what it gives on machines of their own. Prints figures
//! with the load average; asserts only that every answer is right.
//!
//! Needs PostgreSQL: `url=$(scripts/postgres.sh start | tail -1)`, then
//! `PLUGIND_TEST_POSTGRES_URL=$url cargo bench --bench replicas`.
//! REPLICAS_BENCH_CALLS sets the calls per run (3000 when unset).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/dispatch_common/mod.rs"]
mod dispatch_common;
mod serve_process;

use std::time::{Duration, Instant};

use common::TENANT;
use serve_process::{load_average, measure, post_echo, print, Daemon, ECHO};

const HEARTBEAT: &str = "1";
const NODE_TIMEOUT: &str = "4";

/// One echo call through `base`; whether it answered right.
async fn echo_ok(client: &reqwest::Client, base: &str) -> bool {
    let url = format!("{base}/plugin/{TENANT}/dispatch/tool/invoke");
    let body = serde_json::json!({"user_id": "u1",
        "data": dispatch_common::tool_data("echo", serde_json::json!({"text": "probe"}))});
    let Ok(r) = client
        .post(url)
        .header("X-Api-Key", common::KEY)
        .header("X-Plugin-ID", ECHO)
        .json(&body)
        .send()
        .await
    else {
        return false;
    };
    r.text()
        .await
        .map(|b| b.contains("\"text\":\"probe\""))
        .unwrap_or(false)
}

/// Node ids `cluster_nodes` holds.
async fn live_nodes(database_url: &str) -> Vec<String> {
    use sqlx::Row;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(database_url)
        .await
        .expect("PostgreSQL");
    sqlx::query("SELECT id FROM cluster_nodes")
        .fetch_all(&mut conn)
        .await
        .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect())
        .unwrap_or_default()
}

fn main() {
    if std::env::var("PLUGIND_TEST_POSTGRES_URL").map_or(true, |v| v.is_empty()) {
        eprintln!(
            "replicas bench: set PLUGIND_TEST_POSTGRES_URL (scripts/postgres.sh start prints one)"
        );
        return;
    }
    let calls: usize = std::env::var("REPLICAS_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async move {
        let shared = tempfile::Builder::new()
            .prefix("bench-replicas")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            shared.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        // A database of its own under the server PLUGIND_TEST_POSTGRES_URL names.
        let database_url = common::fresh_database_url(shared.path()).await;
        let storage = shared.path().join("storage");
        let mut nodes = Vec::new();
        for n in 1..=3u32 {
            let low = 91_000 + n * 1000;
            let uids = format!("{low}-{}", low + 999);
            let id = format!("bench-{n}");
            let env = [
                ("DATABASE_URL", database_url.as_str()),
                ("PLUGIN_STORAGE_LOCAL_ROOT", storage.to_str().unwrap()),
                ("PLUGIN_UID_RANGE", uids.as_str()),
                ("CLUSTER_NODE_ID", id.as_str()),
                ("CLUSTER_INTERNAL_HOST", "127.0.0.1"),
                ("CLUSTER_INTERNAL_ADDRESS", "127.0.0.1"),
                ("CLUSTER_INTERNAL_PORT", "0"),
                ("CLUSTER_HEARTBEAT_INTERVAL", HEARTBEAT),
                ("CLUSTER_NODE_TIMEOUT", NODE_TIMEOUT),
                ("PLUGIN_LOCAL_IDLE_TIMEOUT", "0"),
                ("LOG_LEVEL", "WARN"),
            ];
            nodes.push(Daemon::start(&env).await);
        }
        nodes[0].install(dispatch_common::fixture_package("echo_tool")).await;
        let client = nodes[0].client.clone();
        for node in &nodes {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !echo_ok(&client, &node.base).await {
                assert!(Instant::now() < deadline, "a replica never served the plugin");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        println!(
            "replicas bench: {calls} echo calls per run at c=64, load {}",
            load_average()
        );

        let one = nodes[0].base.clone();
        let c = client.clone();
        let f = measure(
            &nodes[0].pid,
            move |i| {
                let (c, url) = (c.clone(), format!("{one}/plugin/{TENANT}/dispatch/tool/invoke"));
                async move { post_echo(&c, &url, ECHO, i).await }
            },
            calls,
            64,
        )
        .await;
        print("(1) one replica, c=64", &f);

        let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
        let c = client.clone();
        let f = measure(
            &nodes[0].pid,
            move |i| {
                let url = format!("{}/plugin/{TENANT}/dispatch/tool/invoke", bases[i % 3]);
                let c = c.clone();
                async move { post_echo(&c, &url, ECHO, i).await }
            },
            calls,
            64,
        )
        .await;
        print("(2) three replicas round-robin, c=64 (CPU and RSS: replica 1)", &f);

        let mut first = nodes.remove(0);
        let killed = Instant::now();
        first.kill();
        let mut i = 0usize;
        while !echo_ok(&client, &nodes[i % 2].base).await {
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first_call = killed.elapsed();
        let deadline = Instant::now() + Duration::from_secs(60);
        while live_nodes(&database_url).await.iter().any(|n| n == "bench-1") {
            assert!(Instant::now() < deadline, "replica 1 never declared dead");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let declared = killed.elapsed();
        println!(
            "(3) kill -9 of replica 1: first successful call through another replica after {:.1} ms; \
             replica 1 gone from cluster_nodes after {:.2} s (CLUSTER_NODE_TIMEOUT={NODE_TIMEOUT} s, heartbeat {HEARTBEAT} s)",
            first_call.as_secs_f64() * 1e3,
            declared.as_secs_f64()
        );
        for node in nodes {
            node.stop().await;
        }
    });
}
