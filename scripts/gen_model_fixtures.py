#!/usr/bin/env python3
"""Generates kiln's model reference fixtures with Hugging Face transformers.

Run from anywhere:   python3 scripts/gen_model_fixtures.py
(optionally `--only tiny` or `--only default`).

The script makes its own virtual environment at <repo>/.venv-ref (git-ignored),
installs scripts/requirements-ref.txt there (torch, transformers, ...) and
re-executes itself inside it. Everything is seeded: running it again rewrites
the same bytes (with the same pinned package versions).

It writes:

tests/fixtures/models/
  tokenizer_reference.json   texts -> ids/decoded text for the shared tiny tokenizer
  <name>/                    a tiny random-weight Hugging Face model directory:
    config.json              (rope in the classic `rope_theta` / `rope_scaling` form)
    model.safetensors        or model-0000i-of-0000n.safetensors + model.safetensors.index.json
    tokenizer.json tokenizer_config.json (with chat_template) generation_config.json
    reference.json           transformers' f32 logits for every position of 4 prompts
                             and the 32-step greedy continuation of each
  for <name> in llama3_tied, llama_untied_bf16, qwen2_bias, qwen3_qknorm, mistral.

tests/fixtures/default_model/
  reference.json             transformers' results on models/SmolLM2-135M-Instruct.Q4_1.gguf
                             (loaded with gguf_file=, dequantized to f32): prompt ids,
                             top-20 ids, greedy ids/text, GGUF tokenizer cases,
                             dequantized weight samples
  logits_<i>.f32             last-position logits of prompt i, float32 little-endian

The JSON schemas are described in tests/fixtures/models/README.md.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-ref"
REQS = REPO / "scripts" / "requirements-ref.txt"
TINY_DIR = REPO / "tests" / "fixtures" / "models"
DEFAULT_DIR = REPO / "tests" / "fixtures" / "default_model"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ensure_venv():
    """Creates .venv-ref with the pinned packages and re-runs this script in it."""
    py = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not py.exists():
        print(f"creating {VENV}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    stamp = VENV / ".reqs-installed"
    if not stamp.exists() or stamp.read_text() != REQS.read_text():
        print(f"installing {REQS.name} into {VENV} (torch is large, this takes a while)", flush=True)
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "-r", str(REQS)])
        stamp.write_text(REQS.read_text())
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


if __name__ == "__main__":
    ensure_venv()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

# ---------------------------------------------------------------- tokenizer

VOCAB = 320  # 3 special tokens + 256 byte symbols + 61 merges
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
BOS_ID, EOS_ID = 0, 2
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun. "
    "Paris is the capital of France, and Rome is the capital of Italy. The river "
    "flows through the city, and the people walk along the banks in the evening.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "for i in range(10):\n    print(i, fibonacci(i))\n",
    "A language model predicts the next token from the tokens before it. The "
    "transformer reads the whole prompt at once, then writes one token at a time, "
    "keeping the keys and values of earlier tokens in a cache.",
    "Hello, world! How are you today? I am fine, thank you. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100.",
]
# the pre-tokenizer split of Qwen2 (and of GPT-4-style tokenizers)
SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
TOKENIZER_TEXTS = [
    "Hello, world!",
    "The capital of France is Paris.",
    "def f(x):\n    return x  +  1\n",
    "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600\U0001F680",
    "   leading and trailing   ",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def build_tokenizer():
    """A byte-level BPE trained on CORPUS to exactly VOCAB entries (deterministic).
    Its pipeline (NFC, Qwen2's split regex, byte-level) is the one transformers 5
    rebuilds for model_type qwen2 whatever tokenizer.json says, so transformers and
    a plain tokenizer.json reader agree on every fixture."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIALS[0],
        eos_token=SPECIALS[2],
        pad_token=SPECIALS[0],
        chat_template=CHAT_TEMPLATE,
    )


def save_tokenizer(hf_tok, out: Path):
    """Saves tokenizer.json + tokenizer_config.json, the chat template inside the latter."""
    hf_tok.save_pretrained(out)
    jinja = out / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["add_bos_token"] = False
    # the class name older transformers (and most Hub repos) use for tokenizer.json
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    stm = out / "special_tokens_map.json"
    if stm.exists():
        stm.unlink()


# ---------------------------------------------------------------- tiny models

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    hidden_act="silu",
)


def rope(theta, scaling=None):
    """rope_parameters as transformers 5 wants them; saved back in the classic form."""
    p = {"rope_type": "default", "rope_theta": theta}
    if scaling:
        p = {**scaling, "rope_theta": theta}
    return {"rope_parameters": p}


LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# name -> (config, weights dtype, max shard size or None, seed)
SPECS = {
    "llama3_tied": (
        lambda: LlamaConfig(**COMMON, **rope(500000.0, LLAMA3_SCALING), rms_norm_eps=1e-5, tie_word_embeddings=True),
        torch.float32, None, 1001),
    "llama_untied_bf16": (
        lambda: LlamaConfig(**{**COMMON, "num_key_value_heads": 4}, **rope(10000.0), rms_norm_eps=1e-6,
                            tie_word_embeddings=False),
        torch.bfloat16, 100_000, 1002),
    "qwen2_bias": (
        lambda: Qwen2Config(**COMMON, **rope(1000000.0), rms_norm_eps=1e-6, tie_word_embeddings=False,
                            use_sliding_window=False),
        torch.float32, None, 1003),
    "qwen3_qknorm": (
        lambda: Qwen3Config(**COMMON, head_dim=32, **rope(1000000.0), rms_norm_eps=1e-6, tie_word_embeddings=True,
                            attention_bias=False, use_sliding_window=False),
        torch.float32, None, 1007),
    "mistral": (
        lambda: MistralConfig(**{**COMMON, "num_key_value_heads": 1}, **rope(1000000.0), rms_norm_eps=1e-5,
                              tie_word_embeddings=False, sliding_window=None),
        torch.float32, None, 1005),
}
PROMPT_LENGTHS = [1, 5, 17, 40]
PROMPT_SEED = 7
GREEDY_STEPS = 32


def init_weights(model, seed):
    """Deterministic, non-degenerate weights: matrices N(0, 0.15), embeddings and
    lm_head N(0, 0.2) (logit std ~1.6; a larger embedding makes tied models repeat
    the last token forever), norms N(1, 0.1), biases N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name or "lm_head" in name:
                v = 0.2 * torch.randn(p.shape, generator=g)
            else:
                v = 0.15 * torch.randn(p.shape, generator=g)
            p.copy_(v)


def classic_rope_config(path: Path):
    """Rewrites transformers 5's `rope_parameters` into the `rope_theta` +
    `rope_scaling` keys that most configs on the Hub carry."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    if rp.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rp
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def save_tiny(name, hf_tok):
    """Builds, saves and reloads one tiny model; returns (reloaded f32 model, spec info)."""
    make_cfg, dtype, shard, seed = SPECS[name]
    cfg = make_cfg()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    init_weights(model, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=[EOS_ID, BOS_ID], pad_token_id=BOS_ID,
        do_sample=True, temperature=0.7, top_p=0.9, top_k=20)
    out = TINY_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors*"):
        old.unlink()
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    classic_rope_config(out / "config.json")
    save_tokenizer(hf_tok, out)
    ref = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    check_reload(model, ref, cfg)
    return ref, dtype


def check_reload(saved, loaded, cfg):
    """The reloaded model must hold exactly the saved weights and rope settings."""
    assert loaded.config.rope_parameters == cfg.rope_parameters, (loaded.config.rope_parameters, cfg.rope_parameters)
    a, b = saved.state_dict(), loaded.state_dict()
    for k, v in a.items():
        assert torch.equal(v.float(), b[k]), k
    assert loaded.config.tie_word_embeddings == cfg.tie_word_embeddings


def prompts():
    rng = np.random.default_rng(PROMPT_SEED)
    return [rng.integers(len(SPECIALS), VOCAB, size=n).tolist() for n in PROMPT_LENGTHS]


def r7(t):
    """Floats rounded to 7 significant digits (relative error <= 5e-7)."""
    return [float(f"{x:.7g}") for x in t.tolist()]


def r6(t):
    """Floats rounded to 6 significant digits (relative error <= 5e-6): the tiny
    models' logits, to keep the committed fixtures small."""
    return [float(f"{x:.6g}") for x in t.tolist()]


@torch.no_grad()
def greedy(model, ids, steps):
    """Argmax decoding, recomputing the whole sequence each step; no eos stopping.
    Returns ids and the top-1 minus top-2 logit margin at each step."""
    seq, margins = list(ids), []
    for _ in range(steps):
        last = model(torch.tensor([seq])).logits[0, -1].float()
        top = torch.topk(last, 2)
        seq.append(int(top.indices[0]))
        margins.append(float(f"{float(top.values[0] - top.values[1]):.4g}"))
    return seq[len(ids):], margins


@torch.no_grad()
def tiny_reference(name, hf_tok):
    model, dtype = save_tiny(name, hf_tok)
    cases = []
    for ids in prompts():
        logits = model(torch.tensor([ids])).logits[0].float()
        gen, margins = greedy(model, ids, GREEDY_STEPS)
        # generate() (with its KV cache) must agree, else the reference is fragile
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=GREEDY_STEPS,
                             eos_token_id=None, pad_token_id=BOS_ID, top_k=None, top_p=None, temperature=None)
        if out[0, len(ids):].tolist() != gen:
            print(f"  warning: {name}: generate() and the argmax loop disagree on prompt len {len(ids)}")
        cases.append({
            "prompt_ids": ids,
            "logits": [r6(row) for row in logits],
            "greedy_ids": gen,
            "greedy_margins": margins,
        })
        print(f"  {name} len {len(ids):2}: logits std {logits.std():.3f}, "
              f"greedy distinct {len(set(gen))}/{len(gen)}, min margin {min(margins):.3g}")
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, world!"}]
    # transformers' view of the directory and a plain tokenizer.json reader must agree
    saved_tok = AutoTokenizer.from_pretrained(TINY_DIR / name)
    raw_tok = Tokenizer.from_file(str(TINY_DIR / name / "tokenizer.json"))
    chat_text = saved_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat_text == hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    for text in [*TOKENIZER_TEXTS, chat_text]:
        ids = raw_tok.encode(text, add_special_tokens=False).ids
        assert saved_tok(text, add_special_tokens=False)["input_ids"] == ids, (name, text)
        assert saved_tok(text)["input_ids"] == ids, (name, text)  # no BOS/EOS added
    ref = {
        "generator": "scripts/gen_model_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model": name,
        "architecture": model.config.architectures[0],
        "weights_dtype": str(dtype).removeprefix("torch."),
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "vocab_size": model.config.vocab_size,
        "greedy_steps": GREEDY_STEPS,
        "cases": cases,
        "chat": {
            "messages": messages,
            "add_generation_prompt": True,
            "text": chat_text,
            "ids": raw_tok.encode(chat_text, add_special_tokens=False).ids,
        },
    }
    path = TINY_DIR / name / "reference.json"
    path.write_text(json.dumps(ref, separators=(",", ":")) + "\n")
    return path


def tokenizer_reference(hf_tok):
    rows = []
    for text in TOKENIZER_TEXTS:
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert ids == hf_tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
        rows.append({"text": text, "ids": ids, "decoded": hf_tok.decode(ids, skip_special_tokens=False)})
    path = TINY_DIR / "tokenizer_reference.json"
    path.write_text(json.dumps({"generator": "scripts/gen_model_fixtures.py", "cases": rows},
                               indent=1, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------- default model

DEFAULT_PROMPTS = [
    {"kind": "text", "text": "The capital of France is"},
    {"kind": "text", "text": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"},
    {"kind": "chat", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
]
TOP_K = 20
# the GGUF tokenizer against transformers': unicode, code, emoji, whitespace runs, specials
GGUF_TOKENIZER_TEXTS = [
    "Hello, world!",
    "  two leading spaces, trailing tab\t",
    "line one\n\nline three\r\n\tindented",
    "caf\u00e9 na\u00efve \u00fcber \u0141\u00f3d\u017a \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u0645\u0631\u062d\u0628\u0627 \u043f\u0440\u0438\u0432\u0435\u0442",
    "emoji \U0001F600\U0001F680 family \U0001F468\u200d\U0001F469\u200d\U0001F467 flag \U0001F1EB\U0001F1F7",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n}\n",
    "numbers 1234567890 3.14159 -42 1e-9 0x1F",
    "it's they'll we'd I'M DON'T",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "          many          spaces          ",
]
# (tensor name, rows whose first 8 values are recorded). Rows 0..3, 32, 33 of q/k
# straddle GGUF's rotary permutation (head_dim 64): a loader that does not undo
# it puts the wrong row at 1, 2, 32, ... `row_sums` cover every row.
WEIGHT_SAMPLES = [
    ("model.embed_tokens.weight", [0, 1, 2, 504, 49151]),
    ("model.layers.0.self_attn.q_proj.weight", [0, 1, 2, 3, 31, 32, 33, 63, 64, 575]),
    ("model.layers.0.self_attn.k_proj.weight", [0, 1, 2, 3, 31, 32, 33, 63, 64, 191]),
    ("model.layers.0.self_attn.v_proj.weight", [0, 1, 191]),
    ("model.layers.0.self_attn.o_proj.weight", [0, 1, 575]),
    ("model.layers.0.mlp.gate_proj.weight", [0, 1535]),
    ("model.layers.0.mlp.up_proj.weight", [0, 1535]),
    ("model.layers.0.mlp.down_proj.weight", [0, 575]),
    ("model.layers.29.self_attn.q_proj.weight", [0, 1, 2, 32, 575]),
    ("model.layers.29.self_attn.k_proj.weight", [0, 1, 2, 32, 191]),
    ("model.layers.0.input_layernorm.weight", None),
    ("model.layers.0.post_attention_layernorm.weight", None),
    ("model.norm.weight", None),
]


def ensure_default_gguf():
    path = REPO / "models" / GGUF_NAME
    if not path.exists():
        subprocess.check_call(["bash", str(REPO / "models" / "fetch_default.sh")])
    return path


def weight_samples(model):
    params = dict(model.named_parameters())
    out = {}
    for name, rows in WEIGHT_SAMPLES:
        w = params[name].detach().float()
        entry = {"shape": list(w.shape)}
        if rows is None:
            entry["first8"] = r7(w[:8])
        else:
            entry["rows_first8"] = {str(r): r7(w[r, :8]) for r in rows}
            if w.shape[0] <= 2048:
                entry["row_sums"] = [float(f"{x:.7g}") for x in w.double().sum(dim=1).tolist()]
        out[name] = entry
    return out


@torch.no_grad()
def default_reference():
    gguf = ensure_default_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=GGUF_NAME, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    cases, written = [], []
    for i, p in enumerate(DEFAULT_PROMPTS):
        if p["kind"] == "chat":
            text = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            text = p["text"]
            ids = tok(text)["input_ids"]
        last = model(torch.tensor([ids])).logits[0, -1].float()
        f32 = DEFAULT_DIR / f"logits_{i}.f32"
        f32.write_bytes(last.numpy().astype("<f4").tobytes())
        written.append(f32)
        gen, margins = greedy(model, ids, GREEDY_STEPS)
        eos = [j for j, t in enumerate(gen) if t == tok.eos_token_id]
        cases.append({
            **p,
            "text": text,
            "add_special_tokens": p["kind"] != "chat",
            "prompt_ids": ids,
            "logits_file": f32.name,
            "top20_ids": torch.topk(last, TOP_K).indices.tolist(),
            "greedy_ids": gen,
            "greedy_margins": margins,
            "greedy_text": tok.decode(gen, skip_special_tokens=False),
            "greedy_text_until_eos": tok.decode(gen[: eos[0]] if eos else gen, skip_special_tokens=False),
        })
        print(f"  default prompt {i}: {len(ids)} ids, greedy: {cases[-1]['greedy_text_until_eos']!r}")
    tokenizer_cases = []
    for text in GGUF_TOKENIZER_TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        tokenizer_cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    ref = {
        "generator": "scripts/gen_model_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "gguf_file": f"models/{GGUF_NAME}",
        "load": "AutoModelForCausalLM.from_pretrained(models/, gguf_file=..., dtype=float32), eager attention",
        "vocab_size": model.config.vocab_size,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "chat_template": tok.chat_template,
        "greedy_steps": GREEDY_STEPS,
        "cases": cases,
        "tokenizer_cases": tokenizer_cases,
        "weights": weight_samples(model),
    }
    path = DEFAULT_DIR / "reference.json"
    path.write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    return [path, *written]


# ---------------------------------------------------------------- main

def main():
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    written = []
    if only in (None, "tiny"):
        TINY_DIR.mkdir(parents=True, exist_ok=True)
        hf_tok = build_tokenizer()
        written.append(tokenizer_reference(hf_tok))
        for name in SPECS:
            tiny_reference(name, hf_tok)
            written.extend(sorted((TINY_DIR / name).iterdir()))
    if only in (None, "default"):
        written.extend(default_reference())
    print("wrote:")
    for p in written:
        print(f"  {p.relative_to(REPO)} ({p.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
