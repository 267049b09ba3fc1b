//! The Lambda Runtime API (`$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/…`):
//! take the next invocation, stream its response, report invocation and
//! init errors. Built on `lambda_runtime_api_client`, the HTTP client of
//! the `lambda_runtime` project, given a connector with TCP_NODELAY.
//!
//! `lambda_runtime::run` builds that client itself with Nagle's algorithm
//! left on, and offers no way to change its connector. A streamed response
//! is several small writes on one keep-alive connection, and with Nagle
//! every write after the first waits for the Runtime API's delayed ACK
//! (40 ms on Linux): a warm echo call measured 43 ms in the bootstrap
//! instead of well under one. The loop itself is small, so it lives here.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use lambda_runtime_api_client::body::Body;
use lambda_runtime_api_client::Client;

/// The API version prefix of every route.
const PREFIX: &str = "/2018-06-01/runtime";

/// Why a Runtime API call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeApiError {
    /// AWS_LAMBDA_RUNTIME_API is missing or not a host:port.
    #[error("AWS_LAMBDA_RUNTIME_API is {0:?}: not a host:port")]
    Endpoint(String),
    /// The HTTP exchange failed.
    #[error("Runtime API {route}: {message}")]
    Http { route: String, message: String },
    /// The Runtime API answered with an unexpected status.
    #[error("Runtime API {route} answered {status}")]
    Status { route: String, status: StatusCode },
    /// The next invocation lacks its request id.
    #[error("the next invocation has no Lambda-Runtime-Aws-Request-Id")]
    NoRequestId,
}

/// One invocation taken from `/invocation/next`.
#[derive(Debug)]
pub struct Invocation {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// `Lambda-Runtime-Deadline-Ms`: the deadline, in ms since the epoch.
    pub deadline_ms: u64,
    /// The payload.
    pub payload: Bytes,
}

/// A client of the Runtime API.
pub struct RuntimeApi {
    client: Client,
}

impl RuntimeApi {
    /// The API at `endpoint` (AWS_LAMBDA_RUNTIME_API, `host:port`).
    pub fn new(endpoint: &str) -> Result<Self, RuntimeApiError> {
        let uri: Uri = format!("http://{endpoint}")
            .parse()
            .map_err(|_| RuntimeApiError::Endpoint(endpoint.to_owned()))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder()
            .with_endpoint(uri)
            .with_connector(connector)
            .build()
            .map_err(|e| RuntimeApiError::Endpoint(format!("{endpoint}: {e}")))?;
        Ok(Self { client })
    }

    /// Waits for the next invocation.
    pub async fn next(&self) -> Result<Invocation, RuntimeApiError> {
        let route = format!("{PREFIX}/invocation/next");
        let response = self
            .call(&route, Request::get(&route).body(Body::empty()))
            .await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let request_id =
            header("lambda-runtime-aws-request-id").ok_or(RuntimeApiError::NoRequestId)?;
        let deadline_ms = header("lambda-runtime-deadline-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        if let Some(trace) = header("lambda-runtime-trace-id") {
            // What the X-Ray SDKs read, as the managed runtimes set it.
            std::env::set_var("_X_AMZN_TRACE_ID", trace);
        }
        let payload = Body::new(response.into_body())
            .collect()
            .await
            .map_err(|e| http_error(&route, e))?
            .to_bytes();
        Ok(Invocation {
            request_id,
            deadline_ms,
            payload,
        })
    }

    /// Streams `chunks` as the invocation's response, each written as it
    /// comes; returns when the Runtime API has taken all of it.
    pub async fn respond<S>(&self, request_id: &str, chunks: S) -> Result<(), RuntimeApiError>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let route = format!("{PREFIX}/invocation/{request_id}/response");
        let (mut tx, body) = Body::channel();
        let request = Request::builder()
            .method(Method::POST)
            .uri(&route)
            .header("Lambda-Runtime-Function-Response-Mode", "streaming")
            .header("Transfer-Encoding", "chunked")
            .header("Content-Type", "application/octet-stream")
            .body(body);
        let call = self.call(&route, request);
        let feed = async move {
            let mut chunks = std::pin::pin!(chunks);
            while let Some(chunk) = chunks.next().await {
                if tx.send_data(chunk).await.is_err() {
                    // The request failed; `call` reports why.
                    return;
                }
            }
        };
        let (answer, ()) = tokio::join!(call, feed);
        answer.map(drop)
    }

    /// Fails the invocation with Lambda's error document.
    pub async fn invocation_error(
        &self,
        request_id: &str,
        error_type: &str,
        message: &str,
    ) -> Result<(), RuntimeApiError> {
        let route = format!("{PREFIX}/invocation/{request_id}/error");
        self.post_error(route, error_type, message).await
    }

    /// Fails the execution environment's init phase.
    pub async fn init_error(&self, error_type: &str, message: &str) -> Result<(), RuntimeApiError> {
        self.post_error(format!("{PREFIX}/init/error"), error_type, message)
            .await
    }

    async fn post_error(
        &self,
        route: String,
        error_type: &str,
        message: &str,
    ) -> Result<(), RuntimeApiError> {
        let document = serde_json::json!({"errorType": error_type, "errorMessage": message});
        let request = Request::post(&route)
            .header("Lambda-Runtime-Function-Error-Type", error_type)
            .header("Content-Type", "application/json")
            .body(Body::from(document.to_string()));
        self.call(&route, request).await.map(drop)
    }

    async fn call(
        &self,
        route: &str,
        request: Result<Request<Body>, http::Error>,
    ) -> Result<http::Response<hyper::body::Incoming>, RuntimeApiError> {
        let request = request.map_err(|e| http_error(route, e))?;
        let response = self
            .client
            .call(request)
            .await
            .map_err(|e| http_error(route, e))?;
        if !response.status().is_success() {
            return Err(RuntimeApiError::Status {
                route: route.to_owned(),
                status: response.status(),
            });
        }
        Ok(response)
    }
}

fn http_error(route: &str, e: impl std::fmt::Display) -> RuntimeApiError {
    RuntimeApiError::Http {
        route: route.to_owned(),
        message: e.to_string(),
    }
}
