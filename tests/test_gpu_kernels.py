"""Every CUDA kernel in kernels/cuda against a torch reference, on the GPU (`pytest -m gpu`).

Each kernel file is compiled through `infire.kernels.compile` (NVRTC, as the engine does) for
the GPU's arch, loaded with `cuda.core` and launched on torch's current stream with the grid
and block the engine uses. Inputs are fresh random tensors (seeded per test); outputs are
poisoned with NaN first, so an element the kernel forgot to write fails the check. References
run in fp64 on the upcast inputs; bounds are relative Frobenius errors ||out - ref|| / ||ref||,
or exact equality where the kernel does no arithmetic.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import NamedTuple

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
pytest.importorskip("cuda.core")
try:  # cuda.core >= 0.4 exports the API at the top level; older releases under .experimental
    from cuda.core import Device, LaunchConfig, ObjectCode, launch
except ImportError:
    from cuda.core.experimental import Device, LaunchConfig, ObjectCode, launch

kernels = pytest.importorskip("infire.kernels")


class Shape(NamedTuple):
    """The model constants every kernel file is compiled with."""

    head_dim: int = 128
    num_heads: int = 32
    num_kv_heads: int = 8
    kv_block_size: int = 16

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def qkv_width(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim


LLAMA_8B = Shape()
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

# Bound on ||out - ref|| / ||ref|| for outputs computed in fp32 and rounded to the dtype once or
# twice: the unit roundoff is 2^-9 ~ 2.0e-3 for bf16 and 2^-12 ~ 2.4e-4 for f16, so a rounded
# output has a relative error of about 0.6x that (rms); the bounds leave a margin of ~5-10x
# for fp32 summation order and transcendental ulps, and stay far below any real bug.
REL_TOL = {"bfloat16": 1e-2, "float16": 2e-3}
# RMSNorm rounds twice (y, then y * w) and its reference rounds at the same points, so the
# output is within one ulp almost everywhere: same bound.
RMS_NORM_TOL = REL_TOL
# Attention: fp32 softmax and accumulation, one rounding of the output.
ATTENTION_TOL = REL_TOL


@pytest.fixture(autouse=True)
def _cuda_and_seed(request):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def _arch() -> str:
    major, minor = torch.cuda.get_device_capability()
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


class _TorchStream:
    """torch's current stream, seen by cuda.core through the __cuda_stream__ protocol."""

    def __init__(self, stream):
        self.stream = stream

    def __cuda_stream__(self):
        return (0, self.stream.cuda_stream)


@functools.cache
def _device():
    device = Device(torch.cuda.current_device())
    device.set_current()
    return device


@functools.cache
def _object_code(name: str, dtype: str, shape: Shape, extra: tuple = ()):
    defines = {
        "HEAD_DIM": shape.head_dim,
        "NUM_HEADS": shape.num_heads,
        "NUM_KV_HEADS": shape.num_kv_heads,
        "KV_BLOCK_SIZE": shape.kv_block_size,
        **dict(extra),
    }
    _device()
    cubin = kernels.compile(name, arch=_arch(), defines=defines, dtype=dtype, target="cubin")
    return ObjectCode.from_cubin(cubin)


def run(name, func, grid, block, *args, dtype="bfloat16", shape=LLAMA_8B, defines=()):
    """Launches function `func` of kernel file `name` and waits for it. Tensors are passed as
    device pointers; other arguments must already be numpy scalars of the C parameter type.
    `defines`: extra (name, value) compile-time constants."""
    kernel = _object_code(name, dtype, shape, tuple(defines)).get_kernel(func)
    params = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
    stream = _device().create_stream(_TorchStream(torch.cuda.current_stream()))
    launch(stream, LaunchConfig(grid=grid, block=block), kernel, *params)
    torch.cuda.synchronize()


def i32(x: int):
    return np.int32(x)


def f32(x: float):
    return np.float32(x)


# A null pointer argument (pointers are passed as Python ints).
NULL = 0
# The (k_scale, v_scale) arguments of the KV-cache kernels, which a cache of T ignores.
UNIT_KV_SCALES = (f32(1.0), f32(1.0))


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


def rel_err(out, ref) -> float:
    assert torch.isfinite(out).all(), "some outputs were not written (NaN poison left)"
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


ROWS = [1, 3, 17, 100]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_embedding(dtype, rows):
    vocab, hidden = 1000, 576
    table = torch.randn(vocab, hidden, device="cuda").to(DTYPES[dtype])
    ids = torch.randint(0, vocab, (rows,), dtype=torch.int32, device="cuda")
    ids[0] = vocab - 1
    out = nan_like((rows, hidden), DTYPES[dtype])
    run("embedding", "embedding", rows, 128, table, ids, out, i32(hidden), dtype=dtype)
    assert torch.equal(out, table[ids.long()])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_gather_rows(dtype, rows):
    width = 4104  # not a multiple of the 128 * 8 elements a CTA copies per step
    x = torch.randn(250, width, device="cuda").to(DTYPES[dtype])
    idx = torch.randint(0, 250, (rows,), dtype=torch.int32, device="cuda")
    out = nan_like((rows, width), DTYPES[dtype])
    run("gather_rows", "gather_rows", rows, 128, x, idx, out, i32(width), dtype=dtype)
    assert torch.equal(out, x[idx.long()])


def rms_norm_reference(x, w, eps):
    """transformers' LlamaRMSNorm: fp32 statistics, y rounded to the dtype, then y * w."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * y.to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "hidden"), [(1, 576), (3, 4096), (17, 5128), (100, 16384)])
def test_rms_norm(dtype, rows, hidden):
    t = DTYPES[dtype]
    x = (3 * torch.randn(rows, hidden, device="cuda")).to(t)
    w = (1 + 0.1 * torch.randn(hidden, device="cuda")).to(t)
    out = nan_like((rows, hidden), t)
    eps = 1e-5
    run("rms_norm", "rms_norm", rows, 256, x, w, out, i32(hidden), f32(eps), dtype=dtype)
    assert rel_err(out, rms_norm_reference(x, w, eps)) < RMS_NORM_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "hidden"), [(1, 576), (3, 4096), (17, 5128), (100, 16384)])
def test_add_rms_norm(dtype, rows, hidden):
    t = DTYPES[dtype]
    residual = (3 * torch.randn(rows, hidden, device="cuda")).to(t)
    x = torch.randn(rows, hidden, device="cuda").to(t)
    w = (1 + 0.1 * torch.randn(hidden, device="cuda")).to(t)
    expected_residual = residual + x  # torch adds in fp32 and rounds once, as the kernel does
    out = nan_like((rows, hidden), t)
    eps = 1e-6
    run(
        "rms_norm",
        "add_rms_norm",
        rows,
        256,
        residual,
        x,
        w,
        out,
        i32(hidden),
        f32(eps),
        dtype=dtype,
    )
    assert torch.equal(residual, expected_residual)
    assert rel_err(out, rms_norm_reference(expected_residual, w, eps)) < RMS_NORM_TOL[dtype]


QK_SHAPES = [Shape(128, 32, 8), Shape(64, 9, 3), Shape(128, 16, 16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", QK_SHAPES, ids=str)
@pytest.mark.parametrize("rows", [1, 17])
def test_qk_norm(dtype, shape, rows):
    t, hd, nh, nkv = DTYPES[dtype], shape.head_dim, shape.num_heads, shape.num_kv_heads
    qkv = (2 * torch.randn(rows, shape.qkv_width, device="cuda")).to(t)
    q_w = (1 + 0.1 * torch.randn(hd, device="cuda")).to(t)
    k_w = (1 + 0.1 * torch.randn(hd, device="cuda")).to(t)
    before = qkv.clone()
    eps = 1e-6
    run(
        "qk_norm",
        "qk_norm",
        (rows, nh + nkv),
        32,
        qkv,
        q_w,
        k_w,
        i32(shape.qkv_width),
        f32(eps),
        dtype=dtype,
        shape=shape,
    )
    q_ref = rms_norm_reference(before[:, : nh * hd].view(rows, nh, hd), q_w, eps)
    k_ref = rms_norm_reference(before[:, nh * hd : (nh + nkv) * hd].view(rows, nkv, hd), k_w, eps)
    assert rel_err(qkv[:, : nh * hd].view(rows, nh, hd), q_ref) < RMS_NORM_TOL[dtype]
    assert (
        rel_err(qkv[:, nh * hd : (nh + nkv) * hd].view(rows, nkv, hd), k_ref)
        < (RMS_NORM_TOL[dtype])
    )
    assert torch.equal(qkv[:, (nh + nkv) * hd :], before[:, (nh + nkv) * hd :])


def rope_reference(x, positions, inv_freq):
    """Rotate-half RoPE in fp64 from the kernel's fp32 angles. x: [rows, heads, head_dim]."""
    angle = (positions.float()[:, None] * inv_freq[None, :]).double()[:, None, :]
    cos, sin = angle.cos(), angle.sin()
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].double(), x[..., half:].double()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [Shape(128, 32, 8), Shape(64, 9, 3)], ids=str)
@pytest.mark.parametrize("rows", ROWS)
def test_rope_cache_write(dtype, shape, rows):
    t, hd, nh, nkv = DTYPES[dtype], shape.head_dim, shape.num_heads, shape.num_kv_heads
    bs, num_blocks = shape.kv_block_size, 16
    qkv = torch.randn(rows, shape.qkv_width, device="cuda").to(t)
    positions = torch.randint(0, 131072, (rows,), dtype=torch.int32, device="cuda")
    positions[0] = 0
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device="cuda").float() / hd))
    slots = torch.randperm(num_blocks * bs, device="cuda")[:rows].int()
    slots[rows // 2] = -1  # a padding row: rotated, but not cached
    k_cache = nan_like((num_blocks, bs, nkv, hd), t)
    v_cache = nan_like((num_blocks, bs, nkv, hd), t)
    before = qkv.clone()
    run(
        "rope_cache_write",
        "rope_cache_write",
        rows,
        128,
        qkv,
        positions,
        slots,
        inv_freq,
        k_cache,
        v_cache,
        i32(shape.qkv_width),
        *UNIT_KV_SCALES,
        dtype=dtype,
        shape=shape,
    )

    q, k = qkv[:, : nh * hd].view(rows, nh, hd), qkv[:, nh * hd : (nh + nkv) * hd]
    q_ref = rope_reference(before[:, : nh * hd].view(rows, nh, hd), positions, inv_freq)
    k_ref = rope_reference(
        before[:, nh * hd : (nh + nkv) * hd].view(rows, nkv, hd), positions, inv_freq
    )
    assert rel_err(q, q_ref) < REL_TOL[dtype]
    assert rel_err(k.view(rows, nkv, hd), k_ref) < REL_TOL[dtype]
    v = before[:, (nh + nkv) * hd :]
    assert torch.equal(qkv[:, (nh + nkv) * hd :], v)

    cached = slots >= 0
    flat_k, flat_v = k_cache.view(-1, nkv * hd), v_cache.view(-1, nkv * hd)
    assert torch.equal(flat_k[slots[cached].long()], k[cached])
    assert torch.equal(flat_v[slots[cached].long()], v[cached])
    untouched = torch.ones(num_blocks * bs, dtype=torch.bool, device="cuda")
    untouched[slots[cached].long()] = False
    assert flat_k[untouched].isnan().all() and flat_v[untouched].isnan().all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "n"), [(1, 14336), (3, 1000), (17, 2048), (100, 4104)])
def test_silu_mul(dtype, rows, n):
    t = DTYPES[dtype]
    x = (3 * torch.randn(rows, 2 * n, device="cuda")).to(t)
    out = nan_like((rows, n), t)
    grid = (math.ceil(n / (8 * 256)), rows)
    run("silu_mul", "silu_mul", grid, 256, x, out, i32(n), dtype=dtype)
    gate, up = x[:, :n].double(), x[:, n:].double()
    assert rel_err(out, gate * torch.sigmoid(gate) * up) < REL_TOL[dtype]


GEMV_VARIANTS = [
    ("plain", "store"),
    ("plain", "f32"),
    ("plain", "add"),
    ("norm", "store"),
    ("norm", "f32"),
    ("norm", "silu"),
]


def gemv_input_reference(prologue, x, nw, eps):
    """What the GEMV's prologue feeds the product, rounded where the unfused kernels round."""
    if prologue == "norm":
        return rms_norm_reference(x, nw, eps).float()
    return x.float()


def silu_mul_reference(gate_up):
    """silu_mul.cu of a [gate | up] row: fp32 of the rounded halves, rounded once."""
    n = gate_up.shape[1] // 2
    gate, up = gate_up[:, :n].float(), gate_up[:, n:].float()
    return (gate / (1 + torch.exp(-gate)) * up).to(gate_up.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("prologue", "epilogue"), GEMV_VARIANTS, ids="-".join)
@pytest.mark.parametrize(
    ("n", "k", "cols_per_cta"),
    # n not a multiple of the 4-column group; k below one vector per thread (k = 64), not a
    # multiple of 256 vectors (k = 2056), a Llama-3-8B o_proj (4096 x 4096) with the engine's
    # split (8 columns per CTA on 132 SMs x 4 CTAs), and its down_proj's k (14336).
    [(37, 64, 4), (1003, 2056, 12), (4096, 4096, 8), (520, 14336, 8)],
)
def test_gemv(dtype, prologue, epilogue, n, k, cols_per_cta):
    t, rows = DTYPES[dtype], 1
    if epilogue == "silu":
        n -= n % 4  # [gate; up] with an even number of outputs: gemv.cu's silu groups
    w = (torch.randn(n, k, device="cuda") / math.sqrt(k)).to(t)
    case = gemv_case(dtype, prologue, epilogue, rows, w.float())
    grid = math.ceil(n / cols_per_cta)
    func = f"gemv_{prologue}_{epilogue}_m1"
    args = (w, *case.inputs(rows, n, k, cols_per_cta))
    run("gemv", func, grid, 256, *args, dtype=dtype)
    case.check(rows)


class GemvCase(NamedTuple):
    """A GEMV's inputs (two rows past `rows` it must not touch), its output buffer, and the
    expected result; `check` after the launch."""

    dtype: str
    epilogue: str
    x: torch.Tensor
    nw: torch.Tensor
    bias: torch.Tensor | None
    out: torch.Tensor
    before: torch.Tensor
    expected: torch.Tensor
    eps: float

    def inputs(self, rows, n, k, cols_per_cta) -> tuple:
        """The kernel's arguments after the weights, in gemv.cu's order."""
        bias = self.bias if self.bias is not None else NULL
        return (self.x, self.nw, bias, self.out, i32(rows), i32(n), i32(k)) + (
            i32(cols_per_cta),
            f32(self.eps),
        )

    def check(self, rows: int) -> None:
        tol = REL_TOL[self.dtype] / 10 if self.epilogue == "f32" else REL_TOL[self.dtype]
        assert rel_err(self.out[:rows], self.expected) < tol
        assert torch.equal(self.out[rows:].isnan(), self.before[rows:].isnan())
        if self.epilogue == "add":
            assert torch.equal(self.out[rows:], self.before[rows:])


def gemv_case(dtype, prologue, epilogue, rows, w: torch.Tensor) -> GemvCase:
    """Random inputs for a GEMV of the weights `w` (f32 `[n, k]`, the values the kernel's weights
    stand for) and its expected output: the fp64 product of the prologue's input, rounded where
    the unfused kernels round."""
    t = DTYPES[dtype]
    n, k = w.shape
    x = (2 * torch.randn(rows + 2, k, device="cuda")).to(t)
    nw = (1 + 0.1 * torch.randn(k, device="cuda")).to(t)
    has_bias = epilogue not in ("add", "silu")
    bias = (0.1 * torch.randn(n, device="cuda")).to(t) if has_bias else None
    eps = 1e-5
    xin = gemv_input_reference(prologue, x[:rows], nw, eps)
    acc = xin.double() @ w.double().T
    if epilogue == "add":
        out = torch.randn(rows + 2, n, device="cuda").to(t)
        before = out.clone()
        expected = (before[:rows].double() + acc.to(t).double()).to(t)
    elif epilogue == "silu":
        out = nan_like((rows + 2, n // 2), t)
        before = out.clone()
        expected = silu_mul_reference(acc.to(t))
    else:
        out = nan_like((rows + 2, n), torch.float32 if epilogue == "f32" else t)
        before = out.clone()
        expected = acc + bias.double()
    return GemvCase(dtype, epilogue, x, nw, bias, out, before, expected, eps)


@pytest.mark.parametrize(("rows", "vocab"), [(1, 128256), (3, 1000), (17, 7), (100, 49152)])
def test_argmax(rows, vocab):
    logits = torch.randn(rows, vocab, device="cuda")
    # Ties: the row maximum copied to a later index must not win over the first one.
    all_rows = torch.arange(rows, device="cuda")
    first = torch.randint(0, vocab, (rows,), device="cuda")
    logits[all_rows, first] = 100.0
    logits[all_rows, (first + 1 + vocab // 2) % vocab] = 100.0
    # NaN ranks below every number.
    logits[0, torch.randint(0, vocab, (3,), device="cuda")] = float("nan")
    if rows > 1:
        logits[1] = -float("inf")
        logits[1, vocab // 3] = -1e30
    out = torch.full((rows,), -7, dtype=torch.int32, device="cuda")
    run("sampling", "argmax", rows, 1024, logits, i32(vocab), out)
    expected = torch.argmax(torch.where(logits.isnan(), -float("inf"), logits), dim=-1)
    assert torch.equal(out.long(), expected)


# --- sampling --------------------------------------------------------------------------------
# The rules (sampling.cu's header, rust/src/sampling/filter.rs) again, in numpy.

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SEEN_BIT = 1 << 31
NO_MASK = 0xFFFFFFFF


def uniform(key: int, n: int) -> np.ndarray:
    """splitmix64's outputs 1..n from state `key`, as float32 in (0, 1)."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + np.arange(1, n + 1, dtype=np.uint64) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return ((z >> np.uint64(41)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-23)


def test_uniform_matches_the_rust_copy():
    """The values rust/src/sampling/filter.rs asserts (exact in float32)."""
    want = np.array([0.38982969522476196, 0.0167883038520813, 0.9007607102394104], np.float32)
    assert np.array_equal(uniform(7, 3), want)
    assert uniform(2**63 + 5, 100_001)[-1] == np.float32(0.5986538529396057)


def penalize(row: np.ndarray, p: dict) -> None:
    for token, count, seen in p["penalties"]:
        v = row[token]
        if seen:
            v = v / np.float32(p["rep"]) if v > 0 else v * np.float32(p["rep"])
        if count:
            v = v - (np.float32(p["freq"]) * np.float32(count) + np.float32(p["pres"]))
        row[token] = v


def keep_floor(row: np.ndarray, p: dict, m, top_p) -> float:
    """The smallest kept logit: top-k threshold, min-p floor, top-p threshold (ties kept)."""
    t = np.float32(p["temperature"])
    inv_t = np.float32(1) / t
    valid = np.sort(row[~np.isnan(row)])[::-1]
    floor = -np.inf
    if 0 < p["top_k"] < len(row):
        floor = valid[min(p["top_k"], len(valid)) - 1]
    if p["min_p"] > 0:
        floor = max(floor, m + np.log(np.float32(p["min_p"])) * t)
    if top_p < 1:
        kept = valid[valid >= floor]
        mass = np.exp((kept - m) * inv_t).astype(np.float64)
        cum = np.cumsum(mass)
        floor = max(floor, kept[np.searchsorted(cum, top_p * cum[-1])])
    return floor


def apply_mask(row: np.ndarray, p: dict) -> None:
    """A grammar's mask (`p["allowed"]`, booleans per token), first: the rest is -inf."""
    if p.get("allowed") is not None:
        row[~p["allowed"]] = -np.inf


def sample_reference(logits: np.ndarray, params: list[dict]):
    """Per row: the token, the race value of every token (-inf where not kept), and the kept
    mask with top_p loosened by 1e-3 (what a kernel may keep, given float sums)."""
    out = []
    for row, p in zip(logits, params, strict=True):
        row = row.copy()
        apply_mask(row, p)
        penalize(row, p)
        arg = int(np.argmax(np.where(np.isnan(row), -np.inf, row)))
        if p["temperature"] == 0 or p["top_k"] == 1:
            out.append((arg, None, None))
            continue
        ok = ~np.isnan(row)
        if not ok.any():  # nothing to draw from: the argmax
            out.append((arg, None, None))
            continue
        m = row[arg]
        inv_t = np.float32(1) / np.float32(p["temperature"])
        floor = keep_floor(row, p, m, p["top_p"])
        loose = keep_floor(row, p, m, min(1.0, p["top_p"] + 1e-3))
        u = uniform(p["key"], len(row))
        race = np.where(ok & (row >= floor), (row - m) * inv_t - np.log(-np.log(u)), -np.inf)
        out.append((int(np.argmax(race)), race, ok & (row >= loose)))
    return out


def pack_mask(allowed: np.ndarray) -> np.ndarray:
    """A row's token mask as the kernel reads it (llguidance's order): ceil(vocab / 32) words,
    token t allowed when bit t % 32 of word t / 32 is set."""
    bits = np.zeros(-(-len(allowed) // 32) * 32, dtype=bool)
    bits[: len(allowed)] = allowed
    return np.packbits(bits, bitorder="little").view("<u4").astype(np.uint32)


def pack_sampling(params: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample kernel's parameter words, penalty entries and masks (`pack_sampling` in
    sampler.rs)."""
    words, entries, masks = [], [], []
    for p in params:
        begin = len(entries)
        entries += [(t, c | (SEEN_BIT if seen else 0)) for t, c, seen in p["penalties"]]
        mask_at = NO_MASK
        if p.get("allowed") is not None:
            mask_at = sum(len(m) for m in masks)
            masks.append(pack_mask(p["allowed"]))

        def bits(x):
            return int(np.float32(x).view(np.uint32))

        words.append(
            [
                bits(p["temperature"]),
                bits(p["top_p"]),
                bits(p["min_p"]),
                p["top_k"] & 0xFFFFFFFF,
                bits(p["rep"]),
                bits(p["pres"]),
                bits(p["freq"]),
                begin,
                len(entries),
                p["key"] & 0xFFFFFFFF,
                p["key"] >> 32,
                mask_at,
            ]
        )
    flat_entries = np.array(entries or [(0, 0)], dtype=np.uint32).reshape(-1)
    flat_masks = np.concatenate(masks) if masks else np.zeros(1, dtype=np.uint32)
    return np.array(words, dtype=np.uint32).reshape(-1), flat_entries, flat_masks


def random_params(rng: np.random.Generator, vocab: int) -> dict:
    penalties = []
    if rng.random() < 0.5:
        tokens = rng.choice(vocab, size=min(vocab, int(rng.integers(1, 40))), replace=False)
        penalties = [(int(t), int(rng.integers(0, 4)), bool(rng.random() < 0.7)) for t in tokens]
    return {
        "temperature": float(rng.choice([0.0, 0.3, 0.7, 1.0, 1.6])),
        "top_k": int(rng.choice([-1, 1, 2, 20, 50, vocab + 5])),
        "top_p": float(rng.choice([1.0, 0.95, 0.8, 0.3])),
        "min_p": float(rng.choice([0.0, 0.0, 0.05, 0.3])),
        "rep": float(rng.choice([1.0, 1.3])),
        "pres": float(rng.choice([0.0, 0.5])),
        "freq": float(rng.choice([0.0, 0.25])),
        "key": int(rng.integers(0, 2**63)) * 2 + 1,
        "penalties": penalties,
    }


def run_sample(logits, params, candidates=None):
    """The sample kernel's tokens; `candidates` overrides its shared-memory candidate capacity
    (0: every threshold and the draw read the whole row)."""
    words, entries, masks = pack_sampling(params)
    words_t = torch.from_numpy(words.view(np.int32)).cuda()
    entries_t = torch.from_numpy(entries.view(np.int32)).cuda()
    masks_t = torch.from_numpy(masks.view(np.int32)).cuda()
    rows, vocab = logits.shape
    out = torch.full((rows,), -7, dtype=torch.int32, device="cuda")
    defines = () if candidates is None else (("SAMPLE_CANDIDATES", candidates),)
    args = (logits, i32(vocab), words_t, entries_t, masks_t, out)
    run("sampling", "sample", rows, 1024, *args, defines=defines)
    return out.cpu().numpy()


@pytest.mark.parametrize(
    ("rows", "vocab"), [(1, 128256), (64, 1000), (33, 49152), (4, 151936), (40, 7), (9, 32001)]
)
@pytest.mark.parametrize("candidates", [None, 0], ids=["candidates", "whole-row"])
def test_sample_matches_the_reference(rows, vocab, candidates):
    """Penalties (applied in place), greedy rows, and every filter combination: each token is
    one the filters keep, and equal to the reference's draw from the same key unless the two
    race values are within float rounding of each other. With the candidates in shared memory
    (where they fit: small top-k, small top-p sets) and with every pass over the whole row."""
    rng = np.random.default_rng(zlib.crc32(f"{rows},{vocab}".encode()))
    logits = torch.randn(rows, vocab, device="cuda") * 3
    logits[:, : vocab // 4] = logits[:, : vocab // 4].round()  # ties among logits
    if rows > 1:
        logits[1, :: max(1, vocab // 7)] = float("nan")
    params = [random_params(rng, vocab) for _ in range(rows)]
    # Row 0 always samples (top-k + top-p, penalties on); row 1 too, which is all NaN at vocab 7.
    params[0].update(temperature=1.0, top_k=50, top_p=0.9, min_p=0.0, rep=1.3, freq=0.25)
    if rows > 1:
        params[1].update(temperature=0.7, top_k=-1)
    host = logits.cpu().numpy()
    want = sample_reference(host, params)
    out = run_sample(logits, params, candidates)
    penalized = host.copy()
    for row, p in zip(penalized, params, strict=True):
        penalize(row, p)
    torch.testing.assert_close(
        logits.cpu(), torch.from_numpy(penalized), rtol=1e-6, atol=1e-6, equal_nan=True
    )
    for r, ((token, race, kept), got) in enumerate(zip(want, out, strict=True)):
        if race is None:
            assert got == token, f"row {r}: greedy {got} != {token}"
            continue
        assert 0 <= got < vocab and kept[got], f"row {r}: token {got} is filtered out"
        if got != token:
            assert abs(race[got] - race[token]) <= 1e-5 * max(1.0, abs(race[token])), (
                f"row {r}: {got} (race {race[got]}) != {token} (race {race[token]})"
            )


@pytest.mark.parametrize(("rows", "vocab"), [(24, 128256), (12, 1000), (12, 33), (6, 7)])
@pytest.mark.parametrize("candidates", [None, 0], ids=["candidates", "whole-row"])
def test_sample_with_grammar_masks(rows, vocab, candidates):
    """Rows with a grammar's mask (structured outputs) beside rows without: greedy and sampled
    rows whose masks allow one token, a few, or all of them. Every token is an allowed one
    the filters keep, greedy rows take the best allowed token (also one whose logit is far
    below the disallowed ones'), sampled rows the reference's draw up to a near-tie of race
    values, and the kernel leaves -inf on the disallowed logits, penalties after the mask."""
    rng = np.random.default_rng(zlib.crc32(f"mask{rows},{vocab}".encode()))
    logits = torch.randn(rows, vocab, device="cuda") * 3
    params = []
    for r in range(rows):
        p = random_params(rng, vocab)
        allowed = np.zeros(vocab, dtype=bool)
        kind = r % 4
        if kind == 0:  # one token, the row's lowest logit by far
            t = int(rng.integers(0, vocab))
            logits[r, t] = -1e30
            allowed[t] = True
        elif kind == 1:  # a few, spread over the row (word edges included)
            allowed[rng.choice(vocab, size=min(vocab, 5), replace=False)] = True
            allowed[[0, vocab - 1]] = True
        elif kind == 2:  # all of them
            allowed[:] = True
        else:  # none: an unconstrained row beside the others
            allowed = None
        # Each kind greedy in one group of four rows, sampled with the row's filters in the next.
        if (r // 4) % 2 == 0:
            p.update(temperature=0.0)
        elif p["temperature"] == 0.0 or p["top_k"] == 1:
            p.update(temperature=1.0, top_k=-1)
        params.append({**p, "allowed": allowed})
    host = logits.cpu().numpy()
    want = sample_reference(host, params)
    out = run_sample(logits, params, candidates)
    masked = host.copy()
    for row, p in zip(masked, params, strict=True):
        apply_mask(row, p)
        penalize(row, p)
    torch.testing.assert_close(
        logits.cpu(), torch.from_numpy(masked), rtol=1e-6, atol=1e-6, equal_nan=True
    )
    for r, ((token, race, kept), got, p) in enumerate(zip(want, out, params, strict=True)):
        allowed = p["allowed"]
        assert 0 <= got < vocab, f"row {r}: token {got}"
        assert allowed is None or allowed[got], f"row {r}: token {got} is not allowed"
        if race is None:
            assert got == token, f"row {r}: greedy {got} != {token}"
            continue
        assert kept[got], f"row {r}: token {got} is filtered out"
        if got != token:
            assert abs(race[got] - race[token]) <= 1e-5 * max(1.0, abs(race[token])), (
                f"row {r}: {got} (race {race[got]}) != {token} (race {race[token]})"
            )
    one = [r for r in range(rows) if r % 4 == 0]
    assert all(out[r] == np.flatnonzero(params[r]["allowed"])[0] for r in one)


def test_masked_sampling_follows_the_distribution_of_the_allowed_tokens():
    """20,000 draws of one row whose mask allows 6 tokens: frequencies within 5 sigma of the
    softmax over the allowed tokens alone (renormalized), none elsewhere."""
    vocab, n = 200, 20_000
    base = torch.randn(vocab) * 2
    rng = np.random.default_rng(1)
    allowed = np.zeros(vocab, dtype=bool)
    allowed[[3, 31, 32, 64, 100, 199]] = True
    p = {"temperature": 0.8, "top_k": -1, "top_p": 1.0, "min_p": 0.0}
    p.update(rep=1.0, pres=0.0, freq=0.0, penalties=[], allowed=allowed)
    params = [{**p, "key": int(k)} for k in rng.integers(0, 2**62, size=n)]
    out = run_sample(base.repeat(n, 1).cuda(), params)
    row = base.numpy().astype(np.float64)
    prob = np.where(allowed, np.exp((row - row[allowed].max()) / p["temperature"]), 0)
    prob /= prob.sum()
    freq = np.bincount(out, minlength=vocab) / n
    sigma = np.sqrt(prob * (1 - prob) / n)
    assert (freq[~allowed] == 0).all()
    assert (np.abs(freq - prob) <= 5 * sigma + 1e-3).all(), (freq[allowed], prob[allowed])


def test_sample_follows_the_distribution():
    """20,000 draws of one row with different keys: frequencies within 5 sigma of the
    renormalized probabilities of the kept tokens, and a key always gives the same token."""
    vocab, n = 64, 20_000
    base = torch.randn(vocab) * 2
    rng = np.random.default_rng(0)
    cases = [
        {"temperature": 1.0, "top_k": -1, "top_p": 1.0, "min_p": 0.0},
        {"temperature": 0.7, "top_k": 10, "top_p": 1.0, "min_p": 0.0},
        {"temperature": 1.3, "top_k": -1, "top_p": 0.6, "min_p": 0.0},
        {"temperature": 1.0, "top_k": 30, "top_p": 0.9, "min_p": 0.05},
    ]
    for case in cases:
        p = {**case, "rep": 1.0, "pres": 0.0, "freq": 0.0, "penalties": []}
        params = [{**p, "key": int(k)} for k in rng.integers(0, 2**62, size=n)]
        out = run_sample(base.repeat(n, 1).cuda(), params)
        again = run_sample(base.repeat(n, 1).cuda(), params)
        assert np.array_equal(out, again)
        row = base.numpy()
        m = row.max()
        floor = keep_floor(row, p, m, p["top_p"])
        prob = np.where(row >= floor, np.exp((row.astype(np.float64) - m) / p["temperature"]), 0)
        prob /= prob.sum()
        freq = np.bincount(out, minlength=vocab) / n
        sigma = np.sqrt(prob * (1 - prob) / n)
        assert (freq[prob == 0] == 0).all(), case
        assert (np.abs(freq - prob) <= 5 * sigma + 1e-3).all(), (case, freq, prob)


# --- attention -----------------------------------------------------------------------------

CONTEXT_LENS = [15, 16, 17, 255, 256, 257, 1000, 1]
DECODE_SHAPES = [
    Shape(128, 8, 8),  # MHA
    Shape(128, 32, 8),  # Llama-3-8B, GQA 4
    Shape(128, 32, 4),  # GQA 8
    Shape(128, 64, 4),  # GQA 16: a full 16-row tile
    Shape(64, 8, 8),
    Shape(64, 32, 8),
    Shape(64, 32, 4),
    Shape(64, 9, 3),  # SmolLM2, GQA 3
    Shape(64, 32, 1),  # GQA 32: two CTAs of 16 heads per kv head
]


class PagedCache(NamedTuple):
    k: object  # [num_blocks, KV_BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM]
    v: object
    block_tables: object  # [num_seqs, max_blocks_per_seq] int32


def make_paged_cache(context_lens, shape, dtype, layout="shuffled", v_offset=0.0) -> PagedCache:
    """Random K/V for sequences of the given lengths in blocks laid out as `layout` says:
    "shuffled" (non-contiguous), "contiguous" (in order) or "reversed" (descending ids). Every
    other slot, and the block that unused block-table entries point at, holds NaN, so a kernel
    reading past a sequence's keys produces NaN. `v_offset` is added to every value (real
    models' values share a common part, which makes the softmax's rounding show)."""
    bs, nkv, hd = shape.kv_block_size, shape.num_kv_heads, shape.head_dim
    blocks_needed = [math.ceil(n / bs) for n in context_lens]
    num_blocks = sum(blocks_needed) + 1
    order = {
        "shuffled": lambda: torch.randperm(num_blocks, device="cuda"),
        "contiguous": lambda: torch.arange(num_blocks, device="cuda"),
        "reversed": lambda: torch.arange(num_blocks - 1, -1, -1, device="cuda"),
    }[layout]().int()
    nan_block = order[-1].item()
    block_tables = torch.full(
        (len(context_lens), max(blocks_needed) + 1), nan_block, dtype=torch.int32, device="cuda"
    )
    k = nan_like((num_blocks, bs, nkv, hd), dtype)
    v = nan_like((num_blocks, bs, nkv, hd), dtype)
    taken = 0
    for s, (n, nb) in enumerate(zip(context_lens, blocks_needed, strict=True)):
        block_tables[s, :nb] = order[taken : taken + nb]
        taken += nb
        p = torch.arange(n, device="cuda")
        blocks = block_tables[s, p // bs].long()
        k[blocks, p % bs] = torch.randn(n, nkv, hd, device="cuda").to(dtype)
        v[blocks, p % bs] = (torch.randn(n, nkv, hd, device="cuda") + v_offset).to(dtype)
    return PagedCache(k, v, block_tables)


def attention_reference(qkv, cache: PagedCache, row_seq, row_pos, shape, scale):
    """fp64 causal attention of each row over keys 0..=row_pos of its sequence, read through
    the block table; zeros for rows with row_pos < 0. Returns [rows, NUM_HEADS * HEAD_DIM]."""
    hd, nh, bs = shape.head_dim, shape.num_heads, shape.kv_block_size
    rows = qkv.shape[0]
    q = qkv[:, : nh * hd].double().view(rows, nh, hd)
    out = torch.zeros(rows, nh, hd, dtype=torch.float64, device="cuda")
    for r, (seq, pos) in enumerate(zip(row_seq.tolist(), row_pos.tolist(), strict=True)):
        if pos < 0:
            continue
        p = torch.arange(pos + 1, device="cuda")
        blocks = cache.block_tables[seq, p // bs].long()
        k = cache.k[blocks, p % bs].double().repeat_interleave(shape.group, dim=1)
        v = cache.v[blocks, p % bs].double().repeat_interleave(shape.group, dim=1)
        probs = (torch.einsum("hd,phd->hp", q[r], k) * scale).softmax(dim=-1)
        out[r] = torch.einsum("hp,phd->hd", probs, v)
    return out.view(rows, nh * hd)


def decode_rows(context_lens, padding_rows):
    """Query rows for paged attention: each sequence's last position (a decode step), two
    earlier positions of it (any row must work), and padding rows (row_pos = -1), shuffled."""
    seqs, positions = [], []
    for s, n in enumerate(context_lens):
        for pos in {n - 1, n // 2, 0}:
            seqs.append(s)
            positions.append(pos)
    seqs += [0] * padding_rows
    positions += [-1] * padding_rows
    order = torch.randperm(len(seqs))
    row_seq = torch.tensor(seqs, dtype=torch.int32)[order].cuda()
    row_pos = torch.tensor(positions, dtype=torch.int32)[order].cuda()
    return row_seq, row_pos


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=str)
# (splits launched, fewest keys per split): one CTA per row; the few-rows rule (64 here, 32 in
# the engine since the K/V loads moved before the wait: the kernel takes it as an argument); the
# large-batch rule for uneven rows (256, so that rows of 255-257 keys use one or two splits) and
# for even ones (no row split, 1 << 24).
@pytest.mark.parametrize(
    "num_splits, min_keys", [(1, 64), (3, 64), (16, 64), (4, 256), (4, 1 << 24)]
)
@pytest.mark.parametrize("listed", [False, True], ids=["all-rows", "row-list"])
def test_decode_attention(dtype, shape, num_splits, min_keys, listed):
    """The engine's decode attention (tensor cores), whole or split over the keys and then
    combined, for every row kind: last positions, earlier ones, padding rows. With a row list
    (a step that mixes prompts and decoding sequences), only the listed rows are written."""
    t, nh, hd = DTYPES[dtype], shape.num_heads, shape.head_dim
    cache = make_paged_cache(CONTEXT_LENS, shape, t)
    row_seq, row_pos = decode_rows(CONTEXT_LENS, padding_rows=2)
    rows = row_seq.numel()
    row_list, launched = NULL, rows
    if listed:
        row_list = torch.randperm(rows, device="cuda")[: rows // 2].int()
        launched = row_list.numel()
    qkv = torch.randn(rows, shape.qkv_width, device="cuda").to(t)
    partial_out = nan_like((launched, num_splits, nh, hd), torch.float32)
    partial_lse = nan_like((launched, num_splits, nh), torch.float32)
    out = nan_like((rows, nh * hd), t)
    scale = hd**-0.5
    head_tiles = -(-shape.group // 16)
    table_width = torch.tensor([cache.block_tables.shape[1]], dtype=torch.int32, device="cuda")
    min_split_keys = torch.tensor([min_keys], dtype=torch.int32, device="cuda")
    run(
        "decode_attention",
        "decode_attention",
        (launched, shape.num_kv_heads * head_tiles, num_splits),
        32,
        qkv,
        cache.k,
        cache.v,
        out,
        row_seq,
        row_pos,
        cache.block_tables,
        table_width,
        i32(shape.qkv_width),
        f32(scale),
        partial_out,
        partial_lse,
        i32(num_splits),
        min_split_keys,
        row_list,
        *UNIT_KV_SCALES,
        dtype=dtype,
        shape=shape,
    )
    if num_splits > 1:
        # A row uses the splits its length allows (none shorter than min_keys keys); only those
        # are written. A row of one split writes its output itself, rows of several leave it to
        # the combine.
        rows_launched = row_list.long() if listed else torch.arange(rows, device="cuda")
        lens = (row_pos[rows_launched] + 1).clamp(min=0)
        used = ((lens + min_keys - 1) // min_keys).clamp(1, num_splits)
        split_ids = torch.arange(num_splits, device="cuda")
        written = (split_ids[None, :] < used[:, None]) & (used[:, None] > 1)
        assert not partial_lse[written].isnan().any() and not partial_out[written].isnan().any()
        assert partial_lse[~written].isnan().all(), "an unused split wrote its partial"
        alone = rows_launched[used == 1]
        assert out[rows_launched[used > 1]].isnan().all(), "a split row must wait for the combine"
        assert not out[alone].isnan().any(), "a row of one split must write its output"
        run(
            "decode_attention",
            "attention_combine",
            (launched, nh),
            hd,
            partial_out,
            partial_lse,
            out,
            i32(num_splits),
            min_split_keys,
            row_list,
            row_pos,
            dtype=dtype,
            shape=shape,
        )
    ref = attention_reference(qkv, cache, row_seq, row_pos, shape, scale)
    served = row_list.long() if listed else torch.arange(rows, device="cuda")
    assert rel_err(out[served], ref[served]) < ATTENTION_TOL[dtype]
    assert (out[served][row_pos[served] < 0] == 0).all()
    others = torch.ones(rows, dtype=torch.bool, device="cuda")
    others[served] = False
    assert out[others].isnan().all(), "a row outside the row list was written"


# (query_len, context_len) per sequence: whole prompts, chunked prefill and prefix-cache hits
# (context_len > query_len), tile (64) and block (16) boundaries.
PREFILL_SEQS = [(1, 1), (17, 17), (64, 64), (65, 100), (100, 1000), (130, 130), (16, 257), (3, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape",
    [
        Shape(128, 8, 8),
        Shape(128, 32, 8),
        Shape(128, 32, 4),
        Shape(64, 32, 8),
        Shape(64, 16, 16),
        Shape(64, 32, 4),
    ],
    ids=str,
)
def test_prefill_attention(dtype, shape):
    t = DTYPES[dtype]
    cache = make_paged_cache([c for _, c in PREFILL_SEQS], shape, t)
    row_seq, row_pos = prefill_rows(PREFILL_SEQS)
    rows = row_seq.numel()
    qkv = torch.randn(rows, shape.qkv_width, device="cuda").to(t)
    out = nan_like((rows, shape.num_heads * shape.head_dim), t)
    scale = shape.head_dim**-0.5

    run_prefill_attention(qkv, cache, out, PREFILL_SEQS, scale, dtype, shape)
    ref = attention_reference(qkv, cache, row_seq, row_pos, shape, scale)
    assert rel_err(out, ref) < ATTENTION_TOL[dtype]


def prefill_rows(seqs):
    """(row_seq, row_pos) of the query rows of `seqs` ((query_len, context_len) each)."""
    row_seq = [s for s, (q, _) in enumerate(seqs) for _ in range(q)]
    row_pos = [c - q + j for q, c in seqs for j in range(q)]
    return (torch.tensor(v, dtype=torch.int32, device="cuda") for v in (row_seq, row_pos))


def run_prefill_attention(
    qkv, cache: PagedCache, out, seqs, scale, dtype, shape, kv_scales=None, defines=()
):
    """Launches prefill_attention over `seqs` ((query_len, context_len) per sequence, their
    rows end to end in `qkv`): one CTA per 64-row tile and head, the tiles in shuffled order.
    `kv_scales`: an FP8 cache's (k, v) scales (compiled with `defines` KV_FP8)."""
    kv_scales = UNIT_KV_SCALES if kv_scales is None else (f32(kv_scales[0]), f32(kv_scales[1]))

    def ints(values):
        return torch.tensor(values, dtype=torch.int32, device="cuda")

    query_lens = [q for q, _ in seqs]
    starts = [sum(query_lens[:i]) for i in range(len(query_lens))]
    tiles = [(z, first) for z, q in enumerate(query_lens) for first in range(0, q, 64)]
    tiles = [tiles[i] for i in torch.randperm(len(tiles)).tolist()]
    run(
        "prefill_attention",
        "prefill_attention",
        (len(tiles), shape.num_heads),
        128,
        qkv,
        cache.k,
        cache.v,
        out,
        ints(starts),
        ints(query_lens),
        ints([c for _, c in seqs]),
        cache.block_tables,
        i32(cache.block_tables.shape[1]),
        i32(shape.qkv_width),
        f32(scale),
        ints([x for tile in tiles for x in tile]),
        *kv_scales,
        dtype=dtype,
        shape=shape,
        defines=defines,
    )


# --- attention over long rows --------------------------------------------------------------

# Keys of the long sequences: past 16k, and not a multiple of the block (16), the prefill tile
# (64) or a decode split.
LONG_CONTEXT = 16411
LONG_SHAPES = [
    Shape(64, 10, 10),  # MHA, 10 heads
    Shape(64, 14, 2),  # GQA 7 (Qwen2-0.5B)
    Shape(128, 16, 2),  # GQA 8, head_dim 128
    Shape(128, 32, 8),  # Llama-3-8B
]
# Inputs: plain N(0, 1) (flat attention over thousands of keys), and values with a common
# offset under queries three times larger (peaked attention over values that do not average
# out), which is what hidden states of real models look like.
LONG_DATA = {"plain": (1.0, 0.0), "peaked_offset": (3.0, 2.0)}
# Rows checked against the reference (the reference is a loop over rows): a spread over every
# position of the sequence, with the last rows of each kind.
LONG_CHECKED_ROWS = 96


def long_attention_reference(qkv, cache: PagedCache, row_seq, row_pos, shape, scale, rows):
    """fp64 causal attention of the listed `rows` (as attention_reference, GQA without copies
    of K and V, so that rows of 16k keys fit). Returns [len(rows), NUM_HEADS * HEAD_DIM]."""
    hd, nh, nkv, bs = shape.head_dim, shape.num_heads, shape.num_kv_heads, shape.kv_block_size
    out = torch.zeros(len(rows), nkv, shape.group, hd, dtype=torch.float64, device="cuda")
    for i, r in enumerate(rows):
        seq, pos = int(row_seq[r]), int(row_pos[r])
        p = torch.arange(pos + 1, device="cuda")
        blocks = cache.block_tables[seq, p // bs].long()
        k = cache.k[blocks, p % bs].double()  # [keys, nkv, hd]
        v = cache.v[blocks, p % bs].double()
        q = qkv[r, : nh * hd].double().view(nkv, shape.group, hd)
        probs = (torch.einsum("kgd,pkd->kgp", q, k) * scale).softmax(dim=-1)
        out[i] = torch.einsum("kgp,pkd->kgd", probs, v)
    return out.view(len(rows), nh * hd)


def long_rows_checked(row_pos, first_rows=()):
    """Row indices to check: LONG_CHECKED_ROWS spread evenly, the given ones, and the last."""
    n = row_pos.numel()
    picked = set(torch.linspace(0, n - 1, LONG_CHECKED_ROWS).long().tolist()) | set(first_rows)
    return sorted(picked | {n - 1})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LONG_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["shuffled", "contiguous", "reversed"])
@pytest.mark.parametrize("data", sorted(LONG_DATA))
def test_prefill_attention_long_rows(dtype, shape, layout, data):
    """Prefill attention over 16k keys: a whole 16,411-token prompt, and a 1,000-row chunk at
    the end of another one (chunked prefill / prefix hit), against fp64 on rows spread over
    every position."""
    t = DTYPES[dtype]
    q_scale, v_offset = LONG_DATA[data]
    seqs = [(LONG_CONTEXT, LONG_CONTEXT), (1000, LONG_CONTEXT - 7)]
    query_lens = [q for q, _ in seqs]
    cache = make_paged_cache([c for _, c in seqs], shape, t, layout, v_offset)
    rows = sum(query_lens)
    row_seq = torch.tensor([s for s, q in enumerate(query_lens) for _ in range(q)])
    row_pos = torch.tensor([c - q + j for q, c in seqs for j in range(q)])
    qkv = (torch.randn(rows, shape.qkv_width, device="cuda") * q_scale).to(t)
    out = nan_like((rows, shape.num_heads * shape.head_dim), t)
    scale = shape.head_dim**-0.5
    run_prefill_attention(qkv, cache, out, seqs, scale, dtype, shape)
    assert torch.isfinite(out).all(), "some outputs were not written (NaN poison left)"
    checked = long_rows_checked(row_pos, first_rows=[query_lens[0] - 1, query_lens[0]])
    ref = long_attention_reference(qkv, cache, row_seq, row_pos, shape, scale, checked)
    got = out[checked]
    # Row by row, so that a fault in long rows is not averaged away by short ones.
    for i, r in enumerate(checked):
        err = rel_err(got[i], ref[i])
        assert err < ATTENTION_TOL[dtype], (f"row {r} at position {int(row_pos[r])}", err)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LONG_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["shuffled", "contiguous", "reversed"])
@pytest.mark.parametrize("data", sorted(LONG_DATA))
# One CTA per row; the engine's few-rows split (many splits of >= 32 keys); the large-batch one.
@pytest.mark.parametrize("num_splits, min_keys", [(1, 32), (104, 32), (4, 256)])
def test_decode_attention_long_rows(dtype, shape, layout, data, num_splits, min_keys):
    """Decode attention over 16k keys (last positions of two long sequences and earlier ones),
    whole or split and combined, against fp64."""
    t, nh, hd = DTYPES[dtype], shape.num_heads, shape.head_dim
    q_scale, v_offset = LONG_DATA[data]
    context_lens = [LONG_CONTEXT, LONG_CONTEXT - 1000, 8195]
    cache = make_paged_cache(context_lens, shape, t, layout, v_offset)
    row_seq, row_pos = decode_rows(context_lens, padding_rows=1)
    rows = row_seq.numel()
    qkv = (torch.randn(rows, shape.qkv_width, device="cuda") * q_scale).to(t)
    partial_out = nan_like((rows, num_splits, nh, hd), torch.float32)
    partial_lse = nan_like((rows, num_splits, nh), torch.float32)
    out = nan_like((rows, nh * hd), t)
    scale = hd**-0.5
    table_width = torch.tensor([cache.block_tables.shape[1]], dtype=torch.int32, device="cuda")
    min_split_keys = torch.tensor([min_keys], dtype=torch.int32, device="cuda")
    grid = (rows, shape.num_kv_heads * -(-shape.group // 16), num_splits)
    args = (qkv, cache.k, cache.v, out, row_seq, row_pos, cache.block_tables, table_width)
    run(
        "decode_attention",
        "decode_attention",
        grid,
        32,
        *args,
        i32(shape.qkv_width),
        f32(scale),
        partial_out,
        partial_lse,
        i32(num_splits),
        min_split_keys,
        NULL,
        *UNIT_KV_SCALES,
        dtype=dtype,
        shape=shape,
    )
    if num_splits > 1:
        run(
            "decode_attention",
            "attention_combine",
            (rows, nh),
            hd,
            partial_out,
            partial_lse,
            out,
            i32(num_splits),
            min_split_keys,
            NULL,
            row_pos,
            dtype=dtype,
            shape=shape,
        )
    live = [r for r in range(rows) if int(row_pos[r]) >= 0]
    ref = long_attention_reference(qkv, cache, row_seq, row_pos, shape, scale, live)
    for i, r in enumerate(live):
        err = rel_err(out[r], ref[i])
        assert err < ATTENTION_TOL[dtype], (f"row at position {int(row_pos[r])}", err)
    assert (out[row_pos < 0] == 0).all()
