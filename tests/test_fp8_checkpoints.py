"""FP8 checkpoints in each published format, loaded on the CPU (dequantized to f32 at load).

The default model's projections are quantized here to e4m3 (tests/fp8_quantize.py) and written
in each format Infire reads: compressed-tensors per tensor (static activation scales, which
are ignored) and per channel (dynamic per-token activations, `ignore: ["lm_head"]`), and
`quant_method: "fp8"` with 128 x 128 blocks (the model's 576 and 192 are not multiples of 128,
so the last blocks are partial). Beside each, its reference: the same weights dequantized in
numpy and saved as a plain bf16 checkpoint.

The rule: the scales keep every dequantized weight exactly representable in bf16, so the f32
CPU path computes the same numbers from both checkpoints. Greedy decoding must therefore
follow the same tokens for all GREEDY_TOKENS steps, with each step's log-probabilities within
LOGPROB_ATOL (they are equal in practice; the tolerance only leaves room for summation order,
which is the same code on both). A loader that misreads one scale, one block index or one
code moves them by far more.
"""

from __future__ import annotations

import json
import shutil

import pytest
from default_model_hf import read_default_model
from fp8_quantize import FORMATS, write_fp8_pair

import infire

GREEDY_TOKENS = 64
TOP_LOGPROBS = 5
LOGPROB_ATOL = 1e-5
PROMPT = "The printing press changed Europe because"
# Small pools: the checkpoints are loaded six times in this module.
ENGINE_OPTIONS = dict(device="cpu", kv_cache_tokens=1024, max_num_seqs=2)


@pytest.fixture(scope="module")
def default_model(default_model_path):
    return read_default_model(default_model_path)


@pytest.fixture(scope="module", params=sorted(FORMATS))
def checkpoints(request, default_model, tmp_path_factory):
    """(FP8 checkpoint, bf16 reference) of one format; removed when the module is done."""
    out = tmp_path_factory.mktemp("fp8")
    pair = write_fp8_pair(out, request.param, *default_model)
    yield pair
    shutil.rmtree(out, ignore_errors=True)


def greedy(path) -> tuple[list[int], list[dict[int, float]], dict]:
    engine = infire.Engine(model=str(path), **ENGINE_OPTIONS)
    params = infire.SamplingParams(
        temperature=0.0, max_tokens=GREEDY_TOKENS, ignore_eos=True, logprobs=TOP_LOGPROBS
    )
    out = engine.generate([PROMPT], params)[0].outputs[0]
    stats = engine.stats()
    del engine  # its weights and KV cache go before the next engine loads
    return out.token_ids, out.logprobs, stats


def test_fp8_checkpoint_matches_its_dequantized_reference(checkpoints):
    fp8_path, ref_path = checkpoints
    with open(fp8_path / "config.json") as f:
        assert "quantization_config" in json.load(f)
    tokens, logprobs, stats = greedy(fp8_path)
    ref_tokens, ref_logprobs, ref_stats = greedy(ref_path)
    assert (stats["quantization"], ref_stats["quantization"]) == ("fp8", None)
    assert stats["kv_cache_dtype"] == "float32"
    assert len(tokens) == GREEDY_TOKENS
    assert tokens == ref_tokens, fp8_path.name
    for step, (got, want) in enumerate(zip(logprobs, ref_logprobs, strict=True)):
        assert got.keys() == want.keys(), (fp8_path.name, step)
        for t, lp in want.items():
            assert abs(got[t] - lp) <= LOGPROB_ATOL, (fp8_path.name, step, t, got[t], lp)


@pytest.mark.parametrize(
    "quantization_config,message",
    [
        (
            {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True},
            'quantization method "awq"',
        ),
        ({"quant_method": "gptq", "bits": 4}, 'quantization method "gptq"'),
        ({"quant_method": "fp8", "fmt": "e5m2"}, 'fmt "e5m2"'),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "int-quantized",
                "config_groups": {"g": {"weights": {"num_bits": 8, "type": "int"}}},
            },
            'format "int-quantized"',
        ),
    ],
)
def test_unsupported_quantization_is_named(tmp_path, default_model, quantization_config, message):
    """Refused when config.json is read, before any weight is (so no weights are written)."""
    _, config, tokenizer_files = default_model
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "quantization_config": quantization_config})
    )
    for name, text in tokenizer_files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(infire.UnsupportedModelError, match=message):
        infire.Engine(model=str(tmp_path), **ENGINE_OPTIONS)


@pytest.mark.parametrize("option", [{"quantization": "fp8"}, {"kv_cache_dtype": "fp8"}])
def test_fp8_options_need_cuda(default_model_path, option):
    with pytest.raises(infire.InvalidConfigError, match="need a CUDA device"):
        infire.Engine(model=default_model_path, **ENGINE_OPTIONS, **option)
