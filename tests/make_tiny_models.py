"""Writes tiny random-weight checkpoints of each supported architecture, and the golden
outputs Hugging Face transformers gives for them, so the HF-directory path (config.json,
safetensors, tokenizer.json) is checked against a reference nobody here wrote.

    python tests/make_tiny_models.py   # needs torch, transformers, tokenizers; not needed by CI

Each model lives in tests/fixtures/tiny_models/<name>/ with config.json, model.safetensors
(sharded for one model, bf16 for another), tokenizer.json, tokenizer_config.json and
generation_config.json; tests/fixtures/tiny_models/golden.json holds, per model and prompt,
20 greedy token ids and the log-probability of each, computed in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM

OUT = Path(__file__).parent / "fixtures" / "tiny_models"
VOCAB = 320
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
)
MODELS = {
    "llama3_rope_scaling": dict(
        model_type="llama",
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "llama_tied_mha": dict(model_type="llama", num_key_value_heads=4, tie_word_embeddings=True),
    "mistral_gqa8": dict(
        model_type="mistral", num_attention_heads=8, num_key_value_heads=1, sliding_window=None
    ),
    "qwen2_bias": dict(model_type="qwen2", use_sliding_window=False),
    "qwen3_qk_norm": dict(model_type="qwen3", head_dim=32, use_sliding_window=False),
}
PROMPTS = [[1, 17, 45, 99, 3, 250, 7], [1] + list(range(30, 90)), [5]]
STEPS = 20


def tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["The quick brown fox jumps over the lazy dog. 0123456789 " * 20]
    tok.train_from_iterator(text, trainer)
    return tok


@torch.no_grad()
def greedy(model, prompt: list[int]) -> tuple[list[int], list[float]]:
    ids = torch.tensor([prompt])
    out, lps = [], []
    for _ in range(STEPS):
        logits = model(ids).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        t = int(torch.argmax(logits))
        out.append(t)
        lps.append(float(logprobs[t]))
        ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
    return out, lps


def main() -> None:
    torch.manual_seed(0)
    tok = tokenizer()
    golden = {}
    for i, (name, extra) in enumerate(MODELS.items()):
        cfg = AutoConfig.for_model(**{**COMMON, **extra})
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        with torch.no_grad():  # random but not tiny, so the outputs are not all ties
            for p in model.parameters():
                p.normal_(0.0, 0.5 if p.dim() == 1 else 0.08)
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(1.0)
        d = OUT / name
        dtype = torch.bfloat16 if name == "qwen2_bias" else torch.float32
        model.to(dtype).save_pretrained(d, max_shard_size="40KB" if i == 0 else "50MB")
        model.to(torch.float32)
        tok.save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(
            json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False})
        )
        golden[name] = [
            dict(zip(("token_ids", "logprobs"), greedy(model, p), strict=True)) for p in PROMPTS
        ]
    meta = {"prompts": PROMPTS, "steps": STEPS, "torch": torch.__version__}
    (OUT / "golden.json").write_text(json.dumps({"metadata": meta, "models": golden}, indent=1))


if __name__ == "__main__":
    main()
