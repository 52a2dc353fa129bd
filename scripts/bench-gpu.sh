#!/usr/bin/env bash
# kiln on a GPU against Hugging Face transformers' continuous batching, on
# random-weight models of Llama-3.2-1B and Llama-3.1-8B shape (made on the
# device with torch, no download), with the share of the memory-bandwidth
# floor each reaches at batch 1. Results go into docs/benchmarks.md by hand
# (the summary is markdown), with the date and device it prints.
#
#   scripts/bench-gpu.sh prepare   on the build machine: kiln release binary
#                                  with --features cuda -> .gpu-bin/kiln.gz
#   scripts/bench-gpu.sh run       on the device machine (carry .gpu-bin):
#                                  device call: run(command="scripts/bench-gpu.sh run",
#                                  carry=[".gpu-bin"], timeout_s=600)
#
# Per model, the same workloads on both engines:
#   offline   NUM_PROMPTS (500) requests of INPUT_LEN (1024) random token ids,
#             OUTPUT_LEN (128) tokens each, EOS ignored, all submitted at once:
#             `kiln bench throughput` / transformers' generate_batch
#   serving   `kiln serve` + `kiln bench serve` (random ids, --ignore-eos) at
#             CONCURRENCIES ("1 16 64"), SERVE_PROMPTS (4 x concurrency, >= 16)
#   batch 1   decode time per token: kiln's median TPOT at concurrency 1 and
#             transformers' generate; floor = weight bytes / memory bandwidth
#             (BW_GBPS, default from the GPU's name)
# Environment: MODELS ("llama-3.2-1b llama-3.1-8b"), OUT (./bench-gpu-out),
# KILN_DEVICE_FLAGS (flags that put kiln's engine on the GPU; default
# "--device cuda").
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin_dir="$root/.gpu-bin"

prepare() {
  set -e
  grep -qx '/.gpu-bin/' .git/info/exclude 2>/dev/null || echo '/.gpu-bin/' >> .git/info/exclude
  mkdir -p "$bin_dir"
  cargo build --release --features cuda --bin kiln
  strip -o "$bin_dir/kiln" target/release/kiln
  gzip -9f "$bin_dir/kiln"
  ls -l "$bin_dir"
}

MODELS="${MODELS:-llama-3.2-1b llama-3.1-8b}"
INPUT_LEN="${INPUT_LEN:-1024}"
OUTPUT_LEN="${OUTPUT_LEN:-128}"
NUM_PROMPTS="${NUM_PROMPTS:-500}"
CONCURRENCIES="${CONCURRENCIES:-1 16 64}"
KILN_DEVICE_FLAGS="${KILN_DEVICE_FLAGS:---device cuda}"

setup_device() {
  out="${OUT:-$root/bench-gpu-out}"
  mkdir -p "$out"
  local d libdirs=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
           /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib; do
    [ -d "$d" ] && libdirs="$libdirs:$d"
  done
  export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export KILN_KERNEL_CACHE="${TMPDIR:-/tmp}/kiln-kernels" PYTHONUNBUFFERED=1
  models="${TMPDIR:-/tmp}/kiln-models"
  mkdir -p "$models"
  KILN="${TMPDIR:-/tmp}/kiln"
  gunzip -c "$bin_dir/kiln.gz" > "$KILN" && chmod +x "$KILN" \
    || { echo "error: $bin_dir/kiln.gz missing: run 'scripts/bench-gpu.sh prepare' and carry .gpu-bin" >&2; exit 1; }
  local flag="${KILN_DEVICE_FLAGS%% *}"
  if ! "$KILN" serve --help | grep -q -- "$flag"; then
    echo "error: this kiln build has no $flag flag: its engine runs on the CPU only (set KILN_DEVICE_FLAGS)" >&2
    exit 1
  fi
  gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  bw="${BW_GBPS:-$(bandwidth "$gpu_name")}"
  [ -n "$bw" ] || exit 1
  summary="$out/summary.md"
  {
    echo "$(date -u +%Y-%m-%d), $gpu_name (memory bandwidth $bw GB/s), kiln $(git rev-parse --short HEAD 2>/dev/null || echo '?'),"
    echo "transformers $(python3 -c 'import transformers; print(transformers.__version__)'), torch $(python3 -c 'import torch; print(torch.__version__)')"
    echo
  } > "$summary"
}

# Peak memory bandwidth (GB/s) from the data sheets of common GPUs.
bandwidth() {
  case "$1" in
    *H200*) echo 4800 ;;
    *H100*NVL*) echo 3900 ;;
    *H100*PCIe*) echo 2000 ;;
    *H100*) echo 3350 ;;
    *A100*80GB*) echo 2039 ;;
    *A100*) echo 1555 ;;
    *L40S*) echo 864 ;;
    *) echo "error: unknown GPU '$1': set BW_GBPS" >&2 ;;
  esac
}

# A random-weight model with a word-level tokenizer over its whole vocabulary
# (kiln needs tokenizer.json; prompts are token ids, so its words never matter).
make_model() {
  local dir="$models/$1"
  [ -f "$dir/config.json" ] || python3 scripts/gpu/make_random_model.py "$1" "$dir" || return 1
  [ -f "$dir/tokenizer.json" ] && return 0
  python3 - "$dir" <<'PY'
import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers
d = sys.argv[1]
cfg = json.load(open(f"{d}/config.json"))
vocab = {f"t{i}": i for i in range(cfg["vocab_size"])}
tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.save(f"{d}/tokenizer.json")
json.dump({"bos_token": f"t{cfg['bos_token_id']}", "eos_token": f"t{cfg['eos_token_id']}"}, open(f"{d}/tokenizer_config.json", "w"))
PY
}

# transformers on the same workloads: generate_batch (continuous batching,
# paged attention) for offline throughput, generate for batch-1 decode.
hf_bench() { # MODEL_DIR OUT_JSON
  python3 - "$1" "$2" "$NUM_PROMPTS" "$INPUT_LEN" "$OUTPUT_LEN" <<'PY'
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, GenerationConfig
d, out, n, n_in, n_out = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="cuda", attn_implementation="sdpa_paged").eval()
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(0, 128000, (n_in,), generator=g).tolist() for _ in range(n)]
gen = GenerationConfig(max_new_tokens=n_out, min_new_tokens=n_out, do_sample=False, eos_token_id=-1, pad_token_id=0)
kw = {}
try:
    from transformers.generation import ContinuousBatchingConfig
    kw["continuous_batching_config"] = ContinuousBatchingConfig(max_batch_tokens=8192)
except ImportError:
    gen.max_batch_tokens = 8192
model.generate_batch(prompts[:8], generation_config=gen, progress_bar=False, **kw)
t0 = time.time()
res = model.generate_batch(prompts, generation_config=gen, progress_bar=False, **kw)
secs = time.time() - t0
toks = sum(len(o.generated_tokens) for o in res.values())
# Batch-1 decode: 128 new tokens minus 1, from a 128-token prompt (sdpa, dynamic cache).
m1 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="cuda", attn_implementation="sdpa").eval()
x = torch.tensor([prompts[0][:128]], device="cuda")
def timed(k):
    torch.cuda.synchronize(); t = time.time()
    m1.generate(x, max_new_tokens=k, min_new_tokens=k, do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.cuda.synchronize(); return time.time() - t
timed(8)
tpot = (min(timed(129) for _ in range(3)) - min(timed(1) for _ in range(3))) / 128
json.dump({"requests": n, "output_tokens": toks, "input_tokens": n * n_in, "seconds": secs,
           "output_tokens_per_s": toks / secs, "total_tokens_per_s": (toks + n * n_in) / secs,
           "batch1_tpot_ms": tpot * 1000}, open(out, "w"))
PY
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

kiln_serving() { # NAME MODEL_DIR
  local port log="$out/$1-serve.log" pid c n
  port=$(free_port)
  # shellcheck disable=SC2086
  "$KILN" serve --model "$2" --host 127.0.0.1 --port "$port" --max-model-len 4096 $KILN_DEVICE_FLAGS >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "kiln serve died:" >&2; tail -20 "$log" >&2; return 1; }
    sleep 0.5
  done
  for c in $CONCURRENCIES; do
    n=$((c * 4)); [ "$n" -lt 16 ] && n=16
    "$KILN" bench serve --base-url "http://127.0.0.1:$port" --dataset random --vocab-size 128000 \
      --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --ignore-eos --num-prompts "$n" --max-concurrency "$c" \
      --no-progress --result-json "$out/$1-serve-c$c.json" > "$out/$1-serve-c$c.txt" 2>&1 || echo "bench at c=$c failed" >&2
  done
  kill "$pid"; wait "$pid" 2>/dev/null
}

bench_model() { # NAME
  local name="$1" dir="$models/$1"
  echo "== $name" >&2
  make_model "$name" || { echo "| $name | model creation failed |" >> "$summary"; return; }
  # shellcheck disable=SC2086
  "$KILN" bench throughput --model "$dir" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
    --num-prompts "$NUM_PROMPTS" --max-model-len 4096 $KILN_DEVICE_FLAGS --result-json "$out/$name-kiln-offline.json" \
    > "$out/$name-kiln-offline.txt" 2>&1 || echo "kiln offline failed: $out/$name-kiln-offline.txt" >&2
  kiln_serving "$name" "$dir"
  hf_bench "$dir" "$out/$name-hf.json" > "$out/$name-hf.log" 2>&1 || echo "transformers failed: $out/$name-hf.log" >&2
  local bytes floor_ms
  bytes=$(du -bc "$dir"/*.safetensors | tail -1 | cut -f1)
  floor_ms=$(awk -v b="$bytes" -v bw="$bw" 'BEGIN {printf "%.3f", b / (bw * 1e9) * 1000}')
  python3 - "$name" "$out" "$floor_ms" "$CONCURRENCIES" >> "$summary" <<'PY'
import json, os, sys
name, out, floor, concs = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].split()
def load(p):
    p = os.path.join(out, p)
    return json.load(open(p)) if os.path.exists(p) else None
k, h = load(f"{name}-kiln-offline.json"), load(f"{name}-hf.json")
c1 = load(f"{name}-serve-c1.json")
f = lambda v, fmt="{:.0f}": "n/a" if v is None else fmt.format(v)
pct = lambda tpot: None if not tpot else 100 * floor / tpot
print(f"### {name} (weights read per token: floor {floor:.2f} ms)\n")
print("| engine | offline output tok/s | offline total tok/s | batch-1 TPOT ms | % of floor |")
print("| --- | --- | --- | --- | --- |")
kt = c1 and c1["median_tpot_ms"]
print(f"| kiln | {f(k and k['output_tokens_per_second'])} | {f(k and k['tokens_per_second'])} | {f(kt, '{:.2f}')} | {f(pct(kt))} |")
ht = h and h["batch1_tpot_ms"]
print(f"| transformers | {f(h and h['output_tokens_per_s'])} | {f(h and h['total_tokens_per_s'])} | {f(ht, '{:.2f}')} | {f(pct(ht))} |")
print("\n| kiln serve, concurrency | req/s | output tok/s | median TTFT ms | median TPOT ms | p99 E2E ms | failed |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for c in concs:
    r = load(f"{name}-serve-c{c}.json")
    if r:
        print(f"| {c} | {r['request_throughput']:.2f} | {r['output_throughput']:.0f} | {r['median_ttft_ms']:.1f} | {r['median_tpot_ms']:.2f} | {r['p99_e2el_ms']:.0f} | {r['failed']} |")
print()
PY
}

case "${1:-}" in
  prepare) prepare ;;
  run)
    setup_device
    for m in $MODELS; do bench_model "$m"; done
    cat "$summary"
    ;;
  *) sed -n '2,27p' "$0"; exit 2 ;;
esac
