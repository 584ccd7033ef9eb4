"""CUDA benchmarks on a Llama-3.1-8B-shaped checkpoint with random bf16 weights.

    python bench/cuda_bench.py all [--model-dir /tmp/llama8b-random] [--baseline transformers]
    python bench/cuda_bench.py decode|throughput|ttft|startup [--model-dir ...]

Every run prints the card's name and first measures its ceilings: device-to-device copy
bandwidth (a 4 GiB torch copy, bytes read + written, median of 20 timed by CUDA events) and the
bf16 GEMM rate (8192^3 torch.matmul on random data, median of 20). The checkpoint
(transformers' LlamaConfig of Llama-3.1-8B, weights N(0, 0.02) and norms 1, bf16 safetensors
shards, a 128,256-token byte-level BPE tokenizer) is written to --model-dir on the GPU the first
time and reused after. Prompts go to infire as token ids, so the tokenizer only loads and
decodes.

decode      one stream: 128-token prompt, 256 new tokens, greedy, ignore_eos; tok/s from the
            first token to the last (engine timestamps), median of 3, against the roofline
            copy bandwidth / weight bytes (decode reads every weight once per token, and the
            copy bandwidth counts bytes read + written). Then the same with sampling
            (temperature 0.8, top-k 50, top-p 0.95, repetition penalty 1.1, seeded), whose
            tokens are picked on the GPU: `decode_sampled`.
ttft        time to first token of a 1024-token prompt (max_tokens=1), median of 5 after a
            warm-up, each with fresh random ids so that no prefix is cached.
throughput  256 requests, prompt and output lengths uniform in [100, 1024] (numpy
            default_rng(0)), random prompt ids, greedy, ignore_eos: output tok/s and the
            process's CPU seconds per wall second, against the workload's limit (see
            `workload_limit`); target >= 70 % of it. With --baseline transformers, the first
            --baseline-requests prompts with --baseline-new-tokens each run through infire and
            then through transformers' continuous batching (`generate_batch`), in this run.
startup     `infire.Engine(model_dir, device="cuda", **options)` (the options the flags set) in
            a fresh process, twice: first with an empty kernel cache (INFIRE_CACHE_DIR set to a
            new directory), then from that cache; the checkpoint is read once before, so it is
            in the page cache.

`all` runs decode, ttft and throughput on one engine, then the baseline, then startup. A step
that fails prints its error and the run goes on. Prints a table and writes
bench/results/cuda_<command>.json after every step.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from cpu_decode import cpu_name

import infire

LLAMA_3_1_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
)
# Llama 3's layout: byte-level BPE tokens first, then 256 special tokens.
NUM_SPECIAL_TOKENS = 256
WEIGHT_STD = 0.02
BF16_BYTES = 2

COPY_BYTES = 4 << 30
GEMM_N = 8192
CEILING_REPEATS = 20

DECODE_PROMPT = 128
DECODE_NEW = 256
DECODE_RUNS = 3
TTFT_PROMPT = 1024
TTFT_RUNS = 5
WORKLOAD_REQUESTS = 256
WORKLOAD_MIN_LEN = 100
WORKLOAD_MAX_LEN = 1024
THROUGHPUT_TARGET = 0.7
# Prompt ids are drawn below the special tokens.
PROMPT_ID_LIMIT = LLAMA_3_1_8B["vocab_size"] - NUM_SPECIAL_TOKENS


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- the card's ceilings


def timed_ms(fn, repeats: int) -> float:
    """Median milliseconds of `fn()` on the current stream over `repeats` runs (CUDA events),
    after 3 warm-up runs."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting the bytes read and written."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = timed_ms(lambda: dst.copy_(src), CEILING_REPEATS)
    return 2 * COPY_BYTES / (ms / 1e3)


def gemm_rate() -> float:
    """bf16 GEMM rate in FLOP/s of an 8192^3 torch.matmul."""
    a = torch.randn(GEMM_N, GEMM_N, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(GEMM_N, GEMM_N, dtype=torch.bfloat16, device="cuda")
    c = torch.empty_like(a)
    ms = timed_ms(lambda: torch.matmul(a, b, out=c), CEILING_REPEATS)
    return 2 * GEMM_N**3 / (ms / 1e3)


def time_graph(build, launches: int) -> float:
    """Seconds per launch of the chain of `launches` kernels that `build()` enqueues on torch's
    current stream: captured once in a CUDA graph and replayed 10 times (median), so that no
    host launch gap is timed. For kernels of a few microseconds, where events around single
    launches would time the launch itself."""
    build()  # warm up outside the graph (module loads, cuBLAS workspaces)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        build()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / launches)
    return statistics.median(times)


def fp8_gemm_rate() -> float | None:
    """FP8 GEMM rate in FLOP/s of an 8192^3 torch._scaled_mm with a scale per row of each
    operand (what the engine's FP8 GEMMs are); None where the card has no FP8 tensor cores."""
    if torch.cuda.get_device_capability() < (8, 9):
        return None
    a = torch.randn(GEMM_N, GEMM_N, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(GEMM_N, GEMM_N, device="cuda").to(torch.float8_e4m3fn).t()
    sa = torch.ones(GEMM_N, 1, device="cuda")
    sb = torch.ones(1, GEMM_N, device="cuda")

    def mm():
        torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

    ms = timed_ms(mm, CEILING_REPEATS)
    return 2 * GEMM_N**3 / (ms / 1e3)


def ceilings() -> dict:
    result = {
        "copy_bytes_per_s": copy_bandwidth(),
        "bf16_gemm_flop_per_s": gemm_rate(),
        "fp8_gemm_flop_per_s": fp8_gemm_rate(),
    }
    gc.collect()
    torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------- the checkpoint


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer with exactly `vocab_size` ids, shaped as Llama 3's: the 256
    byte symbols, merged tokens built by appending one byte symbol to an earlier token, then
    NUM_SPECIAL_TOKENS special tokens (the first two are BOS and EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = list(alphabet)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    regular = vocab_size - NUM_SPECIAL_TOKENS
    for left in tokens:  # grows while iterated: two-symbol tokens, then three-symbol ones
        for right in alphabet:
            if len(tokens) == regular:
                break
            vocab[left + right] = len(tokens)
            tokens.append(left + right)
            merges.append((left, right))
        if len(tokens) == regular:
            break
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|begin_of_text|>", "<|end_of_text|>"] + [
        f"<|reserved_special_token_{i}|>" for i in range(NUM_SPECIAL_TOKENS - 2)
    ]
    tok.add_special_tokens(special)
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": special[0], "eos_token": special[1]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def write_checkpoint(model_dir: Path, config_kwargs: dict, device: str = "cuda") -> bool:
    """Writes a random-weight LlamaForCausalLM of `config_kwargs` in bf16 safetensors shards,
    with its tokenizer, unless `model_dir` already holds one. Builds in a sibling directory
    that is renamed at the end, so an interrupted run leaves nothing that looks complete.
    Returns whether it wrote one."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists():
        return False
    tmp = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config_kwargs), dtype=torch.bfloat16)
    with torch.no_grad():  # small weights keep the activations of 32 random layers finite
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, WEIGHT_STD)
    model.save_pretrained(tmp, max_shard_size="5GB")
    del model
    gc.collect()
    torch.cuda.empty_cache()
    write_tokenizer(tmp, config_kwargs["vocab_size"])
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    return True


def tensor_bytes(model_dir: Path) -> dict[str, tuple[int, list[int]]]:
    """Each tensor's bytes and shape in the checkpoint's safetensors files (from their headers)."""
    out = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        for name, t in header.items():
            if name != "__metadata__":
                start, end = t["data_offsets"]
                out[name] = (end - start, t["shape"])
    return out


def weight_bytes(model_dir: Path, fp8: bool = False) -> int:
    """Bytes of weights a decode step reads: every tensor of the checkpoint but the embedding
    table, of which a step reads one row per token (with tied embeddings the LM head is that
    table, and it is counted once). With `fp8`, as the engine holds them with
    `quantization="fp8"`: each projection (`*_proj.weight`) one byte a weight plus an f32 scale
    per row, the rest as stored.

    (Until 2026-12-07 the whole checkpoint was counted, the 1.05 GB embedding table of the
    Llama-3.1-8B shape included: 16.06 GB a token in bf16 instead of 15.01, 9.08 GB in FP8
    instead of 8.03, so rooflines were 7 % (bf16) and 13 % (FP8) low; bench/RESULTS.md.)"""
    tensors = tensor_bytes(model_dir)
    tied = "lm_head.weight" not in tensors
    total = 0
    for name, (nbytes, shape) in tensors.items():
        if name == "model.embed_tokens.weight" and not tied:
            continue
        if fp8 and name.endswith("_proj.weight"):
            total += nbytes // BF16_BYTES + 4 * shape[0]
        else:
            total += nbytes
    return total


def projection_params(model_dir: Path) -> int:
    """Parameters of the projections (`*_proj.weight`), which a prefill applies to every prompt
    token (the LM head runs on each prompt's last token only)."""
    tensors = tensor_bytes(model_dir)
    return sum(n for name, (n, _) in tensors.items() if name.endswith("_proj.weight")) // BF16_BYTES


def read_into_page_cache(model_dir: Path) -> None:
    for path in model_dir.iterdir():
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


# ---------------------------------------------------------------- the workload


def workload() -> tuple[list[list[int]], list[int]]:
    """WORKLOAD_REQUESTS prompts (random ids) and output lengths, both lengths uniform in
    [WORKLOAD_MIN_LEN, WORKLOAD_MAX_LEN], from numpy default_rng(0)."""
    rng = np.random.default_rng(0)
    lens = dict(low=WORKLOAD_MIN_LEN, high=WORKLOAD_MAX_LEN, size=WORKLOAD_REQUESTS, endpoint=True)
    prompt_lens = rng.integers(**lens)
    output_lens = rng.integers(**lens)
    prompts = [rng.integers(0, PROMPT_ID_LIMIT, size=int(p)).tolist() for p in prompt_lens]
    return prompts, [int(o) for o in output_lens]


def workload_limit(
    prompt_lens,
    output_lens,
    config: dict,
    weights: int,
    copy_bw: float,
    gemm_flops: float,
    params: float | None = None,
    kv_elem_bytes: int = BF16_BYTES,
) -> dict:
    """The shortest time the workload can take on this card: every request admitted at once,
    each decode step reading all weights and the KV of every live sequence at the measured copy
    bandwidth, and the prefills at the measured GEMM rate.

    - decode steps = max(output_lens) - 1 (the first token of each request comes from its
      prefill); step s (1-based) reads the KV of prompt + s tokens of each request still
      generating, KV bytes per token = 2 (K, V) x layers x kv_heads x head_dim x
      `kv_elem_bytes` (2; 1 for an FP8 cache);
    - prefill FLOPs = 2 x params x prompt tokens + the LM head on each prompt's last token
      (2 x vocab x hidden) + causal attention, 4 x layers x heads x head_dim x n(n+1)/2 for a
      prompt of n tokens.

    `weights` are the bytes a decode step reads (FP8 projections: about half), `params` the
    projections' parameter count (default: bf16 bytes / 2), `gemm_flops` the rate of the GEMMs'
    dtype. (Until 2026-12-07 `params` was the whole checkpoint's, embedding table and LM head
    included, on every prompt token: prefill FLOPs 15 % high, so the limit was low.)
    """
    p = np.asarray(prompt_lens, dtype=np.float64)
    o = np.asarray(output_lens, dtype=np.float64)
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_token_bytes = 2 * layers * config["num_key_value_heads"] * head_dim * kv_elem_bytes
    decode_steps = int(o.max()) - 1
    kv_tokens_read = float(np.sum((o - 1) * p + (o - 1) * o / 2))
    params = params or weights / BF16_BYTES
    lm_head_flops = 2 * config["vocab_size"] * config["hidden_size"] * len(p)
    linear_flops = 2 * params * float(p.sum()) + lm_head_flops
    attention_flops = 4 * layers * heads * head_dim * float(np.sum(p * (p + 1) / 2))
    parts = {
        "decode_steps": decode_steps,
        "weight_bytes_read": decode_steps * weights,
        "kv_bytes_read": kv_tokens_read * kv_token_bytes,
        "prefill_linear_flops": linear_flops,
        "prefill_attention_flops": attention_flops,
    }
    parts["weights_s"] = parts["weight_bytes_read"] / copy_bw
    parts["kv_s"] = parts["kv_bytes_read"] / copy_bw
    parts["prefill_s"] = (linear_flops + attention_flops) / gemm_flops
    parts["limit_s"] = parts["weights_s"] + parts["kv_s"] + parts["prefill_s"]
    parts["output_tokens"] = int(o.sum())
    parts["limit_output_tok_s"] = parts["output_tokens"] / parts["limit_s"]
    return parts


# ---------------------------------------------------------------- the sub-benches


def greedy(max_tokens: int) -> infire.SamplingParams:
    return infire.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def random_ids(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, PROMPT_ID_LIMIT, size=n).tolist()


def sampled(max_tokens: int) -> infire.SamplingParams:
    """Sampling with the usual filters and penalties on: the tokens are picked on the GPU."""
    return infire.SamplingParams(
        max_tokens=max_tokens,
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        repetition_penalty=1.1,
        seed=0,
        ignore_eos=True,
    )


def bench_decode(engine: infire.Engine, weights: int, copy_bw: float, params=greedy) -> dict:
    engine.generate(random_ids(DECODE_PROMPT, 100), params(8))  # warm-up
    runs = []
    for i in range(DECODE_RUNS):
        (out,) = engine.generate(random_ids(DECODE_PROMPT, 101 + i), params(DECODE_NEW))
        m, n = out.metrics, len(out.outputs[0].token_ids)
        runs.append((n - 1) / (m.finished_time - m.first_token_time))
    roofline = copy_bw / weights
    tok_s = statistics.median(runs)
    return {
        "prompt_tokens": DECODE_PROMPT,
        "new_tokens": DECODE_NEW,
        "runs_tok_s": [round(r, 1) for r in runs],
        "decode_tok_s": round(tok_s, 1),
        "roofline_tok_s": round(roofline, 1),
        "of_roofline": round(tok_s / roofline, 3),
    }


def bench_ttft(engine: infire.Engine) -> dict:
    engine.generate(random_ids(TTFT_PROMPT, 200), greedy(1))  # warm-up
    runs = []
    for i in range(TTFT_RUNS):
        t = time.perf_counter()
        engine.generate(random_ids(TTFT_PROMPT, 201 + i), greedy(1))
        runs.append(time.perf_counter() - t)
    return {
        "prompt_tokens": TTFT_PROMPT,
        "runs_ms": [round(r * 1e3, 1) for r in runs],
        "ttft_ms": round(statistics.median(runs) * 1e3, 1),
    }


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_throughput(engine: infire.Engine, limit: dict, args) -> dict:
    prompts, output_lens = workload()
    engine.generate(prompts[:8], greedy(16))  # warm-up
    params = [greedy(n) for n in output_lens]
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    # The capture range of `nsys profile --capture-range=cudaProfilerApi`; no-ops otherwise.
    torch.cuda.profiler.start()
    outs = engine.generate(prompts, params)
    torch.cuda.profiler.stop()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    tok_s = produced / wall
    return {
        "requests": len(prompts),
        "prompt_tokens": sum(map(len, prompts)),
        "output_tokens": produced,
        "max_num_seqs": args.max_num_seqs or "engine default",
        "max_num_batched_tokens": args.max_num_batched_tokens or "engine default",
        "wall_s": round(wall, 2),
        "output_tok_s": round(tok_s, 1),
        "limit_s": round(limit["limit_s"], 2),
        "limit_output_tok_s": round(limit["limit_output_tok_s"], 1),
        "of_limit": round(limit["limit_s"] / wall, 3),
        "target_of_limit": THROUGHPUT_TARGET,
        "cpu_cores": round(cpu / wall, 2),
        "num_preemptions": engine.stats()["num_preemptions"],
    }


def baseline_workload(args):
    prompts, _ = workload()
    return prompts[: args.baseline_requests], args.baseline_new_tokens


def bench_baseline_infire(engine: infire.Engine, args) -> dict:
    prompts, new = baseline_workload(args)
    t = time.perf_counter()
    outs = engine.generate(prompts, greedy(new))
    wall = time.perf_counter() - t
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"requests": len(prompts), "new_tokens": new, "output_tok_s": round(produced / wall, 1)}


def bench_baseline_transformers(model_dir: Path, args) -> dict:
    """transformers' continuous batching (`generate_batch`, SDPA attention) on the baseline
    prompts, after a small warm-up call. Each call sets up its own paged cache (and captures
    its graphs): `wall_s` includes that, `output_tok_s` counts from the first request's start
    to the last one's end (their `lifespan`s)."""
    import transformers

    prompts, new = baseline_workload(args)
    # Loaded on the CPU, then moved: device_map would need `accelerate`.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation="sdpa"
    )
    model = model.to("cuda").eval()
    # eos_token_id -1 switches the stop on EOS off (ignore_eos).
    config = transformers.GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=-1)
    warm = transformers.GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=-1)
    model.generate_batch(inputs=prompts[:2], generation_config=warm, progress_bar=False)
    t = time.perf_counter()
    results = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    wall = time.perf_counter() - t
    outs = list(results.values())
    produced = sum(len(r.generated_tokens) for r in outs)
    serving = max(r.lifespan[1] for r in outs) - min(r.lifespan[0] for r in outs)
    del model, results, outs
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "transformers": transformers.__version__,
        "requests": len(prompts),
        "new_tokens": new,
        "output_tokens": produced,
        "wall_s": round(wall, 2),
        "serving_s": round(serving, 2),
        "output_tok_s": round(produced / serving, 1),
    }


STARTUP_SCRIPT = """
import json, sys, time
import infire
t = time.perf_counter()
infire.Engine(sys.argv[1], device="cuda", **json.loads(sys.argv[2]))
print(time.perf_counter() - t)
"""


def bench_startup(model_dir: Path, args) -> dict:
    read_into_page_cache(model_dir)
    options = json.dumps(engine_options(args))
    runs = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "INFIRE_CACHE_DIR": cache}
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-c", STARTUP_SCRIPT, str(model_dir), options],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"the start-up process failed:\n{done.stderr[-3000:]}")
            runs.append(float(done.stdout.strip().splitlines()[-1]))
    return {"empty_kernel_cache_s": round(runs[0], 2), "kernel_cache_s": round(runs[1], 2)}


# ---------------------------------------------------------------- running and reporting


def engine_options(args) -> dict:
    """The engine options the flags set (the engine's own defaults for the others)."""
    options = {
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "async_scheduling": {"on": True, "off": False, "auto": None}[args.async_scheduling],
        "quantization": args.quantization,
        "kv_cache_dtype": args.kv_cache_dtype,
    }
    return {k: v for k, v in options.items() if v is not None}


def make_engine(model_dir: Path, args) -> infire.Engine:
    """The engine under test: the engine's own defaults except where a flag sets one."""
    return infire.Engine(str(model_dir), device="cuda", **engine_options(args))


class Report:
    """The run's results, written to JSON after every step; a failed step records its error."""

    def __init__(self, command: str, out: Path) -> None:
        self.out = out
        self.data = {
            "bench": f"cuda_{command}",
            "date": datetime.date.today().isoformat(),
            "machine": f"{torch.cuda.get_device_name()}, {cpu_name()}, {os.cpu_count()} cores",
            "command": "python bench/cuda_bench.py " + " ".join(sys.argv[1:]),
            "step_seconds": {},
        }

    def step(self, name: str, fn, *args, store: bool = True):
        """Runs `fn(*args)` and returns its result, stored under `name` when `store`; on an
        exception prints it, stores it under `name` and returns None."""
        log(f"-- {name}")
        t = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as e:  # reported, and the next step runs
            traceback.print_exc()
            self.data[name] = {"error": f"{type(e).__name__}: {e}"}
            result = None
        else:
            if store:
                self.data[name] = result
        self.data["step_seconds"][name] = round(time.perf_counter() - t, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.data, indent=2) + "\n")
        return result

    def print_table(self) -> None:
        print("| step | what | figure |\n| --- | --- | --- |")
        for name, result in self.data.items():
            items = result.items() if isinstance(result, dict) else [("", result)]
            for what, figure in items:
                shown = f"{figure:.4g}" if isinstance(figure, float) else figure
                print(f"| {name} | {what} | {shown} |")


def run_engine_benches(report: Report, run: set[str], args, ceil, weights) -> None:
    """decode, ttft, throughput and the baseline on one engine, then frees it (and the GPU
    memory it holds) before transformers' baseline loads the model."""
    engine = report.step("engine", make_engine, args.model_dir, args, store=False)
    if engine is None:
        return
    if "decode" in run and ceil and weights:
        report.step("decode", bench_decode, engine, weights, ceil["copy_bytes_per_s"])
        report.step(
            "decode_sampled", bench_decode, engine, weights, ceil["copy_bytes_per_s"], sampled
        )
    if "ttft" in run:
        report.step("ttft", bench_ttft, engine)
    if "throughput" in run and ceil and weights:
        prompts, output_lens = workload()
        limit = report.step(
            "workload_limit",
            workload_limit,
            list(map(len, prompts)),
            output_lens,
            LLAMA_3_1_8B,
            weights,
            ceil["copy_bytes_per_s"],
            ceil["fp8_gemm_flop_per_s" if args.quantization else "bf16_gemm_flop_per_s"],
            projection_params(args.model_dir),
            1 if args.kv_cache_dtype == "fp8" else BF16_BYTES,
        )
        if limit:
            report.step("throughput", bench_throughput, engine, limit, args)
    if "throughput" in run and args.baseline:
        report.step("baseline_infire", bench_baseline_infire, engine, args)
    del engine
    gc.collect()
    if "throughput" in run and args.baseline:
        report.step("baseline_transformers", bench_baseline_transformers, args.model_dir, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["all", "decode", "ttft", "throughput", "startup"])
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/llama8b-random"))
    ap.add_argument("--max-num-seqs", type=int, default=None, help="default: the engine's")
    ap.add_argument(
        "--max-num-batched-tokens", type=int, default=None, help="default: the engine's"
    )
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument(
        "--async-scheduling",
        choices=["on", "off", "auto"],
        default="auto",
        help="the engine's async scheduling (auto: its default, on for CUDA)",
    )
    ap.add_argument(
        "--quantization",
        choices=["fp8"],
        default=None,
        help="weights quantized at load (the roofline and limit use FP8 bytes and GEMM rate)",
    )
    ap.add_argument(
        "--kv-cache-dtype",
        choices=["fp8"],
        default=None,
        help="an e4m3 KV cache (the limit reads 1-byte keys and values)",
    )
    ap.add_argument("--baseline", choices=["transformers"], default=None)
    ap.add_argument("--baseline-requests", type=int, default=32)
    ap.add_argument("--baseline-new-tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/cuda_<cmd>.json")
    args = ap.parse_args()
    out = args.out or Path(__file__).parent / "results" / f"cuda_{args.command}.json"
    run = {args.command} if args.command != "all" else {"decode", "ttft", "throughput", "startup"}

    report = Report(args.command, out)
    log(f"card: {torch.cuda.get_device_name()}")
    ceil = report.step("ceilings", ceilings)
    report.step("checkpoint_written", write_checkpoint, args.model_dir, LLAMA_3_1_8B)
    fp8 = args.quantization == "fp8"
    weights = report.step("weight_bytes", weight_bytes, args.model_dir, fp8)
    if run & {"decode", "ttft", "throughput"}:
        run_engine_benches(report, run, args, ceil, weights)
    if "startup" in run:
        report.step("startup", bench_startup, args.model_dir, args)
    report.print_table()


if __name__ == "__main__":
    main()
