#!/usr/bin/env bash
# Single-stream decode speed of kiln vs llama.cpp (llama-cpp-python from PyPI)
# on the same GGUF, side by side in one run: the two alternate, ROUNDS times
# each, and the medians and their ratio are printed.
#
#   scripts/bench-cpu-decode.sh [MODEL.gguf]    (default: the default model)
#
# Both generate TOKENS tokens greedily from the same prompt with end-of-sequence
# ignored; decode tokens/s = (tokens - 1) / (time of last token - time of first),
# so prompt processing is excluded on both sides. Threads: all cores on both.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-$(models/fetch_default.sh)}"
TOKENS="${TOKENS:-128}"
ROUNDS="${ROUNDS:-5}"
THREADS="${THREADS:-$(nproc)}"
PROMPT="The history of the printing press begins"
VENV=.venv-llama

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "installing llama-cpp-python into $VENV (builds llama.cpp; several minutes)..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q llama-cpp-python
fi
cargo build --release --quiet
KILN=target/release/kiln

kiln_once() {
  "$KILN" generate --model "$MODEL" --threads "$THREADS" --prompt "$PROMPT" --temperature 0 \
    --ignore-eos --max-tokens "$TOKENS" 2>&1 >/dev/null | sed -n 's/.*generation: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1/p'
}

llama_once() {
  "$VENV/bin/python" - "$MODEL" "$TOKENS" "$THREADS" "$PROMPT" <<'PY'
import sys, time
from llama_cpp import Llama
model, n, threads, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
llm = Llama(model_path=model, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
stamps = []
for _ in llm.create_completion(prompt, max_tokens=n, temperature=0.0, top_k=1, stream=True):
    stamps.append(time.perf_counter())
# with EOS possible, llama.cpp may stop early: report what it generated
k = len(stamps)
print(f"{(k - 1) / (stamps[-1] - stamps[0]):.1f}" if k > 1 else "0")
PY
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

k_runs=(); l_runs=()
for i in $(seq "$ROUNDS"); do
  k_runs+=("$(kiln_once)")
  l_runs+=("$(llama_once)")
  echo "round $i: kiln ${k_runs[-1]} tok/s, llama.cpp ${l_runs[-1]} tok/s" >&2
done
k=$(printf '%s\n' "${k_runs[@]}" | median)
l=$(printf '%s\n' "${l_runs[@]}" | median)
echo "model: $MODEL"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads $THREADS"
echo "decode tokens/s (median of $ROUNDS, $TOKENS tokens): kiln $k, llama.cpp $l, ratio $(awk -v a="$k" -v b="$l" 'BEGIN {printf "%.2f", a/b}')"
