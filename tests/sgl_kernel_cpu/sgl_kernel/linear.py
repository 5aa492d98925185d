"""Packed-weight linear and its weight conversion.

SGLang's AMX path converts each [N, K] linear weight once after loading (`convert_weight_packed`) and then
calls `weight_packed_linear(x, packed, bias, is_vnni=True)`. Here the "packed" weight is the weight itself
(no VNNI layout): the pair only has to agree with itself, and `weight_packed_linear` also accepts the
unconverted weight (`is_vnni=False`).
"""

from __future__ import annotations

import torch

from ._library import define


def convert_packed(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] (or [E, N, K]) -> the same values, contiguous (our 'packed' layout is the plain one)."""
    return weight.contiguous().clone()


def packed_linear(mat1: torch.Tensor, mat2: torch.Tensor, bias: torch.Tensor | None, is_vnni: bool) -> torch.Tensor:
    """mat1 [M, K] @ mat2[N, K]^T (+ bias [N]) -> [M, N] in mat1's dtype, accumulated in float32."""
    out = mat1.float() @ mat2.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.to(mat1.dtype)


convert_weight_packed = define("convert_weight_packed(Tensor weight) -> Tensor", convert_packed)
weight_packed_linear = define(
    "weight_packed_linear(Tensor mat1, Tensor mat2, Tensor? bias, bool is_vnni) -> Tensor", packed_linear
)
