"""Safetensors weights quantized at load on the CPU (`quantization="q8_0"` / `"q4_0"`).

- The blocks equal a numpy copy of ggml's reference quantizers (`quantize_row_q8_0_ref`,
  `quantize_row_q4_0_ref`), bit for bit, on random rows in every file dtype.
- The default model written as a bf16 Hugging Face directory and loaded with
  `quantization="q8_0"` follows the same directory loaded unquantized (f32 weights) on the
  golden prompts: equal greedy tokens, or at the first divergence the quantized token within
  Q8_0_DIVERGENCE_NATS of the f32 argmax, and a bound on the KL divergence (see `top_kl`).
  Issue 18 asked for 0.05 nats, the rule of tests/test_cpu_quant.py, where the quantized and
  f32 paths hold the same weights. Here the weights themselves are rounded to 8 bits, and 3 of
  the 12 cases diverge at a near-tie 0.11-0.16 nats deep. That is Q8_0's own error: the same
  model quantized by llama.cpp's `llama-quantize` to Q8_0 gives the very same outputs (every
  token and log-probability equal, measured; rust/src/backend/cpu/NOTES.md). `q4_0` is held to
  KL bounds only: a 4-bit grid laid over weights that were already on a 4-bit grid (the
  default model is a Q4_1 file) moves them by as much as the first quantization did.
- Quantizing at load makes no f32 copy of the model: the peak RSS of a `q4_0` load stays far
  below an f32 load's.
- Bad values are clear errors.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from default_model_hf import bf16_bytes, bf16_round, read_default_model, write_hf_dir

import infire
from infire import _core

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2_generation.json").read_text())
CASES = GOLDEN["cases"]
MAX_TOKENS = GOLDEN["metadata"]["max_new_tokens"]
TOP_LOGPROBS = 20
# Bounds against the f32 path, with the values measured on this model (2026-12-07) in the
# comments; each leaves room for summation-order noise, none would pass garbage weights.
Q8_0_DIVERGENCE_NATS = 0.25  # largest first-divergence gap 0.16
# `top_kl` per step before the first divergence: (mean, largest) in nats.
KL_BOUNDS = {
    "q8_0": (0.005, 0.07),  # 0.0023, 0.033
    "q4_0": (0.4, 4.0),  # 0.267, 2.52
}


def ref_q8_0(x: np.ndarray) -> bytes:
    """ggml's quantize_row_q8_0_ref over f32 rows (a multiple of 32 values each)."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    x0 = (b * inv[:, None]).astype(np.float32)
    # roundf: halves away from zero (the sum is exact in f64).
    q = np.trunc(x0.astype(np.float64) + np.copysign(0.5, x0)).astype(np.int8)
    out = np.empty((len(b), 34), np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def ref_q4_0(x: np.ndarray) -> bytes:
    """ggml's quantize_row_q4_0_ref over f32 rows (a multiple of 32 values each)."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=1)
    # `max`: the first value of largest magnitude; 0.0 when the block is all zeros.
    first = b[np.arange(len(b)), np.argmax(np.abs(b), axis=1)]
    mx = np.where(amax > 0, first, np.float32(0)).astype(np.float32)
    d = (mx / np.float32(-8)).astype(np.float32)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    x0 = (b * inv[:, None]).astype(np.float32)
    # (int8_t)(x0 + 8.5f): an f32 sum, truncated; then min(15, .).
    codes = np.minimum(15, np.trunc((x0 + np.float32(8.5)).astype(np.float32))).astype(np.uint8)
    out = np.empty((len(b), 18), np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = codes[:, :16] | (codes[:, 16:] << 4)
    return out.tobytes()


REFERENCES = {"q8_0": ref_q8_0, "q4_0": ref_q4_0}


def random_rows(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Rows at scales from 1e-4 to 1e3 with the cases the rounding rules decide: all-zero
    blocks, a magnitude tie of opposite signs (q4_0 takes the first), exact halves (q8_0
    rounds them away from zero), a lone spike."""
    scale = 10.0 ** rng.uniform(-4, 3, size=(rows, 1))
    x = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    x[0, :32] = 0
    x[1, 32:64] = rng.choice([-3.0, 3.0], size=32).astype(np.float32)
    x[2, :32] = np.arange(32) - 15.5  # with the 127 below, d = 1: every value is a half
    x[2, 0] = 127
    x[3, 64:96] = 1e-3
    x[3, 70] = 50.0
    return x


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_blocks_equal_ggml_reference(fmt, dtype):
    rng = np.random.default_rng(18)
    x = random_rows(rng, 64, 256)
    if dtype == "BF16":
        x = bf16_round(x)
        data = bf16_bytes(x)
    elif dtype == "F16":
        x = np.clip(x, -60000, 60000).astype("<f2")
        data, x = x.tobytes(), x.astype(np.float32)
    else:
        data = x.astype("<f4").tobytes()
    got = _core.quantize_rows(fmt, dtype, data, 256)
    want = REFERENCES[fmt](x)
    assert len(got) == len(want) == 64 * 8 * (34 if fmt == "q8_0" else 18)
    got, want = np.frombuffer(got, np.uint8), np.frombuffer(want, np.uint8)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} bytes differ, first at byte {bad[0]}"


def test_quantize_rows_refuses_bad_input():
    one_row = np.ones(64, np.float32).tobytes()
    with pytest.raises(infire.InvalidConfigError, match="format"):
        _core.quantize_rows("q5_0", "F32", one_row, 64)
    with pytest.raises(infire.InvalidConfigError, match="multiple of 32"):
        _core.quantize_rows("q8_0", "F32", one_row, 48)
    nan = np.full(64, np.nan, np.float32).tobytes()
    with pytest.raises(infire.InvalidConfigError, match="finite"):
        _core.quantize_rows("q8_0", "F32", nan, 64)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, default_model_path) -> str:
    tensors, config, tokenizer_files = read_default_model(default_model_path)
    bf16 = {name: ("BF16", list(w.shape), bf16_bytes(w)) for name, w in tensors.items()}
    out = tmp_path_factory.mktemp("hf") / "bf16"
    return str(write_hf_dir(out, bf16, config, tokenizer_files))


def test_bad_quantization_options(hf_dir):
    with pytest.raises(infire.InvalidConfigError, match="q4_0"):
        infire.Engine(model=hf_dir, device="cpu", quantization="q3_k")
    with pytest.raises(infire.InvalidConfigError, match="dtype"):
        infire.Engine(model=hf_dir, device="cpu", quantization="q8_0", dtype="float32")
    with pytest.raises(infire.InvalidConfigError, match="CUDA"):
        infire.Engine(model=hf_dir, device="cpu", quantization="fp8")


def run(model: str, **options) -> tuple[dict, str | None]:
    engine = infire.Engine(model=model, device="cpu", **options)
    params = infire.SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, logprobs=TOP_LOGPROBS
    )
    raw = [case for case in CASES if case["kind"] == "raw"]
    chat = [case for case in CASES if case["kind"] == "chat"]
    outs = engine.generate([c["prompt"] for c in raw], params)
    outs += engine.chat([c["messages"] for c in chat], params)
    by_name = {c["name"]: o.outputs[0] for c, o in zip(raw + chat, outs, strict=True)}
    return by_name, engine.stats()["quantization"]


@pytest.fixture(scope="module")
def runs(hf_dir) -> dict:
    return {q: run(hf_dir, quantization=q) for q in (None, "q8_0", "q4_0")}


@pytest.mark.slow
def test_stats_name_the_quantization(runs):
    assert {q: stats for q, (_, stats) in runs.items()} == {
        None: None,
        "q8_0": "q8_0",
        "q4_0": "q4_0",
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case["name"])
def test_q8_0_greedy_tokens_follow_f32(runs, case):
    quant, ref = runs["q8_0"][0][case["name"]], runs[None][0][case["name"]]
    assert len(quant.token_ids) == len(ref.token_ids) == MAX_TOKENS
    for step, (q, f) in enumerate(zip(quant.token_ids, ref.token_ids, strict=True)):
        if q == f:
            continue
        lp = ref.logprobs[step]
        assert q in lp, f"step {step}: q8_0 token {q} not in the f32 top {TOP_LOGPROBS}"
        gap = lp[f] - lp[q]
        assert gap <= Q8_0_DIVERGENCE_NATS, f"step {step}: {q} is {gap:.4f} nats below"
        break


def top_kl(ref_lp: dict, q_lp: dict) -> float:
    """KL(f32 ‖ quantized) over the f32 path's top tokens of one step. A token missing from
    the quantized top list is given that list's smallest log-probability, an upper bound of
    its own, so each such term (and the sum) errs low; the tokens outside the f32 top list
    (their mass 1 − Σp) are left out."""
    floor = min(q_lp.values())
    return sum(math.exp(lp) * (lp - q_lp.get(t, floor)) for t, lp in ref_lp.items())


def kl_mean_max(quant: dict, ref: dict) -> tuple[float, float]:
    """`top_kl` over every case's steps up to its first divergence (later steps have other
    contexts): mean and largest."""
    kls = []
    for case in CASES:
        q_out, f_out = quant[case["name"]], ref[case["name"]]
        for step, (q, f) in enumerate(zip(q_out.token_ids, f_out.token_ids, strict=True)):
            kls.append(top_kl(f_out.logprobs[step], q_out.logprobs[step]))
            if q != f:
                break
    return float(np.mean(kls)), max(kls)


@pytest.mark.slow
def test_kl_from_f32_within_bounds(runs):
    got = {fmt: kl_mean_max(runs[fmt][0], runs[None][0]) for fmt in KL_BOUNDS}
    for fmt, (mean, worst) in got.items():
        most_mean, most = KL_BOUNDS[fmt]
        assert mean <= most_mean and worst <= most, got
    # The measure sees the quantization: 4-bit weights drift further than 8-bit ones.
    assert got["q8_0"][0] < got["q4_0"][0] / 10, got


# The peak is read from /proc (VmHWM): `ru_maxrss` would carry the forking test process's own
# peak across the exec.
PEAK_RSS = """
import sys, infire
engine = infire.Engine(model=sys.argv[1], device="cpu", kv_cache_tokens=256, **(
    {"quantization": sys.argv[2]} if sys.argv[2] != "none" else {}))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) * 1024)
"""


def peak_rss(model: str, quantization: str) -> int:
    cmd = [sys.executable, "-c", PEAK_RSS, model, quantization]
    return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


@pytest.mark.slow
def test_quantizing_makes_no_f32_copy_of_the_model(hf_dir):
    # The f32 projections alone are 4 bytes x 106 M weights = 424 MB; quantized from the
    # mmap, the q4_0 load must save most of that against the f32 load (measured: peak 1,163
    # against 609 MB; the q4_0 peak is the mapped 270 MB file, the f32 embedding rows and their
    # copy, and the blocks).
    f32, q4 = peak_rss(hf_dir, "none"), peak_rss(hf_dir, "q4_0")
    assert q4 < f32 - 300e6, f"peak RSS: f32 load {f32 / 1e6:.0f} MB, q4_0 {q4 / 1e6:.0f} MB"
