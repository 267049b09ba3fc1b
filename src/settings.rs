//! Settings, parsed once at start-up from the environment (and `.env`), with
//! the reference daemon's variable names and defaults
//! (reference: `internal/types/app/config.go`, `default.go`).
//!
//! Every setting is also a long flag of `plugind serve`, so `--help` lists
//! each variable with its default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Args, ValueEnum};

/// A secret value that never prints.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Self(s.to_owned()))
    }
}

/// Where plugins run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Platform {
    /// Plugins run as child processes of the daemon.
    Local,
    /// Plugins run as AWS Lambda functions.
    Serverless,
}

/// Which database backs the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DbType {
    /// An embedded SQLite file under the storage root.
    Sqlite,
    /// A PostgreSQL server.
    #[value(alias = "postgres")]
    Postgresql,
}

/// Where packages, assets and artifacts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageType {
    /// The local filesystem, under PLUGIN_STORAGE_LOCAL_ROOT.
    Local,
    /// An S3 bucket (PLUGIN_STORAGE_OSS_BUCKET), or any S3-compatible
    /// server named by AWS_ENDPOINT_URL.
    #[value(name = "aws_s3")]
    AwsS3,
}

/// The instruction set of Lambda functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LambdaArch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "arm64")]
    Arm64,
}

impl LambdaArch {
    /// The name Lambda uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting of `plugind serve`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Settings (each flag can be set by its environment variable)")]
pub struct Settings {
    /// Address the HTTP server binds.
    #[arg(
        long,
        env = "SERVER_HOST",
        value_name = "SERVER_HOST",
        default_value = "0.0.0.0"
    )]
    pub server_host: String,

    /// Port of the HTTP server.
    #[arg(
        long,
        env = "SERVER_PORT",
        value_name = "SERVER_PORT",
        default_value_t = 5002
    )]
    pub server_port: u16,

    /// Key the Dify API server sends as X-Api-Key (Dify's PLUGIN_DAEMON_KEY).
    #[arg(
        long,
        env = "SERVER_KEY",
        value_name = "SERVER_KEY",
        hide_env_values = true
    )]
    pub server_key: Secret,

    /// Base URL of Dify's inner API, for backwards invocations.
    #[arg(long, env = "DIFY_INNER_API_URL", value_name = "DIFY_INNER_API_URL")]
    pub dify_inner_api_url: String,

    /// Key sent to Dify's inner API as X-Inner-Api-Key (Dify's PLUGIN_DIFY_INNER_API_KEY).
    #[arg(
        long,
        env = "DIFY_INNER_API_KEY",
        value_name = "DIFY_INNER_API_KEY",
        hide_env_values = true
    )]
    pub dify_inner_api_key: Secret,

    /// Longest wait, in milliseconds, to connect to Dify's inner API for a backwards invocation.
    #[arg(
        long,
        env = "DIFY_BACKWARDS_INVOCATION_WRITE_TIMEOUT",
        value_name = "DIFY_BACKWARDS_INVOCATION_WRITE_TIMEOUT",
        default_value_t = 5000
    )]
    pub dify_backwards_invocation_write_timeout: u64,

    /// Longest a backwards invocation to Dify's inner API may take, streamed reply included, in milliseconds.
    #[arg(
        long,
        env = "DIFY_BACKWARDS_INVOCATION_READ_TIMEOUT",
        value_name = "DIFY_BACKWARDS_INVOCATION_READ_TIMEOUT",
        default_value_t = 240000
    )]
    pub dify_backwards_invocation_read_timeout: u64,

    /// Where plugins run: local child processes or AWS Lambda.
    #[arg(
        long,
        env = "PLATFORM",
        value_name = "PLATFORM",
        value_enum,
        default_value = "local",
        ignore_case = true
    )]
    pub platform: Platform,

    /// Database kind. Unset: PostgreSQL when DB_HOST or DATABASE_URL is set, else embedded SQLite.
    #[arg(
        long,
        env = "DB_TYPE",
        value_name = "DB_TYPE",
        value_enum,
        ignore_case = true
    )]
    pub db_type: Option<DbType>,

    /// PostgreSQL host.
    #[arg(long, env = "DB_HOST", value_name = "DB_HOST")]
    pub db_host: Option<String>,

    /// PostgreSQL port.
    #[arg(long, env = "DB_PORT", value_name = "DB_PORT", default_value_t = 5432)]
    pub db_port: u16,

    /// PostgreSQL user.
    #[arg(
        long,
        env = "DB_USERNAME",
        value_name = "DB_USERNAME",
        default_value = "postgres"
    )]
    pub db_username: String,

    /// PostgreSQL password.
    #[arg(
        long,
        env = "DB_PASSWORD",
        value_name = "DB_PASSWORD",
        hide_env_values = true
    )]
    pub db_password: Option<Secret>,

    /// PostgreSQL database; created at start-up if missing.
    #[arg(
        long,
        env = "DB_DATABASE",
        value_name = "DB_DATABASE",
        default_value = "dify_plugin"
    )]
    pub db_database: String,

    /// PostgreSQL sslmode: disable, prefer, require, verify-ca or verify-full.
    #[arg(long, env = "DB_SSL_MODE", value_name = "DB_SSL_MODE", default_value = "disable",
          value_parser = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"])]
    pub db_ssl_mode: String,

    /// Full database URL (sqlite://… or postgres://…); overrides every DB_* setting.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,

    /// Largest number of open database connections.
    #[arg(
        long,
        env = "DB_MAX_OPEN_CONNS",
        value_name = "DB_MAX_OPEN_CONNS",
        default_value_t = 30
    )]
    pub db_max_open_conns: u32,

    /// Several replicas over one PostgreSQL: node identity, the internal
    /// listener, heartbeats and the SIGTERM drain.
    #[command(flatten)]
    pub cluster: ClusterSettings,

    /// Storage backend for packages and assets.
    #[arg(
        long,
        env = "PLUGIN_STORAGE_TYPE",
        value_name = "PLUGIN_STORAGE_TYPE",
        value_enum,
        default_value = "local",
        ignore_case = true
    )]
    pub plugin_storage_type: StorageType,

    /// Root folder of local storage (packages, assets, the SQLite file).
    #[arg(
        long,
        env = "PLUGIN_STORAGE_LOCAL_ROOT",
        value_name = "PLUGIN_STORAGE_LOCAL_ROOT",
        default_value = "storage"
    )]
    pub plugin_storage_local_root: PathBuf,

    /// S3 bucket for packages, assets and Lambda artifacts (PLUGIN_STORAGE_TYPE=aws_s3).
    #[arg(
        long,
        env = "PLUGIN_STORAGE_OSS_BUCKET",
        value_name = "PLUGIN_STORAGE_OSS_BUCKET"
    )]
    pub plugin_storage_oss_bucket: Option<String>,

    /// Key prefix inside the S3 bucket (e.g. `plugind/`); empty for the bucket root.
    #[arg(
        long,
        env = "PLUGIN_STORAGE_S3_PREFIX",
        value_name = "PLUGIN_STORAGE_S3_PREFIX",
        default_value = ""
    )]
    pub plugin_storage_s3_prefix: String,

    /// AWS region of the bucket and the Lambda functions. Unset: the AWS default chain.
    #[arg(long, env = "AWS_REGION", value_name = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// Endpoint of an S3/Lambda-compatible server (LocalStack, moto). Unset: AWS itself.
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,

    /// Address S3 buckets by path (`host/bucket/key`) instead of by virtual host.
    #[arg(long, env = "S3_USE_PATH_STYLE", value_name = "S3_USE_PATH_STYLE", default_value = "true", action = clap::ArgAction::Set)]
    pub s3_use_path_style: bool,

    /// IAM role the plugin Lambda functions run as (PLATFORM=serverless).
    #[arg(
        long,
        env = "PLUGIN_LAMBDA_ROLE_ARN",
        value_name = "PLUGIN_LAMBDA_ROLE_ARN"
    )]
    pub plugin_lambda_role_arn: Option<String>,

    /// Prefix of the names of plugin Lambda functions.
    #[arg(
        long,
        env = "PLUGIN_LAMBDA_FUNCTION_PREFIX",
        value_name = "PLUGIN_LAMBDA_FUNCTION_PREFIX",
        default_value = "plugind-"
    )]
    pub plugin_lambda_function_prefix: String,

    /// Architecture of plugin Lambda functions.
    #[arg(
        long,
        env = "PLUGIN_LAMBDA_ARCH",
        value_name = "PLUGIN_LAMBDA_ARCH",
        value_enum,
        default_value = "x86_64"
    )]
    pub plugin_lambda_arch: LambdaArch,

    /// Timeout of plugin Lambda functions, in seconds (at most 900).
    #[arg(
        long,
        env = "PLUGIN_LAMBDA_TIMEOUT",
        value_name = "PLUGIN_LAMBDA_TIMEOUT",
        default_value_t = 900
    )]
    pub plugin_lambda_timeout: u64,

    /// Managed Python runtime of plugin Lambda functions.
    #[arg(
        long,
        env = "PLUGIN_LAMBDA_PYTHON_RUNTIME",
        value_name = "PLUGIN_LAMBDA_PYTHON_RUNTIME",
        default_value = "python3.12"
    )]
    pub plugin_lambda_python_runtime: String,

    /// Folder holding the plugin-runner bootstrap per architecture (`<dir>/x86_64/plugin-runner`, `<dir>/arm64/plugin-runner`). Unset: the `plugin-runner` next to the plugind executable, for this machine's architecture only.
    #[arg(
        long,
        env = "PLUGIN_LAMBDA_BOOTSTRAP_DIR",
        value_name = "PLUGIN_LAMBDA_BOOTSTRAP_DIR"
    )]
    pub plugin_lambda_bootstrap_dir: Option<PathBuf>,

    /// URL of this daemon as Lambda functions reach it, for plugins' backwards calls.
    #[arg(
        long,
        env = "PLUGIN_SERVERLESS_CALLBACK_URL",
        value_name = "PLUGIN_SERVERLESS_CALLBACK_URL"
    )]
    pub plugin_serverless_callback_url: Option<String>,

    /// Key that signs the backwards-invocation tokens given to Lambda functions. Unset: derived from SERVER_KEY.
    #[arg(
        long,
        env = "PLUGIN_SERVERLESS_TOKEN_SECRET",
        value_name = "PLUGIN_SERVERLESS_TOKEN_SECRET",
        hide_env_values = true
    )]
    pub plugin_serverless_token_secret: Option<Secret>,

    /// How many times a throttled or failed (5xx) Lambda invocation is retried before its first chunk.
    #[arg(
        long,
        env = "MAX_SERVERLESS_RETRY_TIMES",
        value_name = "MAX_SERVERLESS_RETRY_TIMES",
        default_value_t = 3
    )]
    pub max_serverless_retry_times: u32,

    /// Where installed packages are kept, inside the storage.
    #[arg(
        long,
        env = "PLUGIN_INSTALLED_PATH",
        value_name = "PLUGIN_INSTALLED_PATH",
        default_value = "plugin"
    )]
    pub plugin_installed_path: String,

    /// Where uploaded packages are kept, inside the storage.
    #[arg(
        long,
        env = "PLUGIN_PACKAGE_CACHE_PATH",
        value_name = "PLUGIN_PACKAGE_CACHE_PATH",
        default_value = "plugin_packages"
    )]
    pub plugin_package_cache_path: String,

    /// Where plugin assets (icons…) are kept, inside the storage.
    #[arg(
        long,
        env = "PLUGIN_MEDIA_CACHE_PATH",
        value_name = "PLUGIN_MEDIA_CACHE_PATH",
        default_value = "assets"
    )]
    pub plugin_media_cache_path: String,

    /// Folder where plugins are unpacked and run. Unset: <PLUGIN_STORAGE_LOCAL_ROOT>/cwd.
    #[arg(long, env = "PLUGIN_WORKING_PATH", value_name = "PLUGIN_WORKING_PATH")]
    pub plugin_working_path: Option<PathBuf>,

    /// Largest accepted plugin package, in bytes (compressed and uncompressed).
    #[arg(
        long,
        env = "MAX_PLUGIN_PACKAGE_SIZE",
        value_name = "MAX_PLUGIN_PACKAGE_SIZE",
        default_value_t = 52_428_800
    )]
    pub max_plugin_package_size: u64,

    /// Largest accepted bundle, in bytes.
    #[arg(
        long,
        env = "MAX_BUNDLE_PACKAGE_SIZE",
        value_name = "MAX_BUNDLE_PACKAGE_SIZE",
        default_value_t = 629_145_600
    )]
    pub max_bundle_package_size: u64,

    /// Refuse unsigned or badly signed packages when the upload asks for verification.
    #[arg(long, env = "FORCE_VERIFYING_SIGNATURE", value_name = "FORCE_VERIFYING_SIGNATURE", default_value = "true", action = clap::ArgAction::Set)]
    pub force_verifying_signature: bool,

    /// Also accept signatures made with the keys of THIRD_PARTY_SIGNATURE_VERIFICATION_PUBLIC_KEYS.
    #[arg(long, env = "THIRD_PARTY_SIGNATURE_VERIFICATION_ENABLED", value_name = "THIRD_PARTY_SIGNATURE_VERIFICATION_ENABLED", default_value = "false", action = clap::ArgAction::Set)]
    pub third_party_signature_verification_enabled: bool,

    /// Comma-separated paths of PEM public keys for third-party signatures.
    #[arg(
        long,
        env = "THIRD_PARTY_SIGNATURE_VERIFICATION_PUBLIC_KEYS",
        value_name = "THIRD_PARTY_SIGNATURE_VERIFICATION_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    pub third_party_signature_verification_public_keys: Vec<PathBuf>,

    /// Longest a plugin invocation may run, in seconds.
    #[arg(
        long,
        env = "PLUGIN_MAX_EXECUTION_TIMEOUT",
        value_name = "PLUGIN_MAX_EXECUTION_TIMEOUT",
        default_value_t = 600
    )]
    pub plugin_max_execution_timeout: u64,

    /// Python used for plugins whose manifest asks for a version not found on this machine
    /// (after `uv python install` of that version failed), and to find or install uv when uv
    /// is not otherwise found. Unset: `python3` on PATH.
    #[arg(
        long,
        env = "PYTHON_INTERPRETER_PATH",
        value_name = "PYTHON_INTERPRETER_PATH"
    )]
    pub python_interpreter_path: Option<PathBuf>,

    /// The uv binary that builds plugin environments. Unset: `uv` on PATH, else the uv Python
    /// package, else one the daemon installs with pip into <PLUGIN_WORKING_PATH>/.tools/uv.
    #[arg(long, env = "UV_PATH", value_name = "UV_PATH")]
    pub uv_path: Option<PathBuf>,

    /// Package index URL passed to uv (`-i`) when installing plugin dependencies, and to pip
    /// (`--index-url`) when installing uv.
    #[arg(long, env = "PIP_MIRROR_URL", value_name = "PIP_MIRROR_URL")]
    pub pip_mirror_url: Option<String>,

    /// Extra arguments (split on whitespace) appended to every uv install command.
    #[arg(long, env = "PIP_EXTRA_ARGS", value_name = "PIP_EXTRA_ARGS")]
    pub pip_extra_args: Option<String>,

    /// uv's download cache, shared by all plugins. Unset: <PLUGIN_WORKING_PATH>/.uv-cache.
    #[arg(long, env = "UV_CACHE_DIR", value_name = "UV_CACHE_DIR")]
    pub uv_cache_dir: Option<PathBuf>,

    /// Seconds an environment build may go without any output from uv before it is killed.
    #[arg(
        long,
        env = "PYTHON_ENV_INIT_TIMEOUT",
        value_name = "PYTHON_ENV_INIT_TIMEOUT",
        default_value_t = 120
    )]
    pub python_env_init_timeout: u64,

    /// How many local plugins may build their environment and start at the same time.
    #[arg(
        long,
        env = "PLUGIN_LOCAL_LAUNCHING_CONCURRENT",
        value_name = "PLUGIN_LOCAL_LAUNCHING_CONCURRENT",
        default_value_t = 2
    )]
    pub plugin_local_launching_concurrent: usize,

    /// Longest line, in bytes, a plugin may write to the daemon; longer lines are dropped.
    #[arg(
        long,
        env = "PLUGIN_RUNTIME_MAX_BUFFER_SIZE",
        value_name = "PLUGIN_RUNTIME_MAX_BUFFER_SIZE",
        default_value_t = 5_242_880
    )]
    pub plugin_runtime_max_buffer_size: usize,

    /// Comma-separated names of environment variables local plugins get from the daemon's
    /// environment, on purpose. Plugins otherwise start from an empty environment plus an
    /// allow-list (PATH, their own HOME and TMPDIR, LANG/LC_*/TZ, SSL_CERT_FILE,
    /// SSL_CERT_DIR, REQUESTS_CA_BUNDLE, HTTP(S)_PROXY/NO_PROXY) and never see the daemon's
    /// keys or database settings.
    #[arg(
        long,
        env = "PLUGIN_ENV_PASSTHROUGH",
        value_name = "PLUGIN_ENV_PASSTHROUGH",
        value_delimiter = ','
    )]
    pub plugin_env_passthrough: Vec<String>,

    /// When plugind runs as root, each local plugin runs as its own uid (and gid) from this
    /// inclusive range, with a private HOME and temp folder; its code folder stays the
    /// daemon's. Not root: plugins run as the daemon's uid, with the clean environment,
    /// verified read-only code, Landlock and limits still in force.
    #[arg(
        long,
        env = "PLUGIN_UID_RANGE",
        value_name = "PLUGIN_UID_RANGE",
        default_value = "50000-59999",
        value_parser = parse_uid_range
    )]
    pub plugin_uid_range: (u32, u32),

    /// Confine local plugins with Landlock where the kernel has it: read-only access to their
    /// code, venv, interpreter and system folders, writes only to their own data folder.
    #[arg(long, env = "PLUGIN_LANDLOCK_ENABLED", value_name = "PLUGIN_LANDLOCK_ENABLED", default_value = "true", action = clap::ArgAction::Set)]
    pub plugin_landlock_enabled: bool,

    /// Accept debugging plugins (INSTALL_METHOD=remote) over TCP and serve the debugging key route.
    #[arg(long, env = "PLUGIN_REMOTE_INSTALLING_ENABLED", value_name = "PLUGIN_REMOTE_INSTALLING_ENABLED", default_value = "true", action = clap::ArgAction::Set)]
    pub plugin_remote_installing_enabled: bool,

    /// Address the debugging TCP listener binds.
    #[arg(
        long,
        env = "PLUGIN_REMOTE_INSTALLING_HOST",
        value_name = "PLUGIN_REMOTE_INSTALLING_HOST",
        default_value = "0.0.0.0"
    )]
    pub plugin_remote_installing_host: String,

    /// Port of the debugging TCP listener (plugins' REMOTE_INSTALL_PORT).
    #[arg(
        long,
        env = "PLUGIN_REMOTE_INSTALLING_PORT",
        value_name = "PLUGIN_REMOTE_INSTALLING_PORT",
        default_value_t = 5003
    )]
    pub plugin_remote_installing_port: u16,

    /// Most debugging connections open at once, all tenants together.
    #[arg(
        long,
        env = "PLUGIN_REMOTE_INSTALLING_MAX_CONN",
        value_name = "PLUGIN_REMOTE_INSTALLING_MAX_CONN",
        default_value_t = 256
    )]
    pub plugin_remote_installing_max_conn: usize,

    /// Most debugging connections one tenant may have open at once.
    #[arg(
        long,
        env = "PLUGIN_REMOTE_INSTALLING_MAX_SINGLE_TENANT_CONN",
        value_name = "PLUGIN_REMOTE_INSTALLING_MAX_SINGLE_TENANT_CONN",
        default_value_t = 5
    )]
    pub plugin_remote_installing_max_single_tenant_conn: usize,

    /// Log level: TRACE, DEBUG, INFO, WARN or ERROR (or a tracing filter such as plugind=debug).
    #[arg(
        long,
        env = "LOG_LEVEL",
        value_name = "LOG_LEVEL",
        default_value = "INFO"
    )]
    pub log_level: String,

    /// Log line format.
    #[arg(
        long,
        env = "LOG_OUTPUT_FORMAT",
        value_name = "LOG_OUTPUT_FORMAT",
        value_enum,
        default_value = "text",
        ignore_case = true
    )]
    pub log_output_format: LogFormat,

    // --- Operator settings of the reference daemon (config.go), with its
    // defaults. Those plugind has no use for are accepted and named once in
    // the log at start (see `Settings::inert_settings`).
    /// Also append every log line to this file (its folder is created). Unset: standard output only.
    #[arg(long, env = "LOG_FILE", value_name = "LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Time zone of the reference's log timestamps. plugind writes every time in UTC and only accepts the setting.
    #[arg(
        long,
        env = "SERVER_TZ",
        value_name = "SERVER_TZ",
        default_value = "UTC"
    )]
    pub server_tz: String,

    /// Longest an install task may take per plugin (environment build and launch included), in minutes.
    #[arg(
        long,
        env = "PLUGIN_INSTALL_TIMEOUT",
        value_name = "PLUGIN_INSTALL_TIMEOUT",
        default_value_t = 15
    )]
    pub plugin_install_timeout: u64,

    /// Resolve a plugin's pyproject.toml afresh instead of installing its uv.lock as frozen. Accepted; plugind installs a present uv.lock as is.
    #[arg(long, env = "PLUGIN_IGNORE_UV_LOCK", value_name = "PLUGIN_IGNORE_UV_LOCK", default_value = "false", action = clap::ArgAction::Set)]
    pub plugin_ignore_uv_lock: bool,

    /// The reference probes package mirrors at start and picks the fastest (its default: true). Accepted; plugind uses PIP_MIRROR_URL only and never picks an index by itself.
    #[arg(long, env = "PIP_MIRROR_AUTO_DETECT", value_name = "PIP_MIRROR_AUTO_DETECT", action = clap::ArgAction::Set)]
    pub pip_mirror_auto_detect: Option<bool>,

    /// Comma-separated mirror URLs the reference's auto-detection probes. Accepted, unused (see PIP_MIRROR_AUTO_DETECT).
    #[arg(
        long,
        env = "PIP_MIRROR_CANDIDATES",
        value_name = "PIP_MIRROR_CANDIDATES",
        value_delimiter = ','
    )]
    pub pip_mirror_candidates: Vec<String>,

    /// Serve Prometheus metrics at /metrics.
    #[arg(long, env = "PROMETHEUS_ENABLED", value_name = "PROMETHEUS_ENABLED", default_value = "true", action = clap::ArgAction::Set)]
    pub prometheus_enabled: bool,

    /// Serve plugin endpoints at /e/{hook_id}/…; when false those routes answer 404.
    #[arg(long, env = "PLUGIN_ENDPOINT_ENABLED", value_name = "PLUGIN_ENDPOINT_ENABLED", default_value = "true", action = clap::ArgAction::Set)]
    pub plugin_endpoint_enabled: bool,

    /// Largest message, in bytes, in a reply of Dify's inner API to a backwards invocation.
    #[arg(
        long,
        env = "RESPONSE_MAX_BUFFER_SIZE",
        value_name = "RESPONSE_MAX_BUFFER_SIZE",
        default_value_t = 31_457_280
    )]
    pub response_max_buffer_size: usize,

    /// Largest invocation payload, in bytes, sent to a plugin's Lambda function (Lambda itself takes at most 6 MiB).
    #[arg(
        long,
        env = "MAX_SERVERLESS_REQUEST_BYTES",
        value_name = "MAX_SERVERLESS_REQUEST_BYTES",
        default_value_t = 5_242_880
    )]
    pub max_serverless_request_bytes: usize,

    /// Export traces over OTLP/HTTP: a span per HTTP request (continuing an incoming `traceparent`), per dispatch and per plugin session.
    #[arg(long, env = "ENABLE_OTEL", value_name = "ENABLE_OTEL", default_value = "false", action = clap::ArgAction::Set)]
    pub enable_otel: bool,

    /// Full URL traces are posted to. Unset: <OTLP_BASE_ENDPOINT>/v1/traces.
    #[arg(long, env = "OTLP_TRACE_ENDPOINT", value_name = "OTLP_TRACE_ENDPOINT")]
    pub otlp_trace_endpoint: Option<String>,

    /// Base URL of the OTLP/HTTP collector.
    #[arg(
        long,
        env = "OTLP_BASE_ENDPOINT",
        value_name = "OTLP_BASE_ENDPOINT",
        default_value = "http://localhost:4318"
    )]
    pub otlp_base_endpoint: String,

    /// Sent to the collector as `Authorization: Bearer <key>`.
    #[arg(
        long,
        env = "OTEL_API_KEY",
        value_name = "OTEL_API_KEY",
        hide_env_values = true
    )]
    pub otel_api_key: Option<Secret>,

    /// OTLP transport; plugind exports over HTTP only (`http/protobuf`).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_name = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf"
    )]
    pub otel_exporter_otlp_protocol: String,

    /// Share of traces started here that are kept (0.0 to 1.0); a caller's sampling decision is followed.
    #[arg(
        long,
        env = "OTEL_SAMPLING_RATE",
        value_name = "OTEL_SAMPLING_RATE",
        default_value = "1.0"
    )]
    pub otel_sampling_rate: f64,

    /// Key that seals MCP server credentials at rest (any high-entropy string). Unset: derived from SERVER_KEY.
    #[arg(
        long,
        env = "MCP_ENCRYPTION_KEY",
        value_name = "MCP_ENCRYPTION_KEY",
        hide_env_values = true
    )]
    pub mcp_encryption_key: Option<Secret>,

    /// Comma-separated browser origins (scheme://host[:port], `*` for any) allowed to call MCP servers; same-origin requests are always allowed.
    #[arg(
        long,
        env = "MCP_ALLOWED_ORIGINS",
        value_name = "MCP_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub mcp_allowed_origins: Vec<String>,

    /// Comma-separated Host names (or host:port) MCP servers answer to; `*` accepts any. Set it to the public host name in real deployments.
    #[arg(
        long,
        env = "MCP_ALLOWED_HOSTS",
        value_name = "MCP_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1"
    )]
    pub mcp_allowed_hosts: Vec<String>,

    /// Public base URL of this daemon (e.g. https://mcp.example.com), used in MCP links and OAuth metadata. Unset: taken from each request's Host.
    #[arg(long, env = "MCP_PUBLIC_URL", value_name = "MCP_PUBLIC_URL")]
    pub mcp_public_url: Option<String>,

    // --- Idle local plugins ---------------------------------------------------
    /// Seconds a local plugin process may go without a session before it is stopped; the next
    /// call starts it again and waits for its first heartbeat. 0 keeps every plugin running.
    /// An open session (a streamed answer, a streamed endpoint) keeps its plugin up. With
    /// idle stopping on, a daemon restart starts plugins at their first call, not all at once.
    #[arg(
        long,
        env = "PLUGIN_LOCAL_IDLE_TIMEOUT",
        value_name = "PLUGIN_LOCAL_IDLE_TIMEOUT",
        default_value_t = 600
    )]
    pub plugin_local_idle_timeout: u64,
}

/// Settings of running several replicas over one PostgreSQL: each replica
/// is a node with a heartbeat, and replicas call each other on an internal
/// listener (only with PostgreSQL; on SQLite the daemon is its one node).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Replicas (several daemons over one PostgreSQL)")]
pub struct ClusterSettings {
    /// This replica's node id. Unset: a fresh random id at each start. Set it to something stable per replica (a StatefulSet pod name) so a restarted replica takes its own unfinished install tasks back at once instead of after CLUSTER_NODE_TIMEOUT.
    #[arg(long, env = "CLUSTER_NODE_ID", value_name = "CLUSTER_NODE_ID")]
    pub cluster_node_id: Option<String>,

    /// Address the internal listener binds: other replicas forward calls of debugging plugins connected here to it (PostgreSQL only).
    #[arg(
        long,
        env = "CLUSTER_INTERNAL_HOST",
        value_name = "CLUSTER_INTERNAL_HOST",
        default_value = "0.0.0.0"
    )]
    pub cluster_internal_host: String,

    /// Port of the internal listener; 0 picks a free port (the one bound is what other replicas are told).
    #[arg(
        long,
        env = "CLUSTER_INTERNAL_PORT",
        value_name = "CLUSTER_INTERNAL_PORT",
        default_value_t = 5004
    )]
    pub cluster_internal_port: u16,

    /// Host (or host:port) other replicas use to reach the internal listener, e.g. the pod IP. Unset: CLUSTER_INTERNAL_HOST when it names one address, else this machine's host name.
    #[arg(
        long,
        env = "CLUSTER_INTERNAL_ADDRESS",
        value_name = "CLUSTER_INTERNAL_ADDRESS"
    )]
    pub cluster_internal_address: Option<String>,

    /// Seconds between a replica's heartbeats, which also renew its install-task and build leases.
    #[arg(
        long,
        env = "CLUSTER_HEARTBEAT_INTERVAL",
        value_name = "CLUSTER_HEARTBEAT_INTERVAL",
        default_value_t = 5
    )]
    pub cluster_heartbeat_interval: u64,

    /// Seconds without a heartbeat after which a replica counts as dead: its leases expire and its debugging plugins are removed.
    #[arg(
        long,
        env = "CLUSTER_NODE_TIMEOUT",
        value_name = "CLUSTER_NODE_TIMEOUT",
        default_value_t = 30
    )]
    pub cluster_node_timeout: u64,

    /// Longest a call waits, in seconds, for this replica's copy of a local plugin that is still starting.
    #[arg(
        long,
        env = "CLUSTER_LAUNCH_WAIT",
        value_name = "CLUSTER_LAUNCH_WAIT",
        default_value_t = 120
    )]
    pub cluster_launch_wait: u64,

    /// Seconds SIGTERM gives open requests, sessions and install tasks to finish before the replica stops and hands its leases over.
    #[arg(
        long,
        env = "CLUSTER_DRAIN_TIMEOUT",
        value_name = "CLUSTER_DRAIN_TIMEOUT",
        default_value_t = 25
    )]
    pub cluster_drain_timeout: u64,
}

impl ClusterSettings {
    /// Checks the relations clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster_heartbeat_interval == 0 {
            return Err("CLUSTER_HEARTBEAT_INTERVAL must be greater than 0".into());
        }
        if self.cluster_node_timeout < 2 * self.cluster_heartbeat_interval {
            return Err(
                "CLUSTER_NODE_TIMEOUT must be at least twice CLUSTER_HEARTBEAT_INTERVAL".into(),
            );
        }
        if let Some(id) = &self.cluster_node_id {
            if id.trim().is_empty() || id.len() > 128 {
                return Err("CLUSTER_NODE_ID must be 1 to 128 characters".into());
            }
        }
        Ok(())
    }
}

/// How the store connects, derived from the DB_* settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Sqlite(PathBuf),
    Postgres(Secret),
}

impl Settings {
    /// The database the store opens: DATABASE_URL if set, else DB_TYPE, else
    /// Postgres when DB_HOST is set (as Dify's docker-compose does), else the
    /// embedded SQLite file under the storage root.
    pub fn database_target(&self) -> Result<DatabaseTarget, String> {
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if let Some(path) = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
            {
                let path = path.split('?').next().unwrap_or(path);
                return Ok(DatabaseTarget::Sqlite(PathBuf::from(path)));
            }
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                return Ok(DatabaseTarget::Postgres(Secret::new(url)));
            }
            return Err("DATABASE_URL must start with sqlite:// or postgres://".into());
        }
        let kind = match (self.db_type, &self.db_host) {
            (Some(kind), _) => kind,
            (None, Some(_)) => DbType::Postgresql,
            (None, None) => DbType::Sqlite,
        };
        match kind {
            DbType::Sqlite => Ok(DatabaseTarget::Sqlite(
                self.plugin_storage_local_root.join("plugind.db"),
            )),
            DbType::Postgresql => {
                let host = self
                    .db_host
                    .as_deref()
                    .ok_or("DB_HOST is required when DB_TYPE=postgresql")?;
                let password = self.db_password.as_ref().map(Secret::expose).unwrap_or("");
                Ok(DatabaseTarget::Postgres(Secret::new(format!(
                    "postgres://{}:{}@{}:{}/{}?sslmode={}",
                    percent_encode(&self.db_username),
                    percent_encode(password),
                    host,
                    self.db_port,
                    percent_encode(&self.db_database),
                    self.db_ssl_mode
                ))))
            }
        }
    }

    /// The folder plugins are unpacked and run in: PLUGIN_WORKING_PATH, else
    /// `<PLUGIN_STORAGE_LOCAL_ROOT>/cwd`.
    pub fn working_path(&self) -> PathBuf {
        self.plugin_working_path
            .clone()
            .unwrap_or_else(|| self.plugin_storage_local_root.join("cwd"))
    }

    /// Moves the default working path where plugin uids can reach it, for a
    /// daemon that runs plugins as uids of their own (root): they must walk
    /// down to their code and venv, so a default under a folder closed to
    /// other uids (a checkout in a 0700 `/root`) becomes a folder of
    /// `/var/lib/plugind`, one per storage root. Only when
    /// PLUGIN_WORKING_PATH is unset; the folder is rebuilt from the stored
    /// packages, so nothing is lost by moving it. Returns what to log.
    pub fn move_closed_working_path(&mut self) -> Option<String> {
        if self.plugin_working_path.is_some() || !nix::unistd::geteuid().is_root() {
            return None;
        }
        let default = self.working_path();
        let closed = crate::runtime::sandbox::closed_ancestor(&default)?;
        let absolute = std::path::absolute(&default).ok()?;
        use sha2::Digest;
        let tag = hex::encode(&sha2::Sha256::digest(absolute.as_os_str().as_encoded_bytes())[..6]);
        let moved = PathBuf::from("/var/lib/plugind").join(format!("cwd-{tag}"));
        let note = format!(
            "the working path {} lies under {}, which plugin uids cannot enter; plugins are unpacked and run in {} instead (set PLUGIN_WORKING_PATH to choose)",
            default.display(),
            closed.display(),
            moved.display()
        );
        self.plugin_working_path = Some(moved);
        Some(note)
    }

    /// uv's shared download cache.
    pub fn uv_cache_path(&self) -> PathBuf {
        self.uv_cache_dir
            .clone()
            .unwrap_or_else(|| self.working_path().join(".uv-cache"))
    }

    /// The key that signs backwards-invocation tokens:
    /// PLUGIN_SERVERLESS_TOKEN_SECRET, or a hash of SERVER_KEY under a
    /// purpose label so the two never serve as each other.
    pub fn serverless_token_key(&self) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        match &self.plugin_serverless_token_secret {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => {
                let mut h = Sha256::new();
                h.update(b"plugind serverless backwards-invocation token\0");
                h.update(self.server_key.expose().as_bytes());
                h.finalize().to_vec()
            }
        }
    }

    /// Checks what clap cannot: relations between settings and files that
    /// must exist. The message names the variable at fault.
    pub fn validate(&self) -> Result<(), String> {
        self.database_target()?;
        self.cluster.validate()?;
        if !self.dify_inner_api_url.starts_with("http://")
            && !self.dify_inner_api_url.starts_with("https://")
        {
            return Err(format!(
                "DIFY_INNER_API_URL must be an http:// or https:// URL, got {:?}",
                self.dify_inner_api_url
            ));
        }
        if self.max_plugin_package_size == 0 {
            return Err("MAX_PLUGIN_PACKAGE_SIZE must be greater than 0".into());
        }
        if self.plugin_max_execution_timeout == 0 {
            return Err("PLUGIN_MAX_EXECUTION_TIMEOUT must be greater than 0".into());
        }
        if self.plugin_local_launching_concurrent == 0 {
            return Err("PLUGIN_LOCAL_LAUNCHING_CONCURRENT must be greater than 0".into());
        }
        if self.plugin_remote_installing_enabled {
            if self.plugin_remote_installing_max_conn == 0 {
                return Err("PLUGIN_REMOTE_INSTALLING_MAX_CONN must be greater than 0".into());
            }
            if self.plugin_remote_installing_max_single_tenant_conn == 0 {
                return Err(
                    "PLUGIN_REMOTE_INSTALLING_MAX_SINGLE_TENANT_CONN must be greater than 0".into(),
                );
            }
        }
        if self.plugin_runtime_max_buffer_size < 1024 {
            return Err("PLUGIN_RUNTIME_MAX_BUFFER_SIZE must be at least 1024".into());
        }
        if self.plugin_storage_type == StorageType::AwsS3
            && self.plugin_storage_oss_bucket.is_none()
        {
            return Err(
                "PLUGIN_STORAGE_OSS_BUCKET is required when PLUGIN_STORAGE_TYPE=aws_s3".into(),
            );
        }
        if self.platform == Platform::Serverless {
            if self.plugin_storage_oss_bucket.is_none() {
                return Err(
                    "PLUGIN_STORAGE_OSS_BUCKET is required when PLATFORM=serverless".into(),
                );
            }
            if self.plugin_lambda_role_arn.is_none() {
                return Err("PLUGIN_LAMBDA_ROLE_ARN is required when PLATFORM=serverless".into());
            }
            match &self.plugin_serverless_callback_url {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {}
                _ => {
                    return Err(
                        "PLUGIN_SERVERLESS_CALLBACK_URL must be an http:// or https:// URL when PLATFORM=serverless"
                            .into(),
                    )
                }
            }
        }
        if self.plugin_lambda_timeout == 0 || self.plugin_lambda_timeout > 900 {
            return Err("PLUGIN_LAMBDA_TIMEOUT must be between 1 and 900 seconds".into());
        }
        if self.third_party_signature_verification_enabled {
            for path in &self.third_party_signature_verification_public_keys {
                if !Path::new(path).is_file() {
                    return Err(format!(
                        "THIRD_PARTY_SIGNATURE_VERIFICATION_PUBLIC_KEYS: no such file {}",
                        path.display()
                    ));
                }
            }
        }
        self.validate_operator_settings()
    }
}

/// The reference daemon's default for PIP_MIRROR_AUTO_DETECT.
const REFERENCE_PIP_MIRROR_AUTO_DETECT: bool = true;

impl Settings {
    /// Checks the operator block (LOG_FILE … MAX_SERVERLESS_REQUEST_BYTES).
    fn validate_operator_settings(&self) -> Result<(), String> {
        if self.plugin_install_timeout == 0 {
            return Err("PLUGIN_INSTALL_TIMEOUT must be at least 1 (minutes)".into());
        }
        if self.response_max_buffer_size < 1024 {
            return Err("RESPONSE_MAX_BUFFER_SIZE must be at least 1024".into());
        }
        if self.max_serverless_request_bytes == 0 {
            return Err("MAX_SERVERLESS_REQUEST_BYTES must be greater than 0".into());
        }
        if self.log_file.as_ref().is_some_and(|p| p.is_dir()) {
            return Err("LOG_FILE names a folder; give it a file path".into());
        }
        if self.enable_otel {
            if self.otel_exporter_otlp_protocol != "http/protobuf" {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={}: plugind exports over OTLP/HTTP only; set http/protobuf",
                    self.otel_exporter_otlp_protocol
                ));
            }
            // The reference quietly uses 1.0 instead; a typo here should not
            // turn into a full trace volume.
            if !(0.0..=1.0).contains(&self.otel_sampling_rate) {
                return Err("OTEL_SAMPLING_RATE must be between 0.0 and 1.0".into());
            }
            let endpoint = self.otlp_traces_url();
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(format!(
                    "OTLP_TRACE_ENDPOINT/OTLP_BASE_ENDPOINT must give an http:// or https:// URL, got {endpoint:?}"
                ));
            }
        }
        Ok(())
    }

    /// Where traces go: OTLP_TRACE_ENDPOINT, else `<OTLP_BASE_ENDPOINT>/v1/traces`.
    pub fn otlp_traces_url(&self) -> String {
        match &self.otlp_trace_endpoint {
            Some(url) => url.clone(),
            None => format!(
                "{}/v1/traces",
                self.otlp_base_endpoint.trim_end_matches('/')
            ),
        }
    }

    /// PLUGIN_INSTALL_TIMEOUT as a duration.
    pub fn install_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.plugin_install_timeout.saturating_mul(60))
    }

    /// One sentence per setting that is set to something plugind does not
    /// act on, for the start-up log. Settings left at values plugind
    /// already behaves as stay quiet.
    pub fn inert_settings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.server_tz.eq_ignore_ascii_case("UTC") {
            out.push(format!(
                "SERVER_TZ={} is accepted but has no effect: plugind writes every time in UTC",
                self.server_tz
            ));
        }
        if self.plugin_ignore_uv_lock {
            out.push(
                "PLUGIN_IGNORE_UV_LOCK=true is accepted but has no effect: a plugin's uv.lock is installed as is"
                    .into(),
            );
        }
        let auto_detect = self
            .pip_mirror_auto_detect
            .unwrap_or(REFERENCE_PIP_MIRROR_AUTO_DETECT);
        if self.pip_mirror_auto_detect.is_some() && auto_detect
            || !self.pip_mirror_candidates.is_empty()
        {
            out.push(
                "PIP_MIRROR_AUTO_DETECT/PIP_MIRROR_CANDIDATES are accepted but have no effect: plugind never picks a package index by itself; set PIP_MIRROR_URL"
                    .into(),
            );
        }
        out
    }
}

#[cfg(test)]
mod operator_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn parse(extra: &[&str]) -> Settings {
        let mut args = vec![
            "plugind",
            "--server-key",
            "k",
            "--dify-inner-api-url",
            "http://dify",
            "--dify-inner-api-key",
            "i",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).unwrap().settings
    }

    #[test]
    fn operator_defaults_are_the_reference_ones_and_quiet() {
        let s = parse(&[]);
        assert_eq!(s.plugin_install_timeout, 15);
        assert_eq!(s.install_timeout(), std::time::Duration::from_secs(900));
        assert!(s.prometheus_enabled && s.plugin_endpoint_enabled);
        assert!(!s.plugin_ignore_uv_lock);
        assert_eq!(s.response_max_buffer_size, 31_457_280);
        assert_eq!(s.max_serverless_request_bytes, 5_242_880);
        assert_eq!(s.server_tz, "UTC");
        assert_eq!(s.log_file, None);
        assert!(s.inert_settings().is_empty());
        s.validate().unwrap();
    }

    #[test]
    fn settings_plugind_only_accepts_are_named() {
        let s = parse(&[
            "--server-tz",
            "Asia/Shanghai",
            "--plugin-ignore-uv-lock",
            "true",
            "--pip-mirror-auto-detect",
            "true",
        ]);
        let notes = s.inert_settings().join("\n");
        for name in [
            "SERVER_TZ",
            "PLUGIN_IGNORE_UV_LOCK",
            "PIP_MIRROR_AUTO_DETECT",
        ] {
            assert!(notes.contains(name), "{notes}");
        }
        // Turned off is what plugind does anyway.
        let off = parse(&["--pip-mirror-auto-detect", "false"]);
        assert!(off.inert_settings().is_empty());
    }

    #[test]
    fn operator_limits_are_checked() {
        let e = parse(&["--plugin-install-timeout", "0"])
            .validate()
            .unwrap_err();
        assert!(e.contains("PLUGIN_INSTALL_TIMEOUT"), "{e}");
        let e = parse(&["--max-serverless-request-bytes", "0"])
            .validate()
            .unwrap_err();
        assert!(e.contains("MAX_SERVERLESS_REQUEST_BYTES"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = parse(&["--log-file", dir.path().to_str().unwrap()])
            .validate()
            .unwrap_err();
        assert!(e.contains("LOG_FILE"), "{e}");
    }
}

/// Removes the settings' variables that are set but empty from this
/// process's environment, so they count as unset. Dify's docker-compose
/// passes many as `${VAR:-}`, and the reference (Go's envconfig) treats an
/// empty string as absent; clap would otherwise take "" as a value and
/// refuse it (an empty DB_PASSWORD) or use it (an empty AWS_REGION).
///
/// Call it before any other thread starts, as `main` does.
pub fn unset_empty_variables(names: impl IntoIterator<Item = std::ffi::OsString>) {
    for name in names {
        if std::env::var_os(&name).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(&name);
        }
    }
}

/// The environment variable of every setting.
pub fn variable_names() -> Vec<std::ffi::OsString> {
    use clap::{CommandFactory, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_owned()))
        .collect()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        let mut all = vec![
            "plugind",
            "--server-key",
            "k",
            "--dify-inner-api-url",
            "http://dify",
            "--dify-inner-api-key",
            "i",
        ];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.settings)
    }

    #[test]
    fn embedded_sqlite_is_the_default() {
        let s = parse(&["--plugin-storage-local-root", "/data"]).unwrap();
        assert_eq!(s.server_port, 5002);
        assert_eq!(
            s.database_target().unwrap(),
            DatabaseTarget::Sqlite(PathBuf::from("/data/plugind.db"))
        );
        assert_eq!(s.working_path(), PathBuf::from("/data/cwd"));
    }

    #[test]
    fn db_host_selects_postgres() {
        let s = parse(&["--db-host", "db", "--db-password", "p@ss"]).unwrap();
        match s.database_target().unwrap() {
            DatabaseTarget::Postgres(url) => {
                assert_eq!(
                    url.expose(),
                    "postgres://postgres:p%40ss@db:5432/dify_plugin?sslmode=disable"
                )
            }
            other => panic!("expected postgres, got {other:?}"),
        }
    }

    #[test]
    fn bad_port_names_the_variable() {
        let err = parse(&["--server-port", "seventy"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SERVER_PORT"), "{err}");
    }

    #[test]
    fn serverless_settings_parse_and_validate() {
        let s = parse(&[
            "--platform",
            "serverless",
            "--plugin-storage-type",
            "aws_s3",
            "--plugin-lambda-arch",
            "arm64",
        ])
        .unwrap();
        assert_eq!(s.plugin_storage_type, StorageType::AwsS3);
        assert_eq!(s.plugin_lambda_arch, LambdaArch::Arm64);
        assert_eq!(s.plugin_lambda_function_prefix, "plugind-");
        assert_eq!(s.max_serverless_retry_times, 3);
        assert!(s.s3_use_path_style);
        let err = s.validate().unwrap_err();
        assert!(err.contains("PLUGIN_STORAGE_OSS_BUCKET"), "{err}");
        let s = parse(&[
            "--platform",
            "serverless",
            "--plugin-storage-oss-bucket",
            "b",
            "--plugin-lambda-role-arn",
            "arn:aws:iam::123456789012:role/r",
            "--plugin-serverless-callback-url",
            "https://plugind.example.com",
        ])
        .unwrap();
        s.validate().unwrap();
    }

    #[test]
    fn token_key_is_derived_unless_set() {
        let derived = parse(&[]).unwrap().serverless_token_key();
        assert_eq!(derived.len(), 32);
        assert_ne!(derived, b"k".to_vec());
        let set = parse(&["--plugin-serverless-token-secret", "s3cret"])
            .unwrap()
            .serverless_token_key();
        assert_eq!(set, b"s3cret".to_vec());
    }

    #[test]
    fn remote_installing_defaults_match_the_reference() {
        let s = parse(&[]).unwrap();
        assert!(s.plugin_remote_installing_enabled);
        assert_eq!(s.plugin_remote_installing_host, "0.0.0.0");
        assert_eq!(s.plugin_remote_installing_port, 5003);
        assert_eq!(s.plugin_remote_installing_max_conn, 256);
        assert_eq!(s.plugin_remote_installing_max_single_tenant_conn, 5);
        let off = parse(&["--plugin-remote-installing-enabled", "false"]).unwrap();
        assert!(!off.plugin_remote_installing_enabled);
        let zero = parse(&["--plugin-remote-installing-max-conn", "0"]).unwrap();
        assert!(zero
            .validate()
            .unwrap_err()
            .contains("PLUGIN_REMOTE_INSTALLING_MAX_CONN"));
    }

    #[test]
    fn secrets_never_print() {
        let s = parse(&[]).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("\"k\""), "{shown}");
        assert!(shown.contains("Secret(***)"));
    }
}

/// `LOW-HIGH`, both above 0 (uid 0 is root), LOW ≤ HIGH.
fn parse_uid_range(value: &str) -> Result<(u32, u32), String> {
    let (lo, hi) = value
        .split_once('-')
        .ok_or_else(|| format!("expected LOW-HIGH, got {value:?}"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|e| format!("{v:?} is not a uid: {e}"))
    };
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    if lo == 0 || lo > hi {
        return Err(format!(
            "the range must be LOW-HIGH with 0 < LOW <= HIGH, got {value:?}"
        ));
    }
    Ok((lo, hi))
}
