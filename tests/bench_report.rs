//! The `--result-json` report: its schema (every key, its type, documented
//! in docs/benchmarks.md), its consistency with itself, the configuration
//! it carries, and the `--plot` charts.

mod bench_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use bench_support::{serve, serve_args, Fate, Mock};
use clap::CommandFactory;
use serde_json::Value;

/// The report's keys and JSON types. A change here is a change of the
/// published format: bump report::SCHEMA_VERSION and docs/benchmarks.md.
const SCHEMA: &[(&str, &str)] = &[
    ("schema_version", "integer"),
    ("date", "string"),
    ("kiln_version", "string"),
    ("backend", "string"),
    ("endpoint_type", "string"),
    ("base_url", "string"),
    ("model_id", "string"),
    ("tokenizer_id", "null|string"),
    ("num_prompts", "integer"),
    ("request_rate", "number|string"),
    ("burstiness", "number"),
    ("max_concurrency", "null|integer"),
    ("goodput_slo", "null|object"),
    ("config", "object"),
    ("duration", "number"),
    ("completed", "integer"),
    ("failed", "integer"),
    ("total_input_tokens", "integer"),
    ("total_output_tokens", "integer"),
    ("request_throughput", "number"),
    ("request_goodput", "null|number"),
    ("input_throughput", "number"),
    ("output_throughput", "number"),
    ("total_token_throughput", "number"),
    ("max_output_tokens_per_s", "number"),
    ("max_concurrent_requests", "integer"),
    ("requests_without_usage", "integer"),
    ("input_lens", "array<integer>"),
    ("output_lens", "array<integer>"),
    ("start_times", "array<number>"),
    ("ttfts", "array<null|number>"),
    ("tpots", "array<null|number>"),
    ("itls", "array<array<number>>"),
    ("e2els", "array<number>"),
    ("errors", "array<null|string>"),
    ("error_counts", "array<object>"),
    ("output_tokens_per_s", "array<number>"),
];

const METRICS: [&str; 4] = ["ttft", "tpot", "itl", "e2el"];
const STATS: [&str; 5] = ["mean", "median", "std", "p90", "p99"];

fn schema() -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = SCHEMA.iter().map(|(k, t)| (k.to_string(), t.to_string())).collect();
    for m in METRICS {
        for s in STATS {
            all.push((format!("{s}_{m}_ms"), "number".into()));
        }
    }
    all
}

fn has_type(v: &Value, ty: &str) -> bool {
    if let Some(inner) = ty.strip_prefix("array<").and_then(|t| t.strip_suffix('>')) {
        return v.as_array().is_some_and(|a| a.iter().all(|x| has_type(x, inner)));
    }
    ty.split('|').any(|t| match t {
        "integer" => v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => panic!("unknown type {t}"),
    })
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().filter_map(Value::as_f64).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_follows_its_schema_and_adds_up() {
    let mut mock = Mock::new(30, 10, 5);
    mock.fate = |k| if k == 3 { Fate::Http500 } else { Fate::Ok };
    let base = serve(Arc::new(mock)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out/result.json");
    let file_s = file.to_str().unwrap().to_string();
    let args = serve_args(&[
        "--base-url", &base, "--num-prompts", "10", "--input-len", "12", "--output-len", "5",
        "--max-concurrency", "3", "--goodput", "ttft:1000", "--result-json", &file_s, "--api-key", "secret-key",
    ]);
    kiln::bench::serve::serve(&args).await.expect("the benchmark runs");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("the report was written")).unwrap();
    let obj = report.as_object().unwrap();

    let expected = schema();
    let want: BTreeSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(got, want, "missing: {:?}, undocumented: {:?}", want.difference(&got), got.difference(&want));
    for (k, ty) in &expected {
        assert!(has_type(&report[k], ty), "{k} should be {ty}: {}", report[k]);
    }
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md")).unwrap();
    for (k, _) in SCHEMA {
        assert!(docs.contains(&format!("`{k}`")), "docs/benchmarks.md does not describe `{k}`");
    }
    assert!(docs.contains("`{mean,median,std,p90,p99}_{ttft,tpot,itl,e2el}_ms`"));

    // Self-consistency, recomputed here from the per-request arrays.
    let n = 10;
    for k in ["input_lens", "output_lens", "start_times", "ttfts", "tpots", "itls", "e2els", "errors"] {
        assert_eq!(report[k].as_array().unwrap().len(), n, "{k}");
    }
    let errors = report["errors"].as_array().unwrap();
    let ok: Vec<usize> = (0..n).filter(|&i| errors[i].is_null()).collect();
    assert_eq!((report["completed"].as_u64(), report["failed"].as_u64()), (Some(9), Some(1)));
    assert_eq!(ok.len(), 9);
    let out: u64 = ok.iter().map(|&i| report["output_lens"][i].as_u64().unwrap()).sum();
    assert_eq!(report["total_output_tokens"].as_u64(), Some(out));
    assert!((numbers(&report["output_tokens_per_s"]).iter().sum::<f64>() - out as f64).abs() < 1e-6);
    let ttfts: Vec<f64> = ok.iter().map(|&i| report["ttfts"][i].as_f64().unwrap() * 1000.0).collect();
    let mean = ttfts.iter().sum::<f64>() / ttfts.len() as f64;
    assert!((report["mean_ttft_ms"].as_f64().unwrap() - mean).abs() < 1e-6);
    let mut sorted = ttfts.clone();
    sorted.sort_by(f64::total_cmp);
    assert!((report["median_ttft_ms"].as_f64().unwrap() - sorted[4]).abs() < 1e-6, "odd count: the middle value");
    let itl_count: usize = ok.iter().map(|&i| report["itls"][i].as_array().unwrap().len()).sum();
    assert_eq!(itl_count, 9 * 4);
    let dur = report["duration"].as_f64().unwrap();
    assert!((report["request_throughput"].as_f64().unwrap() - 9.0 / dur).abs() < 1e-9);
    assert!((report["request_goodput"].as_f64().unwrap() - 9.0 / dur).abs() < 1e-9);
    assert_eq!(report["error_counts"][0]["count"], 1);
    assert_eq!(report["model_id"], "mock-model");
    assert_eq!(report["request_rate"], "inf");
    assert_eq!(report["max_concurrency"], 3);
    assert_eq!(report["goodput_slo"]["ttft_ms"], 1000.0);

    // The configuration: every flag of `kiln bench serve` but the secret key.
    let flags: BTreeSet<String> = bench_support::ServeCli::command()
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .filter(|id| id != "api_key" && id != "help")
        .collect();
    let config: BTreeSet<String> = report["config"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(config, flags);
    assert!(!std::fs::read_to_string(&file).unwrap().contains("secret-key"), "the API key is not written");
    assert_eq!(report["config"]["input_len"], 12);
}

/// A PNG's width and height from its IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// Charts need a font; machines without any skip the chart checks.
fn fonts_available() -> bool {
    let ok = std::env::var_os("KILN_PLOT_FONT").is_some() || std::path::Path::new("/usr/share/fonts").exists();
    if !ok {
        eprintln!("SKIP: no system fonts (/usr/share/fonts) and no KILN_PLOT_FONT for the chart text");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plots_are_written_as_svg_and_png() {
    if !fonts_available() {
        return;
    }
    let base = serve(Arc::new(Mock::new(20, 10, 4))).await;
    let dir = tempfile::tempdir().unwrap();
    let plots = dir.path().join("charts");
    let args = serve_args(&["--base-url", &base, "--num-prompts", "6", "--input-len", "4", "--output-len", "4", "--plot", plots.to_str().unwrap()]);
    kiln::bench::serve::serve(&args).await.expect("the benchmark runs and draws");
    for (name, size, title) in [("latency_cdf", (1200, 900), "Time to first token"), ("throughput", (1200, 800), "Output tokens per second")] {
        let png = std::fs::read(plots.join(format!("{name}.png"))).unwrap();
        assert_eq!(png_size(&png), size, "{name}.png");
        let svg = std::fs::read_to_string(plots.join(format!("{name}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains(title) && svg.contains("<polyline"), "{name}.svg");
    }
}

#[test]
fn sweep_flags_need_a_load_list() {
    #[derive(clap::Parser)]
    struct SweepCli {
        #[command(flatten)]
        args: kiln::bench::SweepArgs,
    }
    use clap::Parser;
    assert!(SweepCli::try_parse_from(["sweep"]).is_err(), "a sweep without loads");
    assert!(SweepCli::try_parse_from(["sweep", "--concurrencies", "1,2", "--rates", "1"]).is_err(), "both lists");
    let a = SweepCli::try_parse_from(["sweep", "--concurrencies", "1,4,16"]).unwrap().args;
    assert_eq!(a.concurrencies, vec![1, 4, 16]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_runs_each_load_and_draws_one_chart() {
    #[derive(clap::Parser)]
    struct SweepCli {
        #[command(flatten)]
        args: kiln::bench::SweepArgs,
    }
    use clap::Parser;
    let mock = Arc::new(Mock::new(20, 10, 4));
    let base = serve(mock.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (json, plots) = (dir.path().join("sweep.json"), dir.path().join("plots"));
    let argv = ["sweep", "--base-url", &base, "--num-prompts", "6", "--input-len", "4", "--output-len", "4", "--no-progress", "--concurrencies", "1,3"];
    let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    argv.extend(["--result-json".into(), json.display().to_string()]);
    let draw = fonts_available();
    if draw {
        argv.extend(["--plot".into(), plots.display().to_string()]);
    }
    let args = SweepCli::try_parse_from(argv).unwrap().args;
    let reports = kiln::bench::sweep::sweep(&args).await.expect("the sweep runs");
    assert_eq!(reports.len(), 2);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let points = doc["points"].as_array().unwrap();
    for (p, c) in points.iter().zip([1, 3]) {
        assert_eq!(p["max_concurrency"], c);
        assert_eq!(p["max_concurrent_requests"], c);
        assert_eq!(p["completed"], 6);
    }
    // 3 at a time finish the same work in about a third of the time.
    let (d1, d3) = (points[0]["duration"].as_f64().unwrap(), points[1]["duration"].as_f64().unwrap());
    assert!(d3 < d1 / 2.0, "durations {d1} and {d3}");
    if draw {
        assert!(std::fs::read_to_string(plots.join("sweep.svg")).unwrap().contains("c=3"));
        assert!(plots.join("sweep.png").exists());
    }
}
