"""pedagle on vLLM's model runner V2: the narrow patches, and the draft recorder for V2 speculators.

Installed by the plugin in every vLLM process (``install``, idempotent, checks every target first):

* **The speculator factory** ``vllm.v1.worker.gpu.spec_decode.init_speculator`` (the model runner imports it by
  name when it is first imported, so the package attribute is replaced, and the runner module's binding too if
  it is already loaded). On releases without V2's speculator registration (0.26-0.33), a P-EAGLE head
  (``method: "eagle3"``, ``parallel_drafting: true``) gets pedagle's `v2_speculator.PedagleSpeculator`; on 0.34
  vLLM builds it itself from the registered ``peagle`` method (`v2_config`). With ``PEDAGLE_RECORD_DRAFTS`` set,
  every other V2 speculator (vLLM's autoregressive EAGLE-3 speculator running a pedagle head, or in
  record-only mode any head) gets its proposals recorded (`record_proposals`); unset, nothing is wrapped.
* **V2's list of unsupported features** (0.26-0.33, ``VllmConfig._get_v2_model_runner_unsupported_features``):
  when the user forces V2 (``VLLM_USE_V2_MODEL_RUNNER=1``) for a P-EAGLE head served by pedagle, "parallel
  drafting for EAGLE speculative decoding" is dropped from it (pedagle's speculator supports it); without that
  variable vLLM still falls back to V1 for P-EAGLE, where pedagle's V1 hooks serve (the configuration run on
  the GPU so far). Nothing else changes.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from typing import Any, Callable

import torch

from pedagle_core.draft_record import RECORD_ENV, DraftRecordWriter

from . import step_timer, v2_state
from .v2_state import MARK as _MARK
from .v2_state import SPEC_DECODE_PACKAGE

V2_PARALLEL_DRAFTING_UNSUPPORTED = "parallel drafting for EAGLE speculative decoding"
"""The entry of V2's unsupported-feature list (vLLM 0.26-0.33 ``config/vllm.py``) pedagle's speculator removes."""

_install_lock = threading.Lock()


def is_peagle_request(speculative_config: Any) -> bool:
    """The documented P-EAGLE flags of vLLM 0.26-0.33: ``method: "eagle3"`` with ``parallel_drafting: true``."""
    return (speculative_config is not None and getattr(speculative_config, "method", None) == "eagle3"
            and bool(getattr(speculative_config, "parallel_drafting", False)))


def v2_forced() -> bool:
    """Whether the user asked for model runner V2 explicitly (``VLLM_USE_V2_MODEL_RUNNER=1``)."""
    from vllm import envs

    return envs.VLLM_USE_V2_MODEL_RUNNER is True


def _filtered_unsupported(orig: Callable[[Any], list[str]]) -> Callable[[Any], list[str]]:
    def unsupported(self: Any) -> list[str]:
        features = orig(self)
        if is_peagle_request(getattr(self, "speculative_config", None)) and v2_forced():
            features = [f for f in features if f != V2_PARALLEL_DRAFTING_UNSUPPORTED]
        return features

    setattr(unsupported, _MARK, True)
    unsupported.__wrapped__ = orig  # type: ignore[attr-defined]
    return unsupported


def _wrapped_factory(orig: Callable[..., Any], serve_peagle: bool, record_path: str | None,
                     time_draft: bool = False) -> Callable[..., Any]:
    """V2's speculator factory with pedagle's speculator for P-EAGLE heads (``serve_peagle``), vLLM's own
    speculators recorded (``record_path``), and every speculator's ``propose`` timed (``time_draft``:
    `step_timer`, ``PEDAGLE_VLLM_TIME_DRAFT``)."""
    def init_speculator(vllm_config: Any, device: torch.device, *args: Any, **kwargs: Any) -> Any:
        if serve_peagle and is_peagle_request(vllm_config.speculative_config):
            from .v2_speculator import PedagleSpeculator

            speculator = PedagleSpeculator(vllm_config, device)
        else:
            speculator = orig(vllm_config, device, *args, **kwargs)
            if record_path and speculator is not None and not getattr(speculator, "_recorder", None):
                record_proposals(speculator, DraftRecordWriter(record_path))
        return step_timer.time_speculator(speculator) if time_draft else speculator

    setattr(init_speculator, _MARK, True)
    init_speculator.__wrapped__ = orig  # type: ignore[attr-defined]
    return init_speculator


def install(serve_peagle: bool, record_only: bool = False) -> None:
    """Install the V2 patches (module docstring). ``serve_peagle``: pedagle's speculator for P-EAGLE heads and
    the unsupported-feature filter (0.26-0.33; 0.34 registers its method instead). ``record_only``: vLLM's own
    speculators, recorded (needs ``PEDAGLE_RECORD_DRAFTS``)."""
    record_path = os.environ.get(RECORD_ENV) or None
    time_draft = bool(os.environ.get(step_timer.TIME_ENV))
    with _install_lock:
        package = importlib.import_module(SPEC_DECODE_PACKAGE)
        orig_factory = getattr(package, "init_speculator", None)
        if orig_factory is None:
            raise RuntimeError(f"pedagle: {SPEC_DECODE_PACKAGE}.init_speculator not found; pedagle's model runner V2 "
                               "support expects it (vLLM 0.26-0.34)")
        targets: list[tuple[Any, str, Any]] = []
        if serve_peagle and not record_only:
            from vllm.config import VllmConfig

            orig_unsupported = getattr(VllmConfig, "_get_v2_model_runner_unsupported_features", None)
            if orig_unsupported is None:
                raise RuntimeError("pedagle: VllmConfig._get_v2_model_runner_unsupported_features not found; "
                                   "pedagle's model runner V2 support for vLLM 0.26-0.33 expects it")
            if not getattr(orig_unsupported, _MARK, False):
                targets.append((VllmConfig, "_get_v2_model_runner_unsupported_features",
                                _filtered_unsupported(orig_unsupported)))
        if not getattr(orig_factory, _MARK, False) and (serve_peagle and not record_only or record_path or time_draft):
            factory = _wrapped_factory(orig_factory, serve_peagle and not record_only, record_path, time_draft)
            targets.append((package, "init_speculator", factory))
            runner = sys.modules.get("vllm.v1.worker.gpu.model_runner")
            if runner is not None and getattr(runner, "init_speculator", None) is orig_factory:
                targets.append((runner, "init_speculator", factory))
        for owner, name, value in targets:
            setattr(owner, name, value)
        if record_path and any(name == "init_speculator" for _, name, _ in targets):
            v2_state.mark_recording()


def record_proposals(speculator: Any, recorder: DraftRecordWriter) -> None:
    """Record every proposal of a V2 speculator (TP rank 0), in the recorder's format (`proposer`):
    ``bonus_positions[b]`` is the position of request b's last accepted target row, where the drafter reads
    the next token; ``drafts[b][i]`` proposes the token at ``bonus_positions[b] + 2 + i``."""
    from .compat import v2_propose_arguments
    from .v2_inputs import next_token_ids

    orig = speculator.propose

    def propose(*args: Any, **kwargs: Any) -> torch.Tensor:
        call = v2_propose_arguments(args, kwargs)
        drafts = orig(*args, **kwargs)
        if call.get("dummy_run"):
            return drafts
        if v2_state.tp_rank() != 0:
            return drafts
        batch = call["input_batch"]
        B = int(batch.num_reqs)
        qsl = batch.query_start_loc[:B + 1].long()
        rejected = call["num_rejected"][:B].long()
        bonus = batch.positions[qsl[1:] - 1 - rejected]
        nxt = next_token_ids(batch.idx_mapping[:B], call["num_sampled"][:B], call["last_sampled"],
                             call["next_prefill_tokens"])
        recorder.write({"K": int(drafts.shape[1]), "runner": "v2", "req_ids": list(batch.req_ids[:B]),
                        "bonus_positions": bonus.tolist(), "next_token_ids": nxt.tolist(),
                        "num_rejected": rejected.tolist(), "drafts": drafts[:B].tolist()})
        return drafts

    setattr(propose, _MARK, True)
    speculator.propose = propose


__all__ = ["install", "record_proposals", "is_peagle_request", "v2_forced", "V2_PARALLEL_DRAFTING_UNSUPPORTED"]
