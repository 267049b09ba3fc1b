//! MCP gateway overhead: p50/p99 latency of the echo tool called as an MCP
//! `tools/call` (rmcp client, Streamable HTTP session) versus the same tool
//! through the daemon's dispatch path, both in-process
//! (`dispatch::invoke`) and over the HTTP dispatch route, on a real
//! `dify_plugin` process. Prints the figures and the added p50. Run with
//! `cargo bench --bench mcp` after `scripts/setup-python.sh`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/dispatch_common/mod.rs"]
mod dispatch_common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use plugind::dispatch::{self, InvokeRequest};
use plugind::runtime::SessionHeader;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};

const WARMUP: usize = 30;
const CALLS: usize = 300;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "{name:<26} calls={:<5} p50={:>9.3} ms  p99={:>9.3} ms",
        samples.len(),
        ms(p50),
        ms(p99)
    );
    p50
}

/// Times `WARMUP + CALLS` runs of `call`, keeping the last `CALLS`.
async fn measure<F, Fut>(mut call: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let started = Instant::now();
        call().await;
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    samples
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let app = dispatch_common::spawn_local(dispatch_common::HostTimings::default()).await;
        dispatch_common::install_fixture(&app, "echo_tool").await;
        let (url, token) = common::create_mcp_server(
            &app.client,
            &app.base,
            json!({"name": "bench", "user_id": "u1", "tools": "all",
                "credentials": {"echo_tool": {"api_key": "k"}}}),
        )
        .await;

        let data = dispatch_common::tool_data("echo", json!({"text": "hi"}));
        let Value::Object(payload) = data.clone() else {
            unreachable!()
        };
        let direct = measure(|| {
            let state = app.state.clone();
            let payload = payload.clone();
            async move {
                let mut stream = dispatch::invoke(
                    &state,
                    InvokeRequest {
                        tenant_id: common::TENANT.to_owned(),
                        plugin_id: "plugind/echo_tool".to_owned(),
                        access_type: "tool".to_owned(),
                        action: "invoke_tool".to_owned(),
                        user_id: "u1".to_owned(),
                        header: SessionHeader::default(),
                        payload,
                        timeout: None,
                    },
                )
                .await
                .expect("session opens");
                let mut chunks = 0;
                while let Some(item) = stream.next().await {
                    item.expect("chunk");
                    chunks += 1;
                }
                assert_eq!(chunks, 1);
            }
        })
        .await;

        let body = json!({"user_id": "u1", "data": data});
        let http = measure(|| {
            let app = &app;
            let body = &body;
            async move {
                let r = dispatch_common::post_dispatch(
                    app,
                    "tool/invoke",
                    Some("plugind/echo_tool"),
                    body,
                )
                .await;
                let text = r.text().await.expect("body");
                assert!(text.contains("\"text\":\"hi\""), "{text}");
            }
        })
        .await;

        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.clone())
                .auth_header(token),
        );
        let client = ().serve(transport).await.expect("mcp client connects");
        let args = json!({"text": "hi"}).as_object().cloned().expect("object");
        let mcp = measure(|| {
            let client = &client;
            let args = args.clone();
            async move {
                let r = client
                    .call_tool(CallToolRequestParams::new("echo_tool__echo").with_arguments(args))
                    .await
                    .expect("tools/call");
                assert_ne!(r.is_error, Some(true));
            }
        })
        .await;
        client.cancel().await.expect("client closes");

        println!("echo tool, {CALLS} calls each after {WARMUP} warm-up calls");
        let direct = report("dispatch::invoke", direct);
        let http = report("HTTP dispatch route", http);
        let mcp = report("MCP tools/call", mcp);
        println!(
            "MCP added at p50: {:.3} ms over dispatch::invoke, {:.3} ms over the HTTP dispatch route (target <= 1 ms)",
            ms(mcp.saturating_sub(direct)),
            ms(mcp.saturating_sub(http)),
        );
    });
}
