#!/usr/bin/env bash
# Serving comparison on a CPU machine: `kiln serve` and llama.cpp's
# OpenAI-compatible server (llama-cpp-python from PyPI, `python -m
# llama_cpp.server`) on the same GGUF, one after the other, under the same
# `kiln bench serve` workloads at 1 and 16 concurrent requests; prints a
# comparison table (markdown) with the date and the machine.
#
#   scripts/bench-cpu-peer.sh [MODEL.gguf]     (default: the default model)
#
# Environment: INPUT_LEN (128), OUTPUT_LEN (64), PROMPTS_C1 (8),
# PROMPTS_C16 (32), CONCURRENCIES ("1 16"), THREADS (all cores),
# OUT (target/bench-peer), KILN (a built kiln binary; default: release build).
#
# The workload: random token ids decoded to text by the model's tokenizer
# (llama.cpp's server takes no token ids), /v1/completions, greedy, and
# exactly OUTPUT_LEN tokens per request: `ignore_eos` for kiln, `min_tokens`
# for llama.cpp (which has no ignore_eos). llama.cpp streams no usage, so
# its tokens are counted as text chunks. Both servers get the same threads.
# llama-cpp-python serves one request at a time; by default a new request
# cuts the running stream short, so that is turned off (--interrupt_requests
# False): concurrent requests queue. The "tokens" column shows generated /
# asked, so a server that stops early shows it.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-$(models/fetch_default.sh)}"
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN="${OUTPUT_LEN:-64}"
PROMPTS_C1="${PROMPTS_C1:-8}"
PROMPTS_C16="${PROMPTS_C16:-32}"
CONCURRENCIES="${CONCURRENCIES:-1 16}"
THREADS="${THREADS:-$(nproc)}"
OUT="${OUT:-target/bench-peer}"
VENV=.venv-llama
CTX=2048

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import llama_cpp.server.app, uvicorn, sse_starlette, starlette_context, pydantic_settings" 2>/dev/null; then
  echo "installing llama-cpp-python[server] into $VENV (may build llama.cpp; several minutes)..." >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'llama-cpp-python[server]'
fi
if [ -z "${KILN:-}" ]; then
  cargo build --release --quiet --bin kiln
  KILN=target/release/kiln
fi
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT

wait_ready() { # URL LOG
  for _ in $(seq 600); do
    if curl -sf "$1/v1/models" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "server died; log: $2" >&2; tail -20 "$2" >&2; exit 1; fi
    sleep 0.5
  done
  echo "server at $1 not ready after 300 s; log: $2" >&2; exit 1
}

start_server() { # NAME PORT
  local log="$OUT/$1.log"
  case "$1" in
    kiln)
      "$KILN" serve --model "$MODEL" --host 127.0.0.1 --port "$2" --threads "$THREADS" --max-model-len "$CTX" \
        --max-num-seqs 16 >"$log" 2>&1 &
      ;;
    llama.cpp)
      "$VENV/bin/python" -m llama_cpp.server --model "$MODEL" --host 127.0.0.1 --port "$2" --n_ctx "$CTX" \
        --n_threads "$THREADS" --n_threads_batch "$THREADS" --interrupt_requests False >"$log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  wait_ready "http://127.0.0.1:$2" "$log"
}

run_bench() { # NAME PORT CONCURRENCY
  local n="$PROMPTS_C1"
  [ "$3" -gt 1 ] && n="$PROMPTS_C16"
  local extra=(--ignore-eos)
  [ "$1" = llama.cpp ] && extra=(--extra-body "{\"min_tokens\": $OUTPUT_LEN}")
  echo "== $1, concurrency $3, $n prompts" >&2
  "$KILN" bench serve --base-url "http://127.0.0.1:$2" --tokenizer "$MODEL" --dataset random \
    --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --num-prompts "$n" --max-concurrency "$3" \
    --temperature 0 --seed 0 --no-progress "${extra[@]}" --result-json "$OUT/$1-c$3.json" >"$OUT/$1-c$3.txt"
}

for name in kiln llama.cpp; do
  port=$(free_port)
  start_server "$name" "$port"
  for c in $CONCURRENCIES; do run_bench "$name" "$port" "$c"; done
  stop_server
done

LLAMA_VERSION=$("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')
echo
echo "$(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), threads $THREADS"
echo "model $(basename "$MODEL"); kiln $(git rev-parse --short HEAD 2>/dev/null || echo '?'), llama-cpp-python $LLAMA_VERSION;" \
  "prompts of $INPUT_LEN tokens, $OUTPUT_LEN generated"
echo
echo "| server | concurrency | ok/failed | tokens | req/s | output tok/s | median TTFT ms | median TPOT ms | p99 E2E ms |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for c in $CONCURRENCIES; do
  for name in kiln llama.cpp; do
    jq -r --arg n "$name" --arg c "$c" --argjson out "$OUTPUT_LEN" \
      '"| \($n) | \($c) | \(.completed)/\(.failed) | \(.total_output_tokens)/\(.num_prompts * $out) | \(.request_throughput*100|round/100) | \(.output_throughput*10|round/10) | \(.median_ttft_ms|round) | \(.median_tpot_ms*10|round/10) | \(.p99_e2el_ms|round) |"' \
      "$OUT/$name-c$c.json"
  done
done
echo
echo "(full tables and JSON: $OUT/)"
