"""FP8 checkpoints written from a bf16 model, in each format Infire loads, with numpy alone.

`write_fp8_pair` quantizes every projection (q/k/v/o, gate/up/down) of a model to e4m3fn codes
with scales laid out as the format stores them, and writes two directories: the FP8 checkpoint
(`quantization_config`, F8_E4M3 weights, scale tensors) and its reference, the same weights
dequantized back and saved as a plain bf16 checkpoint.

Scales are rounded up to 4 significant bits. A code's value has 4 significant bits too, so
every dequantized weight (code value x scale) has at most 8, which bf16 holds exactly: the
reference checkpoint's weights are exactly the FP8 checkpoint's, and an engine computing in
f32 computes the same numbers from both.

The formats (FORMATS): compressed-tensors per tensor with static activation scales, per output
channel with dynamic per-token activations and `ignore: ["lm_head"]`, and `quant_method: "fp8"`
with 128 x 128 blocks (`weight_scale_inv`), as Qwen3's FP8 releases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from default_model_hf import bf16_bytes, bf16_round, write_hf_dir

E4M3_MAX = 448.0
PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
BLOCK = 128


def e4m3_values() -> np.ndarray:
    """The value of each of the 256 codes (NaN for 0x7f and 0xff), f32."""
    codes = np.arange(256)
    exponent, mantissa = (codes >> 3) & 0xF, codes & 7
    magnitude = np.where(
        exponent == 0,
        mantissa / 512.0,
        (1.0 + mantissa / 8.0) * np.exp2(exponent - 7.0),
    )
    magnitude[(codes & 0x7F) == 0x7F] = np.nan
    return np.where(codes >= 128, -magnitude, magnitude).astype(np.float32)


def e4m3_encode(x: np.ndarray) -> np.ndarray:
    """e4m3fn codes of `x` (f32): to nearest, ties to even, saturating at +-448."""
    x = np.asarray(x, np.float32)
    sign = np.signbit(x).astype(np.uint8) << 7
    a = np.minimum(np.abs(x), np.float32(E4M3_MAX))
    bits = a.view(np.uint32)
    # Normals: keep 3 of f32's 23 mantissa bits, rounding the other 20 to nearest even, then
    # rebias the exponent (127 -> 7).
    rounded = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
    normal = (((rounded >> 23).astype(np.int32) - 120) << 3) | ((rounded >> 20) & 7)
    # Below 2^-6, codes count steps of 2^-9 (rint rounds ties to even; 8 steps is the code 8).
    sub = np.rint(a * np.float32(512.0)).astype(np.int32)
    code = np.where(a < np.float32(2.0**-6), sub, normal).astype(np.uint8)
    return code | sign


def scale_for(amax: np.ndarray) -> np.ndarray:
    """Scales that map `amax` into e4m3's range, rounded up to 4 significant bits (> 0)."""
    s = np.maximum(np.asarray(amax, np.float32) / np.float32(E4M3_MAX), np.float32(2.0**-30))
    bits = s.view(np.uint32)
    up = np.where(bits & 0xFFFFF, (bits | 0xFFFFF) + 1, bits)
    return up.astype(np.uint32).view(np.float32)


def quantize(w: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [rows, cols], scales as stored, dequantized f32) of `w` for `layout`: "tensor"
    (shape [1]), "channel" ([rows, 1]) or "block" ([ceil(rows/128), ceil(cols/128)])."""
    rows, cols = w.shape
    a = np.abs(w)
    if layout == "tensor":
        scales = scale_for(a.max()).reshape(1)
        full = np.full_like(w, scales[0])
    elif layout == "channel":
        scales = scale_for(a.max(axis=1)).reshape(rows, 1)
        full = np.broadcast_to(scales, w.shape)
    else:
        br, bc = -(-rows // BLOCK), -(-cols // BLOCK)
        padded = np.zeros((br * BLOCK, bc * BLOCK), np.float32)
        padded[:rows, :cols] = a
        scales = scale_for(padded.reshape(br, BLOCK, bc, BLOCK).max(axis=(1, 3)))
        full = np.repeat(np.repeat(scales, BLOCK, 0), BLOCK, 1)[:rows, :cols]
    codes = e4m3_encode(w / full)
    return codes, scales, e4m3_values()[codes] * full


FORMATS = {
    "ct_tensor_static": dict(
        layout="tensor",
        scale_suffix="weight_scale",
        scale_dtype="BF16",
        input_scale=True,
        quantization_config={
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "quantization_status": "compressed",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {
                        "num_bits": 8,
                        "type": "float",
                        "strategy": "tensor",
                        "dynamic": False,
                        "symmetric": True,
                    },
                    "input_activations": {
                        "num_bits": 8,
                        "type": "float",
                        "strategy": "tensor",
                        "dynamic": False,
                        "symmetric": True,
                    },
                }
            },
            "ignore": ["lm_head"],
            "kv_cache_scheme": None,
        },
    ),
    "ct_channel_dynamic": dict(
        layout="channel",
        scale_suffix="weight_scale",
        scale_dtype="BF16",
        input_scale=False,
        quantization_config={
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {
                        "num_bits": 8,
                        "type": "float",
                        "strategy": "channel",
                        "dynamic": False,
                        "symmetric": True,
                    },
                    "input_activations": {
                        "num_bits": 8,
                        "type": "float",
                        "strategy": "token",
                        "dynamic": True,
                        "symmetric": True,
                    },
                }
            },
            "ignore": ["lm_head"],
        },
    ),
    "fp8_block": dict(
        layout="block",
        scale_suffix="weight_scale_inv",
        scale_dtype="F32",
        input_scale=False,
        quantization_config={
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [BLOCK, BLOCK],
        },
    ),
}


def _scale_bytes(scales: np.ndarray, dtype: str) -> bytes:
    return bf16_bytes(scales) if dtype == "BF16" else scales.astype("<f4").tobytes()


def write_fp8_pair(
    out: Path,
    fmt: str,
    tensors: dict[str, np.ndarray],
    config: dict,
    tokenizer_files: dict[str, str],
) -> tuple[Path, Path]:
    """(FP8 checkpoint, its dequantized bf16 reference) of `tensors` in format `fmt`."""
    spec = FORMATS[fmt]
    fp8, ref = {}, {}
    for name, w in tensors.items():
        module = name.removesuffix(".weight")
        if not module.endswith(PROJECTIONS):
            fp8[name] = ref[name] = ("BF16", list(w.shape), bf16_bytes(w))
            continue
        codes, scales, dequantized = quantize(bf16_round(w), spec["layout"])
        assert np.array_equal(bf16_round(dequantized), dequantized), "scales must keep bf16 exact"
        fp8[name] = ("F8_E4M3", list(w.shape), codes.tobytes())
        scale_name = f"{module}.{spec['scale_suffix']}"
        fp8[scale_name] = (
            spec["scale_dtype"],
            list(scales.shape),
            _scale_bytes(scales, spec["scale_dtype"]),
        )
        if spec["input_scale"]:
            # Calibrated activation scales: stored by such checkpoints, read by no one here.
            fp8[f"{module}.input_scale"] = ("F32", [1], np.float32([0.05]).tobytes())
        ref[name] = ("BF16", list(w.shape), bf16_bytes(dequantized))
    q_config = {**config, "quantization_config": spec["quantization_config"]}
    return (
        write_hf_dir(out / f"{fmt}", fp8, q_config, tokenizer_files),
        write_hf_dir(out / f"{fmt}_reference", ref, config, tokenizer_files),
    )
