//! Decoding untrusted packages: every rejection names its problem, and a good
//! package decodes into the declaration the reference would produce.

use std::io::{Cursor, Write};

use plugind::error::DaemonError;
use plugind::package::{decode, DecodeLimits, PackageError};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

const MANIFEST: &str = r#"version: 0.0.1
type: plugin
author: acme
name: demo
label:
  en_US: Demo
description:
  en_US: A demo plugin
icon: icon.svg
resource:
  memory: 1048576
plugins:
  tools:
    - provider/demo.yaml
meta:
  version: 0.0.1
  arch: [amd64]
  runner:
    language: python
    version: "3.12"
    entrypoint: main
created_at: 2024-07-12T08:03:44.658609186Z
"#;

const PROVIDER: &str = r#"identity:
  author: acme
  name: demo
  label: {en_US: Demo}
  icon: icon.svg
tools:
  - tools/demo.yaml
"#;

const TOOL: &str = r#"identity: {name: demo, author: acme, label: {en_US: Demo}}
description:
  human: {en_US: Demo tool}
  llm: Demo tool
parameters: []
"#;

fn good_files() -> Vec<(String, Vec<u8>)> {
    [
        ("manifest.yaml", MANIFEST),
        ("provider/demo.yaml", PROVIDER),
        ("tools/demo.yaml", TOOL),
        ("_assets/icon.svg", "<svg/>"),
        ("main.py", "print('hi')\n"),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
    .collect()
}

fn with(files: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut all = good_files();
    for (name, content) in files {
        all.retain(|(n, _)| n != name);
        all.push((name.to_string(), content.as_bytes().to_vec()));
    }
    all
}

fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in files {
        w.start_file(
            name.as_str(),
            SimpleFileOptions::default().compression_method(CompressionMethod::Deflated),
        )
        .unwrap();
        w.write_all(content).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn decode_err(bytes: &[u8]) -> PackageError {
    decode(bytes, &DecodeLimits::default()).expect_err("package should be refused")
}

fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            count += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    count
}

#[test]
fn a_good_package_decodes() {
    let pkg = decode(&zip_of(&good_files()), &DecodeLimits::default()).unwrap();
    assert_eq!(pkg.identifier.plugin_id(), "acme/demo");
    assert_eq!(pkg.identifier.checksum(), pkg.checksum);
    assert_eq!(pkg.declaration.tool.as_ref().unwrap().tools.len(), 1);
    assert!(!pkg.declaration.verified);
    assert!(pkg.verification.is_none());
    assert_eq!(
        pkg.assets().keys().copied().collect::<Vec<_>>(),
        ["icon.svg"]
    );
}

#[test]
fn oversize_package_is_refused() {
    let bytes = zip_of(&good_files());
    let limits = DecodeLimits {
        max_compressed: bytes.len() as u64 - 1,
        ..DecodeLimits::default()
    };
    let err = decode(&bytes, &limits).unwrap_err();
    assert!(matches!(err, PackageError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("too large"), "{err}");
}

#[test]
fn oversize_uncompressed_total_is_refused() {
    let files = with(&[("big.txt", &"x".repeat(200_000))]);
    let limits = DecodeLimits {
        max_uncompressed: 100_000,
        ..DecodeLimits::default()
    };
    let err = decode(&zip_of(&files), &limits).unwrap_err();
    assert!(
        matches!(err, PackageError::UncompressedTooLarge { limit: 100_000 }),
        "{err}"
    );
    assert!(err.to_string().contains("uncompressed size"), "{err}");
}

#[test]
fn lying_about_sizes_is_caught_while_inflating() {
    // Declare 16 bytes for an entry that inflates to 300 KB: the declared
    // total passes, the bounded reader must still stop it.
    let body = vec![b'z'; 300_000];
    let files = with(&[("liar.txt", std::str::from_utf8(&body).unwrap())]);
    let mut bytes = zip_of(&files);
    let declared = (body.len() as u32).to_le_bytes();
    assert!(replace_all(&mut bytes, &declared, &16u32.to_le_bytes()) >= 2);
    let limits = DecodeLimits {
        max_uncompressed: 100_000,
        ..DecodeLimits::default()
    };
    let err = decode(&bytes, &limits).unwrap_err();
    assert!(
        matches!(err, PackageError::UncompressedTooLarge { limit: 100_000 }),
        "{err}"
    );
}

#[test]
fn too_many_entries_are_refused() {
    let mut files = good_files();
    for i in 0..20 {
        files.push((format!("extra/{i}.txt"), b"x".to_vec()));
    }
    let limits = DecodeLimits {
        max_entries: 10,
        ..DecodeLimits::default()
    };
    let err = decode(&zip_of(&files), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            PackageError::TooManyEntries {
                count: 25,
                limit: 10
            }
        ),
        "{err}"
    );
}

#[test]
fn path_traversal_is_refused() {
    for name in [
        "../evil.py",
        "/etc/evil",
        "tools/../../evil",
        "..\\..\\evil.py",
    ] {
        let err = decode_err(&zip_of(&with(&[(name, "boom")])));
        assert!(
            matches!(err, PackageError::PathTraversal(_)),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("illegal file path"), "{err}");
    }
}

#[test]
fn symlink_entries_are_refused() {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in good_files() {
        w.start_file(name, SimpleFileOptions::default()).unwrap();
        w.write_all(&content).unwrap();
    }
    w.add_symlink("link.py", "/etc/passwd", SimpleFileOptions::default())
        .unwrap();
    let err = decode_err(&w.finish().unwrap().into_inner());
    assert!(
        matches!(err, PackageError::Symlink(ref n) if n == "link.py"),
        "{err}"
    );
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[test]
fn duplicate_names_are_refused() {
    // The zip writer refuses duplicates, so write two names of equal length
    // and rename the second in both its headers.
    let mut bytes = zip_of(&with(&[("dup_a.txt", "first"), ("dup_b.txt", "second")]));
    assert_eq!(replace_all(&mut bytes, b"dup_b.txt", b"dup_a.txt"), 2);
    let err = decode_err(&bytes);
    assert!(
        matches!(err, PackageError::DuplicateEntry(ref n) if n == "dup_a.txt"),
        "{err}"
    );
}

#[test]
fn compression_bombs_are_refused() {
    let zeros = "\0".repeat(8 * 1024 * 1024);
    let limits = DecodeLimits {
        max_uncompressed: 1 << 30,
        ..DecodeLimits::default()
    };
    let err = decode(&zip_of(&with(&[("bomb.bin", &zeros)])), &limits).unwrap_err();
    assert!(
        matches!(err, PackageError::CompressionBomb { ref name, .. } if name == "bomb.bin"),
        "{err}"
    );
}

#[test]
fn directory_entries_are_skipped() {
    let files = good_files();
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    w.add_directory("tools/", SimpleFileOptions::default())
        .unwrap();
    for (name, content) in &files {
        w.start_file(name.as_str(), SimpleFileOptions::default())
            .unwrap();
        w.write_all(content).unwrap();
    }
    let with_dirs = decode(&w.finish().unwrap().into_inner(), &DecodeLimits::default()).unwrap();
    let without = decode(&zip_of(&files), &DecodeLimits::default()).unwrap();
    assert!(!with_dirs.files.contains_key("tools/"));
    assert_eq!(with_dirs.checksum, without.checksum);
}

#[test]
fn not_a_zip_is_malformed() {
    let err = decode_err(b"PK\x03\x04 but not really a zip archive");
    assert!(matches!(err, PackageError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("difypkg"), "{err}");
}

#[test]
fn missing_manifest_is_refused() {
    let files: Vec<_> = good_files()
        .into_iter()
        .filter(|(n, _)| n != "manifest.yaml")
        .collect();
    let err = decode_err(&zip_of(&files));
    assert!(matches!(err, PackageError::MissingManifest), "{err}");
    assert!(err.to_string().contains("manifest.yaml"), "{err}");
}

#[test]
fn malformed_manifest_names_the_file() {
    for bad in [
        "version: [unclosed",
        "- just\n- a list\n",
        "label: 3\nresource: nope\n",
    ] {
        let err = decode_err(&zip_of(&with(&[("manifest.yaml", bad)])));
        assert!(
            matches!(err, PackageError::Yaml { ref file, .. } if file == "manifest.yaml"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn bad_yaml_in_a_provider_file_names_that_file() {
    let err = decode_err(&zip_of(&with(&[("tools/demo.yaml", "identity: [oops")])));
    assert!(
        matches!(err, PackageError::Yaml { ref file, .. } if file == "tools/demo.yaml"),
        "{err}"
    );
    assert!(err.to_string().contains("tools/demo.yaml"), "{err}");
}

/// A document nested `depth` levels deep in flow style, as the probe sent.
fn deeply_nested(depth: usize) -> String {
    "{a: ".repeat(depth) + "1" + &"}".repeat(depth)
}

#[test]
fn a_deeply_nested_manifest_is_refused_before_parsing() {
    let deep = deeply_nested(200_000);
    let err = decode_err(&zip_of(&with(&[("manifest.yaml", &deep)])));
    assert!(
        matches!(err, PackageError::YamlLimit { ref file, .. } if file == "manifest.yaml"),
        "{err}"
    );
    assert!(
        err.to_string().contains("nests deeper than 64 levels"),
        "{err}"
    );
    let err: DaemonError = err.into();
    assert_eq!(err.error_type(), "PluginDaemonBadRequestError");
}

#[test]
fn every_declaration_yaml_is_bounded() {
    let provider = PROVIDER.to_owned() + "extra: " + &deeply_nested(100) + "\n";
    let err = decode_err(&zip_of(&with(&[("provider/demo.yaml", &provider)])));
    assert!(
        matches!(err, PackageError::YamlLimit { ref file, .. } if file == "provider/demo.yaml"),
        "{err}"
    );
    let tool = TOOL.to_owned() + &"- ".repeat(100) + "x\n";
    let err = decode_err(&zip_of(&with(&[("tools/demo.yaml", &tool)])));
    assert!(
        matches!(err, PackageError::YamlLimit { ref file, .. } if file == "tools/demo.yaml"),
        "{err}"
    );
    // Text that does not compress, so the zip's own ratio check passes.
    let mut seed = 1u32;
    let noise: String = (0..2 << 20)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            char::from(b'a' + (seed >> 16) as u8 % 26)
        })
        .collect();
    let huge = TOOL.to_owned() + "notes: " + &noise + "\n";
    let err = decode_err(&zip_of(&with(&[("tools/demo.yaml", &huge)])));
    assert!(
        err.to_string().contains("a YAML file may have at most"),
        "{err}"
    );
}

#[test]
fn missing_referenced_file_is_named() {
    let files: Vec<_> = good_files()
        .into_iter()
        .filter(|(n, _)| n != "tools/demo.yaml")
        .collect();
    let err = decode_err(&zip_of(&files));
    assert!(
        matches!(err, PackageError::MissingFile { ref file, .. } if file == "tools/demo.yaml"),
        "{err}"
    );
}

#[test]
fn field_patterns_are_enforced() {
    let cases = [
        ("author: acme", "author: Acme", "author"),
        ("name: demo", "name: 'demo plugin'", "plugin name"),
        ("version: 0.0.1\ntype", "version: 1.0\ntype", "version"),
        ("type: plugin", "type: bundle", "type"),
        ("language: python", "language: go", "language"),
        ("arch: [amd64]", "arch: [riscv]", "arch"),
    ];
    for (from, to, word) in cases {
        let manifest = MANIFEST.replacen(from, to, 1);
        assert_ne!(manifest, MANIFEST, "{from}");
        let err = decode_err(&zip_of(&with(&[("manifest.yaml", &manifest)])));
        assert!(
            matches!(err, PackageError::InvalidManifest(_)),
            "{to}: {err}"
        );
        assert!(err.to_string().contains(word), "{to}: {err}");
    }
}

#[test]
fn provider_kinds_that_exclude_each_other_are_refused() {
    let manifest = MANIFEST.replace(
        "    - provider/demo.yaml\n",
        "    - provider/demo.yaml\n  models:\n    - provider/model.yaml\n",
    );
    let files = with(&[
        ("manifest.yaml", &manifest),
        (
            "provider/model.yaml",
            "provider: m\nlabel: {en_US: M}\nsupported_model_types: [llm]\nconfigurate_methods: [predefined-model]\n",
        ),
    ]);
    let err = decode_err(&zip_of(&files));
    assert!(
        err.to_string()
            .contains("model cannot be provided together"),
        "{err}"
    );

    let no_provider = MANIFEST.replace("  tools:\n    - provider/demo.yaml\n", "");
    let err = decode_err(&zip_of(&with(&[("manifest.yaml", &no_provider)])));
    assert!(err.to_string().contains("at least one of"), "{err}");
}

#[test]
fn tools_and_endpoints_may_be_combined() {
    let manifest = MANIFEST.replace(
        "    - provider/demo.yaml\n",
        "    - provider/demo.yaml\n  endpoints:\n    - group.yaml\n",
    );
    let files = with(&[
        ("manifest.yaml", &manifest),
        (
            "group.yaml",
            "settings: []\nendpoints:\n  - path: /x\n    method: GET\n",
        ),
    ]);
    let pkg = decode(&zip_of(&files), &DecodeLimits::default()).unwrap();
    assert_eq!(
        pkg.declaration.endpoint.unwrap().endpoints.unwrap()[0].path,
        "/x"
    );
}

#[test]
fn missing_icons_are_refused() {
    let files: Vec<_> = good_files()
        .into_iter()
        .filter(|(n, _)| n != "_assets/icon.svg")
        .collect();
    let err = decode_err(&zip_of(&files));
    assert!(matches!(err, PackageError::MissingAsset(_)), "{err}");
    assert!(err.to_string().contains("icon.svg"), "{err}");
}

#[test]
fn errors_map_to_the_daemon_table() {
    let err: DaemonError = decode_err(b"nope").into();
    assert_eq!(err.error_type(), "PluginDaemonBadRequestError");
    assert_eq!(err.code(), -400);
    let id_err = "bad"
        .parse::<plugind::package::PluginUniqueIdentifier>()
        .unwrap_err();
    let err: DaemonError = PackageError::from(id_err).into();
    assert_eq!(err.error_type(), "PluginUniqueIdentifierError");
}
