"""Sequence partitioning: one packed sequence's COD elements in S segments, exact gradients.

Plan. Elements are bucketed by their chain's *anchor row*, with bucket boundaries at quantiles of the
element count (so segments hold about E/S elements each); a whole chain therefore stays in one
segment, and segment j owns the depth-0 rows [lo_j, hi_j) plus the chains anchored there.

What a segment needs besides its own elements: the keys/values of the depth-0 rows before it in
the same document, [doc_start(lo_j), lo_j) (every query of segment j has anchor >= lo_j, so it sees
all of them, subject to the document and window rules). These are re-included as *keys only* (no
loss), taken from one no-grad forward over the depth-0 rows (depth-0 rows only ever attend to
depth-0 rows, so that forward computes exactly their keys/values).

Exact gradients. Segments run forward+backward in reverse order (j = S-1 .. 0). In segment j the
prefix keys/values are detached leaves; after its backward their gradients are added into per-row
buffers G_k, G_v. When segment j' < j later recomputes those rows with grad, it adds the surrogate
term sum_l <k_l, G_k,l> + <v_l, G_v,l> to its loss, which backpropagates the later segments'
gradients through the rows' own forward. This is reverse-mode accumulation over the segments, so the
parameter gradients equal the single-pass ones up to summation order, while only one segment's
activations (about E/S elements) plus the depth-0 keys/values are alive at a time. The price is the
one no-grad forward over the depth-0 rows.

Loss scaling: every segment's loss is ``sum_e w[d_e] KL_e * loss_scale`` with
``loss_scale = grad_scale / N`` (N = supervised elements of the whole step, across micro-batches and
ranks), so the accumulated gradient is the gradient of the count-normalised step loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .cod import CodElements, doc_starts
from .loss import depth_stats, target_logits, weighted_kl_sum
from .mask import Meta, TrainAttention


@dataclass
class PackedRows:
    """The drafter rows of one packed sequence (see ``cod.py`` for the alignment), on the device."""

    input_ids: Tensor     # [m] token p+1 of the row's document
    positions: Tensor     # [m] document-local position p
    doc: Tensor           # [m] document id (contiguous runs)
    valid: Tensor         # [m] bool: the row's target (token p+2) is supervised
    aux: Tensor           # [m, n_aux*Ht] target aux hidden states at token p
    final_hidden: Tensor  # [m, Ht] the target's lm_head input at token p+1 (its distribution for token p+2)

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device) -> "PackedRows":
        return PackedRows(*(getattr(self, f).to(device) for f in
                            ("input_ids", "positions", "doc", "valid", "aux", "final_hidden")))


@dataclass
class Segment:
    index: int
    elem_idx: Tensor   # [E_j] indices into the elements (depth-0 rows first, in row order)
    lo: int            # depth-0 rows [lo, hi) belong to this segment
    hi: int
    prefix_lo: int     # prefix keys: depth-0 rows [prefix_lo, lo)


def plan_segments(elements: CodElements, doc: Tensor, num_segments: int) -> list[Segment]:
    """Split the elements of one packed sequence into at most ``num_segments`` segments (empty ones dropped)."""
    m = doc.numel()
    anchor = elements.anchor.cpu()
    S = max(1, int(num_segments))
    if S == 1:
        return [Segment(0, torch.arange(len(elements)), 0, m, 0)]
    counts = torch.bincount(anchor, minlength=m)
    before = torch.cumsum(counts, 0) - counts
    row_bucket = torch.clamp((before * S) // max(len(elements), 1), max=S - 1)     # monotone in the row
    elem_bucket = row_bucket[anchor]
    starts = doc_starts(doc.cpu())
    segs = []
    for j in range(S):
        rows = torch.nonzero(row_bucket == j).view(-1)
        if rows.numel() == 0:
            continue
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        segs.append(Segment(len(segs), torch.nonzero(elem_bucket == j).view(-1), lo, hi, int(starts[lo])))
    return segs


def pack_shape(elements: CodElements, doc: Tensor, num_segments: int) -> tuple[int, bool]:
    """(number of segments, whether a no-grad prefix pass runs) of one packed sequence: FSDP needs every
    rank to make the same sequence of forward/backward calls, so the trainer pads to the ranks' maximum."""
    segs = plan_segments(elements, doc, num_segments)
    return len(segs), any(s.lo > s.prefix_lo for s in segs[1:])


@dataclass
class PackStats:
    loss_sum: Tensor       # scalar: sum_e w KL_e (not normalised)
    correct: Tensor        # [K] top-1 agreement counts
    count: Tensor          # [K] supervised elements per depth
    kl: Tensor             # [K] unweighted KL sums per depth
    num_elements: int
    peak_segment_elements: int


GradSync = Callable[[bool], contextlib.AbstractContextManager]


def _no_ctx(_last: bool):
    return contextlib.nullcontext()


def run_pack(model: nn.Module, rows: PackedRows, elements: CodElements, *, num_depths: int,
             mask_token_id: int | None, head_weight: Tensor, head_bias: Tensor | None = None,
             num_segments: int = 1, loss_scale: float = 1.0, depth_weights: Tensor | None = None,
             backend: str = "sdpa", backward: bool = True, grad_sync: GradSync = _no_ctx,
             last: bool = True, autocast: contextlib.AbstractContextManager | None = None,
             pad_segments: int = 0, force_prepass: bool = False) -> PackStats:
    """Forward (+ backward) of one packed sequence in ``num_segments`` segments.

    model: a `TrainableDrafter` (possibly DDP/FSDP-wrapped); head_weight: [Vd, Ht] the target's lm_head
    rows of the draft vocabulary. grad_sync(is_last) wraps every forward+backward (DDP ``no_sync`` /
    FSDP2 gradient sync); only the final backward of the pack gets ``last``. ``pad_segments`` /
    ``force_prepass`` add no-op forward(+backward) calls so that every rank makes the same calls (FSDP).
    """
    dev = rows.input_ids.device
    anchor, depth = elements.anchor.to(dev), elements.depth.to(dev)
    segs = plan_segments(elements, rows.doc, num_segments)
    mask_id = int(mask_token_id) if mask_token_id is not None else 0
    ac = autocast if autocast is not None else contextlib.nullcontext()

    z = torch.zeros(num_depths, dtype=torch.float64, device=dev)
    stats = PackStats(torch.zeros((), dtype=torch.float64, device=dev), z.clone(), z.clone(), z.clone(),
                      len(elements), 0)

    # ---- no-grad pass over the depth-0 rows that later segments use as prefix keys
    kv_cache: dict[int, tuple[Tensor, Tensor]] = {}
    pre_lo = pre_hi = 0
    with_prefix = [s for s in segs[1:] if s.lo > s.prefix_lo]
    if with_prefix:
        pre_lo = min(s.prefix_lo for s in with_prefix)
        pre_hi = max(s.lo for s in with_prefix)
        r = torch.arange(pre_lo, pre_hi, device=dev)
        meta = Meta(r, torch.zeros_like(r), rows.doc[r], rows.positions[r])
        attn = TrainAttention(meta, backend, record=torch.arange(r.numel(), device=dev))
        with torch.no_grad(), ac:
            model(rows.input_ids[r], rows.positions[r], rows.aux[r], attn, None)
        kv_cache = {l: (k.detach(), v.detach()) for l, (k, v) in attn.recorded.items()}
    elif force_prepass:
        _noop_forward(model, rows, backend, ac, None)
    gdt = {l: torch.promote_types(k.dtype, torch.float32) for l, (k, _) in kv_cache.items()}
    grads = {l: (torch.zeros(k.shape, dtype=gdt[l], device=dev), torch.zeros(v.shape, dtype=gdt[l], device=dev))
             for l, (k, v) in kv_cache.items()}

    for _ in range(max(0, pad_segments - len(segs))):
        _noop_forward(model, rows, backend, ac, grad_sync if backward else None)

    for n, seg in enumerate(reversed(segs)):
        idx = seg.elem_idx.to(dev)
        a, d = anchor[idx], depth[idx]
        E0 = int((d == 0).sum())
        stats.peak_segment_elements = max(stats.peak_segment_elements, int(idx.numel()) + seg.lo - seg.prefix_lo)
        ids = torch.where(d == 0, rows.input_ids[a], torch.full_like(a, mask_id))
        qmeta = Meta(a, d, rows.doc[a], rows.positions[a] + d)
        prefix_meta = prefix_kv = None
        leaves: list[tuple[Tensor, Tensor]] = []
        if seg.lo > seg.prefix_lo:
            p = torch.arange(seg.prefix_lo, seg.lo, device=dev)
            prefix_meta = Meta(p, torch.zeros_like(p), rows.doc[p], rows.positions[p])
            for l in sorted(kv_cache):
                k, v = kv_cache[l]
                leaves.append((k[seg.prefix_lo - pre_lo: seg.lo - pre_lo].detach().requires_grad_(backward),
                               v[seg.prefix_lo - pre_lo: seg.lo - pre_lo].detach().requires_grad_(backward)))
            prefix_kv = leaves
        # Own depth-0 rows that later segments used as prefix: [max(lo, pre_lo), min(hi, pre_hi)).
        g_lo, g_hi = max(seg.lo, pre_lo), min(seg.hi, pre_hi)
        record = torch.arange(g_lo - seg.lo, g_hi - seg.lo, device=dev) if backward and g_hi > g_lo else None
        attn = TrainAttention(qmeta, backend, prefix_meta=prefix_meta, prefix_kv=prefix_kv, record=record)
        sup = rows.valid[a + d]
        logit_rows = torch.nonzero(sup).view(-1)
        t_rows = (a + d)[logit_rows]
        is_last = last and n == len(segs) - 1
        ctx = grad_sync(is_last) if backward else contextlib.nullcontext()
        with ctx, (contextlib.nullcontext() if backward else torch.no_grad()):
            with ac:
                logits = model(ids, rows.positions[a] + d, rows.aux[a[:E0]], attn, logit_rows)
            with torch.no_grad():
                tgt = target_logits(rows.final_hidden[t_rows], head_weight, head_bias)
            loss_sum = weighted_kl_sum(logits, tgt, d[logit_rows], depth_weights)
            if backward:
                total = loss_sum * loss_scale
                for l, (k, v) in attn.recorded.items():
                    gk, gv = grads[l]
                    total = total + (k.to(gk.dtype) * gk[g_lo - pre_lo: g_hi - pre_lo]).sum() \
                        + (v.to(gv.dtype) * gv[g_lo - pre_lo: g_hi - pre_lo]).sum()
                total.backward()
        if backward:
            for l, (lk, lv) in zip(sorted(kv_cache), leaves):
                gk, gv = grads[l]
                if lk.grad is not None:
                    gk[seg.prefix_lo - pre_lo: seg.lo - pre_lo] += lk.grad.to(gk.dtype)
                if lv.grad is not None:
                    gv[seg.prefix_lo - pre_lo: seg.lo - pre_lo] += lv.grad.to(gv.dtype)
        c, cnt, kl = depth_stats(logits.detach(), tgt, d[logit_rows], num_depths)
        stats.loss_sum += loss_sum.detach().to(torch.float64)
        stats.correct += c
        stats.count += cnt
        stats.kl += kl
        del logits, loss_sum, attn, leaves
    return stats


def _noop_forward(model: nn.Module, rows: PackedRows, backend: str, ac, grad_sync: GradSync | None) -> None:
    """A one-row forward (and a zero backward when ``grad_sync`` is given) that changes nothing."""
    r = torch.zeros(1, dtype=torch.long, device=rows.input_ids.device)
    meta = Meta(r, r, rows.doc[r], rows.positions[r])
    attn = TrainAttention(meta, backend)
    if grad_sync is None:
        with torch.no_grad(), ac:
            model(rows.input_ids[r], rows.positions[r], rows.aux[r], attn, None)
        return
    with grad_sync(False):
        with ac:
            out = model(rows.input_ids[r], rows.positions[r], rows.aux[r], attn, r[:0])
        (out.float().sum() * 0.0).backward()
