//! The engine: the single owner of scheduler, KV pool and model runner, on its
//! own OS thread. Everything else reaches it through channels.

pub mod kv_cache;
pub mod types;

pub use types::*;
