"""Structured outputs end to end on the CPU (default model): the Python API's
``structured_outputs``, and the server's ``response_format`` / ``structured_outputs`` /
``guided_*`` through the official ``openai`` client. Every output must be complete (finish
reason ``stop``) and valid; requests go concurrently so that the corpus runs in batches."""

from __future__ import annotations

import json
import pickle
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pydantic
import pytest
from structured_schemas import schemas
from test_server import API_KEY, MODEL, _metrics, _request, _start_server, _stop

import infire
from infire import SamplingParams, StructuredOutputsParams


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    age: int = pydantic.Field(ge=0, le=120)
    colors: list[str] = pydantic.Field(max_length=3)


@pytest.fixture(scope="module")
def server(default_model_path):
    proc, base = _start_server(default_model_path, "--api-key", API_KEY, "--max-num-seqs", "32")
    yield base
    _stop(proc)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


def _ask(client, content: str, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kw
    )


def test_python_api_json_regex_choice_and_bad_schema(engine):
    params = [
        SamplingParams(
            max_tokens=120, temperature=0, structured_outputs=StructuredOutputsParams(json=Person)
        ),
        SamplingParams(
            max_tokens=40,
            temperature=0.8,
            seed=3,
            structured_outputs={"regex": "[0-9]{3}-[0-9]{4}"},
        ),
        SamplingParams(
            max_tokens=20,
            structured_outputs=StructuredOutputsParams(choice=["positive", "negative"]),
        ),
    ]
    prompts = ["Describe a person as JSON.", "A phone number:", "The movie was great. Sentiment:"]
    outs = engine.generate(prompts, params)
    person = Person.model_validate_json(outs[0].outputs[0].text)
    assert 0 <= person.age <= 120
    assert re.fullmatch("[0-9]{3}-[0-9]{4}", outs[1].outputs[0].text)
    assert outs[2].outputs[0].text in ("positive", "negative")
    assert all(o.outputs[0].finish_reason == "stop" for o in outs)
    # The parameters round-trip through to_dict and pickling.
    for p in params:
        assert SamplingParams(**p.to_dict()) == p == pickle.loads(pickle.dumps(p))
    assert params[2].structured_outputs == StructuredOutputsParams(choice=["positive", "negative"])
    bad = SamplingParams(structured_outputs={"json": {"type": "nonsense"}})
    with pytest.raises(infire.InvalidRequestError, match="nonsense"):
        engine.generate("x", bad)
    with pytest.raises(infire.InvalidRequestError, match="only one"):
        SamplingParams(structured_outputs={"regex": "a", "choice": ["b"]})
    # The engine keeps serving.
    assert engine.generate("Hi", SamplingParams(max_tokens=2))[0].outputs[0].token_ids


def test_backend_pick_equals_the_host_pick(engine):
    """A constrained sequence's token is picked by the backend, its grammar's mask going with
    the step's sampling; asking for log-probabilities moves the pick to the host
    (`Sampler::sample_constrained`). Same logits, same rules, same keys: the same tokens, with
    the mask before penalties, top-k/p and the seeded draw, and alongside free sequences."""
    kw = dict(
        max_tokens=60,
        temperature=0.9,
        top_k=30,
        top_p=0.95,
        repetition_penalty=1.3,
        frequency_penalty=0.2,
        seed=5,
    )
    schema = {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "color": {"enum": ["red", "green", "blue"]},
        },
        "required": ["age", "color"],
        "additionalProperties": False,
    }
    spec = StructuredOutputsParams(json=schema)
    prompt = "Describe a person as JSON."
    backend = engine.generate(prompt, SamplingParams(**kw, structured_outputs=spec))[0]
    host = engine.generate(prompt, SamplingParams(**kw, structured_outputs=spec, logprobs=1))[0]
    a, b = backend.outputs[0], host.outputs[0]
    assert a.logprobs is None and b.logprobs is not None
    assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason == "stop"
    jsonschema.validate(json.loads(a.text), schema)
    # Beside a free sequence in one batch, and greedy, the mask still decides.
    greedy = SamplingParams(max_tokens=20, temperature=0, structured_outputs={"regex": "[xyz]{5}"})
    free = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    outs = engine.generate([prompt, prompt], [greedy, free])
    assert re.fullmatch("[xyz]{5}", outs[0].outputs[0].text)
    assert len(outs[1].outputs[0].token_ids) == 6


def test_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Make up a person with a name, age and colors."}],
        response_format=Person,
        max_tokens=150,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)


def test_schema_corpus_outputs_all_validate(client):
    corpus = schemas()
    assert len(corpus) >= 50

    def run(i_schema):
        i, schema = i_schema
        r = _ask(
            client,
            "Reply with JSON matching the schema.",
            max_tokens=400,
            temperature=0.7,
            seed=i,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": f"s{i}", "schema": schema, "strict": True},
            },
        )
        return schema, r.choices[0]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, enumerate(corpus)))
    for schema, choice in results:
        # An output cut by max_tokens is not counted valid.
        assert choice.finish_reason == "stop", (schema, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_regex_choice_grammar_and_json_object(client, server):
    r = _ask(client, "A date:", max_tokens=30, extra_body={"guided_regex": "20[0-9]{2}-0[1-9]"})
    assert re.fullmatch("20[0-9]{2}-0[1-9]", r.choices[0].message.content)
    r = _ask(client, "Pick:", max_tokens=10, extra_body={"guided_choice": ["cat", "dog"]})
    assert r.choices[0].message.content in ("cat", "dog")
    so = {"structured_outputs": {"choice": ["yes", "no"]}}
    r = _ask(client, "Yes or no?", max_tokens=10, n=3, extra_body=so)
    assert {c.message.content for c in r.choices} <= {"yes", "no"}
    grammar = 'start: "A" digit digit\ndigit: /[0-9]/'
    r = _ask(client, "Code:", max_tokens=10, extra_body={"guided_grammar": grammar})
    assert re.fullmatch("A[0-9]{2}", r.choices[0].message.content)
    # Greedy: a sampled object may run past max_tokens (then it is cut, not invalid).
    r = _ask(
        client,
        "JSON please",
        max_tokens=200,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    # The completions endpoint takes the same fields; streamed text joins to a valid output.
    stream = client.completions.create(
        model=MODEL,
        prompt="Number:",
        max_tokens=20,
        stream=True,
        extra_body={"guided_regex": "[1-9][0-9]{0,3}"},
    )
    text = "".join(c.choices[0].text for c in stream)
    assert re.fullmatch("[1-9][0-9]{0,3}", text)


def test_jump_forward_streams_and_counts(client, server):
    """Fixed keys are forced (jump-forward): streamed deltas join to the whole output, and
    /metrics counts the forced tokens and the steps they saved."""
    schema = {
        "type": "object",
        "properties": {
            "customer_identification_number": {"type": "integer", "minimum": 0, "maximum": 99},
            "account_status_description": {"enum": ["active_and_in_good_standing"]},
        },
        "required": ["customer_identification_number", "account_status_description"],
        "additionalProperties": False,
    }
    kw = dict(
        max_tokens=80,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    before = _metrics(server)
    whole = _ask(client, "A customer as JSON:", **kw)
    stream = _ask(client, "A customer as JSON:", stream=True, **kw)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content
    jsonschema.validate(json.loads(text), schema)
    after = _metrics(server)
    for name in ("infire_structured_forced_tokens_total", "infire_structured_steps_saved_total"):
        assert after[name] - before[name] > 10, name


@pytest.mark.parametrize(
    "body, word",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "strict": True, "schema": {"type": "nonsense"}},
                }
            },
            "nonsense",
        ),
        ({"response_format": {"type": "yaml"}}, "yaml"),
        ({"guided_regex": "(unclosed"}, "regex"),
        ({"guided_choice": []}, "choice"),
        ({"guided_grammar": "start: undefined_rule"}, "undefined_rule"),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "only one"),
    ],
)
def test_bad_constraints_are_400_and_the_server_keeps_serving(client, server, body, word):
    req = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    r = _request(server, "POST", "/v1/chat/completions", {**req, **body}, key=API_KEY)
    assert r.status_code == 400, r.text
    assert word in r.json()["error"]["message"], r.text
    assert _ask(client, "hi", max_tokens=2).choices[0].message.content is not None
