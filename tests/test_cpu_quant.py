"""The default model with its GGUF blocks kept quantized (the CPU backend's default dtype)
against the same model dequantized to f32 (`dtype="float32"`, the reference path), on the
golden prompts of tests/golden/smollm2_generation.json.

The quantized path rounds every activation to 8 bits per 32-value block before each
projection, so its logits differ from the f32 path's by more than summation noise. The rule
(issue 18): greedy tokens equal on every case, or, at the first step where they diverge, the
quantized path's token is within DIVERGENCE_NATS of the f32 argmax under the f32 path's own
log-probabilities at that step (same context: all earlier tokens were equal). Later steps are
conditioned on different tokens and are not compared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import infire

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2_generation.json").read_text())
CASES = GOLDEN["cases"]
MAX_TOKENS = GOLDEN["metadata"]["max_new_tokens"]
TOP_LOGPROBS = 20
DIVERGENCE_NATS = 0.05

pytestmark = pytest.mark.slow


def run(model: str, dtype: str) -> dict:
    engine = infire.Engine(model=model, device="cpu", dtype=dtype)
    params = infire.SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, logprobs=TOP_LOGPROBS
    )
    raw = [case for case in CASES if case["kind"] == "raw"]
    chat = [case for case in CASES if case["kind"] == "chat"]
    outs = engine.generate([c["prompt"] for c in raw], params)
    outs += engine.chat([c["messages"] for c in chat], params)
    return {c["name"]: o.outputs[0] for c, o in zip(raw + chat, outs, strict=True)}


@pytest.fixture(scope="module")
def both(default_model_path) -> tuple[dict, dict]:
    return run(default_model_path, "auto"), run(default_model_path, "float32")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case["name"])
def test_quantized_greedy_tokens_follow_f32(both, case):
    quant, ref = (side[case["name"]] for side in both)
    assert len(quant.token_ids) == len(ref.token_ids) == MAX_TOKENS
    for step, (q, f) in enumerate(zip(quant.token_ids, ref.token_ids, strict=True)):
        if q == f:
            continue
        lp = ref.logprobs[step]
        assert q in lp, f"step {step}: quantized token {q} not in the f32 top {TOP_LOGPROBS}"
        gap = lp[f] - lp[q]
        assert gap <= DIVERGENCE_NATS, (
            f"step {step}: quantized token {q} is {gap:.3f} nats below the f32 argmax {f}"
        )
        return


def test_quantized_and_f32_paths_differ(both):
    """The two dtypes really run different weights: their log-probabilities are not equal."""
    quant, ref = both
    case = CASES[0]["name"]
    first_q, first_f = quant[case].logprobs[0], ref[case].logprobs[0]
    token = ref[case].token_ids[0]
    assert first_q[token] != first_f[token]


# Counted in a fresh process: the engines of the tests above may still be winding their pools
# down in this one.
COUNT_WORKERS = """
import sys
from pathlib import Path
import infire
import time
n = int(sys.argv[2])
engine = infire.Engine(model=sys.argv[1], device="cpu", num_threads=n)
def count():
    names = (p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm"))
    return sum(name.startswith("infire-worker") for name in names)
# The pool's threads name themselves as they start: wait for them, then once more for any extra.
deadline = time.monotonic() + 30
while count() < n and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
print(count())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_num_threads_sizes_the_pool_and_keeps_the_tokens(default_model_path):
    for n in (1, 3):
        cmd = [sys.executable, "-c", COUNT_WORKERS, default_model_path, str(n)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        assert int(out.strip().splitlines()[-1]) == n
    params = infire.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    engines = [infire.Engine(model=default_model_path, device="cpu", num_threads=n) for n in (3, 1)]
    tokens = [[o.outputs[0].token_ids for o in e.generate(prompts, params)] for e in engines]
    assert tokens[0] == tokens[1]
    for bad in (0, -1, "2"):
        with pytest.raises(infire.InvalidConfigError, match="num_threads"):
            infire.Engine(model=default_model_path, device="cpu", num_threads=bad)
