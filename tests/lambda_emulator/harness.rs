//! Deploys a fixture plugin the way the daemon will: package the source
//! folder, build the Lambda artifact, upload it to S3, create the function
//! through the emulator (moto's control plane) and publish a version.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use plugind_packager::{build_artifact, Arch, Artifact, BuildOptions};
use serde_json::{json, Value};

use super::tools::{self, Moto};
use super::LambdaEmulator;

/// The bucket artifacts go to.
pub const BUCKET: &str = "plugind-artifacts";

/// The uv cache the serverless tests share (warm after the first build).
pub fn uv_cache() -> PathBuf {
    tools::target_dir().join("uv-cache-lambda")
}

/// The `.difypkg` of a fixture folder under `tests/fixtures`.
pub fn fixture_package(name: &str) -> Vec<u8> {
    let dir = tools::repo_root().join("tests/fixtures").join(name);
    plugind::package::packager::package_dir(&dir, 50 * 1024 * 1024).expect("fixture packages")
}

/// Build options for this machine's architecture with the test tools.
pub fn build_options() -> BuildOptions {
    let arch = if cfg!(target_arch = "aarch64") {
        Arch::Arm64
    } else {
        Arch::X86_64
    };
    let mut opts = BuildOptions::new(
        arch,
        tools::plugin_runner_binary(),
        tools::tool_var("UV_PATH"),
    );
    opts.cache_dir = Some(uv_cache());
    opts.s3_prefix = "plugind/".into();
    opts
}

/// The artifact of a fixture, built once per test binary.
pub fn fixture_artifact(name: &'static str) -> Arc<Artifact> {
    type Built = std::sync::Mutex<Vec<(&'static str, Arc<Artifact>)>>;
    static BUILT: OnceLock<Built> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, a)) = built.iter().find(|(n, _)| *n == name) {
        return a.clone();
    }
    let artifact = Arc::new(
        build_artifact(&fixture_package(name), &build_options()).expect("artifact builds"),
    );
    built.push((name, artifact.clone()));
    artifact
}

/// A deployed function with its doubles.
pub struct Deployed {
    pub moto: Moto,
    pub emulator: LambdaEmulator,
    pub lambda: aws_sdk_lambda::Client,
    pub function: String,
    pub version: String,
}

/// Uploads `artifact`, creates the function with `env` (plus the exec
/// wrapper), waits until it is Active and publishes a version.
pub async fn deploy(artifact: &Artifact, env: &[(&str, &str)], timeout_secs: i32) -> Deployed {
    let moto = Moto::start().await;
    let s3 = moto.s3();
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("bucket");
    s3.put_object()
        .bucket(BUCKET)
        .key(&artifact.s3_key)
        .body(aws_sdk_s3::primitives::ByteStream::from(
            artifact.bytes.clone(),
        ))
        .send()
        .await
        .expect("artifact uploads");
    let role = moto.create_role("plugind-plugin").await;
    let emulator = LambdaEmulator::start(&moto.url, s3, tools::tool_var("PYTHON312")).await;
    let lambda = emulator.client();
    let function = "plugind-echo".to_owned();
    let mut variables = aws_sdk_lambda::types::Environment::builder()
        .variables("AWS_LAMBDA_EXEC_WRAPPER", "/var/task/bin/plugin-runner");
    for (k, v) in env {
        variables = variables.variables(*k, *v);
    }
    lambda
        .create_function()
        .function_name(&function)
        .runtime(aws_sdk_lambda::types::Runtime::Python312)
        .role(role)
        .handler("plugind.handler")
        .timeout(timeout_secs)
        .memory_size(512)
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .s3_bucket(BUCKET)
                .s3_key(&artifact.s3_key)
                .build(),
        )
        .environment(variables.build())
        .send()
        .await
        .expect("CreateFunction");
    for _ in 0..50 {
        let f = lambda
            .get_function()
            .function_name(&function)
            .send()
            .await
            .expect("GetFunction");
        if f.configuration().and_then(|c| c.state()) == Some(&aws_sdk_lambda::types::State::Active)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let version = lambda
        .publish_version()
        .function_name(&function)
        .send()
        .await
        .expect("PublishVersion")
        .version
        .expect("a version");
    Deployed {
        moto,
        emulator,
        lambda,
        function,
        version,
    }
}

/// A session request line for a tool of the deployed plugin.
pub fn tool_request(
    session_id: &str,
    provider: &str,
    tool: &str,
    params: Value,
    context: Value,
) -> Value {
    json!({
        "session_id": session_id,
        "conversation_id": null,
        "message_id": null,
        "app_id": null,
        "endpoint_id": null,
        "context": context,
        "event": "request",
        "data": {
            "user_id": "u1",
            "type": "tool",
            "action": "invoke_tool",
            "provider": provider,
            "tool": tool,
            "tool_parameters": params,
            "credentials": {"api_key": "k"},
            "credential_type": "api-key",
        },
    })
}

impl Deployed {
    /// Starts InvokeWithResponseStream on the published version; the
    /// caller reads the event stream.
    pub async fn start(
        &self,
        payload: &Value,
    ) -> aws_sdk_lambda::operation::invoke_with_response_stream::InvokeWithResponseStreamOutput
    {
        self.lambda
            .invoke_with_response_stream()
            .function_name(&self.function)
            .qualifier(&self.version)
            .payload(aws_sdk_lambda::primitives::Blob::new(
                serde_json::to_vec(payload).unwrap(),
            ))
            .send()
            .await
            .expect("InvokeWithResponseStream")
    }

    /// InvokeWithResponseStream on the published version, read to the end.
    pub async fn invoke(&self, payload: &Value) -> (Vec<Bytes>, Option<(String, String)>) {
        super::read_stream(self.start(payload).await).await
    }
}

/// The session lines of a streamed body.
pub fn lines(chunks: &[Bytes]) -> Vec<Value> {
    let body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    super::strip_prelude(&body)
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|l| {
            serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)))
        })
        .collect()
}
