//! The store suite. Runs on SQLite, and on PostgreSQL when
//! PLUGIND_TEST_POSTGRES_URL is set (each test gets a fresh database).

mod common;

use common::fresh_store;
use plugind::store::*;
use serde_json::json;

const T1: &str = "tenant-1";
const T2: &str = "tenant-2";

fn ident(name: &str, version: &str) -> String {
    format!("langgenius/{name}:{version}@{}", "e".repeat(64))
}

fn decl(name: &str) -> serde_json::Value {
    json!({"name": name, "tool": {"identity": {"name": name}}, "model": {"provider": "m"}})
}

async fn install(
    store: &Store,
    tenant: &str,
    id: &str,
    d: &serde_json::Value,
) -> Result<Installed, StoreError> {
    store
        .install_plugin(&NewInstallation {
            tenant_id: tenant,
            identifier: id,
            plugin_id: "langgenius/echo",
            install_type: "local",
            declaration: d,
            source: "package",
            meta: &json!({"m": 1}),
        })
        .await
}

#[tokio::test]
async fn installs_count_references_and_the_last_uninstall_removes_the_plugin() {
    let (store, _dir) = fresh_store().await;
    let id = ident("echo", "0.0.1");
    let d = decl("echo");
    assert!(store
        .insert_declaration(&id, "langgenius/echo", &d)
        .await
        .unwrap());
    assert!(!store
        .insert_declaration(&id, "langgenius/echo", &json!({}))
        .await
        .unwrap());
    let a = install(&store, T1, &id, &d).await.unwrap();
    assert_eq!(a.plugin.refers, 1);
    assert_eq!(a.installation.meta, json!({"m": 1}));
    let b = install(&store, T2, &id, &d).await.unwrap();
    assert_eq!(b.plugin.refers, 2);
    assert!(matches!(
        install(&store, T1, &id, &d).await,
        Err(StoreError::AlreadyInstalled)
    ));

    let tools = store
        .list_providers(T1, ProviderCategory::Tool, 1, 10)
        .await
        .unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].provider, "echo");
    let models = store
        .list_providers(T1, ProviderCategory::Model, 1, 10)
        .await
        .unwrap();
    assert_eq!(models[0].provider, "m");

    let out = store
        .uninstall_plugin(T1, &a.installation.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!out.plugin_deleted);
    assert_eq!(out.plugin.unwrap().refers, 1);
    assert!(store
        .uninstall_plugin(T1, &a.installation.id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .list_providers(T1, ProviderCategory::Tool, 1, 10)
        .await
        .unwrap()
        .is_empty());
    // Read back through the declaration types: what was stored, with the
    // defaults Dify's parsers need filled in.
    let stored = store
        .declaration(&id)
        .await
        .unwrap()
        .expect("kept while referenced");
    assert_eq!(stored["name"], d["name"]);
    assert_eq!(stored["model"]["provider"], d["model"]["provider"]);
    assert_eq!(
        stored["tool"]["identity"]["name"],
        d["tool"]["identity"]["name"]
    );

    let out = store
        .uninstall_plugin(T2, &b.installation.id)
        .await
        .unwrap()
        .unwrap();
    assert!(out.plugin_deleted);
    assert!(store.plugin(&id).await.unwrap().is_none());
    assert!(store.declaration(&id).await.unwrap().is_none());
    let counts = store.table_counts().await.unwrap();
    assert!(counts.values().all(|n| *n == 0), "{counts:?}");
}

#[tokio::test]
async fn upgrade_moves_references_and_providers() {
    let (store, _dir) = fresh_store().await;
    let old = ident("echo", "0.0.1");
    let new = ident("echo", "0.0.2");
    let d = decl("echo");
    let inst = install(&store, T1, &old, &d).await.unwrap();
    let up = store
        .upgrade_plugin(&UpgradeInstallation {
            tenant_id: T1,
            original_identifier: &old,
            new_identifier: &new,
            plugin_id: "langgenius/echo",
            install_type: "local",
            new_declaration: &json!({"tool": {"identity": {"name": "echo2"}}}),
            source: "github",
            meta: &json!({}),
        })
        .await
        .unwrap();
    assert_eq!(up.deleted_plugin.unwrap().plugin_unique_identifier, old);
    assert!(store.plugin(&old).await.unwrap().is_none());
    assert_eq!(store.plugin(&new).await.unwrap().unwrap().refers, 1);
    let moved = store
        .installation(T1, &inst.installation.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.plugin_unique_identifier, new);
    assert_eq!(moved.source, "github");
    let tools = store
        .list_providers(T1, ProviderCategory::Tool, 1, 10)
        .await
        .unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].provider, "echo2");
    assert!(store
        .list_providers(T1, ProviderCategory::Model, 1, 10)
        .await
        .unwrap()
        .is_empty());
    let missing = store
        .upgrade_plugin(&UpgradeInstallation {
            tenant_id: T2,
            original_identifier: &old,
            new_identifier: &new,
            plugin_id: "langgenius/echo",
            install_type: "local",
            new_declaration: &d,
            source: "x",
            meta: &json!({}),
        })
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn concurrent_installs_of_one_plugin_make_one_installation() {
    let (store, _dir) = fresh_store().await;
    let id = ident("echo", "0.0.1");
    let d = decl("echo");
    let runs = (0..8).map(|_| {
        let store = store.clone();
        let id = id.clone();
        let d = d.clone();
        tokio::spawn(async move { install(&store, T1, &id, &d).await })
    });
    let results = futures::future::join_all(runs).await;
    let ok = results
        .iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(ok, 1);
    for r in results {
        if let Err(e) = r.unwrap() {
            assert!(matches!(e, StoreError::AlreadyInstalled), "{e}");
        }
    }
    assert_eq!(store.plugin(&id).await.unwrap().unwrap().refers, 1);
}

#[tokio::test]
async fn task_updates_follow_the_reference_rules() {
    let (store, _dir) = fresh_store().await;
    let status = |id: &str| TaskPluginStatus {
        plugin_unique_identifier: id.to_owned(),
        labels: json!({"en_US": "x"}),
        icon: String::new(),
        icon_dark: String::new(),
        plugin_id: "langgenius/echo".into(),
        status: TaskStatus::Pending,
        message: String::new(),
        source: "package".into(),
    };
    let (a, b) = (ident("a", "0.0.1"), ident("b", "0.0.1"));
    let task = store
        .create_task(T1, TaskStatus::Running, vec![status(&a), status(&b)])
        .await
        .unwrap();
    let t = store
        .update_task_plugin(&task.id, &a, Some(TaskStatus::Success), "installed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((t.status, t.completed_plugins), (TaskStatus::Running, 1));
    // A repeated success does not count twice.
    let t = store
        .update_task_plugin(&task.id, &a, Some(TaskStatus::Success), "installed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.completed_plugins, 1);
    let t = store
        .update_task_plugin(&task.id, &b, None, "building")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.plugins[1].message, "building");
    assert_eq!(t.plugins[1].status, TaskStatus::Pending);
    let t = store
        .update_task_plugin(&task.id, &b, Some(TaskStatus::Success), "installed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((t.status, t.completed_plugins), (TaskStatus::Success, 2));
    assert!(store
        .update_task_plugin("nope", &b, None, "")
        .await
        .unwrap()
        .is_none());

    let other = store
        .create_task(T1, TaskStatus::Running, vec![status(&a)])
        .await
        .unwrap();
    assert_eq!(store.fail_unfinished_tasks("stopped").await.unwrap(), 1);
    let failed = store.task(T1, &other.id).await.unwrap().unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.plugins[0].message, "stopped");
    assert!(store.task(T2, &other.id).await.unwrap().is_none());
    assert_eq!(store.list_tasks(T1, 1, 10).await.unwrap().len(), 2);
    store.delete_all_tasks(T1).await.unwrap();
    assert!(store.list_tasks(T1, 1, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn plugin_storage_is_per_tenant_and_plugin() {
    let (store, _dir) = fresh_store().await;
    assert_eq!(store.kv_get(T1, "p", "k").await.unwrap(), None);
    store.kv_set(T1, "p", "k", b"\x00\x01v1").await.unwrap();
    store.kv_set(T1, "p", "k", b"v2").await.unwrap();
    store.kv_set(T2, "p", "k", b"other").await.unwrap();
    assert_eq!(
        store.kv_get(T1, "p", "k").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(
        store.kv_get(T2, "p", "k").await.unwrap().as_deref(),
        Some(&b"other"[..])
    );
    assert!(store.kv_delete(T1, "p", "k").await.unwrap());
    assert!(!store.kv_delete(T1, "p", "k").await.unwrap());
}

#[tokio::test]
async fn readmes_are_cached_per_language() {
    let (store, _dir) = fresh_store().await;
    let id = ident("echo", "0.0.1");
    let mut m = std::collections::BTreeMap::new();
    m.insert("en_US".to_owned(), "# hi".to_owned());
    m.insert("ja_JP".to_owned(), "# こんにちは".to_owned());
    store.save_readmes(&id, &m).await.unwrap();
    store.save_readmes(&id, &m).await.unwrap();
    assert_eq!(store.readmes(&id).await.unwrap(), m);
}

#[tokio::test]
async fn installed_identifier_follows_every_install_upgrade_and_uninstall() {
    let (store, _dir) = fresh_store().await;
    // Dispatch reads through a clone of the state's store: both share the cache.
    let reader = store.clone();
    let old = ident("echo", "0.0.1");
    let new = ident("echo", "0.0.2");
    let d = decl("echo");
    assert_eq!(
        reader
            .installed_identifier(T1, "langgenius/echo")
            .await
            .unwrap(),
        None
    );
    let inst = install(&store, T1, &old, &d).await.unwrap();
    for _ in 0..2 {
        // The second answer comes from memory; both must be the row's.
        assert_eq!(
            reader
                .installed_identifier(T1, "langgenius/echo")
                .await
                .unwrap()
                .as_deref(),
            Some(old.as_str())
        );
    }
    assert_eq!(
        reader
            .installed_identifier(T2, "langgenius/echo")
            .await
            .unwrap(),
        None
    );
    store
        .upgrade_plugin(&UpgradeInstallation {
            tenant_id: T1,
            original_identifier: &old,
            new_identifier: &new,
            plugin_id: "langgenius/echo",
            install_type: "local",
            new_declaration: &d,
            source: "package",
            meta: &json!({}),
        })
        .await
        .unwrap();
    assert_eq!(
        reader
            .installed_identifier(T1, "langgenius/echo")
            .await
            .unwrap()
            .as_deref(),
        Some(new.as_str())
    );
    store
        .uninstall_plugin(T1, &inst.installation.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reader
            .installed_identifier(T1, "langgenius/echo")
            .await
            .unwrap(),
        None
    );
}
