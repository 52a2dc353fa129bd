#!/usr/bin/env bash
# kiln against llama.cpp itself on the CPU, same GGUF, same threads, one run:
#
#   decode   llama-bench tg128            vs  kiln generate, 128 tokens, EOS ignored
#   prompt   llama-bench pp512            vs  kiln generate, a ~512-token prompt
#   serving  llama-server -np 16 -c 16384 vs  kiln serve, both under the same
#            `kiln bench serve` load: greedy chat, random prompts of INPUT_LEN
#            tokens (as text), 128 max tokens with EOS ignored, streamed;
#            1 client, then 16
#
# Measures alternate (llama.cpp, kiln, llama.cpp, ...) for ROUNDS rounds and
# the table shows medians and kiln/llama.cpp ratios, with the machine and the
# date. Run it on an idle machine: other load skews both sides differently.
#
#   scripts/bench-cpu-peer.sh [MODEL.gguf]     (default: the default model)
#
# Random-weight ~0.4B models of Q4_K_M and Q8_0 mix for the same comparison:
#   python3 scripts/gen_quant_fixtures.py bench-model q4_k_m ~/.cache/kiln-peer/random-0.4b-q4_k_m.gguf
#   python3 scripts/gen_quant_fixtures.py bench-model q8_0 ~/.cache/kiln-peer/random-0.4b-q8_0.gguf
#
# Environment: SERVING (1; 0 = decode and prompt only, for the larger
# models), ROUNDS (3), THREADS (all cores), INPUT_LEN (128), PROMPTS_C1
# (8), PROMPTS_C16 (32), KILN (a built kiln; default: cargo build --release),
# KILN_FLAGS (extra flags for kiln generate/serve, e.g. "--cpu-activations
# int16"), OUT (target/bench-peer). llama.cpp comes from
# scripts/build-llama-cpp.sh (llama-cpp-python's sdist, -DGGML_NATIVE=ON,
# cached in ~/.cache/kiln-peer).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-$(models/fetch_default.sh)}"
ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-$(nproc)}"
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN=128
PROMPTS_C1="${PROMPTS_C1:-8}"
PROMPTS_C16="${PROMPTS_C16:-32}"
SERVING="${SERVING:-1}"
OUT="${OUT:-target/bench-peer}"
read -r -a KFLAGS <<<"${KILN_FLAGS:-}"
mkdir -p "$OUT"

BIN="$(scripts/build-llama-cpp.sh)"
if [ -z "${KILN:-}" ]; then
  cargo build --release --quiet --bin kiln
  KILN=target/release/kiln
fi

median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a/b; else print "n/a"}'; }

# ~512 tokens of prose for kiln's prompt measure (llama-bench pp512 uses 512 tokens).
LONG_PROMPT="$(for _ in $(seq 51); do printf 'The printing press changed how ideas moved across Europe. '; done)"

llama_bench() { # -> "tg pp" tokens/s
  "$BIN/llama-bench" -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r 1 -o json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); g={(x["n_prompt"],x["n_gen"]):x["avg_ts"] for x in r}; print("%.1f %.1f" % (g[(0,128)], g[(512,0)]))'
}

kiln_generate() { # PROMPT TOKENS -> "prompt_tok_s gen_tok_s"
  "$KILN" generate --model "$MODEL" --threads "$THREADS" "${KFLAGS[@]}" --prompt "$1" --temperature 0 \
    --ignore-eos --max-tokens "$2" 2>&1 >/dev/null |
    sed -n 's/.*prompt: \([0-9]*\) tokens, \([0-9.]*\) tokens\/s | generation: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1 \2 \3/p' | tail -1
}

: >"$OUT/rounds.txt"
for r in $(seq "$ROUNDS"); do
  read -r l_tg l_pp <<<"$(llama_bench)"
  read -r _ _ k_tg <<<"$(kiln_generate "The history of the printing press begins" 128)"
  read -r k_pn k_pp _ <<<"$(kiln_generate "$LONG_PROMPT" 2)"
  echo "round $r: tg llama.cpp $l_tg kiln $k_tg | pp llama.cpp $l_pp kiln $k_pp ($k_pn tokens)" | tee -a "$OUT/rounds.txt" >&2
  echo "$l_tg $k_tg $l_pp $k_pp" >>"$OUT/engine.txt.$$"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap 'stop_server; rm -f "$OUT/engine.txt.$$"' EXIT

start_server() { # NAME PORT
  local log="$OUT/$1.log"
  case "$1" in
    kiln) "$KILN" serve --model "$MODEL" --host 127.0.0.1 --port "$2" --threads "$THREADS" "${KFLAGS[@]}" \
            --max-num-seqs 16 >"$log" 2>&1 & ;;
    llama.cpp) "$BIN/llama-server" -m "$MODEL" --host 127.0.0.1 --port "$2" -np 16 -c 16384 -t "$THREADS" \
            >"$log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$2/v1/models" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$2/health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "$1 died; log: $log" >&2; tail -20 "$log" >&2; exit 1; fi
    sleep 0.5
  done
  echo "$1 not ready after 300 s; log: $log" >&2
  exit 1
}

serve_round() { # NAME ROUND -> output tok/s at c1 and c16 into $OUT/NAME-cC-rR.json
  local port
  port=$(free_port)
  start_server "$1" "$port"
  for c in 1 16; do
    local n="$PROMPTS_C1"
    [ "$c" -gt 1 ] && n="$PROMPTS_C16"
    "$KILN" bench serve --base-url "http://127.0.0.1:$port" --endpoint chat --tokenizer "$MODEL" --dataset random \
      --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --num-prompts "$n" --max-concurrency "$c" \
      --temperature 0 --ignore-eos --seed "$2" --no-progress --result-json "$OUT/$1-c$c-r$2.json" >"$OUT/$1-c$c-r$2.txt"
  done
  stop_server
}

for r in $(seq "$ROUNDS"); do
  [ "$SERVING" = 0 ] && break
  serve_round llama.cpp "$r"
  serve_round kiln "$r"
  echo "serving round $r done" >&2
done

col() { awk -v i="$1" '{print $i}' "$OUT/engine.txt.$$" | median; }
l_tg=$(col 1); k_tg=$(col 2); l_pp=$(col 3); k_pp=$(col 4)
serve_median() { # NAME C FIELD
  for f in "$OUT/$1-c$2"-r*.json; do jq -r ".$3" "$f"; done | median
}
tokens() { # NAME C: generated / asked over all rounds
  local got=0 asked=0
  for f in "$OUT/$1-c$2"-r*.json; do
    got=$((got + $(jq -r '.total_output_tokens' "$f"))); asked=$((asked + $(jq -r ".num_prompts * $OUTPUT_LEN" "$f")))
  done
  echo "$got/$asked"
}

LLAMA_COMMIT=$(sed -n 's/.*"build_commit": *"\([^"]*\)".*/\1/p' <("$BIN/llama-bench" -m "$MODEL" -t 1 -p 0 -n 1 -r 1 -o json 2>/dev/null) | head -1)
{
  echo "$(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, threads $THREADS"
  echo "model $(basename "$MODEL"); kiln $(git rev-parse --short HEAD 2>/dev/null || echo '?') ${KILN_FLAGS:-}; llama.cpp ${LLAMA_COMMIT:-?} (llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION:-0.3.36} sdist, GGML_NATIVE); medians of $ROUNDS alternating rounds"
  echo
  echo "| measure | llama.cpp | kiln | kiln / llama.cpp |"
  echo "| --- | --- | --- | --- |"
  echo "| decode, 128 tokens (llama-bench tg128; kiln generate) | $l_tg tok/s | $k_tg tok/s | $(ratio "$k_tg" "$l_tg") |"
  echo "| prompt (llama-bench pp512; kiln generate, ~512-token prompt) | $l_pp tok/s | $k_pp tok/s | $(ratio "$k_pp" "$l_pp") |"
  for c in 1 16; do
    [ "$SERVING" = 0 ] && break
    l=$(serve_median llama.cpp "$c" output_throughput); k=$(serve_median kiln "$c" output_throughput)
    lt=$(serve_median llama.cpp "$c" median_ttft_ms); kt=$(serve_median kiln "$c" median_ttft_ms)
    echo "| serving, $c client(s), greedy chat, 128 tokens, streamed: output tok/s (median TTFT ms) | $(printf '%.1f (%.0f)' "$l" "$lt") | $(printf '%.1f (%.0f)' "$k" "$kt") | $(ratio "$k" "$l") |"
  done
  echo
  [ "$SERVING" = 0 ] || echo "tokens generated/asked: llama.cpp c1 $(tokens llama.cpp 1), c16 $(tokens llama.cpp 16); kiln c1 $(tokens kiln 1), c16 $(tokens kiln 16)"
} | tee "$OUT/table.md"
echo "(per-round figures: $OUT/rounds.txt and $OUT/*.json)" >&2
