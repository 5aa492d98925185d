"""PEAGLE's speculative worker: SGLang's EAGLE V2 worker with ONE drafter forward per step (route B).

Per decode iteration (SGLang's V2 schedule, topk 1; the overlap scheduler's or the synchronous one):

1. ``draft()`` runs no forward: the K drafts of each request were produced by the previous draft step and
   stored as ``EagleDraftInput.topk_index`` [B, K] (target ids); it builds SGLang's chain verify input from
   them (``build_eagle_verify_input``, the same tree/mask code as EAGLE-3).
2. ``verify()`` is SGLang's (target forward over ``[bonus, d_1..d_K]``, acceptance, aux hidden states).
3. ``_draft_extend_for_decode()`` is the one drafter forward: pedagle's expansion of the verify step (accepted
   rows, the bonus row, K-1 MASK rows; rejected rows as padding), 2K rows per request as a DRAFT_EXTEND_V2
   batch on top of ``seq_lens``, KV written into the request's reserved slots (the plugin widens SGLang's
   decode reserve to cover them); logits of the K sample rows only; ``d2t`` to target ids. The result is the
   next iteration's ``topk_index`` [B, K].

Prefill: the extend rows of each request plus K-1 MASK rows in one forward; the MASK rows write scratch KV
slots allocated for the forward and freed after it (their positions lie past the prompt, where nothing is
allocated yet).

Overlap scheduling (SGLang's default; ``--disable-overlap-schedule`` gives the synchronous schedule) changes what
the worker is handed, not what it does: ``draft()``, verify and ``_draft_extend_for_decode`` of one batch still run
in one ``forward_batch_generation`` call (so ``_last_verify``, set in ``draft()`` and read in the draft-extend, never
spans two batches), while the scheduler prepares the next batch before this one's results are processed. So:

* the next iteration's draft input comes back through SGLang's ``FutureMap`` (the ``topk_index`` [B, K] and
  ``bonus_tokens`` stashed after this forward, gathered by request-pool row before the next one:
  `spec_algo.future_map_class`), not as this call's ``next_draft_input`` object;
* ``batch.seq_lens`` (and ``seq_lens_cpu`` where the attention backends want it) are the verify's published
  ``new_seq_lens``: the scheduler waits for them, so the draft step sees current lengths as in the synchronous
  schedule; nothing here reads a request's host-side state (accept lengths, output ids), which lags a step;
* KV: the scheduler reserves ``2 * alloc_len_per_decode`` slots past each request's committed length, and that
  length lags one step (the previous step's accepted tokens are not counted yet); the verify and 2K-row draft
  windows still fit (`layout.decode_reach`). The prefill draft step's scratch slots are taken and freed inside the
  forward call, on the host, before the scheduler plans the next batch; on CUDA every KV write is on the forward
  stream, and the scheduler's next ``req_to_token`` writes wait for this forward (its write-after-read barrier).

The drafter is `model.PedagleSglangDrafter` (pedagle_core's model on SGLang's attention backend and draft KV
pool). The decode draft step is captured in CUDA graphs by `cuda_graphs` (per batch size, on the Triton attention
backend; eager otherwise, and for prefill as in SGLang's own EAGLE); the target's graphs are SGLang's.
Set ``PEDAGLE_RECORD_DRAFTS=path.jsonl`` to record every draft step (`record_fields`).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Optional

import torch

from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.mem_cache.common import evict_from_tree_cache
from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch
from sglang.srt.runtime_context import get_device, get_parallel, get_schedule, get_spec
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.draft_utils import DraftBackendFactory
from sglang.srt.speculative.eagle_info import EagleDraftExtendInput, EagleDraftInput, EagleVerifyInput
from sglang.srt.speculative.eagle_utils import _eagle_prefill_tail_tokens, default_tree_mask_mode
from sglang.srt.speculative.eagle_worker_common import build_eagle_verify_input, prepare_for_draft_extend
from sglang.srt.speculative.eagle_worker_v2 import EagleDraftWorker, EAGLEWorkerV2
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
from sglang.srt.speculative.spec_utils import get_plan_stream

from pedagle_core.draft_record import RECORD_ENV, DraftRecordWriter

from . import ALGORITHM, SUPPORTED_SGLANG, compat, layout, step_timer
from .drafting import drafter_mask_token, greedy_drafts, plan_step
from .model import PedagleSglangDrafter
from .plugin import install_model_class

logger = logging.getLogger("pedagle.sglang")


class PEagleRuntimeError(RuntimeError):
    """The running SGLang configuration is one PEAGLE cannot serve (the message says which)."""


# ---------------------------------------------------------------------------------------------- checks
def check_runtime(page_size: int, tp_size: int, pp_size: int, topk: int, num_steps: int,
                  num_draft_tokens: int) -> None:
    """Refuse configurations the worker does not implement (SGLang may have resolved defaults after the
    server-argument validation ran, e.g. a backend that forces a page size)."""
    problems = []
    if topk != 1:
        problems.append(f"speculative_eagle_topk = {topk} (PEAGLE drafts a chain: 1)")
    if num_draft_tokens != num_steps + 1:
        problems.append(f"speculative_num_draft_tokens = {num_draft_tokens} (expected num_steps + 1 = {num_steps + 1})")
    if page_size != 1:
        problems.append(f"page_size = {page_size} (PEAGLE needs 1; choose an attention backend that allows it)")
    if tp_size != 1:
        problems.append(f"tp_size = {tp_size} (the drafter runs unsharded: 1)")
    if pp_size != 1:
        problems.append(f"pp_size = {pp_size} (1)")
    if problems:
        raise PEagleRuntimeError(f"--speculative-algorithm {ALGORITHM} (pedagle, sglang{SUPPORTED_SGLANG}) cannot run "
                                 "with: " + "; ".join(problems))


def target_capture_ids(target_model: Any, aux_layer_ids: tuple[int, ...] | None) -> list[int]:
    """The aux layer ids pedagle's head reads, in pedagle's (vLLM's) convention: id i = the residual stream
    ENTERING target layer i (the head's ``aux_layer_ids``, else pedagle's default for the target depth)."""
    from pedagle_core.engine.target import default_aux_layer_ids

    L = int(target_model.config.num_hidden_layers)
    ids = list(sorted(set(aux_layer_ids))) if aux_layer_ids else list(default_aux_layer_ids(L))
    bad = [i for i in ids if not 0 <= i < L]
    if bad:
        raise PEagleRuntimeError(f"the drafter's aux_layer_ids {ids} name layers {bad} outside the target's "
                                 f"{L} layers (expected ids in [0, {L}))")
    return ids


def sglang_capture_ids(ids: list[int]) -> list[int]:
    """SGLang's EAGLE-3 layer ids for pedagle's ids: SGLang's ``set_eagle3_layers_to_capture(j)`` captures the
    stream entering layer j + 1, so pedagle's id i is SGLang's i - 1."""
    return [i - 1 for i in ids]


def captured_layers(target_model: Any) -> list[int] | None:
    """The layers the target model captures aux hidden states at (the stream entering each), or None when the
    model does not say."""
    captured = getattr(getattr(target_model, "model", None), "layers_to_capture", None)
    return None if captured is None else sorted(int(i) for i in captured)


def configure_target_capture(target_runner: Any, aux_layer_ids: tuple[int, ...] | None) -> list[int]:
    """Make the target capture pedagle's aux hidden states (`target_capture_ids`), and keep it so.

    SGLang sets the target's capture layers itself in ``ModelRunner.init_attention_backends``
    (``configure_aux_hidden_state_capture``, before the target's CUDA graphs), from
    ``model_runner.spec_aux_config.eagle_aux_hidden_state_layer_ids`` — which it read from the drafter
    config's ``eagle_config`` in SGLang's convention. The scheduler calls that AFTER the draft worker is
    built, so setting the model alone would be undone; this rewrites the runner's ``spec_aux_config`` (what
    SGLang applies, at start-up and on any later re-initialisation) and sets the model now. Returns the ids."""
    model = target_runner.model
    if getattr(model, "set_eagle3_layers_to_capture", None) is None:
        raise PEagleRuntimeError(f"the target model {type(model).__name__} cannot capture EAGLE-3 aux hidden "
                                 "states (no set_eagle3_layers_to_capture)")
    ids = target_capture_ids(model, aux_layer_ids)
    aux_cfg = getattr(target_runner, "spec_aux_config", None)
    if aux_cfg is not None:
        aux_cfg.eagle_use_aux_hidden_state = True
        aux_cfg.eagle_aux_hidden_state_layer_ids = sglang_capture_ids(ids)
    model.set_eagle3_layers_to_capture(sglang_capture_ids(ids))
    check_target_capture(model, ids)
    return ids


def check_target_capture(target_model: Any, ids: list[int]) -> None:
    """Raise unless the target captures exactly pedagle's ``ids``."""
    captured = captured_layers(target_model)
    if captured is not None and captured != sorted(ids):
        raise PEagleRuntimeError(f"the target captures aux hidden states entering layers {captured}; the pedagle "
                                 f"drafter reads {sorted(ids)} (something re-set the target's EAGLE-3 capture "
                                 "layers after the PEAGLE worker configured them)")


def check_shareable(module: Any, what: str) -> None:
    """Refuse to share a target weight that SGLang has repacked for its AMX CPU kernels (``use_intel_amx_backend``:
    the tensor keeps its shape but not its element order, so pedagle's drafter would compute wrong logits)."""
    if getattr(module, "use_intel_amx_backend", False):
        raise PEagleRuntimeError(
            f"the target's {what} is packed for SGLang's AMX CPU kernels and cannot be shared with pedagle's drafter; "
            f"give the head its own {what} (a checkpoint with {what}.weight), or start SGLang's CPU engine without "
            "AMX (PEDAGLE_SGLANG_CPU_AMX=0)")


def record_fields(kind: str, batch: Any, K: int, drafts: torch.Tensor, **extra: Any) -> dict[str, Any]:
    """One JSONL record of a draft step: request ids, K, the drafts [B][K] (target ids) and step details."""
    rec = {"kind": kind, "K": K, "rids": [getattr(r, "rid", None) for r in getattr(batch, "reqs", [])],
           "drafts": drafts.tolist()}
    for k, v in extra.items():
        rec[k] = v.tolist() if isinstance(v, torch.Tensor) else v
    return rec


# ---------------------------------------------------------------------------------------------- draft worker
class PEagleDraftWorker(EagleDraftWorker):
    """The draft side: no multi-step draft loop; one drafter forward in each draft-extend."""

    def __init__(self, server_args: Any, gpu_id: int, nccl_port: int, target_worker: Any, ps: Any = None) -> None:
        spec = get_spec()
        check_runtime(page_size=int(get_schedule().page_size or 1), tp_size=int(get_parallel().tp_size),
                      pp_size=int(get_parallel().pp_size), topk=int(spec.speculative_eagle_topk),
                      num_steps=int(spec.speculative_num_steps),
                      num_draft_tokens=int(spec.speculative_num_draft_tokens))
        install_model_class()
        compat.init_eagle_draft_worker(EagleDraftWorker, self, server_args, gpu_id, nccl_port, target_worker, ps)
        model = self.draft_runner.model
        if not isinstance(model, PedagleSglangDrafter):
            raise PEagleRuntimeError(f"the draft model is {type(model).__name__}, not pedagle's drafter: the pedagle "
                                     "plugin's hooks were not applied in this process (is SGLANG_PLUGINS excluding "
                                     "'pedagle'?)")
        self.model: PedagleSglangDrafter = model
        self.drafter = model.drafter
        self.K = int(self.speculative_num_steps)
        self.mask_token_id = drafter_mask_token(self.drafter, self.K)
        self.aux_layer_ids = configure_target_capture(target_worker.model_runner, self.drafter.config.aux_layer_ids)
        self.recorder = DraftRecordWriter() if os.environ.get(RECORD_ENV) else None
        self._config_recorded = False
        self._last_verify: Optional[tuple[torch.Tensor, torch.Tensor, bool]] = None
        self.overlap = not get_schedule().disable_overlap_schedule
        logger.info("pedagle: %s with K = %d (one drafter forward per step), aux layers %s, %s schedule", ALGORITHM,
                    self.K, self.aux_layer_ids, "overlap" if self.overlap else "synchronous")

    # ------------------------------------------------------------------ setup overrides
    def init_token_map(self):
        self.hot_token_id = None                       # pedagle maps draft ids with the head's own d2t

    def init_lm_head(self):
        """Share the target's embedding / lm_head only for the weights the head does not have."""
        if self.model.has_own_embed_tokens and self.model.has_own_lm_head:
            return
        embed, head = compat.shared_embed_and_head(self)         # (weight tensors) from the target
        if not self.model.has_own_embed_tokens:
            check_shareable(embed, "embed_tokens")
        if not self.model.has_own_lm_head:
            check_shareable(head, "lm_head")
        weight = lambda m: None if m is None else getattr(m, "weight", m)  # noqa: E731
        self.model.share_from_target(weight(embed), weight(head))

    def init_attention_backend(self):
        """Only the draft-extend backend: PEAGLE has no multi-step draft-decode forwards."""
        factory = compat.draft_backend_factory(DraftBackendFactory, self.server_args, self.draft_runner, self.topk,
                                               self.speculative_num_steps)
        self.draft_attn_backend = None
        self.draft_extend_attn_backend = factory.create_draft_extend_backend()
        self.draft_runner.draft_attn_backend = None
        if self.draft_extend_attn_backend is not None:
            self.draft_runner.attn_backend = self.draft_extend_attn_backend
        self.tree_mask_mode = default_tree_mask_mode()
        # Both run here, not in __init__: SGLang builds the draft runner's KV index translator in
        # alloc_memory_pool, and the scheduler initialises the target's attention backends (which re-set its
        # aux capture layers from spec_aux_config) just before this, before any CUDA graph is captured.
        if compat.kv_index_translating(self.draft_runner):
            raise PEagleRuntimeError("KV index translation (hierarchical / virtual KV ids) is not supported")
        check_target_capture(self.target_worker.model_runner.model, self.aux_layer_ids)

    def _capture_cuda_graphs(self):
        """SGLang's draft graph runners do not fit PEAGLE (no draft-decode loop; its draft extend has 2K rows per
        request, not K+1): both stay None. The decode draft step gets pedagle's own runner (`cuda_graphs`),
        captured on CUDA unless switched off; None runs it eagerly."""
        from .cuda_graphs import build_for_worker

        self.cuda_graph_runner = None
        self.cuda_graph_runner_for_draft_extend = None
        self.decode_draft_graphs = build_for_worker(self)

    # ------------------------------------------------------------------ helpers
    @property
    def req_to_token(self) -> torch.Tensor:
        return self.req_to_token_pool.req_to_token

    def _chain_buffers(self, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._topk1_parents_prealloc is not None and bs <= self._topk1_parents_prealloc.shape[0]:
            return self._topk1_parents_prealloc[:bs], self._topk1_score_indices_prealloc[:bs]
        K = self.K
        parents = torch.arange(-1, (K if K > 1 else 0) - 1, dtype=torch.long, device=self.device).repeat(bs, 1)
        scores = torch.arange(K, dtype=torch.long, device=self.device).repeat(bs, 1)
        return parents, scores

    def _idle_draft_input(self, bonus_tokens: Optional[torch.Tensor] = None) -> EagleDraftInput:
        di = EagleDraftInput.create_idle_input(device=self.device, hidden_size=None, dtype=None, topk=self.K,
                                               capture_hidden_mode=CaptureHiddenMode.NULL)
        if bonus_tokens is not None:
            di.bonus_tokens = bonus_tokens
        return di

    def _alloc_scratch(self, batch: ScheduleBatch, n: int) -> torch.Tensor:
        """``n`` KV slots for the MASK rows of a prefill draft step (freed after the forward). As SGLang's own
        allocations do, evict from the prefix (radix) cache first; the scheduler's prefill admission has
        reserved these slots (the plugin's admission reserve hook, `compat.slot_reserve_target`: K-1 per admitted
        request)."""
        evict_from_tree_cache(getattr(batch, "tree_cache", None), n)
        slots = self.token_to_kv_pool_allocator.alloc(n)
        if slots is None:
            raise PEagleRuntimeError(
                f"no free KV slots for the {n} MASK rows of a prefill draft step even after evicting the prefix "
                f"cache ({self.token_to_kv_pool_allocator.available_size()} free); the prefill admission should "
                f"have reserved them (is the pedagle plugin's hook on {compat.slot_reserve_target()} applied?)")
        return slots

    def _record_config(self, batch: ScheduleBatch) -> None:
        """First record of a run (when recording): what the engine is running with, read back from SGLang's
        objects — the target's aux capture layers (pedagle's convention), the drafter's aux ids, K, the draft
        runner's sliding window."""
        if self.recorder is None or self._config_recorded:
            return
        self._config_recorded = True
        tc = getattr(batch, "tree_cache", None)
        self.recorder.write({"kind": "config", "K": self.K, "aux_layer_ids": list(self.aux_layer_ids),
                             "target_layers_to_capture": captured_layers(self.target_worker.model_runner.model),
                             "draft_sliding_window_size": getattr(self.draft_runner, "sliding_window_size", None),
                             "layer_windows": [self.drafter.config.layer_window(i)
                                               for i in range(self.drafter.config.num_hidden_layers)],
                             "radix_cache": compat.prefix_sharing(tc),
                             "prefix_cache": type(tc).__name__, "overlap_schedule": self.overlap})

    def _run_drafter(self, forward_batch: ForwardBatch, B: int) -> torch.Tensor:
        logits = self.draft_runner.forward(forward_batch).logits_output.next_token_logits
        drafts, _ = greedy_drafts(self.drafter, logits, B, self.K)
        return drafts

    # ------------------------------------------------------------------ draft: no forward
    def draft(self, batch: ScheduleBatch, *, with_topology: bool = False):
        draft_input: EagleDraftInput = batch.spec_info
        K = self.K
        if batch.forward_mode.is_idle():
            vi = EagleVerifyInput.create_idle_input(self.topk, K, K + 1, self.device)
            return (vi, None, None) if with_topology else vi
        drafts = draft_input.topk_index
        bs = int(batch.seq_lens.shape[0])
        if drafts is None or tuple(drafts.shape) != (bs, K):
            raise PEagleRuntimeError(f"stored drafts have shape {None if drafts is None else tuple(drafts.shape)}; "
                                     f"expected [{bs}, {K}] (a batch not produced by the PEAGLE worker?)")
        drafts = drafts.to(torch.int64)
        parents, scores = self._chain_buffers(bs)
        verify_input = build_eagle_verify_input(
            batch, draft_input, parents, scores, drafts, None, target_worker=self.target_worker, topk=1,
            num_steps=K, num_draft_tokens=K + 1, tree_mask_mode=self.tree_mask_mode, device=self.device)
        relayed = getattr(draft_input, "future_indices", None) is not None       # came through the FutureMap
        self._last_verify = (draft_input.bonus_tokens.to(torch.int64), drafts, relayed)
        return (verify_input, parents, scores) if with_topology else verify_input

    # ------------------------------------------------------------------ prefill: prompt rows + K-1 MASK rows
    def _draft_extend_for_prefill(self, batch: ScheduleBatch, target_hidden_states: torch.Tensor,
                                  next_token_ids: torch.Tensor, mm_input_embeds: Optional[torch.Tensor] = None,
                                  kv_loc_plan: Any = None):
        K = self.K
        if batch.forward_mode.is_idle():
            return self._idle_draft_input(next_token_ids)
        if mm_input_embeds is not None:
            raise PEagleRuntimeError("multimodal inputs are not supported by the PEAGLE drafter")
        B = len(batch.reqs)
        dev = batch.seq_lens.device
        extend_lens = torch.as_tensor(batch.extend_lens, dtype=torch.int64, device=dev)
        prefix_lens = torch.as_tensor(batch.prefix_lens, dtype=torch.int64, device=dev)
        tail = _eagle_prefill_tail_tokens(batch, next_token_ids)
        step = layout.prefill_step_input(batch.input_ids, extend_lens, prefix_lens, tail, target_hidden_states)
        seq_lens = batch.seq_lens.to(torch.int64)                   # prompt length after this extend
        scratch = None
        if K > 1:
            scratch = self._alloc_scratch(batch, B * (K - 1))
            mask_locs = scratch.to(torch.int64).view(B, K - 1)
            mpos = layout.prefill_mask_positions(seq_lens, K)
            self.req_to_token[batch.req_pool_indices.to(torch.int64)[:, None], mpos] = mask_locs.to(
                self.req_to_token.dtype)
        else:
            mask_locs = torch.zeros((B, 0), dtype=torch.int64, device=dev)
        try:
            plan = plan_step(step, K, self.mask_token_id)
            lay = layout.prefill_extend_layout(batch.out_cache_loc, extend_lens, prefix_lens, mask_locs, K)
            fb = self._prefill_forward_batch(batch, plan, lay, target_hidden_states)
            drafts = self._run_drafter(fb, B)
        finally:
            if scratch is not None:
                self.token_to_kv_pool_allocator.free(scratch)
        if self.recorder is not None:
            self._record_config(batch)
            chunked = [r is getattr(batch, "chunked_req", None) for r in batch.reqs]   # not its last chunk
            self.recorder.write(record_fields("prefill", batch, K, drafts, seq_lens=seq_lens, next_token_ids=tail,
                                              chunked=chunked))
        return EagleDraftInput(topk_p=torch.ones((B, K), dtype=torch.float32, device=dev), topk_index=drafts,
                               hidden_states=None, bonus_tokens=next_token_ids, num_tokens_per_req=1,
                               num_tokens_for_logprob_per_req=1, capture_hidden_mode=CaptureHiddenMode.NULL)

    def _prefill_forward_batch(self, batch: ScheduleBatch, plan, lay: layout.ExtendLayout,
                               target_hidden_states: torch.Tensor) -> ForwardBatch:
        K = self.K
        b = copy.copy(batch)                           # init_new reads these fields; the scheduler's batch is kept
        b.input_ids = plan.expanded.input_ids
        b.out_cache_loc = lay.out_cache_loc
        b.seq_lens = lay.seq_lens.to(batch.seq_lens.dtype)
        if batch.seq_lens_cpu is not None:
            b.seq_lens_cpu = batch.seq_lens_cpu + (K - 1)
            b.seq_lens_sum = int(b.seq_lens_cpu.sum())
        else:
            b.seq_lens_sum = None
        b.extend_lens = [int(x) + K - 1 for x in batch.extend_lens]
        b.extend_num_tokens = int(plan.expanded.num_rows)
        b.extend_logprob_start_lens = [0] * len(batch.reqs) if batch.extend_logprob_start_lens is not None else None
        b.return_logprob = False
        spec = EagleDraftExtendInput(hidden_states=target_hidden_states, num_tokens_per_req=1,
                                     num_tokens_for_logprob_per_req=1)
        spec.positions = plan.expanded.positions
        spec.pedagle_plan = plan
        b.spec_info = spec
        fb = ForwardBatch.init_new(b, self.draft_runner, capture_hidden_mode=CaptureHiddenMode.NULL,
                                   return_hidden_states_before_norm=False)
        fb.return_logprob = False
        return fb

    # ------------------------------------------------------------------ decode: the one drafter forward
    def _draft_extend_for_decode(self, batch: ScheduleBatch, batch_result: Any, *, kv_loc_plan: Any = None):
        K = self.K
        nxt = batch_result.next_draft_input
        if batch.forward_mode.is_idle():
            nxt.topk_index = torch.empty((0, K), dtype=torch.int64, device=self.device)
            nxt.topk_p = torch.empty((0, K), dtype=torch.float32, device=self.device)
            nxt.hidden_states = None
            return
        if self._last_verify is None:
            raise PEagleRuntimeError("draft-extend after a verify that PEAGLE's draft() did not build")
        bonus, drafts, relayed = self._last_verify
        self._last_verify = None
        B = int(drafts.shape[0])
        accept_lens = batch_result.accept_lens.to(torch.int64)
        predict = batch_result.next_token_ids.to(torch.int64)
        if predict.numel() == B * (K + 1):             # the target's prediction at every verify row
            new_bonus = predict.view(B, K + 1).gather(1, (accept_lens - 1)[:, None]).view(B)
        else:
            new_bonus = nxt.bonus_tokens.to(torch.int64)
        aux = batch_result.logits_output.hidden_states
        graphs = getattr(self, "decode_draft_graphs", None)
        graph_bs = None
        if graphs is not None and graphs.can_run(B):   # static buffers, padded to a captured size, replayed
            new_drafts = graphs.run(bonus, drafts, batch.seq_lens, accept_lens, new_bonus, aux, batch.req_pool_indices)
            graph_bs = graphs.last_bs
        else:
            new_drafts = self._decode_drafts_eager(batch, bonus, drafts, accept_lens, new_bonus, aux)
        if self.recorder is not None:
            self.recorder.write(record_fields("decode", batch, K, new_drafts, seq_lens=batch.seq_lens,
                                              verified=drafts, accept_lens=accept_lens, next_token_ids=new_bonus,
                                              graph_bs=graph_bs, relayed=relayed))
        nxt.topk_index = new_drafts
        nxt.topk_p = torch.ones((B, K), dtype=torch.float32, device=new_drafts.device)
        nxt.hidden_states = None

    def _decode_drafts_eager(self, batch: ScheduleBatch, bonus: torch.Tensor, drafts: torch.Tensor,
                             accept_lens: torch.Tensor, new_bonus: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """The decode draft step without graphs: the next drafts [B, K] (target ids)."""
        K, B = self.K, int(drafts.shape[0])
        step = layout.decode_step_input(bonus, drafts, batch.seq_lens, accept_lens, new_bonus, aux)
        plan = plan_step(step, K, self.mask_token_id)
        lay = layout.decode_extend_layout(self.req_to_token, batch.req_pool_indices, batch.seq_lens, K)
        width = layout.decode_window(K)
        spec = EagleDraftExtendInput(hidden_states=aux, num_correct_drafts=(accept_lens - 1).to(torch.int32),
                                     num_accept_tokens=accept_lens.to(torch.int32), num_tokens_per_req=width,
                                     num_tokens_for_logprob_per_req=K)
        spec.positions = plan.expanded.positions
        spec.pedagle_plan = plan
        b = copy.copy(batch)
        b.out_cache_loc = lay.out_cache_loc
        fb = prepare_for_draft_extend(spec, b, plan.expanded.input_ids, width, self.draft_runner, None,
                                      return_hidden_states_before_norm=False,
                                      **compat.draft_extend_kwargs(prepare_for_draft_extend))
        return self._run_drafter(fb, B)


step_timer.instrument(PEagleDraftWorker)   # CUDA events around the decode draft step when PEDAGLE_SGLANG_TIME_DRAFT is set


# ---------------------------------------------------------------------------------------------- worker
class PEagleWorkerV2(EAGLEWorkerV2):
    """``EAGLEWorkerV2`` whose draft worker is `PEagleDraftWorker` (its ``__init__`` mirrors the base class, which
    hard-codes ``EagleDraftWorker``); verify and the scheduler-facing API are SGLang's."""

    def __init__(self, server_args: Any, gpu_id: int, nccl_port: int, target_worker: Any, ps: Any = None) -> None:
        """SGLang's scheduler passes keywords; ``ps`` (a ParallelState) only where ``EAGLEWorkerV2`` takes it
        (`compat.worker_init_takes_ps`: 0.5.17, whose ``update_weights_from_tensor`` reads ``self.ps``)."""
        BaseSpecWorker.__init__(self)
        self.ps = ps
        self.server_args = server_args
        self.topk = get_spec().speculative_eagle_topk
        self.speculative_num_steps = get_spec().speculative_num_steps
        self.speculative_num_draft_tokens = get_spec().speculative_num_draft_tokens
        self.gpu_id = gpu_id
        self.device = get_device().device
        self._target_worker = target_worker
        self.page_size = get_schedule().page_size
        self.speculative_algorithm = SpeculativeAlgorithm.from_string(get_spec().speculative_algorithm)
        self.enable_dp_spec_prefill_coordination = False
        self._hosts_draft = True
        self._draft_worker = PEagleDraftWorker(server_args, gpu_id, nccl_port, target_worker, ps=ps)
        self.adaptive_controller = None
        self.num_new_pages_per_topk = torch.empty((), dtype=torch.int64, device=self.device)
        self.extend_lens = torch.empty((), dtype=torch.int64, device=self.device)
        self.plan_stream, self.plan_stream_ctx = get_plan_stream(self.device)

    @property
    def spec_v2_attn_backends(self) -> tuple:
        dw = self._draft_worker
        return (self._target_worker.model_runner.attn_backend,
                dw.draft_extend_attn_backend or dw.draft_runner.attn_backend)


__all__ = ["PEagleWorkerV2", "PEagleDraftWorker", "PEagleRuntimeError", "check_runtime", "check_shareable",
           "configure_target_capture", "record_fields"]
