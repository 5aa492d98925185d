#!/usr/bin/env python3
"""Benchmark (not a test): vLLM tokens/s on CPU with pedagle's plugin vs vLLM's own paths.

Configurations, each at batch 1 and batch 8 (greedy, EOS ignored, ``--max-tokens`` per request). Needs a quiet machine:
the load average before and after is recorded, and other processes on the cores make single runs vary
by 10x.

    none            vLLM, no speculation
    native-peagle   vLLM's native P-EAGLE (parallel_drafting) on the P-EAGLE head      VLLM_PLUGINS=''
    native-eagle3   vLLM's native EAGLE-3 on the EAGLE-3 head                          VLLM_PLUGINS=''
    pedagle-peagle  vLLM + pedagle plugin, P-EAGLE head (pedagle_core drafter + expansion)
    pedagle-eagle3  vLLM + pedagle plugin, EAGLE-3 head

Run it inside the vLLM environment (``.ci/setup_vllm_env.sh``):

    /work/venvs/vllm/bin/python bench/bench_vllm_cpu.py                       # models/tiny-code
    /work/venvs/vllm/bin/python bench/bench_vllm_cpu.py --synthetic           # tests/vllm's oracle family

Each configuration runs ``--warmup`` untimed generate() calls then ``--repeat`` timed ones (tokens/s is
the median). The runs of one process kind (plugin on / off) share a child process, run one after another,
never concurrently. ``--rounds N`` runs the two children N times, native first in odd rounds and the plugin
first in even ones (the speed of a shared 2-core machine drifts by 10-30% over minutes, so one native
child followed by one plugin child compares two different machines); tokens/s is then the median over all
rounds' timed runs, and ``plugin_vs_native`` gives each round's plugin/native ratio. Writes
``bench/results/vllm_cpu_<family>.json`` with device, date and commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git_commit() -> str:
    """The code's commit (see `pedagle_core.provenance.code_commit`)."""
    from pedagle_core.provenance import code_commit

    return code_commit() or "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _prompts_tiny_code(target: Path, n: int, max_len: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(target / "tokenizer.json"))
    src = target / "heldout_prompts.jsonl"
    if not src.is_file():
        src = target.parent / "heldout_prompts.jsonl"
    out = []
    for line in src.read_text().splitlines():
        if line.strip():
            ids = tok.encode(json.loads(line)["prompt"]).ids[:max_len]
            out.append(ids)
        if len(out) == n:
            break
    if len(out) < n:
        raise SystemExit(f"{src}: only {len(out)} prompts; need {n}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", type=Path, default=ROOT / "models" / "tiny-code",
                    help="directory with target/, peagle/, eagle3/ (default models/tiny-code)")
    ap.add_argument("--synthetic", action="store_true", help="build and use tests/vllm's synthetic oracle family")
    ap.add_argument("--k-peagle", type=int, default=7)
    ap.add_argument("--k-eagle3", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=128, help="prompts are cut to this many tokens")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="native/plugin child pairs, order alternating (default 1)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--configs", nargs="+", default=["none", "native-peagle", "native-eagle3", "pedagle-peagle",
                                                        "pedagle-eagle3"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))

    tmp = Path(tempfile.mkdtemp(prefix="pedagle-bench-vllm-"))
    if args.synthetic:
        sys.path.insert(0, str(ROOT / "tests" / "vllm"))
        from tinyfamily import VOCAB, build_family

        import torch

        fam = {k: Path(v) for k, v in build_family(tmp / "family").items()}
        g = torch.Generator().manual_seed(0)
        prompt_pool = [torch.randint(2, VOCAB, (args.prompt_len,), generator=g).tolist() for _ in range(max(args.batches))]
        family_name = "synthetic"
        dtype = "float32"
    else:
        base = args.family
        fam = {"target": base / "target", "peagle": base / "peagle", "eagle3": base / "eagle3"}
        missing = [str(p) for p in fam.values() if not (p / "config.json").is_file()]
        if missing:
            raise SystemExit(f"missing model directories {missing}; build the bundled family first, or pass "
                             "--synthetic")
        prompt_pool = _prompts_tiny_code(fam["target"], max(args.batches), args.prompt_len)
        family_name = base.name
        dtype = args.dtype

    mml = args.prompt_len + args.max_tokens + 2 * max(args.k_peagle, args.k_eagle3) + 16
    specs = {
        "none": (False, None, 0, False),
        "native-peagle": (False, "peagle", args.k_peagle, True),
        "native-eagle3": (False, "eagle3", args.k_eagle3, False),
        "pedagle-peagle": (True, "peagle", args.k_peagle, True),
        "pedagle-eagle3": (True, "eagle3", args.k_eagle3, False),
    }
    load_before = list(os.getloadavg())
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load_before[0]:.1f} on {os.cpu_count()} cores: other processes will skew "
              "the timings", flush=True)
    rounds = []                                       # per round: {(config, batch): row}
    for rnd in range(args.rounds):
        rounds.append(_run_round(args, specs, fam, prompt_pool, mml, dtype, tmp, rnd))
    rows = _merge_rounds(rounds, args.configs, args.batches)
    base = {r["batch"]: r["tokens_per_s"] for r in rows if r["config"] == "none" and "tokens_per_s" in r}
    for r in rows:
        if "tokens_per_s" in r and r["batch"] in base:
            r["speedup_vs_none"] = r["tokens_per_s"] / base[r["batch"]]
    vs = []
    for head in ("peagle", "eagle3"):
        for b in args.batches:
            per_round = [rd[(f"pedagle-{head}", b)]["tokens_per_s"] / rd[(f"native-{head}", b)]["tokens_per_s"]
                         for rd in rounds if "tokens_per_s" in rd.get((f"pedagle-{head}", b), {})
                         and "tokens_per_s" in rd.get((f"native-{head}", b), {})]
            if per_round:
                vs.append({"head": head, "batch": b, "ratio_median": statistics.median(per_round),
                           "ratio_per_round": per_round})
                print(f"plugin / native, {head:6s} batch {b}: {statistics.median(per_round):.3f} "
                      f"(rounds: {', '.join(f'{x:.3f}' for x in per_round)})", flush=True)

    import torch

    from pedagle_backends.vllm.plugin import vllm_version

    res = {
        "meta": {"benchmark": "bench_vllm_cpu", "device": "cpu", "cpu": _cpu_model(), "cores": os.cpu_count(),
                 "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _git_commit(),
                 "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
                 "vllm": vllm_version(), "torch": torch.__version__, "python": platform.python_version()},
        "family": family_name if args.synthetic else str(args.family), "dtype": dtype,
        "max_tokens": args.max_tokens, "prompt_len": args.prompt_len, "max_model_len": mml,
        "warmup": args.warmup, "repeat": args.repeat, "rounds": args.rounds, "enforce_eager": True,
        "results": rows, "plugin_vs_native": vs,
    }
    out = args.out or ROOT / "bench" / "results" / f"vllm_cpu_{family_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


def _run_round(args, specs, fam, prompt_pool, mml, dtype, tmp: Path, rnd: int) -> dict:
    """One native child and one plugin child (native first in even-indexed rounds); {(config, batch): row}."""
    from pedagle_backends.vllm.runner import run_jobs

    rows = {}
    for plugin in ((False, True) if rnd % 2 == 0 else (True, False)):
        todo = [(c, b) for c in args.configs for b in args.batches if specs[c][0] == plugin]
        if not todo:
            continue
        jobs = []
        for c, b in todo:
            _, head, K, par = specs[c]
            jobs.append({"target": str(fam["target"]), "drafter": str(fam[head]) if head else None, "K": K,
                         "parallel": par, "prompts": prompt_pool[:b], "max_tokens": args.max_tokens,
                         "max_model_len": mml, "dtype": dtype, "max_num_seqs": max(args.batches),
                         "repeat": args.warmup + args.repeat, "kv_cache_memory_bytes": 512 << 20})
        log = tmp / f"{'plugin' if plugin else 'native'}{rnd}.log"
        print(f"round {rnd + 1}/{args.rounds}: running {len(jobs)} jobs with the pedagle plugin "
              f"{'on' if plugin else 'off'} (log {log})", flush=True)
        results = run_jobs(jobs, plugin=plugin, log=log, timeout=3600)
        for (c, b), r in zip(todo, results):
            if "error" in r:
                rows[(c, b)] = {"config": c, "batch": b, "error": r["error"]}
                print(f"  {c:15s} batch {b}: ERROR {r['error']}", flush=True)
                continue
            timed = r["gen_s_all"][args.warmup:]
            tps = [r["num_output_tokens"] / t for t in timed]
            m = r.get("metrics") or {}
            mal = 1 + m["num_accepted_tokens"] / m["num_drafts"] if m.get("num_drafts") else None
            row = {"config": c, "batch": b, "K": specs[c][2], "tokens_per_s": statistics.median(tps),
                   "tokens_per_s_all": tps, "gen_s_all": timed, "num_output_tokens": r["num_output_tokens"],
                   "mean_acceptance_length": mal, "spec_metrics": m or None, "init_s": r["init_s"]}
            rows[(c, b)] = row
            print(f"  {c:15s} batch {b}: {row['tokens_per_s']:8.1f} tok/s"
                  + (f"  acceptance length {mal:.2f}" if mal else ""), flush=True)
    return rows


def _merge_rounds(rounds: list[dict], configs: list[str], batches: list[int]) -> list[dict]:
    """One row per (config, batch): the first round's row with tokens/s the median over every round's timed
    runs (one round: unchanged), plus each round's own median."""
    out = []
    for c in configs:
        for b in batches:
            got = [rd[(c, b)] for rd in rounds if (c, b) in rd]
            ok = [r for r in got if "tokens_per_s" in r]
            if not ok:
                if got:
                    out.append(got[0])
                continue
            row = dict(ok[0])
            if len(rounds) > 1:
                row["tokens_per_s_all"] = [x for r in ok for x in r["tokens_per_s_all"]]
                row["gen_s_all"] = [x for r in ok for x in r["gen_s_all"]]
                row["tokens_per_s"] = statistics.median(row["tokens_per_s_all"])
                row["tokens_per_s_rounds"] = [r["tokens_per_s"] for r in ok]
                row["init_s"] = [r["init_s"] for r in ok]
                row["errors"] = [r["error"] for r in got if "error" in r] or None
            out.append(row)
    return out


if __name__ == "__main__":
    sys.exit(main())
