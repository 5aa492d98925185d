"""`pedagle_core.attention.AttentionProvider` over SGLang's attention: one ``RadixAttention`` per drafter layer.

The drafter math (`pedagle_core.model`) computes q/k/v (RoPE applied) and calls
``attn(layer_idx, q, k, v, window)``; `SglangAttention.bind(forward_batch)` returns that callable for one
forward. Each call goes to ``RadixAttention.forward(q, k, v, forward_batch)``, i.e. to whatever attention
backend SGLang published in its forward context (FlashInfer, Triton, FA3, torch_native, ...): the backend
writes k/v into the draft KV pool at ``forward_batch.out_cache_loc`` and attends over the request's keys
through ``req_to_token`` (prefix) plus this forward's rows, causally in row order.

Sliding windows: pedagle's window W lets a query at position p see keys at positions > p - W (W keys);
SGLang's ``sliding_window_size`` s lets it see keys >= p - s, so s = W - 1 (as SGLang's own models do).
Tensor parallelism: not supported (the worker refuses tp_size > 1); every head runs on one rank.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pedagle_core.config import DrafterConfig


def sglang_window(window: int | None) -> int:
    """pedagle window (keys per query, None = full) -> RadixAttention ``sliding_window_size`` (-1 = full)."""
    if window is None:
        return -1
    if window < 1:
        raise ValueError(f"sliding window = {window}; expected >= 1 or None")
    return int(window) - 1


class SglangAttention(nn.Module):
    """Holds the drafter's ``RadixAttention`` layers (layer ids ``0..N-1`` of the draft KV pool)."""

    def __init__(self, cfg: DrafterConfig, prefix: str = "model") -> None:
        super().__init__()
        from sglang.srt.layers.radix_attention import RadixAttention

        d = int(cfg.head_dim)
        self.n_q, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.windows = [cfg.layer_window(i) for i in range(cfg.num_hidden_layers)]
        self.layers = nn.ModuleList(
            RadixAttention(self.n_q, d, d ** -0.5, num_kv_heads=self.n_kv, layer_id=i,
                           sliding_window_size=sglang_window(self.windows[i]),
                           prefix=f"{prefix}.layers.{i}.self_attn.attn")
            for i in range(cfg.num_hidden_layers))
        windowed = [w for w in self.windows if w is not None]        # one window per drafter (cfg.sliding_window)
        self.model_window: int | None = sglang_window(windowed[0]) if windowed else None

    def bind(self, forward_batch: Any) -> "_BoundAttention":
        return _BoundAttention(self, forward_batch)


class _BoundAttention:
    """The provider for one forward (``forward_batch`` fixed)."""

    def __init__(self, owner: SglangAttention, forward_batch: Any) -> None:
        self.owner, self.forward_batch = owner, forward_batch

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 window: int | None) -> torch.Tensor:
        o = self.owner
        if window != o.windows[layer_idx]:
            raise ValueError(f"drafter layer {layer_idx}: attention window {window}; the SGLang layer was built "
                             f"with {o.windows[layer_idx]}")
        T = q.shape[0]
        out = o.layers[layer_idx](q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1), self.forward_batch)
        if isinstance(out, tuple):                  # backends that also return the LSE
            out = out[0]
        return out.reshape(T, o.n_q, o.head_dim)


__all__ = ["SglangAttention", "sglang_window"]
