"""pedagle's CPU test kernels under the import name `sgl_kernel` (test-support; the SGLang test venv only).

SGLang 0.5.23's CPU engine imports `sgl_kernel` and calls ops registered as `torch.ops.sgl_kernel.*`; PyPI
publishes that package only as CUDA builds. This package implements, in plain PyTorch (float32, bfloat16),
the ops that engine uses for dense Llama/Qwen3 targets with EAGLE-style speculation, written from the ops'
schemas and SGLang's call sites. Any other name imported from `sgl_kernel` resolves to a callable that raises
NotImplementedError naming the op; an op SGLang looks up directly on `torch.ops.sgl_kernel` and that is not
here raises torch's AttributeError naming it.
"""

from __future__ import annotations

from . import _amx_switch, attention, kv_cache, linear, norm_act, older_schemas, runtime, speculative
from ._library import not_implemented
from .attention import decode_attention_cpu, extend_attention_cpu
from .kv_cache import assign_req_to_token_pool_cpu, copy_all_layer_kv_cache_cpu, store_cache_cpu
from .linear import convert_weight_packed, weight_packed_linear
from .norm_act import (
    apply_rotary_pos_emb_cpu,
    fused_add_rmsnorm_cpu,
    fused_qk_norm_cpu,
    rmsnorm_cpu,
    rotary_embedding_cpu,
    silu_and_mul_cpu,
)
from .runtime import init_cpu_threads_env
from .speculative import (
    assign_draft_cache_locs_contiguous_cpu,
    assign_extend_cache_locs_cpu,
    build_draft_decode_metadata_cpu,
    build_tree_kernel_efficient_cpu,
    fill_accept_out_cache_loc_cpu,
    fill_bonus_tokens_cpu,
    verify_tree_greedy_cpu,
)

__version__ = "0.0.1+pedagle.cpu"

IMPLEMENTED = (
    "decode_attention_cpu", "extend_attention_cpu",
    "assign_req_to_token_pool_cpu", "copy_all_layer_kv_cache_cpu", "store_cache_cpu",
    "convert_weight_packed", "weight_packed_linear",
    "rmsnorm_cpu", "fused_add_rmsnorm_cpu", "fused_qk_norm_cpu", "silu_and_mul_cpu", "rotary_embedding_cpu",
    "apply_rotary_pos_emb_cpu",
    "init_cpu_threads_env", "initialize",
    "assign_draft_cache_locs_contiguous_cpu", "assign_extend_cache_locs_cpu", "build_draft_decode_metadata_cpu",
    "build_tree_kernel_efficient_cpu", "fill_accept_out_cache_loc_cpu", "fill_bonus_tokens_cpu",
    "verify_tree_greedy_cpu",
)  # fmt: skip


if _amx_switch.forced() is False:               # PEDAGLE_SGLANG_CPU_AMX=0: see _amx_switch
    IMPLEMENTED = tuple(n for n in IMPLEMENTED if n != "convert_weight_packed")
_amx_switch.apply()                             # SGLang's AMX probe, where SGLang imports this package


def __getattr__(name: str):
    """Every other public name: a callable raising NotImplementedError("... not implemented ...: <name>")."""
    if name.startswith("__"):
        raise AttributeError(name)
    return not_implemented(name)
