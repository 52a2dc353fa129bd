//! `kiln bench throughput`: offline engine throughput, no HTTP, as
//! `vllm bench throughput` measures it: random token-id prompts, every
//! request submitted at once, each generating exactly --output-len tokens
//! (ignore_eos, temperature 1), timed from the first submission to the
//! last token. Model loading is not timed.

use std::time::Instant;

use serde_json::{json, Value};

use super::args::{DatasetSpec, ThroughputArgs};
use super::dataset::{build, DatasetOptions, Prompt};
use super::BenchError;
use crate::engine::{EventKind, Priority, StopCriteria, ValidRequest};
use crate::launch::{start_engine, Engine};
use crate::sampling::SamplingParams;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ThroughputResult {
    pub elapsed_time: f64,
    pub num_requests: usize,
    pub failed: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub total_num_tokens: usize,
    pub requests_per_second: f64,
    /// Input plus output tokens per second (vLLM's `tokens_per_second`).
    pub tokens_per_second: f64,
    pub input_tokens_per_second: f64,
    pub output_tokens_per_second: f64,
    pub errors: Vec<String>,
}

fn request(i: usize, ids: Vec<u32>, output_len: usize, seed: Option<u64>) -> ValidRequest {
    ValidRequest {
        request_id: format!("bench-{i}"),
        prompt_ids: ids,
        sampling: SamplingParams { seed, ..SamplingParams::default() },
        stop: StopCriteria { max_tokens: output_len, ignore_eos: true, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar: None,
    }
}

/// Sends the workload through a started engine and measures it.
pub fn measure(engine: &Engine, args: &ThroughputArgs) -> Result<ThroughputResult, BenchError> {
    let dataset = build(&DatasetOptions {
        spec: &DatasetSpec::Random,
        num_prompts: args.num_prompts,
        input_len: args.input_len,
        output_len: Some(args.output_len),
        range_ratio: args.range_ratio,
        prefix_len: 0,
        vocab_size: engine.tokenizer.vocab_size() as u32,
        seed: args.dataset_seed,
        tokenizer: Some(&engine.tokenizer),
        text: false,
    })?;
    let longest = dataset.requests.iter().map(|r| r.prompt_len + r.output_len).max().unwrap_or(0);
    if longest > engine.max_model_len {
        return Err(BenchError::Usage(format!(
            "prompts of up to {longest} tokens with their outputs exceed the model's context of {} (--max-model-len)",
            engine.max_model_len
        )));
    }
    let t0 = Instant::now();
    let mut receivers = Vec::with_capacity(dataset.requests.len());
    for (i, r) in dataset.requests.into_iter().enumerate() {
        let Prompt::Ids(ids) = r.prompt else { unreachable!("token-id prompts were asked for") };
        let rx = engine.handle.submit(request(i, ids, r.output_len, args.engine.seed)).map_err(|e| BenchError::Engine(e.to_string()))?;
        receivers.push(rx);
    }
    let mut res = ThroughputResult { num_requests: receivers.len(), ..Default::default() };
    let bar = indicatif::ProgressBar::new(receivers.len() as u64);
    for mut rx in receivers {
        let mut done = false;
        while let Some(ev) = rx.blocking_recv() {
            match ev.kind {
                EventKind::Token { .. } | EventKind::PromptLogprobs { .. } => {}
                EventKind::Finished { usage, .. } => {
                    res.total_input_tokens += usage.prompt_tokens;
                    res.total_output_tokens += usage.completion_tokens;
                    done = true;
                    break;
                }
                EventKind::Error(e) => {
                    res.errors.push(e);
                    break;
                }
            }
        }
        if !done {
            res.failed += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    res.elapsed_time = secs;
    res.total_num_tokens = res.total_input_tokens + res.total_output_tokens;
    res.requests_per_second = (res.num_requests - res.failed) as f64 / secs;
    res.tokens_per_second = res.total_num_tokens as f64 / secs;
    res.input_tokens_per_second = res.total_input_tokens as f64 / secs;
    res.output_tokens_per_second = res.total_output_tokens as f64 / secs;
    Ok(res)
}

pub fn report_json(args: &ThroughputArgs, model: &str, r: &ThroughputResult) -> Value {
    let mut v = serde_json::to_value(r).expect("plain data serializes");
    let config = json!({
        "model": model,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "num_prompts": args.num_prompts,
        "range_ratio": args.range_ratio,
        "dataset_seed": args.dataset_seed,
        "seed": args.engine.seed,
        "max_num_seqs": args.engine.max_num_seqs,
        "max_num_batched_tokens": args.engine.max_num_batched_tokens,
        "block_size": args.engine.block_size,
        "kv_cache_gib": args.engine.kv_cache_gib,
        "prefix_caching": !args.engine.no_prefix_caching,
        "threads": crate::backend::cpu::pool::threads(),
    });
    v["config"] = config;
    v["date"] = json!(super::report::utc_stamp());
    v["kiln_version"] = json!(env!("CARGO_PKG_VERSION"));
    v
}

/// The whole `kiln bench throughput` command.
pub fn throughput(args: &ThroughputArgs) -> Result<ThroughputResult, BenchError> {
    let engine = start_engine(&args.engine).map_err(|e| BenchError::Engine(format!("{e:#}")))?;
    let result = measure(&engine, args);
    engine.handle.shutdown();
    let r = result?;
    println!(
        "Throughput: {:.2} requests/s, {:.2} total tokens/s, {:.2} output tokens/s",
        r.requests_per_second, r.tokens_per_second, r.output_tokens_per_second
    );
    println!("Input tokens/s: {:.2}", r.input_tokens_per_second);
    println!("Total num prompt tokens:  {}", r.total_input_tokens);
    println!("Total num output tokens:  {}", r.total_output_tokens);
    println!("Elapsed: {:.2} s ({} requests, {} failed)", r.elapsed_time, r.num_requests, r.failed);
    for e in r.errors.iter().take(5) {
        println!("error: {e}");
    }
    if let Some(path) = &args.result_json {
        super::serve::write_json(path, &report_json(args, &engine.model_name, &r))?;
        eprintln!("kiln bench: results written to {}", path.display());
    }
    Ok(r)
}
