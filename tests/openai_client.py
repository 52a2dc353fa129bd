"""The official `openai` Python SDK against a real `kiln serve`.

Run through scripts/test-openai-client.sh, which builds kiln, makes the venv
and sets KILN_BIN. The server is started once per session with two keys: one
unlimited, one limited to 1 request per minute (for RateLimitError).
"""

import json
import os
import tempfile
import urllib.request

import openai
import pytest
import kiln_serve

MODEL = "kiln-test"
KEY = "sk-openai-client-test"
LIMITED_KEY = "sk-openai-client-limited"


@pytest.fixture(scope="session")
def server():
    keys = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({"keys": [{"key": KEY, "name": "sdk"}, {"key": LIMITED_KEY, "name": "limited", "rpm": 1}]}, keys)
    keys.close()
    proc, base = kiln_serve.start(["--served-model-name", MODEL, "--max-model-len", "512", "--max-num-seqs", "8",
                                   "--api-key-file", keys.name, "--data-dir", ""], timeout=120)
    yield base
    kiln_serve.stop(proc)
    os.unlink(keys.name)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(client, **kw):
    args = dict(model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=16, temperature=0)
    args.update(kw)
    return client.chat.completions.create(**args)


def test_chat(client):
    r = ask(client)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_streaming_with_usage(client):
    plain = ask(client)
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_with_token_ids(client):
    text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert text.object == "text_completion"
    ids = json.loads(urllib.request.urlopen(urllib.request.Request(
        client.base_url.__str__().replace("/v1/", "/tokenize"),
        data=json.dumps({"prompt": "The capital of France is"}).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer " + KEY})).read())["tokens"]
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == text.choices[0].text
    two = client.completions.create(model=MODEL, prompt=[ids, ids[:2]], max_tokens=3, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.usage.prompt_tokens == len(ids) + 2


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model" and m.owned_by == "kiln"


def test_n_choices(client):
    r = ask(client, n=3, temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content for c in r.choices)


def test_logprobs(client):
    r = ask(client, logprobs=True, top_logprobs=2, max_tokens=5)
    content = r.choices[0].logprobs.content
    assert len(content) >= 1
    for t in content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 2
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4  # greedy: the chosen token is the top one
    c = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert "".join(lp.tokens) == c.choices[0].text


def test_echo_with_logprobs(client):
    """Legacy completions' echo with logprobs: the prompt's tokens come first,
    the first with a null logprob and null top_logprobs."""
    prompt = "The capital of France is"
    c = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=3, temperature=0)
    choice = c.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert "".join(lp.tokens) == choice.text  # prompt + generated text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    n_prompt = c.usage.prompt_tokens
    assert len(lp.tokens) == n_prompt + c.usage.completion_tokens
    assert "".join(lp.tokens[:n_prompt]) == prompt
    for i, (tok, l, top) in enumerate(zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]), 1):
        assert l <= 0 and len(top) == 2, (i, tok, l, top)
        assert max(top.values()) >= l - 1e-4  # the top alternatives are at least as likely
    # greedy: each generated token is its step's most likely one
    for l, top in zip(lp.token_logprobs[n_prompt:], lp.top_logprobs[n_prompt:]):
        assert abs(max(top.values()) - l) < 1e-4
    offsets = [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert lp.text_offset == offsets
    # The prompt's logprobs do not depend on what is generated after it.
    again = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=1, temperature=0)
    assert again.choices[0].logprobs.token_logprobs[:n_prompt] == lp.token_logprobs[:n_prompt]
    # max_tokens 0 with echo (refused before; OpenAI takes it): the prompt
    # alone, its logprobs the same, no completion tokens.
    alone = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=0)
    a = alone.choices[0]
    assert (a.text, a.finish_reason, alone.usage.completion_tokens) == (prompt, "length", 0)
    assert a.logprobs.token_logprobs == lp.token_logprobs[:n_prompt] and a.logprobs.tokens == lp.tokens[:n_prompt]
    plain = client.completions.create(model=MODEL, prompt=prompt, echo=True, max_tokens=0)
    assert (plain.choices[0].text, plain.choices[0].logprobs, plain.usage.prompt_tokens) == (prompt, None, n_prompt)
    streamed = client.completions.create(model=MODEL, prompt=prompt, echo=True, max_tokens=0, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == prompt


def test_seed_reproducibility(client):
    a = ask(client, temperature=1.0, seed=1234, max_tokens=20)
    b = ask(client, temperature=1.0, seed=1234, max_tokens=20)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_sdk_errors(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, temperature=3)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, messages=[{"role": "user", "content": "hi " * 2000}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError):
        ask(openai.OpenAI(base_url=server + "/v1", api_key="sk-wrong", max_retries=0))
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, model="gpt-4o")
    assert e.value.code == "model_not_found"
    limited = openai.OpenAI(base_url=server + "/v1", api_key=LIMITED_KEY, max_retries=0)
    ask(limited, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as e:
        ask(limited, max_tokens=1)
    assert e.value.response.headers["x-ratelimit-limit-requests"] == "1"
    assert int(e.value.response.headers["retry-after"]) >= 1
