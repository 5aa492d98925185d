"""Greedy speculative decoding at the bundled models' dtype (bf16): every output equals target-only output
except at near-ties of the target's own logits, and the batch-invariant target makes it bitwise equal.

The target's bf16 logits depend a little on the shape of the forward (a verify step has K+1 rows, target-only
decoding one), so at a near-tie of the target's top-2 the greedy choice can flip: both texts are the target's
to within bf16 rounding. Any other divergence (a token the float32 target ranks more than the tie margin below
its best) is a real losslessness bug and fails here. See `pedagle_core.engine.lossless`.
"""

from __future__ import annotations

import os

import pytest
import torch

from pedagle_core.engine.lossless import TIE_MARGINS, classify, first_divergence, near_tie_margin, run_grid, ulp
from pedagle_core.engine.target import load_hf_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "models", "tiny-code")
TARGET = os.path.join(TINY, "target")
DRAFTERS = {"parallel": os.path.join(TINY, "peagle"), "autoregressive": os.path.join(TINY, "eagle3")}
CONFIGS = [("parallel", 5), ("autoregressive", 3)]
MAX_NEW = 32


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TARGET)
    texts = ["lambda x: ", "def add(a, b):", "class Stack:\n    def __init__(self):", "import os\n\nfor name in "]
    return [tok(t)["input_ids"] for t in texts]


@pytest.fixture(scope="module")
def f32():
    return load_hf_target(TARGET, dtype="float32")


def test_near_tie_margin_is_at_least_two_ulps_at_the_logit_magnitude():
    """bf16 stores a logit of 16..32 to 0.125: a one-ulp flip there must not be called a failure, while small
    logits keep the conformance suite's fixed margin; without a dtype the margin is the given one."""
    assert ulp("bfloat16", 20.0) == 0.125 and ulp("bfloat16", 1.5) == 2 ** -7 and ulp("float32", 1.0) == 2 ** -23
    assert near_tie_margin(0.1, "bfloat16", 20.0) == 0.25                 # 2 ulps > 0.1
    assert near_tie_margin(0.1, "bfloat16", 3.0) == 0.1                   # 2 ulps = 0.03 < 0.1
    assert near_tie_margin(0.1, None, 1000.0) == 0.1
    assert near_tie_margin(1e-4, "float32", 30.0) == 1e-4                 # float32: 2 ulps = 3.8e-6


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 2]) is None             # cut short (EOS, a limit): not a divergence
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([4], [5]) == 0


def test_classify_flags_a_token_the_target_would_not_choose(f32, prompts):
    """The failure path: replace one greedy token by the float32 target's 10th choice -> a failure with the
    right position and gap; the float32 runner-up at a clear position is a failure too, and equal outputs
    give None."""
    p = prompts[1]
    ids = list(p)
    ref = []
    for _ in range(6):                                   # float32 greedy continuation
        with torch.no_grad():
            lg = f32(input_ids=torch.tensor([ids])).logits[0, -1].double()
        ref.append(int(lg.argmax()))
        ids.append(ref[-1])
    assert classify(f32, p, ref, ref, TIE_MARGINS["bfloat16"]) is None
    with torch.no_grad():
        lg = f32(input_ids=torch.tensor([list(p) + ref[:3]])).logits[0, -1].double()
    order = torch.argsort(lg, descending=True)
    bad = ref[:3] + [int(order[9])] + ref[4:]
    d = classify(f32, p, ref, bad, TIE_MARGINS["bfloat16"], prompt_index=7, mode="parallel", K=5)
    assert d is not None and (d.position, d.ref_token, d.got_token, d.prompt, d.K) == (3, ref[3], int(order[9]), 7, 5)
    assert d.f32_top1 == ref[3]
    assert d.gap == pytest.approx(float(lg[order[0]] - lg[order[9]]))
    assert not d.near_tie and "FAILURE" in d.describe()
    # a tie margin above that gap makes the same divergence a near-tie (the rule is the margin, nothing else)
    assert classify(f32, p, ref, bad, d.gap + 1e-6).near_tie


def test_bf16_outputs_equal_target_only_except_at_near_ties(prompts, f32):
    res = run_grid(TARGET, DRAFTERS, prompts, CONFIGS, dtype="bfloat16", max_new_tokens=MAX_NEW, batch_size=4,
                   model_f32=f32)
    assert res.dtype == "bfloat16" and res.tie == TIE_MARGINS["bfloat16"]
    assert res.outputs_compared == len(prompts) * len(CONFIGS)
    assert all(len(o) == MAX_NEW for o in res.reference_outputs)
    failures = [d.describe() for d in res.failures]
    assert not failures, "greedy speculative output left the target's choice beyond a near-tie:\n" + "\n".join(failures)
    for d in res.divergences:                       # what a near-tie is: both choices within the tie margin
        assert d.tie >= res.tie and d.gap < d.tie and d.f32_margin <= d.gap + 1e-9


def test_batch_invariant_target_is_bitwise_target_only(prompts, f32):
    """With the batch-invariant target (attention one row at a time over exactly its keys) every bf16
    output equals target-only output token for token, and target-only output does not depend on the
    batch size."""
    two = prompts[:2]                                # kept small: the row-at-a-time attention is slow
    res = run_grid(TARGET, DRAFTERS, two, [("parallel", 5)], dtype="bfloat16", max_new_tokens=MAX_NEW, batch_size=2,
                   batch_invariant=True, model_f32=f32)
    assert res.outputs_compared == 2
    assert [d.describe() for d in res.divergences] == []
    single = run_grid(TARGET, DRAFTERS, two, [], dtype="bfloat16", max_new_tokens=MAX_NEW, batch_size=1,
                      batch_invariant=True, model_f32=f32)
    assert single.reference_outputs == res.reference_outputs
