//! PLATFORM=serverless installs through the management API against moto:
//! packages and artifacts in S3, functions created, versions recorded and
//! registered, functions deleted with their last installation, and every
//! phase resumable.

mod common;
mod serverless_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{TestApp, TENANT};
use plugind::app_state::AppState;
use plugind::install::InstallJob;
use plugind::runtime::RuntimeState;
use serde_json::{json, Value};
use serverless_support::{Moto, ZipBuilder, BUCKET};

const TENANT2: &str = "5b3c1c2e-1111-4a4a-9c9c-000000000002";

fn serverless_args(moto: &Moto) -> Vec<String> {
    vec![
        "--platform".into(),
        "serverless".into(),
        "--plugin-storage-type".into(),
        "aws_s3".into(),
        "--plugin-storage-oss-bucket".into(),
        BUCKET.into(),
        "--plugin-storage-s3-prefix".into(),
        "daemon/".into(),
        "--plugin-lambda-role-arn".into(),
        moto.role_arn.clone(),
        "--plugin-serverless-callback-url".into(),
        "http://127.0.0.1:9".into(),
    ]
}

async fn spawn(
    moto: &Moto,
    builder: Arc<ZipBuilder>,
    dir: tempfile::TempDir,
    database_url: String,
) -> TestApp {
    let args = serverless_args(moto);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let settings = common::settings(dir.path(), &database_url, &args);
    let state = AppState::build_serverless(settings, builder, moto.clients())
        .await
        .unwrap();
    let base = common::serve_router(plugind::api::app(state.clone())).await;
    TestApp {
        base,
        client: reqwest::Client::new(),
        state,
        dir,
        database_url,
    }
}

async fn fresh(moto: &Moto, builder: Arc<ZipBuilder>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database_url(dir.path()).await;
    spawn(moto, builder, dir, url).await
}

async fn upload(app: &TestApp, pkg: Vec<u8>) -> String {
    let (_, up) = app.upload(pkg, false).await;
    assert_eq!(up["code"], 0, "{up}");
    up["data"]["unique_identifier"].as_str().unwrap().to_owned()
}

async fn install_as(app: &TestApp, tenant: &str, id: &str) -> Value {
    let url = format!(
        "{}/plugin/{tenant}/management/install/identifiers",
        app.base
    );
    let started: Value = app
        .client
        .post(url)
        .header("X-Api-Key", common::KEY)
        .json(&json!({"plugin_unique_identifiers": [id], "source": "package", "metas": [{}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(started["code"], 0, "{started}");
    let task_id = started["data"]["task_id"].as_str().unwrap().to_owned();
    let url = format!(
        "{}/plugin/{tenant}/management/install/tasks/{task_id}",
        app.base
    );
    for _ in 0..400 {
        let t: Value = app
            .client
            .get(&url)
            .header("X-Api-Key", common::KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = t["data"]["status"].as_str().unwrap_or("");
        if status == "success" || status == "failed" {
            return t["data"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("task {task_id} did not finish");
}

async fn uninstall_as(app: &TestApp, tenant: &str) {
    let base = format!("{}/plugin/{tenant}/management", app.base);
    let list: Value = app
        .client
        .get(format!("{base}/list"))
        .query(&[("page", "1"), ("page_size", "10")])
        .header("X-Api-Key", common::KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = list["data"]["list"][0]["id"].as_str().unwrap().to_owned();
    let un: Value = app
        .client
        .post(format!("{base}/uninstall"))
        .header("X-Api-Key", common::KEY)
        .json(&json!({"plugin_installation_id": id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(un["data"], true, "{un}");
}

/// The function recorded for `id`.
async fn recorded(app: &TestApp, id: &str) -> Option<plugind::store::ServerlessRuntimeRecord> {
    app.state.store.serverless_runtime(id).await.unwrap()
}

fn job(app: &TestApp, id: &str, declaration: Value) -> InstallJob {
    InstallJob {
        tenant_id: TENANT.into(),
        identifier: id.into(),
        plugin_id: id.split(':').next().unwrap().into(),
        declaration,
        package_key: format!("{}/{id}", app.state.settings.plugin_package_cache_path),
    }
}

#[tokio::test]
async fn install_deploys_records_and_registers_the_function() {
    let moto = Moto::start().await;
    let builder = Arc::new(ZipBuilder::default());
    let app = fresh(&moto, builder.clone()).await;
    let id = upload(&app, common::tool_package("lambda_echo", "0.0.1")).await;
    // Packages live in S3 under the prefix.
    let packages = moto.keys("daemon/plugin_packages/").await;
    assert_eq!(packages.len(), 1, "{packages:?}");

    let task = install_as(&app, TENANT, &id).await;
    assert_eq!(task["status"], "success", "{task}");
    let record = recorded(&app, &id).await.expect("recorded");
    let step = app.state.serverless.clone().unwrap();
    assert_eq!(record.function_name, step.target().function_name(&id));
    assert!(!record.function_version.is_empty());
    assert_eq!(
        moto.keys("daemon/artifacts/").await,
        vec![format!("daemon/artifacts/{}.zip", record.checksum)]
    );
    assert_eq!(moto.functions().await, vec![record.function_name.clone()]);
    let config = moto
        .lambda()
        .get_function_configuration()
        .function_name(&record.function_name)
        .qualifier(&record.function_version)
        .send()
        .await
        .unwrap();
    // resource.memory of the fixture is 1 MiB: Lambda's minimum applies.
    assert_eq!(config.memory_size(), Some(128));
    let runtime = app.state.registry.get(&id).expect("registered");
    assert_eq!(runtime.state(), RuntimeState::Ready);
    assert_eq!(builder.builds.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn uninstalling_the_last_reference_deletes_the_function() {
    let moto = Moto::start().await;
    let builder = Arc::new(ZipBuilder::default());
    let app = fresh(&moto, builder.clone()).await;
    let id = upload(&app, common::tool_package("lambda_shared", "0.0.1")).await;
    assert_eq!(install_as(&app, TENANT, &id).await["status"], "success");
    assert_eq!(install_as(&app, TENANT2, &id).await["status"], "success");
    // The second tenant reuses the deployed function.
    assert_eq!(builder.builds.load(Ordering::SeqCst), 1);
    assert_eq!(moto.functions().await.len(), 1);

    uninstall_as(&app, TENANT).await;
    assert_eq!(moto.functions().await.len(), 1);
    assert!(app.state.registry.get(&id).is_some());

    uninstall_as(&app, TENANT2).await;
    assert!(moto.functions().await.is_empty());
    assert!(app.state.registry.get(&id).is_none());
    assert!(recorded(&app, &id).await.is_none());
}

#[tokio::test]
async fn an_upgrade_swaps_the_function_and_deletes_the_old_one() {
    let moto = Moto::start().await;
    let builder = Arc::new(ZipBuilder::default());
    let app = fresh(&moto, builder.clone()).await;
    let old = upload(&app, common::tool_package("lambda_upgrade", "0.0.1")).await;
    assert_eq!(install_as(&app, TENANT, &old).await["status"], "success");
    let old_record = recorded(&app, &old)
        .await
        .expect("the old version is recorded");
    let new = upload(&app, common::tool_package("lambda_upgrade", "0.0.2")).await;

    let url = format!("{}/plugin/{TENANT}/management/install/upgrade", app.base);
    let started: Value = app
        .client
        .post(url)
        .header("X-Api-Key", common::KEY)
        .json(&json!({"original_plugin_unique_identifier": old,
                      "new_plugin_unique_identifier": new, "source": "package"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(started["code"], 0, "{started}");
    let task = app
        .wait_task(started["data"]["task_id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "success", "{task}");

    // The new version runs on its own published function; the old
    // function went with the old version's last installation.
    let new_record = recorded(&app, &new)
        .await
        .expect("the new version is recorded");
    assert_ne!(new_record.function_name, old_record.function_name);
    assert_eq!(
        moto.functions().await,
        vec![new_record.function_name.clone()]
    );
    assert!(app.state.registry.get(&new).is_some());
    assert!(app.state.registry.get(&old).is_none());
    assert!(recorded(&app, &old).await.is_none());
    assert_eq!(builder.builds.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_install_interrupted_after_upload_finishes_on_retry_without_orphans() {
    let moto = Moto::start().await;
    let builder = Arc::new(ZipBuilder::default());
    let app = fresh(&moto, builder.clone()).await;
    let id = upload(&app, common::tool_package("lambda_resume", "0.0.1")).await;
    let step = app.state.serverless.clone().unwrap();

    // First attempt: the artifact is uploaded, then the daemon "dies".
    let uploaded = step.prepare(&id).await.unwrap();
    assert!(uploaded.uploaded);
    assert!(moto.functions().await.is_empty());

    // The retry skips the upload (same content hash) and finishes.
    let task = install_as(&app, TENANT, &id).await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(
        moto.keys("daemon/artifacts/").await,
        vec![uploaded.key.clone()]
    );
    assert_eq!(moto.functions().await.len(), 1);
    assert!(app.state.registry.get(&id).is_some());
}

#[tokio::test]
async fn an_install_interrupted_after_deploy_updates_the_same_function_on_retry() {
    let moto = Moto::start().await;
    let builder = Arc::new(ZipBuilder::default());
    let app = fresh(&moto, builder.clone()).await;
    let id = upload(&app, common::tool_package("lambda_half", "0.0.1")).await;
    let step = app.state.serverless.clone().unwrap();
    let declaration = app.state.store.declaration(&id).await.unwrap().unwrap();

    // First attempt dies after publishing, before recording.
    let uploaded = step.prepare(&id).await.unwrap();
    let first = step
        .deploy(&job(&app, &id, declaration), &uploaded)
        .await
        .unwrap();
    assert!(first.created);
    assert!(recorded(&app, &id).await.is_none());

    let task = install_as(&app, TENANT, &id).await;
    assert_eq!(task["status"], "success", "{task}");
    // One function, found again by its derived name; the record names it.
    assert_eq!(moto.functions().await, vec![first.function_name.clone()]);
    let record = recorded(&app, &id).await.unwrap();
    assert_eq!(record.function_name, first.function_name);
    // And an uninstall reaches it.
    uninstall_as(&app, TENANT).await;
    assert!(moto.functions().await.is_empty());
}

#[tokio::test]
async fn a_restarted_daemon_registers_recorded_functions() {
    let moto = Moto::start().await;
    let builder = Arc::new(ZipBuilder::default());
    let app = fresh(&moto, builder.clone()).await;
    let id = upload(&app, common::tool_package("lambda_restart", "0.0.1")).await;
    assert_eq!(install_as(&app, TENANT, &id).await["status"], "success");
    let TestApp {
        dir, database_url, ..
    } = app;

    let again = spawn(&moto, builder.clone(), dir, database_url).await;
    let runtime = again.state.registry.get(&id).expect("registered at start");
    assert_eq!(runtime.state(), RuntimeState::Ready);
    assert_eq!(builder.builds.load(Ordering::SeqCst), 1);
}
