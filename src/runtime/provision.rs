//! uv for a machine that has none: when neither UV_PATH, PATH nor a Python
//! package provides one, the daemon installs uv on first need into a
//! private venv under its working path (`<working>/.tools/uv`), made with a
//! Python found on the machine (`python -m venv`, then `pip install uv`).
//!
//! The reference daemon requires uv to be installed beforehand
//! (`internal/core/local_runtime/setup_python_environment.go` runs the
//! configured `uv` binary). Here `cargo run -- serve` on a machine with
//! Python but no uv still installs and runs plugins.
//!
//! The venv is built in a temporary folder beside its final place, checked
//! (`uv --version`), marked complete and only then renamed into place, so a
//! half-built uv is never found; a folder at the final place without the
//! marker is removed and built again. One installation runs at a time per
//! folder; installs that need uv meanwhile wait for the same one and see its
//! progress.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::process::Command;

use super::python_env::{run_step, EnvError, EnvPhase, EnvProgress, ProgressFn, PythonEnvConfig};

/// The venv folder, under the tools folder.
pub const UV_DIR: &str = "uv";
/// Written into the venv once uv runs from it; the folder counts only with it.
const UV_MARKER: &str = "plugind-uv.json";
/// Where `uv python install` puts interpreters, under the tools folder.
pub const PYTHON_DIR: &str = "python";
/// The uv releases asked of pip: old enough for every mirror, new enough
/// for `uv python install` and `uv sync --frozen`.
const UV_REQUIREMENT: &str = "uv>=0.4";

/// The uv binary of a complete provisioned venv under `tools_dir`, if any.
pub fn provisioned_uv(tools_dir: &Path) -> Option<PathBuf> {
    let venv = tools_dir.join(UV_DIR);
    let uv = venv.join("bin").join("uv");
    (venv.join(UV_MARKER).is_file() && super::python_env::is_executable(&uv)).then_some(uv)
}

/// One installation under way: its outcome, shared by every waiter, and
/// the progress receivers of the installs waiting for it.
struct Flight {
    outcome: Shared<BoxFuture<'static, Result<PathBuf, String>>>,
    watchers: Arc<Mutex<Vec<ProgressFn>>>,
}

/// Installations under way, by tools folder.
static FLIGHTS: LazyLock<Mutex<HashMap<PathBuf, Flight>>> = LazyLock::new(Default::default);

/// Takes a finished installation (or one whose task panicked) out of the
/// table, after its venv is in place.
struct Leave(PathBuf);

impl Drop for Leave {
    fn drop(&mut self) {
        lock(&FLIGHTS).remove(&self.0);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The provisioned uv under `tools_dir`, installed first when missing or
/// incomplete. Concurrent callers share one installation.
pub async fn ensure_uv(
    cfg: &PythonEnvConfig,
    tools_dir: &Path,
    progress: &ProgressFn,
) -> Result<PathBuf, EnvError> {
    let (outcome, joined) = {
        let mut flights = lock(&FLIGHTS);
        match flights.get(tools_dir) {
            Some(flight) => {
                lock(&flight.watchers).push(Arc::clone(progress));
                (flight.outcome.clone(), true)
            }
            None => {
                // Checked under the lock: a finished installation leaves the
                // table only after its venv is in place.
                if let Some(uv) = provisioned_uv(tools_dir) {
                    return Ok(uv);
                }
                let watchers = Arc::new(Mutex::new(vec![Arc::clone(progress)]));
                let fan_out: ProgressFn = {
                    let watchers = Arc::clone(&watchers);
                    Arc::new(move |p: EnvProgress| {
                        for watcher in lock(&watchers).iter() {
                            watcher(p.clone());
                        }
                    })
                };
                let (cfg, dir) = (cfg.clone(), tools_dir.to_owned());
                // A task of its own, so an install that gives up waiting
                // does not stop the installation the others wait for.
                let job = tokio::spawn(async move {
                    let _leave = Leave(dir.clone());
                    install(&cfg, &dir, &fan_out)
                        .await
                        .map_err(|e| e.to_string())
                });
                let outcome = job
                    .map(|joined| {
                        joined.unwrap_or_else(|e| Err(format!("the installation stopped: {e}")))
                    })
                    .boxed()
                    .shared();
                flights.insert(
                    tools_dir.to_owned(),
                    Flight {
                        outcome: outcome.clone(),
                        watchers,
                    },
                );
                (outcome, false)
            }
        }
    };
    if joined {
        progress(EnvProgress {
            phase: EnvPhase::InstallingUv,
            line: Some("waiting for the uv installation another install started".into()),
        });
    }
    outcome.await.map_err(|reason| EnvError::UvInstall {
        dir: tools_dir.join(UV_DIR),
        reason,
    })
}

/// Builds the venv in a temporary folder and renames it into place.
async fn install(
    cfg: &PythonEnvConfig,
    tools_dir: &Path,
    progress: &ProgressFn,
) -> Result<PathBuf, EnvError> {
    let target = tools_dir.join(UV_DIR);
    tokio::fs::create_dir_all(tools_dir)
        .await
        .map_err(io_err("create the tools folder", tools_dir))?;
    if tokio::fs::symlink_metadata(&target).await.is_ok() {
        tracing::warn!(path = %target.display(), "incomplete uv installation; installing again");
        progress(line(format!(
            "removing the incomplete uv installation at {}",
            target.display()
        )));
        remove(&target).await?;
    }
    let pythons = base_pythons(cfg);
    progress(line(format!(
        "no uv configured (UV_PATH) or found on PATH; installing it into {} with pip",
        target.display()
    )));
    tracing::info!(path = %target.display(), "installing uv");

    let staging = tempfile::Builder::new()
        .prefix(".uv-build-")
        .tempdir_in(tools_dir)
        .map_err(io_err("create a temporary folder", tools_dir))?;
    let venv = staging.path().join(UV_DIR);
    let cfg = pip_config(cfg);

    let mut tried = Vec::new();
    let mut base = None;
    for python in &pythons {
        let mut cmd = Command::new(python);
        cmd.args(["-m", "venv"]).arg(&venv);
        match run_step(
            &cfg,
            staging.path(),
            &venv,
            cmd,
            EnvPhase::InstallingUv,
            "python -m venv",
            progress,
        )
        .await
        {
            Ok(()) => {
                base = Some(python.clone());
                break;
            }
            Err(e) => {
                tried.push(format!("{}: {e}", python.display()));
                // What a failed venv left is not built on.
                if venv.exists() {
                    remove(&venv).await?;
                }
            }
        }
    }
    let Some(base) = base else {
        return Err(EnvError::Provision(if tried.is_empty() {
            "no python3 on PATH to make its venv with; set PYTHON_INTERPRETER_PATH".into()
        } else {
            format!(
                "`python -m venv` failed with every Python found (install the venv module, python3-venv on Debian, or set PYTHON_INTERPRETER_PATH):\n{}",
                tried.join("\n")
            )
        }));
    };

    let mut pip = Command::new(venv.join("bin").join("python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ]);
    if let Some(mirror) = &cfg.pip_mirror_url {
        pip.args(["--index-url", mirror]);
    }
    pip.arg(UV_REQUIREMENT);
    run_step(
        &cfg,
        staging.path(),
        &venv,
        pip,
        EnvPhase::InstallingUv,
        "pip install uv",
        progress,
    )
    .await?;

    let uv = venv.join("bin").join("uv");
    let seen = Arc::new(Mutex::new(String::new()));
    let version_sink: ProgressFn = {
        let (seen, progress) = (Arc::clone(&seen), Arc::clone(progress));
        Arc::new(move |p: EnvProgress| {
            if let Some(l) = &p.line {
                *lock(&seen) = l.clone();
            }
            progress(p);
        })
    };
    let mut check = Command::new(&uv);
    check.arg("--version");
    run_step(
        &cfg,
        staging.path(),
        &venv,
        check,
        EnvPhase::InstallingUv,
        "uv --version",
        &version_sink,
    )
    .await?;
    let version = lock(&seen).clone();

    let marker = serde_json::json!({
        "uv": version,
        "python": base,
        "timestamp": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    let marker_path = venv.join(UV_MARKER);
    tokio::fs::write(&marker_path, marker.to_string())
        .await
        .map_err(io_err("write the uv marker", &marker_path))?;
    // Only `bin/uv`, a self-contained binary, is run from the venv, so it
    // may move: the pip scripts beside it keep the temporary path.
    if let Err(e) = tokio::fs::rename(&venv, &target).await {
        // Another daemon on this working path finished first.
        if provisioned_uv(tools_dir).is_none() {
            return Err(io_err("move uv into place", &target)(e));
        }
    }
    drop(staging);
    progress(line(format!(
        "{version} installed into {}",
        target.display()
    )));
    tracing::info!(path = %target.display(), %version, "installed uv");
    provisioned_uv(tools_dir).ok_or_else(|| {
        EnvError::Provision(format!(
            "{} is not complete after the installation",
            target.display()
        ))
    })
}

/// Pythons to make the venv with, in order: PYTHON_INTERPRETER_PATH, then
/// `python3` and `python` on the daemon's PATH.
fn base_pythons(cfg: &PythonEnvConfig) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = cfg.python_interpreter_path.iter().cloned().collect();
    for name in ["python3", "python"] {
        out.extend(
            cfg.search_path
                .iter()
                .map(|d| d.join(name))
                .filter(|p| super::python_env::is_executable(p)),
        );
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    out
}

/// The build configuration for pip: pip trusts its own CA bundle, not
/// SSL_CERT_FILE, so a TLS-intercepting proxy's CA given there (and in
/// neither PIP_CERT nor REQUESTS_CA_BUNDLE, which pip reads) is handed to it
/// as PIP_CERT.
fn pip_config(cfg: &PythonEnvConfig) -> PythonEnvConfig {
    let mut cfg = cfg.clone();
    let has = |name: &str| cfg.build_env.iter().any(|(k, _)| k == name);
    if !has("PIP_CERT") && !has("REQUESTS_CA_BUNDLE") {
        if let Some((_, file)) = cfg.build_env.iter().find(|(k, _)| k == "SSL_CERT_FILE") {
            let file = file.clone();
            cfg.build_env.push(("PIP_CERT".into(), file));
        }
    }
    cfg
}

fn line(text: String) -> EnvProgress {
    EnvProgress {
        phase: EnvPhase::InstallingUv,
        line: Some(text),
    }
}

async fn remove(path: &Path) -> Result<(), EnvError> {
    let meta = tokio::fs::symlink_metadata(path)
        .await
        .map_err(io_err("remove an incomplete uv", path))?;
    if meta.is_dir() {
        tokio::fs::remove_dir_all(path).await
    } else {
        tokio::fs::remove_file(path).await
    }
    .map_err(io_err("remove an incomplete uv", path))
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EnvError + 'a {
    move |source| EnvError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::super::python_env::no_progress;
    use super::*;

    #[test]
    fn a_folder_without_the_marker_is_not_a_uv() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join(UV_DIR).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("uv"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join("uv"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(provisioned_uv(tmp.path()), None);
        std::fs::write(tmp.path().join(UV_DIR).join(UV_MARKER), "{}").unwrap();
        assert_eq!(provisioned_uv(tmp.path()), Some(bin.join("uv")));
    }

    /// A `python` that makes a fake venv whose `python -m pip install`
    /// prints pip-like lines and, unless `fail`, writes a working `bin/uv`;
    /// every pip run appends a line to `runs`.
    fn fake_python(dir: &Path, runs: &Path, fail: bool) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let pip = if fail {
            "echo 'Looking in indexes: http://127.0.0.1:9/simple'\n\
             printf '#!/bin/sh\\nexit 1\\n' > \"$here/uv\"; chmod +x \"$here/uv\"\n\
             echo 'ERROR: No matching distribution found for uv' >&2\nexit 1\n"
        } else {
            "echo 'Collecting uv'\nsleep 0.3\n\
             printf '#!/bin/sh\\necho uv 0.0.0-test\\n' > \"$here/uv\"; chmod +x \"$here/uv\"\n\
             echo 'Successfully installed uv'\n"
        };
        let script = format!(
            "#!/bin/sh\n[ \"$1 $2\" = \"-m venv\" ] || exit 2\nmkdir -p \"$3/bin\"\n\
             cat > \"$3/bin/python\" <<'EOS'\n#!/bin/sh\nhere=$(dirname \"$0\")\necho run >> {runs}\n{pip}EOS\n\
             chmod +x \"$3/bin/python\"\n",
            runs = runs.display()
        );
        let python = dir.join("python3");
        std::fs::write(&python, script).unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        python
    }

    fn config(python: PathBuf, tools: &Path) -> PythonEnvConfig {
        let mut cfg = PythonEnvConfig::new(
            None,
            Some(python),
            None,
            None,
            tools.join("cache"),
            std::time::Duration::from_secs(30),
        );
        cfg.search_path = vec![];
        cfg.build_env = vec![("PATH".into(), "/usr/bin:/bin".into())];
        cfg.tools_dir = Some(tools.to_owned());
        cfg
    }

    fn collect() -> (ProgressFn, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let progress: ProgressFn = Arc::new(move |p: EnvProgress| {
            if let Some(l) = p.line {
                lock(&sink).push(l);
            }
        });
        (progress, seen)
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_installation() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path().join("runs");
        let cfg = config(
            fake_python(tmp.path(), &runs, false),
            &tmp.path().join("tools"),
        );
        let tools = cfg.tools_dir.clone().unwrap();
        let (first, first_seen) = collect();
        let (second, second_seen) = collect();
        let (a, b) = tokio::join!(
            ensure_uv(&cfg, &tools, &first),
            ensure_uv(&cfg, &tools, &second)
        );
        let uv = tools.join(UV_DIR).join("bin").join("uv");
        assert_eq!(a.unwrap(), uv);
        assert_eq!(b.unwrap(), uv);
        assert_eq!(
            std::fs::read_to_string(&runs).unwrap(),
            "run\n",
            "pip ran once"
        );
        // The waiter is told it waits, and sees the installation's lines.
        let second_seen = lock(&second_seen).clone();
        assert!(second_seen
            .iter()
            .any(|l| l.starts_with("waiting for the uv installation")));
        assert!(second_seen.iter().any(|l| l == "Successfully installed uv"));
        assert!(lock(&first_seen).iter().any(|l| l == "Collecting uv"));
        assert!(lock(&first_seen)
            .iter()
            .any(|l| l.starts_with("uv 0.0.0-test installed into")));
        // Installed now: found without running anything.
        assert_eq!(ensure_uv(&cfg, &tools, &no_progress()).await.unwrap(), uv);
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
        let entries: Vec<_> = std::fs::read_dir(&tools)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, [UV_DIR], "no temporary folder is left");
    }

    #[tokio::test]
    async fn a_failed_installation_leaves_nothing_and_says_what_to_set() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path().join("runs");
        let cfg = config(
            fake_python(tmp.path(), &runs, true),
            &tmp.path().join("tools"),
        );
        let tools = cfg.tools_dir.clone().unwrap();
        let err = ensure_uv(&cfg, &tools, &no_progress()).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, EnvError::UvInstall { .. }), "{text}");
        for needed in [
            "UV_PATH",
            "PIP_MIRROR_URL",
            "HTTPS_PROXY",
            "No matching distribution found for uv",
        ] {
            assert!(text.contains(needed), "{needed:?} in {text}");
        }
        // The uv pip left behind was in the temporary folder, now gone.
        assert_eq!(std::fs::read_dir(&tools).unwrap().count(), 0);
        assert_eq!(provisioned_uv(&tools), None);
        // The next attempt runs pip again rather than reusing anything.
        assert!(ensure_uv(&cfg, &tools, &no_progress()).await.is_err());
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\n");
    }

    #[test]
    fn pip_gets_the_tls_bundle_of_ssl_cert_file() {
        let mut cfg = PythonEnvConfig::new(
            None,
            None,
            None,
            None,
            PathBuf::from("/c"),
            std::time::Duration::from_secs(1),
        );
        cfg.build_env = vec![("SSL_CERT_FILE".into(), "/etc/proxy-ca.pem".into())];
        let pip = pip_config(&cfg);
        assert!(pip
            .build_env
            .contains(&("PIP_CERT".into(), "/etc/proxy-ca.pem".into())));
        // What the operator gave pip itself stays as it is.
        cfg.build_env
            .push(("REQUESTS_CA_BUNDLE".into(), "/etc/other.pem".into()));
        let pip = pip_config(&cfg);
        assert!(!pip.build_env.iter().any(|(k, _)| k == "PIP_CERT"));
    }
}
