//! `plugind sandbox-exec`: the small step between the daemon and a plugin's
//! interpreter that applies the confinement, then replaces itself with the
//! plugin (`exec`), so the plugin keeps the pid and the pipes the daemon
//! holds.
//!
//! It is a separate exec rather than a `pre_exec` hook because the crate
//! forbids `unsafe` and because the Landlock setup allocates, which is not
//! allowed between `fork` and `exec` in a threaded process. The daemon
//! passes the [`ExecSpec`] in one environment variable (readable only by
//! the daemon's own uid), never on the command line, since the plugin's
//! environment may hold proxy credentials.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

/// The environment variable carrying the [`ExecSpec`] as JSON.
pub const SPEC_VAR: &str = "PLUGIND_SANDBOX_SPEC";

/// The Landlock ABI asked for; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V6;

/// Exactly what to confine and run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The whole environment of the plugin (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Drop to this uid and gid (with no supplementary groups).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// RLIMIT_AS in bytes.
    pub address_space: Option<u64>,
    /// RLIMIT_NPROC: processes of the plugin's uid (only with `uid`).
    pub max_processes: Option<u64>,
    /// The daemon's pid: if it is gone by the time the death signal is
    /// armed, the plugin must not start.
    pub parent_pid: u32,
    /// Landlock rules, when the kernel has Landlock and it is enabled.
    pub landlock: Option<LandlockRules>,
    /// Apply everything, then exit 0 instead of running `program`: the
    /// daemon's start-up check of what this machine allows.
    #[serde(default)]
    pub probe_only: bool,
}

/// What a confined plugin may reach on the filesystem; everything else is
/// denied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LandlockRules {
    /// Read and execute.
    pub read: Vec<PathBuf>,
    /// Read, write, create and remove.
    pub write: Vec<PathBuf>,
}

/// Runs the sandbox step: reads the spec from [`SPEC_VAR`], confines this
/// process and execs the plugin. Returns only on failure, with the reason;
/// the caller prints it to stderr (the daemon quotes it in the launch error).
pub fn run_from_env() -> String {
    let spec = match std::env::var(SPEC_VAR) {
        Ok(json) => json,
        Err(_) => return format!("{SPEC_VAR} is not set: this command is run by the daemon"),
    };
    let spec: ExecSpec = match serde_json::from_str(&spec) {
        Ok(spec) => spec,
        Err(e) => return format!("bad {SPEC_VAR}: {e}"),
    };
    match confine(&spec) {
        Ok(()) if spec.probe_only => std::process::exit(0),
        Ok(()) => {}
        Err(e) => return format!("sandbox: {e}"),
    }
    let err = std::process::Command::new(&spec.program)
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .exec();
    format!("cannot run {}: {err}", spec.program.display())
}

/// Applies every limit of `spec` to this process, in the one order that
/// works: limits while still privileged, then the uid change, then the
/// death signal (a uid change clears it), then Landlock (which sets
/// no_new_privs, so nothing regains privileges after).
fn confine(spec: &ExecSpec) -> Result<(), String> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("RLIMIT_CORE: {e}"))?;
    if let Some(bytes) = spec.address_space {
        setrlimit(Resource::RLIMIT_AS, bytes, bytes).map_err(|e| format!("RLIMIT_AS: {e}"))?;
    }
    if let (Some(uid), Some(gid)) = (spec.uid, spec.gid) {
        if let Some(n) = spec.max_processes {
            setrlimit(Resource::RLIMIT_NPROC, n, n).map_err(|e| format!("RLIMIT_NPROC: {e}"))?;
        }
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    }
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    if nix::unistd::getppid().as_raw() as u32 != spec.parent_pid {
        return Err("the daemon exited before the plugin started".into());
    }
    if let Some(rules) = &spec.landlock {
        restrict(rules)?;
    }
    Ok(())
}

fn restrict(rules: &LandlockRules) -> Result<(), String> {
    let fail = |e: landlock::RulesetError| format!("landlock: {e}");
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(fail)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(fail)?
        .create()
        .map_err(fail)?
        .add_rules(path_beneath_rules(
            &rules.read,
            AccessFs::from_read(LANDLOCK_ABI),
        ))
        .map_err(fail)?
        .add_rules(path_beneath_rules(
            &rules.write,
            AccessFs::from_all(LANDLOCK_ABI),
        ))
        .map_err(fail)?
        .restrict_self()
        .map_err(fail)?;
    // The daemon asked for Landlock only after finding it at start; a
    // ruleset the kernel then refuses is a fault, not a degraded mode.
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("landlock: the kernel did not enforce the ruleset".into());
    }
    Ok(())
}

/// The Landlock ABI this kernel offers, 0 when it has none.
pub fn landlock_abi() -> i32 {
    // Creating (and dropping) a ruleset that must handle every right of an
    // ABI tells whether the kernel has that ABI, without restricting anything.
    for (abi, n) in [
        (ABI::V6, 6),
        (ABI::V5, 5),
        (ABI::V4, 4),
        (ABI::V3, 3),
        (ABI::V2, 2),
        (ABI::V1, 1),
    ] {
        let created = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.create());
        if created.is_ok() {
            return n;
        }
    }
    0
}
