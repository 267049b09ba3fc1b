//! Endpoint management routes against a real daemon (temp SQLite or
//! PostgreSQL) whose inner API is the Dify test double.

mod common;
mod dify_double;
mod endpoint_support;

use endpoint_support::{endpoint_package, spawn};
use serde_json::{json, Value};

async fn installation(app: &endpoint_support::EndpointApp, plugin_id: &str) -> Value {
    let (_, list) = app
        .app
        .get("list", &[("page", "1"), ("page_size", "100")])
        .await;
    list["data"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin_id"] == plugin_id)
        .cloned()
        .unwrap_or_else(|| panic!("{plugin_id} installed: {list}"))
}

#[tokio::test]
async fn setup_stores_encrypted_secret_and_lists_it_masked() {
    let app = spawn().await;
    let id = app.install(endpoint_package("ep_a", true)).await;
    let entry = app
        .setup(
            &id,
            "first",
            json!({"greeting": "hi", "token": "supersecret"}),
        )
        .await;

    // The shape Dify's EndpointEntityWithInstance parses.
    for field in [
        "id",
        "created_at",
        "updated_at",
        "tenant_id",
        "plugin_id",
        "expired_at",
        "name",
        "enabled",
        "hook_id",
        "settings",
        "declaration",
    ] {
        assert!(entry.get(field).is_some(), "{field} missing: {entry}");
    }
    assert_eq!(entry["plugin_id"], "plugind/ep_a");
    assert_eq!(entry["tenant_id"], common::TENANT);
    assert_eq!(entry["enabled"], true);
    assert!(entry["expired_at"]
        .as_str()
        .unwrap()
        .starts_with("2050-01-01"));
    assert_eq!(
        entry["settings"],
        json!({"greeting": "hi", "token": "su*******et"})
    );
    assert_eq!(entry["declaration"]["settings"][1]["name"], "token");
    let hook = entry["hook_id"].as_str().unwrap();
    assert_eq!(hook.len(), 40);

    // Stored encrypted, through Dify's encrypt with the endpoint's identity.
    let stored = app
        .app
        .state
        .store
        .endpoint_by_hook(hook)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.settings["greeting"], "hi");
    assert!(stored.settings["token"]
        .as_str()
        .unwrap()
        .starts_with("enc:"));
    let requests = app.dify.requests().await;
    let enc = requests
        .iter()
        .find(|r| r["path"] == "invoke/encrypt" && r["body"]["opt"] == "encrypt")
        .expect("encrypt called");
    assert_eq!(enc["body"]["identity"], entry["id"]);
    assert_eq!(enc["body"]["namespace"], "endpoint");
    assert_eq!(enc["body"]["tenant_id"], common::TENANT);

    let inst = installation(&app, "plugind/ep_a").await;
    assert_eq!(
        (
            inst["endpoints_setups"].as_i64(),
            inst["endpoints_active"].as_i64()
        ),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn setup_refuses_bad_settings_missing_permission_and_unknown_plugins() {
    let app = spawn().await;
    let id = app.install(endpoint_package("ep_b", true)).await;
    let (_, body) = app
        .post("setup", json!({"plugin_unique_identifier": id, "user_id": "u", "name": "n", "settings": {"greeting": "x"}}))
        .await;
    assert_eq!(body["code"], -400, "{body}");
    let err = common::error_body(&body);
    assert_eq!(err["error_type"], "PluginDaemonBadRequestError");
    assert_eq!(
        err["message"],
        "failed to validate settings: missing required setting: token"
    );

    let denied = app.install(endpoint_package("ep_c", false)).await;
    let (_, body) = app
        .post("setup", json!({"plugin_unique_identifier": denied, "user_id": "u", "name": "n", "settings": {"token": "t"}}))
        .await;
    assert_eq!(body["code"], -403, "{body}");
    assert_eq!(
        common::error_body(&body)["error_type"],
        "PluginPermissionDeniedError"
    );

    let missing = id.replace("ep_b", "ep_zz");
    let (_, body) = app
        .post("setup", json!({"plugin_unique_identifier": missing, "user_id": "u", "name": "n", "settings": {"token": "t"}}))
        .await;
    assert_eq!(
        common::error_body(&body)["error_type"],
        "PluginNotFoundError",
        "{body}"
    );

    let (status, _) = app
        .post(
            "setup",
            json!({"plugin_unique_identifier": id, "user_id": "u", "settings": {"token": "t"}}),
        )
        .await;
    assert_eq!(status, 400, "name is required");
    assert!(app
        .app
        .state
        .store
        .list_endpoints(common::TENANT, None, 1, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn update_keeps_a_masked_secret_and_replaces_a_new_one() {
    let app = spawn().await;
    let id = app.install(endpoint_package("ep_d", true)).await;
    let entry = app.setup(&id, "e", json!({"token": "supersecret"})).await;
    let eid = entry["id"].as_str().unwrap();
    let hook = entry["hook_id"].as_str().unwrap();

    let (_, body) = app
        .post("update", json!({"endpoint_id": eid, "user_id": "u", "name": "renamed", "settings": {"token": "su*******et", "greeting": "yo"}}))
        .await;
    assert_eq!(body, json!({"code": 0, "message": "success", "data": true}));
    let stored = app
        .app
        .state
        .store
        .endpoint_by_hook(hook)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.name, "renamed");
    assert_eq!(
        stored.settings["token"],
        format!("enc:{}", base64_of("supersecret"))
    );
    assert_eq!(stored.settings["greeting"], "yo");

    app.post("update", json!({"endpoint_id": eid, "user_id": "u", "name": "renamed", "settings": {"token": "fresh"}}))
        .await;
    let stored = app
        .app
        .state
        .store
        .endpoint_by_hook(hook)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.settings["token"],
        format!("enc:{}", base64_of("fresh"))
    );
    assert!(app
        .dify
        .requests()
        .await
        .iter()
        .any(|r| r["body"]["opt"] == "clear"));

    let (_, body) = app
        .post(
            "update",
            json!({"endpoint_id": "nope", "user_id": "u", "name": "x", "settings": {}}),
        )
        .await;
    assert_eq!(body["code"], -404, "{body}");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn enable_and_disable_move_the_active_count_once() {
    let app = spawn().await;
    let id = app.install(endpoint_package("ep_e", true)).await;
    let entry = app.setup(&id, "e", json!({"token": "t"})).await;
    let eid = entry["id"].clone();
    for _ in 0..2 {
        let (_, body) = app.post("disable", json!({"endpoint_id": eid})).await;
        assert_eq!(body["data"], true, "{body}");
    }
    let inst = installation(&app, "plugind/ep_e").await;
    assert_eq!(
        (
            inst["endpoints_setups"].as_i64(),
            inst["endpoints_active"].as_i64()
        ),
        (Some(1), Some(0))
    );
    let (_, list) = app.get("list", &[("page", "1"), ("page_size", "10")]).await;
    assert_eq!(list["data"][0]["enabled"], false);

    for _ in 0..2 {
        app.post("enable", json!({"endpoint_id": eid})).await;
    }
    let inst = installation(&app, "plugind/ep_e").await;
    assert_eq!(inst["endpoints_active"].as_i64(), Some(1));

    let (_, body) = app.post("enable", json!({"endpoint_id": "missing"})).await;
    assert_eq!(body["code"], -404);
    assert_eq!(
        common::error_body(&body)["error_type"],
        "PluginDaemonNotFoundError"
    );
}

#[tokio::test]
async fn remove_uncounts_and_deletes() {
    let app = spawn().await;
    let id = app.install(endpoint_package("ep_f", true)).await;
    let a = app.setup(&id, "a", json!({"token": "t"})).await;
    let b = app.setup(&id, "b", json!({"token": "t"})).await;
    app.post("disable", json!({"endpoint_id": b["id"]})).await;
    let (_, body) = app.post("remove", json!({"endpoint_id": b["id"]})).await;
    assert_eq!(body["data"], true, "{body}");
    let inst = installation(&app, "plugind/ep_f").await;
    assert_eq!(
        (
            inst["endpoints_setups"].as_i64(),
            inst["endpoints_active"].as_i64()
        ),
        (Some(1), Some(1))
    );
    // Gone: the reference's internal error, word for word, which Dify's
    // `delete_endpoint` takes as done.
    let (status, body) = app.post("remove", json!({"endpoint_id": b["id"]})).await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], -500, "{body}");
    assert_eq!(body["data"], Value::Null);
    assert_eq!(
        common::error_body(&body),
        json!({
            "message": "failed to remove endpoint: record not found",
            "error_type": "PluginDaemonInternalServerError",
            "args": null,
        })
    );
    // Another tenant's endpoint is gone as far as this tenant can tell.
    let other: Value = app
        .app
        .client
        .post(format!(
            "{}/plugin/{}/endpoint/remove",
            app.app.base, "5b3c1c2e-1111-4a4a-9c9c-000000000002"
        ))
        .header("X-Api-Key", common::KEY)
        .json(&json!({"endpoint_id": a["id"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other["code"], -500, "{other}");
    assert!(app
        .app
        .state
        .store
        .endpoint(common::TENANT, a["id"].as_str().unwrap())
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn listings_page_newest_first_and_filter_by_plugin() {
    let app = spawn().await;
    let one = app.install(endpoint_package("ep_g", true)).await;
    let two = app.install(endpoint_package("ep_h", true)).await;
    for n in 0..3 {
        app.setup(&one, &format!("g{n}"), json!({"token": "t"}))
            .await;
    }
    app.setup(&two, "h0", json!({"token": "t"})).await;

    let names = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, p1) = app.get("list", &[("page", "1"), ("page_size", "3")]).await;
    assert_eq!(names(&p1), ["h0", "g2", "g1"]);
    let (_, p2) = app.get("list", &[("page", "2"), ("page_size", "3")]).await;
    assert_eq!(names(&p2), ["g0"]);
    let (_, only) = app
        .get(
            "list/plugin",
            &[
                ("plugin_id", "plugind/ep_h"),
                ("page", "1"),
                ("page_size", "10"),
            ],
        )
        .await;
    assert_eq!(names(&only), ["h0"]);

    let (status, _) = app
        .get("list", &[("page", "1"), ("page_size", "101")])
        .await;
    assert_eq!(status, 400);
    let (status, _) = app.get("list", &[("page", "0"), ("page_size", "10")]).await;
    assert_eq!(status, 400);
    let (status, _) = app
        .get("list/plugin", &[("page", "1"), ("page_size", "10")])
        .await;
    assert_eq!(status, 400, "plugin_id is required");
}

#[tokio::test]
async fn routes_need_the_api_key() {
    let app = spawn().await;
    let r = app
        .app
        .client
        .get(app.endpoint_url("list"))
        .query(&[("page", "1"), ("page_size", "10")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn uninstalling_the_plugin_removes_its_endpoints() {
    let app = spawn().await;
    let id = app.install(endpoint_package("ep_i", true)).await;
    let entry = app.setup(&id, "e", json!({"token": "t"})).await;
    let inst = installation(&app, "plugind/ep_i").await;
    let (_, body) = app
        .app
        .post("uninstall", json!({"plugin_installation_id": inst["id"]}))
        .await;
    assert_eq!(body["code"], 0, "{body}");
    let hook = entry["hook_id"].as_str().unwrap();
    assert!(app
        .app
        .state
        .store
        .endpoint_by_hook(hook)
        .await
        .unwrap()
        .is_none());
    let r = reqwest::get(app.hook_url(hook, "/x")).await.unwrap();
    assert_eq!(r.status(), 404);
}
