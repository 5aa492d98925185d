"""PEAGLE in SGLang's running engine (CPU, float32) beyond the tiny-code greedy runs, and SGLang's own EAGLE3 as
the comparison baseline. Three engine starts:

* a sliding-window drafter (the random Qwen3 conformance head with its one layer windowed to 4 keys): SGLang's
  draft runner gets the drafter's window (SGLang's convention: 3), drafts == pedagle's reference step by step,
  emitted tokens == the reference's;
* SGLang's own EAGLE3 (``--speculative-algorithm EAGLE3``) with tiny-code's EAGLE-3 head, greedy: output ==
  SGLang target-only (test_engine_peagle's float32 target-only run), and a sampled job; its acceptance is
  printed beside PEAGLE's (same prompts, K = 3) as the baseline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import engine_runs as er
from engine_runs import EAGLE3, TARGET, Job

REPO = Path(__file__).resolve().parents[2]
RANDOM = REPO / "conformance" / "cases" / "random" / "models"
WINDOW = 4
STEPS = 3


def random_prompts(lengths, vocab=128, seed=5) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def swa_drafter(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("swa") / "qwen3-peagle-swa"
    shutil.copytree(RANDOM / "qwen3-peagle", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(use_sliding_window=True, sliding_window=WINDOW, layer_types=["sliding_attention"], max_window_layers=0)
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    return d


K = 3
SWA_JOB = Job("swa", random_prompts([5, 19, 33]), [(STEPS + 1) * (K + 1) + 1] * 3)
SAMPLE = Job("sample", er.prompts([15, 31], start=2), [12] * 2, temperature=0.8, seed=7)


@pytest.fixture(scope="module")
def runs(swa_drafter, sglang_eagle3):
    """This module's engines in one child process; the float32 target-only run is test_engine_peagle's (the same
    key: started here only when that module did not run in this process)."""
    from test_engine_peagle import ENGINE, jobs, specs

    return er.run_many({
        "f32-target": specs()["f32-target"],
        "swa-peagle-k3": er.Spec(RANDOM / "qwen3-target", swa_drafter, K, [SWA_JOB], "float32"),
        "f32-eagle3-k3": er.Spec(TARGET, sglang_eagle3, K, [jobs(K)[0], SAMPLE], "float32", algorithm="EAGLE3",
                                 engine=dict(ENGINE))})


def test_sliding_window_drafter_in_the_engine(swa_drafter, runs):
    from pedagle_conformance.compare import compare_e2e
    from pedagle_core.engine.backend import ReferenceBackend

    target = RANDOM / "qwen3-target"
    job = SWA_JOB
    run = runs["swa-peagle-k3"]
    cfg = run.config()
    assert cfg["layer_windows"] == [WINDOW]
    assert cfg["draft_sliding_window_size"] == WINDOW - 1, cfg      # SGLang's convention: keys >= p - (W - 1)
    got = er.case_result(run, "swa", K, STEPS)
    ref = ReferenceBackend().run_case(str(target), str(swa_drafter), job.prompts, K=K, mode="parallel", steps=STEPS,
                                      dtype="float32", device="cpu")
    cmp = compare_e2e(ref, got, K, "parallel", 1e-4)
    assert not cmp.failures and not cmp.desync, [m.describe(1e-4) for m in cmp.failures[:5]]
    assert got["drafts"] == ref["drafts"] and got["output_ids"] == ref["output_ids"]
    # the window matters for these prompts: without it the head drafts differently somewhere
    nowin = ReferenceBackend().run_case(str(target), str(RANDOM / "qwen3-peagle"), job.prompts, K=K, mode="parallel",
                                        steps=STEPS, dtype="float32", device="cpu")
    assert nowin["drafts"] != ref["drafts"]


@pytest.fixture(scope="module")
def sglang_eagle3(tmp_path_factory) -> Path:
    """tiny-code's EAGLE-3 head as SGLang's EAGLE3 reads it: architecture LlamaForCausalLMEagle3, and the aux ids in
    SGLang's convention (it captures the stream entering layer id + 1; the head was trained on pedagle's ids)."""
    d = tmp_path_factory.mktemp("eagle3") / "eagle3-sglang"
    shutil.copytree(EAGLE3, d)
    cfg = json.loads((d / "config.json").read_text())
    ids = cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"]
    cfg["architectures"] = ["LlamaForCausalLMEagle3"]
    cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [i - 1 for i in ids]
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    return d


def test_sglang_eagle3_baseline_is_lossless_and_samples(runs):
    run = runs["f32-eagle3-k3"]
    base = runs["f32-target"]
    for g, t in zip(run.results["batch"]["outputs"], base.results["batch"]["outputs"]):
        assert g == t[:len(g)]                        # the target-only run generated more (every K's prefix)
    vocab = json.loads((TARGET / "config.json").read_text())["vocab_size"]
    assert all(len(o) == 12 and all(0 <= t < vocab for t in o) for o in run.results["sample"]["outputs"])

    def accept_len(meta):
        verify = sum(m.get("spec_verify_ct", 0) for m in meta)
        return sum(m.get("completion_tokens", 0) for m in meta) / verify if verify else float("nan")

    e3 = accept_len(run.results["batch"]["meta"])
    pe_run = er.cached("f32-peagle-k3")                # test_engine_peagle's PEAGLE K=3 run, when it ran here
    pe = accept_len(pe_run.results["batch"]["meta"]) if pe_run else float("nan")
    print(f"tokens per verify step, K=3, batch job: SGLang EAGLE3 {e3:.2f}, pedagle PEAGLE {pe:.2f}")
    assert e3 > 1.0                                    # SGLang's drafter gets drafts accepted
