"""The EAGLE-3 / P-EAGLE drafter: all of its math in one file.

    aux hidden states of the target [T, n_aux*Ht] --(input_norm | fc_norm)--> fc --> h [T, H]
    layer 0:   e = input_layernorm(embed(ids));  h' = hidden_norm(h)
               x = attn([e ; h'])  (q/k/v take 2H)       residual = h (or h' if norm_before_residual)
               x, residual = post_attention_layernorm(x, residual); x = mlp(x)
    layer i>0: x, residual = input_layernorm(x, residual); x = attn(x); ...; x = mlp(x)
    out, prenorm = norm(x, residual)      logits = lm_head(out[sample rows]) over the draft vocab
    target id = draft id + d2t[draft id]

P-EAGLE mask slots use the embedding of ``mask_token_id`` and ``fc(mask_hidden)``.
Weight names follow transformers' Llama naming (``layers.{i}.self_attn.q_proj.weight`` ...), which is
also the canonical on-disk naming (see ``formats``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionProvider
from .config import DrafterConfig


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None
                       ) -> Tensor | tuple[Tensor, Tensor]:
    """norm(x), or with a residual: (norm(x + residual), x + residual). The plain-PyTorch semantics."""
    dtype = x.dtype
    xf = x.float()
    if residual is not None:                          # add in float32, as vLLM's fused add-norm does
        xf = xf + residual.float()
        residual = xf.to(dtype)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = weight * y.to(dtype)
    return y if residual is None else (y, residual)


def silu_mul_reference(gate: Tensor, up: Tensor) -> Tensor:
    """The MLP's activation: silu(gate) * up (two ops, each rounded to the activation dtype)."""
    return F.silu(gate) * up


def rope_cos_sin_reference(positions: Tensor, inv_freq: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """positions [T] -> (cos, sin) [T, D/2] float32 of ``float(position) * inv_freq``, times ``scale``."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    return freqs.cos() * scale, freqs.sin() * scale


class ElementwiseOps(Protocol):
    """Implementations of the drafter's elementwise math (RMSNorm with residual add, RoPE on q and k).
    Optional further methods, used where present (else the references above): ``silu_mul(gate, up)``
    and ``rope_cos_sin(positions, inv_freq, scale)``."""

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None
                 ) -> Tensor | tuple[Tensor, Tensor]: ...

    def rope(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]: ...


# Optional further ops method, used with a provider that offers its cache (``kv_cache_slots``, see
# `pedagle_core.attention.CacheAttention`): ``rope_write_kv(q, k, v, cos, sin, slot_mapping, k_cache,
# v_cache) -> q rotated``, RoPE on q and k with rotated k and v written to the cache (slot -1: nothing).
# And ``embed_norm_cat(input_ids, embed_weight, x, w_embed, w_x, eps) -> [T, 2H] or None`` (None: not
# here, use the unfused ops): layer 0's ``[norm(embed_weight[input_ids]) * w_embed ; norm(x) * w_x]``.


class TorchOps:
    """This file's plain-PyTorch math (the reference)."""

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None
                 ) -> Tensor | tuple[Tensor, Tensor]:
        return rms_norm_reference(x, weight, eps, residual)

    def rope(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def silu_mul(self, gate: Tensor, up: Tensor) -> Tensor:
        return silu_mul_reference(gate, up)

    def rope_cos_sin(self, positions: Tensor, inv_freq: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        return rope_cos_sin_reference(positions, inv_freq, scale)


TORCH_OPS = TorchOps()


def _kernel_inference(x: Tensor, weight: Tensor | None) -> bool:
    """CUDA tensors that autograd does not track: where the Triton kernels (no backward) may run."""
    return x.is_cuda and not (torch.is_grad_enabled()
                              and (x.requires_grad or (weight is not None and weight.requires_grad)))


def auto_ops(x: Tensor, weight: Tensor | None = None) -> ElementwiseOps:
    """The Triton kernels (`kernels/norm_rope.py`) for CUDA inference, else the PyTorch reference:
    the kernels have no backward, so anything autograd tracks stays on the reference."""
    if not _kernel_inference(x, weight):
        return TORCH_OPS
    try:
        from .kernels import norm_rope
    except ImportError:                                # no triton
        return TORCH_OPS
    return norm_rope.TRITON_OPS if norm_rope.can_run(x.device) else TORCH_OPS


class RMSNorm(nn.Module):
    ops: ElementwiseOps | None = None                 # set by `Drafter.use_ops`; None: `auto_ops`

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """norm(x), or with a residual: (norm(x + residual), x + residual)."""
        ops = self.ops or auto_ops(x, self.weight)
        return ops.rms_norm(x, self.weight, self.eps, residual)


# ---------------------------------------------------------------------------------------- RoPE
def rope_inv_freq(cfg: DrafterConfig) -> tuple[Tensor, float]:
    """Inverse frequencies [head_dim/2] and the attention scaling of cos/sin for ``cfg.rope_parameters``."""
    p = cfg.rope_parameters
    d = int(cfg.head_dim)
    base = float(p.get("rope_theta", 10000.0))
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d))
    kind = p.get("rope_type", "default")
    scale = 1.0
    if kind == "linear":
        inv = inv / float(p["factor"])
    elif kind == "llama3":
        factor, lo, hi = float(p["factor"]), float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
        old = float(p["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        lo_wl, hi_wl = old / lo, old / hi
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > lo_wl, inv / factor, inv)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen <= lo_wl) & (wavelen >= hi_wl)
        inv = torch.where(is_mid, mid, scaled)
    elif kind == "yarn":
        factor = float(p["factor"])
        old = float(p.get("original_max_position_embeddings", cfg.max_position_embeddings))
        beta_fast, beta_slow = float(p.get("beta_fast", 32.0)), float(p.get("beta_slow", 1.0))
        mscale = p.get("attention_factor")
        scale = float(mscale) if mscale is not None else (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

        def corr_dim(n_rot: float) -> float:
            return (d * math.log(old / (n_rot * 2 * math.pi))) / (2 * math.log(base))

        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if p.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float64, device="cpu") - low) / (high - low)).clamp(0, 1)
        extrapolation = 1 - ramp
        inv = (inv / factor) * (1 - extrapolation) + inv * extrapolation
    return inv.float(), scale


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [T, h, D]; cos/sin: [T, D/2]. Rotate-half (NeoX) convention, as transformers' Llama."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


# ---------------------------------------------------------------------------------------- layers
Linear = Callable[[Tensor], Tensor]
"""A linear layer as a function of its input (see `Drafter.fuse_projections`)."""


def torch_linear(weight: Tensor, bias: Tensor | None) -> Linear:
    """x -> x @ weight.T + bias with ``torch.nn.functional.linear``."""
    return partial(F.linear, weight=weight, bias=bias)


LinearFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
"""A product ``(x, weight, bias) -> x @ weight.T + bias`` (see `Drafter.use_linear`)."""


def auto_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias: for CUDA inference the weight-streaming kernels (`kernels/skinny_gemm.py`) at
    the row counts and shapes where they were measured faster than cuBLAS on this device, else
    ``F.linear`` (always under autograd: the kernels have no backward)."""
    if not _kernel_inference(x, weight):
        return F.linear(x, weight, bias)
    try:
        from .kernels import skinny_gemm
    except ImportError:                                # no triton
        return F.linear(x, weight, bias)
    return skinny_gemm.linear(x, weight, bias) if skinny_gemm.can_run(x.device) else F.linear(x, weight, bias)


def auto_silu_gate_up(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor | None:
    """The MLP activation ``silu(x @ gate.T) * (x @ up.T)`` [T, I] from a fused gate/up weight [2I, H] (gate
    rows, then up rows), where the kernels run (CUDA inference outside torch.compile):
    `kernels/skinny_gemm.silu_gate_up`, the activation in the product's epilogue where that was measured
    faster. None elsewhere (the caller runs the product and the activation itself)."""
    if not _kernel_inference(x, weight) or torch.compiler.is_compiling():
        return None
    try:
        from .kernels import skinny_gemm
    except ImportError:                                # no triton
        return None
    return skinny_gemm.silu_gate_up(x, weight, bias) if skinny_gemm.can_run(x.device) else None


def dispatch_linear(weight: Tensor, bias: Tensor | None) -> Linear:
    """x -> `auto_linear` (x, weight, bias): the default of `Drafter.fuse_projections`."""
    return partial(auto_linear, weight=weight, bias=bias)


def apply_linear(fn: LinearFn | None, m: nn.Module, x: Tensor) -> Tensor:
    """``m(x)`` for a plain ``nn.Linear`` through ``fn`` (None: `auto_linear`); a backend's own linear
    module (another type) runs its own forward."""
    if type(m) is not nn.Linear:
        return m(x)
    return (auto_linear if fn is None else fn)(x, m.weight, m.bias)


class Attention(nn.Module):
    ops: ElementwiseOps | None = None                 # set by `Drafter.use_ops`; None: `auto_ops`
    linear: LinearFn | None = None                    # set by `Drafter.use_linear`; None: `auto_linear`

    def __init__(self, cfg: DrafterConfig, layer_idx: int, in_features: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, int(cfg.head_dim)
        b = cfg.attention_bias
        self.q_proj = nn.Linear(in_features, self.n_heads * self.head_dim, bias=b)
        self.k_proj = nn.Linear(in_features, self.n_kv * self.head_dim, bias=b)
        self.v_proj = nn.Linear(in_features, self.n_kv * self.head_dim, bias=b)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=b)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.window = cfg.layer_window(layer_idx)
        self.qkv_proj: Linear | None = None           # q, k and v in one product: `Drafter.fuse_projections`

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn: AttentionProvider) -> Tensor:
        T = x.shape[0]                                                     # x: [T, in_features]
        if self.qkv_proj is None:
            q, k, v = (apply_linear(self.linear, m, x) for m in (self.q_proj, self.k_proj, self.v_proj))
        else:
            q, k, v = self.qkv_proj(x).split([self.n_heads * self.head_dim, self.n_kv * self.head_dim,
                                              self.n_kv * self.head_dim], dim=-1)
        q = q.view(T, self.n_heads, self.head_dim)
        k = k.view(T, self.n_kv, self.head_dim)
        v = v.view(T, self.n_kv, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        ops = self.ops or auto_ops(q, self.q_proj.weight)
        write = getattr(ops, "rope_write_kv", None)          # optional: RoPE and the cache write in one launch
        slots = getattr(attn, "kv_cache_slots", None)        # optional: the provider's cache, written by us
        target = slots(self.layer_idx) if write is not None and slots is not None else None
        if target is not None:
            o = attn.attend_written(self.layer_idx, write(q, k, v, cos, sin, *target), self.window)
        else:
            q, k = ops.rope(q, k, cos, sin)
            o = attn(self.layer_idx, q, k, v, self.window)                  # [T, n_heads, head_dim]
        return apply_linear(self.linear, self.o_proj, o.reshape(T, -1))


class MLP(nn.Module):
    ops: ElementwiseOps | None = None                 # set by `Drafter.use_ops`; None: `auto_ops`
    linear: LinearFn | None = None                    # set by `Drafter.use_linear`; None: `auto_linear`

    def __init__(self, cfg: DrafterConfig) -> None:
        super().__init__()
        H, I, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj, self.up_proj = nn.Linear(H, I, bias=b), nn.Linear(H, I, bias=b)
        self.down_proj = nn.Linear(I, H, bias=b)
        self.gate_up_proj: Linear | None = None       # gate and up in one product: `Drafter.fuse_projections`
        # (weight [2I, H], bias) of that product when it is the default dispatch: the activation may then
        # run in the product's epilogue (`auto_silu_gate_up`)
        self.gate_up_weight: tuple[Tensor, Tensor | None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is None:
            gate, up = apply_linear(self.linear, self.gate_proj, x), apply_linear(self.linear, self.up_proj, x)
        else:
            if self.gate_up_weight is not None and self.linear is None and self.ops is None:
                act = auto_silu_gate_up(x, *self.gate_up_weight)      # product + activation in one launch
                if act is not None:
                    return apply_linear(self.linear, self.down_proj, act)
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        fn = getattr(self.ops or auto_ops(gate, self.down_proj.weight), "silu_mul", None)
        # `is None`, not truthiness: torch 2.11's dynamo cannot branch on a bound method (graph break)
        return apply_linear(self.linear, self.down_proj,
                            silu_mul_reference(gate, up) if fn is None else fn(gate, up))


class DecoderLayer(nn.Module):
    """A Llama decoder layer; layer 0 is the fused EAGLE-3 layer with 2H attention input."""

    def __init__(self, cfg: DrafterConfig, layer_idx: int) -> None:
        super().__init__()
        H, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.is_first = layer_idx == 0
        self.norm_before_residual = cfg.norm_before_residual
        self.self_attn = Attention(cfg, layer_idx, 2 * H if self.is_first else H)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(H, eps)
        self.post_attention_layernorm = RMSNorm(H, eps)
        if self.is_first:
            self.hidden_norm = RMSNorm(H, eps)

    def _first_input(self, embed: nn.Embedding, input_ids: Tensor, input_embeds: Tensor | None,
                     hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Layer 0's attention input ``[input_layernorm(embeds) ; hidden_norm(h)]`` [T, 2H] (embeds first)
        and its residual [T, H]. With ops offering ``embed_norm_cat`` (the Triton ops) the lookup, both
        norms and the concatenation are one launch. Called from `forward` (module hooks, e.g. FSDP's
        parameter gathering, run around the call)."""
        ops = self.input_layernorm.ops or auto_ops(hidden, self.input_layernorm.weight)
        fn = getattr(ops, "embed_norm_cat", None)
        if fn is not None and input_embeds is None and not self.norm_before_residual:
            x = hidden.to(embed.weight.dtype)
            both = fn(input_ids, embed.weight, x, self.input_layernorm.weight, self.hidden_norm.weight,
                      self.input_layernorm.eps)
            if both is not None:
                return both, x
        embeds = embed(input_ids) if input_embeds is None else input_embeds
        e = self.input_layernorm(embeds)                                    # [T, H]
        x = hidden.to(embeds.dtype)
        if self.norm_before_residual:
            x = self.hidden_norm(x)
            residual = x
        else:
            residual = x
            x = self.hidden_norm(x)
        return torch.cat([e, x], dim=-1), residual

    def forward(self, x: Tensor, residual: Tensor | None, cos: Tensor, sin: Tensor, attn: AttentionProvider,
                embed: nn.Embedding | None = None, input_ids: Tensor | None = None,
                input_embeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Layer 0: x is the drafter hidden [T, H], with the token embedding and ``input_ids`` (or
        ``input_embeds``); later layers: the previous layer's output and residual."""
        if self.is_first:
            if embed is None or (input_ids is None and input_embeds is None):
                raise ValueError("layer 0 needs the token embedding and input_ids (or input_embeds)")
            x, residual = self._first_input(embed, input_ids, input_embeds, x)
            x = self.self_attn(x, cos, sin, attn)
        else:
            x, residual = self.input_layernorm(x, residual)
            x = self.self_attn(x, cos, sin, attn)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


# ---------------------------------------------------------------------------------------- drafter
class Drafter(nn.Module):
    """An EAGLE-3 drafter with the P-EAGLE extras (``mask_hidden``, ``mask_token_id``)."""

    linear: LinearFn | None = None                    # set by `use_linear`; None: `auto_linear` (fc, lm_head)
    ops: ElementwiseOps | None = None                 # set by `use_ops`; None: `auto_ops` (the RoPE table)

    def __init__(self, cfg: DrafterConfig) -> None:
        super().__init__()
        self.config = cfg
        H, Ht = cfg.hidden_size, int(cfg.target_hidden_size)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, H)
        if cfg.norm_before_fc:
            self.input_norm = RMSNorm(cfg.fc_input_size, cfg.rms_norm_eps)
        if cfg.fc_norm:
            self.fc_norm = nn.ModuleList(RMSNorm(Ht, cfg.rms_norm_eps) for _ in range(cfg.n_aux))
        self.fc = nn.Linear(cfg.fc_input_size, H, bias=False)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(H, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(H, int(cfg.draft_vocab_size), bias=False)
        self.mask_hidden = nn.Parameter(torch.zeros(1, 1, cfg.fc_input_size))     # pre-fc, [1, 1, n_aux*Ht]
        self.register_buffer("d2t", torch.zeros(int(cfg.draft_vocab_size), dtype=torch.int64))
        inv_freq, self.rope_scale = rope_inv_freq(cfg)                            # float32, on the CPU
        self.register_buffer("inv_freq", inv_freq.to(self.fc.weight.device), persistent=False)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        """Keep the RoPE frequencies in float32 whatever dtype the module is cast to."""
        super()._apply(fn, recurse)
        self.inv_freq = rope_inv_freq(self.config)[0].to(self.inv_freq.device)
        return self

    # ------------------------------------------------------------------ inputs
    def project_hidden(self, aux: Tensor) -> Tensor:
        """Target aux hidden states [..., n_aux*Ht] -> drafter hidden [..., H]."""
        if self.config.norm_before_fc:
            aux = self.input_norm(aux)
        elif self.config.fc_norm:
            chunks = aux.chunk(self.config.n_aux, dim=-1)
            aux = torch.cat([n(c) for n, c in zip(self.fc_norm, chunks)], dim=-1)
        return apply_linear(self.linear, self.fc, aux)

    def mask_hidden_projected(self) -> Tensor:
        """fc(mask_hidden): the hidden input of every MASK slot, [H]. Outside autograd it is cached until a
        weight it reads changes: it depends on weights only, and recomputing it reads all of ``fc`` (a
        weight-sized GEMV, n_aux*Ht x H) every step. Weight changes are seen through the tensors' version
        counters (in-place ops under ``torch.no_grad()``, ``load_state_dict``, optimiser steps, ``.to``);
        writes through ``param.data`` bypass them."""
        if torch.is_grad_enabled() and self.mask_hidden.requires_grad:
            return self.project_hidden(self.mask_hidden.view(1, -1)).view(-1)
        params = [self.mask_hidden, self.fc.weight]                   # what project_hidden reads
        if self.config.norm_before_fc:
            params.append(self.input_norm.weight)
        elif self.config.fc_norm:
            params += [n.weight for n in self.fc_norm]
        try:
            key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        except RuntimeError:                     # inference tensors keep no version counter: do not cache
            return self.project_hidden(self.mask_hidden.view(1, -1)).view(-1)
        cached = self.__dict__.get("_mask_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.project_hidden(self.mask_hidden.view(1, -1)).view(-1).detach())
            self.__dict__["_mask_cache"] = cached
        return cached[1]

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions [T] -> (cos, sin) [T, D/2] float32 (one launch with the Triton ops)."""
        fn = getattr(self.ops or auto_ops(positions), "rope_cos_sin", None)
        return (rope_cos_sin_reference if fn is None else fn)(positions, self.inv_freq, self.rope_scale)

    @torch.no_grad()
    def fuse_projections(self, linear: Callable[[Tensor, Tensor | None], Linear] = dispatch_linear) -> None:
        """For inference: compute every layer's q/k/v, and its MLP's gate/up, with one product each over
        weights concatenated now: the same dot products, in fewer GEMM calls. ``linear(weight, bias)`` builds
        each product (e.g. a backend's GEMM) as a function, not an ``nn.Module`` (the fused weights stay out
        of the state dict; the default, `dispatch_linear`, is `auto_linear`: the skinny-GEMM kernels where
        they win on CUDA). They are copies that do not follow the parameters: call this once the weights
        are loaded and placed, and not before training."""
        def cat(*layers: nn.Linear) -> tuple[Tensor, Tensor | None]:
            w = torch.cat([m.weight for m in layers])
            return w, (torch.cat([m.bias for m in layers]) if layers[0].bias is not None else None)

        def fused(w: Tensor, b: Tensor | None) -> Linear:
            fn = linear(w, b)
            if isinstance(fn, nn.Module):
                raise TypeError("fuse_projections: linear() returned an nn.Module; expected a function")
            return fn

        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            a.qkv_proj = fused(*cat(a.q_proj, a.k_proj, a.v_proj))
            gu = cat(m.gate_proj, m.up_proj)
            m.gate_up_proj = fused(*gu)
            m.gate_up_weight = gu if linear is dispatch_linear else None

    def use_linear(self, linear: LinearFn | None) -> None:
        """Run every unfused ``nn.Linear`` product (q/k/v, o, gate/up, down, fc, lm_head) through ``linear``
        (e.g. ``F.linear`` to force cuBLAS); None restores `auto_linear`. Products fused by
        `fuse_projections` keep the function they were built with."""
        for m in self.modules():
            if isinstance(m, (Attention, MLP, Drafter)):
                m.linear = linear

    def unfuse_projections(self) -> None:
        """Undo `fuse_projections`: q/k/v and gate/up from their own weights again."""
        for layer in self.layers:
            layer.self_attn.qkv_proj = None
            layer.mlp.gate_up_proj = layer.mlp.gate_up_weight = None

    def use_ops(self, ops: ElementwiseOps | None) -> None:
        """Run every RMSNorm, RoPE, the RoPE table and the MLP activation through ``ops`` (a backend's fused
        ops, or ``TORCH_OPS`` to force the reference); None restores the automatic choice (`auto_ops`:
        Triton for CUDA inference)."""
        for m in self.modules():
            if isinstance(m, (RMSNorm, Attention, MLP, Drafter)):
                m.ops = ops

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: Tensor, positions: Tensor, hidden: Tensor, attn: AttentionProvider,
                input_embeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """input_ids/positions: [T]; hidden: [T, H] (already projected by ``project_hidden``, or a
        drafter hidden fed back by autoregressive drafting). Returns (out [T, H], fed-back hidden [T, H])."""
        cos, sin = self.rope(positions)
        x, residual = hidden, None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin, attn, self.embed_tokens, input_ids, input_embeds)
        out, prenorm = self.norm(x, residual)
        return out, (out if self.config.norm_output else prenorm)

    # ------------------------------------------------------------------ readout
    def compute_logits(self, out: Tensor) -> Tensor:
        """[N, H] -> [N, draft_vocab] logits (draft-vocabulary order)."""
        return apply_linear(self.linear, self.lm_head, out)

    def to_target_ids(self, draft_ids: Tensor) -> Tensor:
        """Draft-vocabulary ids -> target-vocabulary ids (``d2t`` holds offsets)."""
        return draft_ids + self.d2t[draft_ids]
