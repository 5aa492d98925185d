#!/usr/bin/env python3
"""The drafter's GEMM shapes as a step meets them: cuBLAS vs the skinny-GEMM kernel variants, each timed as
a CUDA graph of back-to-back products over rotating weight copies (together > L2, so every product streams
its weight from HBM, as in a step; `skinny_gemm.time_in_graphs`, the dispatch's own timing), against the
byte floor (weights + rows in + rows out, once, at the copy bandwidth measured here). Every variant is
checked against the float64 product.

Usage (GPU): python3 bench/bench_skinny_gemm.py --out bench/results/skinny_gemm_h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pedagle_core.kernels import skinny_gemm as SG  # noqa: E402

# (family, name, N, K) of the 4-layer heads in bench_drafter.py
SHAPES = [("gpt-oss-20b", "qkv", 5120, 2880), ("gpt-oss-20b", "o", 2880, 4096),
          ("gpt-oss-20b", "gate_up", 23040, 2880), ("gpt-oss-20b", "down", 2880, 11520),
          ("gpt-oss-20b", "fc", 2880, 8640), ("gpt-oss-20b", "lm_head", 201088, 2880),
          ("qwen3-coder", "qkv", 5120, 2048), ("qwen3-coder", "o", 2048, 4096),
          ("qwen3-coder", "gate_up", 16384, 2048), ("qwen3-coder", "down", 2048, 8192)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--rows", default="7,14,56,112")
    args = ap.parse_args()
    dev = torch.device("cuda")
    x = torch.randn(1 << 28, device=dev)
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(5):
        y.copy_(x)
    b.record()
    torch.cuda.synchronize()
    bw = 2 * 4 * x.numel() * 5 / a.elapsed_time(b)                  # bytes per ms, read + write
    del x, y
    l2 = torch.cuda.get_device_properties(dev).L2_cache_size
    out = {"device": torch.cuda.get_device_name(), "copy_GBps": bw / 1e6, "rows": [], "meta": {"l2": l2}}
    print(f"[skinny] {out['device']} copy {bw / 1e6:.0f} GB/s; L2 {l2 >> 20} MB")
    print(f"{'shape':22s} {'M':>4s} | {'floor':>7s} | {'cuBLAS':>13s} | best kernel variant")
    for fam, name, N, K in SHAPES:
        wbytes = N * K * 2
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
        for M in (int(m) for m in args.rows.split(",")):
            xs = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            ref = xs.double() @ w.double().T
            floor = (wbytes + 2 * M * K + 2 * M * N) / bw
            cands = SG.candidates(M, N, K, dev)
            ts = SG.time_in_graphs(xs, w, None, [None] + cands, reps=15)      # the dispatch's own timing
            rec = dict(family=fam, name=name, M=M, N=N, K=K, floor_ms=floor, cublas_ms=ts[0], variants={})
            for ov, t in zip(cands, ts[1:]):
                key = ",".join(f"{k}={v}" for k, v in ov.items())
                try:
                    got = SG.skinny_linear(xs, w, **ov)
                    rec["variants"][key] = dict(ms=t, rel_err=float((got.double() - ref).norm() / ref.norm()))
                except Exception as e:                                   # noqa: BLE001
                    rec["variants"][key] = dict(error=repr(e)[:200])
            ok = {k: v for k, v in rec["variants"].items() if "ms" in v and v["ms"] != float("inf")}
            best = min(ok, key=lambda k: ok[k]["ms"]) if ok else None
            out["rows"].append(rec)
            bt = ok[best]["ms"] if best else float("nan")
            print(f"{fam[:11]:11s} {name:10s} {M:4d} | {floor:7.4f} | {rec['cublas_ms']:7.4f} x{rec['cublas_ms'] / floor:4.2f} | "
                  + (f"{bt:7.4f} x{bt / floor:4.2f} {best} err {ok[best]['rel_err']:.0e}" if best else "-"))
        del w
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
