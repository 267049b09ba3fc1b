//! Folder → package → decode → sign → verify, on the hand-made `echo_tool`
//! fixture, and the declaration JSON the Dify API server will parse.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plugind::package::signature::{generate_keypair, sign_with_key};
use plugind::package::{
    checksum, decode, decode_with_keys, package_dir, read_archive, sign, verify,
    AuthorizedCategory, DecodeLimits, PackageError, SignatureKeys,
};
use serde_json::Value;

const MAX: u64 = 50 * 1024 * 1024;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/packages/echo_tool")
}

/// One key pair per test binary: generating RSA keys is slow.
fn keypair() -> &'static (String, String) {
    static KEYS: OnceLock<(String, String)> = OnceLock::new();
    KEYS.get_or_init(|| generate_keypair(2048).unwrap())
}

fn other_keypair() -> &'static (String, String) {
    static KEYS: OnceLock<(String, String)> = OnceLock::new();
    KEYS.get_or_init(|| generate_keypair(2048).unwrap())
}

fn keys_with(public_pem: &str) -> SignatureKeys {
    let mut keys = SignatureKeys::official();
    keys.add_pem(public_pem, "test key").unwrap();
    keys
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn packaging_is_deterministic_and_honours_difyignore() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), dir.path());
    std::fs::create_dir_all(dir.path().join("__pycache__")).unwrap();
    std::fs::write(dir.path().join("__pycache__/main.cpython-312.pyc"), b"x").unwrap();
    std::fs::write(dir.path().join("tools/echo.pyc"), b"x").unwrap();
    std::fs::write(dir.path().join(".env"), b"SECRET=1").unwrap();

    let first = package_dir(dir.path(), MAX).unwrap();
    let second = package_dir(dir.path(), MAX).unwrap();
    assert_eq!(first, second, "same folder, same bytes");

    let archive = read_archive(&first, &DecodeLimits::default()).unwrap();
    let names: Vec<&str> = archive.entries.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are written sorted");
    assert!(names.contains(&"tools/echo.py"));
    assert!(names.contains(&".difyignore"));
    for ignored in ["__pycache__/main.cpython-312.pyc", "tools/echo.pyc", ".env"] {
        assert!(!names.contains(&ignored), "{ignored} was packaged");
    }
    assert!(
        names.iter().all(|n| !n.ends_with('/')),
        "no directory entries"
    );

    let pkg = decode(&first, &DecodeLimits::default()).unwrap();
    let recomputed = checksum(
        archive
            .entries
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice())),
    );
    assert_eq!(pkg.checksum, recomputed);
    assert_eq!(
        pkg.identifier.to_string(),
        format!("acme/echo_tool:0.0.1@{}", pkg.checksum)
    );
    assert_eq!(
        pkg.readme["en_US"],
        "# Echo Tool\n\nRepeats what it is given.\n"
    );
    assert!(pkg.readme["zh_Hans"].contains("回声工具"));
}

#[test]
fn gitignore_is_used_when_there_is_no_difyignore() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), dir.path());
    std::fs::remove_file(dir.path().join(".difyignore")).unwrap();
    std::fs::write(dir.path().join(".gitignore"), "notes.txt\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "private").unwrap();
    let bytes = package_dir(dir.path(), MAX).unwrap();
    let archive = read_archive(&bytes, &DecodeLimits::default()).unwrap();
    assert!(archive.get("notes.txt").is_none());
    assert!(archive.get(".gitignore").is_some());
}

#[test]
fn packaging_refuses_oversize_folders_and_invalid_plugins() {
    let err = package_dir(&fixture(), 1000).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), dir.path());
    std::fs::remove_file(dir.path().join("_assets/icon-dark.svg")).unwrap();
    let err = package_dir(dir.path(), MAX).unwrap_err();
    assert!(matches!(err, PackageError::MissingAsset(_)), "{err}");
    assert!(err.to_string().contains("icon-dark.svg"), "{err}");
}

#[test]
fn declaration_json_matches_the_reference_shape() {
    let pkg = decode(
        &package_dir(&fixture(), MAX).unwrap(),
        &DecodeLimits::default(),
    )
    .unwrap();
    let json: Value = serde_json::to_value(&pkg.declaration).unwrap();

    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "version",
        "type",
        "author",
        "name",
        "label",
        "description",
        "icon",
        "icon_dark",
        "resource",
        "plugins",
        "meta",
        "tags",
        "created_at",
        "privacy",
        "verified",
        "endpoint",
        "tool",
    ] {
        assert!(keys.contains(&key), "missing {key}");
    }
    for absent in ["model", "agent_strategy", "datasource", "trigger", "repo"] {
        assert!(!keys.contains(&absent), "{absent} should be omitted");
    }
    assert_eq!(json["type"], "plugin");
    assert_eq!(json["verified"], false);
    assert_eq!(json["created_at"], "2025-01-02T03:04:05.123456+08:00");
    assert_eq!(
        json["label"],
        serde_json::json!({"en_US": "Echo Tool", "zh_Hans": "回声工具"})
    );
    assert_eq!(json["meta"]["runner"]["language"], "python");
    assert_eq!(json["meta"]["runner"]["version"], "3.12");
    assert_eq!(json["meta"]["runner"]["entrypoint"], "main");
    assert_eq!(json["meta"]["minimum_dify_version"], "1.0.0");
    assert_eq!(json["meta"]["arch"], serde_json::json!(["amd64", "arm64"]));
    assert_eq!(json["resource"]["memory"], 268435456);
    let permission = &json["resource"]["permission"];
    assert_eq!(permission["tool"], serde_json::json!({"enabled": true}));
    assert_eq!(
        permission["model"],
        serde_json::json!({"enabled": true, "llm": true, "text_embedding": false,
            "rerank": false, "tts": false, "speech2text": false, "moderation": false})
    );
    assert_eq!(
        permission["storage"],
        serde_json::json!({"enabled": true, "size": 1048576})
    );
    assert!(
        permission.get("node").is_none(),
        "absent permissions are omitted"
    );
    // Go writes nil slices as null, never omitting the key.
    assert_eq!(json["plugins"]["models"], Value::Null);
    assert_eq!(
        json["plugins"]["tools"],
        serde_json::json!(["provider/echo.yaml"])
    );

    let tool = &json["tool"];
    assert_eq!(
        tool["identity"]["tags"],
        serde_json::json!(["utilities"]),
        "inherited"
    );
    assert_eq!(tool["identity"]["icon_dark"], "");
    assert_eq!(tool["oauth_schema"], Value::Null);
    let credential = &tool["credentials_schema"][0];
    assert_eq!(credential["name"], "api_key", "taken from the mapping key");
    assert_eq!(credential["type"], "secret-input");
    assert_eq!(credential["help"], Value::Null);
    let params = &tool["tools"][0]["parameters"];
    assert_eq!(params[0]["form"], "llm");
    assert_eq!(params[0]["options"], Value::Null);
    assert_eq!(params[1]["default"], 1);
    assert_eq!(params[1]["max"].as_f64(), Some(5.0));
    assert!(tool["tools"][0].get("output_schema").is_none(), "omitempty");
    assert_eq!(tool["tools"][0]["has_runtime_parameters"], false);

    let endpoint = &json["endpoint"];
    assert_eq!(endpoint["settings"][0]["name"], "greeting");
    assert_eq!(
        endpoint["endpoints"],
        serde_json::json!([{"path": "/hello", "method": "GET", "hidden": false}])
    );

    // The JSON reads back into the same declaration (it is stored that way).
    let back: plugind::package::PluginDeclaration = serde_json::from_value(json).unwrap();
    assert_eq!(back, pkg.declaration);
}

#[test]
fn signed_packages_verify_and_carry_their_category() {
    let (private, public) = keypair();
    let unsigned = package_dir(&fixture(), MAX).unwrap();
    let signed = sign(&unsigned, private, Some(AuthorizedCategory::Partner)).unwrap();

    let verification = verify(&signed, &keys_with(public)).unwrap();
    assert_eq!(
        verification.map(|v| v.authorized_category),
        Some(AuthorizedCategory::Partner)
    );

    let archive = read_archive(&signed, &DecodeLimits::default()).unwrap();
    let comment: Value = serde_json::from_slice(&archive.comment).unwrap();
    assert!(comment["signature"].is_string());
    assert!(comment["time"].is_i64());
    assert_eq!(archive.entries.last().unwrap().0, ".verification.dify.json");
    assert_eq!(
        archive.entries.last().unwrap().1,
        br#"{"authorized_category":"partner"}"#
    );

    let pkg = decode_with_keys(&signed, &DecodeLimits::default(), &keys_with(public)).unwrap();
    assert!(pkg.declaration.verified);
    assert_eq!(
        pkg.verification.unwrap().authorized_category,
        AuthorizedCategory::Partner
    );
    // The official key alone does not trust it.
    let pkg = decode(&signed, &DecodeLimits::default()).unwrap();
    assert!(!pkg.declaration.verified);
    assert!(pkg.verification.is_none());
}

#[test]
fn signing_without_a_category_defaults_to_langgenius_on_decode() {
    let (private, public) = keypair();
    let signed = sign(&package_dir(&fixture(), MAX).unwrap(), private, None).unwrap();
    assert_eq!(verify(&signed, &keys_with(public)).unwrap(), None);
    let pkg = decode_with_keys(&signed, &DecodeLimits::default(), &keys_with(public)).unwrap();
    assert_eq!(
        pkg.verification.unwrap().authorized_category,
        AuthorizedCategory::Langgenius
    );
}

#[test]
fn tampering_breaks_the_signature() {
    let (private, public) = keypair();
    let signed = sign(
        &package_dir(&fixture(), MAX).unwrap(),
        private,
        Some(AuthorizedCategory::Community),
    )
    .unwrap();
    // Rebuild the archive with one byte of one file changed, keeping the
    // signature comment.
    let archive = read_archive(&signed, &DecodeLimits::default()).unwrap();
    let mut entries = archive.entries.clone();
    let main = entries.iter_mut().find(|(n, _)| n == "main.py").unwrap();
    main.1.push(b'\n');
    let tampered = plugind::package::packager::write_zip(
        entries
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice(), None)),
        Some(std::str::from_utf8(&archive.comment).unwrap()),
    )
    .unwrap();
    let err = verify(&tampered, &keys_with(public)).unwrap_err();
    assert!(matches!(err, PackageError::BadSignature(_)), "{err}");

    // So does changing the signing time.
    let mut comment: Value = serde_json::from_slice(&archive.comment).unwrap();
    comment["time"] = (comment["time"].as_i64().unwrap() + 1).into();
    let retimed = plugind::package::packager::write_zip(
        archive
            .entries
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice(), None)),
        Some(&comment.to_string()),
    )
    .unwrap();
    assert!(verify(&retimed, &keys_with(public)).is_err());
}

#[test]
fn a_wrong_key_fails_and_unsigned_packages_are_named() {
    let (private, _) = keypair();
    let (_, wrong_public) = other_keypair();
    let unsigned = package_dir(&fixture(), MAX).unwrap();
    let signed = sign(&unsigned, private, None).unwrap();
    let err = verify(&signed, &keys_with(wrong_public)).unwrap_err();
    assert!(matches!(err, PackageError::BadSignature(_)), "{err}");

    let err = verify(&unsigned, &SignatureKeys::official()).unwrap_err();
    assert!(matches!(err, PackageError::Unsigned), "{err}");
    assert!(err.to_string().contains("not signed"));
}

#[test]
fn resigning_replaces_the_old_verification_file() {
    let (private, public) = keypair();
    let key = plugind::package::signature::parse_private_key(private, "test").unwrap();
    let once = sign_with_key(
        &package_dir(&fixture(), MAX).unwrap(),
        &key,
        Some(AuthorizedCategory::Community),
        1_700_000_000,
    )
    .unwrap();
    let twice = sign_with_key(
        &once,
        &key,
        Some(AuthorizedCategory::Partner),
        1_700_000_001,
    )
    .unwrap();
    let archive = read_archive(&twice, &DecodeLimits::default()).unwrap();
    let count = archive
        .entries
        .iter()
        .filter(|(n, _)| n == ".verification.dify.json")
        .count();
    assert_eq!(count, 1);
    assert_eq!(
        verify(&twice, &keys_with(public))
            .unwrap()
            .unwrap()
            .authorized_category,
        AuthorizedCategory::Partner
    );
}
