//! Logging and tracing set-up: tracing with LOG_LEVEL and LOG_OUTPUT_FORMAT,
//! to standard output and, with LOG_FILE, to a file as well; with
//! ENABLE_OTEL, the same spans exported as OpenTelemetry traces over
//! OTLP/HTTP (reference: `internal/server/otel.go`): one per HTTP request
//! (continuing the caller's W3C `traceparent`), and inside it the
//! `dispatch` and `session` spans of each plugin invocation.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Mutex;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
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

/// What [`init_daemon`] set up that must be flushed before the process ends.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter. Call it
    /// outside the runtime's `block_on` (the export runs on the runtime).
    pub fn shutdown(self) {
        if let Some(provider) = self.traces {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "cannot flush the last traces");
            }
        }
    }

    /// Exports the spans buffered so far.
    pub fn flush(&self) {
        if let Some(provider) = &self.traces {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "cannot flush traces");
            }
        }
    }
}

/// Installs the daemon's subscriber: LOG_LEVEL, LOG_OUTPUT_FORMAT, LOG_FILE
/// when set (the same lines, without colours, appended to the file), and
/// the OTLP exporter when ENABLE_OTEL. Call it inside a tokio runtime: the
/// exporter sends with the daemon's HTTP client on that runtime.
pub fn init_daemon(settings: &Settings) -> Result<Telemetry, String> {
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
    let traces = if settings.enable_otel {
        let provider = otlp_provider(settings)?;
        let tracer = provider.tracer("plugind");
        layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed());
        Some(provider)
    } else {
        None
    };
    install(&settings.log_level, layers)?;
    Ok(Telemetry { traces })
}

fn otlp_provider(settings: &Settings) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "ENABLE_OTEL: tracing must be set up inside the runtime".to_owned())?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("ENABLE_OTEL: cannot build the HTTP client: {e}"))?;
    let mut headers = std::collections::HashMap::new();
    if let Some(key) = &settings.otel_api_key {
        headers.insert(
            "Authorization".to_owned(),
            format!("Bearer {}", key.expose()),
        );
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OtlpHttpClient { http, runtime })
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(settings.otlp_traces_url())
        .with_headers(headers)
        .build()
        .map_err(|e| format!("ENABLE_OTEL: cannot build the OTLP exporter: {e}"))?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        settings.otel_sampling_rate,
    )));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder_empty()
                .with_service_name("plugind")
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build())
}

/// The OTLP exporter's HTTP client: the daemon's reqwest, run on the
/// daemon's runtime (the SDK exports from a thread of its own, where no
/// runtime is current).
#[derive(Debug, Clone)]
struct OtlpHttpClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let response = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut out = opentelemetry_http::Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok::<_, reqwest::Error>(out)
        });
        Ok(sent.await??)
    }
}

/// Middleware (installed when ENABLE_OTEL): one server span per request,
/// named by its route template and continuing the caller's `traceparent`.
/// Spans opened while it is handled (dispatch, session) are its children;
/// the session span lasts as long as the streamed answer.
pub async fn trace_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(request.headers()));
    // No valid traceparent leaves the span a root; that is not an error.
    let _ = span.set_parent(parent);
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
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
