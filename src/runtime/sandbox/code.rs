//! The plugin's code folder, checked against its package before every
//! launch: the same checksum as the package identifier's (PROTOCOL.md §6),
//! computed over the files on disk, so a folder that gained, lost or changed
//! a file since it was unpacked is never run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::super::python_env::VENV_DIR;

/// Why a code folder does not match its package.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("{0} is a symbolic link or special file; packages hold regular files only")]
    NotAFile(String),
    #[error("the files differ from the package (checksum {found}, package {expected})")]
    Mismatch { found: String, expected: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The files of `dir` outside its top-level `.venv`, as `/`-separated
/// relative paths with their content.
fn code_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, CodeError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let folder = dir.join(&relative);
        let entries = std::fs::read_dir(&folder).map_err(|source| CodeError::Io {
            path: folder.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| CodeError::Io {
                path: folder.clone(),
                source,
            })?;
            let rel = relative.join(entry.file_name());
            if rel.as_os_str() == VENV_DIR {
                continue;
            }
            // file_type does not follow links: a link is reported as one.
            let kind = entry.file_type().map_err(|source| CodeError::Io {
                path: entry.path(),
                source,
            })?;
            let name = rel.to_string_lossy().into_owned();
            if kind.is_dir() {
                stack.push(rel);
            } else if kind.is_file() {
                let data = std::fs::read(entry.path()).map_err(|source| CodeError::Io {
                    path: entry.path(),
                    source,
                })?;
                out.push((name, data));
            } else {
                return Err(CodeError::NotAFile(name));
            }
        }
    }
    Ok(out)
}

/// Checks that `dir` holds exactly the files of the package whose checksum
/// is `expected`.
pub fn verify(dir: &Path, expected: &str) -> Result<(), CodeError> {
    let files = code_files(dir)?;
    let found = crate::package::checksum(files.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
    if found == expected {
        Ok(())
    } else {
        Err(CodeError::Mismatch {
            found,
            expected: expected.to_owned(),
        })
    }
}

/// Removes the files a dependency build left in `dir` outside `.venv` that
/// are not among `keep` (uv writes `uv.lock` next to a pyproject.toml
/// without one), so the folder verifies again.
pub fn remove_strays(dir: &Path, keep: &BTreeSet<String>) -> Result<Vec<String>, CodeError> {
    let mut removed = Vec::new();
    for (name, _) in code_files(dir)? {
        if !keep.contains(&name) {
            let path = dir.join(&name);
            std::fs::remove_file(&path).map_err(|source| CodeError::Io { path, source })?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// The checksum part of a unique identifier (`author/name:version@checksum`).
pub fn identifier_checksum(identifier: &str) -> Option<&str> {
    identifier
        .rsplit_once('@')
        .map(|(_, sum)| sum)
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package_sum(files: &[(&str, &[u8])]) -> String {
        crate::package::checksum(files.iter().copied())
    }

    #[test]
    fn an_unchanged_folder_verifies_and_any_change_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("tools")).unwrap();
        std::fs::create_dir_all(dir.join(".venv/lib")).unwrap();
        std::fs::write(dir.join("main.py"), b"print(1)").unwrap();
        std::fs::write(dir.join("tools/t.py"), b"x = 1").unwrap();
        std::fs::write(dir.join(".venv/lib/ignored.py"), b"venv").unwrap();
        let sum = package_sum(&[("main.py", b"print(1)"), ("tools/t.py", b"x = 1")]);
        verify(dir, &sum).unwrap();

        std::fs::write(dir.join("tools/t.py"), b"x = 2").unwrap();
        assert!(matches!(verify(dir, &sum), Err(CodeError::Mismatch { .. })));
        std::fs::write(dir.join("tools/t.py"), b"x = 1").unwrap();
        std::fs::write(dir.join("sitecustomize.py"), b"evil").unwrap();
        assert!(matches!(verify(dir, &sum), Err(CodeError::Mismatch { .. })));
        std::fs::remove_file(dir.join("sitecustomize.py")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        assert!(matches!(verify(dir, &sum), Err(CodeError::NotAFile(_))));
        std::fs::remove_file(dir.join("link")).unwrap();
        verify(dir, &sum).unwrap();
    }

    #[test]
    fn strays_are_removed_and_package_files_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("main.py"), b"m").unwrap();
        std::fs::write(dir.join("uv.lock"), b"lock").unwrap();
        let keep = BTreeSet::from(["main.py".to_owned()]);
        assert_eq!(remove_strays(dir, &keep).unwrap(), ["uv.lock"]);
        verify(dir, &package_sum(&[("main.py", b"m")])).unwrap();
    }

    #[test]
    fn checksum_of_an_identifier() {
        let sum = "a".repeat(64);
        assert_eq!(
            identifier_checksum(&format!("a/b:0.0.1@{sum}")),
            Some(sum.as_str())
        );
        assert_eq!(identifier_checksum("a/b:0.0.1"), None);
        assert_eq!(identifier_checksum("a/b:0.0.1@short"), None);
    }
}
