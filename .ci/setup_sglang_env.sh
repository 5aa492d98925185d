#!/usr/bin/env bash
# Create (idempotently) the virtual environment in which pedagle's SGLang backend is tested on a CPU machine,
# SGLang's engine included:
#   bash .ci/setup_sglang_env.sh VENV_DIR [SGLANG_VERSION]      (0.5.23, the default, or 0.5.17)
# Skips everything when VENV_DIR already has SGLang, torch and transformers at their pins, the modules SGLang's
# CPU engine imports, pedagle's CPU `sgl_kernel` test package and pedagle (both editable, pointing at this
# checkout, with the sglang plugin entry point).
#
# SGLang's CPU engine (0.5.23 and 0.5.17; `SGLANG_USE_CPU_ENGINE=1`, `sglang.Engine(..., device="cpu")`) calls ops of the
# `sgl_kernel` package, which PyPI publishes only as CUDA builds. tests/sgl_kernel_cpu is pedagle's own plain-
# PyTorch implementation of the ops the engine uses for dense Llama/Qwen3 targets with EAGLE-style speculation;
# it is installed here (import name `sgl_kernel`) and nowhere else.
#
# Order matters:
#   1. torch + torchvision at SGLang's torch pin (0.5.23: 2.14.1 + 0.29.1 from local disk; 0.5.17: 2.11.0 + 0.26.0),
#      transformers at SGLang's pin. SGLang's configs/ import
#      torchvision unconditionally (configs/deepseek_ocr.py via utils/hf_transformers/common.py), so torch and
#      torchvision must match. This is torch's CUDA wheel, with its nvidia-* libraries (~3 GB), although nothing
#      here uses a GPU. The CPU alternatives were tried and fail (2026-12-02):
#        - torch 2.14.1 installed --no-deps: `import torch` fails (libcudnn.so.9 not found; libtorch_cuda links
#          every nvidia library);
#        - torch 2.13.0+cpu (/opt/wheels) + torchvision 0.28.0 (the only build on PyPI / local disk is the CUDA
#          one): torchvision's _C.so needs libtorch_cuda.so, so `import torchvision` raises "operator
#          torchvision::nms does not exist"; without torchvision SGLang's config loading fails to import; a
#          CPU torchvision (download.pytorch.org/whl/cpu) is not reachable from CI.
#   2. sglang==$SGLANG_VERSION with --no-deps: its published dependency set is CUDA-only (flashinfer, sglang-kernel,
#      ...).
#   3. what SGLang's Python API and its CPU engine (tokenizer manager, scheduler, detokenizer, grammar backend,
#      model loader) import, under a constraints file that holds torch, torchvision and transformers at their pins.
#   4. pedagle's CPU `sgl_kernel` test package and pedagle itself, editable, --no-deps, plus test tools.
# pip's output goes to VENV/setup.log, shown only on failure.
set -euo pipefail

VENV="${1:?usage: setup_sglang_env.sh VENV_DIR}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SGLANG_VERSION="${2:-${PEDAGLE_SGLANG_VERSION:-0.5.23}}"
# Each SGLang release's own pins (its wheel's Requires-Dist), with the torchvision built for its torch and the
# tokenizers its transformers accepts. PEDAGLE_SGLANG_*_VERSION override one pin.
case "$SGLANG_VERSION" in
    0.5.23) pins=(2.14.1 0.29.1 5.19.0 0.23.2 0.2.7 2.8.0 0.18.0) ;;
    # 0.5.17: torch==2.11.0 (PyPI's CUDA build, as the vllm026 venv's), transformers==5.12.1 (needs
    # tokenizers<=0.23.0), xgrammar==0.2.1, openai==2.6.1; compressed-tensors unpinned (0.17.0 as the GPU kit)
    0.5.17) pins=(2.11.0 0.26.0 5.12.1 0.22.2 0.2.1 2.6.1 0.17.0) ;;
    *) echo "setup_sglang_env: no pins for SGLang $SGLANG_VERSION (known: 0.5.23, 0.5.17); set" \
            "PEDAGLE_SGLANG_{TORCH,TORCHVISION,TRANSFORMERS,TOKENIZERS,XGRAMMAR,OPENAI,COMPRESSED_TENSORS}_VERSION" >&2
       pins=("" "" "" "" "" "" "") ;;
esac
TORCH_VERSION="${PEDAGLE_SGLANG_TORCH_VERSION:-${pins[0]}}"
TORCHVISION_VERSION="${PEDAGLE_SGLANG_TORCHVISION_VERSION:-${pins[1]}}"
TRANSFORMERS_VERSION="${PEDAGLE_SGLANG_TRANSFORMERS_VERSION:-${pins[2]}}"
TOKENIZERS_VERSION="${PEDAGLE_SGLANG_TOKENIZERS_VERSION:-${pins[3]}}"
XGRAMMAR_VERSION="${PEDAGLE_SGLANG_XGRAMMAR_VERSION:-${pins[4]}}"
OPENAI_VERSION="${PEDAGLE_SGLANG_OPENAI_VERSION:-${pins[5]}}"
COMPRESSED_TENSORS_VERSION="${PEDAGLE_SGLANG_COMPRESSED_TENSORS_VERSION:-${pins[6]}}"
# numpy: 0.5.17's torch 2.11 brings triton 3.6, whose interpreter (TRITON_INTERPRET=1, how the tests run
# pedagle's Triton kernels on a CPU) converts 1-element arrays to int, an error from numpy 2.4 on (a warning before)
case "$SGLANG_VERSION" in
    0.5.17) NUMPY_SPEC="${PEDAGLE_SGLANG_NUMPY_SPEC:-numpy<2.4}" ;;
    *) NUMPY_SPEC="${PEDAGLE_SGLANG_NUMPY_SPEC:-numpy}" ;;
esac
for v in TORCH_VERSION TORCHVISION_VERSION TRANSFORMERS_VERSION TOKENIZERS_VERSION XGRAMMAR_VERSION OPENAI_VERSION \
         COMPRESSED_TENSORS_VERSION; do
    [ -n "${!v}" ] || { echo "setup_sglang_env: $v is not set for SGLang $SGLANG_VERSION" >&2; exit 2; }
done
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# The check's output (a traceback or assertion message when it fails) goes to CHECK_LOG, shown when it fails after
# the install. It imports SGLang's modules with SGLang's AMX branches forced on (PEDAGLE_SGLANG_CPU_AMX=1, see
# backends/sglang/cpu.py), so it asks the same of every host, with or without AMX: e.g. the AMX branch of
# layers/rotary_embedding/utils.py looks up an sgl_kernel op at import.
CHECK_LOG="$(mktemp "${TMPDIR:-/tmp}/setup_sglang_env.check.XXXXXX")"
trap 'rm -f "$CHECK_LOG"' EXIT
check() {
    [ -x "$VENV/bin/python" ] || { echo "no $VENV/bin/python" >"$CHECK_LOG"; return 1; }
    (cd / && SGLANG_VERSION="$SGLANG_VERSION" TORCH_VERSION="$TORCH_VERSION" NUMPY_SPEC="$NUMPY_SPEC" \
      TRANSFORMERS_VERSION="$TRANSFORMERS_VERSION" REPO="$REPO" SGLANG_USE_CPU_ENGINE=1 PEDAGLE_SGLANG_CPU_AMX=1 \
      "$VENV/bin/python" - <<'EOF'
import os, importlib.metadata as md, pathlib
def pinned(dist, want, got=None):
    got = got or md.version(dist)
    assert got == want, f"{dist} {got} installed, expected {want}"
pinned("sglang", os.environ["SGLANG_VERSION"])
pinned("torch", os.environ["TORCH_VERSION"], md.version("torch").split("+")[0])
pinned("transformers", os.environ["TRANSFORMERS_VERSION"])
from packaging.requirements import Requirement
assert md.version("numpy") in Requirement(os.environ["NUMPY_SPEC"]).specifier, \
    f"numpy {md.version('numpy')} installed, expected {os.environ['NUMPY_SPEC']}"
import pytest, pluggy, safetensors, tokenizers, tqdm  # noqa: F401
repo = pathlib.Path(os.environ["REPO"]).resolve()
# pedagle's CPU sgl_kernel, from this checkout
import sgl_kernel
assert pathlib.Path(sgl_kernel.__file__).resolve().is_relative_to(repo), f"sgl_kernel from {sgl_kernel.__file__}, " \
    f"expected pedagle's CPU test kernels of {repo}"
# SGLang's Python API and the modules its CPU engine's processes import
import sglang.srt.plugins  # noqa: F401
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm  # noqa: F401
from sglang.srt.speculative import spec_registry, eagle_worker_v2, eagle_info  # noqa: F401
from sglang.srt.server_args import ServerArgs  # noqa: F401
from sglang.srt.model_executor.forward_batch_info import ForwardBatch  # noqa: F401
from sglang.srt.entrypoints.engine import Engine  # noqa: F401
import sglang.srt.managers.scheduler, sglang.srt.managers.tokenizer_manager  # noqa: F401,E401
import sglang.srt.managers.detokenizer_manager, sglang.srt.model_executor.model_runner  # noqa: F401,E401
import sglang.srt.layers.attention.intel_amx_backend  # noqa: F401
import sglang.srt.models.llama, sglang.srt.models.qwen3, sglang.srt.models.llama_eagle3  # noqa: F401,E401
from sglang.srt.utils import cpu_has_amx_support
assert cpu_has_amx_support(), "PEDAGLE_SGLANG_CPU_AMX=1 did not turn SGLang's AMX probe on (cpu_has_amx_support())"
import xgrammar, llguidance  # noqa: F401,E401
import pedagle_core
assert pathlib.Path(pedagle_core.__file__).resolve().is_relative_to(repo), f"pedagle_core from {pedagle_core.__file__}"
eps = md.entry_points(group="sglang.srt.plugins")
assert any(ep.name == "pedagle" for ep in eps), "pedagle SGLang plugin entry point"
import pedagle_conformance, pedagle_backends.sglang  # noqa: F401  (the package-dir mapping of this checkout)
EOF
) >"$CHECK_LOG" 2>&1
}

if check; then
    echo "setup_sglang_env: $VENV already usable (sglang $SGLANG_VERSION engine on CPU, torch $TORCH_VERSION); nothing to do"
    exit 0
fi
if [ -x "$VENV/bin/python" ]; then
    echo "setup_sglang_env: $VENV not usable as it is ($(grep -v '^[[:space:]]*$' "$CHECK_LOG" | tail -n 1)); installing"
fi

start=$(date +%s)
mkdir -p "$VENV"
LOG="$VENV/setup.log"
: >"$LOG"
fail() {
    echo "setup_sglang_env: $1 failed; pip's log ($LOG), last lines:" >&2
    tail -n 60 "$LOG" >&2
    exit 1
}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" >>"$LOG" 2>&1 || fail "python -m venv"
fi
pip_log() { "$VENV/bin/python" -m pip "$@" >>"$LOG" 2>&1; }
CONSTRAINTS="$VENV/pins.txt"
printf 'torch==%s\ntorchvision==%s\ntransformers==%s\n%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" \
    "$TRANSFORMERS_VERSION" "$NUMPY_SPEC" >"$CONSTRAINTS"

pip_log install --upgrade "pip>=24" setuptools wheel || fail "pip upgrade"
# 1. torch + torchvision (local disk), transformers at SGLang's pin
pip_log install -c "$CONSTRAINTS" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "transformers==$TRANSFORMERS_VERSION" \
    || fail "torch/torchvision/transformers"
# 2. SGLang without its (CUDA-only) dependency set
pip_log install --no-deps "sglang==$SGLANG_VERSION" || fail "sglang"
# 3. what SGLang's API and CPU engine import (found by starting the engine).
#    NB: `attrs`, never the unrelated PyPI package `attr` (it breaks aiohttp).
pip_log install -c "$CONSTRAINTS" \
    orjson psutil pybase64 requests urllib3 certifi starlette msgspec pyzmq ipython traitlets \
    aiohttp multidict attrs yarl propcache aiohappyeyeballs aiosignal frozenlist dill "apache-tvm-ffi==0.1.11" \
    "sentencepiece==0.2.1" "compressed-tensors==$COMPRESSED_TENSORS_VERSION" loguru gguf einops "openai==$OPENAI_VERSION" sniffio partial-json-parser \
    setproctitle "uvicorn>=0.51" fastapi uvloop opentelemetry-api pydantic \
    "xgrammar==$XGRAMMAR_VERSION" "llguidance>=1.7.6,<2" tiktoken "blobfile==3.0.0" python-multipart "prometheus-client>=0.20" \
    xxhash zstandard "openai-harmony==0.0.4" "numba==0.65.1" interegular pillow scipy regex python-dateutil \
    distro easydict packaging "tokenizers==$TOKENIZERS_VERSION" anthropic watchfiles nvidia-ml-py \
    || fail "SGLang's engine dependencies"
# 4. pedagle's CPU sgl_kernel test package and pedagle (editable, this checkout), their light dependencies, test tools
pip_log install -e "$REPO/tests/sgl_kernel_cpu" --no-deps || fail "pedagle-sgl-kernel-cpu"
pip_log install -e "$REPO" --no-deps || fail "pedagle (editable)"
pip_log install -c "$CONSTRAINTS" "safetensors>=0.4" "pluggy>=1.3" numpy tqdm "pytest>=8" "hypothesis>=6" \
    || fail "pedagle's dependencies"

if ! check; then
    echo "setup_sglang_env: $VENV failed its check after install; the check's output:" >&2
    tail -n 60 "$CHECK_LOG" >&2
    echo "setup_sglang_env: installed versions:" >&2
    (cd / && "$VENV/bin/python" - <<'EOF' >&2) || true
import importlib.metadata as md
for p in ("sglang", "torch", "torchvision", "transformers", "pedagle-sgl-kernel-cpu", "pedagle"):
    try:
        print(" ", p, md.version(p))
    except md.PackageNotFoundError:
        print(" ", p, "MISSING")
EOF
    exit 1
fi
echo "setup_sglang_env: $VENV ready in $(( $(date +%s) - start )) s"
