"""The default model (SmolLM2-135M-Instruct, a Q4_1 GGUF) as a Hugging Face checkpoint
directory in bf16, for tests that need safetensors weights of a real model.

The GGUF is read here with numpy (no gguf package): its Q4_1 and Q8_0 blocks are dequantized
(ggml's formulas: Q4_1 `x = d * q + m` with q the low nibbles of 16 bytes then the high ones,
Q8_0 `x = d * q`), the Q/K rows llama.cpp permutes for its RoPE layout are put back in Hugging
Face order (transformers' `reverse_permute_weights`), and tensors are renamed to Hugging Face's
llama names. The tokenizer's vocabulary and merges become a byte-level BPE `tokenizer.json`.

    tensors, config, tokenizer_files = read_default_model(infire.default_model_path())
    write_hf_dir(out_dir, tensors_bf16_bytes, config, tokenizer_files)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

GGML_F32, GGML_Q4_1, GGML_Q8_0 = 0, 3, 8
# Bytes per 32-element block.
BLOCK_BYTES = {GGML_Q4_1: 20, GGML_Q8_0: 34}
SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def scalar(self, fmt: str):
        (v,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return v

    def string(self) -> str:
        n = self.scalar("Q")
        s = self.data[self.at : self.at + n].decode("utf-8")
        self.at += n
        return s

    def value(self, kind: int):
        if kind == 8:
            return self.string()
        if kind == 9:
            inner, n = self.scalar("I"), self.scalar("Q")
            return [self.value(inner) for _ in range(n)]
        return self.scalar(SCALARS[kind])


def _dequantize(kind: int, raw: np.ndarray, n: int) -> np.ndarray:
    if kind == GGML_F32:
        return raw.view(np.float32)[:n].copy()
    blocks = raw.reshape(-1, BLOCK_BYTES[kind])
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    if kind == GGML_Q8_0:
        q = blocks[:, 2:].view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    qs = blocks[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return (d * q + m).reshape(-1)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's row order of a Q or K projection llama.cpp permuted."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str:
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    _, layer, kind, suffix = name.split(".")
    return f"model.layers.{layer}.{LAYER_NAMES[kind]}.{suffix}"


def read_default_model(path: Path) -> tuple[dict[str, np.ndarray], dict, dict[str, str]]:
    """(f32 tensors by Hugging Face name, config.json, tokenizer files by name) of the GGUF."""
    data = Path(path).read_bytes()
    r = _Reader(data)
    assert data[:4] == b"GGUF", "not a GGUF file"
    r.at = 4
    _version, n_tensors, n_kv = r.scalar("I"), r.scalar("Q"), r.scalar("Q")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.scalar("I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.scalar("Q") for _ in range(r.scalar("I"))]
        infos.append((name, dims, r.scalar("I"), r.scalar("Q")))
    align = meta.get("general.alignment", 32)
    start = (r.at + align - 1) // align * align
    arch = meta["general.architecture"]
    heads = meta[f"{arch}.attention.head_count"]
    kv_heads = meta[f"{arch}.attention.head_count_kv"]
    tensors = {}
    for name, dims, kind, offset in infos:
        n = int(np.prod(dims))
        size = n * 4 if kind == GGML_F32 else n // 32 * BLOCK_BYTES[kind]
        raw = np.frombuffer(data, np.uint8, size, start + offset)
        # ggml lists dimensions fastest first: [cols, rows] is a [rows, cols] matrix.
        w = _dequantize(kind, raw, n).reshape(list(reversed(dims)))
        if ".attn_q." in name:
            w = _unpermute(w, heads)
        elif ".attn_k." in name:
            w = _unpermute(w, kv_heads)
        tensors[_hf_name(name)] = w
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": meta[f"{arch}.embedding_length"],
        "intermediate_size": meta[f"{arch}.feed_forward_length"],
        "num_hidden_layers": meta[f"{arch}.block_count"],
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "rms_norm_eps": meta[f"{arch}.attention.layer_norm_rms_epsilon"],
        "rope_theta": meta[f"{arch}.rope.freq_base"],
        "max_position_embeddings": meta[f"{arch}.context_length"],
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"],
        "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
        "torch_dtype": "bfloat16",
    }
    return tensors, config, _tokenizer_files(meta)


def _tokenizer_files(meta: dict) -> dict[str, str]:
    """tokenizer.json (byte-level BPE with SmolLM2's digit splitting) and tokenizer_config.json
    of the GGUF's vocabulary."""
    tokens = meta["tokenizer.ggml.tokens"]
    kinds = meta["tokenizer.ggml.token_type"]
    special = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (t, k) in enumerate(zip(tokens, kinds, strict=True))
        if k == 3  # control tokens
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": True,
                },
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": meta["tokenizer.ggml.merges"],
        },
    }
    config = {
        "bos_token": tokens[meta["tokenizer.ggml.bos_token_id"]],
        "eos_token": tokens[meta["tokenizer.ggml.eos_token_id"]],
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    return {"tokenizer.json": json.dumps(tokenizer), "tokenizer_config.json": json.dumps(config)}


def bf16_round(x: np.ndarray) -> np.ndarray:
    """`x` rounded to bf16 (to nearest, ties to even), as f32."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.view(np.float32)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    """A safetensors file of `name -> (dtype, shape, little-endian bytes)`, written as the
    format describes (8-byte header length, JSON header, data)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, data in tensors.values():
            f.write(data)


def bf16_bytes(x: np.ndarray) -> bytes:
    """`x` (already bf16-exact or not: rounded here) as bf16 bytes."""
    return (bf16_round(x).view(np.uint32) >> 16).astype("<u2").tobytes()


def write_hf_dir(
    out: Path,
    tensors: dict[str, tuple[str, list[int], bytes]],
    config: dict,
    tokenizer_files: dict[str, str],
) -> Path:
    """A Hugging Face checkpoint directory: config.json, model.safetensors, tokenizer files."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for name, text in tokenizer_files.items():
        (out / name).write_text(text)
    write_safetensors(out / "model.safetensors", tensors)
    return out
