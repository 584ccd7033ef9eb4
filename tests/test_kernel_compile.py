"""Every CUDA kernel compiles with NVRTC, as the engine compiles it, for Hopper (sm_90a) and
Ampere (sm_80), bf16 and f16, and several model shapes; those that need a newer GPU
(gemv_fp8_mma: sm_89) for it, and fail with a clear error for older ones. Needs no GPU: NVRTC
and the CUDA headers come from the `nvidia-cuda-nvrtc` and `nvidia-cuda-runtime` wheels."""

import re

import pytest

from infire import kernels

KERNEL_FILES = {
    "embedding",
    "rms_norm",
    "qk_norm",
    "rope_cache_write",
    "silu_mul",
    "gather_rows",
    "sampling",
    "decode_attention",
    "prefill_attention",
    "fp8_fused",
    "gemv",
    "gemv_fp8",
    "gemv_fp8_mma",
}

# gemv.cu's entry points come from a macro: gemv_<input>_<output>_m<rows>.
GEMV_ENTRIES = [
    f"gemv_{variant}_m1"
    for variant in (
        "plain_store",
        "plain_f32",
        "plain_add",
        "norm_store",
        "norm_f32",
        "norm_silu",
    )
]

# gemv_fp8_mma.cu's: gemv_<input>_<output>_fp8mma, the same variants.
GEMV_FP8_MMA_ENTRIES = [e.replace("_m1", "_fp8mma") for e in GEMV_ENTRIES]

# gemv_fp8.cu's: gemv_<input>_<output>_fp8v2_m1.
GEMV_FP8_V2_ENTRIES = [e.replace("_m1", "_fp8v2_m1") for e in GEMV_ENTRIES]

# Kernel files that need a newer GPU than sm_80, and the oldest arch they compile for.
MIN_ARCH = {"gemv_fp8_mma": "sm_89"}

# (HEAD_DIM, NUM_HEADS, NUM_KV_HEADS): Llama-3-8B (GQA 4), SmolLM2-135M (head_dim 64, GQA 3),
# MHA, GQA 8 with head_dim 64, GQA 16, and GQA 32 (decode attention's two head tiles).
SHAPES = [(128, 32, 8), (64, 9, 3), (128, 32, 32), (64, 32, 4), (128, 64, 4), (64, 32, 1)]

# Kernels that read global memory before their wait: decode attention gathers the K/V that
# earlier steps wrote while the RoPE kernel before it runs (decode_attention.cu); the FP8 GEMVs
# read their weights' scales, written once at load.
EARLY_READERS = (
    {"decode_attention"}
    | {e.replace("_m1", "_fp8_m1") for e in GEMV_ENTRIES}
    | set(GEMV_FP8_MMA_ENTRIES)
    | set(GEMV_FP8_V2_ENTRIES)
)

ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)')


def test_every_kernel_file_is_embedded():
    assert KERNEL_FILES <= set(kernels.names())


def kernel_functions(name: str) -> list[str]:
    if name == "gemv":
        return GEMV_ENTRIES
    if name == "gemv_fp8_mma":
        return GEMV_FP8_MMA_ENTRIES
    if name == "gemv_fp8":
        return GEMV_FP8_V2_ENTRIES
    functions = ENTRY.findall(kernels.source(name))
    assert functions, f'no extern "C" __global__ function in {name}'
    return functions


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "hd{}-h{}-kv{}".format(*s))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
@pytest.mark.parametrize("name", sorted(kernels.names()))
def test_kernel_compiles(name, arch, dtype, shape):
    if name in MIN_ARCH and arch == "sm_80":
        with pytest.raises(Exception, match=f"needs {MIN_ARCH[name]} or later"):
            kernels.compile(name, arch=arch, defines=shape_defines(shape), dtype=dtype)
        return
    check_compiles(name, arch, dtype, shape_defines(shape))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("arch", ["sm_89", "sm_86"])
def test_fp8_mma_gemv_compiles_from_sm_89_on(arch, dtype):
    """The e4m3 conversion exists from sm_89 (Ada) on; Ampere gets the file's own error."""
    defines = shape_defines(SHAPES[0])
    if arch == "sm_86":
        with pytest.raises(Exception, match="needs sm_89 or later"):
            kernels.compile("gemv_fp8_mma", arch=arch, defines=defines, dtype=dtype)
        return
    check_compiles("gemv_fp8_mma", arch, dtype, defines)


def shape_defines(shape) -> dict:
    head_dim, heads, kv_heads = shape
    return {"HEAD_DIM": head_dim, "NUM_HEADS": heads, "NUM_KV_HEADS": kv_heads, "KV_BLOCK_SIZE": 16}


def check_compiles(name, arch, dtype, defines):
    cubin = kernels.compile(name, arch=arch, defines=defines, dtype=dtype, target="cubin")
    assert isinstance(cubin, bytes) and cubin[:4] == b"\x7fELF"

    ptx = kernels.compile(name, arch=arch, defines=defines, dtype=dtype, target="ptx")
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    for function in kernel_functions(name):
        assert re.search(rf"\.entry\s+{function}\s*\(", ptx), f"{function} missing from the PTX"
    if arch == "sm_90a":
        # Every kernel waits for the kernel before it (pdl_begin in common.cuh): the runtime
        # launches them all with programmatic dependent launch on Hopper. Nothing touches
        # global memory before the wait, except the GEMV's streaming loads of its weights
        # (`ld.global.nc.L1::no_allocate`), which no kernel writes, and the reads of the
        # kernels in EARLY_READERS, whose files say why each read before the wait is safe;
        # those still write nothing before it.
        for body in re.split(r"\.entry\s+", ptx)[1:]:
            function = body.split("(", 1)[0]
            assert "griddepcontrol.wait" in body, f"{function} never calls pdl_begin()"
            before = body.split("griddepcontrol.wait", 1)[0]
            reads = "" if function in EARLY_READERS else r"ld\.global|cp\.async|"
            touches = rf"\b({reads}st\.global|atom|red)\."
            early = [
                line.strip()
                for line in before.splitlines()
                if re.search(touches, line) and "ld.global.nc.L1::no_allocate" not in line
            ]
            assert not early, f"{function} touches memory before pdl_begin(): {early[:3]}"


@pytest.mark.parametrize(
    "shape", [(128, 32, 8), (64, 9, 3)], ids=lambda s: "hd{}-h{}-kv{}".format(*s)
)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
@pytest.mark.parametrize("name", ["rope_cache_write", "decode_attention", "prefill_attention"])
def test_fp8_kv_cache_kernels_compile(name, arch, dtype, shape):
    """The kernels that write and read the KV cache, for an e4m3 cache (KV_FP8)."""
    check_compiles(name, arch, dtype, {**shape_defines(shape), "KV_FP8": 1})


# Compile-time knobs the GPU tests and benches set: each must still compile.
KNOBS = [
    ("sampling", {"SAMPLE_CANDIDATES": 0}),
    ("decode_attention", {"DECODE_STAGES": 2}),
    ("decode_attention", {"DECODE_STAGES": 4}),
]


@pytest.mark.parametrize(("name", "knob"), KNOBS, ids=lambda k: str(k))
def test_kernel_knobs_compile(name, knob):
    defines = {"HEAD_DIM": 128, "NUM_HEADS": 32, "NUM_KV_HEADS": 8, "KV_BLOCK_SIZE": 16, **knob}
    cubin = kernels.compile(name, arch="sm_90a", defines=defines, target="cubin")
    assert cubin[:4] == b"\x7fELF"
