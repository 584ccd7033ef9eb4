"""Tool calling end to end on the CPU (default model, Hermes format) through the official
``openai`` client: calls with ``tool_choice`` required / named (grammar-held: always valid
JSON matching the function's parameters) and auto, streamed and not, a round trip through a
``tool`` message to an answer, and bad tool definitions answered with a 400."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from test_server import API_KEY, MODEL, _request, _start_server, _stop

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "pattern": "^[A-Z]{3}$"}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Time in a zone", "parameters": TIME},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(default_model_path):
    proc, base = _start_server(default_model_path, "--api-key", API_KEY)
    yield base
    _stop(proc)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


def _check_calls(calls, names=SCHEMAS) -> None:
    assert calls, "no tool calls"
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        assert c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def _streamed(client, **kw):
    """Content, tool calls (merged by index, as clients merge deltas) and finish reason."""
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kw):
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        content += ch.delta.content or ""
        for d in ch.delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = c["id"] or d.id
            c["name"] += d.function.name or ""
            c["arguments"] += d.function.arguments or ""
        finish = ch.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def test_required_call_then_tool_result_then_answer(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=200,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    _check_calls(choice.message.tool_calls)
    call = choice.message.tool_calls[0]
    follow = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18, "sky": "clear"}'},
    ]
    r = client.chat.completions.create(
        model=MODEL,
        messages=follow,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=30,
    )
    assert r.choices[0].message.content
    assert not r.choices[0].message.tool_calls


def test_named_call_streamed_and_single_call_when_not_parallel(client):
    named = {"type": "function", "function": {"name": "get_time"}}
    content, calls, finish = _streamed(
        client, messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=100
    )
    assert finish == "tool_calls" and content == ""
    assert [c["name"] for c in calls] == ["get_time"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), TIME)
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        temperature=1.0,
        seed=5,
    )
    assert len(r.choices[0].message.tool_calls) == 1
    _check_calls(r.choices[0].message.tool_calls)


def test_auto_streamed_and_not_agree_in_shape(client):
    """Under auto the model decides; whatever it does, the shapes are OpenAI's and any call
    it makes is parsed out of the text (none of its markup is left in the content)."""
    kw = {"messages": ASK, "tools": TOOLS, "max_tokens": 120, "temperature": 0}
    r = client.chat.completions.create(model=MODEL, **kw)
    msg, finish = r.choices[0].message, r.choices[0].finish_reason
    content, calls, s_finish = _streamed(client, **kw)
    assert finish == s_finish
    if msg.tool_calls:
        assert finish == "tool_calls"
        assert [c.function.name for c in msg.tool_calls] == [c["name"] for c in calls]
    else:
        assert finish in ("stop", "length") and content == msg.content
    assert "<tool_call>" not in (msg.content or "") or not msg.tool_calls


@pytest.mark.parametrize(
    "body, word",
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "name"),
        ({"tools": [{"type": "code_interpreter"}]}, "type"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": 7}}]},
            "parameters",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "nope",
        ),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"x": {"type": "nonsense"}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "nonsense",
        ),
    ],
)
def test_bad_tools_are_400_and_the_server_keeps_serving(client, server, body, word):
    req = {"model": MODEL, "messages": ASK, "max_tokens": 3, **body}
    r = _request(server, "POST", "/v1/chat/completions", req, key=API_KEY)
    assert r.status_code == 400, r.text
    assert word in r.json()["error"]["message"], r.text
    assert client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2).choices
