"""Benchmark of the input expansion of one P-EAGLE step: fused Triton kernels vs the PyTorch reference.

Decode steps (query length K+1, random rejected counts), K=7, H=2880, bf16, B in {1, 8, 64, 256}:
  (a) meta_triton    the fused metadata kernel (meta_triton_nohint: without the max_query_len grid hint)
  (b) expand_triton  metadata + hidden placement (MASK rows included), the whole expansion
      place_triton   the hidden placement alone
  (c) meta_ref / place_ref / expand_ref   the unfused PyTorch reference of the same
  (d) empty_kernel   an empty Triton launch, the floor of any launch
  (e) floor          bytes(read T rows of H bf16 once + write T' rows once) / measured D2D copy bandwidth

Method (/work/.library/device/METHOD.md): correctness first on fresh random inputs with poisoned outputs;
then CUDA-graph timings, two ways per case:
  * unrolled: one graph holding N back-to-back calls that rotate over enough input/output sets to
    exceed 3x L2; per-call time = replay time / N (events), median of R replays. The headline number.
  * single:   triton.testing.do_bench (L2 flushed, median) of the replay of a one-call graph; this
    includes the graph launch overhead.
The two numbers before measuring (H100 ~3 TB/s copy): B=256 moves 2048*5760 + 3584*5760 B = 32.4 MB,
floor ~11 us; B=64 ~2.7 us; B <= 8 is launch-bound (a few us per launch). Metadata moves < 0.3 MB at
B=256: launch-bound at every B.

Usage:
  python bench/bench_expand.py [--out PATH] [--commit SHA]             # on a CUDA machine
  python bench/bench_expand.py --test-log PATH [--skip-bench]         # first runs pytest tests/test_expand.py
  python bench/bench_expand.py --dry-run --out /tmp/expand_dry.json   # CPU, tiny sizes, TRITON_INTERPRET=1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/expand_<device>.json)")
    p.add_argument("--commit", default=None,
                   help="git commit of the code (default: git rev-parse HEAD, else 'unknown')")
    p.add_argument("--batch-sizes", default=None, help="comma-separated B values (default 1,8,64,256; dry run 1,3)")
    p.add_argument("--K", type=int, default=None, help="drafts per request (default 7; dry run 3)")
    p.add_argument("--hidden", type=int, default=None, help="hidden size H (default 2880; dry run 64)")
    p.add_argument("--unroll", type=int, default=50, help="calls per unrolled graph")
    p.add_argument("--replays", type=int, default=50, help="replays of each unrolled graph")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter: checks the script")
    p.add_argument("--test-log", default=None, help="run pytest tests/test_expand.py first, log to this path")
    p.add_argument("--skip-bench", action="store_true", help="with --test-log: only run the tests")
    return p.parse_args()


def run_tests(log_path: str, dry_run: bool) -> dict:
    """pytest tests/test_expand.py in a subprocess: compiled kernels on CUDA (TRITON_INTERPRET removed),
    the interpreter on CPU (tests/conftest.py sets it)."""
    env = dict(os.environ)
    if not dry_run:
        env.pop("TRITON_INTERPRET", None)
    t0 = time.time()
    cmd = [sys.executable, "-m", "pytest", "tests/test_expand.py", "-q", "-rs", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "w") as f:
        f.write(log)
    summary = [ln for ln in log.strip().splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    return {"returncode": proc.returncode, "seconds": round(time.time() - t0, 1), "log": log_path,
            "summary": summary[-1] if summary else log.strip().splitlines()[-1:]}


def git_commit(explicit: str | None) -> str:
    """The code's commit (see `pedagle_core.provenance.code_commit`)."""
    from pedagle_core.provenance import code_commit

    return code_commit(explicit) or "unknown"


def main() -> int:
    args = parse_args()
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")        # before triton is imported
    elif "TRITON_INTERPRET" in os.environ:
        os.environ.pop("TRITON_INTERPRET")
    sys.path.insert(0, REPO)

    tests = run_tests(args.test_log, args.dry_run) if args.test_log else None
    if tests is not None:
        print(f"tests: rc={tests['returncode']} {tests['summary']} ({tests['seconds']} s), log {tests['log']}")
        if args.skip_bench:
            return tests["returncode"]

    import torch
    import triton

    from pedagle_core.expand import ExpandedBatch, expand_metadata_reference, place_hidden_reference
    from pedagle_core.kernels import expand_triton as KT

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: use --dry-run on CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    Bs = [int(b) for b in (args.batch_sizes or ("1,3" if args.dry_run else "1,8,64,256")).split(",")]
    K = args.K or (3 if args.dry_run else 7)
    H = args.hidden or (64 if args.dry_run else 2880)
    dtype = torch.bfloat16
    block_size, max_model_len = 16, 8192
    unroll, replays = (2, 3) if args.dry_run else (args.unroll, args.replays)

    # ---------------------------------------------------------------------------------------------- inputs

    def make_step(B: int, seed: int) -> dict:
        """A decode step as vLLM hands it over: int32 ids / qsl / block table, int64 positions."""
        g = torch.Generator().manual_seed(seed)
        q = K + 1
        T = B * q
        starts = torch.randint(0, max_model_len - 4 * q, (B,), generator=g)
        positions = (starts[:, None] + torch.arange(q)).reshape(-1)
        step = dict(
            token_ids=torch.randint(0, 150_000, (T,), generator=g, dtype=torch.int32),
            positions=positions.long(),
            query_start_loc=(torch.arange(B + 1) * q).int(),
            num_rejected=torch.randint(0, K + 1, (B,), generator=g, dtype=torch.int32),
            next_token_ids=torch.randint(0, 150_000, (B,), generator=g, dtype=torch.int32),
            K=K, mask_token_id=151_000,
            block_table=torch.randint(0, 100_000, (B, max_model_len // block_size), generator=g, dtype=torch.int32),
            block_size=block_size, max_model_len=max_model_len,
        )
        step = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in step.items()}
        fc_out = torch.randn(T, H, generator=g).to(device=device, dtype=dtype)
        mask_vec = torch.randn(H, generator=g).to(device=device, dtype=dtype)
        return dict(step=step, fc_out=fc_out, mask_vec=mask_vec, T=T, B=B)

    def poisoned(T: int, B: int) -> ExpandedBatch:
        n = T + B * (K - 1)
        f = lambda size: torch.full((size,), -777, dtype=torch.int64, device=device)  # noqa: E731
        return ExpandedBatch(input_ids=f(n), positions=f(n), is_rejected=torch.ones(n, dtype=torch.bool, device=device),
                             is_masked=torch.ones(n, dtype=torch.bool, device=device), sample_rows=f(B * K),
                             hidden_src=f(n), hidden_dst=f(T), query_start_loc=f(B + 1), slot_mapping=f(n),
                             request_index=f(n))

    def same_batch(a: ExpandedBatch, b: ExpandedBatch) -> list[str]:
        return [n for n in ExpandedBatch.__dataclass_fields__ if not torch.equal(getattr(a, n), getattr(b, n))]

    def check(B: int, seed: int) -> dict:
        """Kernel == reference on fresh random inputs, outputs poisoned first (every element written)."""
        s = make_step(B, seed)
        ref = expand_metadata_reference(**s["step"])
        tri = KT.expand_metadata_triton(**s["step"], out=poisoned(s["T"], B))
        bad = same_batch(ref, tri)
        hinted = KT.expand_metadata_triton(**s["step"], out=poisoned(s["T"], B), max_query_len=K + 1)
        bad += [f"{n}(hinted)" for n in same_batch(ref, hinted)]
        h_ref = place_hidden_reference(s["fc_out"], ref, s["mask_vec"])
        h_out = torch.full_like(h_ref, float("nan"))
        h_tri = KT.place_hidden_triton(s["fc_out"], tri, s["mask_vec"], out=h_out)
        if cuda:
            torch.cuda.synchronize()
        if not torch.equal(h_ref, h_tri):
            bad.append("hidden")
        return {"seed": seed, "mismatched": bad, "nan_left": bool(torch.isnan(h_tri.float()).any())}

    # ---------------------------------------------------------------------------------------------- timing

    def capture(fns: list) -> "torch.cuda.CUDAGraph":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):                       # warm-up: compilation, allocator, handles
            for fn in fns:
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for fn in fns:
                fn()
        torch.cuda.synchronize()
        return g

    def time_case(fn_per_set: list) -> dict:
        """fn_per_set[i]() runs the case on input/output set i."""
        if not cuda:                                        # dry run: host clock, no graphs
            times = []
            for _ in range(replays):
                t0 = time.perf_counter()
                for i in range(unroll):
                    fn_per_set[i % len(fn_per_set)]()
                times.append((time.perf_counter() - t0) / unroll * 1e6)
            return {"unrolled_us_median": statistics.median(times), "unrolled_us_all": times}
        calls = [fn_per_set[i % len(fn_per_set)] for i in range(unroll)]
        g = capture(calls)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(3):
            g.replay()
        times = []
        for _ in range(replays):
            start.record()
            g.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / unroll)
        g1 = capture([fn_per_set[0]])
        single = triton.testing.do_bench(g1.replay, warmup=25, rep=100, return_mode="all")
        torch.cuda.synchronize()
        single_us = [t * 1e3 for t in single]
        return {"unrolled_us_median": statistics.median(times), "unrolled_us_all": times, "unroll": unroll,
                "single_graph_us_median": statistics.median(single_us), "single_graph_us_all": single_us}

    def copy_bandwidth() -> dict:
        """Device-to-device copy bandwidth, bytes read + written per second, on a 1 GiB buffer."""
        n = (1 << 30) // 2 if cuda else 1 << 20
        src = torch.randn(n, device=device).to(dtype)
        dst = torch.empty_like(src)
        if cuda:
            t_ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=500, return_mode="median")
        else:
            t0 = time.perf_counter()
            for _ in range(5):
                dst.copy_(src)
            t_ms = (time.perf_counter() - t0) / 5 * 1e3
        return {"bytes_each_way": src.numel() * src.element_size(), "ms_median": t_ms,
                "GBps": 2 * src.numel() * src.element_size() / (t_ms * 1e-3) / 1e9}

    # ---------------------------------------------------------------------------------------------- run

    device_name = torch.cuda.get_device_name() if cuda else f"cpu-dryrun-{platform.machine()}"
    result = {
        "device": device_name, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(args.commit), "torch": torch.__version__, "triton": triton.__version__,
        "python": platform.python_version(), "dry_run": args.dry_run, "K": K, "H": H, "dtype": str(dtype),
        "block_size": block_size, "max_model_len": max_model_len, "tests": tests, "cases": {},
    }
    if cuda:
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 50 << 20)
        result.update(capability=list(torch.cuda.get_device_capability()), sm_count=props.multi_processor_count,
                      l2_bytes=l2)
        try:                                                 # the compiler's resource report
            cc = torch.cuda.get_device_capability()
            report = {}
            for name, k in KT.compile_for_target(arch=cc[0] * 10 + cc[1]).items():
                k._init_handles()
                report[name] = {"n_regs": k.n_regs, "n_spills": k.n_spills, "shared": k.metadata.shared}
            result["kernel_resources"] = report
        except Exception as e:  # noqa: BLE001 - internal Triton API, report and go on
            result["kernel_resources"] = f"unavailable: {type(e).__name__}: {e}"
    else:
        l2 = 1 << 20

    bw = copy_bandwidth()
    result["copy_bandwidth"] = bw

    # (d) empty launch
    dummy = torch.empty(1, device=device)
    result["empty_kernel"] = time_case([lambda: KT.empty_kernel[(1,)](dummy)])

    for B in Bs:
        case: dict = {"B": B}
        chk = check(B, seed=10_000 + B + args.seed)
        case["check"] = chk
        if chk["mismatched"] or chk["nan_left"]:
            print(f"B={B}: kernel != reference: {chk}", file=sys.stderr)
            result["cases"][str(B)] = case
            continue
        T, n_out = B * (K + 1), B * (K + 1) + B * (K - 1)
        row_bytes = H * torch.finfo(dtype).bits // 8
        hidden_bytes = (T + n_out) * row_bytes
        case.update(T=T, T_out=n_out, hidden_bytes=hidden_bytes,
                    floor_us=hidden_bytes / (bw["GBps"] * 1e9) * 1e6)

        # Input/output sets to rotate over: > 3x L2 in total, 2..32 sets.
        n_sets = max(2, min(32, math.ceil(3 * l2 / hidden_bytes)))
        sets = []
        for i in range(n_sets):
            s = make_step(B, seed=args.seed * 1000 + B * 7 + i)
            s["meta_out"] = poisoned(T, B)
            s["hidden_out"] = torch.empty(n_out, H, dtype=dtype, device=device)
            sets.append(s)
        case["n_sets"] = n_sets

        def meta_tri(s):      # with the host-side max_query_len hint, as the vLLM proposer passes it
            return lambda: KT.expand_metadata_triton(**s["step"], out=s["meta_out"], max_query_len=K + 1)

        def meta_tri_nohint(s):
            return lambda: KT.expand_metadata_triton(**s["step"], out=s["meta_out"])

        def place_tri(s):
            return lambda: KT.place_hidden_triton(s["fc_out"], s["ref_batch"], s["mask_vec"], out=s["hidden_out"])

        def expand_tri(s):
            def fn():
                b = KT.expand_metadata_triton(**s["step"], out=s["meta_out"], max_query_len=K + 1)
                KT.place_hidden_triton(s["fc_out"], b, s["mask_vec"], out=s["hidden_out"])
            return fn

        def meta_ref(s):
            return lambda: expand_metadata_reference(**s["step"])

        def place_ref(s):
            return lambda: place_hidden_reference(s["fc_out"], s["ref_batch"], s["mask_vec"])

        def expand_ref(s):
            return lambda: place_hidden_reference(s["fc_out"], expand_metadata_reference(**s["step"]), s["mask_vec"])

        for s in sets:
            s["ref_batch"] = expand_metadata_reference(**s["step"])
        for name, make in [("meta_triton", meta_tri), ("meta_triton_nohint", meta_tri_nohint),
                           ("place_triton", place_tri), ("expand_triton", expand_tri),
                           ("meta_ref", meta_ref), ("place_ref", place_ref), ("expand_ref", expand_ref)]:
            try:
                case[name] = time_case([make(s) for s in sets])
            except Exception as e:  # noqa: BLE001 - keep the other numbers of a one-shot run
                case[name] = {"error": f"{type(e).__name__}: {e}"}
        # The graphs' last writes must still equal the reference.
        s0 = sets[0]
        expand_tri(s0)()
        h_ref = place_hidden_reference(s0["fc_out"], s0["ref_batch"], s0["mask_vec"])
        case["post_timing_equal"] = (not same_batch(s0["meta_out"], s0["ref_batch"])
                                     and torch.equal(h_ref, s0["hidden_out"]))
        result["cases"][str(B)] = case
        del sets
        if cuda:
            torch.cuda.empty_cache()

    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
    out = args.out or os.path.join(REPO, "bench", "results", f"expand_{slug}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)

    # Short table last (the device tool returns the end of the output).
    med = lambda c, k: c.get(k, {}).get("unrolled_us_median", float("nan"))  # noqa: E731
    sgl = lambda c, k: c.get(k, {}).get("single_graph_us_median", float("nan"))  # noqa: E731
    print(f"\n{device_name}  K={K} H={H} bf16  copy {bw['GBps']:.0f} GB/s  "
          f"empty launch {result['empty_kernel']['unrolled_us_median']:.2f} us")
    print("us per call, unrolled graph (single-graph do_bench in brackets)")
    print(f"{'B':>4} {'floor':>6} {'meta_tri':>15} {'expand_tri':>15} {'place_tri':>15} {'meta_ref':>15} "
          f"{'expand_ref':>15} {'ok':>3}")
    for B in Bs:
        c = result["cases"][str(B)]
        if "floor_us" not in c:
            print(f"{B:>4}  CHECK FAILED {c['check']}")
            continue
        cell = lambda k: f"{med(c, k):6.2f} [{sgl(c, k):6.2f}]"  # noqa: E731
        print(f"{B:>4} {c['floor_us']:6.2f} {cell('meta_triton')} {cell('expand_triton')} {cell('place_triton')} "
              f"{cell('meta_ref')} {cell('expand_ref')} {'yes' if c['post_timing_equal'] else 'NO':>3}")
    print(f"wrote {out}")
    failed = any("floor_us" not in c or not c["post_timing_equal"] for c in result["cases"].values())
    return 1 if failed or (tests is not None and tests["returncode"] != 0) else 0


if __name__ == "__main__":
    sys.exit(main())
