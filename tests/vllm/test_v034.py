"""vLLM 0.34 (model runner V2 only, speculator registration API): what runs without a GPU or a CPU build.

Runs in the environment of ``.ci/setup_vllm034_env.sh`` (vLLM 0.34's GPU wheel beside a CPU torch; no engine
starts, no vLLM extension loads) and is collected only where V2's speculator registration exists
(conftest.py). It checks the version facts pedagle detects, the plugin's registration of the ``peagle`` method
through ``register_speculative_method``, pedagle's speculator against vLLM's ``BaseSpeculator`` /
``DraftModelSpeculator`` interfaces, and ``SpeculativeConfig``s built from the bundled checkpoints: the new
flags, the old P-EAGLE flags (translated by the plugin, refused by vLLM without it) and a speculators-format
EAGLE-3 head."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from pedagle_backends.vllm import compat, plugin

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny-code"


@pytest.fixture(scope="module")
def registered():
    plugin.register()
    return True


def test_version_facts_are_detected():
    assert plugin.version_supported(plugin.vllm_version())
    assert not compat.has_v1_runner() and not compat.has_v1_parallel_drafting()   # 0.34 removed V1 (and P-EAGLE)
    assert compat.has_v2_runner() and compat.has_speculator_registration()
    from vllm.config import VllmConfig

    assert not hasattr(VllmConfig, "use_v2_model_runner")                         # no runner choice left: V2
    assert compat.runner_in_use(VllmConfig.__new__(VllmConfig)) == "v2"
    params = compat.v2_propose_params()
    assert {"dp_sync_state", "num_speculative_tokens", "next_prefill_tokens"} <= set(params)


def test_peagle_is_registered_through_vllms_api(registered):
    from vllm.v1.worker.gpu.spec_decode.speculator_config import (SpeculatorConfig,
                                                                  get_custom_speculator_config_class,
                                                                  registered_speculative_methods)
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from pedagle_backends.vllm.v2_config import PeagleSpeculatorConfig
    from pedagle_backends.vllm.v2_speculator import PedagleSpeculator

    assert "peagle" in registered_speculative_methods()
    cls = get_custom_speculator_config_class("peagle")
    assert cls is PeagleSpeculatorConfig and issubclass(cls, SpeculatorConfig)
    assert cls.base_method == "eagle3" and cls.parallel_drafting
    assert resolve_obj_by_qualname(cls.speculator_class) is PedagleSpeculator
    plugin.register()                                     # idempotent: a second load registers nothing twice
    from vllm.v1.worker.gpu.spec_decode.speculator_config import register_speculative_method

    with pytest.raises(ValueError, match="already registered"):
        register_speculative_method("peagle", "some.other.Config")


def test_speculator_implements_vllms_interfaces():
    from vllm.v1.worker.gpu.spec_decode.speculator import BaseSpeculator, DraftModelSpeculator

    from pedagle_backends.vllm.v2_speculator import PedagleSpeculator

    assert issubclass(PedagleSpeculator, DraftModelSpeculator) and issubclass(PedagleSpeculator, BaseSpeculator)
    assert not PedagleSpeculator.__abstractmethods__
    for name in ("capture", "init_cudagraph_manager", "propose", "load_draft_model"):
        assert name in BaseSpeculator.__abstractmethods__ | DraftModelSpeculator.__abstractmethods__
        assert name in vars(PedagleSpeculator), f"{name} is not pedagle's own"
    # propose accepts every argument of vLLM's call, positionally or by name (bound through compat)
    base = [p for p in inspect.signature(BaseSpeculator.propose).parameters][1:]
    args = tuple(f"<{p}>" for p in base[:11])
    bound = compat.v2_propose_arguments(args, {"dummy_run": True, "num_speculative_tokens": 3})
    assert bound["input_batch"] == "<input_batch>" and bound["seeds"] == "<seeds>"
    assert bound["dummy_run"] is True and bound["num_speculative_tokens"] == 3 and bound["is_profile"] is False
    # the model runner builds speculators with (vllm_config, device) and maybe req_states=: pedagle takes both
    assert "kwargs" in inspect.signature(PedagleSpeculator.__init__).parameters


def test_old_flags_are_translated():
    from pedagle_backends.vllm.v2_registration import translate_peagle_flags

    old = {"method": "eagle3", "model": "D", "num_speculative_tokens": 7, "parallel_drafting": True}
    assert translate_peagle_flags(old) == {"method": "peagle", "model": "D", "num_speculative_tokens": 7}
    assert old["parallel_drafting"] is True                # the user's dict is not changed
    for keep in ({"method": "eagle3", "model": "D", "num_speculative_tokens": 3},
                 {"method": "dflash", "model": "D", "parallel_drafting": True}, None):
        assert translate_peagle_flags(keep) is keep


def _target_config(tmp_path_factory=None):
    from vllm.config import ModelConfig

    return ModelConfig(model=str(TINY / "target"), dtype="float32", max_model_len=512)


def _spec(**kwargs):
    from vllm.config import ParallelConfig, SpeculativeConfig

    return SpeculativeConfig(**kwargs, target_model_config=_target_config(), target_parallel_config=ParallelConfig())


def test_speculative_config_from_the_tiny_code_peagle_head(registered):
    from vllm import ModelRegistry

    from pedagle_backends.vllm.v2_config import PeagleSpeculatorConfig

    spec = _spec(method="peagle", model=str(TINY / "peagle"), num_speculative_tokens=7)
    assert spec.custom_method == "peagle" and spec.method == "eagle3"
    assert compat.wants_parallel_drafting(spec)
    sc = spec.speculator_config
    assert isinstance(sc, PeagleSpeculatorConfig)
    assert sc.max_num_new_slots_for_drafting == 6 and sc.uses_aux_hidden_states and sc.uses_target_hidden_states
    assert spec.max_num_new_slots_for_drafting == 6
    # the drafter vLLM will build is pedagle's (the plugin's architecture names)
    archs = spec.draft_model_config.architectures
    assert archs and all(a in plugin.ARCHITECTURES for a in archs), archs
    cls, _ = ModelRegistry.resolve_model_cls(archs, spec.draft_model_config)
    assert cls.__module__ == "pedagle_backends.vllm.model"


def test_old_p_eagle_flags_work_through_the_plugin_and_fail_without_it(registered):
    from vllm.engine.arg_utils import EngineArgs

    old = {"method": "eagle3", "model": str(TINY / "peagle"), "num_speculative_tokens": 3, "parallel_drafting": True}
    args = EngineArgs(model=str(TINY / "target"), speculative_config=dict(old))
    from vllm.config import ParallelConfig

    spec = args.create_speculative_config(_target_config(), ParallelConfig())
    assert spec.custom_method == "peagle" and spec.num_speculative_tokens == 3
    # vLLM itself (the unwrapped method) refuses the old flags: what a user without pedagle sees
    raw = EngineArgs.create_speculative_config.__wrapped__
    with pytest.raises(ValueError, match="parallel_drafting"):
        raw(EngineArgs(model=str(TINY / "target"), speculative_config=dict(old)), _target_config(), ParallelConfig())


def test_autoregressive_heads_keep_vllms_eagle3_method(registered, family):
    """An EAGLE-3 head (bundled tiny-code head, and a speculators-format export) stays on vLLM's own V2 EAGLE
    speculator, which builds pedagle's drafter class; the plugin's recorder wraps that speculator."""
    for model in (str(TINY / "eagle3"), family["eagle3_spec"]):
        spec = _spec(method="eagle3", model=model, num_speculative_tokens=3)
        assert spec.custom_method is None and not compat.wants_parallel_drafting(spec)
        assert spec.speculator_config.speculator_class.endswith("eagle.speculator.EagleSpeculator")
        assert all(a in plugin.ARCHITECTURES for a in spec.draft_model_config.architectures)


def test_speculators_p_eagle_head_is_refused_by_vllm_and_served_once_converted(registered, family, tmp_path):
    """vLLM 0.34 refuses a speculators-format P-EAGLE checkpoint while reading its config (the README's known
    limit); the same head converted to the vLLM format (`pedagle convert --to vllm`) configures as 'peagle'."""
    from pedagle_core.formats import convert

    with pytest.raises(ValueError, match="P-EAGLE"):
        _spec(method="peagle", model=family["peagle_spec"], num_speculative_tokens=3)
    out = tmp_path / "peagle_vllm"
    convert(family["peagle_spec"], out, "vllm")
    spec = _spec(method="peagle", model=str(out), num_speculative_tokens=3)
    assert spec.custom_method == "peagle" and spec.speculator_config.max_num_new_slots_for_drafting == 2


def test_refusals_name_the_replacement():
    """Where pedagle cannot serve, start-up stops with what to do (the model class calls check_served)."""
    from pedagle_backends.vllm.model import NotServedByPedagle, check_served

    with pytest.raises(NotServedByPedagle, match='"method": "peagle"'):
        check_served("v2", parallel=True)              # a P-EAGLE head built by a speculator other than pedagle's
    with pytest.raises(NotServedByPedagle, match="V1's EAGLE proposer"):
        check_served("v1", parallel=True)              # 0.34 has no V1 runner
    check_served("v2", parallel=False)                 # vLLM's V2 EAGLE speculator serves pedagle's EAGLE-3 drafter
