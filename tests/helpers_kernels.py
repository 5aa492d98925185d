"""The Triton kernel modules the tests exercise: compiled on CUDA, interpreted on the CPU (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported)."""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
from collections.abc import Iterator
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


def define_all_kernels() -> None:
    """Import every ``pedagle_core.kernels`` module now (no-op without triton). ``@triton.jit`` reads
    TRITON_INTERPRET when a kernel is defined, and kernels of one module call shared ``@triton.jit`` helpers of
    another (``jit_math``): a module first imported while a test has the variable unset would define compiled
    helpers that the interpreted kernels cannot call. Called by tests/conftest.py right after it sets the
    variable, so every kernel and helper is defined in the same mode whatever the test order."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return
    import pedagle_core.kernels as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")


@contextlib.contextmanager
def core_torch_path() -> Iterator[None]:
    """TRITON_INTERPRET unset for the duration: the core then takes its plain-PyTorch path on CPU tensors, as
    it does on a user's CPU machine (reference runs the engine tests compare against); restored afterwards."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
