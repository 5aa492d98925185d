"""The P-EAGLE drafter inputs of one model-runner-V2 step, written into the speculator's persistent buffers.

Model runner V2 hands a speculator the target batch (token ids, positions, ``query_start_loc`` of the T
scheduled rows of B requests, rejected draft rows included), the number of rejected rows per request, and the
token to continue each request with (``last_sampled`` or, mid-prefill, ``next_prefill_tokens``, indexed by the
request's state slot ``idx_mapping[b]``). `prepare_peagle_inputs` turns that into the drafter batch of
`pedagle_core.expand` (T + B*(K-1) rows: shifted tokens, the bonus row, K-1 MASK rows, rejected padding at
each tail) and copies it into buffers whose addresses never change, so that a CUDA graph captured over them
replays with the new step's values:

    input_ids[:n], positions[:n], hidden_states[:n]   the drafter's inputs (fc(aux) rows, fc(mask_hidden) rows)
    slot_mapping[:n_padded]                           KV slots (-1 for rejected rows and graph padding)
    query_start_loc[:max_reqs+1], seq_lens[:max_reqs] the extended queries (padding requests: empty)
    sample_rows[:max_reqs*K]                          the B*K rows to sample (padding: row 0)

A decode step of B requests has K+1 target rows each, so every request's drafter query is 2K rows long:
uniform batches replay a FULL graph captured for 2K*B' rows (B' >= B, the padding requests have no query).
Nothing here imports vLLM: the buffers are plain tensors, and the expansion is pedagle_core's (its Triton
kernel on CUDA, the PyTorch reference elsewhere), so the CPU tests compare this with the reference directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pedagle_core.expand import expand_metadata, place_hidden
from pedagle_core.expand_spec import PADDING_SLOT_ID


@dataclass
class DraftBuffers:
    """The persistent tensors a V2 P-EAGLE step writes (views of the speculator's buffers)."""

    input_ids: Tensor        # [max_tokens] int32 or int64
    positions: Tensor        # [max_tokens] int64
    hidden_states: Tensor    # [max_tokens, H]
    slot_mapping: Tensor     # [max_tokens] int64 (the draft KV-cache group's row of BlockTables.slot_mappings)
    query_start_loc: Tensor  # [max_reqs + 1] int32
    seq_lens: Tensor         # [max_reqs] int32
    sample_rows: Tensor      # [max_reqs * K] int64

    def check(self, K: int) -> None:
        """Shapes that agree with each other (a wrong buffer would corrupt a CUDA graph silently)."""
        n = self.input_ids.shape[0]
        for name in ("positions", "slot_mapping"):
            t = getattr(self, name)
            if t.dim() != 1 or t.shape[0] != n:
                raise ValueError(f"DraftBuffers.{name}: shape {tuple(t.shape)}; expected ({n},) like input_ids")
        if self.hidden_states.dim() != 2 or self.hidden_states.shape[0] != n:
            raise ValueError(f"DraftBuffers.hidden_states: shape {tuple(self.hidden_states.shape)}; "
                             f"expected ({n}, H)")
        r = self.seq_lens.shape[0]
        if self.query_start_loc.shape[0] != r + 1:
            raise ValueError(f"DraftBuffers.query_start_loc: {self.query_start_loc.shape[0]} entries; expected "
                             f"max_reqs + 1 = {r + 1}")
        if self.sample_rows.shape[0] != r * K:
            raise ValueError(f"DraftBuffers.sample_rows: {self.sample_rows.shape[0]} entries; expected "
                             f"max_reqs * K = {r * K}")


@dataclass
class PreparedStep:
    """What the host needs to run the step (no device data is read to get it)."""

    num_reqs: int
    num_rows: int            # T + B*(K-1)
    max_query_len: int       # host upper bound of the extended query lengths
    uniform: bool            # every request's extended query is 2K rows (a decode step): FULL-graph eligible


def next_token_ids(idx_mapping: Tensor, num_sampled: Tensor, last_sampled: Tensor,
                   next_prefill_tokens: Tensor) -> Tensor:
    """[B] the token each request continues with: the last sampled one, or (a prefill chunk, nothing sampled)
    the next prompt token. ``last_sampled`` / ``next_prefill_tokens`` are indexed by request state slot;
    ``last_sampled`` is [max_reqs, 1] in vLLM 0.26-0.34 (``RequestState.last_sampled_tokens``; [max_reqs] taken
    too); ``next_prefill_tokens`` may be [max_reqs] (vLLM 0.26) or [lookahead, max_reqs] (row 0 is the next token)."""
    if last_sampled.dim() == 2:
        last_sampled = last_sampled[:, -1]
    if next_prefill_tokens.dim() == 2:
        next_prefill_tokens = next_prefill_tokens[0]
    idx = idx_mapping.long()
    return torch.where(num_sampled > 0, last_sampled[idx].long(), next_prefill_tokens[idx].long())


def uniform_query_len(num_scheduled_tokens: list[int] | tuple[int, ...], K: int) -> int | None:
    """2K when every request scheduled K+1 target rows (a decode step), else None."""
    if num_scheduled_tokens and all(int(n) == K + 1 for n in num_scheduled_tokens):
        return 2 * K
    return None


def prepare_peagle_inputs(buffers: DraftBuffers, *, token_ids: Tensor, positions: Tensor, query_start_loc: Tensor,
                          num_rejected: Tensor, next_tokens: Tensor, fc_out: Tensor, mask_vec: Tensor,
                          seq_lens: Tensor, K: int, mask_token_id: int, block_table: Tensor, block_size: int,
                          max_model_len: int, num_scheduled_tokens: list[int] | tuple[int, ...],
                          num_rows_padded: int | None = None, impl: str = "auto") -> PreparedStep:
    """Expand one V2 step into ``buffers`` (module docstring).

    token_ids, positions: [T] target rows; query_start_loc: [B+1]; num_rejected, next_tokens: [B];
    fc_out: [T, H] fc(aux hidden states) of the target rows; mask_vec: [H] fc(mask_hidden); seq_lens: [B]
    target sequence lengths (rejected rows included, as V2 schedules them); block_table: [B, max_blocks] in
    batch order; num_scheduled_tokens: the B query lengths on the host; num_rows_padded: rows the drafter
    forward will run (a captured graph's size; default: the real rows); rows past the real ones get slot -1.
    """
    B = int(query_start_loc.shape[0]) - 1
    T = int(token_ids.shape[0])
    if len(num_scheduled_tokens) != B or sum(int(n) for n in num_scheduled_tokens) != T:
        raise ValueError(f"num_scheduled_tokens: {list(num_scheduled_tokens)} (sum "
                         f"{sum(int(n) for n in num_scheduled_tokens)}); expected {B} lengths summing to T = {T}")
    if fc_out.shape[0] != T:
        raise ValueError(f"fc_out: {fc_out.shape[0]} rows; expected T = {T} (the target's unpadded rows)")
    buffers.check(K)
    max_reqs = buffers.seq_lens.shape[0]
    if B > max_reqs:
        raise ValueError(f"{B} requests; the buffers hold max_reqs = {max_reqs}")
    batch = expand_metadata(token_ids, positions, query_start_loc, num_rejected, next_tokens, K, mask_token_id,
                            block_table, block_size, max_model_len, impl=impl,
                            max_query_len=max(int(n) for n in num_scheduled_tokens))
    n = batch.num_rows
    padded = n if num_rows_padded is None else int(num_rows_padded)
    if not n <= padded <= buffers.input_ids.shape[0]:
        raise ValueError(f"num_rows_padded = {num_rows_padded}; expected {n} (the step's rows) to "
                         f"{buffers.input_ids.shape[0]} (the buffers' rows)")
    hidden = place_hidden(fc_out, batch, mask_vec.to(fc_out.dtype), impl=impl)

    buffers.input_ids[:n].copy_(batch.input_ids)
    buffers.positions[:n].copy_(batch.positions)
    buffers.hidden_states[:n].copy_(hidden)
    buffers.slot_mapping[:n].copy_(batch.slot_mapping)
    buffers.slot_mapping[n:padded].fill_(PADDING_SLOT_ID)
    if padded > n:                                       # graph padding rows: harmless inputs, no KV write
        buffers.input_ids[n:padded].zero_()
        buffers.positions[n:padded].zero_()
    buffers.query_start_loc[:B + 1].copy_(batch.query_start_loc)
    buffers.query_start_loc[B + 1:].fill_(n)              # padding requests: empty queries
    buffers.seq_lens[:B].copy_(seq_lens[:B] + (K - 1))   # each query is K-1 rows longer than the target's
    buffers.seq_lens[B:].zero_()
    buffers.sample_rows[:B * K].copy_(batch.sample_rows)
    buffers.sample_rows[B * K:].zero_()
    return PreparedStep(num_reqs=B, num_rows=n, max_query_len=max(int(x) for x in num_scheduled_tokens) + K - 1,
                        uniform=uniform_query_len(num_scheduled_tokens, K) is not None)


def bonus_positions(buffers: DraftBuffers, num_reqs: int, K: int) -> Tensor:
    """[B] position of each request's bonus row (the recorder's ``bonus_positions``)."""
    rows = buffers.sample_rows[:num_reqs * K].view(num_reqs, K)[:, 0]
    return buffers.positions[rows]


__all__ = ["DraftBuffers", "PreparedStep", "next_token_ids", "uniform_query_len", "prepare_peagle_inputs",
           "bonus_positions"]
