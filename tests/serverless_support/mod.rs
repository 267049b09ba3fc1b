//! Test helpers for the serverless control plane: a real moto server (S3,
//! IAM and the Lambda control plane) on 127.0.0.1, AWS clients pointed at
//! it, and a small artifact builder.
#![allow(dead_code)]

use std::io::Write;

use async_trait::async_trait;
use bytes::Bytes;
use plugind::install::serverless::{Artifact, ArtifactBuilder, AwsClients};
use plugind_packager::deploy::Arch;
use sha2::{Digest, Sha256};

pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "plugind-test";
pub const ROLE_NAME: &str = "plugind-plugin";

#[path = "../moto/mod.rs"]
mod moto;

/// A moto server with the test bucket and the plugin execution role.
pub struct Moto {
    server: moto::Moto,
    pub endpoint: String,
    pub role_arn: String,
}

impl Moto {
    /// Starts moto, then creates the test bucket and the plugin execution
    /// role.
    pub async fn start() -> Self {
        let server = moto::Moto::start().await;
        server
            .s3()
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("CreateBucket");
        let role_arn = server.create_role(ROLE_NAME).await;
        Self {
            endpoint: server.url.clone(),
            role_arn,
            server,
        }
    }

    /// SDK configuration with test credentials, pointed at moto.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        self.server.sdk_config()
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        self.server.s3()
    }

    pub fn lambda(&self) -> aws_sdk_lambda::Client {
        self.server.lambda()
    }

    pub fn clients(&self) -> AwsClients {
        AwsClients {
            s3: self.s3(),
            lambda: self.lambda(),
            invoke: plugind::runtime::serverless::invoke_client(&self.sdk_config()),
        }
    }

    /// Object keys under `prefix` in the test bucket.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self
            .s3()
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// Names of every Lambda function.
    pub async fn functions(&self) -> Vec<String> {
        let out = self.lambda().list_functions().send().await.unwrap();
        out.functions()
            .iter()
            .filter_map(|f| f.function_name().map(str::to_owned))
            .collect()
    }
}

/// A deterministic zip holding the package, standing in for the real
/// packaging pipeline (its own tests cover it): the control plane only
/// needs bytes with a content hash. Counts its builds.
#[derive(Default)]
pub struct ZipBuilder {
    pub builds: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl ArtifactBuilder for ZipBuilder {
    async fn build(
        &self,
        identifier: &str,
        package: Bytes,
        arch: Arch,
    ) -> Result<Artifact, String> {
        self.builds
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut buf);
            let options = zip::write::SimpleFileOptions::default()
                .last_modified_time(zip::DateTime::default())
                .unix_permissions(0o644);
            zip.start_file("plugin.difypkg", options)
                .map_err(|e| e.to_string())?;
            zip.write_all(&package).map_err(|e| e.to_string())?;
            zip.start_file("plugind-artifact.json", options)
                .map_err(|e| e.to_string())?;
            zip.write_all(
                serde_json::json!({"identifier": identifier, "arch": arch.as_str()})
                    .to_string()
                    .as_bytes(),
            )
            .map_err(|e| e.to_string())?;
            zip.finish().map_err(|e| e.to_string())?;
        }
        let bytes = buf.into_inner();
        Ok(Artifact {
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            bytes,
        })
    }
}
