//! ENABLE_OTEL: one dispatch through the daemon's router exports its spans
//! over OTLP/HTTP (protobuf) to a loopback collector stand-in: the request's
//! server span continues the caller's `traceparent`, and the dispatch and
//! plugin session spans are its children in the same trace.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use plugind::runtime::protocol::SessionMessage;
use plugind::runtime::{
    PluginRuntime, RuntimeError, RuntimeState, SessionRequest, SessionStream, SessionTable,
};
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// What the collector received: spans, and the service name they came with.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

async fn receive(State(c): State<Collector>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    for resource in request.resource_spans {
        if let Some(r) = &resource.resource {
            for kv in &r.attributes {
                if kv.key == "service.name" {
                    c.services.lock().unwrap().push(format!("{:?}", kv.value));
                }
            }
        }
        for scope in resource.scope_spans {
            c.spans.lock().unwrap().extend(scope.spans);
        }
    }
    ""
}

/// A runtime that answers every session with one chunk and its end.
struct Answering {
    identity: String,
    table: Arc<SessionTable>,
    writer: mpsc::Sender<Bytes>,
}

#[async_trait::async_trait]
impl PluginRuntime for Answering {
    fn identity(&self) -> &str {
        &self.identity
    }
    fn state(&self) -> RuntimeState {
        RuntimeState::Ready
    }
    async fn wait_ready(&self, _: Duration) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn invoke(&self, request: SessionRequest) -> Result<SessionStream, RuntimeError> {
        let stream = self.table.open(
            request.header.clone(),
            self.writer.clone(),
            Duration::from_secs(10),
        )?;
        let table = self.table.clone();
        let sid = request.header.session_id.clone();
        tokio::spawn(async move {
            let chunk = json!({"type": "text", "message": {"text": "traced"}, "meta": null});
            table.route(&sid, SessionMessage::Stream(chunk)).await;
            table.route(&sid, SessionMessage::End).await;
        });
        Ok(stream)
    }
    async fn shutdown(&self) {}
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dispatch_exports_its_spans_in_the_callers_trace() {
    let collector = Collector::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(collector.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let otel = ["--enable-otel", "true", "--otlp-base-endpoint", &base];
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(dir.path(), "sqlite://unused.db", &otel);
    settings.validate().unwrap();
    let telemetry = plugind::telemetry::init_daemon(&settings).unwrap();

    let daemon = common::spawn_app_with(&otel, Arc::new(plugind::install::NoopInstallStep)).await;
    let (identifier, task) = daemon
        .install(common::tool_package("traced", "0.0.1"))
        .await;
    assert_eq!(task["status"], "success", "{task}");
    let (writer, _written) = mpsc::channel(16);
    daemon.state.registry.insert(
        identifier.clone(),
        Arc::new(Answering {
            identity: identifier,
            table: SessionTable::new(),
            writer,
        }),
    );

    let response = daemon
        .client
        .post(format!(
            "{}/plugin/{}/dispatch/tool/invoke",
            daemon.base,
            common::TENANT
        ))
        .header("X-Api-Key", common::KEY)
        .header("X-Plugin-ID", "langgenius/traced")
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .json(&json!({
            "user_id": "u1",
            "data": {
                "provider": "traced",
                "tool": "echo",
                "credentials": {},
                "credential_type": "api-key",
                "tool_parameters": {"text": "hi"},
            },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("traced"), "{body}");

    // The request span ends once the streamed answer has; flush until the
    // three spans of the dispatch are in.
    let wanted = |spans: &[Span]| {
        ["session", "dispatch"]
            .iter()
            .all(|n| spans.iter().any(|s| s.name == *n))
            && spans
                .iter()
                .any(|s| s.name == "POST /plugin/{tenant_id}/dispatch/tool/invoke")
    };
    for _ in 0..50 {
        let t = &telemetry;
        tokio::task::block_in_place(|| t.flush());
        if wanted(&collector.spans.lock().unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = collector.spans.lock().unwrap().clone();
    assert!(
        wanted(&spans),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    const ROUTE: &str = "POST /plugin/{tenant_id}/dispatch/tool/invoke";
    let by_name = |name: &str| spans.iter().find(|s| s.name == name).unwrap().clone();
    // Named by the route template, not by the tenant in the path.
    let request = by_name(ROUTE);
    let dispatch = by_name("dispatch");
    let session = by_name("session");
    assert_eq!(
        request.name, "POST /plugin/{tenant_id}/dispatch/tool/invoke",
        "named by the route, not the tenant"
    );
    for span in [&request, &dispatch, &session] {
        assert_eq!(
            hex(&span.trace_id),
            TRACE_ID,
            "{} continues the caller's trace",
            span.name
        );
    }
    assert_eq!(hex(&request.parent_span_id), CALLER_SPAN_ID);
    assert_eq!(dispatch.parent_span_id, request.span_id);
    assert_eq!(session.parent_span_id, dispatch.span_id);
    // SPAN_KIND_SERVER.
    assert_eq!(request.kind, 2);
    assert!(
        collector
            .services
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.contains("plugind")),
        "service.name is plugind"
    );
    tokio::task::block_in_place(|| telemetry.shutdown());
}
