//! Dispatch overhead: p50/p99 latency of the echo tool called through the
//! HTTP dispatch route versus the runtime directly, on a real `dify_plugin`
//! process. Run with `cargo bench --bench dispatch` after
//! `scripts/setup-python.sh`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use plugind::runtime::{SessionItem, SessionRequest};
use serde_json::{json, Value};

const WARMUP: usize = 20;
const CALLS: usize = 300;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn report(name: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "{name:<22} calls={:<5} p50={:>9.3} ms  p99={:>9.3} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    (p50, p99)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let app = dispatch_common::spawn_local(dispatch_common::HostTimings::default()).await;
        let id = dispatch_common::install_fixture(&app, "echo_tool").await;
        let data = dispatch_common::tool_data("echo", json!({"text": "hi"}));
        let body = json!({"user_id": "u1", "data": data});

        let mut http = Vec::with_capacity(CALLS);
        for i in 0..WARMUP + CALLS {
            let started = Instant::now();
            let r = dispatch_common::post_dispatch(
                &app,
                "tool/invoke",
                Some("plugind/echo_tool"),
                &body,
            )
            .await;
            let text = r.text().await.expect("body");
            let elapsed = started.elapsed();
            assert!(text.contains("\"text\":\"hi\""), "{text}");
            if i >= WARMUP {
                http.push(elapsed);
            }
        }

        let runtime = app.state.registry.get(&id).expect("running");
        let Value::Object(payload) = data else {
            unreachable!()
        };
        let mut direct = Vec::with_capacity(CALLS);
        for i in 0..WARMUP + CALLS {
            let started = Instant::now();
            let mut stream = runtime
                .invoke(SessionRequest::new(
                    "tool",
                    "invoke_tool",
                    "u1",
                    payload.clone(),
                ))
                .await
                .expect("session opens");
            let mut chunks = 0;
            while let Some(item) = stream.next().await {
                if let Ok(SessionItem::Chunk(_)) = item {
                    chunks += 1;
                }
            }
            let elapsed = started.elapsed();
            assert_eq!(chunks, 1);
            if i >= WARMUP {
                direct.push(elapsed);
            }
        }

        println!("dispatch overhead, echo tool, sequential calls");
        let (h50, h99) = report("http dispatch route", http);
        let (d50, d99) = report("runtime directly", direct);
        println!(
            "{:<22} p50={:>9.3} ms  p99={:>9.3} ms",
            "overhead",
            (h50.as_secs_f64() - d50.as_secs_f64()) * 1e3,
            (h99.as_secs_f64() - d99.as_secs_f64()) * 1e3
        );
        app.state.registry.shutdown_all().await;
    });
}
