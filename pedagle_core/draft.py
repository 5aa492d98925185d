"""Drafting: one speculative step from a `StepInput` to K draft tokens per request.

* `draft_parallel`  — P-EAGLE: bonus slot + K-1 MASK slots, ONE drafter forward, K drafts.
* `draft_autoregressive` — EAGLE-3 chain drafting: K forwards, each feeding back the drafter's hidden.

Both share the expansion (`expand.py`), the drafter math (`model.py`) and the readout below; the
backend supplies the KV cache through a `DraftCache`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .attention import AttentionProvider
from .expand import ExpandedBatch, compute_slot_mapping, expand_metadata, place_hidden
from .model import Drafter


class DraftError(ValueError):
    """A step input or drafting argument is invalid (the message names the field and the expected value)."""


@dataclass
class StepInput:
    """The core's only input: one target step, flat tensors, no backend types.

    token_ids / positions: [T] every scheduled target row (rejected ones included)
    query_start_loc: [B+1]; num_rejected: [B] or None on prefill-only steps
    next_token_ids: [B] the newly sampled (bonus) token of each request
    aux_hidden: [T, n_aux*Ht] the target's aux hidden states, concatenated in layer-id order
    """

    token_ids: Tensor
    positions: Tensor
    query_start_loc: Tensor
    num_rejected: Tensor | None
    next_token_ids: Tensor
    aux_hidden: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.next_token_ids.shape[0])


class DraftCache(Protocol):
    """What drafting needs from a backend's KV cache."""

    block_table: Tensor       # [B, max_blocks] for the requests of this step
    block_size: int
    max_model_len: int

    def attention(self, positions: Tensor, slot_mapping: Tensor, request_index: Tensor) -> AttentionProvider:
        ...


@dataclass
class DraftOutput:
    token_ids: Tensor            # [B, K] target-vocabulary ids
    margins: Tensor              # [B, K] top-1 minus top-2 logit (near-tie detection)
    probs: Tensor | None = None  # [B, K, draft_vocab] draft probabilities when sampling
    draft_ids: Tensor | None = None  # [B, K] draft-vocabulary ids


def top2_reference(logits: Tensor) -> tuple[Tensor, Tensor]:
    """logits [N, V] -> (argmax [N], the two largest values [N, 2] in float32, as ``topk(2)``)."""
    top = logits.topk(min(2, logits.shape[-1]), dim=-1).values.float()           # exact: upcasts keep order
    return logits.argmax(dim=-1), top


def _top2_kernel(logits: Tensor):
    """``kernels.top2`` where it can run on these logits (CUDA, [N, V >= 2], triton installed), else None."""
    if logits.is_cuda and logits.dim() == 2 and logits.shape[-1] >= 2:
        try:
            from .kernels import top2 as kernel
        except ImportError:                                                       # no triton
            return None
        if kernel.can_run(logits.device):
            return kernel
    return None


def top2(logits: Tensor) -> tuple[Tensor, Tensor]:
    """`top2_reference`, through one pass of a Triton kernel on CUDA (``kernels/top2.py``)."""
    kernel = _top2_kernel(logits)
    if kernel is not None:
        return kernel.top2(logits)                  # the custom op under torch.compile
    return top2_reference(logits)


_TOP2_KERNEL_FIRST = top2    # `readout` fuses the rest of the greedy readout into the kernel only while `top2`
#                              is this function (benchmarks swap in `top2_reference` for the PyTorch path)


def readout(drafter: Drafter, out: Tensor, temperature: float = 0.0,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """out: [N, H] sample rows -> (target ids [N], margins [N], probs [N, Vd] or None, draft ids [N])."""
    logits = drafter.compute_logits(out)                                          # [N, Vd], model dtype
    if temperature <= 0 and top2 is _TOP2_KERNEL_FIRST and logits.is_cuda and not torch.compiler.is_compiling():
        kernel = _top2_kernel(logits)
        if kernel is not None:                    # argmax, margins and d2t in the top-2 kernel's merge launch
            ids, margins, draft_ids = kernel.greedy_readout(logits, drafter.d2t)
            return ids, margins, None, draft_ids
    argmax, top = top2(logits)
    margins = top[:, 0] - top[:, -1]
    if temperature > 0:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        draft_ids = torch.multinomial(probs, 1, generator=generator).view(-1)
    else:
        probs, draft_ids = None, argmax
    return drafter.to_target_ids(draft_ids), margins, probs, draft_ids


def check_k(drafter: Drafter, K: int, parallel: bool) -> None:
    if not isinstance(K, int) or K < 1:
        raise DraftError(f"K = {K!r}; expected an integer >= 1")
    cfg = drafter.config
    if parallel and K > 1:
        if cfg.mask_token_id is None:
            raise DraftError("parallel drafting with K > 1 needs config field 'mask_token_id' (the MASK slot "
                             "token); this drafter has none: use mode 'autoregressive' or a P-EAGLE checkpoint")
        if K > cfg.parallel_depth:
            warnings.warn(f"K = {K} exceeds the drafter's recorded parallel depth {cfg.parallel_depth} "
                          "(checkpoints that do not record it count as depth 1): drafts past the trained "
                          "depth are likely to be rejected", stacklevel=3)


def forward_expanded(drafter: Drafter, step: StepInput, K: int, cache: DraftCache,
                     mask_token_id: int) -> tuple[ExpandedBatch, Tensor, Tensor]:
    """One drafter forward over ``step`` expanded for K drafts (the bonus slot, K-1 MASK slots when K > 1):
    returns (the expanded batch, the drafter's output rows [T', H], the hidden states fed back [T', H]).
    The building block of `draft_parallel` / `draft_autoregressive`; also used by tests and tools that
    drive the drafter at a forced state."""
    batch = expand_metadata(step.token_ids, step.positions, step.query_start_loc, step.num_rejected,
                            step.next_token_ids, K, mask_token_id, cache.block_table, cache.block_size,
                            cache.max_model_len)
    fc_out = drafter.project_hidden(step.aux_hidden.to(drafter.fc.weight.dtype))  # [T, H]
    mask_vec = drafter.mask_hidden_projected() if K > 1 else fc_out.new_zeros(fc_out.shape[-1])
    hidden = place_hidden(fc_out, batch, mask_vec)                                 # [T', H]
    attn = cache.attention(batch.positions, batch.slot_mapping, batch.request_index)
    out, feedback = drafter(batch.input_ids, batch.positions, hidden, attn)
    return batch, out, feedback


@torch.no_grad()
def draft_parallel(drafter: Drafter, step: StepInput, K: int, cache: DraftCache, temperature: float = 0.0,
                   generator: torch.Generator | None = None) -> DraftOutput:
    """P-EAGLE: K drafts per request from ONE drafter forward."""
    check_k(drafter, K, parallel=True)
    mask_id = drafter.config.mask_token_id if drafter.config.mask_token_id is not None else 0
    batch, out, _ = forward_expanded(drafter, step, K, cache, mask_id)
    ids, margins, probs, draft_ids = readout(drafter, out[batch.sample_rows], temperature, generator)
    B = step.batch_size
    return DraftOutput(ids.view(B, K), margins.view(B, K),
                       None if probs is None else probs.view(B, K, -1), draft_ids.view(B, K))


@torch.no_grad()
def draft_autoregressive(drafter: Drafter, step: StepInput, K: int, cache: DraftCache, temperature: float = 0.0,
                         generator: torch.Generator | None = None) -> DraftOutput:
    """EAGLE-3 chain drafting: the first forward over the expanded step (no mask slots), then K-1
    single-row forwards per request, each taking the previous draft and the fed-back drafter hidden."""
    check_k(drafter, K, parallel=False)
    batch, out, feedback = forward_expanded(drafter, step, 1, cache, 0)
    rows = batch.sample_rows                                                       # [B]
    ids, margins, probs, draft_ids = readout(drafter, out[rows], temperature, generator)
    all_ids, all_margins, all_probs, all_draft = [ids], [margins], [probs], [draft_ids]
    positions, hidden = batch.positions[rows], feedback[rows]
    req = torch.arange(step.batch_size, device=positions.device)
    for _ in range(K - 1):
        positions = positions + 1
        slots = compute_slot_mapping(cache.block_table, req, positions, cache.block_size, cache.max_model_len)
        attn = cache.attention(positions, slots, req)
        out, hidden = drafter(ids, positions, hidden, attn)
        ids, margins, probs, draft_ids = readout(drafter, out, temperature, generator)
        all_ids.append(ids), all_margins.append(margins), all_probs.append(probs), all_draft.append(draft_ids)
    stack = lambda xs: torch.stack(xs, dim=1)  # noqa: E731  [B, K]
    return DraftOutput(stack(all_ids), stack(all_margins),
                       None if probs is None else torch.stack(all_probs, dim=1), stack(all_draft))


def draft(drafter: Drafter, step: StepInput, K: int, cache: DraftCache, mode: str = "parallel",
          temperature: float = 0.0, generator: torch.Generator | None = None) -> DraftOutput:
    """Dispatch on ``mode``: 'parallel' (P-EAGLE) or 'autoregressive' (EAGLE-3)."""
    if mode == "parallel":
        return draft_parallel(drafter, step, K, cache, temperature, generator)
    if mode == "autoregressive":
        return draft_autoregressive(drafter, step, K, cache, temperature, generator)
    raise DraftError(f"mode = {mode!r}; expected 'parallel' or 'autoregressive'")
