//! Putting an artifact on AWS: upload it to S3 under its content-hash key
//! unless it is already there, create or update the Lambda function that
//! runs it, wait until the function is Active and its last update
//! succeeded, publish a version, and delete the function when the plugin
//! goes.
//!
//! Every step is idempotent, so an install interrupted anywhere can simply
//! be run again: the upload is skipped when the key exists, an existing
//! function is updated rather than created, and publishing the same code
//! and configuration twice returns the version Lambda already has.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_lambda::error::DisplayErrorContext;
use aws_sdk_lambda::types::{
    Architecture, Environment, FunctionCode, LastUpdateStatus, Runtime, State,
};
use aws_sdk_s3::primitives::ByteStream;

/// Lambda's smallest and largest memory size, in MiB.
pub const LAMBDA_MEMORY_RANGE: (i32, i32) = (128, 10_240);

/// Lambda's longest timeout, in seconds.
pub const LAMBDA_MAX_TIMEOUT: i32 = 900;

/// Longest Lambda function name.
const MAX_FUNCTION_NAME: usize = 64;

/// What went wrong while deploying. Each variant names the step and the
/// object it was working on.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// An S3 call failed.
    #[error("S3 {op} of s3://{bucket}/{key} failed: {message}")]
    S3 {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    /// A Lambda control-plane call failed.
    #[error("Lambda {op} of {function} failed: {message}")]
    Lambda {
        op: &'static str,
        function: String,
        message: String,
    },
    /// The function reached a failed state.
    #[error("Lambda function {function} failed to become ready: {reason}")]
    Failed { function: String, reason: String },
    /// The function did not become ready in time.
    #[error("Lambda function {function} was not ready after {waited:?}")]
    NotReady { function: String, waited: Duration },
}

pub use crate::artifact::Arch;

/// Lambda's name of `arch`.
fn lambda_architecture(arch: Arch) -> Architecture {
    match arch {
        Arch::X86_64 => Architecture::X8664,
        Arch::Arm64 => Architecture::Arm64,
    }
}

/// Everything that defines a deployed function.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub function_name: String,
    pub role_arn: String,
    /// Managed runtime, e.g. `python3.12`.
    pub runtime: String,
    /// Handler name. The managed runtime requires one even though the
    /// exec wrapper replaces the runtime's own loop.
    pub handler: String,
    pub arch: Arch,
    pub memory_mb: i32,
    pub timeout_secs: i32,
    pub environment: HashMap<String, String>,
    pub tags: HashMap<String, String>,
    /// Where the artifact zip is.
    pub bucket: String,
    pub key: String,
}

/// How long and how often to poll for readiness.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(300),
        }
    }
}

/// A deployed, published function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub function_name: String,
    pub function_arn: String,
    /// The published version number, e.g. `"3"`.
    pub version: String,
    /// True when the function did not exist before.
    pub created: bool,
}

/// The S3 key of an artifact: `<prefix>artifacts/<sha256>.zip`.
pub fn artifact_key(prefix: &str, sha256: &str) -> String {
    format!("{prefix}artifacts/{sha256}.zip")
}

/// A valid, stable Lambda function name for a plugin identifier:
/// `<prefix><author>-<name>-<hash>`, at most 64 characters of
/// `[A-Za-z0-9_-]`. The hash of the whole identifier keeps versions and
/// checksums apart even when the readable part is cut.
pub fn function_name(prefix: &str, identifier: &str, identifier_hash: &str) -> String {
    let readable: String = identifier
        .split([':', '@'])
        .next()
        .unwrap_or(identifier)
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '-',
        })
        .collect();
    let prefix: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let hash: String = identifier_hash.chars().take(12).collect();
    let room = MAX_FUNCTION_NAME.saturating_sub(prefix.len() + hash.len() + 1);
    let readable: String = readable.chars().take(room).collect();
    format!("{prefix}{readable}-{hash}")
}

/// Lambda memory in MiB for a manifest's `resource.memory` in bytes,
/// rounded up and kept within Lambda's range.
pub fn memory_mb_from_bytes(bytes: u64) -> i32 {
    let mb = bytes.div_ceil(1024 * 1024);
    let mb = i32::try_from(mb).unwrap_or(LAMBDA_MEMORY_RANGE.1);
    mb.clamp(LAMBDA_MEMORY_RANGE.0, LAMBDA_MEMORY_RANGE.1)
}

fn s3_error<E, R>(
    op: &'static str,
    bucket: &str,
    key: &str,
    e: aws_sdk_s3::error::SdkError<E, R>,
) -> DeployError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    DeployError::S3 {
        op,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        message: DisplayErrorContext(&e).to_string(),
    }
}

fn lambda_error<E, R>(
    op: &'static str,
    function: &str,
    e: aws_sdk_lambda::error::SdkError<E, R>,
) -> DeployError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    DeployError::Lambda {
        op,
        function: function.to_owned(),
        message: DisplayErrorContext(&e).to_string(),
    }
}

/// Uploads `bytes` to `bucket`/`key` unless the key already exists. The key
/// names the content hash, so an existing object is the same artifact.
/// Returns true when it uploaded.
pub async fn upload_if_absent(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    bytes: Vec<u8>,
) -> Result<bool, DeployError> {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => {
            tracing::debug!(bucket, key, "artifact already uploaded");
            return Ok(false);
        }
        Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {}
        Err(e) => return Err(s3_error("HeadObject", bucket, key, e)),
    }
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/zip")
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| s3_error("PutObject", bucket, key, e))?;
    tracing::info!(bucket, key, "artifact uploaded");
    Ok(true)
}

/// Creates the function, or updates its code, configuration and tags when
/// it exists; waits until it is ready; publishes a version.
pub async fn deploy_function(
    lambda: &aws_sdk_lambda::Client,
    spec: &FunctionSpec,
    wait: WaitOptions,
) -> Result<Deployed, DeployError> {
    let name = spec.function_name.as_str();
    let environment = Environment::builder()
        .set_variables(Some(spec.environment.clone()))
        .build();
    let existing = match lambda.get_function().function_name(name).send().await {
        Ok(out) => out
            .configuration()
            .and_then(|c| c.function_arn())
            .map(str::to_owned),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            None
        }
        Err(e) => return Err(lambda_error("GetFunction", name, e)),
    };
    let created = existing.is_none();
    let arn = match existing {
        None => {
            let out = lambda
                .create_function()
                .function_name(name)
                .role(&spec.role_arn)
                .runtime(Runtime::from(spec.runtime.as_str()))
                .handler(&spec.handler)
                .architectures(lambda_architecture(spec.arch))
                .memory_size(spec.memory_mb)
                .timeout(spec.timeout_secs)
                .environment(environment)
                .set_tags(Some(spec.tags.clone()))
                .code(
                    FunctionCode::builder()
                        .s3_bucket(&spec.bucket)
                        .s3_key(&spec.key)
                        .build(),
                )
                .publish(false)
                .send()
                .await
                .map_err(|e| lambda_error("CreateFunction", name, e))?;
            tracing::info!(function = name, "Lambda function created");
            wait_ready(lambda, name, wait).await?;
            out.function_arn().unwrap_or_default().to_owned()
        }
        Some(arn) => {
            lambda
                .update_function_code()
                .function_name(name)
                .s3_bucket(&spec.bucket)
                .s3_key(&spec.key)
                .architectures(lambda_architecture(spec.arch))
                .send()
                .await
                .map_err(|e| lambda_error("UpdateFunctionCode", name, e))?;
            wait_ready(lambda, name, wait).await?;
            lambda
                .update_function_configuration()
                .function_name(name)
                .role(&spec.role_arn)
                .runtime(Runtime::from(spec.runtime.as_str()))
                .handler(&spec.handler)
                .memory_size(spec.memory_mb)
                .timeout(spec.timeout_secs)
                .environment(environment)
                .send()
                .await
                .map_err(|e| lambda_error("UpdateFunctionConfiguration", name, e))?;
            wait_ready(lambda, name, wait).await?;
            if !spec.tags.is_empty() {
                lambda
                    .tag_resource()
                    .resource(&arn)
                    .set_tags(Some(spec.tags.clone()))
                    .send()
                    .await
                    .map_err(|e| lambda_error("TagResource", name, e))?;
            }
            tracing::info!(function = name, "Lambda function updated");
            arn
        }
    };
    let published = lambda
        .publish_version()
        .function_name(name)
        .description(spec.key.as_str())
        .send()
        .await
        .map_err(|e| lambda_error("PublishVersion", name, e))?;
    let version = published
        .version()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| DeployError::Lambda {
            op: "PublishVersion",
            function: name.to_owned(),
            message: "the answer holds no version".into(),
        })?
        .to_owned();
    wait_ready(lambda, &format!("{name}:{version}"), wait).await?;
    tracing::info!(function = name, %version, "Lambda version published");
    Ok(Deployed {
        function_name: name.to_owned(),
        function_arn: arn,
        version,
        created,
    })
}

/// Polls until the function (or `name:version`) is Active and its last
/// update is not in progress.
pub async fn wait_ready(
    lambda: &aws_sdk_lambda::Client,
    name: &str,
    wait: WaitOptions,
) -> Result<(), DeployError> {
    let started = Instant::now();
    let (function, qualifier) = match name.split_once(':') {
        Some((f, q)) => (f, Some(q)),
        None => (name, None),
    };
    loop {
        let config = lambda
            .get_function_configuration()
            .function_name(function)
            .set_qualifier(qualifier.map(str::to_owned))
            .send()
            .await
            .map_err(|e| lambda_error("GetFunctionConfiguration", name, e))?;
        let state = config.state();
        let update = config.last_update_status();
        if matches!(state, Some(State::Failed)) {
            return Err(DeployError::Failed {
                function: name.to_owned(),
                reason: config.state_reason().unwrap_or("state Failed").to_owned(),
            });
        }
        if matches!(update, Some(LastUpdateStatus::Failed)) {
            return Err(DeployError::Failed {
                function: name.to_owned(),
                reason: config
                    .last_update_status_reason()
                    .unwrap_or("last update Failed")
                    .to_owned(),
            });
        }
        let active = matches!(state, None | Some(State::Active));
        let settled = !matches!(update, Some(LastUpdateStatus::InProgress));
        if active && settled {
            return Ok(());
        }
        if started.elapsed() >= wait.timeout {
            return Err(DeployError::NotReady {
                function: name.to_owned(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(wait.interval).await;
    }
}

/// Deletes the function and all its versions. Returns false when it did not
/// exist.
pub async fn delete_function(
    lambda: &aws_sdk_lambda::Client,
    name: &str,
) -> Result<bool, DeployError> {
    match lambda.delete_function().function_name(name).send().await {
        Ok(_) => {
            tracing::info!(function = name, "Lambda function deleted");
            Ok(true)
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(lambda_error("DeleteFunction", name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_are_valid_and_bounded() {
        let hash = "0123456789abcdef0123";
        let name = function_name("plugind-", "langgenius/echo_tool:0.0.1@abcd", hash);
        assert_eq!(name, "plugind-langgenius-echo_tool-0123456789ab");
        let long = format!("{}/{}:1.0.0@x", "a".repeat(40), "b".repeat(40));
        let name = function_name("plugind-", &long, hash);
        assert_eq!(name.len(), 64);
        assert!(name.ends_with("-0123456789ab"));
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn memory_is_rounded_up_and_clamped() {
        assert_eq!(memory_mb_from_bytes(268_435_456), 256);
        assert_eq!(memory_mb_from_bytes(268_435_457), 257);
        assert_eq!(memory_mb_from_bytes(1), 128);
        assert_eq!(memory_mb_from_bytes(u64::MAX), 10_240);
    }

    #[test]
    fn artifact_keys_name_the_hash() {
        assert_eq!(artifact_key("p/", "ab"), "p/artifacts/ab.zip");
        assert_eq!(artifact_key("", "ab"), "artifacts/ab.zip");
    }

    #[test]
    fn arch_names_parse() {
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Arm64);
        assert_eq!("x86_64".parse::<Arch>().unwrap().as_str(), "x86_64");
        assert!("mips".parse::<Arch>().is_err());
    }
}
