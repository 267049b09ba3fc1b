//! A machine with Python but no uv: the real `plugind serve`, started with a
//! fresh HOME, UV_PATH unset and a PATH that holds `python3` but no `uv`,
//! installs uv into its working path on the first plugin install, and says
//! so in the install task; when pip cannot reach an index the task fails
//! saying what to set, and nothing half-built is used on the next attempt.
//! A runner version no interpreter here has, with uv's Python downloads
//! refused, fails the same clear way.

mod common;
mod dispatch_common;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use common::daemon::{free_port, Daemon};
use dispatch_common::{fixture_files, fixture_package, zip_files};

const TENANT_A: &str = "tenant-provision-a";
const TENANT_B: &str = "tenant-provision-b";

/// `<working>/.tools`, where the daemon keeps the uv it installs.
fn tools(daemon: &Daemon) -> PathBuf {
    daemon.working().join(".tools")
}

/// A folder holding `python3` and `python3.12` (links to the test
/// machine's Python 3.12) and nothing else, for a PATH without uv.
fn python_only_bin(dir: &Path) -> PathBuf {
    let python = dispatch_common::tool("PYTHON312")
        .expect("PYTHON312 (source ~/.cache/plugind/tools/env.sh or run scripts/setup-python.sh)");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["python3", "python3.12"] {
        std::os::unix::fs::symlink(&python, bin.join(name)).unwrap();
    }
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for system in ["/usr/bin", "/bin"] {
        assert!(
            !Path::new(system).join("uv").exists(),
            "{system}/uv exists: this test needs a PATH without uv"
        );
    }
    bin
}

/// Starts the daemon over `dir` as on a machine without uv: fresh HOME,
/// no UV_PATH, no PYTHON_INTERPRETER_PATH, PATH = python-only bin and the
/// system folders; `extra` are more variables.
async fn start_without_uv(
    dir: tempfile::TempDir,
    uid_range: &str,
    extra: &[(&str, String)],
) -> Daemon {
    let bin = python_only_bin(dir.path());
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    Daemon::start(dir, |cmd| {
        cmd.env_remove("UV_PATH")
            .env_remove("PYTHON_INTERPRETER_PATH")
            .env_remove("PYENV_ROOT")
            .env_remove("VIRTUAL_ENV")
            .env("HOME", &home)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("PLUGIN_UID_RANGE", uid_range)
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
    })
    .await
}

/// Uploads and installs; returns the identifier, the task's last state
/// and every message it showed.
async fn try_install(daemon: &Daemon, tenant: &str, pkg: Vec<u8>) -> (String, Value, Vec<String>) {
    let id = daemon.upload(tenant, pkg).await;
    let task = daemon.start_install(tenant, &id).await;
    let (t, seen) = daemon.wait_task(tenant, &task).await;
    (id, t, seen)
}

fn failure_message(task: &Value) -> String {
    assert_eq!(task["data"]["status"], "failed", "{task}");
    task["data"]["plugins"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Entries of the tools folder left by an installation in progress.
fn leftovers(tools: &Path) -> Vec<String> {
    std::fs::read_dir(tools)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".uv-build-"))
                .collect()
        })
        .unwrap_or_default()
}

async fn echo(daemon: &Daemon, tenant: &str, text: &str) -> String {
    daemon
        .tool(
            tenant,
            "plugind/echo_tool",
            "echo_tool",
            "echo",
            json!({"text": text}),
        )
        .await
}

#[tokio::test]
async fn uv_is_installed_on_first_need_and_the_plugin_runs() {
    // uv's Python downloads go to a port that refuses, as on a machine
    // that cannot reach them.
    let refused = format!("http://127.0.0.1:{}", free_port());
    let daemon = start_without_uv(
        tempfile::tempdir().unwrap(),
        "53000-53999",
        &[("UV_PYTHON_INSTALL_MIRROR", refused)],
    )
    .await;

    let (_, task, seen) = try_install(&daemon, TENANT_A, fixture_package("echo_tool")).await;
    assert_eq!(
        task["data"]["status"],
        "success",
        "{task}\n{}",
        daemon.log()
    );
    assert!(
        seen.iter().any(|m| m.starts_with("installing uv")),
        "the task shows uv being installed: {seen:#?}"
    );
    let uv = tools(&daemon).join("uv/bin/uv");
    assert!(uv.is_file(), "{}", daemon.log());
    assert!(tools(&daemon).join("uv/plugind-uv.json").is_file());
    assert!(leftovers(&tools(&daemon)).is_empty());
    let version = std::process::Command::new(&uv)
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("uv "));
    assert_eq!(echo(&daemon, TENANT_A, "provisioned").await, "provisioned");

    // A runner version no interpreter here has: uv is asked for it, its
    // download is refused, and with no PYTHON_INTERPRETER_PATH to fall
    // back on the task says what to set. The uv installed above is reused.
    for missing in ["/usr/bin/python3.10", "/bin/python3.10"] {
        assert!(!Path::new(missing).exists(), "{missing} exists");
    }
    let files: Vec<(String, Vec<u8>)> = fixture_files("echo_tool")
        .into_iter()
        .map(|(name, data)| {
            if name == "manifest.yaml" {
                let text = String::from_utf8(data).unwrap();
                assert!(text.contains("version: \"3.12\""));
                (
                    name,
                    text.replace("version: \"3.12\"", "version: \"3.10\"")
                        .into_bytes(),
                )
            } else {
                (name, data)
            }
        })
        .collect();
    let (_, task, seen) = try_install(&daemon, TENANT_B, zip_files(&files)).await;
    let message = failure_message(&task);
    for needed in [
        "no Python 3.10 found",
        "uv python install 3.10",
        "PYTHON_INTERPRETER_PATH",
        "UV_PYTHON_INSTALL_MIRROR",
    ] {
        assert!(message.contains(needed), "{needed:?} in {message}");
    }
    assert!(
        seen.iter().any(|m| m.starts_with("installing Python")),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|m| m.starts_with("installing uv")),
        "uv is installed once: {seen:#?}"
    );
    assert_eq!(
        daemon.log().matches("installed uv").count(),
        1,
        "{}",
        daemon.log()
    );

    // The first plugin is untouched.
    assert_eq!(echo(&daemon, TENANT_A, "still").await, "still");
    daemon.stop().await;
}

#[tokio::test]
async fn a_refused_index_fails_the_task_clearly_and_nothing_half_built_is_used_after() {
    let refused = format!("http://127.0.0.1:{}/simple", free_port());
    let daemon = start_without_uv(
        tempfile::tempdir().unwrap(),
        "54000-54999",
        &[("PIP_MIRROR_URL", refused)],
    )
    .await;
    let (_, task, seen) = try_install(&daemon, TENANT_A, fixture_package("echo_tool")).await;
    let message = failure_message(&task);
    for needed in [
        "uv not found, and installing it into",
        "UV_PATH",
        "PIP_MIRROR_URL",
        "pip install uv failed",
    ] {
        assert!(message.contains(needed), "{needed:?} in {message}");
    }
    assert!(
        seen.iter().any(|m| m.starts_with("installing uv")),
        "{seen:#?}"
    );
    let tools_dir = tools(&daemon);
    assert!(
        !tools_dir.join("uv").exists(),
        "a failed installation leaves no uv"
    );
    assert!(
        leftovers(&tools_dir).is_empty(),
        "{:?}",
        leftovers(&tools_dir)
    );
    let dir = daemon.stop().await;

    // A uv folder a crash left without its marker, with a binary that does
    // not work, is replaced, not used, once pip can reach an index.
    let half = tools_dir.join("uv/bin");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("uv"), "#!/bin/sh\necho half-built >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(
        half.join("uv"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::remove_dir_all(dir.path().join("bin")).unwrap();
    let daemon = start_without_uv(dir, "54000-54999", &[]).await;
    let (_, task, seen) = try_install(&daemon, TENANT_A, fixture_package("echo_tool")).await;
    assert_eq!(
        task["data"]["status"],
        "success",
        "{task}\n{}",
        daemon.log()
    );
    assert!(
        seen.iter().any(|m| m.starts_with("installing uv")),
        "{seen:#?}"
    );
    assert!(
        daemon
            .log()
            .contains("incomplete uv installation; installing again"),
        "{}",
        daemon.log()
    );
    assert!(tools_dir.join("uv/plugind-uv.json").is_file());
    assert!(!std::fs::read(tools_dir.join("uv/bin/uv"))
        .unwrap()
        .starts_with(b"#!/bin/sh"));
    assert_eq!(echo(&daemon, TENANT_A, "recovered").await, "recovered");
    daemon.stop().await;
}
