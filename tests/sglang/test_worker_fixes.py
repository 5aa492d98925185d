"""Unit checks of the PEAGLE worker's start-up and per-step fixes against SGLang 0.5.23's own functions (the
engine-level checks are in test_engine_peagle*.py):

* aux capture: SGLang re-sets the target's EAGLE-3 capture layers in ``ModelRunner.init_attention_backends``
  (``configure_aux_hidden_state_capture`` from ``spec_aux_config``) after the draft worker was built; the
  worker's setting must survive that call;
* admission: under PEAGLE, ``request_slot_reserve`` (what the prefill admission budget adds per request) covers
  the prefill draft step's K-1 MASK-row scratch slots;
* sliding window: the drafter reports its window to SGLang's ``resolve_sliding_window_size``;
* per-step work: the decode draft step's bookkeeping reads B x 2K entries of ``req_to_token``, not the rows.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pedagle_backends.sglang import layout, plugin
from tiny import save_checkpoint, tiny_drafter

pytestmark = pytest.mark.sglang_versions          # part of the --sglang-cases versions subset


class _TargetModel:
    """SGLang's ``LlamaForCausalLM.set_eagle3_layers_to_capture`` semantics on a stand-in model."""

    def __init__(self, num_layers: int) -> None:
        self.config = SimpleNamespace(num_hidden_layers=num_layers)
        self.model = SimpleNamespace(layers_to_capture=[])
        self.capture_aux_hidden_states = False

    def set_eagle3_layers_to_capture(self, layer_ids=None):
        from sglang.srt.models.llama import LlamaForCausalLM

        self.pp_group = SimpleNamespace(is_last_rank=True)
        LlamaForCausalLM.set_eagle3_layers_to_capture(self, layer_ids)


def _runner_with_sglang_aux_config(ids_in_draft_config):
    from sglang.srt.model_executor.model_runner_components.spec_aux_hidden_state import SpecAuxHiddenStateConfig

    cfg = SpecAuxHiddenStateConfig(eagle_use_aux_hidden_state=True,
                                   eagle_aux_hidden_state_layer_ids=list(ids_in_draft_config))
    return SimpleNamespace(model=_TargetModel(8), spec_aux_config=cfg)


def _sglang_init_attention_backends_capture(runner):
    """What ``ModelRunner.init_attention_backends`` does first (SGLang 0.5.23)."""
    from sglang.srt.model_executor.model_runner_components.attention_backend_setup import (
        configure_aux_hidden_state_capture)

    a = runner.spec_aux_config
    configure_aux_hidden_state_capture(model=runner.model, eagle_use_aux_hidden_state=a.eagle_use_aux_hidden_state,
                                       eagle_aux_hidden_state_layer_ids=a.eagle_aux_hidden_state_layer_ids,
                                       dflash_use_aux_hidden_state=False, dflash_target_layer_ids=None,
                                       is_dspark=False)


def test_target_capture_survives_sglangs_later_configuration():
    from pedagle_backends.sglang.worker import captured_layers, check_target_capture, configure_target_capture

    runner = _runner_with_sglang_aux_config([2, 4, 5])          # tiny-code's eagle_config ids
    _sglang_init_attention_backends_capture(runner)
    assert captured_layers(runner.model) == [3, 5, 6]          # SGLang's convention, left alone
    ids = configure_target_capture(runner, (2, 4, 5))          # the draft worker's __init__
    assert ids == [2, 4, 5] and captured_layers(runner.model) == [2, 4, 5]
    _sglang_init_attention_backends_capture(runner)             # the scheduler, after the draft worker
    assert captured_layers(runner.model) == [2, 4, 5]
    check_target_capture(runner.model, ids)


def test_check_target_capture_names_the_layers():
    from pedagle_backends.sglang.worker import PEagleRuntimeError, check_target_capture

    m = _TargetModel(8)
    m.set_eagle3_layers_to_capture([2, 4, 5])
    with pytest.raises(PEagleRuntimeError, match=r"entering layers \[3, 5, 6\].*reads \[2, 4, 5\]"):
        check_target_capture(m, [2, 4, 5])


def test_aux_ids_outside_the_target_are_an_error():
    from pedagle_backends.sglang.worker import PEagleRuntimeError, configure_target_capture

    with pytest.raises(PEagleRuntimeError, match=r"aux_layer_ids \[2, 8\].*\[0, 8\)"):
        configure_target_capture(_runner_with_sglang_aux_config([1, 7]), (2, 8))


def test_request_slot_reserve_covers_the_prefill_scratch_slots(monkeypatch):
    from pedagle_backends.sglang import compat

    monkeypatch.setattr(plugin, "peagle_active", lambda sa=None: False)
    assert plugin._slot_reserve_hook(lambda **kw: 3, has_req_pool_slot=False) == 3
    monkeypatch.setattr(plugin, "peagle_active", lambda sa=None: True)
    for K, extra in ((1, 0), (4, 3), (7, 6)):
        monkeypatch.setattr(plugin, "current_k", lambda sa=None, K=K: K)
        assert plugin._slot_reserve_hook(lambda **kw: 3, has_req_pool_slot=False) == 3 + extra
        # 0.5.17's hook point is a method of PrefillAdder called with the request: (self, req)
        assert plugin._slot_reserve_hook(lambda adder, req: 0, object(), object()) == extra
    # the stock admission extra the hook wraps (0.5.23: every non-hybrid allocator's request_slot_reserve;
    # 0.5.17: PrefillAdder's Mamba gap budget) is a function of the installed SGLang
    assert callable(compat.resolve_target(compat.slot_reserve_target()))
    assert layout.prefill_scratch_slots(5) == 4


def test_drafter_reports_its_sliding_window_to_sglang(tmp_path):
    from sglang.srt.model_executor.model_runner_components.load_model_utils import resolve_sliding_window_size

    from pedagle_backends.sglang.model import PedagleSglangDrafter

    windowed = PedagleSglangDrafter(config=None, checkpoint=save_checkpoint(tiny_drafter(window=4), tmp_path / "w"))
    full = PedagleSglangDrafter(config=None, checkpoint=save_checkpoint(tiny_drafter(window=None), tmp_path / "f"))
    mc = SimpleNamespace(is_hybrid_swa=False, sliding_window_size=None, attention_chunk_size=None)
    assert resolve_sliding_window_size(windowed, mc) == 3        # pedagle window 4 = SGLang's 3 (keys >= p - 3)
    assert [a.sliding_window_size for a in windowed.attn.layers] == [-1, 3]
    assert resolve_sliding_window_size(full, mc) is None


def test_decode_step_reads_no_req_to_token_rows():
    """The decode draft step's bookkeeping (layout + expansion) touches B x 2K entries of req_to_token."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pedagle_backends.sglang.drafting import plan_step

    B, K, ctx = 3, 4, 4096
    rtt = torch.arange(8 * ctx, dtype=torch.int32).view(8, ctx)
    req = torch.tensor([1, 5, 2])
    seq = torch.tensor([10, 300, 77])
    step = layout.decode_step_input(torch.tensor([3, 4, 5]), torch.randint(0, 90, (B, K)), seq,
                                    torch.tensor([1, 3, 5]), torch.tensor([6, 7, 8]), torch.randn(B * (K + 1), 12))

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            flat = list(args) + list((kwargs or {}).values())
            if any(a is rtt or (isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() ==
                                rtt.untyped_storage().data_ptr()) for a in flat if isinstance(a, torch.Tensor)):
                if isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() != rtt.untyped_storage().data_ptr():
                    self.elements += out.numel()
            return out

    with Reads() as reads:
        lay = layout.decode_extend_layout(rtt, req, seq, K)
        plan = plan_step(step, K, 1)
    assert reads.elements <= B * 2 * K, reads.elements               # not B x context (12288 here)
    assert lay.out_cache_loc.numel() == B * 2 * K and plan.expanded.num_rows == B * (K + 1) + B * (K - 1)


def test_a_target_weight_packed_for_amx_is_not_shared():
    """SGLang's AMX CPU path repacks a linear layer's weight in place (same shape, other element order) and marks the
    layer ``use_intel_amx_backend``; the worker refuses to hand such a weight to pedagle's drafter."""
    from pedagle_backends.sglang.worker import PEagleRuntimeError, check_shareable

    check_shareable(SimpleNamespace(weight=torch.zeros(4, 4), use_intel_amx_backend=False), "lm_head")
    check_shareable(SimpleNamespace(weight=torch.zeros(4, 4)), "lm_head")          # never packed
    check_shareable(None, "embed_tokens")                                            # nothing to share
    with pytest.raises(PEagleRuntimeError, match="lm_head is packed for SGLang's AMX CPU kernels.*lm_head.weight"):
        check_shareable(SimpleNamespace(weight=torch.zeros(4, 4), use_intel_amx_backend=True), "lm_head")
