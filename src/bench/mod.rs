//! `kiln bench`: serving benchmarks against any OpenAI-compatible server
//! (`serve`, `sweep`) and offline engine throughput (`throughput`).
//! Figures follow vLLM's definitions (see `stats`), so they compare.
//!
//! ```text
//! args -> dataset (random | prefix | sharegpt) -> driver (arrivals,
//!   concurrency) -> client (one SSE stream, timed) -> stats -> report
//!   (table, JSON) + plot (SVG/PNG)
//! ```

pub mod args;
pub mod client;
pub mod dataset;
pub mod driver;
pub mod plot;
pub mod report;
pub mod serve;
pub mod sse;
pub mod stats;
pub mod sweep;
pub mod throughput;

use std::path::PathBuf;

pub use args::{DatasetSpec, Endpoint, ServeArgs, Slo, SweepArgs, ThroughputArgs, WorkloadArgs};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    #[error("cannot reach the server at {url}: {detail} (is it running, and is --base-url right?)")]
    Unreachable { url: String, detail: String },
    #[error("{0}")]
    Server(String),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("charts: {0}")]
    Plot(String),
    #[error("engine: {0}")]
    Engine(String),
}

/// `kiln bench ...`
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum BenchCommand {
    /// Drive an OpenAI-compatible server with streaming requests and
    /// measure TTFT, TPOT, ITL, end-to-end latency and throughput.
    Serve(ServeArgs),
    /// Offline engine throughput: no HTTP, every request at once.
    Throughput(ThroughputArgs),
    /// Serve benchmarks over several concurrencies or rates.
    Sweep(SweepArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("kiln-bench").build()?)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .try_init()
        .ok();
    match args.command {
        BenchCommand::Serve(a) => runtime()?.block_on(serve::serve(&a)).map(drop)?,
        BenchCommand::Sweep(a) => runtime()?.block_on(sweep::sweep(&a)).map(drop)?,
        BenchCommand::Throughput(a) => throughput::throughput(&a).map(drop)?,
    }
    Ok(())
}
