//! `kiln batch INPUT.jsonl -o OUTPUT.jsonl`: a batch input file run offline
//! through the engine, with the server's own handlers (exec.rs), so every
//! line is validated and answered exactly as the Batch API would. The model
//! is started as `kiln serve` starts it, so an embedding model serves
//! `/v1/embeddings` lines (and a generation model chat/completions lines).
//!
//! Answers are appended (and fsynced) under `OUTPUT.partial/` as they
//! complete; an interrupted run started again with the same arguments
//! resumes there. At the end OUTPUT is written in input order.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::sync::Semaphore;

use super::exec::LineExecutor;
use super::input::{scan, InputError, LineRef};
use super::runner::{RunCtx, RunEnd};
use super::sink::{write_in_order, ResultSink, SinkCounts};
use crate::api::startup::{start_models, ModelSpec};
use crate::api::AppState;
use crate::config::ServerConfig;
use crate::launch::EngineArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct BatchCliArgs {
    /// Input JSONL: one request per line, as for POST /v1/batches
    /// ({"custom_id", "method": "POST", "url", "body"}).
    pub input: PathBuf,
    /// Results in OpenAI's batch output format, in input order.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Write failed requests here instead of into OUTPUT.
    #[arg(long)]
    pub error_file: Option<PathBuf>,
    /// The name lines must give as "model" (default: the model's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Requests in flight at most (default: --max-num-seqs).
    #[arg(long)]
    pub max_inflight: Option<NonZeroUsize>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn partial_dir(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn read_input(path: &Path) -> anyhow::Result<Vec<LineRef>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    scan(std::io::BufReader::new(file)).map_err(|e| match e {
        InputError::Line { line, reason } => anyhow::anyhow!("{}:{line}: {reason}", path.display()),
        other => anyhow::anyhow!("{}: {other}", path.display()),
    })
}

fn progress_bar(total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    let style = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec}, eta {eta}) {msg}");
    if let Ok(style) = style {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs the whole file; returns the counts.
pub fn run_cli(args: BatchCliArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let lines = read_input(&args.input)?;
    let work = partial_dir(&args.output);
    let spec = ModelSpec { name: None, args: args.engine.clone() };
    let loaded = start_models(std::slice::from_ref(&spec))?;
    let cap = args.max_inflight.map_or(args.engine.max_num_seqs, NonZeroUsize::get).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(async {
        let config = ServerConfig { served_model_name: args.served_model_name.clone(), data_dir: PathBuf::new(), ..Default::default() };
        let main = AppState::new_served(config, loaded)?.remove(0);
        let engine = main.engine.clone();
        let exec = Arc::new(LineExecutor::new(&main)?);
        let mut sink = ResultSink::open(&work).with_context(|| format!("opening {}", work.display()))?;
        let c = sink.counts();
        if c.completed + c.failed > 0 {
            eprintln!("kiln batch: resuming: {} of {} requests already answered in {}", c.completed + c.failed, lines.len(), work.display());
        }
        let input = Arc::new(std::fs::File::open(&args.input)?);
        let bar = progress_bar(lines.len());
        let ctx = RunCtx {
            exec,
            input,
            lines: &lines,
            sink: &mut sink,
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            stop: Box::new(|| None),
            progress: Box::new(|c: SinkCounts| {
                bar.set_position(c.completed + c.failed + c.not_run);
                bar.set_message(format!("{} failed", c.failed));
            }),
        };
        let end = ctx.run().await?;
        bar.finish();
        anyhow::Ok((engine, end, sink.counts(), sink.output_path(), sink.errors_path()))
    });
    let (engine, end, counts, out, err) = result?;
    engine.shutdown();
    if let RunEnd::Unavailable(why) = end {
        bail!("the engine stopped: {why}; run the same command again to resume");
    }
    match &args.error_file {
        Some(errors) => {
            write_in_order(&lines, &[out], &args.output)?;
            write_in_order(&lines, &[err], errors)?;
        }
        None => {
            write_in_order(&lines, &[out, err], &args.output)?;
        }
    }
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    eprintln!("kiln batch: {} requests: {} succeeded, {} failed -> {}", lines.len(), counts.completed, counts.failed, args.output.display());
    Ok(())
}
