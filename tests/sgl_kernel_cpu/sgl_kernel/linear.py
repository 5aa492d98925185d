"""Packed-weight linear and its weight conversion (SGLang's AMX linear path).

SGLang's AMX path converts each [N, K] bfloat16/float16 linear weight once after loading
(`convert_weight_packed`; float32 weights are never packed: ``amx_utils.dtype_is_supported``) and then calls
`weight_packed_linear(x, packed, bias, is_vnni=True)`; the LM head likewise. SGLang keeps the packed tensor as the
layer's ``weight`` and reads only its shape ([N, K], as before packing) and dtype, so the packed weight here has
the weight's shape and dtype but NOT its element order: rows in blocks of BLOCK_N, each block stored as
[K / 2, rows, 2] (pairs of K next to each other, a VNNI-like order). A consumer that reads a packed weight as a
plain one (instead of through `weight_packed_linear`) gets wrong numbers, as it would with SGLang's real kernels.
`weight_packed_linear(..., is_vnni=False)` takes a plain [N, K] weight.
"""

from __future__ import annotations

import torch

from ._amx_switch import forced
from ._library import define

BLOCK_N = 16        # rows per packed block (the last block may be narrower)
VNNI = 2            # K elements kept together
PACKABLE = (torch.bfloat16, torch.float16)


def _blocks(n_rows: int) -> list[tuple[int, int]]:
    return [(n0, min(BLOCK_N, n_rows - n0)) for n0 in range(0, n_rows, BLOCK_N)]


def _pack_2d(w: torch.Tensor) -> torch.Tensor:
    n_rows, k = w.shape
    out = torch.empty_like(w)
    flat = out.view(-1)
    for n0, n in _blocks(n_rows):
        blk = w[n0 : n0 + n].reshape(n, k // VNNI, VNNI).permute(1, 0, 2)     # [K/2, n, 2]
        flat[n0 * k : (n0 + n) * k] = blk.reshape(-1)
    return out


def _unpack_2d(p: torch.Tensor) -> torch.Tensor:
    n_rows, k = p.shape
    flat = p.contiguous().view(-1)
    out = torch.empty_like(p)
    for n0, n in _blocks(n_rows):
        out[n0 : n0 + n] = flat[n0 * k : (n0 + n) * k].view(k // VNNI, n, VNNI).permute(1, 0, 2).reshape(n, k)
    return out


def _check(weight: torch.Tensor, op: str) -> None:
    if weight.dim() not in (2, 3):
        raise ValueError(f"{op}: weight of {weight.dim()} dims, expected [N, K] or [E, N, K]")
    if weight.dtype not in PACKABLE:
        raise NotImplementedError(f"{op}: weight dtype {weight.dtype} is not implemented in pedagle's CPU test "
                                  f"kernels (expected bfloat16 or float16, what SGLang packs): {op}")
    if weight.shape[-1] % VNNI:
        raise ValueError(f"{op}: weight K = {weight.shape[-1]}, expected a multiple of {VNNI}")


def convert_packed(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] (or [E, N, K]) -> the packed weight: same shape and dtype, blocked VNNI-like element order."""
    _check(weight, "convert_weight_packed")
    if weight.dim() == 3:
        return torch.stack([_pack_2d(w) for w in weight])
    return _pack_2d(weight.contiguous())


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The plain weight of `convert_packed`'s output."""
    if packed.dim() == 3:
        return torch.stack([_unpack_2d(p) for p in packed])
    return _unpack_2d(packed)


def packed_linear(mat1: torch.Tensor, mat2: torch.Tensor, bias: torch.Tensor | None, is_vnni: bool) -> torch.Tensor:
    """mat1 [M, K] @ W[N, K]^T (+ bias [N]) -> [M, N] in mat1's dtype, accumulated in float32. W = mat2 unpacked
    (is_vnni: mat2 comes from `convert_weight_packed`) or mat2 itself."""
    if mat2.dim() != 2 or mat1.shape[-1] != mat2.shape[1]:
        raise ValueError(f"weight_packed_linear: mat1 {tuple(mat1.shape)} and mat2 {tuple(mat2.shape)}, expected "
                         "[M, K] and [N, K]")
    w = unpack(mat2) if is_vnni else mat2
    out = mat1.float() @ w.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.to(mat1.dtype)


# PEDAGLE_SGLANG_CPU_AMX=0: no convert_weight_packed, so SGLang sees an sgl_kernel without its AMX backend
convert_weight_packed = (define("convert_weight_packed(Tensor weight) -> Tensor", convert_packed)
                         if forced() is not False else None)
weight_packed_linear = define(
    "weight_packed_linear(Tensor mat1, Tensor mat2, Tensor? bias, bool is_vnni) -> Tensor", packed_linear
)
