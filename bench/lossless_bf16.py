"""How often does greedy speculative output differ from target-only output, and why? (bf16 vs float32)

    python bench/lossless_bf16.py --num-prompts 32 --max-new-tokens 48 -k 1,3,5,7 \\
        --dtypes bfloat16,float32 --batch-invariant both --out bench/results/lossless_bf16_cpu.json

For every dtype (and batch-invariant setting) the reference engine generates greedily for the prompts
in mode 'none' and in every (mode, K); every output that differs from mode 'none' is classified by the
target's float32 margin at the first differing position (`pedagle_core.engine.lossless`): a near-tie
(gap below the conformance suite's tie margin for that dtype) or a failure. Also measured: whether mode
'none' itself changes with the batch size, and the generate wall time of every configuration (the cost
of ``batch_invariant``). Prompts: ``lambda x: `` then the held-out prompts of the tiny-code target, each
cut to its last ``--prompt-tokens`` tokens.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models", "tiny-code")


def load_prompts(target: str, n: int, prompt_tokens: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(target)
    texts = ["lambda x: "]
    with open(os.path.join(target, "heldout_prompts.jsonl"), encoding="utf-8") as fh:
        texts += [json.loads(line)["prompt"] for line in fh if line.strip()]
    return [tok(t)["input_ids"][-prompt_tokens:] for t in texts[:n]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=os.path.join(MODELS, "target"))
    ap.add_argument("--peagle", default=os.path.join(MODELS, "peagle"), help="drafter for mode parallel")
    ap.add_argument("--eagle3", default=os.path.join(MODELS, "eagle3"), help="drafter for mode autoregressive")
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="keep each prompt's last N tokens [128]")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("-k", default="1,3,5,7", help="K values [1,3,5,7]")
    ap.add_argument("--modes", default="parallel,autoregressive")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--none-batch-sizes", default="1", help="extra batch sizes for the mode-none self-check [1]")
    ap.add_argument("--batch-invariant", choices=("off", "on", "both"), default="both",
                    help="run with the batch-invariant target too (bfloat16 only) [both]")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sys.path.insert(0, ROOT)
    from pedagle_core.engine.lossless import run_grid
    from pedagle_core.engine.target import load_hf_target

    prompts = load_prompts(args.target, args.num_prompts, args.prompt_tokens)
    ks = [int(k) for k in args.k.split(",")]
    configs = [(m, k) for m in args.modes.split(",") for k in ks]
    drafters = {"parallel": args.peagle, "autoregressive": args.eagle3}
    f32 = load_hf_target(args.target, dtype="float32")
    runs = []
    for dtype in args.dtypes.split(","):
        settings = [False] if dtype != "bfloat16" else \
            {"off": [False], "on": [True], "both": [False, True]}[args.batch_invariant]
        for inv in settings:
            t0 = time.perf_counter()
            res = run_grid(args.target, drafters, prompts, configs, dtype=dtype, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size, batch_invariant=inv, model_f32=f32)
            s = res.summary()
            s["divergences"] = [d.to_dict() for d in res.divergences]
            # does mode 'none' itself depend on the batch size?
            s["none_vs_batch_size"] = {}
            for bs in [int(b) for b in args.none_batch_sizes.split(",") if b]:
                other = run_grid(args.target, drafters, prompts, [], dtype=dtype, max_new_tokens=args.max_new_tokens,
                                 batch_size=bs, batch_invariant=inv, model_f32=f32)
                s["none_vs_batch_size"][str(bs)] = _none_diff(res, other, f32, prompts)
            s["wall_s"] = round(time.perf_counter() - t0, 1)
            runs.append(s)
            print(f"{dtype} batch_invariant={inv}: {s['diverged']}/{s['outputs_compared']} outputs differ from "
                  f"mode none ({s['near_ties']} near-ties, {s['failures']} failures, max gap {s['max_gap']}); "
                  f"mode none at other batch sizes: {s['none_vs_batch_size']}", flush=True)
            for d in res.divergences:
                print("   ", d.describe(), flush=True)
            _write(args, prompts, ks, runs)          # after every run: partial results survive an interruption
    print(f"wrote {args.out}")
    return 0


def _write(args, prompts, ks, runs) -> None:
    import transformers

    from pedagle_core.provenance import code_commit

    out = {"bench": "lossless_bf16", "device": f"cpu: {platform.processor() or platform.machine()}",
           "cpu_model": _cpu_model(), "threads": torch.get_num_threads(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": code_commit(), "torch": torch.__version__, "transformers": transformers.__version__,
           "models": "models/tiny-code (target bf16; P-EAGLE for parallel, EAGLE-3 for autoregressive)",
           "num_prompts": len(prompts), "prompt_tokens": args.prompt_tokens, "max_new_tokens": args.max_new_tokens,
           "K": ks, "modes": args.modes.split(","), "batch_size": args.batch_size, "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


def _none_diff(a, b, f32, prompts) -> dict:
    """Mode-'none' outputs of two grid runs (different batch sizes): how many differ, classified."""
    from pedagle_core.engine.lossless import classify

    ra, rb = a.reference_outputs, b.reference_outputs
    ds = [d for i, (p, x, y) in enumerate(zip(prompts, ra, rb))
          if (d := classify(f32, p, x, y, a.tie, i, "none", 0, dtype=a.dtype)) is not None]
    return {"batch_size": b.batch_size, "outputs": len(prompts), "diverged": len(ds),
            "failures": sum(not d.near_tie for d in ds), "max_gap": max((d.gap for d in ds), default=None)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
