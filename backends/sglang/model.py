"""pedagle's EAGLE-3 / P-EAGLE drafter as an SGLang model class.

SGLang's draft ``ModelRunner`` builds the draft model from the architecture name in the drafter's
``config.json``. Under ``--speculative-algorithm PEAGLE`` the plugin renames that architecture (only in the
draft ``ModelConfig``) to `ARCHITECTURE` and registers this class under it, so SGLang's stock
``LlamaForCausalLMEagle3`` — whose loader silently drops ``mask_hidden`` — is never used. Here:

* ``self.drafter`` is a `pedagle_core.model.Drafter` (the drafter math, transformers' weight names);
* attention goes to `attention.SglangAttention` (one ``RadixAttention`` per drafter layer, so SGLang
  allocates the draft KV pool for them and runs its attention backend);
* weights are read and validated by `pedagle_core.formats` (vLLM/published-head or speculators format,
  strict: a missing, misshapen or non-finite tensor raises `CheckpointError`); SGLang's weight iterator is
  not read. ``embed_tokens`` / ``lm_head`` may be absent: the worker then shares the target's;
* ``forward`` expects the worker's `drafting.DraftPlan` on ``forward_batch.spec_info.pedagle_plan`` and
  returns logits of the K sample rows per request only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from pedagle_core.config import DrafterConfig
from pedagle_core.formats import CheckpointError, load_into_drafter, prepare, read_config
from pedagle_core.model import Drafter

from .attention import SglangAttention
from .drafting import forward_plan

logger = logging.getLogger("pedagle.sglang")

ARCHITECTURE = "PedagleSglangDrafter"


def checkpoint_dir(config: Any) -> Path:
    """Local directory of the drafter checkpoint: SGLang's ``--speculative-draft-model-path`` when it is a
    directory, else the HF config's ``name_or_path``, else a hub snapshot (json + safetensors only)."""
    candidates = []
    try:
        from sglang.srt.runtime_context import get_spec

        candidates.append(get_spec().speculative_draft_model_path)
    except Exception:  # noqa: BLE001 - no published SGLang context (tests)
        pass
    candidates += [getattr(config, "_name_or_path", None), getattr(config, "name_or_path", None)]
    for c in candidates:
        if c and Path(str(c)).is_dir():
            return Path(str(c))
    name = next((c for c in candidates if c), None)
    if name is None:
        raise CheckpointError("pedagle SGLang drafter: no drafter checkpoint path (speculative_draft_model_path)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name), allow_patterns=["*.json", "*.safetensors"]))


def resolve_mode(cfg: DrafterConfig) -> str:
    """'parallel' when the head has a mask token (P-EAGLE), else 'autoregressive' (K must then be 1)."""
    return "parallel" if cfg.mask_token_id is not None else "autoregressive"


class PedagleSglangDrafter(nn.Module):
    """SGLang model class (``config``, ``quant_config``, ``prefix``) wrapping a pedagle `Drafter`."""

    def __init__(self, config: Any = None, quant_config: Any = None, prefix: str = "",
                 checkpoint: str | os.PathLike | None = None) -> None:
        super().__init__()
        if quant_config is not None:
            raise CheckpointError("pedagle SGLang drafter: quantized drafters are not supported "
                                  "(--speculative-draft-model-quantization must be unset)")
        self.config = config
        ckpt = Path(checkpoint) if checkpoint is not None else checkpoint_dir(config)
        # pedagle_core.formats' strict reading without a target (the worker shares embed_tokens / lm_head):
        # config + tensor directory now, the tensor data in load_weights
        read = prepare(ckpt, resolve_mode(read_config(ckpt)[0]))
        self._pedagle_read = read
        cfg: DrafterConfig = read.config
        self.pedagle_config = cfg
        self.drafter = Drafter(cfg)
        self.attn = SglangAttention(cfg, prefix=f"{prefix}.model" if prefix else "model")
        self.has_own_embed_tokens = cfg.has_embed_tokens
        self.has_own_lm_head = cfg.has_lm_head
        # What SGLang's runner / EAGLE worker read on a draft model
        self.capture_aux_hidden_states = False
        self.hot_token_id = None                 # d2t is applied by pedagle's readout, not by the worker
        self.load_lm_head_from_target = False
        from sglang.srt.runtime_context import get_parallel

        try:
            self.pp_group = get_parallel().pp_group
        except Exception:  # noqa: BLE001 - no published parallel context (tests)
            self.pp_group = None

    # ------------------------------------------------------------------ what SGLang calls
    def get_input_embeddings(self) -> nn.Module:
        return self.drafter.embed_tokens

    def get_hot_token_id(self):
        return None

    def get_attention_sliding_window_size(self) -> int | None:
        """SGLang's model-level sliding window (its ``sliding_window_size`` convention, `attention.sglang_window`)
        of the drafter's windowed layers, None when every layer attends fully. SGLang's draft runner reads it at
        load time (``resolve_sliding_window_size``); attention backends size their window metadata from it
        (Triton, FlashInfer) while each ``RadixAttention`` layer carries its own window."""
        return self.attn.model_window

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: Any, **kwargs: Any):
        """One drafter forward over ``forward_batch`` (its rows = the plan's expanded rows)."""
        from sglang.srt.layers.logits_processor import LogitsProcessorOutput

        plan = getattr(forward_batch.spec_info, "pedagle_plan", None)
        if plan is None:
            raise RuntimeError("pedagle SGLang drafter: forward without a pedagle draft plan (spec_info."
                               "pedagle_plan); this model runs only under --speculative-algorithm PEAGLE")
        if input_ids.shape[0] != plan.expanded.num_rows:
            raise RuntimeError(f"pedagle SGLang drafter: forward batch has {input_ids.shape[0]} rows; the draft "
                               f"plan has {plan.expanded.num_rows}")
        logits = forward_plan(self.drafter, plan, input_ids, positions, self.attn.bind(forward_batch))
        return LogitsProcessorOutput(next_token_logits=logits, hidden_states=None)

    def compute_sample_logits(self, forward_batch: Any) -> torch.Tensor:
        """Like ``forward`` for a prepared batch, without SGLang's runner (tests)."""
        return self.forward(forward_batch.input_ids, forward_batch.positions, forward_batch).next_token_logits

    # ------------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
        """Load through `pedagle_core.formats` (strict); SGLang's iterator over the same files is not read."""
        close = getattr(weights, "close", None)
        if close is not None:
            close()
        read = self._pedagle_read
        tensors = load_into_drafter(self.drafter, read)
        self.has_own_embed_tokens = "embed_tokens.weight" in tensors
        self.has_own_lm_head = "lm_head.weight" in tensors
        if self.drafter.fc.weight.device.type == "cuda":
            # q/k/v and gate/up in one product each, as SGLang's own drafters compute them, through pedagle's
            # skinny-GEMM kernels where they win (`pedagle_core.model.auto_linear`); on the CPU the
            # products stay as they are (torch's GEMM, one per projection)
            self.drafter.fuse_projections()
        logger.info("pedagle: loaded drafter %s (%s format, %d tensors)", read.path, read.format, len(tensors))

    def share_from_target(self, embed_weight: torch.Tensor | None, lm_head_weight: torch.Tensor | None) -> None:
        """Install the target's embedding / lm_head for the weights the head does not have (the target's
        vocabulary rows only; SGLang pads its vocab-parallel tables)."""
        cfg = self.pedagle_config
        with torch.no_grad():
            if not self.has_own_embed_tokens:
                if embed_weight is None:
                    raise CheckpointError(f"{self._pedagle_read.path}: the head has no embed_tokens and the target "
                                          "exposes none to share")
                self.drafter.embed_tokens.weight = nn.Parameter(embed_weight[: cfg.vocab_size], requires_grad=False)
            if not self.has_own_lm_head:
                if cfg.draft_vocab_size != cfg.vocab_size:
                    raise CheckpointError(f"{self._pedagle_read.path}: no lm_head and a reduced draft vocabulary "
                                          f"({cfg.draft_vocab_size} of {cfg.vocab_size}); expected the head's own "
                                          "lm_head")
                if lm_head_weight is None:
                    raise CheckpointError(f"{self._pedagle_read.path}: the head has no lm_head and the target "
                                          "exposes none to share")
                self.drafter.lm_head.weight = nn.Parameter(lm_head_weight[: cfg.vocab_size], requires_grad=False)


EntryClass = [PedagleSglangDrafter]

__all__ = ["PedagleSglangDrafter", "ARCHITECTURE", "checkpoint_dir", "resolve_mode"]
