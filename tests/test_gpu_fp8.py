"""FP8 on the CUDA backend against bf16, on the default model reading real English text
(`pytest -m gpu`).

The default model (tests/default_model_hf.py: the GGUF dequantized, saved as a bf16 checkpoint)
reads TEXT (the Declaration of Independence and the Gettysburg Address, public domain, over
MIN_TOKENS tokens), teacher-forced: `prompt_logprobs` give, at every position, the top TOP
tokens' log-probabilities. bf16 weights with a bf16 KV cache are the reference; against it:
`quantization="fp8"` (weights quantized at load), the same with `kv_cache_dtype="fp8"`, and
each FP8 checkpoint format of tests/fp8_quantize.py (written from the same bf16 weights).

Bounds, per position then averaged over the text: KL(bf16 || fp8) <= MAX_MEAN_KL nats and the
top-1 token the same at MIN_TOP1 of the positions or more.

The engine gives at most 20 log-probabilities per position, not whole distributions, so the KL
is the KL of both distributions coarse-grained to bf16's top tokens and the rest of the
vocabulary (a lower bound of the full KL where fp8's log-probability of each of those tokens
is known; one missing from fp8's top 20 is given fp8's 20th, the most it can be). Nearly all
of the probability mass of this model's next-token distributions on English text sits in its
top 20, which is where quantization error would show.

Also: `stats()` reports the KV cache's dtype, and at the same `gpu_memory_utilization` an FP8
cache holds about twice the tokens of a bf16 one (CAPACITY_RATIO).
"""

from __future__ import annotations

import gc
import math
from pathlib import Path

import pytest
from default_model_hf import bf16_bytes, read_default_model, write_hf_dir
from fp8_quantize import FORMATS, write_fp8_pair

import infire
from infire import _core

pytestmark = pytest.mark.gpu

TEXT = Path(__file__).parent / "data" / "declaration_and_gettysburg_address.txt"
MIN_TOKENS = 2000
TOP = 20
MAX_MEAN_KL = 0.02
MIN_TOP1 = 0.95
# The text and then some, so every configuration holds the same pool.
KV_CACHE_TOKENS = 8192
GPU_MEMORY_UTILIZATION = 0.3
CAPACITY_RATIO = (1.8, 2.2)


@pytest.fixture(scope="module")
def checkpoints(default_model_path, tmp_path_factory) -> dict[str, Path]:
    """The bf16 default model ("bf16") and one FP8 checkpoint per format."""
    if _core.cuda_device_count() == 0:
        pytest.skip("needs a CUDA device")
    tensors, config, tokenizer_files = read_default_model(default_model_path)
    out = tmp_path_factory.mktemp("fp8_gpu")
    bf16 = {n: ("BF16", list(w.shape), bf16_bytes(w)) for n, w in tensors.items()}
    paths = {"bf16": write_hf_dir(out / "bf16", bf16, config, tokenizer_files)}
    for fmt in FORMATS:
        paths[fmt], _ = write_fp8_pair(out, fmt, tensors, config, tokenizer_files)
    return paths


def engine(path: Path, **kwargs) -> infire.Engine:
    options = dict(device="cuda", dtype="bfloat16", kv_cache_tokens=KV_CACHE_TOKENS)
    return infire.Engine(model=str(path), **{**options, **kwargs})


def read_text(path: Path, **kwargs) -> tuple[list[dict[int, float]], dict]:
    """Each position's top-TOP log-probabilities over TEXT (position p predicts token p), and
    the engine's stats."""
    eng = engine(path, **kwargs)
    ids = eng.get_tokenizer().encode(TEXT.read_text())
    assert len(ids) >= MIN_TOKENS, len(ids)
    params = infire.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=TOP)
    out = eng.generate([ids], params)[0]
    stats = eng.stats()
    del eng  # the next engine finds the GPU's memory free
    gc.collect()
    return out.prompt_logprobs[1:], stats


def kl_and_top1(p: dict[int, float], q: dict[int, float]) -> tuple[float, bool]:
    """KL(p || q) coarse-grained to p's listed tokens and the rest; whether the best agree."""
    floor = min(q.values())
    kl, p_rest, q_rest = 0.0, 1.0, 1.0
    for t, lp in p.items():
        lq = q.get(t, floor)
        kl += math.exp(lp) * (lp - lq)
        p_rest -= math.exp(lp)
        q_rest -= math.exp(lq)
    if p_rest > 1e-9:
        kl += p_rest * (math.log(p_rest) - math.log(max(q_rest, 1e-9)))
    return kl, max(p, key=p.get) == max(q, key=q.get)


@pytest.fixture(scope="module")
def bf16_reference(checkpoints):
    logprobs, stats = read_text(checkpoints["bf16"])
    assert (stats["kv_cache_dtype"], stats["quantization"]) == ("bfloat16", None)
    return logprobs


CASES = {
    "quantized_at_load": ("bf16", dict(quantization="fp8")),
    "quantized_at_load_fp8_kv": ("bf16", dict(quantization="fp8", kv_cache_dtype="fp8")),
    **{f"checkpoint_{fmt}": (fmt, {}) for fmt in sorted(FORMATS)},
}


# The CUDA attention kernels do not read e4m3 tiles yet: the engine refuses kv_cache_dtype="fp8"
# (an UnsupportedModelError). Strict, so these fail loudly once it is implemented.
FP8_KV_PENDING = pytest.mark.xfail(
    raises=infire.UnsupportedModelError,
    strict=True,
    reason="FP8 KV cache not yet in the CUDA attention kernels",
)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=FP8_KV_PENDING) if CASES[c][1].get("kv_cache_dtype") else c
        for c in sorted(CASES)
    ],
)
def test_fp8_follows_bf16_over_english_text(checkpoints, bf16_reference, case):
    name, kwargs = CASES[case]
    logprobs, stats = read_text(checkpoints[name], **kwargs)
    assert stats["quantization"] == "fp8"
    want_kv = "fp8_e4m3" if kwargs.get("kv_cache_dtype") else "bfloat16"
    assert stats["kv_cache_dtype"] == want_kv
    assert len(logprobs) == len(bf16_reference)
    per_position = [kl_and_top1(p, q) for p, q in zip(bf16_reference, logprobs, strict=True)]
    mean_kl = sum(kl for kl, _ in per_position) / len(per_position)
    top1 = sum(same for _, same in per_position) / len(per_position)
    print(f"{case}: mean KL {mean_kl:.4f} nats/token, top-1 agreement {top1:.3f}")
    assert mean_kl <= MAX_MEAN_KL, (case, mean_kl)
    assert top1 >= MIN_TOP1, (case, top1)


@FP8_KV_PENDING
def test_fp8_kv_cache_holds_twice_the_tokens(checkpoints):
    sizes = {}
    for kv in ("auto", "fp8"):
        eng = infire.Engine(
            model=str(checkpoints["bf16"]),
            device="cuda",
            dtype="bfloat16",
            gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
            kv_cache_dtype=kv,
        )
        stats = eng.stats()
        sizes[stats["kv_cache_dtype"]] = stats["kv_cache_tokens"]
        del eng
        gc.collect()
    ratio = sizes["fp8_e4m3"] / sizes["bfloat16"]
    print(f"KV capacity at gpu_memory_utilization={GPU_MEMORY_UTILIZATION}: {sizes}")
    assert CAPACITY_RATIO[0] <= ratio <= CAPACITY_RATIO[1], sizes
