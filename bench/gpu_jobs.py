#!/usr/bin/env python3
"""Several GPU end-to-end runs in one device call (the device side of bench/gpu_run.sh, which sets up the carried
vLLM 0.26 / SGLang 0.5.17 trees and exports VLLM_PYTHONPATH / SGLANG_PYTHONPATH first).

    python3 bench/gpu_jobs.py SECONDS JOB [JOB ...] [then JOB ...]

A JOB is ``ENGINE:ARGS``: ENGINE ``vllm`` runs ``bench/vllm_gpu_e2e.py ARGS``, ``sglang`` runs
``bench/sglang_gpu_e2e.py ARGS``, each with its engine's PYTHONPATH and an ``--out`` of its own
(/tmp/gpujobs/jN-ENGINE) and ``--budget-s`` (what is left of SECONDS, less the packing time; an ARGS
``--budget-s`` wins); ``selfcheck`` runs PEAGLE's draft-step CUDA-graph self-check
(``python -m pedagle_backends.sglang.graph_selfcheck --out DIR ARGS``: target-only vs PEAGLE graphs vs eager,
result graph_selfcheck.json) with SGLang's PYTHONPATH and no budget argument (bound it with ``--K`` /
``--max-new``; the deadline still applies). Jobs between two ``then`` run at the same time (correctness runs
that can share the GPU: give each engine a small memory share); the groups run one after another (timings: one
job per group).
Every job's process group is killed SECONDS - 20 after the start, so that the results are always packed:
$OUT/run.tgz (every job's directory with its output run.log, without the production-shaped models) and, for the
first seven jobs, $OUT/jN-ENGINE.json (the e2e result). The last lines of each job's output are printed at the
end (the device tool returns only the last 12,000 characters).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/gpujobs")
# ENGINE: (what follows the interpreter, the PYTHONPATH variable, the result JSON, whether it takes --budget-s)
SCRIPTS = {"vllm": ([str(ROOT / "bench" / "vllm_gpu_e2e.py")], "VLLM_PYTHONPATH", "vllm_gpu_h200.json", True),
           "sglang": ([str(ROOT / "bench" / "sglang_gpu_e2e.py")], "SGLANG_PYTHONPATH", "sglang_gpu.json", True),
           "selfcheck": (["-m", "pedagle_backends.sglang.graph_selfcheck"], "SGLANG_PYTHONPATH",
                         "graph_selfcheck.json", False)}
PACK_S = 20.0          # seconds kept at the end for packing
MIN_START_S = 60.0     # no group starts with less time left
T0 = time.monotonic()


def log(*a: object) -> None:
    print(f"[jobs {time.monotonic() - T0:6.1f}s]", *a, flush=True)


def parse(argv: list[str]) -> tuple[float, list[list[tuple[str, str, list[str]]]]]:
    """SECONDS and the groups of (name, engine, args)."""
    if len(argv) < 2 or not argv[0].replace(".", "", 1).isdigit():
        raise SystemExit("usage: gpu_jobs.py SECONDS ENGINE:ARGS [ENGINE:ARGS ...] [then ENGINE:ARGS ...]")
    groups: list[list[tuple[str, str, list[str]]]] = [[]]
    n = 0
    for a in argv[1:]:
        if a == "then":
            groups.append([])
            continue
        engine, colon, rest = a.partition(":")
        if not colon or engine not in SCRIPTS:
            raise SystemExit(f"job {a!r}: expected ENGINE:ARGS with ENGINE one of {sorted(SCRIPTS)}")
        n += 1
        groups[-1].append((f"j{n}-{engine}", engine, shlex.split(rest)))
    return float(argv[0]), [g for g in groups if g]


def start(name: str, engine: str, args: list[str], left: float) -> subprocess.Popen:
    prefix, pyvar, _, budget = SCRIPTS[engine]
    out = WORK / name
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if os.environ.get(pyvar):
        env["PYTHONPATH"] = os.environ[pyvar]
    cmd = [sys.executable, *prefix, "--out", str(out)]
    if budget:                                   # before ARGS, so that an ARGS --budget-s wins
        cmd += ["--budget-s", f"{max(left, MIN_START_S / 2):.0f}"]
    cmd += args
    log(f"{name}: {shlex.join(cmd[1:])}")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(out / "run.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def main(argv: list[str]) -> int:
    total, groups = parse(argv)
    deadline = T0 + total - PACK_S
    if WORK.exists():
        subprocess.run(["rm", "-rf", str(WORK)], check=False)
    WORK.mkdir(parents=True)
    names: list[tuple[str, str]] = []
    for group in groups:
        left = deadline - time.monotonic() - 15
        if left < MIN_START_S:
            log("out of time: not started", [g[0] for g in group])
            break
        procs = {name: start(name, engine, args, left) for name, engine, args in group}
        names += [(name, engine) for name, engine, _ in group]
        while procs and time.monotonic() < deadline:
            for name, p in list(procs.items()):
                if p.poll() is not None:
                    log(f"{name} exited {p.returncode}")
                    del procs[name]
            time.sleep(1.0)
        for name, p in procs.items():            # past the deadline: the whole process group
            log(f"{name}: killed at the deadline")
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    out = Path(os.environ.get("OUT", "/tmp/gpujobs-out"))
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "run.tgz", "w:gz") as tar:
        tar.add(WORK, arcname="gpujobs", filter=lambda ti: None if "/heads/prod-" in ti.name else ti)
    for name, engine in names[:7]:
        res = WORK / name / SCRIPTS[engine][2]
        if res.is_file():
            (out / f"{name}.json").write_bytes(res.read_bytes())
    per_job = max(8, 60 // max(len(names), 1))
    for name, _ in names:
        lines = [x[:220] for x in (WORK / name / "run.log").read_text(errors="replace").splitlines()
                 if "it/s]" not in x and x.strip()]
        print(f"\n===== {name} (last lines)\n" + "\n".join(lines[-per_job:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
