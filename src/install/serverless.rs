//! The install step of PLATFORM=serverless: build the package's Lambda
//! artifact, upload it to S3 under its content hash, create or update the
//! plugin's function, publish a version, record it in
//! `serverless_runtimes` and register a [`ServerlessRuntime`]; delete the
//! function when the package's last installation goes.
//!
//! Every phase can run again after a crash anywhere: the upload is skipped
//! when the content-hash key exists, the function name is derived from the
//! identifier alone so a retry finds (and updates) the function an earlier
//! attempt created, and the record is an upsert. Nothing is left that a
//! retry or an uninstall cannot reach.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use plugind_packager::deploy::{self, Arch, Deployed, FunctionSpec, WaitOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{InstallJob, InstallStep, InstallStepError, Progress};
use crate::runtime::serverless::{ServerlessConfig, ServerlessRuntime};
use crate::runtime::Registry;
use crate::settings::{LambdaArch, Settings};
use crate::storage::Storage;
use crate::store::{ServerlessRuntimeRecord, Store};

/// Where the bootstrap lives inside the function: the exec wrapper the
/// managed Python runtime starts instead of its own loop.
pub const BOOTSTRAP_PATH: &str = "/var/task/bin/plugin-runner";

/// Where the plugin's Python dependencies are unpacked in the function.
pub const DEPS_PATH: &str = "/var/task/deps";

/// The handler name given to Lambda. The managed runtime insists on one,
/// but the exec wrapper serves the Runtime API itself and never loads it.
pub const HANDLER: &str = "plugin_runner.handler";

/// Memory given to plugins whose manifest names none (the reference
/// manifest template asks for 256 MiB).
const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;

/// A built Lambda artifact.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The zip.
    pub bytes: Vec<u8>,
    /// sha256 hex of `bytes`: the S3 key's name.
    pub sha256: String,
    pub size: u64,
}

/// Turns a `.difypkg` into a Lambda artifact (the packager's pipeline in
/// production; tests may build something smaller).
#[async_trait]
pub trait ArtifactBuilder: Send + Sync + 'static {
    /// Builds the artifact of `package` for `arch`.
    async fn build(&self, identifier: &str, package: Bytes, arch: Arch)
        -> Result<Artifact, String>;
}

/// Where and how functions are deployed.
#[derive(Debug, Clone)]
pub struct ServerlessTarget {
    pub bucket: String,
    /// S3 key prefix of artifacts (PLUGIN_STORAGE_S3_PREFIX).
    pub prefix: String,
    pub role_arn: String,
    pub function_prefix: String,
    pub arch: Arch,
    pub timeout_secs: i32,
    pub python_runtime: String,
    pub wait: WaitOptions,
}

impl ServerlessTarget {
    /// The target of the settings.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            bucket: settings
                .plugin_storage_oss_bucket
                .clone()
                .unwrap_or_default(),
            prefix: settings.plugin_storage_s3_prefix.clone(),
            role_arn: settings.plugin_lambda_role_arn.clone().unwrap_or_default(),
            function_prefix: settings.plugin_lambda_function_prefix.clone(),
            arch: match settings.plugin_lambda_arch {
                LambdaArch::X86_64 => Arch::X86_64,
                LambdaArch::Arm64 => Arch::Arm64,
            },
            timeout_secs: i32::try_from(settings.plugin_lambda_timeout)
                .unwrap_or(deploy::LAMBDA_MAX_TIMEOUT)
                .min(deploy::LAMBDA_MAX_TIMEOUT),
            python_runtime: settings.plugin_lambda_python_runtime.clone(),
            wait: WaitOptions::default(),
        }
    }

    /// The function that runs `identifier`: the same name on every attempt.
    pub fn function_name(&self, identifier: &str) -> String {
        let hash = hex::encode(Sha256::digest(identifier.as_bytes()));
        deploy::function_name(&self.function_prefix, identifier, &hash)
    }
}

/// An artifact in S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedArtifact {
    pub key: String,
    pub sha256: String,
    /// False when the key already held it.
    pub uploaded: bool,
}

/// The function that runs `job` from `artifact` on `target`: memory from
/// the manifest's `resource.memory`, the bootstrap as exec wrapper, tags
/// naming the plugin and the artifact.
pub fn function_spec(
    target: &ServerlessTarget,
    job: &InstallJob,
    artifact: &UploadedArtifact,
) -> FunctionSpec {
    let memory = job
        .declaration
        .pointer("/resource/memory")
        .and_then(Value::as_u64)
        .filter(|m| *m > 0)
        .unwrap_or(DEFAULT_MEMORY_BYTES);
    let environment = HashMap::from([
        (
            "AWS_LAMBDA_EXEC_WRAPPER".to_owned(),
            BOOTSTRAP_PATH.to_owned(),
        ),
        ("PYTHONPATH".to_owned(), DEPS_PATH.to_owned()),
        ("INSTALL_METHOD".to_owned(), "local".to_owned()),
    ]);
    let tags = HashMap::from([
        ("plugind:plugin-id".to_owned(), job.plugin_id.clone()),
        ("plugind:plugin".to_owned(), job.identifier.clone()),
        ("plugind:artifact".to_owned(), artifact.sha256.clone()),
    ]);
    FunctionSpec {
        function_name: target.function_name(&job.identifier),
        role_arn: target.role_arn.clone(),
        runtime: target.python_runtime.clone(),
        handler: HANDLER.to_owned(),
        arch: target.arch,
        memory_mb: deploy::memory_mb_from_bytes(memory),
        timeout_secs: target.timeout_secs,
        environment,
        tags,
        bucket: target.bucket.clone(),
        key: artifact.key.clone(),
    }
}

/// Runs plugins as Lambda functions.
pub struct ServerlessInstallStep {
    store: Store,
    storage: Arc<dyn Storage>,
    registry: Arc<Registry>,
    builder: Arc<dyn ArtifactBuilder>,
    s3: aws_sdk_s3::Client,
    /// Control plane, with the SDK's retries.
    lambda: aws_sdk_lambda::Client,
    /// Invocations, retried by the runtime itself.
    invoke: aws_sdk_lambda::Client,
    target: ServerlessTarget,
    runtime: ServerlessConfig,
    /// Storage key prefix of uploaded packages.
    package_prefix: String,
    /// The function version registered per identifier on this node.
    registered: std::sync::Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for ServerlessInstallStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerlessInstallStep")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The AWS clients a [`ServerlessInstallStep`] uses.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub invoke: aws_sdk_lambda::Client,
}

impl AwsClients {
    /// The clients of the settings (AWS_REGION, AWS_ENDPOINT_URL,
    /// S3_USE_PATH_STYLE, credentials from the AWS default chain).
    pub async fn from_settings(settings: &Settings) -> Self {
        let sdk = crate::storage::aws_sdk_config(settings).await;
        Self {
            s3: crate::storage::s3_client(&sdk, settings),
            lambda: aws_sdk_lambda::Client::new(&sdk),
            invoke: crate::runtime::serverless::invoke_client(&sdk),
        }
    }
}

impl ServerlessInstallStep {
    /// A step deploying to `target` through `clients`, reading packages from
    /// `storage` under `package_prefix`, recording into `store` and
    /// registering into `registry`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        storage: Arc<dyn Storage>,
        registry: Arc<Registry>,
        builder: Arc<dyn ArtifactBuilder>,
        clients: AwsClients,
        target: ServerlessTarget,
        runtime: ServerlessConfig,
        package_prefix: impl Into<String>,
    ) -> Self {
        Self {
            store,
            storage,
            registry,
            builder,
            s3: clients.s3,
            lambda: clients.lambda,
            invoke: clients.invoke,
            target,
            runtime,
            package_prefix: package_prefix.into(),
            registered: Default::default(),
        }
    }

    /// The deployment target.
    pub fn target(&self) -> &ServerlessTarget {
        &self.target
    }

    /// Phase 1: builds the artifact of `identifier` and uploads it unless
    /// its content-hash key already holds it.
    pub async fn prepare(&self, identifier: &str) -> Result<UploadedArtifact, InstallStepError> {
        let key = format!("{}/{identifier}", self.package_prefix);
        let package =
            self.storage.get(&key).await.map_err(|e| {
                InstallStepError(format!("cannot read the package {identifier}: {e}"))
            })?;
        let artifact = self
            .builder
            .build(identifier, package, self.target.arch)
            .await
            .map_err(|e| InstallStepError(format!("cannot build the Lambda artifact: {e}")))?;
        let key = deploy::artifact_key(&self.target.prefix, &artifact.sha256);
        let uploaded =
            deploy::upload_if_absent(&self.s3, &self.target.bucket, &key, artifact.bytes)
                .await
                .map_err(|e| InstallStepError(e.to_string()))?;
        Ok(UploadedArtifact {
            key,
            sha256: artifact.sha256,
            uploaded,
        })
    }

    /// Phase 2: creates or updates the function and publishes a version.
    pub async fn deploy(
        &self,
        job: &InstallJob,
        artifact: &UploadedArtifact,
    ) -> Result<Deployed, InstallStepError> {
        let spec = self.function_spec(job, artifact);
        deploy::deploy_function(&self.lambda, &spec, self.target.wait)
            .await
            .map_err(|e| InstallStepError(e.to_string()))
    }

    /// The function definition of a job.
    pub fn function_spec(&self, job: &InstallJob, artifact: &UploadedArtifact) -> FunctionSpec {
        function_spec(&self.target, job, artifact)
    }

    /// Phase 3: records the version and registers its runtime.
    pub async fn record(
        &self,
        identifier: &str,
        artifact: &UploadedArtifact,
        deployed: &Deployed,
    ) -> Result<(), InstallStepError> {
        let record = ServerlessRuntimeRecord {
            plugin_unique_identifier: identifier.to_owned(),
            function_name: deployed.function_name.clone(),
            function_version: deployed.version.clone(),
            function_url: deployed.function_arn.clone(),
            checksum: artifact.sha256.clone(),
        };
        self.store
            .upsert_serverless_runtime(&record)
            .await
            .map_err(|e| InstallStepError(format!("cannot record the Lambda function: {e}")))?;
        self.register(&record);
        Ok(())
    }

    fn register(&self, record: &ServerlessRuntimeRecord) {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                record.plugin_unique_identifier.clone(),
                record.function_version.clone(),
            );
        let runtime = ServerlessRuntime::new(
            record.plugin_unique_identifier.clone(),
            record.function_name.clone(),
            record.function_version.clone(),
            self.invoke.clone(),
            self.runtime.clone(),
        );
        if let Some(old) = self
            .registry
            .insert(record.plugin_unique_identifier.clone(), Arc::new(runtime))
        {
            // An upgrade in place: the old version's sessions finish on Lambda.
            tokio::spawn(async move { old.shutdown().await });
        }
    }

    /// Brings this node in line with the recorded function of `identifier`
    /// after another node changed it: registers a version not yet served
    /// here, drops a runtime whose record is gone.
    pub async fn sync_registered(&self, identifier: &str) -> Result<(), InstallStepError> {
        let record = self
            .store
            .serverless_runtime(identifier)
            .await
            .map_err(|e| InstallStepError(e.to_string()))?;
        let current = self
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(identifier)
            .cloned();
        match record {
            Some(record) => {
                if current.as_deref() != Some(record.function_version.as_str())
                    || self.registry.get(identifier).is_none()
                {
                    self.register(&record);
                }
            }
            None => {
                self.registered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(identifier);
                if let Some(runtime) = self.registry.remove(identifier) {
                    runtime.shutdown().await;
                }
            }
        }
        Ok(())
    }

    /// Registers every recorded function (daemon start). Returns how many.
    pub async fn register_installed(&self) -> Result<usize, InstallStepError> {
        let records = self
            .store
            .serverless_runtimes()
            .await
            .map_err(|e| InstallStepError(e.to_string()))?;
        for record in &records {
            self.register(record);
        }
        Ok(records.len())
    }
}

#[async_trait]
impl InstallStep for ServerlessInstallStep {
    async fn ensure_runtime(
        &self,
        job: &InstallJob,
        progress: &Progress,
    ) -> Result<(), InstallStepError> {
        let started = std::time::Instant::now();
        let result = async {
            let recorded = self
                .store
                .serverless_runtime(&job.identifier)
                .await
                .map_err(|e| InstallStepError(e.to_string()))?;
            if let Some(record) = recorded {
                // Another tenant (or an earlier attempt) deployed it already.
                if self.registry.get(&job.identifier).is_none() {
                    self.register(&record);
                }
                return Ok(());
            }
            progress.info("building the Lambda artifact").await;
            let artifact = self.prepare(&job.identifier).await?;
            progress
                .info(if artifact.uploaded {
                    "artifact uploaded; deploying the Lambda function"
                } else {
                    "artifact already in S3; deploying the Lambda function"
                })
                .await;
            let deployed = self.deploy(job, &artifact).await?;
            progress
                .info(&format!(
                    "Lambda function {} version {} ready",
                    deployed.function_name, deployed.version
                ))
                .await;
            self.record(&job.identifier, &artifact, &deployed).await
        }
        .await;
        crate::metrics::record_install(result.is_ok(), started.elapsed());
        result
    }

    async fn remove_runtime(&self, identifier: &str) -> Result<(), InstallStepError> {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(identifier);
        if let Some(runtime) = self.registry.remove(identifier) {
            runtime.shutdown().await;
        }
        // The name is derived from the identifier, so a function left by an
        // install that never got recorded is found too.
        let name = self.target.function_name(identifier);
        deploy::delete_function(&self.lambda, &name)
            .await
            .map_err(|e| InstallStepError(e.to_string()))?;
        self.store
            .delete_serverless_runtime(identifier)
            .await
            .map_err(|e| InstallStepError(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_are_stable_per_identifier() {
        let target = ServerlessTarget {
            bucket: "b".into(),
            prefix: String::new(),
            role_arn: "r".into(),
            function_prefix: "plugind-".into(),
            arch: Arch::X86_64,
            timeout_secs: 900,
            python_runtime: "python3.12".into(),
            wait: WaitOptions::default(),
        };
        let a = target.function_name("langgenius/echo:0.0.1@aaa");
        assert_eq!(a, target.function_name("langgenius/echo:0.0.1@aaa"));
        assert_ne!(a, target.function_name("langgenius/echo:0.0.2@bbb"));
        assert!(a.starts_with("plugind-langgenius-echo-"));
    }
}
