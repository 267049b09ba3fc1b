//! Package throughput: checksum MB/s over a generated 50 MiB package, and
//! decode latency for that package and for a small realistic one. Prints
//! figures; asserts nothing about time.

use std::io::{Cursor, Write};
use std::time::{Duration, Instant};

use plugind::package::{checksum, decode, read_archive, DecodeLimits};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

mod support;

use support::{noise, MANIFEST, MIB};

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
