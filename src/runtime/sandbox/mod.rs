//! Confinement of local plugin processes. Plugins are third-party code from a
//! marketplace, so a plugin owns nothing but itself:
//!
//! - an environment built from an allow-list ([`env`]), for the plugin and
//!   for the uv/pip steps that build its venv;
//! - when the daemon runs as root, a uid (and gid) of its own from
//!   PLUGIN_UID_RANGE, with its own HOME and temp folder; the code folder is
//!   the daemon's and only readable by that gid;
//! - a code folder verified against the package checksum before every
//!   launch ([`code`]);
//! - Landlock, where the kernel has it: read-only access to its code, venv,
//!   interpreter and the system folders, writes only to its data folder, no
//!   signals or abstract sockets outside its own domain;
//! - RLIMIT_AS from the manifest's `resource.memory`, RLIMIT_NPROC for its
//!   uid, no core files; a death signal and a process group so nothing it
//!   starts outlives it or the daemon.
//!
//! The uid and the process group are set by the daemon when it spawns; the
//! rest is applied by `plugind sandbox-exec` ([`exec`]) just before the
//! interpreter starts. Every feature is detected once at start and degrades
//! with one log line.

pub mod code;
pub mod env;
mod exec;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::process::Command;

pub use env::{EnvPolicy, SAFE_PATH};
pub use exec::{landlock_abi, run_from_env, ExecSpec, LandlockRules, SPEC_VAR};

/// The hidden subcommand that runs [`exec::run_from_env`].
pub const EXEC_SUBCOMMAND: &str = "sandbox-exec";
/// The hidden subcommand that kills every process of a plugin uid.
pub const KILL_SUBCOMMAND: &str = "sandbox-kill";

/// Default PLUGIN_UID_RANGE. Below Debian's reserved 60000–64999 and inside
/// the 65 536 ids a user-namespaced container maps.
pub const DEFAULT_UID_RANGE: (u32, u32) = (50_000, 59_999);
/// RLIMIT_NPROC for a plugin uid: counts its threads too.
const MAX_PROCESSES: u64 = 1024;
/// Address space a Python plugin reserves beyond what it uses: thread
/// stacks, malloc arenas, mapped libraries. RLIMIT_AS counts reservations,
/// so the limit is the manifest's memory plus this much.
pub const ADDRESS_SPACE_HEADROOM: u64 = 1 << 30;
/// Smallest memory a manifest can ask for; smaller values (the template's
/// 1 MiB, for instance) would keep any interpreter from starting.
pub const MIN_MEMORY: u64 = 128 << 20;

/// Where the per-plugin folders live, beside the plugins' code folders.
const DATA_DIR: &str = ".plugin-data";

/// System folders every plugin may read (and execute from).
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc",
    // The trampoline opens these before exec; /proc/self is then the
    // plugin's own pid, which exec keeps.
    "/proc/self",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
    "/dev/full",
];

/// Settings of the sandbox, from PLUGIN_* settings.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// PLUGIN_ENV_PASSTHROUGH: extra variable names a plugin gets.
    pub passthrough: Vec<String>,
    /// PLUGIN_UID_RANGE, inclusive.
    pub uid_range: (u32, u32),
    /// Give each plugin a uid of its own when the daemon is root. Daemons
    /// sharing a machine need disjoint ranges: a plugin's leftovers are
    /// killed by uid.
    pub own_uid: bool,
    /// PLUGIN_LANDLOCK_ENABLED.
    pub landlock: bool,
    /// The `plugind` binary that runs `sandbox-exec`; without it a plugin
    /// gets its environment, uid and process group but no Landlock, limits
    /// or death signal.
    pub helper: Option<PathBuf>,
    /// HOME of the uv/pip build steps (the daemon's, 0700).
    pub build_home: PathBuf,
    /// Folders plugins may read besides their own (the shared uv cache).
    pub read_only: Vec<PathBuf>,
}

/// What this machine enforces, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// The daemon's effective uid is 0, so plugins get uids of their own.
    pub own_uid: bool,
    /// The Landlock ABI in use, 0 for none.
    pub landlock_abi: i32,
    /// Limits and the death signal are applied (the helper binary is there).
    pub limits: bool,
}

/// The daemon-wide sandbox: policy, detected support, uid allocation.
#[derive(Debug)]
pub struct Sandbox {
    options: SandboxOptions,
    env: EnvPolicy,
    support: Support,
    /// Serialises uid allocation.
    allocate: Mutex<()>,
}

/// One plugin's confinement, derived once per launch spec.
#[derive(Debug, Clone)]
pub struct PluginJail {
    pub uid: Option<u32>,
    /// HOME, also the data folder a plugin may write.
    pub home: PathBuf,
    /// TMPDIR.
    pub tmp: PathBuf,
    pub env: Vec<(String, String)>,
    pub landlock: Option<LandlockRules>,
    pub address_space: Option<u64>,
    helper: Option<PathBuf>,
}

impl Sandbox {
    /// Detects support and takes the environment allow-list from this
    /// process's environment.
    pub fn new(options: SandboxOptions) -> Self {
        let mut own_uid = options.own_uid && nix::unistd::geteuid().is_root();
        let mut landlock_abi = if options.landlock && options.helper.is_some() {
            landlock_abi()
        } else {
            0
        };
        let mut limits = options.helper.is_some();
        if let Some(helper) = &options.helper {
            // One confined run of the helper itself (`plugind --version`)
            // tells whether this machine lets us do what the plugins will
            // need (a container without CAP_SETUID, a seccomp profile that
            // refuses Landlock…); each refusal turns one feature off.
            let probe = |uid: bool, landlock: bool| {
                probe_helper(helper, uid.then_some(options.uid_range.0), landlock)
            };
            if own_uid {
                if let Err(why) = probe(true, false) {
                    tracing::warn!("plugin isolation: cannot switch to a plugin uid ({why}); plugins run as the daemon's uid");
                    own_uid = false;
                }
            }
            if landlock_abi > 0 {
                if let Err(why) = probe(own_uid, true) {
                    tracing::warn!(
                        "plugin isolation: Landlock refused ({why}); plugins run without it"
                    );
                    landlock_abi = 0;
                }
            }
            if let Err(why) = probe(own_uid, landlock_abi > 0) {
                tracing::warn!("plugin isolation: the sandbox helper {} does not run ({why}); plugins start without limits", helper.display());
                limits = false;
                landlock_abi = 0;
            }
        }
        let support = Support {
            own_uid,
            landlock_abi,
            limits,
        };
        Self {
            env: EnvPolicy::from_process(&options.passthrough),
            options,
            support,
            allocate: Mutex::new(()),
        }
    }

    /// What is enforced here.
    pub fn support(&self) -> Support {
        self.support
    }

    /// One log line per feature: what is in force and what is not, and why.
    pub fn log_support(&self) {
        let s = self.support;
        let (lo, hi) = self.options.uid_range;
        if s.own_uid {
            tracing::info!("plugin isolation: each plugin runs as its own uid from PLUGIN_UID_RANGE {lo}-{hi}, with a private HOME and temp folder");
        } else {
            tracing::warn!(
                "plugin isolation: plugind is not root, so plugins run as its own uid ({}); still in force: clean environment, verified read-only code, Landlock and limits where listed below",
                nix::unistd::geteuid()
            );
        }
        match (s.landlock_abi, self.options.landlock, s.limits) {
            (0, false, _) => tracing::warn!("plugin isolation: Landlock disabled by PLUGIN_LANDLOCK_ENABLED=false"),
            (0, true, false) => tracing::warn!("plugin isolation: no sandbox helper binary, so no Landlock, memory limit or death signal"),
            (0, true, true) => tracing::warn!("plugin isolation: this kernel has no Landlock; plugins can read what their uid can"),
            (abi, _, _) => tracing::info!("plugin isolation: Landlock ABI {abi}: plugins reach only their code, venv, interpreter, system folders and their own data folder"),
        }
        if s.limits {
            tracing::info!("plugin isolation: memory limit from resource.memory as RLIMIT_AS (plus {} MiB for reservations), death signal and a process group per plugin", ADDRESS_SPACE_HEADROOM >> 20);
        }
    }

    /// The environment of a uv/pip build step.
    pub fn build_env(&self) -> Vec<(String, String)> {
        let home = &self.options.build_home;
        if let Err(e) = std::fs::create_dir_all(home) {
            tracing::warn!(home = %home.display(), "cannot create the build steps' HOME: {e}");
        }
        self.env.build(home)
    }

    /// Where interpreters plugin uids cannot reach are copied.
    pub fn stage_dir(&self) -> PathBuf {
        self.options
            .build_home
            .parent()
            .map(|p| p.join(STAGED_PYTHON))
            .unwrap_or_else(|| PathBuf::from(STAGED_PYTHON))
    }

    /// True when plugins run as a uid other than the daemon's, so every
    /// file they need must be readable by others.
    pub fn drops_privileges(&self) -> bool {
        self.support.own_uid
    }

    /// Prepares the folders and identity of the plugin unpacked in
    /// `code_dir` (named `dir_name`), with its venv in `venv_dir`. Its data
    /// folder is `.plugin-data/<dir_name>` beside the code folder.
    pub fn prepare(
        &self,
        dir_name: &str,
        code_dir: &Path,
        venv_dir: &Path,
        memory: Option<u64>,
    ) -> std::io::Result<PluginJail> {
        let working_path = code_dir.parent().unwrap_or(Path::new("/"));
        let data_root = working_path.join(DATA_DIR);
        let home = data_root.join(dir_name);
        let tmp = home.join("tmp");
        let uid = if self.support.own_uid {
            // The working path and the data root are traversable but not
            // listable; each plugin's folder is reachable by its gid only.
            set_mode(working_path, 0o711)?;
            std::fs::create_dir_all(&data_root)?;
            set_mode(&data_root, 0o711)?;
            let uid = self.allocate_uid(&data_root, &home)?;
            for dir in [&home, &tmp] {
                std::fs::create_dir_all(dir)?;
                std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
                set_mode(dir, 0o700)?;
            }
            std::os::unix::fs::chown(code_dir, Some(0), Some(uid))?;
            set_mode(code_dir, 0o750)?;
            if let Some(closed) = working_path.ancestors().find(|d| !searchable_by_others(d)) {
                return Err(std::io::Error::other(format!(
                    "plugins run as their own uid and cannot enter {}: make it searchable by others (chmod o+x) or move PLUGIN_WORKING_PATH",
                    closed.display()
                )));
            }
            Some(uid)
        } else {
            for dir in [&home, &tmp] {
                std::fs::create_dir_all(dir)?;
                set_mode(dir, 0o700)?;
            }
            None
        };
        let venv_bin = venv_dir.join("bin");
        let mut env = self.env.plugin(&venv_bin, &home, &tmp);
        let prefix = base_prefix(venv_dir);
        if let Some(lib) = prefix
            .as_ref()
            .and_then(|p| staged_lib(p, &self.stage_dir()))
        {
            env.push(("LD_LIBRARY_PATH".into(), lib.to_string_lossy().into_owned()));
        }
        let landlock = (self.support.landlock_abi > 0).then(|| {
            let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
            read.push(code_dir.to_owned());
            read.extend(prefix.clone());
            read.extend(self.options.read_only.iter().cloned());
            // A CA bundle outside /etc (a proxy's, say) must stay readable.
            read.extend(
                env.iter()
                    .filter(|(k, _)| {
                        matches!(
                            k.as_str(),
                            "SSL_CERT_FILE"
                                | "SSL_CERT_DIR"
                                | "REQUESTS_CA_BUNDLE"
                                | "CURL_CA_BUNDLE"
                        )
                    })
                    .map(|(_, v)| PathBuf::from(v)),
            );
            LandlockRules {
                read,
                write: vec![home.clone(), PathBuf::from("/dev/null")],
            }
        });
        let address_space = self
            .support
            .limits
            .then(|| memory.unwrap_or(0).max(MIN_MEMORY) + ADDRESS_SPACE_HEADROOM);
        Ok(PluginJail {
            uid,
            home,
            tmp,
            env,
            landlock,
            address_space,
            helper: self.options.helper.clone(),
        })
    }

    /// Removes a plugin's data folder (on uninstall); frees its uid.
    pub fn remove_data(&self, code_dir: &Path) -> std::io::Result<()> {
        let (Some(parent), Some(name)) = (code_dir.parent(), code_dir.file_name()) else {
            return Ok(());
        };
        let dir = parent.join(DATA_DIR).join(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The uid owning `home`, or a uid of the range no other plugin folder
    /// owns. The folder's owner is the record: nothing else has to be kept
    /// in step. The search starts at a point given by the folder's path, so
    /// two daemons that share a range by mistake rarely pick the same uid.
    fn allocate_uid(&self, data_root: &Path, home: &Path) -> std::io::Result<u32> {
        let _guard = self.allocate.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = self.options.uid_range;
        if let Ok(meta) = std::fs::metadata(home) {
            if (lo..=hi).contains(&meta.uid()) {
                return Ok(meta.uid());
            }
        }
        let mut used = BTreeSet::new();
        for entry in std::fs::read_dir(data_root)? {
            let entry = entry?;
            if entry.path() != home {
                used.insert(entry.metadata()?.uid());
            }
        }
        use sha2::Digest;
        let size = u64::from(hi - lo) + 1;
        let digest = sha2::Sha256::digest(home.as_os_str().as_encoded_bytes());
        let start = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % size;
        let uid = (0..size)
            .map(|i| lo + ((start + i) % size) as u32)
            .find(|u| !used.contains(u))
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "PLUGIN_UID_RANGE {lo}-{hi} has no free uid left for another plugin"
                ))
            })?;
        std::fs::create_dir_all(home)?;
        std::os::unix::fs::chown(home, Some(uid), Some(uid))?;
        Ok(uid)
    }
}

impl PluginJail {
    /// The command that starts `program args` in `cwd` confined by this jail,
    /// as the leader of a new process group.
    pub fn command(&self, program: &Path, args: &[String], cwd: &Path) -> Command {
        let mut cmd;
        if let Some(helper) = &self.helper {
            let spec = ExecSpec {
                program: program.to_owned(),
                args: args.to_vec(),
                cwd: cwd.to_owned(),
                env: self.env.clone(),
                uid: self.uid,
                gid: self.uid,
                address_space: self.address_space,
                max_processes: self.uid.map(|_| MAX_PROCESSES),
                parent_pid: std::process::id(),
                landlock: self.landlock.clone(),
                probe_only: false,
            };
            cmd = Command::new(helper);
            cmd.arg(EXEC_SUBCOMMAND)
                .env_clear()
                .env(
                    SPEC_VAR,
                    serde_json::to_string(&spec).expect("spec serialises"),
                )
                .current_dir(cwd);
        } else {
            cmd = Command::new(program);
            cmd.args(args)
                .current_dir(cwd)
                .env_clear()
                .envs(self.env.iter().map(|(k, v)| (k, v)));
            if let Some(uid) = self.uid {
                cmd.uid(uid).gid(uid);
            }
        }
        cmd.process_group(0);
        cmd
    }

    /// Kills what the plugin left behind once its main process is gone: its
    /// process group, and with a uid of its own every process of that uid
    /// (a child that left the group with `setsid` too).
    pub async fn kill_leftovers(&self, pid: Option<u32>) {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let (Some(uid), Some(helper)) = (self.uid, &self.helper) {
            let status = Command::new(helper)
                .arg(KILL_SUBCOMMAND)
                .arg(uid.to_string())
                .env_clear()
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await;
            if let Err(e) = status {
                tracing::warn!(uid, "cannot kill the processes of a plugin uid: {e}");
            }
        }
    }
}

/// Runs `helper sandbox-exec` with the uid change and Landlock asked for,
/// stopping short of running anything; Ok when it exits 0.
fn probe_helper(helper: &Path, uid: Option<u32>, landlock: bool) -> Result<(), String> {
    let spec = ExecSpec {
        probe_only: true,
        program: helper.to_owned(),
        args: vec![],
        cwd: PathBuf::from("/"),
        env: vec![],
        uid,
        gid: uid,
        address_space: None,
        max_processes: None,
        parent_pid: std::process::id(),
        landlock: landlock.then(|| LandlockRules {
            read: vec![PathBuf::from("/usr")],
            write: vec![],
        }),
    };
    let out = std::process::Command::new(helper)
        .arg(EXEC_SUBCOMMAND)
        .env_clear()
        .env(
            SPEC_VAR,
            serde_json::to_string(&spec).map_err(|e| e.to_string())?,
        )
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// `plugind sandbox-kill UID`: becomes `uid` and signals every process it
/// may (all of that uid's, and no other). Returns only on failure.
pub fn kill_uid(uid: &str) -> String {
    let uid: u32 = match uid.parse() {
        Ok(u) if u != 0 => u,
        _ => return format!("not a plugin uid: {uid:?}"),
    };
    let id = nix::unistd::Uid::from_raw(uid);
    let gid = nix::unistd::Gid::from_raw(uid);
    if let Err(e) = nix::unistd::setgroups(&[gid])
        .and_then(|()| nix::unistd::setresgid(gid, gid, gid))
        .and_then(|()| nix::unistd::setresuid(id, id, id))
    {
        return format!("cannot become uid {uid}: {e}");
    }
    // kill(-1) reaches every process the caller may signal except itself.
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-1),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => std::process::exit(0),
        Err(e) => format!("kill: {e}"),
    }
}

/// Makes the daemon's own files unreadable by plugin uids, once at start
/// (as root): the storage root is searchable only where the working path
/// lies beneath it, every other entry in it is 0700/0600, and so are the
/// database file and `.env`.
pub fn protect_daemon_files(storage_root: &Path, working_path: &Path, files: &[PathBuf]) {
    let working = std::fs::canonicalize(working_path).unwrap_or_else(|_| working_path.to_owned());
    let protect = |path: &Path, mode: u32| {
        if let Err(e) = set_mode(path, mode) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "cannot restrict permissions: {e}");
            }
        }
    };
    if let Ok(root) = std::fs::canonicalize(storage_root) {
        let holds_working = working.starts_with(&root) && working != root;
        protect(&root, if holds_working { 0o711 } else { 0o700 });
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let path = entry.path();
                if working.starts_with(&path) {
                    // The working path itself, or a folder above it.
                    protect(&path, 0o711);
                    continue;
                }
                let dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                protect(&path, if dir { 0o700 } else { 0o600 });
            }
        }
    }
    for file in files {
        protect(file, 0o600);
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The interpreter prefix a venv was made from (`home` in pyvenv.cfg is its
/// `bin` folder).
fn base_prefix(venv_dir: &Path) -> Option<PathBuf> {
    let cfg = std::fs::read_to_string(venv_dir.join("pyvenv.cfg")).ok()?;
    let home = cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "home").then(|| PathBuf::from(value.trim()))
    })?;
    let home = std::fs::canonicalize(home).ok()?;
    home.parent().map(Path::to_owned)
}

/// The `lib` folder of an interpreter staged under the working path, whose
/// libpython the loader must find there rather than at the original
/// prefix the binary names.
fn staged_lib(prefix: &Path, stage_dir: &Path) -> Option<PathBuf> {
    let staging = std::fs::canonicalize(stage_dir).ok()?;
    prefix
        .starts_with(&staging)
        .then(|| prefix.join("lib"))
        .filter(|lib| lib.is_dir())
}

/// Where interpreters unreachable by plugin uids are copied, beside the
/// build home in PLUGIN_WORKING_PATH.
pub const STAGED_PYTHON: &str = ".python";

/// The `plugind` binary to run `sandbox-exec` with: this executable when
/// it is plugind, else a `plugind` beside it (tests run from `deps/`).
pub fn helper_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "plugind") {
        return Some(exe);
    }
    let dir = exe.parent()?;
    [dir.join("plugind"), dir.parent()?.join("plugind")]
        .into_iter()
        .find(|p| p.is_file())
}

fn searchable_by_others(dir: &Path) -> bool {
    std::fs::metadata(dir)
        .map(|m| m.permissions().mode() & 0o001 != 0)
        .unwrap_or(false)
}

/// True when a process of another uid (no shared group) can run `path`:
/// every folder above it is searchable by others and the file is
/// executable by others.
pub fn reachable_by_others(path: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    let executable = std::fs::metadata(&real)
        .map(|m| m.permissions().mode() & 0o005 == 0o005)
        .unwrap_or(false);
    executable && real.ancestors().skip(1).all(searchable_by_others)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(working: &Path) -> SandboxOptions {
        SandboxOptions {
            passthrough: vec![],
            uid_range: DEFAULT_UID_RANGE,
            own_uid: true,
            landlock: true,
            helper: None,
            build_home: working.join(".build-home"),
            read_only: vec![],
        }
    }

    #[test]
    fn a_jail_has_its_own_home_and_a_clean_environment() {
        let tmp = tempfile::tempdir().unwrap();
        set_mode(tmp.path(), 0o711).unwrap();
        let code = tmp.path().join("a_b_0.0.1@x");
        std::fs::create_dir_all(code.join(".venv/bin")).unwrap();
        let sandbox = Sandbox::new(options(tmp.path()));
        let jail = sandbox
            .prepare("a_b_0.0.1@x", &code, &code.join(".venv"), Some(256 << 20))
            .unwrap();
        assert!(jail.home.is_dir() && jail.tmp.is_dir());
        assert_eq!(
            std::fs::metadata(&jail.home).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let env: std::collections::BTreeMap<_, _> = jail.env.iter().cloned().collect();
        assert_eq!(env["HOME"], jail.home.to_string_lossy());
        assert!(!env.contains_key("SERVER_KEY"));
        // Without the helper there is nothing to apply limits or Landlock.
        assert_eq!(jail.address_space, None);
        assert_eq!(jail.landlock, None);
        assert_eq!(jail.uid.is_some(), nix::unistd::geteuid().is_root());
    }

    #[test]
    fn uids_are_allocated_once_per_plugin_and_kept() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        set_mode(tmp.path(), 0o711).unwrap();
        let sandbox = Sandbox::new(options(tmp.path()));
        let mut uids = Vec::new();
        for name in ["p1", "p2", "p1"] {
            let code = tmp.path().join(name);
            std::fs::create_dir_all(code.join(".venv")).unwrap();
            let jail = sandbox
                .prepare(name, &code, &code.join(".venv"), None)
                .unwrap();
            uids.push(jail.uid.unwrap());
            let meta = std::fs::metadata(&code).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (0, jail.uid.unwrap()));
            assert_eq!(meta.permissions().mode() & 0o777, 0o750);
        }
        assert_ne!(uids[0], uids[1], "each plugin has its own uid");
        assert_eq!(uids[0], uids[2], "a plugin keeps its uid");
        assert!(uids.iter().all(|u| (50_000..=59_999).contains(u)));
        sandbox.remove_data(&tmp.path().join("p1")).unwrap();
        assert!(!tmp.path().join(".plugin-data/p1").exists());
    }

    #[test]
    fn reachability_follows_every_folder_above() {
        let tmp = tempfile::tempdir().unwrap();
        let private = tmp.path().join("private");
        let bin = private.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("python3");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        set_mode(&exe, 0o755).unwrap();
        set_mode(tmp.path(), 0o755).unwrap();
        set_mode(&private, 0o755).unwrap();
        let open = reachable_by_others(&exe);
        set_mode(&private, 0o700).unwrap();
        assert!(!reachable_by_others(&exe));
        // Above the temp folder the system's own folders decide; /tmp is
        // searchable by everyone.
        assert!(open);
    }
}
