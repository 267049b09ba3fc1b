//! Plugin storage served by the daemon itself: a key/value space per tenant
//! and plugin, with values sent hex-encoded and a byte quota
//! (reference: `internal/core/persistence/persistence.go` and the storage
//! branch of `backwards_invocation/task.go`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{json, Value};

/// Quota applied when the manifest declares no size (and the ceiling for any
/// declared size): the reference's `PERSISTENCE_STORAGE_MAX_SIZE`, 100 MiB.
pub const DEFAULT_MAX_STORAGE_SIZE: u64 = 100 * 1024 * 1024;
/// Keys must be shorter than this (reference: `Persistence.Save`).
pub const MAX_KEY_LEN: usize = 256;

/// Failures of a [`KvStore`].
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Writing would take the plugin's total past its quota.
    #[error("allocated size is greater than max storage size")]
    QuotaExceeded,
    /// The backing store failed.
    #[error("{0}")]
    Backend(String),
}

/// The key/value space plugins use through `storage` invocations. The
/// daemon's store implements it over its database.
#[async_trait]
pub trait KvStore: Send + Sync {
    /// The value of `key`, or `None` when it was never set.
    async fn get(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError>;

    /// Stores `value` under `key`, replacing any old value. Must refuse with
    /// [`KvError::QuotaExceeded`], storing nothing, when the sum of the sizes
    /// of the plugin's values would exceed `max_total` bytes afterwards; the
    /// check and the write are one atomic step.
    async fn set(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
        value: &[u8],
        max_total: u64,
    ) -> Result<(), KvError>;

    /// Removes `key`; whether it existed.
    async fn del(&self, tenant_id: &str, plugin_id: &str, key: &str) -> Result<bool, KvError>;

    /// Whether `key` is set.
    async fn exist(&self, tenant_id: &str, plugin_id: &str, key: &str) -> Result<bool, KvError>;

    /// Bytes the plugin's values take in total.
    async fn usage(&self, tenant_id: &str, plugin_id: &str) -> Result<u64, KvError>;
}

type Space = HashMap<String, Vec<u8>>;

/// A [`KvStore`] in memory, for tests and single-process runs without a
/// database.
#[derive(Debug, Default, Clone)]
pub struct MemoryKvStore {
    spaces: Arc<Mutex<HashMap<(String, String), Space>>>,
}

impl MemoryKvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_space<R>(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        f: impl FnOnce(&mut Space) -> R,
    ) -> R {
        // A poisoned lock only means another test thread panicked; the map
        // itself is still consistent, as every update is a single insert/remove.
        let mut spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        let space = spaces
            .entry((tenant_id.to_owned(), plugin_id.to_owned()))
            .or_default();
        f(space)
    }
}

#[async_trait]
impl KvStore for MemoryKvStore {
    async fn get(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.with_space(tenant_id, plugin_id, |s| s.get(key).cloned()))
    }

    async fn set(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        key: &str,
        value: &[u8],
        max_total: u64,
    ) -> Result<(), KvError> {
        self.with_space(tenant_id, plugin_id, |s| {
            let total: u64 = s.values().map(|v| v.len() as u64).sum();
            let old = s.get(key).map_or(0, |v| v.len() as u64);
            if total - old + value.len() as u64 > max_total {
                return Err(KvError::QuotaExceeded);
            }
            s.insert(key.to_owned(), value.to_vec());
            Ok(())
        })
    }

    async fn del(&self, tenant_id: &str, plugin_id: &str, key: &str) -> Result<bool, KvError> {
        Ok(self.with_space(tenant_id, plugin_id, |s| s.remove(key).is_some()))
    }

    async fn exist(&self, tenant_id: &str, plugin_id: &str, key: &str) -> Result<bool, KvError> {
        Ok(self.with_space(tenant_id, plugin_id, |s| s.contains_key(key)))
    }

    async fn usage(&self, tenant_id: &str, plugin_id: &str) -> Result<u64, KvError> {
        Ok(self.with_space(tenant_id, plugin_id, |s| {
            s.values().map(|v| v.len() as u64).sum()
        }))
    }
}

/// A [`KvStore`] with the daemon-wide size ceiling: what `storage`
/// invocations are served from.
#[derive(Clone)]
pub struct PluginStorage {
    store: Arc<dyn KvStore>,
    max_storage_size: u64,
}

impl std::fmt::Debug for PluginStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginStorage")
            .field("max_storage_size", &self.max_storage_size)
            .finish_non_exhaustive()
    }
}

/// One `storage` invocation, as the plugin sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageOp {
    Get { key: String },
    Set { key: String, value_hex: String },
    Del { key: String },
    Exist { key: String },
}

impl StorageOp {
    /// Reads `{"opt","key","value"}`; the error says which field is wrong.
    pub fn from_request(request: &serde_json::Map<String, Value>) -> Result<Self, String> {
        let field = |name: &str| request.get(name).and_then(Value::as_str).unwrap_or("");
        let key = field("key").to_owned();
        if key.is_empty() {
            return Err("field `key` is required".into());
        }
        match field("opt") {
            "get" => Ok(Self::Get { key }),
            "set" => Ok(Self::Set {
                key,
                value_hex: field("value").to_owned(),
            }),
            "del" => Ok(Self::Del { key }),
            "exist" => Ok(Self::Exist { key }),
            "" => Err("field `opt` is required".into()),
            other => Err(format!(
                "field `opt` must be one of get, set, del, exist, got {other:?}"
            )),
        }
    }
}

impl PluginStorage {
    /// Storage over `store`, no plugin ever holding more than
    /// `max_storage_size` bytes whatever its manifest says.
    pub fn new(store: Arc<dyn KvStore>, max_storage_size: u64) -> Self {
        Self {
            store,
            max_storage_size,
        }
    }

    /// Runs one operation and returns the `data` of the `struct` response the
    /// plugin gets, or the error text of its `error` event. `declared_size`
    /// is the manifest's `permission.storage.size`.
    pub async fn execute(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        declared_size: Option<u64>,
        op: StorageOp,
    ) -> Result<Value, String> {
        match op {
            StorageOp::Get { key } => {
                check_key(&key)?;
                match self.store.get(tenant_id, plugin_id, &key).await {
                    Ok(Some(value)) => Ok(json!({ "data": hex::encode(value) })),
                    Ok(None) | Err(_) => Err(
                        "load data failed, please check if the key is correct or you have not set it"
                            .into(),
                    ),
                }
            }
            StorageOp::Set { key, value_hex } => {
                let value =
                    hex::decode(&value_hex).map_err(|e| format!("decode data failed: {e}"))?;
                self.save(tenant_id, plugin_id, declared_size, &key, &value)
                    .await
                    .map_err(|e| format!("save data failed: {e}"))?;
                Ok(json!({ "data": "ok" }))
            }
            StorageOp::Del { key } => {
                check_key(&key)?;
                // The reference reports a cache hit count here; the number of
                // keys removed is what the name promises.
                let deleted = self
                    .store
                    .del(tenant_id, plugin_id, &key)
                    .await
                    .map_err(|e| format!("delete data failed: {e}"))?;
                Ok(json!({ "data": "ok", "deleted_num": i64::from(deleted) }))
            }
            StorageOp::Exist { key } => {
                check_key(&key)?;
                let exists = self
                    .store
                    .exist(tenant_id, plugin_id, &key)
                    .await
                    .map_err(|e| format!("exist data failed: {e}"))?;
                Ok(json!({ "data": exists, "exist_num": i64::from(exists) }))
            }
        }
    }

    async fn save(
        &self,
        tenant_id: &str,
        plugin_id: &str,
        declared_size: Option<u64>,
        key: &str,
        value: &[u8],
    ) -> Result<(), String> {
        check_key(key)?;
        if key.len() > MAX_KEY_LEN {
            return Err(format!(
                "key length must be less than {MAX_KEY_LEN} characters"
            ));
        }
        // The reference checks both the manifest's size and the daemon-wide
        // ceiling. A declared size of 0 (absent) means "no own limit": the
        // manifest schema requires at least 1024 when it is set.
        let limit = match declared_size {
            Some(size) if size > 0 => size.min(self.max_storage_size),
            _ => self.max_storage_size,
        };
        // Unlike the reference, which writes first and checks the quota after,
        // a refused write leaves the old value in place.
        self.store
            .set(tenant_id, plugin_id, key, value, limit)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Refuses keys that would escape the plugin's space when used as a path
/// (reference: `Persistence.checkPathTraversal`, after `path.Clean`).
fn check_key(key: &str) -> Result<(), String> {
    let refused = || Err("invalid key: path traversal attempt detected".to_owned());
    if key.contains('\\') {
        return refused();
    }
    if clean_path(key).contains("..") {
        return refused();
    }
    Ok(())
}

/// Lexical path cleaning as Go's `path.Clean` does it.
fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(max: u64) -> PluginStorage {
        PluginStorage::new(Arc::new(MemoryKvStore::new()), max)
    }

    #[test]
    fn clean_path_matches_go() {
        assert_eq!(clean_path("a//b/./c/.."), "a/b");
        assert_eq!(clean_path("../x"), "../x");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path("a/../../b"), "../b");
        assert_eq!(clean_path(""), ".");
    }

    #[test]
    fn traversal_keys_are_refused() {
        assert!(check_key("../etc/passwd").is_err());
        assert!(check_key("a\\b").is_err());
        assert!(check_key("a/../b").is_ok());
        assert!(check_key("plain-key").is_ok());
    }

    #[tokio::test]
    async fn set_then_get_round_trips_hex() {
        let s = storage(1024);
        let set = StorageOp::Set {
            key: "k".into(),
            value_hex: hex::encode(b"hello"),
        };
        assert_eq!(
            s.execute("t", "a/p", None, set).await.unwrap(),
            json!({"data": "ok"})
        );
        let got = s
            .execute("t", "a/p", None, StorageOp::Get { key: "k".into() })
            .await
            .unwrap();
        assert_eq!(got, json!({"data": "68656c6c6f"}));
        // Another plugin of the same tenant does not see it.
        assert!(s
            .execute("t", "a/q", None, StorageOp::Get { key: "k".into() })
            .await
            .is_err());
    }

    #[tokio::test]
    async fn refused_write_keeps_the_old_value() {
        let s = storage(1024);
        let put = |v: &[u8]| StorageOp::Set {
            key: "k".into(),
            value_hex: hex::encode(v),
        };
        s.execute("t", "p", Some(4), put(b"abcd")).await.unwrap();
        let err = s
            .execute("t", "p", Some(4), put(b"abcde"))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "save data failed: allocated size is greater than max storage size"
        );
        let got = s
            .execute("t", "p", Some(4), StorageOp::Get { key: "k".into() })
            .await
            .unwrap();
        assert_eq!(got["data"], hex::encode(b"abcd"));
    }

    #[tokio::test]
    async fn daemon_ceiling_caps_a_larger_declared_size() {
        let s = storage(3);
        let op = StorageOp::Set {
            key: "k".into(),
            value_hex: hex::encode(b"four"),
        };
        assert!(s.execute("t", "p", Some(1 << 20), op).await.is_err());
    }

    #[test]
    fn storage_op_requires_opt_and_key() {
        let req = |v: Value| v.as_object().unwrap().clone();
        assert!(StorageOp::from_request(&req(json!({"opt": "get"}))).is_err());
        assert!(StorageOp::from_request(&req(json!({"key": "k", "opt": "drop"}))).is_err());
        assert_eq!(
            StorageOp::from_request(&req(json!({"key": "k", "opt": "exist"}))).unwrap(),
            StorageOp::Exist { key: "k".into() }
        );
    }
}
