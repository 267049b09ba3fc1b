//! The plugin's answer to an endpoint request: a stream of chunks
//! `{"status"?, "headers"?, "result"?}` where `result` is a hex-encoded piece
//! of the body (reference: `endpoint_entities.EndpointResponseChunk`,
//! `io_tunnel/endpoint_service.go`). Status and headers arrive before the
//! first `result`; every chunk after that is body only.
//!
//! Changed on purpose: a missing status means 200 (the reference starts from
//! 100, which no client can use as a final status), a header may carry a
//! list of values (the reference keeps only one), and hop-by-hop headers are
//! left to the HTTP server.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use serde_json::Value;

/// Why a chunk could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("endpoint chunk is not an object: {0}")]
    NotAnObject(String),
    #[error("endpoint status {0} is not a final HTTP status")]
    BadStatus(String),
    #[error("endpoint header {0:?} is not valid")]
    BadHeader(String),
    #[error("endpoint result is not hex: {0}")]
    BadHex(String),
}

/// One decoded chunk.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk {
    pub status: Option<StatusCode>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A piece of the body, if the chunk carried one.
    pub body: Option<Bytes>,
}

/// Headers that describe one hop, not the response; the server writes its
/// own.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

fn header_value(name: &str, v: &Value) -> Result<HeaderValue, ChunkError> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return Err(ChunkError::BadHeader(name.to_owned())),
    };
    HeaderValue::from_str(&text).map_err(|_| ChunkError::BadHeader(name.to_owned()))
}

/// Decodes one chunk.
pub fn decode(chunk: &Value) -> Result<Chunk, ChunkError> {
    let obj = chunk
        .as_object()
        .ok_or_else(|| ChunkError::NotAnObject(chunk.to_string()))?;
    let mut out = Chunk::default();
    match obj.get("status") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let code = v
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                // 1xx statuses are interim: a handler cannot end with one.
                .filter(|s| !s.is_informational())
                .ok_or_else(|| ChunkError::BadStatus(v.to_string()))?;
            out.status = Some(code);
        }
    }
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let hn = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ChunkError::BadHeader(name.clone()))?;
                if hop_by_hop(&hn) {
                    continue;
                }
                match value {
                    Value::Array(values) => {
                        for v in values {
                            out.headers.push((hn.clone(), header_value(name, v)?));
                        }
                    }
                    v => out.headers.push((hn, header_value(name, v)?)),
                }
            }
        }
        Some(other) => return Err(ChunkError::BadHeader(other.to_string())),
    }
    match obj.get("result") {
        None | Some(Value::Null) => {}
        Some(Value::String(hex_body)) => {
            let bytes = hex::decode(hex_body).map_err(|e| ChunkError::BadHex(e.to_string()))?;
            out.body = Some(Bytes::from(bytes));
        }
        Some(other) => return Err(ChunkError::BadHex(other.to_string())),
    }
    Ok(out)
}

/// Status and headers gathered from the chunks before the body starts.
#[derive(Debug, Default)]
pub struct Head {
    status: Option<StatusCode>,
    headers: HeaderMap,
}

impl Head {
    /// Adds a chunk's status and headers. A later status replaces an earlier
    /// one; headers accumulate.
    pub fn absorb(&mut self, chunk: &mut Chunk) {
        if let Some(s) = chunk.status {
            self.status = Some(s);
        }
        for (name, value) in chunk.headers.drain(..) {
            self.headers.append(name, value);
        }
    }

    /// The final status: the plugin's, or 200.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(StatusCode::OK)
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn into_parts(self) -> (StatusCode, HeaderMap) {
        (self.status(), self.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sdk_single_chunk_decodes() {
        let c = decode(&json!({"status":200,"headers":{"X-Echo-Endpoint":"hello","Content-Type":"text/plain"},"result":"68692c2078"})).unwrap();
        assert_eq!(c.status, Some(StatusCode::OK));
        assert_eq!(c.body.as_deref(), Some(&b"hi, x"[..]));
        assert_eq!(c.headers.len(), 2);
    }

    #[test]
    fn missing_status_is_200_never_100() {
        let mut head = Head::default();
        head.absorb(&mut decode(&json!({"headers":{"a":"b"}})).unwrap());
        assert_eq!(head.status(), StatusCode::OK);
        assert!(decode(&json!({"status":100})).is_err());
        assert!(decode(&json!({"status":99})).is_err());
        assert!(decode(&json!({"status":70000})).is_err());
    }

    #[test]
    fn list_values_become_repeated_headers() {
        let mut head = Head::default();
        head.absorb(&mut decode(&json!({"headers":{"Set-Cookie":["a=1","b=2"],"X-N":7}})).unwrap());
        let cookies: Vec<_> = head.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(head.headers()["x-n"], "7");
    }

    #[test]
    fn headers_accumulate_and_later_status_wins() {
        let mut head = Head::default();
        head.absorb(&mut decode(&json!({"status":201,"headers":{"a":"1"}})).unwrap());
        head.absorb(&mut decode(&json!({"status":202,"headers":{"a":"2"}})).unwrap());
        assert_eq!(head.status(), StatusCode::ACCEPTED);
        assert_eq!(head.headers().get_all("a").iter().count(), 2);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let c = decode(
            &json!({"headers":{"Transfer-Encoding":"chunked","Connection":"close","X-Ok":"1"}}),
        )
        .unwrap();
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.headers[0].0, "x-ok");
    }

    #[test]
    fn bad_chunks_are_refused() {
        assert!(matches!(
            decode(&json!("x")),
            Err(ChunkError::NotAnObject(_))
        ));
        assert!(matches!(
            decode(&json!({"result":"zz"})),
            Err(ChunkError::BadHex(_))
        ));
        assert!(matches!(
            decode(&json!({"headers":{"a b":"1"}})),
            Err(ChunkError::BadHeader(_))
        ));
        assert!(matches!(
            decode(&json!({"headers":{"a":"x\ny"}})),
            Err(ChunkError::BadHeader(_))
        ));
    }

    #[test]
    fn empty_result_is_an_empty_body_piece() {
        let c = decode(&json!({"result":""})).unwrap();
        assert_eq!(c.body, Some(Bytes::new()));
    }
}
