"""The conformance suite (``pedagle_conformance``): bundled cases, recording (reproducible), the runner on
the reference backend, deliberately broken backends it must catch, near-ties and re-synchronisation,
and the comparison rules on synthetic results. CPU, a few seconds per test."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _alias(name: str, path: Path) -> None:
    """Import the package at ``path`` as ``name`` (a source checkout without ``pip install -e .``)."""
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)


for _name, _dir in (("pedagle_backends", ROOT / "backends"), ("pedagle_conformance", ROOT / "conformance")):
    try:
        importlib.import_module(_name)
    except ImportError:
        _alias(_name, _dir)

from pedagle_conformance import testing  # noqa: E402
from pedagle_conformance.case import Case, discover_cases, dumps_case  # noqa: E402
from pedagle_conformance.compare import compare_e2e, compare_steps, resync_prompt  # noqa: E402
from pedagle_conformance.record import record  # noqa: E402
from pedagle_conformance.runner import plugin_manager, run_conformance  # noqa: E402
from pedagle_conformance.stepstate import load_steps  # noqa: E402

TINY_CODE = all((ROOT / "models" / "tiny-code" / m / "config.json").is_file() for m in ("target", "peagle", "eagle3"))
BROKEN = ["broken-mask=pedagle_conformance.testing:ZeroMaskHiddenBackend",
          "broken-positions=pedagle_conformance.testing:ShiftedPositionsBackend",
          "flip-ties=pedagle_conformance.testing:FlipNearTiesBackend"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)                 # tiny models; the test machine's cores are shared
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cases():
    return discover_cases()


def _by_name(cases, *names):
    return [c for c in cases if c.name in names]


# ------------------------------------------------------------------------------------------- bundled cases
def test_bundled_cases_are_recorded_and_cover_the_formats(cases):
    names = {c.name for c in cases}
    assert {"random-peagle-k3", "random-peagle-spec-k5", "random-peagle-dv-k4", "random-eagle3-ar-k3",
            "random-eagle3-spec-ar-k2", "random-qwen3-peagle-k3", "random-peagle-k1"} <= names
    if TINY_CODE:
        assert {"tiny-code-peagle-k5", "tiny-code-eagle3-ar-k3"} <= names
    formats = {c.drafter_format for c in cases}
    assert formats == {"vllm", "speculators"}
    assert {c.mode for c in cases} == {"parallel", "autoregressive"}
    for c in cases:
        if c.name.startswith("tiny-code") and not TINY_CODE:
            continue
        assert not c.missing_models(), c.name
        assert not c.stale_models(), f"{c.name}: models changed since recording; run pedagle conformance record"
        e = c.expected
        assert e is not None and e["recorded_with"]["backend"] == "reference", c.name
        S, B, K = c.steps, c.batch_size, c.K
        assert len(e["drafts"]) == S and all(len(s) == B and all(len(d) == K for d in s) for s in e["drafts"])
        assert len({len(p) for p in c.prompt_ids}) > 1, f"{c.name}: a batch mixing prompt lengths"
        assert e["min_margin"] >= 0.01, f"{c.name}: recorded drafts should keep clear of near-ties"
        assert sum(e["accepted_per_position"]) > 0, f"{c.name}: some drafts accepted"
        steps, meta = load_steps(c.step_state_path)
        assert len(steps) == S and meta["K"] == K and meta["max_model_len"] == e["max_model_len"]
        assert steps[0].num_rejected is None and all(s.num_rejected is not None for s in steps[1:])
    # heads and case files stay small
    model_bytes = sum(f.stat().st_size for f in (ROOT / "conformance" / "cases").rglob("*.safetensors")
                      if "models" in f.parts)
    assert model_bytes < 5 << 20
    for f in (ROOT / "conformance" / "cases" / "random" / "models").glob("*/model.safetensors"):
        assert f.stat().st_size < 700 << 10, f


def test_draft_vocab_and_qk_norm_heads_are_what_the_cases_say(cases):
    from pedagle_core.formats import detect_format, read_config

    for c in cases:
        if c.missing_models():
            continue
        cfg, fmt = read_config(c.drafter_path)
        assert fmt == detect_format(c.drafter_path) == c.drafter_format, c.name
        assert (cfg.mask_token_id is None) == (c.mode == "autoregressive"), c.name
    by = {c.name: c for c in cases}
    assert read_config(by["random-peagle-dv-k4"].drafter_path)[0].draft_vocab_size < \
        read_config(by["random-peagle-dv-k4"].drafter_path)[0].vocab_size
    assert read_config(by["random-qwen3-peagle-k3"].drafter_path)[0].qk_norm
    assert read_config(by["random-peagle-dv-k4"].drafter_path)[0].num_hidden_layers == 2


# ------------------------------------------------------------------------------------------- recording
def test_recording_is_reproducible_and_matches_the_committed_expectation(cases):
    picked = _by_name(cases, "random-peagle-k3", "random-eagle3-ar-k3")
    committed = {c.name: dumps_case(c) for c in picked}
    out = record(picked, check=True, write=False, log=lambda s: None)      # records twice, raises if they differ
    assert all(s["reproducible"] for s in out)
    # against the committed recording, as recordings from other environments compare: ids exactly, margins
    # within MARGIN_RTOL, versions as information (tests/test_conformance.py::test_recording_comparison_rules)
    from pedagle_conformance.record import verify

    committed_cases = [Case.from_dict(json.loads(committed[c.name]), c.path) for c in picked]
    got = verify(committed_cases, log=lambda s: None)
    assert [s["status"] for s in got] == ["matches", "matches"], got


def test_record_writes_case_and_step_state(tmp_path, cases):
    import shutil

    src = _by_name(cases, "random-peagle-k1")[0]
    shutil.copytree(src.drafter_path, tmp_path / "head")
    case = Case(name="copy", target=str(src.target_path), drafter="head",
                prompt_ids=src.prompt_ids, K=1, mode="parallel", steps=3, path=tmp_path / "copy.json")
    from pedagle_conformance.case import save_case

    save_case(case)
    from pedagle_conformance.cli import main

    assert main(["record", "--cases", str(tmp_path)]) == 0
    got = discover_cases([tmp_path])[0]
    assert got.expected is not None and got.step_state == "copy.steps.safetensors"
    assert (tmp_path / "copy.steps.safetensors").is_file()
    first = (tmp_path / "copy.json").read_text(), (tmp_path / "copy.steps.safetensors").read_bytes()
    assert main(["record", "--cases", str(tmp_path), "--check"]) == 0
    assert ((tmp_path / "copy.json").read_text(), (tmp_path / "copy.steps.safetensors").read_bytes()) == first
    rep = run_conformance(discover_cases([tmp_path]), backends=["reference"], levels=["e2e", "step-state"])
    assert [o.status for o in rep.outcomes] == ["identical", "identical"]
    cfg = tmp_path / "head" / "config.json"
    cfg.write_text(cfg.read_text() + "\n")                                  # the head changed since recording
    rep = run_conformance(discover_cases([tmp_path]), backends=["reference"], levels=["e2e", "step-state"])
    assert all(o.status == "not run" and o.reason.startswith("stale") for o in rep.outcomes)


# ------------------------------------------------------------------------------------------- runner
def test_reference_passes_every_case_at_both_levels(cases, tmp_path):
    report = run_conformance(cases, backends=["reference"], levels=["e2e", "step-state"])
    assert report.passed and report.exit_code == 0
    ran = [o for o in report.outcomes if o.status != "not run"]
    assert ran and all(o.status == "identical" for o in ran), [(o.case, o.level, o.status, o.reason) for o in ran]
    assert all(o.comparison.drafts_compared == o.comparison.drafts_compared and o.comparison.drafts_uncompared == 0
               for o in ran)


def test_unavailable_backends_are_reported_not_run_never_passed(cases):
    from pedagle_core.hooks import hookimpl

    class Gone:
        @hookimpl
        def pedagle_backend_info(self):
            return {"name": "gone", "version": "", "capabilities": [], "available": False,
                    "reason": "engine not runnable here (needs CUDA sgl_kernel)"}

    pm = plugin_manager()
    pm.register(Gone(), name="gone")
    picked = _by_name(cases, "random-peagle-k1")
    report = run_conformance(picked, backends=["gone", "missing"], levels=["e2e", "step-state"], pm=pm)
    assert all(o.status == "not run" for o in report.outcomes)
    reasons = {(o.backend, o.level): o.reason for o in report.outcomes}
    assert "needs CUDA sgl_kernel" in reasons[("gone", "e2e")]
    assert "end to end only" in reasons[("gone", "step-state")]
    assert "no backend named 'missing'" in reasons[("missing", "e2e")]
    assert report.passed and report.count("identical") == 0                   # nothing ran: nothing passed
    strict = run_conformance(picked, backends=["gone"], pm=pm, require_all=True)
    assert not strict.passed and strict.exit_code == 1


def test_vllm_step_state_says_e2e_only(cases):
    from pedagle_conformance.runner import VLLM_STEP_STATE_REASON

    pm = plugin_manager()
    if pm.get_plugin("vllm") is None:
        pytest.skip("no vllm entry point in this environment")
    report = run_conformance(_by_name(cases, "random-peagle-k1"), backends=["vllm"], levels=["step-state"], pm=pm)
    [o] = report.outcomes
    assert o.status == "not run" and (o.reason == VLLM_STEP_STATE_REASON or "vllm" in o.reason.lower())


@pytest.mark.parametrize("backend, case, where", [
    ("broken-mask", "random-peagle-k3", "step 0, request 0, position 1"),
    ("broken-positions", "random-eagle3-ar-k3", "step 1, request 1, position 1"),
])
def test_broken_backend_is_caught_by_the_cli(backend, case, where, tmp_path, capsys):
    from pedagle_core.cli import main

    js, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = main(["conformance", "run", "-q", "--backends", backend, "--case", case, "--mode", "both",
               "--json", str(js), "--report", str(md), *[a for p in BROKEN for a in ("--plugin", p)]])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"differs at {where}" in out and "FAIL" in out
    data = json.loads(js.read_text())
    assert data["passed"] is False and data["summary"]["failed"] == 2            # e2e and step-state
    for o in data["outcomes"]:
        f = o["failures"][0]
        assert f"step {f['step']}, request {f['request']}, position {f['position']}" == where
        assert f["margin"] is not None and f["margin"] >= o["tie_margin"]
    assert "## Failures" in md.read_text() and where in md.read_text()


def test_near_ties_are_classified_and_resynchronised(cases):
    """A backend that differs only where the reference margin is below eps: near-ties under a tie margin
    >= eps (listed, with the margin; PASS), failures under a smaller one. Its different acceptance
    desynchronises requests, which the runner re-synchronises from the reference's tokens."""
    picked = _by_name(cases, "random-eagle3-ar-k3", "random-peagle-k3")
    eps = testing.FlipNearTiesBackend.eps
    report = run_conformance(picked, backends=["flip-ties"], levels=["e2e", "step-state"], tie_margin=eps,
                             plugins=BROKEN)
    assert report.passed, [(o.case, o.level, o.status, o.reason) for o in report.outcomes]
    assert all(o.status == "near-ties" for o in report.outcomes)
    for o in report.outcomes:
        for m in o.comparison.near_ties:
            assert m.margin < eps and 0 <= m.step < 6 and 0 <= m.request < 4 and 0 <= m.position < 3
    e2e = [o for o in report.outcomes if o.level == "e2e"]
    assert any(o.resync_rounds >= 1 for o in e2e)
    assert any(m.round >= 1 for o in e2e for m in o.comparison.near_ties)      # compared after re-synchronising
    strict = run_conformance(picked, backends=["flip-ties"], levels=["step-state"], tie_margin=1e-4, plugins=BROKEN)
    assert not strict.passed and all(o.status == "failed" for o in strict.outcomes)
    from pedagle_conformance.report import format_markdown, format_text

    text = format_text(report)
    assert "near-ties (reference top-1/top-2 margin" in text and "PASS" in text
    assert "## Near-ties" in format_markdown(report)


# ------------------------------------------------------------------------------------------- comparison rules
def _result(drafts, accepted, outputs, margins=None):
    return {"drafts": drafts, "accepted": accepted, "output_ids": outputs,
            "margins": margins if margins is not None else [[[1.0] * len(d) for d in s] for s in drafts],
            "accepted_per_position": None}


def test_compare_e2e_rules():
    # one request, K = 2, 3 steps; emitted: prefill 10, then accepted+1 per step
    # the target's greedy text is 10 11 20 13 15 16 30: step 0 drafts 11 (ok) 12 (no), step 1 drafts 99 (no),
    # step 2 drafts 15 16 (both ok)
    exp = _result([[[11, 12]], [[99, 14]], [[15, 16]]], [[1], [0], [2]], [[10, 11, 20, 13, 15, 16, 30]],
                  margins=[[[1.0, 0.5]], [[0.00001, 1.0]], [[1.0, 1.0]]])
    same = compare_e2e(exp, exp, 2, "parallel", 1e-4)
    assert not same.mismatches and same.drafts_compared == 6 and not same.desync
    # a differing draft at a rejected position (step 0, position 1): same acceptance, stays in sync
    got = _result([[[11, 99]], [[99, 14]], [[15, 16]]], [[1], [0], [2]], exp["output_ids"])
    c = compare_e2e(exp, got, 2, "parallel", 1e-4)
    assert [(m.kind, m.step, m.position, m.near_tie) for m in c.mismatches] == [("draft", 0, 1, False)]
    assert not c.desync and c.drafts_compared == 6
    # a near-tie that changes acceptance (step 1, position 0 accepted by the backend): desync, explained
    got = _result([[[11, 12]], [[13, 14]], [[16, 7]]], [[1], [1], [0]], [[10, 11, 20, 13, 15, 16]])
    c = compare_e2e(exp, got, 2, "parallel", 1e-4)
    assert [(m.kind, m.step, m.position, m.near_tie) for m in c.mismatches] == [("draft", 1, 0, True)]
    assert c.desync == {0: 1} and c.drafts_uncompared == 2 and not c.failures
    prompt, n = resync_prompt([1, 2], exp, 0, 1)
    assert prompt == [1, 2, 10, 11, 20] and n == 3                           # the reference's state before step 2
    # same drafts, different acceptance: the verify disagrees (failure)
    got = _result([[[11, 12]], [[99, 14]], [[15, 16]]], [[0], [0], [2]], [[10, 11, 20, 13, 15, 16, 30]])
    c = compare_e2e(exp, got, 2, "parallel", 1e-4)
    assert [m.kind for m in c.failures] == ["accepted"]
    assert c.desync == {0: 0}
    # autoregressive: positions after the first difference of a step are not compared
    got = _result([[[99, 98]], [[99, 14]], [[15, 16]]], [[1], [0], [2]], exp["output_ids"])
    c = compare_e2e(exp, got, 2, "autoregressive", 1e-4)
    assert [(m.step, m.position) for m in c.mismatches] == [(0, 0)] and c.drafts_uncompared >= 1
    # a differing prefill token (the target disagrees)
    got = _result(exp["drafts"], exp["accepted"], [[9, 11, 20, 13, 15, 16, 30]])
    c = compare_e2e(exp, got, 2, "parallel", 1e-4)
    assert c.failures[0].kind == "output" and c.failures[0].step == -1
    # malformed result
    c = compare_e2e(exp, {"drafts": None, "accepted": None, "output_ids": None}, 2, "parallel", 1e-4)
    assert c.failures[0].kind == "shape"


def test_compare_steps_rules():
    exp = _result([[[1, 2, 3], [4, 5, 6]]], [[0, 0]], [[0], [0]], margins=[[[1.0, 1e-5, 1.0], [1.0, 1.0, 1.0]]])
    c = compare_steps(exp, {"drafts": [[[1, 9, 3], [4, 5, 7]]]}, 3, "parallel", 1e-4)
    assert [(m.request, m.position, m.near_tie) for m in c.mismatches] == [(0, 1, True), (1, 2, False)]
    c = compare_steps(exp, {"drafts": [[[1, 9, 8], [4, 5, 6]]]}, 3, "autoregressive", 1e-4)
    assert [(m.request, m.position) for m in c.mismatches] == [(0, 1)] and c.drafts_uncompared == 1
    c = compare_steps(exp, {"drafts": []}, 3, "parallel", 1e-4)
    assert c.failures[0].kind == "shape"


def test_recording_comparison_rules():
    import copy

    from pedagle_conformance.case import MARGIN_ATOL, MARGIN_RTOL
    from pedagle_conformance.compare import compare_recordings

    rec = {"recorded_with": {"torch": "2.13.0", "transformers": "5.23.0"}, "output_ids": [[5, 6, 7]],
           "drafts": [[[6, 8]]], "margins": [[[0.5, 0.02]]], "accepted": [[1]], "accepted_per_position": [1, 0],
           "min_margin": 0.02, "max_model_len": 64, "models": {"target": "a", "drafter": "b"}}
    assert compare_recordings(rec, copy.deepcopy(rec)).ok
    # another transformers, margins moved in the 5th significant digit: matches, the version is reported
    new = copy.deepcopy(rec)
    new["recorded_with"]["transformers"] = "5.24.0"
    new["margins"] = [[[0.50002, 0.0200013]]]
    new["min_margin"] = 0.0200013
    d = compare_recordings(rec, new)
    assert d.ok and d.versions == {"transformers": ("5.23.0", "5.24.0")} and 6e-5 < d.max_margin_rel < 7e-5
    assert "information only" in d.describe()
    # a margin beyond the tolerance
    new["margins"] = [[[0.5 * (1 + 3 * MARGIN_RTOL), 0.02]]]
    d = compare_recordings(rec, new)
    assert [x.split(":")[0] for x in d.differences] == ["expected.margins[0][0][0]"]
    # within MARGIN_ATOL of a margin near zero
    z = copy.deepcopy(rec)
    z["margins"] = [[[0.5, 0.0]]]
    z2 = copy.deepcopy(z)
    z2["margins"] = [[[0.5, MARGIN_ATOL / 2]]]
    assert compare_recordings(z, z2).ok
    # ids are exact, however small the change
    for k, v in (("drafts", [[[6, 9]]]), ("output_ids", [[5, 6, 8]]), ("accepted", [[0]]),
                 ("models", {"target": "a", "drafter": "c"})):
        bad = copy.deepcopy(rec)
        bad[k] = v
        d = compare_recordings(rec, bad)
        assert not d.ok and d.differences[0].startswith(f"expected.{k} differs"), (k, d.differences)


def test_record_verify_cli_catches_a_changed_recording(tmp_path, cases, capsys):
    import shutil

    from pedagle_conformance.case import load_case, save_case
    from pedagle_conformance.cli import main

    src = _by_name(cases, "random-peagle-k1")[0]
    for f in (src.path, src.step_state_path):
        shutil.copy(f, tmp_path / f.name)
    case = load_case(tmp_path / src.path.name)
    case.target, case.drafter = str(src.target_path), str(src.drafter_path)
    save_case(case)
    assert main(["record", "--cases", str(tmp_path), "--verify"]) == 0
    assert "OK: 1 match" in capsys.readouterr().out
    case.expected["margins"][1][0][0] *= 1.01                          # beyond MARGIN_RTOL
    case.expected["drafts"][2][0][0] += 1
    save_case(case)
    assert main(["record", "--cases", str(tmp_path), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "expected.drafts differs" in out and "expected.margins[1][0][0]" in out and "FAIL" in out
    assert main(["record", "--cases", str(tmp_path), "--verify", "--check"]) == 2


def test_tie_margins_follow_the_dtype():
    c = Case(name="x", target="t", drafter="d", prompt_ids=[[1]], K=1)
    assert c.tie() == 1e-4
    c.dtype = "bfloat16"
    assert c.tie() == 0.1
    c.tie_margin = 0.02
    assert c.tie() == 0.02 and c.tie(0.5) == 0.5


def test_replay_hook_is_in_the_backend_contract():
    from pedagle_core import hooks, registry

    assert hasattr(hooks.BackendSpec, "pedagle_replay_steps")
    pm = registry.get_plugin_manager(load_entry_points=False)
    assert pm.hook.pedagle_replay_steps(backend="reference", case={}, steps=[], max_model_len=8) is None


def test_pedagle_cli_lists_cases_and_backends(capsys):
    from pedagle_core.cli import main

    assert main(["conformance", "list"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "random-peagle-k3" in out
