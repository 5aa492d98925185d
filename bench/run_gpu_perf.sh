#!/usr/bin/env bash
# Decode-attention tests + drafter step benchmark + speedup model in ONE device call (about 5-6 minutes
# on an H100; the benchmarks stop starting new configs after their time budgets).
#
#   bash bench/run_gpu_perf.sh RESULTS_DIR [--dry-run]
#
# On the device machine, RESULTS_DIR is $OUT (what is written there comes back). Writes 7 files:
#   tests_<gpu>.log               (pytest: tests/test_decode_attention.py + tests/test_attention.py, on the GPU)
#   drafter_<gpu>.json/.png/.log  (bench/bench_drafter.py)   speedup_<gpu>.json/.log  (bench/speedup_model.py)
#   env_<gpu>.txt                 (nvidia-smi state at start)
# SKIP_TESTS=1 skips the pytest step.
# The JSONs carry the commit: set PEDAGLE_COMMIT=<sha> when the tree travels without .git.
# AL_JSON=<path> adds the bundled model family's acceptance lengths to the speedup model.
# The last lines printed are the drafter table + goals and the speedup table.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-bench/results}"
DRY="${2:-}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PEDAGLE_COMMIT="${PEDAGLE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/pedagle_triton_cache}"
PY="${PYTHON:-python3}"
TAG=$($PY -c "
import torch
if not torch.cuda.is_available(): print('cpu')
else:
    n = torch.cuda.get_device_name().lower()
    print(next((t for t in ('h200', 'h100', 'b200', 'a100') if t in n), 'gpu'))")
[ -n "$DRY" ] && TAG="${TAG}_dry"
(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw,memory.used --format=csv
 $PY -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0])"
) > "$OUT_DIR/env_$TAG.txt" 2>&1 || true

rc0=0
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_decode_attention.py tests/test_attention.py \
    > "$OUT_DIR/tests_$TAG.log" 2>&1
  rc0=$?
fi
t0=$(date +%s)
$PY bench/bench_drafter.py $DRY --out "$OUT_DIR/drafter_$TAG.json" --plot "$OUT_DIR/drafter_$TAG.png" \
  > "$OUT_DIR/drafter_$TAG.log" 2>&1
rc1=$?
t1=$(date +%s)
$PY bench/speedup_model.py $DRY --drafter-json "$OUT_DIR/drafter_$TAG.json" --out "$OUT_DIR/speedup_$TAG.json" \
  ${AL_JSON:+--al-json "$AL_JSON"} > "$OUT_DIR/speedup_$TAG.log" 2>&1
rc2=$?
t2=$(date +%s)

echo "== env"; cat "$OUT_DIR/env_$TAG.txt"
echo "== tests rc=$rc0: $(tail -n 1 "$OUT_DIR/tests_$TAG.log" 2>/dev/null)"
[ $rc0 -ne 0 ] && grep -E "^(FAILED|ERROR)|Error" "$OUT_DIR/tests_$TAG.log" | head -15
echo "== bench_drafter rc=$rc1 ($((t1 - t0)) s); errors / verification failures:"
grep -E "ERROR|VERIFY-FAIL|Traceback|Error" "$OUT_DIR/drafter_$TAG.log" | head -20
[ $rc1 -ne 0 ] && tail -30 "$OUT_DIR/drafter_$TAG.log"
echo "== speedup_model rc=$rc2 ($((t2 - t1)) s)"
grep -E "VERIFY-FAIL|Traceback|Error" "$OUT_DIR/speedup_$TAG.log" | head -10
[ $rc2 -ne 0 ] && tail -30 "$OUT_DIR/speedup_$TAG.log"
echo "== drafter: attention micro, goals, table"
awk '/^attention, one layer/{p=1} p' "$OUT_DIR/drafter_$TAG.log" | tail -n 70
echo "== speedup model"
sed -n '/^\[speedup\] [0-9]* target steps/,$p' "$OUT_DIR/speedup_$TAG.log"
exit $(( rc0 != 0 || rc1 != 0 || rc2 != 0 ))
