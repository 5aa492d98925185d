"""Shared pytest setup. Several engineers add to this file: keep each entry small and commented."""

import os

import torch

# [triton] Without CUDA, run Triton kernels through the interpreter (test_expand.py, other kernel tests).
# Triton reads TRITON_INTERPRET when it is imported and when each @triton.jit runs, so it is set here,
# before any test module imports triton. An explicit TRITON_INTERPRET in the environment wins.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
