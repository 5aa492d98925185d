"""Programmatic dependent launch (PDL) for the drafter step's kernels, Hopper and newer.

A batch-1 drafter step is ~50 dependent launches of a few microseconds each; between two of them the GPU
drains the first grid, then ramps the second one up (block scheduling, address set-up, the first weight
tiles in flight). With PDL a kernel is launched while its predecessor still runs: its programs become
resident as resources free up, do the work that does not depend on the predecessor (address set-up,
prefetching weights into L2), then wait (``griddepcontrol.wait``) until the predecessor has finished and
its writes are visible. The kernels here follow one rule:

* nothing is read that an earlier kernel may have written, and nothing is written at all, before
  ``gdc_wait`` (a freed input's memory can be handed to this kernel's output by the allocator);
* right after the wait, ``gdc_launch_dependents`` lets the next kernel start its own pre-wait part.

Every kernel waits in every program, so "kernel n finished" implies "kernels < n finished" (the chain is
transitive) and a kernel without PDL (cuBLAS, torch) after or before them keeps plain stream order. Graph
capture records the programmatic edges (CUDA >= 12.3).

`enabled(device)` is the switch (`ENABLED` = False or ``PEDAGLE_PDL=0`` turns it off: the path before PDL,
for benchmarks); `launch_kwargs` is what a launcher adds to a Triton launch. Under TRITON_INTERPRET=1 and
on GPUs before Hopper it is off.
"""

from __future__ import annotations

import functools
import os

import torch
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
ENABLED = os.environ.get("PEDAGLE_PDL", "1") != "0"
"""Module switch (benchmarks compare the step with and without PDL in one process)."""


@functools.lru_cache(maxsize=None)
def _supported(index: int) -> bool:
    extra = getattr(getattr(tl, "extra", None), "cuda", None)
    has_gdc = extra is not None and hasattr(extra, "gdc_wait") and hasattr(extra, "gdc_launch_dependents")
    return has_gdc and torch.cuda.get_device_capability(index)[0] >= 9


def enabled(device: torch.device) -> bool:
    """Whether kernels launched on ``device`` use PDL now."""
    if not ENABLED or INTERPRETED or device.type != "cuda":
        return False
    return _supported(device.index if device.index is not None else torch.cuda.current_device())


def launch_kwargs(device: torch.device) -> dict:
    """``{"launch_pdl": True}`` when `enabled`, else ``{}`` (pass with ``PDL=bool(kw)`` to the kernel)."""
    return {"launch_pdl": True} if enabled(device) else {}
