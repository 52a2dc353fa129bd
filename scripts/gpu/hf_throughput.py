#!/usr/bin/env python3
"""transformers' continuous batching (generate_batch, paged attention, CUDA
graphs where the installed version offers them) on the same workload as
kiln's offline_throughput bench: N requests of 1,024 random prompt tokens and
128 output tokens (EOS ignored), at most 256 running. Prints one JSON line.

    hf_throughput.py MODEL_DIR [--requests 1000]
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, GenerationConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--requests", type=int, default=1000)
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.bfloat16, device_map="cuda",
                                                 attn_implementation="sdpa_paged").eval()
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, model.config.vocab_size, (1024,), generator=g).tolist() for _ in range(a.requests)]
    gen = GenerationConfig(max_new_tokens=128, min_new_tokens=128, do_sample=False, eos_token_id=-1, pad_token_id=0)
    kwargs = {}
    try:  # transformers >= 5.10: scheduling and CUDA graphs live in ContinuousBatchingConfig
        from transformers.generation import ContinuousBatchingConfig
        kwargs["continuous_batching_config"] = ContinuousBatchingConfig(max_batch_tokens=8192)
    except ImportError:
        gen.max_batch_tokens = 8192
    model.generate_batch(inputs[:8], generation_config=gen, progress_bar=False, **kwargs)  # warm-up
    t0 = time.time()
    out = model.generate_batch(inputs, generation_config=gen, progress_bar=False, **kwargs)
    secs = time.time() - t0
    toks = sum(len(o.generated_tokens) for o in out.values())
    print(json.dumps({"bench": "hf_offline_throughput", "model": a.model_dir, "requests": a.requests,
                      "output_tokens": toks, "seconds": secs, "output_tokens_per_s": toks / secs}))


if __name__ == "__main__":
    main()
