//! The build half of the pipeline: `.difypkg` → Lambda artifact zip.
//!
//! Layout of the zip (the contract with `functions/plugin-runner`):
//! plugin files at the root (so `python -m <entrypoint>` runs with cwd
//! `/var/task`), Python dependencies under `deps/`, the bootstrap at
//! `bin/plugin-runner` (mode 0755) and `plugind-artifact.json`. Entries are
//! sorted, carry the fixed DOS time 1980-01-01 00:00 and their unix modes,
//! and there are no directory entries, so equal inputs give equal bytes and
//! the sha256 of the zip names its S3 key.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

/// The artifact description at the zip root.
pub const ARTIFACT_FILE: &str = "plugind-artifact.json";
/// Where the bootstrap sits in the zip (`/var/task/bin/plugin-runner`).
pub const BOOTSTRAP_PATH: &str = "bin/plugin-runner";
/// The dependency folder (PYTHONPATH of the plugin on Lambda).
pub const DEPS_DIR: &str = "deps";
/// Lambda's limit on the unzipped deployment package (250 MB).
pub const MAX_UNZIPPED_BYTES: u64 = 262_144_000;
/// Lambda's limit on a zip uploaded directly with the API call (50 MB).
pub const MAX_ZIPPED_DIRECT_BYTES: u64 = 52_428_800;
/// How many of uv's last output lines an error carries.
const TAIL_LINES: usize = 20;

/// A Lambda architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// `x86_64`.
    X86_64,
    /// `arm64` (Graviton).
    Arm64,
}

impl Arch {
    /// Accepts Lambda's, Dify's and the kernel's names.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x64" => Some(Self::X86_64),
            "arm64" | "aarch64" => Some(Self::Arm64),
            _ => None,
        }
    }

    /// Lambda's name (`Architectures` of CreateFunction; also the folder name
    /// under PLUGIN_LAMBDA_BOOTSTRAP_DIR).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        }
    }

    /// uv's `--python-platform`. The python3.12+ managed runtimes run on
    /// Amazon Linux 2023 (glibc 2.34), so manylinux_2_28 wheels load there.
    pub fn uv_platform(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-manylinux_2_28",
            Self::Arm64 => "aarch64-manylinux_2_28",
        }
    }

    /// The ELF `e_machine` of binaries for this architecture.
    fn elf_machine(self) -> u16 {
        match self {
            Self::X86_64 => 62,
            Self::Arm64 => 183,
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("unknown architecture {s:?} (x86_64 or arm64)"))
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the zip reaches Lambda, which decides the zipped size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// `ZipFile` in the API call: at most 50 MB zipped.
    Direct,
    /// From S3: only the unzipped limit applies.
    S3,
}

/// A stage of the build, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStep {
    /// Reading the package and its manifest.
    Decoding,
    /// `uv pip install` for the target platform.
    ResolvingDependencies,
    /// Writing the zip.
    Zipping,
}

impl BuildStep {
    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Decoding => "decoding package",
            Self::ResolvingDependencies => "resolving dependencies",
            Self::Zipping => "writing artifact",
        }
    }
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// A step began.
    Started(BuildStep),
    /// A line of uv's output.
    Output(String),
    /// Zip entries written so far, out of `total`.
    Files { done: u64, total: u64 },
    /// A step ended.
    Finished(BuildStep),
}

/// Receives progress while an artifact is built.
pub type ProgressFn = Arc<dyn Fn(BuildEvent) + Send + Sync>;

/// What the build needs besides the package.
#[derive(Clone)]
pub struct BuildOptions {
    /// Target architecture.
    pub arch: Arch,
    /// Target Python version (`3.12`); the manifest's `meta.runner.version`
    /// when `None`.
    pub python_version: Option<String>,
    /// The `plugin-runner` binary built for `arch`.
    pub bootstrap: PathBuf,
    /// The uv binary.
    pub uv: PathBuf,
    /// uv's cache, shared between builds so warm builds are fast.
    pub cache_dir: Option<PathBuf>,
    /// Extra `uv pip install` arguments (index URL, mirror…).
    pub extra_uv_args: Vec<String>,
    /// Prefix of the S3 key (PLUGIN_STORAGE_S3_PREFIX), e.g. `plugind/`.
    pub s3_prefix: String,
    /// The plugin's unique identifier; computed from the package when `None`.
    pub identifier: Option<String>,
    /// Decides the zipped size limit.
    pub upload: UploadMode,
    /// Progress receiver.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("arch", &self.arch)
            .field("python_version", &self.python_version)
            .field("bootstrap", &self.bootstrap)
            .field("uv", &self.uv)
            .field("cache_dir", &self.cache_dir)
            .field("s3_prefix", &self.s3_prefix)
            .field("upload", &self.upload)
            .finish_non_exhaustive()
    }
}

impl BuildOptions {
    /// Options with the defaults: S3 upload, no prefix, no progress.
    pub fn new(arch: Arch, bootstrap: impl Into<PathBuf>, uv: impl Into<PathBuf>) -> Self {
        Self {
            arch,
            python_version: None,
            bootstrap: bootstrap.into(),
            uv: uv.into(),
            cache_dir: None,
            extra_uv_args: Vec::new(),
            s3_prefix: String::new(),
            identifier: None,
            upload: UploadMode::S3,
            progress: None,
        }
    }

    fn report(&self, event: BuildEvent) {
        if let Some(p) = &self.progress {
            p(event);
        }
    }
}

/// `plugind-artifact.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    /// The plugin's unique identifier (`author/name:version@checksum`).
    pub identifier: String,
    /// The module run with `python -m`.
    pub entrypoint: String,
    /// The Python version the dependencies were resolved for.
    pub python_version: String,
    /// The architecture.
    pub arch: Arch,
    /// The manifest's runner version.
    pub runner_version: String,
}

impl ArtifactInfo {
    /// The managed runtime the function needs (`python3.12`).
    pub fn lambda_runtime(&self) -> String {
        format!("python{}", self.python_version)
    }
}

/// A built artifact.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The zip.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`, lowercase hex.
    pub sha256: String,
    /// Zipped size in bytes.
    pub size: u64,
    /// Sum of the entries' sizes.
    pub unzipped_size: u64,
    /// `<prefix>artifacts/<sha256>.zip`.
    pub s3_key: String,
    /// What `plugind-artifact.json` says.
    pub info: ArtifactInfo,
}

/// Why an artifact could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PackagerError {
    /// The package is not a readable zip, or has an unsafe entry.
    #[error("invalid plugin package: {0}")]
    InvalidPackage(String),
    /// `manifest.yaml` is missing or lacks what the build needs.
    #[error("invalid manifest.yaml: {0}")]
    Manifest(String),
    /// The plugin is not a Python plugin.
    #[error("unsupported runner language {0:?}: only python plugins can be packaged for Lambda")]
    UnsupportedLanguage(String),
    /// The package has neither requirements.txt nor pyproject.toml.
    #[error("the package has neither requirements.txt nor pyproject.toml")]
    NoDependencyFile,
    /// A plugin file collides with a path the artifact reserves.
    #[error("the package contains {0:?}, a path the Lambda artifact reserves")]
    ReservedPath(String),
    /// The bootstrap binary is missing or for another architecture.
    #[error("bootstrap {path}: {reason}")]
    Bootstrap { path: PathBuf, reason: String },
    /// uv could not run.
    #[error("cannot run uv ({path}): {source}")]
    UvNotFound {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// uv failed, typically a dependency without a wheel for the platform.
    #[error("resolving dependencies for python {python} on {platform} failed ({status}); last output:\n{tail}")]
    Dependencies {
        python: String,
        platform: &'static str,
        status: String,
        tail: String,
    },
    /// The artifact is over one of Lambda's size limits.
    #[error("the artifact is too large for Lambda: {what} size {size} bytes exceeds the limit of {limit} bytes; largest parts: {largest}")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
        largest: String,
    },
    /// A filesystem failure, with the step and path.
    #[error("{step}: {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the zip failed.
    #[error("writing the artifact zip: {0}")]
    Zip(#[from] zip::result::ZipError),
}

fn io_err(
    step: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> PackagerError {
    let path = path.into();
    move |source| PackagerError::Io { step, path, source }
}

/// One file of the artifact.
struct Entry {
    content: Vec<u8>,
    mode: u32,
}

/// The manifest fields the build reads.
#[derive(Debug, Deserialize)]
struct Manifest {
    name: String,
    author: String,
    version: String,
    meta: Meta,
}

#[derive(Debug, Deserialize)]
struct Meta {
    runner: Runner,
}

#[derive(Debug, Deserialize)]
struct Runner {
    language: String,
    version: serde_yaml::Value,
    entrypoint: String,
}

/// Builds the Lambda artifact of a `.difypkg`.
pub fn build_artifact(pkg: &[u8], opts: &BuildOptions) -> Result<Artifact, PackagerError> {
    opts.report(BuildEvent::Started(BuildStep::Decoding));
    let files = read_package(pkg)?;
    let manifest = files
        .get("manifest.yaml")
        .ok_or_else(|| PackagerError::Manifest("missing from the package root".into()))?;
    let manifest: Manifest = serde_yaml::from_slice(&manifest.content)
        .map_err(|e| PackagerError::Manifest(e.to_string()))?;
    if !manifest.meta.runner.language.eq_ignore_ascii_case("python") {
        return Err(PackagerError::UnsupportedLanguage(
            manifest.meta.runner.language,
        ));
    }
    let runner_version = yaml_scalar(&manifest.meta.runner.version);
    let python_version = opts
        .python_version
        .clone()
        .unwrap_or_else(|| runner_version.clone());
    let entrypoint = manifest.meta.runner.entrypoint.trim().to_owned();
    if entrypoint.is_empty() {
        return Err(PackagerError::Manifest(
            "meta.runner.entrypoint is empty".into(),
        ));
    }
    for path in files.keys() {
        if path == BOOTSTRAP_PATH || path == ARTIFACT_FILE || path.starts_with("deps/") {
            return Err(PackagerError::ReservedPath(path.clone()));
        }
    }
    let identifier = opts.identifier.clone().unwrap_or_else(|| {
        let sum = package_checksum(&files);
        format!(
            "{}/{}:{}@{sum}",
            manifest.author, manifest.name, manifest.version
        )
    });
    let bootstrap = read_bootstrap(&opts.bootstrap, opts.arch)?;
    opts.report(BuildEvent::Finished(BuildStep::Decoding));

    opts.report(BuildEvent::Started(BuildStep::ResolvingDependencies));
    let work = tempfile::Builder::new()
        .prefix("plugind-artifact-")
        .tempdir()
        .map_err(io_err("creating a work folder", std::env::temp_dir()))?;
    let deps = resolve_dependencies(&files, work.path(), &python_version, opts)?;
    opts.report(BuildEvent::Finished(BuildStep::ResolvingDependencies));

    let info = ArtifactInfo {
        identifier,
        entrypoint,
        python_version,
        arch: opts.arch,
        runner_version,
    };
    let mut entries: BTreeMap<String, Entry> = files;
    for (path, entry) in deps {
        entries.insert(format!("{DEPS_DIR}/{path}"), entry);
    }
    entries.insert(
        BOOTSTRAP_PATH.into(),
        Entry {
            content: bootstrap,
            mode: 0o755,
        },
    );
    let mut description = serde_json::to_vec_pretty(&info).expect("info serializes");
    description.push(b'\n');
    entries.insert(
        ARTIFACT_FILE.into(),
        Entry {
            content: description,
            mode: 0o644,
        },
    );

    let unzipped_size: u64 = entries.values().map(|e| e.content.len() as u64).sum();
    if unzipped_size > MAX_UNZIPPED_BYTES {
        return Err(PackagerError::TooLarge {
            what: "unzipped",
            size: unzipped_size,
            limit: MAX_UNZIPPED_BYTES,
            largest: largest_parts(&entries),
        });
    }
    opts.report(BuildEvent::Started(BuildStep::Zipping));
    let bytes = write_zip(&entries, opts)?;
    opts.report(BuildEvent::Finished(BuildStep::Zipping));
    let size = bytes.len() as u64;
    if opts.upload == UploadMode::Direct && size > MAX_ZIPPED_DIRECT_BYTES {
        return Err(PackagerError::TooLarge {
            what: "zipped (direct upload; upload through S3 instead)",
            size,
            limit: MAX_ZIPPED_DIRECT_BYTES,
            largest: largest_parts(&entries),
        });
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let s3_key = s3_key(&opts.s3_prefix, &sha256);
    Ok(Artifact {
        bytes,
        sha256,
        size,
        unzipped_size,
        s3_key,
        info,
    })
}

/// `<prefix>artifacts/<sha256>.zip`.
pub fn s3_key(prefix: &str, sha256: &str) -> String {
    format!("{prefix}artifacts/{sha256}.zip")
}

/// The plugin's files, by path. Directory entries are skipped; a path that
/// leaves the root is refused.
fn read_package(pkg: &[u8]) -> Result<BTreeMap<String, Entry>, PackagerError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(pkg))
        .map_err(|e| PackagerError::InvalidPackage(e.to_string()))?;
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    for i in 0..zip.len() {
        let mut file = zip
            .by_index(i)
            .map_err(|e| PackagerError::InvalidPackage(e.to_string()))?;
        if file.is_dir() {
            continue;
        }
        let name = file.name().to_owned();
        if file.enclosed_name().is_none() || name.starts_with('/') {
            return Err(PackagerError::InvalidPackage(format!(
                "unsafe entry path {name:?}"
            )));
        }
        total = total.saturating_add(file.size());
        if total > MAX_UNZIPPED_BYTES {
            return Err(PackagerError::TooLarge {
                what: "package files",
                size: total,
                limit: MAX_UNZIPPED_BYTES,
                largest: name,
            });
        }
        // Plugin files keep their mode when the package recorded one; a
        // package built on Windows has none.
        let mode = file
            .unix_mode()
            .map(|m| m & 0o777)
            .filter(|m| *m != 0)
            .unwrap_or(0o644);
        let mut content = Vec::with_capacity(file.size() as usize);
        file.read_to_end(&mut content)
            .map_err(|e| PackagerError::InvalidPackage(format!("{name}: {e}")))?;
        files.insert(name, Entry { content, mode });
    }
    Ok(files)
}

/// The package checksum (PROTOCOL.md §6): entries sorted by path, sha256 of
/// the concatenated sha256(path) ‖ sha256(content).
fn package_checksum(files: &BTreeMap<String, Entry>) -> String {
    let mut outer = Sha256::new();
    for (path, entry) in files {
        outer.update(Sha256::digest(path.as_bytes()));
        outer.update(Sha256::digest(&entry.content));
    }
    hex::encode(outer.finalize())
}

fn yaml_scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// Reads the bootstrap and checks it is an ELF binary for `arch`.
fn read_bootstrap(path: &Path, arch: Arch) -> Result<Vec<u8>, PackagerError> {
    let bytes = std::fs::read(path).map_err(|e| PackagerError::Bootstrap {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| PackagerError::Bootstrap {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err(bad("not an ELF executable".into()));
    }
    // e_machine sits at offset 18; EI_DATA (offset 5) says its byte order.
    let machine = if bytes[5] == 2 {
        u16::from_be_bytes([bytes[18], bytes[19]])
    } else {
        u16::from_le_bytes([bytes[18], bytes[19]])
    };
    if machine != arch.elf_machine() {
        return Err(bad(format!(
            "built for ELF machine {machine}, not for {arch} (machine {})",
            arch.elf_machine()
        )));
    }
    Ok(bytes)
}

/// Installs the package's dependencies for the target into `work/deps` and
/// returns its files, paths relative to `deps/`.
fn resolve_dependencies(
    files: &BTreeMap<String, Entry>,
    work: &Path,
    python_version: &str,
    opts: &BuildOptions,
) -> Result<Vec<(String, Entry)>, PackagerError> {
    let dep_file = ["requirements.txt", "pyproject.toml"]
        .into_iter()
        .find(|name| files.contains_key(*name))
        .ok_or(PackagerError::NoDependencyFile)?;
    let spec_dir = work.join("spec");
    std::fs::create_dir_all(&spec_dir).map_err(io_err("creating a work folder", &spec_dir))?;
    let spec = spec_dir.join(dep_file);
    std::fs::write(&spec, &files[dep_file].content)
        .map_err(io_err("writing the dependency list", &spec))?;
    let target = work.join(DEPS_DIR);
    let platform = opts.arch.uv_platform();
    let mut cmd = Command::new(&opts.uv);
    cmd.args(["pip", "install", "--target"])
        .arg(&target)
        .args([
            "--python-version",
            python_version,
            "--python-platform",
            platform,
        ])
        .args(["--only-binary", ":all:", "--no-compile", "-r"])
        .arg(&spec)
        .args(&opts.extra_uv_args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cache) = &opts.cache_dir {
        cmd.arg("--cache-dir").arg(cache);
    }
    let mut child = cmd.spawn().map_err(|source| PackagerError::UvNotFound {
        path: opts.uv.clone(),
        source,
    })?;
    let tail = Arc::new(Mutex::new(std::collections::VecDeque::with_capacity(
        TAIL_LINES,
    )));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tail = tail.clone();
        let progress = opts.progress.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(p) = &progress {
                    p(BuildEvent::Output(line.clone()));
                }
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        })
    })
    .collect();
    let status = child.wait().map_err(io_err("waiting for uv", &opts.uv))?;
    for reader in readers {
        let _ = reader.join();
    }
    if !status.success() {
        let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        return Err(PackagerError::Dependencies {
            python: python_version.to_owned(),
            platform,
            status: status.to_string(),
            tail: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
        });
    }
    let mut out = Vec::new();
    collect_tree(&target, &target, &mut out)?;
    Ok(out)
}

/// Every regular file under `dir`, with its mode; symlinks are followed so
/// the zip holds plain files.
fn collect_tree(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, Entry)>,
) -> Result<(), PackagerError> {
    use std::os::unix::fs::PermissionsExt;
    let read = std::fs::read_dir(dir).map_err(io_err("listing dependencies", dir))?;
    for item in read {
        let item = item.map_err(io_err("listing dependencies", dir))?;
        let path = item.path();
        let meta =
            std::fs::metadata(&path).map_err(io_err("reading dependency metadata", &path))?;
        if meta.is_dir() {
            collect_tree(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("under the root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            if rel.split('/').any(|part| part == "__pycache__") {
                continue;
            }
            let content =
                std::fs::read(&path).map_err(io_err("reading a dependency file", &path))?;
            let mode = meta.permissions().mode() & 0o777;
            // Lambda runs as another user than the one who owns the files:
            // everything must be world-readable, executables world-runnable.
            let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            out.push((rel, Entry { content, mode }));
        }
    }
    Ok(())
}

/// Writes the deterministic zip.
fn write_zip(
    entries: &BTreeMap<String, Entry>,
    opts: &BuildOptions,
) -> Result<Vec<u8>, PackagerError> {
    let total = entries.len() as u64;
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (done, (path, entry)) in entries.iter().enumerate() {
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(entry.mode);
        zip.start_file(path.as_str(), options)?;
        zip.write_all(&entry.content)
            .map_err(io_err("writing the artifact zip", path.as_str()))?;
        let done = done as u64 + 1;
        if done.is_multiple_of(64) || done == total {
            opts.report(BuildEvent::Files { done, total });
        }
    }
    Ok(zip.finish()?.into_inner())
}

/// The five biggest top-level parts (`deps/<package>` or a plugin file).
fn largest_parts(entries: &BTreeMap<String, Entry>) -> String {
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    for (path, entry) in entries {
        let mut parts = path.splitn(3, '/');
        let first = parts.next().unwrap_or_default();
        let key = match (first, parts.next()) {
            (DEPS_DIR, Some(second)) => format!("{DEPS_DIR}/{second}"),
            _ => first.to_owned(),
        };
        *sizes.entry(key).or_default() += entry.content.len() as u64;
    }
    let mut sizes: Vec<_> = sizes.into_iter().collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sizes
        .iter()
        .take(5)
        .map(|(k, v)| format!("{k} ({v} bytes)"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, content, mode) in files {
            zip.start_file(*name, SimpleFileOptions::default().unix_permissions(*mode))
                .unwrap();
            zip.write_all(content).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    const MANIFEST: &[u8] = b"version: 0.0.1\ntype: plugin\nauthor: a\nname: p\nmeta:\n  runner:\n    language: python\n    version: \"3.12\"\n    entrypoint: main\n";

    /// A fake uv: writes one dependency file (a script: arguments are echoed
    /// so the test can check them).
    fn fake_uv(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("uv");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn this_binary_arch() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::X86_64
        }
    }

    fn options(dir: &Path, uv_body: &str) -> BuildOptions {
        // Any ELF for this machine serves as a bootstrap: use /bin/sh's target.
        let bootstrap = std::fs::canonicalize("/bin/sh").unwrap();
        BuildOptions::new(this_binary_arch(), bootstrap, fake_uv(dir, uv_body))
    }

    /// Writes one package and the uv arguments (work paths masked, so equal
    /// inputs stay equal).
    const WRITE_DEP: &str = r#"ARGS="$*"; while [ "$1" != "--target" ]; do shift; done; T="$2"; mkdir -p "$T/dep/__pycache__"; echo "x = 1" > "$T/dep/__init__.py"; echo junk > "$T/dep/__pycache__/a.pyc"; echo "$ARGS" | sed "s#$T#TARGET#g; s#[^ ]*/spec/#SPEC/#g" > "$T/dep/args.txt""#;

    #[test]
    fn artifacts_are_deterministic_and_laid_out() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BuildOptions {
            s3_prefix: "plugind/".into(),
            ..options(dir.path(), WRITE_DEP)
        };
        let pkg = pkg(&[
            ("main.py", b"print(1)\n", 0o644),
            ("manifest.yaml", MANIFEST, 0o644),
            ("requirements.txt", b"dify_plugin\n", 0o644),
            ("tools/run.sh", b"#!/bin/sh\n", 0o755),
        ]);
        let a = build_artifact(&pkg, &opts).unwrap();
        let b = build_artifact(&pkg, &opts).unwrap();
        assert_eq!(a.bytes, b.bytes, "same input, same bytes");
        assert_eq!(a.sha256, hex::encode(Sha256::digest(&a.bytes)));
        assert_eq!(a.s3_key, format!("plugind/artifacts/{}.zip", a.sha256));
        assert_eq!(a.size, a.bytes.len() as u64);

        let mut zip = zip::ZipArchive::new(Cursor::new(&a.bytes)).unwrap();
        let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries are sorted");
        assert!(
            names.iter().all(|n| !n.ends_with('/')),
            "no directory entries: {names:?}"
        );
        assert!(
            names.contains(&"deps/dep/__init__.py".to_string()),
            "{names:?}"
        );
        assert!(
            !names.iter().any(|n| n.contains("__pycache__")),
            "{names:?}"
        );
        for i in 0..zip.len() {
            let f = zip.by_index(i).unwrap();
            assert_eq!(
                f.last_modified(),
                Some(zip::DateTime::default()),
                "{}",
                f.name()
            );
        }
        assert_eq!(
            zip.by_name(BOOTSTRAP_PATH).unwrap().unix_mode().unwrap() & 0o777,
            0o755
        );
        assert_eq!(
            zip.by_name("tools/run.sh").unwrap().unix_mode().unwrap() & 0o777,
            0o755
        );
        assert_eq!(
            zip.by_name("main.py").unwrap().unix_mode().unwrap() & 0o777,
            0o644
        );

        let mut args = String::new();
        zip.by_name("deps/dep/args.txt")
            .unwrap()
            .read_to_string(&mut args)
            .unwrap();
        let platform = this_binary_arch().uv_platform();
        assert!(
            args.contains(&format!(
                "--python-version 3.12 --python-platform {platform}"
            )),
            "{args}"
        );
        assert!(args.contains("--only-binary :all:"), "{args}");

        let mut info = String::new();
        zip.by_name(ARTIFACT_FILE)
            .unwrap()
            .read_to_string(&mut info)
            .unwrap();
        let info: ArtifactInfo = serde_json::from_str(&info).unwrap();
        assert_eq!(info, a.info);
        assert_eq!(info.entrypoint, "main");
        assert_eq!(info.python_version, "3.12");
        assert_eq!(info.lambda_runtime(), "python3.12");
        assert!(
            info.identifier.starts_with("a/p:0.0.1@"),
            "{}",
            info.identifier
        );
    }

    #[test]
    fn a_different_package_gives_a_different_key() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), WRITE_DEP);
        let one = pkg(&[
            ("manifest.yaml", MANIFEST, 0o644),
            ("requirements.txt", b"a\n", 0o644),
        ]);
        let two = pkg(&[
            ("manifest.yaml", MANIFEST, 0o644),
            ("requirements.txt", b"b\n", 0o644),
        ]);
        assert_ne!(
            build_artifact(&one, &opts).unwrap().s3_key,
            build_artifact(&two, &opts).unwrap().s3_key
        );
    }

    #[test]
    fn uv_failures_carry_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), "echo 'no wheel for pkg-x' >&2; exit 1");
        let pkg = pkg(&[
            ("manifest.yaml", MANIFEST, 0o644),
            ("requirements.txt", b"pkg-x\n", 0o644),
        ]);
        let err = build_artifact(&pkg, &opts).unwrap_err();
        assert!(matches!(err, PackagerError::Dependencies { .. }), "{err}");
        assert!(err.to_string().contains("no wheel for pkg-x"), "{err}");
    }

    #[test]
    fn oversized_artifacts_are_refused_with_the_largest_parts() {
        let dir = tempfile::tempdir().unwrap();
        let big = r#"while [ "$1" != "--target" ]; do shift; done; mkdir -p "$2/huge"; head -c 270000000 /dev/zero > "$2/huge/blob.bin""#;
        let opts = options(dir.path(), big);
        let pkg = pkg(&[
            ("manifest.yaml", MANIFEST, 0o644),
            ("requirements.txt", b"huge\n", 0o644),
        ]);
        let err = build_artifact(&pkg, &opts).unwrap_err();
        match &err {
            PackagerError::TooLarge {
                what,
                limit,
                largest,
                ..
            } => {
                assert_eq!(*what, "unzipped");
                assert_eq!(*limit, MAX_UNZIPPED_BYTES);
                assert!(largest.starts_with("deps/huge"), "{largest}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn direct_uploads_are_held_to_the_zipped_limit() {
        let dir = tempfile::tempdir().unwrap();
        // Random bytes do not compress: 60 MB stays 60 MB zipped.
        let big = r#"while [ "$1" != "--target" ]; do shift; done; mkdir -p "$2/noise"; head -c 60000000 /dev/urandom > "$2/noise/n.bin""#;
        let mut opts = options(dir.path(), big);
        opts.upload = UploadMode::Direct;
        let pkg = pkg(&[
            ("manifest.yaml", MANIFEST, 0o644),
            ("requirements.txt", b"n\n", 0o644),
        ]);
        let err = build_artifact(&pkg, &opts).unwrap_err();
        assert!(err.to_string().contains("upload through S3"), "{err}");
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path(), WRITE_DEP);
        let no_deps = pkg(&[("manifest.yaml", MANIFEST, 0o644)]);
        assert!(matches!(
            build_artifact(&no_deps, &opts),
            Err(PackagerError::NoDependencyFile)
        ));
        let reserved = pkg(&[
            ("manifest.yaml", MANIFEST, 0o644),
            ("requirements.txt", b"a\n", 0o644),
            ("bin/plugin-runner", b"x", 0o755),
        ]);
        assert!(matches!(
            build_artifact(&reserved, &opts),
            Err(PackagerError::ReservedPath(_))
        ));
        let go = pkg(&[(
            "manifest.yaml",
            b"version: 0.0.1\nauthor: a\nname: p\nmeta:\n  runner:\n    language: go\n    version: '1'\n    entrypoint: main\n",
            0o644,
        )]);
        assert!(matches!(
            build_artifact(&go, &opts),
            Err(PackagerError::UnsupportedLanguage(_))
        ));
        let mut wrong_arch = opts.clone();
        wrong_arch.arch = if this_binary_arch() == Arch::X86_64 {
            Arch::Arm64
        } else {
            Arch::X86_64
        };
        let ok = pkg(&[
            ("manifest.yaml", MANIFEST, 0o644),
            ("requirements.txt", b"a\n", 0o644),
        ]);
        let err = build_artifact(&ok, &wrong_arch).unwrap_err();
        assert!(matches!(err, PackagerError::Bootstrap { .. }), "{err}");
    }

    #[test]
    fn arch_names_parse() {
        assert_eq!(Arch::parse("amd64"), Some(Arch::X86_64));
        assert_eq!(Arch::parse("aarch64"), Some(Arch::Arm64));
        assert_eq!(Arch::parse("ARM64"), Some(Arch::Arm64));
        assert_eq!(Arch::parse("s390x"), None);
        assert_eq!(Arch::X86_64.uv_platform(), "x86_64-manylinux_2_28");
    }
}
