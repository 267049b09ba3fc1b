//! The local host: each plugin runs as `python -m <entrypoint>` in its own
//! uv environment and speaks the line protocol over stdin/stdout
//! (reference: `internal/core/local_runtime/`).
//!
//! One supervisor task owns the child process: it reads stdout and stderr,
//! writes queued lines to stdin, watches liveness, and restarts the child
//! with backoff when it dies. Callers hold a cheap [`LocalRuntime`] handle.
//!
//! With an idle timeout (PLUGIN_LOCAL_IDLE_TIMEOUT) the supervisor also
//! stops a child that has had no session for that long, the way Lambda
//! scales to zero, and starts it again when the next session asks: callers
//! arriving while it starts all wait for that one start. An open session is
//! what keeps a plugin up: a streamed endpoint or a long model answer holds
//! its session for as long as it streams. Trigger subscriptions live in
//! Dify; subscribing, refreshing and dispatching events are sessions too.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::codec::LineCodec;
use super::protocol::{request_line, PluginEvent};
use super::python_env::{self, ProgressFn, PythonEnvConfig};
use super::sandbox::{code, PluginJail, Sandbox, SandboxOptions, SAFE_PATH};
use super::session::{LineSender, SessionStream, SessionTable};
use super::{PluginRuntime, RuntimeError, RuntimeState, SessionRequest};
use crate::settings::Settings;

/// How many lines may wait for the child's stdin.
const WRITE_QUEUE: usize = 64;
/// How many stderr lines a launch failure quotes.
const STDERR_TAIL: usize = 20;
/// How often liveness is checked.
const LIVENESS_TICK: Duration = Duration::from_millis(500);
/// A child that ran this long before dying resets the restart backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Timings and limits of the local host.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Longest wait for the first heartbeat, and longest silence after it
    /// (reference: 120 s).
    pub heartbeat_timeout: Duration,
    /// PLUGIN_MAX_EXECUTION_TIMEOUT: default time limit of a session.
    pub max_execution_timeout: Duration,
    /// PLUGIN_RUNTIME_MAX_BUFFER_SIZE: longest line read from the plugin.
    pub max_line: usize,
    /// First restart delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// How long `shutdown` lets open sessions finish before killing.
    pub stop_grace: Duration,
    /// PLUGIN_LOCAL_IDLE_TIMEOUT: stop a child after this long without a
    /// session; the next session starts it again. `None` keeps it running.
    pub idle_timeout: Option<Duration>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(120),
            max_execution_timeout: Duration::from_secs(600),
            max_line: super::codec::DEFAULT_MAX_LINE,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            idle_timeout: None,
        }
    }
}

impl LocalOptions {
    /// From the daemon settings.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            max_execution_timeout: Duration::from_secs(settings.plugin_max_execution_timeout),
            max_line: settings.plugin_runtime_max_buffer_size,
            idle_timeout: (settings.plugin_local_idle_timeout > 0)
                .then(|| Duration::from_secs(settings.plugin_local_idle_timeout)),
            ..Self::default()
        }
    }
}

/// What a plugin needs to be launched, independent of how it was packaged.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The plugin unique identifier, used in logs and as the runtime identity.
    pub identity: String,
    /// The unpacked plugin folder (it will hold `.venv`).
    pub working_dir: PathBuf,
    /// `meta.runner.entrypoint`, run as `python -m <entrypoint>`.
    pub entrypoint: String,
    /// `meta.runner.version`, used to pick the interpreter.
    pub runner_version: Option<String>,
    /// Extra environment variables for the plugin process.
    pub env: Vec<(String, String)>,
    /// The manifest's `resource.memory`, in bytes.
    pub memory: Option<u64>,
    /// The package's files, when the folder was just unpacked: whatever else
    /// the dependency build leaves beside them is removed.
    pub package_files: Option<Arc<BTreeSet<String>>>,
}

/// Exactly which process to run; what [`LocalHost::launch`] derives from a
/// [`LaunchSpec`] once the environment is ready.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub identity: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub working_dir: PathBuf,
    /// The whole environment when there is no jail; added to the jail's.
    pub env: Vec<(String, String)>,
    /// The confinement; `None` runs the program with `env` and a safe PATH only.
    pub jail: Option<PluginJail>,
    /// The package checksum `working_dir` must match before every start.
    pub code_checksum: Option<String>,
}

/// Builds environments and starts local plugins, at most
/// PLUGIN_LOCAL_LAUNCHING_CONCURRENT at a time.
#[derive(Debug, Clone)]
pub struct LocalHost {
    env: Arc<PythonEnvConfig>,
    options: LocalOptions,
    permits: Arc<Semaphore>,
    sandbox: Arc<Sandbox>,
}

impl LocalHost {
    /// A host with explicit configuration.
    /// Plugins get a clean environment and their own data folder, under the
    /// caller's uid; [`LocalHost::with_sandbox`] adds uids, Landlock and
    /// limits (as [`LocalHost::from_settings`] does for the daemon).
    pub fn new(env: PythonEnvConfig, options: LocalOptions, concurrent_launches: usize) -> Self {
        let sandbox = Sandbox::new(SandboxOptions {
            passthrough: vec![],
            uid_range: super::sandbox::DEFAULT_UID_RANGE,
            own_uid: false,
            landlock: false,
            helper: None,
            build_home: std::env::temp_dir(),
            read_only: vec![env.uv_cache_dir.clone()],
        });
        Self::with_sandbox(env, options, concurrent_launches, Arc::new(sandbox))
    }

    /// A host confining plugins with `sandbox`.
    pub fn with_sandbox(
        mut env: PythonEnvConfig,
        options: LocalOptions,
        concurrent_launches: usize,
        sandbox: Arc<Sandbox>,
    ) -> Self {
        env.build_env = sandbox.build_env();
        if sandbox.drops_privileges() && env.stage_dir.is_none() {
            env.stage_dir = Some(sandbox.stage_dir());
        }
        Self {
            env: Arc::new(env),
            options,
            permits: Arc::new(Semaphore::new(concurrent_launches.max(1))),
            sandbox,
        }
    }

    /// The sandbox plugins run in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// A host configured from the daemon settings.
    pub fn from_settings(settings: &Settings) -> Self {
        if std::process::id() == 1 {
            // The SDK exits as soon as its parent is PID 1 (it takes that to
            // mean it was orphaned), so plugins cannot run under a PID-1 daemon.
            tracing::error!(
                "plugind runs as PID 1: local plugins will exit at once; run it under an init such as tini"
            );
        }
        let working_path = settings.working_path();
        let sandbox = Sandbox::new(SandboxOptions {
            passthrough: settings.plugin_env_passthrough.clone(),
            uid_range: settings.plugin_uid_range,
            own_uid: true,
            landlock: settings.plugin_landlock_enabled,
            helper: super::sandbox::helper_binary(),
            build_home: working_path.join(".build-home"),
            read_only: vec![settings.uv_cache_path()],
        });
        sandbox.log_support();
        Self::with_sandbox(
            PythonEnvConfig::from_settings(settings),
            LocalOptions::from_settings(settings),
            settings.plugin_local_launching_concurrent,
            Arc::new(sandbox),
        )
    }

    /// The options in force.
    pub fn options(&self) -> &LocalOptions {
        &self.options
    }

    /// Builds (or reuses) the plugin's environment, starts it, and returns
    /// once it sent its first heartbeat.
    pub async fn launch(
        &self,
        spec: LaunchSpec,
        progress: ProgressFn,
    ) -> Result<LocalRuntime, RuntimeError> {
        let process = self.prepare(spec, progress).await?;
        self.start(process).await
    }

    /// Builds (or reuses) the plugin's environment and its folders, and says
    /// exactly which process runs it, without starting it.
    pub async fn prepare(
        &self,
        spec: LaunchSpec,
        progress: ProgressFn,
    ) -> Result<ProcessSpec, RuntimeError> {
        let env = {
            let _permit = acquire(&self.permits).await?;
            python_env::ensure_env(
                &self.env,
                &spec.working_dir,
                spec.runner_version.as_deref(),
                progress,
            )
            .await?
        };
        let working_dir = std::fs::canonicalize(&spec.working_dir)?;
        if let (false, Some(keep)) = (env.reused, &spec.package_files) {
            let removed = code::remove_strays(&working_dir, keep)
                .map_err(|e| RuntimeError::Launch(e.to_string()))?;
            if !removed.is_empty() {
                tracing::debug!(plugin = %spec.identity, ?removed, "removed files the dependency build left beside the code");
            }
        }
        let dir_name = working_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let jail = self
            .sandbox
            .prepare(&dir_name, &working_dir, &env.venv_dir, spec.memory)
            .map_err(|e| {
                RuntimeError::Launch(format!("cannot prepare the plugin's folders: {e}"))
            })?;
        Ok(ProcessSpec {
            code_checksum: code::identifier_checksum(&spec.identity).map(str::to_owned),
            identity: spec.identity,
            program: env.python,
            args: vec!["-m".into(), spec.entrypoint],
            working_dir,
            env: spec.env,
            jail: Some(jail),
        })
    }

    /// Starts an exact process and returns once it sent its first heartbeat.
    pub async fn start(&self, process: ProcessSpec) -> Result<LocalRuntime, RuntimeError> {
        LocalRuntime::start(process, self.options.clone(), Arc::clone(&self.permits)).await
    }

    /// A runtime for an exact process that starts at its first session
    /// (see [`LocalRuntime::dormant`]).
    pub fn dormant(&self, process: ProcessSpec) -> LocalRuntime {
        LocalRuntime::dormant(process, self.options.clone(), Arc::clone(&self.permits))
    }
}

async fn acquire(permits: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, RuntimeError> {
    Arc::clone(permits)
        .acquire_owned()
        .await
        .map_err(|_| RuntimeError::Unavailable("launcher closed".into()))
}

/// Shared between the handle and the supervisor task.
struct Shared {
    identity: String,
    options: LocalOptions,
    sessions: Arc<SessionTable>,
    state: watch::Sender<RuntimeState>,
    slot: Mutex<Slot>,
    pid: Mutex<Option<u32>>,
    cancel: CancellationToken,
    /// Rung by a caller that found no child serving (see [`Slot::wanted`]).
    wake: Notify,
    /// On-demand starts that failed; a caller waiting on a start compares
    /// it before and after to learn that its start failed.
    failed_starts: AtomicU64,
    /// Why the last on-demand start failed.
    last_failure: Mutex<String>,
    /// Processes started, for diagnostics and tests.
    starts: AtomicU64,
}

/// What a caller and the idle check must see together: the writer is
/// taken and `last_used` moved under one lock, so a child is never stopped
/// for idleness between a caller getting its writer and opening a session.
struct Slot {
    /// The current child's stdin queue; `None` while no child is ready.
    writer: Option<LineSender>,
    /// The last time a session was opened or seen open.
    last_used: Instant,
    /// A caller waits for a start. Cleared when the supervisor starts a
    /// child, when one becomes ready and when an on-demand start fails, so a
    /// stale request never starts a plugin nobody waits for.
    wanted: bool,
}

impl Shared {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn set_writer(&self, writer: Option<LineSender>) {
        let mut slot = self.slot();
        if writer.is_some() {
            slot.last_used = Instant::now();
            slot.wanted = false;
        }
        slot.writer = writer;
    }
    /// The writer for a new session, counting it as use; without one, and
    /// when `want` is set, records that a caller waits for a start.
    fn writer_for_session(&self, want: bool) -> Option<LineSender> {
        let mut slot = self.slot();
        match &slot.writer {
            Some(writer) => {
                let writer = writer.clone();
                slot.last_used = Instant::now();
                Some(writer)
            }
            None => {
                slot.wanted |= want;
                None
            }
        }
    }
    /// Takes a pending start request.
    fn take_wanted(&self) -> bool {
        std::mem::take(&mut self.slot().wanted)
    }
    /// Takes the writer away when no session is open and none was for
    /// `limit`; the child is then stopped.
    fn stop_if_idle(&self, limit: Duration) -> bool {
        let mut slot = self.slot();
        if slot.writer.is_none() {
            return false;
        }
        if !self.sessions.is_empty() {
            slot.last_used = Instant::now();
            return false;
        }
        if slot.last_used.elapsed() < limit {
            return false;
        }
        slot.writer = None;
        drop(slot);
        self.state.send_replace(RuntimeState::Idle);
        true
    }
    fn set_pid(&self, pid: Option<u32>) {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner()) = pid;
    }
    fn last_failure(&self) -> String {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A writer for a new session, starting the child when none runs and
    /// waiting at most until `deadline` for it (and for a restart in
    /// progress) to be ready. Concurrent callers share one start.
    async fn ready_writer(&self, timeout: Duration) -> Result<LineSender, RuntimeError> {
        // The common case, without arming a wait.
        if let Some(writer) = self.writer_for_session(false) {
            return Ok(writer);
        }
        let deadline = Instant::now() + timeout;
        let failures = self.failed_starts.load(Ordering::SeqCst);
        let mut states = self.state.subscribe();
        loop {
            if let Some(writer) = self.writer_for_session(true) {
                return Ok(writer);
            }
            self.wake.notify_one();
            let state = states.borrow_and_update().clone();
            match &state {
                RuntimeState::Failed(why) => return Err(RuntimeError::Unavailable(why.clone())),
                RuntimeState::Stopping | RuntimeState::Stopped => {
                    return Err(RuntimeError::Unavailable(
                        format!("{state:?}").to_lowercase(),
                    ))
                }
                _ => {}
            }
            if self.failed_starts.load(Ordering::SeqCst) != failures {
                return Err(RuntimeError::Launch(self.last_failure()));
            }
            let change = async {
                if state == RuntimeState::Ready {
                    // Ready with no writer: the supervisor is handling an
                    // exit and is about to announce the restart.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    let _ = states.changed().await;
                }
            };
            if tokio::time::timeout_at(deadline, change).await.is_err() {
                return Err(RuntimeError::Unavailable(format!(
                    "not ready after {} s",
                    timeout.as_secs()
                )));
            }
        }
    }
}

/// A handle to a local plugin. Clones share the same process; the process
/// ends when [`PluginRuntime::shutdown`] is called or the last handle drops.
#[derive(Clone)]
pub struct LocalRuntime {
    shared: Arc<Shared>,
    // Cancels the supervisor when the last handle goes away.
    _guard: Arc<tokio_util::sync::DropGuard>,
}

impl std::fmt::Debug for LocalRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRuntime")
            .field("identity", &self.shared.identity)
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

impl LocalRuntime {
    /// Spawns the supervisor and waits for the first heartbeat.
    pub async fn start(
        process: ProcessSpec,
        options: LocalOptions,
        permits: Arc<Semaphore>,
    ) -> Result<Self, RuntimeError> {
        let (first_tx, first_rx) = oneshot::channel();
        let handle = Self::spawn(process, options, permits, Some(first_tx));
        match first_rx.await {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RuntimeError::Launch("supervisor ended".into())),
        }
    }

    /// Spawns the supervisor without starting the process: the first
    /// session starts it (state [`RuntimeState::Idle`] until then). A start
    /// that fails fails the sessions waiting for it, and the next session
    /// tries again.
    pub fn dormant(process: ProcessSpec, options: LocalOptions, permits: Arc<Semaphore>) -> Self {
        Self::spawn(process, options, permits, None)
    }

    fn spawn(
        process: ProcessSpec,
        options: LocalOptions,
        permits: Arc<Semaphore>,
        first: Option<oneshot::Sender<Result<(), RuntimeError>>>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let initial = if first.is_some() {
            RuntimeState::Starting
        } else {
            RuntimeState::Idle
        };
        let (state, _) = watch::channel(initial);
        let shared = Arc::new(Shared {
            identity: process.identity.clone(),
            options,
            sessions: SessionTable::new(),
            state,
            slot: Mutex::new(Slot {
                writer: None,
                last_used: Instant::now(),
                wanted: false,
            }),
            pid: Mutex::new(None),
            cancel: cancel.clone(),
            wake: Notify::new(),
            failed_starts: AtomicU64::new(0),
            last_failure: Mutex::new(String::new()),
            starts: AtomicU64::new(0),
        });
        tokio::spawn(supervise(Arc::clone(&shared), process, permits, first));
        Self {
            shared,
            _guard: Arc::new(cancel.drop_guard()),
        }
    }

    /// The current child's process id, while one runs.
    pub fn pid(&self) -> Option<u32> {
        *self.shared.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sessions are open.
    pub fn open_sessions(&self) -> usize {
        self.shared.sessions.len()
    }

    /// How many processes this runtime has started so far.
    pub fn starts(&self) -> u64 {
        self.shared.starts.load(Ordering::SeqCst)
    }

    /// Watches state changes.
    pub fn subscribe(&self) -> watch::Receiver<RuntimeState> {
        self.shared.state.subscribe()
    }
}

#[async_trait::async_trait]
impl PluginRuntime for LocalRuntime {
    fn identity(&self) -> &str {
        &self.shared.identity
    }

    fn state(&self) -> RuntimeState {
        self.shared.state.borrow().clone()
    }

    /// Also starts an idle runtime: waiting for readiness is asking for it.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), RuntimeError> {
        self.shared.ready_writer(timeout).await.map(drop)
    }

    async fn invoke(&self, request: SessionRequest) -> Result<SessionStream, RuntimeError> {
        // A call during a restart or to an idle plugin waits for the new
        // process rather than failing.
        let writer = self
            .shared
            .ready_writer(self.shared.options.heartbeat_timeout)
            .await?;
        let line = request_line(
            &request.header,
            &request.user_id,
            &request.access_type,
            &request.action,
            &request.payload,
        );
        let timeout = request
            .timeout
            .unwrap_or(self.shared.options.max_execution_timeout);
        let stream = self
            .shared
            .sessions
            .open(request.header, writer.clone(), timeout)?;
        writer
            .send(line)
            .await
            .map_err(|_| RuntimeError::ConnectionClosed)?;
        Ok(stream)
    }

    async fn shutdown(&self) {
        let shared = &self.shared;
        shared.state.send_if_modified(|s| {
            if matches!(s, RuntimeState::Stopped | RuntimeState::Failed(_)) {
                false
            } else {
                *s = RuntimeState::Stopping;
                true
            }
        });
        // The SDK ignores stdin EOF, so there is no way to ask it to exit;
        // let open sessions finish, then the supervisor kills the child.
        let deadline = Instant::now() + shared.options.stop_grace;
        while !shared.sessions.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shared.cancel.cancel();
        let mut rx = shared.state.subscribe();
        let _ = rx
            .wait_for(|s| matches!(s, RuntimeState::Stopped | RuntimeState::Failed(_)))
            .await;
    }
}

/// How one child's life ended.
struct Exit {
    was_ready: bool,
    ran_for: Duration,
    reason: String,
    /// Stopped by the idle check, not by a fault.
    idle: bool,
}

/// Why a child is started, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartCause {
    /// The launch of an install or of a daemon start.
    Launch,
    /// A session arrived while no child ran.
    Demand,
    /// The previous child ended unexpectedly.
    Restart,
}

impl StartCause {
    fn label(self) -> &'static str {
        match self {
            StartCause::Launch => "launch",
            StartCause::Demand => "demand",
            StartCause::Restart => "restart",
        }
    }
}

/// Waits until a caller asks for a start; false when cancelled first.
async fn wait_for_demand(shared: &Shared) -> bool {
    loop {
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a request made between
        // the two still wakes this wait.
        notified.as_mut().enable();
        if shared.take_wanted() {
            return true;
        }
        tokio::select! {
            _ = notified => {}
            _ = shared.cancel.cancelled() => return false,
        }
    }
}

/// Owns successive children of one plugin until cancelled. Without `first`
/// it starts dormant: no child until a session asks for one.
async fn supervise(
    shared: Arc<Shared>,
    process: ProcessSpec,
    permits: Arc<Semaphore>,
    first: Option<oneshot::Sender<Result<(), RuntimeError>>>,
) {
    let mut first = first;
    let mut dormant = first.is_none();
    let mut backoff = shared.options.backoff_initial;
    loop {
        let cause = if dormant {
            if !wait_for_demand(&shared).await {
                break;
            }
            shared.state.send_replace(RuntimeState::Starting);
            StartCause::Demand
        } else if first.is_some() {
            StartCause::Launch
        } else {
            StartCause::Restart
        };
        let asked = Instant::now();
        let permit = tokio::select! {
            p = acquire(&permits) => p.ok(),
            _ = shared.cancel.cancelled() => None,
        };
        let Some(permit) = permit else { break };
        let exit = run_child(&shared, &process, permit, &mut first, cause, asked).await;
        let was_dormant = std::mem::replace(&mut dormant, false);
        if exit.idle {
            // The idle check already took the writer and announced Idle.
            shared.set_pid(None);
            dormant = true;
            backoff = shared.options.backoff_initial;
            continue;
        }
        let failed_on_demand = was_dormant && !exit.was_ready;
        if !shared.cancel.is_cancelled() && first.is_none() && !failed_on_demand {
            // Announced before the writer goes, so callers wait for the new
            // process instead of picking up the dead one's writer.
            shared.state.send_replace(RuntimeState::Restarting);
        }
        shared.set_writer(None);
        shared.set_pid(None);
        shared.sessions.fail_all(|| RuntimeError::ConnectionClosed);
        if shared.cancel.is_cancelled() {
            break;
        }
        if let Some(first) = first.take() {
            tracing::error!(plugin = %shared.identity, "launch failed: {}", exit.reason);
            shared
                .state
                .send_replace(RuntimeState::Failed(exit.reason.clone()));
            let _ = first.send(Err(RuntimeError::Launch(exit.reason)));
            return;
        }
        if failed_on_demand {
            // The callers waiting on this start get its reason; the next
            // session tries again, after the backoff.
            tracing::error!(plugin = %shared.identity, "start on demand failed: {}", exit.reason);
            shared.take_wanted();
            *shared
                .last_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = exit.reason;
            shared.failed_starts.fetch_add(1, Ordering::SeqCst);
            shared.state.send_replace(RuntimeState::Idle);
            dormant = true;
        } else {
            if exit.was_ready && exit.ran_for >= HEALTHY_RUN {
                backoff = shared.options.backoff_initial;
            }
            tracing::warn!(
                plugin = %shared.identity,
                delay_ms = backoff.as_millis() as u64,
                "plugin process ended ({}); restarting",
                exit.reason
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.cancel.cancelled() => break,
        }
        backoff = (backoff * 2).min(shared.options.backoff_max);
    }
    if let Some(first) = first.take() {
        let _ = first.send(Err(RuntimeError::Launch("stopped before ready".into())));
    }
    shared.state.send_replace(RuntimeState::Stopped);
}

fn spawn_child(process: &ProcessSpec) -> std::io::Result<Child> {
    let mut cmd = match &process.jail {
        Some(jail) => {
            let mut jail = jail.clone();
            jail.env.extend(process.env.iter().cloned());
            jail.command(&process.program, &process.args, &process.working_dir)
        }
        None => {
            let mut cmd = Command::new(&process.program);
            cmd.args(&process.args)
                .current_dir(&process.working_dir)
                .env_clear()
                .env("PATH", SAFE_PATH)
                .env("INSTALL_METHOD", "local")
                .envs(process.env.iter().map(|(k, v)| (k, v)))
                .process_group(0);
            cmd
        }
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// Runs one child until it dies, goes silent, or the runtime is cancelled.
async fn run_child(
    shared: &Arc<Shared>,
    process: &ProcessSpec,
    permit: OwnedSemaphorePermit,
    first: &mut Option<oneshot::Sender<Result<(), RuntimeError>>>,
    cause: StartCause,
    asked: Instant,
) -> Exit {
    let started = Instant::now();
    let id = &shared.identity;
    if let Some(expected) = &process.code_checksum {
        let (dir, expected) = (process.working_dir.clone(), expected.clone());
        let checked = tokio::task::spawn_blocking(move || code::verify(&dir, &expected)).await;
        let failure = match checked {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("the check stopped: {e}")),
        };
        if let Some(why) = failure {
            tracing::error!(plugin = %id, dir = %process.working_dir.display(), "refusing to run a modified code folder: {why}");
            return Exit {
                was_ready: false,
                ran_for: Duration::ZERO,
                reason: format!("the plugin's code folder does not match its package: {why}"),
                idle: false,
            };
        }
    }
    let mut child = match spawn_child(process) {
        Ok(child) => child,
        Err(e) => {
            return Exit {
                was_ready: false,
                ran_for: Duration::ZERO,
                reason: format!("cannot run {}: {e}", process.program.display()),
                idle: false,
            }
        }
    };
    shared.set_pid(child.id());
    shared.starts.fetch_add(1, Ordering::SeqCst);
    let _process = crate::metrics::ProcessGuard::new();
    let mut idle = false;
    let idle_timeout = shared.options.idle_timeout;
    let mut permit = Some(permit);
    let max_line = shared.options.max_line;
    let mut stdout = FramedRead::new(
        child.stdout.take().expect("piped"),
        LineCodec::new(max_line),
    );
    let mut stderr = FramedRead::new(
        child.stderr.take().expect("piped"),
        LineCodec::new(max_line),
    );
    let mut stdin = FramedWrite::new(child.stdin.take().expect("piped"), LineCodec::new(max_line));
    let (write_tx, mut write_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let mut stderr_tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL);
    let mut stderr_open = true;
    let mut ready = false;
    let mut last_active = Instant::now();
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    let silence_limit = shared.options.heartbeat_timeout;

    let reason = loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break "stopped".to_owned(),
            frame = stdout.next() => {
                last_active = Instant::now();
                match frame {
                    None => break "stdout closed".to_owned(),
                    Some(Err(e)) => break format!("reading stdout failed: {e}"),
                    // The reference ends a plugin whose line overflows its
                    // buffer; the rest of that message is lost anyway, and the
                    // session it belonged to can never complete.
                    Some(Ok(Err(too_long))) => break format!("plugin wrote a {too_long}"),
                    Some(Ok(Ok(line))) => match PluginEvent::parse(&line) {
                        Ok(PluginEvent::Heartbeat) if !ready => {
                            ready = true;
                            permit.take();
                            shared.set_writer(Some(write_tx.clone()));
                            shared.state.send_replace(RuntimeState::Ready);
                            let took = asked.elapsed();
                            crate::metrics::record_plugin_start(cause.label(), took);
                            tracing::info!(
                                plugin = %id,
                                pid = ?child.id(),
                                cause = cause.label(),
                                start_ms = took.as_millis() as u64,
                                "plugin ready"
                            );
                            if let Some(first) = first.take() {
                                let _ = first.send(Ok(()));
                            }
                        }
                        Ok(PluginEvent::Heartbeat) | Ok(PluginEvent::Other) => {}
                        Ok(PluginEvent::Log(log)) => {
                            tracing::info!(plugin = %id, level = %log.level, "{}", log.message);
                        }
                        Ok(PluginEvent::Error(err)) => {
                            tracing::warn!(plugin = %id, "plugin error event: {err}");
                        }
                        Ok(PluginEvent::Session { session_id, message }) => {
                            // A slow reader holds this task back (backpressure
                            // on the plugin) but never past a stop request.
                            let routed = tokio::select! {
                                routed = shared.sessions.route(&session_id, message) => routed,
                                _ = shared.cancel.cancelled() => break "stopped".to_owned(),
                            };
                            if !routed {
                                tracing::debug!(plugin = %id, %session_id, "message for a closed session dropped");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(plugin = %id, "unexpected plugin output ({e}): {}", preview(&line));
                        }
                    },
                }
            }
            line = stderr.next(), if stderr_open => match line {
                None | Some(Err(_)) => stderr_open = false,
                Some(Ok(line)) => {
                    last_active = Instant::now();
                    let text = match line {
                        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        Err(too_long) => format!("[{too_long}]"),
                    };
                    tracing::warn!(plugin = %id, "stderr: {text}");
                    if stderr_tail.len() == STDERR_TAIL {
                        stderr_tail.pop_front();
                    }
                    stderr_tail.push_back(text);
                }
            },
            Some(line) = write_rx.recv() => {
                if let Err(e) = stdin.send(line).await {
                    break format!("writing stdin failed: {e}");
                }
            }
            _ = tick.tick() => {
                if !ready && started.elapsed() >= silence_limit {
                    break format!("no heartbeat within {} s", silence_limit.as_secs());
                }
                if ready && last_active.elapsed() >= silence_limit {
                    break format!("no output for {} s", silence_limit.as_secs());
                }
                if let Some(limit) = idle_timeout.filter(|_| ready) {
                    if shared.stop_if_idle(limit) {
                        idle = true;
                        tracing::info!(plugin = %id, pid = ?child.id(), idle_s = limit.as_secs(), "stopping the plugin: no session for the idle timeout");
                        break "idle".to_owned();
                    }
                }
            }
        }
    };

    // The child is killed explicitly: the SDK does not exit on stdin EOF.
    drop(stdin);
    let pid = child.id();
    let _ = child.start_kill();
    let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => "did not exit after kill".to_owned(),
    };
    // What the plugin started (a child that ignores stdin, a daemon it
    // forked) goes with it.
    match &process.jail {
        Some(jail) => jail.kill_leftovers(pid).await,
        None => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    // Reading the rest of stderr explains why a child died before its
    // first heartbeat (an import error, a bad manifest…).
    if !ready {
        while let Ok(Some(Ok(Ok(line)))) =
            tokio::time::timeout(Duration::from_millis(200), stderr.next()).await
        {
            if stderr_tail.len() == STDERR_TAIL {
                stderr_tail.pop_front();
            }
            stderr_tail.push_back(String::from_utf8_lossy(&line).into_owned());
        }
    }
    crate::metrics::record_plugin_stop(if idle {
        "idle"
    } else if shared.cancel.is_cancelled() {
        "requested"
    } else {
        "ended"
    });
    let memory_note = memory_breach(&stderr_tail, process.jail.as_ref());
    let mut reason = format!("{reason}; process {status}{memory_note}");
    if !ready && !stderr_tail.is_empty() {
        reason.push_str("; last stderr lines:\n");
        reason.push_str(&Vec::from(stderr_tail).join("\n"));
    }
    Exit {
        was_ready: ready,
        ran_for: started.elapsed(),
        reason,
        idle,
    }
}

/// A note for the exit reason when the plugin died of its memory limit:
/// with RLIMIT_AS an allocation past it fails, and Python reports a
/// MemoryError on stderr.
fn memory_breach(stderr_tail: &VecDeque<String>, jail: Option<&PluginJail>) -> String {
    let Some(limit) = jail.and_then(|j| j.address_space) else {
        return String::new();
    };
    if stderr_tail.iter().any(|l| l.contains("MemoryError")) {
        format!(
            " (memory limit reached: address space {} MiB, from resource.memory)",
            limit >> 20
        )
    } else {
        String::new()
    }
}

/// The start of an unexpected line, for the log.
fn preview(line: &[u8]) -> String {
    const MAX: usize = 512;
    let text = String::from_utf8_lossy(&line[..line.len().min(MAX)]);
    if line.len() > MAX {
        format!("{text}… ({} bytes)", line.len())
    } else {
        text.into_owned()
    }
}
