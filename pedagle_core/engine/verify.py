"""Verification: target sampling, greedy acceptance and speculative rejection sampling.

One request, one step: the target scored rows [bonus, d_1 .. d_k] and gives ``k + 1`` next-token
distributions; row i predicts the token that follows row i, i.e. the token d_{i+1} claims to be.

* Greedy (temperature 0): accept d_1 .. d_a while d_i == argmax(row i-1); emit those and then the
  target argmax at row a (the correction, or the bonus when a == k). Output == target-only greedy.
* Sampling: target probabilities p (temperature, then top-k, then top-p, as vLLM orders them). Draft i
  is accepted with probability min(1, p_i(d_i) / q_i(d_i)), where q_i is the draft distribution
  (greedy drafts: q_i is one-hot, so the test is u < p_i(d_i)). At the first rejection the token is
  drawn from norm(max(p_i - q_i, 0)); when every draft is accepted the bonus is drawn from p_k. The
  emitted tokens are then distributed exactly as the target's own samples (Leviathan et al. 2023;
  Chen et al. 2023). Invalid drafts (out of the vocabulary, or flagged by the engine) are always
rejected; for them q has no mass inside the vocabulary, so the residual is p itself.

Every random draw of a request uses that request's own ``torch.Generator`` (seeded by the engine), so a
request's output depends only on its seed, not on its batch neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature = {self.temperature!r}; expected >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p = {self.top_p!r}; expected a value in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k = {self.top_k!r}; expected >= 0 (0 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def target_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """[N, V] logits -> [N, V] float probabilities after temperature, top-k and top-p."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    logits = logits / params.temperature
    V = logits.shape[-1]
    if 0 < params.top_k < V:
        kth = logits.topk(params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        p = sorted_logits.softmax(-1)
        before = p.cumsum(-1) - p                              # mass strictly before each token
        drop_sorted = before >= params.top_p                   # keep the smallest prefix reaching top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


@dataclass
class Verdict:
    """Result of verifying one request's drafts: ``accepted`` drafts, then ``tokens`` (accepted drafts
    followed by the correction/bonus token; length accepted + 1)."""

    accepted: int
    tokens: list[int]


def verify_greedy(logits: Tensor, drafts: Tensor, valid: Tensor) -> Verdict:
    """logits: [k+1, V]; drafts: [k] (target ids); valid: [k] bool."""
    pred = logits.argmax(-1)                                   # [k+1]
    drafts, valid = drafts.to(pred.device), valid.to(pred.device)
    k = int(drafts.shape[0])
    ok = (drafts == pred[:k]) & valid
    a = int(ok.long().cumprod(0).sum()) if k else 0
    return Verdict(a, [int(t) for t in drafts[:a].tolist()] + [int(pred[a])])


def verify_sampling(logits: Tensor, drafts: Tensor, valid: Tensor, params: SamplingParams,
                    generator: torch.Generator, draft_probs: Tensor | None = None) -> Verdict:
    """Speculative rejection sampling for one request.

    logits: [k+1, V]; drafts: [k] target ids; valid: [k] bool; draft_probs: [k, V] probabilities the
    drafts were sampled from (over the target vocabulary) or None for greedy drafts (one-hot).
    Draws: k uniforms, then one categorical sample, all from ``generator``.
    """
    p = target_probs(logits, params)                           # [k+1, V]
    drafts, valid = drafts.to(p.device), valid.to(p.device)
    draft_probs = None if draft_probs is None else draft_probs.to(p.device)
    k = int(drafts.shape[0])
    if k:
        safe = drafts.clamp(0, p.shape[-1] - 1)
        p_d = p[torch.arange(k, device=p.device), safe]        # p_i(d_i)
        if draft_probs is None:
            q_d = torch.ones_like(p_d)
        else:
            q_d = draft_probs[torch.arange(k, device=p.device), safe].to(p_d.dtype)
        u = torch.rand(k, generator=generator, device=generator.device, dtype=torch.float64).to(p.device)
        ok = valid & (q_d > 0) & (u.to(p_d.dtype) * q_d < p_d)   # u < p/q without dividing by q
        a = int(ok.long().cumprod(0).sum())
    else:
        a = 0
    if a < k:                                                  # rejection at draft a: residual distribution
        res = p[a].clone()
        if draft_probs is not None:                            # q's in-vocabulary mass
            res = (res - draft_probs[a].to(res.dtype)).clamp_min(0)
        elif bool(valid[a]):                                   # one-hot q on an in-vocabulary draft
            res[drafts[a]] = 0
        total = res.sum()
        dist = res / total if total > 0 else p[a]
    else:
        dist = p[a]
    tok = int(torch.multinomial(dist.to(generator.device), 1, generator=generator))
    return Verdict(a, [int(t) for t in drafts[:a].tolist()] + [tok])
