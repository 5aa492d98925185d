#!/usr/bin/env bash
# pedagle's test command (the README's and CI's): the core suite on the CPU, Triton kernels under
# TRITON_INTERPRET=1, then the backend suites in their own virtual environments.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import pedagle_core, pytest, hypothesis" 2>/dev/null || {
  python3 -m pip install -q torch==2.13.0 && python3 -m pip install -q -e ".[dev]"; }
python3 -m pytest -q -p no:cacheprovider tests "$@"
