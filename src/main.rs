//! The `kiln` command line: serve | generate.

use clap::{Parser, Subcommand};
use kiln::engine::{EventKind, FinishReason, Priority, StopCriteria, ValidRequest};
use kiln::launch::{start_engine, EngineArgs};
use kiln::sampling::SamplingParams;
use kiln::tokenizer::ChatMessage;
use std::io::Write;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "kiln", version, about = "kiln: an LLM inference engine with an OpenAI-compatible server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible HTTP API.
    Serve {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        server: kiln::config::ServerConfig,
        /// A TOML file listing the models to serve, each with its own engine
        /// flags ([[models]] path = ..., name = ..., kv_cache_gib = ...).
        #[arg(long)]
        models_file: Option<std::path::PathBuf>,
    },
    /// Generate text for one prompt (streamed to stdout) or a file of prompts.
    Generate(GenerateArgs),
    /// Run a batch input file (OpenAI Batch API JSONL) offline through the engine.
    Batch(kiln::batch::BatchCliArgs),
    /// Benchmark a server (serve, sweep) or the engine offline (throughput).
    Bench(kiln::bench::BenchArgs),
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt text.
    #[arg(long, required_unless_present = "prompts_file", conflicts_with = "prompts_file")]
    prompt: Option<String>,
    /// A file of prompts: one per line, or JSONL objects with "prompt" and
    /// per-line sampling parameters. Outputs are printed in input order.
    #[arg(long)]
    prompts_file: Option<std::path::PathBuf>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// A system message (implies --chat).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Sampling flags shared by the generate modes.
#[derive(clap::Args, Clone)]
struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy. Default: the model's generation_config, else 1.0.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep the k most likely tokens; 0 or -1 disables.
    #[arg(long)]
    top_k: Option<i32>,
    /// Drop tokens less likely than min_p times the most likely one.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// > 1 discourages tokens already in the prompt or output.
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Subtracted once per earlier occurrence of a token in the output.
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Subtracted once from every token present in the output.
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Stop strings (repeatable); the match is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
}

impl SamplingArgs {
    /// The seed is left to the engine's --seed (same seed and prompt, same output).
    fn params(&self, g: &kiln::model::loader::GenerationDefaults) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.or(g.temperature).unwrap_or(1.0),
            top_p: self.top_p.or(g.top_p).unwrap_or(1.0),
            top_k: self.top_k.or(g.top_k).unwrap_or(0),
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty.or(g.repetition_penalty).unwrap_or(1.0),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: vec![],
            seed: None,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { engine, server, models_file } => kiln::serve::run_serve_cli(server, engine, models_file),
        Command::Bench(args) => kiln::bench::run(args),
        Command::Batch(args) => kiln::batch::run_cli(args),
        Command::Generate(args) => {
            // stdout carries the generated text only.
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
                .with_writer(std::io::stderr)
                .init();
            generate(args)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Every prompt of the file through the engine at once; one JSON line per
/// prompt on stdout, in input order; totals on stderr.
fn generate_file(engine: &kiln::launch::Engine, args: &GenerateArgs, file: &std::path::Path, sampling: SamplingParams) -> anyhow::Result<()> {
    use kiln::engine::offline::{parse_prompts, run_prompts, OfflineOptions};
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let prompts = parse_prompts(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let opts = OfflineOptions { max_tokens: args.sampling.max_tokens, sampling, chat: args.chat, progress: true };
    let report = run_prompts(&engine.handle, &engine.tokenizer, &prompts, &opts)?;
    let mut out = std::io::stdout().lock();
    for r in &report.results {
        serde_json::to_writer(&mut out, r)?;
        writeln!(out)?;
    }
    eprintln!(
        "{} prompts: {} prompt tokens, {} generated tokens in {:.2} s: {:.1} generated tokens/s",
        report.results.len(),
        report.prompt_tokens,
        report.completion_tokens,
        report.elapsed.as_secs_f64(),
        report.tokens_per_s()
    );
    engine.handle.shutdown();
    Ok(())
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let engine = start_engine(&args.engine)?;
    let params = args.sampling.params(&engine.generation);
    if let Some(file) = &args.prompts_file {
        return generate_file(&engine, &args, file, params);
    }
    let prompt = args.prompt.clone().unwrap_or_default();
    let ids = if args.chat || args.system.is_some() {
        let mut msgs = vec![];
        if let Some(s) = &args.system {
            msgs.push(ChatMessage::new("system", s.clone()));
        }
        msgs.push(ChatMessage::new("user", prompt));
        let text = engine.tokenizer.apply_chat_template(&msgs, true)?;
        engine.tokenizer.encode(&text, false)?
    } else {
        engine.tokenizer.encode(&prompt, true)?
    };
    let n_prompt = ids.len();
    let req = ValidRequest {
        request_id: "cli".into(),
        prompt_ids: ids,
        sampling: params,
        stop: StopCriteria {
            max_tokens: args.sampling.max_tokens,
            stop_token_ids: vec![],
            stop_strings: args.sampling.stop.clone(),
            ignore_eos: args.sampling.ignore_eos,
        },
        n: 1,
        priority: Priority::Interactive,
        grammar: None,
    };
    let t0 = Instant::now();
    let mut rx = engine.handle.submit(req)?;
    let (mut first, mut last, mut n_out) = (None, t0, 0usize);
    let mut out = std::io::stdout().lock();
    let mut reason = FinishReason::Abort;
    while let Some(ev) = rx.blocking_recv() {
        match ev.kind {
            EventKind::Token { text, .. } => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                n_out += 1;
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            EventKind::Finished { reason: r, text, .. } => {
                out.write_all(text.as_bytes())?;
                reason = r;
                break;
            }
            EventKind::Error(e) => anyhow::bail!("generation failed: {e}"),
            EventKind::PromptLogprobs { .. } => {}
        }
    }
    writeln!(out)?;
    let first = first.unwrap_or(last);
    let prefill = (first - t0).as_secs_f64();
    let decode = (last - first).as_secs_f64();
    eprintln!(
        "prompt: {n_prompt} tokens, {:.1} tokens/s | generation: {n_out} tokens, {:.1} tokens/s | finish: {}",
        n_prompt as f64 / prefill.max(1e-9),
        n_out.saturating_sub(1) as f64 / decode.max(1e-9),
        reason.as_str()
    );
    engine.handle.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
