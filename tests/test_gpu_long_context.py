"""Whole models on the CUDA backend at the lengths users run, against transformers in fp32
(`pytest -m gpu`).

tests/test_gpu_models.py checks short prompts (up to 300 tokens) in detail; numerics that go
wrong with the position (RoPE at large angles, attention over thousands of keys, block tables
of hundreds of blocks, chunked prefill, prefix-cache hits) only show further out. Here each
model reads one prompt of PROMPT_LEN tokens, teacher-forced: infire's `prompt_logprobs` give
the log-probability of every prompt token, which is compared position by position with
transformers' fp32 forward pass over the same ids. transformers' own bf16 forward states how
far bf16 itself is from fp32 at those positions, and infire may be at most a small factor
further (BF16_RATIO), in every window of WINDOW positions, at its largest and on average.

The head layouts are every GQA group the loader accepts in practice (1, 2, 4, 7, 8), head_dim 64
and 128, with llama3 RoPE scaling, large rope_theta, Qwen2's QKV bias and Qwen3's q/k norm.
The same prompt is then read in small chunks (max_num_batched_tokens), after a prefix-cache hit
over most of it, and decoded greedily past it (decode attention over the whole context): each
must agree with transformers as well. One small model reads 32,768 positions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

import infire

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_gpu_models import COMMON, write_random_checkpoint  # noqa: E402
from test_gpu_models import LLAMA3_ROPE as MODELS_LLAMA3_ROPE  # noqa: E402

VOCAB = COMMON["vocab_size"]
# test_gpu_models.py's model less its attention shape (each of MODELS gives one), two layers,
# with room for 32k positions.
SHAPE_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")
BASE = {
    **{k: v for k, v in COMMON.items() if k not in SHAPE_KEYS},
    "num_hidden_layers": 2,
    "max_position_embeddings": 40960,
}
# llama3 scaling whose scaled low frequencies matter within these prompts.
LLAMA3_ROPE = {
    **MODELS_LLAMA3_ROPE,
    "rope_scaling": {
        **MODELS_LLAMA3_ROPE["rope_scaling"],
        "original_max_position_embeddings": 1024,
    },
}
# (GQA group, head_dim) of each: 1, 2, 4, 7 and 8; 64 and 128.
MODELS = {
    "llama_mha_g1_hd64": dict(
        model_type="llama",
        hidden_size=640,
        num_attention_heads=10,
        num_key_value_heads=10,
        head_dim=64,
        **LLAMA3_ROPE,
    ),
    "llama_g2_hd128": dict(
        model_type="llama",
        hidden_size=512,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=128,
        rope_theta=1e6,
    ),
    "llama3_g4_hd64": dict(
        model_type="llama",
        hidden_size=256,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        **LLAMA3_ROPE,
    ),
    "qwen2_g7_hd64_bias": dict(
        model_type="qwen2",
        hidden_size=896,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=64,
        rope_theta=1e6,
        use_sliding_window=False,
    ),
    "qwen3_g8_hd128_qk_norm": dict(
        model_type="qwen3",
        hidden_size=512,
        num_attention_heads=16,
        num_key_value_heads=2,
        head_dim=128,
        rope_theta=1e6,
        use_sliding_window=False,
    ),
}
PROMPT_LEN = 8192
LONGEST = 32768
WINDOW = 512
# infire's |logprob - fp32| in a window: at most BF16_RATIO x transformers bf16's (max and mean
# over the window) plus a floor for windows where bf16 happens to be nearly exact. Measured on
# the fixed engine: the ratios stay under 1.6 (max) and 1.3 (mean); the fault this guards
# against reached 8 nats at 2,000 positions.
BF16_RATIO = 2.0
MAX_FLOOR = 0.05
MEAN_FLOOR = 0.005
# Two infire runs of the same prompt that only schedule it differently (chunks, cache hits)
# round at other points: within bf16 noise of each other, far below any fault.
SAME_RUN_ATOL = 0.1
SAME_RUN_MEAN_ATOL = 0.01
DECODE_STEPS = 32
KV_CACHE_TOKENS = 3 * LONGEST


def prompt_ids(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, VOCAB) for _ in range(n)]


@torch.no_grad()
def reference_logprobs(path: Path, dtype, ids: list[int]) -> torch.Tensor:
    """transformers' log-softmax (fp32, on the CPU) at every position of `ids`, [len, vocab]:
    row p predicts token p + 1. SDPA attention, so that long sequences fit."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="sdpa"
    )
    model = model.to("cuda").eval()
    logits = model(torch.tensor([ids], device="cuda")).logits[0]
    out = torch.log_softmax(logits.float(), dim=-1).cpu()
    del model, logits
    torch.cuda.empty_cache()
    return out


def token_logprobs(lp: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The log-probability `lp` gives each prompt token 1..len-1, [len - 1]."""
    return lp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def infire_prompt_logprobs(engine: infire.Engine, ids: list[int]) -> torch.Tensor:
    """infire's log-probability of each prompt token 1..len-1, [len - 1]."""
    params = infire.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    out = engine.generate([ids], params)[0]
    return torch.tensor([out.prompt_logprobs[p][ids[p]] for p in range(1, len(ids))])


def check_windows(name: str, got: torch.Tensor, fp32: torch.Tensor, bf16: torch.Tensor):
    """In every WINDOW positions, infire's distance from fp32 is within BF16_RATIO of
    transformers bf16's (largest and mean), plus the floors. Returns the worst ratios."""
    err, hf = (got - fp32).abs(), (bf16 - fp32).abs()
    worst = [0.0, 0.0]
    for start in range(0, len(err), WINDOW):
        e, h = err[start : start + WINDOW], hf[start : start + WINDOW]
        where = f"{name}: positions {start + 1}-{start + len(e)}"
        assert torch.isfinite(e).all(), where
        assert e.max() <= BF16_RATIO * h.max() + MAX_FLOOR, (where, e.max(), h.max())
        assert e.mean() <= BF16_RATIO * h.mean() + MEAN_FLOOR, (where, e.mean(), h.mean())
        worst[0] = max(worst[0], float(e.max() / max(h.max(), 1e-6)))
        worst[1] = max(worst[1], float(e.mean() / max(h.mean(), 1e-6)))
    return worst


def check_same(name: str, got: torch.Tensor, want: torch.Tensor):
    d = (got - want).abs()
    assert d.max() <= SAME_RUN_ATOL and d.mean() <= SAME_RUN_MEAN_ATOL, (name, d.max(), d.mean())


@dataclass
class Reference:
    path: Path
    ids: list[int]
    fp32: torch.Tensor  # [len, vocab] log-softmax
    bf16: torch.Tensor


@pytest.fixture(scope="module", params=sorted(MODELS))
def reference(request, tmp_path_factory) -> Reference:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.set_float32_matmul_precision("highest")
    name = request.param
    path = write_random_checkpoint(tmp_path_factory.mktemp(name), {**BASE, **MODELS[name]})
    ids = prompt_ids(PROMPT_LEN)
    return Reference(
        path,
        ids,
        reference_logprobs(path, torch.float32, ids),
        reference_logprobs(path, torch.bfloat16, ids),
    )


def engine_for(ref: Reference, **kwargs) -> infire.Engine:
    return infire.Engine(
        model=str(ref.path),
        device="cuda",
        dtype="bfloat16",
        kv_cache_tokens=KV_CACHE_TOKENS,
        gpu_memory_utilization=0.5,
        **kwargs,
    )


def test_prompt_logprobs_follow_fp32_at_every_position(reference):
    """The whole prompt, then the same in 300-token chunks (odd, so that chunks start inside
    blocks and prefill tiles): each within BF16_RATIO of transformers bf16 in every window, and
    the two runs within bf16 noise of each other."""
    ref = reference
    fp32, bf16 = token_logprobs(ref.fp32, ref.ids), token_logprobs(ref.bf16, ref.ids)
    name = ref.path.name
    whole = infire_prompt_logprobs(engine_for(ref), ref.ids)
    worst = check_windows(name, whole, fp32, bf16)
    chunked = infire_prompt_logprobs(engine_for(ref, max_num_batched_tokens=300), ref.ids)
    check_windows(f"{name} (chunks of 300)", chunked, fp32, bf16)
    check_same(f"{name}: whole against chunked", chunked, whole)
    print(
        f"{name}: worst window ratio to transformers bf16: max {worst[0]:.2f}, mean {worst[1]:.2f}"
    )


def test_prefix_cache_hit_and_decode_over_a_long_context(reference):
    """A prompt that shares all but its last 100 tokens with one read before (a prefix-cache
    hit of hundreds of blocks), then DECODE_STEPS greedy tokens: each step's log-probability
    against transformers fp32 over prompt + infire's tokens, as close as bf16 allows."""
    ref = reference
    engine = engine_for(ref)
    params = infire.SamplingParams(max_tokens=1, temperature=0.0)
    engine.generate([ref.ids[:-100]], params)
    tail = prompt_ids(100, seed=1)
    prompt = ref.ids[:-100] + tail
    params = infire.SamplingParams(
        max_tokens=DECODE_STEPS, temperature=0.0, ignore_eos=True, logprobs=0
    )
    out = engine.generate([prompt], params)[0]
    assert out.num_cached_tokens >= len(prompt) - 100 - 16, out.num_cached_tokens
    tokens = out.outputs[0].token_ids
    got = torch.tensor([lp[t] for t, lp in zip(tokens, out.outputs[0].logprobs, strict=True)])
    full = prompt + tokens
    fp32 = reference_logprobs(ref.path, torch.float32, full)
    bf16 = reference_logprobs(ref.path, torch.bfloat16, full)
    steps = slice(len(prompt) - 1, len(full) - 1)
    want = fp32[steps].gather(1, torch.tensor(tokens)[:, None])[:, 0]
    hf = bf16[steps].gather(1, torch.tensor(tokens)[:, None])[:, 0]
    err, hf_err = (got - want).abs(), (hf - want).abs()
    name = ref.path.name
    assert err.max() <= BF16_RATIO * hf_err.max() + MAX_FLOOR, (name, err.tolist(), hf_err.max())
    assert err.mean() <= BF16_RATIO * hf_err.mean() + MEAN_FLOOR, (name, err.mean(), hf_err.mean())
    # Each greedy token is fp32's best up to a bf16 near-tie.
    behind = fp32[steps].max(dim=-1).values - want
    assert behind.max() <= 0.3, (name, behind.tolist())


def test_32k_positions_on_a_small_model(tmp_path):
    """One 32,768-token prompt through a one-layer model with llama3 RoPE scaling: every
    window of positions within BF16_RATIO of transformers bf16."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    config = {
        **BASE,
        "num_hidden_layers": 1,
        **MODELS["llama3_g4_hd64"],
    }
    path = write_random_checkpoint(tmp_path, config)
    ids = prompt_ids(LONGEST, seed=2)
    fp32 = token_logprobs(reference_logprobs(path, torch.float32, ids), ids)
    bf16 = token_logprobs(reference_logprobs(path, torch.bfloat16, ids), ids)
    engine = infire.Engine(
        model=str(path),
        device="cuda",
        dtype="bfloat16",
        kv_cache_tokens=KV_CACHE_TOKENS,
        gpu_memory_utilization=0.5,
        max_num_batched_tokens=8192,
    )
    got = infire_prompt_logprobs(engine, ids)
    worst = check_windows("32k", got, fp32, bf16)
    print(f"32k: worst window ratio to transformers bf16: max {worst[0]:.2f}, mean {worst[1]:.2f}")
