//! API errors and the one function that maps them to an HTTP status.
//!
//! Every error leaves the server in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`. Internal errors are
//! logged in full and answered with a fixed message: no path, backtrace or
//! panic text ever reaches a client.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Everything a request can fail with, before or after validation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Bad parameter value or shape. `param` names the offending field.
    #[error("{message}")]
    Invalid { message: String, param: Option<String>, code: Option<&'static str> },
    /// A parameter OpenAI defines (or a client invents) that kiln does not serve.
    #[error("{message}")]
    Unsupported { message: String, param: String },
    /// Prompt (or prompt + max_tokens) beyond the context window.
    #[error("{message}")]
    ContextLength { message: String, param: &'static str },
    #[error("{0}")]
    InvalidApiKey(String),
    #[error("The model '{0}' does not exist")]
    ModelNotFound(String),
    /// A stored object (a response) that does not exist or belongs to
    /// another key: the message names it.
    #[error("{0}")]
    NotFound(String),
    #[error("Invalid URL ({method} {path})")]
    RouteNotFound { method: String, path: String },
    #[error("Method {method} not allowed for {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("Request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// Per-key quota exhausted; `kind` is "requests" or "tokens".
    #[error("{message}")]
    RateLimited { message: String, kind: &'static str, retry_after_secs: u64 },
    #[error("The server is overloaded: {waiting} requests are waiting. Retry later.")]
    QueueFull { waiting: usize, retry_after_secs: u64 },
    #[error("The server is shutting down")]
    ShuttingDown,
    #[error("The model is still loading")]
    Loading,
    /// The shared store (`--store`) cannot be reached right now; the text
    /// says what needed it.
    #[error("{0}")]
    StoreUnavailable(String),
    /// The engine refused or failed the request; the text is the engine's
    /// own (user-facing) message.
    #[error("{0}")]
    Engine(String),
    /// Anything else. The detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: impl Into<String>) -> Self {
        ApiError::Invalid { message: message.into(), param: Some(param.into()), code: None }
    }

    pub fn unsupported(param: impl Into<String>, why: &str) -> Self {
        let param = param.into();
        let message = format!("Unsupported parameter: '{param}' {why}");
        ApiError::Unsupported { message, param }
    }

    /// The one mapping from error to (HTTP status, OpenAI `type`, `code`).
    pub fn status_type_code(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        use ApiError::*;
        const INVALID: &str = "invalid_request_error";
        match self {
            Invalid { code, .. } => (StatusCode::BAD_REQUEST, INVALID, *code),
            Unsupported { .. } => (StatusCode::BAD_REQUEST, INVALID, Some("unsupported_parameter")),
            ContextLength { .. } => (StatusCode::BAD_REQUEST, INVALID, Some("context_length_exceeded")),
            InvalidApiKey(_) => (StatusCode::UNAUTHORIZED, INVALID, Some("invalid_api_key")),
            ModelNotFound(_) => (StatusCode::NOT_FOUND, INVALID, Some("model_not_found")),
            NotFound(_) => (StatusCode::NOT_FOUND, INVALID, None),
            RouteNotFound { .. } => (StatusCode::NOT_FOUND, INVALID, Some("unknown_url")),
            MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, INVALID, Some("method_not_allowed")),
            PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, INVALID, Some("request_too_large")),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID, Some("unsupported_media_type")),
            RateLimited { kind, .. } => (StatusCode::TOO_MANY_REQUESTS, kind, Some("rate_limit_exceeded")),
            QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("queue_full")),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("shutting_down")),
            Loading => (StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("model_loading")),
            StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("store_unavailable")),
            Engine(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", Some("engine_error")),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", Some("internal_error")),
        }
    }

    pub fn param(&self) -> Option<String> {
        match self {
            ApiError::Invalid { param, .. } => param.clone(),
            ApiError::Unsupported { param, .. } => Some(param.clone()),
            ApiError::ContextLength { param, .. } => Some(param.to_string()),
            ApiError::ModelNotFound(_) => Some("model".into()),
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            ApiError::QueueFull { retry_after_secs, .. } => Some(*retry_after_secs),
            ApiError::ShuttingDown | ApiError::Loading | ApiError::StoreUnavailable(_) => Some(5),
            _ => None,
        }
    }

    /// The body sent to the client (also used inside an SSE stream).
    pub fn body(&self) -> ErrorResponse {
        let (_, kind, code) = self.status_type_code();
        let message = match self {
            ApiError::Internal(_) => "The server had an internal error while processing the request.".to_string(),
            other => other.to_string(),
        };
        ErrorResponse {
            error: ErrorBody { message, r#type: kind.to_string(), param: self.param(), code: code.map(str::to_string) },
        }
    }
}

/// OpenAI's error envelope.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub r#type: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// Attached to error responses so the access log can say what went wrong.
#[derive(Debug, Clone)]
pub struct ErrorNote(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.status_type_code();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(detail = %detail, "internal error");
        }
        let body = self.body();
        let note = ErrorNote(format!("{}: {}", body.error.code.as_deref().unwrap_or(&body.error.r#type), body.error.message));
        let mut resp = (status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(note);
        if let Some(secs) = self.retry_after() {
            resp.headers_mut().insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_hides_detail() {
        let e = ApiError::Internal("/home/x/secret.rs:12 panicked".into());
        let body = serde_json::to_string(&e.body()).unwrap();
        assert!(!body.contains("secret"), "{body}");
        assert_eq!(e.status_type_code().0, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn context_length_shape() {
        let e = ApiError::ContextLength { message: "too long".into(), param: "messages" };
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        assert_eq!(v["error"]["param"], "messages");
    }

    #[test]
    fn rate_limit_has_retry_after() {
        let e = ApiError::RateLimited { message: "slow down".into(), kind: "requests", retry_after_secs: 7 };
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "7");
    }
}
