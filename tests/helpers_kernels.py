"""The Triton kernel modules the tests exercise: compiled on CUDA, interpreted on the CPU (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def kernel_module(name: str) -> ModuleType | None:
    """``pedagle_core.kernels.<name>`` if its kernels can run on DEVICE, else None (triton missing, or
    TRITON_INTERPRET unset on a CPU machine); the references are tested either way."""
    try:
        mod = importlib.import_module(f"pedagle_core.kernels.{name}")
    except ImportError:
        return None
    return mod if mod.can_run(DEVICE) else None
