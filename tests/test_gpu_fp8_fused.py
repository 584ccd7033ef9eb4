"""The kernels of kernels/cuda/fp8_fused.cu against the unfused kernels they replace, and the
engine with them (`INFIRE_FP8_FUSED=1`) against the engine without, on the GPU (`pytest -m gpu`).

Each fused kernel computes what a pair of unfused kernels computes, in the same roundings, so
the checks are bit for bit: fresh random inputs (rows of very different magnitudes, an all-zero
row), outputs poisoned with NaN first, then
- rms_norm_fp8 against rms_norm then fp8_quantize_rows of its output: the same codes and scales;
- add_rms_norm_fp8 against add_rms_norm then fp8_quantize_rows: the same residual, codes and
  scales;
- fp8_scale_silu_mul against fp8_scale_out (no bias) then silu_mul: the same output.
The engine: a random Llama-3 checkpoint quantized at load (`quantization="fp8"`), where FP8
GEMMs of several rows take the fused path (FP8 tensor cores: sm_89+), reads prompts one at a
time with and without the fusion: the prompt log-probabilities are equal, bit for bit, and the
fused run launched the fused norms (torch's profiler), the unfused one none of the fused
kernels; a batch of greedy decodes (16 rows a step: the GEMM path, not the GEMV) agrees up to a
near-tie (a batch's steps may be cut differently from run to run).
"""

from __future__ import annotations

import math
import zlib

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
pytest.importorskip("cuda.core")
pytest.importorskip("infire.kernels")

from cuda_kernel_names import launched_kernels  # noqa: E402
from test_gpu_kernels import DTYPES, NULL, f32, i32, nan_like, run  # noqa: E402

EPS = 1e-5
# Hidden sizes: SmolLM2-135M, not a multiple of 256 threads' vectors (1000: 125 vectors),
# Llama-3-8B, and the largest the norms take (16384: 8 vectors a thread).
HIDDEN = [576, 1000, 4096, 16384]
ROWS = [1, 7, 300]


@pytest.fixture(autouse=True)
def _cuda_and_seed(request):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def random_rows(rows: int, width: int, dtype) -> torch.Tensor:
    """Rows of spread magnitudes (1e-3 to 1e3), the last one all zeros when there are several."""
    x = (
        torch.randn(rows, width, device="cuda")
        * torch.logspace(-3, 3, rows, device="cuda")[:, None]
    )
    if rows > 1:
        x[-1] = 0
    return x.to(DTYPES[dtype])


def codes_and_scales(rows: int, width: int):
    return (
        torch.full((rows, width), 0x7F, dtype=torch.uint8, device="cuda"),  # NaN codes
        torch.full((rows,), float("nan"), device="cuda"),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("add", [False, True], ids=["rms_norm", "add_rms_norm"])
def test_norm_fp8_equals_norm_then_quantize(dtype, rows, hidden, add):
    t = DTYPES[dtype]
    x = random_rows(rows, hidden, dtype)
    w = (torch.rand(hidden, device="cuda") * 2).to(t)
    residual = random_rows(rows, hidden, dtype) if add else None
    # Unfused: the norm into a buffer, then fp8_quantize_rows of it.
    normed = nan_like((rows, hidden), t)
    q_ref, s_ref = codes_and_scales(rows, hidden)
    res_ref = residual.clone() if add else None
    if add:
        args = (res_ref, x, w, normed, i32(hidden), f32(EPS))
        run("rms_norm", "add_rms_norm", rows, 256, *args, dtype=dtype)
    else:
        run("rms_norm", "rms_norm", rows, 256, x, w, normed, i32(hidden), f32(EPS), dtype=dtype)
    run("fp8", "fp8_quantize_rows", rows, 256, normed, q_ref, s_ref, i32(hidden), dtype=dtype)
    # Fused.
    q, s = codes_and_scales(rows, hidden)
    if add:
        res = residual.clone()
        args = (res, x, w, q, s, i32(hidden), f32(EPS))
        run("fp8_fused", "add_rms_norm_fp8", rows, 256, *args, dtype=dtype)
        assert torch.equal(res, res_ref)
    else:
        args = (x, w, q, s, i32(hidden), f32(EPS))
        run("fp8_fused", "rms_norm_fp8", rows, 256, *args, dtype=dtype)
    assert torch.isfinite(s_ref).all()
    assert torch.equal(s, s_ref)
    assert torch.equal(q, q_ref)
    if rows > 1:  # the all-zero row: scale 1, every code 0
        assert s[-1].item() == 1.0 and not q[-1].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("n", [8, 1536, 2000, 14336])
def test_scale_silu_mul_equals_scale_out_then_silu_mul(dtype, rows, n):
    t = DTYPES[dtype]
    # A raw-code GEMM's output: sums of products of codes (|code| <= 448), as the dtype holds them.
    # (The engine runs this path in bf16 only, whose range holds any such sum; f16's does not.)
    raw = (torch.randn(rows, 2 * n, device="cuda") * (2e4 if dtype == "bfloat16" else 2e3)).to(t)
    a = torch.rand(rows, device="cuda") * 1e-2 + 1e-4
    ws = torch.rand(2 * n, device="cuda") * 1e-2 + 1e-4
    scaled = raw.clone()
    run("fp8", "fp8_scale_out", rows, 256, scaled, a, ws, NULL, i32(2 * n), dtype=dtype)
    ref = nan_like((rows, n), t)
    grid = (math.ceil(n / (8 * 256)), rows)
    run("silu_mul", "silu_mul", grid, 256, scaled, ref, i32(n), dtype=dtype)
    out = nan_like((rows, n), t)
    run("fp8_fused", "fp8_scale_silu_mul", grid, 256, raw, a, ws, out, i32(n), dtype=dtype)
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


FUSED_KERNELS = {"rms_norm_fp8", "add_rms_norm_fp8", "fp8_scale_silu_mul"}


def test_engine_with_fused_fp8_kernels_computes_the_same(tmp_path, monkeypatch):
    from test_gpu_engine import (
        KV_CACHE_TOKENS,
        PROMPTS,
        assert_equal_up_to_near_tie,
        completions,
    )
    from test_gpu_models import write_checkpoint

    import infire

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("the fused path runs where FP8 GEMMs run on tensor cores (sm_89+)")
    checkpoint = str(write_checkpoint(tmp_path, "llama3"))
    forced = infire.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=5)
    greedy = infire.SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True, logprobs=5)
    torch.cuda.init()
    results, launched = {}, {}
    for fused in ("0", "1"):
        monkeypatch.setenv("INFIRE_FP8_FUSED", fused)
        eng = infire.Engine(
            model=checkpoint,
            device="cuda",
            quantization="fp8",
            kv_cache_tokens=KV_CACHE_TOKENS,
            enable_prefix_caching=False,
        )
        assert eng.stats()["quantization"] == "fp8"
        alone = []
        names = launched_kernels(
            lambda eng=eng, alone=alone: alone.extend(
                eng.generate([p], forced)[0].prompt_logprobs for p in PROMPTS
            )
        )
        launched[fused] = names
        batch = completions(eng.generate(PROMPTS, greedy))
        results[fused] = (alone, batch)
        del eng
    # The switch takes the path it names (so that equal outputs mean something): the fused
    # norms always, fp8_scale_silu_mul where the unfused path scales the raw GEMM in a kernel
    # (Hopper), none of them unfused.
    assert {"rms_norm_fp8", "add_rms_norm_fp8"} <= launched["1"], launched["1"]
    assert not (FUSED_KERNELS & launched["0"]), launched["0"]
    raw_gemm = "fp8_scale_out" in launched["0"]
    assert ("fp8_scale_silu_mul" in launched["1"]) == raw_gemm, launched
    (alone0, batch0), (alone1, batch1) = results["0"], results["1"]
    for i, (a, b) in enumerate(zip(alone0, alone1, strict=True)):
        assert a == b, f"prompt {i}: prompt log-probabilities differ with the fused kernels"
    for i, (a, b) in enumerate(zip(batch0, batch1, strict=True)):
        assert_equal_up_to_near_tie(a, b, f"prompt {i}")
