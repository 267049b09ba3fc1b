//! The TCP listener of debugging plugins: connection limits, handshake,
//! registration, installation for the tenant, and clean-up on disconnect
//! (reference: `debugging_runtime/server.go`, `hooks.go`,
//! `service/install_service/controlpanel.go`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registration::{self, RegisterError, RegisterLine, Registered, Registration};
use super::runtime::{serve_connection, Connection, ConnectionTimings, DebugRuntime, RuntimeInfo};
use crate::app_state::AppState;
use crate::runtime::{LineCodec, PluginRuntime, DEFAULT_MAX_LINE};
use crate::settings::Settings;
use crate::store::{NewInstallation, StoreError};

/// The runtime type of debugging installations, as the reference names it.
pub const RUNTIME_TYPE: &str = "remote";

/// How long a debugging key lives unused (reference: 2 h).
pub const KEY_TTL: Duration = Duration::from_secs(2 * 60 * 60);

/// The reference's reply when the connection limit is reached.
const BUSY: &str = "server is busy now, please try again later";

/// Limits and timings of the debugging listener.
#[derive(Debug, Clone)]
pub struct DebugOptions {
    /// Longest wait for the handshake line after connecting (reference: 10 s).
    pub handshake_timeout: Duration,
    /// Longest the registration may take after the handshake.
    pub registration_timeout: Duration,
    /// Silence after which a registered connection is closed (reference: 60 s).
    pub heartbeat_timeout: Duration,
    /// PLUGIN_REMOTE_INSTALLING_MAX_CONN: open connections, all tenants.
    pub max_conn: usize,
    /// PLUGIN_REMOTE_INSTALLING_MAX_SINGLE_TENANT_CONN.
    pub max_tenant_conn: usize,
    /// PLUGIN_RUNTIME_MAX_BUFFER_SIZE: longest line read from a plugin.
    pub max_line: usize,
    /// PLUGIN_MAX_EXECUTION_TIMEOUT: default time limit of a session.
    pub max_execution_timeout: Duration,
    /// How long a debugging key lives unused (reference: 2 h).
    pub key_ttl: Duration,
}

impl Default for DebugOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            registration_timeout: Duration::from_secs(60),
            heartbeat_timeout: Duration::from_secs(60),
            max_conn: 256,
            max_tenant_conn: 5,
            max_line: DEFAULT_MAX_LINE,
            max_execution_timeout: Duration::from_secs(600),
            key_ttl: KEY_TTL,
        }
    }
}

impl DebugOptions {
    /// From the daemon settings.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            max_conn: settings.plugin_remote_installing_max_conn.max(1),
            max_tenant_conn: settings
                .plugin_remote_installing_max_single_tenant_conn
                .max(1),
            max_line: settings.plugin_runtime_max_buffer_size,
            max_execution_timeout: Duration::from_secs(settings.plugin_max_execution_timeout),
            ..Self::default()
        }
    }
}

type Lines = FramedRead<QuickAckRead, LineCodec>;

/// The read half of a debugging connection that acknowledges what it reads
/// at once.
///
/// The SDK writes a session's chunk and its `end` as two small sends on a
/// socket without TCP_NODELAY, so Nagle holds the second until the first is
/// acknowledged; with Linux's delayed ACK that is ~40 ms on every call.
/// TCP_QUICKACK is not sticky (the kernel may fall back to delayed ACKs), so
/// it is set again after each read that returned data.
pub(crate) struct QuickAckRead {
    inner: OwnedReadHalf,
}

impl QuickAckRead {
    fn new(inner: OwnedReadHalf) -> Self {
        Self { inner }
    }
}

impl tokio::io::AsyncRead for QuickAckRead {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let stream: &TcpStream = self.inner.as_ref();
            // Only a latency hint: a failure changes nothing else.
            let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
        }
        polled
    }
}

struct Inner {
    state: AppState,
    options: DebugOptions,
    permits: Arc<Semaphore>,
    /// Open connections per tenant (after the handshake).
    tenants: Mutex<HashMap<String, usize>>,
    /// Registered connections by (tenant, plugin id).
    live: Mutex<HashMap<(String, String), DebugRuntime>>,
    /// Serializes installing, so a plugin reconnecting twice at once cannot
    /// take over its own fresh installation.
    installing: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The debugging listener. Dropping it does not stop it; call
/// [`DebugServer::shutdown`].
#[derive(Clone)]
pub struct DebugServer {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for DebugServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum DebugServerError {
    #[error("cannot read the listener address: {0}")]
    Address(#[source] std::io::Error),
    #[error("cannot remove stale debugging installations: {0}")]
    Store(#[from] StoreError),
}

impl DebugServer {
    /// Starts serving `listener`. Debugging installations left by a previous
    /// run (or by a replica that died) are removed first: their connections
    /// died with that process.
    pub async fn start(
        state: AppState,
        listener: TcpListener,
        options: DebugOptions,
    ) -> Result<Self, DebugServerError> {
        let local_addr = listener.local_addr().map_err(DebugServerError::Address)?;
        // Only installations no live replica serves: those of other
        // replicas' connections stay.
        crate::cluster::remote::remove_orphans(&state, true).await?;
        let inner = Arc::new(Inner {
            permits: Arc::new(Semaphore::new(options.max_conn.max(1))),
            state,
            options,
            tenants: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            installing: tokio::sync::Mutex::new(()),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        tokio::spawn(accept_loop(Arc::clone(&inner), listener));
        tracing::info!(%local_addr, "debugging plugin listener started");
        Ok(Self { inner, local_addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The tenant's registered debugging runtimes.
    pub fn runtimes(&self, tenant_id: &str) -> Vec<DebugRuntime> {
        lock(&self.inner.live)
            .iter()
            .filter(|((t, _), _)| t == tenant_id)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Stops accepting, closes every connection and waits until each has
    /// removed its installation.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held only for map operations; a panic cannot leave a map half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let inner2 = Arc::clone(&inner);
                inner.tasks.spawn(async move {
                    handle(inner2, stream, peer).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "debugging listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Writes a one-line refusal and closes. What the plugin already sent is
/// read first, so closing does not reset the connection before the text
/// arrives.
async fn refuse(lines: &mut Lines, mut writer: OwnedWriteHalf, text: &str) {
    let _ = writer.write_all(format!("{text}\n").as_bytes()).await;
    let _ = writer.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = lines.next().await {}
    })
    .await;
}

/// One connection slot of a tenant, released on drop.
struct TenantSlot {
    inner: Arc<Inner>,
    tenant_id: String,
}

impl TenantSlot {
    fn take(inner: &Arc<Inner>, tenant_id: &str) -> Option<Self> {
        let mut tenants = lock(&inner.tenants);
        let n = tenants.entry(tenant_id.to_owned()).or_insert(0);
        if *n >= inner.options.max_tenant_conn {
            return None;
        }
        *n += 1;
        Some(Self {
            inner: Arc::clone(inner),
            tenant_id: tenant_id.to_owned(),
        })
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut tenants = lock(&self.inner.tenants);
        if let Some(n) = tenants.get_mut(&self.tenant_id) {
            *n -= 1;
            if *n == 0 {
                tenants.remove(&self.tenant_id);
            }
        }
    }
}

/// What ends the handshake and registration phase early.
enum Early {
    /// Refuse with this text.
    Refuse(String),
    /// Close without a word (timeout, peer gone, daemon stopping).
    Drop(&'static str),
}

impl From<RegisterError> for Early {
    fn from(e: RegisterError) -> Self {
        Early::Refuse(e.to_string())
    }
}

/// Reads the next non-blank line before `deadline`.
async fn next_line(inner: &Inner, lines: &mut Lines, deadline: Instant) -> Result<Bytes, Early> {
    let next = tokio::select! {
        _ = inner.cancel.cancelled() => return Err(Early::Drop("daemon stopping")),
        n = tokio::time::timeout_at(deadline, lines.next()) => n,
    };
    match next {
        Err(_) => Err(Early::Drop("timed out")),
        Ok(None) => Err(Early::Drop("peer closed")),
        Ok(Some(Err(_))) => Err(Early::Drop("read failed")),
        Ok(Some(Ok(Err(_too_long)))) => Err(RegisterError::LineTooLong.into()),
        Ok(Some(Ok(Ok(line)))) => Ok(line),
    }
}

async fn handle(inner: Arc<Inner>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (read, writer) = stream.into_split();
    let mut lines = FramedRead::new(
        QuickAckRead::new(read),
        LineCodec::new(inner.options.max_line),
    );
    let Ok(_permit): Result<OwnedSemaphorePermit, _> =
        Arc::clone(&inner.permits).try_acquire_owned()
    else {
        tracing::warn!(%peer, "debugging connection refused: connection limit reached");
        refuse(&mut lines, writer, BUSY).await;
        return;
    };
    let (tenant_id, slot, registered) = match register(&inner, &mut lines).await {
        Ok(done) => done,
        Err(Early::Refuse(text)) => {
            tracing::info!(%peer, "debugging connection refused: {text}");
            refuse(&mut lines, writer, &text).await;
            return;
        }
        Err(Early::Drop(why)) => {
            tracing::info!(%peer, "debugging connection closed before registering: {why}");
            return;
        }
    };
    let (installed, mut conn) = match install(&inner, &tenant_id, registered).await {
        Ok(done) => done,
        Err(text) => {
            tracing::info!(%peer, "debugging plugin refused: {text}");
            refuse(&mut lines, writer, &text).await;
            return;
        }
    };
    let identity = installed.runtime.info().identity.clone();
    tracing::info!(%peer, plugin = %identity, tenant = %tenant_id, "debugging plugin connected");
    let reason = serve_connection(
        &mut conn,
        lines,
        writer,
        ConnectionTimings {
            heartbeat_timeout: inner.options.heartbeat_timeout,
        },
    )
    .await;
    tracing::info!(%peer, plugin = %identity, tenant = %tenant_id, "debugging plugin disconnected: {reason}");
    uninstall(&inner, &installed).await;
    conn.finish();
    drop(slot);
}

/// Handshake, tenant slot and registration lines up to `end`.
async fn register(
    inner: &Arc<Inner>,
    lines: &mut Lines,
) -> Result<(String, TenantSlot, Registered), Early> {
    let deadline = Instant::now() + inner.options.handshake_timeout;
    let first = next_line(inner, lines, deadline).await?;
    let RegisterLine::Handshake { key } = RegisterLine::parse(&first)? else {
        return Err(RegisterError::InvalidHandshake.into());
    };
    let tenant_id = match inner
        .state
        .store
        .debugging_key_tenant(&key, inner.options.key_ttl)
        .await
    {
        Ok(Some(t)) => t,
        Ok(None) => return Err(RegisterError::InvalidKey.into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot look up a debugging key");
            return Err(Early::Refuse(format!("failed to get connection info: {e}")));
        }
    };
    let slot = TenantSlot::take(inner, &tenant_id).ok_or_else(|| {
        Early::Refuse(format!(
            "too many debugging connections for this workspace, at most {}",
            inner.options.max_tenant_conn
        ))
    })?;
    let deadline = Instant::now() + inner.options.registration_timeout;
    let mut registration = Registration::default();
    loop {
        let line = next_line(inner, lines, deadline).await?;
        match RegisterLine::parse(&line)? {
            RegisterLine::End => break,
            RegisterLine::Unknown(kind) => {
                tracing::debug!(kind, "unknown registration line ignored");
            }
            other => registration.apply(other)?,
        }
    }
    Ok((tenant_id, slot, registration.finish()?))
}

/// The asset id of a file: the same content-addressed scheme as uploaded
/// packages' assets, so `asset/{id}` serves both alike.
fn asset_id(name: &str, data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.update(name.as_bytes());
    let ext = std::path::Path::new(name)
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    format!("{}{ext}", hex::encode(h.finalize()))
}

/// Stores the icons the declaration names and replaces their file names
/// with asset ids.
async fn store_assets(inner: &Inner, registered: &mut Registered) -> Result<(), String> {
    let prefix = inner.state.packages.settings().media_prefix.clone();
    let mut uploads: HashMap<String, String> = HashMap::new();
    for slot in registration::icon_slots(&mut registered.declaration) {
        let name = slot.as_str().unwrap_or_default().to_owned();
        let id = match uploads.get(&name) {
            Some(id) => id.clone(),
            None => {
                let data = registered.assets.get(&name).ok_or_else(|| {
                    RegisterError::Remap(format!("file not found: {name}")).to_string()
                })?;
                let id = asset_id(&name, data);
                uploads.insert(name, id.clone());
                id
            }
        };
        *slot = Value::String(id);
    }
    for (name, id) in &uploads {
        let key = format!("{prefix}/{id}");
        let exists = inner.state.storage.exists(&key).await.unwrap_or(false);
        if !exists {
            let data = Bytes::from(registered.assets.get(name).cloned().unwrap_or_default());
            inner.state.storage.put(&key, data).await.map_err(|e| {
                tracing::error!(error = %e, key, "cannot store a debugging plugin asset");
                format!("assets remap failed, cannot store {name}")
            })?;
        }
    }
    Ok(())
}

/// A registered, installed connection.
struct Installed {
    runtime: DebugRuntime,
    installation_id: String,
    /// The registry entry, to remove exactly this one.
    entry: Arc<dyn PluginRuntime>,
    /// This connection's claim in `remote_owners`.
    owner_token: String,
}

/// Checks the declaration, stores assets, takes over a previous connection
/// of the same plugin, and installs the plugin for the tenant.
async fn install(
    inner: &Arc<Inner>,
    tenant_id: &str,
    mut registered: Registered,
) -> Result<(Installed, Connection), String> {
    store_assets(inner, &mut registered).await?;
    let mut declaration = registered.declaration;
    registration::fill_defaults(&mut declaration);
    registration::validate(&declaration).map_err(|e| e.to_string())?;
    let checksum = registration::checksum(&declaration, tenant_id);
    let identity = registration::identifier(&declaration, &checksum);
    let parsed: crate::package::PluginUniqueIdentifier = identity
        .parse()
        .map_err(|e| RegisterError::InvalidPlugin(format!("{e}")).to_string())?;
    let plugin_id = parsed.plugin_id().to_owned();
    let key = (tenant_id.to_owned(), plugin_id.clone());

    let _installing = inner.installing.lock().await;
    // A plugin restarted by its author reconnects before the daemon may
    // have noticed the old connection died: the newest connection wins.
    let previous = lock(&inner.live).get(&key).cloned();
    if let Some(previous) = previous {
        tracing::info!(plugin = %previous.info().identity, "replacing an earlier connection of the same debugging plugin");
        previous.shutdown().await;
    }
    let (runtime, conn) = DebugRuntime::new(
        RuntimeInfo {
            identity: identity.clone(),
            plugin_id: plugin_id.clone(),
            tenant_id: tenant_id.to_owned(),
            declaration: declaration.clone(),
        },
        inner.options.max_execution_timeout,
        inner.cancel.child_token(),
    );
    // Registered before the installation row exists, so whoever finds the
    // installation also finds its runtime.
    let entry: Arc<dyn PluginRuntime> = Arc::new(runtime.clone());
    if let Some(replaced) = inner.state.registry.insert(identity.clone(), entry.clone()) {
        // Only a leftover of a failed clean-up can be here; it has no connection.
        tracing::warn!(plugin = %replaced.identity(), "replaced a stale registry entry");
    }
    // The owner is recorded before the installation exists, so no replica
    // ever sees the installation without it (and takes it for a leftover).
    let node_id = inner.state.cluster.node_id().to_owned();
    let owner_token = uuid::Uuid::new_v4().to_string();
    let claimed = inner
        .state
        .store
        .claim_remote(&identity, tenant_id, &plugin_id, &node_id, &owner_token)
        .await
        .map_err(|e| format!("register failed: {e}"));
    let installed = match claimed {
        Ok(()) => install_row(inner, tenant_id, &identity, &plugin_id, &declaration).await,
        Err(e) => Err(e),
    };
    match installed {
        Ok(installation_id) => {
            lock(&inner.live).insert(key, runtime.clone());
            Ok((
                Installed {
                    runtime,
                    installation_id,
                    entry,
                    owner_token,
                },
                conn,
            ))
        }
        Err(text) => {
            remove_from_registry(inner, &identity, &entry);
            release_owner(inner, &identity, &owner_token).await;
            conn.finish();
            Err(text)
        }
    }
}

async fn install_row(
    inner: &Inner,
    tenant_id: &str,
    identity: &str,
    plugin_id: &str,
    declaration: &Value,
) -> Result<String, String> {
    let store = &inner.state.store;
    let meta = json!({});
    let new = NewInstallation {
        tenant_id,
        identifier: identity,
        plugin_id,
        install_type: RUNTIME_TYPE,
        declaration,
        source: RUNTIME_TYPE,
        meta: &meta,
    };
    for _ in 0..2 {
        match store.install_plugin(&new).await {
            Ok(installed) => return Ok(installed.installation.id),
            Err(StoreError::AlreadyInstalled) => {
                let existing = store
                    .installation_by_plugin_id(tenant_id, plugin_id)
                    .await
                    .map_err(|e| format!("register failed: {e}"))?;
                match existing {
                    // No live connection owns it (the caller holds the
                    // install lock and replaced any): a leftover.
                    Some(old) if old.runtime_type == RUNTIME_TYPE => {
                        store
                            .uninstall_plugin(tenant_id, &old.id)
                            .await
                            .map_err(|e| format!("register failed: {e}"))?;
                    }
                    Some(_) => {
                        return Err(format!(
                            "register failed, plugin {plugin_id} is already installed in this workspace; uninstall it before debugging"
                        ))
                    }
                    None => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot install a debugging plugin");
                return Err(format!("register failed: {e}"));
            }
        }
    }
    Err("register failed, installation kept changing".into())
}

/// Forgets this connection's claim on `identity` (unless a later one took
/// it over).
async fn release_owner(inner: &Inner, identity: &str, token: &str) {
    if let Err(e) = inner.state.store.release_remote(identity, token).await {
        tracing::warn!(error = %e, plugin = %identity, "cannot release a debugging plugin's owner row");
    }
}

/// Removes `entry` from the registry unless another runtime replaced it.
fn remove_from_registry(inner: &Inner, identity: &str, entry: &Arc<dyn PluginRuntime>) {
    let registry = &inner.state.registry;
    let ours = registry
        .get(identity)
        .is_some_and(|current| std::ptr::addr_eq(Arc::as_ptr(&current), Arc::as_ptr(entry)));
    if ours {
        registry.remove(identity);
    }
}

/// Removes what a connection installed, once it is gone. The live entry goes
/// last: a takeover waits for it, and finds the installation already gone.
async fn uninstall(inner: &Arc<Inner>, installed: &Installed) {
    let runtime = &installed.runtime;
    let info = runtime.info();
    if let Err(e) = inner
        .state
        .store
        .uninstall_plugin(&info.tenant_id, &installed.installation_id)
        .await
    {
        tracing::error!(error = %e, plugin = %info.identity, "cannot remove a debugging installation");
    }
    remove_from_registry(inner, &info.identity, &installed.entry);
    let key = (info.tenant_id.clone(), info.plugin_id.clone());
    {
        let mut live = lock(&inner.live);
        if live.get(&key).is_some_and(|r| r.same(runtime)) {
            live.remove(&key);
        }
    }
    // Last: with the installation gone nothing forwards here any more.
    release_owner(inner, &info.identity, &installed.owner_token).await;
}
