"""Decode and extend attention over SGLang's token-level KV pool (`req_to_token` rows of slot ids), plain PyTorch.

Pool layout: k_buffer / v_buffer [num_slots, Hkv, D]; req_to_token [num_reqs, pool_len] holds, for request
row r, the KV slot of each token position. A request's context is req_to_token[r, :seq_len]. Queries attend
causally (position p of the context sees positions <= p) with grouped-query heads (Hq = g * Hkv).
"""

from __future__ import annotations

import torch

from ._library import define


def _unsupported(what: str, op: str) -> None:
    raise NotImplementedError(f"{what} is not implemented in pedagle's CPU test kernels: {op}")


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_positions: torch.Tensor,
    sm_scale: float,
    logit_cap: float,
    window: int,
    sink: torch.Tensor | None,
    causal: bool = True,
) -> torch.Tensor:
    """One request. q [Tq, Hq, D] at context positions q_positions [Tq]; k, v [Tk, Hkv, Dv] at positions 0..Tk-1.

    window > 0: a query at p sees keys at p - window < pos <= p. sink [Hq]: an extra logit per head that joins
    the softmax's denominator and contributes no value. Returns [Tq, Hq, Dv] float32.
    """
    hq, hkv = q.shape[1], k.shape[1]
    kf = k.float().repeat_interleave(hq // hkv, dim=1)  # [Tk, Hq, D]
    vf = v.float().repeat_interleave(hq // hkv, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), kf) * sm_scale  # [Hq, Tq, Tk]
    if logit_cap > 0:
        scores = logit_cap * torch.tanh(scores / logit_cap)
    k_pos = torch.arange(k.shape[0])
    visible = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool)
    if causal:
        visible &= k_pos[None, :] <= q_positions[:, None]
    if window > 0:
        visible &= k_pos[None, :] > q_positions[:, None] - window
    scores = scores.masked_fill(~visible, float("-inf"))
    if sink is not None:
        sink_col = sink.float().view(hq, 1, 1).expand(hq, q.shape[0], 1)
        probs = torch.softmax(torch.cat([scores, sink_col], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, vf)


def _check_plain_cache(k_buffer: torch.Tensor, k_scale: float, v_scale: float, op: str) -> None:
    if k_buffer.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        _unsupported(f"KV cache dtype {k_buffer.dtype}", op)
    if k_scale not in (1.0,) or v_scale not in (1.0,):
        _unsupported(f"KV scales ({k_scale}, {v_scale})", op)


def decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: float,
    v_scale: float,
    output: torch.Tensor,
    key: torch.Tensor | None,
    value: torch.Tensor | None,
    loc: torch.Tensor,
    attn_logits: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float,
    logit_cap: float,
    is_cross_attn: bool,
    sliding_window_size: int,
    encoder_lens: torch.Tensor | None,
    sinks: torch.Tensor | None,
) -> None:
    """One new token per request. query [B, Hq, D]; output [B, Hq, Dv] written in place.

    key/value [B, Hkv(*D)] (or None: already in the cache) are first stored at slots `loc` [B]; then request b
    attends to the slots req_to_token[req_pool_indices[b], :seq_lens[b]] (its own token included).
    attn_logits is the C++ kernel's split-K scratch buffer; unused here.
    """
    op = "decode_attention_cpu"
    if is_cross_attn:
        _unsupported("cross-attention", op)
    _check_plain_cache(k_cache, k_scale, v_scale, op)
    if key is not None and value is not None:
        k_cache[loc.long()] = key.reshape(-1, *k_cache.shape[1:]).to(k_cache.dtype)
        v_cache[loc.long()] = value.reshape(-1, *v_cache.shape[1:]).to(v_cache.dtype)
    for b in range(query.shape[0]):
        n = int(seq_lens[b])
        slots = req_to_token[int(req_pool_indices[b]), :n].long()
        out = attend(query[b : b + 1], k_cache[slots], v_cache[slots], torch.tensor([n - 1]), sm_scale, logit_cap,
                     sliding_window_size, sinks)
        output[b] = out[0].to(output.dtype)


def extend_attention(
    q_extend: torch.Tensor,
    k_extend: torch.Tensor | None,
    v_extend: torch.Tensor | None,
    o_extend: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    k_scale: float,
    v_scale: float,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_seq_lens: torch.Tensor,
    extend_start_loc: torch.Tensor,
    max_len_extend: int | None,
    sm_scale: float,
    logit_cap: float,
    is_cross_attn: bool,
    sliding_window_size: int,
    encoder_lens: torch.Tensor | None,
    sinks: torch.Tensor | None,
    tree_mask: torch.Tensor | None,
    is_causal: bool,
) -> None:
    """Several new tokens per request (prefill, chunked prefill, verify, draft-extend).

    Request b has seq_lens[b] tokens in all, of which the last extend_seq_lens[b] are new; their queries are
    rows extend_start_loc[b] + (0..n-1) of q_extend [N, Hq, D]. The prefix comes from the pool through
    req_to_token; the new tokens' K/V from k_extend / v_extend [N, Hkv, D] (or the pool when None).
    Output rows of o_extend [N, Hq, Dv] are written in place.
    """
    op = "extend_attention_cpu"
    if is_cross_attn:
        _unsupported("cross-attention", op)
    if tree_mask is not None:
        _unsupported("a tree mask (EAGLE topk > 1)", op)
    _check_plain_cache(k_buffer, k_scale, v_scale, op)
    for b in range(seq_lens.shape[0]):
        total, new, start = int(seq_lens[b]), int(extend_seq_lens[b]), int(extend_start_loc[b])
        if new == 0:
            continue
        prefix = total - new
        slots = req_to_token[int(req_pool_indices[b]), :total].long()
        k_ctx, v_ctx = k_buffer[slots], v_buffer[slots]
        if k_extend is not None and v_extend is not None:
            k_ctx = torch.cat([k_ctx[:prefix], k_extend[start : start + new].view(new, *k_buffer.shape[1:]).to(k_ctx.dtype)])
            v_ctx = torch.cat([v_ctx[:prefix], v_extend[start : start + new].view(new, *v_buffer.shape[1:]).to(v_ctx.dtype)])
        q_pos = torch.arange(prefix, total)
        out = attend(q_extend[start : start + new], k_ctx, v_ctx, q_pos, sm_scale, logit_cap, sliding_window_size,
                     sinks, causal=is_causal)
        o_extend[start : start + new] = out.to(o_extend.dtype)


decode_attention_cpu = define(
    "decode_attention_cpu(Tensor query, Tensor(a!) k_cache, Tensor(b!) v_cache, float k_scale, float v_scale, "
    "Tensor(c!) output, Tensor? key, Tensor? value, Tensor loc, Tensor(d!) attn_logits, Tensor req_to_token, "
    "Tensor req_pool_indices, Tensor seq_lens, float sm_scale, float logit_cap, bool is_cross_attn, "
    "int sliding_window_size, Tensor? encoder_lens, Tensor? sinks) -> ()",
    decode_attention,
)
extend_attention_cpu = define(
    "extend_attention_cpu(Tensor q_extend, Tensor? k_extend, Tensor? v_extend, Tensor(a!) o_extend, "
    "Tensor(b!) k_buffer, Tensor(c!) v_buffer, float k_scale, float v_scale, Tensor req_to_token, "
    "Tensor req_pool_indices, Tensor seq_lens, Tensor extend_seq_lens, Tensor extend_start_loc, "
    "int? max_len_extend, float sm_scale, float logit_cap, bool is_cross_attn, int sliding_window_size, "
    "Tensor? encoder_lens, Tensor? sinks, Tensor? tree_mask, bool is_causal) -> ()",
    extend_attention,
)
