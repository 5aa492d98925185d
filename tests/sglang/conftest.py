"""Tests of pedagle's SGLang backend; they run inside the SGLang virtual environment:

    bash .ci/setup_sglang_env.sh /work/venvs/sglang && /work/venvs/sglang/bin/python -m pytest tests/sglang -q

``--sglang-cases versions`` selects the version-dependent subset (tests/sglang/subset.py; CI runs it on SGLang
0.5.17, the oldest supported release, in ~/.cache/pedagle/venvs/sglang0517).

They exercise the installed SGLang's (0.5.17-0.5.23) real Python classes (plugin loader, speculative-algorithm
registry, ServerArgs, ModelConfig, memory pools, ForwardBatch, RadixAttention and the torch-native attention backend)
on the CPU. SGLang's engine (scheduler, CUDA attention backends, the worker's forward loop) does not run on a
CPU-only machine; ``bench/sglang_gpu_e2e.py`` covers that on a GPU. Without SGLang installed (pedagle's
main environment) nothing here is collected.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from importlib import metadata

collect_ignore_glob: list[str] = []
try:            # the distribution, not find_spec: this folder (tests/sglang) is itself importable as "sglang"
    metadata.version("sglang")
except metadata.PackageNotFoundError:
    collect_ignore_glob = ["test_*.py"]

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", message="Only CUDA")

import subset  # noqa: E402  (this folder, on sys.path above)


def pytest_addoption(parser):
    parser.addoption("--sglang-cases", choices=subset.CHOICES, default="all",
                     help="SGLang backend tests: all (default), or versions: only those marked sglang_versions, "
                          "the engine runs cut to target-only + PEAGLE K=3 (tests/sglang/subset.py)")


def pytest_configure(config):
    config.addinivalue_line("markers", f"{subset.MARK}: part of the SGLang suite's `--sglang-cases versions` subset")
    subset.CASES = config.getoption("--sglang-cases", default="all")


def pytest_collection_modifyitems(config, items):
    if not subset.versions_only():
        return
    here = Path(__file__).parent

    def dropped(item) -> bool:              # only this directory's tests are subject to the option
        return Path(str(item.path)).is_relative_to(here) and not item.get_closest_marker(subset.MARK)

    gone = [i for i in items if dropped(i)]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = [i for i in items if not dropped(i)]
