#!/usr/bin/env python3
"""Stand-ins for two DeepSeek attention backends in the SGLang tree carried to the lent GPU (run there, after unpacking).

SGLang 0.5.17's EAGLE workers import ``sglang.srt.layers.attention.dsa_backend`` and ``deepseek_v4_backend`` on CUDA
while capturing their draft CUDA graphs (``EagleDraftWorker._capture_cuda_graphs`` builds an isinstance list of graph-
capable backends) and in ``DraftBackendFactory``. Those modules import DeepGEMM, CUTLASS-DSL and TileLang at module
level, which the carried kit leaves out (hundreds of MB, DeepSeek models only). Seen on an H100, 2026-12-07: SGLang's
own EAGLE3 failed at start-up with ``ModuleNotFoundError: No module named 'deep_gemm'``.

This replaces the two modules in the carried tree with stand-ins that define the imported class names; constructing
any of them raises, so a run that would really use DeepSeek sparse attention fails loudly instead of silently. The
dense Llama / Qwen3 targets and drafters run here never construct them. The original files are kept beside them
(``*.py.orig``). Nothing in pedagle uses this; it is a property of the GPU kit only.

    python3 bench/gpu_sglang_stubs.py /tmp/site-sglang
"""

from __future__ import annotations

import sys
from pathlib import Path

MODULES = {
    "dsa_backend.py": ["DeepseekSparseAttnBackend", "DeepseekSparseAttnMultiStepBackend"],
    "deepseek_v4_backend.py": ["DeepseekV4AttnBackend", "DeepseekV4MultiStepBackend"],
}

TEMPLATE = '''"""Stand-in written by pedagle's bench/gpu_sglang_stubs.py: DeepSeek attention is not carried to this machine."""


class _NotCarried:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{{type(self).__name__}}: SGLang's DeepSeek attention backends are not carried to this "
                           "machine (bench/gpu_sglang_stubs.py)")

{classes}
'''


def stub(site: Path) -> list[Path]:
    attn = site / "sglang" / "srt" / "layers" / "attention"
    if not attn.is_dir():
        raise SystemExit(f"{attn}: no SGLang attention package here (unpack the SGLang tree first)")
    done = []
    for name, classes in MODULES.items():
        path = attn / name
        orig = path.with_name(name + ".orig")
        if path.exists() and not orig.exists():
            path.rename(orig)
        body = "\n\n".join(f"class {c}(_NotCarried):\n    pass\n" for c in classes)
        path.write_text(TEMPLATE.format(classes=body))
        done.append(path)
    return done


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: gpu_sglang_stubs.py SITE_DIR (e.g. /tmp/site-sglang)")
    for p in stub(Path(sys.argv[1])):
        print("stand-in:", p)
