//! `plugind lambda package` and `plugind lambda deploy`, run as the built
//! binary: the real packager with uv and the real bootstrap, deploying to
//! moto's S3 and Lambda control plane.

mod lambda_emulator;

use std::path::{Path, PathBuf};
use std::process::Output;

use lambda_emulator::harness::{fixture_package, uv_cache};
use lambda_emulator::tools::{plugin_runner_binary, tool_var, Moto};
use plugind::install::lambda_artifact::{host_arch, BOOTSTRAP_FILE};
use serde_json::Value;
use sha2::{Digest, Sha256};

const BUCKET: &str = "plugind-cli";

/// A work folder with the fixture package and a bootstrap folder laid out
/// as PLUGIN_LAMBDA_BOOTSTRAP_DIR expects.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lambda-cli")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        std::fs::write(
            dir.path().join("echo.difypkg"),
            fixture_package("echo_tool"),
        )
        .unwrap();
        let arch = dir.path().join("bootstrap").join(host_arch().as_str());
        std::fs::create_dir_all(&arch).unwrap();
        std::os::unix::fs::symlink(plugin_runner_binary(), arch.join(BOOTSTRAP_FILE)).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `plugind lambda <args>` in the work folder (so no `.env` of the
    /// repository is read) with a clean AWS environment.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_plugind"));
        cmd.current_dir(self.dir.path()).arg("lambda").args(args);
        for var in [
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "PLUGIN_STORAGE_OSS_BUCKET",
            "PLUGIN_STORAGE_S3_PREFIX",
            "PLUGIN_LAMBDA_ROLE_ARN",
            "PLUGIN_LAMBDA_BOOTSTRAP_DIR",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        cmd
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().expect("plugind runs")
    }

    async fn run_async(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        tokio::process::Command::from(self.command(args, env))
            .output()
            .await
            .expect("plugind runs")
    }

    fn build_args(&self) -> Vec<String> {
        vec![
            "--bootstrap-dir".into(),
            self.path("bootstrap").display().to_string(),
            "--uv".into(),
            tool_var("UV_PATH").display().to_string(),
            "--uv-cache-dir".into(),
            uv_cache().display().to_string(),
        ]
    }
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "plugind failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?}, stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn zip_names(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    let zip = zip::ZipArchive::new(file).unwrap();
    zip.file_names().map(str::to_owned).collect()
}

#[test]
fn package_writes_the_artifact_and_describes_it() {
    let work = Work::new();
    let arch = host_arch().as_str();
    let out_zip = work.path("out.zip");
    let mut args = vec![
        "package".to_owned(),
        work.path("echo.difypkg").display().to_string(),
        "--arch".into(),
        arch.into(),
        "-o".into(),
        out_zip.display().to_string(),
    ];
    args.extend(work.build_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let described = stdout_json(&work.run(&args, &[]));

    let bytes = std::fs::read(&out_zip).expect("the zip is written");
    assert_eq!(described["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(described["size"], bytes.len() as u64);
    assert_eq!(described["arch"], arch);
    assert!(
        described["identifier"]
            .as_str()
            .unwrap()
            .starts_with("plugind/echo_tool:"),
        "{described}"
    );
    let names = zip_names(&out_zip);
    for expected in ["bin/plugin-runner", "plugind-artifact.json", "main.py"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.starts_with("deps/dify_plugin/")),
        "the SDK is bundled: {names:?}"
    );

    // The same package builds the same bytes.
    let again = stdout_json(&work.run(&args, &[]));
    assert_eq!(again["sha256"], described["sha256"]);
}

#[test]
fn package_without_a_bootstrap_says_where_to_put_one() {
    let work = Work::new();
    std::fs::create_dir_all(work.path("empty")).unwrap();
    let pkg = work.path("echo.difypkg").display().to_string();
    let empty = work.path("empty").display().to_string();
    let out = work.run(
        &[
            "package",
            &pkg,
            "--arch",
            host_arch().as_str(),
            "--bootstrap-dir",
            &empty,
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("PLUGIN_LAMBDA_BOOTSTRAP_DIR"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = work.run(&["package", "no-such.difypkg"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such.difypkg"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_publishes_a_function_and_skips_a_known_artifact() {
    let moto = Moto::start().await;
    moto.s3()
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let role = moto.create_role("plugind-cli").await;
    let work = Work::new();
    let mut args = vec![
        "deploy".to_owned(),
        work.path("echo.difypkg").display().to_string(),
        "--arch".into(),
        host_arch().as_str().into(),
        "--timeout".into(),
        "120".into(),
    ];
    args.extend(work.build_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("PLUGIN_STORAGE_OSS_BUCKET", BUCKET),
        ("PLUGIN_STORAGE_S3_PREFIX", "cli/"),
        ("PLUGIN_LAMBDA_ROLE_ARN", role.as_str()),
    ];
    let first = work.run_async(&args, &env).await;
    let first = stdout_json(&first);
    assert_eq!(first["uploaded"], true, "{first}");
    let key = first["artifact_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("cli/artifacts/"), "{key}");
    let name = first["function_name"].as_str().unwrap().to_owned();
    let version = first["version"].as_str().unwrap().to_owned();
    assert_ne!(version, "$LATEST");

    let lambda = aws_sdk_lambda::Client::from_conf(
        aws_sdk_lambda::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_lambda::config::Region::new("us-east-1"))
            .endpoint_url(&moto.url)
            .credentials_provider(aws_sdk_lambda::config::Credentials::new(
                "test", "test", None, None, "static",
            ))
            .build(),
    );
    let f = lambda
        .get_function()
        .function_name(&name)
        .qualifier(&version)
        .send()
        .await
        .expect("the published version exists");
    let config = f.configuration().unwrap();
    assert_eq!(config.timeout(), Some(120));
    let wrapper = config
        .environment()
        .and_then(|e| e.variables())
        .and_then(|v| v.get("AWS_LAMBDA_EXEC_WRAPPER"))
        .cloned();
    assert_eq!(wrapper.as_deref(), Some("/var/task/bin/plugin-runner"));

    // The same package again: the artifact is already in S3.
    let second = work.run_async(&args, &env).await;
    let second = stdout_json(&second);
    assert_eq!(second["uploaded"], false, "{second}");
    assert_eq!(second["artifact_key"], key.as_str());
    assert_eq!(second["function_name"], name.as_str());
}
