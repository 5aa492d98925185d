"""The bundled trained family (``models/tiny-code/{target,peagle,eagle3}``) through vLLM, when it exists.

Same three-way comparison as test_e2e.py on real (trained, bf16-stored) heads, run in float32 on a few
held-out prompts. Trained heads have near-ties that float rounding can flip between implementations, so
drafts are compared against the reference with a margin tolerance; vLLM native vs plugin must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import Case, compare_drafts_near_ties, from_vllm, run_reference, vllm_job  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAM_DIR = ROOT / "models" / "tiny-code"
FAM = {n: str(FAM_DIR / n) for n in ("target", "peagle", "eagle3")}
pytestmark = pytest.mark.skipif(not all((Path(p) / "config.json").is_file() for p in FAM.values()),
                                reason="the bundled family models/tiny-code/{target,peagle,eagle3} is not built")

MAX_TOKENS = 48
TIE = 0.05
CASES = [Case("none", None, max_model_len=512), Case("peagle-K7", "peagle", 7, max_model_len=512),
         Case("eagle3-K3", "eagle3", 3, parallel=False, max_model_len=512)]


def _prompts(n: int = 4, max_len: int = 96) -> list[list[int]]:
    from tokenizers import Tokenizer

    target = Path(FAM["target"])
    tok = Tokenizer.from_file(str(target / "tokenizer.json"))
    lines = [json.loads(x)["prompt"] for x in (target / "heldout_prompts.jsonl").read_text().splitlines() if x.strip()]
    return [tok.encode(t).ids[:max_len] for t in lines[:n]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pedagle_backends.vllm.runner import run_jobs

    out = tmp_path_factory.mktemp("tiny_code")
    prompts = _prompts()
    res = {"prompts": prompts}
    for mode in ("native", "plugin"):
        cases = CASES if mode == "native" else CASES[1:]
        jobs = [vllm_job(c, FAM, prompts, MAX_TOKENS, record=str(out / f"{c.name}.jsonl") if mode == "plugin" else None)
                for c in cases]
        results = run_jobs(jobs, plugin=mode == "plugin", log=out / f"{mode}.log", timeout=900)
        res[mode] = {c.name: from_vllm(r) for c, r in zip(cases, results)}
    return res


@pytest.mark.parametrize("case", CASES[1:], ids=lambda c: c.name)
def test_tiny_code_plugin_vs_native_vs_reference(runs, case):
    native, plugin = runs["native"][case.name], runs["plugin"][case.name]
    assert plugin.outputs == runs["native"]["none"].outputs          # lossless
    assert plugin.outputs == native.outputs
    assert plugin.metrics == native.metrics
    ref = run_reference(case, FAM, runs["prompts"], MAX_TOKENS)
    n, ties = compare_drafts_near_ties(ref, plugin, TIE)
    assert n > 0 and ties <= max(1, n // 50), f"{ties} near-tie mismatches in {n} drafts"
