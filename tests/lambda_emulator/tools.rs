//! The external programs the serverless tests start: the Python tools of
//! `scripts/setup-python.sh`, a moto server, and the `plugin-runner`
//! bootstrap built by cargo.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

/// A variable of `scripts/setup-python.sh`'s env file; the process
/// environment wins.
pub fn tool_var(name: &str) -> PathBuf {
    if let Some(v) = std::env::var_os(name) {
        return PathBuf::from(v);
    }
    static VARS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    let vars = VARS.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/setup-python.sh"))
            .arg("--print-env-file")
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/setup-python.sh runs");
        assert!(out.status.success(), "setup-python.sh failed");
        let file = String::from_utf8(out.stdout).unwrap();
        let text = std::fs::read_to_string(file.trim()).expect("env file");
        text.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect()
    });
    vars.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| PathBuf::from(v))
        .unwrap_or_else(|| panic!("{name} is not in the tools env file"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target folder this test binary was built in.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // <target>/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// The `plugin-runner` binary: `PLUGIN_RUNNER_BIN` when set, else built once
/// with cargo into `<target>/bootstrap-build` (a folder of its own, so the
/// build never waits on the test run's lock).
pub fn plugin_runner_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PLUGIN_RUNNER_BIN") {
            return PathBuf::from(bin);
        }
        let target = target_dir().join("bootstrap-build");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(repo_root())
            .args(["build", "--quiet", "-p", "plugin-runner", "--target-dir"])
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p plugin-runner failed");
        let bin = target.join("debug/plugin-runner");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[path = "../moto/mod.rs"]
mod moto;
pub use moto::Moto;

/// Pids of the children of `pid` (from /proc, every thread's list).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let children =
            std::fs::read_to_string(Path::new(&task.path()).join("children")).unwrap_or_default();
        out.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}
