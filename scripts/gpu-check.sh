#!/usr/bin/env bash
# The CUDA backend's proof on a real GPU, in one call (docs/gpu.md, issue gpu-proof).
#
#   scripts/gpu-check.sh prepare              here, on the build machine: builds the GPU
#                                             test binary (release, --features cuda,emu),
#                                             strips and gzips it into .gpu-bin/ (git-ignored),
#                                             and prints its size against the 64 MiB carry limit
#   scripts/gpu-check.sh prepare --device emu the same in the dev profile, for the run below
#   scripts/gpu-check.sh run                  on the GPU machine: every step below, at most
#                                             $KILN_GPU_CHECK_BUDGET seconds (default 540)
#   scripts/gpu-check.sh run --device emu     here: the same steps on the emulated device, so
#                                             the script itself is tested before a GPU sees it
#
# The device call (device tool):
#   run(command="scripts/gpu-check.sh run", carry=[".gpu-bin"], timeout_s=600)
#
# Steps, in the order that brings the most proof first; each is its own process
# under `timeout`, so a hang costs that step only, and each gets what is left of
# the budget at most:
#   probe        driver/CUDA versions, GPU, library paths, device-to-device copy bandwidth
#   kernels      elementwise / row kernels vs the CPU backend
#   attention    rotary + cache write, paged decode and prefill attention vs the CPU
#   sampling     GPU sampling vs the CPU sampler's semantics
#   models       fixture models vs the CPU and transformers, quantized GGUF fixtures, every
#                --max-num-seqs 1..40, long contexts (graphs and eager), constrained decoding,
#                embedding models: the encoder's kernels and random BERTs vs the CPU encoder,
#                the Qwen3 embedding fixture vs transformers, all-MiniLM-L6-v2 vs
#                sentence-transformers where models/ has it (not on the device machine: its
#                87 MiB are over the carry limit; those two tests say so and pass)
#   memcheck     compute-sanitizer memcheck on the attention, fixture-model and random-BERT tests
#   initcheck    compute-sanitizer initcheck on the kernel tests
#   make_models  random-weight bf16 Qwen3-0.6B and Llama-3.1-8B shapes, made there with torch
#   decode       batch-1 decode ms/token, graphs and eager, vs weight bytes / copy bandwidth
#   kernel_times per-kernel medians vs their copy floors (Llama-3.1-8B shapes)
#   throughput   offline: N requests of 1,024 prompt + 128 output tokens (ignore_eos), kiln
#   hf_throughput  the same load through transformers' generate_batch on the same weights
#
# Results, appended as they arrive, under $OUT (or ./gpu-check-out), four files:
#   summary.txt  one line per step: PASS / FAIL / TIMEOUT / SKIP, seconds, the key figure
#   steps.log    every step's output, each step's capped at 2 MiB
#   bench.jsonl  the figures as JSON lines
#   probe.txt    the machine
# On the emulated device the timing steps print why they skip (the emulator is not timed),
# compute-sanitizer is absent, each step may take five times its limit, and the budget
# defaults to 1,800 s.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin_dir="$root/.gpu-bin"

prepare() { # [--device emu]: the dev profile (faster to build; for the emulated run here)
  set -e
  local profile=(--release)
  [ "${1:-}" = "--device" ] && [ "${2:-}" = emu ] && profile=()
  # .gitignore names it; the exclude file (found through git: .git is a file in a worktree) is the fallback.
  git check-ignore -q .gpu-bin/ || echo '/.gpu-bin/' >> "$(git rev-parse --git-path info/exclude)"
  mkdir -p "$bin_dir"
  if [ -z "${KILN_NVRTC_LIB:-}" ] && lib="$(scripts/install-nvrtc.sh 2>/dev/null)"; then
    export KILN_NVRTC_LIB="$lib" # the cubins for sm_80/86/89/90 are embedded at build time
  fi
  local exe
  exe="$(cargo test "${profile[@]}" --features cuda,emu --test cuda_gpu --no-run --message-format=json \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_gpu":
        print(m["executable"])' | tail -1)"
  [ -n "$exe" ] || { echo "error: build of tests/cuda_gpu.rs failed (run the cargo command above)" >&2; exit 1; }
  strip -o "$bin_dir/cuda_gpu" "$exe"
  gzip -9f "$bin_dir/cuda_gpu"
  local size
  size=$(stat -c %s "$bin_dir/cuda_gpu.gz")
  echo "$bin_dir/cuda_gpu.gz: $((size / 1048576)) MiB (the call carries at most 64 MiB with the tree)"
  echo "then: run(command=\"scripts/gpu-check.sh run\", carry=[\".gpu-bin\"], timeout_s=600)"
}

# --- run -------------------------------------------------------------------

device=gpu
setup() {
  out="${OUT:-$root/gpu-check-out}"
  mkdir -p "$out"
  summary="$out/summary.txt" log="$out/steps.log" probe_file="$out/probe.txt"
  : > "$summary"; : > "$log"; : > "$probe_file"
  export KILN_BENCH_OUT="$out/bench.jsonl"
  : > "$KILN_BENCH_OUT"
  export KILN_KERNEL_CACHE="${TMPDIR:-/tmp}/kiln-kernels" RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
  if [ "$device" = gpu ]; then
    export KILN_REQUIRE_GPU=1 # a missing GPU fails every step instead of falling back to the emulator
    budget="${KILN_GPU_CHECK_BUDGET:-540}"
    threads=1 slow=1
  else
    unset KILN_REQUIRE_GPU
    budget="${KILN_GPU_CHECK_BUDGET:-1800}"
    threads="$(nproc)" slow=5 # the emulator runs a step's kernels on the CPU: five times its GPU limit
  fi
  deadline=$((SECONDS + budget))
  local d libdirs=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
           /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib; do
    [ -d "$d" ] && libdirs="$libdirs:$d"
  done
  export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  models="${TMPDIR:-/tmp}/kiln-models"
  mkdir -p "$models"
  gpu_bin="${TMPDIR:-/tmp}/kiln-cuda_gpu"
  if [ -f "$bin_dir/cuda_gpu.gz" ]; then
    gunzip -c "$bin_dir/cuda_gpu.gz" > "$gpu_bin" && chmod +x "$gpu_bin"
  else
    echo "error: $bin_dir/cuda_gpu.gz missing: run 'scripts/gpu-check.sh prepare' here and carry .gpu-bin" | tee -a "$summary" >&2
    exit 1
  fi
  export gpu_bin threads models probe_file
  sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)"
  export sanitizer
  {
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    echo "device: $device, budget ${budget}s, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  } | tee -a "$summary"
}

# step NAME LIMIT_S COMMAND...: runs COMMAND under `timeout` (LIMIT_S or what is left of the
# budget, the smaller), appends its output to steps.log (capped at 2 MiB), and writes one
# summary line. The key figure is the last line of the output that starts with "KEY ".
step() {
  local name="$1" limit="$2"; shift 2
  local left=$((deadline - SECONDS))
  limit=$((limit * slow))
  if [ "$left" -lt 10 ]; then
    printf '%-14s SKIP       no time left in the %ss budget\n' "$name" "$budget" | tee -a "$summary"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  local t0=$SECONDS rc tmp verdict key
  tmp="$(mktemp)"
  echo "===== $name (limit ${limit}s): $*" >> "$log"
  # The step may be one of this script's functions: run it in a child bash that has them.
  timeout --kill-after=5 "$limit" bash -c "$(declare -f tests probe sanitize make_model); \"\$@\"" step "$@" > "$tmp" 2>&1
  rc=$?
  head -c 2097152 "$tmp" >> "$log"
  case $rc in
    0) verdict=PASS ;;
    124|137) verdict=TIMEOUT ;;
    *) verdict=FAIL ;;
  esac
  [ $rc -eq 0 ] && grep -q 'SKIPPED' "$tmp" && verdict=SKIP
  key="$(grep '^KEY ' "$tmp" | tail -1 | cut -c5-)"
  [ -z "$key" ] && key="$(grep -o 'test result: [a-zA-Z]*\. [0-9]* passed; [0-9]* failed' "$tmp" | tail -1)"
  [ "$verdict" = SKIP ] && key="$(grep -m1 -o 'SKIPPED.*' "$tmp" | cut -c1-160)"
  printf '%-14s %-7s %4ds  %s\n' "$name" "$verdict" $((SECONDS - t0)) "$key" | tee -a "$summary"
  [ "$verdict" = PASS ] || [ "$verdict" = SKIP ] || tail -25 "$tmp" >&2
  rm -f "$tmp"
  return 0
}

tests() { "$gpu_bin" --test-threads="$threads" "$@"; }

probe() {
  {
    echo "uname: $(uname -srm)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | sed 's/^/gpu: /'
      nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/cuda driver api: \1/p'
    else
      echo "gpu: none (nvidia-smi not found)"
    fi
    command -v nvcc >/dev/null && nvcc --version | tail -2 | head -1 | sed 's/^/nvcc: /'
    echo "compute-sanitizer: ${sanitizer:-not found}"
    echo "LD_LIBRARY_PATH: $LD_LIBRARY_PATH"
    ldconfig -p 2>/dev/null | grep -E 'lib(cuda|cublas|cublasLt|nvrtc)\.so' | sed 's/^\s*/lib: /'
    python3 -c 'import torch, transformers; print("torch:", torch.__version__, "cuda", torch.version.cuda, "| transformers:", transformers.__version__)' 2>&1 | tail -1
  } | tee "$probe_file"
  # The copy floor every later figure is set against, measured in this call.
  KILN_BENCH_PROBE=1 tests --nocapture gpu::bench::copy_bandwidth_probe
}

make_model() { # SHAPE: a random-weight bf16 model of that public shape, made with torch there
  [ -f "$models/$1/config.json" ] || python3 scripts/gpu/make_random_model.py "$1" "$models/$1"
}

sanitize() { # TOOL TEST_FILTER...
  local tool="$1"; shift
  if [ -z "$sanitizer" ]; then
    echo "SKIPPED $tool: compute-sanitizer not found on PATH or under /usr/local/cuda*/bin"
    return 0
  fi
  # A sanitizer that refuses the device (some virtual machines) says so in its first lines;
  # the step records it and the run goes on.
  "$sanitizer" --tool "$tool" --error-exitcode 9 "$gpu_bin" --test-threads=1 "$@"
}

run_steps() {
  step probe        60 probe
  step kernels      90 tests gpu::kernels
  step attention    90 tests gpu::attention
  step sampling     60 tests gpu::sampling
  step models      150 tests gpu::model::fixture_models gpu::runner gpu::structured gpu::encoder
  step memcheck    120 sanitize memcheck gpu::attention gpu::model::fixture_models gpu::encoder::random_berts
  step initcheck    60 sanitize initcheck gpu::kernels
  if [ "$device" = gpu ]; then
    step make_models 150 bash -c "$(declare -f make_model); models=$models; make_model qwen3-0.6b && make_model llama-3.1-8b"
    bench_models="$models/qwen3-0.6b:$models/llama-3.1-8b"
    big="$models/llama-3.1-8b"
  else
    # The emulator is not timed: the timing tests run and say why they skip.
    bench_models="$root/tests/fixtures/models/llama3_tied"
    big="$bench_models"
  fi
  step decode       90 env KILN_BENCH_MODELS="$bench_models" "$gpu_bin" --test-threads=1 --nocapture gpu::bench::decode_speed
  step kernel_times 60 env KILN_BENCH_KERNELS=1 "$gpu_bin" --test-threads=1 --nocapture gpu::bench::kernel_timings
  local n="${KILN_THROUGHPUT_REQUESTS:-1000}"
  step throughput  150 env KILN_THROUGHPUT_MODEL="$big" KILN_THROUGHPUT_REQUESTS="$n" "$gpu_bin" --test-threads=1 --nocapture gpu::bench::offline_throughput
  if [ "$device" = gpu ]; then
    step hf_throughput 150 bash -c "python3 scripts/gpu/hf_throughput.py '$big' --requests $n >> '$KILN_BENCH_OUT'"
  fi
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run)
    shift
    while [ $# -gt 0 ]; do
      case "$1" in
        --device) device="${2:-}"; shift 2 ;;
        --device=*) device="${1#--device=}"; shift ;;
        *) echo "usage: $0 run [--device gpu|emu]" >&2; exit 2 ;;
      esac
    done
    case "$device" in gpu|emu) ;; *) echo "error: --device is gpu or emu, not '$device'" >&2; exit 2 ;; esac
    setup
    run_steps
    echo "-- bench.jsonl" >> "$summary"
    cat "$KILN_BENCH_OUT" >> "$summary"
    echo "-- summary ($summary)"
    cat "$summary"
    ! grep -qE '^[a-z_]+ +(FAIL|TIMEOUT) ' "$summary"
    ;;
  *) sed -n '2,40p' "$0"; exit 2 ;;
esac
