//! Sends a workload: each request at its arrival time (Poisson process of
//! `--request-rate`, or all at once), at most `--max-concurrency` in flight.
//! As in vLLM, a request waiting for a concurrency slot has not been sent:
//! its latencies start when it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Semaphore;

use super::client::Target;
use super::dataset::BenchRequest;
use super::stats::RequestRecord;

pub struct RunConfig {
    /// Requests per second; infinite sends everything at time 0.
    pub request_rate: f64,
    pub max_concurrency: Option<usize>,
    pub seed: u64,
    pub progress: bool,
}

/// Records in workload order, and the seconds from the first send to the
/// last response.
pub struct RunResult {
    pub records: Vec<RequestRecord>,
    pub duration: f64,
}

/// Send times (seconds from the start) of `n` requests: exponential gaps
/// of mean 1/rate, the first at 0; all 0 for an infinite rate.
pub fn arrival_times(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    if !rate.is_finite() {
        return vec![0.0; n];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1));
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 {
                // 1 - u lies in (0, 1]: the log is finite.
                let u: f64 = rng.gen();
                t += -(1.0 - u).ln() / rate;
            }
            t
        })
        .collect()
}

fn progress_bar(n: usize, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    let style = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:40}] {pos}/{len} requests {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub async fn run(target: &Target, requests: &[BenchRequest], cfg: &RunConfig) -> RunResult {
    let arrivals = arrival_times(requests.len(), cfg.request_rate, cfg.seed);
    let slots = cfg.max_concurrency.map(|c| Arc::new(Semaphore::new(c.max(1))));
    let bar = progress_bar(requests.len(), cfg.progress);
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (req, at)) in requests.iter().cloned().zip(arrivals).enumerate() {
        let (target, slots, bar, failed) = (target.clone(), slots.clone(), bar.clone(), failed.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
            let _permit = match &slots {
                Some(s) => Some(s.acquire().await.expect("the semaphore is never closed")),
                None => None,
            };
            let rec = target.send(&req, t0).await;
            if !rec.success {
                let n = failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                bar.set_message(format!("({n} failed)"));
            }
            bar.inc(1);
            (i, rec)
        });
    }
    let mut records = vec![RequestRecord::default(); requests.len()];
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((i, rec)) => records[i] = rec,
            Err(e) => tracing::error!("a benchmark task died: {e}"),
        }
    }
    let duration = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    RunResult { records, duration }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_have_the_rate_as_mean_and_unit_cv() {
        let rate = 4.0;
        let t = arrival_times(20_000, rate, 7);
        let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n).sqrt();
        // Exponential: mean 1/rate, standard deviation equal to the mean.
        assert!((mean * rate - 1.0).abs() < 0.03, "mean gap {mean}");
        assert!((sd / mean - 1.0).abs() < 0.05, "cv {}", sd / mean);
        // P(gap > 1/rate) = e^-1 for an exponential.
        let above = gaps.iter().filter(|&&g| g > 1.0 / rate).count() as f64 / n;
        assert!((above - (-1.0f64).exp()).abs() < 0.02, "tail {above}");
        assert_eq!(t, arrival_times(20_000, rate, 7), "seeded");
        assert_eq!(arrival_times(3, f64::INFINITY, 7), vec![0.0; 3]);
    }
}
