"""OpenAI's Responses API on `kiln serve`, through the official `openai`
SDK: `client.responses.create` (string and item input, `instructions`),
`client.responses.parse` with a pydantic `text_format` (json_schema),
`client.responses.stream` event by event, a function-tool round trip
through `function_call_output`, `previous_response_id` over three turns
with prefix-cache hits, retrieve / delete / input_items and per-key
ownership. The SDK's own models and stream helpers judge the wire format;
`jsonschema` judges the constrained outputs.

Run by tests/http_clients.rs (KILN_BIN set); the venv comes from
scripts/setup-python-clients.sh.
"""

import json

import jsonschema
import openai
import pydantic
import pytest
import kiln_serve

MODEL = "kiln-test"
KEY = "sk-responses-a"
OTHER_KEY = "sk-responses-b"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city.",
    "strict": True,
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    proc, base = kiln_serve.start(["--served-model-name", MODEL, "--max-model-len", "1024", "--max-num-seqs", "8",
                                   "--seed", "0", "--api-key", KEY, "--api-key", OTHER_KEY,
                                   "--data-dir", str(data)], timeout=120)
    yield base
    kiln_serve.stop(proc)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=300)


def create(client, **kw):
    args = dict(model=MODEL, max_output_tokens=48, temperature=0)
    args.update(kw)
    return client.responses.create(**args)


def check_usage(r):
    u = r.usage
    assert u.input_tokens > 0 and u.output_tokens > 0
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert 0 <= u.input_tokens_details.cached_tokens <= u.input_tokens


def test_string_input_with_instructions(client):
    r = create(client, input="What is the capital of France?", instructions="Answer in one short sentence.")
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status in ("completed", "incomplete")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
        assert r.usage.output_tokens == 48
    assert r.instructions == "Answer in one short sentence."
    assert len(r.output) == 1 and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output_text and r.output_text == r.output[0].content[0].text
    check_usage(r)
    # The instructions are the system turn: the same question without them is a different prompt.
    bare = create(client, input="What is the capital of France?")
    assert bare.usage.input_tokens != r.usage.input_tokens


def test_item_input_equals_string_input(client):
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}]
    a = create(client, input=items, max_output_tokens=16)
    b = create(client, input="Name a colour.", max_output_tokens=16)
    assert a.output_text == b.output_text and a.usage.input_tokens == b.usage.input_tokens


def test_max_output_tokens_makes_it_incomplete(client):
    r = create(client, input="Count from one to one hundred in words.", max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5
    # The item the limit cut is itself incomplete.
    assert r.output[-1].status == "incomplete"


def test_codex_style_defaults_are_accepted(client):
    # Codex CLI sends these on every request; each asks for what kiln does.
    r = create(client, input="Hi", max_output_tokens=4, include=[], truncation="disabled", prompt_cache_key="conv-1", store=False)
    assert r.truncation == "disabled" and r.usage.output_tokens >= 1
    with pytest.raises(openai.BadRequestError) as e:
        create(client, input="Hi", truncation="auto")
    assert e.value.param == "truncation"


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    population: int = pydantic.Field(ge=0, le=100_000_000)


def test_parse_with_a_json_schema(client):
    r = client.responses.parse(model=MODEL, input="Describe Paris.", text_format=City, max_output_tokens=96, temperature=0)
    assert r.status == "completed"
    assert isinstance(r.output_parsed, City)
    jsonschema.validate(json.loads(r.output_text), City.model_json_schema())
    assert r.text.format.type == "json_schema"


def test_stream_event_by_event(client):
    types, deltas, seqs = [], [], []
    with client.responses.stream(model=MODEL, input="Say hello.", max_output_tokens=64, temperature=0) as stream:
        for event in stream:
            types.append(event.type)
            seqs.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        # The SDK's final response exists for a completed stream; an incomplete one ends with its response.
        final = stream.get_final_response() if types[-1] == "response.completed" else event.response
    assert seqs == list(range(len(seqs)))
    end = "response.completed" if final.status == "completed" else "response.incomplete"
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", end]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert "".join(deltas) == final.output_text
    check_usage(final)
    # The streamed response was stored as it was streamed.
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text and stored.usage == final.usage


def test_function_tool_round_trip(client):
    first = create(client, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required", max_output_tokens=64)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) >= 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    args = json.loads(calls[0].arguments)
    jsonschema.validate(args, WEATHER["parameters"])
    # Full history sent back as items, ending with the function's output.
    items = [{"role": "user", "content": "What is the weather in Paris?"}]
    items += [c.model_dump(exclude_none=True) for c in calls]
    items += [{"type": "function_call_output", "call_id": c.call_id, "output": json.dumps({"temp_c": 21, "sky": "sunny"})} for c in calls]
    second = create(client, input=items, tools=[WEATHER], tool_choice="none", max_output_tokens=32)
    assert second.output and all(o.type == "message" for o in second.output)
    assert second.output_text
    # The same round trip through previous_response_id: the calls come from the store.
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": "21 C, sunny"} for c in calls]
    third = create(client, input=outputs, previous_response_id=first.id, tools=[WEATHER], tool_choice="none", max_output_tokens=32)
    assert third.previous_response_id == first.id and third.output_text
    assert third.usage.input_tokens > first.usage.input_tokens


def test_streamed_function_call(client):
    with client.responses.stream(model=MODEL, input="Weather in Rome?", tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                                 max_output_tokens=64, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert final.status == "completed" and [o.type for o in final.output] == ["function_call"]
    call = final.output[0]
    assert args == call.arguments and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(args), WEATHER["parameters"])


def test_previous_response_id_three_turns_hit_the_prefix_cache(client):
    # Instructions are not carried over by previous_response_id (as at OpenAI): each turn repeats them.
    sys = "You are a helpful assistant. Remember what the user tells you."
    r1 = create(client, input="My name is Ada. Remember it.", instructions=sys, max_output_tokens=24)
    r2 = create(client, input="What is my name?", instructions=sys, previous_response_id=r1.id, max_output_tokens=24)
    r3 = create(client, input="Spell it backwards.", instructions=sys, previous_response_id=r2.id, max_output_tokens=24)
    for prev, r in ((r1, r2), (r2, r3)):
        assert r.previous_response_id == prev.id
        # The earlier turns are part of the prompt and were served from the prefix cache.
        assert r.usage.input_tokens > prev.usage.input_tokens
        assert r.usage.input_tokens_details.cached_tokens > 0
    items = client.responses.input_items.list(r3.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "Spell it backwards."


def test_retrieve_input_items_delete(client):
    items = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "input_text", "text": "Hi!"}]}]
    r = create(client, input=items, max_output_tokens=8, metadata={"case": "crud"})
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.metadata == {"case": "crud"}
    listed = client.responses.input_items.list(r.id, order="asc")
    assert [i.role for i in listed.data] == ["developer", "user"]
    assert listed.data[1].content[0].text == "Hi!"
    assert [i.id for i in client.responses.input_items.list(r.id).data] == [i.id for i in reversed(listed.data)]
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_another_key_gets_404(client, server):
    r = create(client, input="Hello", max_output_tokens=4)
    other = openai.OpenAI(base_url=server + "/v1", api_key=OTHER_KEY, max_retries=0)
    for call in (lambda: other.responses.retrieve(r.id), lambda: other.responses.input_items.list(r.id),
                 lambda: other.responses.delete(r.id),
                 lambda: other.responses.create(model=MODEL, input="Hi", previous_response_id=r.id, max_output_tokens=4)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert client.responses.retrieve(r.id).id == r.id


def test_store_false_is_not_stored(client):
    r = create(client, input="Hello", max_output_tokens=4, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_unsupported_fields_get_400_naming_them(client):
    cases = [
        (dict(tools=[{"type": "web_search_preview"}]), "tools[0].type"),
        (dict(reasoning={"effort": "high"}), "reasoning"),
        (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]), "input[0].content[0].type"),
        (dict(text={"format": {"type": "json_schema", "name": "x", "schema": 3}}), "text.format"),
    ]
    for kw, param in cases:
        args = dict(input="Hi")
        args.update(kw)
        with pytest.raises(openai.BadRequestError) as e:
            create(client, **args)
        assert e.value.status_code == 400 and e.value.param == param, (kw, e.value.body)
    with pytest.raises(openai.NotFoundError):
        create(client, input="Hi", previous_response_id="resp_missing")


def test_without_a_data_dir_previous_response_id_is_a_clear_400():
    proc, base = kiln_serve.start(["--served-model-name", MODEL, "--max-model-len", "512", "--data-dir", ""], timeout=120)
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        r = c.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
        assert r.store is True and r.output
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(model=MODEL, input="Hi", previous_response_id=r.id, max_output_tokens=4)
        assert e.value.param == "previous_response_id" and "not stored" in str(e.value)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(r.id)
    finally:
        kiln_serve.stop(proc)
