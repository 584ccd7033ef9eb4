"""Engines of one process (CPU): two `Engine`s serve side by side with the outputs each gives
alone, and `Engine.sleep` on the CPU backend (which cannot keep an engine asleep: a node stops
and restarts it instead) is a clear error that changes nothing. The CUDA halves (sleep and wake
with the engine alive, two engines sharing a card by their `gpu_memory_utilization`) are in
tests/test_gpu_sleep.py. An engine whose loop fails (`INFIRE_FAIL_AFTER_STEPS`) fails the
requests in flight and every later one with an `EngineError` naming why, at once, and still
shuts down (tests/test_gpu_node.py measures the device memory it frees)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import infire
from infire.errors import EngineError, InvalidRequestError, UnsupportedModelError

PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3,"]
GREEDY = infire.SamplingParams(max_tokens=12, temperature=0)


def _texts(engine: infire.Engine) -> list[str]:
    return [o.outputs[0].text for o in engine.generate(PROMPTS, GREEDY, use_tqdm=False)]


def test_sleep_on_the_cpu_is_refused_and_changes_nothing(engine):
    before = _texts(engine)
    with pytest.raises(UnsupportedModelError, match="cannot sleep"):
        engine.sleep()
    assert not engine.is_sleeping
    with pytest.raises(InvalidRequestError, match="level 2"):
        engine.sleep(level=2)
    # Waking an engine that is awake does nothing.
    assert engine.wake()["copied_bytes"] == 0
    assert _texts(engine) == before


def test_two_engines_of_one_process_serve_side_by_side(engine, default_model_path):
    alone = _texts(engine)
    other = infire.Engine(model=default_model_path, device="cpu", max_num_seqs=4)
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(_texts, e) for e in (engine, other, engine, other)]
            assert [r.result(timeout=300) for r in runs] == [alone] * 4
    finally:
        other.shutdown()


def test_a_failed_engine_fails_every_request_at_once_and_shuts_down(
    default_model_path, monkeypatch
):
    monkeypatch.setenv("INFIRE_FAIL_AFTER_STEPS", "4")  # read when an engine starts
    failing = infire.Engine(model=default_model_path, device="cpu", max_num_seqs=4)
    monkeypatch.delenv("INFIRE_FAIL_AFTER_STEPS")
    try:
        with pytest.raises(EngineError, match="INFIRE_FAIL_AFTER_STEPS"):
            _texts(failing)
        with pytest.raises(EngineError, match="serves no more requests"):
            _texts(failing)
    finally:
        failing.shutdown()
