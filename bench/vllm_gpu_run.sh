#!/usr/bin/env bash
# The device side of bench/vllm_gpu_e2e.py on the lent H200 (vLLM 0.26.0 carried in pieces by
# ../shared/gpu-carry; see vllm_gpu_e2e.py's docstring). Runs from the repo root that `run` sent.
#
#   bash bench/vllm_gpu_run.sh stash                 keep the carried piece (.gpucarry/pNN) in /tmp/gc
#   bash bench/vllm_gpu_run.sh run SECONDS ARGS...   stash, unpack once, pedagle site (bench/gpu_site.py),
#                                                    then vllm_gpu_e2e.py --out /tmp/h2run ARGS under
#                                                    `timeout SECONDS`; everything packed into $OUT/run.tgz
# .h2src/overlay (optional, carried): files copied over the tree first (the committed version of files
# others were editing in the sending checkout, so the run is of one commit: $PEDAGLE_COMMIT).
set -u
R=$PWD
cmd=${1:?stash|run}; shift
if ls -d .gpucarry/p[0-9][0-9] >/dev/null 2>&1; then bash .gpucarry/bin/gpu_assemble.sh stash || exit 1; fi
[ "$cmd" = stash ] && exit 0
T=${1:?seconds}; shift
[ -d .h2src/overlay ] && cp -r .h2src/overlay/. . && echo "overlay: $(find .h2src/overlay -type f | wc -l) file(s)"
set +u; cd /tmp && source "$R/.gpucarry/bin/gpu_assemble.sh" install; rc=$?; cd "$R"; set -u   # no pyproject in /tmp: no pedagle step
[ -d /tmp/site-vllm ] || { echo "vLLM not unpacked (rc $rc)"; exit 1; }
python3 bench/gpu_site.py /tmp/site-pedagle || exit 1
export PYTHONPATH=/tmp/site-pedagle:/tmp/site-vllm PEDAGLE_SRC=$R VLLM_USE_FLASHINFER_SAMPLER=0 \
  VLLM_USE_V2_MODEL_RUNNER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1
W=/tmp/h2run; rm -rf $W; mkdir -p $W
timeout "$T" python3 bench/vllm_gpu_e2e.py --out $W "$@" > $W/run.log 2>&1; echo "e2e exit $?" >> $W/run.log
cat $W/run.log | grep -v "it/s]" | tail -60
tar czf "$OUT/run.tgz" -C $W . && cp $W/*.json "$OUT/" 2>/dev/null; cp $W/run.log "$OUT/"
ls -la "$OUT"
