"""Older SGLang call forms of the same ops, as torch.library overloads (SGLang 0.5.17).

SGLang 0.5.23 calls the attention ops with the KV cache's ``k_scale`` / ``v_scale`` (after the cache buffers)
and, for extend, a trailing ``is_causal``; SGLang 0.5.17 calls them without these. Both call the op packet
(``torch.ops.sgl_kernel.extend_attention_cpu(...)``) positionally, and a packet with several overloads takes
the first whose schema accepts the arguments: so both releases are served with no version check. Each overload
here forwards to the 0.5.23 implementation with scale 1.0 (0.5.17's CPU KV cache is unscaled) and causal
attention unless the layer is cross-attention (what 0.5.23 passes for the same layers).
"""

from __future__ import annotations

import torch

from . import attention
from ._library import LIBRARY, _traced_impl

OVERLOAD = "sglang0517"


def _define_overload(schema: str, impl) -> None:
    """Define ``sgl_kernel::<name>.<OVERLOAD>`` from ``schema`` (written without the overload name)."""
    name, rest = schema.split("(", 1)
    qualified = f"{name}.{OVERLOAD}"
    impl = _traced_impl(qualified, impl)
    LIBRARY.define(f"{qualified}({rest}")
    LIBRARY.impl(qualified, impl, "CPU")


def decode_attention_0517(query, k_cache, v_cache, output, key, value, loc, attn_logits, req_to_token,
                          req_pool_indices, seq_lens, sm_scale, logit_cap, is_cross_attn, sliding_window_size,
                          encoder_lens, sinks) -> None:
    attention.decode_attention(query, k_cache, v_cache, 1.0, 1.0, output, key, value, loc, attn_logits,
                               req_to_token, req_pool_indices, seq_lens, sm_scale, logit_cap, is_cross_attn,
                               sliding_window_size, encoder_lens, sinks)


def extend_attention_0517(q_extend, k_extend, v_extend, o_extend, k_buffer, v_buffer, req_to_token,
                          req_pool_indices, seq_lens, extend_seq_lens, extend_start_loc, max_len_extend, sm_scale,
                          logit_cap, is_cross_attn, sliding_window_size, encoder_lens, sinks, tree_mask) -> None:
    attention.extend_attention(q_extend, k_extend, v_extend, o_extend, k_buffer, v_buffer, 1.0, 1.0, req_to_token,
                               req_pool_indices, seq_lens, extend_seq_lens, extend_start_loc, max_len_extend,
                               sm_scale, logit_cap, is_cross_attn, sliding_window_size, encoder_lens, sinks,
                               tree_mask, not is_cross_attn)


_define_overload(
    "decode_attention_cpu(Tensor query, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) output, Tensor? key, "
    "Tensor? value, Tensor loc, Tensor(d!) attn_logits, Tensor req_to_token, Tensor req_pool_indices, "
    "Tensor seq_lens, float sm_scale, float logit_cap, bool is_cross_attn, int sliding_window_size, "
    "Tensor? encoder_lens, Tensor? sinks) -> ()",
    decode_attention_0517,
)
_define_overload(
    "extend_attention_cpu(Tensor q_extend, Tensor? k_extend, Tensor? v_extend, Tensor(a!) o_extend, "
    "Tensor(b!) k_buffer, Tensor(c!) v_buffer, Tensor req_to_token, Tensor req_pool_indices, Tensor seq_lens, "
    "Tensor extend_seq_lens, Tensor extend_start_loc, int? max_len_extend, float sm_scale, float logit_cap, "
    "bool is_cross_attn, int sliding_window_size, Tensor? encoder_lens, Tensor? sinks, Tensor? tree_mask) -> ()",
    extend_attention_0517,
)

OVERLOADS = {name: getattr(getattr(torch.ops.sgl_kernel, name), OVERLOAD)
             for name in ("decode_attention_cpu", "extend_attention_cpu")}
