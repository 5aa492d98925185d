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


@functools.lru_cache(maxsize=None)
def _cuda_l2_bytes(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).L2_cache_size)


CPU_L2_BYTES = 32 << 20  # what the launch heuristics assume on the CPU (Triton's interpreter)


def l2_bytes(device: torch.device) -> int:
    """L2 cache bytes of a CUDA device; `CPU_L2_BYTES` for any other device."""
    if device.type != "cuda":
        return CPU_L2_BYTES
    return _cuda_l2_bytes(device.index if device.index is not None else torch.cuda.current_device())


N_COUNTERS = 1 << 16
_COUNTERS: dict[tuple, torch.Tensor] = {}


def ticket_counters(device: torch.device, owner: str) -> torch.Tensor:
    """``N_COUNTERS`` int32 zeros on ``device``, one buffer per owner (a kernel family whose programs take
    tickets to elect the one that reduces; each launch leaves the counters it used at zero again)."""
    key = (owner, device.type, device.index)
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.zeros(N_COUNTERS, dtype=torch.int32, device=device)
    return _COUNTERS[key]


__all__ = ["CPU_L2_BYTES", "CPU_SM_COUNT", "N_COUNTERS", "l2_bytes", "sm_count", "ticket_counters"]
