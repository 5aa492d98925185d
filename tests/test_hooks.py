"""The pluggy backend contract and the reference backend behind it."""

import pytest
import torch

from helpers_models import fast_cpu, tiny_drafter, tiny_target  # noqa: F401
from pedagle_core import hooks, registry
from pedagle_core.draft import StepInput
from pedagle_core.engine.backend import ReferenceBackend, ReferenceState
from pedagle_core.engine.engine import SpecEngine, VerifyState

pytestmark = pytest.mark.usefixtures("fast_cpu")


def test_reference_backend_is_discovered():
    pm = registry.get_plugin_manager()
    ref = registry.get_backend(pm, "reference")
    assert isinstance(ref, ReferenceBackend)
    infos = {i["name"]: i for i in registry.backend_infos(pm)}
    info = infos["reference"]
    assert info["available"] is True and info["reason"] == ""
    assert {"parallel", "autoregressive", "greedy", "sampling", "conformance"} <= set(info["capabilities"])
    for i in infos.values():                     # every backend answers, available or not, with a reason
        assert set(i) >= {"name", "version", "capabilities", "available", "reason"}
        assert i["available"] or i["reason"]
    assert all(r is True or r is None for r in pm.hook.pedagle_install(options={}))
    with pytest.raises(KeyError, match="known backends"):
        registry.get_backend(pm, "no-such-backend")


def test_broken_entry_point_is_reported(monkeypatch):
    class EP:
        name, value, group = "broken", "nowhere.module:Backend", hooks.ENTRY_POINT_GROUP

        def load(self):
            raise ImportError("No module named 'nowhere'")

    import importlib.metadata as md

    monkeypatch.setattr(md, "entry_points", lambda group=None: [EP()] if group == hooks.ENTRY_POINT_GROUP else [])
    pm = registry.get_plugin_manager()
    infos = {i["name"]: i for i in registry.backend_infos(pm)}
    assert infos["broken"]["available"] is False and "nowhere" in infos["broken"]["reason"]
    assert infos["reference"]["available"] is True          # registered although no entry point named it


def test_step_input_and_attention_hooks_route_to_owner():
    pm = registry.get_plugin_manager(load_entry_points=False)
    model = tiny_target("llama")
    eng = SpecEngine(model, tiny_drafter(model), mode="parallel", K=3, max_batch=2, max_model_len=32)
    eng._allocate(32)
    st = VerifyState(torch.arange(6), torch.arange(6), torch.tensor([0, 4, 6]), torch.tensor([3, 1]),
                     torch.tensor([1, 0]), torch.tensor([9, 8]), torch.zeros(6, 3 * 32, dtype=torch.float64),
                     torch.tensor([0, 1]))
    si = pm.hook.pedagle_make_step_input(engine_state=ReferenceState(eng, st))
    assert isinstance(si, StepInput) and si.num_rejected.tolist() == [2, 1]
    cache = pm.hook.pedagle_attention_provider(engine_state=ReferenceState(eng, st), drafter=eng.drafter)
    assert cache.block_size == 32 and cache.max_model_len == 32 and cache.block_table.tolist() == [[0], [1]]
    assert pm.hook.pedagle_make_step_input(engine_state=object()) is None
    assert pm.hook.pedagle_attention_provider(engine_state=object(), drafter=None) is None
    assert pm.hook.pedagle_run_case(backend="someone-else", case={}) is None


@pytest.mark.parametrize("mode", ["parallel", "autoregressive"])
def test_run_case(mode, tmp_path):
    """The conformance entry: from directories, fixed steps, per-step drafts / margins / acceptance."""
    from pedagle_core.formats import save_drafter

    model = tiny_target("llama", seed=2, dtype=torch.float32)
    model.save_pretrained(tmp_path / "target")
    save_drafter(tiny_drafter(model, seed=3), tmp_path / "drafter")
    pm = registry.get_plugin_manager(load_entry_points=False)
    prompts, K, steps = [[5, 6, 7, 8], [9, 10]], 3, 4
    case = dict(target=str(tmp_path / "target"), drafter=str(tmp_path / "drafter"), prompt_ids=prompts, K=K,
                mode=mode, steps=steps, dtype="float32", device="cpu")
    out = pm.hook.pedagle_run_case(backend="reference", case=case)
    assert out["backend"] == "reference" and out["mode"] == mode
    assert len(out["drafts"]) == len(out["margins"]) == len(out["accepted"]) == steps
    for step in out["drafts"]:
        assert len(step) == 2 and all(len(d) == K for d in step)
    assert all(m >= 0 for step in out["margins"] for req in step for m in req)
    assert sum(out["accepted_per_position"]) == sum(a for step in out["accepted"] for a in step)
    assert [len(o) for o in out["output_ids"]] == [1 + sum(a + 1 for a in col) for col in zip(*out["accepted"])]
    ref = [model.generate(torch.tensor([p]), max_new_tokens=len(o), do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(p):].tolist() for p, o in zip(prompts, out["output_ids"])]
    assert out["output_ids"] == ref
