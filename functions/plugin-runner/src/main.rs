//! `plugin-runner`: the Lambda bootstrap that hosts a Dify plugin.
//!
//! Lambda starts it as `AWS_LAMBDA_EXEC_WRAPPER` of the managed Python
//! runtime (or directly as a custom runtime's `bootstrap`). It serves the
//! Runtime API loop in response-streaming mode ([`runtime_api`]) and keeps
//! one `python -m <entrypoint>` child (INSTALL_METHOD=local, stdio)
//! warm across invocations. Each invocation payload is one session request
//! line; the response stream carries the plugin's lines of that session as
//! they come. Backwards calls go to the daemon over HTTP.

mod backwards;
mod config;
mod host;
mod protocol;
mod runtime_api;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use config::RunnerConfig;
use host::{HostHandle, Job};
use protocol::SessionRequest;
use runtime_api::{Invocation, RuntimeApi};

/// Why the bootstrap stopped.
type Error = Box<dyn std::error::Error + Send + Sync>;

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
    let endpoint = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|_| "AWS_LAMBDA_RUNTIME_API is not set: plugin-runner runs inside Lambda")?;
    let api = RuntimeApi::new(&endpoint)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match RunnerConfig::load(|k| std::env::var(k).ok(), &args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            api.init_error("Runtime.InvalidConfiguration", &e.to_string())
                .await?;
            return Err(e.into());
        }
    };
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
    loop {
        // Without the Runtime API there is nothing to serve: exiting lets
        // Lambda replace the environment.
        let invocation = api.next().await?;
        let request_id = invocation.request_id.clone();
        match start(&host, default_timeout, invocation).await {
            Ok(lines) => {
                if let Err(e) = api.respond(&request_id, lines).await {
                    tracing::error!(%request_id, error = %e, "cannot stream the response");
                }
            }
            Err((error_type, message)) => {
                tracing::warn!(%request_id, error_type, %message, "invocation refused");
                api.invocation_error(&request_id, error_type, &message)
                    .await?;
            }
        }
    }
}

/// Hands one invocation to the host; the stream carries its session lines
/// as the plugin writes them and ends with the session.
async fn start(
    host: &HostHandle,
    default_timeout: Duration,
    invocation: Invocation,
) -> Result<impl futures::Stream<Item = Bytes>, (&'static str, String)> {
    let payload = serde_json::from_slice(&invocation.payload).map_err(|e| {
        (
            "Runtime.InvalidPayload",
            format!("the payload is not JSON: {e}"),
        )
    })?;
    let request =
        SessionRequest::parse(payload).map_err(|e| ("Runtime.InvalidPayload", e.to_string()))?;
    let limit = request.timeout.unwrap_or(default_timeout);
    let deadline = Instant::now() + limit.min(lambda_time_left(invocation.deadline_ms));
    let (out, lines) = mpsc::channel(OUT_QUEUE);
    tracing::debug!(session_id = %request.session_id, request_id = %invocation.request_id, "invocation");
    host.submit(Job {
        request,
        deadline,
        out,
    })
    .await
    .map_err(|e| ("Runtime.HostStopped", e.to_string()))?;
    Ok(tokio_stream_of(lines))
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
