#!/usr/bin/env python3
"""Benchmark (not a test): SGLang's CPU engine tokens/s on tiny-code, no speculation vs SGLang's own EAGLE3 vs
pedagle's PEAGLE plugin (greedy, EOS ignored, ``--max-tokens`` per request).

    none             SGLang, no speculation
    sglang-eagle3    --speculative-algorithm EAGLE3 (a chain: topk 1, K steps) on the EAGLE-3 head, K in --k-eagle3
    pedagle-peagle   --speculative-algorithm PEAGLE (pedagle's plugin) on the P-EAGLE head, K in --k-peagle

Every configuration is one ``sglang.Engine(device="cpu")`` process (tests/sglang/engine_harness.py: SGLang's CPU
engine with pedagle's CPU ``sgl_kernel`` test ops and the intel_amx attention backend), which runs, per batch
size, ``--warmup`` untimed and ``--repeat`` timed ``generate`` calls on the same prompts (radix cache off: every
call prefills). tokens/s is the median of the timed calls. Round 1 runs every configuration; rounds 2.. run only
``none`` and the best K of each algorithm, in reversed order on even rounds (a shared 2-core machine drifts by
10-30% over minutes, so a ratio from one pair of processes compares two different machines);
``peagle_vs_eagle3`` gives each round's ratio of the best configurations. Per configuration, the time of one
verify step (``step_ms`` = timed seconds / SGLang's ``spec_verify_ct``; for ``none`` one decode step per token)
and the tokens per step (acceptance length) split tokens/s into its two factors.

Run it inside the SGLang environment (``.ci/setup_sglang_env.sh``):

    ~/.cache/pedagle/venvs/sglang/bin/python bench/bench_sglang_cpu.py --rounds 2

Writes ``bench/results/sglang_cpu_<family>.json`` with device, date, commit and versions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "sglang"))

from bench_vllm_cpu import _cpu_model, _git_commit, _prompts_tiny_code  # noqa: E402
from engine_harness import EngineConfig, run_engine  # noqa: E402


def configs(k_eagle3: list[int], k_peagle: list[int]) -> list[tuple[str, str | None, int]]:
    """(name, algorithm, K) of every configuration."""
    return ([("none", None, 0)] + [(f"sglang-eagle3-k{k}", "EAGLE3", k) for k in k_eagle3]
            + [(f"pedagle-peagle-k{k}", "PEAGLE", k) for k in k_peagle])


def run_config(args, fam: dict[str, Path], prompts: list[list[int]], name: str, algorithm: str | None, K: int,
               log: Path) -> list[dict[str, Any]]:
    """One engine process for one configuration; a row per batch size."""
    drafter = {"EAGLE3": fam["eagle3"], "PEAGLE": fam["peagle"], None: None}[algorithm]
    context = args.prompt_len + args.max_tokens + 2 * max(args.k_peagle + args.k_eagle3) + 16
    cfg = EngineConfig(target=str(fam["target"]), drafter=drafter, algorithm=algorithm, K=max(K, 1),
                       dtype=args.dtype, engine=dict(context_length=context, disable_radix_cache=True,
                                                     max_running_requests=max(args.batches)))
    cases = [{"prompts": prompts[:b], "max_new_tokens": args.max_tokens}
             for b in args.batches for _ in range(args.warmup + args.repeat)]
    try:
        res = run_engine(cfg, cases, timeout=3600, log=log)
    except Exception as e:  # noqa: BLE001 - reported in the results
        print(f"  {name:20s} ERROR {str(e)[-400:]}", flush=True)
        return [{"config": name, "algorithm": algorithm, "K": K, "batch": b, "error": str(e)[-4000:]}
                for b in args.batches]
    rows = []
    per_batch = args.warmup + args.repeat
    for i, b in enumerate(args.batches):
        timed = res["cases"][i * per_batch + args.warmup : (i + 1) * per_batch]
        tokens = [sum(len(o) for o in c["outputs"]) for c in timed]
        secs = [c["seconds"] for c in timed]
        tps = [n / s for n, s in zip(tokens, secs)]
        verify = [sum(m.get("spec_verify_ct", 0) for m in c["meta"]) / b for c in timed]  # steps per request
        steps = [v if v else args.max_tokens for v in verify]       # no speculation: one step per token
        row = {"config": name, "algorithm": algorithm, "K": K, "batch": b, "tokens_per_s": statistics.median(tps),
               "tokens_per_s_all": tps, "gen_s_all": secs, "num_output_tokens": tokens[0],
               "acceptance_length": (args.max_tokens / statistics.median(verify)) if algorithm else 1.0,
               "step_ms": 1000 * statistics.median(s / n for s, n in zip(secs, steps)),
               "spec_verify_ct_per_request": statistics.median(verify) if algorithm else None,
               "engine_start_s": res["start_s"], "process_s": res["process_s"],
               "attention_backend": res.get("attention_backend"),
               "outputs_first_prompt": timed[0]["outputs"][0] if timed else None}
        rows.append(row)
        print(f"  {name:20s} batch {b}: {row['tokens_per_s']:7.1f} tok/s, step {row['step_ms']:6.1f} ms, "
              f"acceptance length {row['acceptance_length']:.2f} (engine start {res['start_s']:.0f} s)", flush=True)
    return rows


def best(rows: list[dict[str, Any]], algorithm: str, batch: int) -> dict[str, Any] | None:
    ok = [r for r in rows if r["algorithm"] == algorithm and r["batch"] == batch and "tokens_per_s" in r]
    return max(ok, key=lambda r: r["tokens_per_s"]) if ok else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", type=Path, default=ROOT / "models" / "tiny-code",
                    help="directory with target/, peagle/, eagle3/ (default models/tiny-code)")
    ap.add_argument("--k-eagle3", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--k-peagle", type=int, nargs="+", default=[3, 5, 7])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--prompt-len", type=int, default=64, help="prompts are cut to this many tokens")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--logs", type=Path, default=Path("/tmp/pedagle-bench-sglang"))
    args = ap.parse_args(argv)

    fam = {k: args.family / k for k in ("target", "peagle", "eagle3")}
    missing = [str(p) for p in fam.values() if not (p / "config.json").is_file()]
    if missing:
        raise SystemExit(f"missing model directories {missing}")
    prompts = _prompts_tiny_code(fam["target"], max(args.batches), args.prompt_len)
    args.logs.mkdir(parents=True, exist_ok=True)
    load_before = list(os.getloadavg())
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load_before[0]:.1f} on {os.cpu_count()} cores: other processes will skew "
              "the timings", flush=True)

    all_cfgs = configs(args.k_eagle3, args.k_peagle)
    rounds: list[list[dict[str, Any]]] = []
    for rnd in range(args.rounds):
        if rnd == 0:
            todo = all_cfgs
        else:  # none + the best K of each algorithm (batch 1 decides), reversed on even rounds
            chosen = {"none"} | {r["config"] for a in ("EAGLE3", "PEAGLE") if (r := best(rounds[0], a, 1))}
            todo = [c for c in all_cfgs if c[0] in chosen]
            todo = todo[::-1] if rnd % 2 else todo
        print(f"round {rnd + 1}/{args.rounds}: {', '.join(c[0] for c in todo)}", flush=True)
        rows: list[dict[str, Any]] = []
        rounds.append(rows)
        for name, alg, K in todo:
            rows += run_config(args, fam, prompts, name, alg, K, args.logs / f"{name}-r{rnd}.log")
            write(args, rounds, load_before, final=False)  # partial results survive an interrupted run
    write(args, rounds, load_before, final=True)
    return 0


def write(args, rounds: list[list[dict[str, Any]]], load_before: list[float], final: bool) -> Path:
    """The results JSON (ratios of the best configurations per round and batch); ``final`` prints the ratios."""
    ratios = []
    for b in args.batches:
        for rnd, rows in enumerate(rounds):
            e3, pe, none = best(rows, "EAGLE3", b), best(rows, "PEAGLE", b), best(rows, None, b)
            if e3 and pe:
                ratios.append({"round": rnd + 1, "batch": b, "peagle_vs_eagle3": pe["tokens_per_s"] / e3["tokens_per_s"],
                               "peagle": pe["config"], "eagle3": e3["config"],
                               "acceptance_length_ratio": pe["acceptance_length"] / e3["acceptance_length"],
                               "step_time_ratio": pe["step_ms"] / e3["step_ms"],
                               "peagle_vs_none": pe["tokens_per_s"] / none["tokens_per_s"] if none else None,
                               "eagle3_vs_none": e3["tokens_per_s"] / none["tokens_per_s"] if none else None})
                r = ratios[-1]
                if not final:
                    continue
                print(f"round {rnd + 1} batch {b}: PEAGLE ({r['peagle']}) / EAGLE3 ({r['eagle3']}) tokens/s = "
                      f"{r['peagle_vs_eagle3']:.3f} (acceptance length x{r['acceptance_length_ratio']:.3f}, "
                      f"step time x{r['step_time_ratio']:.3f})", flush=True)

    import sglang
    import torch
    import transformers

    res = {
        "meta": {"benchmark": "bench_sglang_cpu", "device": "cpu", "cpu": _cpu_model(), "cores": os.cpu_count(),
                 "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _git_commit(),
                 "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
                 "sglang": sglang.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                 "python": platform.python_version(),
                 "kernels": "pedagle's CPU sgl_kernel test ops (tests/sgl_kernel_cpu, plain PyTorch)"},
        "family": str(args.family), "dtype": args.dtype, "max_tokens": args.max_tokens, "prompt_len": args.prompt_len,
        "batches": args.batches, "warmup": args.warmup, "repeat": args.repeat, "rounds": args.rounds,
        "radix_cache": False, "complete": final,
        "results": [r | {"round": i + 1} for i, rows in enumerate(rounds) for r in rows],
        "peagle_vs_eagle3": ratios,
    }
    out = args.out or ROOT / "bench" / "results" / f"sglang_cpu_{args.family.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    if final:
        print(f"wrote {out}")
    return out


if __name__ == "__main__":
    sys.exit(main())
