"""vLLM's offline API as its users write it, on the default model (CPU): prompt forms, the
``LLM`` name, SamplingParams fields and copies, ``stop_reason``, ``min_tokens``, progress bars,
a tokenizer shaped like Hugging Face's, ``chat_template_kwargs``, and a vLLM example script run
unchanged but for its import line."""

import copy
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import infire
from infire import LLM, SamplingParams

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
TINY = Path(__file__).parent / "fixtures" / "tiny_models" / "qwen3_qk_norm"
# The end of Qwen3's chat template, as its tokenizer_config.json ships it.
QWEN3_END = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
    "{%- if tools %}[{{ tools | length }} tools]{%- endif %}"
)


def test_llm_is_the_engine():
    assert LLM is infire.Engine


def test_every_prompt_form_gives_the_same_tokens(engine):
    text = "The capital of France is"
    ids = engine.tokenizer.encode(text)
    outs = engine.generate(
        [text, ids, {"prompt": text}, {"prompt_token_ids": ids}], GREEDY, use_tqdm=False
    )
    tokens = [o.outputs[0].token_ids for o in outs]
    assert all(t == tokens[0] for t in tokens), tokens
    assert [o.prompt for o in outs] == [text, None, text, None]
    assert all(o.prompt_token_ids == ids for o in outs)
    # One dict alone is one prompt, not the list of its keys.
    (alone,) = engine.generate({"prompt_token_ids": ids}, GREEDY)
    assert alone.prompt_token_ids == ids and alone.outputs[0].token_ids == tokens[0]


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_token_ids": [1], "prompt": "x"},
        {"text": "x"},
        {},
        {"prompt": 5},
        {"prompt_token_ids": "abc"},
        3.5,
    ],
)
def test_a_prompt_of_another_shape_is_a_clear_error(engine, bad):
    before = engine.stats()["num_waiting"]
    with pytest.raises(infire.InvalidRequestError, match="prompt"):
        engine.generate([bad], GREEDY)
    with pytest.raises(infire.InvalidRequestError, match="prompt"):
        engine.generate(["fine", bad], GREEDY)
    assert engine.stats()["num_waiting"] == before


def test_sampling_params_take_vllm_forms_and_copy():
    p = SamplingParams(
        temperature=0.8, top_p=0.95, stop="\n", min_tokens=2, include_stop_str_in_output=True
    )
    assert p.stop == ["\n"] and p.temperature == 0.8 and p.top_p == 0.95
    assert p.min_tokens == 2 and p.include_stop_str_in_output and p.skip_special_tokens
    for q in (p.clone(), copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert q == p and q is not p
    assert SamplingParams(**p.to_dict()) == p
    assert p != SamplingParams()
    r = repr(SamplingParams(max_tokens=16, stop=["a'b"]))
    assert "max_tokens=16," in r and "seed=None" in r and "Some(" not in r
    assert 'stop=["a\'b"]' in r and "temperature=1.0," in r and "ignore_eos=False" in r


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"stop": 5}, "stop"),
        ({"stop": ["a", 1]}, "stop"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
        ({"skip_special_tokens": "yes"}, "skip_special_tokens"),
        ({"include_stop_str_in_output": None}, "include_stop_str_in_output"),
    ],
)
def test_bad_new_fields_name_themselves(kwargs, field):
    with pytest.raises(infire.InvalidRequestError, match=field):
        SamplingParams(**kwargs)


def test_stop_reason_and_include_stop_str(engine):
    prompt = "1, 2, 3, 4,"
    (free,) = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0))
    text = free.outputs[0].text
    assert " 7" in text, text
    assert free.outputs[0].stop_reason is None
    (cut,) = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0, stop=" 7"))
    assert cut.outputs[0].text == text[: text.index(" 7")]
    assert cut.outputs[0].stop_reason == " 7"
    keep = SamplingParams(max_tokens=12, temperature=0, stop=" 7", include_stop_str_in_output=True)
    (kept,) = engine.generate(prompt, keep)
    assert kept.outputs[0].text == text[: text.index(" 7") + 2]
    third = free.outputs[0].token_ids[2]
    by_id = SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[third])
    (out,) = engine.generate(prompt, by_id)
    assert out.outputs[0].stop_reason == third and out.outputs[0].finish_reason == "stop"


def test_min_tokens_keeps_a_model_that_would_stop_at_once_going(engine):
    # Without the chat template the instruct model ends this question at once.
    question = "What is the capital of France?"
    (free,) = engine.generate(question, SamplingParams(max_tokens=20, temperature=0))
    eos = set(engine.tokenizer.eos_token_ids)
    assert free.outputs[0].finish_reason == "stop" and len(free.outputs[0].token_ids) < 5
    p = SamplingParams(max_tokens=20, temperature=0, min_tokens=6)
    (out,) = engine.generate(question, p)
    c = out.outputs[0]
    assert len(c.token_ids) >= 6
    assert not eos & set(c.token_ids[:6]), c.token_ids
    # Sampled requests keep the rule too (their tokens are picked on the host until then).
    sampled = SamplingParams(max_tokens=10, temperature=1.0, seed=3, min_tokens=10)
    for o in engine.generate([question] * 4, sampled):
        assert len(o.outputs[0].token_ids) == 10
        assert not eos & set(o.outputs[0].token_ids)


def test_skip_special_tokens(engine):
    msgs = [{"role": "user", "content": "Say hello."}]
    base = dict(max_tokens=60, temperature=0, ignore_eos=True)
    # Side by side in one call: run one after the other, the second would hit the prefix cache
    # and compute its prompt's tail with the few-row kernels (8-bit activations) instead of
    # the panels, which can flip a near-tie; this test is about the text, not the cache.
    shown, hidden = engine.chat(
        [msgs, msgs], [SamplingParams(**base, skip_special_tokens=False), SamplingParams(**base)]
    )
    assert shown.outputs[0].token_ids == hidden.outputs[0].token_ids
    assert "<|im_end|>" in shown.outputs[0].text
    assert "<|im_end|>" not in hidden.outputs[0].text


def test_progress_bar_on_many_prompts(engine, capfd):
    prompts = [f"Count: {i}," for i in range(10)]
    p = SamplingParams(max_tokens=2, temperature=0)
    engine.generate(prompts[:3], p)
    assert "Processed prompts" not in capfd.readouterr().err  # a handful: no bar
    engine.generate(prompts, p)  # more than a handful: a bar by default, as vLLM
    err = capfd.readouterr().err
    assert "Processed prompts" in err and "10/10" in err
    engine.generate(prompts, p, use_tqdm=False)
    assert "Processed prompts" not in capfd.readouterr().err

    class Bar:  # a tqdm-like callable (tqdm.tqdm itself fits)
        def __init__(self, total, desc, unit):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    bars = []
    engine.chat([[{"role": "user", "content": "hi"}]] * 3, p, use_tqdm=Bar)
    assert [(b.total, b.n, b.closed) for b in bars] == [(3, 3, True)]
    with pytest.raises(infire.InvalidRequestError, match="use_tqdm"):
        engine.generate(prompts, p, use_tqdm="yes")


def test_tokenizer_reads_like_hugging_face(engine):
    tok = engine.get_tokenizer()
    assert tok is engine.tokenizer
    enc = tok("Hello world")
    assert enc["input_ids"] == enc.input_ids == tok.encode("Hello world")
    assert enc.attention_mask == [1] * len(enc.input_ids)
    batch = tok(["a", "b c"])
    assert batch["input_ids"] == [tok.encode("a"), tok.encode("b c")]
    assert tok.eos_token_id == tok.eos_token_ids[0]
    assert tok.eos_token == "<|im_end|>"
    assert tok.decode(tok.encode("Hello world")) == "Hello world"
    assert tok.batch_decode([tok.encode("a"), tok.encode("b")]) == ["a", "b"]
    assert tok.convert_tokens_to_ids(tok.eos_token) == tok.eos_token_id
    assert len(tok) == tok.vocab_size
    msgs = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == engine.apply_chat_template(msgs) and text.endswith("assistant\n")
    assert tok.apply_chat_template(msgs, add_generation_prompt=True) == tok.encode(
        text, add_special_tokens=False
    )
    with pytest.raises(infire.InvalidRequestError, match="return_tensors"):
        tok("hi", return_tensors="pt")


def test_chat_template_kwargs_and_tools_reach_the_template(tmp_path):
    model = tmp_path / "qwen3"
    shutil.copytree(TINY, model)
    (model / "chat_template.jinja").write_text(QWEN3_END)
    msgs = [{"role": "user", "content": "hi"}]
    tok = infire.load_tokenizer(str(model))
    plain = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert plain.endswith("<|im_start|>assistant\n")
    off = tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert off == plain + "<think>\n\n</think>\n\n"
    llm = LLM(str(model), device="cpu")
    p = SamplingParams(max_tokens=2, temperature=0)
    (out,) = llm.chat(msgs, p, chat_template_kwargs={"enable_thinking": False})
    assert out.prompt == off
    (out,) = llm.chat(msgs, p, tools=[{"type": "function", "function": {"name": "f"}}])
    assert out.prompt == plain + "[1 tools]"
    with pytest.raises(infire.InvalidRequestError, match="chat_template_kwargs|JSON"):
        llm.chat(msgs, p, chat_template_kwargs={"x": object()})


VLLM_EXAMPLE = """
from vllm import LLM, SamplingParams

# Sample prompts.
prompts = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]
# Create a sampling params object.
sampling_params = SamplingParams(temperature=0.8, top_p=0.95)


def main():
    # Create an LLM.
    llm = LLM(model=MODEL)
    # Generate texts from the prompts.
    # The output is a list of RequestOutput objects
    # that contain the prompt, generated text, and other information.
    outputs = llm.generate(prompts, sampling_params)
    # Print the outputs.
    print("\\nGenerated Outputs:\\n" + 60 * "-")
    for output in outputs:
        prompt = output.prompt
        generated_text = output.outputs[0].text
        print(f"Prompt:    {prompt!r}")
        print(f"Output:    {generated_text!r}")
        print(60 * "-")
    conversation = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Hello"},
    ]
    outputs = llm.chat(conversation, sampling_params, use_tqdm=False)
    print(f"Chat:      {outputs[0].outputs[0].text!r}")
    tokenizer = llm.get_tokenizer()
    print("Tokens:   ", len(tokenizer(prompts[0])["input_ids"]), tokenizer.eos_token_id)


if __name__ == "__main__":
    main()
"""


def test_a_vllm_example_runs_with_only_its_import_changed(default_model_path, tmp_path):
    """vLLM's examples/offline_inference/basic/basic.py (plus its chat and tokenizer calls),
    its import line changed; `MODEL` names the default model where the example names an OPT
    checkpoint (not a Llama-family model)."""
    script = VLLM_EXAMPLE.replace(
        "from vllm import LLM, SamplingParams", "from infire import LLM, SamplingParams"
    )
    assert script.count("infire") == 1
    path = tmp_path / "basic.py"
    path.write_text(f"MODEL = {default_model_path!r}\n" + textwrap.dedent(script))
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Prompt:") == 4 and "Chat:" in r.stdout
    assert "Prompt:    'The capital of France is'" in r.stdout
