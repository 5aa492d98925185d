#!/usr/bin/env bash
# Every GPU number of the README in ONE device call (about 9 minutes on an H100; the benchmarks stop
# starting new configs after their time budgets): the skinny-GEMM and drafter step benchmarks, `pedagle
# bench` on the bundled tiny-code family at batch 1 and 8, the speedup model, then the GPU tests of the
# kernels and the engine (TEST_TIMEOUT_S, default 240).
#
#   bash bench/run_gpu_perf.sh RESULTS_DIR [--dry-run]
#
# On the device machine, RESULTS_DIR is $OUT (what is written there comes back). Writes:
#   tests_<gpu>.log               (pytest on the GPU: decode attention, attention, norm/rope kernels, engine)
#   skinny_gemm_<gpu>.json/.log   (bench/bench_skinny_gemm.py: each drafter GEMM, cuBLAS vs the kernel, vs its byte floor)
#   drafter_<gpu>.json/.png/.log  (bench/bench_drafter.py)   speedup_<gpu>.json/.log  (bench/speedup_model.py)
#   tiny_code_bench_<gpu>_b{1,8}.json/.png, tiny_code_al_<gpu>.json   (pedagle bench, bench/al_from_bench.py)
#   env_<gpu>.txt                 (nvidia-smi state at start)
# PACK=1 also packs them all into RESULTS_DIR/perf_<gpu>.tgz (the device tool returns at most 8 files).
# SKIP_TESTS=1 skips the pytest step (TESTS=<files> narrows it); SKIP_SKINNY=1 the skinny-GEMM benchmark;
# SKIP_TINY=1 the tiny-code benchmark; SKIP_SPEEDUP=1 the speedup model
# (issue 13's goal run: SKIP_TINY=1 SKIP_SPEEDUP=1 SKIP_SKINNY=1 TEST_TIMEOUT_S=280 BENCH_ARGS="--pairs
# 1:512,8:8192 --ks 1,7,10 --modes parallel --no-micro --budget-s 200", about 7.5 minutes); BENCH_ARGS passes options to
# bench_drafter.py (e.g. "--budget-s 200", "--paths today,nopdl"). The drafter table holds every path per config
# (plain PyTorch, the path before issue 13, the new default path, and its variants), side by side.
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

if [ -z "${SKIP_SKINNY:-}" ]; then
  $PY bench/bench_skinny_gemm.py --rows 7,14,112 --out "$OUT_DIR/skinny_gemm_$TAG.json" > "$OUT_DIR/skinny_gemm_$TAG.log" 2>&1 \
    || echo "bench_skinny_gemm failed" >> "$OUT_DIR/skinny_gemm_$TAG.log"
fi
t0=$(date +%s)
$PY bench/bench_drafter.py $DRY ${BENCH_ARGS:-} --out "$OUT_DIR/drafter_$TAG.json" --plot "$OUT_DIR/drafter_$TAG.png" \
  > "$OUT_DIR/drafter_$TAG.log" 2>&1
rc1=$?
t1=$(date +%s)
rc3=0
if [ -z "${SKIP_TINY:-}" ] && [ -z "$DRY" ]; then
  M=models/tiny-code
  for b in 1 8; do
    timeout 200 $PY -m pedagle_core.cli bench --target $M/target --drafter $M/peagle --ar-drafter $M/eagle3 \
      --prompts $M/target/heldout_prompts.jsonl --num-prompts 32 --max-new-tokens 128 --batch-size $b \
      --out "$OUT_DIR/tiny_code_bench_${TAG}_b$b.json" --plot "$OUT_DIR/tiny_code_bench_${TAG}_b$b.png" \
      > "$OUT_DIR/tiny_code_bench_${TAG}_b$b.log" 2>&1 || rc3=$?
  done
  $PY bench/al_from_bench.py "$OUT_DIR/tiny_code_bench_${TAG}_b1.json" "$OUT_DIR/tiny_code_al_$TAG.json" || rc3=$?
  AL_JSON="${AL_JSON:-$OUT_DIR/tiny_code_al_$TAG.json}"
fi
t2a=$(date +%s)
rc2=0
if [ -z "${SKIP_SPEEDUP:-}" ]; then
  $PY bench/speedup_model.py $DRY --drafter-json "$OUT_DIR/drafter_$TAG.json" --out "$OUT_DIR/speedup_$TAG.json" \
    ${AL_JSON:+--al-json "$AL_JSON"} > "$OUT_DIR/speedup_$TAG.log" 2>&1
  rc2=$?
fi
t2=$(date +%s)
# The GPU tests last (the measurements above come back even if the tests run out of time).
rc0=0
if [ -z "${SKIP_TESTS:-}" ]; then
  TESTS="${TESTS:-tests/test_kernels_pdl.py tests/test_skinny_gemm.py tests/test_fused_elementwise.py \
    tests/test_decode_attention.py tests/test_norm_rope.py tests/test_top2.py tests/test_attention.py tests/test_engine_gpu.py}"
  timeout "${TEST_TIMEOUT_S:-240}" $PY -m pytest -q -p no:cacheprovider $TESTS > "$OUT_DIR/tests_$TAG.log" 2>&1
  rc0=$?
fi
t3=$(date +%s)

echo "== env"; cat "$OUT_DIR/env_$TAG.txt"
echo "== tests rc=$rc0 ($((t3 - t2)) s): $(tail -n 1 "$OUT_DIR/tests_$TAG.log" 2>/dev/null)"
[ $rc0 -ne 0 ] && grep -E "^(FAILED|ERROR)|Error" "$OUT_DIR/tests_$TAG.log" | head -15
echo "== bench_drafter rc=$rc1 ($((t1 - t0)) s); errors / verification failures:"
grep -E "ERROR|VERIFY-FAIL|Traceback|Error" "$OUT_DIR/drafter_$TAG.log" | head -20
[ $rc1 -ne 0 ] && tail -30 "$OUT_DIR/drafter_$TAG.log"
echo "== tiny-code pedagle bench rc=$rc3 ($((t2a - t1)) s)"
for b in 1 8; do tail -n 14 "$OUT_DIR/tiny_code_bench_${TAG}_b$b.log" 2>/dev/null; done
echo "== speedup_model rc=$rc2 ($((t2 - t2a)) s)"
grep -E "VERIFY-FAIL|Traceback|Error" "$OUT_DIR/speedup_$TAG.log" | head -10
[ $rc2 -ne 0 ] && tail -30 "$OUT_DIR/speedup_$TAG.log"
echo "== GEMMs (CUDA graphs over rotating weights)"; tail -n 32 "$OUT_DIR/skinny_gemm_$TAG.log" 2>/dev/null
echo "== drafter: goals, profiles, every path"
grep -E "^(goal|profile|attn):" "$OUT_DIR/drafter_$TAG.log"
awk '/^family  .* mode /{p=1} p' "$OUT_DIR/drafter_$TAG.log" | grep -E " (1|8) +(512|8192) +(1|7|10) \|" | cut -c1-200
echo "== speedup model"
sed -n '/^\[speedup\] [0-9]* target steps/,$p' "$OUT_DIR/speedup_$TAG.log"
if [ -n "${PACK:-}" ]; then
  (cd "$OUT_DIR" && tar czf "perf_$TAG.tgz" --exclude "perf_$TAG.tgz" $(ls | grep -v '\.tgz$'))
fi
exit $(( rc0 != 0 || rc1 != 0 || rc2 != 0 || rc3 != 0 ))
