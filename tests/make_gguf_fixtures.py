"""Writes the GGUF / ggml fixtures that the Rust weight readers are tested against.

The expected values come from code nobody here wrote: gguf-py's numpy dequantization
(`gguf.quants.dequantize`), gguf-py's `GGUFWriter`, and transformers' reverse permutation of
llama Q/K rows (`LlamaTensorProcessor` in `transformers/modeling_gguf_pytorch_utils.py`; a copy of
its three lines is used when transformers is not installed).

Regenerate (from the repository root; needs `pip install gguf numpy`, optionally transformers):

    python3 tests/make_gguf_fixtures.py

Outputs, under tests/fixtures/ (fixed seed, so reruns with the same gguf-py give the same bytes):

- `dequant_<TYPE>.bin`, one per ggml type: magic `b"GGMLFIX1"`, u32 ggml type id,
  u32 element count, u32 byte count, the raw blocks, then the expected f32 values (all
  little-endian). Scales are random finite f16 values; quantized bits are random bytes.
- `tiny_llama.gguf`: a small `llama` GGUF written by `GGUFWriter` holding tensors of several types
  and metadata of several value types.
- `tiny_llama.expected.bin`: the tensors of `tiny_llama.gguf` as transformers would load them
  (Hugging Face names and shapes, Q/K rows un-permuted). Repeated records of: u32 name length,
  name bytes, u32 rank, u64 dims (row-major order), then the f32 values.
"""

import struct
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RNG = np.random.default_rng(20250207)

# Byte offsets of the f16 scale fields inside one block (ggml-common.h). Everything else in a
# block is packed integers, for which any byte is valid.
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def random_f16(n: int) -> np.ndarray:
    """Finite f16 values spanning normal and subnormal magnitudes, both signs."""
    mags = np.exp2(RNG.uniform(-20.0, 4.0, n))
    return (mags * RNG.choice([-1.0, 1.0], n)).astype(np.float16)


def random_blocks(qtype: T, n_elements: int) -> np.ndarray:
    """Raw bytes of `n_elements` elements of `qtype`, as a flat uint8 array."""
    if qtype == T.F32:
        return RNG.standard_normal(n_elements).astype(np.float32).view(np.uint8)
    if qtype in (T.F16, T.BF16):
        bits = RNG.integers(0, 1 << 16, n_elements, dtype=np.uint16)
        # No NaNs: hardware f16 conversion may quiet a signalling NaN's payload. Infinities,
        # subnormals and signed zeros stay in.
        exp_mask, mant_mask = (0x7C00, 0x03FF) if qtype == T.F16 else (0x7F80, 0x007F)
        nan = ((bits & exp_mask) == exp_mask) & ((bits & mant_mask) != 0)
        bits[nan] &= np.uint16(~mant_mask & 0xFFFF)
        return bits.view(np.uint8)
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = n_elements // block
    raw = RNG.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        raw[:, at : at + 2] = random_f16(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def write_dequant_fixture(qtype: T, n_elements: int) -> None:
    raw = random_blocks(qtype, n_elements)
    expected = dequantize(raw, qtype).astype(np.float32).reshape(-1)
    assert expected.size == n_elements
    with open(FIXTURES / f"dequant_{qtype.name}.bin", "wb") as f:
        f.write(b"GGMLFIX1")
        f.write(struct.pack("<III", int(qtype), n_elements, raw.size))
        f.write(raw.tobytes())
        f.write(expected.astype("<f4").tobytes())


def reverse_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' `TensorProcessor._reverse_permute_weights` (used only as a fallback)."""
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


def llama_processor(n_head: int, n_head_kv: int):
    """Returns f(weights, gguf_name) -> weights with Q/K rows un-permuted as transformers does."""
    try:
        from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    except ImportError:

        def process(w, name):
            if ".attn_q." in name:
                return reverse_permute(w, n_head)
            if ".attn_k." in name:
                return reverse_permute(w, n_head_kv)
            return w

        return process
    p = LlamaTensorProcessor(
        config={"num_attention_heads": n_head, "num_key_value_heads": n_head_kv}
    )
    return lambda w, name: p.process(weights=w, name=name).weights


# (GGUF name, Hugging Face name, ggml type, row-major shape)
TINY_TENSORS = [
    ("token_embd.weight", "model.embed_tokens.weight", T.BF16, (10, 256)),
    ("output_norm.weight", "model.norm.weight", T.F32, (256,)),
    ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight", T.F16, (256,)),
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", T.Q8_0, (32, 256)),
    ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", T.Q4_K, (16, 256)),
    ("blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias", T.F32, (16,)),
    ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", T.Q4_1, (16, 256)),
    ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", T.Q6_K, (4, 256)),
    ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", T.Q4_0, (4, 256)),
    ("rope_freqs.weight", "rope_freqs.weight", T.F32, (4,)),
]


def write_tiny_gguf() -> None:
    n_head, n_head_kv = 4, 2
    path = FIXTURES / "tiny_llama.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny llama fixture")
    w.add_block_count(1)
    w.add_embedding_length(256)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "héllo", "wörld"])
    w.add_array("tokenizer.ggml.token_type", [3, 3, 1, 1])
    w.add_int64("fixture.negative", -5)
    w.add_float64("fixture.pi", 3.141592653589793)
    process = llama_processor(n_head, n_head_kv)
    records = []
    for gguf_name, hf_name, qtype, shape in TINY_TENSORS:
        n = int(np.prod(shape))
        raw = random_blocks(qtype, n)
        values = dequantize(raw, qtype).astype(np.float32).reshape(shape)
        values = process(values, gguf_name)
        if qtype in (T.F32, T.F16):
            tensor = raw.view(np.float32 if qtype == T.F32 else np.float16).reshape(shape)
            w.add_tensor(gguf_name, tensor)
        else:
            row_bytes = raw.size // (n // shape[-1])
            w.add_tensor(gguf_name, raw.reshape(*shape[:-1], row_bytes), raw_dtype=qtype)
        records.append((hf_name, shape, values))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(FIXTURES / "tiny_llama.expected.bin", "wb") as f:
        for name, shape, values in records:
            f.write(struct.pack("<I", len(name.encode())) + name.encode())
            f.write(struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape))
            f.write(np.ascontiguousarray(values, dtype="<f4").tobytes())


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for qtype in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
        write_dequant_fixture(qtype, 1024)
    for qtype in [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
        write_dequant_fixture(qtype, 2048)
    write_tiny_gguf()
    total = sum(p.stat().st_size for p in FIXTURES.iterdir())
    print(f"wrote {len(list(FIXTURES.iterdir()))} files, {total} bytes, under {FIXTURES}")


if __name__ == "__main__":
    main()
