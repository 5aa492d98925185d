#!/usr/bin/env bash
# Create (idempotently) the virtual environment in which pedagle's SGLang backend is tested on a CPU machine:
#   bash .ci/setup_sglang_env.sh VENV_DIR
# Skips everything when VENV_DIR already imports SGLang's Python API at the pinned version, torch at the pin,
# transformers at the pin, and pedagle (editable, pointing at this checkout, with its sglang plugin entry point).
#
# What this environment can and cannot do (see backends/sglang/README.md): SGLang 0.5.23's scheduler, model
# forward and attention backends need `sgl_kernel` ops, published only as CUDA wheels, so no SGLang engine
# runs on a CPU-only machine. Its Python API (plugins, speculative-algorithm registry, ServerArgs, worker
# classes, ForwardBatch) imports and runs, which is what tests/sglang exercises.
#
# Order matters:
#   1. torch==2.14.1 + torchvision==0.29.1 first, from local disk (find-links / the local index): SGLang 0.5.23
#      pins torch==2.14.1, and its configs/ import torchvision unconditionally, so they must match.
#   2. sglang==0.5.23 with --no-deps: its published dependencies are CUDA-only (flashinfer, sgl-kernel, ...).
#   3. the light dependencies its Python API needs at import time, under a constraints file that holds torch,
#      torchvision and transformers at their pins (so nothing swaps torch for another build).
#   4. pedagle itself, editable, --no-deps, plus its light dependencies and the test tools.
set -euo pipefail

VENV="${1:?usage: setup_sglang_env.sh VENV_DIR}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SGLANG_VERSION="${PEDAGLE_SGLANG_VERSION:-0.5.23}"
TORCH_VERSION="${PEDAGLE_SGLANG_TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${PEDAGLE_SGLANG_TORCHVISION_VERSION:-0.29.1}"
TRANSFORMERS_VERSION="${PEDAGLE_SGLANG_TRANSFORMERS_VERSION:-5.19.0}"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
    [ -x "$VENV/bin/python" ] || return 1
    (cd / && SGLANG_VERSION="$SGLANG_VERSION" TORCH_VERSION="$TORCH_VERSION" \
      TRANSFORMERS_VERSION="$TRANSFORMERS_VERSION" REPO="$REPO" "$VENV/bin/python" - <<'EOF'
import os, importlib.metadata as md, pathlib
assert md.version("sglang") == os.environ["SGLANG_VERSION"], "sglang version"
assert md.version("torch").split("+")[0] == os.environ["TORCH_VERSION"], "torch version"
assert md.version("transformers") == os.environ["TRANSFORMERS_VERSION"], "transformers version"
import pytest, pluggy, safetensors, tokenizers, tqdm  # noqa: F401
# SGLang's Python API, the modules the backend and its tests use
import sglang.srt.plugins  # noqa: F401
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm  # noqa: F401
from sglang.srt.speculative import spec_registry, eagle_worker_v2, eagle_info  # noqa: F401
from sglang.srt.server_args import ServerArgs  # noqa: F401
from sglang.srt.model_executor.forward_batch_info import ForwardBatch  # noqa: F401
import pedagle_core
assert pathlib.Path(pedagle_core.__file__).resolve().is_relative_to(pathlib.Path(os.environ["REPO"]).resolve())
eps = md.entry_points(group="sglang.srt.plugins")
assert any(ep.name == "pedagle" for ep in eps), "pedagle SGLang plugin entry point"
import pedagle_conformance, pedagle_backends.sglang  # noqa: F401  (the package-dir mapping of this checkout)
EOF
) >/dev/null 2>&1
}

if check; then
    echo "setup_sglang_env: $VENV already usable (sglang $SGLANG_VERSION, torch $TORCH_VERSION); nothing to do"
    exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==%s\ntorchvision==%s\ntransformers==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" "$TRANSFORMERS_VERSION" \
    >"$CONSTRAINTS"

"${PIP[@]}" install -q --upgrade "pip>=24" setuptools wheel
# 1. torch + torchvision (local disk), transformers at SGLang's pin
"${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "transformers==$TRANSFORMERS_VERSION"
# 2. SGLang without its (CUDA-only) dependency set
"${PIP[@]}" install -q --no-deps "sglang==$SGLANG_VERSION"
# 3. what SGLang's Python API imports (sglang.srt.server_args, speculative/*, managers/schedule_batch, ...).
#    NB: `attrs`, never the unrelated PyPI package `attr` (it breaks aiohttp).
"${PIP[@]}" install -q -c "$CONSTRAINTS" \
    orjson psutil pybase64 requests urllib3 certifi starlette msgspec pyzmq ipython traitlets \
    aiohttp multidict attrs yarl propcache aiohappyeyeballs aiosignal frozenlist dill apache-tvm-ffi \
    sentencepiece compressed-tensors loguru gguf einops openai sniffio partial-json-parser setproctitle \
    uvicorn fastapi uvloop opentelemetry-api pydantic
# 4. pedagle (editable, this checkout) and its light dependencies + test tools
"${PIP[@]}" install -q -e "$REPO" --no-deps
"${PIP[@]}" install -q -c "$CONSTRAINTS" "safetensors>=0.4" "pluggy>=1.3" "tokenizers>=0.20" numpy tqdm \
    "pytest>=8" "hypothesis>=6"

if ! check; then
    echo "setup_sglang_env: $VENV failed its check after install:" >&2
    "$VENV/bin/python" - <<'EOF' >&2 || true
import importlib.metadata as md, traceback
for p in ("sglang", "torch", "torchvision", "transformers"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "MISSING")
try:
    from sglang.srt.server_args import ServerArgs  # noqa: F401
    from sglang.srt.speculative import eagle_worker_v2  # noqa: F401
except Exception:
    traceback.print_exc()
EOF
    exit 1
fi
echo "setup_sglang_env: $VENV ready in $(( $(date +%s) - start )) s"
