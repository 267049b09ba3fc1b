//! The package checksum of PROTOCOL.md §6 (reference
//! `pkg/plugin_packager/decoder/checksum.go`): entries sorted by path, each
//! contributing sha256(path) ‖ sha256(content), and the sha256 of that
//! concatenation in lowercase hex.

use sha2::{Digest, Sha256};

/// Below this many content bytes a second thread costs more than it saves.
const PARALLEL_THRESHOLD: usize = 4 * 1024 * 1024;

/// The checksum of a set of `(path, content)` entries, in any order.
pub fn checksum<'a, I>(entries: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let mut sorted: Vec<(&str, &[u8])> = entries.into_iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let digests = content_digests(&sorted);
    let mut outer = Sha256::new();
    for ((path, _), digest) in sorted.iter().zip(&digests) {
        outer.update(Sha256::digest(path.as_bytes()));
        outer.update(digest);
    }
    hex::encode(outer.finalize())
}

/// sha256 of each entry's content, split over the machine's cores when the
/// package is large enough for that to pay.
fn content_digests(entries: &[(&str, &[u8])]) -> Vec<[u8; 32]> {
    let total: usize = entries.iter().map(|(_, c)| c.len()).sum();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(entries.len().max(1));
    let hash = |c: &[u8]| -> [u8; 32] { Sha256::digest(c).into() };
    if total < PARALLEL_THRESHOLD || threads < 2 {
        return entries.iter().map(|(_, c)| hash(c)).collect();
    }
    // Deal entries to threads by size so each gets a similar byte count.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_unstable_by_key(|&i| std::cmp::Reverse(entries[i].1.len()));
    let mut buckets: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); threads];
    for i in order {
        let lightest = buckets
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one bucket");
        lightest.0 += entries[i].1.len();
        lightest.1.push(i);
    }
    let mut out = vec![[0u8; 32]; entries.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = buckets
            .iter()
            .map(|(_, idx)| {
                scope.spawn(move || {
                    idx.iter()
                        .map(|&i| (i, hash(entries[i].1)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for (i, digest) in handle.join().expect("hashing thread panicked") {
                out[i] = digest;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answer computed with Python's hashlib over the same entries;
    /// input order must not matter.
    #[test]
    fn matches_an_independent_computation() {
        let entries: Vec<(&str, &[u8])> = vec![("b.txt", b"world"), ("a.txt", b"hello")];
        assert_eq!(
            checksum(entries),
            "62d32bc9a7dde0b2feaa1457b9f101fb2b62c845079fc00e5e99dde05d6623c8"
        );
    }

    #[test]
    fn parallel_and_serial_agree() {
        let big = vec![7u8; PARALLEL_THRESHOLD];
        let entries: Vec<(String, Vec<u8>)> = (0..6)
            .map(|i| (format!("f{i}"), big[..big.len() / (i + 1)].to_vec()))
            .collect();
        let refs: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        let serial: Vec<[u8; 32]> = refs.iter().map(|(_, c)| Sha256::digest(c).into()).collect();
        assert_eq!(content_digests(&refs), serial);
    }
}
