"""Triton kernels for the drafter's elementwise math: RMSNorm with the fused residual add, and RoPE on q and k.

The semantics are the plain-PyTorch references in `pedagle_core.model` (`rms_norm_reference`,
`apply_rope`); the tests compare these kernels against them. Each replaces a chain of about eight
(norm) or eighteen (rope on q and k) small PyTorch kernels by one launch, which is what a batch-1 drafter
step is made of: at production sizes the step is launch-bound, not bandwidth-bound, on these ops.

* `rms_norm_triton` — one program per row: x (+ residual) summed in float32, the sum stored back in the
  activation dtype as the new residual, normalised in float32, rounded, then scaled by the weight
  (rounded once more to the weight/activation promotion dtype), exactly the reference's rounding points.
* `rope_triton` — one program per (row, head) of q and k together: the rotate-half (NeoX) rotation in
  float32 with the caller's float32 cos/sin, rounded to the activation dtype.

Under ``torch.compile`` (vLLM compiles the drafter, then captures it in CUDA graphs) the kernels are the
custom ops ``pedagle::rms_norm``, ``pedagle::fused_add_rms_norm`` and ``pedagle::rope``, opaque to dynamo
and inductor (as vLLM's own fused kernels are): inductor calls them as they are instead of re-generating
their launch. Outside compilation they are launched directly (no custom-op dispatch per call).

Inference only (no backward). TRITON_INTERPRET=1 must be set before import to run them on CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def can_run(device: torch.device) -> bool:
    """Whether the kernels (as defined at import) can run on tensors of `device`."""
    return device.type == "cpu" if INTERPRETED else device.type == "cuda"


@triton.jit
def _round(x, TO_BF16: tl.constexpr):
    """float32 -> the nearest bfloat16 value (ties to even), still float32, when TO_BF16. Done with integer
    ops because Triton's interpreter truncates in float32 -> bfloat16 casts; then the final cast is exact
    on the GPU and in the interpreter alike."""
    if TO_BF16:
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        x = b.to(tl.float32, bitcast=True)
    return x


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, y_ptr, res_out_ptr, n_cols, x_stride, res_stride, eps,
                     HAS_RESIDUAL: tl.constexpr, X_BF16: tl.constexpr, OUT_BF16: tl.constexpr,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    x_raw = tl.load(x_ptr + row * x_stride + cols, mask=m, other=0.0)
    x = x_raw.to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(res_ptr + row * res_stride + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(res_out_ptr + row * n_cols + cols, _round(x, X_BF16).to(x_raw.dtype), mask=m)
    # eps in float32 whatever the launcher typed it (Triton's own launcher: fp32; inductor's: fp64, which
    # made every later value float64 and the bfloat16 rounding's 32-bit bitcast fail to compile)
    inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + tl.cast(eps, tl.float32))
    y = _round(x * inv, X_BF16).to(x_raw.dtype)                     # the reference rounds before the weight
    w = tl.load(w_ptr + cols, mask=m, other=0.0)
    out = _round(y.to(tl.float32) * w.to(tl.float32), OUT_BF16)
    tl.store(y_ptr + row * n_cols + cols, out.to(y_ptr.dtype.element_ty), mask=m)


def rms_norm_triton(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None
                    ) -> Tensor | tuple[Tensor, Tensor]:
    """norm(x), or with a residual (norm(x + residual), x + residual); x, residual: [..., H]."""
    H = x.shape[-1]
    if weight.shape != (H,):
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)}; expected ({H},)")
    x2 = x.reshape(-1, H)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    r2 = None
    if residual is not None:                     # any float dtype (autocast keeps it float32); the sum is
        if residual.shape != x.shape:            # stored back in x's dtype, as the reference does
            raise ValueError(f"rms_norm: residual {tuple(residual.shape)}; expected {tuple(x.shape)}")
        r2 = residual.reshape(-1, H)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
    rows = x2.shape[0]
    y = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    res_out = torch.empty_like(x) if residual is not None else y
    if rows:
        block = triton.next_power_of_2(H)
        _rms_norm_kernel[(rows,)](x2, r2 if r2 is not None else x2, weight, y, res_out, H, x2.stride(0),
                                  r2.stride(0) if r2 is not None else 0, float(eps),
                                  HAS_RESIDUAL=residual is not None, X_BF16=x.dtype == torch.bfloat16,
                                  OUT_BF16=y.dtype == torch.bfloat16, BLOCK=block,
                                  num_warps=min(16, max(1, block // 256)))
    return y if residual is None else (y, res_out)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr, q_row_stride, q_head_stride,
                 k_row_stride, k_head_stride, cs_stride, n_q_heads, n_k_heads,
                 BF16: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    d = tl.arange(0, BLOCK)
    m = d < HALF
    c = tl.load(cos_ptr + t * cs_stride + d, mask=m, other=0.0)
    s = tl.load(sin_ptr + t * cs_stride + d, mask=m, other=0.0)
    if h < n_q_heads:
        src = q_ptr + t * q_row_stride + h * q_head_stride
        dst = q_out_ptr + (t * n_q_heads + h) * (2 * HALF)
    else:
        src = k_ptr + t * k_row_stride + (h - n_q_heads) * k_head_stride
        dst = k_out_ptr + (t * n_k_heads + (h - n_q_heads)) * (2 * HALF)
    x1_raw = tl.load(src + d, mask=m, other=0.0)
    x1 = x1_raw.to(tl.float32)
    x2 = tl.load(src + HALF + d, mask=m, other=0.0).to(tl.float32)
    tl.store(dst + d, _round(x1 * c - x2 * s, BF16).to(x1_raw.dtype), mask=m)
    tl.store(dst + HALF + d, _round(x2 * c + x1 * s, BF16).to(x1_raw.dtype), mask=m)


def rope_triton(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """q: [T, hq, D], k: [T, hk, D]; cos/sin: [T, D/2] float32. Returns rotated (q, k), contiguous."""
    T, hq, D = q.shape
    hk = k.shape[1]
    if k.shape[0] != T or k.shape[2] != D or cos.shape != (T, D // 2) or sin.shape != cos.shape or D % 2:
        raise ValueError(f"rope: q {tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)}, sin "
                         f"{tuple(sin.shape)}; expected k [T, hk, D], cos/sin [T, D/2] with D even")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    q_out, k_out = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if T:
        half = D // 2
        _rope_kernel[(T, hq + hk)](q, k, cos, sin, q_out, k_out, q.stride(0), q.stride(1), k.stride(0),
                                   k.stride(1), cos.stride(0), hq, hk, BF16=q.dtype == torch.bfloat16, HALF=half,
                                   BLOCK=triton.next_power_of_2(half), num_warps=1)
    return q_out, k_out


# ------------------------------------------------------------------------------------ custom ops
# Opaque to torch.compile: dynamo records one node per call and inductor calls the op as it is. The fake
# (meta) implementations give the outputs' shapes and dtypes: new contiguous tensors, as the kernels return.
@torch.library.custom_op("pedagle::rms_norm", mutates_args=())
def rms_norm_op(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """norm(x) (`rms_norm_triton` without a residual)."""
    return rms_norm_triton(x, weight, eps)


@rms_norm_op.register_fake
def _(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype))


@torch.library.custom_op("pedagle::fused_add_rms_norm", mutates_args=())
def fused_add_rms_norm_op(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(norm(x + residual), x + residual) (`rms_norm_triton` with a residual)."""
    return rms_norm_triton(x, weight, eps, residual)


@fused_add_rms_norm_op.register_fake
def _(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype)), x.new_empty(x.shape)


@torch.library.custom_op("pedagle::rope", mutates_args=())
def rope_op(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """`rope_triton`."""
    return rope_triton(q, k, cos, sin)


@rope_op.register_fake
def _(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape)


class TritonOps:
    """`pedagle_core.model.ElementwiseOps` through these kernels: the custom ops while torch.compile traces,
    the launchers otherwise."""

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None
                 ) -> Tensor | tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling():
            if residual is None:
                return rms_norm_op(x, weight, float(eps))
            return fused_add_rms_norm_op(x, residual, weight, float(eps))
        return rms_norm_triton(x, weight, eps, residual)

    def rope(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling():
            return rope_op(q, k, cos, sin)
        return rope_triton(q, k, cos, sin)


TRITON_OPS = TritonOps()
