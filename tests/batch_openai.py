"""kiln's Files and Batch APIs driven by the official `openai` Python client.

Run through scripts/test-batch-openai.sh (which makes the venv, builds kiln
and sets KILN_BIN); tests/batch_openai.rs runs that script under cargo test.
Starts `kiln serve` with two API keys on a temporary --data-dir, then:
files.create -> batches.create -> retrieve until completed -> files.content
(every custom_id exactly once, answers well formed), batches.list with
pagination, batches.cancel, files.list/retrieve/delete, and the SDK's
exceptions for bad input, unknown ids and another key's objects.
"""

import json
import sys
import tempfile
import time

import openai
import kiln_serve

MODEL = "kiln-test"
KEY, OTHER_KEY = "sk-batch-sdk", "sk-batch-other"


def start_server(data_dir):
    return kiln_serve.start(["--served-model-name", MODEL, "--max-model-len", "512", "--max-num-seqs", "16",
                             "--seed", "0", "--data-dir", data_dir, "--max-batch-inflight", "4",
                             "--api-key", KEY, "--api-key", OTHER_KEY])


def line(custom_id, content, max_tokens=6, **extra):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def wait_final(client, batch_id, limit=300):
    deadline = time.time() + limit
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        assert b.status in ("validating", "in_progress", "finalizing", "cancelling"), b.status
        assert time.time() < deadline, f"batch {batch_id} still {b.status}"
        time.sleep(0.2)


def result_lines(client, file_id):
    text = client.files.content(file_id).text
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def expect(exc, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc as e:
        return e
    raise AssertionError(f"{fn.__qualname__} should raise {exc.__name__}")


def flow(client, other):
    n = 8
    lines = [line(f"q{i}", f"Give me one word that rhymes with number {i}.") for i in range(n)]
    lines.append(line("bad", "hi", temperature=9))
    f = client.files.create(file=("requests.jsonl", "\n".join(lines).encode()), purpose="batch")
    assert (f.object, f.purpose, f.status, f.filename) == ("file", "batch", "processed", "requests.jsonl"), f
    assert client.files.retrieve(f.id).bytes == f.bytes
    assert f.id in [x.id for x in client.files.list()]

    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"run": "sdk"})
    assert b.status == "validating" and b.metadata == {"run": "sdk"}, b
    b = wait_final(client, b.id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (n + 1, n, 1), b
    assert b.completed_at and b.in_progress_at and b.finalizing_at and b.output_file_id and b.error_file_id

    out, err = result_lines(client, b.output_file_id), result_lines(client, b.error_file_id)
    ids = [r["custom_id"] for r in out + err]
    assert sorted(ids) == sorted([f"q{i}" for i in range(n)] + ["bad"]), ids
    for r in out:
        assert r["id"].startswith("batch_req_") and r["error"] is None
        assert r["response"]["status_code"] == 200
        body = r["response"]["body"]
        # The body parses as the SDK's own ChatCompletion type.
        completion = openai.types.chat.ChatCompletion.model_validate(body)
        assert completion.object == "chat.completion" and completion.choices[0].message.role == "assistant"
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert err[0]["response"]["status_code"] == 400
    assert err[0]["response"]["body"]["error"]["param"] == "temperature"
    assert other is not None and b.id not in [x.id for x in other.batches.list()]
    expect(openai.NotFoundError, other.batches.retrieve, b.id)
    expect(openai.NotFoundError, other.files.content, b.output_file_id)
    expect(openai.NotFoundError, other.batches.cancel, b.id)
    return f, b


def listing_and_cancel(client, first):
    big = "\n".join(line(f"c{i}", f"Tell a short story about the number {i}.", max_tokens=24) for i in range(24))
    f = client.files.create(file=("big.jsonl", big.encode()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    page = client.batches.list(limit=1)
    assert [x.id for x in page.data] == [b.id] and page.has_more
    # Iterating the page follows `after` through every page.
    assert [x.id for x in client.batches.list(limit=1)] == [b.id, first.id]
    cancelled = client.batches.cancel(b.id)
    assert cancelled.status in ("cancelling", "cancelled"), cancelled
    b = wait_final(client, b.id)
    assert b.status == "cancelled" and b.cancelled_at, b
    answered = []
    for fid in (b.output_file_id, b.error_file_id):
        if fid:
            answered += [r["custom_id"] for r in result_lines(client, fid)]
    assert sorted(answered) == sorted(f"c{i}" for i in range(24)), answered
    expect(openai.ConflictError, client.batches.cancel, b.id)
    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    expect(openai.NotFoundError, client.files.retrieve, f.id)


def bad_inputs(client):
    dup = "\n".join([line("x", "a"), line("x", "b")])
    e = expect(openai.BadRequestError, client.files.create, file=("dup.jsonl", dup.encode()), purpose="batch")
    assert "line 2" in e.message and "duplicate custom_id" in e.message, e.message
    e = expect(openai.BadRequestError, client.files.create, file=("bad.jsonl", b"{not json"), purpose="batch")
    assert "line 1" in e.message, e.message
    expect(openai.NotFoundError, client.files.retrieve, "file-does-not-exist")
    expect(openai.NotFoundError, client.batches.retrieve, "batch_does_not_exist")
    e = expect(openai.NotFoundError, client.batches.create, input_file_id="file-does-not-exist",
               endpoint="/v1/chat/completions", completion_window="24h")
    expect(openai.AuthenticationError, openai.OpenAI(base_url=client.base_url, api_key="sk-wrong", max_retries=0).batches.list)


def main():
    with tempfile.TemporaryDirectory(prefix="kiln-batch-sdk-") as data_dir:
        proc, base = start_server(data_dir)
        try:
            client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
            other = openai.OpenAI(base_url=base + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=120)
            _, first = flow(client, other)
            listing_and_cancel(client, first)
            bad_inputs(client)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print("batch_openai.py: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
