//! The engine: the single owner of scheduler, KV pool and model runner, on its
//! own OS thread. Everything else reaches it through channels.
//!
//! ```text
//! EngineHandle::submit(ValidRequest) --crossbeam--> engine thread (core.rs)
//!   scheduler.rs (token budget) + kv_cache/ (blocks, prefix cache)
//!   -> ModelRunner::execute -> output.rs (detokenize, stop) -> TokenEvent
//!   <--tokio mpsc, one receiver per request--
//! ```

pub mod config;
mod constrain;
pub mod embed;
mod core;
mod inbox;
pub mod fake;
pub mod handle;
pub mod kv_cache;
pub mod offline;
pub mod output;
pub mod scheduler;
pub mod sequence;
pub mod stats;
pub mod stop;
pub mod types;

pub use config::{EngineConfig, EngineError};
pub use handle::EngineHandle;
pub use stats::EngineStats;
pub use types::*;
