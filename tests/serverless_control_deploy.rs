//! Uploading artifacts and deploying Lambda functions against moto's S3 and
//! Lambda control plane.

mod serverless_support;

use std::collections::HashMap;
use std::time::Duration;

use plugind_packager::deploy::{self, Arch, FunctionSpec, WaitOptions};
use serverless_support::{Moto, BUCKET};

fn spec(moto: &Moto, key: &str, memory_mb: i32) -> FunctionSpec {
    FunctionSpec {
        function_name: "plugind-test-echo-0123456789ab".into(),
        role_arn: moto.role_arn.clone(),
        runtime: "python3.12".into(),
        handler: "plugin_runner.handler".into(),
        arch: Arch::X86_64,
        memory_mb,
        timeout_secs: 900,
        environment: HashMap::from([
            (
                "AWS_LAMBDA_EXEC_WRAPPER".into(),
                "/var/task/bin/plugin-runner".into(),
            ),
            ("PYTHONPATH".into(), "/var/task/deps".into()),
        ]),
        tags: HashMap::from([
            ("plugind:plugin".into(), "test/echo:0.0.1@abc".into()),
            (
                "plugind:artifact".into(),
                key.rsplit('/').next().unwrap().into(),
            ),
        ]),
        bucket: BUCKET.into(),
        key: key.into(),
    }
}

fn wait() -> WaitOptions {
    WaitOptions {
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(30),
    }
}

/// A tiny valid zip with `content` as its one file.
fn zip_of(content: &str) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    zip.start_file("main.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(content.as_bytes()).unwrap();
    zip.finish().unwrap();
    buf.into_inner()
}

#[tokio::test]
async fn artifacts_are_uploaded_once_per_content_hash() {
    let moto = Moto::start().await;
    let s3 = moto.s3();
    let key = deploy::artifact_key("p/", "abc");
    assert!(deploy::upload_if_absent(&s3, BUCKET, &key, zip_of("1"))
        .await
        .unwrap());
    assert!(!deploy::upload_if_absent(&s3, BUCKET, &key, zip_of("1"))
        .await
        .unwrap());
    assert_eq!(moto.keys("p/").await, vec!["p/artifacts/abc.zip"]);
}

#[tokio::test]
async fn deploy_creates_then_updates_and_publishes_versions() {
    let moto = Moto::start().await;
    let s3 = moto.s3();
    let lambda = moto.lambda();
    let first = deploy::artifact_key("", "aaa");
    let second = deploy::artifact_key("", "bbb");
    deploy::upload_if_absent(&s3, BUCKET, &first, zip_of("v1"))
        .await
        .unwrap();
    deploy::upload_if_absent(&s3, BUCKET, &second, zip_of("v2"))
        .await
        .unwrap();

    let created = deploy::deploy_function(&lambda, &spec(&moto, &first, 256), wait())
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.function_name, "plugind-test-echo-0123456789ab");
    assert!(!created.function_arn.is_empty());

    let got = lambda
        .get_function()
        .function_name(&created.function_name)
        .send()
        .await
        .unwrap();
    let config = got.configuration().unwrap();
    assert_eq!(config.memory_size(), Some(256));
    assert_eq!(config.timeout(), Some(900));
    assert_eq!(config.role(), Some(moto.role_arn.as_str()));
    let env = config.environment().unwrap().variables().unwrap();
    assert_eq!(
        env["AWS_LAMBDA_EXEC_WRAPPER"],
        "/var/task/bin/plugin-runner"
    );
    assert_eq!(env["PYTHONPATH"], "/var/task/deps");
    let tags = got.tags().unwrap();
    assert_eq!(tags["plugind:plugin"], "test/echo:0.0.1@abc");
    assert_eq!(tags["plugind:artifact"], "aaa.zip");

    let updated = deploy::deploy_function(&lambda, &spec(&moto, &second, 512), wait())
        .await
        .unwrap();
    assert!(!updated.created);
    assert_ne!(updated.version, created.version);
    let config = lambda
        .get_function_configuration()
        .function_name(&updated.function_name)
        .send()
        .await
        .unwrap();
    assert_eq!(config.memory_size(), Some(512));
    let tags = lambda
        .list_tags()
        .resource(&updated.function_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tags().unwrap()["plugind:artifact"], "bbb.zip");
    // The published versions are both there, each on its own code.
    let versions = lambda
        .list_versions_by_function()
        .function_name(&updated.function_name)
        .send()
        .await
        .unwrap();
    let numbers: Vec<&str> = versions
        .versions()
        .iter()
        .filter_map(|v| v.version())
        .collect();
    assert!(numbers.contains(&created.version.as_str()), "{numbers:?}");
    assert!(numbers.contains(&updated.version.as_str()), "{numbers:?}");
    assert_eq!(moto.functions().await, vec![updated.function_name.clone()]);
}

#[tokio::test]
async fn delete_removes_the_function_and_tolerates_absence() {
    let moto = Moto::start().await;
    let key = deploy::artifact_key("", "ccc");
    deploy::upload_if_absent(&moto.s3(), BUCKET, &key, zip_of("x"))
        .await
        .unwrap();
    let lambda = moto.lambda();
    let deployed = deploy::deploy_function(&lambda, &spec(&moto, &key, 128), wait())
        .await
        .unwrap();
    assert!(deploy::delete_function(&lambda, &deployed.function_name)
        .await
        .unwrap());
    assert!(moto.functions().await.is_empty());
    assert!(!deploy::delete_function(&lambda, &deployed.function_name)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_refused_create_names_the_step_and_leaves_nothing() {
    let moto = Moto::start().await;
    let key = deploy::artifact_key("", "ddd");
    deploy::upload_if_absent(&moto.s3(), BUCKET, &key, zip_of("x"))
        .await
        .unwrap();
    let mut bad = spec(&moto, &key, 128);
    bad.role_arn = "arn:aws:iam::123456789012:role/not-there".into();
    let err = deploy::deploy_function(&moto.lambda(), &bad, wait())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("CreateFunction"), "{text}");
    assert!(text.contains(&bad.function_name), "{text}");
    assert!(moto.functions().await.is_empty());
}
