"""The official `openai` Python SDK's `client.embeddings.create` against a
real `kiln serve` holding two models (the default chat model as "chat",
all-MiniLM-L6-v2 as "minilm").

tests/http_clients.rs runs it (venv from scripts/setup-python-clients.sh) with
KILN_BIN, KILN_CHAT_MODEL and KILN_MINILM set. Reference vectors are
sentence-transformers' (tests/fixtures/embeddings/minilm_golden.json).
"""

import base64
import json
import math
import os
import struct
from pathlib import Path

import openai
import pytest
import kiln_serve

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "embeddings" / "minilm_golden.json"


def unpack(b64):
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def as_f32(values):
    """JSON floats rounded to the f32 they print (serde writes the shortest decimal of each f32)."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="session")
def golden():
    cases = json.loads(GOLDEN.read_text())["cases"]
    return [(c["text"], unpack(c["embedding_f32_b64"])) for c in cases]


@pytest.fixture(scope="session")
def server():
    proc, base = kiln_serve.start(["--model", "chat=" + os.environ["KILN_CHAT_MODEL"],
                                   "--model", "minilm=" + os.environ["KILN_MINILM"],
                                   "--max-model-len", "512", "--max-num-seqs", "8", "--data-dir", ""])
    yield base
    kiln_serve.stop(proc)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_float_and_base64_decode_the_same_vectors(client, golden):
    texts = [t for t, _ in golden[:12]]
    as_float = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    as_b64 = client.embeddings.create(model="minilm", input=texts, encoding_format="base64")
    # With no encoding_format the SDK asks for base64 and decodes it itself.
    default = client.embeddings.create(model="minilm", input=texts)
    assert as_float.model == "minilm" and as_float.object == "list"
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > len(texts)
    for i, (text, want) in enumerate(golden[:12]):
        f = as_f32(as_float.data[i].embedding)
        b = as_b64.data[i].embedding
        b = unpack(b) if isinstance(b, str) else as_f32(b)
        d = as_f32(default.data[i].embedding)
        assert as_float.data[i].index == i
        assert len(f) == 384
        assert f == b and d == f, text
        assert cosine(f, want) >= 0.99999, text


def test_token_id_inputs_match_text(client):
    by_text = client.embeddings.create(model="minilm", input="hello world", encoding_format="float")
    by_ids = client.embeddings.create(model="minilm", input=[[101, 7592, 2088, 102]], encoding_format="float")
    assert by_text.data[0].embedding == pytest.approx(by_ids.data[0].embedding, abs=1e-6)


def test_errors_say_what_the_model_serves(client):
    with pytest.raises(openai.BadRequestError, match="text generation"):
        client.embeddings.create(model="chat", input="hi")
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="hi")
    with pytest.raises(openai.BadRequestError, match="256"):
        client.embeddings.create(model="minilm", input="word " * 300)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="minilm", input="hi", dimensions=32)


def test_models_lists_both_and_chat_still_works(client):
    assert [m.id for m in client.models.list().data] == ["chat", "minilm"]
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    assert r.choices[0].message.content
