"""Test-time training (TTT) for the autoregressive EAGLE-3 drafter: train the drafter on its own fed-back
hidden states, as it runs at inference.

At inference, EAGLE-3 step j of a chain anchored at row a runs the drafter row at position pos[a] + j
with the previous draft as input token and the previous step's fed-back hidden (``Drafter.forward``'s
second output) as hidden input, attending to the committed context (depth-0 rows <= a) and to its own
earlier steps. Training does the same with teacher-forced tokens: element (a, j) takes token
``input_ids[a + j]`` (the true token at that position), hidden = feedback of element (a, j-1), and is
trained towards the target distribution of row a + j. Its keys are exactly those of the P-EAGLE mask
(``mask.py``), so the elements come from the same COD sampler (``cod.py``) and the same attention
provider, with the earlier steps' keys/values (kept in the graph) as prefix keys.

Step j needs step j-1's outputs, so the steps run one forward each (no sequence partitioning); the
loss of all steps is one backward.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .cod import CodElements
from .loss import depth_stats, target_logits, weighted_kl_sum
from .mask import Meta, TrainAttention
from .partition import GradSync, PackedRows, PackStats, _no_ctx


def run_pack_ttt(model: nn.Module, rows: PackedRows, elements: CodElements, *, num_depths: int,
                 head_weight, head_bias=None, loss_scale: float = 1.0, depth_weights=None, backend: str = "sdpa",
                 backward: bool = True, grad_sync: GradSync = _no_ctx, last: bool = True,
                 autocast: contextlib.AbstractContextManager | None = None) -> PackStats:
    dev = rows.input_ids.device
    anchor, depth = elements.anchor.to(dev), elements.depth.to(dev)
    ac = autocast if autocast is not None else contextlib.nullcontext()
    z = torch.zeros(num_depths, dtype=torch.float64, device=dev)
    stats = PackStats(torch.zeros((), dtype=torch.float64, device=dev), z.clone(), z.clone(), z.clone(),
                      len(elements), len(elements))
    ctx = grad_sync(last) if backward else contextlib.nullcontext()
    with ctx, (contextlib.nullcontext() if backward else torch.no_grad()):
        metas: list[Meta] = []
        prev_kv: list[tuple] | None = None
        prev_a = prev_fb = None
        total = None
        for j in range(num_depths):
            idx = torch.nonzero(depth == j).view(-1)
            if idx.numel() == 0:
                break
            a = anchor[idx]
            pos = rows.positions[a] + j
            meta = Meta(a, torch.full_like(a, j), rows.doc[a], pos)
            attn = TrainAttention(meta, backend, prefix_meta=Meta.cat(metas) if metas else None, prefix_kv=prev_kv,
                                  record=torch.arange(a.numel(), device=dev))
            logit_rows = torch.nonzero(rows.valid[a + j]).view(-1)
            with ac:
                if j == 0:
                    logits, fb = model(rows.input_ids[a], pos, rows.aux[a], attn, logit_rows, return_feedback=True)
                else:
                    hid = prev_fb[torch.searchsorted(prev_a, a)]            # feedback of (a, j-1)
                    logits, fb = model(rows.input_ids[a + j], pos, None, attn, logit_rows, hidden=hid,
                                       return_feedback=True)
            with torch.no_grad():
                tgt = target_logits(rows.final_hidden[(a + j)[logit_rows]], head_weight, head_bias)
            dd = torch.full_like(logit_rows, j)
            ls = weighted_kl_sum(logits, tgt, dd, depth_weights)
            total = ls if total is None else total + ls
            c, cnt, kl = depth_stats(logits.detach(), tgt, dd, num_depths)
            stats.correct += c
            stats.count += cnt
            stats.kl += kl
            stats.loss_sum += ls.detach().to(torch.float64)
            L = len(attn.recorded)
            rec = [attn.recorded[i] for i in range(L)]
            prev_kv = rec if prev_kv is None else [(torch.cat([pk, k.to(pk.dtype)]), torch.cat([pv, v.to(pv.dtype)]))
                                                   for (pk, pv), (k, v) in zip(prev_kv, rec)]
            metas.append(meta)
            prev_a, prev_fb = a, fb
        if backward:
            (total * loss_scale).backward()
    return stats
