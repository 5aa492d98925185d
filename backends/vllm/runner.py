"""Run speculative-decoding jobs through ``vllm.LLM`` and report outputs, acceptance and drafts.

Used by the conformance backend (`backend.VllmBackend`), the tests in ``tests/vllm`` and the benchmark.
Jobs run in a child process (``python -m pedagle_backends.vllm.runner JOBS.json OUT.json``) because vLLM
loads its plugins once per process: the child decides whether pedagle's plugin is on (``plugin: true``)
or vLLM's native path serves the same checkpoint (``VLLM_PLUGINS`` without ``pedagle``). One child runs
many jobs, one ``vllm.LLM`` after another, to pay vLLM's start-up once.

A job (JSON object):

    target          target model directory (HF)                       required unless ``drafter`` is a
                                                                      speculators checkpoint and
                                                                      ``speculators: true``
    drafter         drafter checkpoint directory, or null (no speculation)
    method          "eagle3" (default)
    K               num_speculative_tokens
    parallel        parallel_drafting (P-EAGLE); default true
    speculators     serve the speculators checkpoint ``drafter`` as the model (vLLM swaps in its verifier)
    prompts         list of prompt token-id lists
    max_tokens      tokens to generate per prompt (greedy, EOS ignored)
    max_model_len, dtype ("float32"), max_num_seqs (8), enforce_eager (true), kv_cache_memory_bytes,
    tensor_parallel_size (1), gpu_memory_utilization (default: $PEDAGLE_VLLM_GPU_MEMORY_UTILIZATION, else
    vLLM's; set it below 1/n to run n engines on one GPU at once)
    record          path of a drafts JSONL (pedagle plugin only; ``PEDAGLE_RECORD_DRAFTS``)
    repeat          generate this many times (timing; outputs/metrics of the last)

Result per job: ``{"outputs": [[ids]], "metrics": {"num_drafts", "num_draft_tokens",
"num_accepted_tokens", "accepted_per_pos"}, "drafts": [records] | null, "init_s", "gen_s",
"gen_s_all", "num_output_tokens", "vllm_version", "plugin", "num_speculative_tokens", "model_runner"}``
(``num_speculative_tokens``: the K the engine drafted with, for a speculators checkpoint it may differ from ``K``,
see `compat`; ``model_runner``: "v1" or "v2", the runner vLLM chose) or ``{"error": "..."}``.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

RECORD_ENV_NAME = "PEDAGLE_RECORD_DRAFTS"           # = proposer.RECORD_ENV (not imported: no vLLM here)
SPEC_METRICS = {
    "vllm:spec_decode_num_drafts": "num_drafts",
    "vllm:spec_decode_num_draft_tokens": "num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "num_accepted_tokens",
    "vllm:spec_decode_num_accepted_tokens_per_pos": "accepted_per_pos",
}


# ---------------------------------------------------------------------------------------------- parent
def child_env(plugin: bool, record: bool = True, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.pop("TRITON_INTERPRET", None)           # the CPU path never needs Triton; keep vLLM's detection clean
    if plugin:
        plugins = [p for p in env.get("VLLM_PLUGINS", "").split(",") if p]
        if "VLLM_PLUGINS" in env and "pedagle" not in plugins:
            env["VLLM_PLUGINS"] = ",".join(plugins + ["pedagle"])
    else:
        plugins = [p for p in env.get("VLLM_PLUGINS", "").split(",") if p and p != "pedagle"]
        env["VLLM_PLUGINS"] = ",".join(plugins)
    if record:
        env[RECORD_ENV_NAME] = env.get(RECORD_ENV_NAME) or os.devnull    # install the recorder; jobs set the file
    else:
        env.pop(RECORD_ENV_NAME, None)
    env.update(extra or {})
    return env


def run_jobs(jobs: list[dict[str, Any]], plugin: bool = True, python: str | None = None, timeout: float = 1800,
             log: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run ``jobs`` in one child process (``python``, default this interpreter); returns one result each."""
    with tempfile.TemporaryDirectory(prefix="pedagle-vllm-") as tmp:
        jf, of = Path(tmp) / "jobs.json", Path(tmp) / "out.json"
        jf.write_text(json.dumps({"plugin": plugin, "jobs": jobs}))
        logf = open(log, "w") if log else subprocess.DEVNULL
        try:
            proc = subprocess.run([python or sys.executable, "-m", "pedagle_backends.vllm.runner", str(jf), str(of)],
                                  env=child_env(plugin, record=any(j.get("record") for j in jobs), extra=env),
                                  stdout=logf, stderr=subprocess.STDOUT, timeout=timeout)
        finally:
            if log:
                logf.close()
        if not of.is_file():
            tail = Path(log).read_text()[-4000:] if log else "(no log kept)"
            raise RuntimeError(f"vLLM runner exited with {proc.returncode} and no results:\n{tail}")
        return json.loads(of.read_text())["results"]


# ---------------------------------------------------------------------------------------------- child
def _spec_metrics(llm: Any) -> dict[str, Any]:
    out: dict[str, Any] = {v: 0 for v in SPEC_METRICS.values()}
    out["accepted_per_pos"] = []
    for m in llm.get_metrics():
        key = SPEC_METRICS.get(m.name)
        if key is None:
            continue
        if key == "accepted_per_pos":
            out[key] = [int(x) for x in m.values]
        else:
            out[key] = int(m.value)
    return out


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in after.items():
        if isinstance(v, list):
            b = before.get(k) or []
            out[k] = [x - (b[i] if i < len(b) else 0) for i, x in enumerate(v)]
        else:
            out[k] = v - before.get(k, 0)
    return out


def _num_speculative_tokens(llm: Any) -> int | None:
    """The K the engine drafts with (its speculative config after vLLM resolved it), None without speculation."""
    spec = llm.llm_engine.vllm_config.speculative_config
    return None if spec is None else int(spec.num_speculative_tokens)


def _run_job(job: dict[str, Any], plugin: bool) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    spec = None
    if job.get("speculators"):
        model = job["drafter"]
        spec = {"num_speculative_tokens": int(job["K"])} if job.get("K") else None
    else:
        model = job["target"]
        if job.get("drafter"):
            spec = {"method": job.get("method", "eagle3"), "model": job["drafter"],
                    "num_speculative_tokens": int(job["K"])}
            if job.get("parallel", True):
                spec["parallel_drafting"] = True
    record = job.get("record")
    if record:
        Path(record).unlink(missing_ok=True)
        os.environ[RECORD_ENV_NAME] = str(record)
    else:
        os.environ[RECORD_ENV_NAME] = os.devnull
    extra = {}
    util = job.get("gpu_memory_utilization") or os.environ.get("PEDAGLE_VLLM_GPU_MEMORY_UTILIZATION")
    if util:
        extra["gpu_memory_utilization"] = float(util)
    t0 = time.perf_counter()
    llm = LLM(model=model, skip_tokenizer_init=True, speculative_config=spec, dtype=job.get("dtype", "float32"),
              max_model_len=int(job.get("max_model_len", 256)), enforce_eager=bool(job.get("enforce_eager", True)),
              disable_log_stats=False, seed=int(job.get("seed", 0)), max_num_seqs=int(job.get("max_num_seqs", 8)),
              kv_cache_memory_bytes=int(job.get("kv_cache_memory_bytes", 64 << 20)),
              tensor_parallel_size=int(job.get("tensor_parallel_size", 1)), **extra)
    init_s = time.perf_counter() - t0
    k_used = _num_speculative_tokens(llm)
    from .compat import runner_in_use

    model_runner = runner_in_use(llm.llm_engine.vllm_config)
    if job.get("speculators") and job.get("K") and k_used != int(job["K"]):
        print(f"pedagle runner: vLLM drafts K = {k_used} for the speculators checkpoint {model}, not the requested "
              f"K = {job['K']} (vLLM before 0.29 ignores the user's speculative config there: "
              f"pedagle_backends.vllm.compat.speculators_num_speculative_tokens)", file=sys.stderr)
    prompts = [{"prompt_token_ids": [int(t) for t in p]} for p in job["prompts"]]
    sp = SamplingParams(temperature=0.0, max_tokens=int(job["max_tokens"]), ignore_eos=True)
    gen_all = []
    for _ in range(int(job.get("repeat", 1))):
        if record:
            Path(record).unlink(missing_ok=True)
        before = _spec_metrics(llm) if spec is not None else {}
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        gen_all.append(time.perf_counter() - t0)
        metrics = _delta(_spec_metrics(llm), before) if spec is not None else None
    outputs = [list(o.outputs[0].token_ids) for o in outs]
    drafts = None
    if record and Path(record).is_file():
        drafts = [json.loads(line) for line in Path(record).read_text().splitlines() if line.strip()]
    import vllm

    res = {"outputs": outputs, "metrics": metrics, "drafts": drafts, "init_s": init_s, "gen_s": gen_all[-1],
           "gen_s_all": gen_all, "num_output_tokens": sum(map(len, outputs)), "vllm_version": vllm.__version__,
           "plugin": plugin, "num_speculative_tokens": k_used, "model_runner": model_runner}
    del llm
    gc.collect()
    return res


def _pedagle_loaded() -> bool:
    try:
        from pedagle_backends.vllm import plugin as _p
    except ImportError:
        return False
    return _p.is_registered()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m pedagle_backends.vllm.runner JOBS.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    plugin = bool(spec.get("plugin", True))
    results = []
    for job in spec["jobs"]:
        try:
            res = _run_job(job, plugin)
            if res["plugin"] != _pedagle_loaded():
                raise RuntimeError(f"pedagle plugin loaded = {_pedagle_loaded()}; expected {plugin}")
        except Exception as e:              # one failing job does not hide the others' results
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        results.append(res)
        Path(argv[1]).write_text(json.dumps({"results": results}))
    Path(argv[1]).write_text(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
