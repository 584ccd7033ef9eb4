"""A Llama checkpoint of a real model's shape with random weights, for timing where the real
weights are not at hand (pass the directory as a bench script's --model-dir).

bf16 safetensors drawn on the GPU (weights with the spreads tests/test_gpu_models.py uses),
config.json, and tests/make_tiny_models.py's tokenizer filled up to the vocabulary with added
tokens `<extra_N>`, so that every id decodes. Step times have the shape's cost; the tokens a
random model picks mean nothing, and a grammar's mask over this vocabulary (a few hundred BPE
tokens and the `<extra_N>` run) costs what llguidance's trie walk over it costs, not what it
costs over a real tokenizer's vocabulary. Needs torch (CUDA), safetensors and tokenizers.

    python bench/random_checkpoint.py /tmp/llama-8b-shape           # Llama-3.1-8B's shape
    python bench/random_checkpoint.py /tmp/small --layers 4 --hidden 1024 --intermediate 3584
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from make_tiny_models import tokenizer  # noqa: E402

# The spreads of tests/test_gpu_models.py's random checkpoints (see MATRIX_STD there).
MATRIX_STD, EMBEDDING_STD, VECTOR_STD = 0.05, 0.25, 0.1
SHARD_BYTES = 4 << 30


def tensors(a: argparse.Namespace):
    """(name, shape, std, mean) of every weight, in file order."""
    kv = a.kv_heads * a.head_dim
    yield "model.embed_tokens.weight", (a.vocab, a.hidden), EMBEDDING_STD, 0.0
    for i in range(a.layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (a.hidden,), VECTOR_STD, 1.0
        yield p + "self_attn.q_proj.weight", (a.heads * a.head_dim, a.hidden), MATRIX_STD, 0.0
        yield p + "self_attn.k_proj.weight", (kv, a.hidden), MATRIX_STD, 0.0
        yield p + "self_attn.v_proj.weight", (kv, a.hidden), MATRIX_STD, 0.0
        yield p + "self_attn.o_proj.weight", (a.hidden, a.heads * a.head_dim), MATRIX_STD, 0.0
        yield p + "post_attention_layernorm.weight", (a.hidden,), VECTOR_STD, 1.0
        yield p + "mlp.gate_proj.weight", (a.intermediate, a.hidden), MATRIX_STD, 0.0
        yield p + "mlp.up_proj.weight", (a.intermediate, a.hidden), MATRIX_STD, 0.0
        yield p + "mlp.down_proj.weight", (a.hidden, a.intermediate), MATRIX_STD, 0.0
    yield "model.norm.weight", (a.hidden,), VECTOR_STD, 1.0
    yield "lm_head.weight", (a.vocab, a.hidden), EMBEDDING_STD, 0.0


def write_weights(a: argparse.Namespace, out: Path) -> None:
    """Shards of about SHARD_BYTES and the index that lists them."""
    gen = torch.Generator(device="cuda").manual_seed(a.seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shape, std, mean in tensors(a):
        t = torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32) * std + mean
        t = t.to(torch.bfloat16).cpu()
        if size and size + t.nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))


def write_config_and_tokenizer(a: argparse.Namespace, out: Path) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": a.vocab,
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.head_dim,
        "max_position_embeddings": a.max_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok = tokenizer()
    tok.add_tokens([f"<extra_{i}>" for i in range(tok.get_vocab_size(), a.vocab)])
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False}
    (out / "tokenizer_config.json").write_text(json.dumps(special))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    write_config_and_tokenizer(a, a.out)
    write_weights(a, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
