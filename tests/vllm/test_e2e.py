"""End to end on CPU: greedy vLLM with pedagle's plugin == target-only, and acceptance / drafts identical
across (i) pedagle's reference engine, (ii) vLLM's native EAGLE-3 path on the same checkpoint (plugin
excluded through VLLM_PLUGINS), (iii) vLLM with the pedagle plugin.

All vLLM runs of a mode happen in one child process (vLLM loads plugins once per process): two children
in all, ~10 ``vllm.LLM`` instances each. Cases: P-EAGLE (vLLM format) K = 1, 3, 7; EAGLE-3 autoregressive
(vLLM format, reduced draft vocabulary with d2t) K = 3, 7; both as speculators exports; a Qwen3 target
with a Qwen3 P-EAGLE head (q/k norms); P-EAGLE K = 3 with vLLM's torch.compile on (the drafter is
compiled like vLLM's own); and two cases whose longest request reaches max_model_len mid-draft.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import Case, compare_drafts, from_vllm, run_reference, vllm_job  # noqa: E402
from tinyfamily import prompts  # noqa: E402

MAX_TOKENS = 30
CASES = [
    Case("none", None),
    Case("qwen3-none", None, target="qwen3_target"),
    Case("peagle-K1", "peagle", 1),
    Case("peagle-K3", "peagle", 3),
    Case("peagle-K7", "peagle", 7),
    Case("eagle3-K3", "eagle3", 3, parallel=False),
    Case("eagle3-K7", "eagle3", 7, parallel=False),
    Case("peagle_spec-K7", "peagle_spec", 7, speculators=True),
    Case("eagle3_spec-K3", "eagle3_spec", 3, parallel=False, speculators=True),
    Case("qwen3-peagle-K3", "qwen3_peagle", 3, target="qwen3_target"),
    Case("peagle-K3-compiled", "peagle", 3, enforce_eager=False),
    Case("peagle-K3-maxlen", "peagle", 3, max_model_len=64),
    Case("eagle3-K7-maxlen", "eagle3", 7, parallel=False, max_model_len=64),
]
SPEC_CASES = [c for c in CASES if c.drafter is not None]
FULL_CASES = [c for c in SPEC_CASES if c.max_model_len == 256]
MAXLEN_CASES = [c for c in SPEC_CASES if c.max_model_len != 256]
RECORD_NATIVE = ("peagle-K3", "eagle3-K3")
TIMINGS: dict[str, float] = {}


MISSING_TENSOR = "layers.0.mlp.down_proj.weight"


def _broken_copy(src: str, dst: Path) -> str:
    """``src`` without one weight (vLLM's own EAGLE-3 loader would keep its initial values silently)."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    for f in Path(src).iterdir():
        if f.suffix == ".safetensors":
            tensors = {k: v for k, v in load_file(str(f)).items() if k != MISSING_TENSOR}
            save_file(tensors, str(dst / f.name), metadata={"format": "pt"})
        else:
            (dst / f.name).write_bytes(f.read_bytes())
    return str(dst)


@pytest.fixture(scope="session")
def vllm_runs(family, the_prompts, tmp_path_factory):
    from pedagle_backends.vllm.runner import run_jobs

    out = tmp_path_factory.mktemp("vllm_runs")
    broken = _broken_copy(family["peagle"], out / "peagle_missing_tensor")
    runs = {}
    for mode in ("native", "plugin"):
        cases = CASES if mode == "native" else SPEC_CASES
        jobs = [vllm_job(c, family, the_prompts, MAX_TOKENS,
                         record=str(out / f"{c.name}.jsonl") if mode == "plugin" else None) for c in cases]
        if mode == "plugin":
            peagle3 = next(c for c in CASES if c.name == "peagle-K3")
            jobs.append(dict(vllm_job(peagle3, family, the_prompts, 4), drafter=broken))
        t0 = time.perf_counter()
        results = run_jobs(jobs, plugin=mode == "plugin", log=out / f"{mode}.log", timeout=900)
        TIMINGS[f"vllm_{mode}_s"] = time.perf_counter() - t0
        runs[mode] = {c.name: r for c, r in zip(cases, results)}
        if mode == "plugin":
            runs["broken"] = results[-1]
    # vLLM's own drafters with only pedagle's recorder (the plugin's record-only mode): native drafts
    # recorded, to compare step by step with the plugin's (the GPU script does the same in bf16).
    rec_cases = [c for c in CASES if c.name in RECORD_NATIVE]
    t0 = time.perf_counter()
    results = run_jobs([vllm_job(c, family, the_prompts, MAX_TOKENS, record=str(out / f"native-{c.name}.jsonl"))
                        for c in rec_cases], plugin=True, log=out / "record_only.log", timeout=600,
                       env={"PEDAGLE_VLLM_RECORD_ONLY": "1"})
    TIMINGS["vllm_record_only_s"] = time.perf_counter() - t0
    runs["native_recorded"] = {c.name: r for c, r in zip(rec_cases, results)}
    # Tensor parallelism 2 on CPU: two worker processes, one core each, IPC on loopback only.
    tp_case = next(c for c in CASES if c.name == "peagle-K3")
    job = dict(vllm_job(tp_case, family, the_prompts, MAX_TOKENS, record=str(out / "tp2.jsonl")),
               tensor_parallel_size=2)
    t0 = time.perf_counter()
    [runs["tp2"]] = run_jobs([job], plugin=True, log=out / "tp2.log", timeout=600,
                             env={"VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_HOST_IP": "127.0.0.1"})
    TIMINGS["vllm_tp2_s"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(runs))
    return runs


_REF: dict[str, object] = {}


@pytest.fixture(scope="session")
def reference(family, the_prompts):
    def get(case: Case):
        if case.name not in _REF:
            t0 = time.perf_counter()
            _REF[case.name] = run_reference(case, family, the_prompts, MAX_TOKENS)
            TIMINGS["reference_s"] = TIMINGS.get("reference_s", 0.0) + time.perf_counter() - t0
        return _REF[case.name]
    return get


def _get(runs, mode, case):
    return from_vllm(runs[mode][case.name])


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", [c for c in CASES if c.drafter is None], ids=lambda c: c.name)
def test_target_only_matches_reference(vllm_runs, reference, case):
    assert _get(vllm_runs, "native", case).outputs == reference(case).outputs


@pytest.mark.parametrize("case", SPEC_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", ["native", "plugin"])
def test_greedy_output_is_target_only(vllm_runs, case, mode):
    """Lossless: speculative greedy output == target-only greedy output, both paths."""
    none = next((c for c in CASES if c.drafter is None and c.target == case.target), None)
    got = _get(vllm_runs, mode, case)
    if case.max_model_len == 256:
        assert got.outputs == _get(vllm_runs, "native", none).outputs
    else:   # max_model_len cut: same prefix as the target-only run, at most max_model_len in all
        full = _get(vllm_runs, "native", CASES[0]).outputs
        for out, ref, p in zip(got.outputs, full, prompts()):
            assert len(p) + len(out) <= case.max_model_len
            assert out == ref[: len(out)]
            assert len(out) == min(len(ref), case.max_model_len - len(p))


@pytest.mark.parametrize("case", SPEC_CASES, ids=lambda c: c.name)
def test_plugin_equals_native(vllm_runs, case):
    """(ii) == (iii): outputs and vLLM's spec-decode counters, per position."""
    native, plugin = _get(vllm_runs, "native", case), _get(vllm_runs, "plugin", case)
    assert plugin.outputs == native.outputs
    assert plugin.metrics == native.metrics
    assert native.metrics["num_drafts"] > 0


@pytest.mark.parametrize("case", FULL_CASES, ids=lambda c: c.name)
def test_reference_equals_vllm(vllm_runs, reference, case):
    """(i) == (ii) == (iii): accepted-per-position counts; recorded drafts of (iii) == reference drafts."""
    ref, native, plugin = reference(case), _get(vllm_runs, "native", case), _get(vllm_runs, "plugin", case)
    assert ref.outputs == plugin.outputs
    assert ref.metrics == native.metrics == plugin.metrics
    n = compare_drafts(ref, plugin, case.K)
    assert n >= 4 * 3


@pytest.mark.parametrize("case", MAXLEN_CASES, ids=lambda c: c.name)
def test_reference_equals_vllm_at_max_model_len(vllm_runs, reference, case):
    """The longest request reaches max_model_len: vLLM 0.32 skips the drafter for the whole batch once
    max_seq_len + K > max_model_len (gpu_model_runner._input_fits_in_drafter) and verifies K token-0
    drafts per request instead; the reference engine does the same (max_len_policy 'vllm'), so outputs,
    counters and every recorded draft (also after the longest request has finished and drafting
    resumes) agree."""
    ref, native, plugin = reference(case), _get(vllm_runs, "native", case), _get(vllm_runs, "plugin", case)
    assert ref.drafter_skips > 0                      # the rule was exercised
    assert ref.outputs == plugin.outputs == native.outputs
    assert ref.metrics == native.metrics == plugin.metrics
    assert compare_drafts(ref, plugin, case.K) >= 4 * 3


def test_tensor_parallel_2(vllm_runs):
    """TP = 2 (heads sharded over two CPU workers, outputs all-gathered): same drafts, counters, outputs."""
    case = next(c for c in CASES if c.name == "peagle-K3")
    tp, one = from_vllm(vllm_runs["tp2"]), _get(vllm_runs, "plugin", case)
    assert tp.outputs == one.outputs
    assert tp.metrics == one.metrics
    assert tp.drafts == one.drafts and tp.drafts


def test_missing_weight_stops_startup(vllm_runs):
    """pedagle_core.formats validates the head inside vLLM: a missing tensor is an error naming it."""
    err = vllm_runs["broken"].get("error", "")
    assert "CheckpointError" in err and MISSING_TENSOR in err, err or "vLLM started with a missing weight"


def test_acceptance_is_nontrivial(vllm_runs):
    """The oracle heads get drafts right: P-EAGLE mostly at position 1, EAGLE-3 at every position."""
    m = _get(vllm_runs, "plugin", next(c for c in CASES if c.name == "peagle-K3")).metrics
    assert m["accepted_per_pos"][0] > 0.5 * m["num_drafts"]
    m = _get(vllm_runs, "plugin", next(c for c in CASES if c.name == "eagle3-K7")).metrics
    assert m["accepted_per_pos"][-1] > 0.3 * m["num_drafts"]


def test_plugin_recorded_and_native_did_not(vllm_runs):
    for case in SPEC_CASES:
        assert vllm_runs["plugin"][case.name]["plugin"] is True
        assert vllm_runs["plugin"][case.name]["drafts"], case.name
        assert vllm_runs["native"][case.name]["plugin"] is False
        assert vllm_runs["native"][case.name]["drafts"] is None


@pytest.mark.parametrize("name", RECORD_NATIVE)
def test_native_drafts_recorded_equal_plugin_drafts(vllm_runs, name):
    """Record-only mode: vLLM's own proposer serves (same outputs and counters as the native run) and its
    drafts, recorded step by step, equal the plugin's (float32)."""
    case = next(c for c in CASES if c.name == name)
    rec, native, plugin = (from_vllm(vllm_runs["native_recorded"][name]), _get(vllm_runs, "native", case),
                           _get(vllm_runs, "plugin", case))
    assert rec.outputs == native.outputs and rec.metrics == native.metrics
    assert rec.drafts == plugin.drafts and sum(map(len, rec.drafts.values())) >= 4 * 3


def test_report_timings(vllm_runs, reference):
    for case in FULL_CASES:
        reference(case)
    print("\npedagle vLLM e2e timings:", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
