"""Elementwise math shared by several kernels: Triton JIT functions, inlined where they are called.

* `rne_bf16` — float32 -> the nearest bfloat16 value (ties to even), still float32.
* `silu` — ``silu(g)`` in float32 as torch computes it (expf and an IEEE division), rounded to bfloat16
  when asked: the MLP activation of `norm_rope.silu_mul_triton` and of the gate/up epilogue of
  `skinny_gemm.silu_gate_up` (one definition, so the two paths round alike).
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def rne_bf16(x, TO_BF16: tl.constexpr):
    """float32 -> the nearest bfloat16 value (ties to even), still float32, when TO_BF16. Done with integer
    ops because Triton's interpreter truncates in float32 -> bfloat16 casts; then the final cast is exact
    on the GPU and in the interpreter alike."""
    if TO_BF16:
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        x = b.to(tl.float32, bitcast=True)
    return x


@triton.jit
def silu(g, BF16: tl.constexpr, ACCURATE: tl.constexpr):
    """silu(g) for float32 g, rounded to bfloat16 when BF16 (as torch's silu in the activation dtype).
    ACCURATE: expf of the CUDA math library (torch's); else tl.exp (the interpreter's numpy float32)."""
    if ACCURATE:
        s = tl.math.div_rn(g, 1.0 + libdevice.exp(-g))
    else:
        s = tl.math.div_rn(g, 1.0 + tl.exp(-g))
    return rne_bf16(s, BF16)


@triton.jit
def gdc_wait_and_release(PDL: tl.constexpr):
    """With PDL (`pdl.py`): wait until the previous kernel finished and its writes are visible, then let
    the next kernel launch. A no-op without."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
