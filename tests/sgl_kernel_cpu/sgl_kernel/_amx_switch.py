"""``PEDAGLE_SGLANG_CPU_AMX`` (1 | 0 | auto, read by `pedagle_backends.sglang.cpu`) where SGLang imports this package.

SGLang's layers decide at import whether to take their AMX branches (``cpu_has_amx_support()``), in every process
it spawns, and SGLang imports ``sgl_kernel`` before they do: importing this package applies the switch there
(`cpu.apply_amx_switch`). With 0 the package also leaves out ``convert_weight_packed``, the op by which SGLang
recognises an AMX-capable ``sgl_kernel``, so the plain branches are kept whatever the CPU and whenever the probe
is asked.
"""

from __future__ import annotations

import os

ENV = "PEDAGLE_SGLANG_CPU_AMX"


def forced() -> bool | None:
    """The switch's value: True (AMX branches on), False (off), None (auto: SGLang asks the CPU)."""
    if os.environ.get(ENV, "auto").strip().lower() in ("auto", ""):
        return None
    from pedagle_backends.sglang.cpu import amx_forced

    return amx_forced()


def apply() -> bool | None:
    """Set SGLang's AMX probe in this process if SGLang has loaded it (`cpu.apply_amx_switch`); the forced value."""
    if forced() is None:
        return None
    from pedagle_backends.sglang.cpu import apply_amx_switch

    return apply_amx_switch(import_probe=False)
