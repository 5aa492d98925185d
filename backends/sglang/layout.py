"""The SGLang worker's per-step bookkeeping as pure functions over plain tensors (no SGLang import).

SGLang's EAGLE V2 conventions (0.5.17-0.5.23), which these functions translate into pedagle's `StepInput`:

* ``seq_lens`` [B] = the committed length of each request *before* this iteration;
* the verify window of a decode step is ``[bonus, d_1 .. d_K]`` at positions ``seq_lens .. seq_lens+K``
  (the bonus token sits at ``seq_lens`` and is not yet in the KV cache), request-major, K+1 rows each;
* ``accept_lens`` [B] = accepted drafts + 1 (the new bonus token included); the new bonus tokens are the
  target's predictions at row ``accept_lens - 1`` of each window.

P-EAGLE's draft step (route B, one drafter forward) is pedagle's expansion of that verify step
(`pedagle_core.expand`): per request ``[accepted rows, bonus row, K-1 MASK rows, rejected rows as padding]``,
2K rows at positions ``seq_lens + j`` (padding rows get position 0 in the core; here they still occupy
the request's window, see `draft_extend_cache_locs`). SGLang's paged KV has page size 1 for this backend,
so the core's block table is ``req_to_token[req_pool_indices]`` with block size 1.

Prefill: the extend rows of each request (prefix from the radix cache excluded) followed by K-1 MASK rows;
the core shifts the prompt left by one and puts the tail token (the sampled token, or the next prompt
token for a non-final chunk) in the last prompt row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pedagle_core.draft import StepInput


def decode_window(K: int) -> int:
    """Rows (and KV slots past ``seq_lens``) the one-forward draft step of one request occupies: 2K."""
    _check_k(K)
    return 2 * K


def alloc_len_per_decode(K: int, stock: int) -> int:
    """SGLang's ``get_alloc_len_per_decode`` for PEAGLE: the stock length (max(K, K+1) for a chain) widened so
    that one decode step can write the whole draft window (2K slots past ``seq_lens``). SGLang reserves twice
    this per request (``get_alloc_reserve_per_decode``, a double buffer), so the reserve also covers the overlap
    scheduler's one-step lag (`decode_reach`)."""
    return max(int(stock), decode_window(K))


def decode_reach(K: int, lag_steps: int) -> int:
    """How far past a request's committed length (as the scheduler counts it when it reserves KV for a decode
    step) that step writes, at most: the committed length lags ``lag_steps`` verify steps (0: the synchronous
    schedule; 1: the overlap scheduler plans step N+1 before step N's accepted tokens are counted), each of
    which may have added up to K+1 tokens; then the step's verify writes K+1 slots and its draft step 2K
    (`decode_window`) past the current length. SGLang reserves ``2 * alloc_len_per_decode`` past the committed
    length: ``decode_reach(K, 1) = 3K + 1 <= 4K`` for every K >= 1 (SGLang's own EAGLE chain fits its K+1
    reserve the same way: ``(K + 1) + (K + 1) <= 2(K + 1)``)."""
    _check_k(K)
    if lag_steps < 0:
        raise ValueError(f"lag_steps = {lag_steps}; expected >= 0")
    return lag_steps * (K + 1) + max(K + 1, decode_window(K))


def prefill_scratch_slots(K: int) -> int:
    """KV slots one request's prefill draft step takes beyond its prompt: its K-1 MASK rows (scratch, freed
    after the forward; their positions lie past the prompt)."""
    _check_k(K)
    return K - 1


def _check_k(K: int) -> None:
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K = {K!r}; expected an integer >= 1 (speculative_num_steps)")


def _as_long(t: Tensor) -> Tensor:
    return t.to(torch.int64)


# ---------------------------------------------------------------------------------------------- decode
def verify_positions(seq_lens: Tensor, K: int) -> Tensor:
    """[B*(K+1)] positions of the verify window rows: seq_lens[b] + j, j = 0..K, request-major."""
    _check_k(K)
    return (_as_long(seq_lens)[:, None] + torch.arange(K + 1, device=seq_lens.device)).reshape(-1)


def verify_tokens(bonus_tokens: Tensor, drafts: Tensor) -> Tensor:
    """[B*(K+1)] tokens of the verify window: per request [bonus, d_1 .. d_K] (what SGLang's chain
    verify input carries as ``draft_token``). bonus_tokens [B], drafts [B, K] (target ids)."""
    if drafts.dim() != 2 or drafts.shape[0] != bonus_tokens.shape[0]:
        raise ValueError(f"drafts: expected shape [B={bonus_tokens.shape[0]}, K], got {tuple(drafts.shape)}")
    return torch.cat([_as_long(bonus_tokens)[:, None], _as_long(drafts)], dim=1).reshape(-1)


def chain_retrieve_indices(B: int, K: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """SGLang's tree bookkeeping for a chain (topk 1) of K drafts, [B, K+1] each: ``retrieve_index`` (flat
    row of node j of request b: b*(K+1)+j), ``retrieve_next_token`` (j+1, -1 for the last node) and
    ``retrieve_next_sibling`` (all -1)."""
    _check_k(K)
    idx = torch.arange(B * (K + 1), device=device, dtype=torch.int64).view(B, K + 1)
    nxt = torch.arange(1, K + 2, device=device, dtype=torch.int64).expand(B, K + 1).clone()
    nxt[:, -1] = -1
    sib = torch.full((B, K + 1), -1, device=device, dtype=torch.int64)
    return idx, nxt, sib


def decode_step_input(bonus_tokens: Tensor, drafts: Tensor, seq_lens: Tensor, accept_lens: Tensor,
                      next_token_ids: Tensor, aux_hidden: Tensor) -> StepInput:
    """pedagle's `StepInput` for the draft step after a verify.

    bonus_tokens [B]: the tokens at ``seq_lens`` (verify roots); drafts [B, K]: the drafts that were verified;
    seq_lens [B]: committed lengths before the verify; accept_lens [B]: accepted drafts + 1; next_token_ids
    [B]: the new bonus tokens; aux_hidden [B*(K+1), n_aux*Ht]: the target's aux hidden states of the window.
    """
    B, K = int(drafts.shape[0]), int(drafts.shape[1])
    _check_k(K)
    if aux_hidden.shape[0] != B * (K + 1):
        raise ValueError(f"aux_hidden: expected {B * (K + 1)} rows (B*(K+1)), got {aux_hidden.shape[0]}")
    dev = drafts.device
    acc = _as_long(accept_lens)
    if dev.type == "cpu" and bool(((acc < 1) | (acc > K + 1)).any()):
        raise ValueError(f"accept_lens: expected values in [1, K+1 = {K + 1}], got {acc.tolist()}")
    return StepInput(token_ids=verify_tokens(bonus_tokens, drafts), positions=verify_positions(seq_lens, K),
                     query_start_loc=torch.arange(B + 1, device=dev, dtype=torch.int64) * (K + 1),
                     num_rejected=K - (acc - 1), next_token_ids=_as_long(next_token_ids), aux_hidden=aux_hidden)


def select_index(accept_lens: Tensor, K: int) -> Tensor:
    """[B] row, in the verify window, of each request's bonus row (SGLang's ``select_index``):
    b*(K+1) + accept_lens[b] - 1."""
    _check_k(K)
    B = accept_lens.shape[0]
    return torch.arange(B, device=accept_lens.device, dtype=torch.int64) * (K + 1) + _as_long(accept_lens) - 1


def draft_extend_cache_locs(req_to_token: Tensor, req_pool_indices: Tensor, seq_lens: Tensor, width: int) -> Tensor:
    """[B*width] KV slots of a draft window of ``width`` rows per request at positions seq_lens .. +width-1:
    ``req_to_token[req_pool_indices[b], seq_lens[b] + j]``. Every row gets its request's own reserved slot
    (padding rows included), so paged attention backends, which read a request's keys through
    ``req_to_token``, see exactly what was written. The caller guarantees seq_lens + width <= the reserve."""
    if width < 1:
        raise ValueError(f"width = {width}; expected >= 1")
    cols = _as_long(seq_lens)[:, None] + torch.arange(width, device=seq_lens.device)
    if req_to_token.device.type == "cpu" and cols.numel() and int(cols.max()) >= req_to_token.shape[1]:
        raise ValueError(f"draft window reaches position {int(cols.max())}; req_to_token rows hold "
                         f"{req_to_token.shape[1]} positions")
    return req_to_token[_as_long(req_pool_indices)[:, None], cols].reshape(-1).to(torch.int64)


def block_table(req_to_token: Tensor, req_pool_indices: Tensor) -> tuple[Tensor, int, int]:
    """(block_table [B, max_context], block_size 1, max_model_len): SGLang's token-level page table as the
    core's block table. The worker does not use it (see `no_block_table`); the tests check with it that the
    worker's cache locations are the slots the core's rule gives."""
    bt = req_to_token[_as_long(req_pool_indices)]
    return bt, 1, int(bt.shape[1])


def no_block_table(B: int, device: torch.device | str) -> tuple[Tensor, int, int]:
    """(block_table [B, 1] zeros, block_size 1, max_model_len 1) for an expansion whose slot mapping is not
    used: the slots come out meaningless (padding or 0), and nothing of size B x context length is gathered."""
    return torch.zeros((B, 1), dtype=torch.int64, device=device), 1, 1


# ---------------------------------------------------------------------------------------------- prefill
def prefill_step_input(input_ids: Tensor, extend_lens: Tensor, prefix_lens: Tensor, tail_tokens: Tensor,
                       aux_hidden: Tensor) -> StepInput:
    """pedagle's `StepInput` for the draft step after a (chunked) prefill.

    input_ids [T]: the extend rows' prompt tokens (NOT rotated); extend_lens / prefix_lens [B]; tail_tokens
    [B]: the sampled token, or the next prompt token for a non-final chunk; aux_hidden [T, n_aux*Ht].
    """
    ext = _as_long(extend_lens)
    T = int(input_ids.shape[0])
    dev = input_ids.device
    if dev.type == "cpu" and int(ext.sum()) != T:
        raise ValueError(f"extend_lens: sum {int(ext.sum())}; expected len(input_ids) = {T}")
    if aux_hidden.shape[0] != T:
        raise ValueError(f"aux_hidden: expected {T} rows (one per extend row), got {aux_hidden.shape[0]}")
    qsl = torch.zeros(ext.shape[0] + 1, dtype=torch.int64, device=dev)
    qsl[1:] = torch.cumsum(ext, 0)
    req = torch.repeat_interleave(torch.arange(ext.shape[0], device=dev), ext, output_size=T)
    positions = _as_long(prefix_lens)[req] + (torch.arange(T, device=dev) - qsl[req])
    return StepInput(token_ids=_as_long(input_ids), positions=positions, query_start_loc=qsl, num_rejected=None,
                     next_token_ids=_as_long(tail_tokens), aux_hidden=aux_hidden)


def prefill_mask_positions(seq_lens: Tensor, K: int) -> Tensor:
    """[B, K-1] positions of the MASK rows appended to each prefilled request (seq_lens = length after the
    extend): seq_lens .. seq_lens + K - 2. They hold no committed token; their KV is scratch."""
    _check_k(K)
    return _as_long(seq_lens)[:, None] + torch.arange(K - 1, device=seq_lens.device)


@dataclass
class ExtendLayout:
    """Row layout of one drafter forward as an SGLang extend batch (request-major, contiguous per request).

    prefix_lens [B]: KV already in the cache before the forward; extend_lens [B]: rows of the forward;
    seq_lens [B] = prefix_lens + extend_lens (what the attention backend sees); out_cache_loc [sum extend]:
    the slot each row writes."""

    prefix_lens: Tensor
    extend_lens: Tensor
    seq_lens: Tensor
    out_cache_loc: Tensor


def decode_extend_layout(req_to_token: Tensor, req_pool_indices: Tensor, seq_lens: Tensor, K: int) -> ExtendLayout:
    """The draft step after a verify as an extend batch: 2K rows per request on top of ``seq_lens``."""
    w = decode_window(K)
    sl = _as_long(seq_lens)
    return ExtendLayout(prefix_lens=sl, extend_lens=torch.full_like(sl, w), seq_lens=sl + w,
                        out_cache_loc=draft_extend_cache_locs(req_to_token, req_pool_indices, sl, w))


def prefill_extend_layout(prompt_locs: Tensor, extend_lens: Tensor, prefix_lens: Tensor, mask_locs: Tensor,
                          K: int) -> ExtendLayout:
    """The draft step after a prefill as an extend batch: each request's prompt rows (slots ``prompt_locs``,
    concatenated per request) followed by its K-1 MASK rows (slots ``mask_locs`` [B, K-1])."""
    _check_k(K)
    ext = _as_long(extend_lens)
    B, T = ext.shape[0], int(prompt_locs.shape[0])
    if tuple(mask_locs.shape) != (B, K - 1):
        raise ValueError(f"mask_locs: expected shape [{B}, {K - 1}], got {tuple(mask_locs.shape)}")
    # scattered into place on the device, with no host read of the lengths (no sync under overlap scheduling)
    new_ext = ext + (K - 1)
    new_start = torch.cumsum(new_ext, 0) - new_ext
    old_start = torch.cumsum(ext, 0) - ext
    req = torch.repeat_interleave(torch.arange(B, device=ext.device), ext, output_size=T)
    out = torch.empty(T + B * (K - 1), dtype=torch.int64, device=prompt_locs.device)
    out[new_start[req] + torch.arange(T, device=ext.device) - old_start[req]] = _as_long(prompt_locs)
    if K > 1:
        mask_rows = (new_start + ext)[:, None] + torch.arange(K - 1, device=ext.device)
        out[mask_rows.reshape(-1)] = _as_long(mask_locs).reshape(-1)
    return ExtendLayout(prefix_lens=_as_long(prefix_lens), extend_lens=new_ext,
                        seq_lens=_as_long(prefix_lens) + new_ext, out_cache_loc=out)


__all__ = ["decode_window", "alloc_len_per_decode", "decode_reach", "prefill_scratch_slots", "verify_positions",
           "verify_tokens", "chain_retrieve_indices", "decode_step_input", "select_index", "draft_extend_cache_locs",
           "block_table", "no_block_table", "prefill_step_input", "prefill_mask_positions", "ExtendLayout",
           "decode_extend_layout", "prefill_extend_layout"]
