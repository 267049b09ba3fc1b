//! Prometheus metrics of the daemon, served at `/metrics`: dispatch requests
//! by route and outcome with their latency, sessions in flight, plugin
//! restarts and install durations, local plugin processes started and
//! stopped (with why) and how long a start takes until the first heartbeat.
//!
//! The metrics live in one process-wide registry: they describe the process,
//! and every part of it (routes, runtimes, install steps) records into them
//! without having to be handed a handle.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Latency buckets, in seconds: from a fast echo to a long model stream.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
/// Install buckets, in seconds: a reused environment to a cold dependency build.
const INSTALL_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Plugin start buckets, in seconds: a bare interpreter to a heavy import.
const START_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0, 120.0,
];

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    sessions: IntGauge,
    restarts: IntCounterVec,
    installs: HistogramVec,
    starts: HistogramVec,
    stops: IntCounterVec,
    processes: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new_custom(Some("plugind".into()), None)
        .expect("a static prefix is a valid registry prefix");
    let requests = IntCounterVec::new(
        Opts::new(
            "dispatch_requests_total",
            "Dispatch requests by route and outcome (ok, error, cancelled, refused).",
        ),
        &["route", "outcome"],
    )
    .expect("valid metric");
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "dispatch_request_duration_seconds",
            "Time from a dispatch request to the end of its stream.",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["route"],
    )
    .expect("valid metric");
    let sessions = IntGauge::new(
        "plugin_sessions_in_flight",
        "Plugin sessions currently open through the dispatch path.",
    )
    .expect("valid metric");
    let restarts = IntCounterVec::new(
        Opts::new(
            "plugin_restarts_total",
            "Plugin processes restarted after they ended unexpectedly.",
        ),
        &["plugin"],
    )
    .expect("valid metric");
    let installs = HistogramVec::new(
        HistogramOpts::new(
            "plugin_install_duration_seconds",
            "Time to unpack, build the environment of and launch a plugin.",
        )
        .buckets(INSTALL_BUCKETS.to_vec()),
        &["outcome"],
    )
    .expect("valid metric");
    let starts = HistogramVec::new(
        HistogramOpts::new(
            "plugin_start_duration_seconds",
            "Local plugin process starts by cause (launch, demand after idle, restart): time from the start being asked for to the first heartbeat.",
        )
        .buckets(START_BUCKETS.to_vec()),
        &["cause"],
    )
    .expect("valid metric");
    let stops = IntCounterVec::new(
        Opts::new(
            "plugin_stops_total",
            "Local plugin processes stopped, by cause (idle, requested, ended).",
        ),
        &["cause"],
    )
    .expect("valid metric");
    let processes = IntGauge::new("plugin_processes", "Local plugin processes running now.")
        .expect("valid metric");
    for metric in [
        Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(latency.clone()),
        Box::new(sessions.clone()),
        Box::new(restarts.clone()),
        Box::new(installs.clone()),
        Box::new(starts.clone()),
        Box::new(stops.clone()),
        Box::new(processes.clone()),
    ] {
        registry
            .register(metric)
            .expect("each metric is registered once");
    }
    Metrics {
        registry,
        requests,
        latency,
        sessions,
        restarts,
        installs,
        starts,
        stops,
        processes,
    }
});

/// Records one finished dispatch request.
pub fn record_request(route: &str, outcome: &str, elapsed: Duration) {
    let m = &*METRICS;
    m.requests.with_label_values(&[route, outcome]).inc();
    m.latency
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
}

/// Counts a restart of `plugin`'s process.
pub fn record_restart(plugin: &str) {
    METRICS.restarts.with_label_values(&[plugin]).inc();
}

/// Records how long an install step took and whether it succeeded.
pub fn record_install(ok: bool, elapsed: Duration) {
    METRICS
        .installs
        .with_label_values(&[if ok { "success" } else { "failed" }])
        .observe(elapsed.as_secs_f64());
}

/// Records a local plugin process that became ready, `elapsed` after its
/// start was asked for.
pub fn record_plugin_start(cause: &str, elapsed: Duration) {
    METRICS
        .starts
        .with_label_values(&[cause])
        .observe(elapsed.as_secs_f64());
}

/// Counts a local plugin process that stopped.
pub fn record_plugin_stop(cause: &str) {
    METRICS.stops.with_label_values(&[cause]).inc();
}

/// Local plugin processes running right now.
pub fn plugin_processes() -> i64 {
    METRICS.processes.get()
}

/// Counts a plugin process as running for as long as it lives.
#[derive(Debug)]
pub struct ProcessGuard(());

impl ProcessGuard {
    /// Counts one more process until the guard drops.
    pub fn new() -> Self {
        METRICS.processes.inc();
        Self(())
    }
}

impl Default for ProcessGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        METRICS.processes.dec();
    }
}

/// Sessions open right now.
pub fn sessions_in_flight() -> i64 {
    METRICS.sessions.get()
}

/// Counts a session as in flight for as long as it lives.
#[derive(Debug)]
pub struct SessionGuard(());

impl SessionGuard {
    /// Counts one more session until the guard drops.
    pub fn new() -> Self {
        METRICS.sessions.inc();
        Self(())
    }
}

impl Default for SessionGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        METRICS.sessions.dec();
    }
}

/// Every metric in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metrics.
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The `/metrics` route.
pub async fn handler() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_show_in_the_text_format() {
        record_request("tool/invoke", "ok", Duration::from_millis(3));
        record_restart("a/b:0.0.1@x");
        record_install(true, Duration::from_secs(2));
        record_plugin_start("demand", Duration::from_millis(900));
        record_plugin_stop("idle");
        let process = ProcessGuard::new();
        let before = sessions_in_flight();
        let guard = SessionGuard::new();
        assert_eq!(sessions_in_flight(), before + 1);
        let text = render();
        assert!(
            text.contains(r#"plugind_dispatch_requests_total{outcome="ok",route="tool/invoke"}"#)
        );
        assert!(text.contains("plugind_dispatch_request_duration_seconds_bucket"));
        assert!(text.contains(r#"plugind_plugin_restarts_total{plugin="a/b:0.0.1@x"}"#));
        assert!(
            text.contains(r#"plugind_plugin_install_duration_seconds_count{outcome="success"}"#)
        );
        assert!(text.contains(r#"plugind_plugin_start_duration_seconds_count{cause="demand"}"#));
        assert!(text.contains(r#"plugind_plugin_stops_total{cause="idle"}"#));
        assert!(text.contains("plugind_plugin_processes "));
        drop(guard);
        drop(process);
        assert_eq!(sessions_in_flight(), before);
    }
}
