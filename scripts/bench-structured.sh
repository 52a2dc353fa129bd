#!/usr/bin/env bash
# Constrained against unconstrained serving throughput on one kiln server:
# the same random chat workload at 1 and 16 concurrent clients, alternating
# plain and `--response-format tests/fixtures/structured/bench_schema.json`
# (strict json_schema) for ROUNDS rounds, printing output tokens/s per run and
# the median ratio. Needs an otherwise idle machine.
#
#   KILN=target/release/kiln ROUNDS=3 scripts/bench-structured.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KILN="${KILN:-target/release/kiln}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-8931}"
MODEL_FILE=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT="$(mktemp -d)"
"$KILN" serve --port "$PORT" --max-num-seqs 16 --data-dir "" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 1; done

run() { # concurrency, label, extra flags...
  local c=$1 label=$2; shift 2
  "$KILN" bench serve --base-url "http://127.0.0.1:$PORT" --endpoint chat --tokenizer "$MODEL_FILE" \
    --num-prompts $((c * 4)) --input-len 128 --output-len 64 --max-concurrency "$c" --no-progress \
    --result-json "$OUT/$label.json" "$@" > /dev/null
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['output_throughput'])" "$OUT/$label.json"
}

echo "| clients | round | unconstrained out tok/s | json_schema out tok/s | ratio |"
echo "|---|---|---|---|---|"
for c in 1 16; do
  ratios=()
  for r in $(seq "$ROUNDS"); do
    plain=$(run "$c" "plain-$c-$r")
    json=$(run "$c" "json-$c-$r" --response-format tests/fixtures/structured/bench_schema.json)
    ratio=$(python3 -c "print(f'{$json/$plain:.2f}')")
    ratios+=("$ratio")
    printf '| %s | %s | %.1f | %.1f | %s |\n' "$c" "$r" "$plain" "$json" "$ratio"
  done
  echo "median ratio at $c clients: $(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")"
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
