"""Generate tests/golden/smollm2_generation.json with Hugging Face transformers as the reference.

The golden file holds, for a set of raw prompts and chat conversations, the prompt token ids,
40 greedy token ids (EOS ignored) and per-step top-20 log-probabilities computed by
transformers on the same GGUF weights Infire loads (transformers dequantizes them to f32).
tests/test_generation.py compares Infire against it; CI only reads the committed JSON.

Regenerate (needs torch, transformers, gguf; about ten minutes on 2 CPU cores):

    python tests/make_golden.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf

The greedy loop below runs a full-sequence forward pass at every step (no KV cache), so each
step's logits depend on nothing but the token sequence. `model.generate` (which does use the
KV cache) is run as a cross-check: its tokens must equal ours up to its first EOS, and the
largest log-probability difference between the two paths is recorded in the metadata as a
measure of f32 noise between two correct implementations.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

MAX_NEW_TOKENS = 40
TOP_LOGPROBS = 20
# Log-probabilities are rounded to this many decimals; the tests' tolerances are far coarser.
LOGPROB_DECIMALS = 6
OUTPUT_PATH = Path(__file__).parent / "golden" / "smollm2_generation.json"

LONG_PARAGRAPH = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg, a goldsmith from Mainz, combined several existing technologies into a single "
    "system for producing books. Movable metal type, an oil-based ink that adhered to metal, "
    "and a screw press adapted from those used to make wine allowed a small workshop to print "
    "hundreds of identical pages in a day. Before this, books were copied by hand, usually in "
    "monasteries, and a single volume could take a scribe many months to finish. Within fifty "
    "years, printing shops had spread to more than two hundred cities across Europe, and "
    "millions of books were in circulation. The consequences were profound: literacy rose, "
    "scientific results could be shared and checked, and new ideas travelled faster than any "
    "authority could control them. Historians often argue that the most important effect of "
    "the press was"
)

# (name, prompt text). Names are stable identifiers used by the tests.
RAW_PROMPTS = [
    ("capital_of_france", "The capital of France is"),
    ("code_fibonacci", "def fibonacci(n):"),
    ("list_continuation", "Here is a list of fruits:\n1. Apple\n2. Banana\n3. Cherry\n4."),
    (
        "unicode",
        "Zoë's café in Zürich serves crème brûlée — 東京の寿司も 🍣! The menu says:",
    ),
    ("numbers", "In 1969, 3 astronauts flew 384,400 km to the Moon. The mission was called"),
    ("long_paragraph", LONG_PARAGRAPH),
    ("single_token", "Hello"),
    ("story", "Once upon a time, in a small village by the sea, there lived"),
]

# (name, messages). The ChatML template in the GGUF adds a default system message when the
# conversation has none.
CHATS = [
    ("chat_capital_of_france", [{"role": "user", "content": "What is the capital of France?"}]),
    (
        "chat_with_system",
        [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
    ),
    (
        "chat_multi_turn",
        [
            {"role": "user", "content": "Hi! My name is Ada and I like painting."},
            {"role": "assistant", "content": "Hello Ada! Painting is wonderful. How can I help?"},
            {"role": "user", "content": "What is my name, and what do I like?"},
        ],
    ),
    (
        "chat_code",
        [{"role": "user", "content": "Write a Python function that reverses a string."}],
    ),
]


def top_logprobs(logprobs: torch.Tensor) -> list[list]:
    """The TOP_LOGPROBS highest [token_id, logprob] pairs of one step, highest first."""
    values, ids = torch.topk(logprobs, TOP_LOGPROBS)
    return [[int(i), round(float(v), LOGPROB_DECIMALS)] for i, v in zip(ids, values, strict=True)]


@torch.inference_mode()
def greedy(model, prompt_ids: list[int]) -> tuple[list[int], list[torch.Tensor], torch.Tensor]:
    """Greedy decoding ignoring EOS: returns the new ids, each step's f32 log-probabilities
    over the vocabulary, and the first step's raw logits."""
    ids = list(prompt_ids)
    new_ids, step_logprobs, first_logits = [], [], None
    for _ in range(MAX_NEW_TOKENS):
        logits = model(torch.tensor([ids])).logits[0, -1].float()
        if first_logits is None:
            first_logits = logits
        logprobs = torch.log_softmax(logits, dim=-1)
        # torch.argmax returns the lowest index among exact ties.
        token = int(torch.argmax(logits))
        new_ids.append(token)
        step_logprobs.append(logprobs)
        ids.append(token)
    return new_ids, step_logprobs, first_logits


@torch.inference_mode()
def cross_check_with_generate(
    model, prompt_ids: list[int], new_ids: list[int], step_logprobs: list[torch.Tensor]
) -> float:
    """Check `model.generate` (KV cache) agrees with the full-forward loop up to its first EOS;
    return the largest |logprob difference| over our top-20 tokens at the steps compared."""
    out = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        return_dict_in_generate=True,
        output_logits=True,
    )
    generated = out.sequences[0, len(prompt_ids) :].tolist()[: len(out.logits)]
    if generated != new_ids[: len(generated)]:
        raise AssertionError(f"generate() {generated} disagrees with greedy loop {new_ids}")
    worst = 0.0
    for logits, ours in zip(out.logits, step_logprobs, strict=False):
        theirs = torch.log_softmax(logits[0].float(), dim=-1)
        top = torch.topk(ours, TOP_LOGPROBS).indices
        worst = max(worst, float((theirs[top] - ours[top]).abs().max()))
    return worst


def run_case(model, tokenizer, prompt: str) -> tuple[dict, float]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    new_ids, step_logprobs, first_logits = greedy(model, prompt_ids)
    cache_diff = cross_check_with_generate(model, prompt_ids, new_ids, step_logprobs)
    eos = tokenizer.eos_token_id
    case = {
        "prompt": prompt,
        "prompt_token_ids": prompt_ids,
        "token_ids": new_ids,
        "text": tokenizer.decode(new_ids, skip_special_tokens=False),
        "first_eos_step": new_ids.index(eos) if eos in new_ids else None,
        "first_step_logits": {
            "max": float(first_logits.max()),
            "mean": float(first_logits.mean()),
            "std": float(first_logits.std(correction=0)),
        },
        "chosen_logprobs": [
            round(float(lp[t]), LOGPROB_DECIMALS)
            for t, lp in zip(new_ids, step_logprobs, strict=True)
        ],
        "top_logprobs": [top_logprobs(lp) for lp in step_logprobs],
    }
    return case, cache_diff


def report_near_ties(name: str, case: dict) -> None:
    for step, top in enumerate(case["top_logprobs"]):
        gap = top[0][1] - top[1][1]
        if gap < 1e-2:
            pair = f"{top[0][0]} vs {top[1][0]}"
            print(f"  near tie: {name} step {step}: top-2 gap {gap:.2e} ({pair})")


def to_json(golden: dict) -> str:
    """JSON with one case field, or one step of top log-probabilities, per line, so that a
    regenerated file diffs readably."""

    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    def case_lines(case: dict) -> str:
        fields = []
        for key, value in case.items():
            if key == "top_logprobs":
                steps = ",\n    ".join(dump(step) for step in value)
                fields.append(f"   {dump(key)}: [\n    {steps}\n   ]")
            else:
                fields.append(f"   {dump(key)}: {dump(value)}")
        return "  {\n" + ",\n".join(fields) + "\n  }"

    metadata = json.dumps(golden["metadata"], ensure_ascii=False, indent=1).replace("\n", "\n ")
    cases = ",\n".join(case_lines(case) for case in golden["cases"])
    return f'{{\n "metadata": {metadata},\n "cases": [\n{cases}\n ]\n}}\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    args = parser.parse_args()
    gguf_path = args.gguf.resolve()

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    model.eval()

    cases, worst_cache_diff = [], 0.0
    for name, prompt in RAW_PROMPTS:
        case, diff = run_case(model, tokenizer, prompt)
        cases.append({"name": name, "kind": "raw", **case})
        worst_cache_diff = max(worst_cache_diff, diff)
        print(f"{name}: {prompt!r} -> {case['text']!r}")
        report_near_ties(name, case)
    for name, messages in CHATS:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        case, diff = run_case(model, tokenizer, prompt)
        cases.append({"name": name, "kind": "chat", "messages": messages, **case})
        worst_cache_diff = max(worst_cache_diff, diff)
        print(f"{name}: {messages[-1]['content']!r} -> {case['text']!r}")
        report_near_ties(name, case)

    golden = {
        "metadata": {
            "description": "Greedy generation reference from Hugging Face transformers (f32).",
            "command": f"python tests/make_golden.py /path/to/{gguf_path.name}",
            "model_file": gguf_path.name,
            "model_sha256": hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": importlib.metadata.version("gguf"),
            "dtype": "float32",
            "tokenize": "tokenizer(text, add_special_tokens=False); this GGUF adds no BOS",
            "chat_template": "tokenizer.apply_chat_template(messages, tokenize=False, "
            "add_generation_prompt=True) with the template stored in the GGUF",
            "decoding": "greedy argmax over a full-sequence forward pass per step, EOS ignored",
            "max_new_tokens": MAX_NEW_TOKENS,
            "top_logprobs": TOP_LOGPROBS,
            "logprob_decimals": LOGPROB_DECIMALS,
            "first_step_logits_std": "population standard deviation (correction=0)",
            "eos_token_id": tokenizer.eos_token_id,
            "kv_cache_vs_full_forward_max_abs_logprob_diff": worst_cache_diff,
        },
        "cases": cases,
    }
    OUTPUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    text = to_json(golden)
    assert json.loads(text) == golden
    OUTPUT_PATH.write_text(text)
    print(f"wrote {OUTPUT_PATH} ({OUTPUT_PATH.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
