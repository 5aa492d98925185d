"""Tiny drafters and checkpoints for the SGLang backend tests (random weights, CPU, float32)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pedagle_core.config import DrafterConfig
from pedagle_core.model import Drafter

VOCAB, DRAFT_VOCAB, MASK_ID, TARGET_HIDDEN = 96, 64, 1, 32


def tiny_drafter(seed: int = 0, num_layers: int = 2, window: int | None = 4, parallel_depth: int = 4) -> Drafter:
    layer_types = None
    kw = {}
    if window is not None and num_layers > 1:
        layer_types = ["full_attention"] * (num_layers - 1) + ["sliding_attention"]
        kw["sliding_window"] = window
        kw["architecture"] = "qwen3"               # pedagle writes sliding-window heads as Qwen3 heads
    cfg = DrafterConfig(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=8, intermediate_size=64, vocab_size=VOCAB, draft_vocab_size=DRAFT_VOCAB,
                        target_hidden_size=TARGET_HIDDEN, aux_layer_ids=(1, 2, 3), mask_token_id=MASK_ID,
                        parallel_depth=parallel_depth, max_position_embeddings=256, layer_types=layer_types, **kw)
    g = torch.Generator().manual_seed(seed)
    d = Drafter(cfg)
    with torch.no_grad():
        for p in d.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        d.mask_hidden.copy_(torch.randn(d.mask_hidden.shape, generator=g))
        ids = torch.randperm(VOCAB, generator=g)[:DRAFT_VOCAB].sort().values
        d.d2t.copy_(ids - torch.arange(DRAFT_VOCAB))
    return d.float().eval()


def save_checkpoint(drafter: Drafter, path: Path, fmt: str = "vllm") -> Path:
    from pedagle_core.formats import save_drafter

    save_drafter(drafter, path, format=fmt)
    return path


def save_target_config(path: Path, num_layers: int = 4) -> Path:
    """A tiny Llama target: config.json only (ServerArgs / ModelConfig read the config, never the weights)."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
           "hidden_size": TARGET_HIDDEN, "intermediate_size": 64, "num_hidden_layers": num_layers,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-6, "torch_dtype": "float32", "tie_word_embeddings": False, "bos_token_id": 0,
           "eos_token_id": 0}
    (path / "config.json").write_text(json.dumps(cfg))
    return path
