"""One P-EAGLE draft step on SGLang state, engine-side glue around the core (no SGLang import here).

`plan_step` expands a `StepInput` (built by `layout.decode_step_input` / `layout.prefill_step_input`) with
`pedagle_core.expand.expand_metadata` against SGLang's token-level page table; `forward_plan` runs the core
drafter over the plan with any attention provider and returns logits of the K sample rows only;
`greedy_drafts` reads the drafts out (``d2t`` to target ids). The SGLang model class (`model.py`) calls
`forward_plan` with the RadixAttention provider; the CPU tests call it with SGLang's torch-native backend and
compare with `pedagle_core.draft.draft_parallel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pedagle_core.attention import AttentionProvider
from pedagle_core.draft import StepInput, check_k
from pedagle_core.expand import ExpandedBatch, expand_metadata, place_hidden
from pedagle_core.model import Drafter

from . import layout


@dataclass
class DraftPlan:
    """What the drafter forward of one step needs besides SGLang's forward batch."""

    K: int
    aux_hidden: Tensor            # [T, n_aux*Ht] target aux hidden states of the step's target rows
    expanded: ExpandedBatch       # [T'] rows, T' = T + B*(K-1), request-major, contiguous per request

    @property
    def num_requests(self) -> int:
        return self.expanded.num_requests

    @property
    def sample_rows(self) -> Tensor:
        return self.expanded.sample_rows


def plan_step(step: StepInput, K: int, mask_token_id: int) -> DraftPlan:
    """Expand one step for a drafter forward: tokens, positions, MASK / sample rows, hidden-state placement.

    The expansion's slot mapping is not used: SGLang's attention writes each row's KV at the forward batch's
    ``out_cache_loc`` (`layout.decode_extend_layout` / `layout.prefill_extend_layout`) and reads keys through
    ``req_to_token``. So the core gets `layout.no_block_table` ([B, 1] zeros: slots meaningless, never read)
    instead of the batch's ``req_to_token`` rows (B x context length gathered per step)."""
    B = int(step.query_start_loc.shape[0]) - 1
    bt, bs, mml = layout.no_block_table(B, step.token_ids.device)
    impl = "auto" if step.token_ids.device.type == "cuda" else "torch"
    expanded = expand_metadata(step.token_ids, step.positions, step.query_start_loc, step.num_rejected,
                               step.next_token_ids, K, int(mask_token_id), bt, bs, mml, impl=impl)
    return DraftPlan(K=K, aux_hidden=step.aux_hidden, expanded=expanded)


def drafter_mask_token(drafter: Drafter, K: int) -> int:
    check_k(drafter, K, parallel=True)
    return int(drafter.config.mask_token_id) if drafter.config.mask_token_id is not None else 0


def forward_plan(drafter: Drafter, plan: DraftPlan, input_ids: Tensor, positions: Tensor,
                 attn: AttentionProvider) -> Tensor:
    """Drafter forward over the expanded rows -> draft-vocabulary logits of the sample rows [B*K, Vd]
    (request-major: bonus row, then the K-1 MASK rows). fc(aux) fills the target rows, fc(mask_hidden) the
    MASK rows; lm_head runs on the B*K sample rows only."""
    fc_out = drafter.project_hidden(plan.aux_hidden.to(drafter.fc.weight.dtype))
    mask_vec = drafter.mask_hidden_projected() if plan.K > 1 else fc_out.new_zeros(fc_out.shape[-1])
    impl = "auto" if fc_out.device.type == "cuda" else "torch"
    hidden = place_hidden(fc_out, plan.expanded, mask_vec, impl=impl)
    out, _ = drafter(input_ids, positions, hidden, attn)
    return drafter.compute_logits(out[plan.sample_rows])


def greedy_drafts(drafter: Drafter, logits: Tensor, B: int, K: int) -> tuple[Tensor, Tensor]:
    """(target ids [B, K], draft-vocabulary ids [B, K]) of the argmax of each sample row."""
    draft_ids = logits.float().argmax(dim=-1)
    return drafter.to_target_ids(draft_ids).view(B, K), draft_ids.view(B, K)


__all__ = ["DraftPlan", "plan_step", "drafter_mask_token", "forward_plan", "greedy_drafts"]
