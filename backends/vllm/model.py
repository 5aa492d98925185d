"""pedagle's EAGLE-3 / P-EAGLE drafter as a vLLM model class.

vLLM builds the drafter of ``--speculative-config '{"method": "eagle3", ...}'`` from the architecture
name in the (renamed) drafter config; the plugin maps those names here. The classes subclass vLLM's own
``Eagle3LlamaForCausalLM`` / ``Eagle3Qwen3ForCausalLM`` only for vLLM's ``isinstance`` checks and
interface flags; none of their layers is built. Instead:

* ``self.model`` is a `VllmDrafter`, a `pedagle_core.model.Drafter` (the drafter math, transformers'
  weight names) compiled by vLLM like its own drafter models;
* its attention calls go to `VllmAttention`, an attention provider holding one vLLM ``Attention`` layer
  per drafter layer, named ``model.layers.{num_target_layers + i}.self_attn.attn`` as vLLM's own drafter
  layers are, so vLLM allocates their KV cache in the target's cache group, builds their metadata and
  runs its paged-attention backend; under tensor parallelism each rank attends with its own heads and
  the outputs are all-gathered (the drafter's projections are replicated on every rank);
* once the weights are loaded, q/k/v and gate/up are computed with one product each, as vLLM's own
  drafters do: on vLLM's CPU build with vLLM's CPU GEMM for every linear layer (``cpu.py``), on CUDA with
  pedagle's skinny-GEMM kernels where they win (`use_platform_linears`);
* weights are read and validated by `pedagle_core.formats` (either format, strict: a missing, misshapen
  or non-finite tensor raises `CheckpointError`); only ``embed_tokens`` / ``lm_head`` may be absent, and
  then vLLM's proposer shares the target's (``has_own_embed_tokens`` / ``has_own_lm_head``).

Heads pedagle does not model (``eagle_config.use_aux_hidden_state: false``) are handed to vLLM's stock
class with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import (get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size,
                              tensor_model_parallel_all_gather)
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.models.llama_eagle3 import Eagle3LlamaForCausalLM
from vllm.model_executor.models.qwen3_eagle3 import Eagle3Qwen3ForCausalLM

from pedagle_core.config import DrafterConfig
from pedagle_core.formats import CheckpointError, load_into_drafter, prepare
from pedagle_core.model import Drafter

from .compat import runner_in_use, vllm_mask_token, wants_parallel_drafting

logger = logging.getLogger("pedagle.vllm")

SHARED = ("embed_tokens.weight", "lm_head.weight")


# ---------------------------------------------------------------------------------------------- attention
class VllmAttention(nn.Module):
    """`pedagle_core.attention.AttentionProvider` over vLLM ``Attention`` layers (paged KV cache).

    q: [T, n_heads, D], k/v: [T, n_kv_heads, D] (all heads, RoPE applied by the drafter) -> [T, n_heads, D].
    vLLM's forward context supplies the metadata and slot mapping of the current drafter forward.
    """

    def __init__(self, cfg: DrafterConfig, vllm_config: VllmConfig, start_layer_id: int, prefix: str) -> None:
        super().__init__()
        tp, rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
        n_q, n_kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, int(cfg.head_dim)
        if n_q % tp:
            raise ValueError(f"drafter num_attention_heads = {n_q}; expected a multiple of the tensor-parallel "
                             f"size {tp}")
        if n_kv >= tp:
            if n_kv % tp:
                raise ValueError(f"drafter num_key_value_heads = {n_kv}; expected a multiple of the "
                                 f"tensor-parallel size {tp} (or a divisor of it)")
            kv_local, kv0 = n_kv // tp, rank * (n_kv // tp)
        else:                                   # fewer KV heads than ranks: replicated, as vLLM's QKVParallelLinear
            if tp % n_kv:
                raise ValueError(f"drafter num_key_value_heads = {n_kv}; expected a divisor of the tensor-parallel "
                                 f"size {tp}")
            kv_local, kv0 = 1, rank * n_kv // tp
        self.tp, self.n_q, self.head_dim = tp, n_q, d
        self.q_local, self.q0, self.kv_local, self.kv0 = n_q // tp, rank * (n_q // tp), kv_local, kv0
        self.windows = [cfg.layer_window(i) for i in range(cfg.num_hidden_layers)]
        self.layers = nn.ModuleList(
            Attention(self.q_local, d, d ** -0.5, num_kv_heads=kv_local, cache_config=vllm_config.cache_config,
                      quant_config=None, per_layer_sliding_window=self.windows[i],
                      prefix=f"{prefix}.layers.{start_layer_id + i}.self_attn.attn")
            for i in range(cfg.num_hidden_layers))

    def forward(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                window: int | None) -> torch.Tensor:
        if window != self.windows[layer_idx]:
            raise ValueError(f"drafter layer {layer_idx}: attention window {window}; the vLLM layer was built "
                             f"with {self.windows[layer_idx]}")
        T = q.shape[0]
        if self.tp > 1:
            q = q[:, self.q0:self.q0 + self.q_local]
            k = k[:, self.kv0:self.kv0 + self.kv_local]
            v = v[:, self.kv0:self.kv0 + self.kv_local]
        out = self.layers[layer_idx](q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1))
        if self.tp > 1:
            out = tensor_model_parallel_all_gather(out.contiguous(), dim=-1)
        return out.view(T, self.n_q, self.head_dim)


@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": -1, "hidden_states": 0, "input_embeds": 0})
class VllmDrafter(Drafter):
    """`pedagle_core.model.Drafter` bound to its vLLM attention layers, with vLLM's call signature.

    Decorated like vLLM's own drafter models, so that vLLM's compilation (torch.compile, split at the
    attention ops, piecewise CUDA graphs) applies to it exactly as to them; with ``enforce_eager`` (or
    compilation off) it is the plain module. All math is `Drafter.forward`.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", cfg: DrafterConfig,
                 start_layer_id: int) -> None:
        Drafter.__init__(self, cfg)
        self.attn = VllmAttention(cfg, vllm_config, start_layer_id, prefix)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, hidden_states: torch.Tensor,
                input_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return Drafter.forward(self, input_ids, positions, hidden_states, self.attn, input_embeds=input_embeds)


class _SharedWithTarget(nn.Module):
    """Stands in for a weight the head shares with its target (vLLM's proposer installs the target's)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, *args: Any) -> torch.Tensor:
        raise RuntimeError(f"pedagle drafter: '{self.name}' is shared with the target, but vLLM did not install "
                           "the target's; expected the proposer to share it at load time")


# ---------------------------------------------------------------------------------------------- checkpoint
def checkpoint_dir(vllm_config: VllmConfig) -> Path:
    """Local directory of the drafter checkpoint vLLM was given (a hub id is resolved from the HF cache)."""
    dmc = vllm_config.speculative_config.draft_model_config
    p = Path(dmc.model)
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(dmc.model), revision=getattr(dmc, "revision", None),
                                  allow_patterns=["*.json", "*.safetensors"]))


def unsupported_reason(vllm_config: VllmConfig) -> str | None:
    """Why pedagle cannot serve this head (then vLLM's stock class does), or None."""
    hf = vllm_config.speculative_config.draft_model_config.hf_config
    eagle_config = getattr(hf, "eagle_config", None) or {}
    if eagle_config.get("use_aux_hidden_state", True) is False:
        return "eagle_config.use_aux_hidden_state = false (a head without the fc over aux hidden states)"
    return None


class NotServedByPedagle(RuntimeError):
    """pedagle's drafter was built where none of pedagle's serving code would run (start-up stops)."""


def check_served(runner: str, parallel: bool) -> None:
    """Stop start-up wherever a pedagle drafter would be built but pedagle could not serve it (nothing silent):

    * model runner V1 without V1's parallel-drafting proposer (a vLLM without it);
    * model runner V2, a P-EAGLE head, and the drafter built by another speculator than pedagle's
      (`v2_speculator`): vLLM's own V2 speculators draft autoregressively and would ignore the MASK slots;
    * model runner V2 with ``PEDAGLE_RECORD_DRAFTS`` set but the V2 recorder not installed (the plugin's
      `v2_patch` installs it when the variable is set as the plugin loads): the file would silently stay empty.
    An autoregressive EAGLE-3 head under V2 is served by vLLM's V2 EAGLE speculator running pedagle's drafter.
    """
    import os

    from . import compat, v2_state
    from .plugin import vllm_version

    version = vllm_version()
    if runner == "v1":
        if not compat.has_v1_parallel_drafting():
            raise NotServedByPedagle(f"pedagle: vLLM {version} built a pedagle drafter for model runner V1, but "
                                     "V1's EAGLE proposer (vllm.v1.spec_decode.llm_base_proposer) that pedagle hooks "
                                     "is missing; use model runner V2 (pedagle supports vllm" + _supported() + ")")
        return
    if parallel and not v2_state.is_building_for_v2():
        hint = (f"use --speculative-config '{{\"method\": \"{compat.PEAGLE_METHOD}\", ...}}'"
                if compat.has_speculator_registration() else
                "set VLLM_USE_V2_MODEL_RUNNER=1 with pedagle in VLLM_PLUGINS, or VLLM_USE_V2_MODEL_RUNNER=0 for "
                "model runner V1")
        raise NotServedByPedagle(f"pedagle: vLLM {version} runs this P-EAGLE head on model runner V2 with a "
                                 f"speculator other than pedagle's, which would not draft in parallel; {hint}")
    if os.environ.get("PEDAGLE_RECORD_DRAFTS") and not v2_state.recording_installed():
        raise NotServedByPedagle(f"pedagle: PEDAGLE_RECORD_DRAFTS is set but pedagle's draft recorder for model "
                                 f"runner V2 is not installed in this process (vLLM {version}); load the plugin "
                                 "through VLLM_PLUGINS before vLLM builds its speculator, or unset the variable")


def _supported() -> str:
    from . import SUPPORTED_VLLM

    return SUPPORTED_VLLM


# ---------------------------------------------------------------------------------------------- model
class _PedagleEagle3Mixin:
    """Everything of the two classes below; they differ only in the vLLM base class they stand in for."""

    pedagle_architecture = "llama"
    _vllm_base: type

    def __new__(cls, *args: Any, **kwargs: Any):
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        reason = unsupported_reason(vllm_config) if vllm_config is not None else None
        if reason is not None:
            logger.warning("pedagle: %s; serving this drafter with vLLM's own %s", reason, cls._vllm_base.__name__)
            return cls._vllm_base(*args, **kwargs)        # not an instance of cls: __init__ below is skipped
        return nn.Module.__new__(cls)

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)
        spec = vllm_config.speculative_config
        assert spec is not None
        self.config = spec.draft_model_config.hf_config
        if getattr(self.config, "draft_vocab_size", None) is None:
            self.config.draft_vocab_size = self.config.vocab_size
        target_layers = vllm_config.model_config.get_total_num_hidden_layers()
        self.config.target_layer_count = target_layers
        self.use_parallel_drafting = wants_parallel_drafting(spec)
        self.runner = runner_in_use(vllm_config)

        # The checkpoint as pedagle reads it (config + tensor directory, no data yet).
        ckpt = checkpoint_dir(vllm_config)
        # pedagle_core.formats' strict reading without a target (vLLM shares embed_tokens / lm_head itself),
        # in two steps: config + tensor directory now, the tensor data in load_weights
        read = prepare(ckpt, "parallel" if self.use_parallel_drafting else "autoregressive")
        self._pedagle_read = read
        cfg: DrafterConfig = read.config
        self._check_config(cfg, vllm_config, ckpt)
        self.pedagle_config = cfg

        check_served(self.runner, self.use_parallel_drafting)
        if self.runner == "v1":
            from .proposer import install as install_proposer_hooks   # worker process: the proposer is imported
            install_proposer_hooks()

        # built under vLLM's default dtype and device; its attention layers are named after vLLM's drafter
        self.model = VllmDrafter(vllm_config=vllm_config, prefix=f"{prefix}.model" if prefix else "model", cfg=cfg,
                                 start_layer_id=target_layers)
        self.lm_head = self.model.lm_head           # vLLM's proposer may replace this with the target's lm_head
        self.logit_scale = float(getattr(self.config, "logit_scale", 1.0) or 1.0)
        self.logits_processor = LogitsProcessor(int(cfg.draft_vocab_size), scale=self.logit_scale)
        self.has_own_embed_tokens = cfg.has_embed_tokens
        self.has_own_lm_head = cfg.has_lm_head
        self._target_ids: torch.Tensor | None = None     # compute_logits' draft -> target id map (from d2t)

    def _check_config(self, cfg: DrafterConfig, vllm_config: VllmConfig, ckpt: Path) -> None:
        where = ckpt / "config.json"
        mc = vllm_config.model_config

        def bad(what: str, expected: str) -> CheckpointError:
            return CheckpointError(f"{where}: {what}; expected {expected}")

        if cfg.architecture != self.pedagle_architecture:
            raise bad(f"a {cfg.architecture} drafter", f"a {self.pedagle_architecture} drafter for vLLM architecture "
                      f"{type(self).__name__}")
        if cfg.vocab_size != mc.get_vocab_size():
            raise bad(f"vocab_size = {cfg.vocab_size}", f"the target's vocab_size {mc.get_vocab_size()}")
        if cfg.target_hidden_size != mc.get_hidden_size():
            raise bad(f"target_hidden_size = {cfg.target_hidden_size}",
                      f"the target's hidden_size {mc.get_hidden_size()}")
        hf = self.config
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
            if getattr(hf, name, getattr(cfg, name)) != getattr(cfg, name):
                raise bad(f"vLLM reads {name} = {getattr(hf, name)} but pedagle reads {getattr(cfg, name)}",
                          "one value")
        if self.use_parallel_drafting and self.runner == "v1":        # V1's proposer looks the mask token up
            from .plugin import installed_version

            vllm_mask = vllm_mask_token(hf, installed_version())
            if vllm_mask != cfg.mask_token_id:
                raise bad(f"vLLM's mask token is {vllm_mask} but pedagle's is {cfg.mask_token_id}", "one mask token")

    # ------------------------------------------------------------------ what vLLM's proposer calls
    @property
    def mask_hidden(self) -> torch.Tensor:
        """[1, n_aux * target_hidden_size], vLLM's layout of the MASK slots' pre-fc hidden."""
        return self.model.mask_hidden.view(1, -1)

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings: Any = None,
                        is_multimodal: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, hidden_states: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(input_ids, positions, hidden_states, inputs_embeds)

    def combine_hidden_states(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.model.project_hidden(hidden_states)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits over the TARGET vocabulary (draft-vocab logits scattered to ``id + d2t[id]``, -inf elsewhere)."""
        head = self.lm_head
        if isinstance(head, nn.Linear):
            logits = self.model.compute_logits(hidden_states) if head is self.model.lm_head else head(hidden_states)
            if self.logit_scale != 1.0:
                logits = logits * self.logit_scale
        else:                                   # the target's (vocab-parallel) lm_head, shared by the proposer
            logits = self.logits_processor(head, hidden_states)
        cfg = self.pedagle_config
        if cfg.draft_vocab_size == cfg.vocab_size:
            return logits
        targets = self._target_ids
        if targets is None or targets.device != logits.device:     # d2t is fixed once loaded
            targets = self.model.to_target_ids(torch.arange(cfg.draft_vocab_size, device=logits.device))
            self._target_ids = targets
        full = logits.new_full((logits.shape[0], cfg.vocab_size), float("-inf"))
        full[:, targets] = logits
        return full

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load through `pedagle_core.formats` (strict); vLLM's iterator over the same files is not read."""
        close = getattr(weights, "close", None)
        if close is not None:
            close()
        read = self._pedagle_read
        tensors = load_into_drafter(self.model, read, exclude_prefixes=("attn.",))   # attn.: vLLM's layers
        self._target_ids = None
        cfg = self.pedagle_config
        self.has_own_embed_tokens = "embed_tokens.weight" in tensors
        self.has_own_lm_head = "lm_head.weight" in tensors
        if not self.has_own_embed_tokens and cfg.has_embed_tokens:
            raise CheckpointError(f"{read.path}: config says the head has embed_tokens but none was loaded")
        if not self.has_own_lm_head:
            # vLLM's proposer replaces self.lm_head (and self.model.embed_tokens) with the target's; drop the
            # drafter's own copy now so that it is freed then.
            self.model.lm_head = _SharedWithTarget("lm_head")
        use_platform_linears(self.model)
        if _on_cpu() and self.has_own_lm_head:
            self.lm_head = self.model.lm_head
        logger.info("pedagle: loaded drafter %s (%s format, %d tensors%s)", read.path, read.format, len(tensors),
                    "" if self.has_own_embed_tokens and self.has_own_lm_head else
                    "; sharing " + ", ".join(n for n, own in zip(SHARED, (self.has_own_embed_tokens,
                                                                          self.has_own_lm_head)) if not own))
        return {name for name, _ in self.named_parameters()}


class PedagleEagle3LlamaForCausalLM(_PedagleEagle3Mixin, Eagle3LlamaForCausalLM):
    """pedagle's Llama-style EAGLE-3 / P-EAGLE drafter (stands in for ``Eagle3LlamaForCausalLM``)."""

    pedagle_architecture = "llama"
    _vllm_base = Eagle3LlamaForCausalLM


class PedagleEagle3Qwen3ForCausalLM(_PedagleEagle3Mixin, Eagle3Qwen3ForCausalLM):
    """pedagle's Qwen3-style EAGLE-3 / P-EAGLE drafter (stands in for ``Eagle3Qwen3ForCausalLM``)."""

    pedagle_architecture = "qwen3"
    _vllm_base = Eagle3Qwen3ForCausalLM


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def use_platform_linears(drafter: Drafter) -> None:
    """Once the weights are loaded: q/k/v and gate/up in one product each, as vLLM's own drafters compute
    them; on vLLM's CPU build every linear layer on vLLM's CPU GEMM (``cpu.py``), on CUDA pedagle's
    skinny-GEMM kernels where they win and cuBLAS elsewhere (`pedagle_core.model.auto_linear`)."""
    if _on_cpu():
        from .cpu import use_vllm_cpu_kernels

        use_vllm_cpu_kernels(drafter)
    else:
        drafter.fuse_projections()


def is_pedagle_drafter(model: Any) -> bool:
    return isinstance(model, _PedagleEagle3Mixin)


__all__ = ["NotServedByPedagle", "check_served", "PedagleEagle3LlamaForCausalLM", "PedagleEagle3Qwen3ForCausalLM",
           "VllmAttention", "VllmDrafter", "is_pedagle_drafter", "checkpoint_dir", "unsupported_reason",
           "vllm_mask_token"]
