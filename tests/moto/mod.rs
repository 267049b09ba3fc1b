//! A moto server (S3, IAM and the Lambda control plane) on a loopback port,
//! from the tools venv of `scripts/setup-python.sh`; stopped when dropped.
//! Shared by the serverless suites and the Lambda emulator.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// The region the doubles answer for.
pub const REGION: &str = "us-east-1";

/// The tools venv's Python, which has moto: TOOLS_PYTHON (scripts/test.sh
/// exports it), else the env file of `scripts/setup-python.sh`.
pub fn tools_python() -> PathBuf {
    if let Some(python) = std::env::var_os("TOOLS_PYTHON").filter(|p| !p.is_empty()) {
        return python.into();
    }
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/setup-python.sh"
        ))
        .arg("--print-env-file")
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/setup-python.sh runs");
    assert!(out.status.success(), "setup-python.sh failed");
    let file = String::from_utf8(out.stdout).unwrap();
    std::fs::read_to_string(file.trim())
        .expect("the tools env file")
        .lines()
        .find_map(|l| l.strip_prefix("export TOOLS_PYTHON="))
        .map(|v| PathBuf::from(v.trim_matches('"')))
        .expect("TOOLS_PYTHON in the tools env file")
}

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    child: tokio::process::Child,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers.
    pub async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(tools_python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if http.get(format!("{url}/moto-api/")).send().await.is_ok() {
                return Moto { url, child };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto did not start on {url}");
    }

    /// Creates an IAM role Lambda may assume (moto checks the role of
    /// CreateFunction) and returns its ARN.
    pub async fn create_role(&self, name: &str) -> String {
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let body = reqwest::Client::new()
            .post(&self.url)
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .form(&[
                ("Action", "CreateRole"),
                ("Version", "2010-05-08"),
                ("RoleName", name),
                ("AssumeRolePolicyDocument", policy),
            ])
            .send()
            .await
            .expect("moto IAM answers")
            .text()
            .await
            .unwrap();
        let start = body.find("<Arn>").expect("CreateRole answer has an Arn") + 5;
        let end = body[start..].find("</Arn>").unwrap() + start;
        body[start..end].to_owned()
    }

    /// SDK configuration with static test credentials, pointed at moto.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                aws_sdk_s3::config::Credentials::new("test", "test", None, None, "static"),
            ))
            .build()
    }

    /// An S3 client for this server (path-style).
    pub fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.sdk_config())
                .force_path_style(true)
                .build(),
        )
    }

    /// A Lambda client for moto's control plane.
    pub fn lambda(&self) -> aws_sdk_lambda::Client {
        aws_sdk_lambda::Client::new(&self.sdk_config())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
