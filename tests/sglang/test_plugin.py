"""The PEAGLE plugin against the installed SGLang's (0.5.17-0.5.23) real plugin loader, speculative-algorithm
registry and hooks."""

from __future__ import annotations

from importlib import metadata
from types import SimpleNamespace

import pytest

from pedagle_backends.sglang import ALGORITHM, SUPPORTED_SGLANG, plugin

pytestmark = pytest.mark.sglang_versions          # part of the --sglang-cases versions subset


@pytest.fixture(scope="module")
def loaded():
    """SGLang's own entry-point discovery (what every SGLang process runs at start)."""
    from sglang.srt.plugins import load_plugins

    load_plugins()
    return True


def test_entry_points_declared():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="sglang.srt.plugins")}
    assert eps.get("pedagle") == "pedagle_backends.sglang.plugin:register"
    backends = {ep.name: ep.value for ep in metadata.entry_points(group="pedagle.backends")}
    assert backends.get("sglang") == "pedagle_backends.sglang.backend:SglangBackend"


@pytest.mark.parametrize("version, ok", [("0.5.23", True), ("0.5.23.post1", True), ("0.5.22", True),
                                         ("0.5.17", True), ("0.5.16", False), ("0.5.24", False), ("0.6.0", False)])
def test_version_range(version, ok):
    from pedagle_core.versions import version_in_range

    assert version_in_range(version, SUPPORTED_SGLANG) is ok
    if not ok:
        with pytest.raises(plugin.UnsupportedSglangVersion, match="sglang>=0.5.17,<0.5.24"):
            plugin.check_version(version)


def test_installed_sglang_is_supported():
    assert plugin.check_version() == metadata.version("sglang")


def test_registered_through_entry_point(loaded):
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from pedagle_backends.sglang.spec_algo import PEagleSpecAlgo

    assert plugin.is_registered()
    algo = SpeculativeAlgorithm.from_string("PEAGLE")
    assert isinstance(algo, PEagleSpecAlgo)
    assert SpeculativeAlgorithm.from_string("peagle") is algo          # SGLang upper-cases names
    assert algo.name == ALGORITHM and algo.is_eagle() and algo.is_eagle3() and algo.is_speculative()
    assert algo.supports_overlap                  # SGLang's overlap scheduler may run it (its default)


def test_register_is_idempotent(loaded):
    from sglang.srt.plugins import load_plugins
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    algo = SpeculativeAlgorithm.from_string("PEAGLE")
    plugin.register()
    plugin.register()
    load_plugins()
    assert SpeculativeAlgorithm.from_string("PEAGLE") is algo
    # SGLang itself refuses a second registration of the name: the plugin's once-guard is what keeps
    # repeated plugin loading harmless.
    with pytest.raises(ValueError, match="already registered"):
        SpeculativeAlgorithm.register(ALGORITHM)(lambda sa: None)


def test_unsupported_version_registers_nothing(loaded, monkeypatch):
    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.setattr(plugin, "sglang_version", lambda: "0.6.0")
    with pytest.raises(plugin.UnsupportedSglangVersion):
        plugin.register()
    assert plugin._registered is False


def test_spec_class_conforms_to_sglang():
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
    from sglang.srt.speculative.spec_registry import CustomSpecAlgo, _assert_custom_spec_algo_conforms

    from pedagle_backends.sglang.spec_algo import PEagleSpecAlgo

    _assert_custom_spec_algo_conforms(PEagleSpecAlgo)                  # SGLang's own check
    # every method the enum offers the scheduler exists on the spec class (the bare CustomSpecAlgo lacks some)
    enum_methods = {n for n, v in vars(SpeculativeAlgorithm).items()
                    if callable(v) and not n.startswith("_") and n not in ("from_string", "register")}
    assert enum_methods - set(dir(PEagleSpecAlgo)) == set()
    missing_on_bare = {"carries_draft_hidden_states", "create_future_map", "need_topk"} - set(dir(CustomSpecAlgo))
    assert missing_on_bare == {"carries_draft_hidden_states", "create_future_map", "need_topk"}


def test_scheduler_called_methods(loaded):
    """The methods SGLang's scheduler calls at start (init_disaggregation, init_overlap, FutureMap)."""
    import torch
    from sglang.srt.managers.overlap_utils import FutureMap
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    algo = SpeculativeAlgorithm.from_string("PEAGLE")
    assert algo.carries_draft_hidden_states() is False
    assert algo.need_topk() is True and algo.has_draft_kv() is True
    assert algo.supports_mixed_chunk() is False and algo.get_platform_worker_cls() is None
    assert algo.get_num_tokens_per_req_for_target_verify(5, False) == 5
    pool = ReqToTokenPool(size=4, max_context_len=32, device="cpu", enable_memory_saver=False)
    fm = algo.create_future_map(torch.device("cpu"), pool)
    assert isinstance(fm, FutureMap)


def test_future_map_relays_peagle_draft_inputs(loaded, monkeypatch):
    """The overlap scheduler's relay through SGLang's own entry points (``RelayPayload.from_draft_input``,
    ``FutureMap.stash``, ``resolve_forward_inputs``): PEAGLE's [B, K] drafts and bonus tokens stashed by request-pool
    row after one forward come back, by row, for a later batch of other rows and order; no hidden-state buffer."""
    import types

    import torch
    from sglang.srt.managers.overlap_utils import RelayPayload, resolve_forward_inputs
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode
    from sglang.srt.speculative.eagle_info import EagleDraftInput
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from sglang.srt.speculative import spec_utils

    # what SGLang answers for an EAGLE-3-family algorithm in a running engine (it reads the published spec config)
    monkeypatch.setattr(spec_utils, "spec_need_hidden_states", lambda: True)
    algo = SpeculativeAlgorithm.from_string("PEAGLE")
    K = 5
    fm = algo.create_future_map(torch.device("cpu"), ReqToTokenPool(size=8, max_context_len=32, device="cpu",
                                                                    enable_memory_saver=False))

    def stash(rows, drafts, bonus):
        di = EagleDraftInput(topk_p=torch.ones((len(rows), K)), topk_index=torch.tensor(drafts),
                             hidden_states=None, bonus_tokens=torch.tensor(bonus), num_tokens_per_req=1,
                             num_tokens_for_logprob_per_req=1, capture_hidden_mode=CaptureHiddenMode.NULL)
        fm.stash(torch.tensor(rows), RelayPayload.from_draft_input(di))

    stash([3, 1], [[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]], [7, 8])          # a prefill's draft step
    stash([5], [[30, 31, 32, 33, 34]], [9])                                       # another request's
    stash([1], [[40, 41, 42, 43, 44]], [6])                                       # row 1's next decode step
    assert tuple(fm.topk_index_buf.shape) == (fm.req_pool_size, K) and getattr(fm, "hidden_states_buf", None) is None
    nxt = EagleDraftInput(capture_hidden_mode=CaptureHiddenMode.NULL)
    nxt.future_indices = torch.tensor([5, 1, 3])
    batch = types.SimpleNamespace(prefill_input_ids_cpu=None, input_ids=None, enable_overlap=True,
                                  spec_algorithm=algo, spec_info=nxt, req_pool_indices=nxt.future_indices)
    resolve_forward_inputs(batch, fm)
    assert nxt.topk_index.tolist() == [[30, 31, 32, 33, 34], [40, 41, 42, 43, 44], [10, 11, 12, 13, 14]]
    assert nxt.bonus_tokens.tolist() == [9, 6, 7] and nxt.topk_p.tolist() == [[1.0] * K] * 3
    assert batch.input_ids is None                  # spec decoding: the verify builds the input ids itself
    # on CUDA the resolve step is SGLang's own (its fused Triton gather), untouched
    from sglang.srt.managers.overlap_utils import FutureMap

    seen = []
    monkeypatch.setattr(FutureMap, "_resolve_spec_extras", lambda self, b: seen.append(b))
    fm.device = torch.device("cuda")
    fm._resolve_spec_extras(batch)
    assert seen == [batch]


def test_factory_returns_the_worker_class(loaded):
    from sglang.srt.speculative.eagle_worker_v2 import EAGLEWorkerV2

    from pedagle_backends.sglang.worker import PEagleWorkerV2

    assert plugin._worker_factory(None) is PEagleWorkerV2
    assert issubclass(PEagleWorkerV2, EAGLEWorkerV2)


def test_hooks_applied_by_load_plugins(loaded):
    from sglang.srt.mem_cache import allocation_sizing
    from sglang.srt.plugins.hook_registry import HookRegistry

    assert set(plugin.hook_targets().values()) <= HookRegistry._patched
    assert allocation_sizing.get_alloc_len_per_decode is not None


def test_alloc_hooks_widen_only_under_peagle(monkeypatch):
    monkeypatch.setattr(plugin, "peagle_active", lambda sa=None: False)
    assert plugin._alloc_len_hook(lambda: 5) == 5
    monkeypatch.setattr(plugin, "peagle_active", lambda sa=None: True)
    monkeypatch.setattr(plugin, "current_k", lambda sa=None: 4)
    assert plugin._alloc_len_hook(lambda: 5) == 8                      # 2K slots per decode step
    assert plugin._alloc_len_hook(lambda: 11) == 11


def test_draft_arch_hook_only_for_peagle_drafts():
    from sglang.srt.models.registry import ModelRegistry

    from pedagle_backends.sglang.model import ARCHITECTURE, PedagleSglangDrafter

    def mc(algo, draft):
        return SimpleNamespace(is_draft_model=draft, speculative_algorithm=algo,
                               hf_config=SimpleNamespace(architectures=["LlamaForCausalLM"]))

    for algo, draft in (("EAGLE3", True), ("PEAGLE", False), (None, True)):
        m = mc(algo, draft)
        plugin._draft_arch_hook(None, m)
        assert m.hf_config.architectures == ["LlamaForCausalLM"]
    m = mc("peagle", True)
    plugin._draft_arch_hook(None, m)
    assert m.hf_config.architectures == [ARCHITECTURE]
    assert m.hf_config.pedagle_original_architectures == ["LlamaForCausalLM"]
    assert ModelRegistry.models[ARCHITECTURE] is PedagleSglangDrafter


def test_backend_info_and_install(loaded):
    from pedagle_core.registry import backend_infos, get_backend, get_plugin_manager

    from pedagle_backends.sglang.backend import SglangBackend

    pm = get_plugin_manager()
    b = get_backend(pm, "sglang")
    assert isinstance(b, SglangBackend)
    info = {i["name"]: i for i in backend_infos(pm)}["sglang"]
    assert info["version"] == metadata.version("sglang")
    import torch

    from pedagle_backends.sglang import cpu

    cpu_ok, cpu_reason = cpu.engine_status()
    if torch.cuda.is_available() or cpu_ok:
        assert info["available"] is True and info["reason"] == ""
    else:                                      # no engine here: the reason names both ways to get one
        assert info["available"] is False and "CUDA" in info["reason"] and cpu_reason in info["reason"]
    assert b.pedagle_install({}) is True and b.pedagle_install({}) is True
    assert b.pedagle_run_case("reference", {}) is None
    with pytest.raises(ValueError, match="parallel"):
        b.run_case("t", "d", [[1, 2]], K=3, mode="autoregressive")
