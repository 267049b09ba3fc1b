//! Python environments for local plugins, built with uv: one `.venv` inside
//! each plugin's working folder, a shared uv cache so equal dependencies
//! install from disk, and a marker file written last so a half-built
//! environment is rebuilt, never reused
//! (reference: `internal/core/local_runtime/setup_python_environment.go`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::process::Command;
use tokio_util::codec::FramedRead;

use super::codec::LineCodec;
use crate::settings::Settings;

/// The environment folder, relative to the plugin's working folder.
pub const VENV_DIR: &str = ".venv";
/// Written when the environment is complete. Same path as the reference
/// daemon's, so an environment it built is reused as is.
pub const MARKER: &str = ".venv/dify/plugin.json";
/// The daemon's own tools (a provisioned uv, interpreters uv installed),
/// relative to the working path, beside the `.uv-cache`.
pub const TOOLS_DIR: &str = ".tools";
/// How many of uv's last output lines an error carries.
const TAIL_LINES: usize = 20;
/// Longest output line kept from a build command.
const MAX_OUTPUT_LINE: usize = 64 * 1024;

/// Why an environment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// No uv binary could be found or run.
    #[error("uv not found: {0}")]
    UvNotFound(String),
    /// No uv was configured or found, and installing one failed.
    #[error("uv not found, and installing it into {dir} failed (set UV_PATH, or put uv on PATH, or let pip reach a package index: PIP_MIRROR_URL, HTTPS_PROXY, SSL_CERT_FILE or PIP_CERT): {reason}")]
    UvInstall { dir: PathBuf, reason: String },
    /// Why the uv installation stopped, before it is reported as
    /// [`EnvError::UvInstall`].
    #[error("{0}")]
    Provision(String),
    /// No interpreter of the wanted version, and uv could not install one.
    #[error("no Python {version} found, and `uv python install {version}` failed (set PYTHON_INTERPRETER_PATH to a Python {version} interpreter, or UV_PYTHON_INSTALL_MIRROR to a reachable mirror of uv's Python builds): {reason}")]
    NoInterpreter { version: String, reason: String },
    /// The plugin has neither requirements.txt nor pyproject.toml.
    #[error("neither requirements.txt nor pyproject.toml in {0}")]
    NoDependencyFile(PathBuf),
    /// A build command exited with failure.
    #[error("{step} failed ({status}); last output:\n{tail}")]
    Command {
        step: &'static str,
        status: String,
        tail: String,
    },
    /// A build command printed nothing for too long and was killed.
    #[error("{step} killed after {secs} s without output; last output:\n{tail}")]
    Inactive {
        step: &'static str,
        secs: u64,
        tail: String,
    },
    /// Plugins run as other uids and cannot run this interpreter.
    #[error("plugins cannot run the interpreter {0}: it lies in a folder only the daemon's uid may enter; set PYTHON_INTERPRETER_PATH to one under a world-readable prefix (/usr, /opt…)")]
    Unreachable(PathBuf),
    /// A filesystem or spawn failure.
    #[error("{step}: {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The stage an environment build is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvPhase {
    /// Looking for uv and an interpreter.
    Preparing,
    /// Installing uv, none being configured or found.
    InstallingUv,
    /// `uv python install`, no interpreter of the wanted version being found.
    InstallingPython,
    /// `uv venv`.
    CreatingVenv,
    /// `uv pip install` or `uv sync`.
    InstallingDependencies,
    /// `python -m compileall`.
    Compiling,
    /// Done (built or reused).
    Ready,
}

impl EnvPhase {
    /// A short human label, for install task messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::Preparing => "preparing",
            Self::InstallingUv => "installing uv",
            Self::InstallingPython => "installing Python",
            Self::CreatingVenv => "creating virtual environment",
            Self::InstallingDependencies => "installing dependencies",
            Self::Compiling => "compiling",
            Self::Ready => "ready",
        }
    }
}

/// One progress report: the phase, and an output line when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvProgress {
    pub phase: EnvPhase,
    pub line: Option<String>,
}

/// Receives progress while an environment is built.
pub type ProgressFn = Arc<dyn Fn(EnvProgress) + Send + Sync>;

/// A progress receiver that ignores everything.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// What is needed to build environments, taken once from the settings and
/// the process environment.
#[derive(Debug, Clone)]
pub struct PythonEnvConfig {
    /// UV_PATH.
    pub uv_path: Option<PathBuf>,
    /// PYTHON_INTERPRETER_PATH.
    pub python_interpreter_path: Option<PathBuf>,
    /// PIP_MIRROR_URL.
    pub pip_mirror_url: Option<String>,
    /// PIP_EXTRA_ARGS, split on whitespace.
    pub pip_extra_args: Vec<String>,
    /// UV_CACHE_DIR shared by every plugin.
    pub uv_cache_dir: PathBuf,
    /// PYTHON_ENV_INIT_TIMEOUT: longest silence of a build command.
    pub init_timeout: Duration,
    /// Folders searched for `python3.X` and `uv` (the daemon's PATH).
    pub search_path: Vec<PathBuf>,
    /// pyenv root searched for `versions/3.X.*/bin/python3.X`.
    pub pyenv_root: Option<PathBuf>,
    /// The whole environment of the uv/pip build steps (nothing else of the
    /// daemon's is inherited; see `sandbox::env`).
    pub build_env: Vec<(String, String)>,
    /// When plugins run as other uids: where an interpreter they could not
    /// reach (under a private home, say) is copied first.
    pub stage_dir: Option<PathBuf>,
    /// Where uv is installed when none is configured or found, and where
    /// `uv python install` puts interpreters (`<working path>/.tools`);
    /// `None` installs neither.
    pub tools_dir: Option<PathBuf>,
}

impl PythonEnvConfig {
    /// From the settings, plus PATH, PYENV_ROOT and HOME of this process.
    pub fn from_settings(settings: &Settings) -> Self {
        let mut cfg = Self::new(
            settings.uv_path.clone(),
            settings.python_interpreter_path.clone(),
            settings.pip_mirror_url.as_deref(),
            settings.pip_extra_args.as_deref(),
            settings.uv_cache_path(),
            Duration::from_secs(settings.python_env_init_timeout),
        );
        cfg.tools_dir = Some(settings.working_path().join(TOOLS_DIR));
        cfg
    }

    /// From explicit values (an empty mirror URL counts as none; extra
    /// arguments are split on whitespace), plus PATH, PYENV_ROOT and HOME
    /// of this process.
    pub fn new(
        uv_path: Option<PathBuf>,
        python_interpreter_path: Option<PathBuf>,
        pip_mirror_url: Option<&str>,
        pip_extra_args: Option<&str>,
        uv_cache_dir: PathBuf,
        init_timeout: Duration,
    ) -> Self {
        let search_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let pyenv_root = std::env::var_os("PYENV_ROOT")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
        Self {
            uv_path,
            python_interpreter_path,
            pip_mirror_url: pip_mirror_url.filter(|s| !s.is_empty()).map(str::to_owned),
            pip_extra_args: pip_extra_args
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            uv_cache_dir,
            init_timeout,
            search_path,
            pyenv_root,
            build_env: default_build_env(),
            stage_dir: None,
            tools_dir: None,
        }
    }
}

/// The build-step environment when no sandbox settings are given: the
/// allow-list of the daemon's environment, with HOME in the temp folder.
pub fn default_build_env() -> Vec<(String, String)> {
    super::sandbox::EnvPolicy::from_process(&[]).build(&std::env::temp_dir())
}

/// A ready environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnv {
    /// The environment's interpreter, absolute.
    pub python: PathBuf,
    /// The `.venv` folder, absolute.
    pub venv_dir: PathBuf,
    /// True when a complete environment was found and nothing was built.
    pub reused: bool,
}

/// The interpreter's `major.minor` from a manifest's `meta.runner.version`
/// ("3.12", "3.12.1", ">=3.12" all give "3.12").
fn major_minor(version: &str) -> Option<String> {
    let digits: String = version
        .trim()
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = digits.split('.').filter(|p| !p.is_empty());
    let major = parts.next()?;
    let minor = parts.next()?;
    Some(format!("{major}.{minor}"))
}

pub(super) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Lists `python{major.minor}` candidates for the manifest's runner version:
/// first those on the search path, then pyenv installs (newest patch first).
pub fn interpreter_candidates(cfg: &PythonEnvConfig, runner_version: Option<&str>) -> Vec<PathBuf> {
    let Some(mm) = runner_version.and_then(major_minor) else {
        return vec![];
    };
    let name = format!("python{mm}");
    let mut found: Vec<PathBuf> = cfg
        .search_path
        .iter()
        .map(|dir| dir.join(&name))
        .filter(|p| is_executable(p))
        .collect();
    let Some(versions) = cfg.pyenv_root.as_ref().map(|r| r.join("versions")) else {
        return found;
    };
    let Ok(entries) = std::fs::read_dir(versions) else {
        return found;
    };
    let mut pyenv: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let dir = e.file_name().to_string_lossy().into_owned();
            let rest = dir.strip_prefix(&mm)?;
            if !(rest.is_empty() || rest.starts_with('.')) {
                return None;
            }
            let key = dir.split('.').map(|p| p.parse().unwrap_or(0)).collect();
            let python = e.path().join("bin").join(&name);
            is_executable(&python).then_some((key, python))
        })
        .collect();
    pyenv.sort();
    found.extend(pyenv.into_iter().rev().map(|(_, p)| p));
    found
}

/// The first candidate that really runs and reports the wanted version (a
/// pyenv shim on PATH may exist yet refuse to run).
pub async fn find_interpreter(
    cfg: &PythonEnvConfig,
    runner_version: Option<&str>,
) -> Option<PathBuf> {
    let mm = runner_version.and_then(major_minor)?;
    for candidate in interpreter_candidates(cfg, runner_version) {
        if python_version(&candidate).await.as_deref() == Some(mm.as_str()) {
            return Some(candidate);
        }
    }
    None
}

/// The uv binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UvCommand {
    program: PathBuf,
}

impl UvCommand {
    /// The binary.
    pub fn program(&self) -> &Path {
        &self.program
    }

    fn command(&self) -> Command {
        Command::new(&self.program)
    }
}

/// Finds uv: UV_PATH, else `uv` on the search path, else one installed
/// before into the tools folder, else the binary of the `uv` Python package
/// installed for PYTHON_INTERPRETER_PATH (or `python3`). Installs nothing;
/// see [`ensure_uv`].
pub async fn find_uv(cfg: &PythonEnvConfig) -> Result<UvCommand, EnvError> {
    if let Some(path) = &cfg.uv_path {
        if is_executable(path) {
            return Ok(UvCommand {
                program: path.clone(),
            });
        }
        return Err(EnvError::UvNotFound(format!(
            "UV_PATH {} is not an executable file",
            path.display()
        )));
    }
    if let Some(found) = cfg
        .search_path
        .iter()
        .map(|d| d.join("uv"))
        .find(|p| is_executable(p))
    {
        return Ok(UvCommand { program: found });
    }
    if let Some(program) = cfg
        .tools_dir
        .as_deref()
        .and_then(super::provision::provisioned_uv)
    {
        return Ok(UvCommand { program });
    }
    let python = cfg
        .python_interpreter_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("python3"));
    // Ask the uv package where its binary is and run that directly: started
    // as `python -m uv`, uv would install into that interpreter rather than
    // into the plugin's environment.
    let probe = Command::new(&python)
        .args(["-c", "from uv import find_uv_bin; print(find_uv_bin())"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    if let Ok(out) = probe {
        let found = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && is_executable(&found) {
            return Ok(UvCommand { program: found });
        }
    }
    Err(EnvError::UvNotFound(format!(
        "set UV_PATH, put uv on PATH, or install it for {} (`{} -m pip install uv`)",
        python.display(),
        python.display()
    )))
}

/// [`find_uv`], and when it finds none and UV_PATH is unset, a uv installed
/// into the tools folder now (progress as [`EnvPhase::InstallingUv`]).
pub async fn ensure_uv(
    cfg: &PythonEnvConfig,
    progress: &ProgressFn,
) -> Result<UvCommand, EnvError> {
    match (find_uv(cfg).await, &cfg.uv_path, &cfg.tools_dir) {
        (Err(EnvError::UvNotFound(_)), None, Some(tools)) => {
            let program = super::provision::ensure_uv(cfg, tools, progress).await?;
            Ok(UvCommand { program })
        }
        (found, _, _) => found,
    }
}

/// The interpreter a plugin's venv is made with: one of the manifest's
/// version on PATH or under pyenv, else PYTHON_INTERPRETER_PATH when it is
/// that version, else one `uv python install` fetches, else
/// PYTHON_INTERPRETER_PATH whatever its version. Without a runner version:
/// PYTHON_INTERPRETER_PATH or `python3`.
async fn choose_interpreter(
    cfg: &PythonEnvConfig,
    uv: &UvCommand,
    runner_version: Option<&str>,
    progress: &ProgressFn,
) -> Result<OsString, EnvError> {
    if let Some(found) = find_interpreter(cfg, runner_version).await {
        return Ok(found.into());
    }
    let Some(mm) = runner_version.and_then(major_minor) else {
        return Ok(cfg
            .python_interpreter_path
            .clone()
            .map(OsString::from)
            .unwrap_or_else(|| "python3".into()));
    };
    if let Some(path) = &cfg.python_interpreter_path {
        if python_version(path).await.as_deref() == Some(mm.as_str()) {
            return Ok(path.clone().into());
        }
    }
    match install_python(cfg, uv, &mm, progress).await {
        Ok(installed) => Ok(installed.into()),
        Err(reason) => match &cfg.python_interpreter_path {
            Some(path) => {
                tracing::warn!(version = %mm, interpreter = %path.display(), "no Python {mm} and uv could not install one; using PYTHON_INTERPRETER_PATH: {reason}");
                progress(EnvProgress {
                    phase: EnvPhase::InstallingPython,
                    line: Some(format!(
                        "uv could not install Python {mm}; using PYTHON_INTERPRETER_PATH {}",
                        path.display()
                    )),
                });
                Ok(path.clone().into())
            }
            None => Err(EnvError::NoInterpreter {
                version: mm,
                reason,
            }),
        },
    }
}

/// `major.minor` of an interpreter, when it runs.
async fn python_version(python: &Path) -> Option<String> {
    let probe = Command::new(python)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Ok(out)) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        _ => None,
    }
}

/// `uv python install <major.minor>` (into the tools folder when there is
/// one; UV_PYTHON_INSTALL_MIRROR and the proxy and TLS settings come with
/// the build environment), then the installed interpreter's path.
async fn install_python(
    cfg: &PythonEnvConfig,
    uv: &UvCommand,
    mm: &str,
    progress: &ProgressFn,
) -> Result<PathBuf, String> {
    let mut cfg = cfg.clone();
    if let Some(tools) = &cfg.tools_dir {
        let dir = tools.join(super::provision::PYTHON_DIR);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        cfg.build_env.retain(|(k, _)| k != "UV_PYTHON_INSTALL_DIR");
        cfg.build_env.push((
            "UV_PYTHON_INSTALL_DIR".into(),
            dir.to_string_lossy().into_owned(),
        ));
    }
    progress(EnvProgress {
        phase: EnvPhase::InstallingPython,
        line: Some(format!("no Python {mm} found; asking uv to install it")),
    });
    let here = std::env::temp_dir();
    let mut install = uv.command();
    install.args(["python", "install", mm]);
    run_step(
        &cfg,
        &here,
        &here,
        install,
        EnvPhase::InstallingPython,
        "uv python install",
        progress,
    )
    .await
    .map_err(|e| e.to_string())?;
    let found = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink: ProgressFn = {
        let found = Arc::clone(&found);
        Arc::new(move |p: EnvProgress| {
            if let Some(l) = p.line {
                found.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        })
    };
    let mut find = uv.command();
    find.args(["python", "find", "--python-preference", "only-managed", mm]);
    run_step(
        &cfg,
        &here,
        &here,
        find,
        EnvPhase::InstallingPython,
        "uv python find",
        &sink,
    )
    .await
    .map_err(|e| e.to_string())?;
    let lines = found.lock().unwrap_or_else(|e| e.into_inner()).clone();
    lines
        .iter()
        .map(|l| PathBuf::from(l.trim()))
        .find(|p| p.is_absolute() && is_executable(p))
        .ok_or_else(|| {
            format!("uv installed Python {mm} but `uv python find` did not show it: {lines:?}")
        })
}

/// `interpreter`, or a copy of its prefix under `stage` that other uids
/// can run when they cannot reach the original (pyenv under a 0700 /root).
/// The copy leaves out the test suite and site-packages (a venv never sees
/// them) and is reused by every plugin on that interpreter.
async fn reachable_interpreter(
    interpreter: OsString,
    stage: &Path,
    progress: &ProgressFn,
) -> Result<OsString, EnvError> {
    let path = PathBuf::from(&interpreter);
    if !path.is_absolute() || super::sandbox::reachable_by_others(&path) {
        return Ok(interpreter);
    }
    let real = std::fs::canonicalize(&path).map_err(io_err("resolve interpreter", &path))?;
    let (Some(bin), Some(name)) = (real.parent(), real.file_name()) else {
        return Err(EnvError::Unreachable(real));
    };
    let Some(prefix) = bin.parent().filter(|p| p.join("lib").is_dir()) else {
        return Err(EnvError::Unreachable(real));
    };
    use sha2::Digest;
    let tag = hex::encode(&sha2::Sha256::digest(prefix.as_os_str().as_encoded_bytes())[..6]);
    let leaf = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = stage.join(format!("{leaf}-{tag}"));
    let staged = target.join("bin").join(name);
    if target.join(STAGED_MARKER).is_file() {
        return Ok(staged.into());
    }
    progress(EnvProgress {
        phase: EnvPhase::Preparing,
        line: Some(format!(
            "copying the interpreter {} to {} so plugin uids can run it",
            prefix.display(),
            target.display()
        )),
    });
    let (from, to, stage) = (prefix.to_owned(), target.clone(), stage.to_owned());
    tokio::task::spawn_blocking(move || stage_prefix(&from, &to, &stage))
        .await
        .map_err(|e| EnvError::Io {
            step: "copy interpreter",
            path: target.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(io_err("copy interpreter", &target))?;
    if !super::sandbox::reachable_by_others(&staged) {
        return Err(EnvError::Unreachable(staged));
    }
    tracing::info!(from = %prefix.display(), to = %target.display(), "staged an interpreter plugin uids can run");
    Ok(staged.into())
}

/// Written last in a staged interpreter copy.
const STAGED_MARKER: &str = ".plugind-staged";

fn stage_prefix(from: &Path, to: &Path, stage: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(stage)?;
    std::fs::set_permissions(stage, std::fs::Permissions::from_mode(0o755))?;
    let temp = tempfile::Builder::new()
        .prefix(".stage-")
        .tempdir_in(stage)?;
    copy_tree(from, temp.path(), true)?;
    std::fs::write(temp.path().join(STAGED_MARKER), b"")?;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755))?;
    let temp = temp.keep();
    if let Err(e) = std::fs::rename(&temp, to) {
        let _ = std::fs::remove_dir_all(&temp);
        // Another launch staged the same interpreter first.
        if !to.join(STAGED_MARKER).is_file() {
            return Err(e);
        }
    }
    Ok(())
}

/// Copies a folder tree, keeping symbolic links and making everything
/// readable (and folders searchable) by other uids. At the top level of a
/// `lib/pythonX.Y` folder, `test` and `site-packages` are left out
/// (`site-packages` is created empty).
fn copy_tree(from: &Path, to: &Path, top: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    let in_stdlib = from
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
        && from
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "lib");
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        if in_stdlib && (name == "test" || name == "site-packages") {
            if name == "site-packages" {
                std::fs::create_dir_all(&dst)?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
            }
            continue;
        }
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst, false)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)?;
            let mode = entry.metadata()?.permissions().mode() | 0o444;
            let mode = if mode & 0o100 != 0 {
                mode | 0o111
            } else {
                mode
            };
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode & 0o7755))?;
        }
    }
    if !top {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EnvError + 'a {
    move |source| EnvError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

/// True when `dir` holds a complete environment.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(MARKER).is_file() && dir.join(VENV_DIR).join("bin").join("python").exists()
}

/// Makes sure `plugin_dir` has a complete environment, building it when
/// missing or incomplete. `runner_version` is the manifest's
/// `meta.runner.version`.
pub async fn ensure_env(
    cfg: &PythonEnvConfig,
    plugin_dir: &Path,
    runner_version: Option<&str>,
    progress: ProgressFn,
) -> Result<PythonEnv, EnvError> {
    let plugin_dir =
        std::fs::canonicalize(plugin_dir).map_err(io_err("open plugin folder", plugin_dir))?;
    let venv_dir = plugin_dir.join(VENV_DIR);
    let python = venv_dir.join("bin").join("python");
    if is_complete(&plugin_dir) {
        progress(EnvProgress {
            phase: EnvPhase::Ready,
            line: None,
        });
        return Ok(PythonEnv {
            python,
            venv_dir,
            reused: true,
        });
    }
    progress(EnvProgress {
        phase: EnvPhase::Preparing,
        line: None,
    });
    let uv = ensure_uv(cfg, &progress).await?;
    let dependency = detect_dependency_file(cfg, &plugin_dir)?;
    if venv_dir.exists() {
        tracing::warn!(path = %venv_dir.display(), "incomplete Python environment; rebuilding");
        tokio::fs::remove_dir_all(&venv_dir)
            .await
            .map_err(io_err("remove incomplete environment", &venv_dir))?;
    }
    tokio::fs::create_dir_all(&cfg.uv_cache_dir)
        .await
        .map_err(io_err("create uv cache", &cfg.uv_cache_dir))?;

    let interpreter = choose_interpreter(cfg, &uv, runner_version, &progress).await?;

    let interpreter = match &cfg.stage_dir {
        Some(stage) => reachable_interpreter(interpreter, stage, &progress).await?,
        None => interpreter,
    };

    let mut venv = uv.command();
    venv.arg("venv")
        .arg(VENV_DIR)
        .arg("--python")
        .arg(&interpreter);
    run_step(
        cfg,
        &plugin_dir,
        &venv_dir,
        venv,
        EnvPhase::CreatingVenv,
        "uv venv",
        &progress,
    )
    .await?;

    let install = install_command(cfg, &uv, &plugin_dir, dependency);
    run_step(
        cfg,
        &plugin_dir,
        &venv_dir,
        install,
        EnvPhase::InstallingDependencies,
        "dependency installation",
        &progress,
    )
    .await?;

    // The venv's libraries are compiled now, while the venv is writable;
    // the plugin's own code is not: it runs from its verified sources, and
    // bytecode beside them would be code the check does not cover.
    let mut compile = Command::new(&python);
    compile
        .args(["-m", "compileall", "-q", "-j", "0"])
        .arg(venv_dir.join("lib"));
    run_step(
        cfg,
        &plugin_dir,
        &venv_dir,
        compile,
        EnvPhase::Compiling,
        "byte-compilation",
        &progress,
    )
    .await?;

    let marker = plugin_dir.join(MARKER);
    if let Some(parent) = marker.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err("write environment marker", parent))?;
    }
    let stamp = format!(
        "{{\"timestamp\":{}}}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    tokio::fs::write(&marker, stamp)
        .await
        .map_err(io_err("write environment marker", &marker))?;
    progress(EnvProgress {
        phase: EnvPhase::Ready,
        line: None,
    });
    Ok(PythonEnv {
        python,
        venv_dir,
        reused: false,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dependency {
    Requirements,
    Pyproject { locked: bool },
}

fn detect_dependency_file(cfg: &PythonEnvConfig, dir: &Path) -> Result<Dependency, EnvError> {
    let requirements = dir.join("requirements.txt").is_file();
    let pyproject = dir.join("pyproject.toml").is_file();
    // With a mirror, requirements.txt wins: a uv.lock pins the official index URLs.
    if requirements && (cfg.pip_mirror_url.is_some() || !pyproject) {
        return Ok(Dependency::Requirements);
    }
    if pyproject {
        return Ok(Dependency::Pyproject {
            locked: dir.join("uv.lock").is_file(),
        });
    }
    Err(EnvError::NoDependencyFile(dir.to_owned()))
}

fn install_command(cfg: &PythonEnvConfig, uv: &UvCommand, dir: &Path, dep: Dependency) -> Command {
    let mut cmd = uv.command();
    match dep {
        Dependency::Requirements => {
            // The target is explicit so no other interpreter can be picked.
            cmd.args(["pip", "install", "--python"])
                .arg(dir.join(VENV_DIR).join("bin").join("python"))
                .arg("-r")
                .arg(dir.join("requirements.txt"));
        }
        Dependency::Pyproject { locked } => {
            cmd.args(["sync", "--no-dev"]);
            if locked {
                cmd.arg("--frozen");
            }
        }
    }
    if let Some(mirror) = &cfg.pip_mirror_url {
        cmd.args(["-i", mirror]);
    }
    let locked = matches!(dep, Dependency::Pyproject { locked: true });
    cmd.args(
        cfg.pip_extra_args
            .iter()
            .filter(|a| !(locked && a.as_str() == "--frozen")),
    );
    cmd
}

/// Runs one build command in `dir`, streaming its output lines into
/// `progress`, killing it after `init_timeout` of silence.
pub(super) async fn run_step(
    cfg: &PythonEnvConfig,
    dir: &Path,
    venv_dir: &Path,
    mut cmd: Command,
    phase: EnvPhase,
    step: &'static str,
    progress: &ProgressFn,
) -> Result<(), EnvError> {
    progress(EnvProgress { phase, line: None });
    cmd.env_clear()
        .envs(cfg.build_env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .env("VIRTUAL_ENV", venv_dir)
        .env("UV_PROJECT_ENVIRONMENT", venv_dir)
        .env("UV_CACHE_DIR", &cfg.uv_cache_dir)
        .env("UV_NO_PROGRESS", "1")
        .env_remove("PYTHONHOME")
        .env_remove("UV_INTERNAL__PARENT_INTERPRETER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::info!(?cmd, "building Python environment: {step}");
    let mut child = cmd.spawn().map_err(io_err(step, dir))?;
    let mut out = FramedRead::new(
        child.stdout.take().expect("stdout is piped"),
        LineCodec::new(MAX_OUTPUT_LINE),
    );
    let mut err = FramedRead::new(
        child.stderr.take().expect("stderr is piped"),
        LineCodec::new(MAX_OUTPUT_LINE),
    );
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let (mut out_open, mut err_open) = (true, true);
    let silence = tokio::time::sleep(cfg.init_timeout);
    tokio::pin!(silence);
    while out_open || err_open {
        let frame = tokio::select! {
            f = out.next(), if out_open => { if f.is_none() { out_open = false; } f }
            f = err.next(), if err_open => { if f.is_none() { err_open = false; } f }
            _ = &mut silence => {
                let _ = child.kill().await;
                return Err(EnvError::Inactive {
                    step,
                    secs: cfg.init_timeout.as_secs(),
                    tail: join_tail(&tail),
                });
            }
        };
        let Some(frame) = frame else { continue };
        let line = match frame {
            Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(Err(too_long)) => format!("[{too_long}]"),
            Err(_) => continue,
        };
        silence
            .as_mut()
            .reset(tokio::time::Instant::now() + cfg.init_timeout);
        tracing::debug!(step, "{line}");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        progress(EnvProgress {
            phase,
            line: Some(line),
        });
    }
    let status = tokio::select! {
        s = child.wait() => s.map_err(io_err(step, dir))?,
        _ = &mut silence => {
            let _ = child.kill().await;
            return Err(EnvError::Inactive { step, secs: cfg.init_timeout.as_secs(), tail: join_tail(&tail) });
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(EnvError::Command {
            step,
            status: status.to_string(),
            tail: join_tail(&tail),
        })
    }
}

fn join_tail(tail: &VecDeque<String>) -> String {
    tail.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with(search_path: Vec<PathBuf>, pyenv_root: Option<PathBuf>) -> PythonEnvConfig {
        PythonEnvConfig {
            uv_path: None,
            python_interpreter_path: None,
            pip_mirror_url: None,
            pip_extra_args: vec![],
            uv_cache_dir: PathBuf::from("/tmp/unused"),
            init_timeout: Duration::from_secs(5),
            search_path,
            pyenv_root,
            build_env: vec![],
            stage_dir: None,
            tools_dir: None,
        }
    }

    fn fake_exe(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn major_minor_forms() {
        assert_eq!(major_minor("3.12").as_deref(), Some("3.12"));
        assert_eq!(major_minor("3.11.4").as_deref(), Some("3.11"));
        assert_eq!(major_minor(">=3.13").as_deref(), Some("3.13"));
        assert_eq!(major_minor("3"), None);
        assert_eq!(major_minor(""), None);
    }

    #[test]
    fn interpreter_candidates_come_from_path_then_pyenv() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        let pyenv = tmp.path().join("pyenv");
        fake_exe(&pyenv.join("versions/3.11.2/bin/python3.11"));
        fake_exe(&pyenv.join("versions/3.11.10/bin/python3.11"));
        fake_exe(&pyenv.join("versions/3.110.0/bin/python3.110"));
        fake_exe(&bin.join("python3.11"));
        fake_exe(&bin.join("python3.13"));
        let cfg = cfg_with(vec![bin.clone()], Some(pyenv.clone()));
        assert_eq!(
            interpreter_candidates(&cfg, Some("3.13")),
            [bin.join("python3.13")]
        );
        // PATH first, then pyenv's newest patch release, compared numerically.
        assert_eq!(
            interpreter_candidates(&cfg, Some("3.11.4")),
            [
                bin.join("python3.11"),
                pyenv.join("versions/3.11.10/bin/python3.11"),
                pyenv.join("versions/3.11.2/bin/python3.11"),
            ]
        );
        assert!(interpreter_candidates(&cfg, Some("3.9")).is_empty());
        assert!(interpreter_candidates(&cfg, None).is_empty());
    }

    #[tokio::test]
    async fn an_interpreter_that_does_not_run_is_skipped() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let broken = tmp.path().join("broken");
        let working = tmp.path().join("working");
        // A shim that exists but fails, like an inactive pyenv shim.
        fake_exe(&broken.join("python3.12"));
        std::fs::write(broken.join("python3.12"), "#!/bin/sh\nexit 127\n").unwrap();
        std::fs::create_dir_all(&working).unwrap();
        std::fs::write(working.join("python3.12"), "#!/bin/sh\necho 3.12\n").unwrap();
        std::fs::set_permissions(
            working.join("python3.12"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let cfg = cfg_with(vec![broken, working.clone()], None);
        assert_eq!(
            find_interpreter(&cfg, Some("3.12")).await,
            Some(working.join("python3.12"))
        );
        assert_eq!(find_interpreter(&cfg, Some("3.11")).await, None);
    }

    #[test]
    fn dependency_file_choice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut cfg = cfg_with(vec![], None);
        assert!(matches!(
            detect_dependency_file(&cfg, dir),
            Err(EnvError::NoDependencyFile(_))
        ));
        std::fs::write(dir.join("requirements.txt"), "").unwrap();
        assert_eq!(
            detect_dependency_file(&cfg, dir).unwrap(),
            Dependency::Requirements
        );
        std::fs::write(dir.join("pyproject.toml"), "").unwrap();
        assert_eq!(
            detect_dependency_file(&cfg, dir).unwrap(),
            Dependency::Pyproject { locked: false }
        );
        std::fs::write(dir.join("uv.lock"), "").unwrap();
        assert_eq!(
            detect_dependency_file(&cfg, dir).unwrap(),
            Dependency::Pyproject { locked: true }
        );
        cfg.pip_mirror_url = Some("https://mirror.example/simple".into());
        assert_eq!(
            detect_dependency_file(&cfg, dir).unwrap(),
            Dependency::Requirements
        );
    }

    #[test]
    fn install_arguments() {
        let mut cfg = cfg_with(vec![], None);
        cfg.pip_mirror_url = Some("https://m/simple".into());
        cfg.pip_extra_args = vec!["--frozen".into(), "--no-build-isolation".into()];
        let uv = UvCommand {
            program: "uv".into(),
        };
        let args = |c: Command| {
            c.as_std()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        let sync = args(install_command(
            &cfg,
            &uv,
            Path::new("/p"),
            Dependency::Pyproject { locked: true },
        ));
        assert_eq!(
            sync,
            [
                "sync",
                "--no-dev",
                "--frozen",
                "-i",
                "https://m/simple",
                "--no-build-isolation"
            ]
        );
        let pip = args(install_command(
            &cfg,
            &uv,
            Path::new("/p"),
            Dependency::Requirements,
        ));
        assert_eq!(
            pip,
            [
                "pip",
                "install",
                "--python",
                "/p/.venv/bin/python",
                "-r",
                "/p/requirements.txt",
                "-i",
                "https://m/simple",
                "--frozen",
                "--no-build-isolation"
            ]
        );
    }

    #[tokio::test]
    async fn failing_step_reports_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg_with(vec![], None);
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo resolving; echo 'no matching distribution' >&2; exit 3",
        ]);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let progress: ProgressFn = Arc::new(move |p: EnvProgress| {
            if let Some(l) = p.line {
                sink.lock().unwrap().push(l)
            }
        });
        let err = run_step(
            &cfg,
            tmp.path(),
            &tmp.path().join(VENV_DIR),
            cmd,
            EnvPhase::InstallingDependencies,
            "dependency installation",
            &progress,
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("dependency installation failed"), "{text}");
        assert!(text.contains("no matching distribution"), "{text}");
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ["no matching distribution", "resolving"]);
    }

    #[tokio::test]
    async fn silent_step_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = cfg_with(vec![], None);
        cfg.init_timeout = Duration::from_millis(300);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let err = run_step(
            &cfg,
            tmp.path(),
            &tmp.path().join(VENV_DIR),
            cmd,
            EnvPhase::InstallingDependencies,
            "dependency installation",
            &no_progress(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, EnvError::Inactive { .. }), "{err}");
        assert!(err.to_string().contains("started"));
    }
}
