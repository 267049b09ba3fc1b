//! What idle plugins cost, and what a call pays to wake one.
//!
//! The built `plugind serve` runs as its own process (as in the dispatch
//! bench) with a short PLUGIN_LOCAL_IDLE_TIMEOUT; the `echo_tool` fixture
//! and nine renamed copies are installed through the management API. Then:
//!
//! 1. once the timeout has passed: how many processes run under the daemon
//!    (the plugins stopped, so none) and the RSS of the daemon and every
//!    process under it, summed;
//! 2. first calls after idle: each round waits until every plugin is
//!    stopped, then calls each of the ten once, one after another, so each
//!    call starts its plugin on demand; p50/p99 over all rounds;
//! 3. warm calls: the echo plugin kept busy, at concurrency 1 and 64, the
//!    same calls as row (b) of the dispatch bench (compare with its (b));
//! 4. the plugin start and stop lines of `/metrics`.
//!
//! Prints figures with the load average; asserts nothing beyond each answer
//! being right and the plugins stopping within a bound. Run with
//! `cargo bench --bench idle` after `scripts/setup-python.sh`.
//! IDLE_BENCH_ROUNDS sets the rounds of first calls (3 when unset).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/dispatch_common/mod.rs"]
mod dispatch_common;
mod serve_process;

use std::time::{Duration, Instant};

use common::TENANT;
use serve_process::{
    load_average, measure, percentile, post_echo, print, renamed_echo_tool, rss_mib, Daemon, ECHO,
};

const INSTALLED: usize = 10;
/// Seconds without a session before a plugin is stopped.
const IDLE_TIMEOUT: &str = "3";

fn rounds() -> usize {
    std::env::var("IDLE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// Every process whose parent chain leads to `pid`, `pid` excluded.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // The parent pid is the second field after the command name.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            Some((p, ppid.parse().ok()?))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The RSS of the daemon and every process under it, in MiB.
fn total_rss(pid: u32) -> f64 {
    std::iter::once(pid)
        .chain(descendants(pid))
        .map(|p| rss_mib(&p.to_string()))
        .sum()
}

/// Waits (at most `within`) until no process runs under the daemon.
async fn wait_all_stopped(pid: u32, within: Duration) -> Duration {
    let began = Instant::now();
    while !descendants(pid).is_empty() {
        assert!(
            began.elapsed() < within,
            "plugins still running after {within:?}: {:?}",
            descendants(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    began.elapsed()
}

fn plugin_id(n: usize) -> String {
    if n == 0 {
        ECHO.to_owned()
    } else {
        format!("{ECHO}_{n}")
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let daemon = std::sync::Arc::new(
            Daemon::start(&[("PLUGIN_LOCAL_IDLE_TIMEOUT", IDLE_TIMEOUT)]).await,
        );
        let pid: u32 = daemon.pid.parse().unwrap();
        daemon
            .install(dispatch_common::fixture_package("echo_tool"))
            .await;
        for n in 1..INSTALLED {
            daemon.install(renamed_echo_tool(n)).await;
        }
        let url = format!("{}/plugin/{TENANT}/dispatch/tool/invoke", daemon.base);
        println!(
            "{INSTALLED} plugins installed, PLUGIN_LOCAL_IDLE_TIMEOUT={IDLE_TIMEOUT}; daemon pid {pid}; load {}",
            load_average()
        );

        // 1. After the timeout: nothing runs but the daemon.
        let limit = Duration::from_secs(60);
        wait_all_stopped(pid, limit).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_processes = descendants(pid).len();
        let idle_rss = total_rss(pid);
        println!(
            "idle: {idle_processes} plugin processes, RSS of the daemon and its children {idle_rss:.1} MiB \
             (daemon {}) (target: 0 processes, <= 30 MiB); load {}",
            serve_process::memory(&daemon.pid),
            load_average()
        );

        // 2. First calls after idle, each starting its plugin.
        let mut cold = Vec::new();
        for round in 0..rounds() {
            wait_all_stopped(pid, limit).await;
            for n in 0..INSTALLED {
                let began = Instant::now();
                post_echo(&daemon.client, &url, &plugin_id(n), round * INSTALLED + n).await;
                cold.push(began.elapsed());
            }
        }
        cold.sort();
        println!(
            "first call after idle ({} calls, each starting its plugin): p50={:.3} s  p99={:.3} s  max={:.3} s \
             (target p50 <= 2.5 s); load {}",
            cold.len(),
            percentile(&cold, 0.5).as_secs_f64(),
            percentile(&cold, 0.99).as_secs_f64(),
            cold.last().copied().unwrap_or_default().as_secs_f64(),
            load_average()
        );

        // 3. Warm calls, as row (b) of the dispatch bench.
        let call = {
            let daemon = std::sync::Arc::clone(&daemon);
            move |i: usize| {
                let daemon = std::sync::Arc::clone(&daemon);
                async move { daemon.echo(TENANT, i).await }
            }
        };
        let w1 = measure(&daemon.pid, call.clone(), 500, 1).await;
        let w64 = measure(&daemon.pid, call, 3000, 64).await;
        print("warm, idle stopping on, c=1", &w1);
        print("warm, idle stopping on, c=64", &w64);

        // 4. What /metrics says about starts and stops.
        let metrics = daemon
            .client
            .get(format!("{}/metrics", daemon.base))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap_or_default();
        for line in metrics.lines().filter(|l| {
            (l.starts_with("plugind_plugin_processes")
                || l.starts_with("plugind_plugin_stops_total")
                || l.starts_with("plugind_plugin_start_duration_seconds_sum")
                || l.starts_with("plugind_plugin_start_duration_seconds_count"))
                && !l.starts_with('#')
        }) {
            println!("{line}");
        }

        wait_all_stopped(pid, limit).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "idle again after the runs: {} plugin processes, RSS of the daemon and its children {:.1} MiB (daemon {}); load {}",
            descendants(pid).len(),
            total_rss(pid),
            serve_process::memory(&daemon.pid),
            load_average()
        );
        if let Ok(daemon) = std::sync::Arc::try_unwrap(daemon) {
            daemon.stop().await;
        }
    });
}
