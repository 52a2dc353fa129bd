#!/usr/bin/env bash
# The one script of the CUDA backend's GPU checks (docs/gpu.md).
#
#   scripts/gpu-check.sh prepare        on the build machine: builds the GPU test
#                                       binary (release, --features cuda), strips
#                                       and gzips it into .gpu-bin/ (git-ignored)
#   scripts/gpu-check.sh run check      on the GPU machine (~6 min): kernels vs
#                                       CPU, fixture models vs CPU and transformers,
#                                       compute-sanitizer memcheck, random-weight
#                                       Llama-3.2-1B and Qwen3-0.6B vs CPU
#   scripts/gpu-check.sh run bench      on the GPU machine (~9 min): Llama-3.1-8B
#                                       shape vs transformers on the GPU, kernel
#                                       timings, batch-1 decode vs the memory floor,
#                                       offline throughput next to transformers
#
# Results land in $OUT (or ./gpu-check-out): summary.txt (the table printed
# last), *.log of every step, bench.jsonl. The device call (device tool):
#   run(command="scripts/gpu-check.sh run check", carry=[".gpu-bin"], timeout_s=600)
# The binary needs the NVIDIA driver; cuBLAS and NVRTC are found in the CUDA
# toolkit or the Python wheels of the machine's torch (LD_LIBRARY_PATH is set
# below), so nothing is installed there.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin_dir="$root/.gpu-bin"

prepare() {
  set -e
  grep -qx '/.gpu-bin/' .git/info/exclude 2>/dev/null || echo '/.gpu-bin/' >> .git/info/exclude
  mkdir -p "$bin_dir"
  local exe
  exe="$(cargo test --release --features cuda --test cuda_gpu --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_gpu":
        print(m["executable"])' | tail -1)"
  [ -n "$exe" ] || { echo "error: build of tests/cuda_gpu.rs failed (run the cargo command above)" >&2; exit 1; }
  strip -o "$bin_dir/cuda_gpu" "$exe"
  gzip -9f "$bin_dir/cuda_gpu"
  ls -l "$bin_dir"
  echo "carry .gpu-bin and run: scripts/gpu-check.sh run check   (then: run bench)"
}

setup_device_env() {
  out="${OUT:-$root/gpu-check-out}"
  mkdir -p "$out"
  summary="$out/summary.txt"
  : > "$summary"
  export KILN_REQUIRE_GPU=1 KILN_BENCH_OUT="$out/bench.jsonl" KILN_KERNEL_CACHE="${TMPDIR:-/tmp}/kiln-kernels"
  export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
  local d libdirs=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
           /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib; do
    [ -d "$d" ] && libdirs="$libdirs:$d"
  done
  export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  models="${TMPDIR:-/tmp}/kiln-models"
  mkdir -p "$models"
  gpu_bin="${TMPDIR:-/tmp}/cuda_gpu"
  gunzip -c "$bin_dir/cuda_gpu.gz" > "$gpu_bin" && chmod +x "$gpu_bin" || { echo "error: $bin_dir/cuda_gpu.gz missing: run 'scripts/gpu-check.sh prepare' here and carry .gpu-bin" >&2; exit 1; }
  {
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /'
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  } | tee -a "$summary"
}

# step NAME COMMAND...: runs and logs one step, records PASS/FAIL and seconds.
step() {
  local name="$1"; shift
  local t0=$SECONDS rc
  echo "== $name: $*" >&2
  "$@" > "$out/$name.log" 2>&1
  rc=$?
  printf '%-28s %-4s %4ds  %s\n' "$name" "$([ $rc -eq 0 ] && echo PASS || echo FAIL)" $((SECONDS - t0)) "$out/$name.log" | tee -a "$summary"
  [ $rc -eq 0 ] || tail -30 "$out/$name.log" >&2
  return 0
}

tests() { "$gpu_bin" --test-threads=1 --nocapture "$@"; }

make_model() {
  [ -f "$models/$1/config.json" ] || python3 scripts/gpu/make_random_model.py "$1" "$models/$1"
}

run_check() {
  step kernels        tests gpu::kernels
  step attention      tests gpu::attention
  step sampling       tests gpu::sampling
  step fixture_models tests gpu::model::fixture_models_match_cpu_and_transformers
  step memcheck       compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
                        "$gpu_bin" --test-threads=1 gpu::model::fixture_models_match_cpu_and_transformers
  step make_models    bash -c "$(declare -f make_model); models=$models; make_model llama-3.2-1b && make_model qwen3-0.6b"
  step random_models  env KILN_GPU_MODELS="$models/llama-3.2-1b:$models/qwen3-0.6b" \
                        "$gpu_bin" --test-threads=1 --nocapture gpu::model::random_weight_models_match_cpu
}

run_bench() {
  step make_8b        bash -c "$(declare -f make_model); models=$models; make_model llama-3.1-8b && make_model qwen3-0.6b"
  step hf_reference   python3 scripts/gpu/hf_reference.py "$models/llama-3.1-8b" "$out/hf_reference_8b.json"
  step vs_transformers env KILN_HF_REFERENCE="$out/hf_reference_8b.json" \
                        "$gpu_bin" --test-threads=1 --nocapture gpu::model::transformers_on_the_gpu_agrees
  step kernel_timings env KILN_BENCH_KERNELS=1 "$gpu_bin" --test-threads=1 --nocapture gpu::bench::kernel_timings
  step decode_speed   env KILN_BENCH_MODELS="$models/qwen3-0.6b:$models/llama-3.1-8b" \
                        "$gpu_bin" --test-threads=1 --nocapture gpu::bench::decode_speed
  step throughput     env KILN_THROUGHPUT_MODEL="$models/llama-3.1-8b" KILN_THROUGHPUT_REQUESTS="${KILN_THROUGHPUT_REQUESTS:-1000}" \
                        "$gpu_bin" --test-threads=1 --nocapture gpu::bench::offline_throughput
  step hf_throughput  bash -c "python3 scripts/gpu/hf_throughput.py '$models/llama-3.1-8b' --requests ${KILN_THROUGHPUT_REQUESTS:-1000} >> '$KILN_BENCH_OUT'"
  echo "-- bench.jsonl" | tee -a "$summary"
  cat "$KILN_BENCH_OUT" 2>/dev/null | tee -a "$summary"
}

case "${1:-}" in
  prepare) prepare ;;
  run)
    setup_device_env
    case "${2:-check}" in
      check) run_check ;;
      bench) run_bench ;;
      all) run_check; run_bench ;;
      *) echo "usage: $0 run check|bench|all" >&2; exit 2 ;;
    esac
    echo "-- summary ($summary)"; cat "$summary"
    ! grep -q ' FAIL ' "$summary"
    ;;
  *) sed -n '2,22p' "$0"; exit 2 ;;
esac
