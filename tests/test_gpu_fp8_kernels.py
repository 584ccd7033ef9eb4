"""The FP8 kernels (kernels/cuda/fp8.cu, the FP8 GEMVs of gemv.cu, gemv_fp8.cu and
gemv_fp8_mma.cu) against torch, on the GPU (`pytest -m gpu`), launched as test_gpu_kernels.py
launches the others: fresh random inputs, outputs poisoned with NaN first.

- fp8_quantize_rows: codes and scales equal torch's `(x / scale).clamp(±448).to(float8_e4m3fn)`
  with scale = amax / 448 bit for bit (both divide in fp32 and round to nearest even).
- fp8_dequantize: equal to torch's `codes.float() * scale` rounded to the dtype, bit for bit
  (the decoding is exact, so both round once).
- fp8_scale_out: the raw FP8 GEMM's output times the per-token and per-channel scales plus the
  bias, in place, against torch in f32 rounded once to the dtype (within one ulp: the kernel may
  fuse the last multiply and the add).
- the FP8 GEMVs (gemv.cu's *_fp8_m1, gemv_fp8.cu's *_fp8v2_m1 and its variants): against the
  fp64 product with the dequantized weights, within the dense GEMV's bounds (REL_TOL; the
  inputs and products are the same, only the summation order differs).
- the tensor-core FP8 GEMVs (gemv_fp8_mma.cu, sm_89+), 1..8 rows: the same reference and bounds.
  Their products take the input rounded to f16, which is exact for every bf16 or f16 value in
  f16's normal range (bf16 has fewer significand bits), so only the summation order differs
  again; a chunk with an input beyond f16's range is scaled per row by a power of two (tested
  on its own).
"""

from __future__ import annotations

import math
import zlib

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
pytest.importorskip("cuda.core")
pytest.importorskip("infire.kernels")

from test_gpu_kernels import (  # noqa: E402  (after the importorskips, as that module needs)
    DTYPES,
    GEMV_VARIANTS,
    NULL,
    REL_TOL,
    gemv_case,
    gemv_input_reference,
    i32,
    nan_like,
    rel_err,
    run,
    silu_mul_reference,
)

E4M3_MAX = 448.0


@pytest.fixture(autouse=True)
def _cuda_and_seed(request):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def quantize_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    amax = xf.abs().amax(dim=1)
    # A tensor divisor: torch divides by a Python scalar as a product with its reciprocal,
    # which is not the correctly rounded quotient the kernel (and IEEE division) gives.
    scale = torch.where(amax > 0, amax / torch.full_like(amax, E4M3_MAX), torch.ones_like(amax))
    q = (xf / scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.view(torch.uint8), scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "k"), [(1, 64), (7, 4104), (300, 576), (3, 14336)])
def test_fp8_quantize_rows(dtype, rows, k):
    t = DTYPES[dtype]
    # Rows of very different magnitudes, one all zeros, a few outliers.
    x = torch.randn(rows, k, device="cuda") * torch.logspace(-3, 3, rows, device="cuda")[:, None]
    x[rows // 2] = 0
    x[0, k // 3] = 1e4
    x = x.to(t)
    q = torch.full((rows, k), 0x7F, dtype=torch.uint8, device="cuda")
    scales = nan_like((rows,), torch.float32)
    run("fp8", "fp8_quantize_rows", rows, 256, x, q, scales, i32(k), dtype=dtype)
    want_q, want_s = quantize_reference(x)
    assert torch.equal(scales, want_s)
    assert torch.equal(q, want_q)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("rows", "n"), [(2, 8), (17, 6144), (300, 2056), (1024, 4096)])
def test_fp8_scale_out(dtype, bias, rows, n):
    t = DTYPES[dtype]
    # What the raw GEMM leaves: sums of products of codes, up to 448^2 * k in size (the engine
    # takes this path for bf16 only; f16 is tested at magnitudes it holds).
    size = 1e5 if t == torch.bfloat16 else 1e3
    raw = (torch.randn(rows, n, device="cuda") * size).to(t)
    a = torch.rand(rows, device="cuda") * 0.1 + 1e-3
    w = torch.rand(n, device="cuda") * 1e-3 + 1e-5
    b = torch.randn(n, device="cuda").to(t) if bias else None
    want = raw.float() * a[:, None] * w[None, :]
    if b is not None:
        want = want + b.float()
    want = want.to(t)
    out = raw.clone()
    run("fp8", "fp8_scale_out", rows, 256, out, a, w, b if bias else NULL, i32(n), dtype=dtype)
    # One ulp of the result (the subnormal spacing where a sum cancels to below the normal
    # range: f16's starts at 6e-5), plus what the kernel's fused multiply-add may differ by
    # from torch's rounded product before the bias is added (2^-24 of the product).
    product = (raw.float() * a[:, None] * w[None, :]).abs()
    info = torch.finfo(t)
    ulp = torch.clamp(want.float().abs(), min=info.smallest_normal) * info.eps
    bound = ulp + 2.0**-23 * product
    assert torch.isfinite(out).all()
    assert ((out.float() - want.float()).abs() <= bound + 1e-30).all()


def random_codes(rows: int, cols: int) -> torch.Tensor:
    """Every e4m3 code but the two NaNs, subnormals and ±0 included."""
    codes = torch.randint(0, 256, (rows, cols), dtype=torch.uint8, device="cuda")
    return torch.where((codes & 0x7F) == 0x7F, codes ^ 0x01, codes)


def scale_layout(rows: int, cols: int, layout: str):
    """(scales tensor, per-element scales, row_shift, col_shift, ld) of `layout`.

    Scales up to 0.01, less for rows over 4,096 columns (times sqrt(4096 / cols)), so that the
    sums keep the same spread at every k: at k = 14,336 and full scales, about 0.2 % of an f16
    silu epilogue's silu(g)·u went past f16's 65,504 (the 8-row case of 520 x 14,336 failed on
    those infinities, H100, 2026-12-07)."""
    top = 0.01 * min(1.0, math.sqrt(4096 / cols))
    if layout == "row":
        s = torch.rand(rows, device="cuda") * top + 1e-4
        return s, s[:, None].expand(rows, cols), 0, 31, 1
    br = bc = 128
    ld = math.ceil(cols / bc)
    s = torch.rand(math.ceil(rows / br), ld, device="cuda") * top + 1e-4
    full = s.repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]
    return s.contiguous(), full, 7, 7, ld


def dequantize_reference(codes, full_scales) -> torch.Tensor:
    return codes.view(torch.float8_e4m3fn).float() * full_scales


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["row", "block"])
@pytest.mark.parametrize(("rows", "cols"), [(1, 16), (300, 272), (1024, 4096)])
def test_fp8_dequantize(dtype, layout, rows, cols):
    t = DTYPES[dtype]
    codes = random_codes(rows, cols)
    s, full, rs, cs, ld = scale_layout(rows, cols, layout)
    out = nan_like((rows, cols), t)
    args = (codes, s, out, i32(cols), i32(rs), i32(cs), i32(ld))
    run("fp8", "fp8_dequantize", rows, 256, *args, dtype=dtype)
    assert torch.equal(out, dequantize_reference(codes, full).to(t))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["row", "block"])
@pytest.mark.parametrize(("prologue", "epilogue"), GEMV_VARIANTS, ids="-".join)
@pytest.mark.parametrize(
    ("n", "k", "cols_per_cta"),
    # As the dense GEMV's test, with k a multiple of 16 (FP8 vectors hold 16 weights): n not a
    # multiple of the group, k below one vector per thread, not a multiple of 128 (a partial
    # scale block), Llama-3-8B's o_proj and down_proj shapes.
    [(37, 64, 4), (1003, 2064, 12), (4096, 4096, 8), (520, 14336, 8)],
)
def test_gemv_fp8(dtype, layout, prologue, epilogue, n, k, cols_per_cta):
    if epilogue == "silu":
        n -= n % 4
    func = f"gemv_{prologue}_{epilogue}_fp8_m1"
    check_one_row_fp8_gemv("gemv", func, (), dtype, layout, prologue, epilogue, n, k, cols_per_cta)


def check_one_row_fp8_gemv(file, func, defines, dtype, layout, prologue, epilogue, n, k, cols):
    """Runs one-row FP8 GEMV `func` of `file` on fresh random codes and scales of `layout` and
    checks it against the fp64 product with the exact f32 weights the codes stand for."""
    rows = 1
    codes = random_codes(n, k)
    s, full, rs, cs, ld = scale_layout(n, k, layout)
    case = gemv_case(dtype, prologue, epilogue, rows, dequantize_reference(codes, full))
    head = (codes, s, i32(rs), i32(cs), i32(ld))
    run(
        file,
        func,
        math.ceil(n / cols),
        256,
        *head,
        *case.inputs(rows, n, k, cols),
        dtype=dtype,
        defines=defines,
    )
    case.check(rows)
    return case, head


# gemv_fp8.cu's variants: its defaults (8 rows a group, xin kept in registers) and the -D
# overrides bench/gemv_fp8_bench.py times.
V2_DEFINES = {
    "default": (),
    "group4": (("FP8_GEMV_GROUP", 4),),
    "no-xcache": (("FP8_GEMV_XCACHE", 0),),
    "no-cvt": (("FP8_GEMV_CVT", 0),),  # e4m3_raw's decoding, the path of GPUs before sm_89
    "rowscale": (("FP8_GEMV_ROWSCALE", 1),),  # the "row" layout's scales applied per output
}
# (variant, layout): every variant with both layouts, but rowscale only with one scale per row
# (with blocks it runs the default path).
V2_CASES = [
    (v, lay) for v in V2_DEFINES for lay in ("row", "block") if (v, lay) != ("rowscale", "block")
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("variant", "layout"), V2_CASES, ids="-".join)
@pytest.mark.parametrize(("prologue", "epilogue"), GEMV_VARIANTS, ids="-".join)
@pytest.mark.parametrize(
    ("n", "k", "cols_per_cta"),
    # test_gemv_fp8's shapes with cols_per_cta a multiple of 8 (the group), and two more:
    # Llama-3-8B's fused gate_up (28672 x 4096) with the engine's split at 3 CTAs an SM on 132
    # SMs, and k = 8192, two vectors a thread (xin not kept: read for each group). With silu
    # n is only made even: 36 and 1002 leave a last group of 2 and of 1 output (of 4).
    [
        (37, 64, 8),
        (1003, 2064, 16),
        (4096, 4096, 8),
        (520, 14336, 8),
        (28672, 4096, 80),
        (1000, 8192, 8),
    ],
)
def test_gemv_fp8_v2(dtype, variant, layout, prologue, epilogue, n, k, cols_per_cta):
    """gemv_fp8.cu's one-row FP8 GEMVs: the reference and bounds of test_gemv_fp8; then against
    gemv.cu's *_fp8_m1 on the same inputs (where it takes them: with silu, n a multiple of 4),
    which sums the same products in the same order: equal outputs but for rare last-bit
    differences (gemv_fp8.cu's header), so at most 1 % of them differ, and by far less than
    test_gemv_fp8's bound (one output wrong among thousands would pass that bound, not this)."""
    if epilogue == "silu":
        n -= n % 2
    func = f"gemv_{prologue}_{epilogue}_fp8v2_m1"
    case, head = check_one_row_fp8_gemv(
        "gemv_fp8", func, V2_DEFINES[variant], dtype, layout, prologue, epilogue, n, k, cols_per_cta
    )
    if epilogue == "silu" and n % 4:
        return
    m1 = case._replace(out=case.before.clone())
    func = f"gemv_{prologue}_{epilogue}_fp8_m1"
    grid = math.ceil(n / cols_per_cta)
    run("gemv", func, grid, 256, *head, *m1.inputs(1, n, k, cols_per_cta), dtype=dtype)
    got, want = case.out[:1], m1.out[:1]
    if epilogue == "f32":  # f32 outputs show every last-bit difference
        assert rel_err(got, want) < 1e-5
    else:
        assert (got != want).float().mean().item() <= 0.01
        assert rel_err(got, want) < REL_TOL[dtype] / 100


def needs_fp8_conversion():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("gemv_fp8_mma.cu needs sm_89+ (the engine uses gemv.cu's kernels there)")


# The rows of W a CTA takes at a time (TILE in gemv_fp8_mma.cu): cols_per_cta is a multiple.
MMA_TILE = 32


def run_gemv_fp8_mma(dtype, prologue, epilogue, rows, codes, layout, case, cols_per_cta):
    n, k = codes.shape
    s, _, rs, cs, ld = layout
    grid = math.ceil(n / cols_per_cta)
    func = f"gemv_{prologue}_{epilogue}_fp8mma"
    args = (codes, s, i32(rs), i32(cs), i32(ld), *case.inputs(rows, n, k, cols_per_cta))
    run("gemv_fp8_mma", func, grid, 256, *args, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["row", "block"])
@pytest.mark.parametrize(("prologue", "epilogue"), GEMV_VARIANTS, ids="-".join)
@pytest.mark.parametrize("rows", [1, 2, 5, 8])
@pytest.mark.parametrize(
    ("n", "k", "cols_per_cta"),
    # test_gemv_fp8's shapes with k in whole 64-column chunks (2112: not a multiple of 128, a
    # partial scale block; 64: one chunk, seven warps without work), n not a multiple of the
    # tile, and Llama-3-8B's fused gate_up (28672 x 4096) with the engine's split (132 SMs x 2).
    [(37, 64, 32), (1003, 2112, 64), (4096, 4096, 32), (520, 14336, 32), (28672, 4096, 128)],
)
def test_gemv_fp8_mma(dtype, layout, prologue, epilogue, rows, n, k, cols_per_cta):
    needs_fp8_conversion()
    if epilogue == "silu":
        n -= n % 4
    codes = random_codes(n, k)
    scales = scale_layout(n, k, layout)
    case = gemv_case(dtype, prologue, epilogue, rows, dequantize_reference(codes, scales[1]))
    run_gemv_fp8_mma(dtype, prologue, epilogue, rows, codes, scales, case, cols_per_cta)
    case.check(rows)


def expected_output(case, prologue, epilogue, rows, w):
    """gemv_case's expected output, for its inputs as they are now."""
    t = DTYPES[case.dtype]
    acc = gemv_input_reference(prologue, case.x[:rows], case.nw, case.eps).double()
    acc = acc @ w.double().T
    if epilogue == "add":
        return (case.before[:rows].double() + acc.to(t).double()).to(t)
    if epilogue == "silu":
        return silu_mul_reference(acc.to(t))
    return acc + case.bias.double()


@pytest.mark.parametrize("layout", ["row", "block"])
@pytest.mark.parametrize(("prologue", "epilogue"), GEMV_VARIANTS, ids="-".join)
@pytest.mark.parametrize("rows", [1, 5])
def test_gemv_fp8_mma_input_beyond_f16(layout, prologue, epilogue, rows):
    """A bf16 input over 65504 in one chunk of one row: that row's part of the chunk is scaled
    down by a power of two and its sums back up (unscaled, f16 would make it inf and the output
    inf or NaN); the other rows and chunks are unaffected."""
    needs_fp8_conversion()
    n, k, cols_per_cta = 1024, 4096, 32
    codes = random_codes(n, k)
    scales = scale_layout(n, k, layout)
    w = dequantize_reference(codes, scales[1])
    case = gemv_case("bfloat16", prologue, epilogue, rows, w)
    row, col = rows - 1, 1000
    if prologue == "plain":
        case.x[row, col] = 7e4
    else:  # xin = round(round(x * r) * nw): about 50 / 2 * 3e5
        case.x[row, col] = 50.0
        case.nw[col] = 3e5
    assert gemv_input_reference(prologue, case.x[:rows], case.nw, case.eps).abs().max() > 65504
    case = case._replace(expected=expected_output(case, prologue, epilogue, rows, w))
    run_gemv_fp8_mma("bfloat16", prologue, epilogue, rows, codes, scales, case, cols_per_cta)
    case.check(rows)
