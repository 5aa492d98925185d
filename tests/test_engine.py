"""The reference engine: lossless greedy speculative decoding, acceptance accounting, stops, caches."""

import warnings

import pytest
import torch

from helpers_models import bigram_target, fast_cpu, oracle_drafter, tiny_drafter, tiny_target  # noqa: F401
from pedagle_core.config import DrafterConfig
from pedagle_core.engine.engine import SpecEngine, VerifyState, make_step_input
from pedagle_core.engine.target import EngineError, TargetModel
from pedagle_core.model import Drafter

pytestmark = [pytest.mark.usefixtures("fast_cpu"), pytest.mark.filterwarnings("ignore:K = .* exceeds")]

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [30]]
N_NEW = 24


def hf_greedy(model, prompts, n=N_NEW):
    return [model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(p):].tolist() for p in prompts]


def check_accounting(res, n_prompts, truncated=True):
    """accepted_per_position sums to the accepted total, and the acceptance length counts tokens: every
    verify step of a request produces accepted + 1 tokens, the prefill step one per request, so
    produced = n_prompts + num_drafts * mean_acceptance_length + num_target_only_steps. Stops
    (EOS / max_new_tokens) may cut the last step's tokens; ``truncated=False`` asserts they did not."""
    m = res.metrics
    assert sum(m.accepted_per_position) == m.num_accepted_tokens
    assert m.accepted_per_position == sorted(m.accepted_per_position, reverse=True)      # prefix acceptance
    verify = [(rec, i) for rec in res.trace if rec.step > 0 for i in range(len(rec.requests))]   # step 0: prefill
    produced = sum(rec.accepted[i] + 1 for rec, i in verify)
    emitted = sum(len(rec.emitted[i]) for rec, i in verify)
    assert produced == round(m.num_drafts * m.mean_acceptance_length) + m.num_target_only_steps
    assert m.num_output_tokens == n_prompts + emitted
    assert emitted <= produced if truncated else emitted == produced


# --------------------------------------------------------------------------------------- random pairs
@pytest.fixture(scope="module")
def random_pair():
    model = tiny_target("qwen3", seed=11)          # sliding-window layers in the target
    return model, hf_greedy(model, PROMPTS)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["parallel", "autoregressive"])
def test_lossless_greedy_random_drafter(random_pair, mode, seed):
    model, ref = random_pair
    K = [1, 4, 10][seed]
    d = tiny_drafter(model, seed=seed, num_layers=1 + seed % 2, draft_vocab_size=[None, 48, 64][seed])
    eng = SpecEngine(model, d, mode=mode, K=K, max_batch=3)        # 4 prompts: two waves
    res = eng.generate(PROMPTS, max_new_tokens=N_NEW, eos_token_ids=(), record=True)
    assert res.output_ids == ref
    check_accounting(res, len(PROMPTS))


# --------------------------------------------------------------------------------------- oracle pairs
@pytest.fixture(scope="module", params=["llama", "gpt_oss"])
def oracle_pair(request):
    model, succ = bigram_target(request.param, seed=1)
    return model, oracle_drafter(model, succ, accuracy=0.6, seed=3), hf_greedy(model, PROMPTS)


@pytest.mark.parametrize("mode,K", [("parallel", 3), ("parallel", 7), ("autoregressive", 2), ("autoregressive", 6)])
def test_lossless_greedy_with_acceptance(oracle_pair, mode, K):
    """A drafter that is often right: multi-token acceptance, partial rejections, bonus tokens."""
    model, d, ref = oracle_pair
    eng = SpecEngine(model, d, mode=mode, K=K, max_batch=4)
    res = eng.generate(PROMPTS, max_new_tokens=N_NEW, eos_token_ids=(), record=True)
    assert res.output_ids == ref
    check_accounting(res, len(PROMPTS))
    acc = [a for rec in res.trace if rec.step > 0 for a in rec.accepted]
    assert max(acc) == K and min(acc) == 0 and any(0 < a < K for a in acc)   # every kind of outcome
    assert res.metrics.mean_acceptance_length > 1.5


@pytest.mark.parametrize("policy", ["vllm", "truncate"])
@pytest.mark.parametrize("mode", ["parallel", "autoregressive", "none"])
def test_static_decode_step_equals_general_path(oracle_pair, mode, policy):
    """The fixed-shape decode step (`graphs.StaticDecodeStep`, CUDA graphs on GPU) and the general
    per-request path produce the same trace: outputs, drafts, acceptances (max_model_len 30 is reached:
    with policy 'vllm' some static steps skip their draft part)."""
    model, d, ref = oracle_pair
    traces = []
    for static in (True, False):
        eng = SpecEngine(model, d, mode=mode, K=4, max_batch=3, max_model_len=30, static_decode=static,
                         max_len_policy=policy)
        res = eng.generate(PROMPTS, N_NEW, eos_token_ids=(), record=True)
        assert [o == r[: len(o)] for o, r in zip(res.output_ids, ref)] == [True] * 4
        traces.append([r.to_dict() for r in res.trace])
        if static:
            assert len(eng._static_steps) >= 1
    assert traces[0] == traces[1]
    assert any(r["drafter_skipped"] for r in traces[0]) == (policy == "vllm" and mode != "none")


def test_parallel_k1_equals_autoregressive_k1(oracle_pair):
    model, d, ref = oracle_pair
    traces = []
    for mode in ("parallel", "autoregressive"):
        res = SpecEngine(model, d, mode=mode, K=1, max_batch=4).generate(PROMPTS, N_NEW, eos_token_ids=(),
                                                                         record=True)
        assert res.output_ids == ref
        traces.append([(r.drafted_for, r.drafts, r.accepted) for r in res.trace])
    assert traces[0] == traces[1]


def test_single_request_acceptance_length(oracle_pair):
    """One request: mean acceptance length == (tokens emitted - 1) / (target steps - 1)."""
    model, d, ref = oracle_pair
    res = SpecEngine(model, d, mode="autoregressive", K=4).generate([PROMPTS[0]], 60, eos_token_ids=(),
                                                                   record=True, max_verify_steps=9)
    m = res.metrics
    assert m.steps == 10 and m.num_drafts == 9
    assert m.mean_acceptance_length == pytest.approx((m.num_output_tokens - 1) / (m.steps - 1))


def test_stale_kv_never_leaks(oracle_pair):
    """Junk written after every step into every cache slot past each request's committed length (the
    rejected drafts' KV, MASK-slot KV, previous waves) changes neither outputs nor drafts."""
    model, d, ref = oracle_pair
    for mode in ("parallel", "autoregressive"):
        runs = [SpecEngine(model, d, mode=mode, K=5, max_batch=3, poison_stale=p)
                .generate(PROMPTS, N_NEW, eos_token_ids=(), record=True) for p in (False, True)]
        assert runs[1].output_ids == runs[0].output_ids == ref
        assert [r.drafts for r in runs[1].trace] == [r.drafts for r in runs[0].trace]
        assert runs[0].metrics.num_accepted_tokens > 0


# --------------------------------------------------------------------------------------- stops
@pytest.mark.parametrize("policy", ["vllm", "truncate"])
def test_max_model_len_truncates_drafts(oracle_pair, policy):
    model, d, ref = oracle_pair
    for mode in ("parallel", "autoregressive"):
        res = SpecEngine(model, d, mode=mode, K=6, max_batch=4, max_model_len=16, max_len_policy=policy).generate(
            PROMPTS[:3], max_new_tokens=100, eos_token_ids=(), record=True)
        assert [len(p) + len(o) for p, o in zip(PROMPTS, res.output_ids)] == [16, 16, 16]
        assert res.output_ids == [r[: 16 - len(p)] for p, r in zip(PROMPTS[:3], ref)]
        assert res.finish_reasons == ["length"] * 3
        for rec in res.trace:                                  # verified positions stay below max_model_len
            for i, k in zip(rec.requests, rec.num_draft_tokens):
                assert k <= 6
        check_accounting(res, 3, truncated=False)


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("mode", ["parallel", "autoregressive"])
def test_max_len_policy_vllm_skips_drafter(oracle_pair, mode, static):
    """vLLM 0.32's rule (gpu_model_runner._input_fits_in_drafter): after a step whose longest sequence,
    verified drafts included, + K exceeds max_model_len, the drafter does not run for the whole batch;
    each remaining request verifies K token-0 drafts (truncated at max_model_len) next, and they count
    in the metrics. Greedy output is unchanged; 'truncate' drafts in every step."""
    model, d, ref = oracle_pair
    K, mml = 4, 24
    runs = {}
    for policy in ("vllm", "truncate"):
        runs[policy] = SpecEngine(model, d, mode=mode, K=K, max_batch=4, max_model_len=mml, static_decode=static,
                                  max_len_policy=policy).generate(PROMPTS, 100, eos_token_ids=(), record=True)
    res = runs["vllm"]
    assert res.output_ids == runs["truncate"].output_ids == [r[: mml - len(p)] for p, r in zip(PROMPTS, ref)]
    assert not any(rec.drafter_skipped for rec in runs["truncate"].trace)
    check_accounting(res, len(PROMPTS))
    lens = [len(p) for p in PROMPTS]
    zero_drafts = set()                        # requests whose next step verifies token-0 drafts
    skipped = 0
    for rec in res.trace:
        longest = 0
        for i, k, a, new in zip(rec.requests, rec.num_draft_tokens, rec.accepted, rec.emitted):
            assert k == (0 if rec.step == 0 else min(K, mml - lens[i] - 1))
            if i in zero_drafts:               # accepted = leading zeros of the target's continuation
                cont = ref[i][lens[i] - len(PROMPTS[i]):][:k]
                assert a == next((j for j, t in enumerate(cont) if t != 0), len(cont))
            longest = max(longest, lens[i] + k)
            lens[i] += len(new)
        assert rec.drafter_skipped == (longest + K > mml and bool(rec.drafted_for or rec.drafter_skipped))
        assert not (rec.drafter_skipped and rec.drafted_for)
        zero_drafts = {i for i, new in zip(rec.requests, rec.emitted) if lens[i] < mml} if rec.drafter_skipped \
            else set()
        skipped += rec.drafter_skipped
    assert skipped >= 2
    m, t = res.metrics, runs["truncate"].metrics
    assert m.num_accepted_tokens < t.num_accepted_tokens         # token-0 drafts are (here) always rejected


def test_max_len_policy_is_checked(oracle_pair):
    model, d, _ = oracle_pair
    with pytest.raises(EngineError, match="max_len_policy"):
        SpecEngine(model, d, K=2, max_len_policy="sglang")


def test_eos_and_max_new_tokens(oracle_pair):
    model, d, ref = oracle_pair
    eos = ref[2][5]
    res = SpecEngine(model, d, mode="parallel", K=4, max_batch=4).generate(PROMPTS, max_new_tokens=9,
                                                                           eos_token_ids=[eos])
    for r, out, why in zip(ref, res.output_ids, res.finish_reasons):
        cut = r[:9]
        if eos in cut:
            cut = cut[: cut.index(eos) + 1]
            assert why == "stop"
        else:
            assert why == "length"
        assert out == cut
    assert SpecEngine(model, d, K=2).generate(PROMPTS, max_new_tokens=0).output_ids == [[]] * 4


# --------------------------------------------------------------------------------------- adversarial
def _broken(model, how):
    d = tiny_drafter(model, seed=5)
    with torch.no_grad():
        if how == "out_of_range":      # d2t offsets that leave the vocabulary (negative and too large)
            d.d2t.copy_(torch.where(torch.arange(d.d2t.numel()) % 2 == 0, 10_000, -10_000))
        elif how == "nan":
            d.fc.weight.fill_(float("nan"))
        elif how == "inf_mask":
            d.mask_hidden.fill_(float("inf"))
    return d


@pytest.mark.parametrize("how", ["out_of_range", "nan", "inf_mask"])
@pytest.mark.parametrize("mode", ["parallel", "autoregressive"])
def test_adversarial_drafter_never_changes_output(random_pair, how, mode):
    model, ref = random_pair
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        eng = SpecEngine(model, _broken(model, how), mode=mode, K=3, max_batch=4)
        res = eng.generate(PROMPTS, N_NEW, eos_token_ids=(), record=True)
        res2 = eng.generate(PROMPTS, N_NEW, eos_token_ids=())
    assert res.output_ids == res2.output_ids == ref
    ours = [x for x in w if issubclass(x.category, RuntimeWarning) and "drafter" in str(x.message)]
    if how != "inf_mask" or mode == "parallel":                # (AR drafting never uses mask_hidden)
        assert ours and len({str(x.message) for x in ours}) == len(ours)   # each warning once per engine


def test_nan_drafter_with_sampled_drafts(random_pair):
    """Sampling drafts from NaN probabilities must not crash; sampled output is still produced."""
    model, _ = random_pair
    eng = SpecEngine(model, _broken(model, "nan"), mode="parallel", K=3, draft_temperature=1.0)
    from pedagle_core.engine.verify import SamplingParams
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = eng.generate(PROMPTS[:2], 8, sampling=SamplingParams(temperature=0.8), eos_token_ids=())
    assert [len(o) for o in res.output_ids] == [8, 8]


# --------------------------------------------------------------------------------------- errors / state
def test_drafter_must_fit_target():
    model = tiny_target("llama")
    with pytest.raises(EngineError, match="vocab_size"):
        SpecEngine(model, tiny_drafter(tiny_target("llama", vocab_size=64)))
    other = tiny_target("llama", hidden=48)
    with pytest.raises(EngineError, match="target_hidden_size"):
        SpecEngine(model, tiny_drafter(other))
    with pytest.raises(EngineError, match="aux hidden states"):
        SpecEngine(TargetModel(model, aux_layer_ids=(1, 2)), tiny_drafter(model))
    cfg = tiny_drafter(model).config
    no_mask = Drafter(DrafterConfig(**{**cfg.to_dict(), "mask_token_id": None})).double()
    with pytest.raises(ValueError, match="mask_token_id"):
        SpecEngine(model, no_mask, mode="parallel", K=3)
    SpecEngine(model, no_mask, mode="autoregressive", K=3)
    SpecEngine(model, no_mask, mode="parallel", K=1)
    with pytest.raises(EngineError, match="prompt 0"):
        SpecEngine(model, tiny_drafter(model)).generate([[1000]])
    with pytest.raises(EngineError, match="needs a drafter"):
        SpecEngine(model, None, mode="parallel")


def test_make_step_input_follows_vllm():
    """num_rejected = drafts - accepted, None on a step without any draft (prefill-only)."""
    z = torch.zeros(5, 6)
    st = VerifyState(torch.arange(5), torch.arange(5), torch.tensor([0, 3, 5]), torch.tensor([2, 1]),
                     torch.tensor([1, 1]), torch.tensor([7, 8]), z, torch.tensor([0, 1]))
    si = make_step_input(st)
    assert si.num_rejected.tolist() == [1, 0] and si.next_token_ids.tolist() == [7, 8]
    st.num_draft_tokens = torch.tensor([0, 0])
    assert make_step_input(st).num_rejected is None
    sub = st.select([1])
    assert sub.token_ids.tolist() == [3, 4] and sub.query_start_loc.tolist() == [0, 2]
