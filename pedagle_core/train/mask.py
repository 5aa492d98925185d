"""The P-EAGLE training attention mask and the attention provider that applies it.

An element (anchor row a, depth d, document doc, position pos = pos[a] + d) sees exactly the keys the
same drafter row would see at inference: the committed context (depth-0 rows of its document at
anchor rows <= a) and its own chain (same anchor) up to its own depth::

    visible(q, k) = doc_q == doc_k and ((d_k == 0 and a_k <= a_q) or (a_k == a_q and d_k <= d_q))
                    [and pos_k > pos_q - window  for sliding-window layers]

Anchors are *row indices of the packed sequence*, so "a_k <= a_q" inside one document is the
causal order. Two implementations: a dense boolean mask with torch SDPA (CPU, tests, small
sequences) and FlexAttention's block-sparse mask (CUDA, compiled). `TrainAttention` is the
`AttentionProvider` the drafter calls; besides the mask it can prepend prefix keys/values (the
depth-0 context of earlier partition segments) and record the keys/values it produced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Meta:
    """Per-element metadata of queries or keys (all [N] int64)."""

    anchor: Tensor
    depth: Tensor
    doc: Tensor
    pos: Tensor

    def __len__(self) -> int:
        return int(self.anchor.numel())

    @staticmethod
    def cat(parts: list["Meta"]) -> "Meta":
        return Meta(*(torch.cat([getattr(p, f) for p in parts]) for f in ("anchor", "depth", "doc", "pos")))

    def to(self, device) -> "Meta":
        return Meta(self.anchor.to(device), self.depth.to(device), self.doc.to(device), self.pos.to(device))

    def index(self, idx: Tensor) -> "Meta":
        return Meta(self.anchor[idx], self.depth[idx], self.doc[idx], self.pos[idx])


def dense_mask(q: Meta, k: Meta, window: int | None = None) -> Tensor:
    """[Nq, Nk] bool mask (query, key), vectorised."""
    qa, qd, qdoc, qp = (t[:, None] for t in (q.anchor, q.depth, q.doc, q.pos))
    ka, kd, kdoc, kp = (t[None, :] for t in (k.anchor, k.depth, k.doc, k.pos))
    m = (qdoc == kdoc) & (((kd == 0) & (ka <= qa)) | ((ka == qa) & (kd <= qd)))
    if window is not None:
        m = m & (kp > qp - window)
    return m


def make_mask_mod(q: Meta, k: Meta, window: int | None = None):
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for the same rule as `dense_mask`."""
    qa, qd, qdoc, qp = q.anchor, q.depth, q.doc, q.pos
    ka, kd, kdoc, kp = k.anchor, k.depth, k.doc, k.pos

    def mask_mod(b, h, qi, ki):
        a_q, a_k = qa[qi], ka[ki]
        d_q, d_k = qd[qi], kd[ki]
        ok = (qdoc[qi] == kdoc[ki]) & (((d_k == 0) & (a_k <= a_q)) | ((a_k == a_q) & (d_k <= d_q)))
        if window is not None:
            ok = ok & (kp[ki] > qp[qi] - window)
        return ok

    return mask_mod


def _pad_meta(meta: Meta, n: int, doc_fill: int) -> Meta:
    extra = n - len(meta)
    if extra <= 0:
        return meta
    z = torch.zeros(extra, dtype=meta.anchor.dtype, device=meta.anchor.device)
    return Meta(torch.cat([meta.anchor, z]), torch.cat([meta.depth, z]), torch.cat([meta.doc, z + doc_fill]),
                torch.cat([meta.pos, z]))


def block_flags(q: Meta, k: Meta, window: int | None, block: int = 128,
                rows_per_chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per (query block, key block): (any visible, all visible), from the dense rule evaluated in row
    chunks (memory O(rows_per_chunk * Nk)), so no full [Nq, Nk] mask is ever materialised."""
    Q, KV = len(q), len(k)
    nq, nk = -(-Q // block), -(-KV // block)
    kp = _pad_meta(k, nk * block, -2)
    anyb = torch.zeros(nq, nk, dtype=torch.bool, device=q.anchor.device)
    allb = torch.zeros_like(anyb)
    step = max(block, rows_per_chunk // block * block)
    for r0 in range(0, Q, step):
        r1 = min(Q, r0 + step)
        sub = _pad_meta(q.index(torch.arange(r0, r1, device=q.anchor.device)), -(-(r1 - r0) // block) * block, -1)
        m = dense_mask(sub, kp, window).view(-1, block, nk, block)
        b0 = r0 // block
        anyb[b0:b0 + m.shape[0]] = m.any(dim=3).any(dim=1)
        allb[b0:b0 + m.shape[0]] = m.all(dim=3).all(dim=1)
    return anyb, allb


def build_block_mask(q: Meta, k: Meta, window: int | None = None, block: int = 128):
    """A FlexAttention `BlockMask` for the training rule: block sparsity from `block_flags`, the exact
    rule inside partial blocks from `make_mask_mod` (over metadata padded to whole blocks, padding never
    visible)."""
    from torch.nn.attention.flex_attention import BlockMask
    anyb, allb = block_flags(q, k, window, block)
    partial = anyb & ~allb
    nq = anyb.shape[0]

    def blocks(flags: Tensor) -> tuple[Tensor, Tensor]:
        num = flags.sum(-1).to(torch.int32)
        idx = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True).to(torch.int32)   # flagged first
        return num.view(1, 1, nq), idx.view(1, 1, nq, -1)

    kv_num, kv_idx = blocks(partial)
    full_num, full_idx = blocks(allb)
    nqp, nkp = nq * block, anyb.shape[1] * block
    mod = make_mask_mod(_pad_meta(q, nqp, -1), _pad_meta(k, nkp, -2), window)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mod,
                                    seq_lengths=(len(q), len(k)))


_compiled_flex = None


def _flex():
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def default_backend(device: torch.device | str) -> str:
    """'flex' on CUDA (block-sparse, compiled), 'sdpa' (dense boolean mask) elsewhere."""
    if torch.device(device).type != "cuda":
        return "sdpa"
    import importlib.util
    return "flex" if importlib.util.find_spec("torch.nn.attention.flex_attention") else "sdpa"


class TrainAttention:
    """`AttentionProvider` for one training forward.

    q_meta: metadata of the forward's rows; prefix_meta / prefix_kv: extra keys placed before them
    (per layer ``(k [P, n_kv, D], v [P, n_kv, D])``, e.g. detached leaves whose gradient is wanted);
    record: row indices (into this forward) whose post-RoPE k/v are kept in ``self.recorded[layer]``.

    The flex backends pad queries and keys to whole 128-row blocks (at least one block; padding rows see
    nothing and are seen by nothing), which keeps the compiled kernel on its prefill path and bounds the
    number of distinct shapes; if the compiled kernel fails to build, the dense path takes over (warned once).
    """

    BLOCK = 128

    def __init__(self, q_meta: Meta, backend: str = "sdpa", prefix_meta: Meta | None = None,
                 prefix_kv: list[tuple[Tensor, Tensor]] | None = None, record: Tensor | None = None) -> None:
        if backend not in ("sdpa", "flex", "flex_eager"):
            raise ValueError(f"attention backend = {backend!r}; expected 'sdpa', 'flex' or 'flex_eager'")
        self.q_meta = q_meta
        self.k_meta = q_meta if prefix_meta is None or len(prefix_meta) == 0 else Meta.cat([prefix_meta, q_meta])
        self.prefix_kv = prefix_kv if prefix_meta is not None and len(prefix_meta) > 0 else None
        self.backend = "sdpa" if backend == "flex" and _FLEX_BROKEN else backend
        self.record = record
        self.recorded: dict[int, tuple[Tensor, Tensor]] = {}
        self._masks: dict[tuple[str, int | None], object] = {}

    def _padded(self, n: int) -> int:
        return max(1, -(-n // self.BLOCK)) * self.BLOCK

    def mask(self, window: int | None, backend: str | None = None):
        backend = backend or self.backend
        key = ("dense" if backend == "sdpa" else "block", window)
        if key not in self._masks:
            if backend == "sdpa":
                self._masks[key] = dense_mask(self.q_meta, self.k_meta, window)
            else:
                q = _pad_meta(self.q_meta, self._padded(len(self.q_meta)), -1)
                k = _pad_meta(self.k_meta, self._padded(len(self.k_meta)), -2)
                self._masks[key] = build_block_mask(q, k, window, self.BLOCK)
        return self._masks[key]

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
        if self.record is not None:
            self.recorded[layer_idx] = (k[self.record], v[self.record])
        if self.prefix_kv is not None:
            pk, pv = self.prefix_kv[layer_idx]
            k = torch.cat([pk.to(k.dtype), k], dim=0)
            v = torch.cat([pv.to(v.dtype), v], dim=0)
        gqa = q.shape[1] != k.shape[1]
        if self.backend != "sdpa":
            try:
                return self._flex(q, k, v, window, gqa)
            except Exception as e:  # noqa: BLE001 - a kernel that does not build: fall back, loudly
                if self.backend != "flex":
                    raise
                _mark_flex_broken(e)
                self.backend = "sdpa"
        mask = self.mask(window, "sdpa")
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                             v.transpose(0, 1)[None], attn_mask=mask[None, None], enable_gqa=gqa)
        return out[0].transpose(0, 1)

    def _flex(self, q: Tensor, k: Tensor, v: Tensor, window: int | None, gqa: bool) -> Tensor:
        from torch.nn.attention.flex_attention import flex_attention
        T = q.shape[0]
        Pq, Pk = self._padded(T), self._padded(k.shape[0])
        pad = lambda x, n: F.pad(x, (0, 0, 0, 0, 0, n - x.shape[0])) if n > x.shape[0] else x  # noqa: E731
        fn = _flex() if self.backend == "flex" else flex_attention
        out = fn(pad(q, Pq).transpose(0, 1)[None], pad(k, Pk).transpose(0, 1)[None],
                 pad(v, Pk).transpose(0, 1)[None], block_mask=self.mask(window), enable_gqa=gqa)
        return out[0].transpose(0, 1)[:T]


_FLEX_BROKEN = False


def _mark_flex_broken(err: Exception) -> None:
    global _FLEX_BROKEN
    if not _FLEX_BROKEN:
        import warnings
        warnings.warn(f"compiled FlexAttention failed ({type(err).__name__}: {str(err)[:300]}); training "
                      "continues with the dense SDPA mask (slower, O(T^2) memory)", stacklevel=3)
    _FLEX_BROKEN = True
