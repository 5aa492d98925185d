"""Loss and metrics: KL(target || draft) over the draft vocabulary, count-normalised.

The target distribution is the target's next-token distribution restricted to the draft vocabulary
and renormalised there (softmax of the target logits at the draft vocabulary's target ids equals
p[t2d] / p[t2d].sum()). The loss of a packed sequence (or of a whole step across micro-batches and
ranks) is

    loss = sum_e w[depth_e] * KL_e / N          N = number of supervised elements

with w = 1 by default (speculators / Automodel behaviour: deeper depths weigh by their count). A
per-depth weight vector changes the numerator only, so the denominator stays a plain count and
sequence partitioning stays exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kl_per_element(draft_logits: Tensor, target_logits: Tensor) -> Tensor:
    """[N, Vd] draft logits, [N, Vd] target logits (both over the draft vocabulary) -> [N] KL(p_t || p_d),
    computed in float32 (or float64 when the inputs are)."""
    dt = torch.float64 if draft_logits.dtype == torch.float64 else torch.float32
    logq = F.log_softmax(draft_logits.to(dt), dim=-1)
    logp = F.log_softmax(target_logits.to(dt), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def target_logits(final_hidden: Tensor, head_weight: Tensor, head_bias: Tensor | None = None) -> Tensor:
    """The target's logits over the draft vocabulary: final hidden [N, Ht] @ W[draft ids]^T -> [N, Vd]."""
    out = final_hidden.to(head_weight.dtype) @ head_weight.t()
    if head_bias is not None:
        out = out + head_bias
    return out


def weighted_kl_sum(draft_logits: Tensor, tgt_logits: Tensor, depth: Tensor,
                    depth_weights: Tensor | None = None) -> Tensor:
    """sum_e w[depth_e] * KL_e (a scalar; divide by the step's supervised count)."""
    kl = kl_per_element(draft_logits, tgt_logits)
    if depth_weights is not None:
        kl = kl * depth_weights.to(kl.device, kl.dtype)[depth]
    return kl.sum()


def kl_loss(draft_logits: Tensor, tgt_logits: Tensor, depth: Tensor, depth_weights: Tensor | None = None,
            denominator: float | Tensor | None = None) -> Tensor:
    """Count-normalised loss of one set of supervised elements (denominator defaults to their number)."""
    n = draft_logits.shape[0] if denominator is None else denominator
    return weighted_kl_sum(draft_logits, tgt_logits, depth, depth_weights) / max(float(n), 1.0)


@torch.no_grad()
def depth_stats(draft_logits: Tensor, tgt_logits: Tensor, depth: Tensor, num_depths: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-depth (top-1 agreement count, element count, KL sum), each [num_depths] float64.

    Top-1 agreement: the draft's argmax equals the target's argmax over the draft vocabulary."""
    correct = (draft_logits.argmax(-1) == tgt_logits.argmax(-1)).to(torch.float64)
    kl = kl_per_element(draft_logits, tgt_logits).to(torch.float64)
    ones = torch.ones_like(correct)
    z = torch.zeros(num_depths, dtype=torch.float64, device=draft_logits.device)
    return (z.index_add(0, depth, correct), z.clone().index_add(0, depth, ones), z.clone().index_add(0, depth, kl))
