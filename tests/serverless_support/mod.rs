//! Test helpers for the serverless control plane: a real moto server (S3,
//! IAM and the Lambda control plane) on 127.0.0.1, AWS clients pointed at
//! it, and a small artifact builder.
#![allow(dead_code)]

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use plugind::install::serverless::{Artifact, ArtifactBuilder, AwsClients};
use plugind_packager::deploy::Arch;
use sha2::{Digest, Sha256};

pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "plugind-test";
pub const ROLE_NAME: &str = "plugind-plugin";

/// The tools venv's Python (scripts/setup-python.sh), which has moto.
pub fn tools_python() -> String {
    // scripts/test.sh exports it; asking setup-python.sh from many tests at
    // once races with its rewrite of the env file.
    if let Ok(python) = std::env::var("TOOLS_PYTHON") {
        if !python.is_empty() {
            return python;
        }
    }
    let env = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/setup-python.sh"
        ))
        .arg("--print-env-file")
        .stderr(Stdio::null())
        .output()
        .expect("scripts/setup-python.sh runs");
    let file = String::from_utf8(env.stdout).unwrap();
    let text = std::fs::read_to_string(file.trim()).expect("the tools env file");
    text.lines()
        .find_map(|l| l.strip_prefix("export TOOLS_PYTHON="))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("TOOLS_PYTHON in the tools env file")
}

/// A moto server child, killed on drop.
pub struct Moto {
    pub endpoint: String,
    pub role_arn: String,
    child: tokio::process::Child,
}

impl Moto {
    /// Starts moto on a free port, waits until it answers, then creates the
    /// test bucket and the plugin execution role.
    pub async fn start() -> Self {
        let python = tools_python();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let mut up = false;
        for _ in 0..1200 {
            if client
                .get(format!("{endpoint}/moto-api/"))
                .send()
                .await
                .is_ok()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "moto server did not start on {endpoint}");
        let script = format!(
            r#"
import boto3, json
kw = dict(endpoint_url="{endpoint}", region_name="{REGION}", aws_access_key_id="testing", aws_secret_access_key="testing")
boto3.client("s3", **kw).create_bucket(Bucket="{BUCKET}")
role = boto3.client("iam", **kw).create_role(RoleName="{ROLE_NAME}", AssumeRolePolicyDocument=json.dumps({{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Principal": {{"Service": "lambda.amazonaws.com"}}, "Action": "sts:AssumeRole"}}]}}))
print(role["Role"]["Arn"])
"#
        );
        let out = tokio::process::Command::new(&python)
            .args(["-c", &script])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let role_arn = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self {
            endpoint,
            role_arn,
            child,
        }
    }

    /// SDK configuration with test credentials, pointed at moto.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test"),
            ))
            .build()
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.sdk_config())
                .force_path_style(true)
                .build(),
        )
    }

    pub fn lambda(&self) -> aws_sdk_lambda::Client {
        aws_sdk_lambda::Client::new(&self.sdk_config())
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
