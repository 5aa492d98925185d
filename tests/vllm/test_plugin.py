"""The plugin's installation contract: entry points, version check, idempotent all-or-nothing registration,
recorder off by default, proposer hook idempotent."""

from __future__ import annotations

import importlib.metadata as md
import os

import pytest

from pedagle_backends.vllm import SUPPORTED_VLLM, plugin


def test_entry_points_declared():
    eps = {ep.name: ep.value for ep in md.entry_points(group="vllm.general_plugins")}
    assert eps.get("pedagle") == "pedagle_backends.vllm.plugin:register"
    backends = {ep.name: ep.value for ep in md.entry_points(group="pedagle.backends")}
    assert backends.get("vllm") == "pedagle_backends.vllm.backend:VllmBackend"


@pytest.mark.parametrize("version, ok", [("0.32.0", True), ("0.32.3+cpu", True), ("0.32.0rc1", True), ("0.26.0", True),
                                         ("0.26.0+cpu", True), ("0.29.1", True), ("0.25.9", False), ("0.33.0", False),
                                         ("0.16.0", False), ("1.0.0", False)])
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
