#!/usr/bin/env bash
# The device side of the GPU end-to-end runs (bench/vllm_gpu_e2e.py, bench/sglang_gpu_e2e.py) on the lent GPU:
# vLLM 0.26.0 and/or SGLang 0.5.17 + sglang-kernel 0.4.5 carried in pieces by ../shared/gpu-carry (bench/README.md
# "Next GPU session"). Runs from the repo root that `run` sent.
#
#   bash bench/gpu_run.sh stash                  keep the carried piece (.gpucarry/pNN) in /tmp/gc
#   bash bench/gpu_run.sh run SECONDS JOB...     stash, unpack once (gpu_assemble.sh install), pedagle's site
#                                                (bench/gpu_site.py: links to this tree, so each call runs the tree
#                                                it sent), then bench/gpu_jobs.py SECONDS JOB... (JOB = ENGINE:ARGS,
#                                                `then` between groups; see its docstring); results in $OUT
#
# e.g.  run 540 'vllm:--runner v2 --phases tiny' 'sglang:--phases check --check-groups random'
#       run 540 'sglang:--phases bench' then 'vllm:--runner v2 --phases bench --rounds 1'
# .h2src/overlay (optional, carried): files copied over the tree first, so that a run is of one commit
# ($PEDAGLE_COMMIT, else git's HEAD) while the sending checkout has edits in progress.
# The kit is carried as .gpucarry/bin + .gpucarry/pNN, or as .gpucarry/NAME/bin + .gpucarry/NAME/pNN (several kits
# kept side by side, e.g. `both` and the smaller `sglang` made by bench/gpu_kit_subset.sh; one of them is carried).
set -u
R=$PWD
cmd=${1:?stash|run}; shift
KIT=.gpucarry
for d in .gpucarry/*/bin; do [ -f "$d/gpu_assemble.sh" ] && KIT=${d%/bin}; done
if ls -d "$KIT"/p[0-9][0-9] >/dev/null 2>&1; then bash "$KIT/bin/gpu_assemble.sh" stash || exit 1; fi
[ "$cmd" = stash ] && exit 0
[ "$cmd" = run ] || { echo "usage: $0 stash | run SECONDS JOB..." >&2; exit 2; }
T=${1:?seconds}; shift
[ -d .h2src/overlay ] && cp -r .h2src/overlay/. . && echo "overlay: $(find .h2src/overlay -type f | wc -l) file(s)"
export PEDAGLE_COMMIT="${PEDAGLE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
t0=$SECONDS
set +u; cd /tmp && source "$R/$KIT/bin/gpu_assemble.sh" install; rc=$?; cd "$R"; set -u   # no pyproject in /tmp
[ -d /tmp/site-vllm ] || [ -d /tmp/site-sglang ] || { echo "nothing unpacked (rc $rc)"; exit 1; }
if [ -d /tmp/site-sglang ]; then   # SGLang 0.5.17's EAGLE3 graph capture imports DeepSeek backends (not carried)
  python3 bench/gpu_sglang_stubs.py /tmp/site-sglang || exit 1
fi
python3 bench/gpu_site.py /tmp/site-pedagle || exit 1
export SGLANG_PYTHONPATH=/tmp/site-pedagle:/tmp/site-sglang VLLM_PYTHONPATH=/tmp/site-pedagle:/tmp/site-vllm
export PEDAGLE_SRC=$R HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 \
  VLLM_USE_V2_MODEL_RUNNER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
python3 bench/gpu_jobs.py $((T - (SECONDS - t0))) "$@"
ls -la "$OUT"
