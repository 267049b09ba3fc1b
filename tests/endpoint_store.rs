//! Endpoint rows in the store, on SQLite (or PostgreSQL when
//! PLUGIND_TEST_POSTGRES_URL is set).

mod common;

use plugind::store::{NewEndpoint, Store};
use serde_json::{json, Map, Value};

fn settings(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn insert(store: &Store, id: &str, hook: &str, plugin: &str) {
    store
        .insert_endpoint(&NewEndpoint {
            id,
            hook_id: hook,
            tenant_id: "t1",
            user_id: "u1",
            plugin_id: plugin,
            name: id,
            settings: &settings(json!({"k": "v"})),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn rows_round_trip_and_page_newest_first() {
    let (store, _dir) = common::fresh_store().await;
    insert(&store, "e1", "h1", "a/p").await;
    insert(&store, "e2", "h2", "a/p").await;
    insert(&store, "e3", "h3", "a/q").await;
    let e = store.endpoint_by_hook("h1").await.unwrap().unwrap();
    assert_eq!(
        (e.id.as_str(), e.enabled, &e.settings),
        ("e1", true, &settings(json!({"k": "v"})))
    );
    assert_eq!(
        store.endpoint("t1", "e2").await.unwrap().unwrap().hook_id,
        "h2"
    );
    assert!(store.endpoint("other", "e2").await.unwrap().is_none());
    let ids =
        |v: Vec<plugind::store::EndpointRecord>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_endpoints("t1", None, 1, 2).await.unwrap()),
        ["e3", "e2"]
    );
    assert_eq!(
        ids(store.list_endpoints("t1", None, 2, 2).await.unwrap()),
        ["e1"]
    );
    assert_eq!(
        ids(store
            .list_endpoints("t1", Some("a/q"), 1, 10)
            .await
            .unwrap()),
        ["e3"]
    );
}

#[tokio::test]
async fn enable_disable_update_and_delete() {
    let (store, _dir) = common::fresh_store().await;
    insert(&store, "e1", "h1", "a/p").await;
    let off = store
        .set_endpoint_enabled("t1", "e1", false)
        .await
        .unwrap()
        .unwrap();
    assert!(!off.enabled);
    assert!(!store.endpoint_by_hook("h1").await.unwrap().unwrap().enabled);
    assert!(store
        .set_endpoint_enabled("t1", "nope", true)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .update_endpoint("t1", "e1", "new", &settings(json!({"x": 1})))
        .await
        .unwrap());
    let e = store.endpoint_by_hook("h1").await.unwrap().unwrap();
    assert_eq!(
        (e.name.as_str(), e.settings["x"].as_i64()),
        ("new", Some(1))
    );
    assert!(!store
        .update_endpoint("t2", "e1", "new", &Map::new())
        .await
        .unwrap());
    assert!(store.delete_endpoint("t1", "e1").await.unwrap().is_some());
    assert!(store.delete_endpoint("t1", "e1").await.unwrap().is_none());
    insert(&store, "e2", "h2", "a/p").await;
    assert_eq!(store.delete_plugin_endpoints("t1", "a/p").await.unwrap(), 1);
}
