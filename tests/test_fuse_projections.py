"""`Drafter.fuse_projections`: q/k/v and gate/up in one product each (an inference option backends use)."""

from __future__ import annotations

import pytest
import torch

from pedagle_core import Drafter, DrafterConfig
from pedagle_core.attention import ContiguousKVCache
from pedagle_core.draft import StepInput, draft_parallel


def _drafter(bias: bool) -> Drafter:
    torch.manual_seed(0)
    cfg = DrafterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48, vocab_size=40, target_hidden_size=16, mask_token_id=39,
                        parallel_depth=4, attention_bias=bias, mlp_bias=bias)
    d = Drafter(cfg)
    with torch.no_grad():
        for n, p in d.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.3)
    return d


def _draft(d: Drafter):
    T = 9
    g = torch.Generator().manual_seed(3)
    step = StepInput(torch.randint(0, 39, (T,), generator=g), torch.arange(T), torch.tensor([0, T]), None,
                     torch.tensor([5]), torch.randn(T, 48, generator=g))
    cache = ContiguousKVCache(2, 1, 32, 2, 8, dtype=torch.float32).for_requests(torch.tensor([0]))
    return draft_parallel(d, step, 4, cache, temperature=1.0, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bias", [False, True])
def test_fused_projections_draft_the_same(bias):
    d = _drafter(bias)
    keys = list(d.state_dict())
    want = _draft(d)
    calls = []

    def linear(w, b):
        calls.append(tuple(w.shape))
        return lambda x: torch.nn.functional.linear(x, w, b)

    d.fuse_projections(linear)
    assert calls == [(64, 64), (96, 32), (64, 32), (96, 32)]          # per layer: qkv (layer 0 takes 2H), gate_up
    assert list(d.state_dict()) == keys                              # the fused weights are not parameters
    got = _draft(d)
    torch.testing.assert_close(got.probs, want.probs, rtol=1e-5, atol=1e-6)
    d.fuse_projections()                                             # default: torch's F.linear
    torch.testing.assert_close(_draft(d).probs, want.probs, rtol=1e-5, atol=1e-6)


def test_fuse_projections_rejects_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        _drafter(False).fuse_projections(lambda w, b: torch.nn.Linear(1, 1))
