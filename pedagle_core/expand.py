"""Input expansion of one P-EAGLE speculative step (vLLM's padded-drafter semantics).

The target step scheduled T rows for B requests (rejected draft rows included). For parallel drafting
with K drafts per request, every request's segment grows by K-1 rows: the rows are shifted one token
to the left (EAGLE pairs hidden[p] with token[p+1]), the last accepted row takes the newly sampled
bonus token, K-1 MASK rows follow, and the rejected rows stay at the tail as padding.

Request r (s = qsl[r], e = qsl[r+1], n_valid = e - 1 - num_rejected[r] - s), output segment of length
(e - s) + K - 1 starting at s + r*(K-1); offset j inside the segment:

    j <  n_valid             token_ids[s+1+j]   position positions[s]+j   hidden fc_out[s+j]
    j == n_valid             next_token_ids[r]  position positions[s]+j   hidden fc_out[s+j]   (sample row 0)
    n_valid < j < n_valid+K  mask_token_id      position positions[s]+j   hidden mask_vec      (sample rows 1..K-1)
    j >= n_valid+K           pad_token_id       position 0, slot -1       hidden fc_out[s+j] if j < e-s else 0

K = 1 is plain EAGLE (no MASK rows). `num_rejected=None` is a prefill-only step (no rejections).

Two implementations with one API: the plain-PyTorch reference below (vectorised, sync-free, so it can
be captured in a CUDA graph) and the fused Triton kernels in `pedagle_core.kernels.expand_triton`.
`expand_metadata` / `place_hidden` pick one (`impl="auto"`: Triton when it can run on the tensors'
device, else the reference).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .expand_spec import (PADDING_SLOT_ID, ExpandedBatch, validate_expand_args, validate_place_args,
                          validate_slot_args)

IMPLS = ("auto", "torch", "triton")


# --------------------------------------------------------------------------------------------------
# Reference (plain PyTorch, vectorised, no host syncs on CUDA)
# --------------------------------------------------------------------------------------------------


def compute_slot_mapping(block_table: Tensor, request_index: Tensor, positions: Tensor, block_size: int,
                         max_model_len: int) -> Tensor:
    """KV-cache slot of each row: block_table[r, pos // block_size] * block_size + pos % block_size.

    block_table: [B, max_blocks]; request_index, positions: [N] -> [N] int64, PADDING_SLOT_ID where
    pos < 0 or pos >= max_model_len. Shared by the expansion and the autoregressive follow-up steps.
    """
    validate_slot_args(block_table, request_index, positions, block_size, max_model_len)
    pos = positions.long()
    valid = (pos >= 0) & (pos < max_model_len)
    safe_pos = pos.clamp(0, max_model_len - 1)          # keeps the gather in bounds for invalid rows
    block = block_table[request_index.long(), safe_pos // block_size].long()
    slot = block * block_size + safe_pos % block_size
    return torch.where(valid, slot, PADDING_SLOT_ID)


def expand_metadata_reference(token_ids: Tensor, positions: Tensor, query_start_loc: Tensor,
                              num_rejected: Tensor | None, next_token_ids: Tensor, K: int, mask_token_id: int,
                              block_table: Tensor, block_size: int, max_model_len: int,
                              pad_token_id: int = 0) -> ExpandedBatch:
    """Plain-PyTorch expansion (see the module docstring). Inputs: token_ids, positions [T];
    query_start_loc [B+1]; num_rejected [B] or None; next_token_ids [B]; block_table [B, max_blocks]."""
    T, B = validate_expand_args(token_ids, positions, query_start_loc, num_rejected, next_token_ids, K,
                                 mask_token_id, block_table, block_size, max_model_len, pad_token_id)
    device = token_ids.device
    n_out = T + B * (K - 1)                                             # T'

    qsl = query_start_loc.long()                                        # [B+1]
    q_len = qsl[1:] - qsl[:-1]                                          # [B]
    n_rej = torch.zeros_like(q_len) if num_rejected is None else num_rejected.long()
    n_valid = q_len - 1 - n_rej                                         # [B] offset of the bonus row
    out_qsl = qsl + torch.arange(B + 1, device=device) * (K - 1)        # [B+1]

    # Per output row: its request r and offset j inside the request's segment.
    rows = torch.arange(n_out, device=device)                           # [T']
    r = torch.searchsorted(out_qsl, rows, right=True) - 1               # [T']
    j = rows - out_qsl[r]
    s, nv = qsl[r], n_valid[r]
    live = j < nv + K
    is_masked = live & (j > nv)

    shifted = token_ids.long()[(s + 1 + j).clamp(0, T - 1)]            # token_ids[s+1+j] where j < n_valid
    input_ids = torch.where(j < nv, shifted,
                            torch.where(j == nv, next_token_ids.long()[r],
                                        torch.where(live, mask_token_id, pad_token_id)))
    out_pos = torch.where(live, positions.long()[s] + j, 0)
    hidden_src = torch.where((j < q_len[r]) & ~is_masked, s + j, -1)
    slot = compute_slot_mapping(block_table, r, out_pos, block_size, max_model_len)
    slot = torch.where(live, slot, PADDING_SLOT_ID)

    in_rows = torch.arange(T, device=device)                            # [T]
    hidden_dst = in_rows + (torch.searchsorted(qsl, in_rows, right=True) - 1) * (K - 1)
    sample_rows = ((out_qsl[:-1] + n_valid)[:, None] + torch.arange(K, device=device)).reshape(-1)  # [B*K]

    return ExpandedBatch(input_ids=input_ids, positions=out_pos, is_rejected=~live, is_masked=is_masked,
                         sample_rows=sample_rows, hidden_src=hidden_src, hidden_dst=hidden_dst,
                         query_start_loc=out_qsl, slot_mapping=slot, request_index=r)


def place_hidden_reference(fc_out: Tensor, batch: ExpandedBatch, mask_vec: Tensor) -> Tensor:
    """fc_out: [T, H], mask_vec: [H] -> [T', H]. vLLM's formulation: scatter every target row to its
    output row (hidden_dst), then overwrite the MASK rows; rows nothing wrote stay 0."""
    validate_place_args(fc_out, batch, mask_vec)
    out = fc_out.new_zeros(batch.hidden_src.shape[0], fc_out.shape[1])  # [T', H]
    out[batch.hidden_dst] = fc_out
    return torch.where(batch.is_masked[:, None], mask_vec.to(fc_out.dtype), out)


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def _triton_can_run(device: torch.device, explicit: bool) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors through the interpreter. The interpreter is chosen
    when the kernels are defined (`@triton.jit` reads TRITON_INTERPRET), so for CPU tensors this asks
    the kernel module; 'auto' additionally requires TRITON_INTERPRET=1 in the environment now."""
    if device.type == "cpu" and not explicit and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
    if device.type not in ("cpu", "cuda"):
        return False
    try:
        from .kernels import expand_triton
    except ImportError:
        return False
    return expand_triton.can_run(device)


def _use_triton(impl: str, device: torch.device) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    ok = _triton_can_run(device, explicit=impl == "triton")
    if impl == "triton" and not ok:
        raise RuntimeError(f"impl='triton' but Triton cannot run on device {device} (needs triton and CUDA "
                           "tensors, or CPU tensors with TRITON_INTERPRET=1 set before the kernels are imported)")
    return ok


def expand_metadata(token_ids: Tensor, positions: Tensor, query_start_loc: Tensor, num_rejected: Tensor | None,
                    next_token_ids: Tensor, K: int, mask_token_id: int, block_table: Tensor, block_size: int,
                    max_model_len: int, pad_token_id: int = 0, impl: str = "auto",
                    max_query_len: int | None = None) -> ExpandedBatch:
    """Expanded-batch metadata of one speculative step. impl: 'auto' | 'torch' | 'triton'.

    max_query_len: optional host-side upper bound on the query lengths (e.g. the attention metadata's);
    only sizes the Triton grid, never changes the result.
    """
    if _use_triton(impl, token_ids.device):
        from .kernels.expand_triton import expand_metadata_triton

        return expand_metadata_triton(token_ids, positions, query_start_loc, num_rejected, next_token_ids, K,
                                      mask_token_id, block_table, block_size, max_model_len, pad_token_id,
                                      max_query_len=max_query_len)
    return expand_metadata_reference(token_ids, positions, query_start_loc, num_rejected, next_token_ids, K,
                                     mask_token_id, block_table, block_size, max_model_len, pad_token_id)


def place_hidden(fc_out: Tensor, batch: ExpandedBatch, mask_vec: Tensor, impl: str = "auto") -> Tensor:
    """Drafter input hidden states [T', H] from fc_out [T, H] and the MASK vector [H]:
    out[o] = mask_vec if is_masked[o] else (fc_out[hidden_src[o]] if hidden_src[o] >= 0 else 0)."""
    if _use_triton(impl, fc_out.device):
        from .kernels.expand_triton import place_hidden_triton

        return place_hidden_triton(fc_out, batch, mask_vec)
    return place_hidden_reference(fc_out, batch, mask_vec)


__all__ = ["PADDING_SLOT_ID", "IMPLS", "ExpandedBatch", "compute_slot_mapping", "expand_metadata",
           "expand_metadata_reference", "place_hidden", "place_hidden_reference"]
