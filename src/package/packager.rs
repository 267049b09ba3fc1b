//! Packaging a plugin folder into a `.difypkg` (reference
//! `pkg/plugin_packager/packager/`): files filtered by `.difyignore` (or
//! `.gitignore` when there is none), validated as a package would be on
//! upload, and written sorted, without directory entries, with a fixed
//! modification time so the same folder always gives the same bytes.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::manifest::{check_assets, resolve, validate};
use super::PackageError;

/// A file collected from a plugin folder.
#[derive(Debug, Clone)]
pub struct PackedFile {
    /// Path relative to the folder, `/`-separated.
    pub path: String,
    pub content: Vec<u8>,
    /// Unix permission bits, kept in the archive.
    pub mode: u32,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PackageError {
    let path = path.to_path_buf();
    move |source| PackageError::Io {
        action,
        path,
        source,
    }
}

/// The root ignore file: `.difyignore`, else `.gitignore`, else none.
fn ignore_rules(root: &Path) -> Result<Gitignore, PackageError> {
    let mut builder = GitignoreBuilder::new(root);
    for name in [".difyignore", ".gitignore"] {
        let path = root.join(name);
        if path.is_file() {
            if let Some(err) = builder.add(&path) {
                return Err(PackageError::Io {
                    action: "cannot read ignore file",
                    path,
                    source: std::io::Error::other(err.to_string()),
                });
            }
            break;
        }
    }
    builder.build().map_err(|e| PackageError::Io {
        action: "invalid ignore rules in",
        path: root.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Every file under `root` that the ignore rules keep, sorted by path.
pub fn collect_files(root: &Path) -> Result<Vec<PackedFile>, PackageError> {
    let rules = ignore_rules(root)?;
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let listing = std::fs::read_dir(&dir).map_err(io_error("cannot list", &dir))?;
        for entry in listing {
            let entry = entry.map_err(io_error("cannot list", &dir))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(io_error("cannot stat", &path))?;
            // Follow a symlink to learn whether it names a file; linked
            // folders are not descended into.
            let meta = std::fs::metadata(&path).map_err(io_error("cannot stat", &path))?;
            let is_dir = meta.is_dir();
            if rules.matched(&path, is_dir).is_ignore() {
                continue;
            }
            if is_dir {
                if !file_type.is_symlink() {
                    stack.push(path);
                }
                continue;
            }
            let relative = path
                .strip_prefix(root)
                .expect("walked paths are under the root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let content = std::fs::read(&path).map_err(io_error("cannot read", &path))?;
            files.push(PackedFile {
                path: relative,
                content,
                mode: file_mode(&meta),
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(unix)]
fn file_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn file_mode(_meta: &std::fs::Metadata) -> u32 {
    0o644
}

/// Writes entries, in the given order, into a deflated zip with a fixed
/// timestamp and an optional archive comment.
pub fn write_zip<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a [u8], Option<u32>)>,
    comment: Option<&str>,
) -> Result<Vec<u8>, PackageError> {
    let zip_error = |e: zip::result::ZipError| PackageError::Malformed(e.to_string());
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content, mode) in entries {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .last_modified_time(DateTime::default())
            .unix_permissions(mode.unwrap_or(0o644));
        writer.start_file(name, options).map_err(zip_error)?;
        writer.write_all(content).map_err(|e| PackageError::Io {
            action: "cannot write entry",
            path: PathBuf::from(name),
            source: e,
        })?;
    }
    if let Some(comment) = comment {
        writer.set_comment(comment);
    }
    Ok(writer.finish().map_err(zip_error)?.into_inner())
}

/// Packages the plugin folder `root`, refusing it when its files add up to
/// more than `max_size` bytes or when the result would be larger than that.
pub fn package_dir(root: &Path, max_size: u64) -> Result<Vec<u8>, PackageError> {
    let files = collect_files(root)?;
    let total: u64 = files.iter().map(|f| f.content.len() as u64).sum();
    if total > max_size {
        let mut largest: Vec<&PackedFile> = files.iter().collect();
        largest.sort_by_key(|f| std::cmp::Reverse(f.content.len()));
        let top = largest
            .iter()
            .take(5)
            .enumerate()
            .map(|(i, f)| format!("{}. {} ({} bytes)", i + 1, f.path, f.content.len()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PackageError::InvalidManifest(format!(
            "plugin package size is too large: {total} bytes of files, the limit is {max_size} bytes; largest files: {top}"
        )));
    }

    let entries: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| (f.path.clone(), f.content.clone()))
        .collect();
    let declaration = resolve(entries.as_slice())?;
    validate(&declaration)?;
    check_assets(&declaration, entries.as_slice())?;

    let bytes = write_zip(
        files
            .iter()
            .map(|f| (f.path.as_str(), f.content.as_slice(), Some(f.mode))),
        None,
    )?;
    if bytes.len() as u64 > max_size {
        return Err(PackageError::TooLarge {
            size: bytes.len() as u64,
            limit: max_size,
        });
    }
    Ok(bytes)
}
