"""The GPU-kit helpers under bench/ that run on the lent GPU machine, checked on the CPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sglang_stubs_replace_the_deepseek_backends(tmp_path):
    attn = tmp_path / "sglang" / "srt" / "layers" / "attention"
    attn.mkdir(parents=True)
    (attn / "dsa_backend.py").write_text("import deep_gemm  # not carried\n")
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_sglang_stubs.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("stand-in:") == 2
    assert (attn / "dsa_backend.py.orig").read_text() == "import deep_gemm  # not carried\n"
    for name, classes in (("dsa_backend", ["DeepseekSparseAttnBackend", "DeepseekSparseAttnMultiStepBackend"]),
                          ("deepseek_v4_backend", ["DeepseekV4AttnBackend", "DeepseekV4MultiStepBackend"])):
        mod = _load(attn / f"{name}.py")                  # imports with no DeepGEMM / CUTLASS present
        for c in classes:
            with pytest.raises(RuntimeError, match="not carried"):
                getattr(mod, c)(object())
    # idempotent: a second run keeps the original, not the stand-in, as .orig
    subprocess.run([sys.executable, str(REPO / "bench" / "gpu_sglang_stubs.py"), str(tmp_path)], check=True,
                   capture_output=True)
    assert (attn / "dsa_backend.py.orig").read_text() == "import deep_gemm  # not carried\n"


def test_sglang_stubs_refuse_a_directory_without_sglang(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_sglang_stubs.py"), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "no SGLang attention package" in r.stderr
