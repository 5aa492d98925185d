"""Facts about the device a kernel launches on, cached per device (shared by the kernels' launch heuristics)."""

from __future__ import annotations

import functools

import torch

CPU_SM_COUNT = 8        # what the launch heuristics assume on the CPU (Triton's interpreter)


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; `CPU_SM_COUNT` for any other device."""
    if device.type != "cuda":
        return CPU_SM_COUNT
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


__all__ = ["CPU_SM_COUNT", "sm_count"]
