"""Hooks on vLLM's EAGLE proposer: the input expansion through pedagle_core, and the draft recorder.

Installed (idempotently) in the worker process when vLLM builds a pedagle drafter (`model.py`).

* ``SpecDecodeBaseProposer.set_inputs_first_pass`` — for a pedagle drafter with parallel drafting
  (K > 1 slots per request), the first drafter forward's inputs come from `pedagle_core.expand`:
  ``expand_metadata`` (token ids, positions, rejected/MASK rows, sample rows, hidden mapping, slot
  mapping; the Triton kernel on CUDA, the torch reference on CPU) and ``place_hidden`` (fc(aux) rows and
  fc(mask_hidden) in the MASK rows). The attention metadata is then extended by K-1 rows per request with
  vLLM's ``extend_all_queries_by_N``. With one slot per request (autoregressive EAGLE-3, or P-EAGLE at
  K = 1) no row is added and vLLM's own first pass runs (`eagle_first_pass`). Other drafters keep vLLM's
  own implementation.
* ``install(record_only=True)`` (the plugin's ``PEDAGLE_VLLM_RECORD_ONLY=1`` mode): no pedagle drafter,
  vLLM's own proposer unchanged, but every proposal of any drafter is recorded (vLLM's native drafts,
  for a step-by-step comparison with pedagle's).
* With ``PEDAGLE_RECORD_DRAFTS=path.jsonl`` set when the hooks are installed, every proposal of a pedagle
  drafter appends one JSON line (`pedagle_core.draft_record`). Unset, no recording code is installed at all.
"""

from __future__ import annotations

import inspect
import os
import threading
from typing import Any

import torch

from pedagle_core.draft_record import RECORD_ENV, DraftRecordWriter
from pedagle_core.expand import expand_metadata, place_hidden

from .model import is_pedagle_drafter
from .v2_state import tp_rank

_MARK = "__pedagle_hook__"
_FIRST_PASS_PARAMS = ("self", "target_token_ids", "next_token_ids", "target_positions", "target_hidden_states",
                      "token_indices_to_sample", "cad", "num_rejected_tokens_gpu")
_lock = threading.Lock()
_local = threading.local()


def _unwrap(model: Any) -> Any:
    unwrap = getattr(model, "unwrap", None)          # BreakableCUDAGraphWrapper
    return unwrap() if callable(unwrap) and not isinstance(model, torch.nn.Module) else model


def _uses_pedagle(proposer: Any) -> bool:
    return (is_pedagle_drafter(_unwrap(getattr(proposer, "model", None)))
            and proposer.pass_hidden_states_to_model
            and not getattr(proposer, "use_heterogeneous_vocab", False)
            and not getattr(proposer, "uses_mrope", False))


def pedagle_first_pass(proposer: Any, target_token_ids: torch.Tensor, next_token_ids: torch.Tensor,
                       target_positions: torch.Tensor, target_hidden_states: torch.Tensor, cad: Any,
                       num_rejected_tokens_gpu: torch.Tensor | None) -> tuple[int, torch.Tensor, Any]:
    """vLLM's ``set_inputs_first_pass`` contract, computed by pedagle_core: fills the proposer's input
    buffers and returns (rows of the drafter batch, rows to sample [B*K], the extended metadata)."""
    from vllm.v1.spec_decode.utils import extend_all_queries_by_N

    K = int(proposer.extra_slots_per_request)             # K with parallel drafting, else 1
    if proposer.net_num_new_slots_per_request != K - 1:
        raise RuntimeError(f"pedagle: vLLM adds {proposer.net_num_new_slots_per_request} slots per request; "
                           f"expected K-1 = {K - 1}")
    model = _unwrap(proposer.model)
    mask_id = 0
    if K > 1:
        mask_id = int(proposer.parallel_drafting_token_id)
        if mask_id != model.pedagle_config.mask_token_id:
            raise RuntimeError(f"pedagle: vLLM's mask token {mask_id} differs from the drafter's "
                               f"{model.pedagle_config.mask_token_id}")
    impl = "auto" if target_token_ids.device.type == "cuda" else "torch"
    batch = expand_metadata(target_token_ids, target_positions, cad.query_start_loc, num_rejected_tokens_gpu,
                            next_token_ids, K, mask_id, cad.block_table_tensor, int(proposer.block_size),
                            int(proposer.max_model_len), impl=impl, max_query_len=int(cad.max_query_len))
    n = batch.num_rows
    if K > 1:
        mask_vec = proposer.parallel_drafting_hidden_state_tensor
    else:
        mask_vec = target_hidden_states.new_zeros(target_hidden_states.shape[-1])
    hidden = place_hidden(target_hidden_states, batch, mask_vec.to(target_hidden_states.dtype), impl=impl)
    proposer.input_ids[:n] = batch.input_ids
    proposer._set_positions(n, batch.positions)
    proposer.hidden_states[:n] = hidden
    if proposer.is_rejected_token_mask is not None:
        proposer.is_rejected_token_mask[:n] = batch.is_rejected
    if proposer.is_masked_token_mask is not None:
        proposer.is_masked_token_mask[:n] = batch.is_masked
    new_cad = extend_all_queries_by_N(cad, N=K - 1, arange=proposer.arange, new_slot_mapping=batch.slot_mapping)
    if getattr(_local, "recording", False):
        B = batch.num_requests
        _local.step_info = {
            "K": K,
            "bonus_positions": batch.positions[batch.sample_rows.view(B, K)[:, 0]].tolist(),
            "next_token_ids": next_token_ids.tolist(),
            "num_rejected": None if num_rejected_tokens_gpu is None else num_rejected_tokens_gpu.tolist(),
        }
    return n, batch.sample_rows, new_cad


def eagle_first_pass(orig: Any, proposer: Any, target_token_ids: torch.Tensor, next_token_ids: torch.Tensor,
                     target_positions: torch.Tensor, target_hidden_states: torch.Tensor,
                     token_indices_to_sample: torch.Tensor | None, cad: Any,
                     num_rejected_tokens_gpu: torch.Tensor | None) -> tuple[int, torch.Tensor, Any]:
    """One slot per request: vLLM's own first pass (``orig``), the plain EAGLE shift. It gives the drafter
    the inputs of `pedagle_core.expand` at K = 1 in every row a sampled row attends to; only the rejected
    rows at the segment tails differ (vLLM keeps their shifted tokens and positions and writes their KV,
    which no live row reads before it is overwritten). It is 4 tensor ops where the expansion is ~60: on a
    2-core CPU, 0.08 ms per step instead of 0.4 ms (tiny-code family, batch 1)."""
    n, sample_rows, new_cad = orig(proposer, target_token_ids, next_token_ids, target_positions,
                                   target_hidden_states, token_indices_to_sample, cad, num_rejected_tokens_gpu)
    if getattr(_local, "recording", False):
        _local.step_info = {
            "K": 1,
            "bonus_positions": target_positions[sample_rows].tolist(),
            "next_token_ids": next_token_ids.tolist(),
            "num_rejected": None if num_rejected_tokens_gpu is None else num_rejected_tokens_gpu.tolist(),
        }
    return n, sample_rows, new_cad


def _check_signature(fn: Any, expected: tuple[str, ...], what: str) -> None:
    params = tuple(inspect.signature(fn).parameters)
    if params != expected:
        from . import SUPPORTED_VLLM

        raise RuntimeError(f"pedagle: {what} has parameters {params}; expected {expected} "
                           f"(pedagle's vLLM backend supports vllm{SUPPORTED_VLLM})")


def native_first_pass(orig: Any, proposer: Any, *args: Any) -> tuple[int, torch.Tensor, Any]:
    """vLLM's own first pass (``orig``), noting the step's bonus positions for the recorder."""
    n, sample_rows, new_cad = orig(proposer, *args)
    if getattr(_local, "recording", False):
        next_token_ids, num_rejected = args[1], args[6]
        K = int(proposer.extra_slots_per_request)
        positions = proposer._get_positions(n)
        B = int(next_token_ids.shape[0])
        _local.step_info = {
            "K": K,
            "bonus_positions": positions[sample_rows.view(B, -1)[:, 0]].tolist(),
            "next_token_ids": next_token_ids.tolist(),
            "num_rejected": None if num_rejected is None else num_rejected.tolist(),
        }
    return n, sample_rows, new_cad


def install(record_only: bool = False) -> None:
    """Install the hooks (idempotent; checks every target before changing anything). ``record_only``:
    vLLM's own drafting for every drafter, each proposal recorded (needs ``PEDAGLE_RECORD_DRAFTS``)."""
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer

    with _lock:
        if getattr(SpecDecodeBaseProposer.set_inputs_first_pass, _MARK, False):
            return
        orig_first_pass = SpecDecodeBaseProposer.set_inputs_first_pass
        _check_signature(orig_first_pass, _FIRST_PASS_PARAMS, "SpecDecodeBaseProposer.set_inputs_first_pass")
        record_path = os.environ.get(RECORD_ENV) or None
        if record_only and not record_path:
            raise RuntimeError(f"pedagle: record-only mode needs {RECORD_ENV} (the JSONL file to write)")
        recorder_patches = _recorder_patches(record_path, record_all=record_only) if record_path else []

        def set_inputs_first_pass(self, target_token_ids, next_token_ids, target_positions, target_hidden_states,
                                  token_indices_to_sample, cad, num_rejected_tokens_gpu):
            if record_only:
                return native_first_pass(orig_first_pass, self, target_token_ids, next_token_ids, target_positions,
                                         target_hidden_states, token_indices_to_sample, cad, num_rejected_tokens_gpu)
            if not _uses_pedagle(self):
                return orig_first_pass(self, target_token_ids, next_token_ids, target_positions,
                                       target_hidden_states, token_indices_to_sample, cad, num_rejected_tokens_gpu)
            if int(self.extra_slots_per_request) == 1:
                return eagle_first_pass(orig_first_pass, self, target_token_ids, next_token_ids, target_positions,
                                        target_hidden_states, token_indices_to_sample, cad, num_rejected_tokens_gpu)
            return pedagle_first_pass(self, target_token_ids, next_token_ids, target_positions,
                                      target_hidden_states, cad, num_rejected_tokens_gpu)

        setattr(set_inputs_first_pass, _MARK, True)
        set_inputs_first_pass.__wrapped__ = orig_first_pass  # type: ignore[attr-defined]
        SpecDecodeBaseProposer.set_inputs_first_pass = set_inputs_first_pass
        for owner, name, fn in recorder_patches:
            setattr(owner, name, fn)


# ---------------------------------------------------------------------------------------------- recorder
def _recorder_patches(path: str, record_all: bool = False) -> list[tuple[Any, str, Any]]:
    """Patches that record every proposal of a pedagle drafter (TP rank 0 only), one JSON line each:
    ``{"step", "pid", "K", "req_ids", "bonus_positions", "next_token_ids", "num_rejected" | null, "drafts"}``.
    Row b is request ``req_ids[b]``; ``drafts[b][i]`` proposes the token at sequence index
    ``bonus_positions[b] + 2 + i``."""
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    recorder = DraftRecordWriter(path)
    orig_propose = SpecDecodeBaseProposer.propose
    orig_runner = GPUModelRunner.propose_draft_token_ids

    def propose(self, *args, **kwargs):
        if not record_all and not _uses_pedagle(self):
            return orig_propose(self, *args, **kwargs)
        _local.recording, _local.step_info = True, None
        try:
            drafts = orig_propose(self, *args, **kwargs)
        finally:
            _local.recording = False
        info = _local.step_info or {}
        if tp_rank() == 0 and isinstance(drafts, torch.Tensor):
            req_ids = getattr(_local, "req_ids", None)
            recorder.write({**info, "req_ids": None if req_ids is None else req_ids[: drafts.shape[0]],
                            "drafts": drafts.tolist()})
        return drafts

    def propose_draft_token_ids(self, *args, **kwargs):
        _local.req_ids = list(self.input_batch.req_ids)
        try:
            return orig_runner(self, *args, **kwargs)
        finally:
            _local.req_ids = None

    return [(SpecDecodeBaseProposer, "propose", propose),
            (GPUModelRunner, "propose_draft_token_ids", propose_draft_token_ids)]


__all__ = ["install", "pedagle_first_pass", "eagle_first_pass", "RECORD_ENV"]
