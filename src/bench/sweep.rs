//! `kiln bench sweep`: the same workload at each concurrency (or rate) in
//! turn, one summary table, one JSON file and one throughput-latency chart.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::args::{ServeArgs, SweepArgs};
use super::plot::{sweep_chart, SweepPoint};
use super::serve::{prepare, run_point, write_json};
use super::stats::Summary;
use super::BenchError;

/// The serve flags of each point.
fn points(args: &SweepArgs) -> Result<Vec<(String, ServeArgs)>, BenchError> {
    let point = |rate: f64, conc: Option<usize>| ServeArgs {
        workload: args.workload.clone(),
        request_rate: rate,
        max_concurrency: conc,
        result_json: None,
        plot: None,
    };
    if !args.concurrencies.is_empty() {
        if args.concurrencies.contains(&0) {
            return Err(BenchError::Usage("--concurrencies must all be at least 1".into()));
        }
        return Ok(args.concurrencies.iter().map(|&c| (format!("c={c}"), point(f64::INFINITY, Some(c)))).collect());
    }
    if args.rates.is_empty() || args.rates.iter().any(|r| r.is_nan() || *r <= 0.0) {
        return Err(BenchError::Usage("--rates must be positive numbers".into()));
    }
    Ok(args.rates.iter().map(|&r| (format!("r={r}"), point(r, None))).collect())
}

fn summary_table(rows: &[(String, Summary)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>8} {:>7} {:>10} {:>10} {:>12} {:>12} {:>12}",
        "load", "ok", "failed", "req/s", "out tok/s", "med TTFT ms", "med TPOT ms", "p99 E2E ms"
    );
    for (label, s) in rows {
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>7} {:>10.2} {:>10.2} {:>12.2} {:>12.2} {:>12.2}",
            label, s.completed, s.failed, s.request_throughput, s.output_throughput, s.ttft.median, s.tpot.median, s.e2el.p99
        );
    }
    out
}

/// The whole `kiln bench sweep` command; returns each point's report.
pub async fn sweep(args: &SweepArgs) -> Result<Vec<Value>, BenchError> {
    let loads = points(args)?;
    let prepared = prepare(&args.workload).await?;
    let mut rows = vec![];
    let mut reports = vec![];
    for (label, serve_args) in &loads {
        eprintln!("kiln bench sweep: {label}");
        let out = run_point(&prepared, serve_args).await;
        print!("{}", out.table);
        rows.push((label.clone(), out.summary));
        reports.push(out.json);
    }
    println!("\n{}", summary_table(&rows));
    if let Some(path) = &args.result_json {
        let doc = json!({"kind": "sweep", "config": args, "points": reports});
        write_json(path, &doc)?;
        eprintln!("kiln bench: results written to {}", path.display());
    }
    if let Some(dir) = &args.plot {
        let pts: Vec<SweepPoint> = rows
            .iter()
            .map(|(label, s)| SweepPoint { label: label.clone(), median_tpot_ms: s.tpot.median, output_throughput: s.output_throughput })
            .collect();
        eprintln!("kiln bench: chart written: {}", sweep_chart(dir, &pts)?.join(", "));
    }
    Ok(reports)
}
