"""Attention providers: the narrow interface through which the drafter reaches a KV cache.

The drafter math (`model.py`) computes q/k/v and calls ``attn(layer_idx, q, k, v, window)``; the
provider owns the cache and the per-forward metadata. Backends supply their own provider (vLLM's and
SGLang's paged attention); the core ships:

* `ContiguousKVCache` — the reference cache: one contiguous row of ``max_seq_len`` slots per request,
  expressed as a paged cache with ``block_size = max_seq_len`` so slot ids follow vLLM's rule
  ``block_table[r, pos // bs] * bs + pos % bs``. Its providers honour arbitrary (non-contiguous)
  position ids: a query at position p sees the keys of its request at positions <= p (and > p - window
  for sliding layers). Two implementations with one semantics (``impl``): ``"torch"``, the reference
  (gather the requests' cache rows, SDPA with a boolean mask), and ``"triton"``
  (`pedagle_core.kernels.decode_attention`: flash-decoding straight from the cache, no gather copy, GQA
  without repeat_interleave); ``"auto"`` = Triton on CUDA, torch elsewhere.
* `MaskedAttention` — attention over the rows of one forward with an explicit boolean mask (training).

CUDA graphs: the Triton path never syncs with the host. The torch path syncs twice per forward (the
longest request and the largest position, ``int(...)``) unless the caller gives both as static Python
ints (``max_query_len``, ``max_context`` of `ContiguousKVCache.for_requests` / `CacheAttention`); its
cache writes never sync (rows with slot -1 write into one spare slot past the cache's end).
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


def _sdpa_scaled(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float | None,
                 sinks: Tensor | None) -> Tensor:
    """`_sdpa` with a softmax ``scale`` (None: 1/sqrt(D)) and optional attention ``sinks`` [Hq] (GPT-OSS:
    one learned logit per head that joins the softmax denominator and is then dropped)."""
    rep = q.shape[2] // k.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)           # [B, H, *, D]
    if sinks is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scale,
                                             enable_gqa=rep > 1)
        return out.transpose(1, 2)
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale                        # [B, H, Q, S]
    logits = logits.masked_fill(~mask[:, None], float("-inf"))
    sink = sinks.to(logits.dtype).view(1, -1, 1, 1).expand(*logits.shape[:-1], 1)
    full = torch.cat([logits, sink], dim=-1)
    probs = torch.softmax(full - full.amax(-1, keepdim=True), dim=-1)[..., :-1]
    return torch.matmul(probs.to(v.dtype), v).transpose(1, 2)


ATTENTION_IMPLS = ("auto", "torch", "triton")


def _triton_attention_available(device: torch.device) -> bool:
    try:
        from .kernels import decode_attention
    except ImportError:
        return False
    return decode_attention.can_run(device)


def resolve_attention_impl(impl: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """'auto' | 'torch' | 'triton' -> 'torch' | 'triton'. 'auto' picks Triton on CUDA (not for float64
    caches), torch elsewhere; 'triton' on CPU needs TRITON_INTERPRET=1 set before the kernels are imported."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"impl = {impl!r}; expected one of {ATTENTION_IMPLS}")
    if impl == "torch":
        return "torch"
    device = torch.device(device)
    ok = _triton_attention_available(device)
    if impl == "triton":
        if not ok:
            raise RuntimeError(f"impl = 'triton' but the Triton decode attention cannot run on device {device} "
                               "(needs triton and CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
                               "pedagle_core.kernels.decode_attention is imported)")
        return "triton"
    return "triton" if ok and device.type == "cuda" and dtype != torch.float64 else "torch"


class ContiguousKVCache:
    """Preallocated per-request KV cache for the drafter layers.

    k, v: [num_layers, max_batch * max_seq_len, n_kv_heads, head_dim] (flat slots; each layer's slice is
    contiguous). One spare slot per layer lies past the end (not part of ``k``/``v``): the torch path's
    writes of rows with slot -1 land there, so writing needs no host sync.
    impl: attention implementation of the providers ('auto' | 'torch' | 'triton'), see the module doc.
    """

    def __init__(self, num_layers: int, max_batch: int, max_seq_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", impl: str = "auto") -> None:
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"impl = {impl!r}; expected one of {ATTENTION_IMPLS}")
        for name, v in (("num_layers", num_layers), ("max_batch", max_batch), ("max_seq_len", max_seq_len),
                        ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            if isinstance(v, bool) or not hasattr(v, "__index__") or v.__index__() < 1:
                raise ValueError(f"ContiguousKVCache: {name} = {v!r}; expected an integer >= 1")
        self.num_layers, self.max_batch, self.max_seq_len = num_layers, max_batch, max_seq_len
        self.impl = impl
        n_slots = max_batch * max_seq_len
        shape = (num_layers, n_slots + 1, n_kv_heads, head_dim)
        self.k_store = torch.zeros(shape, dtype=dtype, device=device)
        self.v_store = torch.zeros(shape, dtype=dtype, device=device)
        self.k = self.k_store[:, :n_slots]
        self.v = self.v_store[:, :n_slots]

    @property
    def spare_slot(self) -> int:
        """Index (in ``k_store``/``v_store``) of the slot that absorbs writes of rows with slot -1."""
        return self.max_batch * self.max_seq_len

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

    def for_requests(self, cache_rows: Tensor, max_model_len: int | None = None, max_query_len: int | None = None,
                     max_context: int | None = None) -> "RequestsView":
        """The `DraftCache` (see ``draft.py``) of one step whose requests live in ``cache_rows`` [B].

        Static hints for CUDA graphs (host ints; the caller guarantees them): ``max_query_len`` >= the
        query rows of any request in any forward of the step; ``max_context`` >= max(positions) + 1 of
        any forward. Both size the Triton grid (without them: every row may belong to one request, and
        the context may reach max_seq_len); the torch path needs both to avoid host syncs."""
        return RequestsView(self, cache_rows, max_model_len or self.max_seq_len, max_query_len, max_context)


class RequestsView:
    """A `ContiguousKVCache` seen by one step: block table, block size, max_model_len, attention."""

    def __init__(self, cache: ContiguousKVCache, cache_rows: Tensor, max_model_len: int,
                 max_query_len: int | None = None, max_context: int | None = None) -> None:
        if max_model_len > cache.max_seq_len:
            raise ValueError(f"max_model_len = {max_model_len}; expected <= the cache's max_seq_len "
                             f"{cache.max_seq_len}")
        self.cache, self.cache_rows = cache, cache_rows.to(torch.int64)
        self.block_table = cache.block_table(self.cache_rows)
        self.block_size = cache.block_size
        self.max_model_len = max_model_len
        self.max_query_len, self.max_context = max_query_len, max_context

    def attention(self, positions: Tensor, slot_mapping: Tensor, request_index: Tensor) -> "CacheAttention":
        """Provider for one forward whose rows have ``positions`` [T], write ``slot_mapping`` [T]
        (-1 = do not write) and belong to request ``request_index`` [T] (an index into the step's batch)."""
        return CacheAttention(self.cache, positions, slot_mapping, request_index, self.cache_rows,
                              max_query_len=self.max_query_len, max_context=self.max_context)


_WRITE_FIELDS = ("write", "write_slots")
_TORCH_LAYOUT = ("q_max", "row_b", "row_col", "order", "s_max", "q_pos", "causal", "key_pos")


class CacheAttention:
    """Paged-attention call over a `ContiguousKVCache`: the torch reference (SDPA, boolean mask, over a
    padded [B, Qmax] layout of the query rows) or the Triton decode kernels (``impl``, default the
    cache's). The torch layout (``q_max``, ``row_b``, ``causal``, ... ) is built on first use, so a
    subclass may use it whatever the impl. Calls may add a softmax ``scale`` and attention ``sinks``
    (target modules, see ``__call__``).

    max_query_len / max_context: static hints (see `ContiguousKVCache.for_requests`)."""

    def __init__(self, cache: ContiguousKVCache, positions: Tensor, slot_mapping: Tensor,
                 request_index: Tensor, cache_rows: Tensor, impl: str | None = None,
                 max_query_len: int | None = None, max_context: int | None = None) -> None:
        self.cache = cache
        self.positions, self.slot_mapping, self.request_index = positions, slot_mapping, request_index
        self.cache_rows = cache_rows.to(torch.int64)
        self.max_query_len, self.max_context = max_query_len, max_context
        self.impl = resolve_attention_impl(impl or getattr(cache, "impl", "auto"), positions.device, cache.k.dtype)
        if self.impl == "triton":
            from .kernels.decode_attention import build_row_table, row_bound

            B, T = int(self.cache_rows.shape[0]), int(positions.shape[0])
            self.row_table = build_row_table(request_index, B, row_bound(T, max_query_len))
            self.block_table = self.cache_rows.view(-1, 1)

    def __getattr__(self, name: str):
        # Built lazily: only the torch path (or a subclass) needs them.
        if name in _WRITE_FIELDS:                      # boolean indexing: a host sync (subclasses only)
            self.write = self.slot_mapping >= 0
            self.write_slots = self.slot_mapping[self.write]
            return self.__dict__[name]
        if name in _TORCH_LAYOUT:
            self._build_torch_layout()
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _build_torch_layout(self) -> None:
        """Group the query rows of each request into a padded [B, Qmax] layout (sync-free when both
        static hints were given)."""
        positions, request_index, cache = self.positions, self.request_index, self.cache
        B, T = int(self.cache_rows.shape[0]), int(positions.shape[0])
        ri = request_index.long()
        counts = torch.zeros(B, dtype=torch.int64, device=ri.device).scatter_add_(0, ri, torch.ones_like(ri))
        starts = torch.cumsum(counts, 0) - counts
        order = torch.argsort(ri, stable=True)                                   # rows grouped by request
        if self.max_query_len is not None:
            self.q_max = max(1, min(int(self.max_query_len), T)) if T else 0
        else:
            self.q_max = int(counts.max()) if counts.numel() else 0
        col = torch.arange(order.numel(), device=order.device) - starts[ri[order]]
        self.row_b, self.row_col, self.order = ri[order], col, order
        if self.max_context is not None:
            self.s_max = max(1, min(int(self.max_context), cache.max_seq_len))
        else:
            self.s_max = min(int(positions.max()) + 1, cache.max_seq_len) if positions.numel() else 1
        q_pos = torch.full((B, self.q_max), -1, dtype=torch.int64, device=positions.device)
        q_pos[self.row_b, self.row_col] = positions[order].long()
        key_pos = torch.arange(self.s_max, device=positions.device)
        self.q_pos = q_pos
        self.causal = key_pos[None, None, :] <= q_pos[:, :, None]                # [B, Qmax, S]
        self.key_pos = key_pos

    def _write(self, layer_idx: int, k: Tensor, v: Tensor) -> None:
        """k/v of every row with slot >= 0 into the cache, without a host sync (slot -1 -> spare slot)."""
        c = self.cache
        slots = self.slot_mapping.long()
        spare = getattr(c, "spare_slot", None)
        if spare is None:                                          # a cache without the spare slot
            c.k[layer_idx, self.write_slots] = k[self.write].to(c.k.dtype)
            c.v[layer_idx, self.write_slots] = v[self.write].to(c.v.dtype)
            return
        slots = torch.where(slots >= 0, slots, spare)
        c.k_store[layer_idx].index_copy_(0, slots, k.to(c.k.dtype))
        c.v_store[layer_idx].index_copy_(0, slots, v.to(c.v.dtype))

    def kv_cache_slots(self, layer_idx: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """(slot_mapping, k_cache, v_cache) of ``layer_idx`` for a caller that writes this forward's k/v
        itself (the drafter's RoPE + cache-write launch, then `attend_written`), on the Triton path outside
        torch.compile; else None (call the provider with k and v)."""
        if self.impl != "triton" or torch.compiler.is_compiling():
            return None
        return self.slot_mapping, self.cache.k[layer_idx], self.cache.v[layer_idx]

    def attend_written(self, layer_idx: int, q: Tensor, window: int | None) -> Tensor:
        """Attention of q [T, Hq, D] over the cache after the caller wrote this forward's k/v at the slots
        of `kv_cache_slots` (the Triton path of ``__call__`` without its write)."""
        from .kernels.decode_attention import decode_attention

        c = self.cache
        return decode_attention(q, c.k[layer_idx], c.v[layer_idx], self.positions, self.row_table, self.block_table,
                                c.max_seq_len, c.max_seq_len, window, max_context=self.max_context)

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor, window: int | None,
                 scale: float | None = None, sinks: Tensor | None = None) -> Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq, D]. For target modules (the reference engine's
        transformers target): ``scale``, the softmax scale (None = 1/sqrt(D)), and ``sinks`` [Hq], GPT-OSS
        attention sinks (one logit per head in the softmax denominator); a scale other than 1/sqrt(D) or
        sinks take the torch path whatever the impl."""
        c = self.cache
        plain = sinks is None and (scale is None or abs(scale * q.shape[-1] ** 0.5 - 1.0) < 1e-6)
        if self.impl == "triton" and plain:
            from .kernels.decode_attention import write_kv

            write_kv(k, v, self.slot_mapping, c.k[layer_idx], c.v[layer_idx])  # [N, Hkv, D], contiguous
            return self.attend_written(layer_idx, q, window)
        self._write(layer_idx, k, v)
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
        if plain:
            out = _sdpa(qp, kc.to(q.dtype), vc.to(q.dtype), mask)
        else:
            out = _sdpa_scaled(qp, kc.to(q.dtype), vc.to(q.dtype), mask, scale, sinks)
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
