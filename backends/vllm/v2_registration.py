"""Registration of pedagle's ``peagle`` method on vLLM releases with V2's speculator registration API (0.34+).

* ``register_speculative_method("peagle", "pedagle_backends.vllm.v2_config.PeagleSpeculatorConfig")`` (the
  config by qualified name, imported lazily by vLLM);
* the documented P-EAGLE flags of 0.26-0.33, ``{"method": "eagle3", ..., "parallel_drafting": true}``, which vLLM
  0.34 refuses ("parallel_drafting is only supported by the dflash and dspark methods"), are translated to
  ``{"method": "peagle", ...}`` with a warning naming the new form: ``EngineArgs.create_speculative_config``
  (the one place where the user's dict becomes a ``SpeculativeConfig``, for ``vllm serve`` and ``vllm.LLM``
  alike) is wrapped to rewrite the dict first. Nothing else of vLLM changes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .compat import PEAGLE_METHOD

logger = logging.getLogger("pedagle.vllm")

CONFIG_QUALNAME = "pedagle_backends.vllm.v2_config.PeagleSpeculatorConfig"
_MARK = "__pedagle_flags_hook__"
_lock = threading.Lock()


def translate_peagle_flags(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The user's ``speculative_config`` dict with 0.26-0.33's P-EAGLE flags rewritten for 0.34 (a new dict;
    anything else is returned as it is). ``parallel_drafting: true`` with another method than ``eagle3`` is
    left for vLLM to refuse."""
    if not isinstance(spec, dict):
        return spec
    keys = {k.replace("-", "_"): k for k in spec}
    flag = spec.get(keys.get("parallel_drafting", "parallel_drafting"))
    if flag is not True or spec.get("method") not in ("eagle3", PEAGLE_METHOD):
        return spec
    out = {k: v for k, v in spec.items() if k != keys["parallel_drafting"]}
    out["method"] = PEAGLE_METHOD
    return out


def register() -> None:
    """Register ``peagle`` and the flag translation (idempotent)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.worker.gpu.spec_decode.speculator_config import register_speculative_method

    with _lock:
        register_speculative_method(PEAGLE_METHOD, CONFIG_QUALNAME)
        orig = EngineArgs.create_speculative_config
        if getattr(orig, _MARK, False):
            return

        def create_speculative_config(self: Any, *args: Any, **kwargs: Any) -> Any:
            translated = translate_peagle_flags(self.speculative_config)
            if translated is not self.speculative_config:
                logger.warning("pedagle: vLLM 0.34 has no 'parallel_drafting'; serving this P-EAGLE head with "
                               "pedagle's speculator. Write --speculative-config '{\"method\": \"%s\", \"model\": "
                               "..., \"num_speculative_tokens\": K}' from now on.", PEAGLE_METHOD)
                self.speculative_config = translated
            return orig(self, *args, **kwargs)

        setattr(create_speculative_config, _MARK, True)
        create_speculative_config.__wrapped__ = orig  # type: ignore[attr-defined]
        EngineArgs.create_speculative_config = create_speculative_config


__all__ = ["register", "translate_peagle_flags", "CONFIG_QUALNAME"]
