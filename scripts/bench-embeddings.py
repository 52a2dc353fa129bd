#!/usr/bin/env python3
"""Embeddings per second, kiln against sentence-transformers, in one run.

    KILN=target/release/kiln .venv-embed/bin/python scripts/bench-embeddings.py [--threads N] [--batches 20]

Needs an idle machine (numbers from a loaded one mean nothing) and the venv
of scripts/gen_embedding_golden.py (.venv-embed: sentence-transformers,
torch CPU). Both sides embed the same batches of 32 sentences of about 64
tokens with all-MiniLM-L6-v2 (models/fetch_minilm.sh) on the same number of
threads: sentence-transformers in this process (torch.set_num_threads), kiln
as `kiln serve --threads N` driven over HTTP by one client sending one batch
per request. Prints a Markdown table row per side for docs/benchmarks.md.
The goal for kiln is at least twice sentence-transformers' rate.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "all-MiniLM-L6-v2"

WORDS = ("retrieval augmented generation combines a language model with a search index the question is embedded "
         "nearest passages are found by cosine similarity and the model answers with those passages in its context "
         "quality of embedding decides which passages matter sentence models train contrastive objectives on pairs").split()


def sentences(tok, n, seed):
    """n sentences of random words, each 64 tokens long ([CLS] and [SEP] included)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        words = []
        while len(tok(" ".join(words))["input_ids"]) < 64:
            words.append(rng.choice(WORDS))
        while len(tok(" ".join(words))["input_ids"]) > 64:
            words.pop()
        out.append(" ".join(words))
    return out


def start_kiln(binary, threads):
    cmd = [binary, "serve", "--host", "127.0.0.1", "--port", "0", "--model", f"minilm={MODEL}",
           "--threads", str(threads), "--data-dir", ""]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    base = None
    while base is None:
        line = proc.stderr.readline()
        if not line:
            sys.exit("kiln serve did not start")
        m = re.search(r"listening on (http://\S+)", line)
        base = m.group(1) if m else None
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    while True:
        try:
            if urllib.request.urlopen(base + "/health").status == 200:
                return proc, base
        except Exception:
            time.sleep(0.2)


def kiln_rate(base, batches):
    def post(batch):
        body = json.dumps({"model": "minilm", "input": batch}).encode()
        req = urllib.request.Request(base + "/v1/embeddings", body, {"content-type": "application/json"})
        return json.loads(urllib.request.urlopen(req).read())
    post(batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        assert len(post(b)["data"]) == len(b)
    return sum(map(len, batches)) / (time.perf_counter() - t0)


def st_rate(batches, threads):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(threads)
    model = SentenceTransformer(str(MODEL), device="cpu")
    model.encode(batches[0], batch_size=32)
    t0 = time.perf_counter()
    for b in batches:
        model.encode(b, batch_size=32, convert_to_numpy=True)
    return sum(map(len, batches)) / (time.perf_counter() - t0), model.tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    binary = os.environ.get("KILN", str(REPO / "target" / "release" / "kiln"))
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(MODEL))
    texts = sentences(tok, 32 * args.batches, seed=0)
    batches = [texts[i:i + 32] for i in range(0, len(texts), 32)]
    st, _ = st_rate(batches, args.threads)
    proc, base = start_kiln(binary, args.threads)
    try:
        k = kiln_rate(base, batches)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"threads {args.threads}, {args.batches} batches of 32 sentences of 64 tokens, all-MiniLM-L6-v2")
    print("| engine | embeddings/s |\n| --- | --- |")
    print(f"| kiln (HTTP, /v1/embeddings) | {k:.1f} |")
    print(f"| sentence-transformers (in process) | {st:.1f} |")
    print(f"ratio kiln / sentence-transformers: {k / st:.2f}")


if __name__ == "__main__":
    main()
