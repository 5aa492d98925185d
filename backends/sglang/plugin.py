"""The ``sglang.srt.plugins`` entry point ``pedagle`` (SGLang runs it in every process it starts).

``register()`` (idempotent per process, all-or-nothing):

1. checks the installed SGLang against ``SUPPORTED_SGLANG`` and raises a clear error otherwise, before it
   changes anything (SGLang logs a raising plugin and goes on without it; ``PEAGLE`` is then unknown);
2. registers ``PEAGLE`` with ``SpeculativeAlgorithm.register`` (``spec_class`` = `spec_algo.PEagleSpecAlgo`,
   server-argument validation, a factory that imports the worker lazily, in the scheduler only);
3. with pedagle's CPU-engine opt-in set (`cpu`), keeps SGLang's intel_amx attention on a CPU without AMX;
4. registers four ``HookRegistry`` hooks, applied by SGLang's ``load_plugins()`` right after the plugins ran
   (each is a no-op unless the speculative algorithm is PEAGLE):

   * ``ModelConfig._config_draft_model`` (AFTER): the drafter's ``ModelConfig`` gets the architecture
     ``PedagleSglangDrafter`` (registered lazily in SGLang's ``ModelRegistry``), so SGLang builds pedagle's
     drafter, never its stock EAGLE-3 class that drops ``mask_hidden``;
   * ``allocation_sizing.get_alloc_len_per_decode`` (AROUND): at least 2K KV slots per decode step, the
     window of the one-forward draft step (``layout.alloc_len_per_decode``);
   * ``allocation_sizing.get_req_to_token_extra_context_len`` (AROUND): ``req_to_token`` rows wide enough
     for that reserve;
   * ``BaseTokenToKVPoolAllocator.request_slot_reserve`` (AROUND): K-1 more KV slots per admitted prefill
     request, the scratch slots of the MASK rows of the prefill draft step, so the scheduler's admission
     budget keeps them free (with the prefix cache evicted for them, as SGLang's own allocations do);
5. wraps SGLang's server-argument resolution step ``handle_speculative_decoding`` (``register_resolution_hook``):
   under PEAGLE a local speculators-format drafter is served from a vLLM-format copy converted once into pedagle's
   cache (`spec_algo.serve_speculators_drafter_converted`), since that step reads the drafter's config.json with
   transformers and a speculators config has no ``model_type``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pedagle_core.versions import version_in_range

from . import ALGORITHM, SUPPORTED_SGLANG

logger = logging.getLogger("pedagle.sglang")

HOOK_TARGETS = {
    "draft_arch": "sglang.srt.configs.model_config.ModelConfig._config_draft_model",
    "alloc_len": "sglang.srt.mem_cache.allocation_sizing.get_alloc_len_per_decode",
    "row_extra": "sglang.srt.mem_cache.allocation_sizing.get_req_to_token_extra_context_len",
    "slot_reserve": "sglang.srt.mem_cache.allocator.base.BaseTokenToKVPoolAllocator.request_slot_reserve",
}

RESOLUTION_STEP = "handle_speculative_decoding"     # SGLang's resolution step that first reads the drafter config

_lock = threading.RLock()
_registered = False


class UnsupportedSglangVersion(RuntimeError):
    pass


def sglang_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        import sglang                                       # a source checkout without metadata

        return sglang.__version__


def check_version(version: str | None = None) -> str:
    version = version or sglang_version()
    if not version_in_range(version, SUPPORTED_SGLANG):
        raise UnsupportedSglangVersion(
            f"pedagle's SGLang plugin supports sglang{SUPPORTED_SGLANG}, but SGLang {version} is installed. Install a "
            f"supported SGLang (pip install 'pedagle[sglang]'), or run SGLang without pedagle by leaving it out of "
            f"SGLANG_PLUGINS (e.g. SGLANG_PLUGINS=none)")
    return version


# ---------------------------------------------------------------------------------------------- hooks
def peagle_active() -> bool:
    """Whether this process serves ``--speculative-algorithm PEAGLE`` (SGLang's published spec config)."""
    try:
        from sglang.srt.runtime_context import get_spec

        algo = get_spec().speculative_algorithm
    except Exception:  # noqa: BLE001 - no published context yet
        return False
    return bool(algo) and str(algo).upper() == ALGORITHM


def current_k() -> int:
    from sglang.srt.runtime_context import get_spec

    return int(get_spec().speculative_num_steps)


def _draft_arch_hook(result: Any, model_config: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER ``ModelConfig._config_draft_model``: route a PEAGLE drafter to pedagle's model class."""
    algo = getattr(model_config, "speculative_algorithm", None)
    if getattr(model_config, "is_draft_model", False) and algo and str(algo).upper() == ALGORITHM:
        install_model_class()
        from .model import ARCHITECTURE

        hf = model_config.hf_config
        original = list(getattr(hf, "architectures", None) or [])
        if original[:1] != [ARCHITECTURE]:
            hf.pedagle_original_architectures = original
            hf.architectures = [ARCHITECTURE]
            logger.info("pedagle: drafter architecture %s served by pedagle's %s", original, ARCHITECTURE)
    return result


def _alloc_len_hook(original_fn: Any, *args: Any, **kwargs: Any) -> int:
    stock = original_fn(*args, **kwargs)
    if not peagle_active():
        return stock
    from .layout import alloc_len_per_decode

    return alloc_len_per_decode(current_k(), stock)


def _row_extra_hook(original_fn: Any, *args: Any, **kwargs: Any) -> int:
    stock = original_fn(*args, **kwargs)
    if not peagle_active():
        return stock
    from sglang.srt.mem_cache.allocation_sizing import get_alloc_reserve_per_decode

    return max(int(stock), int(get_alloc_reserve_per_decode()) + 4)


def _slot_reserve_hook(original_fn: Any, *args: Any, **kwargs: Any) -> int:
    """AROUND ``request_slot_reserve``: the stock extra slots of a request being admitted, plus the K-1
    scratch slots its prefill draft step takes (`prefill_scratch_slots`)."""
    stock = original_fn(*args, **kwargs)
    if not peagle_active():
        return stock
    from .layout import prefill_scratch_slots

    return int(stock) + prefill_scratch_slots(current_k())


def install_model_class() -> None:
    """Register `model.PedagleSglangDrafter` in SGLang's ModelRegistry (idempotent)."""
    from sglang.srt.models.registry import ModelRegistry

    from .model import ARCHITECTURE, PedagleSglangDrafter

    ModelRegistry._load_default_models()
    if ModelRegistry.models.get(ARCHITECTURE) is not PedagleSglangDrafter:
        ModelRegistry.models[ARCHITECTURE] = PedagleSglangDrafter


def _register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(HOOK_TARGETS["draft_arch"], _draft_arch_hook, HookType.AFTER)
    HookRegistry.register(HOOK_TARGETS["alloc_len"], _alloc_len_hook, HookType.AROUND)
    HookRegistry.register(HOOK_TARGETS["row_extra"], _row_extra_hook, HookType.AROUND)
    HookRegistry.register(HOOK_TARGETS["slot_reserve"], _slot_reserve_hook, HookType.AROUND)
    from sglang.srt.arg_groups.resolution_hooks import register_resolution_hook

    from .spec_algo import serve_speculators_drafter_converted

    register_resolution_hook(RESOLUTION_STEP)(serve_speculators_drafter_converted)


# ---------------------------------------------------------------------------------------------- entry point
def _worker_factory(server_args: Any) -> type:
    """SGLang's WorkerFactory: the worker CLASS (imported here, in the scheduler process only)."""
    from .worker import PEagleWorkerV2

    return PEagleWorkerV2


def register() -> None:
    """Entry point of ``sglang.srt.plugins``: idempotent per process, all-or-nothing."""
    global _registered
    with _lock:
        if _registered:
            return
        version = check_version()
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
        from sglang.srt.speculative.spec_registry import get_spec as registered_spec

        from .spec_algo import PEagleSpecAlgo, validate_server_args

        existing = registered_spec(ALGORITHM)
        if existing is None:
            SpeculativeAlgorithm.register(ALGORITHM, supports_overlap=False, validate_server_args=validate_server_args,
                                          spec_class=PEagleSpecAlgo)(_worker_factory)
        elif type(existing).__name__ != PEagleSpecAlgo.__name__:
            raise RuntimeError(f"pedagle: the speculative algorithm {ALGORITHM} is already registered by another "
                               f"plugin ({existing!r})")
        _register_hooks()
        from . import cpu

        cpu.apply_in_process()                  # SGLang's CPU engine, when opted in (a no-op otherwise)
        _registered = True
        logger.debug("pedagle: SGLang %s plugin registered %s", version, ALGORITHM)


def apply_hooks() -> None:
    """Apply registered hooks now (for callers that ran `register` outside SGLang's ``load_plugins``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    HookRegistry.apply_hooks()


def is_registered() -> bool:
    return _registered


__all__ = ["register", "apply_hooks", "check_version", "UnsupportedSglangVersion", "install_model_class",
           "peagle_active", "HOOK_TARGETS"]
