"""``ServerArgs`` with ``--speculative-algorithm PEAGLE`` through SGLang's real resolution pipeline, and the
drafter ``ModelConfig`` the worker's draft runner is built from."""

from __future__ import annotations

import pytest

from tiny import save_checkpoint, save_target_config, tiny_drafter

pytestmark = pytest.mark.sglang_versions          # part of the --sglang-cases versions subset


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from sglang.srt.plugins import load_plugins

    load_plugins()
    root = tmp_path_factory.mktemp("sa")
    save_checkpoint(tiny_drafter(parallel_depth=4), root / "drafter")
    save_target_config(root / "target")
    return root


def resolved(paths, **kw):
    from sglang.srt.server_args import ServerArgs

    from pedagle_backends.sglang.compat import resolved_server_args

    sa = ServerArgs(model_path=str(paths / "target"), speculative_algorithm="peagle",
                    speculative_draft_model_path=str(paths / "drafter"), device="cpu", skip_tokenizer_init=True, **kw)
    return sa, resolved_server_args(sa)


@pytest.mark.parametrize("kw, K", [({"speculative_num_draft_tokens": 4}, 3), ({"speculative_num_steps": 2}, 2),
                                   ({"speculative_num_steps": 5, "speculative_eagle_topk": 1,
                                     "speculative_num_draft_tokens": 6}, 5),
                                   ({}, 4)])                      # neither: the drafter's parallel_depth
def test_eagle_family_defaults_filled(paths, kw, K):
    _, v = resolved(paths, **kw)
    assert v.speculative_algorithm == "PEAGLE"
    assert (v.speculative_num_steps, v.speculative_eagle_topk, v.speculative_num_draft_tokens) == (K, 1, K + 1)
    assert v.max_running_requests == 48                          # SGLang's EAGLE-family default ran too


@pytest.mark.parametrize("opt_in, kw, overlap", [
    (False, {}, False),                                  # SGLang switches overlap off for spec decoding on a CPU
    (True, {}, True),                                    # pedagle's CPU-engine opt-in keeps SGLang's default: on
    (True, {"disable_overlap_schedule": True}, False),   # the synchronous schedule when asked for
])
def test_overlap_schedule(paths, monkeypatch, opt_in, kw, overlap):
    """PEAGLE no longer switches overlap scheduling off: the user's choice (SGLang's default: on) stands, except where
    SGLang itself turns it off (speculative decoding on a CPU), which pedagle's CPU-engine opt-in undoes."""
    from pedagle_backends.sglang import cpu

    for name in (cpu.OPT_IN_ENV, cpu.SGLANG_CPU_ENV):
        if opt_in:
            monkeypatch.setenv(name, "1")
        else:
            monkeypatch.delenv(name, raising=False)
    _, v = resolved(paths, speculative_num_draft_tokens=4, **kw)
    assert v.disable_overlap_schedule is (not overlap)


@pytest.mark.parametrize("kw, match", [
    ({"speculative_eagle_topk": 4, "speculative_num_steps": 3, "speculative_num_draft_tokens": 8},
     "--speculative-eagle-topk must be 1"),
    ({"speculative_num_steps": 3, "speculative_num_draft_tokens": 8}, "must be --speculative-num-steps \\+ 1"),
    ({"speculative_num_draft_tokens": 1}, "must be >= 2"),
    ({"page_size": 16}, "page_size > 1"),
    ({"speculative_use_rejection_sampling": True}, "rejection-sampling"),
])
def test_unsupported_combinations_rejected_with_our_message(paths, kw, match):
    from pedagle_backends.sglang.spec_algo import PEagleConfigError

    with pytest.raises(PEagleConfigError, match=match):
        resolved(paths, **kw)


def test_draft_model_config_routes_to_pedagle(paths):
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader.utils import get_model_architecture

    from pedagle_backends.sglang.model import ARCHITECTURE, PedagleSglangDrafter

    sa, _ = resolved(paths, speculative_num_draft_tokens=4)
    mc = ModelConfig.from_server_args(sa, model_path=str(paths / "drafter"), is_draft_model=True)
    assert mc.hf_config.architectures == [ARCHITECTURE]
    cls, _ = get_model_architecture(mc)
    assert cls is PedagleSglangDrafter
    target = ModelConfig.from_server_args(sa)                        # the target keeps its architecture
    assert target.hf_config.architectures == ["LlamaForCausalLM"]
