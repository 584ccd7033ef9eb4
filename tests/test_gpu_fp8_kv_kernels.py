"""The KV-cache kernels compiled for an FP8 (e4m3) cache (`KV_FP8`), on the GPU (`pytest -m
gpu`), launched as test_gpu_kernels.py launches them: fresh random inputs, outputs and unused
cache slots poisoned (NaN, or the e4m3 NaN code 0x7f).

- rope_cache_write: the cached codes equal torch's `(x / scale).clamp(+-448).to(float8_e4m3fn)`
  of the rotated (rounded) k and of v, bit for bit (both divide in fp32 and round to nearest
  even); q and k in the activations as with a cache of T.
- decode_attention (whole and split + combined, with a row list) and prefill_attention (whole
  prompts, chunks after a cached prefix, 16k-key rows): against fp64 attention over the
  dequantized cache (codes times the scales, exact in T), within the bounds of a cache of T
  (the kernels decode the codes exactly and fold the scales into the softmax scale and the
  output).
"""

from __future__ import annotations

import zlib

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
pytest.importorskip("cuda.core")
pytest.importorskip("infire.kernels")

from test_gpu_kernels import (  # noqa: E402  (after the importorskips, as that module needs)
    ATTENTION_TOL,
    CONTEXT_LENS,
    DTYPES,
    LONG_CONTEXT,
    LONG_DATA,
    NULL,
    PREFILL_SEQS,
    REL_TOL,
    PagedCache,
    Shape,
    attention_reference,
    decode_rows,
    f32,
    i32,
    long_attention_reference,
    long_rows_checked,
    make_paged_cache,
    nan_like,
    prefill_rows,
    rel_err,
    rope_reference,
    run,
    run_prefill_attention,
)

FP8 = (("KV_FP8", 1),)
E4M3_MAX = 448.0
# Per-layer scales as checkpoints store them (a cached value is its code's value times the
# scale): random N(0, 1) keys and values reach ~5, so 0.02 puts them near the top of e4m3's
# range (and saturates a few), 1.0 (vLLM's default) low in it.
SCALES = [(0.02, 0.015), (1.0, 1.0)]


@pytest.fixture(autouse=True)
def _cuda_and_seed(request):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def codes_of(x: torch.Tensor, scale: float) -> torch.Tensor:
    """e4m3 codes (uint8) of x / scale, saturating; NaN (the poison) stays NaN (0x7f)."""
    xf = x.float()
    # A tensor divisor: torch divides by a Python scalar through its reciprocal.
    q = (xf / torch.full_like(xf, scale)).clamp(-E4M3_MAX, E4M3_MAX)
    return q.to(torch.float8_e4m3fn).view(torch.uint8)


def dequantized(codes: torch.Tensor, scale: float, dtype) -> torch.Tensor:
    return (codes.view(torch.float8_e4m3fn).float() * scale).to(dtype)


def fp8_cache(cache: PagedCache, scales, dtype) -> tuple[PagedCache, PagedCache]:
    """(the cache as codes, its dequantized copy in `dtype` for the reference)."""
    ks, vs = scales
    k, v = codes_of(cache.k, ks), codes_of(cache.v, vs)
    ref = PagedCache(dequantized(k, ks, dtype), dequantized(v, vs, dtype), cache.block_tables)
    return PagedCache(k, v, cache.block_tables), ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [Shape(128, 32, 8), Shape(64, 9, 3)], ids=str)
@pytest.mark.parametrize("rows", [1, 17, 100])
@pytest.mark.parametrize("scales", SCALES, ids=str)
def test_rope_cache_write_fp8(dtype, shape, rows, scales):
    t, hd, nh, nkv = DTYPES[dtype], shape.head_dim, shape.num_heads, shape.num_kv_heads
    bs, num_blocks = shape.kv_block_size, 16
    qkv = torch.randn(rows, shape.qkv_width, device="cuda").to(t)
    positions = torch.randint(0, 131072, (rows,), dtype=torch.int32, device="cuda")
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device="cuda").float() / hd))
    slots = torch.randperm(num_blocks * bs, device="cuda")[:rows].int()
    slots[rows // 2] = -1  # a padding row: rotated, but not cached
    k_cache = torch.full((num_blocks, bs, nkv, hd), 0x7F, dtype=torch.uint8, device="cuda")
    v_cache = k_cache.clone()
    before = qkv.clone()
    args = (qkv, positions, slots, inv_freq, k_cache, v_cache, i32(shape.qkv_width))
    run(
        "rope_cache_write",
        "rope_cache_write",
        rows,
        128,
        *args,
        f32(scales[0]),
        f32(scales[1]),
        dtype=dtype,
        shape=shape,
        defines=FP8,
    )
    k = qkv[:, nh * hd : (nh + nkv) * hd]
    k_ref = rope_reference(
        before[:, nh * hd : (nh + nkv) * hd].view(rows, nkv, hd), positions, inv_freq
    )
    assert rel_err(k.view(rows, nkv, hd), k_ref) < REL_TOL[dtype]
    cached = slots >= 0
    flat_k, flat_v = k_cache.view(-1, nkv * hd), v_cache.view(-1, nkv * hd)
    want_k = codes_of(k[cached], scales[0])
    want_v = codes_of(before[cached, (nh + nkv) * hd :], scales[1])
    assert torch.equal(flat_k[slots[cached].long()], want_k)
    assert torch.equal(flat_v[slots[cached].long()], want_v)
    untouched = torch.ones(flat_k.shape[0], dtype=torch.bool, device="cuda")
    untouched[slots[cached].long()] = False
    assert (flat_k[untouched] == 0x7F).all() and (flat_v[untouched] == 0x7F).all()


def run_decode(qkv, cache: PagedCache, row_seq, row_pos, shape, dtype, scales, splits, min_keys):
    """decode_attention (and its combine when split) over every row, FP8 cache; the output."""
    rows, nh, hd = qkv.shape[0], shape.num_heads, shape.head_dim
    partial_out = nan_like((rows, splits, nh, hd), torch.float32)
    partial_lse = nan_like((rows, splits, nh), torch.float32)
    out = nan_like((rows, nh * hd), DTYPES[dtype])
    table_width = torch.tensor([cache.block_tables.shape[1]], dtype=torch.int32, device="cuda")
    min_split_keys = torch.tensor([min_keys], dtype=torch.int32, device="cuda")
    grid = (rows, shape.num_kv_heads * -(-shape.group // 16), splits)
    args = (qkv, cache.k, cache.v, out, row_seq, row_pos, cache.block_tables, table_width)
    tail = (partial_out, partial_lse, i32(splits), min_split_keys, NULL)
    run(
        "decode_attention",
        "decode_attention",
        grid,
        32,
        *args,
        i32(shape.qkv_width),
        f32(hd**-0.5),
        *tail,
        f32(scales[0]),
        f32(scales[1]),
        dtype=dtype,
        shape=shape,
        defines=FP8,
    )
    if splits > 1:
        combine = (partial_out, partial_lse, out, i32(splits), min_split_keys, NULL, row_pos)
        run(
            "decode_attention",
            "attention_combine",
            (rows, nh),
            hd,
            *combine,
            dtype=dtype,
            shape=shape,
            defines=FP8,
        )
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", [Shape(128, 32, 8), Shape(64, 9, 3), Shape(64, 32, 1), Shape(128, 8, 8)], ids=str
)
@pytest.mark.parametrize("num_splits, min_keys", [(1, 64), (16, 64), (4, 256)])
@pytest.mark.parametrize("scales", SCALES, ids=str)
def test_decode_attention_fp8(dtype, shape, num_splits, min_keys, scales):
    t = DTYPES[dtype]
    cache, ref_cache = fp8_cache(make_paged_cache(CONTEXT_LENS, shape, t), scales, t)
    row_seq, row_pos = decode_rows(CONTEXT_LENS, padding_rows=2)
    qkv = torch.randn(row_seq.numel(), shape.qkv_width, device="cuda").to(t)
    out = run_decode(qkv, cache, row_seq, row_pos, shape, dtype, scales, num_splits, min_keys)
    ref = attention_reference(qkv, ref_cache, row_seq, row_pos, shape, shape.head_dim**-0.5)
    assert rel_err(out, ref) < ATTENTION_TOL[dtype]
    assert (out[row_pos < 0] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [Shape(128, 32, 8), Shape(64, 9, 3), Shape(64, 16, 16)], ids=str)
@pytest.mark.parametrize("scales", SCALES, ids=str)
def test_prefill_attention_fp8(dtype, shape, scales):
    t = DTYPES[dtype]
    cache_t = make_paged_cache([c for _, c in PREFILL_SEQS], shape, t)
    cache, ref_cache = fp8_cache(cache_t, scales, t)
    row_seq, row_pos = prefill_rows(PREFILL_SEQS)
    rows = row_seq.numel()
    qkv = torch.randn(rows, shape.qkv_width, device="cuda").to(t)
    out = nan_like((rows, shape.num_heads * shape.head_dim), t)
    scale = shape.head_dim**-0.5
    run_prefill_attention(qkv, cache, out, PREFILL_SEQS, scale, dtype, shape, scales, FP8)
    ref = attention_reference(qkv, ref_cache, row_seq, row_pos, shape, scale)
    assert rel_err(out, ref) < ATTENTION_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [Shape(128, 32, 8), Shape(64, 14, 2)], ids=str)
def test_attention_fp8_long_rows(dtype, shape):
    """Prefill (a whole 16,411-token prompt and a 1,000-row chunk after a prefix) and split
    decode over 16k keys of an FP8 cache, row by row against fp64."""
    t = DTYPES[dtype]
    q_scale, v_offset = LONG_DATA["peaked_offset"]
    scales = SCALES[0]
    seqs = [(LONG_CONTEXT, LONG_CONTEXT), (1000, LONG_CONTEXT - 7)]
    query_lens = [q for q, _ in seqs]
    cache_t = make_paged_cache([c for _, c in seqs], shape, t, "shuffled", v_offset)
    cache, ref_cache = fp8_cache(cache_t, scales, t)
    rows = sum(query_lens)
    row_seq = torch.tensor([s for s, q in enumerate(query_lens) for _ in range(q)])
    row_pos = torch.tensor([c - q + j for q, c in seqs for j in range(q)])
    qkv = (torch.randn(rows, shape.qkv_width, device="cuda") * q_scale).to(t)
    out = nan_like((rows, shape.num_heads * shape.head_dim), t)
    scale = shape.head_dim**-0.5
    run_prefill_attention(qkv, cache, out, seqs, scale, dtype, shape, scales, FP8)
    checked = long_rows_checked(row_pos, first_rows=[query_lens[0] - 1, query_lens[0]])
    ref = long_attention_reference(qkv, ref_cache, row_seq, row_pos, shape, scale, checked)
    for i, r in enumerate(checked):
        err = rel_err(out[checked][i], ref[i])
        assert err < ATTENTION_TOL[dtype], (f"prefill row {r} at {int(row_pos[r])}", err)

    # Decode rows of the same cache: the last positions and a spread, split as the engine's
    # few-rows rule does (many splits of >= 32 keys).
    d_seq, d_pos = decode_rows([LONG_CONTEXT, LONG_CONTEXT - 7], padding_rows=1)
    d_qkv = (torch.randn(d_seq.numel(), shape.qkv_width, device="cuda") * q_scale).to(t)
    out = run_decode(d_qkv, cache, d_seq, d_pos, shape, dtype, scales, 104, 32)
    served = [r for r in range(d_seq.numel()) if int(d_pos[r]) >= 0]
    ref = long_attention_reference(d_qkv, ref_cache, d_seq, d_pos, shape, scale, served)
    for i, r in enumerate(served):
        err = rel_err(out[r], ref[i])
        assert err < ATTENTION_TOL[dtype], (f"decode row {r} at {int(d_pos[r])}", err)
