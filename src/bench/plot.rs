//! Charts of `--plot DIR`, each drawn twice by the same code: SVG and PNG.
//!
//! - latency_cdf: cumulative distributions of TTFT, TPOT, ITL and E2E;
//! - throughput: output tokens/s per second and requests in flight over time;
//! - sweep: output throughput against median TPOT, one point per load.
//!
//! Text needs a TrueType font: $KILN_PLOT_FONT, else a common system font.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::stats::RequestRecord;
use super::BenchError;

const FONT: &str = "sans-serif";

/// Where fonts usually are (Debian/Ubuntu, Fedora/Arch, macOS, Windows).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font once for the process; the error says where it looked.
fn ensure_font() -> Result<(), BenchError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let paths: Vec<PathBuf> = std::env::var_os("KILN_PLOT_FONT")
                .map(|p| vec![PathBuf::from(p)])
                .unwrap_or_else(|| FONT_CANDIDATES.iter().map(PathBuf::from).collect());
            let Some(bytes) = paths.iter().find_map(|p| std::fs::read(p).ok()) else {
                return Err(format!(
                    "no TrueType font found for the charts (looked at {}); set KILN_PLOT_FONT=/path/to/font.ttf",
                    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ));
            };
            // Registered fonts live as long as the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes).map_err(|_| "the chart font is not a valid TrueType font".to_string())
        })
        .clone()
        .map_err(BenchError::Plot)
}

type Drawn = Result<(), String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Upper end of an axis over `values`, never empty.
fn axis_max(values: impl Iterator<Item = f64>) -> f64 {
    let m = values.fold(0.0, f64::max);
    if m > 0.0 {
        m * 1.05
    } else {
        1.0
    }
}

/// The latency samples of the CDF chart, in milliseconds.
pub struct Latencies {
    pub panels: Vec<(&'static str, Vec<f64>)>,
}

impl Latencies {
    pub fn of(records: &[RequestRecord]) -> Latencies {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.success).collect();
        let ms = |v: Vec<f64>| v.into_iter().map(|s| s * 1000.0).collect::<Vec<f64>>();
        Latencies {
            panels: vec![
                ("Time to first token", ms(ok.iter().filter_map(|r| r.ttft()).collect())),
                ("Time per output token", ms(ok.iter().filter_map(|r| r.tpot()).collect())),
                ("Inter-token latency", ms(ok.iter().flat_map(|r| r.itls()).collect())),
                ("End-to-end latency", ms(ok.iter().map(|r| r.e2el()).collect())),
            ],
        }
    }
}

fn draw_cdfs<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, data: &Latencies) -> Drawn {
    root.fill(&WHITE).map_err(err)?;
    for (area, (title, values)) in root.split_evenly((2, 2)).iter().zip(&data.panels) {
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title} (n = {})", v.len()), (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..axis_max(v.iter().copied()), 0.0..1.0)
            .map_err(err)?;
        chart.configure_mesh().x_desc("ms").y_desc("fraction of requests").label_style((FONT, 13)).draw().map_err(err)?;
        // A step function: the fraction jumps at each sample.
        let points = v.iter().enumerate().flat_map(|(i, &x)| [(x, i as f64 / n), (x, (i + 1) as f64 / n)]);
        chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(err)?;
    }
    root.present().map_err(err)
}

/// Output tokens and requests in flight over the run.
pub struct Timeline {
    /// Output tokens of each second, drawn as steps: (s, n), (s + 1, n).
    pub tokens: Vec<(f64, f64)>,
    /// (time, requests in flight), every 100 ms.
    pub in_flight: Vec<(f64, f64)>,
}

impl Timeline {
    pub fn of(records: &[RequestRecord], duration: f64) -> Timeline {
        let per_s = super::stats::tokens_per_second(records);
        let tokens = per_s.iter().enumerate().flat_map(|(s, &n)| [(s as f64, n), (s as f64 + 1.0, n)]).collect();
        let steps = (duration / 0.1).ceil() as usize;
        let in_flight = (0..=steps)
            .map(|i| {
                let t = i as f64 * 0.1;
                (t, records.iter().filter(|r| r.start <= t && t < r.end).count() as f64)
            })
            .collect();
        Timeline { tokens, in_flight }
    }
}

fn draw_timeline<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, data: &Timeline) -> Drawn {
    root.fill(&WHITE).map_err(err)?;
    let series = [("Output tokens per second", "tok/s", &data.tokens), ("Requests in flight", "requests", &data.in_flight)];
    let x_max = axis_max(data.in_flight.iter().chain(&data.tokens).map(|p| p.0));
    for (area, (title, unit, points)) in root.split_evenly((2, 1)).iter().zip(series) {
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..axis_max(points.iter().map(|p| p.1)))
            .map_err(err)?;
        chart.configure_mesh().x_desc("seconds since start").y_desc(unit).label_style((FONT, 13)).draw().map_err(err)?;
        chart.draw_series(LineSeries::new(points.iter().copied(), RED.stroke_width(2))).map_err(err)?;
    }
    root.present().map_err(err)
}

/// One load point of a sweep.
pub struct SweepPoint {
    pub label: String,
    pub median_tpot_ms: f64,
    pub output_throughput: f64,
}

fn draw_sweep<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, points: &[SweepPoint]) -> Drawn {
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput against latency", (FONT, 22))
        .margin(16)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0.0..axis_max(points.iter().map(|p| p.median_tpot_ms)),
            0.0..axis_max(points.iter().map(|p| p.output_throughput)),
        )
        .map_err(err)?;
    chart.configure_mesh().x_desc("median time per output token (ms)").y_desc("output tokens/s").label_style((FONT, 13)).draw().map_err(err)?;
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.median_tpot_ms, p.output_throughput)).collect();
    chart.draw_series(LineSeries::new(xy.iter().copied(), BLUE.stroke_width(2))).map_err(err)?;
    chart
        .draw_series(points.iter().map(|p| {
            EmptyElement::at((p.median_tpot_ms, p.output_throughput))
                + Circle::new((0, 0), 4, BLUE.filled())
                + Text::new(p.label.clone(), (6, -16), (FONT, 14))
        }))
        .map_err(err)?;
    root.present().map_err(err)
}

/// Draws one chart as DIR/NAME.svg and DIR/NAME.png; returns both paths.
macro_rules! render {
    ($dir:expr, $name:expr, $size:expr, $draw:ident, $data:expr) => {{
        let svg = $dir.join(format!("{}.svg", $name));
        let png = $dir.join(format!("{}.png", $name));
        let fail = |p: &Path, e: String| BenchError::Plot(format!("drawing {}: {e}", p.display()));
        $draw(SVGBackend::new(&svg, $size).into_drawing_area(), $data).map_err(|e| fail(&svg, e))?;
        $draw(BitMapBackend::new(&png, $size).into_drawing_area(), $data).map_err(|e| fail(&png, e))?;
        vec![svg.display().to_string(), png.display().to_string()]
    }};
}

fn prepare_dir(dir: &Path) -> Result<(), BenchError> {
    ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io { path: dir.into(), source })
}

/// latency_cdf and throughput charts of one serving run.
pub fn serve_charts(dir: &Path, records: &[RequestRecord], duration: f64) -> Result<Vec<String>, BenchError> {
    prepare_dir(dir)?;
    let mut files = render!(dir, "latency_cdf", (1200, 900), draw_cdfs, &Latencies::of(records));
    files.extend(render!(dir, "throughput", (1200, 800), draw_timeline, &Timeline::of(records, duration)));
    Ok(files)
}

/// The sweep chart.
pub fn sweep_chart(dir: &Path, points: &[SweepPoint]) -> Result<Vec<String>, BenchError> {
    prepare_dir(dir)?;
    Ok(render!(dir, "sweep", (1000, 700), draw_sweep, points))
}
