"""Bad input gets a clear Python exception naming the problem, never a crash or a hang, and
the engine stays usable."""

import json
import shutil
import struct

import pytest

import infire
from infire import SamplingParams

GREEDY = SamplingParams(max_tokens=4, temperature=0.0)


def make_engine(path, **kw):
    return infire.Engine(model=str(path), **kw)


def test_missing_path():
    with pytest.raises(infire.ModelNotFoundError, match="no-such-model"):
        make_engine("/tmp/no-such-model.gguf")
    with pytest.raises(FileNotFoundError):
        make_engine("/tmp/no-such-model.gguf")


def test_file_that_is_no_model(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("these are not weights\n" * 10)
    with pytest.raises(infire.InvalidModelError, match="notes.gguf"):
        make_engine(p)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(infire.InvalidModelError):
        make_engine(empty)


def test_directory_that_is_no_model(tmp_path):
    with pytest.raises(infire.InvalidModelError, match="config.json"):
        make_engine(tmp_path)


@pytest.mark.parametrize("keep", [3, 100, 4096, 1_000_000, 98_000_000])
def test_truncated_gguf(tmp_path, default_model_path, keep):
    p = tmp_path / "truncated.gguf"
    with open(default_model_path, "rb") as src:
        p.write_bytes(src.read(keep))
    with pytest.raises(infire.InvalidModelError):
        make_engine(p)


def _patched_copy(tmp_path, default_model_path, edit):
    data = bytearray(open(default_model_path, "rb").read())
    edit(data)
    p = tmp_path / "patched.gguf"
    p.write_bytes(bytes(data))
    return p


def test_corrupted_gguf_header(tmp_path, default_model_path):
    def bad_magic(d):
        d[0:4] = b"GGUX"

    def huge_tensor_count(d):
        d[8:16] = struct.pack("<Q", 1 << 60)

    def bad_version(d):
        d[4:8] = struct.pack("<I", 99)

    for edit in (bad_magic, huge_tensor_count, bad_version):
        with pytest.raises(infire.InvalidModelError):
            make_engine(_patched_copy(tmp_path, default_model_path, edit))


def test_unsupported_gguf_architecture(tmp_path, default_model_path):
    def other_arch(d):
        key = b"general.architecture"
        at = d.index(key) + len(key) + 4 + 8  # value type (u32), string length (u64)
        assert d[at : at + 5] == b"llama"
        d[at : at + 5] = b"bloom"

    with pytest.raises(infire.UnsupportedModelError, match="bloom"):
        make_engine(_patched_copy(tmp_path, default_model_path, other_arch))


def _hf_dir(tmp_path, config, safetensors_bytes=None):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    if safetensors_bytes is not None:
        (d / "model.safetensors").write_bytes(safetensors_bytes)
    return d


LLAMA_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}


def test_unsupported_hf_architecture(tmp_path):
    with pytest.raises(infire.UnsupportedModelError, match="gpt_neox"):
        make_engine(_hf_dir(tmp_path, {**LLAMA_CONFIG, "model_type": "gpt_neox"}))


def test_hf_config_missing_field(tmp_path):
    cfg = dict(LLAMA_CONFIG)
    del cfg["hidden_size"]
    with pytest.raises(infire.InvalidModelError, match="hidden_size"):
        make_engine(_hf_dir(tmp_path, cfg))


def test_truncated_safetensors(tmp_path):
    header = json.dumps(
        {
            "model.embed_tokens.weight": {
                "dtype": "F32",
                "shape": [256, 64],
                "data_offsets": [0, 65536],
            }
        }
    ).encode()
    blob = struct.pack("<Q", len(header)) + header + b"\0" * 1000  # 64 KiB promised, 1000 given
    with pytest.raises(infire.InvalidModelError, match="safetensors"):
        make_engine(_hf_dir(tmp_path, LLAMA_CONFIG, blob))


def test_corrupted_safetensors_header(tmp_path):
    blob = struct.pack("<Q", 1 << 40) + b"{}"
    with pytest.raises(infire.InvalidModelError):
        make_engine(_hf_dir(tmp_path, LLAMA_CONFIG, blob))


@pytest.fixture(scope="module")
def short_engine(default_model_path):
    return infire.Engine(model=default_model_path, max_model_len=64)


def test_over_long_prompt_fails_alone(short_engine):
    with pytest.raises(infire.InvalidRequestError, match="max_model_len"):
        short_engine.generate("word " * 200, GREEDY)
    (ok,) = short_engine.generate("The capital of France is", GREEDY)
    assert len(ok.outputs[0].token_ids) == 4


def test_max_tokens_beyond_the_context_is_refused(short_engine):
    # Not clamped to what the context leaves (a request for 10^8 tokens used to be accepted
    # and run until the context was full): the error names both numbers, and nothing runs.
    with pytest.raises(
        infire.InvalidRequestError, match=r"max_tokens 100000000 .*max_model_len is 64"
    ):
        short_engine.generate("Hi", infire.SamplingParams(max_tokens=10**8))
    prompt = short_engine.tokenizer.encode("Hi")
    room = 64 - len(prompt)
    with pytest.raises(infire.InvalidRequestError, match=f"at most {room} new tokens"):
        short_engine.generate([prompt], infire.SamplingParams(max_tokens=room + 1))
    params = infire.SamplingParams(max_tokens=room, temperature=0.0, ignore_eos=True)
    (out,) = short_engine.generate([prompt], params)
    assert len(out.outputs[0].token_ids) == room
    assert short_engine.stats()["num_running"] == 0


def test_bad_prompts(short_engine):
    with pytest.raises(infire.InvalidRequestError, match="at least one token"):
        short_engine.generate([[]], GREEDY)
    with pytest.raises(infire.InvalidRequestError, match="vocabulary"):
        short_engine.generate([[1, 2, 10**6]], GREEDY)
    with pytest.raises(ValueError, match="prompt must be"):
        short_engine.generate([3.5], GREEDY)


def test_a_bad_prompt_in_a_batch_rejects_the_batch_and_leaks_nothing(short_engine):
    with pytest.raises(infire.InvalidRequestError):
        short_engine.generate(["fine prompt", "word " * 200], GREEDY)
    stats = short_engine.stats()
    assert stats["num_running"] == stats["num_waiting"] == stats["kv_blocks_used"] == 0
    assert short_engine.generate("still fine", GREEDY)[0].finished


def test_wrong_number_of_sampling_params(short_engine):
    with pytest.raises(infire.InvalidRequestError, match="sampling_params"):
        short_engine.generate(["a", "b"], [GREEDY])


def test_bad_messages(short_engine):
    with pytest.raises(infire.InvalidRequestError, match="role"):
        short_engine.chat([{"content": "no role"}], GREEDY)
    with pytest.raises(infire.InvalidRequestError, match="text content"):
        short_engine.chat([{"role": "user", "content": [{"type": "image_url"}]}], GREEDY)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kv_cache_tokens": 4}, "kv_cache_tokens"),
        ({"max_model_len": 10**6}, "max_model_len"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"device": "tpu"}, "device"),
        ({"dtype": "int3"}, "dtype"),
        ({"async_scheduling": "yes"}, "async_scheduling"),
    ],
)
def test_bad_engine_options(default_model_path, kwargs, match):
    with pytest.raises(infire.InvalidConfigError, match=match):
        infire.Engine(model=default_model_path, **kwargs)


def test_request_bigger_than_the_cache(default_model_path):
    eng = infire.Engine(model=default_model_path, kv_cache_tokens=64)
    with pytest.raises(infire.InvalidRequestError, match="kv_cache_tokens"):
        eng.generate("hello", SamplingParams(max_tokens=100))
    assert eng.generate("hello", GREEDY)[0].finished


def test_tokenizer_errors(engine):
    with pytest.raises(ValueError):
        engine.tokenizer.decode([10**7])


def test_copy_of_default_model_still_loads(tmp_path, default_model_path):
    # The error tests above patch copies; the original stays intact and loadable by path.
    p = tmp_path / "copy.gguf"
    shutil.copy(default_model_path, p)
    assert make_engine(p, max_model_len=32).generate("Hi", GREEDY)[0].finished
