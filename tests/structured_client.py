"""Structured outputs and tool calls through the official `openai` SDK
against a real `kiln serve` on the default model. The `jsonschema` package
judges every constrained output; the SDK's own helpers (`parse`, `stream`)
read the responses.

Run by tests/http_clients.rs (KILN_BIN set); the venv comes from
scripts/setup-python-clients.sh.
"""

import concurrent.futures
import json
import pathlib
import re
import urllib.request

import jsonschema
import openai
import pydantic
import pytest
import kiln_serve

MODEL = "kiln-test"
KEY = "sk-structured-test"
SCHEMAS = json.loads((pathlib.Path(__file__).parent / "fixtures/structured/schemas.json").read_text())
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 30}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="session")
def server():
    proc, base = kiln_serve.start(["--served-model-name", MODEL, "--max-model-len", "1024", "--max-num-seqs", "8",
                                   "--seed", "0", "--api-key", KEY, "--data-dir", ""], timeout=120)
    yield base
    kiln_serve.stop(proc)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=300)


def chat(client, **kw):
    args = dict(model=MODEL, max_tokens=96, temperature=0)
    args.update(kw)
    return client.chat.completions.create(**args)


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    population: int = pydantic.Field(ge=0, le=100_000_000)


def test_parse_returns_the_pydantic_object(client):
    r = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Describe Paris."}],
                                      response_format=City, max_tokens=96, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert isinstance(c.message.parsed, City)
    assert c.message.parsed == City.model_validate_json(c.message.content)


def test_json_object_mode_gives_one_object(client):
    r = chat(client, messages=[{"role": "user", "content": "Reply with a JSON object with the keys name and age of a person."}],
             response_format={"type": "json_object"}, max_tokens=128)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def one_schema(client, spec, sampled):
    extra = dict(temperature=0.8, seed=11) if sampled else dict(temperature=0)
    r = client.chat.completions.create(
        model=MODEL, max_tokens=192,
        messages=[{"role": "user", "content": spec["prompt"] + " Answer in JSON matching this schema: " + json.dumps(spec["schema"])}],
        response_format={"type": "json_schema", "json_schema": {"name": spec["name"], "schema": spec["schema"], "strict": True}},
        **extra)
    return spec, sampled, r.choices[0]


def test_every_output_validates_against_its_schema(client):
    assert len(SCHEMAS) >= 30
    jobs = [(s, sampled) for s in SCHEMAS for sampled in (False, True)]
    checker = jsonschema.FormatChecker()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda j: one_schema(client, *j), jobs))
    failures = []
    for spec, sampled, choice in results:
        try:
            assert choice.finish_reason == "stop", f"finish_reason {choice.finish_reason}"
            jsonschema.validate(json.loads(choice.message.content), spec["schema"], format_checker=checker)
        except Exception as e:  # collect all, report together
            failures.append(f"{spec['name']} (sampled={sampled}): {e}: {choice.message.content!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("schema, feature", [
    ({"type": "strng"}, "strng"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, ""),
    ({"type": "string", "pattern": "(?=x)y"}, ""),
])
def test_invalid_schemas_are_refused(client, schema, feature):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=ASK_WEATHER,
             response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}})
    err = e.value.body
    assert err["param"] == "response_format", err
    assert feature in err["message"], err


def test_completions_take_a_response_format(client):
    schema = {"type": "object", "properties": {"capital": {"enum": ["Paris", "Lyon", "Nice"]}}, "required": ["capital"]}
    r = client.completions.create(model=MODEL, prompt="The capital of France, as JSON:", max_tokens=32, temperature=0,
                                  extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
    jsonschema.validate(json.loads(r.choices[0].text), schema)
    assert r.choices[0].finish_reason == "stop"


def check_call(call, tool):
    assert call.id.startswith("call_") and len(call.id) > len("call_")
    assert call.type == "function"
    assert call.function.name == tool["function"]["name"]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_tool_round_trip(client):
    r = chat(client, messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content is None
    assert len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    tool = WEATHER if call.function.name == "get_weather" else TIME
    check_call(call, tool)
    history = ASK_WEATHER + [
        c.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})},
    ]
    final = chat(client, messages=history, tools=[WEATHER, TIME], max_tokens=48)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    msg = final.choices[0].message
    assert msg.content or msg.tool_calls


def test_named_function_choice(client):
    r = chat(client, messages=ASK_WEATHER, tools=[WEATHER, TIME], parallel_tool_calls=False,
             tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and calls
    for call in calls:
        check_call(call, TIME)


def test_streamed_tool_calls_equal_the_non_streamed_call(client):
    args = dict(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                max_tokens=96, temperature=0)
    plain = client.chat.completions.create(**args).choices[0]
    with client.chat.completions.stream(**args) as s:
        final = s.get_final_completion().choices[0]
    assert final.finish_reason == plain.finish_reason == "tool_calls"
    got = [(t.function.name, t.function.arguments) for t in final.message.tool_calls]
    want = [(t.function.name, t.function.arguments) for t in plain.message.tool_calls]
    assert got == want
    # The raw deltas: an index on each, id/type/name on a call's first only.
    seen = {}
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args):
        for ch in chunk.choices:
            for d in ch.delta.tool_calls or []:
                assert d.index is not None
                first = d.index not in seen
                assert (d.id is not None) == first and (d.type is not None) == first
                assert (d.function.name is not None) == first
                seen[d.index] = seen.get(d.index, "") + (d.function.arguments or "")
        if chunk.usage:
            assert chunk.usage.completion_tokens > 0
    assert list(seen.values()) == [a for _, a in want]


def test_history_roles_names_and_null_content(client):
    messages = [
        {"role": "developer", "content": "You are terse."},
        {"role": "user", "name": "ann", "content": "Weather in Oslo?"},
        {"role": "assistant", "tool_calls": [{"id": "call_abc", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "3 C, snow"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_def", "type": "function",
                                                               "function": {"name": "get_time", "arguments": "{\"zone\": \"CET\"}"}}]},
        {"role": "tool", "tool_call_id": "call_def", "content": "14:02"},
    ]
    r = chat(client, messages=messages, tools=[WEATHER, TIME], max_tokens=24)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_logprob_bytes_rebuild_text_split_inside_characters(client):
    schema = {"type": "string", "enum": ["😀 naïve 🎉"]}
    r = chat(client, messages=[{"role": "user", "content": "Say it."}], logprobs=True, top_logprobs=2,
             response_format={"type": "json_schema", "json_schema": {"name": "e", "schema": schema}})
    c = r.choices[0]
    assert c.message.content == json.dumps("😀 naïve 🎉", ensure_ascii=False)
    joined = b"".join(bytes(t.bytes) for t in c.logprobs.content)
    assert joined.decode("utf-8") == c.message.content
    # At least one token holds only part of a character.
    assert any(not _is_utf8(bytes(t.bytes)) for t in c.logprobs.content)


def _is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_grammar_metrics(client, server):
    schema = {"type": "object", "properties": {"k": {"type": "boolean"}}, "required": ["k"]}
    for _ in range(2):
        chat(client, messages=ASK_WEATHER, max_tokens=16,
             response_format={"type": "json_schema", "json_schema": {"name": "m", "schema": schema}})
    req = urllib.request.Request(server + "/metrics", headers={"authorization": "Bearer " + KEY})
    text = urllib.request.urlopen(req).read().decode()
    hits = float(re.search(r"^kiln_grammar_cache_hits_total(?:\{[^}]*\})? (\S+)", text, re.M).group(1))
    misses = float(re.search(r"^kiln_grammar_cache_misses_total(?:\{[^}]*\})? (\S+)", text, re.M).group(1))
    assert hits >= 1 and misses >= 1
    assert "kiln_grammar_compile_seconds_bucket" in text


def _objects(n):
    return [{"type": "object", "properties": {f"k{i}": {"type": "integer"}}, "required": [f"k{i}"]} for i in range(n)]


def _metric(server, name):
    req = urllib.request.Request(server + "/metrics", headers={"authorization": "Bearer " + KEY})
    text = urllib.request.urlopen(req).read().decode()
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_a_choice_over_llguidance_limits_is_a_400_before_admission(client, server):
    # llguidance compiles this and fails only when generation reaches the
    # anyOf ("Current row has 2100 items; max is 2000"): that was a 500.
    schema = {"type": "object", "properties": {"a": {"anyOf": _objects(2100)}}, "required": ["a"]}
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as e:
            chat(client, messages=ASK_WEATHER, max_tokens=32,
                 response_format={"type": "json_schema", "json_schema": {"name": "big", "schema": schema}})
        err = e.value.body
        assert err["param"] == "response_format" and "2000" in err["message"], err
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    tools = [{"type": "function", "function": {"name": "pick", "parameters": schema}}]
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=ASK_WEATHER, tools=tools, tool_choice="required")
    assert e.value.body["param"] == "tools[0].function.parameters" and "2000" in e.value.body["message"]
    # Nothing held: no admitted request left pending or waiting in the
    # engine, and the server serves on.
    assert _metric(server, "kiln_num_requests_pending") == 0
    assert _metric(server, "kiln_num_requests_waiting") == 0
    assert chat(client, messages=ASK_WEATHER, max_tokens=4).choices[0].finish_reason == "length"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_forced_call_cut_by_max_tokens_is_a_partial_call(client, choice):
    # OpenAI: finish_reason "length", content null, the call so far. The
    # fragment used to land in message.content.
    args = dict(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=False,
                max_tokens=22, temperature=0)
    whole = client.chat.completions.create(**{**args, "max_tokens": 96}).choices[0]
    assert whole.finish_reason == "tool_calls"
    full = whole.message.tool_calls[0].function.arguments
    c = client.chat.completions.create(**args).choices[0]
    assert c.finish_reason == "length"
    assert c.message.content is None
    assert len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    # Greedy: the cut arguments are a proper prefix of the whole call's.
    assert call.function.arguments.startswith("{") and full.startswith(call.function.arguments)
    assert len(call.function.arguments) < len(full)
    # Streamed alike: no content, the same name and arguments.
    content, name, arguments, finish = "", None, "", None
    for chunk in client.chat.completions.create(stream=True, **args):
        for ch in chunk.choices:
            content += ch.delta.content or ""
            for d in ch.delta.tool_calls or []:
                name = name or d.function.name
                arguments += d.function.arguments or ""
            finish = ch.finish_reason or finish
    assert (content, name, arguments, finish) == ("", "get_weather", call.function.arguments, "length")


def test_request_errors_name_the_field_and_what_it_expects(client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=ASK_WEATHER, response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert e.value.body["param"] == "response_format" and "json_schema.schema is required" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=ASK_WEATHER, stop=3)
    assert e.value.body["param"] == "stop"
    assert "a string or an array of strings" in e.value.body["message"] and "untagged" not in e.value.body["message"]
    string_params = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=ASK_WEATHER, tools=[string_params])
    assert e.value.body["param"] == "tools[0].function.parameters" and "object" in e.value.body["message"]
    bad = {"type": "function", "function": {"name": "broken", "parameters": {
        "type": "object", "properties": {"a": {"type": "strng"}}}}}
    for choice in ("auto", "required"):
        with pytest.raises(openai.BadRequestError) as e:
            chat(client, messages=ASK_WEATHER, tools=[WEATHER, bad], tool_choice=choice)
        err = e.value.body
        assert err["param"] == "tools[1].function.parameters", err
        assert "'broken'" in err["message"] and "strng" in err["message"], err
        assert "%json" not in err["message"] and "start:" not in err["message"] and "\n" not in err["message"], err
