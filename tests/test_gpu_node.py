"""A failed engine on the CUDA backend (`pytest -m gpu`), on test_gpu_models.py's random Llama-3
checkpoint: an engine whose loop panics (`INFIRE_FAIL_AFTER_STEPS`, read when an engine starts)
frees its device memory and its share of the card on its own thread, without a shutdown, so
that a second engine can claim the share; and a sticky CUDA error (a device-side assert on the
context every engine of the process shares) fails each engine's next request with an error
naming the device, in a subprocess (the context cannot be used again), none hanging.

Quick (under a minute): `python -m pytest -m gpu -q tests/test_gpu_node.py -s`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from test_gpu_models import COMMON, random_prompts, write_checkpoint  # skips without torch

import infire
from infire import SamplingParams
from infire.errors import EngineError

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
PROMPTS = random_prompts((5, 17, 40, 130), COMMON["vocab_size"])
MiB = 1 << 20
# What an engine may leave behind on a context that stays (torch holds it here): cuBLASLt's
# and the driver's bookkeeping, not the weights (a few MiB here) or the KV pool (tens of GiB).
LEFT_BEHIND = 256 * MiB


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return str(write_checkpoint(tmp_path_factory.mktemp("llama3"), "llama3"))


def free_bytes() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def tokens(engine: infire.Engine) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in engine.generate(PROMPTS, GREEDY)]


def test_a_failed_engine_frees_its_memory_and_its_share(checkpoint, monkeypatch):
    # The second engine below is made as this one is: the same greedy outputs.
    reference = infire.Engine(model=checkpoint, device="cuda", gpu_memory_utilization=0.9)
    try:
        want = tokens(reference)
    finally:
        reference.shutdown()
    before = free_bytes()
    monkeypatch.setenv("INFIRE_FAIL_AFTER_STEPS", "3")
    failed = infire.Engine(model=checkpoint, device="cuda", gpu_memory_utilization=0.5)
    monkeypatch.delenv("INFIRE_FAIL_AFTER_STEPS")
    held = before - free_bytes()
    total = torch.cuda.mem_get_info()[1]
    assert held > 0.3 * total, (held, total)
    with pytest.raises(EngineError, match="INFIRE_FAIL_AFTER_STEPS"):
        tokens(failed)
    # Freed by the engine's own thread once its requests have their error: no shutdown yet.
    deadline = time.monotonic() + 30
    while free_bytes() < before - LEFT_BEHIND and time.monotonic() < deadline:
        time.sleep(0.05)
    left = before - free_bytes()
    print(f"\nthe failed engine held {held / MiB:.0f} MiB and left {left / MiB:.0f} MiB")
    assert left <= LEFT_BEHIND, (left, held)
    # Its share is back: 0.9 fits only if the failed engine's 0.5 was given back.
    second = infire.Engine(model=checkpoint, device="cuda", gpu_memory_utilization=0.9)
    try:
        assert tokens(second) == want
    finally:
        second.shutdown()
        failed.shutdown()


# Two engines, then a device-side assert through torch on the same (primary) context; each
# engine's next request must end with an error, not hang. Prints one line per engine.
STICKY = """
import sys, torch, infire
from infire import SamplingParams
greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
engines = [infire.Engine(model=sys.argv[1], device="cuda", gpu_memory_utilization=0.3)
           for _ in range(2)]
for e in engines:
    e.generate([[5, 6, 7]], greedy)
x = torch.zeros(4, device="cuda")
try:
    x[torch.tensor([10], device="cuda")]
    torch.cuda.synchronize()
except RuntimeError as e:
    print("poisoned:", str(e).splitlines()[0], flush=True)
for i, e in enumerate(engines):
    try:
        e.generate([[5, 6, 7]], greedy)
        print(f"engine {i} served", flush=True)
    except Exception as err:
        print(f"engine {i} failed: {type(err).__name__}: {err}", flush=True)
for e in engines:
    e.shutdown()
print("shut down", flush=True)
"""


def test_a_sticky_cuda_error_fails_every_engine_of_the_process(checkpoint):
    try:
        run = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(STICKY), checkpoint],
            capture_output=True,
            text=True,
            timeout=240,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"an engine hung on the poisoned context: {e.stdout}")
    out = run.stdout
    print(f"\n{out}")
    assert "poisoned:" in out, (out, run.stderr[-2000:])
    for i in range(2):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"engine {i} "))
        assert "failed: EngineError" in line, line
        assert "GPU context is unusable" in line or "CUDA_ERROR" in line, line
    assert "shut down" in out, run.stderr[-2000:]
