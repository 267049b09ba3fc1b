//! The plugin host: one task owns the plugin child for the life of the
//! execution environment, runs one invocation at a time, relays the
//! session's lines as they come, and replaces the child after it dies or
//! hangs.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use crate::backwards;
use crate::config::{RunnerConfig, MAX_LINE};
use crate::protocol::{classify, error_line, PluginLine, SessionRequest};

/// Lines queued towards the plugin's stdin.
const STDIN_QUEUE: usize = 64;
/// How long a killed child may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// One invocation handed to the host.
pub struct Job {
    /// The parsed payload.
    pub request: SessionRequest,
    /// When the invocation must end at the latest.
    pub deadline: Instant,
    /// Receives the session's lines, each ending in `\n`.
    pub out: mpsc::Sender<Bytes>,
}

/// The cheap handle the Lambda handler holds.
#[derive(Clone)]
pub struct HostHandle {
    jobs: mpsc::Sender<Job>,
    started: tokio::sync::watch::Receiver<bool>,
}

/// Why a job could not be handed over.
#[derive(Debug, thiserror::Error)]
#[error("the plugin host has stopped")]
pub struct HostStopped;

impl HostHandle {
    /// Queues one invocation.
    pub async fn submit(&self, job: Job) -> Result<(), HostStopped> {
        self.jobs.send(job).await.map_err(|_| HostStopped)
    }

    /// Resolves once the start-up attempt made by `start` is over (ready or
    /// failed; a failed start is retried by the first invocation).
    pub async fn started(&self) {
        let mut started = self.started.clone();
        let _ = started.wait_for(|s| *s).await;
    }
}

/// Starts the host task. Nothing is spawned until the first invocation
/// unless `prestart` asks for it (a warm child before the first request).
pub fn start(config: RunnerConfig, http: reqwest::Client, prestart: bool) -> HostHandle {
    let (jobs, rx) = mpsc::channel(1);
    let (started_tx, started) = tokio::sync::watch::channel(!prestart);
    let host = Host {
        config: Arc::new(config),
        http,
        child: None,
        jobs: rx,
    };
    tokio::spawn(host.run(prestart, started_tx));
    HostHandle { jobs, started }
}

struct Host {
    config: Arc<RunnerConfig>,
    http: reqwest::Client,
    child: Option<Running>,
    jobs: mpsc::Receiver<Job>,
}

/// A started plugin.
struct Running {
    child: Child,
    pid: u32,
    stdin: mpsc::Sender<Bytes>,
    stdout: FramedRead<ChildStdout, LinesCodec>,
    stderr: Option<FramedRead<ChildStderr, LinesCodec>>,
}

/// Something the child did.
enum ChildEvent {
    Stdout(String),
    Stderr(String),
    /// stdout closed: the child is gone or going.
    Closed,
}

impl Running {
    async fn next(&mut self) -> ChildEvent {
        loop {
            let stderr = async {
                match self.stderr.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                line = self.stdout.next() => match line {
                    Some(Ok(line)) => return ChildEvent::Stdout(line),
                    Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                        tracing::warn!(pid = self.pid, "plugin wrote a line over {MAX_LINE} bytes; dropped");
                    }
                    Some(Err(e)) => {
                        tracing::warn!(pid = self.pid, "reading plugin stdout: {e}");
                        return ChildEvent::Closed;
                    }
                    None => return ChildEvent::Closed,
                },
                line = stderr => match line {
                    Some(Ok(line)) => return ChildEvent::Stderr(line),
                    Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {}
                    Some(Err(_)) | None => self.stderr = None,
                },
            }
        }
    }

    /// Kills the child and reaps it.
    async fn stop(mut self) -> Option<ExitStatus> {
        let _ = self.child.start_kill();
        tokio::time::timeout(REAP_TIMEOUT, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Waits briefly for the exit status of a child whose stdout closed.
    async fn exit_status(mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => {
                let _ = self.child.start_kill();
                let _ = tokio::time::timeout(REAP_TIMEOUT, self.child.wait()).await;
                "stdout closed".into()
            }
        }
    }
}

/// How one invocation ended.
enum Outcome {
    /// The session ended (or the job was abandoned); the child stays.
    Done,
    /// The child died during the session.
    Died,
    /// The deadline passed.
    TimedOut,
}

impl Host {
    async fn run(mut self, prestart: bool, started: tokio::sync::watch::Sender<bool>) {
        if prestart {
            let deadline = Instant::now() + self.config.startup_timeout;
            match self.spawn_ready(deadline).await {
                Ok(running) => self.child = Some(running),
                Err(e) => tracing::warn!("plugin did not start ahead of the first invocation: {e}"),
            }
            let _ = started.send(true);
        }
        loop {
            let idle = async {
                match self.child.as_mut() {
                    Some(running) => running.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                job = self.jobs.recv() => match job {
                    Some(job) => self.run_job(job).await,
                    None => break,
                },
                event = idle => self.idle_event(event).await,
            }
        }
        if let Some(running) = self.child.take() {
            running.stop().await;
        }
    }

    /// Output between invocations: logged; a closed stdout drops the child.
    async fn idle_event(&mut self, event: ChildEvent) {
        match event {
            ChildEvent::Stdout(line) => log_line(&line, ""),
            ChildEvent::Stderr(line) => tracing::info!(target: "plugin", "{line}"),
            ChildEvent::Closed => {
                if let Some(running) = self.child.take() {
                    let pid = running.pid;
                    let status = running.exit_status().await;
                    tracing::warn!(pid, "plugin exited between invocations ({status})");
                }
            }
        }
    }

    async fn run_job(&mut self, job: Job) {
        let Job {
            request,
            deadline,
            out,
        } = job;
        let request = Arc::new(request);
        let sid = request.session_id.clone();
        if self.child.is_none() {
            let start_by = deadline.min(Instant::now() + self.config.startup_timeout);
            match self.spawn_ready(start_by).await {
                Ok(running) => self.child = Some(running),
                Err(e) => {
                    tracing::error!(session_id = %sid, "{e}");
                    let _ = out.send(error_line(&sid, &e.to_string()).into()).await;
                    return;
                }
            }
        }
        let outcome = self.relay(&request, deadline, &out).await;
        match outcome {
            Outcome::Done => {}
            Outcome::Died => {
                let running = self.child.take().expect("a child ran the job");
                let pid = running.pid;
                let status = running.exit_status().await;
                tracing::error!(session_id = %sid, pid, "plugin exited during the invocation ({status})");
                let message = format!("plugin process exited unexpectedly ({status})");
                let _ = out.send(error_line(&sid, &message).into()).await;
            }
            Outcome::TimedOut => {
                let running = self.child.take().expect("a child ran the job");
                let pid = running.pid;
                running.stop().await;
                tracing::error!(session_id = %sid, pid, "invocation timed out; plugin killed");
                let _ = out.send(error_line(&sid, "killed by timeout").into()).await;
            }
        }
    }

    /// Writes the request and relays the session until it ends.
    async fn relay(
        &mut self,
        request: &Arc<SessionRequest>,
        deadline: Instant,
        out: &mpsc::Sender<Bytes>,
    ) -> Outcome {
        let running = self.child.as_mut().expect("started above");
        let sid = request.session_id.as_str();
        if running
            .stdin
            .send(Bytes::from(request.line.clone()))
            .await
            .is_err()
        {
            return Outcome::Died;
        }
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        loop {
            let event = tokio::select! {
                event = running.next() => event,
                _ = &mut sleep => return Outcome::TimedOut,
            };
            match event {
                ChildEvent::Stdout(line) => match classify(&line, sid) {
                    PluginLine::Relay { last } => {
                        let mut bytes = line.into_bytes();
                        bytes.push(b'\n');
                        // A closed receiver means the response stream is gone;
                        // the session still runs to its end so the child
                        // stays in step.
                        let _ = out.send(bytes.into()).await;
                        if last {
                            return Outcome::Done;
                        }
                    }
                    PluginLine::Invoke {
                        backwards_request_id,
                    } => {
                        tokio::spawn(backwards::bridge(
                            self.http.clone(),
                            request.clone(),
                            line,
                            backwards_request_id,
                            running.stdin.clone(),
                        ));
                    }
                    _ => log_line(&line, sid),
                },
                ChildEvent::Stderr(line) => {
                    tracing::info!(target: "plugin", session_id = sid, "{line}")
                }
                ChildEvent::Closed => return Outcome::Died,
            }
        }
    }

    /// Spawns the plugin and waits for its first heartbeat.
    async fn spawn_ready(&self, deadline: Instant) -> Result<Running, StartError> {
        let started = Instant::now();
        let mut running = spawn(&self.config)?;
        let pid = running.pid;
        tracing::info!(pid, "plugin started");
        let ready = async {
            loop {
                match running.next().await {
                    ChildEvent::Stdout(line) => match classify(&line, "") {
                        PluginLine::Heartbeat => return true,
                        _ => log_line(&line, ""),
                    },
                    ChildEvent::Stderr(line) => tracing::info!(target: "plugin", "{line}"),
                    ChildEvent::Closed => return false,
                }
            }
        };
        match tokio::time::timeout_at(deadline, ready).await {
            Ok(true) => {
                tracing::info!(
                    pid,
                    ready_ms = started.elapsed().as_millis() as u64,
                    "plugin ready"
                );
                Ok(running)
            }
            Ok(false) => {
                let status = running.exit_status().await;
                Err(StartError::Exited(status))
            }
            Err(_) => {
                running.stop().await;
                Err(StartError::NotReady(started.elapsed()))
            }
        }
    }
}

/// Why the plugin could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The interpreter could not be run.
    #[error("cannot start the plugin with {python}: {source}")]
    Spawn {
        python: String,
        #[source]
        source: std::io::Error,
    },
    /// The child exited before its first heartbeat.
    #[error("plugin process exited before it was ready ({0})")]
    Exited(String),
    /// No heartbeat in time.
    #[error("plugin not ready after {0:?}; killed")]
    NotReady(Duration),
}

/// Names the plugin process gets from the function's environment. The
/// function's role credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
/// AWS_SESSION_TOKEN), the Runtime API address and everything else of
/// Lambda's stay with the bootstrap: plugin code is third-party code.
const CHILD_ENV: &[&str] = &[
    // Lambda's own PATH and loader path find /var/lang/bin/python and its
    // libpython.
    "PATH",
    "LD_LIBRARY_PATH",
    "LANG",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// The plugin's environment out of the bootstrap's `vars`: [`CHILD_ENV`],
/// the names PLUGIN_ENV_PASSTHROUGH lists, and /tmp (the one writable
/// folder on Lambda) as HOME and TMPDIR.
fn child_env<I>(vars: I) -> Vec<(String, String)>
where
    I: IntoIterator<Item = (String, String)>,
{
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    let passthrough: Vec<String> = vars
        .iter()
        .find(|(k, _)| k == "PLUGIN_ENV_PASSTHROUGH")
        .map(|(_, v)| v.split(',').map(|n| n.trim().to_owned()).collect())
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| {
            CHILD_ENV.contains(&k.as_str()) || k.starts_with("LC_") || passthrough.contains(k)
        })
        .collect();
    env.push(("HOME".into(), "/tmp".into()));
    env.push(("TMPDIR".into(), "/tmp".into()));
    env
}

fn spawn(config: &RunnerConfig) -> Result<Running, StartError> {
    let deps = config.deps_dir();
    let pythonpath = match std::env::var_os("PYTHONPATH") {
        Some(existing) if !existing.is_empty() => {
            let mut paths = vec![deps];
            paths.extend(std::env::split_paths(&existing));
            std::env::join_paths(paths).unwrap_or_default()
        }
        _ => deps.into_os_string(),
    };
    let mut child = Command::new(&config.python)
        .arg("-m")
        .arg(&config.entrypoint)
        .current_dir(&config.task_root)
        .env_clear()
        .envs(child_env(std::env::vars()))
        .env("INSTALL_METHOD", "local")
        .env("PYTHONPATH", pythonpath)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| StartError::Spawn {
            python: config.python.display().to_string(),
            source,
        })?;
    let pid = child.id().unwrap_or_default();
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
    tokio::spawn(write_stdin(stdin, rx, pid));
    Ok(Running {
        child,
        pid,
        stdin: tx,
        stdout: FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_LINE)),
        stderr: Some(FramedRead::new(
            stderr,
            LinesCodec::new_with_max_length(MAX_LINE),
        )),
    })
}

/// Owns the child's stdin: each queued line is written and flushed at once.
async fn write_stdin(mut stdin: ChildStdin, mut lines: mpsc::Receiver<Bytes>, pid: u32) {
    while let Some(line) = lines.recv().await {
        if let Err(e) = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        }
        .await
        {
            tracing::warn!(pid, "writing to the plugin: {e}");
            break;
        }
    }
}

/// Logs a plugin line that is not relayed.
fn log_line(line: &str, session_id: &str) {
    match classify(line, session_id) {
        PluginLine::Heartbeat => tracing::trace!("plugin heartbeat"),
        PluginLine::Log { level, message } => {
            tracing::info!(target: "plugin", level = %level, "{message}")
        }
        PluginLine::PluginError(e) => tracing::warn!(target: "plugin", "plugin error: {e}"),
        _ if line.trim().is_empty() => {}
        _ => tracing::debug!(target: "plugin", "{}", truncate(line, 512)),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_gets_no_role_credentials() {
        let vars = [
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "session"),
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("PATH", "/var/lang/bin:/usr/bin"),
            ("LD_LIBRARY_PATH", "/var/lang/lib"),
            ("PLUGIN_ENV_PASSTHROUGH", "MY_SETTING"),
            ("MY_SETTING", "on"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let env: std::collections::BTreeMap<_, _> = child_env(vars).into_iter().collect();
        assert!(!env.keys().any(|k| k.starts_with("AWS_")), "{env:?}");
        assert_eq!(env["PATH"], "/var/lang/bin:/usr/bin");
        assert_eq!(env["LD_LIBRARY_PATH"], "/var/lang/lib");
        assert_eq!(env["MY_SETTING"], "on");
        assert_eq!(env["HOME"], "/tmp");
    }
}
