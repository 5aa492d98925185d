"""Shared pytest setup. Several engineers add to this file: keep each entry small and commented."""

import os

import pytest
import torch

# [triton] Without CUDA, run Triton kernels through the interpreter (test_expand.py, other kernel tests).
# Triton reads TRITON_INTERPRET when it is imported and when each @triton.jit runs, so it is set here,
# before any test module imports triton. An explicit TRITON_INTERPRET in the environment wins.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Every kernel module is defined now, in that mode: tests that unset the variable for a while
# (helpers_kernels.core_torch_path) cannot leave half of the kernels compiled and half interpreted.
from helpers_kernels import define_all_kernels  # noqa: E402

define_all_kernels()


# [threads] Tiny models run fastest on one intra-op thread, and CI's two cores are shared with other work.
# Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`.
@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
