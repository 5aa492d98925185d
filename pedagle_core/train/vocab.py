"""Draft vocabulary selection (``d2t`` / ``t2d``) and the MASK token.

* The draft vocabulary is the N most frequent target tokens of the training data (ties: lower id
  first), topped up with the lowest unseen ids when fewer than N distinct tokens occur. Draft ids are
  assigned in increasing target-id order, so ``d2t`` (offsets, target = draft + d2t[draft]) is
  non-decreasing and ``t2d`` (bool [V]) marks the chosen target ids.
* The MASK token (P-EAGLE's input token of every MASK slot) is, in order: an explicit id
  (range-checked), the tokenizer's own mask token, the first unused embedding slot (``len(tokenizer) < vocab_size``), the highest
  target id that never occurs in the training data. It is never placed in the draft vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def count_tokens(sequences: Iterable[Tensor], vocab_size: int, masks: Iterable[Tensor] | None = None) -> Tensor:
    """Token frequencies [vocab_size] int64 over ``sequences`` (only where ``masks`` is True, if given)."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    masks_it = iter(masks) if masks is not None else None
    for seq in sequences:
        seq = torch.as_tensor(seq, dtype=torch.int64).view(-1)
        if masks_it is not None:
            seq = seq[torch.as_tensor(next(masks_it), dtype=torch.bool).view(-1)]
        if seq.numel():
            if int(seq.max()) >= vocab_size or int(seq.min()) < 0:
                raise ValueError(f"token id out of range [0, {vocab_size}) in the training data")
            counts += torch.bincount(seq, minlength=vocab_size)
    return counts


def select_draft_vocab(counts: Tensor, draft_vocab_size: int, exclude: Iterable[int] = ()) -> tuple[Tensor, Tensor]:
    """Top-``draft_vocab_size`` target ids by frequency -> (d2t [Nd] int64 offsets, t2d [V] bool)."""
    V = counts.numel()
    excl = [int(i) for i in exclude if i is not None]
    if not 0 < draft_vocab_size <= V - len(set(excl)):
        raise ValueError(f"draft_vocab_size = {draft_vocab_size}; expected 1..{V - len(set(excl))} "
                         f"(target vocabulary {V} minus {len(set(excl))} excluded id(s))")
    # Sort by (-count, id): stable sort on -count of ids in increasing order keeps lower ids first on ties.
    key = counts.to(torch.int64).clone()
    if excl:
        key[torch.tensor(excl)] = -1                       # below every real count (counts are >= 0)
    order = torch.sort(-key, stable=True).indices
    chosen = order[:draft_vocab_size]
    if excl and bool(torch.isin(chosen, torch.tensor(excl)).any()):
        raise ValueError("draft vocabulary selection reached an excluded id (vocabulary too small)")
    target_ids = chosen.sort().values
    d2t = target_ids - torch.arange(draft_vocab_size, dtype=torch.int64)
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[target_ids] = True
    return d2t, t2d


def draft_to_target_ids(d2t: Tensor) -> Tensor:
    """[Nd] target id of every draft id."""
    return torch.arange(d2t.numel(), dtype=torch.int64, device=d2t.device) + d2t


def target_to_draft_ids(t2d: Tensor) -> Tensor:
    """[V] draft id of every target id (-1 where the target id is outside the draft vocabulary)."""
    out = torch.full(t2d.shape, -1, dtype=torch.int64, device=t2d.device)
    out[t2d] = torch.arange(int(t2d.sum()), dtype=torch.int64, device=t2d.device)
    return out


def resolve_mask_token_id(vocab_size: int, explicit: int | None = None, tokenizer_len: int | None = None,
                          counts: Tensor | None = None, tokenizer_mask_id: int | None = None) -> int:
    """The MASK token id (see the module docstring for the order of choices)."""
    if explicit is not None:
        if not 0 <= int(explicit) < vocab_size:
            raise ValueError(f"--mask-token-id = {explicit}; expected an id in [0, {vocab_size}) "
                             "(an embedding row of the target)")
        return int(explicit)
    if tokenizer_mask_id is not None and 0 <= int(tokenizer_mask_id) < vocab_size:
        return int(tokenizer_mask_id)
    if tokenizer_len is not None and tokenizer_len < vocab_size:
        return int(tokenizer_len)
    if counts is not None:
        unseen = torch.nonzero(counts == 0).view(-1)
        if unseen.numel():
            return int(unseen[-1])
    raise ValueError("no MASK token id: the tokenizer fills the embedding table and every id occurs in the "
                     "training data; pass --mask-token-id explicitly")
