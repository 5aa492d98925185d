"""pedagle's vLLM backend: P-EAGLE / EAGLE-3 drafters from pedagle_core inside vLLM.

Installed through the ``vllm.general_plugins`` entry point ``pedagle`` (``plugin.register``), which runs
in every vLLM process. It

* re-registers the architecture names vLLM gives EAGLE-3 Llama/Qwen3 heads (``Eagle3LlamaForCausalLM``,
  ``LlamaForCausalLMEagle3``, ``PeagleLlamaForCausalLM``, ...) to pedagle's classes in ``model.py``,
  which run `pedagle_core.model.Drafter` with vLLM's ``Attention`` layers (KV cache, paged attention,
  TP head sharding) and load weights through `pedagle_core.formats` (strict);
* when vLLM builds such a drafter (in the worker), routes the proposer's input expansion through
  `pedagle_core.expand` (``proposer.py``) and, if ``PEDAGLE_RECORD_DRAFTS`` is set, records drafts.

``VLLM_PLUGINS`` without ``pedagle`` switches all of it off (vLLM's native EAGLE-3 path then serves the
same checkpoint). Nothing in this package imports vLLM at import time except the modules that need it
(``model``, ``proposer``); ``plugin`` and ``backend`` import it lazily.
"""

SUPPORTED_VLLM = ">=0.26.0,<0.35"
"""The vLLM releases this backend supports. 0.26-0.33: model runner V1's proposer hooks (every hook and class
it uses has the same signature from 0.26 to 0.32; both ends tested in CI with vLLM's CPU build, 0.26.0 also on
an H200) and, with ``VLLM_USE_V2_MODEL_RUNNER=1``, pedagle's V2 speculator. 0.34: V2 only (V1 and P-EAGLE were
removed from vLLM), through its speculator registration (method ``peagle``); checked in CI at import and
configuration level only (no CPU build of vLLM 0.34 exists). What differs is detected in `compat`."""

__all__ = ["SUPPORTED_VLLM"]
