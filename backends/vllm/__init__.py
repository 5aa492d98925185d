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

SUPPORTED_VLLM = ">=0.26.0,<0.33"
"""The vLLM releases this backend supports: every proposer hook it patches, and every vLLM class and
attribute it uses, has the same signature from 0.26 to 0.32 (both ends are tested in CI with vLLM's CPU
build: the full suite on 0.32, its version-dependent subset on 0.26; 0.26.0 also on an H200). The two
behaviours that differ (the mask-token lookup, the K of a speculators checkpoint served as the model) are
followed per installed version in `compat`."""

__all__ = ["SUPPORTED_VLLM"]
