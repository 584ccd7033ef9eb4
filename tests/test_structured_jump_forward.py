"""Jump-forward for structured outputs on the CPU (default model): tokens a grammar forces are
appended without a forward step each. Two engines, jump-forward on and off, each writing a step
trace (one line per forward step) so that the steps a request took are counted independently of
the engine's own counters (``structured_forced_tokens``, ``structured_steps_saved``)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

import infire
from infire import SamplingParams, StructuredOutputsParams

# Long fixed keys and enums with one value (or one left after the first token): most of the
# output is forced.
SCHEMA = {
    "type": "object",
    "properties": {
        "customer_identification_number": {"type": "integer", "minimum": 0, "maximum": 999},
        "account_status_description": {"enum": ["active_and_in_good_standing"]},
        "preferred_contact_method": {"enum": ["electronic_mail_address", "telephone_number"]},
    },
    "required": [
        "customer_identification_number",
        "account_status_description",
        "preferred_contact_method",
    ],
    "additionalProperties": False,
}
PROMPT = "Describe a customer as JSON."


class Traced:
    """An engine and its step trace: `steps()` counts the forward steps run so far."""

    def __init__(self, path, monkeypatch, jump_forward: bool, default_model_path: str):
        monkeypatch.setenv("INFIRE_STEP_TRACE", str(path))
        self.engine = infire.Engine(
            model=default_model_path, device="cpu", structured_jump_forward=jump_forward
        )
        self.path = path

    def steps(self) -> int:
        # The trace is written out at the end of each run (when the engine has no work left).
        return self.path.read_text().count("\n") if self.path.exists() else 0

    def counters(self) -> tuple[int, int]:
        s = self.engine.stats()
        return s["structured_forced_tokens"], s["structured_steps_saved"]

    def run(self, prompt, params):
        """The outputs, the forward steps they took, and the counters' increase."""
        steps, (forced, saved) = self.steps(), self.counters()
        outs = self.engine.generate(prompt, params, use_tqdm=False)
        f, s = self.counters()
        return outs, self.steps() - steps, f - forced, s - saved


@pytest.fixture(scope="module")
def engines(tmp_path_factory, default_model_path):
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("jf")
        on = Traced(d / "on.jsonl", mp, True, default_model_path)
        off = Traced(d / "off.jsonl", mp, False, default_model_path)
    return on, off


def _schema_params(**kw) -> SamplingParams:
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 120)
    return SamplingParams(structured_outputs=StructuredOutputsParams(json=SCHEMA), **kw)


def test_forced_schema_is_valid_and_takes_fewer_steps_than_tokens(engines):
    on, off = engines
    [out], steps, forced, saved = on.run(PROMPT, _schema_params())
    o = out.outputs[0]
    assert o.finish_reason == "stop"
    jsonschema.validate(json.loads(o.text), SCHEMA)
    n = len(o.token_ids)
    # One request: the prefill step samples the first token, each later step one more; every
    # forced token is one step fewer.
    assert forced > n // 3, (forced, n)
    assert saved == forced
    assert steps == n - saved < n
    # Off: one step per output token, nothing forced.
    [out_off], steps_off, forced_off, _ = off.run(PROMPT, _schema_params())
    jsonschema.validate(json.loads(out_off.outputs[0].text), SCHEMA)
    assert forced_off == 0
    assert steps_off == len(out_off.outputs[0].token_ids)


def test_greedy_output_is_unchanged_where_forced_tokens_are_the_models_own(engines):
    on, off = engines
    # On this schema the default model, token by token, picks the forced parts (keys, the
    # enum's value) as their canonical tokens, the ones llguidance forces: the outputs must be
    # the same, token for token, with most of them forced.
    [a], _, forced, _ = on.run(PROMPT, _schema_params())
    [b], _, _, _ = off.run(PROMPT, _schema_params())
    assert forced > len(a.outputs[0].token_ids) // 2
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert a.outputs[0].text == b.outputs[0].text


def test_stream_grows_to_the_final_text(engines):
    on, _ = engines
    params = _schema_params()
    [whole], _, _, _ = on.run(PROMPT, params)
    texts, counts = [], []
    for item in on.engine.stream(PROMPT, params):
        texts.append(item.outputs[0].text)
        counts.append(len(item.outputs[0].token_ids))
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    assert texts[-1] == whole.outputs[0].text
    assert counts[-1] == len(whole.outputs[0].token_ids)
    # Forced runs arrive several tokens at a time.
    assert any(b - a > 1 for a, b in zip(counts, counts[1:], strict=False))


def test_max_tokens_cuts_inside_a_forced_run(engines):
    on, _ = engines
    [full], _, _, _ = on.run(PROMPT, _schema_params())
    full_ids = full.outputs[0].token_ids
    # The first sampled token opens the object; the first key's tokens are forced after it.
    for cut in (2, 3):
        [out], steps, forced, _ = on.run(PROMPT, _schema_params(max_tokens=cut))
        o = out.outputs[0]
        assert o.finish_reason == "length"
        assert o.token_ids == full_ids[:cut]
        assert forced == cut - 1 and steps == 1
        tok = on.engine.get_tokenizer()
        assert o.text == tok.decode(full_ids[:cut])


def test_n_and_a_prefix_cache_hit_with_jump_forward(engines):
    on, _ = engines
    # Longer than a KV block (16 tokens), so that its first block is cached for the second.
    prompt = (
        "List three customers of the regional branch as JSON, one per answer, in the format "
        "of the customer database that the accounting department keeps."
    )
    params = _schema_params(n=3, temperature=0.9, seed=11)
    [first], _, forced1, _ = on.run(prompt, params)
    [second], _, forced2, _ = on.run(prompt, params)
    assert second.num_cached_tokens > 0
    assert forced1 > 0 and forced2 > 0
    for out in (first, second):
        assert len(out.outputs) == 3
        for o in out.outputs:
            assert o.finish_reason == "stop"
            jsonschema.validate(json.loads(o.text), SCHEMA)


def test_regex_and_choice_grammars_jump_forward(engines):
    on, _ = engines
    regex = r"ORDER-[0-9]{3}-CONFIRMED-AND-SHIPPED-TO-WAREHOUSE"
    [r], steps, forced, _ = on.run(
        "An order code:",
        SamplingParams(max_tokens=60, temperature=0, structured_outputs={"regex": regex}),
    )
    assert re.fullmatch(regex, r.outputs[0].text), r.outputs[0].text
    assert forced > 5 and steps == len(r.outputs[0].token_ids) - forced
    # Both choices share their first tokens: the model picks at the fork, the rest is forced.
    choices = ["internationalization_framework", "internationalization_library"]
    [c], _, forced, _ = on.run(
        "Answer:",
        SamplingParams(max_tokens=30, temperature=0, structured_outputs={"choice": choices}),
    )
    assert c.outputs[0].text in choices
    assert c.outputs[0].finish_reason == "stop"
    assert forced > 0


def test_logprobs_requests_sample_every_token(engines):
    on, _ = engines
    [out], steps, forced, _ = on.run(PROMPT, _schema_params(logprobs=1))
    o = out.outputs[0]
    jsonschema.validate(json.loads(o.text), SCHEMA)
    assert forced == 0 and steps == len(o.token_ids)
    assert len(o.logprobs) == len(o.token_ids)
