"""The engine loop: continuous batching, preemption, prefix caching, n > 1, seeds, streams
from many threads, abort, asyncio, priorities and stats, on the default model (CPU)."""

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import infire
from infire import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "import numpy as np\n",
    "Water boils at",
    "My favourite fruit is",
    "The quick brown fox",
    "In 1492, Columbus",
    "SELECT * FROM users WHERE",
    "Dear Sir or Madam,",
    "The mitochondria is",
    "To be or not to be,",
    "Hello! How are you",
    "The largest planet in the solar system is",
]


def tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


def test_stats_report_the_kv_cache_and_quantization(engine):
    stats = engine.stats()
    assert stats["kv_cache_dtype"] == "float32"
    assert stats["kv_cache_tokens"] == stats["kv_blocks_total"] * 16 > 0  # block_size 16
    assert stats["quantization"] is None


def wait_idle(engine):
    stats = engine.stats()
    assert (stats["num_running"], stats["num_waiting"], stats["kv_blocks_used"]) == (0, 0, 0)


def wait_idle_soon(engine):
    """wait_idle, once the engine has had a few seconds to return the blocks of a request that
    was dropped or aborted (its engine loop aborts a dropped stream at its next step; with
    async scheduling a sequence aborted mid-step frees its blocks when that step completes)."""
    for _ in range(500):
        if engine.stats()["kv_blocks_used"] == 0:
            break
        threading.Event().wait(0.01)
    wait_idle(engine)


def test_sixteen_prompts_together_equal_each_alone(engine):
    together = engine.generate(PROMPTS, GREEDY)
    alone = [engine.generate(p, GREEDY)[0] for p in PROMPTS]
    assert tokens(together) == tokens(alone)
    wait_idle(engine)


def test_small_cache_preempts_and_keeps_greedy_outputs(default_model_path, engine):
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    prompts = [p + " Let me explain in detail." for p in PROMPTS[:8]]
    small = infire.Engine(
        model=default_model_path, kv_cache_tokens=256, enable_prefix_caching=False
    )
    got = small.generate(prompts, params)
    assert small.stats()["num_preemptions"] > 0
    assert tokens(got) == tokens(engine.generate(prompts, params))
    wait_idle(small)


def test_shared_prefix_is_served_from_the_cache(default_model_path):
    eng = infire.Engine(model=default_model_path)
    prefix = eng.tokenizer.encode("The history of the town. " * 40)[:200]
    assert len(prefix) == 200
    first = eng.generate(prefix + eng.tokenizer.encode(" First question:"), GREEDY)[0]
    assert first.num_cached_tokens == 0
    second_prompt = prefix + eng.tokenizer.encode(" Second question:")
    second = eng.generate(second_prompt, GREEDY)[0]
    assert second.num_cached_tokens >= 192
    assert eng.stats()["prefix_cache_hit_rate"] > 0.4
    uncached = infire.Engine(model=default_model_path, enable_prefix_caching=False)
    assert tokens([second]) == tokens(uncached.generate(second_prompt, GREEDY))


def test_seeds_reproduce_n2_samples(engine):
    p = SamplingParams(n=2, max_tokens=16, temperature=1.0, seed=7, ignore_eos=True)
    a = engine.generate("Write a short poem about the sea.", p)[0]
    b = engine.generate(["Another prompt first", "Write a short poem about the sea."], p)[1]
    assert len(a.outputs) == 2 and [o.index for o in a.outputs] == [0, 1]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert a.outputs[0].token_ids != a.outputs[1].token_ids
    assert all(o.finish_reason in ("stop", "length") for o in a.outputs)


def test_n_greedy_sequences_share_the_prompt(engine):
    prompt = engine.tokenizer.encode("The history of the town. " * 10)
    out = engine.generate(prompt, SamplingParams(n=3, max_tokens=6, temperature=0.0))[0]
    assert out.outputs[0].token_ids == out.outputs[1].token_ids == out.outputs[2].token_ids


def stream_from_threads(engine, num_threads, per_thread, params):
    """Streams PROMPTS from `num_threads` threads, `per_thread` requests each, at once; returns
    {(thread, i): (prompt, last output)} and the errors the threads raised."""
    results, errors = {}, []

    def worker(t):
        try:
            for i in range(per_thread):
                prompt = PROMPTS[(t + i) % len(PROMPTS)]
                results[(t, i)] = (prompt, list(engine.stream(prompt, params))[-1])
        except Exception as e:  # reported by the caller with its thread
            errors.append((t, e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(num_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    return results, errors


def test_64_streams_from_8_threads(engine):
    params = SamplingParams(max_tokens=6, temperature=0.0)
    results, errors = stream_from_threads(engine, 8, 8, params)
    assert not errors
    assert len(results) == 64
    for prompt, last in results.values():
        assert last.finished
        (alone,) = engine.generate(prompt, params)
        assert last.outputs[0].token_ids == alone.outputs[0].token_ids
    wait_idle(engine)


def test_abort_mid_stream_frees_every_block(engine):
    stream = engine.stream("Count to one hundred:", SamplingParams(max_tokens=200, temperature=0))
    next(stream)
    assert engine.stats()["kv_blocks_used"] > 0
    engine.abort(stream.request_id)
    outs = list(stream)
    assert outs and outs[-1].outputs[0].finish_reason == "abort"
    wait_idle(engine)


def test_dropping_a_stream_aborts_it(engine):
    stream = engine.stream("Count to one hundred:", SamplingParams(max_tokens=200, temperature=0))
    next(stream)
    del stream
    wait_idle_soon(engine)


def test_a_bad_request_fails_alone(engine):
    stream = engine.stream("The capital of France is", GREEDY)
    first = next(stream)
    with pytest.raises(infire.InvalidRequestError, match="max_model_len"):
        engine.generate([[1] * 10_000], GREEDY)
    with pytest.raises(ValueError):
        engine.generate("fine", SamplingParams(max_tokens=4, top_p=2.0))
    rest = list(stream)
    assert rest[-1].finished and len(rest[-1].outputs[0].token_ids) == 12
    assert first.outputs[0].token_ids == rest[-1].outputs[0].token_ids[:1]


def test_asyncio_generate_and_stream(engine):
    async def main():
        outs = await engine.generate_async(["Hi", "The capital of France is"], GREEDY)
        seen = [o async for o in engine.stream_async("The capital of France is", GREEDY)]
        return outs, seen

    outs, seen = asyncio.run(main())
    assert seen[-1].finished
    assert seen[-1].outputs[0].token_ids == outs[1].outputs[0].token_ids


def test_priority_orders_admission(default_model_path):
    eng = infire.Engine(model=default_model_path, max_num_seqs=1)
    blocker = eng.stream("Tell me a long story.", SamplingParams(max_tokens=30, ignore_eos=True))
    next(blocker)
    low, high = eng.generate(["low priority", "high priority"], GREEDY, priority=[1, 0])
    assert high.metrics.first_token_time < low.metrics.first_token_time
    list(blocker)


def test_request_metrics(engine):
    (out,) = engine.generate("The capital of France is", GREEDY)
    m = out.metrics
    assert m.arrival_time <= m.first_token_time <= m.finished_time


GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2_generation.json").read_text())


@pytest.mark.parametrize("chunk", [2048, 7])
def test_prompt_logprobs_match_transformers(default_model_path, chunk):
    """Teacher-forced: the golden prompt followed by its first 10 greedy tokens; the prompt
    log-probabilities of those tokens are transformers' per-step log-probabilities (5e-4, as
    in test_generation.py), also when the prompt is computed in chunks of 7 rows. On the f32
    path (`dtype="float32"`), as the golden is f32."""
    case = next(c for c in GOLDEN["cases"] if c["name"] == "capital_of_france")
    prompt = case["prompt_token_ids"] + case["token_ids"][:10]
    eng = infire.Engine(model=default_model_path, max_num_batched_tokens=chunk, dtype="float32")
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=3)
    (out,) = eng.generate(prompt, params)
    plp = out.prompt_logprobs
    assert len(plp) == len(prompt) and plp[0] is None
    assert all(len(step) in (3, 4) for step in plp[1:])
    n0 = len(case["prompt_token_ids"])
    for i in range(10):
        got = plp[n0 + i][case["token_ids"][i]]
        assert abs(got - case["chosen_logprobs"][i]) < 5e-4, (i, got)
    assert out.num_cached_tokens == 0


def test_many_async_streams_at_once(engine):
    """More concurrent `stream_async` consumers than an executor has workers all finish, each
    with the tokens `generate` gives its prompt."""
    prompts = [f"Count to {i}:" for i in range(24)]
    want = [o.outputs[0].token_ids for o in engine.generate(prompts, GREEDY)]

    async def last(prompt):
        return [o async for o in engine.stream_async(prompt, GREEDY)][-1]

    async def main():
        return await asyncio.gather(*(last(p) for p in prompts))

    outs = asyncio.run(main())
    assert all(o.finished for o in outs)
    assert [o.outputs[0].token_ids for o in outs] == want


CANCEL_SCRIPT = """
import asyncio, sys, infire
engine = infire.Engine(sys.argv[1], device="cpu")
params = infire.SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)
async def consume():
    async for _ in engine.stream_async("Once upon a time", params):
        pass
async def main():
    task = asyncio.create_task(consume())
    await asyncio.sleep(1.0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
asyncio.run(main())
out = engine.generate("Hi", infire.SamplingParams(max_tokens=2, temperature=0))
print(engine.stats()["num_running"], len(out[0].outputs[0].token_ids))
"""


def test_cancelling_an_async_stream_aborts_it_without_hanging(default_model_path):
    """Cancelling the consumer of `stream_async` mid-stream closes the stream while a worker
    thread waits in `next`: the request is aborted and the engine keeps serving (this used to
    deadlock on the stream's lock, so it runs in a subprocess with a timeout)."""
    r = subprocess.run(
        [sys.executable, "-c", CANCEL_SCRIPT, default_model_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["0", "2"]


# --- async scheduling --------------------------------------------------------------------------
# With async_scheduling the engine launches each step before it turns the previous step's
# tokens into text and deltas (for CUDA, where the host's work then overlaps the GPU's). On the
# CPU every row is computed alone, so an engine with it on must give exactly the synchronous
# engine's outputs; the engine loop takes the same paths (aborts while a step is in flight).

MIXED_PARAMS = [
    SamplingParams(max_tokens=12, temperature=0.0),
    SamplingParams(max_tokens=24, temperature=0.0, stop=[".", " the"]),
    SamplingParams(n=2, max_tokens=10, temperature=1.0, seed=3),
    SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, seed=5, logprobs=2),
    SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True),
]


@pytest.fixture(scope="module")
def async_engine(default_model_path) -> infire.Engine:
    return infire.Engine(model=default_model_path, device="cpu", async_scheduling=True)


def outcome(out):
    return [(o.token_ids, o.text, o.finish_reason, o.logprobs) for o in out.outputs]


def test_async_scheduling_gives_the_synchronous_outputs(engine, async_engine):
    prompts = PROMPTS[:10]
    params = [MIXED_PARAMS[i % len(MIXED_PARAMS)] for i in range(len(prompts))]
    want = engine.generate(prompts, params)
    got = async_engine.generate(prompts, params)
    assert [outcome(o) for o in got] == [outcome(o) for o in want]
    assert any(o.outputs[0].finish_reason == "stop" for o in got)
    wait_idle_soon(async_engine)


def test_async_scheduling_preempts_like_the_synchronous_engine(default_model_path, engine):
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    prompts = [p + " Let me explain in detail." for p in PROMPTS[:8]]
    small = infire.Engine(
        model=default_model_path,
        kv_cache_tokens=256,
        enable_prefix_caching=False,
        async_scheduling=True,
    )
    got = small.generate(prompts, params)
    assert small.stats()["num_preemptions"] > 0
    assert tokens(got) == tokens(engine.generate(prompts, params))
    wait_idle_soon(small)


def test_async_scheduling_abort_and_dropped_streams_free_their_blocks(async_engine):
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    stream = async_engine.stream("Count to one hundred:", params)
    next(stream)
    async_engine.abort(stream.request_id)
    outs = list(stream)
    assert outs and outs[-1].outputs[0].finish_reason == "abort"
    wait_idle_soon(async_engine)
    dropped = async_engine.stream("Count to one hundred:", params)
    next(dropped)
    del dropped
    wait_idle_soon(async_engine)


def test_async_scheduling_streams_from_threads(engine, async_engine):
    params = SamplingParams(max_tokens=6, temperature=0.0)
    results, errors = stream_from_threads(async_engine, 4, 4, params)
    assert not errors and len(results) == 16
    for prompt, last in results.values():
        (alone,) = engine.generate(prompt, params)
        assert last.outputs[0].token_ids == alone.outputs[0].token_ids
    wait_idle_soon(async_engine)


def test_step_trace_has_a_line_per_step(default_model_path, tmp_path, monkeypatch):
    """INFIRE_STEP_TRACE: one JSON line per step whose rows add up to the run's tokens, which
    bench/step_trace.py reads; a trace path that cannot be created leaves the engine working."""
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv("INFIRE_STEP_TRACE", str(path))
    engine = infire.Engine(model=default_model_path, device="cpu", max_num_batched_tokens=64)
    # Distinct prompts (no prefix-cache hits) of 100, 30 and 5 tokens: chunks of 64, 36 + 28,
    # then 2 + 5 beside the first decode row; no prompt chunk of one token.
    prompts = [list(range(start, start + n)) for start, n in ((1000, 100), (2000, 30), (3000, 5))]
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [4, 4, 4]
    steps = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(len(steps)))
    assert sum(s["prefill_tokens"] for s in steps) == 135
    assert sum(s["decode_rows"] for s in steps) == 9  # tokens 2..4 of each request
    for s in steps:
        assert s["tokens"] - s["padding"] == s["prefill_tokens"] + s["decode_rows"]
        assert s["padding"] == 0 and 1 <= s["seqs"] <= 3 and s["kv_tokens"] >= s["tokens"]
        assert s["gpu_ms"] is None and s["idle_ms"] is None  # the CPU backend is not timed
    assert [s["last"] for s in steps] == [False] * (len(steps) - 1) + [True]
    t = [s["t_launch"] for s in steps]
    assert t == sorted(t) and all(s["t_collect"] >= s["t_launch"] for s in steps)
    summary = subprocess.run(
        [
            sys.executable,
            "bench/step_trace.py",
            str(path),
            "--copy-bw",
            "1e10",
            "--gemm-rate",
            "1e12",
        ],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{len(steps)} steps" in summary and "| with prompt rows | " in summary

    monkeypatch.setenv("INFIRE_STEP_TRACE", str(tmp_path / "missing" / "trace.jsonl"))
    engine = infire.Engine(model=default_model_path, device="cpu")
    assert (
        engine.generate([prompts[2]], params)[0].outputs[0].token_ids
        == outs[2].outputs[0].token_ids
    )
