//! kiln: a self-contained LLM inference engine and OpenAI-compatible server.
//!
//! Data flow: HTTP JSON -> `api` validates into an `engine::ValidRequest` ->
//! the engine thread (`engine`) schedules token budgets over a paged KV cache
//! -> `runner` turns the step into a `model::BatchInput` -> `model` runs the
//! forward pass on a `backend` -> `sampling` picks ids -> `engine::TokenEvent`s
//! flow back to the handler.

pub mod api;
pub mod backend;
pub mod bench;
pub mod batch;
pub mod config;
pub mod embedding;
pub mod engine;
pub mod launch;
pub mod model;
pub mod pgstore;
pub mod runner;
pub mod sampling;
pub mod serve;
pub mod structured;
pub mod tokenizer;
