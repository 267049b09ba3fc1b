//! `plugind lambda …`: build a plugin's Lambda artifact, or build and deploy
//! it, outside the daemon (for operators who ship functions from CI).
//! Progress goes to stderr; the result is one JSON object on stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use plugind_packager::deploy::{self, Arch, WaitOptions};
use plugind_packager::BuildEvent;
use serde_json::json;

use crate::install::lambda_artifact::PackagerBuilder;
use crate::install::serverless::{ArtifactBuilder, ServerlessTarget, UploadedArtifact};
use crate::install::InstallJob;
use crate::package::{self, DecodeLimits};
use crate::runtime::python_env::PythonEnvConfig;

/// Why a `plugind lambda` command failed.
#[derive(Debug, thiserror::Error)]
pub enum LambdaCliError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid package: {0}")]
    Package(#[from] package::PackageError),
    #[error("{0}")]
    Step(String),
    #[error("{0}")]
    Usage(String),
}

/// The `plugind lambda` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum LambdaCommand {
    /// Build the Lambda artifact (zip) of a .difypkg.
    Package {
        /// The .difypkg file.
        pkg: PathBuf,
        /// Target architecture.
        #[arg(long, default_value = "x86_64", value_parser = parse_arch)]
        arch: Arch,
        /// Where to write the zip. Unset: next to the package, `<name>.<arch>.zip`.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Build, upload and deploy a .difypkg as a Lambda function; print the published version.
    Deploy {
        /// The .difypkg file.
        pkg: PathBuf,
        #[command(flatten)]
        aws: DeployArgs,
        #[command(flatten)]
        build: BuildArgs,
    },
}

/// What building an artifact needs, with the daemon's variable names.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Folder holding `<arch>/plugin-runner`. Unset: the `plugin-runner` next to
    /// this executable (this machine's architecture only).
    #[arg(long, env = "PLUGIN_LAMBDA_BOOTSTRAP_DIR")]
    pub bootstrap_dir: Option<PathBuf>,
    /// The uv binary. Unset: `uv` on PATH, else the uv Python package's.
    #[arg(long = "uv", env = "UV_PATH")]
    pub uv_path: Option<PathBuf>,
    /// uv's download cache; reused between builds so later builds are fast.
    /// Unset: `~/.cache/plugind/uv`.
    #[arg(long, env = "UV_CACHE_DIR")]
    pub uv_cache_dir: Option<PathBuf>,
    /// Package index URL for the plugin's dependencies.
    #[arg(long, env = "PIP_MIRROR_URL")]
    pub pip_mirror_url: Option<String>,
    /// Extra `uv pip install` arguments, split on whitespace.
    #[arg(long, env = "PIP_EXTRA_ARGS", allow_hyphen_values = true)]
    pub pip_extra_args: Option<String>,
}

impl BuildArgs {
    /// The packager with these settings, reporting to `bar`.
    fn builder(&self, s3_prefix: &str, bar: &ProgressBar) -> PackagerBuilder {
        let uv_cache_dir = self.uv_cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir)
                .join(".cache/plugind/uv")
        });
        let env = PythonEnvConfig::new(
            self.uv_path.clone(),
            None,
            self.pip_mirror_url.as_deref(),
            self.pip_extra_args.as_deref(),
            uv_cache_dir,
            Duration::from_secs(600),
        );
        let bar = bar.clone();
        PackagerBuilder::new(env, self.bootstrap_dir.clone(), s3_prefix.to_owned())
            .with_progress(Arc::new(move |event| show(&bar, event)))
    }
}

/// Shows a build event on the progress bar: steps as the message, uv's
/// lines under it, the zip's entries as a bar.
fn show(bar: &ProgressBar, event: BuildEvent) {
    match event {
        BuildEvent::Started(step) => {
            bar.set_length(0);
            bar.set_position(0);
            bar.set_message(step.label().to_owned());
        }
        BuildEvent::Output(line) => bar.set_message(format!("uv: {}", line.trim())),
        BuildEvent::Files { done, total } => {
            if bar.length() != Some(total) {
                bar.set_style(bar_style());
                bar.set_length(total);
                bar.set_message("zipping");
            }
            bar.set_position(done);
        }
        BuildEvent::Finished(step) => {
            bar.set_style(spinner_style());
            bar.println(format!("  done: {}", step.label()));
        }
    }
}

/// Runs `command` with the packager as artifact builder and progress on
/// stderr.
pub async fn run(command: LambdaCommand) -> Result<(), LambdaCliError> {
    let bar = spinner("reading the package");
    let builder: Arc<dyn ArtifactBuilder> = Arc::new(match &command {
        LambdaCommand::Package { build, .. } => build.builder("", &bar),
        LambdaCommand::Deploy { build, aws, .. } => build.builder(&aws.prefix, &bar),
    });
    let result = command.run_with(builder, &bar).await;
    if result.is_err() {
        bar.abandon();
    }
    result
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse()
}

/// Where `plugind lambda deploy` deploys, with the daemon's variable names.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// Target architecture.
    #[arg(long, env = "PLUGIN_LAMBDA_ARCH", default_value = "x86_64", value_parser = parse_arch)]
    pub arch: Arch,
    /// Bucket of the artifacts.
    #[arg(long, env = "PLUGIN_STORAGE_OSS_BUCKET")]
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[arg(long, env = "PLUGIN_STORAGE_S3_PREFIX", default_value = "")]
    pub prefix: String,
    /// Execution role of the function.
    #[arg(long, env = "PLUGIN_LAMBDA_ROLE_ARN")]
    pub role_arn: String,
    /// Function name prefix.
    #[arg(
        long,
        env = "PLUGIN_LAMBDA_FUNCTION_PREFIX",
        default_value = "plugind-"
    )]
    pub function_prefix: String,
    /// Function timeout, seconds.
    #[arg(long, env = "PLUGIN_LAMBDA_TIMEOUT", default_value_t = 900)]
    pub timeout: i32,
    /// Managed Python runtime.
    #[arg(
        long,
        env = "PLUGIN_LAMBDA_PYTHON_RUNTIME",
        default_value = "python3.12"
    )]
    pub python_runtime: String,
    /// AWS region.
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// S3/Lambda-compatible endpoint (LocalStack, moto).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Path-style S3 addressing.
    #[arg(long, env = "S3_USE_PATH_STYLE", default_value = "true", action = clap::ArgAction::Set)]
    pub path_style: bool,
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{elapsed}] {msg} [{bar:30}] {pos}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(spinner_style());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(message.to_owned());
    bar
}

async fn read(path: &PathBuf) -> Result<Vec<u8>, LambdaCliError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| LambdaCliError::Read {
            path: path.clone(),
            source,
        })
}

impl LambdaCommand {
    /// Runs the command; `builder` makes the artifacts, `bar` shows progress.
    pub async fn run_with(
        self,
        builder: Arc<dyn ArtifactBuilder>,
        bar: &ProgressBar,
    ) -> Result<(), LambdaCliError> {
        match self {
            Self::Package {
                pkg, arch, output, ..
            } => {
                let bytes = read(&pkg).await?;
                let decoded = package::decode(&bytes, &DecodeLimits::default())?;
                let identifier = decoded.identifier.to_string();
                bar.set_message(format!(
                    "building the {} artifact of {identifier}",
                    arch.as_str()
                ));
                let artifact = builder
                    .build(&identifier, bytes.into(), arch)
                    .await
                    .map_err(LambdaCliError::Step)?;
                let output = output.unwrap_or_else(|| {
                    let stem = pkg
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "plugin".into());
                    pkg.with_file_name(format!("{stem}.{}.zip", arch.as_str()))
                });
                bar.set_message(format!("writing {}", output.display()));
                tokio::fs::write(&output, &artifact.bytes)
                    .await
                    .map_err(|source| LambdaCliError::Write {
                        path: output.clone(),
                        source,
                    })?;
                bar.finish_with_message(format!(
                    "wrote {} ({} bytes)",
                    output.display(),
                    artifact.size
                ));
                println!(
                    "{}",
                    json!({
                        "identifier": identifier,
                        "arch": arch.as_str(),
                        "path": output,
                        "sha256": artifact.sha256,
                        "size": artifact.size,
                    })
                );
                Ok(())
            }
            Self::Deploy { pkg, aws, .. } => deploy_package(pkg, aws, builder, bar).await,
        }
    }
}

async fn deploy_package(
    pkg: PathBuf,
    aws: DeployArgs,
    builder: Arc<dyn ArtifactBuilder>,
    bar: &ProgressBar,
) -> Result<(), LambdaCliError> {
    if aws.timeout <= 0 || aws.timeout > deploy::LAMBDA_MAX_TIMEOUT {
        return Err(LambdaCliError::Usage(
            "PLUGIN_LAMBDA_TIMEOUT must be between 1 and 900 seconds".into(),
        ));
    }
    let bytes = read(&pkg).await?;
    let decoded = package::decode(&bytes, &DecodeLimits::default())?;
    let identifier = decoded.identifier.to_string();
    let declaration = serde_json::to_value(&decoded.declaration)
        .map_err(|e| LambdaCliError::Step(e.to_string()))?;
    bar.set_message(format!(
        "building the {} artifact of {identifier}",
        aws.arch.as_str()
    ));
    let artifact = builder
        .build(&identifier, bytes.into(), aws.arch)
        .await
        .map_err(LambdaCliError::Step)?;
    let sdk =
        crate::storage::aws_sdk_config_for(aws.region.as_deref(), aws.endpoint_url.as_deref())
            .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(aws.path_style)
            .build(),
    );
    let lambda = aws_sdk_lambda::Client::new(&sdk);
    let key = deploy::artifact_key(&aws.prefix, &artifact.sha256);
    bar.set_message(format!(
        "uploading s3://{}/{key} ({} bytes)",
        aws.bucket, artifact.size
    ));
    let uploaded = deploy::upload_if_absent(&s3, &aws.bucket, &key, artifact.bytes)
        .await
        .map_err(|e| LambdaCliError::Step(e.to_string()))?;
    let target = ServerlessTarget {
        bucket: aws.bucket.clone(),
        prefix: aws.prefix.clone(),
        role_arn: aws.role_arn.clone(),
        function_prefix: aws.function_prefix.clone(),
        arch: aws.arch,
        timeout_secs: aws.timeout,
        python_runtime: aws.python_runtime.clone(),
        wait: WaitOptions::default(),
    };
    let job = InstallJob {
        tenant_id: String::new(),
        identifier: identifier.clone(),
        plugin_id: decoded.identifier.plugin_id().to_owned(),
        declaration,
        package_key: String::new(),
    };
    let uploaded = UploadedArtifact {
        key,
        sha256: artifact.sha256,
        uploaded,
    };
    let spec = crate::install::serverless::function_spec(&target, &job, &uploaded);
    bar.set_message(format!("deploying {}", spec.function_name));
    let deployed = deploy::deploy_function(&lambda, &spec, target.wait)
        .await
        .map_err(|e| LambdaCliError::Step(e.to_string()))?;
    bar.finish_with_message(format!(
        "{} version {} is ready",
        deployed.function_name, deployed.version
    ));
    println!(
        "{}",
        json!({
            "identifier": identifier,
            "function_name": deployed.function_name,
            "function_arn": deployed.function_arn,
            "version": deployed.version,
            "created": deployed.created,
            "artifact_key": uploaded.key,
            "uploaded": uploaded.uploaded,
        })
    );
    Ok(())
}
