//! `plugind serve`: builds the state once, binds the HTTP listener and runs
//! until SIGINT or SIGTERM.
//!
//! Connections are served with hyper directly rather than `axum::serve`,
//! which sets no timer and so no timeout at all: a client that trickled
//! one header line a second, or never finished its body, held its
//! connection for as long as it liked. See [`HttpTimeouts`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::{Listener, ListenerExt};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::app_state::AppState;
use crate::debug::{DebugOptions, DebugServer};
use crate::settings::{DatabaseTarget, Settings};

/// Keys published in Dify's docker-compose defaults; fine on a laptop, never
/// in production.
const PUBLIC_DEFAULT_KEYS: [&str; 2] = [
    "lYkiYYT6owG+71oLerGzA7GXCgOT++6ovaezWAjpCjf+Sjc3ZtU+qUEi",
    "QaHbTe77CtuXmsfyhR7+vRjI/+XbV1AaFy691iy+kGDv2Jvy0/eAh8Y1",
];

/// Runs the daemon until a shutdown signal.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    for (name, value) in [
        ("SERVER_KEY", settings.server_key.expose()),
        ("DIFY_INNER_API_KEY", settings.dify_inner_api_key.expose()),
    ] {
        if PUBLIC_DEFAULT_KEYS.contains(&value) {
            tracing::warn!("{name} is the public default from Dify's docker-compose; set your own key outside local testing");
        }
    }
    for note in settings.inert_settings() {
        tracing::info!("{note}");
    }
    let addr: SocketAddr = format!("{}:{}", settings.server_host, settings.server_port)
        .parse()
        .map_err(|e| anyhow::anyhow!("SERVER_HOST/SERVER_PORT do not form an address: {e}"))?;
    let launching = settings.plugin_local_launching_concurrent;
    let daemon_files = {
        let mut files = vec![PathBuf::from(".env")];
        if let Ok(DatabaseTarget::Sqlite(db)) = settings.database_target() {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = db.clone().into_os_string();
                name.push(suffix);
                files.push(name.into());
            }
        }
        (
            settings.plugin_storage_local_root.clone(),
            settings.working_path(),
            files,
        )
    };
    let state = AppState::build(settings).await?;
    if nix::unistd::geteuid().is_root() {
        let (root, working, files) = &daemon_files;
        crate::runtime::sandbox::protect_daemon_files(root, working, files);
    }
    if let Some(local) = state.local.clone() {
        // In the background: the API answers (and Dify's install polling
        // works) while environments are checked and plugins come up.
        let store = state.store.clone();
        tokio::spawn(async move {
            local.sweep_leftovers().await;
            local.relaunch_installed(&store, launching).await
        });
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (SERVER_HOST/SERVER_PORT): {e}"))?
        // Dispatch streams write small chunks; without TCP_NODELAY each one
        // can wait ~40 ms for the client's delayed ACK.
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    let debug = start_debug_listener(&state).await?;
    tracing::info!(%addr, "plugind listening");
    serve_http(
        listener,
        crate::api::app(state.clone()),
        HttpTimeouts::default(),
        shutdown_signal(),
    )
    .await;
    if let Some(debug) = debug {
        debug.shutdown().await;
    }
    state.registry.shutdown_all().await;
    tracing::info!("plugind stopped");
    Ok(())
}

/// How long the HTTP server waits on a client. The reference daemon (Go's
/// `http.Server` with no timeouts) names none of these, so they are fixed
/// here rather than settings. None of them bounds a response: dispatch SSE
/// streams and streamed endpoint answers run as long as the plugin does
/// (PLUGIN_MAX_EXECUTION_TIMEOUT), since hyper reads no request head while
/// a response is being written and a request body is wholly read before
/// the plugin is called.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// From the moment the server starts waiting for a request until its
    /// whole head has arrived. hyper starts this clock as soon as a
    /// connection is accepted or has finished its previous response, so it
    /// is also how long a kept-alive connection may sit idle.
    pub header_read: Duration,
    /// From the moment a route starts reading the body (every route does
    /// so as soon as it is called) until its last byte. Reading past it
    /// fails with an error the route answers as a bad request, and the
    /// connection is closed. The clock starts at the first read rather
    /// than at the head so that a route that reads late is not refused a
    /// body that has long arrived.
    pub body_read: Duration,
}

impl Default for HttpTimeouts {
    /// 30 s for the head (hyper's own default, which needs the timer that
    /// `axum::serve` never set) is ample for a request head on any link
    /// and longer than the keep-alive expiry of Dify's HTTP client pool.
    /// 120 s for the body carries the largest package (50 MiB by default)
    /// at under 0.5 MB/s.
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(30),
            body_read: Duration::from_secs(120),
        }
    }
}

/// Serves `app` over HTTP/1.1 on `listener` within `timeouts` until
/// `shutdown` completes, then waits for the open connections to finish
/// their requests.
///
/// HTTP/1.1 only, as the reference daemon serves it (Go's server speaks
/// HTTP/2 over TLS alone, which neither daemon terminates): Dify, plugins'
/// backwards calls and MCP clients all speak HTTP/1.1 to it.
pub async fn serve_http<L>(
    mut listener: L,
    app: Router,
    timeouts: HttpTimeouts,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let body_read = timeouts.body_read;
        let service = tower::service_fn(move |req: hyper::Request<Incoming>| {
            app.clone()
                .call(req.map(|body| DeadlineBody::new(body, body_read)))
        });
        let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that goes away or breaks a limit ends its own
            // connection; nothing else to do about it.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A request body that fails when it has not ended `limit` after it was
/// first read.
struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Option<Instant>,
    /// Armed the first time the body has to wait for the client.
    timer: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
            timer: None,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let limit = self.limit;
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + limit);
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("request body not received within {limit:?}"),
            )
            .into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Starts the debugging plugin listener when PLUGIN_REMOTE_INSTALLING_ENABLED.
async fn start_debug_listener(state: &AppState) -> anyhow::Result<Option<DebugServer>> {
    let settings = &state.settings;
    if !settings.plugin_remote_installing_enabled {
        return Ok(None);
    }
    let addr = format!(
        "{}:{}",
        settings.plugin_remote_installing_host, settings.plugin_remote_installing_port
    );
    let listener = TcpListener::bind(&addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} (PLUGIN_REMOTE_INSTALLING_HOST/PLUGIN_REMOTE_INSTALLING_PORT): {e}"
        )
    })?;
    let options = DebugOptions::from_settings(settings);
    Ok(Some(
        DebugServer::start(state.clone(), listener, options).await?,
    ))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
