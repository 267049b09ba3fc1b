//! Build locks: two nodes never build the same install at once.
//!
//! A Lambda artifact and function are shared by every node, so their lock
//! is one per identifier. A local plugin's folder and environment are
//! shared only by nodes that share a working path: the lock names the
//! working path by the id written in it ([`working_path_id`]), so nodes with
//! their own paths build side by side and nodes sharing one take turns.
//! A lock is renewed with its node's heartbeat and expires with it.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Cluster;
use crate::app_state::AppState;
use crate::install::{InstallJob, InstallStep, InstallStepError, Progress};
use crate::store::Store;

/// How often a lock held elsewhere is asked for again.
const RETRY: Duration = Duration::from_millis(500);

/// The file naming a working path, shared by every node using it.
const WORKING_PATH_ID_FILE: &str = ".plugind-working-path-id";

/// The id of the working path at `dir`, created on first use.
pub fn working_path_id(dir: &Path) -> std::io::Result<String> {
    use std::io::Write;
    let file = dir.join(WORKING_PATH_ID_FILE);
    if let Ok(id) = std::fs::read_to_string(&file) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_owned());
        }
    }
    std::fs::create_dir_all(dir)?;
    let id = uuid::Uuid::new_v4().to_string();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
    {
        Ok(mut f) => {
            f.write_all(id.as_bytes())?;
            Ok(id)
        }
        // Another node sharing the path wrote it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&file)?.trim().to_owned())
        }
        Err(e) => Err(e),
    }
}

/// The lock key of building `identifier` on this node.
pub fn local_build_key(state: &AppState, identifier: &str) -> String {
    state.cluster.build_key(identifier)
}

/// Releases a lock when dropped, also when the work was cancelled.
struct Held {
    store: Store,
    key: String,
    holder: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (store, key, holder) = (
            self.store.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.holder),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.unlock_build(&key, &holder).await {
                    tracing::warn!(error = %e, key, "cannot release a build lock");
                }
            });
        }
    }
}

/// One attempt at the lock `key`.
async fn try_acquire(store: &Store, cluster: &Cluster, key: &str) -> Option<Held> {
    let holder = uuid::Uuid::new_v4().to_string();
    match store
        .try_lock_build(
            key,
            &holder,
            cluster.node_id(),
            cluster.options().node_timeout,
        )
        .await
    {
        Ok(true) => Some(Held {
            store: store.clone(),
            key: key.to_owned(),
            holder,
        }),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(error = %e, key, "cannot take a build lock; retrying");
            None
        }
    }
}

/// Takes the lock `key`, waiting while another holder has it.
async fn acquire(store: &Store, cluster: &Cluster, key: &str) -> Held {
    let mut told = false;
    loop {
        if let Some(held) = try_acquire(store, cluster, key).await {
            return held;
        }
        if !told {
            tracing::info!(key, "another node is building this; waiting");
            told = true;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Runs `work` holding the build lock `key`.
pub async fn with_build_lock<F, Fut, T>(state: &AppState, key: &str, work: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let _held = acquire(&state.store, &state.cluster, key).await;
    work().await
}

/// An install step whose installs run under the build lock of their
/// identifier.
pub struct LockedStep {
    inner: Arc<dyn InstallStep>,
    store: Store,
    cluster: Arc<Cluster>,
}

impl LockedStep {
    pub fn new(inner: Arc<dyn InstallStep>, store: Store, cluster: Arc<Cluster>) -> Self {
        Self {
            inner,
            store,
            cluster,
        }
    }
}

#[async_trait]
impl InstallStep for LockedStep {
    async fn ensure_runtime(
        &self,
        job: &InstallJob,
        progress: &Progress,
    ) -> Result<(), InstallStepError> {
        let key = self.cluster.build_key(&job.identifier);
        let held = match try_acquire(&self.store, &self.cluster, &key).await {
            Some(held) => held,
            None => {
                progress
                    .info("waiting for another replica building this plugin")
                    .await;
                acquire(&self.store, &self.cluster, &key).await
            }
        };
        let result = self.inner.ensure_runtime(job, progress).await;
        drop(held);
        result
    }

    async fn remove_runtime(&self, identifier: &str) -> Result<(), InstallStepError> {
        self.inner.remove_runtime(identifier).await
    }
}
