"""Run groups of generation cases through ONE ``sglang.Engine(device="cpu")`` per configuration, in a subprocess.

An engine start costs ~50 s on two CPU cores, so tests and benchmarks group their cases by configuration
(target, drafter, algorithm, K, dtype, engine options) and start each configuration once:

    from engine_harness import EngineConfig, run_engine
    res = run_engine(EngineConfig(target=TARGET, algorithm="EAGLE3", drafter=EAGLE3, K=3),
                     [{"prompts": [[1, 2, 3]], "max_new_tokens": 16}])
    res["cases"][0]["outputs"]      # [[token ids]] per prompt
    res["cases"][0]["meta"]         # SGLang's meta_info per prompt (spec_accept_length, spec_verify_ct, ...)
    res["start_s"]                  # engine start time

The engine runs in a fresh Python process (``python engine_harness.py IN.json OUT.json``; SGLang spawns its
scheduler and detokenizer from there) with the CPU-engine set-up of `pedagle_backends.sglang.cpu`
(``SGLANG_USE_CPU_ENGINE=1``, ``PEDAGLE_SGLANG_CPU_ENGINE=1``: intel_amx attention kept on a CPU without AMX,
served by pedagle's CPU ``sgl_kernel`` test ops). Algorithms: None (target only), "EAGLE3" (SGLang's own, a
chain: topk 1, K steps; the drafter's ``architectures`` is renamed to ``LlamaForCausalLMEagle3`` in a temporary
copy of its directory), "PEAGLE" (pedagle's plugin). Needs the SGLang test environment
(``bash .ci/setup_sglang_env.sh VENV``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny-code"
EAGLE3_ARCH = "LlamaForCausalLMEagle3"


@dataclass
class EngineConfig:
    """One engine: target, optional drafter + algorithm ("EAGLE3" | "PEAGLE") with K drafts per step."""

    target: str
    drafter: str | None = None
    algorithm: str | None = None
    K: int = 3
    dtype: str = "float32"
    engine: dict[str, Any] = field(default_factory=dict)  # extra sglang.Engine keywords (they win)
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the engine process

    def __post_init__(self) -> None:
        self.target, self.drafter = str(self.target), (str(self.drafter) if self.drafter else None)
        if self.algorithm not in (None, "EAGLE3", "PEAGLE"):
            raise ValueError(f"EngineConfig.algorithm: {self.algorithm!r}, expected None, 'EAGLE3' or 'PEAGLE'")
        if (self.algorithm is None) != (self.drafter is None):
            raise ValueError(f"EngineConfig: algorithm {self.algorithm!r} with drafter {self.drafter!r}; "
                             "a drafter needs an algorithm and the reverse")
        if self.algorithm and self.K < 1:
            raise ValueError(f"EngineConfig.K: {self.K}, expected >= 1")


def eagle3_drafter_copy(drafter: str | Path, into: str | Path) -> Path:
    """A copy of an EAGLE-3 drafter directory whose config names SGLang's class (weights symlinked)."""
    src, dst = Path(drafter), Path(into)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            (dst / f.name).symlink_to(f.resolve())
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = [EAGLE3_ARCH]
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def engine_kwargs(cfg: EngineConfig, drafter_path: str | None) -> dict[str, Any]:
    """``sglang.Engine`` keywords: greedy-friendly defaults (page size 1, fixed seed, token ids in and out),
    the speculative settings, then ``cfg.engine``."""
    kw: dict[str, Any] = dict(model_path=cfg.target, dtype=cfg.dtype, skip_tokenizer_init=True, page_size=1,
                              random_seed=0, log_level="error")
    if cfg.algorithm == "EAGLE3":
        kw.update(speculative_algorithm="EAGLE3", speculative_draft_model_path=drafter_path,
                  speculative_num_steps=cfg.K, speculative_eagle_topk=1, speculative_num_draft_tokens=cfg.K + 1)
    elif cfg.algorithm == "PEAGLE":
        kw.update(speculative_algorithm="PEAGLE", speculative_draft_model_path=drafter_path,
                  speculative_num_draft_tokens=cfg.K + 1)
    kw.update(cfg.engine)
    return kw


def _sampling_params(case: dict[str, Any], n: int) -> list[dict[str, Any]]:
    mnt = case["max_new_tokens"]
    mnt = [int(mnt)] * n if isinstance(mnt, int) else [int(m) for m in mnt]
    if len(mnt) != n:
        raise ValueError(f"case max_new_tokens: {len(mnt)} values for {n} prompts")
    out = []
    for i in range(n):
        p = {"temperature": float(case.get("temperature", 0.0)), "max_new_tokens": mnt[i], "ignore_eos": True}
        if case.get("seed") is not None:
            p["sampling_seed"] = int(case["seed"]) + i
        for k in ("top_p", "top_k"):
            if k in case:
                p[k] = case[k]
        out.append(p)
    return out


def _child(in_path: str, out_path: str) -> None:
    """The engine process: set up the CPU engine, start it once, run every case, write the results."""
    job = json.loads(Path(in_path).read_text())
    cfg = EngineConfig(**job["config"])
    from pedagle_backends.sglang import cpu

    cpu_kw = cpu.engine_kwargs()  # sets SGLANG_USE_CPU_ENGINE before sglang is imported
    import sglang

    result: dict[str, Any] = {"config": asdict(cfg), "cases": []}
    with tempfile.TemporaryDirectory(prefix="pedagle-sglang-harness-") as tmp:
        drafter = cfg.drafter
        if cfg.algorithm == "EAGLE3":
            drafter = str(eagle3_drafter_copy(cfg.drafter, Path(tmp) / "eagle3"))
        kw = {**cpu_kw, **engine_kwargs(cfg, drafter)}
        result["engine_kwargs"] = kw
        t0 = time.perf_counter()
        engine = sglang.Engine(**kw)
        result["start_s"] = time.perf_counter() - t0
        result["attention_backend"] = getattr(engine.server_args, "attention_backend", None)
        try:
            for case in job["cases"]:
                prompts = [list(map(int, p)) for p in case["prompts"]]
                params = _sampling_params(case, len(prompts))
                t1 = time.perf_counter()
                outs = engine.generate(input_ids=prompts, sampling_params=params)
                result["cases"].append({"outputs": [list(o["output_ids"]) for o in outs],
                                        "meta": [o.get("meta_info", {}) for o in outs],
                                        "seconds": time.perf_counter() - t1})
        finally:
            engine.shutdown()
    Path(out_path).write_text(json.dumps(result))


def run_engine(cfg: EngineConfig, cases: list[dict[str, Any]], timeout: float = 900.0,
               log: str | Path | None = None) -> dict[str, Any]:
    """Start ``cfg``'s engine once in a subprocess, run ``cases`` in order, return the results (see module doc).

    A case: {"prompts": [[ids]], "max_new_tokens": int | [int], optional "temperature", "seed", "top_p",
    "top_k"}; EOS is ignored. On failure, raises RuntimeError with the end of the engine process's output.
    """
    with tempfile.TemporaryDirectory(prefix="pedagle-sglang-run-") as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps({"config": asdict(cfg), "cases": cases}))
        env = {**os.environ, **cfg.env}
        env.setdefault("PEDAGLE_SGLANG_CPU_AMX", "0")   # SGLang's plain layers on any CPU unless asked (cpu.AMX_ENV)
        env.setdefault("PYTHONUNBUFFERED", "1")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(in_path), str(out_path)],
                              env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        output = proc.stdout + proc.stderr
        if log is not None:
            Path(log).write_text(output)
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"SGLang engine run failed (exit {proc.returncode}, config {asdict(cfg)}); "
                               f"last output:\n{output[-6000:]}")
        res = json.loads(out_path.read_text())
    res["process_s"] = wall
    return res


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
