//! The SIGTERM drain. Every request is counted until its response body is
//! done (a dispatch stream stays counted until its last line), so the
//! daemon knows when open work has finished. Once draining, new requests
//! other than health probes and metrics are refused with 503 while open
//! ones run on, and `/health/ready` answers 503, so an orchestrator takes
//! the replica out of rotation while it finishes.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

use crate::app_state::AppState;
use crate::error::DaemonError;

/// Open requests of this node.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one request until dropped.
pub struct Counted(Arc<InFlight>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    /// Counts a request.
    pub fn enter(self: &Arc<Self>) -> Counted {
        self.count.fetch_add(1, Ordering::AcqRel);
        Counted(self.clone())
    }

    /// Requests open now.
    pub fn open(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until no request is open, at most `timeout`; `false` when some
    /// still are.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.open() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// A response body that keeps its request counted until it is done.
struct CountedBody {
    inner: Body,
    _counted: Counted,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Routes served while draining: probes must keep answering.
fn served_while_draining(path: &str) -> bool {
    path.starts_with("/health/") || path == "/metrics"
}

/// Counts every request; refuses new work while draining.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.cluster.is_draining() && !served_while_draining(req.uri().path()) {
        return draining_response();
    }
    let counted = state.cluster.in_flight.enter();
    count_body(next.run(req).await, counted)
}

/// Counts every request of the internal listener; it keeps serving while
/// draining, since calls forwarded here can be served nowhere else.
pub async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let counted = state.cluster.in_flight.enter();
    count_body(next.run(req).await, counted)
}

fn count_body(response: Response, counted: Counted) -> Response {
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(CountedBody {
            inner: body,
            _counted: counted,
        }),
    )
}

fn draining_response() -> Response {
    let err =
        DaemonError::internal_msg("this replica is stopping; send the request to another one");
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(crate::api::envelope::error_envelope_json(&err)),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_last_request() {
        let in_flight = Arc::new(InFlight::default());
        assert!(in_flight.wait_idle(Duration::from_millis(10)).await);
        let a = in_flight.enter();
        let b = in_flight.enter();
        assert!(!in_flight.wait_idle(Duration::from_millis(20)).await);
        drop(a);
        assert_eq!(in_flight.open(), 1);
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.wait_idle(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b);
        assert!(waiter.await.unwrap());
    }
}
