"""KV-pool bookkeeping ops: slot rows of req_to_token, KV stores, slot-to-slot copies across all layers."""

from __future__ import annotations

import ctypes

import torch

from ._library import define


def _segments(start_offset: torch.Tensor, end_offset: torch.Tensor) -> list[tuple[int, int, int]]:
    """(start, end, offset into the packed list) per request: request b's rows are packed after b-1's."""
    out, offset = [], 0
    for s, e in zip(start_offset.tolist(), end_offset.tolist()):
        out.append((s, e, offset))
        offset += e - s
    return out


def assign_req_to_token_pool(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """req_to_token[req_pool_indices[b], start[b]:end[b]] = the b-th packed segment of out_cache_loc."""
    for b, (s, e, off) in enumerate(_segments(start_offset, end_offset)):
        req_to_token[int(req_pool_indices[b]), s:e] = out_cache_loc[off : off + e - s].to(req_to_token.dtype)


def store_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, indices: torch.Tensor, row_dim: int
) -> None:
    """k_cache[indices] = k, v_cache[indices] = v (rows of row_dim elements)."""
    k_cache.view(-1, row_dim)[indices.long()] = k.reshape(-1, row_dim).to(k_cache.dtype)
    v_cache.view(-1, row_dim)[indices.long()] = v.reshape(-1, row_dim).to(v_cache.dtype)


def copy_all_layer_kv_cache(data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor) -> None:
    """For every pool buffer i (base address data_ptrs[i], row bytes strides[i]): row tgt_loc[j] = row src_loc[j].

    SGLang hands the buffers over as raw addresses (uint64), so rows are moved with ctypes. All source rows
    are read before any target row is written (the GPU kernel's semantics when sources and targets overlap).
    """
    pairs = list(zip(tgt_loc.tolist(), src_loc.tolist()))
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        base, stride = int(base) & (2**64 - 1), int(stride)
        rows = [ctypes.string_at(base + src * stride, stride) for _, src in pairs]
        for (tgt, _), row in zip(pairs, rows):
            ctypes.memmove(base + tgt * stride, row, stride)


assign_req_to_token_pool_cpu = define(
    "assign_req_to_token_pool_cpu(Tensor req_pool_indices, Tensor(a!) req_to_token, Tensor start_offset, "
    "Tensor end_offset, Tensor out_cache_loc, int pool_len) -> ()",
    assign_req_to_token_pool,
)
store_cache_cpu = define(
    "store_cache_cpu(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor indices, int row_dim) -> ()",
    store_cache,
)
copy_all_layer_kv_cache_cpu = define(
    "copy_all_layer_kv_cache_cpu(Tensor data_ptrs, Tensor strides, Tensor tgt_loc, Tensor src_loc) -> ()",
    copy_all_layer_kv_cache,
)
