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
from dataclasses import dataclass

import torch
from torch import Tensor

PADDING_SLOT_ID = -1
IMPLS = ("auto", "torch", "triton")
_INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass
class ExpandedBatch:
    """Metadata of the expanded drafter batch. T' = T + B*(K-1) rows; all index tensors int64."""

    input_ids: Tensor        # [T'] token of each row
    positions: Tensor        # [T'] position of each row (rejected rows: 0)
    is_rejected: Tensor      # [T'] bool, rejected padding rows at the segment tails
    is_masked: Tensor        # [T'] bool, the K-1 MASK rows of each request
    sample_rows: Tensor      # [B*K] request-major: bonus row, then the K-1 MASK rows of each request
    hidden_src: Tensor       # [T'] target row whose hidden each row takes; -1 for MASK rows and tail rows with none
    hidden_dst: Tensor       # [T] output row of each target row (vLLM's out_hidden_state_mapping)
    query_start_loc: Tensor  # [B+1] of the expanded batch: qsl + arange(B+1)*(K-1)
    slot_mapping: Tensor     # [T'] KV-cache slot of each row; PADDING_SLOT_ID for rejected rows / pos >= max_model_len
    request_index: Tensor    # [T'] request (0..B-1) of each row

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_requests(self) -> int:
        return int(self.query_start_loc.shape[0]) - 1


# --------------------------------------------------------------------------------------------------
# Validation: shape / dtype / scalar checks are host-only and always run. Value checks (query_start_loc
# monotone, num_rejected in range) read tensor data, so they run only on CPU tensors: on CUDA they
# would force a host sync (and break CUDA-graph capture).
# --------------------------------------------------------------------------------------------------


def _check_index_tensor(name: str, t: object, ndim: int = 1) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name}: expected dtype torch.int32 or torch.int64, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")
    return t


def _check_int(name: str, v: object, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name}: expected a Python int >= {minimum}, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v}")
    return v


def _validate_expand_args(token_ids: Tensor, positions: Tensor, query_start_loc: Tensor,
                          num_rejected: Tensor | None, next_token_ids: Tensor, K: int, mask_token_id: int,
                          block_table: Tensor, block_size: int, max_model_len: int,
                          pad_token_id: int) -> tuple[int, int]:
    """Checks every argument of `expand_metadata`; returns (T, B)."""
    _check_index_tensor("token_ids", token_ids)
    _check_index_tensor("positions", positions)
    _check_index_tensor("query_start_loc", query_start_loc)
    _check_index_tensor("next_token_ids", next_token_ids)
    _check_index_tensor("block_table", block_table, ndim=2)
    if num_rejected is not None:
        _check_index_tensor("num_rejected", num_rejected)
    _check_int("K", K, 1)
    _check_int("mask_token_id", mask_token_id, 0)
    _check_int("pad_token_id", pad_token_id, 0)
    _check_int("block_size", block_size, 1)
    _check_int("max_model_len", max_model_len, 1)

    T, B = token_ids.shape[0], next_token_ids.shape[0]
    if T < 1:
        raise ValueError("token_ids: expected at least one row, got 0")
    if B < 1:
        raise ValueError("next_token_ids: expected at least one request (shape [B], B >= 1), got 0")
    if positions.shape[0] != T:
        raise ValueError(f"positions: expected shape [{T}] (same length as token_ids), got {tuple(positions.shape)}")
    if query_start_loc.shape[0] != B + 1:
        raise ValueError(f"query_start_loc: expected shape [{B + 1}] (B+1, B = len(next_token_ids)), "
                         f"got {tuple(query_start_loc.shape)}")
    if num_rejected is not None and num_rejected.shape[0] != B:
        raise ValueError(f"num_rejected: expected shape [{B}] (B = len(next_token_ids)), "
                         f"got {tuple(num_rejected.shape)}")
    if block_table.shape[0] < B or block_table.shape[1] < 1:
        raise ValueError(f"block_table: expected shape [B >= {B}, max_blocks >= 1], got {tuple(block_table.shape)}")
    if block_table.shape[1] * block_size < max_model_len:
        raise ValueError(f"block_table: {block_table.shape[1]} blocks of block_size {block_size} cover "
                         f"{block_table.shape[1] * block_size} positions; expected >= max_model_len = {max_model_len}")
    tensors = {"positions": positions, "query_start_loc": query_start_loc, "next_token_ids": next_token_ids,
               "block_table": block_table, "num_rejected": num_rejected}
    for name, t in tensors.items():
        if t is not None and t.device != token_ids.device:
            raise ValueError(f"{name}: expected device {token_ids.device} (that of token_ids), got {t.device}")

    if token_ids.device.type == "cpu":
        qsl = query_start_loc.long()
        if int(qsl[0]) != 0:
            raise ValueError(f"query_start_loc: expected query_start_loc[0] == 0, got {int(qsl[0])}")
        if int(qsl[-1]) != T:
            raise ValueError(f"query_start_loc: expected query_start_loc[-1] == len(token_ids) = {T}, "
                             f"got {int(qsl[-1])}")
        q_len = qsl[1:] - qsl[:-1]
        if bool((q_len < 1).any()):
            r = int(torch.nonzero(q_len < 1)[0])
            raise ValueError(f"query_start_loc: expected every query length >= 1, request {r} has {int(q_len[r])}")
        if num_rejected is not None:
            n_rej = num_rejected.long()
            bad = (n_rej < 0) | (n_rej > q_len - 1)
            if bool(bad.any()):
                r = int(torch.nonzero(bad)[0])
                raise ValueError(f"num_rejected: expected 0 <= num_rejected[r] <= query length - 1; request {r} "
                                 f"has num_rejected {int(n_rej[r])} with query length {int(q_len[r])}")
    return T, B


def _validate_slot_args(block_table: Tensor, request_index: Tensor, positions: Tensor, block_size: int,
                        max_model_len: int) -> None:
    _check_index_tensor("block_table", block_table, ndim=2)
    _check_index_tensor("request_index", request_index)
    _check_index_tensor("positions", positions)
    _check_int("block_size", block_size, 1)
    _check_int("max_model_len", max_model_len, 1)
    if request_index.shape != positions.shape:
        raise ValueError(f"request_index: expected shape {tuple(positions.shape)} (that of positions), "
                         f"got {tuple(request_index.shape)}")
    if block_table.shape[1] * block_size < max_model_len:
        raise ValueError(f"block_table: {block_table.shape[1]} blocks of block_size {block_size} cover "
                         f"{block_table.shape[1] * block_size} positions; expected >= max_model_len = {max_model_len}")


def _validate_place_args(fc_out: Tensor, batch: ExpandedBatch, mask_vec: Tensor) -> None:
    if not isinstance(fc_out, Tensor) or fc_out.dim() != 2 or not fc_out.is_floating_point():
        raise ValueError(f"fc_out: expected a floating-point tensor of shape [T, H], got "
                         f"{tuple(fc_out.shape) if isinstance(fc_out, Tensor) else type(fc_out).__name__}")
    T, H = fc_out.shape
    if batch.hidden_dst.shape[0] != T:
        raise ValueError(f"fc_out: expected {batch.hidden_dst.shape[0]} rows (T of the expanded batch), got {T}")
    if not isinstance(mask_vec, Tensor) or tuple(mask_vec.shape) != (H,):
        raise ValueError(f"mask_vec: expected shape [{H}] (the hidden size of fc_out), got "
                         f"{tuple(mask_vec.shape) if isinstance(mask_vec, Tensor) else type(mask_vec).__name__}")
    if mask_vec.device != fc_out.device or batch.hidden_src.device != fc_out.device:
        raise ValueError(f"mask_vec / batch: expected device {fc_out.device} (that of fc_out), "
                         f"got {mask_vec.device} / {batch.hidden_src.device}")


# --------------------------------------------------------------------------------------------------
# Reference (plain PyTorch, vectorised, no host syncs on CUDA)
# --------------------------------------------------------------------------------------------------


def compute_slot_mapping(block_table: Tensor, request_index: Tensor, positions: Tensor, block_size: int,
                         max_model_len: int) -> Tensor:
    """KV-cache slot of each row: block_table[r, pos // block_size] * block_size + pos % block_size.

    block_table: [B, max_blocks]; request_index, positions: [N] -> [N] int64, PADDING_SLOT_ID where
    pos < 0 or pos >= max_model_len. Shared by the expansion and the autoregressive follow-up steps.
    """
    _validate_slot_args(block_table, request_index, positions, block_size, max_model_len)
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
    T, B = _validate_expand_args(token_ids, positions, query_start_loc, num_rejected, next_token_ids, K,
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
    _validate_place_args(fc_out, batch, mask_vec)
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
