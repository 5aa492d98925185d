"""Turn a `pedagle bench` results JSON into the acceptance-length table `bench/speedup_model.py --al-json`
reads: {"name", "source", "benchmarks": {BENCH: {"p-eagle": {K: AL}, "eagle3": {K: AL}}}}.

    python bench/al_from_bench.py BENCH.json OUT.json [--name tiny-code] [--benchmark heldout-stdlib]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODE_TO_METHOD = {"parallel": "p-eagle", "autoregressive": "eagle3"}


def convert(bench: dict, name: str, benchmark: str, source: str) -> dict:
    table: dict[str, dict[str, float]] = {m: {} for m in MODE_TO_METHOD.values()}
    for run in bench["runs"]:
        method = MODE_TO_METHOD.get(run["mode"])
        if method is not None:
            table[method][str(run["K"])] = run["mean_acceptance_length"]
    return {"name": name, "source": source, "benchmarks": {benchmark: table}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_json")
    ap.add_argument("out")
    ap.add_argument("--name", default="tiny-code")
    ap.add_argument("--benchmark", default="heldout-stdlib")
    args = ap.parse_args()
    bench = json.loads(Path(args.bench_json).read_text())
    Path(args.out).write_text(json.dumps(convert(bench, args.name, args.benchmark, args.bench_json), indent=1))


if __name__ == "__main__":
    main()
