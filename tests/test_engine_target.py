"""The reference engine's target wrapper against plain transformers, for every supported family."""

import pytest
import torch

from helpers_models import FAMILIES, fast_cpu, tiny_target  # noqa: F401 (fixture)
from pedagle_core.engine.engine import SpecEngine
from pedagle_core.engine.target import EngineError, TargetModel, default_aux_layer_ids

pytestmark = pytest.mark.usefixtures("fast_cpu")

AUX = (1, 2, 3)


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_target(request.param, seed=3)


def _rows(seqs, lo, hi):
    ids = torch.cat([s[a:b] for s, a, b in zip(seqs, lo, hi)])
    pos = torch.cat([torch.arange(a, b) for a, b in zip(lo, hi)])
    req = torch.cat([torch.full((b - a,), i) for i, (a, b) in enumerate(zip(lo, hi))])
    return ids, pos, req


def test_flat_batch_forward_matches_hf(family_model):
    """Two flat steps over the static cache (a partial prefill, then the rest) == HF forward without a
    cache: logits and aux states (== output_hidden_states[i]) for every row of every request. Prompts
    are longer than the sliding windows (4 / 5), so the window and (GPT-OSS) sink paths matter."""
    fam, model = family_model
    tm = TargetModel(model, aux_layer_ids=AUX)
    tm.allocate(max_batch=4, max_seq_len=24)
    g = torch.Generator().manual_seed(0)
    lens, split = [11, 6, 14], [4, 1, 9]
    seqs = [torch.randint(0, tm.vocab_size, (n,), generator=g) for n in lens]
    rows = torch.tensor([3, 0, 1])                       # cache rows need not be 0..B-1
    tm.forward(*_rows(seqs, [0] * 3, split), rows)
    ids, pos, req = _rows(seqs, split, lens)
    logits, aux = tm.forward(ids, pos, req, rows)
    for i, s in enumerate(seqs):
        ref = model(s[None], output_hidden_states=True)
        torch.testing.assert_close(logits[req == i], ref.logits[0, split[i]:], atol=1e-10, rtol=0)
        ref_aux = torch.cat([ref.hidden_states[j][0] for j in AUX], -1)[split[i]:]
        torch.testing.assert_close(aux[req == i], ref_aux, atol=1e-10, rtol=0)
    assert model.config._attn_implementation in ("sdpa", "eager")      # restored after our forward


def test_none_mode_equals_hf_generate(family_model):
    """Engine mode 'none' (target only, the same step code) == HF greedy generate, batch of 3."""
    fam, model = family_model
    prompts = [[5, 6, 7, 8, 9, 10], [3, 4], [11, 12, 13, 14, 15, 16, 17, 18, 19]]
    ref = [model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    eng = SpecEngine(TargetModel(model, aux_layer_ids=AUX), None, mode="none", max_batch=3)
    res = eng.generate(prompts, max_new_tokens=12, eos_token_ids=())
    assert res.output_ids == ref
    assert res.metrics.steps == 12 and res.metrics.num_drafts == 0


def test_aux_layer_ids():
    model = tiny_target("llama", num_layers=8)
    assert default_aux_layer_ids(8) == (2, 4, 5)
    assert default_aux_layer_ids(4) == (1, 2)                 # (2, 2, 1) sorted and de-duplicated
    assert TargetModel(model).aux_layer_ids == (2, 4, 5)
    assert TargetModel(model, aux_layer_ids=[5, 2, 2, 7]).aux_layer_ids == (2, 5, 7)
    with pytest.raises(EngineError, match=r"outside \[0, 8\)"):
        TargetModel(model, aux_layer_ids=(2, 8))
