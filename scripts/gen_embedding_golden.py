#!/usr/bin/env python3
"""Generates kiln's embedding reference fixtures (run once; outputs are committed).

    python3 scripts/gen_embedding_golden.py

Makes its own virtual environment at <repo>/.venv-embed (git-ignored) with
sentence-transformers and torch (CPU) from PyPI, and re-executes itself there.

Writes, under tests/fixtures/embeddings/:

  minilm_golden.json   all-MiniLM-L6-v2 (models/fetch_minilm.sh) through
                       sentence-transformers: 50 sentences (short, long up to
                       the 256-token max_seq_length, non-ASCII), the token ids
                       its tokenizer produced, and each normalised embedding
                       as base64 of little-endian float32 (384 values).
  qwen3_embed/         a tiny random Qwen3 embedding model made with
                       transformers (Qwen3Model weights saved without the
                       "model." prefix, as Qwen3-Embedding ships them), the
                       sentence-transformers files for last-token pooling +
                       Normalize, and reference.json: transformers'
                       last_hidden_state at the last token, L2-normalised,
                       for a few id lists (float32, base64).
"""
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-embed"
OUT = REPO / "tests" / "fixtures" / "embeddings"
MINILM = REPO / "models" / "all-MiniLM-L6-v2"


def ensure_venv():
    py = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "sentence-transformers"])
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def b64(vec):
    import numpy as np
    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()


SHORT = [
    "Hello!", "A man is eating food.", "The cat sits on the mat.", "Rust is a systems programming language.",
    "What is the capital of France?", "Paris is the capital of France.", "I love pizza", "ok",
    "The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors.",
    "How do I reset my password?", "Click 'Forgot password' on the login page.",
    "Photosynthesis converts light into chemical energy.", "The stock market fell 3% today.",
    "She plays the violin beautifully.", "GPUs accelerate matrix multiplication.",
    "Never gonna give you up", "1 2 3 4 5 6 7 8 9 10", "e = mc^2", "https://example.com/a?b=c",
]
NON_ASCII = [
    "Café au lait, s'il vous plaît.", "Größe und Maßstab sind wichtig.", "¿Dónde está la biblioteca?",
    "Москва — столица России.", "東京は日本の首都です。", "北京是中国的首都。", "서울은 한국의 수도입니다.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
    "Emoji test 🚀🔥👍 works?", "naïve résumé coöperate façade", "Ünïcödé wïth dïäcrïtïcs everywhere",
    "Zürich, København, Kraków, İstanbul",
]
PARAGRAPH = (
    "Retrieval augmented generation combines a language model with a search index: the question is embedded, "
    "the nearest passages are found by cosine similarity, and the model answers with those passages in its "
    "context. The quality of the embedding model decides which passages are found, so it matters as much as "
    "the language model itself. Sentence embedding models are trained with contrastive objectives on pairs of "
    "related texts, pulling matching pairs together and pushing unrelated texts apart in the vector space. "
)


def long_sentences(tok):
    """15 texts from ~40 tokens up to exactly the 256-token limit (special tokens included)."""
    words = (PARAGRAPH * 8).split()
    out = []
    targets = [40, 60, 80, 100, 120, 140, 160, 180, 200, 220, 240, 250, 254, 255, 256]
    for t in targets:
        lo, hi = 1, len(words)
        while lo < hi:  # the most words whose encoding has at most t tokens
            mid = (lo + hi + 1) // 2
            n = len(tok(" ".join(words[:mid]))["input_ids"])
            lo, hi = (mid, hi) if n <= t else (lo, mid - 1)
        out.append(" ".join(words[:lo]))
    return out


def minilm():
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(MINILM), device="cpu")
    tok = model.tokenizer
    sentences = SHORT + NON_ASCII + long_sentences(tok)
    assert len(sentences) == 50
    ids = [tok(s)["input_ids"] for s in sentences]
    assert max(len(i) for i in ids) <= model.max_seq_length == 256, max(len(i) for i in ids)
    emb = model.encode(sentences, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    import sentence_transformers, torch, transformers
    doc = {
        "generator": "scripts/gen_embedding_golden.py",
        "sentence_transformers_version": sentence_transformers.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model": "all-MiniLM-L6-v2 (models/fetch_minilm.sh)",
        "dimensions": int(emb.shape[1]),
        "cases": [{"text": s, "ids": i, "embedding_f32_b64": b64(e)} for s, i, e in zip(sentences, ids, emb)],
    }
    (OUT / "minilm_golden.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    print("wrote minilm_golden.json", emb.shape)


def qwen3():
    import torch
    from transformers import Qwen3Config, Qwen3Model
    d = OUT / "qwen3_embed"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    torch.manual_seed(7)
    cfg = Qwen3Config(
        vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=2, hidden_act="silu",
    )
    model = Qwen3Model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "embed" in name:
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.save_pretrained(d, safe_serialization=True)
    c = json.loads((d / "config.json").read_text())
    c["architectures"] = ["Qwen3ForCausalLM"]
    c["is_matryoshka"] = True
    (d / "config.json").write_text(json.dumps(c, indent=2) + "\n")
    src = REPO / "tests" / "fixtures" / "models" / "qwen3_qknorm"
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(src / f, d / f)
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2) + "\n")
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True,
    }, indent=2) + "\n")
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}) + "\n")
    gen = torch.Generator().manual_seed(11)
    cases = []
    reload = Qwen3Model.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    for n in [1, 5, 17, 40, 128]:
        ids = torch.randint(3, 320, (n,), generator=gen).tolist()
        with torch.no_grad():
            h = reload(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        e = torch.nn.functional.normalize(h, dim=0).numpy()
        cases.append({"ids": ids, "embedding_f32_b64": b64(e)})
    (d / "reference.json").write_text(json.dumps({
        "generator": "scripts/gen_embedding_golden.py", "pooling": "last token of last_hidden_state, L2-normalised",
        "dimensions": 64, "cases": cases}, indent=1) + "\n")
    print("wrote qwen3_embed/")


if __name__ == "__main__":
    ensure_venv()
    OUT.mkdir(parents=True, exist_ok=True)
    qwen3()
    minilm()
