#!/usr/bin/env python3
"""Writes kiln's GGUF test fixtures into tests/fixtures/gguf/ using the `gguf`
Python package (llama.cpp's gguf-py) as the reference writer and dequantizer.

Run: python3 scripts/gen_gguf_fixtures.py   (re-executes itself inside
/work/main/.venv-gguf, created on first use with gguf and numpy from PyPI).

Files:
  types.gguf        one tensor per ggml type kiln reads (F32 F16 BF16 Q8_0 Q4_0
                    Q4_1 Q4_K Q6_K) plus `<name>.expected` F32 tensors holding
                    gguf.quants.dequantize of the same bytes; `unsupported.q5_k`
                    (a type kiln refuses); `qk.hf*` / `qk.permuted*` for the
                    rotary un-permute (llama.cpp's converter permute applied here)
  metadata.gguf     one key of every GGUF value type (and arrays, nested too),
                    general.alignment = 64 and two small tensors
  metadata.json     what the reader must see in metadata.gguf
  config_*.gguf     model-metadata fixtures for config_from_gguf
  config_*.json     the expected Hugging Face-style config for each
  tiny_q8_0.gguf    the tests/fixtures/models/mistral model (2 layers, hidden
  tiny_q4_1.gguf    64, vocab 320) as a llama-architecture GGUF, its matrices
                    quantized to Q8_0 / Q4_1 (down_proj, whose rows of 112 are
                    not whole 32-value blocks, stays F16, as llama.cpp's
                    converter would keep it), q/k permuted like llama.cpp's
                    converter; for the CUDA runner's quantized-weight tests

`python3 scripts/gen_gguf_fixtures.py models` writes only the tiny models.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("KILN_GGUF_VENV", ROOT / ".venv-gguf"))
OUT = ROOT / "tests" / "fixtures" / "gguf"


def ensure_venv():
    py = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "gguf==0.19.0", "numpy"])
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


ensure_venv()

import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q, GGUFValueType as V  # noqa: E402

rng = np.random.default_rng(20250521)


def f16_scale(n, scale):
    """n finite f16 values as raw little-endian bytes."""
    return (rng.standard_normal(n) * scale).astype("<f2").view(np.uint8).reshape(n, 2)


def random_q4_k(rows, cols):
    """Raw Q4_K blocks: d, dmin finite f16, random 6-bit scales and nibbles."""
    nb = rows * cols // 256
    blocks = rng.integers(0, 256, size=(nb, 144), dtype=np.uint8)
    blocks[:, 0:2] = f16_scale(nb, 0.01)
    blocks[:, 2:4] = f16_scale(nb, 0.01)
    return blocks.reshape(rows, -1)


def random_q6_k(rows, cols):
    """Raw Q6_K blocks: random ql/qh/int8 scales, d finite f16 at the end."""
    nb = rows * cols // 256
    blocks = rng.integers(0, 256, size=(nb, 210), dtype=np.uint8)
    blocks[:, 208:210] = f16_scale(nb, 0.01)
    return blocks.reshape(rows, -1)


def random_q5_k(rows, cols):
    nb = rows * cols // 256
    blocks = rng.integers(0, 256, size=(nb, 176), dtype=np.uint8)
    blocks[:, 0:4] = f16_scale(nb * 2, 0.01).reshape(nb, 4)
    return blocks.reshape(rows, -1)


def special_floats(dtype):
    """Edge values: zeros, subnormals, extremes, infinities, NaN."""
    info = np.finfo(dtype)
    return np.array([0.0, -0.0, info.tiny, -info.tiny, info.smallest_subnormal, info.max, info.min,
                     np.inf, -np.inf, np.nan, 1.0, -2.5], dtype=np.float32)


def llama_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF rows -> GGUF rows."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_types():
    w = gguf.GGUFWriter(str(OUT / "types.gguf"), arch="kiln-test")
    expected = {}

    def add(name, raw, qtype, hf_shape=None):
        if raw.dtype == np.uint8:
            w.add_tensor(name, raw, raw_dtype=qtype)
        else:
            w.add_tensor(name, raw)
        deq = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        if hf_shape is not None:
            deq = deq.reshape(hf_shape)
        expected[name] = deq

    f32 = rng.standard_normal((3, 40)).astype(np.float32)
    f32[0, :12] = special_floats(np.float32)
    add("t.f32", f32, Q.F32)
    f16 = (rng.standard_normal((2, 3, 16)) * 3).astype(np.float16)
    f16[0, 0, :12] = special_floats(np.float16).astype(np.float16)
    add("t.f16", f16, Q.F16)
    bf = rng.standard_normal((4, 24)).astype(np.float32) * 100
    bf[0, :12] = special_floats(np.float32)
    add("t.bf16", gguf.quants.quantize(bf, Q.BF16), Q.BF16)
    for qt, name in [(Q.Q8_0, "t.q8_0"), (Q.Q4_0, "t.q4_0"), (Q.Q4_1, "t.q4_1")]:
        add(name, gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), qt), qt)
    # Larger than one parallel chunk (16384 values) to cross chunk edges.
    add("t.q4_1_big", gguf.quants.quantize(rng.standard_normal((32, 768)).astype(np.float32), Q.Q4_1), Q.Q4_1)
    add("t.q4_k", random_q4_k(2, 512), Q.Q4_K)
    add("t.q6_k", random_q6_k(2, 512), Q.Q6_K)
    add("t.q6_k_big", random_q6_k(5, 4096), Q.Q6_K)
    w.add_tensor("unsupported.q5_k", random_q5_k(1, 256), raw_dtype=Q.Q5_K)

    # Rotary permutation: q with 3 heads of dim 8, k with 1 head, a bias vector.
    for tag, n_head, shape in [("q", 3, (24, 5)), ("k", 1, (8, 5)), ("bias", 3, (24,))]:
        hf = rng.standard_normal(shape).astype(np.float32)
        w.add_tensor(f"qk.hf.{tag}", hf)
        w.add_tensor(f"qk.permuted.{tag}", llama_permute(hf, n_head))
        w.add_uint32(f"kiln.test.n_head.{tag}", n_head)

    for name, deq in expected.items():
        w.add_tensor(name + ".expected", np.ascontiguousarray(deq))
    finish(w)

    # Cross-check: the bytes read back through gguf's reader dequantize the same.
    r = gguf.GGUFReader(str(OUT / "types.gguf"))
    for t in r.tensors:
        if t.name in expected:
            again = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            assert np.array_equal(again.reshape(-1), expected[t.name].reshape(-1), equal_nan=True), t.name


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def f32r(x):
    """The value an f32 holds, as a Python float."""
    return float(np.float32(x))


def write_metadata():
    w = gguf.GGUFWriter(str(OUT / "metadata.gguf"), arch="kiln-test")
    w.add_custom_alignment(64)
    entries = {
        "test.u8": ("U8", V.UINT8, 200),
        "test.i8": ("I8", V.INT8, -100),
        "test.u16": ("U16", V.UINT16, 65000),
        "test.i16": ("I16", V.INT16, -32000),
        "test.u32": ("U32", V.UINT32, 4000000000),
        "test.i32": ("I32", V.INT32, -2000000000),
        "test.u64": ("U64", V.UINT64, 18000000000000000000),
        "test.i64": ("I64", V.INT64, -9000000000000000000),
        "test.f32": ("F32", V.FLOAT32, f32r(3.14159)),
        "test.f64": ("F64", V.FLOAT64, 2.718281828459045),
        "test.bool_true": ("Bool", V.BOOL, True),
        "test.bool_false": ("Bool", V.BOOL, False),
        "test.str": ("Str", V.STRING, "héllo, 世界 🦀 \n\t\"quoted\""),
        "test.empty_str": ("Str", V.STRING, ""),
    }
    for key, (_, vt, val) in entries.items():
        w.add_key_value(key, val, vt)
    arrays = {
        "test.arr_str": ("Str", V.STRING, ["a", "", "Ġthe", "<|im_end|>", "日本"]),
        "test.arr_i32": ("I32", V.INT32, [1, -2, 3, 2147483647, -2147483648]),
        "test.arr_f32": ("F32", V.FLOAT32, [f32r(x) for x in [0.5, -1.25, 1e-7, 3.4e38]]),
        "test.arr_u8": ("U8", V.UINT8, [0, 1, 255]),
        "test.arr_u64": ("U64", V.UINT64, [0, 2**64 - 1]),
        "test.arr_bool": ("Bool", V.BOOL, [True, False, True]),
        "test.arr_f64": ("F64", V.FLOAT64, [1.5, -0.1]),
        "test.arr_nested": ("Array", V.ARRAY, [[1, 2], [3], [4, 5, 6]]),
    }
    for key, (_, sub, val) in arrays.items():
        if sub == V.ARRAY:
            w.add_key_value(key, val, V.ARRAY, sub_type=V.ARRAY)
        else:
            w.add_key_value(key, val, V.ARRAY, sub_type=sub)
    a = rng.standard_normal(7).astype(np.float32)
    b = rng.standard_normal((3, 5)).astype(np.float16)
    w.add_tensor("a", a)
    w.add_tensor("b", b)
    finish(w)

    # Check gguf's own reader sees what was written (nested arrays aside).
    r = gguf.GGUFReader(str(OUT / "metadata.gguf"))
    for key, (_, _, val) in {**entries, **arrays}.items():
        if key != "test.arr_nested":
            assert r.fields[key].contents() == val, (key, r.fields[key].contents(), val)
    doc = {
        "version": 3,
        "alignment": 64,
        "scalars": {k: {"type": t, "value": v} for k, (t, _, v) in entries.items()},
        "arrays": {k: {"elem_type": t, "value": v} for k, (t, _, v) in arrays.items()},
        "tensors": {
            "a": {"shape": [7], "values": [float(x) for x in a]},
            "b": {"shape": [3, 5], "values": [float(x) for x in b.astype(np.float32).reshape(-1)]},
        },
    }
    # u64 values beyond 2^53 survive as JSON integers (serde_json reads u64).
    (OUT / "metadata.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def llama3_rope_factors(theta, head_dim, factor, lo, hi, old):
    """llama.cpp convert_hf_to_gguf.py: rope_freqs.weight for rope_type llama3."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wavelen, high_wavelen = old / lo, old / hi
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def hf_llama3_inv_freq(theta, head_dim, factor, lo, hi, old):
    """transformers' _compute_llama3_parameters, in float64."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = old / lo, old / hi
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled)


def write_config(name, arch, meta, tensors, expected):
    w = gguf.GGUFWriter(str(OUT / f"config_{name}.gguf"), arch=arch)
    for key, (vt, val) in meta.items():
        w.add_key_value(key, val, vt, sub_type=V.STRING if vt == V.ARRAY else None)
    for tname, arr in tensors.items():
        w.add_tensor(tname, arr)
    finish(w)
    (OUT / f"config_{name}.json").write_text(json.dumps(expected, indent=1) + "\n")


def write_configs():
    hidden, vocab = 16, 50
    tokens = [f"tok{i}" for i in range(vocab)]
    small = lambda *s: rng.standard_normal(s).astype(np.float16)  # noqa: E731
    write_config("qwen2", "qwen2", {
        "qwen2.embedding_length": (V.UINT32, hidden),
        "qwen2.feed_forward_length": (V.UINT32, 40),
        "qwen2.block_count": (V.UINT32, 2),
        "qwen2.attention.head_count": (V.UINT32, 4),
        "qwen2.attention.head_count_kv": (V.UINT32, 2),
        "qwen2.attention.layer_norm_rms_epsilon": (V.FLOAT32, 1e-6),
        "qwen2.rope.freq_base": (V.FLOAT32, 1000000.0),
        "qwen2.rope.scaling.type": (V.STRING, "linear"),
        "qwen2.rope.scaling.factor": (V.FLOAT32, 2.0),
        "qwen2.context_length": (V.UINT32, 512),
        "tokenizer.ggml.tokens": (V.ARRAY, tokens),
        "tokenizer.ggml.bos_token_id": (V.UINT32, 1),
        "tokenizer.ggml.eos_token_id": (V.UINT32, 2),
    }, {
        "token_embd.weight": small(vocab, hidden),
        "blk.0.attn_q.weight": small(hidden, hidden),
        "blk.0.attn_q.bias": small(hidden),
    }, {
        "arch": "Qwen2", "arch_name": "qwen2", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": 40, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 4,
        "rms_norm_eps": f32r(1e-6), "rope_theta": 1000000.0, "rope_scaling": {"linear": 2.0},
        "max_position_embeddings": 512, "tie_word_embeddings": True, "attention_bias": True,
        "qk_norm": False, "bos_token_id": 1, "eos_token_ids": [2], "qk_permuted": False,
    })
    theta, head_dim, rope = 500000.0, 64, dict(factor=8.0, lo=1.0, hi=4.0, old=8192)
    write_config("llama3", "llama", {
        "general.name": (V.STRING, "tiny llama 3.1"),
        "llama.embedding_length": (V.UINT32, 128),
        "llama.feed_forward_length": (V.UINT32, 256),
        "llama.block_count": (V.UINT32, 1),
        "llama.attention.head_count": (V.UINT32, 4),
        "llama.attention.head_count_kv": (V.UINT32, 1),
        "llama.attention.key_length": (V.UINT32, head_dim),
        "llama.attention.layer_norm_rms_epsilon": (V.FLOAT32, 1e-5),
        "llama.rope.freq_base": (V.FLOAT32, theta),
        "llama.rope.dimension_count": (V.UINT32, head_dim),
        "llama.context_length": (V.UINT32, 131072),
        "llama.vocab_size": (V.UINT32, 300),
        "tokenizer.ggml.bos_token_id": (V.UINT32, 256),
        "tokenizer.ggml.eos_token_id": (V.UINT32, 257),
        "tokenizer.ggml.eot_token_id": (V.UINT32, 259),
    }, {
        "rope_freqs.weight": llama3_rope_factors(theta, head_dim, **rope),
        "output.weight": small(300, 128),
    }, {
        "arch": "Llama", "arch_name": "llama", "vocab_size": 300, "hidden_size": 128,
        "intermediate_size": 256, "num_layers": 1, "num_heads": 4, "num_kv_heads": 1, "head_dim": head_dim,
        "rms_norm_eps": f32r(1e-5), "rope_theta": theta, "max_position_embeddings": 131072,
        "tie_word_embeddings": False, "attention_bias": False, "qk_norm": False,
        "bos_token_id": 256, "eos_token_ids": [257, 259], "qk_permuted": True,
        "rope_inv_freq": [float(x) for x in hf_llama3_inv_freq(theta, head_dim, **rope)],
    })


def write_names():
    """GGUF -> HF tensor names, from gguf-py's own HF -> GGUF TensorNameMap."""
    hf = ["model.embed_tokens", "model.norm", "lm_head"]
    for n in [0, 7]:
        hf += [f"model.layers.{n}.{p}" for p in [
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "self_attn.q_norm", "self_attn.k_norm", "input_layernorm", "post_attention_layernorm",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]]
    mapping = {}
    for arch in [gguf.MODEL_ARCH.LLAMA, gguf.MODEL_ARCH.QWEN2, gguf.MODEL_ARCH.QWEN3]:
        tmap = gguf.get_tensor_name_map(arch, 8)
        for name in hf:
            g = tmap.get_name(name)
            if g is None:
                continue
            for suffix in [".weight", ".bias"]:
                assert mapping.get(g + suffix, name + suffix) == name + suffix
                mapping[g + suffix] = name + suffix
    (OUT / "names.json").write_text(json.dumps(mapping, indent=1, sort_keys=True) + "\n")


def read_safetensors(path):
    """name -> float32 array of a safetensors file (F32 / BF16 only)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = raw[8 + n + a:8 + n + b]
        if t["dtype"] == "F32":
            arr = np.frombuffer(buf, dtype="<f4")
        elif t["dtype"] == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{name}: dtype {t['dtype']}")
        out[name] = arr.reshape(t["shape"]).astype(np.float32)
    return out


def write_tiny_model(qtype, name):
    """The mistral fixture as a quantized llama GGUF (see the module comment)."""
    src = ROOT / "tests" / "fixtures" / "models" / "mistral"
    cfg = json.loads((src / "config.json").read_text())
    t = read_safetensors(src / "model.safetensors")
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(str(OUT / name), arch="llama")
    w.add_name(f"kiln tiny mistral {qtype.name}")
    for key, vt, val in [
        ("llama.embedding_length", V.UINT32, cfg["hidden_size"]),
        ("llama.feed_forward_length", V.UINT32, cfg["intermediate_size"]),
        ("llama.block_count", V.UINT32, cfg["num_hidden_layers"]),
        ("llama.attention.head_count", V.UINT32, nh),
        ("llama.attention.head_count_kv", V.UINT32, nkv),
        ("llama.attention.key_length", V.UINT32, cfg["head_dim"]),
        ("llama.attention.value_length", V.UINT32, cfg["head_dim"]),
        ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, cfg["rms_norm_eps"]),
        ("llama.rope.freq_base", V.FLOAT32, cfg["rope_theta"]),
        ("llama.rope.dimension_count", V.UINT32, cfg["head_dim"]),
        ("llama.context_length", V.UINT32, cfg["max_position_embeddings"]),
        ("llama.vocab_size", V.UINT32, cfg["vocab_size"]),
        ("tokenizer.ggml.bos_token_id", V.UINT32, 0),
        ("tokenizer.ggml.eos_token_id", V.UINT32, 2),
    ]:
        w.add_key_value(key, val, vt)

    def add(gname, arr):
        if arr.ndim == 2 and arr.shape[1] % 32 == 0:
            w.add_tensor(gname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        elif arr.ndim == 2:
            w.add_tensor(gname, arr.astype(np.float16))
        else:
            w.add_tensor(gname, arr)

    add("token_embd.weight", t["model.embed_tokens.weight"])
    add("output_norm.weight", t["model.norm.weight"])
    add("output.weight", t["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        add(f"blk.{i}.attn_q.weight", llama_permute(t[p + "self_attn.q_proj.weight"], nh))
        add(f"blk.{i}.attn_k.weight", llama_permute(t[p + "self_attn.k_proj.weight"], nkv))
        add(f"blk.{i}.attn_v.weight", t[p + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", t[p + "self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        add(f"blk.{i}.ffn_gate.weight", t[p + "mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", t[p + "mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", t[p + "mlp.down_proj.weight"])
    finish(w)


def write_tiny_models():
    write_tiny_model(Q.Q8_0, "tiny_q8_0.gguf")
    write_tiny_model(Q.Q4_1, "tiny_q4_1.gguf")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] == ["models"]:
        write_tiny_models()
        print(f"wrote the tiny models to {OUT}")
        return
    write_names()
    write_types()
    write_metadata()
    write_configs()
    write_tiny_models()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
