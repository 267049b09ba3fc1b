//! Reading a `.difypkg` zip from memory without trusting it: sizes, entry
//! counts, names and inflation ratios are all checked, and every entry is
//! inflated through a bounded reader so a bomb is stopped while it expands.

use std::collections::HashSet;
use std::io::{Cursor, Read};

use super::PackageError;

/// Entries smaller than this are never called bombs: tiny, highly repetitive
/// files (empty `__init__.py`, padded JSON) legitimately exceed any ratio.
const RATIO_FLOOR: u64 = 1024 * 1024;

/// Bounds applied while reading an untrusted package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted package, in bytes as uploaded.
    pub max_compressed: u64,
    /// Largest accepted sum of the entries' inflated sizes.
    pub max_uncompressed: u64,
    /// Most entries (files and directories) a package may hold.
    pub max_entries: usize,
    /// Largest inflated/compressed ratio of one entry above 1 MiB.
    pub max_ratio: u64,
}

impl DecodeLimits {
    /// Limits for a daemon configured with `MAX_PLUGIN_PACKAGE_SIZE = max`.
    ///
    /// The reference bounds the uncompressed total by the same number
    /// (`NewZipPluginDecoderWithSizeLimit`), so packages it accepts pass here.
    pub fn for_package_size(max: u64) -> Self {
        Self {
            max_compressed: max,
            max_uncompressed: max,
            max_entries: 10_000,
            max_ratio: 200,
        }
    }
}

impl DecodeLimits {
    /// Limits for packages a user points the command line at: no upload
    /// limit, but still bounded against bombs.
    pub fn for_local_files() -> Self {
        Self {
            max_compressed: u64::MAX,
            max_uncompressed: 4 * 1024 * 1024 * 1024,
            max_entries: 100_000,
            max_ratio: 200,
        }
    }
}

impl Default for DecodeLimits {
    /// The reference daemon's default limit of 50 MiB.
    fn default() -> Self {
        Self::for_package_size(50 * 1024 * 1024)
    }
}

/// The files of a package in zip order, with the archive comment.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    /// `(name, content)` in central-directory order; no directory entries.
    pub entries: Vec<(String, Vec<u8>)>,
    /// The raw zip comment, where signed packages keep their signature.
    pub comment: Vec<u8>,
}

impl Archive {
    /// The content of the entry called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_slice())
    }
}

/// Reads every entry of `bytes` within `limits`.
pub fn read_archive(bytes: &[u8], limits: &DecodeLimits) -> Result<Archive, PackageError> {
    let size = bytes.len() as u64;
    if size > limits.max_compressed {
        return Err(PackageError::TooLarge {
            size,
            limit: limits.max_compressed,
        });
    }

    // Walk the central directory ourselves first: the zip crate keys entries
    // by name and would silently drop a duplicate, and it allocates per entry
    // before we could bound the count.
    let names = central_directory_names(bytes, limits.max_entries)?;
    let mut seen = HashSet::with_capacity(names.len());
    for name in &names {
        if !seen.insert(name.as_str()) {
            return Err(PackageError::DuplicateEntry(name.clone()));
        }
        check_name(name)?;
    }

    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| PackageError::Malformed(e.to_string()))?;
    if zip.len() != names.len() {
        return Err(PackageError::Malformed(format!(
            "central directory lists {} entries, archive holds {}",
            names.len(),
            zip.len()
        )));
    }
    let comment = zip.comment().to_vec();

    let mut declared_total: u64 = 0;
    for (i, name) in names.iter().enumerate() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| PackageError::Malformed(e.to_string()))?;
        if entry.is_symlink() {
            return Err(PackageError::Symlink(name.clone()));
        }
        declared_total = declared_total.saturating_add(entry.size());
        if declared_total > limits.max_uncompressed {
            return Err(PackageError::UncompressedTooLarge {
                limit: limits.max_uncompressed,
            });
        }
    }

    let mut entries = Vec::with_capacity(zip.len());
    let mut total: u64 = 0;
    for (i, name) in names.into_iter().enumerate() {
        let entry = zip
            .by_index(i)
            .map_err(|e| PackageError::Malformed(format!("{name}: {e}")))?;
        if entry.is_dir() || name.ends_with('/') {
            continue;
        }
        let compressed = entry.compressed_size().max(1);
        let budget = limits.max_uncompressed - total;
        let ratio_cap = compressed.saturating_mul(limits.max_ratio).max(RATIO_FLOOR);
        // One byte past the tighter bound tells "at the limit" from "over it".
        let cap = budget.min(ratio_cap);
        let mut content = Vec::with_capacity(entry.size().min(cap) as usize);
        entry
            .take(cap.saturating_add(1))
            .read_to_end(&mut content)
            .map_err(|e| PackageError::Malformed(format!("{name}: {e}")))?;
        let read = content.len() as u64;
        if read > ratio_cap {
            return Err(PackageError::CompressionBomb {
                name,
                max_ratio: limits.max_ratio,
            });
        }
        if read > budget {
            return Err(PackageError::UncompressedTooLarge {
                limit: limits.max_uncompressed,
            });
        }
        total += read;
        entries.push((name, content));
    }
    Ok(Archive { entries, comment })
}

/// Refuses names that would escape the extraction folder.
fn check_name(name: &str) -> Result<(), PackageError> {
    if name.is_empty() || name.contains('\0') {
        return Err(PackageError::InvalidEntryName(format!("{name:?}")));
    }
    // Windows tools sometimes write `\`; judge the name as a Windows
    // extractor would see it.
    let normalized = name.replace('\\', "/");
    let bytes = normalized.as_bytes();
    let has_drive = bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic();
    if normalized.starts_with('/') || has_drive || normalized.split('/').any(|part| part == "..") {
        return Err(PackageError::PathTraversal(name.to_string()));
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]) as u64)
}

fn u32_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn malformed(what: &str) -> PackageError {
    PackageError::Malformed(what.to_string())
}

/// The entry names of the central directory, in order, bounded by `max`.
fn central_directory_names(b: &[u8], max: usize) -> Result<Vec<String>, PackageError> {
    const EOCD: u32 = 0x0605_4b50;
    const ZIP64_LOCATOR: u32 = 0x0706_4b50;
    const ZIP64_EOCD: u32 = 0x0606_4b50;
    const CENTRAL: u32 = 0x0201_4b50;

    if b.len() < 22 {
        return Err(malformed("not a valid zip file"));
    }
    // The end record sits within the last 22 + 65535 (comment) bytes.
    let lowest = b.len().saturating_sub(22 + u16::MAX as usize);
    let eocd = (lowest..=b.len() - 22)
        .rev()
        .find(|&i| u32_at(b, i) == Some(EOCD as u64))
        .ok_or_else(|| malformed("not a valid zip file"))?;
    let mut count = u16_at(b, eocd + 10).ok_or_else(|| malformed("truncated end record"))?;
    let mut offset = u32_at(b, eocd + 16).ok_or_else(|| malformed("truncated end record"))?;
    if eocd >= 20 && u32_at(b, eocd - 20) == Some(ZIP64_LOCATOR as u64) {
        let at = u64_at(b, eocd - 20 + 8).ok_or_else(|| malformed("truncated zip64 locator"))?;
        let at = usize::try_from(at).map_err(|_| malformed("bad zip64 offset"))?;
        if u32_at(b, at) != Some(ZIP64_EOCD as u64) {
            return Err(malformed("bad zip64 end record"));
        }
        count = u64_at(b, at + 32).ok_or_else(|| malformed("truncated zip64 end record"))?;
        offset = u64_at(b, at + 48).ok_or_else(|| malformed("truncated zip64 end record"))?;
    }
    if count > max as u64 {
        return Err(PackageError::TooManyEntries { count, limit: max });
    }
    let mut pos = usize::try_from(offset).map_err(|_| malformed("bad directory offset"))?;
    if count > 0 && u32_at(b, pos) != Some(CENTRAL as u64) {
        // Data prepended to the archive shifts every offset; the directory
        // then ends right where the end record begins, which the zip crate
        // accepts too.
        let size = u32_at(b, eocd + 12).ok_or_else(|| malformed("truncated end record"))?;
        pos = eocd
            .checked_sub(size as usize)
            .filter(|&p| u32_at(b, p) == Some(CENTRAL as u64))
            .ok_or_else(|| malformed("central directory not found"))?;
    }
    let mut names = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if u32_at(b, pos) != Some(CENTRAL as u64) {
            return Err(malformed("truncated central directory"));
        }
        let name_len = u16_at(b, pos + 28).ok_or_else(|| malformed("truncated header"))? as usize;
        let extra_len = u16_at(b, pos + 30).ok_or_else(|| malformed("truncated header"))? as usize;
        let comment_len =
            u16_at(b, pos + 32).ok_or_else(|| malformed("truncated header"))? as usize;
        let raw = b
            .get(pos + 46..pos + 46 + name_len)
            .ok_or_else(|| malformed("truncated entry name"))?;
        let name = String::from_utf8(raw.to_vec()).map_err(|_| {
            PackageError::InvalidEntryName(format!(
                "{:?} is not UTF-8",
                String::from_utf8_lossy(raw)
            ))
        })?;
        names.push(name);
        pos += 46 + name_len + extra_len + comment_len;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\\..\\..\\x",
            "C:/x",
            "c:\\x",
        ] {
            assert!(
                matches!(check_name(bad), Err(PackageError::PathTraversal(_))),
                "{bad} accepted"
            );
        }
        for good in [
            "manifest.yaml",
            "a/b/c.py",
            "a\\b.py",
            "..hidden",
            "a/..b/c",
        ] {
            assert!(check_name(good).is_ok(), "{good} refused");
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let err = read_archive(
            b"definitely not a zip file at all",
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PackageError::Malformed(_)), "{err}");
    }
}
