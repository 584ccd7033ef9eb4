"""Hostile and careless input at the Python API: one exception taxonomy (every bad value is an
``InvalidRequestError`` / ``InvalidConfigError`` / ``InvalidModelError``, all ValueErrors, never
a ``TypeError`` or ``OverflowError`` from the binding layer), garbage model files refused with
a message, chat templates that cannot run forever, and streams safe to share between threads."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import infire
from infire import SamplingParams

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny_models" / "llama_tied_mha"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"n": 2**64}, "n must be"),
        ({"n": -1}, "n must be"),
        ({"max_tokens": 2**70}, "max_tokens"),
        ({"top_k": 2**40}, "top_k"),
        ({"logprobs": -3}, "logprobs"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop": 3}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"stop_token_ids": [2**32]}, "stop_token_ids"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
    ],
)
def test_bad_sampling_values_are_invalid_requests(kwargs, match):
    with pytest.raises(infire.InvalidRequestError, match=match):
        SamplingParams(**kwargs)


def test_largest_seed_is_accepted():
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1


@pytest.fixture(scope="module")
def tiny():
    return infire.Engine(model=str(TINY), kv_cache_tokens=1024)


@pytest.mark.parametrize("ids", [[-1], [2**32], [1, 2**64], [1, "a"]])
def test_out_of_range_token_ids_are_invalid_requests(tiny, ids):
    params = SamplingParams(max_tokens=1)
    with pytest.raises(infire.InvalidRequestError, match="token id"):
        tiny.generate([ids], params)
    with pytest.raises(infire.InvalidRequestError, match="token id"):
        tiny.stream(ids, params)
    with pytest.raises(infire.InvalidRequestError, match="token id"):
        tiny.tokenizer.decode(ids)
    assert tiny.generate([[1, 2]], params)[0].finished


def _copy_tiny(tmp_path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(TINY, d)
    return d


def _patch_config(d: Path, **patch) -> None:
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **patch}))


def test_invalid_utf8_config_is_an_invalid_model(tmp_path):
    d = _copy_tiny(tmp_path)
    (d / "config.json").write_bytes(b'{"model_type": "llama\xff"}')
    with pytest.raises(infire.InvalidModelError, match="config.json"):
        infire.Engine(model=str(d))


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"max_position_embeddings": -1}, "max_position_embeddings"),
        ({"head_dim": -1}, "head_dim"),
        ({"head_dim": 0}, "head_dim"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 0}}, "rope scaling factor"),
        ({"rope_scaling": {"rope_type": "linear", "factor": -1.5}}, "rope scaling factor"),
        ({"num_hidden_layers": 1}, "layer 1"),
    ],
)
def test_garbage_configs_are_invalid_models(tmp_path, patch, match):
    d = _copy_tiny(tmp_path)
    _patch_config(d, **patch)
    with pytest.raises(infire.InvalidModelError, match=match):
        infire.Engine(model=str(d))


def test_endless_chat_template_fails_fast(tmp_path):
    d = _copy_tiny(tmp_path)
    (d / "chat_template.jinja").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}"
    )
    tok = infire.load_tokenizer(str(d))
    started = time.monotonic()
    with pytest.raises(infire.TokenizerError, match="instructions"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 30


def test_growing_chat_template_output_is_capped(tmp_path):
    d = _copy_tiny(tmp_path)
    (d / "chat_template.jinja").write_text(
        # One string written again and again: little budget per byte, so the output cap stops it
        # (templates that build values are stopped by the budget: test_template_budget.py).
        "{% set s = 'x' * 1048576 %}{% for i in range(100) %}{{ s }}{% endfor %}"
    )
    tok = infire.load_tokenizer(str(d))
    with pytest.raises(infire.TokenizerError, match="exceeds the limit"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


SHARED_STREAM = """
import threading, infire
eng = infire.Engine(model={model!r}, kv_cache_tokens=4096)
params = infire.SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
for _ in range(4):
    stream = eng.stream([1, 2, 3], params)
    seen = []
    def pull():
        for out in stream:
            seen.append(len(out.outputs[0].token_ids))
    threads = [threading.Thread(target=pull) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == len(seen), "each output goes to one thread"
    assert max(seen) == 200, sorted(seen)[-3:]
print("ok")
"""


def test_two_threads_sharing_one_stream_do_not_deadlock():
    # In a subprocess: a deadlock holds the GIL, so only a process timeout can detect it.
    script = SHARED_STREAM.format(model=str(TINY))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "options, match",
    [
        ({"kv_cache_tokens": 10**12}, "KV cache"),
        ({"max_num_batched_tokens": 10**9}, "max_num_batched_tokens"),
        ({"max_num_seqs": 10**7}, "max_num_seqs"),
        ({"seed": -1}, "seed"),
        ({"max_num_seqs": "8"}, "max_num_seqs"),
        ({"max_num_seq": 8}, "unknown engine option"),
    ],
)
def test_engine_sizes_beyond_the_machine_are_errors_not_aborts(options, match):
    # Each of these used to abort the process ("memory allocation of N bytes failed") or
    # raise a TypeError from the binding layer.
    with pytest.raises(infire.InvalidConfigError, match=match):
        infire.Engine(model=str(TINY), device="cpu", **options)


def test_a_huge_context_length_does_not_size_the_cpu_kv_cache(tmp_path):
    # The CPU's KV pool is a memory budget, not the model's whole context: a config claiming
    # 2^24 positions loads with the default pool, and a request beyond it is refused by name.
    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 2**24
    (model / "config.json").write_text(json.dumps(config))
    engine = infire.Engine(model=str(model), device="cpu")
    stats = engine.stats()
    assert 0 < stats["kv_blocks_total"] * 16 < 2**24
    greedy = SamplingParams(max_tokens=2, temperature=0.0)
    assert engine.generate([[5, 6, 7]], greedy)[0].finished
    with pytest.raises(infire.InvalidRequestError, match="kv_cache_tokens"):
        engine.generate([[5, 6, 7]], SamplingParams(max_tokens=2**23, temperature=0.0))
