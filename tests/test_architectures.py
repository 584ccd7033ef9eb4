"""Every supported architecture, loaded from a Hugging Face directory (config.json,
safetensors — sharded, bf16 —, tokenizer.json), against transformers.

tests/make_tiny_models.py wrote the tiny random-weight checkpoints under
tests/fixtures/tiny_models/ and the greedy tokens and log-probabilities transformers computed
for them in float32. Both sides compute in f32 on the same weights, so the tokens must be
equal and the log-probabilities close (5e-4, as for the default model).
"""

import json
from pathlib import Path

import pytest

import infire

ROOT = Path(__file__).parent / "fixtures" / "tiny_models"
GOLDEN = json.loads((ROOT / "golden.json").read_text())
PROMPTS = GOLDEN["metadata"]["prompts"]
STEPS = GOLDEN["metadata"]["steps"]


@pytest.mark.parametrize("name", sorted(GOLDEN["models"]))
def test_matches_transformers(name):
    engine = infire.Engine(model=str(ROOT / name), max_num_batched_tokens=16)
    params = infire.SamplingParams(max_tokens=STEPS, temperature=0.0, ignore_eos=True, logprobs=1)
    outs = engine.generate(PROMPTS, params)
    for prompt, out, want in zip(PROMPTS, outs, GOLDEN["models"][name], strict=True):
        got = out.outputs[0]
        assert got.token_ids == want["token_ids"], (name, prompt[:4])
        for step, (tok, lp) in enumerate(zip(got.token_ids, want["logprobs"], strict=True)):
            assert abs(got.logprobs[step][tok] - lp) < 5e-4, (name, step)


def test_generation_config_and_tokenizer_are_read():
    engine = infire.Engine(model=str(ROOT / "qwen3_qk_norm"))
    assert 2 in engine.tokenizer.eos_token_ids
    text = "The quick brown fox"
    assert engine.tokenizer.decode(engine.tokenizer.encode(text)) == text
