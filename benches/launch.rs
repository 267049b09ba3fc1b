//! Launch time of a local plugin with and without its confinement.
//!
//! The real `echo_tool` fixture (dify_plugin, Python 3.12) is unpacked once
//! and its venv built once; then it is launched and stopped again and again
//! through [`LocalHost::launch`] (code check, folders, spawn, first
//! heartbeat), alternating two hosts:
//!
//! - **plain**: a clean environment and a data folder, the caller's uid, no
//!   helper (no Landlock, limits or death signal);
//! - **confined**: what `plugind serve` does: `plugind sandbox-exec` with
//!   Landlock, RLIMIT_AS/NPROC, the death signal and, as root, a uid of the
//!   plugin's own.
//!
//! Prints p50/min/max of each and the difference of the medians, with the
//! load average; asserts nothing beyond each launch succeeding. Run with
//! `cargo bench --bench launch` after `scripts/setup-python.sh`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugind::runtime::python_env::{self, no_progress};
use plugind::runtime::sandbox::{Sandbox, SandboxOptions, DEFAULT_UID_RANGE};
use plugind::runtime::{LaunchSpec, LocalHost, LocalOptions, PluginRuntime, PythonEnvConfig};

/// LAUNCH_BENCH_ROUNDS launches of each kind; 10 when unset.
fn rounds() -> usize {
    std::env::var("LAUNCH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1)
}

fn env_config(cache: &Path) -> PythonEnvConfig {
    PythonEnvConfig::new(
        std::env::var_os("UV_PATH").map(PathBuf::from),
        std::env::var_os("PYTHON312").map(PathBuf::from),
        None,
        None,
        cache.to_owned(),
        Duration::from_secs(300),
    )
}

/// The fixture's files with their package-relative names.
fn fixture_files() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/echo_tool");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if matches!(name.as_str(), ".venv" | "__pycache__") || name.ends_with(".pyc") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn host(env: PythonEnvConfig, confined: bool, work: &Path) -> LocalHost {
    let sandbox = Sandbox::new(SandboxOptions {
        passthrough: vec![],
        uid_range: DEFAULT_UID_RANGE,
        own_uid: confined,
        landlock: confined,
        helper: confined.then(|| PathBuf::from(env!("CARGO_BIN_EXE_plugind"))),
        build_home: work.join(".build-home"),
        read_only: vec![env.uv_cache_dir.clone()],
    });
    LocalHost::with_sandbox(env, LocalOptions::default(), 1, Arc::new(sandbox))
}

fn summary(name: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = ms[ms.len() / 2];
    println!(
        "{name:<9} p50 {p50:8.1} ms   min {:8.1} ms   max {:8.1} ms   ({} launches)",
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
    p50
}

#[tokio::main]
async fn main() {
    let work = tempfile::tempdir().unwrap();
    // Plugin uids must be able to walk down to the plugin folder.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let files = fixture_files();
    let sum = plugind::package::checksum(files.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
    let identity = format!("plugind/echo_tool:0.0.1@{sum}");
    let dir = work
        .path()
        .join(plugind::install::local::package_dir_name(&identity));
    for (name, data) in &files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uv-cache");
    let confined = host(env_config(&cache), true, work.path());
    let plain = host(env_config(&cache), false, work.path());
    println!("building the venv once…");
    let spec = |_: ()| LaunchSpec {
        identity: identity.clone(),
        working_dir: dir.clone(),
        entrypoint: "main".into(),
        runner_version: Some("3.12".into()),
        env: vec![],
        memory: Some(268_435_456),
        package_files: None,
    };
    // The confined host builds it (staging the interpreter when plugin uids
    // could not run the original); both reuse it from then on.
    let first = confined
        .launch(spec(()), no_progress())
        .await
        .expect("launch");
    first.shutdown().await;
    assert!(python_env::is_complete(&dir));
    let support = confined.sandbox().support();
    println!(
        "confinement here: own uid {}, Landlock ABI {}, limits {}",
        support.own_uid, support.landlock_abi, support.limits
    );

    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        for (host, out) in [(&plain, &mut without), (&confined, &mut with)] {
            let started = Instant::now();
            let rt = host.launch(spec(()), no_progress()).await.expect("launch");
            out.push(started.elapsed().as_secs_f64() * 1000.0);
            rt.shutdown().await;
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let a = summary("plain", without);
    let b = summary("confined", with);
    println!(
        "confinement adds {:.1} ms to a launch (difference of the medians)",
        b - a
    );
}
