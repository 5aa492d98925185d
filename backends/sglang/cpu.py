"""SGLang's CPU engine (``SGLANG_USE_CPU_ENGINE=1``, ``device="cpu"``) for pedagle's tests and conformance runs.

SGLang 0.5.23 runs its engine on a CPU with CPU ops of its ``sgl_kernel`` package (PyPI has only CUDA builds;
the SGLang test environment installs pedagle's plain-PyTorch implementation, tests/sgl_kernel_cpu). Its CPU
attention backend with EAGLE support is ``intel_amx`` (decode/extend attention ops over the KV pool); on a CPU
without AMX, SGLang's argument resolution swaps it for ``torch_native``, which has no EAGLE draft/verify path.

Opt-in: with ``PEDAGLE_SGLANG_CPU_ENGINE=1`` (and ``SGLANG_USE_CPU_ENGINE=1``), `apply_in_process` tells SGLang's
platform facts that AMX is present (``override_platform(has_amx=True)``; SGLang 0.5.17, which has no platform
facts: its argument resolution's AMX probe, `compat.keep_intel_amx_attention`), so the ``intel_amx`` backend is kept;
the ops it calls then come from whatever ``sgl_kernel`` is installed. Nothing is patched in site-packages, and
SGLang's layers still take their plain-PyTorch paths (their own AMX probe, ``cpu_has_amx_support()``, asks the
CPU). `engine_kwargs` sets the environment and the override in this process (where ``sglang.Engine`` resolves
its arguments) and returns the engine keywords; the PEAGLE plugin calls `apply_in_process` in every SGLang process.
"""

from __future__ import annotations

import os
import sys
from typing import Any

OPT_IN_ENV = "PEDAGLE_SGLANG_CPU_ENGINE"
SGLANG_CPU_ENV = "SGLANG_USE_CPU_ENGINE"
ATTENTION_BACKEND = "intel_amx"


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
    Returns whether the override was installed."""
    if not requested():
        return False
    from . import compat

    compat.keep_intel_amx_attention()            # 0.5.23: override_platform; 0.5.17: argument resolution's probe
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
    apply_in_process()


def engine_kwargs(**overrides: Any) -> dict[str, Any]:
    """``sglang.Engine`` keywords for the CPU engine (after `prepare_env`): device, attention backend, and a
    KV pool sized for tests (``max_total_tokens``; SGLang sizes CPU pools from free RAM otherwise). ``overrides``
    win."""
    prepare_env()
    kw: dict[str, Any] = dict(device="cpu", attention_backend=ATTENTION_BACKEND, max_total_tokens=8192,
                              disable_cuda_graph=True, disable_overlap_schedule=True)
    kw.update(overrides)
    return kw
