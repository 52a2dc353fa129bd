"""Starts `kiln serve` for the Python client tests (openai_client.py,
structured_client.py, openai_embeddings.py, batch_openai.py,
responses_client.py, anthropic_client.py).

The binary is $KILN_BIN (set by the Rust test that runs pytest). The server
binds port 0 and prints the address it listens on; the helper reads it from
the log, keeps draining the log so the server never blocks on a full pipe,
and waits for /health to turn 200 (the model loaded and warm).
"""
import os
import re
import subprocess
import threading
import time
import urllib.request


def start(args, timeout=180):
    """`kiln serve --host 127.0.0.1 --port 0 ARGS...` -> (process, base URL)."""
    cmd = [os.environ["KILN_BIN"], "serve", "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    base, deadline = None, time.time() + timeout
    while time.time() < deadline and base is None:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            base = m.group(1)
    assert base, "kiln serve did not start"
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(base + "/health").status == 200:
                return proc, base
        except Exception:
            time.sleep(0.1)
    proc.terminate()
    raise AssertionError("/health never turned 200")


def stop(proc):
    proc.terminate()
    proc.wait(timeout=60)
