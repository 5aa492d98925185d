"""Speculative rejection sampling keeps the target's distribution.

Statistical tests use Pearson's chi-square with cells of expected count < 5 pooled, at significance
ALPHA = 1e-3: with a fresh random seed each would fail wrongly about once in a thousand runs. The
seeds are fixed, so the suite is deterministic.
"""

import math

import pytest
import torch

from helpers_models import bigram_target, fast_cpu, oracle_drafter  # noqa: F401
from pedagle_core.engine.engine import SpecEngine
from pedagle_core.engine.verify import SamplingParams, target_probs, verify_sampling

pytestmark = pytest.mark.usefixtures("fast_cpu")
ALPHA_Z = 3.090                                      # upper 1e-3 quantile of N(0, 1)


def chi2_ok(counts: torch.Tensor, probs: torch.Tensor) -> tuple[bool, float, float]:
    """Pearson chi-square goodness of fit at ALPHA (Wilson-Hilferty quantile). Returns (ok, stat, critical)."""
    counts, probs = counts.double().flatten(), probs.double().flatten()
    n = counts.sum()
    exp = probs * n
    assert bool((counts[exp == 0] == 0).all()), "a sample fell where the target has zero probability"
    big = exp >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    ex = torch.cat([exp[big], exp[~big].sum()[None]])
    keep = ex > 0
    obs, ex = obs[keep], ex[keep]
    stat = float(((obs - ex) ** 2 / ex).sum())
    df = max(int(keep.sum()) - 1, 1)
    crit = df * (1 - 2 / (9 * df) + ALPHA_Z * math.sqrt(2 / (9 * df))) ** 3
    return stat < crit, stat, crit


# --------------------------------------------------------------------------------------- unit level
def test_target_probs_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    p = target_probs(logits, SamplingParams(temperature=0.5))
    torch.testing.assert_close(p, torch.softmax(logits / 0.5, -1))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (p[0, 2:] == 0).all() and torch.allclose(p[0, :2], torch.softmax(logits[0, :2], -1))
    full = torch.softmax(logits, -1)[0]                       # 0.55, 0.20, 0.12, 0.07, 0.03
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert (p[0] > 0).tolist() == [True, True, False, False, False]           # 0.55 < 0.7 <= 0.75
    torch.testing.assert_close(p[0, :2], full[:2] / full[:2].sum())
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.5))
    assert (p[0] > 0).tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("draft_kind", ["greedy", "sampled"])
def test_rejection_sampling_unit(draft_kind):
    """First token ~ p_0; given the first token equals draft 1, the second ~ p_1 (exact speculative
    sampling), for greedy drafts (q one-hot) and drafts sampled from q."""
    V, k, N = 6, 2, 12000
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(k + 1, V, generator=g, dtype=torch.float64) * 1.5
    params = SamplingParams(temperature=1.0)
    p = target_probs(logits, params)
    q = torch.softmax(torch.randn(k, V, generator=g, dtype=torch.float64) * 1.5, -1)
    gen = torch.Generator().manual_seed(1)
    first, second = torch.zeros(V), torch.zeros(V)
    d_greedy = q.argmax(-1)
    for _ in range(N):
        if draft_kind == "greedy":
            drafts, probs = d_greedy, None
        else:
            drafts, probs = torch.multinomial(q, 1, generator=gen).view(-1), q
        v = verify_sampling(logits, drafts, torch.ones(k, dtype=torch.bool), params, gen, probs)
        first[v.tokens[0]] += 1
        if len(v.tokens) > 1 and v.tokens[0] == int(drafts[0]):
            second[v.tokens[1]] += 1
    ok, stat, crit = chi2_ok(first, p[0])
    assert ok, (stat, crit)
    if draft_kind == "greedy":                       # row 1 was scored after draft 1: p_1 is its conditional
        ok, stat, crit = chi2_ok(second, p[1])
        assert ok, (stat, crit)


def test_invalid_draft_is_rejected_and_residual_is_p():
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    params = SamplingParams(temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(3000):
        v = verify_sampling(logits, torch.tensor([7]), torch.tensor([False]), params, gen)
        assert v.accepted == 0
        counts[v.tokens[0]] += 1
    assert chi2_ok(counts, target_probs(logits, params)[0])[0]


# --------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def small_vocab_pair():
    model, succ = bigram_target("llama", seed=4, vocab_size=16, layer_scale=0.3)
    return model, oracle_drafter(model, succ, accuracy=0.7, seed=1)


def exact_joint(model, prompt, n, params):
    """P(x_1..x_n | prompt) over all V^n continuations, from plain HF forwards."""
    V = model.config.vocab_size
    seqs = torch.cartesian_prod(*[torch.arange(V)] * n).view(-1, n)        # [V^n, n]
    ids = torch.cat([torch.tensor(prompt).expand(seqs.shape[0], -1), seqs], 1)
    with torch.no_grad():
        logits = model(ids).logits[:, len(prompt) - 1: -1]                   # [V^n, n, V]
    p = target_probs(logits.reshape(-1, V), params).view(seqs.shape[0], n, V)
    return p.gather(-1, seqs[..., None]).squeeze(-1).prod(-1)             # [V^n]


@pytest.mark.parametrize("mode,params,draft_t", [
    ("parallel", SamplingParams(temperature=1.0), 0.0),
    ("autoregressive", SamplingParams(temperature=0.8, top_k=6, top_p=0.95), 0.0),
    ("parallel", SamplingParams(temperature=1.0), 1.0),
])
def test_speculative_sampling_distribution(small_vocab_pair, mode, params, draft_t):
    """N copies of one prompt, each request with its own generator (seed + i): the empirical law of the
    first 3 tokens (prefill sample + one speculative step, K=3) matches the target's exact law."""
    model, d = small_vocab_pair
    prompt, n, N = [3, 9, 4], 3, 1500
    eng = SpecEngine(model, d, mode=mode, K=3, max_batch=N, draft_temperature=draft_t)
    res = eng.generate([prompt] * N, max_new_tokens=n, sampling=params, seed=123, eos_token_ids=(), record=True)
    assert res.metrics.num_accepted_tokens > N // 4 and res.metrics.num_accepted_tokens < res.metrics.num_draft_tokens
    V = model.config.vocab_size
    idx = torch.tensor([sum(t * V ** (n - 1 - j) for j, t in enumerate(o)) for o in res.output_ids])
    counts = torch.bincount(idx, minlength=V ** n)
    ok, stat, crit = chi2_ok(counts, exact_joint(model, prompt, n, params))
    assert ok, (stat, crit)


def test_seeded_sampling_is_reproducible(small_vocab_pair):
    model, d = small_vocab_pair
    eng = SpecEngine(model, d, mode="parallel", K=3, max_batch=2)
    runs = [eng.generate([[3, 9, 4], [5]], 12, SamplingParams(temperature=1.0), seed=s, eos_token_ids=()).output_ids
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]
