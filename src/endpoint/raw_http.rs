//! The request a plugin endpoint receives: the caller's HTTP request written
//! out as raw HTTP/1.1 bytes, which the SDK parses back with werkzeug
//! (reference: `internal/service/endpoint.go::copyRequest`, which uses Go's
//! `Request.Write`).
//!
//! Kept from the reference: the request line carries only the path after the
//! hook id; `Host` comes first (from `X-Original-Host` when a proxy set it);
//! a `Content-Length` replaces any transfer coding; proxy traces are removed;
//! `Dify-Hook-Id` is set and `Dify-Hook-Url` is added unless the proxy already
//! sent one. Header names are written in Go's canonical form, every value of
//! a repeated header on its own line, sorted by name after `Host`,
//! `User-Agent` and `Content-Length`.
//!
//! Changed on purpose: the query string is passed through as the caller sent
//! it (the reference decodes and re-encodes it, which reorders keys), and no
//! `User-Agent` is invented when the caller sent none.

use axum::http::{HeaderMap, Method};

/// Headers a reverse proxy adds that would reveal the caller's address or
/// the daemon's internal URL; never forwarded to a plugin. Every
/// `X-Forwarded-*` header goes too.
const DROPPED: [&str; 4] = [
    "x-real-ip",
    "x-original-forwarded-for",
    "x-original-url",
    "x-original-host",
];

/// The header a proxy uses to tell the public host name.
pub const ORIGINAL_HOST: &str = "x-original-host";
/// The endpoint's public URL, as the plugin should advertise it.
pub const HOOK_URL: &str = "dify-hook-url";
/// The hook id of the endpoint being called.
pub const HOOK_ID: &str = "dify-hook-id";

/// What [`serialize`] needs to know about the incoming request.
#[derive(Debug)]
pub struct IncomingRequest<'a> {
    pub method: &'a Method,
    /// The hook id from the URL.
    pub hook_id: &'a str,
    /// The path after `/e/{hook_id}`, still percent-encoded, starting with `/`.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Go's canonical header name: the first letter and every letter after a
/// dash upper-cased, the rest lower-cased (`x-api-key` → `X-Api-Key`).
pub fn canonical_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
        upper = c == '-';
    }
    out
}

fn dropped(name: &str) -> bool {
    name.starts_with("x-forwarded") || DROPPED.contains(&name)
}

/// Go writes a header value with line breaks turned into spaces and the ends
/// trimmed, so a value can never start a new header line.
fn clean_value(value: &[u8]) -> Vec<u8> {
    let mapped: Vec<u8> = value
        .iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect();
    let start = mapped
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(mapped.len());
    let end = mapped
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    mapped[start..end].to_vec()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The host the caller addressed: `X-Original-Host` if a proxy set it, else
/// `Host`.
pub fn public_host(headers: &HeaderMap) -> String {
    header_str(headers, ORIGINAL_HOST)
        .or_else(|| header_str(headers, "host"))
        .unwrap_or("")
        .to_owned()
}

/// The endpoint's public URL for this request, as the reference builds it
/// when the proxy sent no `Dify-Hook-Url`.
pub fn hook_url(req: &IncomingRequest<'_>) -> String {
    let https = header_str(req.headers, "x-forwarded-proto") == Some("https");
    let scheme = if https { "https" } else { "http" };
    format!(
        "{scheme}://{}/e/{}{}",
        public_host(req.headers),
        req.hook_id,
        req.path
    )
}

/// Go sends `Content-Length: 0` only for methods that normally carry a body.
fn wants_zero_length(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Writes the request as raw HTTP/1.1 bytes.
pub fn serialize(req: &IncomingRequest<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + req.body.len());
    let path = if req.path.is_empty() { "/" } else { req.path };
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = req.query.filter(|q| !q.is_empty()) {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let line = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&clean_value(value));
        out.extend_from_slice(b"\r\n");
    };
    line(&mut out, "Host", public_host(req.headers).as_bytes());
    if let Some(ua) = req.headers.get("user-agent") {
        line(&mut out, "User-Agent", ua.as_bytes());
    }
    if !req.body.is_empty() || wants_zero_length(req.method) {
        line(
            &mut out,
            "Content-Length",
            req.body.len().to_string().as_bytes(),
        );
    }

    let mut rest: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, value) in req.headers {
        let n = name.as_str();
        if dropped(n)
            || matches!(
                n,
                "host"
                    | "user-agent"
                    | "content-length"
                    | "transfer-encoding"
                    | "trailer"
                    | HOOK_ID
            )
        {
            continue;
        }
        rest.push((canonical_name(n), value.as_bytes().to_vec()));
    }
    rest.push((canonical_name(HOOK_ID), req.hook_id.as_bytes().to_vec()));
    if header_str(req.headers, HOOK_URL).is_none() {
        rest.retain(|(n, _)| n != "Dify-Hook-Url");
        rest.push((canonical_name(HOOK_URL), hook_url(req).into_bytes()));
    }
    // A stable sort keeps the order of a repeated header's values.
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in &rest {
        line(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn text(method: Method, path: &str, query: Option<&str>, h: &HeaderMap, body: &[u8]) -> String {
        String::from_utf8(serialize(&IncomingRequest {
            method: &method,
            hook_id: "hook1",
            path,
            query,
            headers: h,
            body,
        }))
        .unwrap()
    }

    #[test]
    fn get_request_has_host_first_and_hook_headers() {
        let h = headers(&[("host", "example.com:5002"), ("accept", "*/*")]);
        let raw = text(Method::GET, "/hello", Some("name=x&a=1"), &h, b"");
        assert_eq!(
            raw,
            "GET /hello?name=x&a=1 HTTP/1.1\r\n\
             Host: example.com:5002\r\n\
             Accept: */*\r\n\
             Dify-Hook-Id: hook1\r\n\
             Dify-Hook-Url: http://example.com:5002/e/hook1/hello\r\n\
             \r\n"
        );
    }

    #[test]
    fn proxy_traces_are_dropped_and_original_host_wins() {
        let h = headers(&[
            ("host", "internal:5002"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "pub.example"),
            ("x-real-ip", "10.0.0.1"),
            ("x-original-host", "pub.example"),
            ("x-original-url", "/e/hook1/x"),
            ("x-original-forwarded-for", "1.2.3.4"),
        ]);
        let raw = text(Method::GET, "/x", None, &h, b"");
        assert!(
            raw.starts_with("GET /x HTTP/1.1\r\nHost: pub.example\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("Dify-Hook-Url: https://pub.example/e/hook1/x\r\n"),
            "{raw}"
        );
        for gone in ["Forwarded", "Real-Ip", "Original", "10.0.0.1", "1.2.3.4"] {
            assert!(!raw.contains(gone), "{gone} leaked: {raw}");
        }
    }

    #[test]
    fn a_proxy_hook_url_is_kept_and_a_client_hook_id_is_replaced() {
        let h = headers(&[
            ("host", "h"),
            ("dify-hook-url", "https://dify.example/e/hook1/p"),
            ("dify-hook-id", "spoofed"),
        ]);
        let raw = text(Method::GET, "/p", None, &h, b"");
        assert!(raw.contains("Dify-Hook-Url: https://dify.example/e/hook1/p\r\n"));
        assert!(raw.contains("Dify-Hook-Id: hook1\r\n"));
        assert!(!raw.contains("spoofed"));
    }

    #[test]
    fn body_gets_a_content_length_and_loses_its_transfer_coding() {
        let h = headers(&[
            ("host", "h"),
            ("transfer-encoding", "chunked"),
            ("content-length", "999"),
            ("content-type", "application/octet-stream"),
        ]);
        let body = [0u8, 255, 13, 10, 1];
        let raw = serialize(&IncomingRequest {
            method: &Method::PATCH,
            hook_id: "hook1",
            path: "/bin",
            query: None,
            headers: &h,
            body: &body,
        });
        let (head, tail) = raw.split_at(raw.len() - body.len());
        assert_eq!(tail, body);
        let head = String::from_utf8(head.to_vec()).unwrap();
        assert!(
            head.starts_with("PATCH /bin HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"),
            "{head}"
        );
        assert!(!head.contains("chunked") && !head.contains("999"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn empty_post_says_zero_length_and_empty_get_does_not() {
        let h = headers(&[("host", "h")]);
        assert!(text(Method::POST, "/a", None, &h, b"").contains("Content-Length: 0\r\n"));
        assert!(!text(Method::GET, "/a", None, &h, b"").contains("Content-Length"));
        assert!(!text(Method::DELETE, "/a", None, &h, b"").contains("Content-Length"));
    }

    #[test]
    fn repeated_headers_keep_every_value_in_order() {
        let h = headers(&[
            ("host", "h"),
            ("x-multi", "one"),
            ("accept", "a"),
            ("x-multi", "two"),
        ]);
        let raw = text(Method::GET, "/", None, &h, b"");
        let one = raw.find("X-Multi: one\r\n").unwrap();
        let two = raw.find("X-Multi: two\r\n").unwrap();
        assert!(one < two);
        assert!(raw.find("Accept: a").unwrap() < one);
    }

    #[test]
    fn empty_path_becomes_root() {
        let h = headers(&[("host", "h")]);
        assert!(text(Method::GET, "", None, &h, b"").starts_with("GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn canonical_names_follow_go() {
        assert_eq!(canonical_name("x-api-key"), "X-Api-Key");
        assert_eq!(canonical_name("content-type"), "Content-Type");
        assert_eq!(canonical_name("mcp-session-id"), "Mcp-Session-Id");
    }
}
