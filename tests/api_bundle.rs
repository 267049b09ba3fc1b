//! Bundle upload and the listing routes (`installation/ids`,
//! `{category}/list`, `models/bindings`) end to end: a real daemon, bundles
//! zipped around packages built from the fixture plugins.

mod common;

use std::path::Path;

use common::*;
use plugind::package::{decode, package_dir, DecodeLimits};
use serde_json::{json, Value};

/// A fixture plugin packaged as `plugind plugin package` does.
fn fixture(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    package_dir(&dir, 50 * 1024 * 1024).unwrap()
}

fn identifier_of(pkg: &[u8]) -> String {
    decode(pkg, &DecodeLimits::default())
        .unwrap()
        .identifier
        .to_string()
}

/// A bundle manifest with the given dependency list (YAML flow items).
fn manifest(deps: &[String]) -> String {
    let mut m = String::from(
        "name: kit\nlabels: {en_US: Kit}\ndescription: {en_US: A kit}\nicon: icon.svg\n\
         version: 0.0.1\nauthor: plugind\ntype: bundle\ndependencies:\n",
    );
    for d in deps {
        m.push_str(&format!("  - {d}\n"));
    }
    if deps.is_empty() {
        m = m.replace("dependencies:\n", "dependencies: []\n");
    }
    m
}

fn package_dep(path: &str) -> String {
    format!("{{type: package, value: {{path: {path}}}}}")
}

/// A bundle zip: the manifest, its icon and the given packages under `_assets/`.
fn bundle(deps: &[String], packages: &[(&str, &[u8])]) -> Vec<u8> {
    let manifest = manifest(deps);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("manifest.yaml".into(), manifest.into_bytes()),
        ("_assets/icon.svg".into(), ICON.to_vec()),
        ("README.md".into(), b"# kit".to_vec()),
    ];
    for (path, data) in packages {
        files.push((format!("_assets/{path}"), data.to_vec()));
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    build_zip(&refs)
}

async fn upload_bundle(app: &TestApp, data: Vec<u8>, verify: bool) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .part(
            "dify_bundle",
            reqwest::multipart::Part::bytes(data).file_name("dify_bundle"),
        )
        .text("verify_signature", if verify { "true" } else { "false" });
    let r = app
        .client
        .post(app.url("install/upload/bundle"))
        .header("X-Api-Key", KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Asserts an error envelope of type PluginDaemonBadRequestError whose
/// message contains `needle`.
fn assert_bad_request(status: u16, body: &Value, needle: &str) {
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], -400, "{body}");
    let err = error_body(body);
    assert_eq!(err["error_type"], "PluginDaemonBadRequestError", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

async fn assert_nothing_left(app: &TestApp) {
    assert_eq!(app.stored_files(), Vec::<String>::new());
    assert_eq!(app.nonempty_tables().await, vec![]);
}

#[tokio::test]
async fn bundle_answers_each_dependency_and_uploads_its_packages() {
    let app = spawn_app().await;
    let tool = fixture("echo_tool");
    let model = fixture("echo_model");
    let deps = [
        "{type: github, value: {repo_pattern: \"langgenius/plugins:1.x.x/tool.difypkg\"}}".into(),
        package_dep("tool-pkg"),
        "{type: marketplace, value: {marketplace_pattern: \"langgenius/openai:^0.0.5\"}}".into(),
        package_dep("model-pkg"),
    ];
    let (status, body) = upload_bundle(
        &app,
        bundle(&deps, &[("tool-pkg", &tool), ("model-pkg", &model)]),
        false,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 0, "{body}");
    assert_eq!(body["message"], "success");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);

    assert_eq!(
        data[0],
        json!({"type": "github", "value": {
            "repo_address": "https://github.com/langgenius/plugins",
            "repo": "langgenius/plugins",
            "release": "1.x.x",
            "packages": "tool.difypkg",
        }})
    );
    assert_eq!(
        data[2],
        json!({"type": "marketplace", "value": {
            "organization": "langgenius", "plugin": "openai", "version": "^0.0.5",
        }})
    );

    for (entry, pkg, name) in [
        (&data[1], &tool, "echo_tool"),
        (&data[3], &model, "echo_model"),
    ] {
        assert_eq!(entry["type"], "package");
        let id = entry["value"]["unique_identifier"].as_str().unwrap();
        assert_eq!(id, identifier_of(pkg));
        let manifest = &entry["value"]["manifest"];
        assert_eq!(manifest["name"], name);
        assert_eq!(manifest["verified"], false);
        // Icons are served as assets, as after a single upload.
        let icon = manifest["icon"].as_str().unwrap();
        assert!(icon.ends_with(".svg") && icon != "icon.svg", "{icon}");
        let r = app
            .client
            .get(format!("{}/plugin/{TENANT}/asset/{icon}", app.base))
            .header("X-Api-Key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        // The package is stored: Dify's next steps work on it.
        let (_, decoded) = app
            .get(
                "decode/from_identifier",
                &[("plugin_unique_identifier", id)],
            )
            .await;
        assert_eq!(decoded["code"], 0, "{decoded}");
        assert_eq!(decoded["data"]["manifest"], *manifest);
        let (_, fetched) = app
            .get("fetch/manifest", &[("plugin_unique_identifier", id)])
            .await;
        assert_eq!(fetched["data"], *manifest);
    }

    // The uploaded packages install like single uploads.
    let ids: Vec<&str> = [&data[1], &data[3]]
        .iter()
        .map(|e| e["value"]["unique_identifier"].as_str().unwrap())
        .collect();
    let (_, started) = app
        .post(
            "install/identifiers",
            json!({"plugin_unique_identifiers": ids, "source": "package", "metas": [{}, {}]}),
        )
        .await;
    assert_eq!(started["code"], 0, "{started}");
    let task = app
        .wait_task(started["data"]["task_id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "success", "{task}");
}

#[tokio::test]
async fn bundle_without_dependencies_is_an_empty_list() {
    let app = spawn_app().await;
    let (_, body) = upload_bundle(&app, bundle(&[], &[]), false).await;
    assert_eq!(body["code"], 0, "{body}");
    assert_eq!(body["data"], json!([]));
    assert_nothing_left(&app).await;
}

#[tokio::test]
async fn a_package_listed_twice_is_stored_once() {
    let app = spawn_app().await;
    let tool = tool_package("echo", "0.0.1");
    let deps = [package_dep("a"), package_dep("a")];
    let (_, body) = upload_bundle(&app, bundle(&deps, &[("a", &tool)]), false).await;
    assert_eq!(body["code"], 0, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0], data[1]);
    let id = data[0]["value"]["unique_identifier"].as_str().unwrap();
    let packages: Vec<String> = app
        .stored_files()
        .into_iter()
        .filter(|f| f.ends_with(id))
        .collect();
    assert_eq!(packages.len(), 1, "{packages:?}");
}

#[tokio::test]
async fn malformed_bundles_are_refused_by_name_and_leave_nothing() {
    let app = spawn_app().await;
    let tool = tool_package("echo", "0.0.1");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not a zip at all".to_vec(), "failed to decode bundle"),
        (
            build_zip(&[("README.md", b"# no manifest")]),
            "manifest.yaml not found in bundle",
        ),
        // A plugin package uploaded as a bundle.
        (tool.clone(), "a bundle must declare \"bundle\""),
        (
            bundle(&[package_dep("absent")], &[]),
            "package \"absent\" not found in the bundle's _assets",
        ),
        (
            bundle(&["{type: npm, value: {name: x}}".into()], &[]),
            "unknown type \"npm\"",
        ),
        (
            bundle(
                &["{type: github, value: {repo_pattern: \"no-version\"}}".into()],
                &[],
            ),
            "invalid github pattern \"no-version\"",
        ),
        (
            bundle(&[package_dep("junk")], &[("junk", b"not a package")]),
            "package \"junk\" in the bundle: invalid difypkg",
        ),
        (
            build_zip(&[("manifest.yaml", b"type: bundle\n"), ("../escape", b"x")]),
            "illegal file path",
        ),
    ];
    for (data, needle) in cases {
        let (status, body) = upload_bundle(&app, data, false).await;
        assert_bad_request(status, &body, needle);
    }
    assert_nothing_left(&app).await;
}

#[tokio::test]
async fn missing_bundle_field_is_refused() {
    let app = spawn_app().await;
    let form = reqwest::multipart::Form::new().text("verify_signature", "false");
    let r = app
        .client
        .post(app.url("install/upload/bundle"))
        .header("X-Api-Key", KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_bad_request(status, &body, "dify_bundle is required");
}

#[tokio::test]
async fn a_failing_package_undoes_the_packages_stored_before_it() {
    let app = spawn_app().await;
    let good = tool_package("good", "0.0.1");
    // Decodes, but its provider icon is missing: storing it fails after the
    // good package was stored.
    let bad = tool_package_with_provider_icon("bad", "0.0.1", "missing.svg");
    let deps = [package_dep("good"), package_dep("bad")];
    let (status, body) = upload_bundle(
        &app,
        bundle(&deps, &[("good", &good), ("bad", &bad)]),
        false,
    )
    .await;
    assert_bad_request(status, &body, "missing.svg");
    assert_nothing_left(&app).await;
    // The good package alone still uploads afterwards.
    let (_, body) = upload_bundle(&app, bundle(&deps[..1], &[("good", &good)]), false).await;
    assert_eq!(body["code"], 0, "{body}");
}

#[tokio::test]
async fn verification_refuses_unsigned_packages_in_a_bundle() {
    let app = spawn_app().await;
    let tool = tool_package("echo", "0.0.1");
    let data = bundle(&[package_dep("a")], &[("a", &tool)]);
    let (status, body) = upload_bundle(&app, data.clone(), true).await;
    assert_bad_request(status, &body, "bad signature");
    assert_nothing_left(&app).await;

    let forced = spawn_app_with(
        &["--force-verifying-signature", "true"],
        std::sync::Arc::new(plugind::install::NoopInstallStep),
    )
    .await;
    let (status, body) = upload_bundle(&forced, data, false).await;
    assert_bad_request(status, &body, "bad signature");
    assert_nothing_left(&forced).await;
}

#[tokio::test]
async fn oversize_bundle_is_refused() {
    let app = spawn_app_with(
        &["--max-bundle-package-size", "4096"],
        std::sync::Arc::new(plugind::install::NoopInstallStep),
    )
    .await;
    let tool = fixture("echo_tool");
    assert!(tool.len() > 4096);
    let (status, body) =
        upload_bundle(&app, bundle(&[package_dep("a")], &[("a", &tool)]), false).await;
    assert_bad_request(status, &body, "file size exceeds the maximum limit");
    assert_nothing_left(&app).await;
}

// --- listings ------------------------------------------------------------------------------

/// Installs the tool, model and endpoint fixtures; answers their identifiers.
async fn install_three(app: &TestApp) -> (String, String, String) {
    let (tool, t1) = app.install(fixture("echo_tool")).await;
    let (model, t2) = app.install(fixture("echo_model")).await;
    let (endpoint, t3) = app.install(fixture("echo_endpoint")).await;
    for t in [t1, t2, t3] {
        assert_eq!(t["status"], "success", "{t}");
    }
    (tool, model, endpoint)
}

#[tokio::test]
async fn installation_ids_by_category() {
    let app = spawn_app().await;
    let (_, body) = app.get("installation/ids", &[("category", "tool")]).await;
    assert_eq!(body["data"], json!({"plugin_ids": []}), "{body}");

    install_three(&app).await;
    for (category, expected) in [
        ("tool", json!(["plugind/echo_tool"])),
        ("model", json!(["plugind/echo_model"])),
        ("extension", json!(["plugind/echo_endpoint"])),
        ("agent-strategy", json!([])),
        ("datasource", json!([])),
        ("trigger", json!([])),
    ] {
        let (status, body) = app.get("installation/ids", &[("category", category)]).await;
        assert_eq!(status, 200);
        assert_eq!(body["code"], 0, "{body}");
        assert_eq!(body["data"]["plugin_ids"], expected, "{category}");
    }

    let (status, body) = app.get("installation/ids", &[("category", "bogus")]).await;
    assert_bad_request(status, &body, "invalid plugin category");
    let (status, body) = app.get("installation/ids", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], -400);
}

#[tokio::test]
async fn category_list_filters_and_pages() {
    let app = spawn_app().await;
    let (tool, _, endpoint) = install_three(&app).await;
    let (a, _) = app.install(tool_package("alpha", "0.0.1")).await;
    let (b, _) = app.install(tool_package("beta", "0.0.1")).await;

    let list = |category: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let app = &app;
        async move {
            let mut q = vec![("page", "1"), ("page_size", "10")];
            q.extend(extra);
            let (status, body) = app.get(&format!("{category}/list"), &q).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["code"], 0, "{body}");
            body["data"].clone()
        }
    };
    let ids = |data: &Value| -> Vec<String> {
        data["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["plugin_unique_identifier"].as_str().unwrap().to_owned())
            .collect()
    };

    let tools = list("tool", vec![]).await;
    assert_eq!(ids(&tools), [tool.clone(), a.clone(), b.clone()]);
    assert_eq!(tools["has_more"], false);
    let first = &tools["list"][0];
    assert_eq!(first["plugin_id"], "plugind/echo_tool");
    assert_eq!(first["name"], "echo_tool");
    assert_eq!(first["version"], "0.0.1");
    assert_eq!(first["tenant_id"], TENANT);
    assert_eq!(first["installation_id"], first["id"]);
    assert!(tool.ends_with(first["checksum"].as_str().unwrap()));
    assert_eq!(first["declaration"]["name"], "echo_tool");

    assert_eq!(ids(&list("extension", vec![]).await), [endpoint]);
    assert_eq!(
        ids(&list("agent-strategy", vec![]).await),
        Vec::<String>::new()
    );

    // Pages: one entry each, has_more until the last.
    let mut seen = Vec::new();
    for (page, more) in [("1", true), ("2", true), ("3", false)] {
        let (_, body) = app
            .get("tool/list", &[("page", page), ("page_size", "1")])
            .await;
        assert_eq!(body["data"]["has_more"], more, "page {page}: {body}");
        seen.extend(ids(&body["data"]));
    }
    assert_eq!(seen, [tool.clone(), a.clone(), b.clone()]);

    // Query: case-insensitive over plugin id, name, label and description.
    assert_eq!(ids(&list("tool", vec![("query", "ALPHA")]).await), [a]);
    assert_eq!(ids(&list("tool", vec![("query", "echo beta")]).await), [b]);
    assert_eq!(
        ids(&list("tool", vec![("query", "nothing-like-this")]).await),
        Vec::<String>::new()
    );
    // Tags: the fixtures carry none, so any tag filters everything out.
    assert_eq!(
        ids(&list("tool", vec![("tags", "search"), ("tags", "rag")]).await),
        Vec::<String>::new()
    );

    let (status, body) = app
        .get("bogus/list", &[("page", "1"), ("page_size", "10")])
        .await;
    assert_bad_request(status, &body, "invalid plugin category");
    for bad in [
        vec![("page", "0"), ("page_size", "10")],
        vec![("page", "1")],
        vec![("page", "1"), ("page_size", "10"), ("tags", "nonsense")],
        vec![("page", "1"), ("page_size", "10"), ("language", "fr_FR")],
    ] {
        let (status, body) = app.get("tool/list", &bad).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["code"], -400);
    }
    // The plain list keeps its own shape beside the category lists.
    let (_, plain) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    assert_eq!(plain["data"]["total"], 5);
}

#[tokio::test]
async fn model_bindings_name_each_model_provider_and_its_installation() {
    let app = spawn_app().await;
    let (_, body) = app.get("models/bindings", &[]).await;
    assert_eq!(body["code"], 0, "{body}");
    assert_eq!(body["data"], json!([]));

    let (_, model, _) = install_three(&app).await;
    let (_, body) = app.get("models/bindings", &[]).await;
    assert_eq!(body["code"], 0, "{body}");
    let (_, listed) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    let installation = listed["data"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["plugin_id"] == "plugind/echo_model")
        .unwrap()
        .clone();
    assert_eq!(
        body["data"],
        json!([{
            "provider": "echo_model",
            "installation_id": installation["id"],
            "plugin_id": "plugind/echo_model",
            "plugin_unique_identifier": model,
            "runtime_type": installation["runtime_type"],
            "source": "package",
            "version": "0.0.1",
            "verified": false,
        }])
    );

    // Another tenant sees none of it.
    let other = format!(
        "{}/plugin/{}/management/models/bindings",
        app.base, "5b3c1c2e-1111-4a4a-9c9c-000000000002"
    );
    let r: Value = app
        .client
        .get(other)
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"], json!([]));
}
