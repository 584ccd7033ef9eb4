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

Two questions about prompts, two tests:
- the issue's bounds against bf16 (`test_fp8_follows_bf16_over_english_text`). On this model they
  are not met by the e4m3 format itself: its FP8 checkpoints run on the CPU, which dequantizes
  them exactly and computes in f32, give KL 0.059 nats/token and top-1 0.883 (ct_channel_dynamic,
  2026-12-07), as the CUDA runs do (0.056-0.064, 0.877-0.892, H100). The 135M model's weights
  are Q4_1 values, which e4m3 with one scale per channel rounds by up to 2^-4 of each value
  (2.6 % RMS over the projections; the best of 64 scales per row only takes 17 % off the squared
  error). Those cases are strict xfails naming the measurement, so a change that meets the
  bounds shows up;
- what the CUDA path adds to the format's own arithmetic
  (`test_cuda_fp8_adds_little_to_the_format`). The reference computes what the FP8 path is
  meant to compute, with other code:
  - where the card has FP8 tensor cores (sm_89+) and the weights have one scale per row or per
    tensor, a prefill's projections multiply per-token e4m3 activations (scale amax / 448, the
    W8A8 scheme of vLLM's dynamic FP8): the reference is transformers on the dequantized bf16
    copy with every projection's input rounded the same way in torch (`torch_w8a8`);
  - elsewhere (128x128 block scales, or no FP8 tensor cores) the FP8 path multiplies the
    dequantized weights in bf16: the reference is that copy run by Infire in bf16.
  Bound: MAX_KERNEL_KL. The per-token e4m3 activations alone cost this model KL 0.037-0.039
  against the dequantized copy (H100, 2026-12-07), so a wrong scale or a lost activation
  rounding fails the bound by far.

And decode, which the tests above never run (they read prompts): DECODE_STEPS greedy one-row
steps through each FP8 GEMV the engine can choose (`INFIRE_FP8_GEMV`), against the dequantized
copy reading the same tokens (`test_fp8_decode_follows_its_dequantized_copy`), MAX_KERNEL_KL.

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
# The FP8 path against the same arithmetic computed by other code (see the module's doc): what
# is left is bf16 rounding in another order, and the few activations whose e4m3 rounding it
# flips.
MAX_KERNEL_KL = 0.012
MIN_KERNEL_TOP1 = 0.95
# The FP8 KV cache (scales 1) against bf16: the cache's own e4m3 rounding (KL 0.033, top-1 0.900
# on an H100, 2026-12-07); its kernels are checked against fp64 in test_gpu_fp8_kv_kernels.py.
MAX_KV_KL = 0.045
MIN_KV_TOP1 = 0.88
# The text and then some, so every configuration holds the same pool.
KV_CACHE_TOKENS = 8192
GPU_MEMORY_UTILIZATION = 0.3
CAPACITY_RATIO = (1.8, 2.2)


@pytest.fixture(scope="module")
def checkpoints(default_model_path, tmp_path_factory) -> dict[str, Path]:
    """The bf16 default model ("bf16"), one FP8 checkpoint per format and, as "<fmt>_reference",
    its dequantized bf16 copy."""
    if _core.cuda_device_count() == 0:
        pytest.skip("needs a CUDA device")
    tensors, config, tokenizer_files = read_default_model(default_model_path)
    out = tmp_path_factory.mktemp("fp8_gpu")
    bf16 = {n: ("BF16", list(w.shape), bf16_bytes(w)) for n, w in tensors.items()}
    paths = {"bf16": write_hf_dir(out / "bf16", bf16, config, tokenizer_files)}
    for fmt in FORMATS:
        paths[fmt], paths[f"{fmt}_reference"] = write_fp8_pair(
            out, fmt, tensors, config, tokenizer_files
        )
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


def mean_kl_and_top1(reference, logprobs) -> tuple[float, float]:
    assert len(logprobs) == len(reference)
    per_position = [kl_and_top1(p, q) for p, q in zip(reference, logprobs, strict=True)]
    n = len(per_position)
    return sum(kl for kl, _ in per_position) / n, sum(same for _, same in per_position) / n


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


# The format's own error on this model is over the bounds (see the module's doc).
FORMAT_OVER_BOUND = pytest.mark.xfail(
    raises=AssertionError,
    strict=True,
    reason="e4m3 per-channel weights of this model: KL 0.059, top-1 0.883 with exact "
    "dequantization on the CPU (2026-12-07)",
)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=FORMAT_OVER_BOUND) for c in sorted(CASES)],
)
def test_fp8_follows_bf16_over_english_text(checkpoints, bf16_reference, case):
    name, kwargs = CASES[case]
    logprobs, stats = read_text(checkpoints[name], **kwargs)
    assert stats["quantization"] == "fp8"
    want_kv = "fp8_e4m3" if kwargs.get("kv_cache_dtype") else "bfloat16"
    assert stats["kv_cache_dtype"] == want_kv
    mean_kl, top1 = mean_kl_and_top1(bf16_reference, logprobs)
    print(f"{case}: mean KL {mean_kl:.4f} nats/token, top-1 agreement {top1:.3f}")
    assert mean_kl <= MAX_MEAN_KL, (case, mean_kl)
    assert top1 >= MIN_TOP1, (case, top1)


def fp8_activations(fmt: str) -> bool:
    """Whether Infire's FP8 GEMM of `fmt` rounds the activations to e4m3 (see the module's doc):
    FP8 tensor cores, and scales that cuBLASLt can apply (not 128x128 blocks)."""
    import torch

    return torch.cuda.get_device_capability() >= (8, 9) and FORMATS[fmt]["layout"] != "block"


def torch_w8a8(path: Path, ids: list[int]) -> list[dict[int, float]]:
    """transformers on the bf16 checkpoint at `path`, every projection's input rounded per token
    to e4m3 (scale amax / 448, as fp8.cu's fp8_quantize_rows) and back to bf16; the LM head
    unrounded. Each position's top-TOP log-probabilities, as `read_text`."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    def round_input(_module, args):
        (x,) = args
        xf = x.float()
        amax = xf.abs().amax(dim=-1, keepdim=True)
        scale = torch.where(amax > 0, amax / torch.full_like(amax, 448.0), torch.ones_like(amax))
        codes = (xf / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        return ((codes.float() * scale).to(x.dtype),)

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    model = model.to("cuda").eval()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            module.register_forward_pre_hook(round_input)
    with torch.no_grad():
        logits = model(torch.tensor([ids], device="cuda")).logits[0, :-1].float()
    top = torch.log_softmax(logits, dim=-1).topk(TOP, dim=-1)
    out = [
        dict(zip(i, v, strict=True))
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    del model, logits, top
    gc.collect()
    torch.cuda.empty_cache()
    return out


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_cuda_fp8_adds_little_to_the_format(checkpoints, fmt):
    logprobs, stats = read_text(checkpoints[fmt])
    assert stats["quantization"] == "fp8"
    copy = checkpoints[f"{fmt}_reference"]
    if fp8_activations(fmt):
        ids = infire.load_tokenizer(str(copy)).encode(TEXT.read_text())
        reference, what = torch_w8a8(copy, ids), "torch W8A8 on its dequantized copy"
    else:
        reference, what = read_text(copy)[0], "its dequantized copy"
    mean_kl, top1 = mean_kl_and_top1(reference, logprobs)
    print(f"{fmt} against {what}: mean KL {mean_kl:.4f}, top-1 {top1:.3f}")
    assert mean_kl <= MAX_KERNEL_KL, (fmt, mean_kl)
    assert top1 >= MIN_KERNEL_TOP1, (fmt, top1)


# Decode: the one-row FP8 GEMVs (INFIRE_FP8_GEMV: gemv.cu's *_fp8_m1 as "plain", the tensor-core
# gemv_fp8_mma.cu as "mma", the reworked gemv_fp8.cu as "v2"), DECODE_STEPS of them after the
# first DECODE_PROMPT tokens of TEXT: a short prompt, so that nearly every position's K and V
# come from one-row steps too (a per-channel checkpoint's prefill rounds the activations to
# e4m3, which the copy does not).
DECODE_PROMPT = 32
DECODE_STEPS = 2048


@pytest.mark.parametrize("gemv", ["plain", "mma", "v2"])
@pytest.mark.parametrize("fmt", ["ct_channel_dynamic", "fp8_block"])
def test_fp8_decode_follows_its_dequantized_copy(checkpoints, fmt, gemv, monkeypatch):
    """DECODE_STEPS greedy one-row steps of an FP8 checkpoint, each step's top log-probabilities
    against its dequantized bf16 copy reading the prompt and those tokens (prefill, teacher-
    forced). A one-row step multiplies bf16 activations by the exact e4m3 weights, so what is
    left is the copy's bf16 rounding of each dequantized weight and the summation order: the
    prefill bounds of test_cuda_fp8_adds_little_to_the_format (MAX_KERNEL_KL, MIN_KERNEL_TOP1)
    apply, and a wrong scale, row or epilogue in a GEMV fails them by far. The FP8 GEMVs are
    otherwise checked alone (test_gpu_fp8_kernels.py); the other tests here read prompts, which
    run the FP8 GEMM instead."""
    from cuda_kernel_names import launched_kernels

    monkeypatch.setenv("INFIRE_FP8_GEMV", gemv)
    eng = engine(checkpoints[fmt])
    ids = eng.get_tokenizer().encode(TEXT.read_text())[:DECODE_PROMPT]
    params = infire.SamplingParams(
        max_tokens=DECODE_STEPS, temperature=0.0, ignore_eos=True, logprobs=TOP
    )
    outs = []
    names = launched_kernels(lambda eng=eng: outs.extend(eng.generate([ids], params)))
    out = outs[0].outputs[0]
    # The steps ran the GEMV asked for (so that the bounds below are about it); without the
    # tensor-core one (before sm_89) "mma" runs gemv.cu's.
    import torch

    if gemv == "mma" and torch.cuda.get_device_capability() < (8, 9):
        gemv = "plain"
    suffixes = {"plain": "_fp8_m1", "mma": "_fp8mma", "v2": "_fp8v2_m1"}
    ran = {g for g, s in suffixes.items() if any(n.endswith(s) for n in names)}
    assert ran == {gemv}, (ran, sorted(names))
    assert eng.stats()["quantization"] == "fp8"
    del eng
    gc.collect()
    assert len(out.token_ids) == DECODE_STEPS
    copy = engine(checkpoints[f"{fmt}_reference"])
    forced = infire.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=TOP)
    reference = copy.generate([ids + out.token_ids], forced)[0].prompt_logprobs[len(ids) :]
    del copy
    gc.collect()
    mean_kl, top1 = mean_kl_and_top1(reference, out.logprobs)
    print(f"{fmt}, {gemv}: decode against the dequantized copy: KL {mean_kl:.4f}, top-1 {top1:.3f}")
    assert mean_kl <= MAX_KERNEL_KL, (fmt, gemv, mean_kl)
    assert top1 >= MIN_KERNEL_TOP1, (fmt, gemv, top1)


def test_fp8_kv_cache_alone_follows_bf16(checkpoints, bf16_reference):
    """bf16 weights, the KV cache in e4m3 (scales 1, as the checkpoint has none): the cache's
    own error."""
    logprobs, stats = read_text(checkpoints["bf16"], kv_cache_dtype="fp8")
    assert (stats["kv_cache_dtype"], stats["quantization"]) == ("fp8_e4m3", None)
    mean_kl, top1 = mean_kl_and_top1(bf16_reference, logprobs)
    print(f"bf16 weights, FP8 KV cache: mean KL {mean_kl:.4f}, top-1 {top1:.3f}")
    assert mean_kl <= MAX_KV_KL, mean_kl
    assert top1 >= MIN_KV_TOP1, top1


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
