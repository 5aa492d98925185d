"""pedagle's P-EAGLE speculator for vLLM's model runner V2: K drafts per request from ONE drafter forward.

Model runner V2 (``vllm/v1/worker/gpu``) drafts through a speculator object (``BaseSpeculator``: ``propose``,
``init_cudagraph_manager``, ``capture``; ``DraftModelSpeculator`` loads the draft model and its attention
groups). vLLM's own EAGLE speculator runs the head autoregressively (K forwards); `PedagleSpeculator` runs
pedagle's P-EAGLE drafter once per step:

1. fc(aux hidden states) of the T target rows (the head's ``combine_hidden_states``);
2. `v2_inputs.prepare_peagle_inputs`: the expansion of `pedagle_core.expand` (its Triton kernel on CUDA)
   written into this speculator's persistent buffers: ids, positions, hidden rows (fc(mask_hidden) in the K-1
   MASK rows), the KV slot mapping, the extended ``query_start_loc`` / ``seq_lens`` (queries K-1 rows longer
   than the target's), the B*K rows to sample;
3. attention metadata for those queries, built by the draft layers' own attention builders;
4. one forward of the drafter (`model.PedagleEagle3LlamaForCausalLM` / Qwen3, the same model code as every
   other backend), logits of the B*K sample rows, argmax -> drafts [B, K].

**CUDA graphs** (written for vLLM's V2 graph manager; NOT yet run on a GPU: model runner V2 needs Triton, which
vLLM's CPU build lacks, so only the input preparation and the drafting math are tested, on the CPU). A decode step has K+1 target rows per request, so the drafter's query is 2K rows per request:
such uniform batches replay a FULL graph of steps 3-4's GPU work (forward, logits, argmax, the copy into
``draft_tokens``) captured per padded batch size, like vLLM's DFlash speculator (FULL_DECODE_ONLY, decode
query length 1+K there, 2K here). The expansion (step 2) and the metadata build run before the replay,
eagerly, into the buffers the graph reads. Mixed batches (prefill chunks) run eagerly. Graphs are used only
when the target runs FULL decode graphs and every draft attention backend supports uniform batches.

Only greedy drafting (``draft_sample_method`` "greedy", vLLM's default) is implemented; verification by the
target (greedy or sampling) is vLLM's. Version differences of V2 (``propose``'s parameters, the shape of
``next_prefill_tokens``) are read from `compat`. Runs on a GPU only (V2 needs Triton; vLLM's CPU build runs V1).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from vllm.config import VllmConfig
from vllm.config.compilation import CUDAGraphMode
from vllm.forward_context import BatchDescriptor, set_forward_context
from vllm.v1.attention.backend import AttentionCGSupport
from vllm.v1.worker.gpu.attn_utils import build_attn_metadata, build_slot_mappings_by_layer
from vllm.v1.worker.gpu.cudagraph_utils import BatchExecutionDescriptor, CudaGraphManager
from vllm.v1.worker.gpu.input_batch import InputBatch
from vllm.v1.worker.gpu.spec_decode.eagle.utils import load_eagle_model
from vllm.v1.worker.gpu.spec_decode.speculator import DraftModelSpeculator

from pedagle_core.draft_record import RECORD_ENV, DraftRecordWriter

from .compat import v2_block_size, v2_cudagraph_manager
from .v2_inputs import DraftBuffers, PreparedStep, bonus_positions, next_token_ids, prepare_peagle_inputs
from .v2_state import building_for_v2, tp_rank

logger = logging.getLogger("pedagle.vllm")


class PedagleSpeculator(DraftModelSpeculator):
    """P-EAGLE drafting for model runner V2 (module docstring)."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, **kwargs: Any) -> None:
        super().__init__(vllm_config, device)
        if self.speculative_config.draft_sample_method not in (None, "greedy"):
            raise ValueError(f"speculative_config.draft_sample_method = "
                             f"{self.speculative_config.draft_sample_method!r}; pedagle's P-EAGLE speculator "
                             "drafts greedily (expected 'greedy', vLLM's default)")
        dcp = int(getattr(vllm_config.parallel_config, "decode_context_parallel_size", 1) or 1)
        if dcp > 1:
            raise ValueError(f"decode_context_parallel_size = {dcp}; pedagle's P-EAGLE speculator for model runner V2 "
                             "supports 1")
        if self.dp_size > 1:
            raise ValueError(f"data_parallel_size = {self.dp_size}; pedagle's P-EAGLE speculator for model runner V2 "
                             "supports 1 (tensor parallelism is supported)")
        K = int(self.num_speculative_steps)
        self.K = K
        self.num_query_per_req = 2 * K                   # a decode step's drafter query per request
        self.max_rows = self.max_num_tokens + self.max_num_reqs * (K - 1)
        self.draft_input_ids = torch.zeros(self.max_rows, dtype=torch.int64, device=device)
        self.draft_positions = torch.zeros(self.max_rows, dtype=torch.int64, device=device)
        self.draft_hidden = torch.zeros(self.max_rows, self.hidden_size, dtype=self.dtype, device=device)
        self.sample_rows = torch.zeros(self.max_num_reqs * K, dtype=torch.int64, device=device)
        self.draft_slots: torch.Tensor | None = None     # [kv groups, max_rows], set in set_attn
        self.mask_vec: torch.Tensor | None = None        # [H] fc(mask_hidden), set in load_model
        self.cudagraph_manager: CudaGraphManager | None = None
        self.supports_mm_inputs = False
        self._recorder: DraftRecordWriter | None = None
        if os.environ.get(RECORD_ENV):
            self._recorder = DraftRecordWriter(os.environ[RECORD_ENV])

    # ------------------------------------------------------------------ loading
    def load_draft_model(self, target_model: nn.Module, target_attn_layer_names: set[str]) -> nn.Module:
        from .model import is_pedagle_drafter

        with building_for_v2():
            model = load_eagle_model(target_model, self.vllm_config)
        if not is_pedagle_drafter(model):
            raise RuntimeError(f"pedagle: model runner V2 built {type(model).__name__} for this head; pedagle's "
                               "P-EAGLE speculator needs pedagle's drafter (is the pedagle plugin in VLLM_PLUGINS?)")
        mask_id = int(model.pedagle_config.mask_token_id) if model.pedagle_config.mask_token_id is not None else None
        if self.K > 1 and mask_id is None:
            raise RuntimeError(f"pedagle: the P-EAGLE head {model._pedagle_read.path} has no mask token id; "
                               "expected mask_token_id (or ptd_token_id) in its config.json")
        self.mask_token_id = mask_id or 0
        return model

    def load_model(self, target_model: nn.Module) -> None:
        super().load_model(target_model)
        with torch.inference_mode():
            mask_hidden = self.model.mask_hidden.to(self.device, self.dtype)
            self.mask_vec = self.model.combine_hidden_states(mask_hidden.view(1, -1))[0].clone()

    def set_attn(self, *args: Any, **kwargs: Any) -> None:
        super().set_attn(*args, **kwargs)
        groups = [gid for gid, g in enumerate(self.attn_groups) if g]
        if len(groups) != 1:
            raise RuntimeError(f"pedagle: the drafter's attention layers are in KV-cache groups {groups}; expected "
                               "one group (pedagle's drafter layers share the target's block table)")
        self.draft_group = groups[0]
        self.block_size = v2_block_size(self.block_tables, self.draft_group)
        self.draft_slots = torch.full((len(self.attn_groups), self.max_rows), -1, dtype=torch.int64,
                                      device=self.device)

    def buffers(self) -> DraftBuffers:
        assert self.draft_slots is not None, "set_attn has not run"
        return DraftBuffers(input_ids=self.draft_input_ids, positions=self.draft_positions,
                            hidden_states=self.draft_hidden, slot_mapping=self.draft_slots[self.draft_group],
                            query_start_loc=self.input_buffers.query_start_loc, seq_lens=self.input_buffers.seq_lens,
                            sample_rows=self.sample_rows)

    # ------------------------------------------------------------------ CUDA graphs
    def init_cudagraph_manager(self, cudagraph_mode: CUDAGraphMode) -> None:
        wants_full = cudagraph_mode.decode_mode() == CUDAGraphMode.FULL
        supports_full = self.attn_cg_support.min_cg_support.value >= AttentionCGSupport.UNIFORM_BATCH.value
        if wants_full and not supports_full:
            logger.warning("pedagle: draft attention (%s) has no full CUDA graphs for uniform batches; the P-EAGLE "
                           "draft step runs eagerly", self.attn_cg_support.min_cg_attn_backend)
        mode = CUDAGraphMode.FULL_DECODE_ONLY if wants_full and supports_full else CUDAGraphMode.NONE
        self.cudagraph_manager = v2_cudagraph_manager(self.vllm_config, self.device, mode, self.num_query_per_req,
                                                      self.max_num_reqs)

    def capture(self) -> None:
        assert self.cudagraph_manager is not None
        if not self.cudagraph_manager.needs_capture():
            return
        logger.info("pedagle: capturing the P-EAGLE draft step (FULL graphs, %d rows per request)",
                    self.num_query_per_req)
        self.sample_rows.zero_()

        def create_forward_fn(desc: BatchExecutionDescriptor, warmup: bool):
            num_tokens = desc.num_tokens
            num_reqs = desc.num_reqs or max(1, num_tokens // self.num_query_per_req)
            attn_metadata, slots = self._capture_inputs(num_reqs, num_tokens)
            return lambda cg_mode: self._draft(num_reqs, num_tokens, attn_metadata, slots, None, cg_mode)

        self.cudagraph_manager.capture(create_forward_fn, progress_bar_desc="Capturing pedagle P-EAGLE graphs")

    def _capture_inputs(self, num_reqs: int, num_tokens: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Dummy uniform batch for capture: num_reqs queries of 2K rows, no KV written (slots -1)."""
        q = self.num_query_per_req
        assert self.draft_slots is not None
        self.draft_slots.fill_(-1)
        self.draft_input_ids[:num_tokens].zero_()
        self.draft_positions[:num_tokens].copy_(torch.arange(num_tokens, device=self.device) % q)
        qsl = torch.arange(num_reqs + 1, dtype=torch.int32) * q
        self.input_buffers.query_start_loc[:num_reqs + 1].copy_(qsl)
        self.input_buffers.query_start_loc[num_reqs + 1:].fill_(num_tokens)
        self.input_buffers.seq_lens[:num_reqs].fill_(q)
        self.input_buffers.seq_lens[num_reqs:].zero_()
        # max_seq_len: the longest a replay may see (backends size per-graph scheduling state by it)
        metadata = self._attn_metadata(num_reqs, num_reqs, num_tokens, qsl, q, int(self.max_model_len),
                                       for_capture=True)
        return metadata, build_slot_mappings_by_layer(self.draft_slots[:, :num_tokens], self.kv_cache_config)

    # ------------------------------------------------------------------ one step
    def _attn_metadata(self, num_reqs: int, num_reqs_padded: int, num_tokens: int, qsl_cpu: torch.Tensor,
                       max_query_len: int, max_seq_len: int, for_capture: bool = False) -> dict[str, Any]:
        assert self.draft_slots is not None
        if qsl_cpu.shape[0] < num_reqs_padded + 1:
            qsl_cpu = torch.cat([qsl_cpu, qsl_cpu[-1:].expand(num_reqs_padded + 1 - qsl_cpu.shape[0])])
        return build_attn_metadata(
            attn_groups=self.attn_groups, num_reqs=num_reqs_padded, num_tokens=num_tokens,
            query_start_loc_gpu=self.input_buffers.query_start_loc[:num_reqs_padded + 1],
            query_start_loc_cpu=qsl_cpu.to(torch.int32), max_query_len=max_query_len,
            seq_lens=self.input_buffers.seq_lens[:num_reqs_padded], max_seq_len=max_seq_len,
            block_tables=[b[:num_reqs_padded] for b in self.block_tables.input_block_tables],
            slot_mappings=self.draft_slots[:, :num_tokens], kv_cache_config=self.kv_cache_config,
            for_cudagraph_capture=for_capture)

    @torch.inference_mode()
    def _draft(self, num_reqs: int, num_tokens: int, attn_metadata: dict[str, Any] | None,
               slot_mappings: dict[str, Any] | None, num_tokens_across_dp: torch.Tensor | None,
               cg_mode: CUDAGraphMode = CUDAGraphMode.NONE) -> None:
        """Forward over the buffers' first num_tokens rows, then the drafts of num_reqs requests (the GPU work a
        FULL graph captures)."""
        with set_forward_context(attn_metadata, self.vllm_config, num_tokens=num_tokens,
                                 cudagraph_runtime_mode=cg_mode, num_tokens_across_dp=num_tokens_across_dp,
                                 slot_mapping=slot_mappings, batch_descriptor=BatchDescriptor(num_tokens=num_tokens)):
            out = self.model(input_ids=self.draft_input_ids[:num_tokens], positions=self.draft_positions[:num_tokens],
                             hidden_states=self.draft_hidden[:num_tokens], inputs_embeds=None)
        last = out[0] if isinstance(out, tuple) else out
        rows = self.sample_rows[:num_reqs * self.K]
        drafts = self.model.compute_logits(last[rows]).argmax(dim=-1)
        self.draft_tokens[:num_reqs].copy_(drafts.view(num_reqs, self.K))

    @torch.inference_mode()
    def propose(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """V2's ``BaseSpeculator.propose`` (its parameters differ between releases: `compat.v2_propose_arguments`)."""
        from .compat import v2_propose_arguments

        call = v2_propose_arguments(args, kwargs)
        arg = lambda name, default=None: call.get(name, default)   # noqa: E731
        input_batch: InputBatch = arg("input_batch")
        aux = arg("aux_hidden_states")
        if not aux:
            raise RuntimeError("pedagle: model runner V2 passed no aux hidden states; a P-EAGLE head needs the "
                               "target's EAGLE-3 aux layers (speculative method 'eagle3')")
        num_reqs, T = int(input_batch.num_reqs), int(input_batch.num_tokens)
        fc_out = self.model.combine_hidden_states(torch.cat([h[:T] for h in aux], dim=-1))
        dummy_run, skip_attn = bool(arg("dummy_run", False)), bool(arg("skip_attn_for_dummy_run", False))
        n = T + num_reqs * (self.K - 1)
        # memory profiling (no KV cache yet), or a dummy batch larger than any real step (the scheduler keeps
        # K-1 rows per request free, so real steps fit max_num_batched_tokens): no metadata, drafts discarded.
        # The forward runs at most max_num_batched_tokens rows: vLLM compiles the drafter for token counts up to
        # it (the last compile range; a larger count fails its assertion), and no real step has more rows.
        if dummy_run and (skip_attn or n > self.max_num_tokens):
            rows = min(n, self.max_num_tokens)              # >= T: a dummy batch has at most that many rows
            self.draft_hidden[:T].copy_(fc_out)
            self.sample_rows[:num_reqs * self.K].zero_()
            self._draft(num_reqs, rows, None, None, arg("num_tokens_across_dp"))
            return self.draft_tokens[:num_reqs]
        if n > self.max_num_tokens:
            # only vLLM's start-up kernel warm-up (gpu/warmup.py: a prefill of max_num_seqs requests of K+2
            # tokens, not scheduled) can get here; its requests are dropped right after, so they get no drafts
            logger.warning("pedagle: a step of %d drafter rows exceeds max_num_batched_tokens = %d (vLLM's "
                           "warm-up); no drafts for it", n, self.max_num_tokens)
            self.draft_tokens[:num_reqs].zero_()
            return self.draft_tokens[:num_reqs]

        sched = [int(x) for x in input_batch.num_scheduled_tokens[:num_reqs]]
        uniform = all(x == self.K + 1 for x in sched)
        desc = self._dispatch(num_reqs, T + num_reqs * (self.K - 1), uniform, bool(arg("is_profile", False)))
        padded_rows = desc.num_tokens if desc.cg_mode == CUDAGraphMode.FULL else T + num_reqs * (self.K - 1)
        num_reqs_padded = (desc.num_reqs or num_reqs) if desc.cg_mode == CUDAGraphMode.FULL else num_reqs
        idx = input_batch.idx_mapping[:num_reqs]
        nxt = next_token_ids(idx, arg("num_sampled")[:num_reqs], arg("last_sampled"), arg("next_prefill_tokens"))
        num_rejected = arg("num_rejected")[:num_reqs]
        step: PreparedStep = prepare_peagle_inputs(
            self.buffers(), token_ids=input_batch.input_ids[:T], positions=input_batch.positions[:T],
            query_start_loc=input_batch.query_start_loc[:num_reqs + 1], num_rejected=num_rejected,
            next_tokens=nxt, fc_out=fc_out, mask_vec=self.mask_vec, seq_lens=input_batch.seq_lens[:num_reqs],
            K=self.K, mask_token_id=self.mask_token_id,
            block_table=self.block_tables.input_block_tables[self.draft_group][:num_reqs],
            block_size=self.block_size, max_model_len=int(self.max_model_len), num_scheduled_tokens=sched,
            num_rows_padded=padded_rows)
        qsl_cpu = torch.from_numpy(input_batch.query_start_loc_np[:num_reqs + 1]).long() + \
            torch.arange(num_reqs + 1) * (self.K - 1)
        max_seq = int(input_batch.seq_lens_cpu_upper_bound[:num_reqs].max()) + self.K - 1
        attn_metadata = self._attn_metadata(num_reqs, num_reqs_padded, padded_rows, qsl_cpu, step.max_query_len,
                                            min(max_seq, int(self.max_model_len)))
        slot_mappings = build_slot_mappings_by_layer(self.draft_slots[:, :padded_rows], self.kv_cache_config)
        self._prepare_eplb_forward(step.num_rows)
        if desc.cg_mode == CUDAGraphMode.FULL:
            self.cudagraph_manager.run_fullgraph(desc)
        else:
            self._draft(num_reqs, padded_rows, attn_metadata, slot_mappings, arg("num_tokens_across_dp"))
        drafts = self.draft_tokens[:num_reqs]
        if self._recorder is not None and not dummy_run:
            self._record(input_batch, num_reqs, nxt, num_rejected, drafts)
        return drafts

    def _dispatch(self, num_reqs: int, num_rows: int, uniform: bool, need_eager: bool) -> BatchExecutionDescriptor:
        if need_eager or self.cudagraph_manager is None or not uniform or self.dp_size > 1:
            return BatchExecutionDescriptor(cg_mode=CUDAGraphMode.NONE, num_tokens=num_rows, num_reqs=num_reqs)
        return self.cudagraph_manager.dispatch(num_reqs, num_rows, self.num_query_per_req, num_active_loras=0)

    def _record(self, input_batch: InputBatch, num_reqs: int, nxt: torch.Tensor, num_rejected: torch.Tensor,
                drafts: torch.Tensor) -> None:
        if tp_rank() != 0:
            return
        assert self._recorder is not None
        self._recorder.write({"K": self.K, "runner": "v2",
                              "bonus_positions": bonus_positions(self.buffers(), num_reqs, self.K).tolist(),
                              "next_token_ids": nxt.tolist(), "num_rejected": num_rejected.tolist(),
                              "req_ids": list(input_batch.req_ids[:num_reqs]), "drafts": drafts.tolist()})


__all__ = ["PedagleSpeculator"]
