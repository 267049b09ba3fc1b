//! Package throughput: checksum MB/s over a generated 50 MiB package, and
//! decode latency for that package and for a small realistic one. Prints
//! figures; asserts nothing about time.

use std::io::{Cursor, Write};
use std::time::{Duration, Instant};

use plugind::package::{checksum, decode, read_archive, DecodeLimits};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

const MIB: usize = 1024 * 1024;

const MANIFEST: &str = r#"version: 0.0.1
type: plugin
author: bench
name: bench
label: {en_US: Bench}
description: {en_US: Bench}
icon: icon.svg
resource: {memory: 1048576}
plugins: {tools: [provider/bench.yaml]}
meta:
  version: 0.0.1
  arch: [amd64]
  runner: {language: python, version: "3.12", entrypoint: main}
created_at: 2024-07-12T08:03:44Z
"#;

/// Pseudo-random bytes (xorshift), so deflate cannot shrink them away.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn package(payload_files: usize, file_size: usize) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let mut add = |name: &str, content: &[u8]| {
        w.start_file(name, stored).unwrap();
        w.write_all(content).unwrap();
    };
    add("manifest.yaml", MANIFEST.as_bytes());
    add(
        "provider/bench.yaml",
        b"identity: {author: bench, name: bench, label: {en_US: B}, icon: icon.svg}\ntools: [tools/t.yaml]\n",
    );
    add(
        "tools/t.yaml",
        b"identity: {name: t, author: bench, label: {en_US: T}}\ndescription: {human: {en_US: T}, llm: T}\n",
    );
    add("_assets/icon.svg", b"<svg/>");
    for i in 0..payload_files {
        add(
            &format!("data/blob_{i:03}.bin"),
            &noise(file_size, i as u64 + 1),
        );
    }
    w.finish().unwrap().into_inner()
}

fn time<T>(runs: u32, mut f: impl FnMut() -> T) -> Duration {
    // One warm-up run, then the best of `runs`.
    std::hint::black_box(f());
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let big = package(50, MIB);
    let limits = DecodeLimits::for_package_size(64 * MIB as u64);
    let archive = read_archive(&big, &limits).unwrap();
    let content_bytes: usize = archive.entries.iter().map(|(_, c)| c.len()).sum();

    let t = time(5, || {
        checksum(
            archive
                .entries
                .iter()
                .map(|(n, c)| (n.as_str(), c.as_slice())),
        )
    });
    let mbps = content_bytes as f64 / MIB as f64 / t.as_secs_f64();
    println!(
        "checksum: {:.1} MiB in {:.2} ms = {:.0} MiB/s ({} entries)",
        content_bytes as f64 / MIB as f64,
        t.as_secs_f64() * 1e3,
        mbps,
        archive.entries.len()
    );

    let t = time(3, || decode(&big, &limits).unwrap());
    println!("decode (50 MiB, stored): {:.2} ms", t.as_secs_f64() * 1e3);

    let small = package(5, 20 * 1024);
    let t = time(50, || decode(&small, &DecodeLimits::default()).unwrap());
    println!(
        "decode ({} KiB package): {:.3} ms",
        small.len() / 1024,
        t.as_secs_f64() * 1e3
    );
}
