//! The kernel compile gate: every kernels/*.cu compiles with NVRTC to a cubin
//! for sm_80, sm_86, sm_89 and sm_90, and each cubin defines the functions the
//! backend will look up. Needs no GPU: only the NVRTC library, which CI
//! installs from PyPI with scripts/install-nvrtc.sh (see docs/gpu.md).
//!
//! Without NVRTC the test prints why it skips; with KILN_REQUIRE_NVRTC=1 (set
//! by CI) a missing library fails it instead.

use kiln::backend::cuda::kernels::FILES;
use kiln::backend::cuda::nvrtc::{self, Arch, CHECKED_ARCHS};

fn nvrtc_or_skip() -> bool {
    match nvrtc::ensure_loaded() {
        Ok(dir) => {
            let (maj, min) = nvrtc::version().expect("nvrtcVersion");
            let from = dir.map(|d| d.display().to_string()).unwrap_or_else(|| "the loader path".into());
            println!("NVRTC {maj}.{min} from {from}");
            true
        }
        Err(e) if std::env::var("KILN_REQUIRE_NVRTC").is_ok_and(|v| v == "1") => {
            panic!("KILN_REQUIRE_NVRTC=1 but {e}")
        }
        Err(e) => {
            println!("SKIPPED: {e}");
            false
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Lines of ptxas's -v report naming registers, spills or shared memory.
fn resource_lines(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("Used") || l.contains("spill") || l.contains("Compiling entry"))
        .map(|l| format!("    {}\n", l.trim()))
        .collect()
}

#[test]
fn every_kernel_compiles_for_every_checked_arch() {
    if !nvrtc_or_skip() {
        return;
    }
    let jobs: Vec<(usize, Arch)> = (0..FILES.len()).flat_map(|f| CHECKED_ARCHS.map(|a| (f, a))).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(f, arch)) = jobs.get(i) else { break };
                let started = std::time::Instant::now();
                let r = nvrtc::compile(&FILES[f], arch, arch == Arch::new(9, 0));
                results.lock().unwrap().push((f, arch, r, started.elapsed()));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(f, a, _, _)| (*f, a.major, a.minor));
    let mut failures = Vec::new();
    for (f, arch, r, took) in &results {
        let file = &FILES[*f];
        match r {
            Ok(c) => {
                println!("ok   {:<24} {arch} {:>8} bytes {:>6.2}s", file.name, c.cubin.len(), took.as_secs_f64());
                for func in file.functions {
                    if !contains(&c.cubin, func.as_bytes()) {
                        failures.push(format!("{}.cu ({arch}): cubin lacks {func}", file.name));
                    }
                }
                if *arch == Arch::new(9, 0) {
                    print!("{}", resource_lines(&c.log));
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n\n"));
}
