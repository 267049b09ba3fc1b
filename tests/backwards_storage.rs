//! Plugin storage served by the daemon through `storage` backwards calls:
//! get/set/del/exist with hex values, per tenant and plugin, with the
//! manifest's quota.

mod dify_double;

use std::sync::Arc;

use dify_double::{all_permissions, call, client_for, context, invoke};
use plugind::backwards::{
    BackwardsContext, BackwardsResponse, MemoryKvStore, PluginStorage, ResponseEvent,
};
use serde_json::{json, Value};

/// Storage never reaches Dify: point the client at a closed port.
fn ctx(permission: Value) -> BackwardsContext {
    context(client_for("http://127.0.0.1:9", "unused"), &permission)
}

fn storage_permission(size: u64) -> Value {
    let mut p = all_permissions();
    p["storage"] = json!({"enabled": true, "size": size});
    p
}

async fn op(ctx: &BackwardsContext, request: Value) -> Result<Value, String> {
    let events: Vec<BackwardsResponse> = call(ctx, invoke("storage", request)).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[1].event, ResponseEvent::End);
    match events[0].event {
        ResponseEvent::Response => {
            assert_eq!(events[0].message, "struct");
            Ok(events[0].data.clone())
        }
        ResponseEvent::Error => Err(events[0].message.clone()),
        ResponseEvent::End => panic!("two ends"),
    }
}

fn set(key: &str, value: &[u8]) -> Value {
    json!({"opt": "set", "key": key, "value": hex::encode(value)})
}

#[tokio::test]
async fn set_get_exist_del_round_trip() {
    let ctx = ctx(all_permissions());
    assert_eq!(
        op(&ctx, set("greeting", b"hi \x00 there")).await.unwrap(),
        json!({"data": "ok"})
    );
    assert_eq!(
        op(&ctx, json!({"opt": "get", "key": "greeting"}))
            .await
            .unwrap(),
        json!({"data": hex::encode(b"hi \x00 there")})
    );
    assert_eq!(
        op(&ctx, json!({"opt": "exist", "key": "greeting"}))
            .await
            .unwrap(),
        json!({"data": true, "exist_num": 1})
    );
    assert_eq!(
        op(&ctx, json!({"opt": "del", "key": "greeting"}))
            .await
            .unwrap(),
        json!({"data": "ok", "deleted_num": 1})
    );
    assert_eq!(
        op(&ctx, json!({"opt": "exist", "key": "greeting"}))
            .await
            .unwrap(),
        json!({"data": false, "exist_num": 0})
    );
    assert_eq!(
        op(&ctx, json!({"opt": "del", "key": "greeting"}))
            .await
            .unwrap(),
        json!({"data": "ok", "deleted_num": 0})
    );
}

#[tokio::test]
async fn get_of_a_missing_key_is_an_error() {
    let ctx = ctx(all_permissions());
    assert_eq!(
        op(&ctx, json!({"opt": "get", "key": "nothing"}))
            .await
            .unwrap_err(),
        "load data failed, please check if the key is correct or you have not set it"
    );
}

#[tokio::test]
async fn values_are_per_tenant_and_plugin() {
    let shared = PluginStorage::new(Arc::new(MemoryKvStore::new()), 1 << 20);
    let mut a = ctx(all_permissions());
    a.storage = shared.clone();
    let mut other_plugin = a.clone();
    other_plugin.plugin_id = "someone/else".into();
    let mut other_tenant = a.clone();
    other_tenant.tenant_id = "tenant-2".into();

    op(&a, set("k", b"mine")).await.unwrap();
    for stranger in [&other_plugin, &other_tenant] {
        assert_eq!(
            op(stranger, json!({"opt": "exist", "key": "k"}))
                .await
                .unwrap()["data"],
            false
        );
    }
    assert_eq!(
        op(&a, json!({"opt": "get", "key": "k"})).await.unwrap()["data"],
        hex::encode(b"mine")
    );
}

#[tokio::test]
async fn quota_from_the_manifest_is_enforced() {
    let ctx = ctx(storage_permission(1024));
    op(&ctx, set("a", &[1u8; 600])).await.unwrap();
    assert_eq!(
        op(&ctx, set("b", &[2u8; 600])).await.unwrap_err(),
        "save data failed: allocated size is greater than max storage size"
    );
    assert_eq!(
        op(&ctx, json!({"opt": "exist", "key": "b"})).await.unwrap()["data"],
        false
    );
    // Overwriting counts only the difference; freeing space lets writes in.
    op(&ctx, set("a", &[3u8; 1000])).await.unwrap();
    op(&ctx, json!({"opt": "del", "key": "a"})).await.unwrap();
    op(&ctx, set("b", &[2u8; 1024])).await.unwrap();
}

#[tokio::test]
async fn storage_needs_its_permission() {
    let mut permission = all_permissions();
    permission["storage"]["enabled"] = json!(false);
    let ctx = ctx(permission);
    assert_eq!(
        op(&ctx, set("k", b"v")).await.unwrap_err(),
        "permission denied, you need to enable storage access in plugin manifest"
    );
}

#[tokio::test]
async fn bad_values_and_keys_are_refused() {
    let ctx = ctx(all_permissions());
    let err = op(&ctx, json!({"opt": "set", "key": "k", "value": "zz"}))
        .await
        .unwrap_err();
    assert!(err.starts_with("decode data failed: "), "{err}");
    assert_eq!(
        op(&ctx, json!({"opt": "get", "key": "../other-plugin/secret"}))
            .await
            .unwrap_err(),
        "invalid key: path traversal attempt detected"
    );
    let long_key = "k".repeat(257);
    assert_eq!(
        op(&ctx, set(&long_key, b"v")).await.unwrap_err(),
        "save data failed: key length must be less than 256 characters"
    );
    let err = op(&ctx, json!({"opt": "rename", "key": "k"}))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("unmarshal backwards invoke request failed: field `opt`"),
        "{err}"
    );
}
