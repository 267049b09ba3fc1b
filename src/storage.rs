//! Blob storage for packages, assets and (later) Lambda artifacts. One trait,
//! with the local filesystem as the embedded default; S3 arrives with the
//! serverless runtime.

use std::io;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

/// A flat key → bytes store. Keys are `/`-separated relative paths.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Writes `data` under `key`, replacing any previous value. A reader never
    /// sees a half-written value.
    async fn put(&self, key: &str, data: Bytes) -> io::Result<()>;
    /// Reads the value under `key`; `ErrorKind::NotFound` when absent.
    async fn get(&self, key: &str) -> io::Result<Bytes>;
    /// Whether `key` holds a value.
    async fn exists(&self, key: &str) -> io::Result<bool>;
    /// Removes `key`; absent keys are not an error.
    async fn delete(&self, key: &str) -> io::Result<()>;
}

/// Storage in a folder of the local filesystem.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let rel = Path::new(key);
        let safe = !key.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid storage key {key:?}"),
            ));
        }
        Ok(self.root.join(rel))
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn put(&self, key: &str, data: Bytes) -> io::Result<()> {
        let path = self.path(key)?;
        let dir = path.parent().expect("keys have a parent").to_owned();
        tokio::fs::create_dir_all(&dir).await?;
        // Write to a temporary file in the same folder, then rename: readers
        // see the old value or the new one, never a torn write.
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            tmp.write_all(&data)?;
            tmp.as_file().sync_data()?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get(&self, key: &str) -> io::Result<Bytes> {
        tokio::fs::read(self.path(key)?).await.map(Bytes::from)
    }

    async fn exists(&self, key: &str) -> io::Result<bool> {
        tokio::fs::try_exists(self.path(key)?).await
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        s.put("a/b/c.bin", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert!(s.exists("a/b/c.bin").await.unwrap());
        assert_eq!(
            s.get("a/b/c.bin").await.unwrap(),
            Bytes::from_static(b"hello")
        );
        s.delete("a/b/c.bin").await.unwrap();
        assert!(!s.exists("a/b/c.bin").await.unwrap());
        assert_eq!(
            s.get("a/b/c.bin").await.unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        s.delete("a/b/c.bin").await.unwrap();
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        for key in ["../x", "/etc/passwd", "a/../../x", ""] {
            assert_eq!(
                s.get(key).await.unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{key}"
            );
        }
    }
}
