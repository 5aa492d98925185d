"""Greedy readout in two small launches (Triton): per row of logits, the argmax and the top-1 / top-2 values.

The semantics are `pedagle_core.draft.top2_reference`: ``argmax`` (the FIRST index of the maximum, as
``torch.argmax``) and the two largest values as ``torch.topk(2)`` returns them (the maximum twice when it
occurs twice). ``torch.topk`` over a 200k-token vocabulary is a multi-pass radix select (about 0.2 ms for
56 rows on an H100); one pass over the logits does the same job at the bandwidth floor.

* `_top2_chunk_kernel` — grid (rows, chunks): each program scans CHUNK logits of one row and writes its
  (max, first index of max, second value) partial.
* `_top2_merge_kernel` — grid (rows,): merges a row's partials. The winning chunk is the first holding
  the maximum; the second value is the best of the winner's second value and every other chunk's maximum.
  With READOUT it also writes the greedy readout of `pedagle_core.draft.readout`: the margin (top-1 minus
  top-2) and the target-vocabulary id (argmax plus its ``d2t`` offset), three PyTorch launches fewer.

`top2` is what callers use: the launcher, or under ``torch.compile`` the custom op ``pedagle::top2``
(opaque to dynamo and inductor, which call it as it is).

TRITON_INTERPRET=1 must be set before import to run the kernels on CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import pdl
from .jit_math import gdc_wait_and_release

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_CHUNK = 4096


def can_run(device: torch.device) -> bool:
    """Whether the kernels (as defined at import) can run on tensors of `device`."""
    return device.type == "cpu" if INTERPRETED else device.type == "cuda"


@triton.jit
def _top2_chunk_kernel(x_ptr, m1_ptr, i1_ptr, m2_ptr, n_cols, x_stride, n_chunks,
                       CHUNK: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    gdc_wait_and_release(PDL)
    m1 = tl.full([BLOCK], float("-inf"), tl.float32)        # per lane: best value, its index, second value
    i1 = tl.full([BLOCK], 2147483647, tl.int32)
    m2 = tl.full([BLOCK], float("-inf"), tl.float32)
    for j in range(0, CHUNK, BLOCK):
        idx = c * CHUNK + j + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * x_stride + idx, mask=idx < n_cols, other=float("-inf")).to(tl.float32)
        better = x > m1                                    # later indices win lanes only when strictly larger
        m2 = tl.where(better, m1, tl.maximum(m2, x))
        i1 = tl.where(better, idx, i1)
        m1 = tl.where(better, x, m1)
    best = tl.max(m1, 0)
    first = tl.min(tl.where(m1 == best, i1, 2147483647), 0)
    # second: the best lane's own second value, and every other lane's best
    second = tl.max(tl.where(i1 == first, m2, m1), 0)
    out = row * n_chunks + c
    tl.store(m1_ptr + out, best)
    tl.store(i1_ptr + out, first)
    tl.store(m2_ptr + out, second)


@triton.jit
def _top2_merge_kernel(m1_ptr, i1_ptr, m2_ptr, top_ptr, idx_ptr, d2t_ptr, tgt_ptr, margin_ptr, n_chunks,
                       BLOCK_C: tl.constexpr, READOUT: tl.constexpr = False, PDL: tl.constexpr = False):
    row = tl.program_id(0).to(tl.int64)
    gdc_wait_and_release(PDL)
    c = tl.arange(0, BLOCK_C)
    ok = c < n_chunks
    m1 = tl.load(m1_ptr + row * n_chunks + c, mask=ok, other=float("-inf"))
    i1 = tl.load(i1_ptr + row * n_chunks + c, mask=ok, other=2147483647)
    m2 = tl.load(m2_ptr + row * n_chunks + c, mask=ok, other=float("-inf"))
    best = tl.max(m1, 0)
    first = tl.min(tl.where((m1 == best) & ok, i1, 2147483647), 0)
    second = tl.max(tl.where(i1 == first, m2, m1), 0)
    first = tl.where(first == 2147483647, 0, first)               # an all -inf row: index 0, as torch.argmax
    tl.store(top_ptr + row * 2, best)
    tl.store(top_ptr + row * 2 + 1, second)
    tl.store(idx_ptr + row, first.to(tl.int64))
    if READOUT:                         # the greedy readout: margin and target-vocabulary id (d2t offsets)
        tl.store(margin_ptr + row, best - second)
        tl.store(tgt_ptr + row, first.to(tl.int64) + tl.load(d2t_ptr + first).to(tl.int64))


def top2_triton(logits: Tensor, d2t: Tensor | None = None) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    """logits [N, V] -> (argmax [N] int64, top-2 values [N, 2] float32). With ``d2t`` [V] (draft-to-target
    offsets) also, from the same merge launch, the greedy readout: (argmax, top-2, target ids
    ``argmax + d2t[argmax]`` [N] int64, margins top-1 minus top-2 [N] float32)."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"top2: logits {tuple(logits.shape)}; expected [N, V] with V >= 2")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    N, V = logits.shape
    if V >= 2**31 - 1:
        raise ValueError(f"top2: vocabulary {V} too large (int32 indices)")
    if d2t is not None and (d2t.shape != (V,) or d2t.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"top2: d2t {tuple(d2t.shape)} {d2t.dtype}; expected ({V},) integer offsets")
    top = torch.empty(N, 2, dtype=torch.float32, device=logits.device)
    idx = torch.empty(N, dtype=torch.int64, device=logits.device)
    tgt = torch.empty(N, dtype=torch.int64, device=logits.device) if d2t is not None else idx
    margin = torch.empty(N, dtype=torch.float32, device=logits.device) if d2t is not None else top
    if N == 0:
        return (idx, top) if d2t is None else (idx, top, tgt, margin)
    chunk = min(_CHUNK, triton.next_power_of_2(V))
    n_chunks = triton.cdiv(V, chunk)
    m1 = torch.empty(N, n_chunks, dtype=torch.float32, device=logits.device)
    i1 = torch.empty(N, n_chunks, dtype=torch.int32, device=logits.device)
    m2 = torch.empty_like(m1)
    block = min(chunk, 1024)
    kw = pdl.launch_kwargs(logits.device)
    _top2_chunk_kernel[(N, n_chunks)](logits, m1, i1, m2, V, logits.stride(0), n_chunks, CHUNK=chunk, BLOCK=block,
                                      num_warps=4, PDL=bool(kw), **kw)
    _top2_merge_kernel[(N,)](m1, i1, m2, top, idx, d2t.contiguous() if d2t is not None else idx, tgt, margin,
                             n_chunks, BLOCK_C=triton.next_power_of_2(n_chunks), READOUT=d2t is not None,
                             num_warps=1, PDL=bool(kw), **kw)
    return (idx, top) if d2t is None else (idx, top, tgt, margin)


@torch.library.custom_op("pedagle::top2", mutates_args=())
def top2_op(logits: Tensor) -> tuple[Tensor, Tensor]:
    """`top2_triton` as a custom op (opaque to torch.compile)."""
    return top2_triton(logits)


@top2_op.register_fake
def _(logits: Tensor) -> tuple[Tensor, Tensor]:
    N = logits.shape[0]
    return logits.new_empty(N, dtype=torch.int64), logits.new_empty(N, 2, dtype=torch.float32)


def top2(logits: Tensor) -> tuple[Tensor, Tensor]:
    """`top2_triton`; the custom op while torch.compile traces."""
    return top2_op(logits) if torch.compiler.is_compiling() else top2_triton(logits)


def greedy_readout(logits: Tensor, d2t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """logits [N, V], d2t [V] -> (target ids [N], margins [N], draft ids [N]): `top2_triton`'s readout form
    (eager only: under torch.compile callers use `top2` and PyTorch for the rest)."""
    idx, _, tgt, margin = top2_triton(logits, d2t)
    return tgt, margin, idx
