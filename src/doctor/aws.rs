//! AWS checks, with the clients `plugind serve` builds (AWS_REGION,
//! AWS_ENDPOINT_URL, S3_USE_PATH_STYLE, credentials from the default chain):
//! credentials found, the bucket writable, Lambda answering for the
//! function prefix, and the bootstrap the artifacts carry.

use aws_sdk_s3::config::ProvideCredentials;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use super::Check;
use crate::install::lambda_artifact::PackagerBuilder;
use crate::install::serverless::ServerlessTarget;
use crate::settings::Settings;

pub async fn credentials(sdk: &aws_config::SdkConfig) -> Check {
    const NAME: &str = "aws credentials";
    let Some(provider) = sdk.credentials_provider() else {
        return Check::fail(NAME, "no AWS credentials provider is configured");
    };
    match provider.provide_credentials().await {
        Ok(creds) => {
            // The access key id is not secret; its first characters tell a
            // long-term key (AKIA…) from a temporary one (ASIA…).
            let kind: String = creds.access_key_id().chars().take(4).collect();
            let region = sdk
                .region()
                .map(|r| format!(", region {r}"))
                .unwrap_or_else(|| ", no region (set AWS_REGION)".into());
            Check::ok(NAME, format!("key {kind}…{region}"))
        }
        Err(e) => {
            tracing::debug!(error = ?e, "no AWS credentials");
            Check::fail(
                NAME,
                "none found in the default chain (environment, profile, web identity, ECS, instance metadata); \
                 set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the host an IAM role",
            )
        }
    }
}

/// The bucket exists, and a probe object can be written and deleted under
/// PLUGIN_STORAGE_S3_PREFIX.
pub async fn bucket(sdk: &aws_config::SdkConfig, settings: &Settings) -> Check {
    const NAME: &str = "s3 bucket";
    let Some(bucket) = settings.plugin_storage_oss_bucket.as_deref() else {
        return Check::fail(NAME, "PLUGIN_STORAGE_OSS_BUCKET is not set");
    };
    let s3 = crate::storage::s3_client(sdk, settings);
    if let Err(e) = s3.head_bucket().bucket(bucket).send().await {
        return Check::fail(
            NAME,
            format!(
                "bucket {bucket} is not reachable ({}); check PLUGIN_STORAGE_OSS_BUCKET, AWS_REGION, AWS_ENDPOINT_URL and the credentials' s3:ListBucket",
                reason(&e)
            ),
        );
    }
    let key = format!(
        "{}.plugind-doctor-{}",
        settings.plugin_storage_s3_prefix,
        uuid::Uuid::new_v4().simple()
    );
    if let Err(e) = s3
        .put_object()
        .bucket(bucket)
        .key(&key)
        .body(ByteStream::from_static(b"plugind doctor probe"))
        .send()
        .await
    {
        return Check::fail(
            NAME,
            format!(
                "cannot write {key} in {bucket} ({}); the credentials need s3:PutObject on it",
                reason(&e)
            ),
        );
    }
    match s3.delete_object().bucket(bucket).key(&key).send().await {
        Ok(_) => Check::ok(NAME, format!("{bucket} readable and writable")),
        Err(e) => Check::fail(
            NAME,
            format!(
                "wrote but cannot delete the probe {key} in {bucket} ({}); the credentials need s3:DeleteObject (remove the probe by hand)",
                reason(&e)
            ),
        ),
    }
}

/// Lambda answers for a function name under the prefix: a missing function
/// is the expected answer; a refusal means the daemon's policy or the
/// region is wrong.
pub async fn lambda(sdk: &aws_config::SdkConfig, settings: &Settings) -> Check {
    const NAME: &str = "lambda";
    let target = ServerlessTarget::from_settings(settings);
    let probe = format!("{}doctor-probe", target.function_prefix);
    let client = aws_sdk_lambda::Client::new(sdk);
    match client.get_function().function_name(&probe).send().await {
        Ok(_) => Check::ok(NAME, format!("answers for {}*", target.function_prefix)),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {
            Check::ok(NAME, format!("answers for {}*", target.function_prefix))
        }
        Err(e) => Check::fail(
            NAME,
            format!(
                "GetFunction {probe} failed ({}); check AWS_REGION, AWS_ENDPOINT_URL and that the daemon's policy (infra/aws) covers PLUGIN_LAMBDA_FUNCTION_PREFIX",
                reason(&e)
            ),
        ),
    }
}

/// The plugin-runner bootstrap of PLUGIN_LAMBDA_ARCH that artifacts carry.
pub fn bootstrap(settings: &Settings) -> Check {
    const NAME: &str = "lambda bootstrap";
    let arch = ServerlessTarget::from_settings(settings).arch;
    match PackagerBuilder::from_settings(settings).bootstrap(arch) {
        Ok(path) => Check::ok(NAME, path.display().to_string()),
        Err(e) => Check::fail(NAME, e),
    }
}

/// An SDK failure in a few words: the service's code and message, or the
/// transport's error chain (a missing credential shows as a dispatch
/// failure; the credentials check names it better).
fn reason<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let Some(code) = e.code() {
        return match e.message() {
            Some(m) => format!("{code}: {m}"),
            None => code.to_owned(),
        };
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    let first = out.lines().next().unwrap_or("").to_owned();
    if first.len() > 200 {
        let mut end = 200;
        while !first.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &first[..end])
    } else {
        first
    }
}
