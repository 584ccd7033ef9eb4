"""Jump-forward for structured outputs on the CUDA backend (`pytest -m gpu`), on
test_gpu_models.py's random Llama-3 checkpoint: a step that computes a sequence's forced
tokens as one multi-token chunk runs eagerly beside decode rows of other sequences (a decode
graph has one row per sequence); every constrained output must still match, free sequences in
the same steps must run to their length, and the counters must show the forced tokens."""

from __future__ import annotations

import json
import re

import pytest
from test_gpu_models import COMMON, random_prompts, write_checkpoint

import infire
from infire import SamplingParams

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")

SCHEMA = {
    "type": "object",
    "properties": {
        "customer_identification_number": {"type": "integer", "minimum": 0, "maximum": 999},
        "account_status_description": {"enum": ["active_and_in_good_standing"]},
    },
    "required": ["customer_identification_number", "account_status_description"],
    "additionalProperties": False,
}
REGEX = "ID-[0-9]{3}-CONFIRMED-AND-SHIPPED"


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> infire.Engine:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("llama3"), "llama3")
    return infire.Engine(model=str(checkpoint), device="cuda", kv_cache_tokens=32768)


def test_forced_chunks_run_beside_decode_rows(engine):
    prompts = random_prompts((9, 17, 33, 64) * 8, COMMON["vocab_size"])
    held_json = SamplingParams(max_tokens=200, temperature=0.0, structured_outputs={"json": SCHEMA})
    held_regex = SamplingParams(
        max_tokens=60, temperature=0.8, seed=3, structured_outputs={"regex": REGEX}
    )
    free = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    params = [held_json, held_regex, free, free] * 8
    before = engine.stats()
    outs = engine.generate(prompts, params)
    after = engine.stats()
    for out, p in zip(outs, params, strict=True):
        o = out.outputs[0]
        if p is free:
            assert len(o.token_ids) == 24
            continue
        # A random model may run a free integer or string to max_tokens; the rest must match.
        if o.finish_reason != "stop":
            continue
        if p is held_json:
            value = json.loads(o.text)
            assert value["account_status_description"] == "active_and_in_good_standing"
        else:
            assert re.fullmatch(REGEX, o.text), o.text
    assert sum(o.outputs[0].finish_reason == "stop" for o in outs[1::4]) >= 4
    forced = after["structured_forced_tokens"] - before["structured_forced_tokens"]
    saved = after["structured_steps_saved"] - before["structured_steps_saved"]
    assert forced > 8 * 10 and 0 < saved <= forced
