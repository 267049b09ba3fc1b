//! Request input as the reference binds it: query parameters, merged with a
//! JSON body when the request says `Content-Type: application/json` (Dify
//! sends some GETs with a JSON body). Validation failures answer HTTP 400
//! with a bad-request envelope, as the reference's validator does.

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api::envelope::error_envelope_json;
use crate::error::DaemonError;
use crate::package::PluginUniqueIdentifier;

/// The error of a management handler.
#[derive(Debug)]
pub enum ApiError {
    /// The input does not validate: HTTP 400 with a bad-request envelope.
    Invalid(String),
    /// Everything else, as the error table maps it (HTTP 200 or 401).
    Daemon(DaemonError),
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        Self::Daemon(e)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Daemon(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Invalid(message) => {
                let err = DaemonError::BadRequest(message);
                err.log();
                (StatusCode::BAD_REQUEST, Json(error_envelope_json(&err))).into_response()
            }
            ApiError::Daemon(err) => err.into_response(),
        }
    }
}

/// Query parameters and JSON body fields of a request, body first.
#[derive(Debug, Default)]
pub struct Input(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Input {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let mut fields = Map::new();
        let query = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
            .map_err(|e| ApiError::Invalid(format!("invalid query: {e}")))?;
        for (k, v) in query.0 {
            fields.entry(k).or_insert(Value::String(v));
        }
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            let body = Bytes::from_request(req, state)
                .await
                .map_err(|e| ApiError::Invalid(format!("cannot read body: {e}")))?;
            if !body.iter().all(u8::is_ascii_whitespace) {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(Value::Object(obj)) => fields.extend(obj),
                    Ok(_) => return Err(ApiError::Invalid("body must be a JSON object".into())),
                    Err(e) => return Err(ApiError::Invalid(format!("invalid JSON body: {e}"))),
                }
            }
        }
        Ok(Self(fields))
    }
}

impl Input {
    /// A string field, if present (numbers are accepted as their text).
    pub fn opt_str(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// A required, non-empty string field.
    pub fn str(&self, name: &str) -> Result<String, ApiError> {
        self.opt_str(name)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::Invalid(format!("{name} is required")))
    }

    /// A required plugin unique identifier.
    pub fn identifier(&self, name: &str) -> Result<PluginUniqueIdentifier, ApiError> {
        parse_identifier(&self.str(name)?)
    }

    /// `page` (≥ 1) and `page_size` (1‥=256), both required.
    pub fn page(&self) -> Result<(i64, i64), ApiError> {
        let num = |name: &str| -> Result<i64, ApiError> {
            self.str(name)?
                .parse::<i64>()
                .map_err(|_| ApiError::Invalid(format!("{name} must be an integer")))
        };
        let page = num("page")?;
        let size = num("page_size")?;
        if page < 1 {
            return Err(ApiError::Invalid("page must be at least 1".into()));
        }
        if !(1..=256).contains(&size) {
            return Err(ApiError::Invalid(
                "page_size must be between 1 and 256".into(),
            ));
        }
        Ok((page, size))
    }

    /// The whole input as a typed value.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_value(Value::Object(self.0.clone()))
            .map_err(|e| ApiError::Invalid(e.to_string()))
    }
}

/// Parses an identifier; a malformed one is a validation failure.
pub fn parse_identifier(s: &str) -> Result<PluginUniqueIdentifier, ApiError> {
    s.parse()
        .map_err(|e: crate::package::IdentifierError| ApiError::Invalid(e.to_string()))
}
