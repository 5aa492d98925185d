"""The ``sglang.srt.plugins`` entry point ``pedagle`` (SGLang runs it in every process it starts).

``register()`` (idempotent per process, all-or-nothing):

1. checks the installed SGLang against ``SUPPORTED_SGLANG`` and raises a clear error otherwise, before it
   changes anything (SGLang logs a raising plugin and goes on without it; ``PEAGLE`` is then unknown);
2. registers ``PEAGLE`` with ``SpeculativeAlgorithm.register`` (``spec_class`` = `spec_algo.PEagleSpecAlgo`,
   server-argument validation, a factory that imports the worker lazily, in the scheduler only;
   ``supports_overlap=True``: SGLang's overlap scheduler, its default, may run it);
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
   * the prefill admission's per-request extra slots (AROUND; ``compat.slot_reserve_target``:
     ``BaseTokenToKVPoolAllocator.request_slot_reserve`` in 0.5.23, ``PrefillAdder._mamba_gap_budget_for_req``
     in 0.5.17): K-1 more KV slots per admitted prefill request, the scratch slots of the MASK rows of the
     prefill draft step, so the scheduler's admission budget keeps them free (with the prefix cache evicted for
     them, as SGLang's own allocations do);
5. wraps SGLang's server-argument step ``handle_speculative_decoding`` (``compat.register_speculative_step_wrapper``:
   a resolution hook in 0.5.23, a HookRegistry AROUND hook in 0.5.17): under PEAGLE a local speculators-format
   drafter is served from a vLLM-format copy converted once into pedagle's cache
   (`spec_algo.serve_speculators_drafter_converted`), since that step reads the drafter's config.json with
   transformers and a speculators config has no ``model_type``.

All-or-nothing: every hook target, class and function is resolved and imported first (`_resolve_all`); only then
is anything registered. If anything is missing, nothing is registered and the error names what was missing.
Version differences are `compat`'s.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pedagle_core.versions import version_in_range

from . import ALGORITHM, SUPPORTED_SGLANG, compat

logger = logging.getLogger("pedagle.sglang")

FIXED_HOOK_TARGETS = {
    "draft_arch": "sglang.srt.configs.model_config.ModelConfig._config_draft_model",
    "alloc_len": "sglang.srt.mem_cache.allocation_sizing.get_alloc_len_per_decode",
    "row_extra": "sglang.srt.mem_cache.allocation_sizing.get_req_to_token_extra_context_len",
}


def hook_targets() -> dict[str, str]:
    """The ``HookRegistry`` targets of the four hooks for the installed SGLang (``slot_reserve`` differs by
    release: `compat.slot_reserve_target`)."""
    return {**FIXED_HOOK_TARGETS, "slot_reserve": compat.slot_reserve_target()}

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
def peagle_active(server_args: Any = None) -> bool:
    """Whether ``server_args`` (when a sizing function was given them, `compat.hook_server_args`), else this
    process (SGLang's published spec config), serve ``--speculative-algorithm PEAGLE``."""
    if server_args is not None:
        algo = getattr(server_args, "speculative_algorithm", None)
    else:
        try:
            from sglang.srt.runtime_context import get_spec

            algo = get_spec().speculative_algorithm
        except Exception:  # noqa: BLE001 - no published context yet
            return False
    return bool(algo) and str(algo).upper() == ALGORITHM


def current_k(server_args: Any = None) -> int:
    if server_args is not None:
        return int(server_args.speculative_num_steps)
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
    sa = compat.hook_server_args(args, kwargs)
    if not peagle_active(sa):
        return stock
    from .layout import alloc_len_per_decode

    return alloc_len_per_decode(current_k(sa), stock)


def _row_extra_hook(original_fn: Any, *args: Any, **kwargs: Any) -> int:
    stock = original_fn(*args, **kwargs)
    sa = compat.hook_server_args(args, kwargs)
    if not peagle_active(sa):
        return stock
    return max(int(stock), compat.alloc_reserve_per_decode(sa) + 4)


def _slot_reserve_hook(original_fn: Any, *args: Any, **kwargs: Any) -> int:
    """AROUND the admission's per-request extra (`compat.slot_reserve_target`): the stock extra slots of a
    request being admitted, plus the K-1 scratch slots its prefill draft step takes (`prefill_scratch_slots`)."""
    stock = original_fn(*args, **kwargs)
    if not peagle_active():
        return stock
    from .layout import prefill_scratch_slots

    return int(stock) + prefill_scratch_slots(current_k())


def install_model_class() -> None:
    """Register `model.PedagleSglangDrafter` in SGLang's ModelRegistry (idempotent)."""
    from sglang.srt.models.registry import ModelRegistry

    from .model import ARCHITECTURE, PedagleSglangDrafter

    compat.load_default_models(ModelRegistry)
    if ModelRegistry.models.get(ARCHITECTURE) is not PedagleSglangDrafter:
        ModelRegistry.models[ARCHITECTURE] = PedagleSglangDrafter


def _resolve_all() -> dict[str, Any]:
    """Import and resolve everything `register` needs, registering nothing: SGLang's registry and hook classes,
    every hook target (`hook_targets`), the server-argument step, pedagle's spec class and CPU module. Raises
    ImportError naming what is missing."""
    what = "SGLang's speculative-algorithm registry and HookRegistry"
    try:
        from sglang.srt.plugins.hook_registry import HookRegistry, HookType
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
        from sglang.srt.speculative.spec_registry import get_spec as registered_spec

        what = "pedagle's PEAGLE spec class (spec_algo)"
        from . import cpu
        from .spec_algo import PEagleSpecAlgo, serve_speculators_drafter_converted, validate_server_args

        what = "the hook targets"
        targets = hook_targets()
        for target in targets.values():
            compat.resolve_target(target)
        what = "the speculative server-argument step"
        if not compat.has_resolution_hooks():
            compat.resolve_target(compat.SPECULATIVE_STEP_TARGET)
    except (ImportError, AttributeError, ValueError) as e:
        raise ImportError(f"pedagle's SGLang plugin registered nothing: {what} could not be resolved in SGLang "
                          f"{sglang_version()}: {type(e).__name__}: {e}") from e
    return dict(HookRegistry=HookRegistry, HookType=HookType, SpeculativeAlgorithm=SpeculativeAlgorithm,
                registered_spec=registered_spec, PEagleSpecAlgo=PEagleSpecAlgo, cpu=cpu, targets=targets,
                validate_server_args=validate_server_args, speculators_wrapper=serve_speculators_drafter_converted)


def _register_hooks(r: dict[str, Any]) -> None:
    HookRegistry, HookType, targets = r["HookRegistry"], r["HookType"], r["targets"]
    HookRegistry.register(targets["draft_arch"], _draft_arch_hook, HookType.AFTER)
    HookRegistry.register(targets["alloc_len"], _alloc_len_hook, HookType.AROUND)
    HookRegistry.register(targets["row_extra"], _row_extra_hook, HookType.AROUND)
    HookRegistry.register(targets["slot_reserve"], _slot_reserve_hook, HookType.AROUND)
    compat.register_speculative_step_wrapper(r["speculators_wrapper"], RESOLUTION_STEP)


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
        r = _resolve_all()                      # everything imported and resolved before anything is registered
        existing = r["registered_spec"](ALGORITHM)
        if existing is not None and type(existing).__name__ != r["PEagleSpecAlgo"].__name__:
            raise RuntimeError(f"pedagle: the speculative algorithm {ALGORITHM} is already registered by another "
                               f"plugin ({existing!r})")
        if existing is None:
            r["SpeculativeAlgorithm"].register(ALGORITHM, supports_overlap=True,
                                               validate_server_args=r["validate_server_args"],
                                               spec_class=r["PEagleSpecAlgo"])(_worker_factory)
        _register_hooks(r)
        r["cpu"].apply_in_process()             # SGLang's CPU engine, when opted in (a no-op otherwise)
        _registered = True
        logger.debug("pedagle: SGLang %s plugin registered %s", version, ALGORITHM)


def apply_hooks() -> None:
    """Apply registered hooks now (for callers that ran `register` outside SGLang's ``load_plugins``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    HookRegistry.apply_hooks()


def is_registered() -> bool:
    return _registered


__all__ = ["register", "apply_hooks", "check_version", "UnsupportedSglangVersion", "install_model_class",
           "peagle_active", "hook_targets", "FIXED_HOOK_TARGETS"]
