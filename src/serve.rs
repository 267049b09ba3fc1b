//! `plugind serve`: builds the state once, binds the HTTP listener and runs
//! until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

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
    let background = crate::cluster::Background::start(&state);
    if nix::unistd::geteuid().is_root() {
        let (root, working, files) = &daemon_files;
        crate::runtime::sandbox::protect_daemon_files(root, working, files);
    }
    if let Some(local) = state.local.clone() {
        // In the background: the API answers (and Dify's install polling
        // works) while environments are checked and plugins come up. The
        // catch-up starts through the same path as notifications and
        // dispatch, so a plugin asked for meanwhile is started once.
        let state = state.clone();
        tokio::spawn(async move {
            local.sweep_leftovers().await;
            crate::cluster::launcher::catch_up(&state, launching).await
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
    // Only over PostgreSQL can another replica exist to call this one.
    let gateway = crate::api::mcp_gateway(&state);
    let internal = if state.cluster.is_shared() {
        Some(
            crate::cluster::forward::InternalListener::start(&state, Some(gateway.clone()))
                .await
                .map_err(|e| anyhow::anyhow!(e))?,
        )
    } else {
        None
    };
    tracing::info!(%addr, "plugind listening");
    let drain_started = serve_until_drained(&state, listener, gateway).await?;
    if let Some(internal) = internal {
        internal.stop().await;
    }
    if let Some(debug) = debug {
        debug.shutdown().await;
    }
    // Install jobs get what is left of the drain; the tasks of those that
    // still run are handed over (their leases expire now, another node
    // settles them) rather than left for the lease timeout.
    let left = state
        .cluster
        .options()
        .drain_timeout
        .saturating_sub(drain_started.elapsed());
    if !state.installer.wait_idle(left).await {
        tracing::warn!("install tasks still running at the end of the drain; handing them over");
    }
    if let Err(e) = state.store.release_leases(state.cluster.node_id()).await {
        tracing::warn!(error = %e, "cannot hand the node's leases over");
    }
    state.registry.shutdown_all().await;
    background.stop().await;
    state.cluster.deregister(&state.store).await;
    tracing::info!("plugind stopped");
    Ok(())
}

/// Serves the API until SIGINT or SIGTERM, then drains: readiness turns
/// 503 and new requests are refused while open ones (dispatch streams
/// included) run on for at most CLUSTER_DRAIN_TIMEOUT; whatever is still
/// open then is closed. Returns when the drain began.
async fn serve_until_drained(
    state: &AppState,
    listener: impl axum::serve::Listener<Io: Send, Addr: Send + std::fmt::Debug> + 'static,
    gateway: std::sync::Arc<crate::mcp::McpGateway>,
) -> anyhow::Result<std::time::Instant> {
    use std::future::IntoFuture;
    let grace = state.cluster.options().drain_timeout;
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<std::time::Instant>();
    let graceful = {
        let state = state.clone();
        async move {
            shutdown_signal().await;
            let started = std::time::Instant::now();
            state.cluster.begin_drain(&state.store).await;
            if !state.cluster.in_flight.wait_idle(grace).await {
                tracing::warn!(
                    open = state.cluster.in_flight.open(),
                    "drain timeout reached with requests still open; closing them"
                );
            }
            let _ = drained_tx.send(started);
        }
    };
    let mut server = tokio::spawn(
        axum::serve(listener, crate::api::app_with_mcp(state.clone(), gateway))
            .with_graceful_shutdown(graceful)
            .into_future(),
    );
    tokio::select! {
        joined = &mut server => {
            joined??;
            Ok(std::time::Instant::now())
        }
        started = drained_rx => {
            // Open requests are done or past the grace: connections still
            // open (idle keep-alives, requests past the drain) are closed.
            if let Ok(joined) = tokio::time::timeout(std::time::Duration::from_secs(2), &mut server).await {
                joined??;
            } else {
                server.abort();
            }
            Ok(started.unwrap_or_else(|_| std::time::Instant::now()))
        }
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
