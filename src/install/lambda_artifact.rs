//! The production [`ArtifactBuilder`]: the packager's pipeline
//! (`plugind_packager::build_artifact`) with the daemon's uv, its download
//! cache and package index, and the `plugin-runner` bootstrap of the target
//! architecture.
//!
//! The build resolves wheels and writes a zip, which is blocking work of
//! seconds to minutes, so it runs on tokio's blocking pool.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use plugind_packager::{build_artifact, Arch, BuildOptions, ProgressFn, UploadMode};

use super::serverless::{Artifact, ArtifactBuilder};
use crate::runtime::python_env::{ensure_uv, no_progress, PythonEnvConfig};
use crate::settings::Settings;

/// The bootstrap's file name, in `<dir>/<arch>/` and next to `plugind`.
pub const BOOTSTRAP_FILE: &str = "plugin-runner";

/// Builds Lambda artifacts with the packager.
#[derive(Clone)]
pub struct PackagerBuilder {
    env: PythonEnvConfig,
    bootstrap_dir: Option<PathBuf>,
    s3_prefix: String,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for PackagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackagerBuilder")
            .field("bootstrap_dir", &self.bootstrap_dir)
            .field("s3_prefix", &self.s3_prefix)
            .finish_non_exhaustive()
    }
}

impl PackagerBuilder {
    /// A builder with the daemon's uv settings (UV_PATH, UV_CACHE_DIR,
    /// PIP_MIRROR_URL, PIP_EXTRA_ARGS), PLUGIN_LAMBDA_BOOTSTRAP_DIR and
    /// PLUGIN_STORAGE_S3_PREFIX.
    pub fn from_settings(settings: &Settings) -> Self {
        Self::new(
            PythonEnvConfig::from_settings(settings),
            settings.plugin_lambda_bootstrap_dir.clone(),
            settings.plugin_storage_s3_prefix.clone(),
        )
    }

    /// A builder with explicit parts.
    pub fn new(env: PythonEnvConfig, bootstrap_dir: Option<PathBuf>, s3_prefix: String) -> Self {
        Self {
            env,
            bootstrap_dir,
            s3_prefix,
            progress: None,
        }
    }

    /// Reports the build's steps and uv's output to `progress`.
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The bootstrap binary for `arch`: `<PLUGIN_LAMBDA_BOOTSTRAP_DIR>/<arch>/plugin-runner`,
    /// or, when the folder is unset and `arch` is this machine's, the
    /// `plugin-runner` next to the running executable.
    pub fn bootstrap(&self, arch: Arch) -> Result<PathBuf, String> {
        let path = match &self.bootstrap_dir {
            Some(dir) => dir.join(arch.as_str()).join(BOOTSTRAP_FILE),
            None if arch == host_arch() => std::env::current_exe()
                .map_err(|e| format!("cannot locate the running executable: {e}"))?
                .with_file_name(BOOTSTRAP_FILE),
            None => {
                return Err(format!(
                    "no {arch} bootstrap: set PLUGIN_LAMBDA_BOOTSTRAP_DIR to a folder holding \
                     {arch}/{BOOTSTRAP_FILE}"
                ))
            }
        };
        if is_file(&path) {
            Ok(path)
        } else {
            Err(format!(
                "the {arch} bootstrap {} does not exist; build it with `cargo build --release -p \
                 plugin-runner` for {arch} and put it there (PLUGIN_LAMBDA_BOOTSTRAP_DIR/<arch>/{BOOTSTRAP_FILE})",
                path.display()
            ))
        }
    }

    fn uv_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(url) = &self.env.pip_mirror_url {
            args.extend(["--index-url".to_owned(), url.clone()]);
        }
        args.extend(self.env.pip_extra_args.iter().cloned());
        args
    }
}

/// The architecture this binary was built for.
pub fn host_arch() -> Arch {
    if cfg!(target_arch = "aarch64") {
        Arch::Arm64
    } else {
        Arch::X86_64
    }
}

fn is_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file())
        .unwrap_or(false)
}

#[async_trait]
impl ArtifactBuilder for PackagerBuilder {
    async fn build(
        &self,
        identifier: &str,
        package: Bytes,
        arch: Arch,
    ) -> Result<Artifact, String> {
        let bootstrap = self.bootstrap(arch)?;
        let uv = ensure_uv(&self.env, &no_progress())
            .await
            .map_err(|e| e.to_string())?;
        let mut opts = BuildOptions::new(arch, bootstrap, uv.program());
        opts.cache_dir = Some(self.env.uv_cache_dir.clone());
        opts.extra_uv_args = self.uv_args();
        opts.s3_prefix = self.s3_prefix.clone();
        opts.identifier = Some(identifier.to_owned());
        opts.upload = UploadMode::S3;
        opts.progress = self.progress.clone();
        let built = tokio::task::spawn_blocking(move || build_artifact(&package, &opts))
            .await
            .map_err(|e| format!("the artifact build stopped: {e}"))?
            .map_err(|e| e.to_string())?;
        tracing::info!(
            identifier,
            %arch,
            sha256 = %built.sha256,
            size = built.size,
            unzipped = built.unzipped_size,
            "built Lambda artifact"
        );
        Ok(Artifact {
            size: built.size,
            sha256: built.sha256,
            bytes: built.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(dir: Option<PathBuf>) -> PackagerBuilder {
        let env = PythonEnvConfig {
            uv_path: None,
            python_interpreter_path: None,
            pip_mirror_url: None,
            pip_extra_args: Vec::new(),
            uv_cache_dir: std::env::temp_dir(),
            init_timeout: std::time::Duration::from_secs(1),
            search_path: Vec::new(),
            pyenv_root: None,
            build_env: crate::runtime::python_env::default_build_env(),
            stage_dir: None,
            tools_dir: None,
        };
        PackagerBuilder::new(env, dir, String::new())
    }

    #[test]
    fn the_bootstrap_is_looked_up_per_architecture() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("arm64")).unwrap();
        std::fs::write(dir.path().join("arm64").join(BOOTSTRAP_FILE), b"elf").unwrap();
        let b = builder(Some(dir.path().to_owned()));
        assert_eq!(
            b.bootstrap(Arch::Arm64).unwrap(),
            dir.path().join("arm64/plugin-runner")
        );
        let missing = b.bootstrap(Arch::X86_64).unwrap_err();
        assert!(missing.contains("x86_64/plugin-runner"), "{missing}");
        assert!(missing.contains("does not exist"), "{missing}");
    }

    #[test]
    fn without_a_folder_only_the_host_architecture_has_a_bootstrap() {
        let b = builder(None);
        let other = match host_arch() {
            Arch::X86_64 => Arch::Arm64,
            Arch::Arm64 => Arch::X86_64,
        };
        let e = b.bootstrap(other).unwrap_err();
        assert!(e.contains("PLUGIN_LAMBDA_BOOTSTRAP_DIR"), "{e}");
    }

    #[test]
    fn the_mirror_and_extra_args_reach_uv() {
        let mut b = builder(None);
        b.env.pip_mirror_url = Some("http://127.0.0.1:1/simple".into());
        b.env.pip_extra_args = vec!["--no-build-isolation".into()];
        assert_eq!(
            b.uv_args(),
            [
                "--index-url",
                "http://127.0.0.1:1/simple",
                "--no-build-isolation"
            ]
        );
    }
}
