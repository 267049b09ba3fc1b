//! `plugin-runner`: the Lambda bootstrap that hosts a Dify plugin.
//!
//! Lambda starts it as `AWS_LAMBDA_EXEC_WRAPPER` of the managed Python
//! runtime (or directly as a custom runtime's `bootstrap`). It serves the
//! Runtime API loop with `lambda_runtime` in response-streaming mode and
//! keeps one `python -m <entrypoint>` child (INSTALL_METHOD=local, stdio)
//! warm across invocations. Each invocation payload is one session request
//! line; the response stream carries the plugin's lines of that session as
//! they come. Backwards calls go to the daemon over HTTP.

mod backwards;
mod config;
mod host;
mod protocol;

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use lambda_runtime::streaming::Response;
use lambda_runtime::{service_fn, Error, LambdaEvent, MetadataPrelude};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use config::RunnerConfig;
use host::{HostHandle, Job};
use protocol::SessionRequest;

/// Lines buffered between the plugin and the response stream.
const OUT_QUEUE: usize = 64;
/// Time kept back from Lambda's own deadline, so the bootstrap's typed
/// timeout error is written before Lambda ends the invocation.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// Timeout of one backwards-call connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PLUGIN_RUNNER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = RunnerConfig::load(|k| std::env::var(k).ok(), &args)?;
    tracing::info!(
        python = %config.python.display(),
        entrypoint = %config.entrypoint,
        task_root = %config.task_root.display(),
        "plugin-runner starting"
    );
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()?;
    let default_timeout = config.execution_timeout;
    // The child starts during Lambda's init phase (the Runtime API is polled
    // only once it is ready), so its start-up counts against the init budget,
    // not against the first invocation's timeout.
    let host = host::start(config, http, true);
    host.started().await;
    lambda_runtime::run(service_fn(move |event| {
        let host = host.clone();
        async move { handle(&host, default_timeout, event).await }
    }))
    .await
}

/// Serves one invocation: hands the request to the host and streams back
/// what it relays.
async fn handle(
    host: &HostHandle,
    default_timeout: Duration,
    event: LambdaEvent<Value>,
) -> Result<Response<impl futures::Stream<Item = Result<Bytes, Infallible>>>, Error> {
    let request = SessionRequest::parse(event.payload)?;
    let limit = request.timeout.unwrap_or(default_timeout);
    let deadline = Instant::now() + limit.min(lambda_time_left(event.context.deadline));
    let (out, lines) = mpsc::channel(OUT_QUEUE);
    tracing::debug!(session_id = %request.session_id, request_id = %event.context.request_id, "invocation");
    host.submit(Job {
        request,
        deadline,
        out,
    })
    .await?;
    let stream = tokio_stream_of(lines).map(Ok::<Bytes, Infallible>);
    Ok(Response {
        metadata_prelude: MetadataPrelude::default(),
        stream,
    })
}

/// Time until Lambda's deadline (milliseconds since the epoch), less a margin.
fn lambda_time_left(deadline_ms: u64) -> Duration {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    Duration::from_millis(deadline_ms.saturating_sub(now_ms)).saturating_sub(DEADLINE_MARGIN)
}

/// The receiver as a stream; it ends when the host drops the sender.
fn tokio_stream_of(mut rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
