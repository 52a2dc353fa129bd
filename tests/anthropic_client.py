"""Anthropic's Messages API on `kiln serve`, through the official
`anthropic` SDK: `messages.create`, `messages.stream` with text and
tool_use blocks reassembled by the SDK, a tool round trip through
`tool_result`, `count_tokens`, and the SDK's error classes for 400, 401,
404 and 429 (which it picks from the status and Anthropic's error shape).
`jsonschema` judges the tool inputs against their `input_schema`.

Run by tests/http_clients.rs (KILN_BIN set); the venv comes from
scripts/setup-python-clients.sh.
"""

import json
import urllib.request

import anthropic
import jsonschema
import pytest
import kiln_serve

MODEL = "kiln-test"
KEY = "sk-ant-a"
LIMITED_KEY = "sk-ant-limited"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.toml"
    keys.write_text(f'[[keys]]\nkey = "{KEY}"\nname = "a"\n[[keys]]\nkey = "{LIMITED_KEY}"\nname = "limited"\nrpm = 1\n')
    proc, base = kiln_serve.start(["--served-model-name", MODEL, "--max-model-len", "1024", "--max-num-seqs", "8",
                                   "--seed", "0", "--api-key-file", str(keys), "--data-dir", ""], timeout=120)
    yield base
    kiln_serve.stop(proc)


@pytest.fixture
def client(server):
    return anthropic.Anthropic(base_url=server, api_key=KEY, max_retries=0, timeout=300)


# The current SDK has no `temperature` argument any more; greedy decoding
# (for reproducible comparisons) goes in the body, which kiln serves.
GREEDY = {"temperature": 0}


def create(client, **kw):
    args = dict(model=MODEL, max_tokens=48, extra_body=GREEDY)
    args.update(kw)
    return client.messages.create(**args)


def test_create_text(client):
    m = create(client, system="Answer in one short sentence.", messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == MODEL
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert len(m.content) == 1 and m.content[0].type == "text" and m.content[0].text
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 48
    if m.stop_reason == "max_tokens":
        assert m.usage.output_tokens == 48
    short = create(client, max_tokens=3, messages=[{"role": "user", "content": "Count from one to one hundred in words."}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_stop_sequences(client):
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    full = create(client, messages=ask, max_tokens=40).content[0].text
    words = full.split()
    assert len(words) >= 4, full
    stop = words[2]
    m = create(client, messages=ask, max_tokens=40, stop_sequences=["never-generated-zz", stop])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert m.content[0].text == full[:full.index(stop)]
    with client.messages.stream(model=MODEL, max_tokens=40, extra_body=GREEDY, messages=ask, stop_sequences=[stop]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    assert final.content[0].text == m.content[0].text


def test_count_tokens_matches_the_prompt_of_create(client):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Tell me about Paris."}]}]
    counted = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=messages)
    m = create(client, system="Be brief.", messages=messages, max_tokens=4)
    assert counted.input_tokens == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)
    with_tools = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=messages, tools=[WEATHER])
    assert with_tools.input_tokens > counted.input_tokens


def test_stream_text(client):
    with client.messages.stream(model=MODEL, max_tokens=24, extra_body=GREEDY, messages=[{"role": "user", "content": "Say hello."}]) as s:
        events = list(s)
        final = s.get_final_message()
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    raw = [t for t in types if t in ("content_block_start", "content_block_delta", "content_block_stop")]
    assert raw[0] == "content_block_start" and raw[-1] == "content_block_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert final.content[0].type == "text" and final.content[0].text == text and text
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0
    # The same request unstreamed generates the same text (greedy).
    m = create(client, max_tokens=24, messages=[{"role": "user", "content": "Say hello."}])
    assert m.content[0].text == text


def test_stream_tool_use_reassembled(client):
    with client.messages.stream(model=MODEL, max_tokens=64, extra_body=GREEDY, tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                messages=[{"role": "user", "content": "What is the weather in Paris?"}]) as s:
        events = list(s)
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)


def test_tool_round_trip(client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = create(client, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, messages=ask, max_tokens=64)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    jsonschema.validate(use.input, WEATHER["input_schema"])
    history = ask + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C and sunny"}]}]
    second = create(client, tools=[WEATHER], tool_choice={"type": "none"}, messages=history, max_tokens=32)
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"] and second.content[0].text
    assert second.usage.input_tokens + (second.usage.cache_read_input_tokens or 0) > first.usage.input_tokens


def test_error_classes(client, server):
    with pytest.raises(anthropic.BadRequestError) as e:
        create(client, messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}])
    assert e.value.status_code == 400 and e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error" and "'image'" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        create(client, messages=[{"role": "user", "content": "Hi"}], tools=[{"name": "f", "input_schema": {"type": "string"}}])
    assert "tools.0.input_schema.type" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=server, api_key="sk-wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as e:
        create(client, model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    limited = anthropic.Anthropic(base_url=server, api_key=LIMITED_KEY, max_retries=0)
    limited.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(anthropic.RateLimitError) as e:
        limited.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["error"]["type"] == "rate_limit_error" and e.value.response.headers.get("retry-after")


def test_bearer_auth_is_accepted(server):
    body = json.dumps({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}).encode()
    req = urllib.request.Request(server + "/v1/messages", data=body, method="POST", headers={
        "authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200 and json.loads(r.read())["type"] == "message"
