//! The registry of running plugin runtimes, keyed by plugin unique
//! identifier. Dispatch, endpoints and MCP look runtimes up here and never ask
//! which host (local, debug, serverless) they got.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::PluginRuntime;

/// Running runtimes by plugin unique identifier. Cheap to share; the lock is
/// never held across an `.await`.
#[derive(Default)]
pub struct Registry {
    runtimes: RwLock<HashMap<String, Arc<dyn PluginRuntime>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the runtime for `identifier`; returns the one it replaced.
    pub fn insert(
        &self,
        identifier: impl Into<String>,
        runtime: Arc<dyn PluginRuntime>,
    ) -> Option<Arc<dyn PluginRuntime>> {
        self.runtimes
            .write()
            .expect("registry lock")
            .insert(identifier.into(), runtime)
    }

    /// The runtime for `identifier`, if one runs.
    pub fn get(&self, identifier: &str) -> Option<Arc<dyn PluginRuntime>> {
        self.runtimes
            .read()
            .expect("registry lock")
            .get(identifier)
            .cloned()
    }

    /// Removes and returns the runtime for `identifier`. The caller shuts it down.
    pub fn remove(&self, identifier: &str) -> Option<Arc<dyn PluginRuntime>> {
        self.runtimes
            .write()
            .expect("registry lock")
            .remove(identifier)
    }

    /// Every registered runtime with its identifier.
    pub fn list(&self) -> Vec<(String, Arc<dyn PluginRuntime>)> {
        self.runtimes
            .read()
            .expect("registry lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Shuts every runtime down (daemon shutdown), concurrently.
    pub async fn shutdown_all(&self) {
        let all: Vec<_> = {
            let mut map = self.runtimes.write().expect("registry lock");
            map.drain().map(|(_, v)| v).collect()
        };
        futures::future::join_all(all.iter().map(|r| r.shutdown())).await;
    }
}
