#!/usr/bin/env bash
# The device side of bench/sglang_gpu_e2e.py on the lent GPU (SGLang 0.5.17 + sglang-kernel 0.4.5, and vLLM 0.26.0
# for the conformance phase, carried in pieces by ../shared/gpu-carry with option `both`). Runs from the repo root
# that `run` sent.
#
#   bash bench/sglang_gpu_run.sh stash                 keep the carried piece (.gpucarry/pNN) in /tmp/gc
#   bash bench/sglang_gpu_run.sh run SECONDS ARGS...   stash, unpack once (gpu_assemble.sh install), pedagle's
#                                                      site (bench/gpu_site.py), then sglang_gpu_e2e.py --out
#                                                      /tmp/sgrun --budget-s SECONDS-30 ARGS under `timeout
#                                                      SECONDS`; results into $OUT (sglang_gpu.json, run.log,
#                                                      run.tgz with the logs and head copies, not the
#                                                      production-shaped models)
#
# One phase per call, e.g. (540 s each):
#   run 540 --phases check --check-groups tiny      run 540 --phases check --check-groups random
#   run 540 --phases conformance                    run 540 --phases bench   (again to finish the rounds)
#   run 540 --phases prod
# The bench schedule continues across calls on a warm machine (/tmp/pedagle-sglang-bench-state.json; delete it to
# start over). The check analysis can be redone from run.tgz here (CPU reference):
#   python3 bench/sglang_gpu_e2e.py --reanalyze UNPACKED_RUN --out DIR
# .h2src/overlay (optional, carried): files copied over the tree first (as vllm_gpu_run.sh).
# Set PEDAGLE_COMMIT=<sha> when the tree travels without .git.
set -u
R=$PWD
cmd=${1:?stash|run}; shift
if ls -d .gpucarry/p[0-9][0-9] >/dev/null 2>&1; then bash .gpucarry/bin/gpu_assemble.sh stash || exit 1; fi
[ "$cmd" = stash ] && exit 0
[ "$cmd" = run ] || { echo "usage: $0 stash | run SECONDS ARGS..." >&2; exit 2; }
T=${1:?seconds}; shift
[ -d .h2src/overlay ] && cp -r .h2src/overlay/. . && echo "overlay: $(find .h2src/overlay -type f | wc -l) file(s)"
export PEDAGLE_COMMIT="${PEDAGLE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
set +u; cd /tmp && source "$R/.gpucarry/bin/gpu_assemble.sh" install; rc=$?; cd "$R"; set -u   # no pyproject in /tmp
[ -d /tmp/site-sglang ] || { echo "SGLang not unpacked (rc $rc)"; exit 1; }
python3 bench/gpu_sglang_stubs.py /tmp/site-sglang || exit 1   # EAGLE3 graph capture imports DeepSeek backends (not carried)
python3 bench/gpu_site.py /tmp/site-pedagle || exit 1
export SGLANG_PYTHONPATH=/tmp/site-pedagle:/tmp/site-sglang VLLM_PYTHONPATH=/tmp/site-pedagle:/tmp/site-vllm
export PYTHONPATH=$SGLANG_PYTHONPATH PEDAGLE_SRC=$R HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 \
  VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_USE_V2_MODEL_RUNNER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
W=/tmp/sgrun; rm -rf $W; mkdir -p $W
timeout "$T" python3 bench/sglang_gpu_e2e.py --out $W --budget-s $((T - 30)) "$@" > $W/run.log 2>&1
echo "e2e exit $?" >> $W/run.log
grep -v "it/s]" $W/run.log | tail -80
tar czf "$OUT/run.tgz" --exclude="./heads/prod-*" -C $W . ; cp $W/*.json $W/run.log "$OUT/" 2>/dev/null
cp /tmp/pedagle-sglang-bench-state.json "$OUT/" 2>/dev/null
ls -la "$OUT"
