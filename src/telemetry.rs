//! Logging set-up: tracing with LOG_LEVEL and LOG_OUTPUT_FORMAT.

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs the global tracing subscriber. `level` is LOG_LEVEL: a level name
/// (any case) or a full tracing filter directive.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let directive = match level.to_ascii_lowercase().as_str() {
        l @ ("trace" | "debug" | "info" | "warn" | "error") => {
            format!("{l},sqlx=warn,hyper=warn,tower_http=info")
        }
        "warning" => "warn".to_owned(),
        _ => level.to_owned(),
    };
    let filter = EnvFilter::try_new(&directive)
        .map_err(|e| format!("LOG_LEVEL {level:?} is not a level or filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("logging is already set up: {e}"))
}
