"""Infire's tokenizer against transformers on the default model (SmolLM2-135M-Instruct GGUF).

tests/golden/tokenizer_smollm2.json holds what transformers returns for the same file; regenerate
it with tests/make_tokenizer_golden.py (see its docstring).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import infire

GOLDEN_PATH = Path(__file__).parent / "golden" / "tokenizer_smollm2.json"
GOLDEN = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
CORPUS = GOLDEN["corpus"]
CHATS = GOLDEN["chats"]


def label(text: str) -> str:
    return repr(text[:30])


@pytest.fixture(scope="module")
def tok(default_model_path):
    return infire.load_tokenizer(default_model_path)


@pytest.mark.parametrize("entry", CORPUS, ids=[label(e["text"]) for e in CORPUS])
def test_encode_matches_transformers(tok, entry):
    assert tok.encode(entry["text"], add_special_tokens=False) == entry["ids"]
    # SmolLM2's GGUF does not ask for BOS, so special tokens add nothing here.
    assert tok.encode(entry["text"], add_special_tokens=True) == entry["ids_with_special_tokens"]


@pytest.mark.parametrize("entry", CORPUS, ids=[label(e["text"]) for e in CORPUS])
def test_decode_round_trips(tok, entry):
    text = entry["text"]
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.decode(entry["ids"], skip_special_tokens=False) == text


@pytest.mark.parametrize(
    "chat",
    CHATS,
    ids=[f"{len(c['messages'])}msg-gen{int(c['add_generation_prompt'])}" for c in CHATS],
)
def test_chat_template_matches_transformers(tok, chat):
    """As in transformers: the text with ``tokenize=False``, its ids by default."""
    gen = chat["add_generation_prompt"]
    text = tok.apply_chat_template(chat["messages"], tokenize=False, add_generation_prompt=gen)
    assert text == chat["text"]
    assert tok.encode(text, add_special_tokens=False) == chat["ids"]
    assert tok.apply_chat_template(chat["messages"], add_generation_prompt=gen) == chat["ids"]


def test_special_tokens_are_skipped_on_request(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
