#!/usr/bin/env bash
# Retrain the bundled tiny-code drafters in ONE device call (under 10 minutes on an H100):
#   1. 4096 + EXTRA training prompts (the extra ones drawn, seeded, from the target's own training files),
#      regenerated greedily by the target, feature cache written once;
#   2. the trainings of RUNS at once on the one GPU (they are host-bound), all on the same data:
#        peagle   P-EAGLE 4 layers (P4_STEPS)           peagle6  P-EAGLE 6 layers, MLP 1024 (P6_STEPS)
#        peagle4k P-EAGLE 4 layers, 4096-token packs (P4K_STEPS)      eagle3  EAGLE-3 1 layer, 4 TTT steps
#   3. `pedagle bench` (greedy, held-out prompts; BENCH_BATCHES, default 1; K=3,7, or with BENCH_FULL=1
#      K=1,3,5,7 in every mode) of every P-EAGLE drafter that finished.
#
#   bash scripts/retrain_tiny_drafters.sh RESULTS_DIR          (on the device machine: RESULTS_DIR=$OUT)
#
# Writes RESULTS_DIR/<name>.tgz per drafter (weights, config, logs; the device tool returns files of at most
# 16 MiB), RESULTS_DIR/logs.tgz (summaries, training logs) and RESULTS_DIR/bench_*.json.
# Each training has a wall-clock cap (save_every checkpoints are kept) so the call cannot overrun.
set -uo pipefail
cd "$(dirname "$0")/.."
R="${1:?results dir}"; mkdir -p "$R"
EXTRA="${EXTRA:-12288}"; W="${WORK:-/tmp/pedagle_retrain}"; T=models/tiny-code/target
BUDGET="${BUDGET:-540}"                                     # seconds for steps 1-3 together
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s); left() { echo $(( BUDGET - ($(date +%s) - start) )); }
common=(--target "$T" --out "$W/out" --work-dir "$W/w" --extra-prompts "$EXTRA" --regen-batch 2048 --save-every 500
        ${EXTRA_ARGS:-})
python scripts/train_tiny_drafters.py "${common[@]}" --seq-len 4096 --prepare-only > "$W.prep.log" 2>&1 || { tail -30 "$W.prep.log"; exit 1; }
echo "prepare: $(( $(date +%s) - start )) s"
cap=$(( $(left) - ${BENCH_SECONDS:-90} ))
run() { local name=$1; shift; timeout "$cap" python scripts/train_tiny_drafters.py "${common[@]}" --summary "$W/summary_$name.json" "$@" \
          > "$W/train_$name.log" 2>&1; echo "$name rc=$? after $(( $(date +%s) - start )) s"; }
RUNS="${RUNS:-peagle peagle6 eagle3}"
for r in $RUNS; do
  case $r in
    peagle) run peagle --only peagle --peagle-steps "${P4_STEPS:-3000}" & ;;
    peagle6) run peagle6 --only peagle --peagle-name peagle6 --peagle-layers 6 --peagle-intermediate 1024 \
               --peagle-steps "${P6_STEPS:-2000}" & ;;
    peagle4k) run peagle4k --only peagle --peagle-name peagle4k --seq-len 4096 --peagle-steps "${P4K_STEPS:-3000}" & ;;
    eagle3) run eagle3 --only eagle3 --eagle3-steps "${E3_STEPS:-2000}" & ;;
    *) echo "unknown run $r"; exit 2 ;;
  esac
done
wait
AR=$([ -f "$W/out/eagle3/model.safetensors" ] && echo "$W/out/eagle3" || echo models/tiny-code/eagle3)
for d in peagle peagle6 peagle4k; do
  [ -f "$W/out/$d/model.safetensors" ] || continue
  for b in ${BENCH_BATCHES:-1}; do             # BENCH_FULL=1: K=1,3,5,7 and every mode (the README's table)
    [ "$(left)" -gt 25 ] || break
    timeout "$(( $(left) - 5 ))" python -m pedagle_core.cli bench --target "$T" --drafter "$W/out/$d" --ar-drafter "$AR" \
      --prompts "$T/heldout_prompts.jsonl" --num-prompts 32 --max-new-tokens 128 --batch-size "$b" \
      $([ -n "${BENCH_FULL:-}" ] && echo "-k 1,3,5,7 --modes parallel,autoregressive,none" || echo "-k 3,7 --modes parallel$([ "$AR" = "$W/out/eagle3" ] && [ $d = peagle ] && echo ,autoregressive)") \
      --out "$R/bench_${d}_b$b.json" --plot "$R/bench_${d}_b$b.png" > "$W/bench_${d}_b$b.log" 2>&1
    echo "bench $d batch $b rc=$? after $(( $(date +%s) - start )) s"
  done
done
cp "$W".prep.log "$W/prep.log"
for d in peagle peagle6 peagle4k eagle3; do                 # a capped run: keep its last checkpoint's drafter
  ck=$(ls -d "$W"/w/$d/checkpoints/step-* 2>/dev/null | tail -1)
  if [ ! -f "$W/out/$d/model.safetensors" ] && [ -n "$ck" ]; then
    mkdir -p "$W/out/$d.partial" && cp "$ck"/*.json "$ck"/*.safetensors "$W/out/$d.partial/" && echo "$d: kept $ck"
  fi
done
for d in $(cd "$W/out" && ls); do tar czf "$R/$d.tgz" -C "$W/out" "$d"; done
tar czf "$R/logs.tgz" -C "$W" prep.log $(cd "$W" && ls summary_*.json train_*.log bench_*.log 2>/dev/null)
for f in "$W"/summary_*.json; do python - "$f" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for k, v in d["drafters"].items():
    f = v["final"]; print(k, v["seconds"], "s", "eval_acc", f["eval_acc"], "al_proxy", f["eval_al_proxy"])
PY
done
for f in $(ls "$R"/bench_*.json 2>/dev/null); do python - "$f" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    print(sys.argv[1].split("/")[-1], r["mode"], r["K"], round(r["mean_acceptance_length"], 3),
          [round(x, 2) for x in r["acceptance_rate_per_position"]])
PY
done
