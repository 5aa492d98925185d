"""Attention providers: the narrow interface through which the drafter reaches a KV cache.

The drafter math (`model.py`) computes q/k/v and calls ``attn(layer_idx, q, k, v, window)``; the
provider owns the cache and the per-forward metadata. Backends supply their own provider (vLLM's and
SGLang's paged attention); the core ships:

* `ContiguousKVCache` — the reference cache: one contiguous row of ``max_seq_len`` slots per request,
  expressed as a paged cache with ``block_size = max_seq_len`` so slot ids follow vLLM's rule
  ``block_table[r, pos // bs] * bs + pos % bs``. Its providers use torch SDPA and honour arbitrary
  (non-contiguous) position ids: a query at position p sees the keys of its request at positions <= p
  (and > p - window for sliding layers).
* `MaskedAttention` — attention over the rows of one forward with an explicit boolean mask (training).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionProvider(Protocol):
    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
        """q: [T, n_heads, D], k/v: [T, n_kv_heads, D] -> [T, n_heads, D]."""
        ...


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """q: [B, Q, Hq, D], k/v: [B, S, Hkv, D], mask: [B, Q, S] bool -> [B, Q, Hq, D]."""
    rep = q.shape[2] // k.shape[2]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask[:, None]
    )
    return out.transpose(1, 2)


class ContiguousKVCache:
    """Preallocated per-request KV cache for the drafter layers.

    k, v: [num_layers, max_batch * max_seq_len, n_kv_heads, head_dim] (flat slots).
    """

    def __init__(self, num_layers: int, max_batch: int, max_seq_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.num_layers, self.max_batch, self.max_seq_len = num_layers, max_batch, max_seq_len
        shape = (num_layers, max_batch * max_seq_len, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def block_size(self) -> int:
        return self.max_seq_len

    def block_table(self, cache_rows: Tensor) -> Tensor:
        """[B] cache row of each request -> [B, 1] block table (one block per request)."""
        return cache_rows.to(torch.int64).view(-1, 1)

    def reset_rows(self, cache_rows: Tensor) -> None:
        """Zero the cache rows of finished/new requests (keeps stale keys out of debugging dumps)."""
        k = self.k.view(self.num_layers, self.max_batch, self.max_seq_len, *self.k.shape[2:])
        v = self.v.view_as(k)
        k[:, cache_rows] = 0
        v[:, cache_rows] = 0

    def for_requests(self, cache_rows: Tensor, max_model_len: int | None = None) -> "RequestsView":
        """The `DraftCache` (see ``draft.py``) of one step whose requests live in ``cache_rows`` [B]."""
        return RequestsView(self, cache_rows, max_model_len or self.max_seq_len)


class RequestsView:
    """A `ContiguousKVCache` seen by one step: block table, block size, max_model_len, attention."""

    def __init__(self, cache: ContiguousKVCache, cache_rows: Tensor, max_model_len: int) -> None:
        if max_model_len > cache.max_seq_len:
            raise ValueError(f"max_model_len = {max_model_len}; expected <= the cache's max_seq_len "
                             f"{cache.max_seq_len}")
        self.cache, self.cache_rows = cache, cache_rows.to(torch.int64)
        self.block_table = cache.block_table(self.cache_rows)
        self.block_size = cache.block_size
        self.max_model_len = max_model_len

    def attention(self, positions: Tensor, slot_mapping: Tensor, request_index: Tensor) -> "CacheAttention":
        """Provider for one forward whose rows have ``positions`` [T], write ``slot_mapping`` [T]
        (-1 = do not write) and belong to request ``request_index`` [T] (an index into the step's batch)."""
        return CacheAttention(self.cache, positions, slot_mapping, request_index, self.cache_rows)


class CacheAttention:
    """Reference paged-attention call over a `ContiguousKVCache` (torch SDPA, boolean mask)."""

    def __init__(self, cache: ContiguousKVCache, positions: Tensor, slot_mapping: Tensor,
                 request_index: Tensor, cache_rows: Tensor) -> None:
        self.cache = cache
        self.positions, self.slot_mapping = positions, slot_mapping
        self.write = slot_mapping >= 0
        self.write_slots = slot_mapping[self.write]
        # Group the query rows of each request into a padded [B, Qmax] layout.
        B = int(cache_rows.shape[0])
        counts = torch.bincount(request_index, minlength=B)                      # [B]
        starts = torch.cumsum(counts, 0) - counts
        order = torch.argsort(request_index, stable=True)                        # rows grouped by request
        self.q_max = int(counts.max()) if counts.numel() else 0
        col = torch.arange(order.numel(), device=order.device) - starts[request_index[order]]
        self.row_b, self.row_col, self.order = request_index[order], col, order
        self.cache_rows = cache_rows.to(torch.int64)
        self.s_max = min(int(positions.max()) + 1, cache.max_seq_len) if positions.numel() else 1
        q_pos = torch.full((B, self.q_max), -1, dtype=torch.int64, device=positions.device)
        q_pos[self.row_b, self.row_col] = positions[order]
        key_pos = torch.arange(self.s_max, device=positions.device)
        self.q_pos = q_pos
        self.causal = key_pos[None, None, :] <= q_pos[:, :, None]                # [B, Qmax, S]
        self.key_pos = key_pos

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
        c = self.cache
        c.k[layer_idx, self.write_slots] = k[self.write].to(c.k.dtype)
        c.v[layer_idx, self.write_slots] = v[self.write].to(c.v.dtype)
        B = self.cache_rows.shape[0]
        kc = c.k[layer_idx].view(c.max_batch, c.max_seq_len, *c.k.shape[2:])[self.cache_rows, : self.s_max]
        vc = c.v[layer_idx].view(c.max_batch, c.max_seq_len, *c.v.shape[2:])[self.cache_rows, : self.s_max]
        mask = self.causal
        if window is not None:
            mask = mask & (self.key_pos[None, None, :] > self.q_pos[:, :, None] - window)
        qp = q.new_zeros(B, self.q_max, *q.shape[1:])
        qp[self.row_b, self.row_col] = q[self.order]
        # Padding query rows (q_pos = -1) see no key; give them key 0 so SDPA stays finite.
        mask = mask | (self.q_pos[:, :, None] < 0) & (self.key_pos[None, None, :] == 0)
        out = _sdpa(qp, kc.to(q.dtype), vc.to(q.dtype), mask)
        res = torch.empty_like(q)
        res[self.order] = out[self.row_b, self.row_col]
        return res


class MaskedAttention:
    """Attention among the rows of one forward under an explicit mask (no cache), for training.

    mask: [T, T] bool (query, key), or [B, T, T] with q/k/v batched as [B, T, H, D].
    """

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
        if window is not None:
            raise NotImplementedError("MaskedAttention: sliding windows must be folded into the mask")
        if q.dim() == 3:
            return _sdpa(q[None], k[None], v[None], self.mask[None])[0]
        return _sdpa(q, k, v, self.mask)
