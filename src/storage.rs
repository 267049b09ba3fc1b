//! Blob storage for packages, assets and Lambda artifacts. One trait, with
//! the local filesystem as the embedded default and an S3 bucket (or any
//! S3-compatible server) at scale.

use std::io;
use std::path::{Component, Path, PathBuf};

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use crate::settings::{Settings, StorageType};

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
        // Write to a temporary file in the same folder, then rename: readers
        // see the old value or the new one, never a torn write. Folders are
        // 0700 and files 0600 (the temp file's mode): packages are the
        // daemon's, not a plugin's to read.
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
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

/// The AWS SDK configuration of the settings: AWS_REGION and
/// AWS_ENDPOINT_URL when given, credentials from the AWS default chain.
/// Built once and shared by the S3 and Lambda clients.
pub async fn aws_sdk_config(settings: &Settings) -> aws_config::SdkConfig {
    aws_sdk_config_for(
        settings.aws_region.as_deref(),
        settings.aws_endpoint_url.as_deref(),
    )
    .await
}

/// The AWS SDK configuration for a region and endpoint (either may be left
/// to the AWS default chain).
pub async fn aws_sdk_config_for(
    region: Option<&str>,
    endpoint: Option<&str>,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// An S3 client for the settings (S3_USE_PATH_STYLE applied).
pub fn s3_client(sdk: &aws_config::SdkConfig, settings: &Settings) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(settings.s3_use_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The storage PLUGIN_STORAGE_TYPE selects.
pub async fn from_settings(settings: &Settings) -> io::Result<Arc<dyn Storage>> {
    match settings.plugin_storage_type {
        StorageType::Local => {
            let root = &settings.plugin_storage_local_root;
            std::fs::create_dir_all(root)?;
            Ok(Arc::new(LocalStorage::new(root)))
        }
        StorageType::AwsS3 => {
            let bucket = settings.plugin_storage_oss_bucket.clone().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "PLUGIN_STORAGE_OSS_BUCKET is required when PLUGIN_STORAGE_TYPE=aws_s3",
                )
            })?;
            let sdk = aws_sdk_config(settings).await;
            Ok(Arc::new(S3Storage::new(
                s3_client(&sdk, settings),
                bucket,
                settings.plugin_storage_s3_prefix.clone(),
            )))
        }
    }
}

/// Storage in an S3 bucket, every key under a prefix. S3 writes are atomic
/// per object, so readers never see a torn value.
#[derive(Debug, Clone)]
pub struct S3Storage {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3Storage {
    /// Storage in `bucket`, keys under `prefix` (e.g. `plugind/`, or empty).
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    /// The client, for callers that upload artifacts themselves.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full object key of a storage key.
    pub fn object_key(&self, key: &str) -> io::Result<String> {
        if key.is_empty() || key.starts_with('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid storage key {key:?}"),
            ));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    fn error<E, R>(&self, op: &str, key: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> io::Error
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        io::Error::other(format!(
            "S3 {op} of s3://{}/{key} failed: {}",
            self.bucket,
            DisplayErrorContext(&e)
        ))
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn put(&self, key: &str, data: Bytes) -> io::Result<()> {
        let object = self.object_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error("PutObject", &object, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> io::Result<Bytes> {
        let object = self.object_key(key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no object s3://{}/{object}", self.bucket),
                ))
            }
            Err(e) => return Err(self.error("GetObject", &object, e)),
        };
        let body = out.body.collect().await.map_err(|e| {
            io::Error::other(format!("reading s3://{}/{object} failed: {e}", self.bucket))
        })?;
        Ok(body.into_bytes())
    }

    async fn exists(&self, key: &str) -> io::Result<bool> {
        let object = self.object_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(e) => Err(self.error("HeadObject", &object, e)),
        }
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        let object = self.object_key(key)?;
        // S3 answers success for absent keys, as the trait asks.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", &object, e))?;
        Ok(())
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
