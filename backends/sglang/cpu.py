"""SGLang's CPU engine (``SGLANG_USE_CPU_ENGINE=1``, ``device="cpu"``) for pedagle's tests and conformance runs.

SGLang 0.5.23 runs its engine on a CPU with CPU ops of its ``sgl_kernel`` package (PyPI has only CUDA builds;
the SGLang test environment installs pedagle's plain-PyTorch implementation, tests/sgl_kernel_cpu). Its CPU
attention backend with EAGLE support is ``intel_amx`` (decode/extend attention ops over the KV pool); on a CPU
without AMX, SGLang's argument resolution swaps it for ``torch_native``, which has no EAGLE draft/verify path.

Opt-in: with ``PEDAGLE_SGLANG_CPU_ENGINE=1`` (and ``SGLANG_USE_CPU_ENGINE=1``), `apply_in_process` tells SGLang's
platform facts that AMX is present (``override_platform(has_amx=True)``; SGLang 0.5.17, which has no platform
facts: its argument resolution's AMX probe, `compat.keep_intel_amx_attention`), so the ``intel_amx`` backend is kept;
the ops it calls then come from whatever ``sgl_kernel`` is installed. Nothing is patched in site-packages.
`engine_kwargs` sets the environment and the override in this process (where ``sglang.Engine`` resolves its
arguments) and returns the engine keywords; the PEAGLE plugin calls `apply_in_process` in every SGLang process.

AMX switch (a test / CPU-engine facility): ``PEDAGLE_SGLANG_CPU_AMX=1|0|auto`` (default auto) decides whether
SGLang's layers take their AMX branches (``cpu_has_amx_support()``: packed-weight linears, ``rmsnorm_cpu``,
``rotary_embedding_cpu``, ...) whatever the CPU: 1 forces them (served by pedagle's CPU ops on any x86 CPU), 0 keeps
the plain-PyTorch branches even on a CPU with AMX, auto lets SGLang ask the CPU. SGLang caches the answer in module
globals at import, so it is decided before its layers are imported, in every SGLang process: `apply_amx_switch`
sets SGLang's probe (``sglang.srt.utils.common.is_amx_tile_supported``); `prepare_env` calls it in the engine's
process, and pedagle's CPU ``sgl_kernel`` test package calls it when SGLang first imports that package in a spawned
process (before the layers decide; where ``sgl_kernel`` comes before the probe module, an import hook sets the probe
as soon as that module has run); with 0 that package also leaves out ``convert_weight_packed``, by which SGLang
recognises an AMX-capable ``sgl_kernel``. `apply_in_process` (the plugin, in every process) checks that the
layers' cached decisions agree, and raises otherwise. The engine tests run with 0 and start a few engines with 1
(tests/sglang/test_engine_amx.py).

Overlap scheduling: SGLang switches it off for speculative decoding on a CPU; with the opt-in, PEAGLE keeps it
when asked for (`spec_algo.keeps_overlap_on_cpu`; its FutureMap relays the drafts without SGLang's Triton gather).
"""

from __future__ import annotations

import os
import sys
from typing import Any

OPT_IN_ENV = "PEDAGLE_SGLANG_CPU_ENGINE"
SGLANG_CPU_ENV = "SGLANG_USE_CPU_ENGINE"
ATTENTION_BACKEND = "intel_amx"
AMX_ENV = "PEDAGLE_SGLANG_CPU_AMX"
_AMX_VALUES: dict[str, bool | None] = {"1": True, "0": False, "auto": None, "": None}
AMX_PROBE_MODULE = "sglang.srt.utils.common"       # cpu_has_amx_support() reads this module's globals
AMX_PROBE = "is_amx_tile_supported"
_AMX_CACHES = ("_is_cpu_amx_available", "_cpu_has_amx_support")  # module globals SGLang's layers cache it in


def amx_forced() -> bool | None:
    """``PEDAGLE_SGLANG_CPU_AMX``: True (1: SGLang's AMX branches forced on), False (0: off), None (auto / unset)."""
    raw = os.environ.get(AMX_ENV, "auto").strip().lower()
    if raw not in _AMX_VALUES:
        raise ValueError(f"{AMX_ENV}={raw!r}: expected 1 (SGLang's AMX branches on), 0 (off) or auto")
    return _AMX_VALUES[raw]


def amx_decisions() -> dict[str, bool]:
    """The AMX decisions that SGLang modules loaded in this process cached at import ({"module.global": value})."""
    out: dict[str, bool] = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("sglang.") or mod is None:
            continue
        for attr in _AMX_CACHES:
            value = vars(mod).get(attr)
            if isinstance(value, bool):
                out[f"{name}.{attr}"] = value
    return out


def _set_probe(common: Any, forced: bool) -> None:
    """Point SGLang's probe at ``forced``. A probe module still being imported (its probe not assigned yet: an
    SGLang whose probe module imports ``sgl_kernel`` first) gets the answer through torch's, once."""
    if hasattr(common, AMX_PROBE):
        setattr(common, AMX_PROBE, forced)
        return
    import torch

    original = torch.cpu._is_amx_tile_supported

    def answer_once() -> bool:
        torch.cpu._is_amx_tile_supported = original
        return forced

    torch.cpu._is_amx_tile_supported = answer_once


class _ProbeOnImport:
    """A one-shot import hook (``sys.meta_path``): sets SGLang's probe as soon as its module has been executed, for a
    process in which `sgl_kernel` is imported before SGLang's probe module."""

    def __init__(self, forced: bool) -> None:
        self.forced = forced

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != AMX_PROBE_MODULE:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module, forced = spec.loader.exec_module, self.forced

        def exec_then_force(module: Any) -> None:
            exec_module(module)
            setattr(module, AMX_PROBE, forced)

        spec.loader.exec_module = exec_then_force      # this spec's own loader instance
        return spec


def apply_amx_switch(import_probe: bool = True) -> bool | None:
    """Apply ``PEDAGLE_SGLANG_CPU_AMX`` in this process; returns the forced value (None: auto, nothing done).

    ``import_probe``: import SGLang's probe module if it is not loaded yet (False: act only once SGLang has
    loaded it, as `sgl_kernel` does when SGLang imports it). Raises RuntimeError when SGLang modules of this
    process already cached the other answer (the switch came too late here)."""
    forced = amx_forced()
    if forced is None:
        return None
    common = sys.modules.get(AMX_PROBE_MODULE)
    if common is None:
        if not import_probe:
            if not any(isinstance(f, _ProbeOnImport) for f in sys.meta_path):
                sys.meta_path.insert(0, _ProbeOnImport(forced))
            return forced
        import importlib

        common = importlib.import_module(AMX_PROBE_MODULE)
    _set_probe(common, forced)
    stale = sorted(k for k, v in amx_decisions().items() if v != forced)
    if stale:
        raise RuntimeError(f"{AMX_ENV}={int(forced)} came too late in process {os.getpid()}: SGLang modules "
                           f"already decided AMX={not forced} at import: {stale[:5]}")
    return forced


def requested() -> bool:
    """Both switches set: SGLang's CPU engine, and pedagle's opt-in to keep intel_amx attention without AMX."""
    return os.environ.get(SGLANG_CPU_ENV) == "1" and os.environ.get(OPT_IN_ENV) == "1"


def engine_status() -> tuple[bool, str]:
    """(can SGLang's CPU engine run here with EAGLE-style speculation, why not)."""
    try:
        import sgl_kernel  # noqa: F401
        import torch
    except ImportError as e:
        return False, f"no sgl_kernel with CPU ops importable ({e}); the SGLang test environment installs " \
                      "pedagle's (bash .ci/setup_sglang_env.sh VENV)"
    missing = [op for op in ("decode_attention_cpu", "extend_attention_cpu", "verify_tree_greedy_cpu")
               if not hasattr(torch.ops.sgl_kernel, op)]
    if missing:
        return False, f"sgl_kernel lacks the CPU ops {missing}"
    if "sglang.srt.utils.common" in sys.modules and os.environ.get(SGLANG_CPU_ENV) != "1":
        from sglang.srt.utils.common import is_cpu

        if not is_cpu():
            return False, f"sglang was imported before {SGLANG_CPU_ENV}=1 was set (SGLang caches is_cpu())"
    return True, ""


def apply_in_process() -> bool:
    """In an SGLang process with the opt-in set: keep the intel_amx attention backend on a CPU without AMX.
    Returns whether the override was installed. Also applies (and checks) the AMX switch, `apply_amx_switch`."""
    apply_amx_switch(import_probe=False)
    if not requested():
        return False
    from . import compat

    compat.keep_intel_amx_attention()            # 0.5.23: override_platform; 0.5.17: argument resolution's probe
    compat.fix_cpu_verify_lengths()              # 0.5.17's intel_amx verify passes pre-verify lengths (a no-op on 0.5.23)
    return True


def prepare_env() -> None:
    """Set the two switches in os.environ (inherited by SGLang's spawned processes) and apply them here.

    Also ``OMP_NUM_THREADS=1`` unless already set: SGLang's scheduler, detokenizer and tokenizer manager share the
    cores, and intra-op threads on the engine's small tensors then wait on each other (measured on 2 cores under
    load: one decode-attention call 101 ms with 2 threads, 2.8 ms with 1). Read by the spawned processes' torch.
    """
    os.environ[SGLANG_CPU_ENV] = "1"
    os.environ[OPT_IN_ENV] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ok, reason = engine_status()
    if not ok:
        raise RuntimeError(f"SGLang's CPU engine cannot run here: {reason}")
    apply_amx_switch()
    apply_in_process()


def engine_kwargs(**overrides: Any) -> dict[str, Any]:
    """``sglang.Engine`` keywords for the CPU engine (after `prepare_env`): device, attention backend, and a
    KV pool sized for tests (``max_total_tokens``; SGLang sizes CPU pools from free RAM otherwise), CUDA graphs and
    overlap scheduling off. ``overrides`` win: ``disable_overlap_schedule=False`` runs a PEAGLE engine with SGLang's
    overlap scheduler, which this opt-in lets PEAGLE keep on a CPU (`spec_algo.keeps_overlap_on_cpu`)."""
    prepare_env()
    kw: dict[str, Any] = dict(device="cpu", attention_backend=ATTENTION_BACKEND, max_total_tokens=8192,
                              disable_cuda_graph=True, disable_overlap_schedule=True)
    kw.update(overrides)
    return kw
