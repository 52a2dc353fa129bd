#!/usr/bin/env python3
"""transformers' reference for a model directory, on the GPU in bf16 (sdpa
attention): for N seeded random prompts, the logits of the last prompt
position, 32 greedy tokens (EOS ignored) and the top-1 minus top-2 logit
at each greedy step (where a bf16 run may legitimately pick the other token). Read by the GPU test
`transformers_on_the_gpu` (tests/cuda_gpu/model.rs) through
KILN_HF_REFERENCE.

    hf_reference.py MODEL_DIR OUT.json [--prompts 16] [--seed 0]
"""
import argparse
import json

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.bfloat16, device_map="cuda",
                                                 attn_implementation="sdpa").eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(a.seed)
    prompts, last, greedy, margins = [], [], [], []
    for _ in range(a.prompts):
        n = int(torch.randint(8, 128, (1,), generator=g))
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        x = torch.tensor([ids], device="cuda")
        with torch.no_grad():
            logits = model(x).logits[0, -1].float().cpu()
            out = model.generate(x, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                 eos_token_id=None, pad_token_id=0, output_logits=True,
                                 return_dict_in_generate=True)
            top2 = torch.stack(out.logits)[:, 0].float().topk(2, dim=-1).values.cpu()
        prompts.append(ids)
        last.append([round(v, 5) for v in logits.tolist()])
        greedy.append(out.sequences[0, n:].tolist())
        margins.append([round(float(v), 5) for v in top2[:, 0] - top2[:, 1]])
    with open(a.out, "w") as f:
        json.dump({"model_dir": a.model_dir, "prompts": prompts, "last_logits": last, "greedy_ids": greedy,
                   "greedy_margins": margins}, f)
    print(f"{a.out}: {a.prompts} prompts")


if __name__ == "__main__":
    main()
