"""Sleep and wake on the CUDA backend (`pytest -m gpu`), on test_gpu_models.py's random Llama-3
checkpoint: a sleep frees the weights' and the KV pool's device memory with the engine alive, a
wake brings them back at the same addresses (the CUDA graphs recorded at start replay as they
are), and greedy outputs after the wake are those before the sleep. Also: a request made while
asleep completes after the wake, and two engines of one process share the card by their
`gpu_memory_utilization`, which may not sum past 1.

Quick (well under two minutes): `python -m pytest -m gpu -q tests/test_gpu_sleep.py -s` (`-s`
shows the sleep and wake figures).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_gpu_models import COMMON, random_prompts, write_checkpoint  # skips without torch

import infire
from infire import SamplingParams
from infire.errors import InvalidConfigError

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
# The longest prompt spans several KV blocks (16 tokens each).
PROMPTS = random_prompts((5, 17, 40, 130), COMMON["vocab_size"])
KV_CACHE_TOKENS = 1 << 18
# Bytes of one token's keys and values over every layer, in bfloat16.
KV_BYTES_PER_TOKEN = (
    COMMON["num_hidden_layers"] * 2 * COMMON["num_key_value_heads"] * COMMON["head_dim"] * 2
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return str(write_checkpoint(tmp_path_factory.mktemp("llama3"), "llama3"))


def tokens(engine: infire.Engine, prompts=PROMPTS) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in engine.generate(prompts, GREEDY)]


def weight_bytes(checkpoint: str) -> int:
    from pathlib import Path

    return sum(f.stat().st_size for f in Path(checkpoint).glob("*.safetensors"))


def free_bytes() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def test_sleep_frees_the_memory_and_wake_gives_the_same_outputs(checkpoint):
    engine = infire.Engine(model=checkpoint, device="cuda", kv_cache_tokens=KV_CACHE_TOKENS)
    try:
        before = tokens(engine)
        kv_bytes = engine.stats()["kv_cache_tokens"] * KV_BYTES_PER_TOKEN
        held = weight_bytes(checkpoint) + kv_bytes
        free_awake = free_bytes()
        slept = engine.sleep()
        free_asleep = free_bytes()
        freed = free_asleep - free_awake
        print(f"\nsleep: {slept}; freed {freed / 2**20:.0f} MiB of {held / 2**20:.0f} MiB held")
        assert engine.is_sleeping
        assert freed >= 0.9 * held, (freed, held, slept)
        assert slept["copied_bytes"] >= weight_bytes(checkpoint) * 0.9
        woke = engine.wake()
        print(f"wake: {woke}")
        assert not engine.is_sleeping
        assert woke["copied_bytes"] == slept["copied_bytes"]
        assert free_asleep - free_bytes() >= 0.9 * held
        # The prefix cache went with the pool: the same batch runs cold, as the first did.
        assert tokens(engine) == before
        # A second cycle (the pinned copy is kept) behaves the same.
        engine.sleep()
        engine.wake()
        assert tokens(engine) == before
    finally:
        engine.shutdown()


def test_a_request_made_while_asleep_completes_after_the_wake(checkpoint):
    engine = infire.Engine(model=checkpoint, device="cuda", kv_cache_tokens=KV_CACHE_TOKENS)
    try:
        want = tokens(engine, PROMPTS[3:])
        engine.sleep()
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(tokens, engine, PROMPTS[3:])
            time.sleep(0.5)
            assert not waiting.done(), "a request ran while the engine slept"
            t0 = time.monotonic()
            engine.wake()
            assert waiting.result(timeout=60) == want
            print(f"\nthe waiting request completed {time.monotonic() - t0:.3f} s after the wake")
    finally:
        engine.shutdown()


def test_two_engines_share_the_card_by_their_budgets(checkpoint):
    a = infire.Engine(model=checkpoint, device="cuda", gpu_memory_utilization=0.4)
    b = infire.Engine(model=checkpoint, device="cuda", gpu_memory_utilization=0.4)
    try:
        total = torch.cuda.mem_get_info()[1]
        # Each sized its KV pool from its own share of the whole card.
        for e in (a, b):
            kv = e.stats()["kv_cache_tokens"] * KV_BYTES_PER_TOKEN
            assert 0.25 * total < kv <= 0.4 * total, (kv, total)
        assert tokens(a) == tokens(b)
        with pytest.raises(InvalidConfigError, match="gpu_memory_utilization"):
            infire.Engine(model=checkpoint, device="cuda", gpu_memory_utilization=0.3)
        # A sleeping engine gives its share back until it wakes.
        a.sleep()
        c = infire.Engine(model=checkpoint, device="cuda", gpu_memory_utilization=0.3)
        with pytest.raises(InvalidConfigError, match="gpu_memory_utilization"):
            a.wake()
        assert a.is_sleeping
        c.shutdown()
        a.wake()
        assert tokens(a) == tokens(b)
    finally:
        a.shutdown()
        b.shutdown()
