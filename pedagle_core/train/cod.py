"""COD sampling: which (anchor, depth) elements one packed training sequence holds.

Coordinates. Training works on *drafter rows*. A document of n target tokens x_0..x_{n-1} gives
n-1 rows; row p (document-local position p) holds exactly what the drafter row at position p holds at
inference::

    input token x_{p+1},  aux hidden of the target at token p,  predicts token p+2
    (target distribution = the target's next-token distribution at token p+1)

Documents are packed row-wise (``doc`` ids per row, positions restart at 0 in every document), so a
row never mixes two documents.

An *element* is (anchor row a, depth d): d = 0 is row a itself (real token, real hidden); d >= 1 is the
d-th MASK slot after the bonus row a, at RoPE position ``pos[a] + d``, which at inference predicts token
``pos[a] + d + 2``, i.e. the target distribution of row ``a + d`` (its *target row*). So every element's
target is the target of some depth-0 row, and element (a, d) is valid only if row a + d exists in
the same document and is supervised.

Sampling (conditional, as in the paper / speculators, with the anchor -1 fix and document awareness):

* depth 0: every row (unsupervised prompt rows too: they are context).
* depth 1: candidate target rows t with ``valid[t]`` whose anchor t-1 is in the same document (this
  drops document-local position 0, whose anchor would be -1 or another document's last row).
* depth d: draw ``int((n_valid - d) * max(r**d, r_min))`` of the candidates uniformly without
  replacement (all of them when fewer); the next depth's candidates are the drawn target rows + 1
  that are valid and still in the same document. Every depth-d element therefore has its whole
  chain (a, 0..d-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CodElements:
    """Elements of one packed sequence, ordered by (depth, anchor): depth-0 rows come first."""

    anchor: Tensor      # [E] int64 row index of the chain's anchor
    depth: Tensor       # [E] int64

    @property
    def target_row(self) -> Tensor:
        return self.anchor + self.depth

    def __len__(self) -> int:
        return int(self.anchor.numel())

    def counts_per_depth(self, num_depths: int) -> Tensor:
        return torch.bincount(self.depth, minlength=num_depths)


def same_doc_as_previous(doc: Tensor) -> Tensor:
    """[m] bool: row i and row i-1 belong to the same document (False for row 0)."""
    out = torch.zeros_like(doc, dtype=torch.bool)
    out[1:] = doc[1:] == doc[:-1]
    return out


def doc_starts(doc: Tensor) -> Tensor:
    """[m] int64: the first row of each row's document (documents are contiguous)."""
    m = doc.numel()
    idx = torch.arange(m, device=doc.device)
    start_flag = ~same_doc_as_previous(doc)
    starts = torch.where(start_flag, idx, torch.zeros_like(idx))
    return torch.cummax(starts, 0).values


def sample_cod(valid: Tensor, doc: Tensor, num_depths: int, ratio: float = 0.7, ratio_min: float = 0.2,
               generator: torch.Generator | None = None) -> CodElements:
    """COD-sample the elements of one packed sequence.

    valid: [m] bool, the row's target is supervised; doc: [m] int document id (contiguous runs).
    num_depths: K (depths 0..K-1). Returns elements ordered by (depth, anchor).
    """
    if num_depths < 1:
        raise ValueError(f"num_depths = {num_depths}; expected >= 1")
    if not (0.0 < ratio <= 1.0 and 0.0 <= ratio_min <= 1.0):
        raise ValueError(f"ratio = {ratio}, ratio_min = {ratio_min}; expected 0 < ratio <= 1, 0 <= ratio_min <= 1")
    valid = valid.to(torch.bool).cpu()
    doc = doc.cpu()
    m = valid.numel()
    anchors = [torch.arange(m, dtype=torch.int64)]
    depths = [torch.zeros(m, dtype=torch.int64)]
    n_valid = int(valid.sum())
    cont = same_doc_as_previous(doc)
    pool = torch.nonzero(valid & cont).view(-1)          # depth-1 target rows (anchor = t - 1 >= doc start)
    for d in range(1, num_depths):
        if pool.numel() == 0:
            break
        size = int(max(n_valid - d, 0) * max(ratio ** d, ratio_min))
        if pool.numel() > size:
            pick = torch.randperm(pool.numel(), generator=generator)[:size]
            sel = pool[pick].sort().values
        else:
            sel = pool
        if sel.numel() == 0:
            break
        anchors.append(sel - d)
        depths.append(torch.full_like(sel, d))
        nxt = sel + 1
        nxt = nxt[nxt < m]
        pool = nxt[valid[nxt] & cont[nxt]]
    return CodElements(torch.cat(anchors), torch.cat(depths))


def element_meta(elements: CodElements, positions: Tensor, doc: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """Per-element metadata: RoPE position, document, supervised flag."""
    a, d = elements.anchor, elements.depth
    return {
        "pos": positions[a] + d,
        "doc": doc[a],
        "supervised": valid[a + d],
    }
