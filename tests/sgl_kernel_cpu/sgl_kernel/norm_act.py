"""RMSNorm, fused add + RMSNorm, SiLU-and-mul and rotary embedding (SGLang's AMX-path CPU ops), plain PyTorch."""

from __future__ import annotations

import torch

from ._library import define


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [..., H] any float dtype; computed in float32, returned in x's dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.float()).to(x.dtype)


def rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = x / rms(x) * weight; input [T, H] -> [T, H]."""
    return _rms(input, weight, eps)


def fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """In place: residual += input; input = rmsnorm(residual) (the pre-norm block's add + norm)."""
    summed = input.float() + residual.float()
    residual.copy_(summed.to(residual.dtype))
    input.copy_(_rms(summed, weight, eps).to(input.dtype))


def fused_qk_norm(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float) -> None:
    """In place: per-head RMSNorm of q [T, Hq * D] and k [T, Hk * D] (rows may be strided views into a fused qkv
    tensor; each head's D values contiguous) with weights [D] (Qwen3's q_norm / k_norm)."""
    for x, w in ((q, q_weight), (k, k_weight)):
        heads = x.view(x.shape[0], -1, w.shape[-1])
        heads.copy_(_rms(heads, w, eps))


def silu_and_mul(input: torch.Tensor) -> torch.Tensor:
    """[..., 2D] -> [..., D]: silu(first half) * second half."""
    d = input.shape[-1] // 2
    gate, up = input[..., :d].float(), input[..., d:].float()
    return (torch.nn.functional.silu(gate) * up).to(input.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    # x: [T, heads, rot_dim] float32; cos/sin: [T, 1, rot_dim / 2]
    if is_neox:  # halves: (x1, x2) = (x[:d/2], x[d/2:])
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # GPT-J style: interleaved pairs
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on query [T, Hq*D] or [T, Hq, D] and key (same layout) at `positions` [T].

    cos_sin_cache: [max_pos, rot_dim] = [cos | sin], rot_dim <= head_size (the rest of a head passes through).
    Returns new (query, key) with the input shapes.
    """
    rot_dim = cos_sin_cache.shape[-1]
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)  # [T, rot_dim / 2] each
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        heads = x.view(x.shape[0], -1, head_size).float()
        rotated = _rotate(heads[..., :rot_dim], cos, sin, is_neox)
        return torch.cat([rotated, heads[..., rot_dim:]], dim=-1).to(x.dtype).view(x.shape)

    return apply(query), apply(key)


def apply_rotary_pos_emb(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE with per-token cos / sin given (Hugging Face's ``apply_rotary_pos_emb``, neox halves): query [T, Hq, D],
    key [T, Hk, D], cos / sin [T, D] (each frequency twice: [f | f]). x * cos + rotate_half(x) * sin in float32;
    returns new (query, key) in their dtypes."""
    c, s = cos.float().unsqueeze(1), sin.float().unsqueeze(1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        return (xf * c + torch.cat([-x2, x1], dim=-1) * s).to(x.dtype)

    return apply(query), apply(key)


rmsnorm_cpu = define("rmsnorm_cpu(Tensor input, Tensor weight, float eps) -> Tensor", rmsnorm)
fused_add_rmsnorm_cpu = define(
    "fused_add_rmsnorm_cpu(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps) -> ()", fused_add_rmsnorm
)
fused_qk_norm_cpu = define(
    "fused_qk_norm_cpu(Tensor(a!) q, Tensor(b!) k, Tensor q_weight, Tensor k_weight, float eps) -> ()", fused_qk_norm
)
silu_and_mul_cpu = define("silu_and_mul_cpu(Tensor input) -> Tensor", silu_and_mul)
rotary_embedding_cpu = define(
    "rotary_embedding_cpu(Tensor positions, Tensor query, Tensor key, int head_size, Tensor cos_sin_cache, "
    "bool is_neox) -> (Tensor, Tensor)",
    rotary_embedding,
)
apply_rotary_pos_emb_cpu = define(
    "apply_rotary_pos_emb_cpu(Tensor query, Tensor key, Tensor cos, Tensor sin) -> (Tensor, Tensor)",
    apply_rotary_pos_emb,
)
