//! Settings of the bootstrap, read once at start from the process
//! environment, the exec-wrapper command line and the artifact's
//! `plugind-artifact.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the artifact description the packager writes at the zip root.
pub const ARTIFACT_FILE: &str = "plugind-artifact.json";
/// Folder of the Python dependencies inside the task root.
pub const DEPS_DIR: &str = "deps";
/// Longest line accepted from the plugin (PROTOCOL.md §2).
pub const MAX_LINE: usize = 5 * 1024 * 1024;

/// Why the bootstrap cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds something that is not a number of seconds.
    #[error("{name} must be a number of seconds, got {value:?}")]
    BadSeconds { name: &'static str, value: String },
    /// `plugind-artifact.json` exists but cannot be read.
    #[error("cannot read {path}: {reason}")]
    Artifact { path: PathBuf, reason: String },
}

/// How the plugin child is started and supervised.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The Python interpreter that runs the plugin.
    pub python: PathBuf,
    /// The module run with `python -m` (the manifest's `meta.runner.entrypoint`).
    pub entrypoint: String,
    /// The folder holding the plugin files (the working directory of the child).
    pub task_root: PathBuf,
    /// Longest wait for the plugin's first heartbeat.
    pub startup_timeout: Duration,
    /// Longest run of one invocation when the payload names no limit.
    pub execution_timeout: Duration,
}

/// The fields of `plugind-artifact.json` the bootstrap needs.
#[derive(Debug, serde::Deserialize)]
struct ArtifactInfo {
    entrypoint: String,
}

impl RunnerConfig {
    /// Reads the configuration.
    ///
    /// `args` is the command line after the program name. When Lambda starts
    /// the bootstrap as `AWS_LAMBDA_EXEC_WRAPPER`, the arguments are the
    /// managed runtime's own start command, whose first word is the runtime's
    /// Python interpreter; that interpreter then runs the plugin.
    pub fn load(
        env: impl Fn(&str) -> Option<String>,
        args: &[String],
    ) -> Result<Self, ConfigError> {
        let task_root = env("LAMBDA_TASK_ROOT")
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/var/task"));
        let python = env("PLUGIN_RUNNER_PYTHON")
            .map(PathBuf::from)
            .or_else(|| python_from_wrapper_args(args))
            .unwrap_or_else(default_python);
        let entrypoint = match env("PLUGIN_RUNNER_ENTRYPOINT") {
            Some(e) => e,
            None => read_entrypoint(&task_root)?,
        };
        Ok(Self {
            python,
            entrypoint,
            task_root,
            startup_timeout: seconds(&env, "PLUGIN_RUNNER_STARTUP_TIMEOUT", 120)?,
            execution_timeout: seconds(&env, "PLUGIN_MAX_EXECUTION_TIMEOUT", 600)?,
        })
    }

    /// `<task root>/deps`, put on the child's PYTHONPATH.
    pub fn deps_dir(&self) -> PathBuf {
        self.task_root.join(DEPS_DIR)
    }
}

fn seconds(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    match env(name) {
        None => Ok(Duration::from_secs(default)),
        Some(value) => value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or(ConfigError::BadSeconds { name, value }),
    }
}

/// The interpreter named by an exec-wrapper command line, if its first word
/// looks like one (`/var/lang/bin/python3.12 …`).
fn python_from_wrapper_args(args: &[String]) -> Option<PathBuf> {
    let first = Path::new(args.first()?);
    let name = first.file_name()?.to_str()?;
    name.starts_with("python").then(|| first.to_path_buf())
}

/// The managed runtime's interpreter when it exists, else `python3` on PATH.
fn default_python() -> PathBuf {
    let managed = Path::new("/var/lang/bin/python3");
    if managed.exists() {
        managed.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// The entry point from `plugind-artifact.json`, or `main` (the SDK
/// templates' default) when the file is absent.
fn read_entrypoint(task_root: &Path) -> Result<String, ConfigError> {
    let path = task_root.join(ARTIFACT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("main".into()),
        Err(e) => {
            return Err(ConfigError::Artifact {
                path,
                reason: e.to_string(),
            })
        }
    };
    let info: ArtifactInfo = serde_json::from_str(&text).map_err(|e| ConfigError::Artifact {
        path,
        reason: e.to_string(),
    })?;
    Ok(info.entrypoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn wrapper_arguments_name_the_interpreter() {
        let dir = tempfile_dir();
        let root = dir.to_str().unwrap().to_string();
        let cfg = RunnerConfig::load(
            env_of(&[("LAMBDA_TASK_ROOT", &root)]),
            &[
                "/var/lang/bin/python3.12".into(),
                "-u".into(),
                "/var/runtime/bootstrap.py".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.python, PathBuf::from("/var/lang/bin/python3.12"));
        assert_eq!(cfg.entrypoint, "main");
        assert_eq!(cfg.execution_timeout, Duration::from_secs(600));
        assert_eq!(cfg.deps_dir(), dir.join("deps"));
    }

    #[test]
    fn artifact_file_names_the_entrypoint_and_env_wins() {
        let dir = tempfile_dir();
        std::fs::write(
            dir.join(ARTIFACT_FILE),
            r#"{"entrypoint":"plugin_main","arch":"x86_64"}"#,
        )
        .unwrap();
        let root = dir.to_str().unwrap().to_string();
        let cfg = RunnerConfig::load(
            env_of(&[
                ("LAMBDA_TASK_ROOT", &root),
                ("PLUGIN_MAX_EXECUTION_TIMEOUT", "2.5"),
            ]),
            &["/opt/bin/bootstrap".into()],
        )
        .unwrap();
        assert_eq!(cfg.entrypoint, "plugin_main");
        assert_eq!(cfg.execution_timeout, Duration::from_millis(2500));
        assert_ne!(cfg.python, PathBuf::from("/opt/bin/bootstrap"));
        let cfg = RunnerConfig::load(
            env_of(&[
                ("LAMBDA_TASK_ROOT", &root),
                ("PLUGIN_RUNNER_ENTRYPOINT", "other"),
                ("PLUGIN_RUNNER_PYTHON", "/usr/bin/python3.12"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(cfg.entrypoint, "other");
        assert_eq!(cfg.python, PathBuf::from("/usr/bin/python3.12"));
    }

    #[test]
    fn bad_timeouts_are_refused() {
        let err = RunnerConfig::load(
            env_of(&[
                ("PLUGIN_RUNNER_ENTRYPOINT", "main"),
                ("PLUGIN_MAX_EXECUTION_TIMEOUT", "soon"),
            ]),
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("PLUGIN_MAX_EXECUTION_TIMEOUT"),
            "{err}"
        );
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "plugin-runner-config-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
}
