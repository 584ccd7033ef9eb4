"""The Python API on the default model, CPU backend: shapes of outputs, sampling options,
streaming, chat, batching."""

import itertools

import pytest

import infire
from infire import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


def test_generate_returns_one_finished_output_per_prompt(engine):
    outs = engine.generate(["The capital of France is", "1, 2, 3, 4,"], GREEDY)
    assert len(outs) == 2
    for out in outs:
        assert isinstance(out, infire.RequestOutput)
        assert out.finished
        (c,) = out.outputs
        assert c.index == 0
        assert len(c.token_ids) == 12
        assert c.finish_reason == "length"
        assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert outs[0].prompt == "The capital of France is"
    assert outs[0].prompt_token_ids == engine.tokenizer.encode("The capital of France is")
    assert outs[0].request_id != outs[1].request_id


def test_single_prompt_and_token_id_prompt(engine):
    (a,) = engine.generate("Once upon a time", GREEDY)
    ids = engine.tokenizer.encode("Once upon a time")
    (b,) = engine.generate(ids, GREEDY)
    assert b.prompt is None
    assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_batched_equals_alone(engine):
    prompts = ["The capital of France is", "def add(a, b):", "Water boils at", "Hi"]
    together = engine.generate(prompts, GREEDY)
    for p, t in zip(prompts, together, strict=True):
        (alone,) = engine.generate(p, GREEDY)
        assert alone.outputs[0].token_ids == t.outputs[0].token_ids, p


def test_chunked_prefill_gives_the_same_tokens(default_model_path, engine):
    prompt = "Here is a long story about a cat. " * 12
    small = infire.Engine(model=default_model_path, max_num_batched_tokens=16)
    assert (
        small.generate(prompt, GREEDY)[0].outputs[0].token_ids
        == engine.generate(prompt, GREEDY)[0].outputs[0].token_ids
    )


def test_seed_reproduces_sampling_and_differs_across_seeds(engine):
    p = SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
    a = engine.generate("Tell me a story", p)[0].outputs[0].token_ids
    b = engine.generate(["Tell me a story", "Something else"], p)[0].outputs[0].token_ids
    assert a == b
    q = SamplingParams(max_tokens=16, temperature=1.0, seed=4321)
    assert engine.generate("Tell me a story", q)[0].outputs[0].token_ids != a


def test_stop_strings_cut_the_text(engine):
    (free,) = engine.generate("1, 2, 3, 4,", SamplingParams(max_tokens=20, temperature=0))
    text = free.outputs[0].text
    assert " 7" in text, text
    stop = SamplingParams(max_tokens=20, temperature=0, stop=[" 7"])
    (out,) = engine.generate("1, 2, 3, 4,", stop)
    assert out.outputs[0].finish_reason == "stop"
    assert out.outputs[0].text == text[: text.index(" 7")]


def test_stop_token_ids_and_eos(engine):
    (free,) = engine.generate("1, 2, 3, 4,", SamplingParams(max_tokens=8, temperature=0))
    third = free.outputs[0].token_ids[2]
    p = SamplingParams(max_tokens=8, temperature=0, stop_token_ids=[third])
    (out,) = engine.generate("1, 2, 3, 4,", p)
    assert out.outputs[0].finish_reason == "stop"
    assert out.outputs[0].token_ids == free.outputs[0].token_ids[:3]


def test_chat_stops_at_end_of_turn(engine):
    msgs = [{"role": "user", "content": "Say hello."}]
    (out,) = engine.chat(msgs, SamplingParams(max_tokens=200, temperature=0))
    c = out.outputs[0]
    assert c.finish_reason == "stop"
    assert c.token_ids[-1] in engine.tokenizer.eos_token_ids
    assert "<|im_end|>" not in c.text
    assert out.prompt.startswith("<|im_start|>")


def test_logprobs(engine):
    p = SamplingParams(max_tokens=5, temperature=0, logprobs=3)
    (out,) = engine.generate("The capital of France is", p)
    lps = out.outputs[0].logprobs
    assert len(lps) == 5
    for tok, step in zip(out.outputs[0].token_ids, lps, strict=True):
        assert len(step) == 3  # greedy: the sampled token is the top one
        assert max(step, key=step.get) == tok
        assert all(v <= 0 for v in step.values())


def test_stream_yields_growing_outputs_then_finishes(engine):
    outs = list(engine.stream("The capital of France is", GREEDY))
    assert len(outs) == 12
    assert [len(o.outputs[0].token_ids) for o in outs] == list(range(1, 13))
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    for a, b in itertools.pairwise(outs):
        assert b.outputs[0].text.startswith(a.outputs[0].text)
    (full,) = engine.generate("The capital of France is", GREEDY)
    assert outs[-1].outputs[0].token_ids == full.outputs[0].token_ids
    assert outs[-1].outputs[0].text == full.outputs[0].text


def test_sampling_params_defaults_and_repr():
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k) == (16, 1.0, 1.0, -1)
    assert "temperature=1" in repr(p)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.5},
        {"top_p": 0.0},
        {"top_p": 1.01},
        {"top_k": -3},
        {"min_p": 2.0},
        {"max_tokens": 0},
        {"max_tokens": -1},
        {"repetition_penalty": 0.0},
        {"presence_penalty": 5.0},
        {"frequency_penalty": -3.0},
        {"logprobs": 100},
        {"stop": [""]},
    ],
)
def test_invalid_sampling_params_raise_value_error(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)
    with pytest.raises(infire.InvalidRequestError):
        SamplingParams(**kwargs)
