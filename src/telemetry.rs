//! Logging set-up: tracing with LOG_LEVEL and LOG_OUTPUT_FORMAT, to standard
//! output and, with LOG_FILE, to a file as well.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::settings::{LogFormat, Settings};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global tracing subscriber. `level` is LOG_LEVEL: a level name
/// (any case) or a full tracing filter directive.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    install(level, vec![output_layer(format, std::io::stdout, true)])
}

/// Installs the daemon's subscriber: LOG_LEVEL, LOG_OUTPUT_FORMAT, and
/// LOG_FILE when set (the same lines, without colours, appended to the file).
pub fn init_daemon(settings: &Settings) -> Result<(), String> {
    let mut layers = vec![output_layer(
        settings.log_output_format,
        std::io::stdout,
        true,
    )];
    if let Some(path) = &settings.log_file {
        let file = open_log_file(path)?;
        layers.push(output_layer(
            settings.log_output_format,
            Mutex::new(file),
            false,
        ));
    }
    install(&settings.log_level, layers)
}

fn install(level: &str, layers: Vec<BoxedLayer>) -> Result<(), String> {
    let filter = filter(level)?;
    tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init()
        .map_err(|e| format!("logging is already set up: {e}"))
}

fn filter(level: &str) -> Result<EnvFilter, String> {
    let directive = match level.to_ascii_lowercase().as_str() {
        l @ ("trace" | "debug" | "info" | "warn" | "error") => {
            format!("{l},sqlx=warn,hyper=warn,tower_http=info")
        }
        "warning" => "warn".to_owned(),
        _ => level.to_owned(),
    };
    EnvFilter::try_new(&directive)
        .map_err(|e| format!("LOG_LEVEL {level:?} is not a level or filter: {e}"))
}

fn output_layer<W>(format: LogFormat, writer: W, ansi: bool) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    }
}

/// Opens LOG_FILE for appending, creating it and its folder; both are the
/// daemon's alone (0700 / 0600), as logs can carry plugin output.
fn open_log_file(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("LOG_FILE: cannot create {}: {e}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("LOG_FILE: cannot open {}: {e}", path.display()))
}
