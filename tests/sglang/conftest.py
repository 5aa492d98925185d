"""Tests of pedagle's SGLang backend; they run inside the SGLang virtual environment:

    bash .ci/setup_sglang_env.sh /work/venvs/sglang && /work/venvs/sglang/bin/python -m pytest tests/sglang -q

They exercise SGLang 0.5.23's real Python classes (plugin loader, speculative-algorithm registry,
ServerArgs, ModelConfig, memory pools, ForwardBatch, RadixAttention and the torch-native attention backend)
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
