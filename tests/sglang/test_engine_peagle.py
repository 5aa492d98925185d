"""PEAGLE in SGLang's running engine (``sglang.Engine``, CPU), float32, on the bundled tiny-code family.

Five engines (target only; PEAGLE K = 1, 3, 5, 7), started once each in one child process (`engine_runs`), each
serving every prompt set (small: the CPU engine takes ~0.3-1 s per iteration on two cores). PEAGLE K = 1, 3 and 7
run with SGLang's overlap scheduler (its default; on the CPU engine kept on by pedagle's CPU-engine opt-in, where
SGLang would switch it off for speculative decoding), K = 5 with the synchronous one (``disable_overlap_schedule``):

* ``batch``: four prompts of different lengths generated together; three run STEPS verify steps, one stops after
  3 tokens (requests finish at different times);
* ``long``: a prompt longer than the chunked-prefill size (prefilled in chunks, one draft step per chunk);
* ``accept``: six prompts of different lengths, 48 new tokens each: the tiny head's drafts are accepted often there
  (K = 7 on 0.5.23: every draft of a step in ~1 step of 10, 2.8 tokens per verify), so KV reserves are used to the
  end, also with the overlap scheduler's one-step lag;
* ``maxctx``: a request as long as the engine admits (context_length - (K+1): SGLang reserves K+1 draft slots
  per request); its last draft windows (2K rows) reach past the context length;
* K = 3 only: the KV pool driven full with the radix cache ON (a small ``max_total_tokens``, distinct prompts,
  then more and some repeats): the prefill's MASK-row scratch slots must come from the admission budget and the
  prefix cache, and every request completes;
* K = 5 only: sampling (temperature 0.8);
* K = 7 only: every decode draft step through `cuda_graphs.DecodeDraftGraphs` in mode 'eager' (the step function
  that is captured on CUDA, over its static buffers, batch sizes 1, 2, 4, 8: batches of 3 run padded to 4), so the
  checks below hold for that path too.

Checks: each engine ran the schedule it was given (overlap: every decode step's drafts came back through SGLang's
FutureMap); greedy PEAGLE output == SGLang target-only output token for token (float32; a difference would be
tolerated only where the float32 target's top-2 margin is < 1e-4, and reported); the drafts the worker recorded,
the accepted counts and the accepted-per-position counters == pedagle's reference engine step by step
(`compare_e2e`, the conformance comparison); after start-up the target captures the drafter's aux layers in
pedagle's convention (tiny-code: [2, 4, 5]; SGLang's own EAGLE-3 setting would be [3, 5, 6]); the radix cache is on.
"""

from __future__ import annotations

import pytest

import engine_runs as er
import subset
from pedagle_backends.sglang import cuda_graphs as cg
from engine_runs import CHUNK, CONTEXT, LONG_PROMPT, MAXCTX_PROMPT, PEAGLE, TARGET, Job

# `--sglang-cases versions` (CI on the oldest supported SGLang): target-only, K = 3 (radix pool run: the admission
# reserve hook; overlap), K = 5 (the synchronous schedule) and K = 7 (the static-buffer draft step; overlap), every
# test below but sampling
KS = (3, 5, 7) if subset.versions_only() else (1, 3, 5, 7)
SYNC_KS = (5,)                              # PEAGLE engines on the synchronous schedule; the others overlap
versions = pytest.mark.sglang_versions
STEPS = 3                                   # verify steps compared with the reference per request
SHORT = 3                                   # max_new_tokens of the request that finishes first
ENGINE = dict(context_length=CONTEXT, chunked_prefill_size=CHUNK)
RADIX_POOL = 320                            # max_total_tokens of the radix run: well below what the waves need
F32_TIE = 1e-4
STATIC_K, STATIC_SIZES = 7, (1, 2, 4, 8)    # the engine whose decode draft step runs on cuda_graphs' static buffers
ACCEPT_PROMPTS, ACCEPT_NEW = [40, 64, 50, 33, 70, 44], 48   # long generations: many steps accept all K drafts


def batch_new(K: int) -> int:
    """Tokens for STEPS verify steps (and the draft step after the last) at any acceptance."""
    return (STEPS + 1) * (K + 1) + 1


def jobs(K: int) -> list[Job]:
    """The prompt sets of a K (K = max(KS) for the target-only run: its outputs cover every K's, as prefixes)."""
    n = batch_new(K)
    return [Job("batch", er.prompts([9, 30, 61, 20]), [n, n, n, SHORT]),
            Job("long", er.prompts([LONG_PROMPT], start=7), [6]),
            Job("maxctx", er.prompts([MAXCTX_PROMPT], start=8), [er.max_context_new(K)]),
            Job("accept", er.prompts(ACCEPT_PROMPTS, start=30), [ACCEPT_NEW] * len(ACCEPT_PROMPTS))]


def radix_jobs() -> list[Job]:
    wave1 = er.prompts([36 + 3 * i for i in range(8)], start=10)
    wave2 = er.prompts([40 + 2 * i for i in range(8)], start=20)
    return [Job("radix1", wave1, [8] * 8), Job("radix2", wave2 + wave1[-2:], [8] * 10)]


def sample_job() -> Job:
    return Job("sample", er.prompts([15, 31], start=2), [12, 12], temperature=0.8, seed=7)


def specs() -> dict[str, er.Spec]:
    """The five engines of this module (all started in one child process, `engine_runs.run_many`)."""
    base = jobs(max(KS))
    base[2] = Job("maxctx", base[2].prompts, [er.max_context_new(0)])          # the target-only limit: CONTEXT
    out = {"f32-target": er.Spec(TARGET, None, 0, base + radix_jobs(), "float32", engine=dict(ENGINE))}
    for K in KS:
        extra_jobs, extra_kw, env = [], {}, {}
        if K == 3:
            extra_jobs, extra_kw = radix_jobs(), {"max_total_tokens": RADIX_POOL}
        if K == 5 and not subset.versions_only():
            extra_jobs = [sample_job()]
        if K == STATIC_K:
            env = {cg.GRAPHS_ENV: "eager", cg.SIZES_ENV: ",".join(map(str, STATIC_SIZES))}
        extra_kw["disable_overlap_schedule"] = K in SYNC_KS
        out[f"f32-peagle-k{K}"] = er.Spec(TARGET, PEAGLE, K, jobs(K) + extra_jobs, "float32",
                                          engine={**ENGINE, **extra_kw}, env=env)
    return out


@pytest.fixture(scope="module")
def target_only():
    return er.run_many(specs())["f32-target"]


def peagle(K: int) -> er.Run:
    return er.run_many(specs())[f"f32-peagle-k{K}"]


def assert_lossless(got: dict, base: dict, prompts: list[list[int]], what: str) -> list[str]:
    """PEAGLE outputs == the target-only outputs (as prefixes: the target-only run may have generated more); a
    difference is tolerated only at a float32 near-tie of the target (returned, for the report)."""
    ties = []
    assert len(got["outputs"]) == len(base["outputs"])
    for b, (g, t) in enumerate(zip(got["outputs"], base["outputs"])):
        assert len(g) <= len(t), (what, b, len(g), len(t))
        i = er.first_difference(g, t[:len(g)])
        if i is None:
            continue
        margin, top2 = er.target_margin(prompts[b] + t[:i])
        assert margin < F32_TIE, (f"{what} request {b}: PEAGLE output differs from target-only at token {i} "
                                  f"({g[i]} vs {t[i]}); float32 target margin there {margin:.3g} >= {F32_TIE}")
        ties.append(f"{what} request {b} token {i}: margin {margin:.2g} (top-2 {top2})")
    return ties


@versions
@pytest.mark.parametrize("K", KS)
def test_engine_ran_the_schedule_it_was_given(K):
    """Overlap engines: SGLang's overlap scheduler ran PEAGLE (the worker saw it on) and every decode step's draft
    input came through the FutureMap (``relayed``); synchronous engines: neither."""
    run = peagle(K)
    overlap = K not in SYNC_KS
    assert run.config()["overlap_schedule"] is overlap
    dec = [r for r in run.records if r.get("kind") == "decode"]
    assert dec and all(r["relayed"] is overlap for r in dec), sorted({r["relayed"] for r in dec})
    accept = set(run.results["accept"]["rids"])
    full = [a for r in dec for rid, a in zip(r["rids"], r["accept_lens"]) if rid in accept and a == K + 1]
    assert full, "no step of the accept job accepted all K drafts"        # the KV reserve used to its end
    print(f"K={K}: {'overlap' if overlap else 'synchronous'} schedule, {len(dec)} decode draft steps")


@versions
@pytest.mark.parametrize("K", KS)
def test_greedy_output_equals_target_only(K, target_only):
    run = peagle(K)
    ties = []
    for j in jobs(K) + (radix_jobs() if K == 3 else []):
        got, base = run.results[j.name], target_only.results[j.name]
        assert [len(o) for o in got["outputs"]] == j.max_new, (j.name, [len(o) for o in got["outputs"]])
        ties += assert_lossless(got, base, j.prompts, f"K={K} {j.name}")
    print(f"K={K}: lossless on every job; float32 near-ties: {ties or 'none'}")


@versions
@pytest.mark.parametrize("K", KS)
def test_drafts_equal_reference_step_by_step(K):
    from pedagle_conformance.compare import compare_e2e
    from pedagle_core.engine.backend import ReferenceBackend

    run = peagle(K)
    job = jobs(K)[0]
    got = er.case_result(run, "batch", K, STEPS)
    ref = ReferenceBackend().run_case(str(TARGET), str(PEAGLE), job.prompts, K=K, mode="parallel", steps=STEPS,
                                      dtype="float32", device="cpu")
    short_steps = sum(a is not None for a in (row[3] for row in got["accepted"]))   # verifies before it finished
    spr = [STEPS, STEPS, STEPS, short_steps]
    cmp = compare_e2e(ref, got, K, "parallel", F32_TIE, steps_per_request=spr)
    assert not cmp.failures, [m.describe(F32_TIE) for m in cmp.failures[:5]]
    assert not cmp.desync, cmp.desync
    for s in range(STEPS):
        for b in range(3):
            assert got["drafts"][s][b] == ref["drafts"][s][b] and got["accepted"][s][b] == ref["accepted"][s][b]
    def per_position(acc):                          # vLLM's counter over the three full requests
        return [sum(1 for s in range(STEPS) for b in range(3) if (acc[s][b] or 0) > q) for q in range(K)]

    got_pos = per_position(got["accepted"])
    assert got_pos == per_position(ref["accepted"])
    assert cmp.drafts_compared == sum(spr) * K
    print(f"K={K}: drafts identical to the reference over {cmp.drafts_compared} draft slots; accepted per position "
          f"{got_pos}; mean accepted {er.mean_accepted(er.steps_of(run, 'batch')):.2f}")


ACCEPT_STEPS = 5                            # verify steps of the accept job compared with the reference


@versions
@pytest.mark.parametrize("K", KS)
def test_drafts_equal_reference_where_drafts_are_accepted(K):
    """The accept job (six prompts of different lengths, long generations) step by step against pedagle's reference
    engine: drafts and accepted counts equal at every step, where steps accept several drafts (so the next draft
    step reads accepted rows, and under overlap the KV reserve is used past the lagging committed length)."""
    from pedagle_conformance.compare import compare_e2e
    from pedagle_core.engine.backend import ReferenceBackend

    run = peagle(K)
    job = next(j for j in jobs(K) if j.name == "accept")
    got = er.case_result(run, "accept", K, ACCEPT_STEPS)
    ref = ReferenceBackend().run_case(str(TARGET), str(PEAGLE), job.prompts, K=K, mode="parallel",
                                      steps=ACCEPT_STEPS, dtype="float32", device="cpu")
    spr = [sum(row[b] is not None for row in got["accepted"]) for b in range(len(job.prompts))]
    cmp = compare_e2e(ref, got, K, "parallel", F32_TIE, steps_per_request=spr)
    assert not cmp.failures, [m.describe(F32_TIE) for m in cmp.failures[:5]]
    assert not cmp.desync, cmp.desync
    assert cmp.drafts_compared == sum(spr) * K
    accepted = [a for row in got["accepted"] for a in row if a is not None]
    assert max(accepted) >= min(K, 2), accepted                 # some steps accepted several drafts
    print(f"K={K} accept job: drafts identical to the reference over {cmp.drafts_compared} draft slots; accepted "
          f"per step {accepted}")


@versions
@pytest.mark.parametrize("K", KS)
def test_target_captures_the_drafters_aux_layers_after_start_up(K):
    cfg = peagle(K).config()
    assert cfg is not None, "the worker wrote no config record"
    assert cfg["aux_layer_ids"] == [2, 4, 5]                              # tiny-code's head, pedagle's convention
    assert cfg["target_layers_to_capture"] == cfg["aux_layer_ids"], cfg   # SGLang's own setting: [3, 5, 6]
    assert cfg["K"] == K and cfg["radix_cache"] is True
    assert cfg["draft_sliding_window_size"] is None and cfg["layer_windows"] == [None] * 4


@versions
def test_every_request_completes_with_the_kv_pool_full_and_radix_cache_on(target_only):
    run = peagle(3)
    for j in radix_jobs():
        got = run.results[j.name]
        assert [len(o) for o in got["outputs"]] == j.max_new
        assert_lossless(got, target_only.results[j.name], j.prompts, f"radix {j.name}")
    need = sum(len(p) + n for j in radix_jobs() for p, n in zip(j.prompts, j.max_new))
    assert need > 2 * RADIX_POOL                       # the waves could not all fit: the pool was driven full
    cached = [m.get("cached_tokens", 0) for m in run.results["radix2"]["meta"]]
    assert any(c > 0 for c in cached), cached         # prompts were served from the radix cache


@versions
def test_chunked_prefill_and_max_context_requests(target_only):
    for K in KS:
        run = peagle(K)
        rid = run.results["long"]["rids"][0]
        chunks = [r for r in run.records if r.get("kind") == "prefill" and rid in r["rids"]]
        assert len(chunks) == -(-LONG_PROMPT // CHUNK), len(chunks)            # one prefill draft step per chunk
        assert [c["chunked"][c["rids"].index(rid)] for c in chunks] == [True] * (len(chunks) - 1) + [False]
        long_steps = er.steps_of(run, "long")[0]
        assert long_steps[0]["accepted"] is None and all(s["accepted"] is not None for s in long_steps[1:])
        out = run.results["maxctx"]["outputs"][0]
        assert MAXCTX_PROMPT + len(out) == CONTEXT - (K + 1)        # the longest request SGLang admits under EAGLE
        assert out == target_only.results["maxctx"]["outputs"][0][:len(out)]


def test_sampling_runs_and_gives_valid_tokens():
    import json

    run = peagle(5)
    got = run.results["sample"]
    vocab = json.loads((TARGET / "config.json").read_text())["vocab_size"]
    job = sample_job()
    assert [len(o) for o in got["outputs"]] == job.max_new
    assert all(0 <= t < vocab for o in got["outputs"] for t in o)
    steps = er.steps_of(run, "sample")
    assert all(len(s) >= 2 for s in steps)                                 # drafted and verified several times


@versions
def test_static_buffer_draft_step_ran_padded_in_the_engine():
    """K = STATIC_K drafted every decode step through `cuda_graphs.DecodeDraftGraphs` (what CUDA captures), padded
    to the next prepared batch size; the other engines through the worker's eager path."""
    dec = [r for r in peagle(STATIC_K).records if r.get("kind") == "decode"]
    assert dec and all(r.get("graph_bs") == cg.padded_size(STATIC_SIZES, len(r["rids"])) for r in dec)
    padded = [r for r in dec if r["graph_bs"] > len(r["rids"])]
    assert padded, sorted({len(r["rids"]) for r in dec})          # e.g. the batch job's 3 requests in a graph of 4
    for K in KS:
        if K != STATIC_K:
            assert all(r.get("graph_bs") is None for r in peagle(K).records if r.get("kind") == "decode")
    print(f"K={STATIC_K}: {len(dec)} decode draft steps on the static buffers, {len(padded)} padded")
