//! The container image and the compose override, without Docker: the
//! override replaces Dify's `plugin_daemon` service with the names Dify's
//! docker-compose publishes, plugind accepts that environment, the
//! entrypoint translates the reference's spellings, and the image's install
//! script passes its safe modes (`--check`, `--prefix`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Dify's service of the plugin daemon, in `docker/docker-compose.yaml`
/// (langgenius/dify, as published; read at commit 88e9dfa).
const DIFY_SERVICE: &str = "plugin_daemon";
/// Its storage volume.
const DIFY_VOLUME: &str = "./volumes/plugin_daemon:/app/storage";
/// Its `environment:` block, name and value expression, in Dify's order.
const DIFY_ENVIRONMENT: &[(&str, &str)] = &[
    ("DB_DATABASE", "${DB_PLUGIN_DATABASE:-dify_plugin}"),
    ("DB_SSL_MODE", "${DB_SSL_MODE:-disable}"),
    ("SERVER_PORT", "${PLUGIN_DAEMON_PORT:-5002}"),
    (
        "SERVER_KEY",
        "${PLUGIN_DAEMON_KEY:-lYkiYYT6owG+71oLerGzA7GXCgOT++6ovaezWAjpCjf+Sjc3ZtU+qUEi}",
    ),
    (
        "MAX_PLUGIN_PACKAGE_SIZE",
        "${PLUGIN_MAX_PACKAGE_SIZE:-52428800}",
    ),
    ("PPROF_ENABLED", "${PLUGIN_PPROF_ENABLED:-false}"),
    (
        "DIFY_INNER_API_URL",
        "${PLUGIN_DIFY_INNER_API_URL:-http://api:5001}",
    ),
    (
        "DIFY_INNER_API_KEY",
        "${PLUGIN_DIFY_INNER_API_KEY:-QaHbTe77CtuXmsfyhR7+vRjI/+XbV1AaFy691iy+kGDv2Jvy0/eAh8Y1}",
    ),
    (
        "PLUGIN_REMOTE_INSTALLING_HOST",
        "${PLUGIN_DEBUGGING_HOST:-0.0.0.0}",
    ),
    (
        "PLUGIN_REMOTE_INSTALLING_PORT",
        "${PLUGIN_DEBUGGING_PORT:-5003}",
    ),
    (
        "PLUGIN_WORKING_PATH",
        "${PLUGIN_WORKING_PATH:-/app/storage/cwd}",
    ),
    (
        "FORCE_VERIFYING_SIGNATURE",
        "${FORCE_VERIFYING_SIGNATURE:-true}",
    ),
    (
        "PYTHON_ENV_INIT_TIMEOUT",
        "${PLUGIN_PYTHON_ENV_INIT_TIMEOUT:-120}",
    ),
    (
        "PLUGIN_MAX_EXECUTION_TIMEOUT",
        "${PLUGIN_MAX_EXECUTION_TIMEOUT:-600}",
    ),
    (
        "PLUGIN_STDIO_BUFFER_SIZE",
        "${PLUGIN_STDIO_BUFFER_SIZE:-1024}",
    ),
    (
        "PLUGIN_STDIO_MAX_BUFFER_SIZE",
        "${PLUGIN_STDIO_MAX_BUFFER_SIZE:-5242880}",
    ),
    ("PIP_MIRROR_URL", "${PIP_MIRROR_URL:-}"),
    ("PLUGIN_STORAGE_TYPE", "${PLUGIN_STORAGE_TYPE:-local}"),
    (
        "PLUGIN_STORAGE_LOCAL_ROOT",
        "${PLUGIN_STORAGE_LOCAL_ROOT:-/app/storage}",
    ),
    ("PLUGIN_INSTALLED_PATH", "${PLUGIN_INSTALLED_PATH:-plugin}"),
    (
        "PLUGIN_PACKAGE_CACHE_PATH",
        "${PLUGIN_PACKAGE_CACHE_PATH:-plugin_packages}",
    ),
    (
        "PLUGIN_MEDIA_CACHE_PATH",
        "${PLUGIN_MEDIA_CACHE_PATH:-assets}",
    ),
    (
        "PLUGIN_STORAGE_OSS_BUCKET",
        "${PLUGIN_STORAGE_OSS_BUCKET:-}",
    ),
    (
        "S3_USE_AWS_MANAGED_IAM",
        "${PLUGIN_S3_USE_AWS_MANAGED_IAM:-false}",
    ),
    ("S3_USE_AWS", "${PLUGIN_S3_USE_AWS:-false}"),
    ("S3_ENDPOINT", "${PLUGIN_S3_ENDPOINT:-}"),
    ("S3_USE_PATH_STYLE", "${PLUGIN_S3_USE_PATH_STYLE:-false}"),
    ("AWS_ACCESS_KEY", "${PLUGIN_AWS_ACCESS_KEY:-}"),
    ("AWS_SECRET_KEY", "${PLUGIN_AWS_SECRET_KEY:-}"),
    ("AWS_REGION", "${PLUGIN_AWS_REGION:-}"),
    (
        "AZURE_BLOB_STORAGE_CONNECTION_STRING",
        "${PLUGIN_AZURE_BLOB_STORAGE_CONNECTION_STRING:-}",
    ),
    (
        "AZURE_BLOB_STORAGE_CONTAINER_NAME",
        "${PLUGIN_AZURE_BLOB_STORAGE_CONTAINER_NAME:-}",
    ),
    (
        "TENCENT_COS_SECRET_KEY",
        "${PLUGIN_TENCENT_COS_SECRET_KEY:-}",
    ),
    ("TENCENT_COS_SECRET_ID", "${PLUGIN_TENCENT_COS_SECRET_ID:-}"),
    ("TENCENT_COS_REGION", "${PLUGIN_TENCENT_COS_REGION:-}"),
    ("ALIYUN_OSS_REGION", "${PLUGIN_ALIYUN_OSS_REGION:-}"),
    ("ALIYUN_OSS_ENDPOINT", "${PLUGIN_ALIYUN_OSS_ENDPOINT:-}"),
    (
        "ALIYUN_OSS_ACCESS_KEY_ID",
        "${PLUGIN_ALIYUN_OSS_ACCESS_KEY_ID:-}",
    ),
    (
        "ALIYUN_OSS_ACCESS_KEY_SECRET",
        "${PLUGIN_ALIYUN_OSS_ACCESS_KEY_SECRET:-}",
    ),
    (
        "ALIYUN_OSS_AUTH_VERSION",
        "${PLUGIN_ALIYUN_OSS_AUTH_VERSION:-v4}",
    ),
    ("ALIYUN_OSS_PATH", "${PLUGIN_ALIYUN_OSS_PATH:-}"),
    (
        "VOLCENGINE_TOS_ENDPOINT",
        "${PLUGIN_VOLCENGINE_TOS_ENDPOINT:-}",
    ),
    (
        "VOLCENGINE_TOS_ACCESS_KEY",
        "${PLUGIN_VOLCENGINE_TOS_ACCESS_KEY:-}",
    ),
    (
        "VOLCENGINE_TOS_SECRET_KEY",
        "${PLUGIN_VOLCENGINE_TOS_SECRET_KEY:-}",
    ),
    ("VOLCENGINE_TOS_REGION", "${PLUGIN_VOLCENGINE_TOS_REGION:-}"),
    ("SENTRY_ENABLED", "${PLUGIN_SENTRY_ENABLED:-false}"),
    ("SENTRY_DSN", "${PLUGIN_SENTRY_DSN:-}"),
];
/// What the service's env files (`envs/core-services/shared.env`,
/// `envs/databases/db-postgres.env`) give it among the names plugind reads.
const DIFY_ENV_FILE_VALUES: &[(&str, &str)] = &[
    ("DB_TYPE", "postgresql"),
    ("DB_HOST", "db_postgres"),
    ("DB_PORT", "5432"),
    ("DB_USERNAME", "postgres"),
    ("DB_PASSWORD", "difyai123456"),
    ("LOG_LEVEL", "INFO"),
    ("LOG_OUTPUT_FORMAT", "text"),
    ("LOG_FILE", "/app/logs/server.log"),
    ("UV_CACHE_DIR", "/tmp/.uv-cache"),
];
/// Names Dify passes that are not plugind settings, and what becomes of them.
const NOT_SETTINGS: &[(&str, &str)] = &[
    ("PPROF_ENABLED", "the Go daemon's profiler"),
    (
        "PLUGIN_STDIO_BUFFER_SIZE",
        "the Go reader's first buffer; plugind's line codec grows on its own",
    ),
    (
        "PLUGIN_STDIO_MAX_BUFFER_SIZE",
        "entrypoint: PLUGIN_RUNTIME_MAX_BUFFER_SIZE",
    ),
    (
        "S3_USE_AWS_MANAGED_IAM",
        "the AWS default credential chain takes roles as they come",
    ),
    ("S3_USE_AWS", "AWS_ENDPOINT_URL unset means AWS itself"),
    ("S3_ENDPOINT", "entrypoint: AWS_ENDPOINT_URL"),
    ("AWS_ACCESS_KEY", "entrypoint: AWS_ACCESS_KEY_ID"),
    ("AWS_SECRET_KEY", "entrypoint: AWS_SECRET_ACCESS_KEY"),
    (
        "AZURE_BLOB_STORAGE_CONNECTION_STRING",
        "storage plugind does not offer",
    ),
    (
        "AZURE_BLOB_STORAGE_CONTAINER_NAME",
        "storage plugind does not offer",
    ),
    ("TENCENT_COS_SECRET_KEY", "storage plugind does not offer"),
    ("TENCENT_COS_SECRET_ID", "storage plugind does not offer"),
    ("TENCENT_COS_REGION", "storage plugind does not offer"),
    ("ALIYUN_OSS_REGION", "storage plugind does not offer"),
    ("ALIYUN_OSS_ENDPOINT", "storage plugind does not offer"),
    ("ALIYUN_OSS_ACCESS_KEY_ID", "storage plugind does not offer"),
    (
        "ALIYUN_OSS_ACCESS_KEY_SECRET",
        "storage plugind does not offer",
    ),
    ("ALIYUN_OSS_AUTH_VERSION", "storage plugind does not offer"),
    ("ALIYUN_OSS_PATH", "storage plugind does not offer"),
    ("VOLCENGINE_TOS_ENDPOINT", "storage plugind does not offer"),
    (
        "VOLCENGINE_TOS_ACCESS_KEY",
        "storage plugind does not offer",
    ),
    (
        "VOLCENGINE_TOS_SECRET_KEY",
        "storage plugind does not offer",
    ),
    ("VOLCENGINE_TOS_REGION", "storage plugind does not offer"),
    ("SENTRY_ENABLED", "no Sentry reporting"),
    ("SENTRY_DSN", "no Sentry reporting"),
];

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn override_service() -> serde_yaml::Mapping {
    let text = std::fs::read_to_string(path("deploy/docker-compose.plugind.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("the override is YAML");
    let services = doc["services"].as_mapping().expect("services");
    assert_eq!(services.len(), 1, "only Dify's service is overridden");
    services[DIFY_SERVICE]
        .as_mapping()
        .expect("the service keeps Dify's name")
        .clone()
}

fn text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
    }
}

#[test]
fn the_override_keeps_difys_service_environment_and_volume() {
    let service = override_service();
    let env: Vec<(String, String)> = service["environment"]
        .as_mapping()
        .expect("environment is a map, as in Dify's file")
        .iter()
        .map(|(k, v)| (text(k), text(v)))
        .collect();
    let dify: Vec<(String, String)> = DIFY_ENVIRONMENT
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(env, dify);
    let volumes: Vec<String> = service["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert_eq!(volumes, vec![DIFY_VOLUME.to_owned()]);
    // Dify's own port mapping stays: Compose would append restated ports.
    assert!(!service.contains_key("ports"));
    assert!(text(&service["image"]).contains("plugind"));
    // The health check asks the port SERVER_PORT gets.
    let server_port = DIFY_ENVIRONMENT
        .iter()
        .find(|(k, _)| *k == "SERVER_PORT")
        .unwrap()
        .1;
    let check: Vec<String> = service["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert!(
        check
            .iter()
            .any(|a| a.contains(&format!("127.0.0.1:{server_port}/health/check"))),
        "{check:?}"
    );
}

#[test]
fn every_name_dify_passes_is_a_setting_or_accounted_for() {
    let settings: Vec<String> = plugind::settings::variable_names()
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    for (name, _) in DIFY_ENVIRONMENT.iter().chain(DIFY_ENV_FILE_VALUES) {
        let read = settings.iter().any(|s| s == name);
        let accounted = NOT_SETTINGS.iter().any(|(n, _)| n == name);
        assert!(
            read ^ accounted,
            "{name}: read by plugind: {read}, listed as not read: {accounted}"
        );
    }
}

/// `${NAME:-default}` → default; anything else as is.
fn compose_default(expr: &str) -> String {
    match expr.strip_prefix("${").and_then(|e| e.strip_suffix('}')) {
        Some(inner) => inner
            .split_once(":-")
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default(),
        None => expr.to_owned(),
    }
}

fn entrypoint() -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg(path("deploy/docker-entrypoint.sh")).env_clear();
    cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[test]
fn plugind_takes_difys_environment_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut env: BTreeMap<String, String> = DIFY_ENVIRONMENT
        .iter()
        .map(|(k, v)| (k.to_string(), compose_default(v)))
        .chain(
            DIFY_ENV_FILE_VALUES
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .collect();
    // The container's paths, moved under the test's folder.
    let storage = dir.path().join("app/storage");
    env.insert(
        "PLUGIN_STORAGE_LOCAL_ROOT".into(),
        storage.display().to_string(),
    );
    env.insert(
        "PLUGIN_WORKING_PATH".into(),
        storage.join("cwd").display().to_string(),
    );
    env.insert(
        "LOG_FILE".into(),
        dir.path().join("app/logs/server.log").display().to_string(),
    );
    env.insert(
        "UV_CACHE_DIR".into(),
        dir.path().join("uv-cache").display().to_string(),
    );
    let out = entrypoint()
        .args(["doctor", "--timeout", "3"])
        .envs(&env)
        .env("PLUGIND_BIN", env!("CARGO_BIN_EXE_plugind"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} line:\n{stdout}"))
            .to_owned()
    };
    // Every value parses and validates; empty ones (PIP_MIRROR_URL,
    // PLUGIN_STORAGE_OSS_BUCKET, AWS_REGION…) count as unset.
    assert!(line("settings").ends_with(" ok"), "{stdout}");
    // DB_HOST from Dify's env file selects PostgreSQL on its host (which
    // does not exist here), DB_DATABASE comes from the compose file.
    let db = line("database");
    assert!(db.contains("db_postgres:5432"), "{db}");
    assert!(
        line("dify inner api").contains("http://api:5001"),
        "{stdout}"
    );
}

#[test]
fn the_entrypoint_translates_the_references_spellings() {
    let show = r#"printf '%s|%s|%s|%s' "${AWS_ENDPOINT_URL:-}" "${AWS_ACCESS_KEY_ID:-}" "${AWS_SECRET_ACCESS_KEY:-}" "${PLUGIN_RUNTIME_MAX_BUFFER_SIZE:-}""#;
    let run = |env: &[(&str, &str)]| {
        let out = entrypoint()
            .env("PLUGIND_BIN", "/bin/sh")
            .envs(env.iter().copied())
            .args(["-c", show])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        run(&[
            ("S3_ENDPOINT", "http://minio:9000"),
            ("AWS_ACCESS_KEY", "ak"),
            ("AWS_SECRET_KEY", "sk"),
            ("PLUGIN_STDIO_MAX_BUFFER_SIZE", "1048576"),
        ]),
        "http://minio:9000|ak|sk|1048576"
    );
    // plugind's own names win; empty and default values change nothing.
    assert_eq!(
        run(&[
            ("S3_ENDPOINT", "http://minio:9000"),
            ("AWS_ENDPOINT_URL", "http://s3.local"),
            ("AWS_ACCESS_KEY", ""),
            ("PLUGIN_STDIO_MAX_BUFFER_SIZE", "5242880"),
        ]),
        "http://s3.local|||"
    );
    // No arguments: the daemon.
    let out = entrypoint()
        .env("PLUGIND_BIN", "/bin/echo")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "serve\n");
}

#[test]
fn the_image_runs_the_install_script_and_tini_first() {
    let dockerfile = std::fs::read_to_string(path("deploy/Dockerfile")).unwrap();
    let runtime = dockerfile.split("\nFROM ").last().expect("a runtime stage");
    assert!(runtime.starts_with("python:3.12"), "{runtime}");
    assert!(runtime.contains("RUN /tmp/plugind-deploy/install-runtime.sh"));
    assert!(runtime
        .contains(r#"ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/plugind-entrypoint"]"#));
    let script = std::fs::read_to_string(path("deploy/install-runtime.sh")).unwrap();
    assert!(script.contains(r#""$BIN_DIR/plugind-entrypoint""#));
}

/// Python 3.12 and uv of this machine, as scripts/test.sh exports them.
fn python312() -> String {
    for var in ["PYTHON312", "PYTHON_INTERPRETER_PATH"] {
        if let Ok(p) = std::env::var(var) {
            if !p.is_empty() {
                return p;
            }
        }
    }
    "python3.12".into()
}

fn uv() -> String {
    std::env::var("UV_PATH").unwrap_or_else(|_| "uv".into())
}

fn install_runtime(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(path("deploy/install-runtime.sh"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_install_script_check_validates_every_step_and_changes_nothing() {
    let prefix = tempfile::tempdir().unwrap();
    let py = python312();
    let (ok, text) = install_runtime(
        &[
            "--check",
            "--prefix",
            prefix.path().to_str().unwrap(),
            "--python",
            &py,
        ],
        &[],
    );
    assert!(ok, "{text}");
    for step in [
        "python:",
        "apt:",
        "would uv: pip install uv==",
        "would entrypoint:",
        "would create",
    ] {
        assert!(text.contains(step), "{step} missing in:\n{text}");
    }
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(std::fs::read_dir(prefix.path()).unwrap().count(), 0);
}

#[test]
fn the_install_script_refuses_another_python() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("python3.11");
    std::fs::write(&fake, "#!/bin/sh\necho 3.11\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, text) = install_runtime(&["--check", "--python", fake.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(text.contains("not 3.12"), "{text}");
}

#[test]
fn the_install_script_lays_out_the_image_in_a_prefix() {
    let prefix = tempfile::tempdir().unwrap();
    let uv = uv();
    let version = String::from_utf8(Command::new(&uv).arg("--version").output().unwrap().stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let py = python312();
    let (ok, text) = install_runtime(
        &[
            "--prefix",
            prefix.path().to_str().unwrap(),
            "--uv-from",
            &uv,
            "--python",
            &py,
        ],
        &[("UV_VERSION", &version)],
    );
    assert!(ok, "{text}");
    let bin = prefix.path().join("usr/local/bin");
    let out = Command::new(bin.join("uv"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&version));
    let entry = Command::new(bin.join("plugind-entrypoint"))
        .env("PLUGIND_BIN", "/bin/echo")
        .arg("doctor")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(entry.stdout).unwrap(), "doctor\n");
    use std::os::unix::fs::PermissionsExt;
    for dir in ["app/storage", "app/logs"] {
        let mode = std::fs::metadata(prefix.path().join(dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{dir}");
    }
    // A uv of another version than the pin is refused.
    let other = tempfile::tempdir().unwrap();
    let (ok, text) = install_runtime(
        &[
            "--prefix",
            other.path().to_str().unwrap(),
            "--uv-from",
            &uv,
            "--python",
            &py,
        ],
        &[("UV_VERSION", "0.0.1")],
    );
    assert!(!ok);
    assert!(text.contains("pins 0.0.1"), "{text}");
}
