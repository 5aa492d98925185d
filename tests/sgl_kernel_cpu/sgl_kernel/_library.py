"""The `sgl_kernel` torch.library namespace and a helper that defines one op with its CPU implementation."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

TRACE_ENV = "PEDAGLE_SGL_KERNEL_TRACE"  # a file: each op appends "<pid> <name>" on its first call in a process
_traced: set[str] = set()


def _traced_impl(name: str, impl: Callable) -> Callable:
    """impl, recording its first call per process in $PEDAGLE_SGL_KERNEL_TRACE (which ops an engine run used)."""

    @functools.wraps(impl)
    def wrapper(*args, **kwargs):
        path = os.environ.get(TRACE_ENV)
        if path and name not in _traced:
            _traced.add(name)
            with open(path, "a") as f:
                f.write(f"{os.getpid()} {name}\n")
        return impl(*args, **kwargs)

    return wrapper

LIBRARY = torch.library.Library("sgl_kernel", "DEF")  # noqa: TOR901  (kept alive for the process)


def define(schema: str, impl: Callable) -> Callable:
    """Define `sgl_kernel::<name>` from `schema` (SGLang's call sites fix names and order) with `impl` on CPU.

    Returns the op packet `torch.ops.sgl_kernel.<name>`, callable positionally or by keyword.
    """
    name = schema.split("(", 1)[0]
    impl = _traced_impl(name, impl)
    LIBRARY.define(schema)
    LIBRARY.impl(name, impl, "CPU")
    # Ops whose arguments are all ints/None (e.g. thread set-up) dispatch without a tensor.
    LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
    return getattr(torch.ops.sgl_kernel, name)


def not_implemented(name: str) -> Callable:
    """A callable that names `name` as missing from pedagle's CPU test kernels."""

    def _missing(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{name} is not implemented in pedagle's CPU test kernels: {name}")

    _missing.__name__ = name
    _missing.__qualname__ = name
    return _missing
