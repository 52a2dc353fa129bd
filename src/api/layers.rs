//! The layers every route group shares, put together by
//! `crate::serve::router`: the OpenAI-shaped 413, CORS and the panic
//! catcher's answer.

use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::ApiError;

/// tower-http answers an oversized Content-Length with a bare 413 before
/// reading the body; give it OpenAI's error shape.
pub async fn shape_413(limit: usize, resp: Response) -> Response {
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return ApiError::PayloadTooLarge { limit }.into_response();
    }
    resp
}

pub fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let h = |s: &'static str| HeaderName::from_static(s);
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, h("x-api-key"), h("x-request-id"), h("x-session-id"), h("anthropic-version")])
            .expose_headers([
                h("x-request-id"),
                h("x-session-id"),
                h("x-ratelimit-limit-requests"),
                h("x-ratelimit-remaining-requests"),
                h("x-ratelimit-reset-requests"),
                h("x-ratelimit-limit-tokens"),
                h("x-ratelimit-remaining-tokens"),
                h("x-ratelimit-reset-tokens"),
                header::RETRY_AFTER,
            ]),
    )
}

pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}
