//! Endpoint serving cost: time to first byte and whole-request time of
//! `/e/{hook_id}/…` against a plugin that answers after a fixed delay, and
//! the daemon's own share (observed time minus the plugin's time), as p50 and
//! p99. The plugin is scripted in-process so the figures hold only the
//! daemon's work: endpoint lookup, settings decryption through the inner API
//! double (one HTTP round trip, as the reference does), request
//! serialization and response relaying.
//!
//! Run: `cargo bench --bench endpoint` (needs Python 3.12 for the double).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/dify_double/mod.rs"]
mod dify_double;
#[path = "../tests/endpoint_support/mod.rs"]
mod endpoint_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugind::backwards::{EncryptOpt, EncryptRequest};
use plugind::endpoint::{ChunkStream, EndpointCall, Invoker};
use plugind::error::DaemonError;
use serde_json::json;

/// Answers every session after `delay` with a head and two body pieces,
/// and records how long it really waited (timers round up), in nanoseconds.
struct Delayed {
    delay: Duration,
    waited: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Invoker for Delayed {
    async fn invoke(&self, _call: EndpointCall) -> Result<ChunkStream, DaemonError> {
        let delay = self.delay;
        let waited = Arc::clone(&self.waited);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let start = Instant::now();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            waited.store(start.elapsed().as_nanos() as u64, Ordering::SeqCst);
            let _ = tx
                .send(Ok(
                    json!({"status": 200, "headers": {"Content-Type": "text/event-stream"}}),
                ))
                .await;
            let _ = tx
                .send(Ok(json!({"result": hex::encode("data: 0\n\n")})))
                .await;
            let _ = tx
                .send(Ok(json!({"result": hex::encode("data: [DONE]\n\n")})))
                .await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(delay: Duration, requests: usize) {
    let dify = dify_double::DifyDouble::start();
    let waited = Arc::new(AtomicU64::new(0));
    let invoker = Delayed {
        delay,
        waited: Arc::clone(&waited),
    };
    let app = endpoint_support::serve_app(&dify.base_url(), &[], Some(Arc::new(invoker))).await;
    let ep = endpoint_support::EndpointApp { app, dify };
    let id = ep
        .install(endpoint_support::endpoint_package("ep_bench", true))
        .await;
    let entry = ep
        .setup(&id, "bench", json!({"token": "supersecret"}))
        .await;
    let url = ep.hook_url(entry["hook_id"].as_str().unwrap(), "/stream");
    let client = reqwest::Client::new();

    let mut ttfb = Vec::with_capacity(requests);
    let mut total = Vec::with_capacity(requests);
    let mut overhead = Vec::with_capacity(requests);
    for i in 0..requests + 10 {
        let start = Instant::now();
        let mut r = client.get(&url).send().await.unwrap();
        let first = r.chunk().await.unwrap();
        let first_at = start.elapsed();
        assert!(first.is_some());
        while r.chunk().await.unwrap().is_some() {}
        let done = start.elapsed();
        // The first requests warm connections and caches.
        if i >= 10 {
            ttfb.push(first_at);
            total.push(done);
            let plugin = Duration::from_nanos(waited.load(Ordering::SeqCst));
            overhead.push(first_at.saturating_sub(plugin));
        }
    }
    ttfb.sort();
    total.sort();
    overhead.sort();
    let inner = inner_round_trips(&ep.dify, requests).await;
    println!(
        "plugin {:>5.1} ms | n={requests} | ttfb p50 {:>7.3} ms p99 {:>7.3} ms | total p50 {:>7.3} ms p99 {:>7.3} ms | daemon overhead p50 {:>7.3} ms p99 {:>7.3} ms",
        ms(delay),
        ms(percentile(&ttfb, 0.50)),
        ms(percentile(&ttfb, 0.99)),
        ms(percentile(&total, 0.50)),
        ms(percentile(&total, 0.99)),
        ms(percentile(&overhead, 0.50)),
        ms(percentile(&overhead, 0.99)),
    );
    println!(
        "             of which the inner API decrypt round trip (the double's share) p50 {:>7.3} ms p99 {:>7.3} ms",
        ms(percentile(&inner, 0.50)),
        ms(percentile(&inner, 0.99)),
    );
}

/// The settings decryption every request makes, alone: the part of the
/// overhead that is Dify's (here the double's) answer time.
async fn inner_round_trips(dify: &dify_double::DifyDouble, n: usize) -> Vec<Duration> {
    let client = dify.client();
    let request = EncryptRequest {
        tenant_id: common::TENANT.into(),
        user_id: String::new(),
        opt: EncryptOpt::Decrypt,
        namespace: "endpoint".into(),
        identity: "bench".into(),
        data: json!({"token": "enc:c3VwZXJzZWNyZXQ="})
            .as_object()
            .cloned()
            .unwrap(),
        config: vec![json!({"name": "token", "type": "secret-input"})],
    };
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let start = Instant::now();
        client.encrypt(&request).await.unwrap();
        if i >= 10 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    times
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for delay_ms in [0u64, 5, 50] {
            run(Duration::from_millis(delay_ms), 200).await;
        }
    });
}
