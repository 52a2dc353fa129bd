#!/usr/bin/env python3
"""GGUF fixtures for kiln's quantized CPU matmul, made with the `gguf` Python
package (llama.cpp's gguf-py) as the independent reference.

  python3 scripts/gen_quant_fixtures.py goldens
      writes tests/fixtures/gguf/quants.gguf (committed, ~100 KB): for each
      block type kiln multiplies directly (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K
      Q4_K Q5_K Q6_K) a weight `w.<type>` [4, 512] in its blocks,
      `w.<type>.expected` = gguf.quants.dequantize of those bytes (f32),
      one activation `x` [3, 512] (f32) and `y.<type>` = x @ expected.T
      computed in float64 by numpy, stored as f32.

  python3 scripts/gen_quant_fixtures.py rss OUT.gguf
      writes a random-weight llama GGUF of a larger shape (hidden 1024,
      8 layers, 16 heads / 4 KV heads, intermediate 2816, vocab 32000, untied
      output) with a Q4_K_M-style mix: Q4_K for most matrices, Q6_K for
      attn_v, ffn_down and output, F32 norms. ~100 MB, written in about a
      second; tests/quant_memory.rs loads it and checks resident memory.

  python3 scripts/gen_quant_fixtures.py bench-model q4_k_m|q8_0 OUT.gguf [TOKENIZER.gguf]
      a random-weight ~0.4B llama GGUF for scripts/bench-cpu-peer.sh (hidden
      1024, 24 layers, 16 heads / 4 KV heads, intermediate 4096, untied), as
      Q4_K_M-style (Q4_K, Q6_K for attn_v / ffn_down / output) or all Q8_0,
      with the tokenizer metadata copied from TOKENIZER.gguf (default: the
      default model), so that llama.cpp and kiln both load and run it.

  python3 scripts/gen_quant_fixtures.py setup
      only creates the venv (scripts/test.sh runs this).

Re-executes itself inside .venv-gguf (KILN_GGUF_VENV), created on first use
with gguf==0.19.0 and numpy from PyPI (scripts/test.sh creates it).
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("KILN_GGUF_VENV", ROOT / ".venv-gguf"))


def ensure_venv():
    py = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    if subprocess.call([str(py), "-c", "import gguf, numpy"], stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "gguf==0.19.0", "numpy"])
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


ensure_venv()

import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q, GGUFValueType as V  # noqa: E402

# (type, bytes per 256-value super-block, [(offset of an f16 scale)]) for the
# k-quants, whose random blocks are drawn as bytes with finite f16 scales.
K_QUANTS = {
    Q.Q2_K: (84, [80, 82]),
    Q.Q3_K: (110, [108]),
    Q.Q4_K: (144, [0, 2]),
    Q.Q5_K: (176, [0, 2]),
    Q.Q6_K: (210, [208]),
}


def random_k_blocks(rng, qtype, rows, cols, scale=0.01):
    """Random k-quant (or Q8_0) blocks: every bit random except the f16
    scales, which are finite (|N(0, scale)|, as real files hold)."""
    size, scale_at = K_QUANTS.get(qtype) or (34, [0])
    nb = rows * cols // (32 if qtype == Q.Q8_0 else 256)
    blocks = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    for at in scale_at:
        d = np.abs(rng.standard_normal(nb) * scale).astype("<f2")
        blocks[:, at:at + 2] = d.view(np.uint8).reshape(nb, 2)
    return blocks.reshape(rows, -1)


def quantized(rng, qtype, rows, cols):
    if qtype in K_QUANTS:
        return random_k_blocks(rng, qtype, rows, cols)
    return gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_goldens():
    rng = np.random.default_rng(20261130)
    out = ROOT / "tests" / "fixtures" / "gguf" / "quants.gguf"
    rows, cols = 4, 512
    w = gguf.GGUFWriter(str(out), arch="kiln-test")
    x = rng.standard_normal((3, cols)).astype(np.float32)
    # A few large activations, as real hidden states have (outlier channels).
    x[:, 7] *= 20.0
    w.add_tensor("x", x)
    for qt in [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]:
        name = qt.name.lower()
        raw = quantized(rng, qt, rows, cols)
        deq = gguf.quants.dequantize(raw, qt).astype(np.float32).reshape(rows, cols)
        assert np.isfinite(deq).all(), name
        w.add_tensor(f"w.{name}", raw, raw_dtype=qt)
        w.add_tensor(f"w.{name}.expected", deq)
        y = (x.astype(np.float64) @ deq.astype(np.float64).T).astype(np.float32)
        w.add_tensor(f"y.{name}", y)
    finish(w)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def write_rss_model(path):
    rng = np.random.default_rng(7)
    hidden, layers, heads, kv_heads, inter, vocab = 1024, 8, 16, 4, 2816, 32000
    hd = hidden // heads
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("kiln random q4_k_m-style")
    for key, vt, val in [
        ("llama.embedding_length", V.UINT32, hidden),
        ("llama.feed_forward_length", V.UINT32, inter),
        ("llama.block_count", V.UINT32, layers),
        ("llama.attention.head_count", V.UINT32, heads),
        ("llama.attention.head_count_kv", V.UINT32, kv_heads),
        ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-5),
        ("llama.rope.freq_base", V.FLOAT32, 10000.0),
        ("llama.rope.dimension_count", V.UINT32, hd),
        ("llama.context_length", V.UINT32, 4096),
        ("llama.vocab_size", V.UINT32, vocab),
        ("tokenizer.ggml.bos_token_id", V.UINT32, 1),
        ("tokenizer.ggml.eos_token_id", V.UINT32, 2),
    ]:
        w.add_key_value(key, val, vt)

    def mat(name, qt, rows, cols):
        w.add_tensor(name, random_k_blocks(rng, qt, rows, cols), raw_dtype=qt)

    def norm(name):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))

    mat("token_embd.weight", Q.Q4_K, vocab, hidden)
    norm("output_norm.weight")
    mat("output.weight", Q.Q6_K, vocab, hidden)
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        norm(f"blk.{i}.ffn_norm.weight")
        mat(f"blk.{i}.attn_q.weight", Q.Q4_K, hidden, hidden)
        mat(f"blk.{i}.attn_k.weight", Q.Q4_K, kv_heads * hd, hidden)
        mat(f"blk.{i}.attn_v.weight", Q.Q6_K, kv_heads * hd, hidden)
        mat(f"blk.{i}.attn_output.weight", Q.Q4_K, hidden, hidden)
        mat(f"blk.{i}.ffn_gate.weight", Q.Q4_K, inter, hidden)
        mat(f"blk.{i}.ffn_up.weight", Q.Q4_K, inter, hidden)
        mat(f"blk.{i}.ffn_down.weight", Q.Q6_K, hidden, inter)
    finish(w)


def write_bench_model(kind, path, tokenizer):
    rng = np.random.default_rng(11)
    hidden, layers, heads, kv_heads, inter = 1024, 24, 16, 4, 4096
    hd = hidden // heads
    tok = gguf.GGUFReader(str(tokenizer))
    vocab = len(tok.fields["tokenizer.ggml.tokens"].data)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name(f"kiln random 0.4B {kind}")
    for key, vt, val in [
        ("llama.embedding_length", V.UINT32, hidden),
        ("llama.feed_forward_length", V.UINT32, inter),
        ("llama.block_count", V.UINT32, layers),
        ("llama.attention.head_count", V.UINT32, heads),
        ("llama.attention.head_count_kv", V.UINT32, kv_heads),
        ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-5),
        ("llama.rope.freq_base", V.FLOAT32, 10000.0),
        ("llama.rope.dimension_count", V.UINT32, hd),
        ("llama.context_length", V.UINT32, 8192),
        ("llama.vocab_size", V.UINT32, vocab),
    ]:
        w.add_key_value(key, val, vt)
    for key, f in tok.fields.items():
        if key.startswith("tokenizer."):
            sub = f.types[1] if len(f.types) > 1 else None
            w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    q8 = kind == "q8_0"
    main_t, big_t = (Q.Q8_0, Q.Q8_0) if q8 else (Q.Q4_K, Q.Q6_K)

    def mat(name, qt, rows, cols):
        w.add_tensor(name, random_k_blocks(rng, qt, rows, cols, scale=0.002), raw_dtype=qt)

    def norm(name):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))

    mat("token_embd.weight", main_t, vocab, hidden)
    norm("output_norm.weight")
    mat("output.weight", big_t, vocab, hidden)
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        norm(f"blk.{i}.ffn_norm.weight")
        mat(f"blk.{i}.attn_q.weight", main_t, hidden, hidden)
        mat(f"blk.{i}.attn_k.weight", main_t, kv_heads * hd, hidden)
        mat(f"blk.{i}.attn_v.weight", big_t, kv_heads * hd, hidden)
        mat(f"blk.{i}.attn_output.weight", main_t, hidden, hidden)
        mat(f"blk.{i}.ffn_gate.weight", main_t, inter, hidden)
        mat(f"blk.{i}.ffn_up.weight", main_t, inter, hidden)
        mat(f"blk.{i}.ffn_down.weight", big_t, hidden, inter)
    finish(w)
    print(f"wrote {path} ({Path(path).stat().st_size} bytes)")


def main():
    if sys.argv[1:] == ["setup"]:
        print(f"gguf and numpy ready in {VENV}")
    elif sys.argv[1:] == ["goldens"]:
        write_goldens()
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "bench-model" and sys.argv[2] in ("q4_k_m", "q8_0"):
        tok = Path(sys.argv[4]) if len(sys.argv) == 5 else ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        write_bench_model(sys.argv[2], Path(sys.argv[3]), tok)
    elif len(sys.argv) == 3 and sys.argv[1] == "rss":
        write_rss_model(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
