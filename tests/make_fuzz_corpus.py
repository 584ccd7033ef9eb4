"""Writes the fuzz corpus under tests/fuzz_corpus/<target>/: small seeds for each parser and
the inputs that once crashed, aborted or hung the engine (issue "Hostile input and faults").
Inputs that fuzzing found (`crash-found-*`) are committed as they are; this script leaves them.
`cargo test --test fuzz_regression` runs every file, then mutates them; the cargo-fuzz targets
in fuzz/ start from the same directories.

Regenerate (from the repository root, standard library only):

    python3 tests/make_fuzz_corpus.py
"""

import json
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "fuzz_corpus"
TINY = ROOT / "fixtures" / "tiny_models" / "llama_tied_mha"


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_file(kvs: list[tuple[str, int, bytes]], tensors: list[tuple[str, list[int], bytes]]):
    """A GGUF v3 file: metadata (key, value type, encoded value) and f32 tensors, alignment 32
    unless the metadata says otherwise."""
    align = 32
    for key, ty, value in kvs:
        if key == "general.alignment" and ty == 4:
            align = max(struct.unpack("<I", value)[0], 1)
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, ty, value in kvs:
        out += gguf_string(key) + struct.pack("<I", ty) + value
    offset, data = 0, b""
    for name, dims, raw in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", 0, offset)
        data += raw + b"\0" * (-len(raw) % align)
        offset = len(data)
    out += b"\0" * (-len(out) % align)
    return out + data


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def f32(v: float) -> bytes:
    return struct.pack("<f", v)


def llama_meta(extra: list[tuple[str, int, bytes]]) -> list[tuple[str, int, bytes]]:
    base = [
        ("general.architecture", 8, gguf_string("llama")),
        ("llama.embedding_length", 4, u32(8)),
        ("llama.feed_forward_length", 4, u32(16)),
        ("llama.block_count", 4, u32(1)),
        ("llama.attention.head_count", 4, u32(2)),
        ("llama.context_length", 4, u32(64)),
        ("llama.vocab_size", 4, u32(4)),
    ]
    keys = {k for k, _, _ in extra}
    return [kv for kv in base if kv[0] not in keys] + extra


def write(target: str, name: str, data: bytes | str) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data.encode() if isinstance(data, str) else data)


def main() -> None:
    norm = ("blk.0.attn_norm.weight", [8], f32(1.0) * 8)
    write("gguf", "seed-tiny-llama.gguf", (ROOT / "fixtures" / "tiny_llama.gguf").read_bytes())
    write("gguf", "seed-small.gguf", gguf_file(llama_meta([]), [norm]))
    write("gguf", "crash-alignment-1.gguf", gguf_file([("general.alignment", 4, u32(1))], [norm]))
    write(
        "gguf",
        "crash-rope-factor-nan.gguf",
        gguf_file(
            llama_meta(
                [
                    ("llama.rope.scaling.type", 8, gguf_string("linear")),
                    ("llama.rope.scaling.factor", 6, f32(float("nan"))),
                ]
            ),
            [norm],
        ),
    )
    write(
        "gguf",
        "crash-context-length-2-20.gguf",
        gguf_file(llama_meta([("llama.context_length", 4, u32(1 << 20))]), [norm]),
    )
    write(
        "gguf",
        "crash-nan-weight.gguf",
        gguf_file(llama_meta([]), [("blk.0.attn_norm.weight", [2], f32(1.0) + f32(float("nan")))]),
    )

    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}})
    header += " " * (-len(header) % 8)
    body = struct.pack("<Q", len(header)) + header.encode()
    write("safetensors", "seed-f32.safetensors", body + struct.pack("<4f", 1, -2, 3.5, 0.25))
    write("safetensors", "crash-nan.safetensors", body + struct.pack("<4f", 1, float("nan"), 0, 0))

    config = json.loads((TINY / "config.json").read_text())
    write("config", "seed-tiny-llama.json", json.dumps(config))
    for name, patch in [
        ("crash-max-position-minus-1", {"max_position_embeddings": -1}),
        ("crash-head-dim-minus-1", {"head_dim": -1}),
        ("crash-max-position-2-24", {"max_position_embeddings": 1 << 24}),
        ("crash-rope-factor-0", {"rope_scaling": {"rope_type": "linear", "factor": 0}}),
    ]:
        write("config", name + ".json", json.dumps({**config, **patch}))
    write("config", "crash-invalid-utf8.json", b'{"model_type": "llama\xff\xfe"}')

    write("tokenizer", "seed-tiny.json", (TINY / "tokenizer.json").read_bytes())

    chatml = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    write("template", "seed-chatml.jinja", chatml)
    write(
        "template",
        "crash-nested-loops.jinja",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    )
    write(
        "template",
        "crash-growing-output.jinja",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'xxxxxxxx' * 1000 }}"
        "{% endfor %}{% endfor %}",
    )
    # Values that grow past the memory budget: a doubled namespace string, a list concatenated
    # with itself, a list holding itself twice (printed), copies joined.
    write(
        "template",
        "crash-growing-namespace.jinja",
        "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
    )
    write(
        "template",
        "crash-growing-list.jinja",
        "{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}"
        "{% endfor %}{{ ns.l|length }}",
    )
    write(
        "template",
        "crash-nested-list-printed.jinja",
        "{% set ns = namespace(l=['x']) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}"
        "{% endfor %}{% set c %}{{ ns.l }}{% endset %}{{ c|length }}",
    )
    write(
        "template",
        "crash-joined-copies.jinja",
        "{% set s = 'x' * 1000000 %}{{ ''.join([s] * 100000)|length }}",
    )

    def request(path: str, body: dict | bytes, extra: str = "") -> bytes:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(raw)}\r\n{extra}connection: close\r\n\r\n"
        return head.encode() + raw

    write(
        "http", "seed-health.http", b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    write(
        "http",
        "seed-completion.http",
        request("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
    )
    write(
        "http",
        "seed-chat.http",
        request(
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        ),
    )
    write(
        "http",
        "crash-token-ids-out-of-range.http",
        request(
            "/v1/completions", {"model": "tiny", "prompt": [[-1, 4294967296]], "max_tokens": 1}
        ),
    )
    write(
        "http",
        "crash-seed-2-64.http",
        request("/v1/completions", {"model": "tiny", "prompt": "a", "seed": 2**64, "n": 2**64}),
    )


if __name__ == "__main__":
    main()
