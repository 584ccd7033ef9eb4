"""What e4m3 rounding costs the default model, emulated in numpy on the CPU (no GPU, no torch).

    python bench/fp8_numerics.py [--tokens 2048]

A float32 forward pass of SmolLM2-135M-Instruct (the default GGUF, dequantized to f32 as
tests/default_model_hf.py reads it) over the first --tokens tokens of the English text of
tests/test_gpu_fp8.py, teacher-forced, once exactly and once per variant below; for each variant
the mean KL(exact || variant) of the next-token distributions and the top-1 agreement, the
measures and bounds of issue 17 (KL <= 0.02 nats, top-1 >= 95 %). Every e4m3 rounding is
tests/fp8_quantize.py's (to nearest even, saturating, subnormals kept), so these are the
format's own costs, apart from any kernel:

    kv_scale_1      K and V rounded to e4m3 with scale 1 (what `kv_cache_dtype="fp8"` stores for a
                    checkpoint without KV scales, as vLLM does)
    kv_calculated   K and V with per-layer scales amax / 448 of the whole prompt (vLLM's
                    `calculate_kv_scales`, at its most favourable: the scale of the very data)
    w_channel       the projections' weights e4m3 with per-output-channel scales, activations
                    exact (a weight-only FP8 model: the dequantized copy)
    w_block         the same with 128 x 128 block scales
    w8a8_channel    per-channel weights and per-token e4m3 activations at every projection's
                    input (what `quantization="fp8"` computes on the FP8 tensor cores)
    w8a8_kv         w8a8_channel with kv_scale_1

Measured values are in kernels/cuda/NOTES.md (section "FP8 weights").
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
from default_model_hf import read_default_model  # noqa: E402
from fp8_quantize import E4M3_MAX, e4m3_encode, e4m3_values, quantize  # noqa: E402

import infire  # noqa: E402

TEXT = TESTS / "data" / "declaration_and_gettysburg_address.txt"
VARIANTS = {
    "kv_scale_1": dict(kv="one"),
    "kv_calculated": dict(kv="calc"),
    "w_channel": dict(weights="channel"),
    "w_block": dict(weights="block"),
    "w8a8_channel": dict(weights="channel", acts=True),
    "w8a8_kv": dict(weights="channel", acts=True, kv="one"),
}
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VALUES = e4m3_values()


def e4m3(x: np.ndarray, scale) -> np.ndarray:
    """`x` rounded to e4m3 codes under `scale` (a scalar or broadcastable), and back."""
    return VALUES[e4m3_encode(x / scale)] * scale


def per_token(x: np.ndarray) -> np.ndarray:
    """Dynamic per-token activation quantization: each row's amax maps to 448."""
    amax = np.maximum(np.abs(x).max(-1, keepdims=True), 1e-12)
    return e4m3(x, amax / E4M3_MAX)


class Model:
    def __init__(self, tensors: dict[str, np.ndarray], config: dict, weights: str | None):
        self.c = config
        self.t = {n: w.astype(np.float32) for n, w in tensors.items()}
        if weights:
            for n in self.t:
                if n.endswith(".weight") and n.split(".")[-2] in PROJ:
                    self.t[n] = quantize(self.t[n], weights)[2]

    def forward(self, ids: list[int], kv: str | None, acts: bool) -> np.ndarray:
        """Log-probabilities [T, vocab] of each next token."""
        c, t = self.c, self.t
        heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        hidden = c["hidden_size"]
        hd, n = hidden // heads, len(ids)
        eps = c.get("rms_norm_eps", 1e-5)
        inv = 1.0 / c.get("rope_theta", 10000.0) ** (np.arange(0, hd, 2) / hd)
        ang = np.arange(n)[:, None] * inv[None]
        cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
        mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)

        def rms(x, w):
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

        def linear(x, name):
            return (per_token(x) if acts else x) @ t[name].T

        def rope(x):
            a, b = x[..., : hd // 2], x[..., hd // 2 :]
            return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

        def cache(x):
            if kv == "one":
                return e4m3(x, 1.0)
            if kv == "calc":
                return e4m3(x, np.abs(x).max() / E4M3_MAX)
            return x

        x = t["model.embed_tokens.weight"][ids]
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            h = rms(x, t[p + "input_layernorm.weight"])
            q = rope(linear(h, p + "self_attn.q_proj.weight").reshape(n, heads, hd))
            k = cache(rope(linear(h, p + "self_attn.k_proj.weight").reshape(n, kv_heads, hd)))
            v = cache(linear(h, p + "self_attn.v_proj.weight").reshape(n, kv_heads, hd))
            o = np.empty((n, heads, hd), np.float32)
            for head in range(heads):
                g = head // (heads // kv_heads)
                s = q[:, head] @ k[:, g].T / math.sqrt(hd) + mask
                pr = np.exp(s - s.max(-1, keepdims=True))
                o[:, head] = (pr / pr.sum(-1, keepdims=True)) @ v[:, g]
            x = x + linear(o.reshape(n, hidden), p + "self_attn.o_proj.weight")
            h = rms(x, t[p + "post_attention_layernorm.weight"])
            g_, u = linear(h, p + "mlp.gate_proj.weight"), linear(h, p + "mlp.up_proj.weight")
            x = x + linear(g_ / (1 + np.exp(-g_)) * u, p + "mlp.down_proj.weight")
        x = rms(x, t["model.norm.weight"])
        z = x @ t.get("lm_head.weight", t["model.embed_tokens.weight"]).T
        z -= z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))


def compare(ref: np.ndarray, lp: np.ndarray) -> tuple[float, float]:
    """Mean KL(ref || lp) and top-1 agreement over the positions that predict a next token."""
    kl = (np.exp(ref) * (ref - lp)).sum(-1)[:-1]
    top1 = (ref.argmax(-1) == lp.argmax(-1))[:-1]
    return float(kl.mean()), float(top1.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    path = infire.default_model_path()
    tensors, config, _ = read_default_model(Path(path))
    engine = infire.Engine(model=path, device="cpu")
    ids = engine.get_tokenizer().encode(TEXT.read_text())[: args.tokens]
    del engine
    print(f"default model, {len(ids)} tokens of {TEXT.name}, numpy f32")
    ref = Model(tensors, config, None).forward(ids, None, False)
    print("| variant | mean KL (nats) | top-1 |\n| --- | --- | --- |")
    for name in args.variants:
        v = VARIANTS[name]
        start = time.perf_counter()
        lp = Model(tensors, config, v.get("weights")).forward(
            ids, v.get("kv"), v.get("acts", False)
        )
        kl, top1 = compare(ref, lp)
        print(f"| {name} | {kl:.4f} | {top1:.3f} | ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
