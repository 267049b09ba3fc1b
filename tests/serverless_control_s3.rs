//! S3Storage against a real S3 API (moto server).

mod serverless_support;

use std::io::ErrorKind;

use bytes::Bytes;
use plugind::storage::{S3Storage, Storage};
use serverless_support::{Moto, BUCKET};

#[tokio::test]
async fn s3_storage_puts_gets_checks_and_deletes() {
    let moto = Moto::start().await;
    let storage = S3Storage::new(moto.s3(), BUCKET, "plugind/");
    assert!(!storage.exists("plugin_packages/a").await.unwrap());
    assert_eq!(
        storage.get("plugin_packages/a").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    storage
        .put("plugin_packages/a", Bytes::from_static(b"first"))
        .await
        .unwrap();
    storage
        .put("plugin_packages/a", Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert!(storage.exists("plugin_packages/a").await.unwrap());
    assert_eq!(
        storage.get("plugin_packages/a").await.unwrap(),
        Bytes::from_static(b"second")
    );
    // Keys live under the prefix in the bucket.
    assert_eq!(moto.keys("").await, vec!["plugind/plugin_packages/a"]);
    storage.delete("plugin_packages/a").await.unwrap();
    assert!(!storage.exists("plugin_packages/a").await.unwrap());
    // Deleting an absent key is not an error.
    storage.delete("plugin_packages/a").await.unwrap();
    assert!(moto.keys("").await.is_empty());
}

#[tokio::test]
async fn s3_storage_round_trips_large_binary_values() {
    let moto = Moto::start().await;
    let storage = S3Storage::new(moto.s3(), BUCKET, "");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    storage
        .put("assets/big.bin", Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(
        storage.get("assets/big.bin").await.unwrap(),
        Bytes::from(data)
    );
    assert_eq!(
        storage.get("").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}
