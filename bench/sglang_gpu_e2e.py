#!/usr/bin/env python3
"""SGLang on a CUDA GPU, end to end, in one call per phase (issue 22, items 4 and 5). Not a test: a run whose
results are committed (bench/results/). Needs GPU SGLang + pedagle importable (on the lent machine: SGLang
0.5.17 + sglang-kernel 0.4.5 from ../shared/gpu-carry, no FA3: ``attention_backend="triton"``; see
bench/gpu_run.sh + bench/gpu_jobs.py, the device side). ``--dry-run`` runs everything that needs no engine on the CPU.

Phases (``--phases``, each bounded by its own budget; every configuration's error is recorded, never fatal):

``check``  tiny-code (target + peagle + eagle3) and the random conformance heads (vLLM format ``peagle``,
           speculators format ``peagle-spec``, a Qwen3 head ``qwen3-peagle`` on ``qwen3-target``, and a
           sliding-window copy of it made here, window 4), prompts of different lengths in ONE batch, radix
           cache on, CUDA graphs on, SGLang's defaults otherwise (attention_backend triton; page size 1, which
           PEAGLE needs; overlap off unless ``--engine-arg disable_overlap_schedule=false``). Engines:
           target-only, SGLang's EAGLE3 (tiny-code's eagle3 head, K=3) and PEAGLE (K = 1, 3, 7 on tiny-code;
           one K per random head), in float32 and bfloat16 (random heads: float32). All engines of the phase
           run one after another in one child process (`pedagle_backends.sglang.runner.run_jobs`; a child that
           dies is restarted after the job it died in). Checked per PEAGLE configuration:
             * output == target-only output of the same dtype (float32: exactly; bfloat16: each request's first
               difference classified with the target's float32 logits, `pedagle_core.engine.lossless.classify`);
             * recorded drafts (``PEDAGLE_RECORD_DRAFTS``) vs pedagle's reference forced onto every state SGLang
               drafted from (bench/gpu_draft_trace.py, float32, this GPU): equal, or a near-tie by the
               conformance margins;
             * float32: pedagle's reference engine (`ReferenceBackend.run_case`, this GPU) step by step: drafts
               and accepted counts equal at every step, accepted-per-position equal.
           EAGLE3: output == target-only (same rules) and its acceptance.
           float32 engines fail on SGLang 0.5.17's CUDA kernels (``sgl_kernel.rmsnorm`` has no float32; seen on an
           H200, 2026-12-07: bench/results/sglang_gpu_h200_float32_error.txt): on the lent GPU only the bf16 rows
           mean anything: pass ``--dtypes bfloat16``.
``conformance``  ``pedagle conformance run --backends reference,vllm,sglang --device cuda``, vLLM and SGLang each
           in its own interpreter environment (``--python NAME=WRAPPER``: a two-line shell script that sets
           PYTHONPATH to $VLLM_PYTHONPATH / $SGLANG_PYTHONPATH, as gpu_assemble.sh exports them).
``bench``  tokens/s, tiny-code bf16, batch 1 and 8, graphs on, one child process per configuration: round 0
           target-only, SGLang EAGLE3 K = 1, 3, 5, 7, PEAGLE K = 3, 5, 7, PEAGLE at its best K with
           ``PEDAGLE_SGLANG_DRAFT_GRAPHS=0`` (eager draft step); later rounds the chosen set (target-only,
           EAGLE3 K=3 and its best K, PEAGLE K = 3, 5, 7, eager) in alternating order. Medians over rounds,
           every raw number kept. PEAGLE children time their draft step with CUDA events
           (``PEDAGLE_SGLANG_TIME_DRAFT``, backends/sglang/step_timer.py): the drafter's share of each timed
           generate(). The schedule continues across calls through ``--bench-state`` (a JSON file that
           survives on a warm machine), so a phase longer than one call is two calls.
``prod``   a production-shaped random-weight run: a dense Qwen3-shaped target (config.json only,
           ``load_format="dummy"``) and a random 4-layer P-EAGLE head of bench/bench_drafter.py's
           qwen3-coder-30b-a3b shape written as a real checkpoint (pedagle's strict loader reads it back),
           K = 7, batch 1 and 8, context --prod-ctx: the draft step's GPU time inside SGLang (CUDA events) vs
           bench_drafter.py's standalone time for the same shape, batch and context, in the same call.

    python3 bench/sglang_gpu_e2e.py --out OUT [--phases check,conformance,bench,prod] [--budget-s 540]
    python3 bench/sglang_gpu_e2e.py --dry-run --out OUT          # CPU: plans, heads, analysis; no engine

Writes OUT/sglang_gpu.json (device, date, versions, commit, every raw number) and OUT/logs/; a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(os.environ.get("PEDAGLE_SRC", ROOT))
FAMILY = SRC / "models" / "tiny-code"
RANDOM = SRC / "conformance" / "cases" / "random" / "models"
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from prod_shapes import (PROD_FAMILY, draft_share, prod_compare, prod_table, random_prompts,  # noqa: E402
                         run_standalone, standalone_command, write_prod_models)

T0 = time.monotonic()
TINY_LENGTHS = (5, 12, 23, 37, 50, 71, 96, 120)        # 8 prompts of different lengths, one batch
RANDOM_LENGTHS = (3, 9, 17, 31)
CONTEXT = 320                                           # context_length of the tiny-code / random engines
GPU_ENGINE = {"attention_backend": "triton", "disable_cuda_graph": False}
EXTRA_ENGINE: dict[str, Any] = {}                       # --engine-arg KEY=VALUE (CUDA engines of every phase)
EAGLE3_ARCH = "LlamaForCausalLMEagle3"
SWA_WINDOW = 4


def engine_defaults(device: str) -> dict[str, Any]:
    """Engine keywords of every engine here: on CUDA ``GPU_ENGINE`` and the ``--engine-arg`` ones; on the CPU only
    the ``--engine-arg`` ones (SGLang's CPU engine set up by `pedagle_backends.sglang.cpu`, no graphs: a smoke run of
    the plumbing, not of the GPU)."""
    return {**GPU_ENGINE, **EXTRA_ENGINE} if device == "cuda" else dict(EXTRA_ENGINE)


def log(*a: Any) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s]", *a, flush=True)


# ---------------------------------------------------------------------------------------------- prompts
def tiny_prompts(lengths: Sequence[int] = TINY_LENGTHS, start: int = 0) -> list[list[int]]:
    """tiny-code held-out prompts (its tokenizer) cut to ``lengths`` (a line shorter than asked is repeated)."""
    from pedagle_core.engine.prompts import heldout_prompts

    return heldout_prompts(FAMILY / "target", lengths, start)


# ---------------------------------------------------------------------------------------------- heads
def sglang_eagle3_head(src: Path, dst: Path) -> Path:
    """An EAGLE-3 head as SGLang's EAGLE3 reads it: architecture ``LlamaForCausalLMEagle3`` and the aux layer ids
    in SGLang's convention (it captures the stream entering layer id + 1; pedagle's ids name the layer's output)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            (dst / f.name).symlink_to(f.resolve())
    cfg = json.loads((src / "config.json").read_text())
    ids = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if not ids:
        raise ValueError(f"{src / 'config.json'}: eagle_config.eagle_aux_hidden_state_layer_ids missing; expected "
                         "the head's aux layer ids (a vLLM-format EAGLE-3 head)")
    cfg["architectures"] = [EAGLE3_ARCH]
    cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [int(i) - 1 for i in ids]
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    return dst


def sliding_window_head(src: Path, dst: Path, window: int = SWA_WINDOW) -> Path:
    """A copy of a one-layer head whose every layer is a sliding-window layer of ``window`` keys."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    n = int(cfg.get("num_hidden_layers", 1))
    cfg.update(use_sliding_window=True, sliding_window=int(window), layer_types=["sliding_attention"] * n,
               max_window_layers=0)
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    return dst


def prepare_heads(work: Path, dry: bool = False, prod: bool = False, device: str = "cpu") -> dict[str, str]:
    """Every model directory the phases use (made under ``work/heads`` where a copy is needed)."""
    heads = work / "heads"
    heads.mkdir(parents=True, exist_ok=True)
    out = {"tiny-target": FAMILY / "target", "tiny-peagle": FAMILY / "peagle", "tiny-eagle3": FAMILY / "eagle3",
           "tiny-eagle3-sglang": sglang_eagle3_head(FAMILY / "eagle3", heads / "tiny-eagle3-sglang"),
           "llama-target": RANDOM / "llama-target", "qwen3-target": RANDOM / "qwen3-target",
           "peagle": RANDOM / "peagle", "peagle-spec": RANDOM / "peagle-spec", "qwen3-peagle": RANDOM / "qwen3-peagle",
           "qwen3-peagle-swa": sliding_window_head(RANDOM / "qwen3-peagle", heads / "qwen3-peagle-swa")}
    if prod:
        out["prod-target"], out["prod-peagle"] = write_prod_models(heads, dry, device)
    return {k: str(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- check: plan
@dataclass
class CheckConfig:
    """One engine of the check phase."""

    name: str
    group: str                       # "tiny" | "random"
    target: str
    drafter: str | None              # what the engine loads
    algorithm: str | None            # None (target only) | "EAGLE3" | "PEAGLE"
    K: int
    dtype: str
    prompts: list[list[int]]
    max_new: int
    steps: int                       # verify steps compared with the reference (PEAGLE)
    ref_drafter: str | None = None   # the head pedagle's reference loads (the EAGLE3 copy's source)
    baseline: str = ""               # the target-only config's name this one is compared with

    def job(self, engine: dict[str, Any]) -> dict[str, Any]:
        """The `runner.run_jobs` job of this engine: one generate() call with every prompt in one batch."""
        return {"target": self.target, "drafter": self.drafter, "K": max(self.K, 1), "algorithm": self.algorithm,
                "dtype": self.dtype, "engine": {"context_length": CONTEXT, **engine}, "name": self.name,
                "calls": [{"name": "batch", "prompts": self.prompts, "max_new_tokens": self.max_new}]}


def check_configs(heads: dict[str, str], groups: Sequence[str] = ("tiny", "random"),
                  dtypes: Sequence[str] = ("bfloat16", "float32"), ks: Sequence[int] = (1, 3, 7),
                  steps: int = 10, random_steps: int = 6, random_dtypes: Sequence[str] = ("float32",)
                  ) -> list[CheckConfig]:
    """The check phase's engines, most important first (a cut budget loses the tail): per dtype tiny-code
    target-only, PEAGLE K=3, the other Ks, EAGLE3 K=3; then the random heads (target-only per target first)."""
    out: list[CheckConfig] = []
    if "tiny" in groups:
        P = tiny_prompts()
        longest = (steps + 1) * (max(max(ks), 3) + 1)
        order = [3] + [k for k in ks if k != 3] if 3 in ks else list(ks)
        for dt in dtypes:
            base = f"tiny-target-{dt}"
            out.append(CheckConfig(base, "tiny", heads["tiny-target"], None, None, 0, dt, P, longest, 0))
            for k in order:
                out.append(CheckConfig(f"tiny-peagle-k{k}-{dt}", "tiny", heads["tiny-target"], heads["tiny-peagle"],
                                       "PEAGLE", k, dt, P, (steps + 1) * (k + 1), steps, heads["tiny-peagle"], base))
            out.append(CheckConfig(f"tiny-eagle3-k3-{dt}", "tiny", heads["tiny-target"], heads["tiny-eagle3-sglang"],
                                   "EAGLE3", 3, dt, P, longest, 0, heads["tiny-eagle3"], base))
    if "random" in groups:
        # (target, head, K): vLLM format K=3, speculators K=7, Qwen3 K=1, sliding window K=3
        heads_k = [("llama-target", "peagle", 3), ("llama-target", "peagle-spec", 7), ("qwen3-target", "qwen3-peagle", 1),
                   ("qwen3-target", "qwen3-peagle-swa", 3)]
        vocab = {t: int(json.loads((Path(heads[t]) / "config.json").read_text())["vocab_size"])
                 for t in ("llama-target", "qwen3-target")}
        longest = (random_steps + 1) * (max(k for _, _, k in heads_k) + 1)
        for dt in random_dtypes:
            for t in ("llama-target", "qwen3-target"):
                out.append(CheckConfig(f"{t}-{dt}", "random", heads[t], None, None, 0, dt,
                                       random_prompts(RANDOM_LENGTHS, vocab[t]), longest, 0))
            for t, h, k in heads_k:
                out.append(CheckConfig(f"{h}-k{k}-{dt}", "random", heads[t], heads[h], "PEAGLE", k, dt,
                                       random_prompts(RANDOM_LENGTHS, vocab[t]), (random_steps + 1) * (k + 1),
                                       random_steps, heads[h], f"{t}-{dt}"))
    return out


# ---------------------------------------------------------------------------------------------- check: run
DIED = "the SGLang engine process ended"


def run_jobs_resilient(jobs: list[dict[str, Any]], deadline: float, logs: Path, device: str = "cuda"
                       ) -> list[dict[str, Any]]:
    """`runner.run_jobs` in one child; when the child dies in a job, that job keeps its error and a new child
    runs the rest (one failing engine must not lose the others). Jobs not started before ``deadline``:
    ``{"error": "not run: ..."}``."""
    from pedagle_backends.sglang import runner

    results: list[dict[str, Any] | None] = [None] * len(jobs)
    start, attempt = 0, 0
    while start < len(jobs):
        left = deadline - time.monotonic()
        if left < 30:
            break
        res = runner.run_jobs(jobs[start:], device=device, timeout=left, log=str(logs / f"check_child{attempt}.log"))
        attempt += 1
        died = next((i for i, r in enumerate(res) if str(r.get("error", "")).startswith(DIED)
                     or str(r.get("error", "")).startswith("timed out")), None)
        for i, r in enumerate(res[:len(res) if died is None else died + 1]):
            results[start + i] = r
        if died is None:
            start = len(jobs)
        else:
            log(f"check: the engine child died in job {jobs[start + died].get('name')}; restarting after it")
            start += died + 1
    return [r if r is not None else {"error": "not run: out of the phase's time budget"} for r in results]


# ---------------------------------------------------------------------------------------------- check: analysis
def positions_of(steps: list[dict[str, Any]], prompt_len: int) -> dict[int, list[int]]:
    """One request's draft steps (`runner.per_request_steps`) -> {bonus position: drafts}: step 0 drafts from the
    prompt's last position (prompt_len - 1; the first output token is its bonus); a step whose verify accepted
    ``a`` drafts of the previous one moves the bonus position by a + 1."""
    out: dict[int, list[int]] = {}
    pos = prompt_len - 1
    for s, st in enumerate(steps):
        if s > 0:
            if st.get("accepted") is None:
                break
            pos += int(st["accepted"]) + 1
        out[pos] = [int(x) for x in st["drafts"]]
    return out


def output_check(got: list[list[int]], ref: list[list[int]], prompts: list[list[int]], dtype: str,
                 model_f32: Any = None) -> dict[str, Any]:
    """Outputs against the target-only outputs of the same dtype (each compared over its own length). float32:
    any difference is a failure. Other dtypes: each request's first difference classified with the target's
    float32 logits (`lossless.classify`; ``model_f32`` a float32 transformers target)."""
    from pedagle_core.engine.lossless import TIE_MARGINS, classify, first_divergence

    res: dict[str, Any] = {"requests": len(got), "equal": 0, "near_ties": 0, "failures": 0, "divergences": []}
    for i, (g, r) in enumerate(zip(got, ref)):
        if len(r) < len(g):
            res["failures"] += 1
            res["divergences"].append({"prompt": i, "why": f"target-only output has {len(r)} tokens, fewer than {len(g)}"})
            continue
        p = first_divergence(r[:len(g)], g)
        if p is None:
            res["equal"] += 1
            continue
        if dtype == "float32" or model_f32 is None:
            res["failures"] += 1
            res["divergences"].append({"prompt": i, "position": p, "ref_token": r[p], "got_token": g[p],
                                       "near_tie": False, "why": "float32 must be exact" if dtype == "float32"
                                       else "no float32 target to classify with"})
            continue
        d = classify(model_f32, prompts[i], r[:len(g)], g, TIE_MARGINS[dtype], prompt_index=i, dtype=dtype)
        res["near_ties" if d.near_tie else "failures"] += 1
        res["divergences"].append(d.to_dict())
    res["ok"] = res["failures"] == 0 and res["requests"] > 0
    return res


def step_compare(got: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Two conformance results (SGLang's from its records, the reference engine's) step by step: drafts and
    accepted counts at every (step, request) both have, accepted per position."""
    n = same_d = same_a = 0
    first: list[dict[str, Any]] = []
    for s in range(min(len(got["drafts"]), len(ref["drafts"]))):
        for b in range(min(len(got["drafts"][s]), len(ref["drafts"][s]))):
            gd, rd = got["drafts"][s][b], ref["drafts"][s][b]
            if gd is None or rd is None:
                continue
            n += 1
            ga, ra = got["accepted"][s][b], ref["accepted"][s][b]
            same_d += list(gd) == list(rd)
            same_a += ga == ra
            if (list(gd) != list(rd) or ga != ra) and len(first) < 5:
                first.append({"step": s, "request": b, "drafts": list(gd), "ref_drafts": list(rd), "accepted": ga,
                              "ref_accepted": ra})
    pp = {"sglang": got["accepted_per_position"], "reference": ref["accepted_per_position"]}
    return {"compared": n, "drafts_equal": same_d, "accepted_equal": same_a, "accepted_per_position": pp,
            "per_position_equal": pp["sglang"] == pp["reference"], "first_differences": first,
            "ok": n > 0 and same_d == n and same_a == n and pp["sglang"] == pp["reference"]}


def trace_summary(tr: dict[str, Any]) -> dict[str, Any]:
    """The SGLang-vs-forced-reference part of `gpu_draft_trace.trace_states` (b side empty)."""
    s = tr["sglang_vs_reference"]
    return {"states": tr["states_a"], "slots": s["slots"], "equal": s["equal"], "near_ties": s["near_ties"],
            "unexplained": s["unexplained"][:20], "n_unexplained": len(s["unexplained"]),
            "ok": s["slots"] > 0 and not s["unexplained"]}


class References:
    """pedagle's reference models on this device, loaded once per (target, drafter, dtype)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._f32: dict[str, Any] = {}
        self._forced: dict[tuple[str, str], Any] = {}

    def target_f32(self, target: str) -> Any:
        from pedagle_core.engine.target import load_hf_target

        if target not in self._f32:
            self._f32[target] = load_hf_target(target, dtype="float32", device=self.device)
        return self._f32[target]

    def forced(self, target: str, drafter: str) -> Any:
        from gpu_draft_trace import ForcedReference

        key = (target, drafter)
        if key not in self._forced:
            self._forced[key] = ForcedReference(target, drafter, True, "float32", self.device)
        return self._forced[key]


def analyze_config(cfg: CheckConfig, res: dict[str, Any], base: dict[str, Any] | None, refs: References,
                   reference_engine: bool | str = True) -> dict[str, Any]:
    """The checks of one engine's result (``res``: `runner.run_job`'s) against its target-only run (``base``)."""
    from pedagle_backends.sglang import runner

    row: dict[str, Any] = {"name": cfg.name, "group": cfg.group, "algorithm": cfg.algorithm or "target-only",
                           "K": cfg.K, "dtype": cfg.dtype, "prompt_lengths": [len(p) for p in cfg.prompts],
                           "max_new": cfg.max_new, "start_s": res.get("start_s"), "total_s": res.get("total_s")}
    if "error" in res:
        row.update(ok=False, error=str(res["error"])[-3000:])
        return row
    gen = res["calls"]["batch"]
    row["generate_s"] = gen.get("seconds")
    meta = gen.get("meta") or []
    verify = sum(int(m.get("spec_verify_ct", 0) or 0) for m in meta)
    if cfg.algorithm:
        row["acceptance_length"] = sum(len(o) for o in gen["outputs"]) / verify if verify else None
    if cfg.algorithm is None:
        row["ok"] = all(len(o) == cfg.max_new for o in gen["outputs"])
        return row
    if base is None or "error" in base:
        row.update(ok=False, error=f"no target-only run to compare with ({cfg.baseline}: "
                                   f"{(base or {}).get('error', 'missing')})"[:3000])
        return row
    f32 = refs.target_f32(cfg.target) if cfg.dtype != "float32" else None
    row["outputs"] = output_check(gen["outputs"], base["calls"]["batch"]["outputs"], cfg.prompts, cfg.dtype, f32)
    checks = [row["outputs"]["ok"]]
    if cfg.algorithm == "PEAGLE":
        records = res.get("records") or []
        row["config_record"] = runner.config_record(records)
        steps = runner.per_request_steps(records, gen["rids"])
        row["draft_steps"] = sum(len(s) for s in steps)
        dec = [r for r in records if r.get("kind") == "decode"]
        row["decode_records"] = len(dec)
        row["decode_records_graph"] = sum(1 for r in dec if r.get("graph_bs") is not None)   # replayed in a graph
        try:
            from gpu_draft_trace import trace_states

            t0 = time.perf_counter()
            a = {r: positions_of(steps[r], len(cfg.prompts[r])) for r in range(len(steps))}
            seqs = {r: list(cfg.prompts[r]) + list(gen["outputs"][r]) for r in range(len(steps))}
            tr = trace_states({"float32": refs.forced(cfg.target, cfg.ref_drafter)}, seqs, cfg.K, cfg.dtype, a, {},
                              names=("sglang", "none"))
            row["drafts_vs_forced_reference"] = {**trace_summary(tr), "seconds": time.perf_counter() - t0}
        except Exception as e:  # noqa: BLE001 - keep the other checks
            import traceback

            row["drafts_vs_forced_reference"] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                                 "traceback": traceback.format_exc()[-2000:]}
        checks.append(row["drafts_vs_forced_reference"]["ok"])
        if isinstance(reference_engine, str):       # the reason it was skipped
            row["incomplete"] = f"reference engine not run: {reference_engine}"
        elif reference_engine and cfg.steps:
            try:
                from pedagle_core.engine.backend import ReferenceBackend

                t0 = time.perf_counter()
                got = runner.to_case_result({**gen, "records": records}, cfg.K, cfg.steps)
                ref = ReferenceBackend().run_case(cfg.target, cfg.ref_drafter, cfg.prompts, K=cfg.K, mode="parallel",
                                                  steps=cfg.steps, dtype=cfg.dtype, device=refs.device)
                row["reference_engine"] = {**step_compare(got, ref), "seconds": time.perf_counter() - t0}
                row["reference_engine"]["outputs_equal"] = all(
                    ref["output_ids"][b] == gen["outputs"][b][:len(ref["output_ids"][b])] for b in range(len(cfg.prompts)))
            except Exception as e:  # noqa: BLE001
                import traceback

                row["reference_engine"] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                           "traceback": traceback.format_exc()[-2000:]}
            if cfg.dtype == "float32":       # bf16: a different but valid path is no failure (the trace decides)
                checks.append(row["reference_engine"]["ok"])
    row["ok"] = all(checks)
    return row


def analyze_check(cfgs: list[CheckConfig], results: list[dict[str, Any]], refs: References,
                  reference_engine: bool = True, deadline: float | None = None,
                  on_row: Any = None) -> list[dict[str, Any]]:
    """`analyze_config` for every engine; past ``deadline`` a config is left unanalysed (`--reanalyze` redoes it
    from the logs), and within 60 s of it the reference engine is skipped; ``on_row(rows)`` after each."""
    by_name = {c.name: r for c, r in zip(cfgs, results)}
    rows: list[dict[str, Any]] = []
    for c, r in zip(cfgs, results):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < 10:
            rows.append({"name": c.name, "ok": False, "error": "not analysed: out of the phase's time budget (redo: "
                         "bench/sglang_gpu_e2e.py --reanalyze OUT)"})
            continue
        ref_engine: bool | str = reference_engine
        if reference_engine and left is not None and left < 60:
            ref_engine = "out of the phase's time budget (redo: --reanalyze)"
        try:
            rows.append(analyze_config(c, r, by_name.get(c.baseline) if c.baseline else None, refs, ref_engine))
        except Exception as e:  # noqa: BLE001 - one config's analysis must not lose the others
            import traceback

            rows.append({"name": c.name, "ok": False, "error": f"analysis: {type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-2000:]})
        log(f"check {c.name}: {'ok' if rows[-1].get('ok') else 'FAIL'} " + (rows[-1].get("error", "")[:300]))
        if on_row is not None:
            on_row(rows)
    return rows


def check_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'config':28s} {'out==target':>12s} {'drafts~forced ref':>18s} {'ref engine steps':>17s} "
             f"{'acc/pos sglang | ref':>26s} {'AL':>5s} {'graph':>7s} {'start s':>7s}  result"]
    for r in rows:
        o = r.get("outputs") or {}
        tr = r.get("drafts_vs_forced_reference") or {}
        re_ = r.get("reference_engine") or {}
        out = f"{o['equal']}/{o['requests']}" + (f"+{o['near_ties']}t" if o.get("near_ties") else "") if o else "-"
        drafts = (f"{tr['equal']}/{tr['slots']}" + (f"+{tr['near_ties']}t" if tr.get("near_ties") else "")
                  + (f" {tr['n_unexplained']}X" if tr.get("n_unexplained") else "")) if "slots" in tr else \
            ("ERR" if tr else "-")
        steps = f"{re_['drafts_equal']}/{re_['compared']}" if "compared" in re_ else ("ERR" if re_ else "-")
        pp = re_.get("accepted_per_position") or {}
        acc = f"{pp.get('sglang')} | {pp.get('reference')}" if pp else "-"
        al = f"{r['acceptance_length']:.2f}" if r.get("acceptance_length") else "-"
        st = f"{r['start_s']:.0f}" if r.get("start_s") else "-"
        gr = f"{r['decode_records_graph']}/{r['decode_records']}" if "decode_records" in r else "-"
        lines.append(f"{r['name']:28s} {out:>12s} {drafts:>18s} {steps:>17s} {acc[:26]:>26s} {al:>5s} {gr:>7s} {st:>7s}  "
                     + ("ok" if r.get("ok") else "FAIL " + str(r.get("error", ""))[:60].replace("\n", " "))
                     + (" (incomplete)" if r.get("incomplete") else ""))
    lines.append("(out==target: requests equal to target-only (+t near-ties); drafts~forced ref: draft slots equal to the "
                 "float32 reference at SGLang's own states (+t near-ties, X not explained); ref engine steps: (step, "
                 "request) drafts equal to the reference engine's (float32 gates); AL: tokens per verify; graph: decode "
                 "draft steps replayed from a CUDA graph)")
    return "\n".join(lines)


def phase_check(out: Path, heads: dict[str, str], args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    cfgs = check_configs(heads, args.check_groups.split(","), args.dtypes, args.ks, args.steps, args.random_steps,
                         args.random_dtypes)
    jobs = [c.job(engine_defaults(args.device)) for c in cfgs]
    (out / "logs" / "check_jobs.json").write_text(json.dumps(jobs))
    log(f"check: {len(jobs)} engines: " + ", ".join(c.name for c in cfgs))
    # the analysis loads float32 reference models on the GPU: leave it time after the engines
    results = run_jobs_resilient(jobs, deadline - args.analysis_s, out / "logs", device=args.device)
    (out / "logs" / "check_results.json").write_text(json.dumps(results))
    (out / "logs" / "check_configs.json").write_text(json.dumps(
        {"root": str(SRC), "out": str(out), "configs": [asdict(c) for c in cfgs]}))
    partial = out / "logs" / "check_rows.json"
    rows = analyze_check(cfgs, results, References(args.ref_device), reference_engine=not args.no_reference_engine,
                         deadline=deadline, on_row=lambda rs: partial.write_text(json.dumps(rs, default=str)))
    return check_result(rows, engine_defaults(args.device), args.device, args.ref_device)


def check_result(rows: list[dict[str, Any]], engine: dict[str, Any], device: str, ref_device: str) -> dict[str, Any]:
    return {"engine_defaults": {**engine, "device": device, "context_length": CONTEXT, "radix_cache": True,
                                "disable_overlap_schedule": engine.get("disable_overlap_schedule", True), "page_size": 1},
            "reference_device": ref_device, "configs": rows, "ok": bool(rows) and all(r.get("ok") for r in rows),
            "complete": not any(r.get("incomplete") or "not analysed" in str(r.get("error", "")) for r in rows),
            "table": check_table(rows)}


def reanalyze(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The check phase's analysis again from a run's logs (``run``: the unpacked OUT of a device call), with the
    reference on ``--ref-device``; the run's paths are mapped to this checkout and ``run``."""
    saved = json.loads((run / "logs" / "check_configs.json").read_text())
    results = json.loads((run / "logs" / "check_results.json").read_text())
    remap = lambda v: v.replace(saved["out"], str(run)).replace(saved["root"], str(SRC)) \
        if isinstance(v, str) else v  # noqa: E731
    cfgs = [CheckConfig(**{k: remap(v) for k, v in c.items()}) for c in saved["configs"]]
    missing = sorted({p for c in cfgs for p in (c.target, c.ref_drafter) if p and not Path(p).is_dir()})
    if missing:
        raise SystemExit(f"--reanalyze {run}: model directories missing here: {missing}")
    rows = analyze_check(cfgs, results, References(args.ref_device), reference_engine=not args.no_reference_engine)
    return {**check_result(rows, {}, "as run", args.ref_device), "reanalysis_of": str(run)}


# ---------------------------------------------------------------------------------------------- conformance
def python_wrapper(path: Path, pythonpath: str, python: str = sys.executable) -> Path:
    """A shell script that runs ``python`` with PYTHONPATH set to ``pythonpath`` (``--python NAME=PATH`` of the
    conformance CLI runs each backend in its own environment; on the GPU machine the environments are
    PYTHONPATH trees, not virtual environments)."""
    path.write_text(f"#!/bin/sh\nPYTHONPATH={pythonpath} exec {python} \"$@\"\n")
    path.chmod(0o755)
    return path


def conformance_command(out: Path, backends: str, pythons: dict[str, str], cases: Sequence[str] = (),
                        device: str = "cuda") -> list[str]:
    cmd = [sys.executable, "-m", "pedagle_conformance", "run", "--backends", backends, "--device", device,
           "--json", str(out / f"conformance_{device}.json"), "--report", str(out / f"conformance_{device}.md")]
    for name, py in pythons.items():
        cmd += ["--python", f"{name}={py}"]
    for c in cases:
        cmd += ["--case", c]
    return cmd


def phase_conformance(out: Path, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    pythons = {}
    for name, var in (("vllm", "VLLM_PYTHONPATH"), ("sglang", "SGLANG_PYTHONPATH")):
        if name in args.conf_backends.split(",") and os.environ.get(var):
            pythons[name] = str(python_wrapper(out / f"python-{name}", os.environ[var]))
    cmd = conformance_command(out, args.conf_backends, pythons, args.conf_cases or (), args.device)
    env = {**os.environ, "PEDAGLE_SGLANG_ENGINE_ARGS": json.dumps(engine_defaults(args.device)),
           "PEDAGLE_VLLM_GPU_MEMORY_UTILIZATION": str(args.vllm_util),
           "VLLM_USE_V2_MODEL_RUNNER": "1" if args.vllm_runner == "v2" else "0",
           "VLLM_CACHE_ROOT": f"/tmp/pedagle-vllm-cache/conformance_{args.vllm_runner}"}
    log("conformance:", " ".join(cmd))
    logf = out / "logs" / "conformance.log"
    try:
        with open(logf, "w") as f:
            rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=max(30.0, deadline - time.monotonic())).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    tail = logf.read_text().strip().splitlines()
    res: dict[str, Any] = {"command": " ".join(cmd), "exit": rc, "tail": tail[-25:], "vllm_runner": args.vllm_runner,
                           "sglang_engine": engine_defaults(args.device)}
    jf = out / f"conformance_{args.device}.json"
    if jf.is_file():
        rep = json.loads(jf.read_text())
        counts: dict[str, int] = {}
        for o in rep.get("outcomes", []):
            key = f"{o.get('backend')}:{o.get('status')}"
            counts[key] = counts.get(key, 0) + 1
        res["counts"] = counts
    return res


# ---------------------------------------------------------------------------------------------- engine child
def engine_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One engine in this process: ``spec`` = {"kwargs": sglang.Engine keywords, "calls": [{"name", "prompts",
    "max_new_tokens", "repeat"}], "timer": path or None}. Each call's wall window (time.time()) is kept, to
    attribute the draft-step timer's lines to it."""
    kwargs = dict(spec["kwargs"])
    if spec.get("device", "cuda") == "cpu":
        from pedagle_backends.sglang import cpu

        kwargs = {**cpu.engine_kwargs(), **kwargs}           # before SGLang is imported
    import sglang

    t0 = time.perf_counter()
    engine = sglang.Engine(**kwargs)
    res: dict[str, Any] = {"start_s": time.perf_counter() - t0, "calls": []}
    try:
        for c in spec["calls"]:
            params = [{"temperature": 0.0, "max_new_tokens": int(c["max_new_tokens"]), "ignore_eos": True}
                      for _ in c["prompts"]]
            for i in range(int(c.get("repeat", 1))):
                w0, p0 = time.time(), time.perf_counter()
                outs = engine.generate(input_ids=c["prompts"], sampling_params=params)
                sec = time.perf_counter() - p0
                meta = [o.get("meta_info", {}) for o in outs]
                res["calls"].append({"name": c["name"], "i": i, "batch": len(c["prompts"]), "seconds": sec,
                                     "t0": w0, "t1": w0 + sec, "tokens": sum(len(o["output_ids"]) for o in outs),
                                     "verify_ct": [int(m.get("spec_verify_ct", 0) or 0) for m in meta]})
    finally:
        engine.shutdown()
    time.sleep(0.5)
    if spec.get("timer") and Path(spec["timer"]).is_file():
        from pedagle_backends.sglang.step_timer import read

        res["timer"] = read(spec["timer"])
    return res


def run_engine_child(spec: dict[str, Any], logf: Path, env_extra: dict[str, str], timeout: float) -> dict[str, Any]:
    sf = logf.with_suffix(".spec.json")
    sf.write_text(json.dumps(spec))
    env = {**os.environ, **env_extra}
    if spec.get("timer"):
        env["PEDAGLE_SGLANG_TIME_DRAFT"] = spec["timer"]
        Path(spec["timer"]).unlink(missing_ok=True)
    try:
        with open(logf, "w") as f:
            rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--engine-child", str(sf)], env=env,
                                stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    rf = sf.with_name(sf.name.replace(".spec.json", ".res.json"))
    if rc != 0 or not rf.is_file():
        return {"error": f"exit {rc}", "log_tail": logf.read_text()[-3000:]}
    return json.loads(rf.read_text())


# ---------------------------------------------------------------------------------------------- bench
BENCH_E3_KS = (1, 3, 5, 7)
BENCH_PE_KS = (3, 5, 7)


def bench_config(name: str, heads: dict[str, str], overlap: bool, device: str = "cuda") -> dict[str, Any]:
    """Engine keywords and environment of a bench configuration name: target-only, eagle3-kN, peagle-kN,
    peagle-kN-eager."""
    kw: dict[str, Any] = dict(model_path=heads["tiny-target"], dtype="bfloat16", skip_tokenizer_init=True,
                              random_seed=0, context_length=CONTEXT, log_level="error", **engine_defaults(device))
    env: dict[str, str] = {}
    if not overlap:
        kw["disable_overlap_schedule"] = True
    if name.startswith("eagle3-k"):
        K = int(name.split("-k")[1])
        kw.update(speculative_algorithm="EAGLE3", speculative_draft_model_path=heads["tiny-eagle3-sglang"],
                  speculative_num_steps=K, speculative_eagle_topk=1, speculative_num_draft_tokens=K + 1)
    elif name.startswith("peagle-k"):
        K = int(name.split("-k")[1].split("-")[0])
        kw.update(speculative_algorithm="PEAGLE", speculative_draft_model_path=heads["tiny-peagle"],
                  speculative_num_draft_tokens=K + 1, page_size=1)
        if name.endswith("-eager"):
            env["PEDAGLE_SGLANG_DRAFT_GRAPHS"] = "0"
    elif name != "target-only":
        raise ValueError(f"bench configuration {name!r}: expected target-only, eagle3-kN, peagle-kN[-eager]")
    return {"kwargs": kw, "env": env}


def bench_best(runs: list[dict[str, Any]], prefix: str, batch: str = "1", exclude_eager: bool = True) -> str | None:
    """The configuration of ``prefix`` (eagle3-k / peagle-k) with the highest median tokens/s at ``batch``."""
    tps: dict[str, list[float]] = {}
    for r in runs:
        if r["config"].startswith(prefix) and not (exclude_eager and r["config"].endswith("-eager")) \
                and batch in r.get("tokens_per_s", {}):
            tps.setdefault(r["config"], []).append(r["tokens_per_s"][batch])
    return max(tps, key=lambda k: statistics.median(tps[k])) if tps else None


def bench_next(runs: list[dict[str, Any]], rounds: int, only: Sequence[str] | None = None) -> tuple[int, str] | None:
    """The next (round, configuration) of the bench schedule given the runs so far (see the module doc); ``only``:
    shell patterns (fnmatch) of the configurations to run, the others are skipped."""
    import fnmatch

    done = {(r["round"], r["config"]) for r in runs}
    chosen = lambda n: not only or any(fnmatch.fnmatch(n, pat) for pat in only)  # noqa: E731
    for rnd in range(rounds):
        if rnd == 0:
            order = ["target-only"] + [f"eagle3-k{k}" for k in BENCH_E3_KS] + [f"peagle-k{k}" for k in BENCH_PE_KS]
            best_pe = bench_best([r for r in runs if r["round"] == 0], "peagle-k")
            if all((0, n) in done for n in order if chosen(n)):
                order.append(f"{best_pe or 'peagle-k7'}-eager")
        else:
            r0 = [r for r in runs if r["round"] == 0]
            e3, pe = bench_best(r0, "eagle3-k") or "eagle3-k3", bench_best(r0, "peagle-k") or "peagle-k7"
            order = ["target-only", "eagle3-k3"] + ([e3] if e3 != "eagle3-k3" else []) + \
                [f"peagle-k{k}" for k in BENCH_PE_KS] + [f"{pe}-eager"]
            if rnd % 2:
                order = order[::-1]
        for n in order:
            if (rnd, n) not in done and chosen(n):
                return rnd, n
    return None


def bench_row(res: dict[str, Any], batches: Sequence[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"start_s": res.get("start_s"), "tokens_per_s": {}, "raw": res.get("calls", [])}
    for b in batches:
        calls = [c for c in res.get("calls", []) if c["name"] == f"b{b}" and c["i"] >= 1]
        if not calls:
            continue
        row["tokens_per_s"][str(b)] = statistics.median(c["tokens"] / c["seconds"] for c in calls)
        vc = [max(c["verify_ct"]) for c in calls if any(c["verify_ct"])]
        if vc:
            row.setdefault("step_ms", {})[str(b)] = statistics.median(
                1e3 * c["seconds"] / max(c["verify_ct"]) for c in calls if any(c["verify_ct"]))
            row.setdefault("acceptance_length", {})[str(b)] = statistics.median(
                c["tokens"] / sum(c["verify_ct"]) for c in calls if any(c["verify_ct"]))
        share = draft_share(res, f"b{b}", b)
        if share:
            row.setdefault("draft", {})[str(b)] = share
    return row


def _medians(runs: list[dict[str, Any]], get: Any) -> dict[str, dict[str, float]]:
    """{config: {batch: median over rounds of get(run, batch)}} (None values left out)."""
    vals: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for b in r.get("tokens_per_s", {}):
            v = get(r, b)
            if v is not None:
                vals.setdefault(r["config"], {}).setdefault(b, []).append(float(v))
    return {c: {b: statistics.median(v) for b, v in bs.items()} for c, bs in vals.items()}


def bench_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = _medians(runs, lambda r, b: r["tokens_per_s"][b])
    extra = {"step_ms": _medians(runs, lambda r, b: (r.get("step_ms") or {}).get(b)),
             "acceptance_length": _medians(runs, lambda r, b: (r.get("acceptance_length") or {}).get(b)),
             "draft_ms": _medians(runs, lambda r, b: ((r.get("draft") or {}).get(b) or {}).get("draft_gpu_ms_median")),
             "draft_share": _medians(runs, lambda r, b: ((r.get("draft") or {}).get(b) or {}).get("share"))}
    goals: dict[str, Any] = {}
    for b in ("1", "8"):
        t = med.get("target-only", {}).get(b)
        e3 = max((v[b] for c, v in med.items() if c.startswith("eagle3") and b in v), default=None)
        pe = max((v[b] for c, v in med.items() if c.startswith("peagle") and not c.endswith("eager") and b in v),
                 default=None)
        goals[b] = {"peagle_best": pe, "eagle3_best": e3, "target_only": t,
                    "peagle_vs_eagle3": pe / e3 if pe and e3 else None, "peagle_vs_target": pe / t if pe and t else None}
        eager = [c for c in med if c.endswith("-eager") and b in med[c]]
        if eager and b in med.get(eager[0].removesuffix("-eager"), {}):
            goals[b]["graphs_vs_eager"] = med[eager[0].removesuffix("-eager")][b] / med[eager[0]][b]
            goals[b]["eager_config"] = eager[0]
    return {"tokens_per_s_median": med, **{f"{k}_median": v for k, v in extra.items()}, "goals": goals}


def bench_table(summary: dict[str, Any]) -> str:
    med = summary["tokens_per_s_median"]
    cols = [("tokens_per_s_median", "tok/s", "{:11.0f}"), ("step_ms_median", "step ms", "{:11.3f}"),
            ("acceptance_length_median", "acc len", "{:11.2f}"), ("draft_ms_median", "draft ms", "{:11.3f}"),
            ("draft_share_median", "draft %", "{:11.1%}")]
    lines = [f"{'config':20s} " + " ".join(f"{'b' + b + ' ' + name:>11s}" for _, name, _ in cols for b in ("1", "8"))]
    for c in sorted(med):
        cells = []
        for key, _, fmt in cols:
            for b in ("1", "8"):
                v = summary.get(key, {}).get(c, {}).get(b)
                cells.append(fmt.format(v) if v is not None else f"{'-':>11s}")
        lines.append(f"{c:20s} " + " ".join(cells))
    for b, g in summary["goals"].items():
        f = lambda x: f"{x:.3f}" if x else "-"  # noqa: E731
        lines.append(f"batch {b}: PEAGLE best / EAGLE3 best {f(g['peagle_vs_eagle3'])} (goal >= 1), "
                     f"PEAGLE best / target-only {f(g['peagle_vs_target'])} (goal >= 1.3)"
                     + (f", graphs / eager ({g['eager_config']}) {f(g['graphs_vs_eager'])}" if g.get("graphs_vs_eager")
                        else ""))
    return "\n".join(lines)


def phase_bench(out: Path, heads: dict[str, str], args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    state = Path(args.bench_state)
    runs: list[dict[str, Any]] = json.loads(state.read_text())["runs"] if state.is_file() else []
    P = tiny_prompts((128,) * 8, start=0)
    batches = (1, 8)
    while (nxt := bench_next(runs, args.rounds, args.bench_configs)) is not None:
        if time.monotonic() > deadline - args.child_s:
            log(f"bench: out of time before round {nxt[0]} {nxt[1]} (state kept in {state}: call again to go on)")
            break
        rnd, name = nxt
        cfg = bench_config(name, heads, overlap=args.overlap == "default", device=args.device)
        calls = [{"name": f"b{b}", "prompts": P[:b], "max_new_tokens": args.bench_tokens, "repeat": 1 + args.repeat}
                 for b in batches]
        timer = str(out / "logs" / f"bench_r{rnd}_{name}.timer.jsonl") if name.startswith("peagle") else None
        res = run_engine_child({"kwargs": cfg["kwargs"], "calls": calls, "timer": timer, "device": args.device},
                               out / "logs" / f"bench_r{rnd}_{name}.log", cfg["env"],
                               timeout=max(30.0, deadline - time.monotonic()))
        row = {"round": rnd, "config": name, "env": cfg["env"]}
        row.update(bench_row(res, batches) if "error" not in res else res)
        runs.append(row)
        state.write_text(json.dumps({"runs": runs}))
        log(f"bench r{rnd} {name}: " + (row.get("error") or ", ".join(
            f"b{b} {v:.0f} tok/s" for b, v in row["tokens_per_s"].items()) + f" (start {row['start_s']:.0f} s)"))
    summary = bench_summary(runs)
    return {"prompt_len": 128, "max_tokens": args.bench_tokens, "repeat": args.repeat, "overlap": args.overlap,
            "complete": bench_next(runs, args.rounds, args.bench_configs) is None, "runs": runs, **summary,
            "table": bench_table(summary)}


# ---------------------------------------------------------------------------------------------- prod
def phase_prod(out: Path, heads: dict[str, str], args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    K, ctx, batches = 7, args.prod_ctx, (1, 8)
    res: dict[str, Any] = {"family": PROD_FAMILY, "K": K, "ctx": ctx,
                           "target_config": json.loads((Path(heads["prod-target"]) / "config.json").read_text())}
    vocab = res["target_config"]["vocab_size"]
    P = random_prompts((ctx,) * max(batches), vocab, seed=11)
    kw = dict(model_path=heads["prod-target"], dtype="bfloat16", skip_tokenizer_init=True, load_format="dummy",
              random_seed=0, context_length=ctx + args.prod_tokens + 64, log_level="error",
              speculative_algorithm="PEAGLE", speculative_draft_model_path=heads["prod-peagle"],
              speculative_draft_load_format="auto",          # the head from its checkpoint (the target: dummy)
              speculative_num_draft_tokens=K + 1, page_size=1, **engine_defaults(args.device))
    calls = [{"name": f"b{b}", "prompts": P[:b], "max_new_tokens": args.prod_tokens, "repeat": 3} for b in batches]
    timer = str(out / "logs" / "prod.timer.jsonl")
    inside = run_engine_child({"kwargs": kw, "calls": calls, "timer": timer, "device": args.device},
                              out / "logs" / "prod.log", {},
                              timeout=max(30.0, deadline - time.monotonic() - 200))
    res["inside"] = inside
    log("prod inside SGLang: " + (inside.get("error") or f"start {inside['start_s']:.0f} s, "
                                  f"{len(inside.get('timer') or [])} timed draft steps"))
    standalone, rc, cmd = run_standalone(out, ctx, K, batches, dry=args.device != "cuda",
                                         timeout=max(30.0, deadline - time.monotonic()),
                                         logf=out / "logs" / "prod_standalone.log")
    res["standalone_command"] = " ".join(cmd)
    res["standalone_exit"] = rc
    res["compare"] = prod_compare(inside, standalone, K, ctx, batches)
    res["table"] = prod_table(res["compare"], K, ctx, "SGLang")
    return res


# ---------------------------------------------------------------------------------------------- dry run
def records_from_case(case: dict[str, Any], rids: Sequence[str]) -> list[dict[str, Any]]:
    """Draft records in the PEAGLE worker's format (`worker.record_fields`) from a conformance result (the
    reference engine's): one prefill record, then one decode record per verify step, for the dry run and tests."""
    B = len(rids)
    recs: list[dict[str, Any]] = [{"kind": "config", "K": case["K"]}]
    for s, drafts in enumerate(case["drafts"]):
        live = [b for b in range(B) if drafts[b] is not None and (s == 0 or case["accepted"][s - 1][b] is not None)]
        if not live:
            break
        rec: dict[str, Any] = {"kind": "prefill" if s == 0 else "decode", "K": case["K"],
                               "rids": [rids[b] for b in live], "drafts": [list(drafts[b]) for b in live]}
        if s > 0:
            rec["accept_lens"] = [int(case["accepted"][s - 1][b]) + 1 for b in live]
        recs.append(rec)
    return recs


def greedy_target(target: str, prompts: Sequence[Sequence[int]], n: int, device: str = "cpu") -> list[list[int]]:
    """Target-only greedy outputs (``n`` tokens, EOS ignored), float32, one full forward per token."""
    import torch

    from pedagle_core.engine.target import load_hf_target

    model = load_hf_target(target, dtype="float32", device=device)
    outs = []
    with torch.no_grad():
        for p in prompts:
            ids = list(map(int, p))
            for _ in range(n):
                x = torch.tensor([ids], device=device)
                ids.append(int(model(input_ids=x, use_cache=False).logits[0, -1].argmax()))
            outs.append(ids[len(p):])
    return outs


def dry_run(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Everything that needs no engine: heads (the production head at bench_drafter's dry size), every phase's
    plan, and the check analysis on an engine result synthesised from pedagle's reference engine (CPU, float32:
    it must pass) and on a corrupted copy (it must fail)."""
    heads = prepare_heads(out, dry=True, prod=True)
    cfgs = check_configs(heads, args.check_groups.split(","), args.dtypes, args.ks, args.steps, args.random_steps,
                         args.random_dtypes)
    res: dict[str, Any] = {"heads": heads, "check_jobs": [c.job(engine_defaults("cuda")) for c in cfgs]}
    runs: list[dict[str, Any]] = []
    plan = []
    while (nxt := bench_next(runs, args.rounds)) is not None:
        plan.append(list(nxt))
        fake = {"1": 100.0 + len(plan), "8": 400.0 + len(plan)}
        runs.append({"round": nxt[0], "config": nxt[1], "tokens_per_s": fake})
        bench_config(nxt[1], heads, overlap=True)
    res["bench_schedule"] = plan
    res["conformance_command"] = conformance_command(out, "reference,vllm,sglang",
                                                     {"vllm": "PY_VLLM", "sglang": "PY_SGLANG"})
    res["standalone_command"] = standalone_command(out, args.prod_ctx, 7, (1, 8), dry=True)
    # the check analysis on synthetic engine results: the reference engine's own run as "SGLang's"
    from pedagle_core.engine.backend import ReferenceBackend

    pick = [c for c in cfgs if c.name in ("peagle-k3-float32", "llama-target-float32", "qwen3-peagle-swa-k3-float32",
                                          "qwen3-target-float32")]
    refs = References("cpu")
    synth, bad = [], []
    for c in pick:
        if c.algorithm is None:
            outs = greedy_target(c.target, c.prompts, c.max_new)
            r = {"calls": {"batch": {"outputs": outs, "rids": [f"batch-0-{i}" for i in range(len(outs))],
                                     "meta": [{} for _ in outs]}}, "records": []}
            synth.append(r)
            bad.append(r)
            continue
        # one verify step more than compared: the accepted count of step s is in step s+1's record
        case = ReferenceBackend().run_case(c.target, c.ref_drafter, c.prompts, K=c.K, mode="parallel",
                                           steps=c.steps + 1, dtype="float32", device="cpu")
        rids = [f"batch-0-{i}" for i in range(len(c.prompts))]
        outs = [o[:c.max_new] for o in case["output_ids"]]
        meta = [{"spec_verify_ct": c.steps} for _ in outs]
        synth.append({"calls": {"batch": {"outputs": outs, "rids": rids, "meta": meta}},
                      "records": records_from_case(case, rids)})
        broken = json.loads(json.dumps(synth[-1]))
        for rec in broken["records"][2:]:           # a wrong draft in every decode step of request 0
            if rec.get("kind") == "decode" and rec["rids"] and rec["rids"][0] == rids[0]:
                rec["drafts"][0][0] = (rec["drafts"][0][0] + 1) % 128 or 2
        bad.append(broken)
    (out / "logs" / "check_results.json").write_text(json.dumps(synth))           # as phase_check leaves them
    (out / "logs" / "check_configs.json").write_text(json.dumps(
        {"root": str(SRC), "out": str(out), "configs": [asdict(c) for c in pick]}))
    res["check_synthetic"] = analyze_check(pick, synth, refs)
    res["check_corrupted"] = analyze_check(pick, bad, refs)
    res["check_table"] = check_table(res["check_synthetic"]) + "\n-- corrupted drafts:\n" + \
        check_table(res["check_corrupted"])
    return res


# ---------------------------------------------------------------------------------------------- main
def env_info() -> dict[str, Any]:
    from pedagle_core.provenance import run_environment

    return run_environment(("sglang", "sglang-kernel", "sgl-kernel", "triton", "transformers", "vllm"))


PHASES = ("check", "conformance", "bench", "prod")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--phases", default="check", help=f"comma list of {','.join(PHASES)}")
    ap.add_argument("--budget-s", type=float, default=540.0, help="the whole call: no phase or child starts past it")
    ap.add_argument("--phase-budget", action="append", default=[], metavar="PHASE=SECONDS",
                    help="a phase's own limit (default: what is left of --budget-s)")
    ap.add_argument("--dry-run", action="store_true", help="CPU: heads, plans, analysis on synthetic results")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: SGLang's CPU engine (its test environment), a smoke run of the plumbing")
    ap.add_argument("--check-groups", default="tiny,random", help="check: tiny,random")
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], help="check: tiny-code dtypes")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 3, 7], help="check: tiny-code PEAGLE K")
    ap.add_argument("--steps", type=int, default=10, help="check: verify steps compared per request (tiny-code)")
    ap.add_argument("--random-steps", type=int, default=6, help="check: verify steps compared (random heads)")
    ap.add_argument("--random-dtypes", nargs="+", default=["float32"], help="check: random heads' dtypes")
    ap.add_argument("--ref-device", default=None, help="check: where pedagle's reference runs (default cuda, dry: cpu)")
    ap.add_argument("--no-reference-engine", action="store_true", help="check: forced-reference trace only")
    ap.add_argument("--analysis-s", type=float, default=90.0, help="check: seconds kept for the analysis")
    ap.add_argument("--conf-backends", default="reference,vllm,sglang")
    ap.add_argument("--conf-cases", nargs="+", default=None)
    ap.add_argument("--vllm-runner", choices=["v1", "v2"], default="v1",
                    help="conformance: vLLM's model runner (v2: pedagle's V2 speculator, VLLM_USE_V2_MODEL_RUNNER=1)")
    ap.add_argument("--vllm-util", type=float, default=0.3, help="conformance: vLLM's gpu_memory_utilization")
    ap.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an sglang.Engine keyword for every CUDA engine (VALUE read as JSON, else a string), e.g. "
                    "cuda_graph_max_bs_decode=8 (capture only what the phases use) or max_total_tokens=32768 "
                    "(a small KV pool, to share the GPU with other runs)")
    ap.add_argument("--rounds", type=int, default=2, help="bench rounds")
    ap.add_argument("--repeat", type=int, default=3, help="bench: timed generate() calls per batch (after 1 warm-up)")
    ap.add_argument("--bench-tokens", type=int, default=128)
    ap.add_argument("--bench-state", default="/tmp/pedagle-sglang-bench-state.json",
                    help="bench: runs so far (the schedule continues from it; delete it to start over)")
    ap.add_argument("--overlap", choices=["default", "off"], default="default",
                    help="bench: every configuration (PEAGLE included) with SGLang's default overlap schedule, or off")
    ap.add_argument("--bench-configs", nargs="+", default=None, metavar="PATTERN",
                    help="bench: only these configurations (shell patterns, e.g. target-only 'peagle-k7*')")
    ap.add_argument("--child-s", type=float, default=60.0, help="bench: start no child with less time left")
    ap.add_argument("--prod-ctx", type=int, default=512)
    ap.add_argument("--prod-tokens", type=int, default=64)
    ap.add_argument("--json-name", default="sglang_gpu.json")
    ap.add_argument("--reanalyze", type=Path, metavar="RUN", help="check: the analysis again from RUN/logs (a device "
                    "call's unpacked OUT), reference on --ref-device; writes --out/--json-name")
    ap.add_argument("--engine-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    bad = [p for p in args.phases.split(",") if p not in PHASES]
    if bad:
        ap.error(f"--phases: unknown {bad}; expected some of {','.join(PHASES)}")
    bad = [g for g in args.check_groups.split(",") if g not in ("tiny", "random")]
    if bad:
        ap.error(f"--check-groups: unknown {bad}; expected some of tiny,random")
    budgets = {}
    for pb in args.phase_budget:
        name, _, sec = pb.partition("=")
        if name not in PHASES or not sec.replace(".", "", 1).isdigit():
            ap.error(f"--phase-budget {pb!r}: expected PHASE=SECONDS with PHASE one of {','.join(PHASES)}")
        budgets[name] = float(sec)
    args.phase_budgets = budgets
    for kv in args.engine_arg:
        key, eq, val = kv.partition("=")
        if not eq or not key.isidentifier():
            ap.error(f"--engine-arg {kv!r}: expected KEY=VALUE with KEY an sglang.Engine keyword")
        try:
            EXTRA_ENGINE[key] = json.loads(val)
        except json.JSONDecodeError:
            EXTRA_ENGINE[key] = val
    if not args.engine_child and args.out is None:
        ap.error("--out is required")
    if args.ref_device is None:
        args.ref_device = "cpu" if args.dry_run or args.reanalyze else args.device
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine_child:
        res = engine_child(json.loads(args.engine_child.read_text()))
        args.engine_child.with_name(args.engine_child.name.replace(".spec.json", ".res.json")).write_text(json.dumps(res))
        return 0
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"env": env_info(), "phases": args.phases.split(","), "args": {
        k: v for k, v in vars(args).items() if k not in ("out", "engine_child")}}
    save = lambda: (out / args.json_name).write_text(json.dumps(result, indent=1, default=str))  # noqa: E731
    save()
    log("env", json.dumps(result["env"]))
    if args.reanalyze:
        result["check"] = reanalyze(args.reanalyze, args)
        save()
        print(result["check"]["table"])
        return 0
    if args.dry_run:
        result["dry_run"] = dry_run(out, args)
        save()
        print(result["dry_run"]["check_table"])
        return 0
    end = T0 + args.budget_s
    phases = args.phases.split(",")
    heads = prepare_heads(out, dry=args.device != "cuda", prod="prod" in phases, device=args.device)
    result["heads"] = heads
    for ph in PHASES:
        if ph not in phases:
            continue
        if time.monotonic() > end - 30:
            result[ph] = {"error": "not run: out of the call's time budget"}
            continue
        deadline = min(end, time.monotonic() + args.phase_budgets.get(ph, 1e9))
        log(f"phase {ph} (until +{deadline - T0:.0f} s)")
        try:
            fn = {"check": phase_check, "conformance": lambda o, h, a, d: phase_conformance(o, a, d),
                  "bench": phase_bench, "prod": phase_prod}[ph]
            result[ph] = fn(out, heads, args, deadline)
        except Exception as e:  # noqa: BLE001 - keep the other phases' results
            import traceback

            result[ph] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            log(f"phase {ph} failed: {e}")
        save()
    result["wall_s"] = time.monotonic() - T0
    save()
    print("\n== summary", result["env"].get("device"), result["env"].get("sglang"), result["env"].get("commit"))
    for ph in phases:
        r = result.get(ph) or {}
        if "table" in r:
            print(f"-- {ph}\n{r['table']}")
        elif ph == "conformance" and "counts" in r:
            print(f"-- conformance (exit {r['exit']}): {r['counts']}")
        else:
            print(f"-- {ph}: {str(r.get('error', r))[:500]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
