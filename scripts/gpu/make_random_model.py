#!/usr/bin/env python3
"""Writes a random-weight bf16 Hugging Face model directory of a public
model's shape (config values of the real checkpoint, no download), for the
GPU checks of scripts/gpu-check.sh. Runs on the device machine (torch and
transformers are installed there).

    make_random_model.py SHAPE OUTDIR [--seed N]
    SHAPE: llama-3.2-1b | qwen3-0.6b | llama-3.1-8b

Weights: linear layers N(0, 1/sqrt(fan_in)) so activations keep their scale
through the layers, embeddings N(0, 1), norms N(1, 0.05), lm_head scaled so
logits spread (std ~ KILN_RANDOM_LOGIT_STD, default 6): random models with
the default 0.02 init give near-uniform logits whose greedy order bf16 noise
flips, which would make the greedy-agreement check meaningless.
"""
import argparse
import math
import os

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

SHAPES = {
    "llama-3.2-1b": lambda: LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001),
    "qwen3-0.6b": lambda: Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=40960, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151645),
    "llama-3.1-8b": lambda: LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if os.path.exists(os.path.join(a.outdir, "config.json")):
        print(f"{a.outdir}: exists")
        return
    torch.manual_seed(a.seed)
    cfg = SHAPES[a.shape]()
    cfg.torch_dtype = "bfloat16"
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    logit_std = float(os.environ.get("KILN_RANDOM_LOGIT_STD", "6"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.05)
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0)
            elif name == "lm_head.weight":
                p.normal_(0.0, logit_std / math.sqrt(cfg.hidden_size))
            elif p.dim() == 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
            else:
                p.normal_(0.0, 0.02)
        if cfg.tie_word_embeddings:
            # Tied: the embedding is the head; keep logits spread by scaling the final norm.
            model.model.norm.weight.mul_(logit_std / math.sqrt(cfg.hidden_size))
    model.save_pretrained(a.outdir, safe_serialization=True)
    print(f"{a.outdir}: {a.shape}, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}e9 parameters")


if __name__ == "__main__":
    main()
