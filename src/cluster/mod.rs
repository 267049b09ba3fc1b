//! Replicas: several daemons over one PostgreSQL, with no other
//! coordination service. Each daemon is a node: it registers itself, beats
//! a heartbeat that also renews its leases, and takes over the rows of
//! nodes that went silent. On SQLite the daemon is the one node.
//!
//! [`Cluster`] holds this node's identity and health; [`heartbeat`] runs
//! the loop that keeps it alive and reaps the dead.

pub mod drain;
pub mod forward;
pub mod heartbeat;
pub mod launcher;
pub mod leases;
pub mod mcp;
pub mod notify;
pub mod remote;
pub mod sync;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::settings::ClusterSettings;
use crate::store::{Backend, Store, StoreError};

/// Timings of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Between heartbeats.
    pub heartbeat_interval: Duration,
    /// Silence after which a node counts as dead.
    pub node_timeout: Duration,
    /// Longest a call waits for this node's copy of a plugin still starting.
    pub launch_wait: Duration,
    /// What SIGTERM gives open work before the node stops.
    pub drain_timeout: Duration,
}

impl ClusterOptions {
    /// From the daemon settings.
    pub fn from_settings(settings: &ClusterSettings) -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(settings.cluster_heartbeat_interval.max(1)),
            node_timeout: Duration::from_secs(settings.cluster_node_timeout.max(2)),
            launch_wait: Duration::from_secs(settings.cluster_launch_wait),
            drain_timeout: Duration::from_secs(settings.cluster_drain_timeout),
        }
    }
}

/// What a node's build locks guard.
#[derive(Debug, Clone)]
pub enum BuildScope {
    /// Lambda artifacts and functions, shared by every node.
    Lambda,
    /// Plugin folders under this working path, shared by the nodes using it.
    WorkingPath(std::path::PathBuf),
}

/// Whether this node should be sent traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Not registered yet.
    Starting,
    /// Registered, heartbeating, serving.
    Ready,
    /// Its heartbeat has failed for longer than the node timeout: other
    /// nodes may already have taken its rows over.
    Unhealthy,
    /// Stopping after its open work (SIGTERM).
    Draining,
}

impl Readiness {
    /// The word `/health/ready` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Unhealthy => "unhealthy",
            Self::Draining => "draining",
        }
    }
}

/// This node: its id, its address for other nodes, its health.
#[derive(Debug)]
pub struct Cluster {
    node_id: String,
    options: ClusterOptions,
    /// SQLite: no other node can share the database.
    single: bool,
    /// Base URL of the internal listener, once bound.
    address: RwLock<String>,
    registered: AtomicBool,
    draining: AtomicBool,
    /// When the last heartbeat reached the database.
    last_beat: Mutex<Option<Instant>>,
    /// Changes heard from the database (PostgreSQL).
    changes: broadcast::Sender<notify::Event>,
    /// What build lock keys are named under (see [`leases`]).
    build_scope: BuildScope,
    /// The working path's id, read once.
    working_path_id: std::sync::OnceLock<String>,
    /// Local plugin starts in flight.
    pub(crate) launches: launcher::Launches,
    /// Open requests, for the drain.
    pub in_flight: std::sync::Arc<drain::InFlight>,
    /// Calls to other nodes; one pool for the daemon.
    pub(crate) client: reqwest::Client,
}

impl Cluster {
    /// This node as the settings describe it, over a store of `backend`;
    /// its build locks are named under `build_scope`.
    pub fn new(settings: &ClusterSettings, backend: Backend, build_scope: BuildScope) -> Self {
        let node_id = settings
            .cluster_node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Self {
            node_id,
            options: ClusterOptions::from_settings(settings),
            single: backend == Backend::Sqlite,
            address: RwLock::new(String::new()),
            registered: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_beat: Mutex::new(None),
            changes: broadcast::channel(notify::BUS_CAPACITY).0,
            build_scope,
            working_path_id: std::sync::OnceLock::new(),
            launches: Default::default(),
            in_flight: Default::default(),
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .build()
                .unwrap_or_default(),
        }
    }

    /// The build lock key of `identifier` on this node.
    pub fn build_key(&self, identifier: &str) -> String {
        match &self.build_scope {
            BuildScope::Lambda => format!("lambda:{identifier}"),
            BuildScope::WorkingPath(dir) => {
                let id = self.working_path_id.get_or_init(|| {
                    leases::working_path_id(dir).unwrap_or_else(|e| {
                        // Without the file no other node can know it shares
                        // the path; this node's own builds still take turns.
                        tracing::warn!(dir = %dir.display(), "cannot name the working path: {e}");
                        format!("node-{}", self.node_id)
                    })
                });
                format!("local:{id}:{identifier}")
            }
        }
    }

    /// Receives the changes heard from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<notify::Event> {
        self.changes.subscribe()
    }

    /// Hands an event to every subscriber.
    pub(crate) fn publish(&self, event: notify::Event) {
        // No subscriber is not an error: nothing needs to hear it.
        let _ = self.changes.send(event);
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The timings in force.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Whether other nodes can share the database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        !self.single
    }

    /// The internal listener's base URL; empty before it is bound or when
    /// there is none.
    pub fn address(&self) -> String {
        self.address
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the node in the store with a fresh heartbeat.
    pub async fn register(&self, store: &Store) -> Result<(), StoreError> {
        store
            .register_node(&self.node_id, &self.address(), self.single)
            .await?;
        self.beat();
        self.registered.store(true, Ordering::Release);
        tracing::info!(node_id = %self.node_id, "registered as a node");
        Ok(())
    }

    /// Publishes the internal listener's base URL.
    pub async fn set_address(&self, store: &Store, address: String) -> Result<(), StoreError> {
        store.set_node_address(&self.node_id, &address).await?;
        *self.address.write().unwrap_or_else(|e| e.into_inner()) = address;
        Ok(())
    }

    fn beat(&self) {
        *self.last_beat.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether the node should get traffic now.
    pub fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::Acquire) {
            return Readiness::Draining;
        }
        if !self.registered.load(Ordering::Acquire) {
            return Readiness::Starting;
        }
        let fresh = self
            .last_beat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < self.options.node_timeout);
        if fresh {
            Readiness::Ready
        } else {
            Readiness::Unhealthy
        }
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the drain: readiness turns 503 and other nodes see the node
    /// as draining.
    pub async fn begin_drain(&self, store: &Store) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(node_id = %self.node_id, "draining");
        if let Err(e) = store.set_node_draining(&self.node_id).await {
            tracing::warn!(error = %e, "cannot mark the node as draining");
        }
    }

    /// Removes the node from the store (the end of a clean stop).
    pub async fn deregister(&self, store: &Store) {
        self.registered.store(false, Ordering::Release);
        if let Err(e) = store.remove_node(&self.node_id).await {
            tracing::warn!(error = %e, "cannot remove the node's row");
        }
    }
}

/// The node's background tasks: heartbeat and reaping, and on PostgreSQL
/// the change listener; the bus consumer everywhere.
pub struct Background {
    cancel: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Background {
    /// Starts them for the daemon of `state`.
    pub fn start(state: &crate::app_state::AppState) -> Self {
        let cancel = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let cluster = state.cluster.clone();
        tasks.spawn(sync::run(state.clone(), cancel.clone()));
        if cluster.is_shared() {
            if let Ok(crate::settings::DatabaseTarget::Postgres(url)) =
                state.settings.database_target()
            {
                tasks.spawn(notify::listen(
                    cluster.clone(),
                    url.expose().to_owned(),
                    cancel.clone(),
                ));
            }
        }
        tasks.spawn(heartbeat::run(cluster, state.clone(), cancel.clone()));
        tasks.close();
        Self { cancel, tasks }
    }

    /// Stops them and waits until they have.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.wait().await;
    }
}

/// Where a call for an installed plugin is served.
pub enum Located {
    /// By this runtime, on this node.
    Here(std::sync::Arc<dyn crate::runtime::PluginRuntime>),
    /// By another node, where the debugging plugin is connected.
    Owner(crate::store::NodeRecord),
}

/// Finds where an installed `identifier` without a runtime registered on
/// this node is served: a local plugin is started here (waiting, at most
/// CLUSTER_LAUNCH_WAIT, for a start already under way), a Lambda function
/// recorded by another node is registered, and a debugging plugin
/// connected to another live node is served there.
pub async fn locate(
    state: &crate::app_state::AppState,
    identifier: &str,
) -> Result<Located, crate::error::DaemonError> {
    use crate::error::DaemonError;
    let not_running = || DaemonError::internal_msg(format!("plugin {identifier} is not running"));
    let plugin = state
        .store
        .plugin(identifier)
        .await?
        .ok_or_else(not_running)?;
    match plugin.install_type.as_str() {
        "local" if state.local.is_some() => {
            launcher::ensure_local_within(state, identifier, state.cluster.options().launch_wait)
                .await
                .map_err(|why| {
                    DaemonError::internal_msg(format!("plugin {identifier} is not running: {why}"))
                })?;
        }
        "serverless" => {
            if let Some(step) = &state.serverless {
                step.sync_registered(identifier)
                    .await
                    .map_err(|e| DaemonError::internal("cannot register the Lambda function", e))?;
            }
        }
        "remote" => {
            if let Some(owner) = remote::owner(state, identifier).await? {
                return Ok(Located::Owner(owner));
            }
        }
        _ => {}
    }
    state
        .registry
        .get(identifier)
        .map(Located::Here)
        .ok_or_else(not_running)
}
