#!/usr/bin/env bash
# The device side of PEAGLE's draft-step CUDA-graph self-check (backends/sglang/graph_selfcheck.py) on the lent GPU:
# SGLang 0.5.17 + sglang-kernel 0.4.5 carried by ../shared/gpu-carry (option `sglang` or `both`), set up exactly as
# bench/gpu_run.sh does, then
#   python3 -m pedagle_backends.sglang.cuda_graphs --selfcheck --out /tmp/graphcheck ARGS...
# (tiny-code family, float32, Triton attention, CUDA graphs on: target-only vs PEAGLE graphs vs PEAGLE eager).
# Results into $OUT: graph_selfcheck.json (device, date, commit, checks, timings), engine logs, run.log.
#
#   bash bench/sglang_graph_selfcheck_gpu.sh SECONDS [--K 3,7] [--max-new 40] [--engine-args JSON]
#
# Set PEDAGLE_COMMIT=<sha> when the tree travels without .git. Carried pieces (.gpucarry/pNN) are stashed first.
set -u
R=$PWD
T=${1:?seconds}; shift
if ls -d .gpucarry/p[0-9][0-9] >/dev/null 2>&1; then bash .gpucarry/bin/gpu_assemble.sh stash || exit 1; fi
export PEDAGLE_COMMIT="${PEDAGLE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
set +u; cd /tmp && source "$R/.gpucarry/bin/gpu_assemble.sh" install; rc=$?; cd "$R"; set -u   # unpacks once
[ -d /tmp/site-sglang ] || { echo "SGLang not unpacked (rc $rc)"; exit 1; }
python3 bench/gpu_sglang_stubs.py /tmp/site-sglang || exit 1
python3 bench/gpu_site.py /tmp/site-pedagle || exit 1
export PYTHONPATH=/tmp/site-pedagle:/tmp/site-sglang HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 \
  DO_NOT_TRACK=1
W=/tmp/graphcheck; rm -rf $W; mkdir -p $W
timeout "$T" python3 -m pedagle_backends.sglang.cuda_graphs --selfcheck --out $W "$@" > $W/run.log 2>&1
echo "selfcheck exit $?" >> $W/run.log
grep -v "it/s]" $W/run.log | tail -60
grep -h "PEAGLE decode draft step\|Traceback\|Error" $W/engine_*.log 2>/dev/null | sort | uniq -c | head -20
cp $W/*.json $W/*.log $W/*.jsonl "${OUT:-.}/" 2>/dev/null
ls -la "${OUT:-.}"
