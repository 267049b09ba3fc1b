//! Checks of this machine: storage folders writable, uv and the Python
//! interpreters plugins get, ports free.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::Check;
use crate::runtime::python_env::{find_interpreter, find_uv, PythonEnvConfig};
use crate::settings::Settings;

/// The interpreter version today's plugins ask for (`meta.runner.version`
/// of the `dify_plugin` templates), checked even before any install.
const DEFAULT_RUNNER_VERSION: &str = "3.12";

/// `path` made absolute for messages (the working folder may differ from
/// the reader's).
pub fn shown(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// The nearest folder at or above `path` that exists, when the daemon can
/// create files in it (checked by creating and removing a probe file).
pub fn writable_ancestor(path: &Path) -> Result<PathBuf, String> {
    let mut at = if path.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        path.to_owned()
    };
    loop {
        match std::fs::metadata(&at) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(format!("{} is not a folder", at.display())),
            Err(_) => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent.to_owned(),
                _ => {
                    at = PathBuf::from(".");
                    break;
                }
            },
        }
    }
    tempfile::Builder::new()
        .prefix(".plugind-doctor-")
        .tempfile_in(&at)
        .map(|_probe| at.clone())
        .map_err(|e| format!("cannot write in {}: {e}", shown(&at)))
}

/// The storage root (packages, assets, the SQLite file) and the working
/// folder plugins run in.
pub fn storage(settings: &Settings) -> Vec<Check> {
    let mut out = Vec::new();
    let working = settings.working_path();
    for (name, var, path) in [
        (
            "storage",
            "PLUGIN_STORAGE_LOCAL_ROOT",
            settings.plugin_storage_local_root.clone(),
        ),
        ("working folder", "PLUGIN_WORKING_PATH", working),
    ] {
        out.push(match writable_ancestor(&path) {
            Ok(dir) if dir == path => Check::ok(name, format!("{} writable", shown(&path))),
            Ok(_) => Check::ok(
                name,
                format!(
                    "{} does not exist yet; `plugind serve` creates it",
                    shown(&path)
                ),
            ),
            Err(e) => Check::fail(
                name,
                format!(
                    "{var}={}: {e}; point {var} at a folder the daemon's user can write",
                    path.display()
                ),
            ),
        });
    }
    out
}

/// SERVER_PORT, and the debugging port when remote installing is enabled.
pub fn ports(settings: &Settings) -> Vec<Check> {
    let mut out = vec![port(
        "server port",
        &settings.server_host,
        settings.server_port,
        "SERVER_HOST/SERVER_PORT",
    )];
    if settings.plugin_remote_installing_enabled {
        out.push(port(
            "debugging port",
            &settings.plugin_remote_installing_host,
            settings.plugin_remote_installing_port,
            "PLUGIN_REMOTE_INSTALLING_HOST/PLUGIN_REMOTE_INSTALLING_PORT (or PLUGIN_REMOTE_INSTALLING_ENABLED=false)",
        ));
    }
    out
}

fn port(name: &str, host: &str, port: u16, vars: &str) -> Check {
    let addr = format!("{host}:{port}");
    match TcpListener::bind(&addr) {
        Ok(listener) => {
            drop(listener);
            Check::ok(name, format!("{addr} free"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Check::fail(
            name,
            format!("{addr} is in use (is plugind or the reference daemon already running?); stop it or change {vars}"),
        ),
        Err(e) => Check::fail(name, format!("cannot listen on {addr}: {e}; change {vars}")),
    }
}

/// uv, as installs will find it.
pub async fn uv(env: &PythonEnvConfig) -> Check {
    match find_uv(env).await {
        Ok(uv) => {
            let version = version_of(uv.program(), &["--version"]).await;
            match version {
                Ok(v) => Check::ok("uv", format!("{} ({v})", uv.program().display())),
                Err(e) => Check::fail(
                    "uv",
                    format!(
                        "{} does not run: {e}; reinstall uv or set UV_PATH",
                        uv.program().display()
                    ),
                ),
            }
        }
        Err(e) => Check::fail(
            "uv",
            format!("{e}; `deploy/install-runtime.sh` installs uv, or set UV_PATH"),
        ),
    }
}

/// The default runner version and every version installed plugins ask for.
pub fn wanted_versions(from_plugins: &[String]) -> Vec<String> {
    let mut out = vec![DEFAULT_RUNNER_VERSION.to_owned()];
    for v in from_plugins {
        let mm = major_minor(v);
        if let Some(mm) = mm {
            if !out.contains(&mm) {
                out.push(mm);
            }
        }
    }
    out
}

fn major_minor(version: &str) -> Option<String> {
    let digits: String = version
        .trim()
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = digits.split('.').filter(|p| !p.is_empty());
    Some(format!("{}.{}", parts.next()?, parts.next()?))
}

/// The interpreter a plugin asking for `version` gets: found on PATH or
/// under pyenv, else PYTHON_INTERPRETER_PATH, else whatever uv finds.
pub async fn interpreter(env: &PythonEnvConfig, name: &str, version: &str) -> Check {
    if let Some(found) = find_interpreter(env, Some(version)).await {
        return Check::ok(name, found.display().to_string());
    }
    if let Some(fallback) = &env.python_interpreter_path {
        let probe = ["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"];
        return match version_of(fallback, &probe).await {
            Ok(v) if v.starts_with(&format!("{version}.")) => {
                Check::ok(name, format!("{} ({v})", fallback.display()))
            }
            Ok(v) => Check::warn(
                name,
                format!(
                    "no python{version} found; plugins asking for it run on PYTHON_INTERPRETER_PATH {} (Python {v}); install Python {version} or point PYTHON_INTERPRETER_PATH at it",
                    fallback.display()
                ),
            ),
            Err(e) => Check::fail(
                name,
                format!(
                    "no python{version} found and PYTHON_INTERPRETER_PATH {} does not run ({e}); install Python {version} or fix PYTHON_INTERPRETER_PATH",
                    fallback.display()
                ),
            ),
        };
    }
    // Installs hand the version to `uv venv --python`, which looks further
    // (its own managed interpreters) or downloads one.
    let Ok(uv) = find_uv(env).await else {
        return Check::fail(
            name,
            format!("no python{version} found and no uv to find one; install Python {version} and uv (deploy/install-runtime.sh)"),
        );
    };
    match version_of(uv.program(), &["python", "find", version]).await {
        Ok(path) => Check::ok(name, format!("{path} (found by uv)")),
        Err(_) => Check::warn(
            name,
            format!(
                "Python {version} is not on this machine; uv downloads it at the first install, which needs network access (or install it, or set PYTHON_INTERPRETER_PATH)"
            ),
        ),
    }
}

/// The first line `program args…` prints, when it exits with success.
async fn version_of(program: &Path, args: &[&str]) -> Result<String, String> {
    let run = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} ({})",
            out.status,
            err.lines().next().unwrap_or("").trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_wanted_are_the_default_and_the_plugins() {
        let got = wanted_versions(&["3.12".into(), ">=3.11.2".into(), "bad".into()]);
        assert_eq!(got, vec!["3.12".to_owned(), "3.11".to_owned()]);
    }

    #[test]
    fn a_file_in_the_way_is_not_a_writable_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = writable_ancestor(&file.join("storage")).unwrap_err();
        assert!(err.contains("is not a folder"), "{err}");
        let ok = writable_ancestor(&dir.path().join("a/b")).unwrap();
        assert_eq!(ok, dir.path());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the probe file is gone"
        );
    }
}
