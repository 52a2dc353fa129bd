//! The server as a whole: the one router, start-up and shutdown
//! (`server`), and `kiln serve` (`cli`). It sits above `api` (the shared
//! HTTP pieces and the wire protocols) and `batch` (the Files and Batch
//! APIs); neither imports it, and `api` imports neither it nor `batch`.
//!
//! Layers, outermost first: CORS -> panic catcher -> Anthropic error shape
//! (on /v1/messages only) -> request record (id, log line, metrics,
//! rate-limit headers) -> auth (on the matched route) -> 413 rewrite ->
//! body limit -> route. The Files/Batches group sits inside auth and the
//! request record but outside the JSON body limit (uploads have their own).

pub mod cli;
pub mod server;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state, map_response};
use axum::response::Response;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;

pub use cli::run_serve_cli;
pub use server::{init_tracing, serve, serve_loading, serve_with};

use crate::api::{self, auth, layers, misc, reqlog, AppState};

/// Every route group with every layer; used by `serve_with` and by tests.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let app = Router::new()
        .merge(api::openai_routes())
        .merge(api::responses::routes(&state))
        .merge(api::anthropic::routes())
        .merge(api::operations_routes())
        .fallback(misc::not_found)
        .method_not_allowed_fallback(misc::method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limit))
        .layer(map_response(move |r: Response| layers::shape_413(limit, r)))
        .merge(crate::batch::routes(&state))
        .layer(from_fn_with_state(state.clone(), auth::require_key))
        .layer(from_fn_with_state(state.clone(), reqlog::record_request))
        .layer(from_fn(api::anthropic::error::reshape))
        .layer(CatchPanicLayer::custom(layers::panic_response));
    let app = match layers::cors_layer(&state.config.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.with_state(state)
}
