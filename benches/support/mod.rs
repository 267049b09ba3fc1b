//! What the package benches share: a generated plugin manifest and
//! incompressible payload bytes.

/// One mebibyte.
pub const MIB: usize = 1024 * 1024;

/// The manifest of the generated bench plugin.
pub const MANIFEST: &str = r#"version: 0.0.1
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
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
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
