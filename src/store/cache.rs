//! Which package serves a tenant's plugin, kept in memory for the dispatch
//! path: every dispatch call resolves `(tenant, plugin_id)` to a unique
//! identifier, and asking the database each time costs more than the rest of
//! the daemon's share of a call.
//!
//! Every write to installations (install, uninstall, upgrade) moves a
//! generation counter when it finishes, committed or not; an entry is used
//! only while the counter has not moved since the read that filled it began,
//! so a read racing a write never outlives it. Writes made by another
//! replica over a shared PostgreSQL are not seen here: entries also expire
//! after [`TTL`], which bounds how long such a change goes unnoticed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an entry may be used without asking the database again.
pub const TTL: Duration = Duration::from_secs(1);

/// Entries above this many tenants are dropped wholesale rather than
/// evicted one by one: the table holds only real installations, so
/// reaching it is rare and refilling is cheap.
const MAX_TENANTS: usize = 10_000;

struct Entry {
    identifier: Arc<str>,
    generation: u64,
    filled: Instant,
}

/// Installed identifiers by tenant and plugin id.
#[derive(Default)]
pub(crate) struct InstallationCache {
    generation: AtomicU64,
    // A std mutex: held for map operations only, never across `.await`.
    entries: Mutex<HashMap<String, HashMap<String, Entry>>>,
}

impl std::fmt::Debug for InstallationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationCache")
            .field("generation", &self.generation())
            .finish()
    }
}

/// Moves the generation when dropped, i.e. when a write finishes by any path.
pub(crate) struct Change<'a>(&'a InstallationCache);

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl InstallationCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Entry>>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the start of a write to installations; the cache is invalid
    /// once the returned guard drops.
    pub(crate) fn change(&self) -> Change<'_> {
        Change(self)
    }

    /// The generation to pass to [`InstallationCache::fill`] for a read
    /// starting now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The cached identifier, if still valid.
    pub(crate) fn get(&self, tenant_id: &str, plugin_id: &str) -> Option<Arc<str>> {
        let current = self.generation();
        let entries = self.lock();
        let entry = entries.get(tenant_id)?.get(plugin_id)?;
        (entry.generation == current && entry.filled.elapsed() < TTL)
            .then(|| Arc::clone(&entry.identifier))
    }

    /// Remembers what a read begun at `generation` found.
    pub(crate) fn fill(&self, tenant_id: &str, plugin_id: &str, identifier: &str, generation: u64) {
        let mut entries = self.lock();
        if entries.len() >= MAX_TENANTS && !entries.contains_key(tenant_id) {
            entries.clear();
        }
        entries.entry(tenant_id.to_owned()).or_default().insert(
            plugin_id.to_owned(),
            Entry {
                identifier: identifier.into(),
                generation,
                filled: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_serves_until_a_write_finishes() {
        let cache = InstallationCache::default();
        assert!(cache.get("t", "a/b").is_none());
        let g = cache.generation();
        cache.fill("t", "a/b", "a/b:1@x", g);
        assert_eq!(cache.get("t", "a/b").as_deref(), Some("a/b:1@x"));
        assert!(cache.get("t2", "a/b").is_none());
        {
            let _write = cache.change();
            // Still valid while the write runs: it has not committed.
            assert!(cache.get("t", "a/b").is_some());
        }
        assert!(cache.get("t", "a/b").is_none());
    }

    #[test]
    fn a_read_racing_a_write_is_not_kept() {
        let cache = InstallationCache::default();
        let g = cache.generation();
        // The write finishes between the read's start and its fill.
        drop(cache.change());
        cache.fill("t", "a/b", "a/b:1@old", g);
        assert!(cache.get("t", "a/b").is_none());
    }
}
