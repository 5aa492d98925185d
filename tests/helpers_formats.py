"""Test helpers for the checkpoint formats, written WITHOUT pedagle code.

* `write_published_head`: an independent writer of a vLLM-format (published-head style) P-EAGLE
  checkpoint, straight from the documented key list (`midlayer.*` layer 0, `layers.1.*`, `fc`,
  `mask_hidden`, `ptd_token_id`, `d2t` offsets, reduced draft vocabulary, no `embed_tokens`).
* `reference_parallel_drafts`: an independent plain-torch P-EAGLE forward over the accepted history of
  a prefill-only step (float64), the oracle pedagle's loaded drafter must match.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

H, HEADS, KV, HD, INTER, LAYERS = 32, 4, 2, 8, 48, 2
VOCAB, DRAFT_VOCAB, N_AUX, HT = 128, 64, 3, 32
MASK_ID, THETA, EPS = 127, 5000.0, 1e-5
AUX_IDS = [1, 3, 5]


def published_config(**overrides) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": H, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV,
        "head_dim": HD, "intermediate_size": INTER, "rms_norm_eps": EPS, "hidden_act": "silu",
        "max_position_embeddings": 256, "rope_theta": THETA, "rope_scaling": None,
        "vocab_size": VOCAB, "draft_vocab_size": DRAFT_VOCAB, "target_hidden_size": HT,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(AUX_IDS), "use_aux_hidden_state": True},
        "ptd_token_id": MASK_ID, "tie_word_embeddings": False, "torch_dtype": "float32",
    }
    cfg.update(overrides)
    return cfg


def published_weights(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(checkpoint tensors, target embedding [VOCAB, H]) with random values."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    def norm_w(n):
        return 1.0 + rnd(n, std=0.1)

    w: dict[str, torch.Tensor] = {}
    for i in range(LAYERS):
        p = "midlayer." if i == 0 else f"layers.{i}."
        width = 2 * H if i == 0 else H
        w[p + "self_attn.q_proj.weight"] = rnd(HEADS * HD, width)
        w[p + "self_attn.k_proj.weight"] = rnd(KV * HD, width)
        w[p + "self_attn.v_proj.weight"] = rnd(KV * HD, width)
        w[p + "self_attn.o_proj.weight"] = rnd(H, HEADS * HD)
        w[p + "mlp.gate_proj.weight"] = rnd(INTER, H)
        w[p + "mlp.up_proj.weight"] = rnd(INTER, H)
        w[p + "mlp.down_proj.weight"] = rnd(H, INTER)
        w[p + "input_layernorm.weight"] = norm_w(H)
        w[p + "post_attention_layernorm.weight"] = norm_w(H)
        w[p + "hidden_norm.weight"] = norm_w(H)          # vLLM has one in every layer; only layer 0's is used
    w["fc.weight"] = rnd(H, N_AUX * HT, std=0.1)
    w["norm.weight"] = norm_w(H)
    w["lm_head.weight"] = rnd(DRAFT_VOCAB, H, std=0.5)
    w["mask_hidden"] = rnd(1, N_AUX * HT, std=1.0)       # any shape with n_aux*Ht elements
    target_ids = torch.randperm(VOCAB, generator=g)[:DRAFT_VOCAB].sort().values
    w["d2t"] = (target_ids - torch.arange(DRAFT_VOCAB)).to(torch.int64)
    t2d = torch.zeros(VOCAB, dtype=torch.bool)
    t2d[target_ids] = True
    w["t2d"] = t2d
    embed = rnd(VOCAB, H, std=1.0)
    return w, embed


def write_checkpoint(path: Path, config: dict, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def write_published_head(path: Path, seed: int = 0, config_overrides: dict | None = None,
                         shards: int = 1) -> tuple[Path, dict[str, torch.Tensor], torch.Tensor]:
    w, embed = published_weights(seed)
    write_checkpoint(path, published_config(**(config_overrides or {})), w, shards)
    return path, w, embed


# ------------------------------------------------------------------------------ independent forward
def _rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def _rope(x, pos):
    d = x.shape[-1]
    inv = 1.0 / THETA ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None].double() * inv[None, :]
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _attention(x, w, p, pos):
    T = x.shape[0]
    q = (x @ w[p + "self_attn.q_proj.weight"].T).view(T, HEADS, HD)
    k = (x @ w[p + "self_attn.k_proj.weight"].T).view(T, KV, HD)
    v = (x @ w[p + "self_attn.v_proj.weight"].T).view(T, KV, HD)
    q, k = _rope(q, pos), _rope(k, pos)
    k, v = k.repeat_interleave(HEADS // KV, dim=1), v.repeat_interleave(HEADS // KV, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(HD)
    causal = pos[None, :] <= pos[:, None]                             # key position <= query position
    scores = scores.masked_fill(~causal[None], float("-inf"))
    o = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(T, HEADS * HD)
    return o @ w[p + "self_attn.o_proj.weight"].T


def _mlp(x, w, p):
    gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
    return (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T


def reference_parallel_drafts(w: dict[str, torch.Tensor], embed: torch.Tensor, prompt: list[int],
                              aux: torch.Tensor, bonus: int, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill-only step of one request: rows (h_j, t_{j+1}) for j < n-1, the bonus row (h_{n-1}, b), then
    K-1 rows (fc(mask_hidden), MASK) at positions 0..n+K-2, causal attention; returns
    (target-vocabulary drafts [K], top-1 minus top-2 logit margins [K])."""
    w = {k: (v.double() if v.is_floating_point() else v) for k, v in w.items()}
    n = len(prompt)
    ids = torch.tensor(prompt[1:] + [bonus] + [MASK_ID] * (K - 1))
    fc = w["fc.weight"]
    hidden = torch.cat([aux.double() @ fc.T, (w["mask_hidden"].reshape(1, -1) @ fc.T).expand(K - 1, -1)])
    pos = torch.arange(n + K - 1)
    # layer 0 (norm_before_residual = false): attention over [norm(embed) ; hidden_norm(h)]
    e = _rms(embed.double()[ids], w["midlayer.input_layernorm.weight"])
    residual = hidden
    x = _attention(torch.cat([e, _rms(hidden, w["midlayer.hidden_norm.weight"])], -1), w, "midlayer.", pos)
    residual = x + residual
    x = _mlp(_rms(residual, w["midlayer.post_attention_layernorm.weight"]), w, "midlayer.")
    for i in range(1, LAYERS):
        p = f"layers.{i}."
        residual = x + residual
        x = _attention(_rms(residual, w[p + "input_layernorm.weight"]), w, p, pos)
        residual = x + residual
        x = _mlp(_rms(residual, w[p + "post_attention_layernorm.weight"]), w, p)
    out = _rms(x + residual, w["norm.weight"])
    logits = out[n - 1:] @ w["lm_head.weight"].T                     # bonus row, then the K-1 MASK rows
    top2 = logits.topk(2, dim=-1).values
    draft = logits.argmax(-1)
    return draft + w["d2t"][draft], top2[:, 0] - top2[:, 1]
