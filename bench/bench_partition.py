#!/usr/bin/env python3
"""Benchmark P-EAGLE sequence partitioning: peak activation memory and step time, S=1 vs S=2,4,8.

One training step (forward + backward, no optimizer) of a GPT-OSS-20B-like drafter head on one packed
sequence of ``--seq-len`` drafter rows, COD-sampled over ``--depth`` depths (r=0.7, r_min=0.2), bf16
autocast, FlexAttention. For each S the same elements are run ``--iters`` times after ``--warmup``
warm-up steps (FlexAttention compiles on the first). Memory: ``torch.cuda.max_memory_allocated`` during
a step minus the memory allocated before it (parameters, gradients, inputs), i.e. the step's
activations and temporaries. The loss of every S is reported too (it must not change with S).

    python bench/bench_partition.py --out bench/results/partition_h100.json          # GPU, full size
    python bench/bench_partition.py --dry-run                                        # tiny, CPU, a few seconds

Goal (issue 4): at S=4, activation memory <= 1/3 of S=1 with <= 1.3x the time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pedagle_core import Drafter, DrafterConfig  # noqa: E402
from pedagle_core.train.cod import sample_cod  # noqa: E402
from pedagle_core.train.module import TrainableDrafter  # noqa: E402
from pedagle_core.train.partition import PackedRows, plan_segments, run_pack  # noqa: E402
from pedagle_core.provenance import code_commit  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=2880)
    p.add_argument("--target-hidden", type=int, default=2880)
    p.add_argument("--heads", type=int, default=64)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=7680)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=201088)
    p.add_argument("--draft-vocab", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--prompt-frac", type=float, default=0.1, help="unsupervised share of the rows (the prompt)")
    p.add_argument("--segments", default="1,2,4,8")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--attention", default="flex", choices=("flex", "sdpa"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON results file (printed either way)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script only)")
    a = p.parse_args(argv)
    if a.dry_run:
        a.hidden = a.target_hidden = 64
        a.heads, a.kv_heads, a.head_dim, a.intermediate = 4, 2, 16, 128
        a.layers, a.vocab, a.draft_vocab, a.seq_len, a.depth = 2, 512, 256, 256, 8
        a.iters, a.warmup, a.attention = 2, 1, "sdpa"
        dev = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: use --dry-run on the CPU", file=sys.stderr)
            return 2
        dev = torch.device("cuda")
    torch.manual_seed(a.seed)
    seg_list = [int(s) for s in a.segments.split(",")]
    cfg = DrafterConfig(hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                        num_key_value_heads=a.kv_heads, head_dim=a.head_dim, intermediate_size=a.intermediate,
                        vocab_size=a.vocab, draft_vocab_size=a.draft_vocab, target_hidden_size=a.target_hidden,
                        mask_token_id=a.vocab - 1, parallel_depth=a.depth,
                        rope_parameters={"rope_type": "default", "rope_theta": 150000.0})
    dr = Drafter(cfg).to(dev)
    with torch.no_grad():
        for n, prm in dr.named_parameters():
            if "norm" in n:
                prm.fill_(1.0)
            else:
                prm.normal_(0.0, 0.02)
        dr.mask_hidden.normal_(0.0, 1.0)
    model = TrainableDrafter(dr, parallel=True)
    model.drafter.embed_tokens.to(torch.bfloat16 if dev.type == "cuda" else torch.float32)   # frozen table
    m = a.seq_len
    fdt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(a.seed)
    valid = torch.ones(m, dtype=torch.bool)
    valid[: int(m * a.prompt_frac)] = False
    rows = PackedRows(torch.randint(0, a.vocab - 1, (m,), generator=g), torch.arange(m), torch.zeros(m, dtype=torch.long),
                      valid, torch.randn(m, 3 * a.target_hidden, generator=g).to(fdt),
                      torch.randn(m, a.target_hidden, generator=g).to(fdt)).to(dev)
    head = (torch.randn(a.draft_vocab, a.target_hidden, generator=g) * 0.02).to(dev)
    el = sample_cod(rows.valid.cpu(), rows.doc.cpu(), a.depth, 0.7, 0.2, torch.Generator().manual_seed(a.seed))
    n_sup = int(rows.valid.cpu()[el.target_row].sum())
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else None
    params = [q for q in model.parameters() if q.requires_grad]

    def step(S: int) -> float:
        st = run_pack(model, rows, el, num_depths=a.depth, mask_token_id=cfg.mask_token_id, head_weight=head,
                      num_segments=S, loss_scale=1.0 / n_sup, backend=a.attention,
                      autocast=autocast() if autocast else None)
        return float(st.loss_sum) / n_sup

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # allocate the gradients once so that the baseline holds them for every S
    step(1)
    results = []
    for S in seg_list:
        for _ in range(a.warmup):
            step(S)
        times, peaks, losses = [], [], []
        for _ in range(a.iters):
            for q in params:
                if q.grad is not None:
                    q.grad.zero_()
            sync()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            losses.append(step(S))
            sync()
            times.append(time.perf_counter() - t0)
            if dev.type == "cuda":
                peaks.append(torch.cuda.max_memory_allocated() - base)
        segs = plan_segments(el, rows.doc.cpu(), S)
        results.append({
            "segments": S, "segments_used": len(segs),
            "time_s_median": statistics.median(times), "time_s_all": times,
            "activation_peak_gib": (max(peaks) / 2**30) if peaks else None,
            "max_segment_elements": max(int(s.elem_idx.numel()) for s in segs),
            "max_segment_prefix_keys": max(s.lo - s.prefix_lo for s in segs),
            "loss": losses[-1],
        })
        print(json.dumps(results[-1]), flush=True)
    r1 = results[0]
    for r in results:
        r["time_vs_S1"] = r["time_s_median"] / r1["time_s_median"]
        r["memory_vs_S1"] = (r["activation_peak_gib"] / r1["activation_peak_gib"]) if r1["activation_peak_gib"] else None
        r["loss_abs_diff_vs_S1"] = abs(r["loss"] - r1["loss"])
    s4 = next((r for r in results if r["segments"] == 4), None)
    out = {
        "benchmark": "sequence partitioning (pedagle_core/train/partition.py)",
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": code_commit(), "torch": torch.__version__, "dry_run": a.dry_run,
        "config": {k: v for k, v in vars(a).items() if k not in ("out",)},
        "elements": len(el), "elements_per_depth": el.counts_per_depth(a.depth).tolist(), "supervised": n_sup,
        "trainable_params": sum(q.numel() for q in params),
        "results": results,
        "goal": "S=4: activation memory <= 1/3 of S=1, time <= 1.3x",
        "goal_met": (None if s4 is None or s4["memory_vs_S1"] is None
                     else bool(s4["memory_vs_S1"] <= 1 / 3 and s4["time_vs_S1"] <= 1.3)),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
