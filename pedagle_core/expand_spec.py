"""What the input expansion of one speculative step takes and gives, shared by its two implementations (the
plain-PyTorch reference in `pedagle_core.expand` and the fused Triton kernels in
`pedagle_core.kernels.expand_triton`): the padding slot id, the `ExpandedBatch` it returns, and the checks of
its arguments. The semantics are in `pedagle_core.expand`'s docstring."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PADDING_SLOT_ID = -1
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


def validate_expand_args(token_ids: Tensor, positions: Tensor, query_start_loc: Tensor,
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


def validate_slot_args(block_table: Tensor, request_index: Tensor, positions: Tensor, block_size: int,
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


def validate_place_args(fc_out: Tensor, batch: ExpandedBatch, mask_vec: Tensor) -> None:
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


__all__ = ["PADDING_SLOT_ID", "ExpandedBatch", "validate_expand_args", "validate_slot_args", "validate_place_args"]
