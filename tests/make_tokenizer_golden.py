"""Generate tests/golden/tokenizer_smollm2.json with Hugging Face transformers as the reference.

The golden file holds, for a varied corpus (prose, numbers, code, whitespace runs, CJK, Arabic,
combining marks, emoji and ZWJ sequences, special tokens written in the text, the empty string,
a long paragraph), the token ids transformers gives with and without special tokens, and for a
few chat conversations the text of `apply_chat_template(..., tokenize=False)` (with and without
the generation prompt) and its ids. All of it from the tokenizer transformers builds out of the
default model's GGUF metadata (byte-level BPE, no BOS added). tests/test_tokenizer.py compares
Infire against it; CI only reads the committed JSON.

Regenerate (needs transformers, gguf; a few seconds):

    python tests/make_tokenizer_golden.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path

from transformers import AutoTokenizer

OUTPUT_PATH = Path(__file__).parent / "golden" / "tokenizer_smollm2.json"

LONG_PARAGRAPH = (
    "Tokenizers turn text into the integer ids a language model reads. Byte-level BPE, the "
    "scheme SmolLM2 uses, starts from the 256 possible bytes, so any string at all can be "
    "encoded, and then applies merges learned from a training corpus, most frequent first, to "
    "build longer tokens: common words become one token, rare words several, and text in "
    "scripts the corpus rarely saw falls back to one token per byte. Before merging, a regular "
    "expression splits the text into words, numbers, punctuation and whitespace, so that no "
    "token ever spans two words. Decoding reverses the mapping exactly, which is why a "
    "streaming server must hold back bytes until they form a whole character. "
) * 3

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "SmolLM2 is a family of compact language models available in three sizes: 135M, 360M, "
    "and 1.7B parameters.",
    "12345",
    "3.14159 2,718 -42 1e-10 0x1F 1_000_000 007",
    "Call 555-0199 on 2024-07-26 at 13:05.",
    "def add(a, b):\n    return a + b\n",
    "if (x) {\n\treturn y;\n}\n",
    "class Foo:\n    def __init__(self):\n        self.x = [1, 2, 3]  # comment\n\n\n",
    "   leading spaces",
    "trailing spaces   ",
    "multiple     spaces\tand\t\ttabs",
    "windows\r\nline\r\nendings\r\n",
    "\n\n\nblank lines\n\n",
    " ",
    "\t",
    "   \n  \n",
    "日本語のテキストです。",
    "中文文本，包括标点符号。",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "Ελληνικά και Кириллица",
    "Café naïve résumé façade",
    "Cafe\u0301 n\u0303 a\u0308 combining marks",
    "Emoji: 😀🎉🚀",
    "Family 👩\u200d👩\u200d👧\u200d👦, flags 🇫🇷🇯🇵, skin tone 👍🏽",
    "zero\u200bwidth\u200djoiner",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<repo_name>infire<file_sep>main.rs",
    "<|im_start| and < |im_end|> are not special",
    "",
    "It's a dog's life; they'll say we've done it, I'm sure you'd agree.",
    "URL: https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2#frag",
    "email@example.com, @mention #hashtag $100 50% a+b=c",
    "mixed CASE words ALLCAPS camelCase snake_case kebab-case",
    '{"name": "infire", "version": [0, 1], "ok": true}',
    "∑_{i=1}^{n} x_i² ≤ √(π·e) ≠ ∞",
    "control\x0bchars\x0cand\x7fDEL",
    LONG_PARAGRAPH,
]

CHATS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Where is the treasure?"},
        {"role": "assistant", "content": "Arr, buried on the isle!"},
        {"role": "user", "content": "Which isle?"},
    ],
    [{"role": "user", "content": "Traduis : « bonjour » 😀\n  avec des espaces  "}],
    [
        {"role": "user", "content": "Write a haiku about Rust."},
        {
            "role": "assistant",
            "content": "Borrowed, never lost\nlifetimes bend but do not break\nthe compiler sighs",
        },
    ],
]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def layout(golden: dict) -> str:
    """JSON with one line per corpus entry or chat rendering, so that diffs stay readable."""

    def compact(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    sections = [f' "metadata": {compact(golden["metadata"])}']
    for key in ("corpus", "chats"):
        items = ",\n".join(f"  {compact(item)}" for item in golden[key])
        sections.append(f' "{key}": [\n{items}\n ]')
    return "{\n" + ",\n".join(sections) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--output", type=Path, default=OUTPUT_PATH)
    args = parser.parse_args()

    gguf = args.gguf.resolve()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

    corpus = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text, f"transformers does not round-trip {text!r}"
        corpus.append(
            {
                "text": text,
                "ids": ids,
                "ids_with_special_tokens": tok.encode(text, add_special_tokens=True),
            }
        )

    chats = []
    for messages in CHATS:
        for add_generation_prompt in (True, False):
            text = tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            # What apply_chat_template(tokenize=True) does: the template writes the specials.
            ids = tok.encode(text, add_special_tokens=False)
            chats.append(
                {
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "text": text,
                    "ids": ids,
                }
            )

    golden = {
        "metadata": {
            "model_file": gguf.name,
            "model_sha256": sha256(gguf),
            "transformers": importlib.metadata.version("transformers"),
            "tokenizers": importlib.metadata.version("tokenizers"),
            "python": platform.python_version(),
            "generated": datetime.date.today().isoformat(),
            "command": "python tests/make_tokenizer_golden.py /path/to/" + gguf.name,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "vocab_size": len(tok),
        },
        "corpus": corpus,
        "chats": chats,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(layout(golden), encoding="utf-8")
    print(f"wrote {args.output}: {len(corpus)} texts, {len(chats)} chat renderings")


if __name__ == "__main__":
    main()
