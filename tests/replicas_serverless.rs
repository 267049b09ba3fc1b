//! Three replicas of the real `plugind serve` binary on PLATFORM=serverless,
//! over one PostgreSQL database and one S3 bucket (moto, behind the Lambda
//! execution emulator): two tenants installing the same package through two
//! replicas at once make one artifact build and one function; every replica
//! serves both tenants; no replica holds a plugin process; an uninstall
//! through a third replica ends that tenant's calls everywhere and leaves
//! the other tenant's alone.
//!
//! Needs PLUGIND_TEST_POSTGRES_URL (scripts/postgres.sh starts a server);
//! without it the test says so and passes.

mod common;
mod lambda_emulator;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use common::daemon::{open_for_plugins, sse_envelopes, Daemon, DaemonSpec};
use lambda_emulator::harness::{fixture_package, uv_cache};
use lambda_emulator::tools::{child_pids, plugin_runner_binary, tool_var, Moto};
use lambda_emulator::LambdaEmulator;
use plugind::install::lambda_artifact::{host_arch, BOOTSTRAP_FILE};

const TENANT_A: &str = "5b3c1c2e-7777-4a4a-9c9c-00000000a0a1";
const TENANT_B: &str = "5b3c1c2e-7777-4a4a-9c9c-00000000b0b2";
const SERVER_KEY: &str = "server-key-replicas-serverless-9d1e";
const ECHO: &str = "plugind/echo_tool";
const BUCKET: &str = "plugind-replicas";
const PREFIX: &str = "daemon/";
/// Packaging with manylinux wheels on a cold uv cache takes a while.
const INSTALL_LIMIT: Duration = Duration::from_secs(600);

fn postgres() -> Option<String> {
    match std::env::var("PLUGIND_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: PLUGIND_TEST_POSTGRES_URL is not set (scripts/postgres.sh start prints one)");
            None
        }
    }
}

/// The spec of serverless replica `n` under `root`.
fn replica_spec(
    root: &Path,
    database_url: &str,
    n: usize,
    aws_endpoint: &str,
    role: &str,
    bootstrap_dir: &Path,
) -> DaemonSpec {
    let dir = root.join(format!("replica{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    open_for_plugins(&dir);
    let low = 81_000 + n as u32 * 1000;
    let mut spec = DaemonSpec::new(&dir, &format!("{low}-{}", low + 999), SERVER_KEY);
    spec.env.clear();
    // Lambda calls its own replica back for backwards calls.
    let callback = spec.base_url();
    spec.env("DATABASE_URL", database_url)
        .env("PLATFORM", "serverless")
        .env("PLUGIN_STORAGE_TYPE", "aws_s3")
        .env("PLUGIN_STORAGE_OSS_BUCKET", BUCKET)
        .env("PLUGIN_STORAGE_S3_PREFIX", PREFIX)
        .env("AWS_ENDPOINT_URL", aws_endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("PLUGIN_LAMBDA_ROLE_ARN", role)
        .env("PLUGIN_SERVERLESS_CALLBACK_URL", callback)
        .env(
            "PLUGIN_LAMBDA_BOOTSTRAP_DIR",
            bootstrap_dir.display().to_string(),
        )
        .env("UV_PATH", tool_var("UV_PATH").display().to_string())
        .env("UV_CACHE_DIR", uv_cache().display().to_string())
        .env("CLUSTER_NODE_ID", format!("serverless-{n}"))
        .env("CLUSTER_INTERNAL_HOST", "127.0.0.1")
        .env("CLUSTER_INTERNAL_ADDRESS", "127.0.0.1")
        .env("CLUSTER_INTERNAL_PORT", "0")
        .env("CLUSTER_HEARTBEAT_INTERVAL", "1")
        .env("CLUSTER_NODE_TIMEOUT", "4")
        .env("DB_MAX_OPEN_CONNS", "10")
}

fn logs(nodes: &[Daemon]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, d)| format!("--- replica {} ---\n{}", i + 1, d.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The echoed text, or the first failed envelope.
async fn echo(daemon: &Daemon, tenant: &str, text: &str) -> Result<String, Value> {
    let body = daemon
        .call_tool(tenant, ECHO, "echo_tool", "echo", json!({"text": text}))
        .await;
    if !body.starts_with("data:") {
        // A refusal before the stream: one plain envelope.
        return Err(serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")));
    }
    let mut out = String::new();
    for e in sse_envelopes(&body) {
        if e["code"] != 0 {
            return Err(e);
        }
        if let Some(t) = e["data"]["message"]["text"].as_str() {
            out.push_str(t);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serverless_replicas_build_once_and_any_replica_serves_every_tenant() {
    let Some(_) = postgres() else {
        return;
    };
    let moto = Moto::start().await;
    let s3 = moto.s3();
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let role = moto.create_role("plugind-plugin").await;
    let emulator = LambdaEmulator::start(&moto.url, s3.clone(), tool_var("PYTHON312")).await;

    let root = tempfile::Builder::new()
        .prefix("replicas-serverless")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    open_for_plugins(root.path());
    // PLUGIN_LAMBDA_BOOTSTRAP_DIR/<arch>/plugin-runner, as an operator lays it out.
    let bootstrap_dir = root.path().join("bootstrap");
    let arch_dir = bootstrap_dir.join(host_arch().as_str());
    std::fs::create_dir_all(&arch_dir).unwrap();
    std::os::unix::fs::symlink(plugin_runner_binary(), arch_dir.join(BOOTSTRAP_FILE)).unwrap();
    let database_url = common::fresh_database_url(root.path()).await;

    let mut nodes = Vec::new();
    for n in 1..=3 {
        let spec = replica_spec(
            root.path(),
            &database_url,
            n,
            &emulator.url,
            &role,
            &bootstrap_dir,
        );
        nodes.push(Daemon::start(spec).await);
    }

    // Two tenants install the same package through replicas 1 and 2 at once.
    let package = fixture_package("echo_tool");
    let (id_a, id_b) = tokio::join!(
        nodes[0].upload(TENANT_A, package.clone()),
        nodes[1].upload(TENANT_B, package.clone()),
    );
    assert_eq!(id_a, id_b, "one package, one identifier");
    let (task_a, task_b) = tokio::join!(
        nodes[0].install_identifier(TENANT_A, &id_a),
        nodes[1].install_identifier(TENANT_B, &id_b),
    );
    let (done_a, done_b) = tokio::join!(
        nodes[0].wait_task(TENANT_A, &task_a, INSTALL_LIMIT),
        nodes[1].wait_task(TENANT_B, &task_b, INSTALL_LIMIT),
    );
    for done in [&done_a, &done_b] {
        assert_eq!(done["status"], "success", "{done}\n{}", logs(&nodes));
    }

    // One build among the replicas, one artifact in the bucket, one function.
    let builds = nodes
        .iter()
        .map(|d| d.log().matches("built Lambda artifact").count())
        .sum::<usize>();
    assert_eq!(builds, 1, "artifact builds\n{}", logs(&nodes));
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(format!("{PREFIX}artifacts/"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.contents().len(), 1, "{listed:?}");
    let functions = emulator.client().list_functions().send().await.unwrap();
    assert_eq!(functions.functions().len(), 1, "{functions:?}");

    // Every replica serves both tenants, and none holds a plugin process.
    for (n, node) in nodes.iter().enumerate() {
        for tenant in [TENANT_A, TENANT_B] {
            let text = format!("replica {} for {tenant}", n + 1);
            let answer = echo(node, tenant, &text).await;
            assert_eq!(answer, Ok(text), "{}", logs(&nodes));
        }
    }
    for (n, node) in nodes.iter().enumerate() {
        let children = child_pids(node.pid().unwrap() as u32);
        assert!(
            children.is_empty(),
            "replica {} runs processes {children:?}",
            n + 1
        );
    }

    // Tenant A uninstalls through replica 3: its calls end on every replica
    // (the others heard of it), tenant B's go on.
    let installation = nodes[2]
        .installation_id(TENANT_A, &id_a)
        .await
        .expect("listed through replica 3");
    let removed = nodes[2]
        .management(
            TENANT_A,
            "uninstall",
            Some(json!({"plugin_installation_id": installation})),
        )
        .await;
    assert_eq!(removed["code"], 0, "{removed}");
    for (n, node) in nodes.iter().enumerate() {
        let refused = echo(node, TENANT_A, "gone").await;
        let envelope = refused.expect_err("an uninstalled plugin answers");
        assert_eq!(envelope["code"], -404, "replica {}: {envelope}", n + 1);
        let text = format!("still {}", n + 1);
        assert_eq!(echo(node, TENANT_B, &text).await, Ok(text));
    }
    // The function stays: tenant B still uses it.
    let functions = emulator.client().list_functions().send().await.unwrap();
    assert_eq!(functions.functions().len(), 1, "{functions:?}");

    futures::future::join_all(nodes.into_iter().map(Daemon::stop)).await;
}
