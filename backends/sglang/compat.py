"""Every difference between the SGLang releases this backend supports (0.5.17 through 0.5.23), one helper each.

Each helper detects its case by feature (``hasattr``, ``inspect.signature``, a try-import), never by comparing
version strings, and its docstring says which releases do what. The rest of the backend calls these helpers
instead of branching itself. This module imports nothing else of the backend ("version facts sit below
everything"); SGLang modules are imported inside the helpers, so importing it is cheap and needs no SGLang.

"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import pkgutil
from typing import Any, Callable, Optional


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a parameter called ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):                # a builtin without a signature
        return False


def resolve_target(target: str) -> Any:
    """The object a dotted ``module.attr[.attr...]`` path names, resolved as SGLang's ``HookRegistry`` resolves
    its targets (``pkgutil.resolve_name``); the error names the target."""
    try:
        return pkgutil.resolve_name(target)
    except (ImportError, AttributeError, ValueError) as e:
        raise type(e)(f"hook target {target}: {e}") from e


# ---------------------------------------------------------------------------------------------- plugin hooks
SLOT_RESERVE_TARGETS = (
    "sglang.srt.mem_cache.allocator.base.BaseTokenToKVPoolAllocator.request_slot_reserve",
    "sglang.srt.managers.schedule_policy.PrefillAdder._mamba_gap_budget_for_req",
)


@functools.lru_cache(maxsize=None)
def slot_reserve_target() -> str:
    """The ``HookRegistry`` target through which the scheduler's prefill admission reserves extra KV slots per
    admitted request (pedagle adds the K-1 MASK-row scratch slots of the prefill draft step there).

    * 0.5.23: ``BaseTokenToKVPoolAllocator.request_slot_reserve(*, has_req_pool_slot, prefill_tokens)``, the
      extra slots ``PrefillAdder`` charges per request being admitted;
    * 0.5.17: no such method; ``PrefillAdder._mamba_gap_budget_for_req(req)`` is the per-request extra that
      every admission path (``add_one_req``, ``add_one_req_ignore_eos``, ``add_chunked_req``) adds to its gates
      and to ``_update_prefill_budget`` (0 for a non-Mamba target). A hybrid-Mamba target on the shared Mamba
      pool would also count a Mamba slot for it there (PEAGLE serves dense targets)."""
    for target in SLOT_RESERVE_TARGETS:
        try:
            resolve_target(target)
        except (ImportError, AttributeError):
            continue
        return target
    raise AttributeError("this SGLang has neither admission reserve hook point: " + ", ".join(SLOT_RESERVE_TARGETS))


def has_resolution_hooks() -> bool:
    """Whether server-argument resolution runs as named, wrappable steps.

    * 0.5.23: ``sglang.srt.arg_groups.resolution_hooks.register_resolution_hook(step)`` wraps a step such as
      ``handle_speculative_decoding``, which sees a recording view (``model_override_base.resolving_view``) and
      records changes with ``overrides.declare_resolution``;
    * 0.5.17: no such module; ``ServerArgs.__post_init__`` calls
      ``arg_groups.speculative_hook.handle_speculative_decoding`` on the real ServerArgs (looked up in that
      module at call time, so a ``HookRegistry`` AROUND hook on it wraps the step)."""
    name = "sglang.srt.arg_groups.resolution_hooks"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:                          # the module is there but cannot be imported: say so
            raise
        return False
    return True


SPECULATIVE_STEP_TARGET = "sglang.srt.arg_groups.speculative_hook.handle_speculative_decoding"


def register_speculative_step_wrapper(wrapper: Callable[[Any, Callable[[Any], None]], None],
                                      step: str = "handle_speculative_decoding") -> None:
    """Register ``wrapper(server_args, previous)`` around SGLang's speculative server-argument step: a
    resolution hook where there are (`has_resolution_hooks`), else a ``HookRegistry`` AROUND hook on the step
    function (0.5.17; applied by ``load_plugins``, which ``sglang.Engine`` and the launchers run before they
    build ServerArgs)."""
    if has_resolution_hooks():
        from sglang.srt.arg_groups.resolution_hooks import register_resolution_hook

        register_resolution_hook(step)(wrapper)
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    def around(original: Callable[[Any], None], server_args: Any, *args: Any, **kwargs: Any) -> None:
        wrapper(server_args, lambda sa: original(sa, *args, **kwargs))

    around.__name__ = around.__qualname__ = f"pedagle_{step}"
    HookRegistry.register(SPECULATIVE_STEP_TARGET.rsplit(".", 1)[0] + "." + step, around, HookType.AROUND)


def resolving_view(server_args: Any) -> Any:
    """What a resolution step reads its current values from.

    * 0.5.23: ``model_override_base.resolving_view(server_args)`` (recorded resolutions applied);
    * 0.5.17: the ServerArgs itself (steps mutate it directly)."""
    try:
        from sglang.srt.arg_groups.model_override_base import resolving_view as view
    except ImportError:
        return server_args
    return view(server_args)


def declare_resolution(server_args: Any, source: str, **values: Any) -> None:
    """Set resolved server-argument values from a resolution step.

    * 0.5.23: ``overrides.declare_resolution(server_args, source, **values)`` (recorded, attributed to source);
    * 0.5.17: plain attribute assignment on the ServerArgs."""
    try:
        from sglang.srt.arg_groups.overrides import declare_resolution as declare
    except ImportError:
        for name, value in values.items():
            setattr(server_args, name, value)
        return
    declare(server_args, source, **values)


def resolved_server_args(server_args: Any) -> Any:
    """Resolve a freshly built ServerArgs and return what holds the resolved values.

    * 0.5.23: construction records the arguments; ``server_args.resolve_once()`` runs the resolution pipeline
      and ``model_override_base.resolved_view(server_args)`` reads the result;
    * 0.5.17: ``ServerArgs.__post_init__`` already resolved (and validated) everything on the object itself."""
    resolve_once = getattr(server_args, "resolve_once", None)
    if resolve_once is None:
        return server_args
    resolve_once()
    from sglang.srt.arg_groups.model_override_base import resolved_view

    return resolved_view(server_args)


def load_default_models(registry: Any) -> None:
    """Make SGLang's ``ModelRegistry`` hold its built-in model classes before pedagle adds its own.

    * 0.5.23: defaults load lazily (``ModelRegistry._load_default_models()``, a no-op once loaded);
    * 0.5.17: no lazy loading; the registry is filled when ``sglang.srt.models.registry`` is imported."""
    load = getattr(registry, "_load_default_models", None)
    if load is not None:
        load()


def hook_server_args(args: tuple, kwargs: dict) -> Optional[Any]:
    """The ServerArgs an allocation-sizing function was called with, or None.

    * 0.5.23: ``get_alloc_len_per_decode()`` / ``get_req_to_token_extra_context_len()`` take no arguments and
      read the published config (``runtime_context.get_spec()``);
    * 0.5.17: ``get_alloc_len_per_decode(server_args=None)``, ``get_alloc_reserve_per_decode(server_args=None)``
      and ``get_req_to_token_extra_context_len(server_args)`` (the pool configurators pass the ServerArgs they
      size; without one they read ``get_server_args()``)."""
    if "server_args" in kwargs:
        return kwargs["server_args"]
    return args[0] if args else None


def alloc_reserve_per_decode(server_args: Optional[Any] = None) -> int:
    """SGLang's KV slots reserved per request and decode step (``get_alloc_reserve_per_decode``), for the
    ``server_args`` a sizing function was given where the release takes one (`hook_server_args`)."""
    from sglang.srt.mem_cache.allocation_sizing import get_alloc_reserve_per_decode

    if server_args is not None and _accepts(get_alloc_reserve_per_decode, "server_args"):
        return int(get_alloc_reserve_per_decode(server_args))
    return int(get_alloc_reserve_per_decode())


# ---------------------------------------------------------------------------------------------- worker
def worker_init_takes_ps(cls: type) -> bool:
    """Whether an EAGLE V2 worker class's ``__init__`` takes the ``ps`` (ParallelState) argument.

    * 0.5.17: ``EAGLEWorkerV2.__init__(server_args, gpu_id, ps, nccl_port, target_worker)`` and the same for
      ``EagleDraftWorker``; the scheduler passes ``ps=`` and ``update_weights_from_tensor`` reads ``self.ps``;
    * 0.5.23: ``(server_args, gpu_id, nccl_port, target_worker)``; parallel facts come from runtime_context."""
    return _accepts(cls.__init__, "ps")


def init_eagle_draft_worker(base: type, worker: Any, server_args: Any, gpu_id: int, nccl_port: int,
                            target_worker: Any, ps: Any = None) -> None:
    """Run ``base.__init__`` (SGLang's ``EagleDraftWorker``) on ``worker`` with the arguments this release
    takes (`worker_init_takes_ps`)."""
    if worker_init_takes_ps(base):
        if ps is None:
            raise TypeError(f"{base.__name__}.__init__ of this SGLang takes a ParallelState 'ps'; the scheduler "
                            "passed none")
        base.__init__(worker, server_args=server_args, gpu_id=gpu_id, ps=ps, nccl_port=nccl_port,
                      target_worker=target_worker)
    else:
        base.__init__(worker, server_args=server_args, gpu_id=gpu_id, nccl_port=nccl_port,
                      target_worker=target_worker)


def draft_backend_factory(factory_cls: type, server_args: Any, draft_runner: Any, topk: int,
                          num_steps: int) -> Any:
    """``DraftBackendFactory`` for the draft runner.

    * 0.5.17: ``DraftBackendFactory(server_args, draft_model_runner, topk, speculative_num_steps, ...)``;
    * 0.5.23: ``DraftBackendFactory(draft_model_runner, topk, speculative_num_steps, ...)`` (backend choice
      read from the draft runner and runtime_context)."""
    if _accepts(factory_cls.__init__, "server_args"):
        return factory_cls(server_args, draft_runner, topk, num_steps)
    return factory_cls(draft_runner, topk, num_steps)


def shared_embed_and_head(draft_worker: Any) -> tuple[Any, Any]:
    """The target's (embedding, lm_head) the drafter may share.

    * 0.5.23: ``EagleDraftWorker._resolve_shared_embed_and_head()`` (pipeline-parallel aware);
    * 0.5.17: ``target_model.get_embed_and_head()``."""
    resolve = getattr(draft_worker, "_resolve_shared_embed_and_head", None)
    if resolve is not None:
        return resolve()
    return draft_worker.target_worker.model_runner.model.get_embed_and_head()


def kv_index_translating(model_runner: Any) -> bool:
    """Whether the runner translates KV indices (hierarchical / virtual KV ids), which PEAGLE does not support.

    * 0.5.23: ``model_runner.kv_index_translator.is_translating`` (built in ``alloc_memory_pool``);
    * 0.5.17: no translator: never."""
    translator = getattr(model_runner, "kv_index_translator", None)
    return bool(translator is not None and translator.is_translating)


def draft_extend_kwargs(fn: Callable[..., Any]) -> dict[str, Any]:
    """Keywords for ``eagle_worker_common.prepare_for_draft_extend`` beyond those both releases take.

    * 0.5.23: ``kv_loc_plan=`` (None: PEAGLE writes its own 2K-row window, not the verify window);
    * 0.5.17: no such keyword."""
    return {"kv_loc_plan": None} if _accepts(fn, "kv_loc_plan") else {}


def prefix_sharing(tree_cache: Any) -> bool:
    """Whether the prefix cache keeps prefixes for other requests (a radix cache that is on).

    * 0.5.23: ``tree_cache.supports_prefix_sharing()``;
    * 0.5.17: no such method: a tree cache (``is_tree_cache()``) that is not ``disable``-d."""
    if tree_cache is None:
        return False
    supports = getattr(tree_cache, "supports_prefix_sharing", None)
    if supports is not None:
        return bool(supports())
    is_tree = getattr(tree_cache, "is_tree_cache", None)
    return bool((is_tree() if is_tree is not None else True) and not getattr(tree_cache, "disable", False))


# ---------------------------------------------------------------------------------------------- CPU engine
def keep_intel_amx_attention() -> str:
    """Keep SGLang's ``intel_amx`` attention backend on a CPU without AMX (pedagle's CPU-engine tests; the layers
    keep their plain-PyTorch paths). Returns how, for logs and tests.

    * 0.5.23: the platform facts: ``runtime_context.override_platform(has_amx=True).install()`` (argument
      resolution asks ``get_platform().has_amx``);
    * 0.5.17: no platform facts; argument resolution's fallback to ``torch_native``
      (``arg_groups.overrides._attention_backend_platform_fallbacks``) asks ``cpu_has_amx_support()`` as
      imported into ``sglang.srt.arg_groups.overrides``: that one name answers True (the layers' own imports
      of it still ask the CPU)."""
    from sglang.srt import runtime_context

    override = getattr(runtime_context, "override_platform", None)
    if override is not None:
        if not runtime_context.get_platform().has_amx:
            override(has_amx=True).install()
        return "override_platform"
    overrides = importlib.import_module("sglang.srt.arg_groups.overrides")
    if not hasattr(overrides, "cpu_has_amx_support"):
        raise AttributeError("sglang.srt.arg_groups.overrides has neither override_platform nor "
                             "cpu_has_amx_support: cannot keep the intel_amx attention backend")
    if not getattr(overrides.cpu_has_amx_support, "_pedagle", False):
        def cpu_has_amx_support() -> bool:
            return True

        cpu_has_amx_support._pedagle = True          # type: ignore[attr-defined]
        overrides.cpu_has_amx_support = cpu_has_amx_support
    return "overrides.cpu_has_amx_support"


INTEL_AMX_BACKEND = "sglang.srt.layers.attention.intel_amx_backend"


def verify_attention_reads_pre_verify_lens() -> bool:
    """Whether the CPU engine's ``intel_amx`` attention hands extend attention the pre-verify sequence lengths
    in TARGET_VERIFY passes (an SGLang bug: each request's prefix then looks K+1 tokens short, and the verify
    attends to the wrong keys).

    * 0.5.17: ``IntelAMXAttnBackend.forward_extend`` reads ``seq_lens = forward_batch.seq_lens`` after the
      per-pass metadata (``_build_extend_metadata``: ``seq_lens + num_draft_tokens`` for a verify) and passes
      that;
    * 0.5.23: passes the metadata's lengths.

    Detected from the module's source text without importing it (importing SGLang's layers early would fix
    their AMX decisions before pedagle's CPU-engine set-up makes them)."""
    import ast

    spec = importlib.util.find_spec(INTEL_AMX_BACKEND)
    if spec is None or not spec.origin:
        return False
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name == "IntelAMXAttnBackend":
            methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
            fwd = methods.get("forward_extend")
            return "_build_extend_metadata" in methods and fwd is not None and \
                "seq_lens = forward_batch.seq_lens" in ast.unparse(fwd)
    return False


def fix_cpu_verify_lengths() -> bool:
    """Where `verify_attention_reads_pre_verify_lens` (0.5.17), make ``IntelAMXAttnBackend.forward_extend`` see
    the verify's own lengths (its metadata's ``seq_lens``) in TARGET_VERIFY passes, as 0.5.23 does; a no-op
    elsewhere. For SGLang's CPU engine only (pedagle's tests); returns whether the fix is installed."""
    if not verify_attention_reads_pre_verify_lens():
        return False
    IntelAMXAttnBackend = importlib.import_module(INTEL_AMX_BACKEND).IntelAMXAttnBackend

    original = IntelAMXAttnBackend.forward_extend
    if getattr(original, "_pedagle_verify_lens", False):
        return True

    @functools.wraps(original)
    def forward_extend(self, q, k, v, layer, forward_batch, *args, **kwargs):
        if not forward_batch.forward_mode.is_target_verify() or self.extend_metadata is None:
            return original(self, q, k, v, layer, forward_batch, *args, **kwargs)
        pre_verify = forward_batch.seq_lens
        forward_batch.seq_lens = self.extend_metadata[0]
        try:
            return original(self, q, k, v, layer, forward_batch, *args, **kwargs)
        finally:
            forward_batch.seq_lens = pre_verify

    forward_extend._pedagle_verify_lens = True        # type: ignore[attr-defined]
    IntelAMXAttnBackend.forward_extend = forward_extend
    return True


__all__ = ["resolve_target", "slot_reserve_target", "has_resolution_hooks", "register_speculative_step_wrapper",
           "resolving_view", "declare_resolution", "resolved_server_args", "load_default_models", "hook_server_args",
           "alloc_reserve_per_decode", "worker_init_takes_ps", "init_eagle_draft_worker", "draft_backend_factory",
           "shared_embed_and_head", "kv_index_translating", "draft_extend_kwargs", "prefix_sharing",
           "keep_intel_amx_attention", "verify_attention_reads_pre_verify_lens", "fix_cpu_verify_lengths", "SLOT_RESERVE_TARGETS", "SPECULATIVE_STEP_TARGET"]
