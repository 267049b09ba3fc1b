//! Serverless figures: artifact build time with a cold and a warm uv cache
//! and the artifact's size for a plugin whose only dependency is
//! dify_plugin; the bootstrap's cold start to plugin-ready; and the warm
//! relay overhead of the bootstrap against talking to the plugin's stdio
//! directly (the floor of the local runtime). Prints figures, asserts none.
//!
//! Run: `cargo bench --bench serverless` (needs `scripts/setup-python.sh`).

#[path = "../tests/lambda_emulator/mod.rs"]
mod lambda_emulator;

use std::process::Stdio;
use std::time::{Duration, Instant};

use lambda_emulator::harness::{build_options, deploy, fixture_package, tool_request};
use lambda_emulator::tools;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WARM_CALLS: usize = 200;
const COLD_STARTS: usize = 3;

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pkg = fixture_package("echo_tool");

    // Packaging, cold and warm dependency cache.
    let cache = tempfile::tempdir().unwrap();
    let mut opts = build_options();
    opts.cache_dir = Some(cache.path().to_path_buf());
    let started = Instant::now();
    let cold = plugind_packager::build_artifact(&pkg, &opts).expect("cold build");
    let cold_time = started.elapsed();
    let started = Instant::now();
    let warm = plugind_packager::build_artifact(&pkg, &opts).expect("warm build");
    let warm_time = started.elapsed();
    assert_eq!(cold.sha256, warm.sha256, "deterministic");
    println!("packaging echo_tool (dependency: dify_plugin)");
    println!("  cold uv cache: {:.2} s", cold_time.as_secs_f64());
    println!("  warm uv cache: {:.2} s", warm_time.as_secs_f64());
    println!(
        "  artifact: {:.1} MB zipped, {:.1} MB unzipped (limits 50 MB direct / 250 MB unzipped)",
        warm.size as f64 / 1e6,
        warm.unzipped_size as f64 / 1e6
    );

    // Cold starts: a fresh execution environment per call.
    let d = deploy(&warm, &[], 60).await;
    let mut first_calls = Vec::new();
    for i in 0..COLD_STARTS {
        d.emulator.stop_environments();
        let started = Instant::now();
        let (_, error) = d
            .invoke(&tool_request(
                &format!("cold{i}"),
                "echo_tool",
                "echo",
                json!({"text": "x"}),
                json!({}),
            ))
            .await;
        assert!(error.is_none());
        first_calls.push(started.elapsed());
    }
    let ready: Vec<Duration> = d
        .emulator
        .logs()
        .iter()
        .filter(|l| l.contains("plugin ready"))
        .filter_map(|l| l.split("ready_ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_millis)
        .collect();
    println!("bootstrap cold start ({COLD_STARTS} runs)");
    println!(
        "  spawn to plugin-ready (first heartbeat): p50 {}",
        ms(p50(ready))
    );
    println!(
        "  first invoke incl. unpack and start: p50 {}",
        ms(p50(first_calls))
    );

    // Warm relay: Runtime API hand-over to end of response, inside the
    // emulator, against the same request written to the plugin's stdio.
    let before = d.emulator.runtime_times().len();
    let mut client_times = Vec::new();
    for i in 0..WARM_CALLS {
        let started = Instant::now();
        let (_, error) = d
            .invoke(&tool_request(
                &format!("w{i}"),
                "echo_tool",
                "echo",
                json!({"text": "x"}),
                json!({}),
            ))
            .await;
        assert!(error.is_none());
        client_times.push(started.elapsed());
    }
    let relay: Vec<Duration> = d.emulator.runtime_times()[before..].to_vec();
    let direct = direct_stdio_times(WARM_CALLS).await;
    let (relay50, direct50) = (p50(relay), p50(direct));
    println!("warm echo invocation ({WARM_CALLS} calls)");
    println!(
        "  plugin over stdio directly (local runtime floor): p50 {}",
        ms(direct50)
    );
    println!(
        "  bootstrap (Runtime API next -> response end): p50 {}",
        ms(relay50)
    );
    println!(
        "  relay overhead: p50 {} (target <= 1 ms)",
        ms(relay50.saturating_sub(direct50))
    );
    println!(
        "  whole InvokeWithResponseStream round trip via the emulator: p50 {}",
        ms(p50(client_times))
    );
}

/// Times echo requests written straight to a plugin child's stdin until its
/// `end` line, with the same environment the bootstrap gives it.
async fn direct_stdio_times(calls: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let artifact = lambda_emulator::harness::fixture_artifact("echo_tool");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&artifact.bytes)).unwrap();
    zip.extract(dir.path()).unwrap();
    let mut child = tokio::process::Command::new(tools::tool_var("PYTHON312"))
        .args(["-m", "main"])
        .current_dir(dir.path())
        .env("INSTALL_METHOD", "local")
        .env("PYTHONPATH", dir.path().join("deps"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("\"heartbeat\"") {
            break;
        }
    }
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let sid = format!("d{i}");
        let mut req = serde_json::to_vec(&tool_request(
            &sid,
            "echo_tool",
            "echo",
            json!({"text": "x"}),
            json!({}),
        ))
        .unwrap();
        req.push(b'\n');
        let started = Instant::now();
        stdin.write_all(&req).await.unwrap();
        stdin.flush().await.unwrap();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(&format!("\"session_id\":\"{sid}\""))
                && line.contains("\"type\":\"end\"")
            {
                break;
            }
        }
        times.push(started.elapsed());
    }
    let _ = child.start_kill();
    times
}
