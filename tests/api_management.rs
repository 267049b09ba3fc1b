//! The management API end to end: a real daemon, real packages, real HTTP.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use plugind::install::{InstallJob, InstallStep, InstallStepError, Progress};
use serde_json::json;

#[tokio::test]
async fn health_check_needs_no_key() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(format!("{}/health/check", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["platform"], "local");
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_with_an_envelope() {
    let app = spawn_app().await;
    for key in [Some("nope"), None] {
        let mut req = app
            .client
            .get(app.url("list"))
            .query(&[("page", "1"), ("page_size", "10")]);
        if let Some(k) = key {
            req = req.header("X-Api-Key", k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], -401);
        assert!(body["data"].is_null());
        assert_eq!(
            error_body(&body)["error_type"],
            "PluginDaemonUnauthorizedError"
        );
    }
}

#[tokio::test]
async fn upload_returns_identifier_manifest_and_verification() {
    let app = spawn_app().await;
    let (status, body) = app.upload(tool_package("echo", "0.0.1"), false).await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 0, "{body}");
    assert_eq!(body["message"], "success");
    let data = &body["data"];
    let id = data["unique_identifier"].as_str().unwrap();
    assert!(id.starts_with("langgenius/echo:0.0.1@"), "{id}");
    assert_eq!(data["manifest"]["name"], "echo");
    assert_eq!(data["manifest"]["verified"], false);
    assert!(data["verification"].is_null());
    assert_eq!(data["manifest"]["tool"]["identity"]["name"], "echo");
    // Icons are remapped to asset ids that the asset route serves.
    let icon = data["manifest"]["icon"].as_str().unwrap();
    assert_ne!(icon, "icon.svg");
    assert_eq!(data["manifest"]["tool"]["identity"]["icon"], icon);
    let r = app
        .client
        .get(format!("{}/plugin/{TENANT}/asset/{icon}", app.base))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), ICON);
}

#[tokio::test]
async fn unknown_asset_is_404() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(format!("{}/plugin/{TENANT}/asset/nothing.svg", app.base))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// `GET extract-asset/` with these query parameters: status, content type, body.
async fn extract_asset(app: &TestApp, query: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let r = app
        .client
        .get(format!("{}/plugin/{TENANT}/extract-asset/", app.base))
        .header("X-Api-Key", KEY)
        .query(query)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn extract_asset_serves_package_files_below_assets() {
    let app = spawn_app().await;
    // The tool package plus a nested asset.
    let mut files =
        plugind::package::read_archive(&tool_package("echo", "0.0.1"), &Default::default())
            .unwrap()
            .entries;
    files.push(("_assets/img/dark.svg".into(), b"<svg id='dark'/>".to_vec()));
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let (_, up) = app.upload(build_zip(&files), false).await;
    assert_eq!(up["code"], 0, "{up}");
    let id = up["data"]["unique_identifier"].as_str().unwrap().to_owned();

    let (status, ctype, body) = extract_asset(
        &app,
        &[("plugin_unique_identifier", &id), ("file_path", "icon.svg")],
    )
    .await;
    assert_eq!((status, ctype.as_str()), (200, "application/octet-stream"));
    assert_eq!(body, ICON);
    let (status, _, body) = extract_asset(
        &app,
        &[
            ("plugin_unique_identifier", &id),
            ("file_path", "img/dark.svg"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, b"<svg id='dark'/>");
    // Without the trailing slash too.
    let r = app
        .client
        .get(format!("{}/plugin/{TENANT}/extract-asset", app.base))
        .header("X-Api-Key", KEY)
        .query(&[
            ("plugin_unique_identifier", id.as_str()),
            ("file_path", "icon.svg"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), ICON);

    // Dify reads any 200 as the file: every refusal is a 4xx with an envelope.
    let envelope = |body: &[u8]| -> serde_json::Value { serde_json::from_slice(body).unwrap() };
    let (status, _, body) = extract_asset(
        &app,
        &[
            ("plugin_unique_identifier", &id),
            ("file_path", "missing.svg"),
        ],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(envelope(&body)["code"], -404);
    assert_eq!(
        error_body(&envelope(&body))["error_type"],
        "PluginDaemonNotFoundError"
    );
    // Files outside `_assets/` are not assets.
    let (status, _, _) = extract_asset(
        &app,
        &[
            ("plugin_unique_identifier", &id),
            ("file_path", "manifest.yaml"),
        ],
    )
    .await;
    assert_eq!(status, 404);
    for path in [
        "../manifest.yaml",
        "img/../../manifest.yaml",
        "/_assets/icon.svg",
        "./icon.svg",
        "img//dark.svg",
        "..\\manifest.yaml",
    ] {
        let (status, _, body) = extract_asset(
            &app,
            &[("plugin_unique_identifier", &id), ("file_path", path)],
        )
        .await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(envelope(&body)["code"], -400, "{path}");
    }
    // A package never uploaded.
    let unknown = format!("langgenius/echo:0.0.1@{}", "0".repeat(64));
    let (status, _, body) = extract_asset(
        &app,
        &[
            ("plugin_unique_identifier", &unknown),
            ("file_path", "icon.svg"),
        ],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(envelope(&body)["code"], -404);
    // Malformed or missing parameters.
    for query in [
        vec![
            ("plugin_unique_identifier", "not an identifier"),
            ("file_path", "icon.svg"),
        ],
        vec![("plugin_unique_identifier", id.as_str())],
        vec![("file_path", "icon.svg")],
    ] {
        let (status, _, body) = extract_asset(&app, &query).await;
        assert_eq!(status, 400, "{query:?}");
        assert_eq!(envelope(&body)["code"], -400, "{query:?}");
    }
    // Behind the key like every /plugin route.
    let r = app
        .client
        .get(format!("{}/plugin/{TENANT}/extract-asset/", app.base))
        .query(&[
            ("plugin_unique_identifier", id.as_str()),
            ("file_path", "icon.svg"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn decode_from_identifier_accepts_query_and_json_body() {
    let app = spawn_app().await;
    let (_, up) = app.upload(tool_package("echo", "0.0.1"), false).await;
    let id = up["data"]["unique_identifier"].as_str().unwrap();
    let (s, by_query) = app
        .get(
            "decode/from_identifier",
            &[("plugin_unique_identifier", id)],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(by_query["code"], 0, "{by_query}");
    assert_eq!(by_query["data"]["unique_identifier"], id);
    assert_eq!(by_query["data"]["manifest"], up["data"]["manifest"]);
    // Dify sends this GET with a JSON body.
    let r = app
        .client
        .get(app.url("decode/from_identifier"))
        .header("X-Api-Key", KEY)
        .json(&json!({"plugin_unique_identifier": id}))
        .send()
        .await
        .unwrap();
    let by_body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(by_body, by_query);
}

#[tokio::test]
async fn malformed_identifier_is_a_400_bad_request() {
    let app = spawn_app().await;
    for path in [
        "decode/from_identifier",
        "fetch/manifest",
        "fetch/identifier",
        "fetch/readme",
    ] {
        let (s, body) = app
            .get(path, &[("plugin_unique_identifier", "not an identifier")])
            .await;
        assert_eq!(s, 400, "{path}");
        assert_eq!(body["code"], -400, "{path}");
        assert_eq!(
            error_body(&body)["error_type"],
            "PluginDaemonBadRequestError"
        );
    }
    let (s, _) = app.get("fetch/manifest", &[]).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn unknown_identifier_is_refused_and_starts_no_task() {
    let app = spawn_app().await;
    let unknown = format!("langgenius/ghost:0.0.1@{}", "a".repeat(64));
    let (s, body) = app
        .get(
            "decode/from_identifier",
            &[("plugin_unique_identifier", &unknown)],
        )
        .await;
    assert_eq!((s, body["code"].clone()), (200, json!(-400)), "{body}");
    let (s, body) = app
        .get("fetch/manifest", &[("plugin_unique_identifier", &unknown)])
        .await;
    assert_eq!((s, body["code"].clone()), (200, json!(-400)), "{body}");
    let (_, body) = app
        .get(
            "fetch/identifier",
            &[("plugin_unique_identifier", &unknown)],
        )
        .await;
    assert_eq!(body["data"], false);
    let (s, body) = app
        .post(
            "install/identifiers",
            json!({"plugin_unique_identifiers": [unknown], "source": "package", "metas": [{}]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["code"], -400, "{body}");
    assert!(app.nonempty_tables().await.is_empty());
}

#[tokio::test]
async fn bad_zip_is_refused_and_leaves_nothing_behind() {
    let app = spawn_app().await;
    let (s, body) = app.upload(b"this is not a zip".to_vec(), false).await;
    assert_eq!(s, 200);
    assert_eq!(body["code"], -400, "{body}");
    assert!(body["data"].is_null());
    assert_eq!(
        error_body(&body)["error_type"],
        "PluginDaemonBadRequestError"
    );
    assert!(
        app.stored_files()
            .iter()
            .all(|f| f.ends_with(".db") || f.contains(".db-")),
        "{:?}",
        app.stored_files()
    );
    assert!(app.nonempty_tables().await.is_empty());
}

#[tokio::test]
async fn missing_icon_is_refused_and_written_assets_are_undone() {
    let app = spawn_app().await;
    // The manifest's icon exists; the provider's does not.
    let pkg = tool_package_with_provider_icon("broken", "0.0.1", "zzz.svg");
    let (_, body) = app.upload(pkg, false).await;
    assert_eq!(body["code"], -400, "{body}");
    assert!(error_body(&body)["message"]
        .as_str()
        .unwrap()
        .contains("zzz.svg"));
    assert!(
        app.stored_files()
            .iter()
            .all(|f| !f.starts_with("assets") && !f.starts_with("plugin_packages")),
        "{:?}",
        app.stored_files()
    );
    assert!(app.nonempty_tables().await.is_empty());
}

#[tokio::test]
async fn oversize_upload_is_refused() {
    let app = spawn_app_with(
        &["--max-plugin-package-size", "1024"],
        Arc::new(plugind::install::NoopInstallStep),
    )
    .await;
    let big = build_zip(&[("manifest.yaml", &vec![b'#'; 4096][..])]);
    let big: Vec<u8> = big
        .into_iter()
        .chain(std::iter::repeat_n(0u8, 2048))
        .collect();
    let (s, body) = app.upload(big, false).await;
    assert_eq!(s, 200);
    assert_eq!(body["code"], -400);
    assert!(error_body(&body)["message"]
        .as_str()
        .unwrap()
        .contains("exceeds"));
    assert!(app.nonempty_tables().await.is_empty());
}

#[tokio::test]
async fn forced_verification_refuses_unsigned_packages() {
    let app = spawn_app_with(
        &["--force-verifying-signature", "true"],
        Arc::new(plugind::install::NoopInstallStep),
    )
    .await;
    let (_, body) = app.upload(tool_package("echo", "0.0.1"), false).await;
    assert_eq!(body["code"], -400);
    assert!(error_body(&body)["message"]
        .as_str()
        .unwrap()
        .contains("bad signature"));
    assert!(app.nonempty_tables().await.is_empty());
    // And the request flag alone does the same when the setting is off.
    let app = spawn_app().await;
    let (_, body) = app.upload(tool_package("echo", "0.0.1"), true).await;
    assert_eq!(body["code"], -400);
}

/// A daemon on the default signature policy (FORCE_VERIFYING_SIGNATURE on)
/// that also trusts `public_pem` as a third-party key.
async fn spawn_trusting(public_pem: &str) -> TestApp {
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join("third-party.pem");
    std::fs::write(&key_path, public_pem).unwrap();
    let app = spawn_app_with(
        &[
            "--force-verifying-signature",
            "true",
            "--third-party-signature-verification-enabled",
            "true",
            "--third-party-signature-verification-public-keys",
            key_path.to_str().unwrap(),
        ],
        Arc::new(plugind::install::NoopInstallStep),
    )
    .await;
    // The keys are read once, when the daemon starts.
    drop(keys);
    app
}

#[tokio::test]
async fn signed_packages_without_a_verification_file_pass_forced_verification_as_langgenius() {
    use plugind::package::signature::{generate_keypair, parse_private_key, sign_with_key};
    use plugind::package::AuthorizedCategory;
    let (private, public) = generate_keypair(2048).unwrap();
    let key = parse_private_key(&private, "test key").unwrap();
    let app = spawn_trusting(&public).await;

    // Signed the way packages were before `.verification.dify.json` existed.
    let legacy =
        sign_with_key(&tool_package("legacy", "0.0.1"), &key, None, 1_700_000_000).unwrap();
    let names = plugind::package::read_archive(&legacy, &Default::default())
        .unwrap()
        .entries
        .into_iter()
        .map(|(name, _)| name)
        .collect::<Vec<_>>();
    assert!(
        !names.iter().any(|n| n == ".verification.dify.json"),
        "{names:?}"
    );
    let (status, body) = app.upload(legacy, false).await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 0, "{body}");
    assert_eq!(
        body["data"]["verification"],
        json!({"authorized_category": "langgenius"})
    );
    assert_eq!(body["data"]["manifest"]["verified"], true);
    // The second step of a local install decodes it again, with the same answer.
    let id = body["data"]["unique_identifier"].as_str().unwrap();
    let (_, decoded) = app
        .get(
            "decode/from_identifier",
            &[("plugin_unique_identifier", id)],
        )
        .await;
    assert_eq!(decoded["code"], 0, "{decoded}");
    assert_eq!(
        decoded["data"]["verification"],
        body["data"]["verification"]
    );
    assert_eq!(decoded["data"]["manifest"]["verified"], true);

    // A verification file, when there is one, is what the upload reports.
    let partner = sign_with_key(
        &tool_package("partner", "0.0.1"),
        &key,
        Some(AuthorizedCategory::Partner),
        1_700_000_000,
    )
    .unwrap();
    let (_, body) = app.upload(partner, false).await;
    assert_eq!(body["code"], 0, "{body}");
    assert_eq!(
        body["data"]["verification"],
        json!({"authorized_category": "partner"})
    );

    // The policy still refuses what no trusted key signed.
    let (other_private, _) = generate_keypair(2048).unwrap();
    let stranger = sign_with_key(
        &tool_package("stranger", "0.0.1"),
        &parse_private_key(&other_private, "other key").unwrap(),
        None,
        1_700_000_000,
    )
    .unwrap();
    let (_, body) = app.upload(stranger, false).await;
    assert_eq!(body["code"], -400, "{body}");
    assert!(error_body(&body)["message"]
        .as_str()
        .unwrap()
        .contains("bad signature"));
}

#[tokio::test]
async fn install_list_fetch_and_uninstall() {
    let app = spawn_app().await;
    let (id, task) = app.install(tool_package("echo", "0.0.1")).await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(task["tenant_id"], TENANT);
    assert_eq!(task["total_plugins"], 1);
    assert_eq!(task["completed_plugins"], 1);
    let p = &task["plugins"][0];
    assert_eq!(p["plugin_unique_identifier"], id);
    assert_eq!(p["plugin_id"], "langgenius/echo");
    assert_eq!(p["status"], "success");
    assert_eq!(p["message"], "installed");
    assert_eq!(p["labels"]["en_US"], "Echo echo");
    assert_eq!(p["source"], "package");

    // Installing again: already installed, no task.
    let (_, again) = app
        .post(
            "install/identifiers",
            json!({"plugin_unique_identifiers": [id], "source": "package", "metas": [{}]}),
        )
        .await;
    assert_eq!(again["data"], json!({"all_installed": true, "task_id": ""}));

    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    assert_eq!(list["code"], 0);
    assert_eq!(list["data"]["total"], 1);
    let item = &list["data"]["list"][0];
    assert_eq!(item["plugin_id"], "langgenius/echo");
    assert_eq!(item["plugin_unique_identifier"], id);
    assert_eq!(item["name"], "echo");
    assert_eq!(item["version"], "0.0.1");
    assert_eq!(item["runtime_type"], "local");
    assert_eq!(item["tenant_id"], TENANT);
    assert_eq!(item["id"], item["installation_id"]);
    assert_eq!(item["checksum"], id.split('@').nth(1).unwrap());
    assert_eq!(item["declaration"]["tool"]["identity"]["name"], "echo");
    assert_eq!(item["meta"], json!({}));
    assert!(item["created_at"].as_str().unwrap().ends_with('Z'));

    let (_, fetched) = app
        .get("fetch/identifier", &[("plugin_unique_identifier", &id)])
        .await;
    assert_eq!(fetched["data"], true);
    let (_, manifest) = app
        .get("fetch/manifest", &[("plugin_unique_identifier", &id)])
        .await;
    assert_eq!(manifest["data"]["name"], "echo");
    let (_, readme) = app
        .get(
            "fetch/readme",
            &[("plugin_unique_identifier", &id), ("language", "ja_JP")],
        )
        .await;
    assert_eq!(
        readme["data"],
        json!({"content": "# echo 0.0.1", "language": "en_US"})
    );

    let (_, batch) = app
        .post(
            "installation/fetch/batch",
            json!({"plugin_ids": ["langgenius/echo", "x/y"]}),
        )
        .await;
    assert_eq!(batch["data"].as_array().unwrap().len(), 1);
    assert_eq!(batch["data"][0]["version"], "0.0.1");
    assert_eq!(batch["data"][0]["plugin_id"], "langgenius/echo");
    assert_eq!(batch["data"][0]["declaration"]["name"], "echo");

    let other = format!("langgenius/echo:0.0.2@{}", "b".repeat(64));
    let absent = format!("langgenius/none:0.0.1@{}", "c".repeat(64));
    let (_, missing) = app
        .post(
            "installation/missing",
            json!({"plugin_unique_identifiers": [id, other, absent]}),
        )
        .await;
    assert_eq!(
        missing["data"],
        json!([
            {"plugin_unique_identifier": other, "current_identifier": id},
            {"plugin_unique_identifier": absent, "current_identifier": ""},
        ])
    );

    let (_, tools) = app
        .get("tools", &[("page", "1"), ("page_size", "10")])
        .await;
    let tool = &tools["data"][0];
    assert_eq!(tool["provider"], "echo");
    assert_eq!(tool["plugin_id"], "langgenius/echo");
    assert_eq!(tool["plugin_unique_identifier"], id);
    assert_eq!(tool["declaration"]["identity"]["name"], "echo");
    assert_eq!(tool["declaration"]["tools"][0]["identity"]["name"], "echo");
    let (_, one) = app
        .get(
            "tool",
            &[("plugin_id", "langgenius/echo"), ("provider", "echo")],
        )
        .await;
    assert_eq!(one["data"]["provider"], "echo");
    let (_, wrong) = app
        .get(
            "tool",
            &[("plugin_id", "langgenius/echo"), ("provider", "nope")],
        )
        .await;
    assert_eq!(wrong["code"], -404);
    assert_eq!(error_body(&wrong)["error_type"], "PluginNotFoundError");
    let (_, exists) = app
        .post(
            "tools/check_existence",
            json!({"provider_ids": [
                {"plugin_id": "langgenius/echo", "provider_name": "echo"},
                {"plugin_id": "langgenius/echo", "provider_name": "other"},
            ]}),
        )
        .await;
    assert_eq!(exists["data"], json!([true, false]));
    let (_, models) = app
        .get("models", &[("page", "1"), ("page_size", "10")])
        .await;
    assert_eq!(models["data"], json!([]));
    for path in ["agent_strategies", "datasources", "triggers"] {
        let (_, empty) = app.get(path, &[("page", "1"), ("page_size", "10")]).await;
        assert_eq!(empty["data"], json!([]), "{path}");
    }

    // Uninstall: true, and again true for an absent one.
    let installation_id = item["id"].as_str().unwrap();
    let (_, un) = app
        .post(
            "uninstall",
            json!({"plugin_installation_id": installation_id}),
        )
        .await;
    assert_eq!(un["data"], true);
    let (_, un) = app
        .post(
            "uninstall",
            json!({"plugin_installation_id": installation_id}),
        )
        .await;
    assert_eq!(un["data"], true);
    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    assert_eq!(list["data"], json!({"list": [], "total": 0}));
    let (_, fetched) = app
        .get("fetch/identifier", &[("plugin_unique_identifier", &id)])
        .await;
    assert_eq!(fetched["data"], false);
    let counts = app.state.store.table_counts().await.unwrap();
    for t in [
        "plugins",
        "plugin_installations",
        "plugin_declarations",
        "provider_installations",
    ] {
        assert_eq!(counts[t], 0, "{t}");
    }
}

/// POSTs a management route as another tenant.
async fn post_as(
    app: &TestApp,
    tenant: &str,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    app.client
        .post(format!("{}/plugin/{tenant}/management/{path}", app.base))
        .header("X-Api-Key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn unknown_ids_are_done_and_touch_nothing_malformed_ones_are_refused() {
    const OTHER: &str = "5b3c1c2e-1111-4a4a-9c9c-000000000002";
    let app = spawn_app().await;
    let (_, task) = app.install(tool_package("echo", "0.0.1")).await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    let installation_id = list["data"]["list"][0]["id"].as_str().unwrap().to_owned();

    // As the reference: an id the tenant does not have is already gone.
    let body = post_as(
        &app,
        OTHER,
        "uninstall",
        json!({"plugin_installation_id": installation_id}),
    )
    .await;
    assert_eq!(body, json!({"code": 0, "message": "success", "data": true}));
    let (_, un) = app
        .post(
            "uninstall",
            json!({"plugin_installation_id": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    assert_eq!(un["data"], true, "{un}");
    let body = post_as(
        &app,
        OTHER,
        &format!("install/tasks/{task_id}/delete"),
        json!({}),
    )
    .await;
    assert_eq!(body["data"], true, "{body}");
    let body = post_as(&app, OTHER, "install/tasks/delete_all", json!({})).await;
    assert_eq!(body["data"], true, "{body}");
    // … and the owner's installation and task are still there.
    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    assert_eq!(list["data"]["total"], 1, "{list}");
    let (_, kept) = app.get(&format!("install/tasks/{task_id}"), &[]).await;
    assert_eq!(kept["data"]["id"], task_id.as_str(), "{kept}");

    // An id that is no UUID names nothing ever: the caller's mistake.
    for (path, body) in [
        ("uninstall", json!({"plugin_installation_id": "garbage"})),
        ("install/tasks/garbage/delete", json!({})),
        ("install/tasks/not-a-task/delete/langgenius/echo:0.0.1@0000000000000000000000000000000000000000000000000000000000000000", json!({})),
    ] {
        let (status, refused) = app.post(path, body).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(refused["code"], -400, "{path}: {refused}");
        assert_eq!(
            error_body(&refused)["error_type"],
            "PluginDaemonBadRequestError",
            "{path}"
        );
    }
    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    assert_eq!(list["data"]["total"], 1, "{list}");
}

#[tokio::test]
async fn pagination_is_validated_and_applied() {
    let app = spawn_app().await;
    let (s, body) = app.get("list", &[("page", "0"), ("page_size", "10")]).await;
    assert_eq!((s, body["code"].clone()), (400, json!(-400)));
    let (s, _) = app
        .get("list", &[("page", "1"), ("page_size", "257")])
        .await;
    assert_eq!(s, 400);
    let (s, _) = app.get("install/tasks", &[]).await;
    assert_eq!(s, 400);
    app.install(tool_package("one", "0.0.1")).await;
    app.install(tool_package("two", "0.0.1")).await;
    let (_, page2) = app.get("list", &[("page", "2"), ("page_size", "1")]).await;
    assert_eq!(page2["data"]["total"], 2);
    assert_eq!(page2["data"]["list"].as_array().unwrap().len(), 1);
    assert_eq!(page2["data"]["list"][0]["plugin_id"], "langgenius/two");
}

#[tokio::test]
async fn upgrade_moves_the_installation_and_drops_the_old_package() {
    let app = spawn_app().await;
    let (old, _) = app.install(tool_package("echo", "0.0.1")).await;
    let (_, up) = app.upload(tool_package("echo", "0.0.2"), false).await;
    let new = up["data"]["unique_identifier"].as_str().unwrap().to_owned();
    let (_, same) = app
        .post("install/upgrade", json!({"original_plugin_unique_identifier": old, "new_plugin_unique_identifier": old, "source": "package"}))
        .await;
    assert_eq!(same["code"], -400);
    let (_, started) = app
        .post(
            "install/upgrade",
            json!({"original_plugin_unique_identifier": old, "new_plugin_unique_identifier": new, "source": "package", "meta": {"k": 1}}),
        )
        .await;
    assert_eq!(started["data"]["all_installed"], false, "{started}");
    let task = app
        .wait_task(started["data"]["task_id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(task["plugins"][0]["message"], "upgraded");
    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    assert_eq!(list["data"]["list"][0]["plugin_unique_identifier"], new);
    assert_eq!(list["data"]["list"][0]["meta"], json!({"k": 1}));
    let (_, old_known) = app
        .get("fetch/identifier", &[("plugin_unique_identifier", &old)])
        .await;
    assert_eq!(old_known["data"], false);
    let (_, tools) = app
        .get("tools", &[("page", "1"), ("page_size", "10")])
        .await;
    assert_eq!(tools["data"].as_array().unwrap().len(), 1);
    assert_eq!(tools["data"][0]["plugin_unique_identifier"], new);
}

#[tokio::test]
async fn task_routes_list_and_delete() {
    let app = spawn_app().await;
    let (id, task) = app.install(tool_package("echo", "0.0.1")).await;
    let task_id = task["id"].as_str().unwrap();
    let (_, tasks) = app
        .get("install/tasks", &[("page", "1"), ("page_size", "10")])
        .await;
    assert_eq!(tasks["data"][0]["id"], task_id);
    let (_, gone) = app
        .post(&format!("install/tasks/{task_id}/delete/{id}"), json!({}))
        .await;
    assert_eq!(gone["data"], true);
    // Every plugin left had succeeded (none left): the task went away.
    let (_, missing) = app.get(&format!("install/tasks/{task_id}"), &[]).await;
    assert_eq!(missing["code"], -404);
    let (_, deleted) = app.post("install/tasks/delete_all", json!({})).await;
    assert_eq!(deleted["data"], true);
    let (_, tasks) = app
        .get("install/tasks", &[("page", "1"), ("page_size", "10")])
        .await;
    assert_eq!(tasks["data"], json!([]));
}

struct FailingStep;

#[async_trait]
impl InstallStep for FailingStep {
    async fn ensure_runtime(
        &self,
        _: &InstallJob,
        progress: &Progress,
    ) -> Result<(), InstallStepError> {
        progress.info("building environment").await;
        Err(InstallStepError("dependency resolution failed".into()))
    }
    async fn remove_runtime(&self, _: &str) -> Result<(), InstallStepError> {
        Ok(())
    }
}

struct PanickingStep;

#[async_trait]
impl InstallStep for PanickingStep {
    async fn ensure_runtime(&self, _: &InstallJob, _: &Progress) -> Result<(), InstallStepError> {
        panic!("boom")
    }
    async fn remove_runtime(&self, _: &str) -> Result<(), InstallStepError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_install_step_fails_the_task_and_records_nothing() {
    for step in [
        Arc::new(FailingStep) as Arc<dyn InstallStep>,
        Arc::new(PanickingStep),
    ] {
        let app = spawn_app_with(&[], step).await;
        let (_, task) = app.install(tool_package("echo", "0.0.1")).await;
        assert_eq!(task["status"], "failed", "{task}");
        assert_eq!(task["completed_plugins"], 0);
        assert_eq!(task["plugins"][0]["status"], "failed");
        assert!(!task["plugins"][0]["message"].as_str().unwrap().is_empty());
        let counts = app.state.store.table_counts().await.unwrap();
        assert_eq!(counts["plugins"], 0);
        assert_eq!(counts["plugin_installations"], 0);
        assert_eq!(counts["provider_installations"], 0);
    }
}

#[tokio::test]
async fn restart_fails_tasks_a_stopped_daemon_left_running() {
    let app = spawn_app().await;
    let task = app
        .state
        .store
        .create_task(
            TENANT,
            plugind::store::TaskStatus::Running,
            vec![plugind::store::TaskPluginStatus {
                plugin_unique_identifier: format!("a/b:0.0.1@{}", "d".repeat(64)),
                labels: json!({"en_US": "B"}),
                icon: String::new(),
                icon_dark: String::new(),
                plugin_id: "a/b".into(),
                status: plugind::store::TaskStatus::Running,
                message: "starting".into(),
                source: "package".into(),
            }],
        )
        .await
        .unwrap();
    let TestApp {
        dir,
        database_url,
        state,
        ..
    } = app;
    state.store.close().await;
    let app = serve(
        dir,
        database_url,
        &[],
        Arc::new(plugind::install::NoopInstallStep),
    )
    .await;
    let (_, t) = app.get(&format!("install/tasks/{}", task.id), &[]).await;
    assert_eq!(t["data"]["status"], "failed");
    assert_eq!(t["data"]["plugins"][0]["status"], "failed");
    assert_eq!(
        t["data"]["plugins"][0]["message"],
        plugind::install::INTERRUPTED_MESSAGE
    );
}
