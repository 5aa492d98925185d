"""The production-shaped random-weight run shared by bench/sglang_gpu_e2e.py and bench/vllm_gpu_e2e.py (phase
``prod``, issue 23): the models (a dense Qwen3-shaped target as config.json only, for ``load_format="dummy"``,
and a random 4-layer P-EAGLE head of bench/bench_drafter.py's ``PROD_FAMILY`` shape saved as a real
checkpoint), random prompts, the standalone bench_drafter.py run at the same shape, and the comparison of the
draft step's time inside the engine (the engine hook's `pedagle_core.engine.step_timer` lines) with the
standalone time (goal: ratio <= 1.1).

The inside measurements are an engine child's result ``{"calls": [{"name", "i", "batch", "seconds", "t0", "t1"},
...], "timer": [step-timer lines]}``: call ``name`` = ``f"b{B}"``, ``i`` = 0 the warm-up, ``t0``/``t1`` its wall
window (time.time()).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

PROD_FAMILY = "qwen3-coder-30b-a3b"                    # bench_drafter.py's head shape with a dense Qwen3 target
PROD_K = 7
PROD_BATCHES = (1, 8)
GOAL = "ratio <= 1.1"


# ---------------------------------------------------------------------------------------------- models
def prod_target_config(dry: bool) -> dict[str, Any]:
    """A dense Qwen3 target with the attention shape of bench_drafter's qwen3-coder-30b-a3b head (hidden 2048,
    32 query / 4 KV heads of 128, vocab 151936), 48 layers, MLP 6144: ~3.3 B parameters (6.6 GB in bf16).
    ``dry``: the same structure at bench_drafter's dry sizes."""
    from bench_drafter import DRY_FAMILIES, FAMILIES

    h = (DRY_FAMILIES if dry else FAMILIES)[PROD_FAMILY]
    hidden = int(h["target_hidden_size"])
    heads = max(1, hidden // int(h["head_dim"])) if dry else int(h["num_attention_heads"])
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": hidden,
            "num_hidden_layers": 8 if dry else 48, "num_attention_heads": heads,
            "num_key_value_heads": 1 if dry else int(h["num_key_value_heads"]), "head_dim": int(h["head_dim"]),
            "intermediate_size": 2 * hidden if dry else 6144, "vocab_size": int(h["vocab_size"]),
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": False,
            "tie_word_embeddings": False, "rope_theta": 1000000.0, "torch_dtype": "bfloat16", "bos_token_id": 0,
            "eos_token_id": 0, "use_sliding_window": False, "sliding_window": None}


def prod_aux_layer_ids(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's usual capture layers: early, middle, late."""
    return (min(2, num_layers - 1), num_layers // 2, max(num_layers - 3, 0))


def write_prod_models(dst: Path, dry: bool, device: str = "cpu", seed: int = 0) -> tuple[Path, Path]:
    """The production-shaped target (config.json only) and a random P-EAGLE head of bench_drafter's
    ``PROD_FAMILY`` shape (4 layers, bf16) saved as a vLLM-format checkpoint and read back with pedagle's
    strict loader (``dry``; on the GPU the engine's own load is the check). Returns (target dir, head dir):
    ``dst/prod-target``, ``dst/prod-peagle`` (bench/gpu_jobs.py leaves ``*/heads/prod-*`` out of its archive)."""
    import dataclasses

    import torch

    from bench_drafter import PARALLEL_LAYERS, build_drafter, head_config
    from pedagle_core.formats.load import load_drafter, save_drafter

    tcfg = prod_target_config(dry)
    tdir, hdir = dst / "prod-target", dst / "prod-peagle"
    for d in (tdir, hdir):
        if d.exists():
            shutil.rmtree(d)
    tdir.mkdir(parents=True)
    (tdir / "config.json").write_text(json.dumps(tcfg, indent=1))
    cfg = dataclasses.replace(head_config(PROD_FAMILY, PARALLEL_LAYERS, dry),
                              aux_layer_ids=prod_aux_layer_ids(tcfg["num_hidden_layers"]))
    head = build_drafter(cfg, torch.device(device), torch.bfloat16, seed)
    save_drafter(head, hdir, "vllm", verifier_name_or_path=str(tdir))
    del head
    if dry:
        back = load_drafter(hdir, device="cpu", dtype=torch.bfloat16, mode="parallel")
        if back.config.num_hidden_layers != PARALLEL_LAYERS or back.config.hidden_size != cfg.hidden_size:
            raise RuntimeError(f"{hdir}: read back as {back.config}; expected {cfg}")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()               # the engine child needs the memory
    return tdir, hdir


def random_prompts(lengths: Sequence[int], vocab: int, seed: int = 5) -> list[list[int]]:
    """Random ids in [2, vocab) (0 = EOS/BOS and 1 = MASK left out), one prompt per length."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (int(n),), generator=g).tolist() for n in lengths]


# ---------------------------------------------------------------------------------------------- standalone
def standalone_command(out: Path, ctx: int, K: int, batches: Sequence[int], dry: bool,
                       budget_s: float = 150.0) -> list[str]:
    """bench/bench_drafter.py at the prod shape (parallel mode, the default 'new' path, no micro-benchmarks, no
    verification), writing ``out/drafter_standalone.json``."""
    cmd = [sys.executable, str(ROOT / "bench" / "bench_drafter.py"), "--families", PROD_FAMILY, "--modes", "parallel",
           "--batches", ",".join(map(str, batches)), "--ks", str(K), "--ctxs", str(ctx), "--paths", "new",
           "--no-micro", "--no-verify", "--budget-s", f"{budget_s:.0f}", "--out", str(out / "drafter_standalone.json"),
           "--plot", str(out / "drafter_standalone.png")]
    return cmd + (["--dry-run"] if dry else [])


def run_standalone(out: Path, ctx: int, K: int, batches: Sequence[int], dry: bool, timeout: float,
                   logf: Path) -> tuple[dict[str, Any], Any, list[str]]:
    """Run `standalone_command` (bench_drafter's own budget ``min(150, timeout - 20)`` s, killed at ``timeout``):
    (its result or {"error", "tail"}, exit status or "timeout", the command)."""
    cmd = standalone_command(out, ctx, K, batches, dry, budget_s=max(10.0, min(150.0, timeout - 20)))
    sa_path = out / "drafter_standalone.json"
    sa_path.unlink(missing_ok=True)
    try:
        with open(logf, "w") as f:
            rc: Any = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(10.0, timeout)).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    if sa_path.is_file():
        return json.loads(sa_path.read_text()), rc, cmd
    tail = logf.read_text()[-2000:] if logf.is_file() else ""
    return {"error": f"exit {rc}", "tail": tail}, rc, cmd


def standalone_ms(res: dict[str, Any], B: int, K: int, ctx: int) -> float | None:
    for r in res.get("results", []):
        if (r.get("family"), r.get("mode"), r.get("B"), r.get("K"), r.get("ctx")) == (PROD_FAMILY, "parallel", B, K, ctx) \
                and "median_ms" in r:
            return float(r["median_ms"])
    return None


# ---------------------------------------------------------------------------------------------- comparison
def draft_share(res: dict[str, Any], name: str, batch: int | None = None,
                keep: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
    """The timer's lines inside the wall windows of call ``name`` (timed repeats, i >= 1 when there are
    several; ``keep``: only the lines it accepts): draft-step GPU ms per step (median over the lines of
    ``batch`` requests), the sum over the calls' wall time (share)."""
    calls = [c for c in res.get("calls", []) if c["name"] == name]
    timed = [c for c in calls if c["i"] >= 1] or calls
    lines = [x for x in res.get("timer") or [] if keep is None or keep(x)]
    if not timed or not lines:
        return None
    inside = [x for x in lines if any(c["t0"] <= x["t"] <= c["t1"] for c in timed)]
    if not inside:
        return None
    clock = "gpu" if all(x.get("gpu_ms") is not None for x in inside) else "cpu"    # no CUDA: host time
    ms = lambda x: x["gpu_ms"] if clock == "gpu" else x["cpu_ms"]  # noqa: E731
    full = [ms(x) for x in inside if batch is None or x.get("B") == batch]
    wall_ms = 1e3 * sum(c["seconds"] for c in timed)
    return {"clock": clock, "steps": len(inside), "draft_gpu_ms_median": statistics.median(full) if full else None,
            "draft_gpu_ms_full_batch": full, "draft_cpu_ms_median": statistics.median(x["cpu_ms"] for x in inside),
            "draft_gpu_ms_total": sum(ms(x) for x in inside), "wall_ms_total": wall_ms,
            "share": sum(ms(x) for x in inside) / wall_ms if wall_ms else None}


def prod_compare(inside: dict[str, Any], standalone: dict[str, Any], K: int, ctx: int, batches: Sequence[int],
                 keep: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Inside-the-engine draft-step GPU time (median over full-batch steps) vs the standalone step, per batch."""
    out: dict[str, Any] = {}
    for b in batches:
        share = draft_share(inside, f"b{b}", b, keep)          # a child that failed part-way: its calls so far
        ms_in = share["draft_gpu_ms_median"] if share else None
        ms_sa = standalone_ms(standalone, b, K, ctx)
        out[str(b)] = {"inside_ms": ms_in, "standalone_ms": ms_sa, "ratio": ms_in / ms_sa if ms_in and ms_sa else None,
                       "goal": GOAL, "inside": share}
    return out


def prod_table(compare: dict[str, Any], K: int, ctx: int, engine: str) -> str:
    """One line per batch size."""
    f = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "nan"  # noqa: E731
    return "\n".join(
        f"prod B={b} K={K} ctx={ctx}: draft step inside {engine} {f(v['inside_ms'])} ms "
        f"({(v['inside'] or {}).get('clock', '-')} clock, {(v['inside'] or {}).get('steps', 0)} steps), standalone "
        f"{f(v['standalone_ms'])} ms, ratio {f(v['ratio'])} (goal <= 1.1)"
        for b, v in compare.items())


__all__ = ["PROD_FAMILY", "PROD_K", "PROD_BATCHES", "GOAL", "prod_target_config", "prod_aux_layer_ids",
           "write_prod_models", "random_prompts", "standalone_command", "run_standalone", "standalone_ms",
           "draft_share", "prod_compare", "prod_table"]
