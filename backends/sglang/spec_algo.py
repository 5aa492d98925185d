"""The ``PEAGLE`` speculative algorithm as SGLang sees it: a `CustomSpecAlgo` subclass (``spec_class``).

SGLang's scheduler (0.5.17-0.5.23) calls methods a bare ``CustomSpecAlgo`` lacks (``carries_draft_hidden_states``,
``create_future_map``, ``need_topk``) and routes EAGLE-family setup on ``is_eagle()`` / ``is_eagle3()``
(target aux-hidden-state capture, draft KV sizing, verify inputs). `PEagleSpecAlgo` answers all of them
and resolves the server arguments:

* ``--speculative-num-draft-tokens K+1`` alone is enough: num_steps = K, topk = 1 (and the other way round);
  with neither, K comes from the drafter (its recorded ``parallel_depth`` when it is a P-EAGLE head, else 1);
* then SGLang's own EAGLE-family defaulting (``_handle_eagle_family``) runs;
* overlap scheduling stays as SGLang resolves it: on (SGLang's default) unless ``--disable-overlap-schedule``.
  SGLang switches it off for speculative decoding on a CPU (``_disable_overlap_schedule_for_cpu``: its
  FutureMap gathers the relayed draft inputs with a Triton kernel); under pedagle's CPU-engine opt-in (`cpu`)
  PEAGLE keeps it, since its FutureMap (`future_map_class`) gathers them without Triton there.

The overlap scheduler relays each request's next draft input between iterations through SGLang's ``FutureMap``
(``create_future_map``): PEAGLE's is ``bonus_tokens`` [B] and the K drafts ``topk_index`` [B, K] (target ids) with
``topk_p`` [B, K] (ones); no hidden states.

`validate_server_args` rejects what PEAGLE does not support, with the reason and the fix.

`serve_speculators_drafter_converted` wraps SGLang's server-argument step ``handle_speculative_decoding`` (the
plugin registers it: `compat.register_speculative_step_wrapper`): that step reads the drafter's config.json with transformers before any hook of the algorithm runs,
and a speculators-format config has no ``model_type``. A local speculators-format drafter is converted once to
the vLLM format (`pedagle_core.formats.convert`, tensor for tensor) into pedagle's cache, keyed by the source's
config and weight files, and ``speculative_draft_model_path`` is declared to be that copy.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sglang.srt.speculative.spec_registry import CustomSpecAlgo

from . import ALGORITHM, compat

logger = logging.getLogger("pedagle.sglang")


class PEagleConfigError(ValueError):
    """An SGLang server-argument combination PEAGLE does not support (the message says which and why)."""


def _get(sa: Any, name: str, default: Any = None) -> Any:
    try:
        return getattr(sa, name)
    except AttributeError:
        return default


def default_k(draft_path: str | None) -> int:
    """K when the user gave neither num_steps nor num_draft_tokens: the drafter's recorded parallel depth when
    it is a P-EAGLE head (has a mask token), else 1 (plain EAGLE-3 chain of one draft)."""
    if draft_path and Path(str(draft_path)).is_dir():
        try:
            from pedagle_core.formats import read_config

            cfg, _ = read_config(draft_path)
        except Exception as e:  # noqa: BLE001 - the loader reports the checkpoint problem later, precisely
            logger.warning("pedagle: could not read %s to choose K (%s); using K = 1", draft_path, e)
            return 1
        return max(1, int(cfg.parallel_depth)) if cfg.mask_token_id is not None else 1
    return 1


def validate_server_args(sa: Any) -> None:
    """Refuse the combinations PEAGLE does not support (SGLang calls this before ``handle_server_args``)."""
    name = "--speculative-algorithm PEAGLE"
    topk = _get(sa, "speculative_eagle_topk")
    if topk not in (None, 1):
        raise PEagleConfigError(f"{name} drafts one chain of K tokens per step: --speculative-eagle-topk must be 1 "
                                f"(or unset), got {topk}. Tree drafting (topk > 1) is not supported.")
    steps, ndt = _get(sa, "speculative_num_steps"), _get(sa, "speculative_num_draft_tokens")
    if steps is not None and steps < 1:
        raise PEagleConfigError(f"{name}: --speculative-num-steps (K) must be >= 1, got {steps}")
    if ndt is not None and ndt < 2:
        raise PEagleConfigError(f"{name}: --speculative-num-draft-tokens (K+1) must be >= 2, got {ndt}")
    if steps is not None and ndt is not None and ndt != steps + 1:
        raise PEagleConfigError(f"{name}: --speculative-num-draft-tokens must be --speculative-num-steps + 1 "
                                f"(K+1 = {steps + 1} for K = {steps}), got {ndt}")
    checks = [
        (_get(sa, "speculative_adaptive", False), "adaptive speculative decoding (--speculative-adaptive)"),
        (_get(sa, "speculative_use_rejection_sampling", False),
         "--speculative-use-rejection-sampling (PEAGLE verifies greedy chain drafts)"),
        (_get(sa, "enable_multi_layer_eagle", False), "--enable-multi-layer-eagle"),
        ((_get(sa, "tp_size", 1) or 1) > 1, "tensor parallelism (--tp-size > 1): the drafter runs unsharded"),
        ((_get(sa, "pp_size", 1) or 1) > 1, "pipeline parallelism (--pp-size > 1)"),
        (_get(sa, "enable_dp_attention", False), "data-parallel attention (--enable-dp-attention)"),
        (_get(sa, "disaggregation_mode", "null") not in (None, "null"), "prefill/decode disaggregation"),
        ((_get(sa, "page_size", 1) or 1) > 1,
         "page_size > 1 (the draft step writes scratch KV for its MASK rows one token at a time)"),
        (_get(sa, "speculative_draft_model_quantization", None) is not None, "a quantized drafter"),
        (_get(sa, "enable_lora", False), "LoRA"),
    ]
    for bad, what in checks:
        if bad:
            raise PEagleConfigError(f"{name} does not support {what}. Remove that option, or serve the head with "
                                    "--speculative-algorithm EAGLE3 (autoregressive drafting).")


CONVERTED_SOURCE = "pedagle.sglang.speculators_drafter"


def converted_cache_dir() -> Path:
    """Where converted drafters live: ``$PEDAGLE_CACHE/converted``, else ``~/.cache/pedagle/converted``."""
    root = os.environ.get("PEDAGLE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "pedagle") / "converted"


def _source_key(d: Path) -> str:
    """Content key of a checkpoint directory: config.json's bytes and every file's name, size and mtime."""
    from pedagle_core import __version__

    h = hashlib.sha256(__version__.encode())             # a newer converter writes a new copy
    h.update((d / "config.json").read_bytes())
    for f in sorted(p for p in d.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def served_drafter_path(path: str) -> str:
    """The drafter directory SGLang should read: ``path`` itself unless it is a local speculators-format
    checkpoint, then its vLLM-format copy in `converted_cache_dir` (converted on first use, reused after).
    A local directory that is no drafter checkpoint raises pedagle's `CheckpointError` naming the file."""
    d = Path(path)
    if not d.is_dir():
        return path                                   # a hub id or remote URI: SGLang resolves it; not ours
    from pedagle_core.formats import convert, detect_format

    if detect_format(d) != "speculators":
        return path
    cache = converted_cache_dir()
    dst = cache / f"{d.resolve().name}-{_source_key(d)}"
    if dst.is_dir():
        logger.info("pedagle: speculators-format drafter %s -> serving its vLLM-format copy %s (cached)", path, dst)
        return str(dst)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=cache))
    try:
        convert(d, tmp, to="vllm")
        try:
            tmp.rename(dst)                                # atomic: dst exists only complete
        except OSError:
            if not dst.is_dir():                           # not a concurrent writer's finished copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("pedagle: speculators-format drafter %s converted to the vLLM format (tensor for tensor) at %s; "
                "SGLang serves that copy", path, dst)
    return str(dst)


def serve_speculators_drafter_converted(server_args: Any, previous: Any) -> None:
    """Wrapper of SGLang's ``handle_speculative_decoding`` resolution step (see the module docstring)."""
    cfg = compat.resolving_view(server_args)
    algo, path = cfg.speculative_algorithm, cfg.speculative_draft_model_path
    if algo and str(algo).upper() == ALGORITHM and path:
        served = served_drafter_path(str(path))
        if served != str(path):
            compat.declare_resolution(server_args, CONVERTED_SOURCE, speculative_draft_model_path=served)
    previous(server_args)


@functools.lru_cache(maxsize=None)
def future_map_class() -> type:
    """The ``FutureMap`` class of PEAGLE's ``create_future_map``: SGLang's (the overlap scheduler's per-request relay
    of the next draft input between iterations, indexed by request-pool row), with one change off CUDA.

    What PEAGLE relays: ``bonus_tokens`` [B] and ``topk_index`` [B, K] (the K drafts, target ids), ``topk_p``
    [B, K] (ones); ``hidden_states`` is None, so SGLang allocates no hidden-state buffer. SGLang sizes the
    per-request buffers from the first payload that carries them (the first prefill draft step's [B, K]): [pool, K].

    On CUDA everything is SGLang's (``_resolve_spec_extras``: one fused Triton gather of the rows). On another device
    (SGLang's CPU engine) SGLang's resolve step cannot run: the fused gather is a Triton kernel (no Triton driver on
    a CPU) and 0.5.17 calls ``record_stream`` on the CPU index tensor; there PEAGLE's three rows are gathered with
    plain indexing (`resolve_relayed_draft_input`). ``_resolve_spec_extras`` is the name
    ``overlap_utils.resolve_forward_inputs`` calls in 0.5.17 and 0.5.23 alike, and the buffer names
    (``output_tokens_buf``, ``topk_p_buf``, ``topk_index_buf``) are the same in both."""
    import torch
    from sglang.srt.managers.overlap_utils import FutureMap

    class PEagleFutureMap(FutureMap):
        def _resolve_spec_extras(self, batch: Any) -> None:
            if torch.device(self.device).type == "cuda":
                return super()._resolve_spec_extras(batch)
            resolve_relayed_draft_input(self, batch.spec_info)

    return PEagleFutureMap


def resolve_relayed_draft_input(future_map: Any, draft_input: Any) -> None:
    """PEAGLE's draft input of a batch from a FutureMap's buffers, by the batch's ``future_indices`` (the
    request-pool rows whose last forward stashed them): ``bonus_tokens``, ``topk_index`` (the drafts) and
    ``topk_p``. A batch without relayed input (no spec info, no rows) is left as it is."""
    idx = None if draft_input is None else getattr(draft_input, "future_indices", None)
    if idx is None or idx.shape[0] == 0:
        return
    draft_input.bonus_tokens = future_map.output_tokens_buf[idx]
    topk_index = getattr(future_map, "topk_index_buf", None)
    if topk_index is not None:
        draft_input.topk_index = topk_index[idx]
        draft_input.topk_p = future_map.topk_p_buf[idx]


class PEagleSpecAlgo(CustomSpecAlgo):
    """``spec_class`` of the PEAGLE registration: EAGLE-3 for every scheduler-side predicate."""

    def is_eagle(self) -> bool:
        return True

    def is_eagle3(self) -> bool:
        return True

    def supports_mixed_chunk(self) -> bool:
        return False

    def supports_grammar_overlap(self) -> bool:
        return False

    def has_draft_kv(self) -> bool:
        return True

    def need_topk(self) -> bool:
        return True

    def carries_draft_hidden_states(self) -> bool:
        return False                                 # no PD disaggregation (refused in validate_server_args)

    def get_platform_worker_cls(self):
        return None

    def create_future_map(self, device, req_to_token_pool, needs_cpu_seq_lens: bool = True,
                          needs_confidence_relay: bool = False):
        return future_map_class()(device, self, req_to_token_pool, needs_cpu_seq_lens, needs_confidence_relay)

    def handle_server_args(self, server_args: Any) -> None:
        resolve_server_args(server_args)


def keeps_overlap_on_cpu(sa: Any) -> bool:
    """Whether PEAGLE keeps overlap scheduling where SGLang switches it off for speculative decoding on a CPU:
    on SGLang's CPU engine under pedagle's opt-in (`cpu.requested`), whose tests run PEAGLE both ways."""
    from . import cpu

    return str(_get(sa, "device", "") or "") == "cpu" and cpu.requested()


def resolve_server_args(sa: Any) -> None:
    """Fill PEAGLE's defaults on ``sa`` (0.5.23: SGLang's recording stand-in; 0.5.17: the ServerArgs itself; or
    a plain namespace), then run SGLang's EAGLE-family defaulting. Overlap scheduling is left as the user and
    SGLang chose it (on unless ``--disable-overlap-schedule``), except on the CPU engine (`keeps_overlap_on_cpu`)."""
    steps, topk, ndt = (_get(sa, "speculative_num_steps"), _get(sa, "speculative_eagle_topk"),
                        _get(sa, "speculative_num_draft_tokens"))
    if steps is None:
        steps = ndt - 1 if ndt is not None else default_k(_get(sa, "speculative_draft_model_path"))
        sa.speculative_num_steps = steps
    if topk is None:
        sa.speculative_eagle_topk = 1
    if ndt != steps + 1:
        sa.speculative_num_draft_tokens = steps + 1
    overlap_before = not _get(sa, "disable_overlap_schedule", False)
    from sglang.srt.arg_groups.speculative_hook import _handle_eagle_family

    _handle_eagle_family(sa)
    if overlap_before and keeps_overlap_on_cpu(sa):
        logger.info("pedagle: %s keeps overlap scheduling on SGLang's CPU engine (pedagle's CPU-engine opt-in; SGLang "
                    "switches it off for speculative decoding on a CPU)", ALGORITHM)
        sa.disable_overlap_schedule = False


__all__ = ["PEagleSpecAlgo", "PEagleConfigError", "validate_server_args", "resolve_server_args", "default_k",
           "future_map_class", "resolve_relayed_draft_input", "keeps_overlap_on_cpu",
           "served_drafter_path", "serve_speculators_drafter_converted", "converted_cache_dir"]
