#!/usr/bin/env python3
"""Profile (not a test): where one decode step's time goes in SGLang's CPU engine, PEAGLE vs SGLang's EAGLE3.

For each algorithm (same prompts, same K, bf16, tiny-code) one ``sglang.Engine(device="cpu")`` process
(tests/sglang/engine_harness.py) runs, per batch size, ``--warmup`` untimed and ``--repeat`` timed ``generate``
calls. Inside the engine's scheduler process, ``time.perf_counter`` timers wrap the speculative worker's methods
and count, per decode step (``EAGLEWorkerV2.forward_batch_generation`` in decode mode):

    step            the whole worker step
    draft           draft_worker.draft()  (EAGLE3: K-1 draft-decode forwards; PEAGLE: no forward, builds the
                    verify input from the stored drafts)
    verify          EAGLEWorkerV2.verify() (the target verify forward + acceptance)
    draft_extend    draft_worker._draft_extend_for_decode() (EAGLE3: draft-extend forward of the accepted rows;
                    PEAGLE: the one drafter forward of 2K rows per request)
    target_forward  ModelRunner.forward of the target runner (inside verify)
    draft_forward@P ModelRunner.forward of the draft runner inside phase P (count = forwards)
    nn@...          the model module's own forward (target / drafter): ModelRunner.forward minus this is the
                    runner's per-forward Python (attention metadata, logits processing, ForwardBatch handling)
    attn_meta@P     IntelAMXAttnBackend.init_forward_metadata inside phase P
    gap             the scheduler's time between two decode steps (outside the worker: result processing,
                    batch scheduling, detokenizer hand-off)
    bookkeeping     step - target_forward - all draft_forward: the worker's own Python/tensor work

How the timers get into the scheduler process, without changing pedagle's plugin or site-packages: this script
writes a throw-away distribution (``*.dist-info`` with an ``sglang.srt.plugins`` entry point ``pedagle_profile``
-> this module's `register`) into a temporary directory put on the engine's PYTHONPATH. SGLang loads it in every
process it starts; `register` adds ``HookRegistry`` AROUND hooks only when ``PEDAGLE_STEP_PROFILE`` names the
output file. Each worker step appends one JSON line there; this script splits the lines into the cases (a prefill
after a decode step starts a new case), drops the warm-up cases and writes
``bench/results/sglang_cpu_step_profile.json`` (device, load average, date, commit, versions).

    ~/.cache/pedagle/venvs/sglang/bin/python bench/profile_sglang_cpu_step.py --batches 1 4
    ~/.cache/pedagle/venvs/sglang/bin/python bench/profile_sglang_cpu_step.py --algorithms EAGLE3 PEAGLE --append

(the second run, in the other order, is added to the same file: ``{"runs": [...]}``; compare ratios within a run,
and ``draft_forwards_over_target_forward``, which is measured inside one process and so survives load drift).
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROFILE_ENV = "PEDAGLE_STEP_PROFILE"
ENTRY_NAME = "pedagle_profile"

# --------------------------------------------------------------------------------------- in the scheduler process
_state: dict[str, Any] = {"step": None, "phases": [], "out": None}


def _add(key: str, dt_s: float) -> None:
    step = _state["step"]
    if step is None:
        return
    t = step["t"]
    t[key] = t.get(key, 0.0) + dt_s
    c = step["n"]
    c[key] = c.get(key, 0) + 1


def _phase_hook(name: str):
    """AROUND hook: time a worker phase and make it the phase of the forwards inside it."""
    def hook(original_fn, *args, **kwargs):
        _state["phases"].append(name)
        t0 = time.perf_counter()
        try:
            return original_fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - t0)
            _state["phases"].pop()
    return hook


def _phase() -> str:
    return _state["phases"][-1] if _state["phases"] else "other"


def _runner_forward_hook(original_fn, runner, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return original_fn(runner, *args, **kwargs)
    finally:
        dt_s = time.perf_counter() - t0
        _add(f"draft_forward@{_phase()}" if getattr(runner, "is_draft_worker", False) else "target_forward", dt_s)


def _nn_hook(kind: str):
    """The model module's forward; only the outermost one counts (SGLang's EAGLE-3 class subclasses Llama)."""
    def hook(original_fn, *args, **kwargs):
        if _state.get("in_nn"):
            return original_fn(*args, **kwargs)
        _state["in_nn"] = True
        t0 = time.perf_counter()
        try:
            return original_fn(*args, **kwargs)
        finally:
            _state["in_nn"] = False
            _add(f"nn@{kind}@{_phase()}", time.perf_counter() - t0)
    return hook


def _attn_meta_hook(original_fn, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return original_fn(*args, **kwargs)
    finally:
        _add(f"attn_meta@{_phase()}", time.perf_counter() - t0)


def _step_hook(original_fn, worker, batch, *args, **kwargs):
    """AROUND ``EAGLEWorkerV2.forward_batch_generation``: one record per worker step."""
    mode = "prefill" if (batch.forward_mode.is_extend() or batch.is_extend_in_batch) else "decode"
    bs = int(batch.seq_lens.shape[0]) if batch.seq_lens is not None else len(batch.reqs)
    _state["step"] = {"t": {}, "n": {}}
    t0 = time.perf_counter()
    try:
        return original_fn(worker, batch, *args, **kwargs)
    finally:
        t1 = time.perf_counter()
        rec = {"mode": mode, "bs": bs, "t0": t0, "t1": t1, "t": _state["step"]["t"], "n": _state["step"]["n"]}
        _state["step"] = None
        with open(os.environ[PROFILE_ENV], "a") as f:
            f.write(json.dumps(rec) + "\n")


HOOKS = {
    "sglang.srt.speculative.eagle_worker_v2.EAGLEWorkerV2.forward_batch_generation": _step_hook,
    "sglang.srt.speculative.eagle_worker_v2.EAGLEWorkerV2.verify": _phase_hook("verify"),
    "sglang.srt.speculative.eagle_worker_v2.EagleDraftWorker.draft": _phase_hook("draft"),
    "sglang.srt.speculative.eagle_worker_v2.EagleDraftWorker._draft_extend_for_decode": _phase_hook("draft_extend"),
    "pedagle_backends.sglang.worker.PEagleDraftWorker.draft": _phase_hook("draft"),
    "pedagle_backends.sglang.worker.PEagleDraftWorker._draft_extend_for_decode": _phase_hook("draft_extend"),
    "sglang.srt.model_executor.model_runner.ModelRunner.forward": _runner_forward_hook,
    "sglang.srt.models.llama.LlamaForCausalLM.forward": _nn_hook("target"),
    "sglang.srt.models.llama_eagle3.LlamaForCausalLMEagle3.forward": _nn_hook("drafter"),
    "pedagle_backends.sglang.model.PedagleSglangDrafter.forward": _nn_hook("drafter"),
    "sglang.srt.layers.attention.intel_amx_backend.IntelAMXAttnBackend.init_forward_metadata": _attn_meta_hook,
}


def register() -> None:
    """``sglang.srt.plugins`` entry point of the throw-away distribution: hooks only with PEDAGLE_STEP_PROFILE."""
    if not os.environ.get(PROFILE_ENV):
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, fn in HOOKS.items():
        HookRegistry.register(target, fn, HookType.AROUND)


# --------------------------------------------------------------------------------------- driver
def plugin_dir(tmp: Path) -> Path:
    """A directory holding a minimal distribution whose entry point is `register` (for PYTHONPATH)."""
    di = tmp / "pedagle_step_profile-0.0.dist-info"
    di.mkdir(parents=True)
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: pedagle-step-profile\nVersion: 0.0\n")
    (di / "entry_points.txt").write_text(f"[sglang.srt.plugins]\n{ENTRY_NAME} = profile_sglang_cpu_step:register\n")
    return tmp


def segments(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The decode steps of each case, in order: a prefill record after a decode record starts a new case."""
    cases: list[list[dict[str, Any]]] = []
    prev = None
    for r in records:
        if r["mode"] == "prefill":
            if prev != "prefill":
                cases.append([])
        elif cases:
            cases[-1].append(r)
        prev = r["mode"]
    return cases


def summarize(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ms per decode step of every timer (and forwards per step), over ``steps``."""
    n = len(steps)
    keys = sorted({k for s in steps for k in s["t"]})
    ms = {k: 1000 * sum(s["t"].get(k, 0.0) for s in steps) / n for k in keys}
    calls = {k: sum(s["n"].get(k, 0) for s in steps) / n for k in keys}
    step = [1000 * (s["t1"] - s["t0"]) for s in steps]
    gaps = [1000 * (b["t0"] - a["t1"]) for a, b in zip(steps, steps[1:])]
    draft_fwd = sum(v for k, v in ms.items() if k.startswith("draft_forward@"))
    nn = sum(v for k, v in ms.items() if k.startswith("nn@"))
    fwd = ms.get("target_forward", 0.0) + draft_fwd
    def per_step(s: dict[str, Any], prefix: str) -> float:
        return sum(v for k, v in s["t"].items() if k.startswith(prefix))

    med = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    medians = {"step_ms": med([s["t1"] - s["t0"] for s in steps]),
               "target_forward_ms": med([s["t"].get("target_forward", 0.0) for s in steps]),
               "draft_forwards_ms": med([per_step(s, "draft_forward@") for s in steps]),
               "bookkeeping_ms": med([s["t1"] - s["t0"] - s["t"].get("target_forward", 0.0)
                                      - per_step(s, "draft_forward@") for s in steps]),
               "nn_forward_ms": med([per_step(s, "nn@") for s in steps])}
    out = {"steps": n, "step_ms_mean": statistics.mean(step), "step_ms_median": statistics.median(step),
           "median_per_step": medians,
           "draft_forwards_over_target_forward": draft_fwd / ms["target_forward"] if ms.get("target_forward") else None,
           "gap_ms_mean": statistics.mean(gaps) if gaps else None,
           "target_forward_ms": ms.get("target_forward", 0.0), "draft_forwards_ms": draft_fwd,
           "bookkeeping_ms": statistics.mean(step) - fwd,
           "runner_overhead_ms": fwd - nn, "nn_forward_ms": nn,
           "timers_ms": ms, "timer_calls_per_step": calls,
           "batch_sizes": sorted({s["bs"] for s in steps})}
    return out


def run_algorithm(args, fam: dict[str, Path], prompts: list[list[int]], algorithm: str, tmp: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests" / "sglang"))
    from engine_harness import EngineConfig, run_engine

    rec = tmp / f"steps-{algorithm}.jsonl"
    rec.write_text("")
    pp = os.pathsep.join([str(plugin_dir(tmp / f"plugin-{algorithm}")), str(ROOT / "bench"),
                          os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    drafter = fam["eagle3" if algorithm == "EAGLE3" else "peagle"]
    context = args.prompt_len + args.max_tokens + 2 * args.k + 16
    cfg = EngineConfig(target=str(fam["target"]), drafter=str(drafter), algorithm=algorithm, K=args.k,
                       dtype=args.dtype, env={PROFILE_ENV: str(rec), "PYTHONPATH": pp},
                       engine=dict(context_length=context, disable_radix_cache=True,
                                   max_running_requests=max(args.batches)))
    per = args.warmup + args.repeat
    cases = [{"prompts": prompts[:b], "max_new_tokens": args.max_tokens} for b in args.batches for _ in range(per)]
    res = run_engine(cfg, cases, timeout=1800, log=tmp / f"engine-{algorithm}.log")
    records = [json.loads(line) for line in rec.read_text().splitlines() if line.strip()]
    segs = segments(records)
    if len(segs) != len(cases):
        raise RuntimeError(f"{algorithm}: {len(segs)} cases in the step records, {len(cases)} run "
                           f"(log {tmp / f'engine-{algorithm}.log'})")
    rows = []
    for i, b in enumerate(args.batches):
        timed = [(segs[j], res["cases"][j]) for j in range(i * per + args.warmup, (i + 1) * per)]
        steps = [s for seg, _ in timed for s in seg]
        tokens = sum(len(o) for _, c in timed for o in c["outputs"])
        secs = sum(c["seconds"] for _, c in timed)
        verify_ct = sum(m.get("spec_verify_ct", 0) for _, c in timed for m in c["meta"])
        row = {"algorithm": algorithm, "K": args.k, "batch": b, "tokens_per_s": tokens / secs,
               "acceptance_length": tokens / verify_ct if verify_ct else None,
               "wall_ms_per_step": 1000 * secs / len(steps), "timed_cases": len(timed),
               "engine_start_s": res["start_s"]} | summarize(steps)
        rows.append(row)
        print(f"  {algorithm} batch {b}: {row['tokens_per_s']:.1f} tok/s, acceptance {row['acceptance_length']:.2f}, "
              f"wall/step {row['wall_ms_per_step']:.1f} ms, worker step {row['step_ms_mean']:.1f} ms = target "
              f"{row['target_forward_ms']:.1f} + draft fwd {row['draft_forwards_ms']:.1f} + bookkeeping "
              f"{row['bookkeeping_ms']:.1f}; gap {row['gap_ms_mean']:.1f}", flush=True)
    return {"rows": rows, "prefill_steps": sum(r["mode"] == "prefill" for r in records)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", type=Path, default=ROOT / "models" / "tiny-code")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--algorithms", nargs="+", default=["PEAGLE", "EAGLE3"], choices=["PEAGLE", "EAGLE3"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sglang_cpu_step_profile.json")
    ap.add_argument("--append", action="store_true",
                    help="keep the runs already in --out and add this one (e.g. the other algorithm order)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_vllm_cpu import _cpu_model, _git_commit, _prompts_tiny_code

    fam = {k: args.family / k for k in ("target", "peagle", "eagle3")}
    prompts = _prompts_tiny_code(fam["target"], max(args.batches), args.prompt_len)
    load_before = list(os.getloadavg())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pedagle-step-profile-") as tmp:
        for alg in args.algorithms:
            results[alg] = run_algorithm(args, fam, prompts, alg, Path(tmp))
    load_after = list(os.getloadavg())

    ratios = []
    for b in args.batches:
        pe = next((r for r in results.get("PEAGLE", {"rows": []})["rows"] if r["batch"] == b), None)
        e3 = next((r for r in results.get("EAGLE3", {"rows": []})["rows"] if r["batch"] == b), None)
        if pe and e3:
            ratios.append({"batch": b, "tokens_per_s": pe["tokens_per_s"] / e3["tokens_per_s"],
                           "step_ms": pe["step_ms_mean"] / e3["step_ms_mean"],
                           "step_ms_median": pe["step_ms_median"] / e3["step_ms_median"],
                           "draft_over_target_forward": {"PEAGLE": pe["draft_forwards_over_target_forward"],
                                                         "EAGLE3": e3["draft_forwards_over_target_forward"]},
                           "target_forward_ms": pe["target_forward_ms"] / e3["target_forward_ms"],
                           "draft_forwards_ms": pe["draft_forwards_ms"] / e3["draft_forwards_ms"],
                           "bookkeeping_ms": pe["bookkeeping_ms"] / e3["bookkeeping_ms"]})

    import sglang
    import torch
    import transformers

    run = {"meta": {"benchmark": "profile_sglang_cpu_step", "device": "cpu", "cpu": _cpu_model(),
                    "cores": os.cpu_count(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "commit": _git_commit(), "loadavg_before": load_before, "loadavg_after": load_after,
                    "sglang": sglang.__version__, "torch": torch.__version__,
                    "transformers": transformers.__version__, "python": platform.python_version(),
                    "omp_num_threads": "1 (pedagle_backends.sglang.cpu.prepare_env default)",
                    "kernels": "pedagle's CPU sgl_kernel test ops (tests/sgl_kernel_cpu, plain PyTorch)",
                    "timer": "time.perf_counter around SGLang/pedagle methods in the scheduler process (HookRegistry "
                             "AROUND hooks from a throw-away plugin distribution); ms are means per decode step "
                             "over the timed cases"},
           "family": str(args.family), "dtype": args.dtype, "K": args.k, "max_tokens": args.max_tokens,
           "prompt_len": args.prompt_len, "batches": args.batches, "warmup": args.warmup, "repeat": args.repeat,
           "algorithms_order": args.algorithms,
           "results": [r for alg in args.algorithms for r in results[alg]["rows"]],
           "peagle_over_eagle3": ratios}
    runs = json.loads(args.out.read_text())["runs"] if args.append and args.out.is_file() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs + [run]}, indent=1))
    for r in ratios:
        print(f"batch {r['batch']}: PEAGLE/EAGLE3 tokens/s x{r['tokens_per_s']:.2f}, step x{r['step_ms']:.2f}, "
              f"target fwd x{r['target_forward_ms']:.2f}, draft fwd x{r['draft_forwards_ms']:.2f}, "
              f"bookkeeping x{r['bookkeeping_ms']:.2f}")
    print(f"wrote {args.out} (load average {load_before[0]:.1f} -> {load_after[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
