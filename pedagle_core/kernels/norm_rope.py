"""Triton kernels for the drafter's elementwise math: RMSNorm with the fused residual add, and RoPE on q and k.

The semantics are the plain-PyTorch references in `pedagle_core.model` (`rms_norm_reference`,
`apply_rope`); the tests compare these kernels against them. Each replaces a chain of about eight
(norm) or eighteen (rope on q and k) small PyTorch kernels by one launch, which is what a batch-1 drafter
step is made of: at production sizes the step is launch-bound, not bandwidth-bound, on these ops.

* `rms_norm_triton` — one program per row: x (+ residual) summed in float32, the sum stored back in the
  activation dtype as the new residual, normalised in float32, rounded, then scaled by the weight
  (rounded once more to the weight/activation promotion dtype), exactly the reference's rounding points.
* `rope_triton` — one program per row and block of heads of q and k together: the rotate-half (NeoX)
  rotation in float32 with the caller's float32 cos/sin, rounded to the activation dtype.
* `silu_mul_triton` — the MLP's ``silu(gate) * up`` in one launch instead of two (silu rounded to the
  activation dtype before the product, as the reference's two ops round).
* `embed_norm_cat_triton` — the EAGLE-3 first layer's input ``[norm(embed[ids]) ; hidden_norm(h)]`` in one
  launch instead of four (embedding gather, two norms, concatenation), each norm as `rms_norm_triton`'s.
* `rope_cos_sin_triton` — the step's RoPE table ``cos/sin(position * inv_freq) * scale`` in one launch
  instead of six (the float32 product rounded as torch rounds it; cos/sin through libdevice, the CUDA
  math library torch's own kernels use).

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
from triton.language.extra import libdevice

from . import pdl
from .jit_math import gdc_wait_and_release, rne_bf16 as _round, silu as _silu

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def can_run(device: torch.device) -> bool:
    """Whether the kernels (as defined at import) can run on tensors of `device`."""
    return device.type == "cpu" if INTERPRETED else device.type == "cuda"


@triton.jit
def _norm_row(x, x_dtype_like, w_ptr, cols, m, n_cols, eps, X_BF16: tl.constexpr, OUT_BF16: tl.constexpr):
    """One row x [BLOCK] (float32) normalised and scaled by the weight: float32 holding the values of the
    reference's output dtype (x_dtype_like: any tensor of the activation dtype)."""
    # eps in float32 whatever the launcher typed it (Triton's own launcher: fp32; inductor's: fp64, which
    # made every later value float64 and the bfloat16 rounding's 32-bit bitcast fail to compile)
    inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + tl.cast(eps, tl.float32))
    y = _round(x * inv, X_BF16).to(x_dtype_like.dtype)              # the reference rounds before the weight
    w = tl.load(w_ptr + cols, mask=m, other=0.0)
    return _round(y.to(tl.float32) * w.to(tl.float32), OUT_BF16)


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, y_ptr, res_out_ptr, n_cols, x_stride, res_stride, eps,
                     HAS_RESIDUAL: tl.constexpr, X_BF16: tl.constexpr, OUT_BF16: tl.constexpr,
                     BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    row = tl.program_id(0).to(tl.int64)
    gdc_wait_and_release(PDL)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    x_raw = tl.load(x_ptr + row * x_stride + cols, mask=m, other=0.0)
    x = x_raw.to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(res_ptr + row * res_stride + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(res_out_ptr + row * n_cols + cols, _round(x, X_BF16).to(x_raw.dtype), mask=m)
    out = _norm_row(x, x_raw, w_ptr, cols, m, n_cols, eps, X_BF16, OUT_BF16)
    tl.store(y_ptr + row * n_cols + cols, out.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _embed_norm_cat_kernel(ids_ptr, table_ptr, x_ptr, we_ptr, wx_ptr, y_ptr, n_cols, n_vocab, table_stride,
                           x_stride, eps, X_BF16: tl.constexpr, OUT_BF16: tl.constexpr, BLOCK: tl.constexpr,
                           PDL: tl.constexpr = False):
    """Program t: y[t] = [norm(table[ids[t]]) * we ; norm(x[t]) * wx] (2 * n_cols wide). An id outside
    [0, n_vocab) reads nothing (zeros): the caller validates ids."""
    row = tl.program_id(0).to(tl.int64)
    gdc_wait_and_release(PDL)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    tok = tl.load(ids_ptr + row).to(tl.int64)
    in_range = (tok >= 0) & (tok < n_vocab)
    tok = tl.where(in_range, tok, 0)
    e_raw = tl.load(table_ptr + tok * table_stride + cols, mask=cols < tl.where(in_range, n_cols, 0), other=0.0)
    e = _norm_row(e_raw.to(tl.float32), e_raw, we_ptr, cols, m, n_cols, eps, X_BF16, OUT_BF16)
    tl.store(y_ptr + row * 2 * n_cols + cols, e.to(y_ptr.dtype.element_ty), mask=m)
    x_raw = tl.load(x_ptr + row * x_stride + cols, mask=m, other=0.0)
    x = _norm_row(x_raw.to(tl.float32), x_raw, wx_ptr, cols, m, n_cols, eps, X_BF16, OUT_BF16)
    tl.store(y_ptr + row * 2 * n_cols + n_cols + cols, x.to(y_ptr.dtype.element_ty), mask=m)


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
        kw = pdl.launch_kwargs(x.device)
        _rms_norm_kernel[(rows,)](x2, r2 if r2 is not None else x2, weight, y, res_out, H, x2.stride(0),
                                  r2.stride(0) if r2 is not None else 0, float(eps),
                                  HAS_RESIDUAL=residual is not None, X_BF16=x.dtype == torch.bfloat16,
                                  OUT_BF16=y.dtype == torch.bfloat16, BLOCK=block,
                                  num_warps=min(16, max(1, block // 256)), PDL=bool(kw), **kw)
    return y if residual is None else (y, res_out)


def embed_norm_cat_triton(input_ids: Tensor, embed_weight: Tensor, x: Tensor, w_embed: Tensor, w_x: Tensor,
                          eps: float) -> Tensor:
    """The EAGLE-3 first layer's attention input in one launch: ``[norm(embed_weight[input_ids]) * w_embed ;
    norm(x) * w_x]`` -> [T, 2H] (the embedding lookup, two RMSNorms and the concatenation).
    input_ids [T] integer; embed_weight [V, H]; x [T, H]; one dtype for the activations and both weights.
    Ids on CPU tensors are checked against V; on CUDA (no host sync) an id outside [0, V) gives a zero row
    before the norm, where ``nn.Embedding`` would stop the device: ids come from the engine."""
    T, H = x.shape if x.dim() == 2 else (-1, -1)
    if (x.dim() != 2 or input_ids.shape != (T,) or embed_weight.dim() != 2 or embed_weight.shape[1] != H
            or w_embed.shape != (H,) or w_x.shape != (H,)):
        raise ValueError(f"embed_norm_cat: input_ids {tuple(input_ids.shape)}, embed_weight {tuple(embed_weight.shape)}, "
                         f"x {tuple(x.shape)}, weights {tuple(w_embed.shape)}/{tuple(w_x.shape)}; expected [T], "
                         "[V, H], [T, H], (H,)")
    if len({x.dtype, embed_weight.dtype, w_embed.dtype, w_x.dtype}) != 1:
        raise ValueError(f"embed_norm_cat: dtypes x {x.dtype}, embed_weight {embed_weight.dtype}, weights "
                         f"{w_embed.dtype}/{w_x.dtype}; expected one dtype")
    V = embed_weight.shape[0]
    if input_ids.device.type == "cpu" and T and not bool(((input_ids >= 0) & (input_ids < V)).all()):
        raise ValueError(f"embed_norm_cat: input_ids outside [0, {V}): {input_ids.tolist()}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if embed_weight.stride(-1) != 1:
        embed_weight = embed_weight.contiguous()
    y = torch.empty(T, 2 * H, dtype=x.dtype, device=x.device)
    if T:
        block = triton.next_power_of_2(H)
        kw = pdl.launch_kwargs(x.device)
        _embed_norm_cat_kernel[(T,)](input_ids.contiguous(), embed_weight, x, w_embed, w_x, y, H, V,
                                     embed_weight.stride(0), x.stride(0), float(eps),
                                     X_BF16=x.dtype == torch.bfloat16, OUT_BF16=x.dtype == torch.bfloat16,
                                     BLOCK=block, num_warps=min(16, max(1, block // 256)), PDL=bool(kw), **kw)
    return y


@triton.jit
def _rope_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr, slot_ptr, kc_ptr, vc_ptr,
                 q_row_stride, q_head_stride, k_row_stride, k_head_stride, v_row_stride, v_head_stride,
                 cs_stride, c_stride, n_q_heads, n_k_heads,
                 BF16: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr, BLOCK_H: tl.constexpr,
                 WRITE_KV: tl.constexpr = False, PDL: tl.constexpr = False):
    """Program (t, j): heads j*BLOCK_H ... of row t, q heads then k heads (then, with WRITE_KV, v heads),
    as one [BLOCK_H, HALF] tile. WRITE_KV: rotated k and v go to cache slot slot[t] (none for slot < 0)
    instead of k_out."""
    t = tl.program_id(0).to(tl.int64)
    gdc_wait_and_release(PDL)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK)
    dm = d < HALF
    c = tl.load(cos_ptr + t * cs_stride + d, mask=dm, other=0.0)[None, :]
    s = tl.load(sin_ptr + t * cs_stride + d, mask=dm, other=0.0)[None, :]
    hk = h - n_q_heads
    hv = hk - n_k_heads
    mq = (h < n_q_heads)[:, None] & dm[None, :]
    mk = ((hk >= 0) & (hk < n_k_heads))[:, None] & dm[None, :]
    q_src = q_ptr + t * q_row_stride + h[:, None].to(tl.int64) * q_head_stride + d[None, :]
    k_src = k_ptr + t * k_row_stride + hk[:, None].to(tl.int64) * k_head_stride + d[None, :]
    x1 = tl.where(mq, tl.load(q_src, mask=mq, other=0.0).to(tl.float32),
                  tl.load(k_src, mask=mk, other=0.0).to(tl.float32))
    x2 = tl.where(mq, tl.load(q_src + HALF, mask=mq, other=0.0).to(tl.float32),
                  tl.load(k_src + HALF, mask=mk, other=0.0).to(tl.float32))
    y1 = _round(x1 * c - x2 * s, BF16)
    y2 = _round(x2 * c + x1 * s, BF16)
    q_dst = q_out_ptr + (t * n_q_heads + h[:, None].to(tl.int64)) * (2 * HALF) + d[None, :]
    tl.store(q_dst, y1.to(q_out_ptr.dtype.element_ty), mask=mq)
    tl.store(q_dst + HALF, y2.to(q_out_ptr.dtype.element_ty), mask=mq)
    if WRITE_KV:
        slot = tl.load(slot_ptr + t + tl.zeros_like(h)).to(tl.int64)     # [BLOCK_H], all slot[t]
        ok = (slot >= 0)[:, None]
        mk = mk & ok
        mv = ((hv >= 0) & (hv < n_k_heads))[:, None] & dm[None, :] & ok
        k_dst = kc_ptr + slot[:, None] * c_stride + hk[:, None].to(tl.int64) * (2 * HALF) + d[None, :]
        tl.store(k_dst, y1.to(kc_ptr.dtype.element_ty), mask=mk)
        tl.store(k_dst + HALF, y2.to(kc_ptr.dtype.element_ty), mask=mk)
        v_src = v_ptr + t * v_row_stride + hv[:, None].to(tl.int64) * v_head_stride + d[None, :]
        v_dst = vc_ptr + slot[:, None] * c_stride + hv[:, None].to(tl.int64) * (2 * HALF) + d[None, :]
        tl.store(v_dst, tl.load(v_src, mask=mv, other=0.0).to(vc_ptr.dtype.element_ty), mask=mv)
        tl.store(v_dst + HALF, tl.load(v_src + HALF, mask=mv, other=0.0).to(vc_ptr.dtype.element_ty), mask=mv)
    else:
        k_dst = k_out_ptr + (t * n_k_heads + hk[:, None].to(tl.int64)) * (2 * HALF) + d[None, :]
        tl.store(k_dst, y1.to(k_out_ptr.dtype.element_ty), mask=mk)
        tl.store(k_dst + HALF, y2.to(k_out_ptr.dtype.element_ty), mask=mk)


def _launch_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, q_out: Tensor, k_out: Tensor,
                 kv: tuple | None, block_h: int | None) -> None:
    """One `_rope_kernel` launch; kv = (v, slot_mapping, k_cache, v_cache) for the cache-writing form."""
    T, hq, D = q.shape
    hk = k.shape[1]
    half = D // 2
    block = triton.next_power_of_2(half)
    heads = hq + hk * (2 if kv is not None else 1)
    bh = block_h or min(triton.next_power_of_2(heads), max(1, 2048 // block))
    kw = pdl.launch_kwargs(q.device)
    v, slots, kc, vc = kv if kv is not None else (k, cos, k_out, k_out)        # unused without WRITE_KV
    _rope_kernel[(T, triton.cdiv(heads, bh))](
        q, k, v, cos, sin, q_out, k_out, slots, kc, vc, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), cos.stride(0), kc.stride(0), hq, hk,
        BF16=q.dtype == torch.bfloat16, HALF=half, BLOCK=block, BLOCK_H=bh, WRITE_KV=kv is not None,
        num_warps=4 if bh * block >= 1024 else 1, PDL=bool(kw), **kw)


def rope_triton(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, block_h: int | None = None
                ) -> tuple[Tensor, Tensor]:
    """q: [T, hq, D], k: [T, hk, D]; cos/sin: [T, D/2] float32. Returns rotated (q, k), contiguous.
    One program per row and block of ``block_h`` heads (default: up to 2048 elements per program; one
    program per (row, head) made 8064 one-warp programs at batch 8, K=7 of the GPT-OSS head)."""
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
        _launch_rope(q, k, cos, sin, q_out, k_out, None, block_h)
    return q_out, k_out


def rope_write_kv_triton(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, slot_mapping: Tensor,
                         k_cache: Tensor, v_cache: Tensor) -> Tensor:
    """`rope_triton` on q and k, with rotated k and v written to the cache at slot_mapping [T] (slot -1:
    not written) in the same launch (`decode_attention.write_kv`'s semantics). q/k/v: [T, h, D];
    k_cache/v_cache: [N, hk, D] contiguous. Returns the rotated q [T, hq, D], contiguous."""
    T, hq, D = q.shape
    if (k.shape[0] != T or v.shape != k.shape or k.shape[2] != D or cos.shape != (T, D // 2) or sin.shape != cos.shape
            or D % 2 or slot_mapping.shape != (T,)):
        raise ValueError(f"rope_write_kv: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, cos "
                         f"{tuple(cos.shape)}, slot_mapping {tuple(slot_mapping.shape)}; expected k/v [T, hk, D], "
                         "cos/sin [T, D/2], slot_mapping [T], D even")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.shape[1:] != k.shape[1:] \
            or v_cache.shape != k_cache.shape:
        raise ValueError(f"rope_write_kv: caches {tuple(k_cache.shape)}/{tuple(v_cache.shape)}; expected "
                         f"contiguous [N, {k.shape[1]}, {D}]")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if T:
        _launch_rope(q, k, cos, sin, q_out, q_out, (v, slot_mapping, k_cache, v_cache), None)
    return q_out


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, y_ptr, n_cols, g_stride, u_stride, BF16: tl.constexpr, ACCURATE: tl.constexpr,
                     BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    row = tl.program_id(0).to(tl.int64)
    gdc_wait_and_release(PDL)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < n_cols
    g_raw = tl.load(g_ptr + row * g_stride + cols, mask=m, other=0.0)
    g = g_raw.to(tl.float32)
    u = tl.load(u_ptr + row * u_stride + cols, mask=m, other=0.0).to(tl.float32)
    s = _silu(g, BF16, ACCURATE)                                      # silu(gate) in the activation dtype
    tl.store(y_ptr + row * n_cols + cols, _round(s * u, BF16).to(g_raw.dtype), mask=m)


def silu_mul_triton(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up for gate, up [..., I] (e.g. the two halves of a fused gate/up product, strided
    rows); returns a new contiguous [..., I] in gate's dtype."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"silu_mul: gate {tuple(gate.shape)} {gate.dtype}, up {tuple(up.shape)} {up.dtype}")
    I = gate.shape[-1]
    g2, u2 = gate.reshape(-1, I), up.reshape(-1, I)
    if g2.stride(-1) != 1:
        g2 = g2.contiguous()
    if u2.stride(-1) != 1:
        u2 = u2.contiguous()
    y = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    rows = g2.shape[0]
    if rows and I:
        block = min(2048, triton.next_power_of_2(I))
        kw = pdl.launch_kwargs(gate.device)
        _silu_mul_kernel[(rows, triton.cdiv(I, block))](g2, u2, y, I, g2.stride(0), u2.stride(0),
                                                       BF16=gate.dtype == torch.bfloat16, ACCURATE=not INTERPRETED,
                                                       BLOCK=block, num_warps=4, PDL=bool(kw), **kw)
    return y


@triton.jit
def _rope_cos_sin_kernel(pos_ptr, inv_ptr, cos_ptr, sin_ptr, n_pos, scale, HALF: tl.constexpr,
                         ACCURATE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                         PDL: tl.constexpr = False):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    gdc_wait_and_release(PDL)
    d = tl.arange(0, BLOCK_D)
    t_ok = t < n_pos
    m = t_ok[:, None] & (d < HALF)[None, :]
    p = tl.load(pos_ptr + t, mask=t_ok, other=0).to(tl.float32)
    f = p[:, None] * tl.load(inv_ptr + d, mask=d < HALF, other=0.0)[None, :]
    if ACCURATE:                        # cosf/sinf of the CUDA math library, as torch's cos/sin
        c, s = libdevice.cos(f), libdevice.sin(f)
    else:
        c, s = tl.cos(f), tl.sin(f)
    sc = tl.cast(scale, tl.float32)
    off = t[:, None].to(tl.int64) * HALF + d[None, :]
    tl.store(cos_ptr + off, c * sc, mask=m)
    tl.store(sin_ptr + off, s * sc, mask=m)


def rope_cos_sin_triton(positions: Tensor, inv_freq: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """positions [T] (integer), inv_freq [D/2] float32 -> (cos, sin) [T, D/2] float32, each
    ``cos/sin(float(position) * inv_freq) * scale``."""
    if positions.dim() != 1 or inv_freq.dim() != 1:
        raise ValueError(f"rope_cos_sin: positions {tuple(positions.shape)}, inv_freq {tuple(inv_freq.shape)}")
    T, half = positions.shape[0], inv_freq.shape[0]
    inv = inv_freq.float().contiguous()
    cos = torch.empty(T, half, dtype=torch.float32, device=positions.device)
    sin = torch.empty_like(cos)
    if T and half:
        bd = triton.next_power_of_2(half)
        bt = max(1, min(64, 4096 // bd))
        kw = pdl.launch_kwargs(positions.device)
        _rope_cos_sin_kernel[(triton.cdiv(T, bt),)](positions.contiguous(), inv, cos, sin, T, float(scale),
                                                    HALF=half, ACCURATE=not INTERPRETED, BLOCK_T=bt, BLOCK_D=bd,
                                                    num_warps=4, PDL=bool(kw), **kw)
    return cos, sin


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


@torch.library.custom_op("pedagle::silu_mul", mutates_args=())
def silu_mul_op(gate: Tensor, up: Tensor) -> Tensor:
    """`silu_mul_triton`."""
    return silu_mul_triton(gate, up)


@silu_mul_op.register_fake
def _(gate: Tensor, up: Tensor) -> Tensor:
    return gate.new_empty(gate.shape)


@torch.library.custom_op("pedagle::rope_cos_sin", mutates_args=())
def rope_cos_sin_op(positions: Tensor, inv_freq: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """`rope_cos_sin_triton`."""
    return rope_cos_sin_triton(positions, inv_freq, scale)


@rope_cos_sin_op.register_fake
def _(positions: Tensor, inv_freq: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    shape = (positions.shape[0], inv_freq.shape[0])
    return positions.new_empty(shape, dtype=torch.float32), positions.new_empty(shape, dtype=torch.float32)


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

    def rope_write_kv(self, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, slot_mapping: Tensor,
                      k_cache: Tensor, v_cache: Tensor) -> Tensor:
        """`rope_write_kv_triton` (eager only: providers offer a cache to write to outside compilation)."""
        return rope_write_kv_triton(q, k, v, cos, sin, slot_mapping, k_cache, v_cache)

    def embed_norm_cat(self, input_ids: Tensor, embed_weight: Tensor, x: Tensor, w_embed: Tensor, w_x: Tensor,
                       eps: float) -> Tensor | None:
        """`embed_norm_cat_triton`; None (the caller's unfused ops) under torch.compile, for mixed dtypes,
        and once the kernel has failed."""
        if torch.compiler.is_compiling() or len({x.dtype, embed_weight.dtype, w_embed.dtype, w_x.dtype}) != 1:
            return None
        return _guarded("embed_norm_cat", embed_norm_cat_triton, lambda *a: None,
                        input_ids, embed_weight, x, w_embed, w_x, eps)

    def silu_mul(self, gate: Tensor, up: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return silu_mul_op(gate, up)
        return _guarded("silu_mul", silu_mul_triton, lambda g, u: torch.nn.functional.silu(g) * u, gate, up)

    def rope_cos_sin(self, positions: Tensor, inv_freq: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling():
            return rope_cos_sin_op(positions, inv_freq, float(scale))
        return _guarded("rope_cos_sin", rope_cos_sin_triton, _cos_sin_torch, positions, inv_freq, scale)


FAILED: dict[str, str] = {}
"""Fusions whose kernel failed to build or run on this machine (name -> error): they run as plain PyTorch
from then on, with a warning (the step still runs; reports list them)."""


def _cos_sin_torch(positions: Tensor, inv_freq: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    f = positions.float()[:, None] * inv_freq[None, :]
    return f.cos() * scale, f.sin() * scale


def _guarded(name: str, kernel, torch_fn, *args):
    """kernel(*args), or torch_fn(*args) once the kernel has failed (never while a graph is captured:
    a failure there propagates)."""
    if name in FAILED:
        return torch_fn(*args)
    try:
        return kernel(*args)
    except Exception as e:                                         # noqa: BLE001 - a build failure
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise
        import warnings

        FAILED[name] = repr(e)[:300]
        warnings.warn(f"pedagle: the {name} kernel failed ({e!r}); using PyTorch for it from now on")
        return torch_fn(*args)


TRITON_OPS = TritonOps()
