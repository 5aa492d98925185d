"""Self-check of PEAGLE's decode draft-step graphs (`cuda_graphs`) in SGLang's running engine.

    python -m pedagle_backends.sglang.graph_selfcheck --out DIR [--K 3,7] [--device cuda|cpu]
    python -m pedagle_backends.sglang.cuda_graphs --selfcheck --out DIR ...      (the same)

On CUDA (default; SGLang's Triton attention backend, CUDA graphs on, as a user runs it): for each K, three
``sglang.Engine`` runs of the bundled tiny-code family, float32, greedy, on the same prompt sets (1, 3 and 11
prompts of different lengths; requests finish at different times, so batches shrink and get padded to the next
captured size):

1. target only;
2. PEAGLE with the decode draft step captured (``PEDAGLE_SGLANG_DRAFT_GRAPHS=1``), every draft step recorded;
3. PEAGLE with the eager draft step (``PEDAGLE_SGLANG_DRAFT_GRAPHS=0``), recorded.

Checks: outputs of 2 and 3 == target-only (float32: exactly); the drafts and accepted counts of every request's
every step in 2 == those in 3 (replayed == eager); in 2 every decode draft step replayed a graph and some were
padded (batch size < graph size), in 3 none did; the start-up log says which sizes were captured. Timings: each
call's seconds and tokens/s, and the draft step's GPU time per decode step from `step_timer`
(``PEDAGLE_SGLANG_TIME_DRAFT``), graph vs eager. Writes ``DIR/graph_selfcheck.json`` (device, date, commit,
SGLang version, checks, timings) and the engine logs; exit 0 when every check passed, 1 otherwise.

NOT RUN on a GPU: SGLang 0.5.17's CUDA engine cannot serve a float32 target (``sgl_kernel.rmsnorm`` "failed to
dispatch data type Float" in SGLang's own prefill graph capture, seen on an H200 on 2026-12-07), so on SGLang's
CUDA kernels this float32 check fails at start-up. The draft-step graphs were checked on the GPU by
bench/sglang_gpu_e2e.py's check phase instead (bf16, every output difference classified as a near-tie of the
target, every decode draft step replayed from a graph; bench/README.md).

``--device cpu``: the same on SGLang's CPU engine (the SGLang test environment), with run 2 in mode 'eager'
(``PEDAGLE_SGLANG_DRAFT_GRAPHS=eager``: the captured step function over the static buffers, padding included,
without capture): it checks the static-buffer path inside the real scheduler, not CUDA graphs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from .cuda_graphs import GRAPHS_ENV, SIZES_ENV, env_sizes
from .step_timer import TIME_ENV

REPO = Path(__file__).resolve().parents[2]
CAPTURE_LINE = re.compile(r"PEAGLE decode draft step (captured in CUDA graphs for batch sizes \[[^\]]*\].*|"
                          r"on static buffers without capture.*|runs eagerly.*|NOT captured.*)")


def prompt_sets(vocab: int, max_new: int) -> list[dict[str, Any]]:
    """Three generate calls: 1, 3 and 11 prompts of different lengths (deterministic ids); in each multi-prompt
    call requests finish at different times. SGLang's decode graph sizes under speculation are 1..8, 10, 12, ...:
    11 and 9 requests run padded (to 12 and 10)."""
    import torch

    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    short = max(2, max_new // 3)
    return [{"name": "b1", "prompts": [ids(23)], "max_new_tokens": [max_new]},
            {"name": "b3", "prompts": [ids(n) for n in (7, 19, 42)], "max_new_tokens": [max_new, max_new, short]},
            {"name": "b11", "prompts": [ids(n) for n in (5, 64, 13, 30, 9, 50, 17, 3, 41, 26, 11)],
             "max_new_tokens": [max_new] * 8 + [short, max_new // 2, short]}]


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or os.environ.get("PEDAGLE_COMMIT", "unknown")
    except Exception:  # noqa: BLE001 - no git on the machine
        return os.environ.get("PEDAGLE_COMMIT", "unknown")


def run_child(jobs: list[dict[str, Any]], device: str, env: dict[str, str], log: Path) -> list[dict[str, Any]]:
    """`runner.run_jobs` in one child process with ``env`` added to this process's environment."""
    from .runner import run_jobs

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_jobs(jobs, device=device, timeout=1800, log=str(log))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def decode_records(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in res.get("records", []) if r.get("kind") == "decode"]


def draft_ms(path: Path, K: int) -> dict[str, Any]:
    """Mean / median GPU and host ms per decode draft step from a `step_timer` file (lines of this K)."""
    if not path.exists():
        return {}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("K") in (None, K)]
    out: dict[str, Any] = {"steps": len(rows)}
    for key in ("gpu_ms", "cpu_ms"):
        vals = sorted(float(r[key]) for r in rows if r.get(key) is not None)
        if vals:
            out[key] = {"mean": sum(vals) / len(vals), "median": vals[len(vals) // 2]}
    return out


def check_k(K: int, calls: list[dict[str, Any]], base: dict[str, Any], graph: dict[str, Any],
            eager: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """The checks of one K (see the module doc): a list of {"check", "ok", "detail"}."""
    from .runner import per_request_steps

    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: Any) -> None:
        checks.append({"check": f"K={K}: {name}", "ok": bool(ok), "detail": detail})

    for run, label in ((graph, mode), (eager, "eager")):
        if "error" in run:
            add(f"{label} engine ran", False, run["error"][-3000:])
    if "error" in base:
        add("target-only engine ran", False, base["error"][-3000:])
    if any("error" in r for r in (base, graph, eager)):
        return checks
    for c in calls:
        n = c["name"]
        t = base["calls"][n]["outputs"]
        for run, label in ((graph, mode), (eager, "eager")):
            got = run["calls"][n]["outputs"]
            bad = [i for i, (a, b) in enumerate(zip(got, t)) if a != b]
            add(f"{n}: PEAGLE ({label}) output == target-only", not bad and len(got) == len(t),
                {"requests": len(t), "tokens": [len(o) for o in got], "differing_requests": bad})
        sg = per_request_steps(graph["records"], graph["calls"][n]["rids"])
        se = per_request_steps(eager["records"], eager["calls"][n]["rids"])
        diffs = [(b, s) for b in range(len(sg)) for s in range(max(len(sg[b]), len(se[b])))
                 if s >= len(sg[b]) or s >= len(se[b]) or sg[b][s] != se[b][s]]
        add(f"{n}: drafts and accepted counts, {mode} == eager, every step", not diffs,
            {"request_steps": sum(len(x) for x in sg), "first_differences": diffs[:5]})
    dg, de = decode_records(graph), decode_records(eager)
    replayed = [r for r in dg if r.get("graph_bs") is not None]
    padded = [r for r in replayed if r["graph_bs"] > len(r["rids"])]
    add(f"every decode draft step of the {mode} run used the static-buffer step",
        len(dg) > 0 and len(replayed) == len(dg), {"decode_steps": len(dg), "replayed": len(replayed)})
    add("some decode steps were padded to a larger batch size", len(padded) > 0,
        sorted({(len(r["rids"]), r["graph_bs"]) for r in padded}))
    add("the eager run replayed nothing", all(r.get("graph_bs") is None for r in de), {"decode_steps": len(de)})
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selfcheck", action="store_true", help=argparse.SUPPRESS)   # `cuda_graphs --selfcheck`
    ap.add_argument("--out", default="graph_selfcheck_out", help="output directory (JSON, engine logs)")
    ap.add_argument("--family", default=str(REPO / "models" / "tiny-code"), help="directory with target/ and peagle/")
    ap.add_argument("--K", default="3", help="drafts per step, comma-separated (one pair of PEAGLE engines each)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--max-new", type=int, default=40, help="new tokens of the long requests")
    ap.add_argument("--sizes", default=None,
                    help="batch sizes to capture (PEDAGLE_SGLANG_DRAFT_GRAPH_BS); default: SGLang's on CUDA "
                         "(1..8, 10, 12, ...: 11 and 9 requests pad), 1,2,4,8,16 on the CPU engine (its list is dense)")
    ap.add_argument("--engine-args", default="{}",
                    help="JSON object of extra sglang.Engine keywords for every engine (they win)")
    args = ap.parse_args(argv)
    try:
        Ks = [int(k) for k in args.K.split(",") if k.strip()]
        extra = json.loads(args.engine_args)
        env_sizes(args.sizes)
    except ValueError as e:
        ap.error(f"--K / --sizes / --engine-args: {e} (expected e.g. --K 3,7 --sizes 1,2,4,8 and a JSON object)")
    if not Ks or min(Ks) < 1 or not isinstance(extra, dict):
        ap.error(f"--K {args.K!r} / --engine-args {args.engine_args!r}: expected K >= 1 and a JSON object")
    family = Path(args.family)
    target, drafter = family / "target", family / "peagle"
    for p in (target, drafter):
        if not (p / "config.json").exists():
            ap.error(f"--family {family}: {p}/config.json not found (expected target/ and peagle/ checkpoints)")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("graph_selfcheck: --device cuda but torch sees no CUDA device (use --device cpu for the CPU engine)")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "graph" if args.device == "cuda" else "static"          # run 2: CUDA graphs, or the static buffers
    vocab = int(json.loads((target / "config.json").read_text())["vocab_size"])
    calls = prompt_sets(vocab, args.max_new)
    engine: dict[str, Any] = {"log_level": "info"}                  # the worker's start-up line (capture sizes)
    if args.device == "cuda":
        engine = {"disable_cuda_graph": False, "attention_backend": "triton"}
    engine.update(extra)

    def job(K: int | None) -> dict[str, Any]:
        j = {"target": str(target), "drafter": None if K is None else str(drafter), "K": K or 1,
             "dtype": "float32", "engine": engine, "calls": calls}
        return j

    t_graph, t_eager = out / "draft_times_graph.jsonl", out / "draft_times_eager.jsonl"
    for p in (t_graph, t_eager):
        p.unlink(missing_ok=True)
    print(f"graph_selfcheck: {args.device}, K = {Ks}, engines: target-only + 2 per K ...", flush=True)
    env_a = {GRAPHS_ENV: "1" if mode == "graph" else "eager", TIME_ENV: str(t_graph)}
    sizes = args.sizes if args.sizes is not None else ("" if args.device == "cuda" else "1,2,4,8,16")
    if sizes:
        env_a[SIZES_ENV] = sizes
    res_a = run_child([job(None)] + [job(K) for K in Ks], args.device, env_a, out / "engine_graph.log")
    res_b = run_child([job(K) for K in Ks], args.device, {GRAPHS_ENV: "0", TIME_ENV: str(t_eager)},
                      out / "engine_eager.log")
    base = res_a[0]
    checks: list[dict[str, Any]] = []
    timings: dict[str, Any] = {}
    for i, K in enumerate(Ks):
        graph, eager = res_a[1 + i], res_b[i]
        checks += check_k(K, calls, base, graph, eager, mode)
        tk: dict[str, Any] = {}
        for label, run in (("target_only", base), (mode, graph), ("eager", eager)):
            if "error" in run:
                continue
            tk[label] = {c["name"]: {"seconds": run["calls"][c["name"]]["seconds"],
                                     "tokens_per_s": sum(len(o) for o in run["calls"][c["name"]]["outputs"])
                                     / max(run["calls"][c["name"]]["seconds"], 1e-9)} for c in calls}
            tk[label]["start_s"] = run.get("start_s")
        tk["draft_step_" + mode] = draft_ms(t_graph, K)
        tk["draft_step_eager"] = draft_ms(t_eager, K)
        timings[f"K={K}"] = tk
    log = (out / "engine_graph.log").read_text(errors="replace") if (out / "engine_graph.log").exists() else ""
    captured = sorted({m.group(0) for m in CAPTURE_LINE.finditer(log)})
    checks.append({"check": f"start-up log line of the {mode} run", "ok": bool(captured) and all(
        ("captured in CUDA graphs" in c) if mode == "graph" else ("static buffers" in c) for c in captured),
        "detail": captured})
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    try:
        from importlib import metadata

        sglang_version = metadata.version("sglang")
    except Exception:  # noqa: BLE001
        sglang_version = None
    result = {"device": device, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit(), "sglang": sglang_version, "torch": torch.__version__, "mode": mode, "K": Ks,
              "engine": engine, "checks": checks, "timings": timings,
              "passed": all(c["ok"] for c in checks)}
    (out / "graph_selfcheck.json").write_text(json.dumps(result, indent=1))
    for c in checks:
        print(f"[{'ok' if c['ok'] else 'FAIL'}] {c['check']}" + ("" if c["ok"] else f": {c['detail']}"))
    for k, tk in timings.items():
        print(k, json.dumps({lab: tk.get(lab) for lab in tk if lab.startswith("draft_step")}))
    print(("PASS" if result["passed"] else "FAIL") + f" ({out / 'graph_selfcheck.json'})")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
