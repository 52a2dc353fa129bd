//! Errors in Anthropic's shape on the Messages routes:
//! `{"type": "error", "error": {"type", "message"}}`. The status still
//! comes from the one mapping (`ApiError::status_type_code`); this module
//! only names it the way Anthropic does, and `reshape` rewrites every
//! OpenAI-shaped error on /v1/messages routes (auth's 401, the body limit's
//! 413, rate limits' 429, ...) into this shape, headers kept.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{json, Value};

use crate::api::error::ApiError;

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The body of `e` in Anthropic's shape.
pub fn error_body(e: &ApiError) -> Value {
    let (status, _, _) = e.status_type_code();
    json!({"type": "error", "error": {"type": error_type(status), "message": e.body().error.message}})
}

/// Whether a path is one of the Anthropic routes.
pub fn is_anthropic_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// Largest error body rewritten (errors are a few hundred bytes).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Middleware: on Anthropic routes, error responses in OpenAI's shape
/// become Anthropic's.
pub async fn reshape(req: Request, next: Next) -> Response {
    if !is_anthropic_path(req.uri().path()) {
        return next.run(req).await;
    }
    let resp = next.run(req).await;
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status().as_u16() < 400 || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string));
    let Some(message) = message else { return Response::from_parts(parts, Body::from(bytes)) };
    let body = json!({"type": "error", "error": {"type": error_type(parts.status), "message": message}}).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
