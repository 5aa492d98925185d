"""The reference speculative-decoding engine: a target (transformers, `target.py`) verifies, the core drafts.

One engine step, for every unfinished request of the batch at once (one flat target forward):

  1. target verify: rows = the request's uncomputed tokens (the whole prompt on the prefill step, else
     the last emitted token) followed by its k pending drafts, at explicit positions; logits of the last
     uncomputed row and of each draft row; aux hidden states of every row.
  2. acceptance (`verify.py`): greedy or speculative rejection sampling -> accepted drafts + 1 token.
  3. drafter (`pedagle_core.draft`): a `StepInput` built exactly as vLLM builds it (all verified rows,
     rejected ones included; num_rejected = k - accepted, or None on a step that verified no draft; the
     new token as next_token_ids) -> K drafts per request from ONE forward (mode 'parallel') or K
     forwards (mode 'autoregressive'). Mode 'none' skips the drafter: every step verifies 0 drafts, so
     target-only decoding is the same code path.

Static preallocated caches: the target's and the drafter's `ContiguousKVCache` (row = request slot in
the batch, ``max_seq_len = max_model_len``). KV of rejected drafts stays in the cache but sits at
positions >= the request's committed length; the next step's rows start exactly there and write before
they attend, so it is overwritten before any query can see it (``poison_stale=True`` fills those slots
with large junk after every step to prove it in tests).

Stops: ``max_new_tokens``, an EOS id (included in the output), ``max_model_len`` (prompt + output).
Near max_model_len (``max_len_policy``):

  * always: a request verifies at most ``max_model_len - n - 1`` of its drafts (n = its tokens so far),
    so a step never writes past the cache (vLLM's scheduler does the same);
  * 'vllm' (default; the engine is the conformance oracle for vLLM 0.32): after a target step whose
    longest sequence (all requests of the step, rows of verified drafts included) + K exceeds
    max_model_len, the drafter does not run for the whole batch and every remaining request gets K
    drafts of token id 0 instead, which the next step verifies (truncated as above) and counts in the
    acceptance metrics like any other drafts (vLLM's ``gpu_model_runner._input_fits_in_drafter`` and
    ``sample_tokens``). The drafter's KV for that step's rows is then never written, as in vLLM.
    Without an explicit max_model_len the limit of this rule is vLLM's default, the target's
    max_position_embeddings (the cache, sized to the prompts + max_new_tokens, is no limit of vLLM's);
  * 'truncate': the drafter always runs and only the truncation above applies (drafts closer to the
    target's, so slightly more acceptance near the limit; pedagle's behaviour before vLLM parity).

Greedy output is the same under both policies. Requests run in waves of at most ``max_batch`` (static
batching).

Randomness: request i (its index in the prompt list) samples with ``torch.Generator().manual_seed(seed + i)``;
sampled drafting (``draft_temperature > 0``) uses one generator seeded with ``seed``.

Speed: greedy decode steps in which every request verifies exactly K drafts run as one fixed-shape,
host-sync-free step (`graphs.StaticDecodeStep`: vectorised acceptance, drafter input built on device),
captured as CUDA graphs on CUDA (the draft part is left out when the vLLM rule above skips the
drafter); prefill, sampling and steps with truncated drafts take the general per-request path above.
Both paths give identical traces (tested).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..attention import ContiguousKVCache
from ..draft import DraftOutput, StepInput, check_k, draft
from ..model import Drafter
from .graphs import StaticDecodeStep
from .metrics import SpecMetrics
from .target import EngineError, TargetModel
from .verify import SamplingParams, Verdict, verify_greedy, verify_sampling

MODES = ("parallel", "autoregressive", "none")
MAX_LEN_POLICIES = ("vllm", "truncate")   # what happens near max_model_len (module docstring)
POISON = 1.0e4          # what `poison_stale` writes into uncommitted cache slots


# ------------------------------------------------------------------------------------------- step state
@dataclass
class VerifyState:
    """What one target step leaves for the drafter (the reference backend's "engine state").

    token_ids / positions: [T] every verified row (uncomputed tokens then drafts, rejected included)
    query_start_loc: [B+1]; num_draft_tokens / num_accepted / next_token_ids / cache_rows: [B]
    aux_hidden: [T, n_aux*H] target aux hidden states of every row
    """

    token_ids: Tensor
    positions: Tensor
    query_start_loc: Tensor
    num_draft_tokens: Tensor
    num_accepted: Tensor
    next_token_ids: Tensor
    aux_hidden: Tensor
    cache_rows: Tensor

    def select(self, keep: Sequence[int]) -> "VerifyState":
        """The state of the requests ``keep`` (indices into this batch), in that order."""
        qsl = self.query_start_loc.tolist()
        rows = [i for b in keep for i in range(qsl[b], qsl[b + 1])]
        lens = [qsl[b + 1] - qsl[b] for b in keep]
        dev = self.token_ids.device
        idx = torch.tensor(rows, dtype=torch.long, device=dev)
        sel = torch.tensor(list(keep), dtype=torch.long, device=dev)
        new_qsl = torch.tensor([0] + lens, dtype=torch.long, device=dev).cumsum(0)
        return VerifyState(self.token_ids[idx], self.positions[idx], new_qsl, self.num_draft_tokens[sel],
                           self.num_accepted[sel], self.next_token_ids[sel], self.aux_hidden[idx],
                           self.cache_rows[sel])


def make_step_input(state: VerifyState) -> StepInput:
    """vLLM's drafter input from a target step: num_rejected = k - accepted per request, or None when
    the step verified no draft at all (a prefill-only step)."""
    had_drafts = bool((state.num_draft_tokens > 0).any())
    num_rejected = state.num_draft_tokens - state.num_accepted if had_drafts else None
    return StepInput(token_ids=state.token_ids, positions=state.positions, query_start_loc=state.query_start_loc,
                     num_rejected=num_rejected, next_token_ids=state.next_token_ids, aux_hidden=state.aux_hidden)


# ------------------------------------------------------------------------------------------- results
@dataclass
class StepRecord:
    """One engine step (recorded with ``record=True``). Lists are per active request, in ``requests`` order."""

    step: int
    requests: list[int]                 # prompt indices verified in this step
    num_draft_tokens: list[int]         # drafts verified (k)
    accepted: list[int]
    emitted: list[list[int]]            # tokens appended to each output (after stop truncation)
    drafted_for: list[int] = field(default_factory=list)    # requests the drafter ran for after this step
    drafts: list[list[int]] = field(default_factory=list)   # their K drafts (target ids, as proposed)
    margins: list[list[float]] = field(default_factory=list)
    drafter_skipped: bool = False       # max_len_policy 'vllm': no drafter run, token-0 drafts scheduled

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class GenerateResult:
    output_ids: list[list[int]]
    finish_reasons: list[str]           # 'stop' (EOS), 'length' (max_new_tokens or max_model_len), 'steps'
    metrics: SpecMetrics
    trace: list[StepRecord] | None = None


@dataclass
class _Request:
    idx: int
    row: int
    tokens: list[int]
    prompt_len: int
    generator: torch.Generator
    num_computed: int = 0
    drafts: Tensor | None = None          # [K] target ids (may be out of range: see valid)
    valid: Tensor | None = None           # [K] bool
    draft_probs: Tensor | None = None     # [K, V] over the target vocabulary, sampled drafting only
    finished: str | None = None

    @property
    def output(self) -> list[int]:
        return self.tokens[self.prompt_len:]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------- engine
class SpecEngine:
    """Lossless speculative decoding with a transformers target and a pedagle drafter.

    target: a `TargetModel`, or a transformers causal LM (wrapped with the drafter's aux layer ids).
    drafter: a `Drafter` (None only with mode 'none'). mode: 'parallel' | 'autoregressive' | 'none'.
    K: drafts per request per step. max_model_len: prompt + output limit per request (None: sized per
    ``generate`` call from the prompts and max_new_tokens, capped by the target's max_position_embeddings).
    max_len_policy: 'vllm' (default) skips the drafter for the whole batch once the longest sequence + K
    would pass max_model_len (None: the target's max_position_embeddings, vLLM's default) and verifies K
    token-0 drafts per request instead, as vLLM 0.32 does; 'truncate' keeps drafting and only truncates
    drafts at max_model_len (module docstring).
    static_decode: run greedy decode steps in which every request verifies K drafts as one fixed-shape,
    sync-free step (`graphs.StaticDecodeStep`); cuda_graphs: capture those steps as CUDA graphs
    (default: on when the target is on CUDA). Outputs are identical either way.
    """

    def __init__(self, target: TargetModel | nn.Module, drafter: Drafter | None = None, *, mode: str = "parallel",
                 K: int = 3, max_batch: int = 8, max_model_len: int | None = None, draft_temperature: float = 0.0,
                 poison_stale: bool = False, static_decode: bool = True, cuda_graphs: bool | None = None,
                 max_len_policy: str = "vllm") -> None:
        if mode not in MODES:
            raise EngineError(f"mode = {mode!r}; expected one of {MODES}")
        if max_len_policy not in MAX_LEN_POLICIES:
            raise EngineError(f"max_len_policy = {max_len_policy!r}; expected one of {MAX_LEN_POLICIES}")
        if mode != "none" and drafter is None:
            raise EngineError(f"mode {mode!r} needs a drafter (use mode 'none' for target-only decoding)")
        if not isinstance(K, int) or K < 1:
            raise EngineError(f"K = {K!r}; expected an integer >= 1")
        if max_batch < 1:
            raise EngineError(f"max_batch = {max_batch!r}; expected >= 1")
        if not isinstance(target, TargetModel):
            aux = drafter.config.aux_layer_ids if drafter is not None else None
            target = TargetModel(target, aux_layer_ids=aux)
        self.target = target
        self.mode = mode
        self.K = K if mode != "none" else 0
        self.drafter = drafter if mode != "none" else None
        self.max_batch = max_batch
        self.max_len_policy = max_len_policy
        self._drafter_limit = max_model_len            # set per generate() call
        self.fixed_max_model_len = max_model_len
        self.draft_temperature = float(draft_temperature)
        self.poison_stale = poison_stale
        self.draft_cache: ContiguousKVCache | None = None
        self._warned: set[str] = set()
        self.static_decode = static_decode
        default_graphs = target.device.type == "cuda" and not getattr(target, "batch_invariant", False)
        self.cuda_graphs = default_graphs if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and target.device.type != "cuda":
            raise EngineError("cuda_graphs=True needs the target on a CUDA device")
        if self.cuda_graphs and getattr(target, "batch_invariant", False):
            raise EngineError("cuda_graphs=True cannot capture a batch_invariant target (its attention runs "
                              "one row at a time from the host); pass cuda_graphs=False")
        self._static_steps: dict[int, StaticDecodeStep] = {}
        self.graph_pool = None                # the first captured graph's memory pool, shared by the others
        if self.drafter is not None:
            check_drafter_fits(self.drafter, target)
            self.drafter.to(target.device)
            d2t = self.drafter.d2t
            base = torch.arange(d2t.numel(), device=d2t.device)
            mapped = base + d2t
            if not bool(((mapped >= 0) & (mapped < target.vocab_size)).all()):
                # Autoregressive drafting feeds drafts back into the drafter's embedding, where an id
                # outside the vocabulary would crash (a device assert on CUDA): clamp the map in place.
                self._warn_once("d2t", "the drafter's d2t maps draft ids outside the target vocabulary; the map "
                                       "is clamped into it (such drafts are verified like any other)")
                d2t.copy_(mapped.clamp(0, target.vocab_size - 1) - base)
            check_k(self.drafter, K, parallel=mode == "parallel")

    @property
    def device(self) -> torch.device:
        return self.target.device

    # ------------------------------------------------------------------ setup
    def _allocate(self, max_model_len: int) -> None:
        self.max_model_len = max_model_len
        before = (self.target.cache, self.draft_cache)
        self.target.allocate(self.max_batch, max_model_len)
        if self.drafter is not None:
            d, c = self.drafter, self.drafter.config
            dc = self.draft_cache
            if dc is None or dc.max_seq_len != max_model_len or dc.max_batch < self.max_batch:
                self.draft_cache = ContiguousKVCache(c.num_hidden_layers, self.max_batch, max_model_len,
                                                     c.num_key_value_heads, int(c.head_dim),
                                                     dtype=d.fc.weight.dtype, device=self.device)
        if (self.target.cache, self.draft_cache) != before:
            self._static_steps.clear()                 # captured graphs point at the old caches

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ public API
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 32,
                 sampling: SamplingParams | None = None, seed: int = 0, eos_token_ids: Sequence[int] | None = None,
                 record: bool = False, max_verify_steps: int | None = None,
                 on_tokens: Callable[[int, list[int]], None] | None = None, progress: bool = False) -> GenerateResult:
        """Generate for every prompt (lists of token ids).

        eos_token_ids: None = the target's; () = never stop on EOS. max_verify_steps: stop each request
        after that many verify steps following its prefill (finish reason 'steps'; conformance cases).
        on_tokens(prompt_index, new_token_ids) is called as tokens are emitted (streaming).
        """
        sampling = sampling or SamplingParams()
        if isinstance(max_new_tokens, bool) or not hasattr(max_new_tokens, "__index__") or max_new_tokens < 0:
            raise EngineError(f"max_new_tokens = {max_new_tokens!r}; expected an integer >= 0 (0: no output)")
        if not 0 <= seed <= 2**63 - 1 - len(prompts):
            raise EngineError(f"seed = {seed}; expected an integer in [0, 2**63 - 1 - number of prompts] "
                              "(request i samples with seed + i)")
        if any(isinstance(t, bool) for p in prompts for t in p):
            raise EngineError("prompt token ids include booleans; expected integer token ids")
        prompts = [list(map(int, p)) for p in prompts]
        V = self.target.vocab_size
        for i, p in enumerate(prompts):
            if not p:
                raise EngineError(f"prompt {i} is empty; expected at least one token id")
            bad = [t for t in p if not 0 <= t < V]
            if bad:
                raise EngineError(f"prompt {i} has token ids {bad[:5]} outside the target vocabulary [0, {V})")
        need = max((len(p) for p in prompts), default=1) + max_new_tokens + 1
        mml = self.fixed_max_model_len or min(need, self.target.max_position_embeddings or need)
        self._allocate(mml)
        # max_len_policy 'vllm': the max_model_len vLLM would have (its default: the model's length)
        self._drafter_limit = self.fixed_max_model_len or self.target.max_position_embeddings
        for i, p in enumerate(prompts):
            if len(p) >= mml:
                raise EngineError(f"prompt {i} has {len(p)} tokens; expected fewer than max_model_len = {mml}")
        eos = set(self.target.eos_token_ids() if eos_token_ids is None else eos_token_ids)

        metrics = SpecMetrics(K=self.K, num_requests=len(prompts), num_prompt_tokens=sum(map(len, prompts)))
        trace: list[StepRecord] | None = [] if record else None
        reqs = [_Request(i, 0, list(p), len(p), torch.Generator(self.device).manual_seed(seed + i))
                for i, p in enumerate(prompts)]
        self._draft_gen = torch.Generator(self.device).manual_seed(seed)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(prompts) * max_new_tokens, unit="tok", desc=f"generate ({self.mode})")
        _sync(self.device)
        t0 = time.perf_counter()
        if max_new_tokens > 0:
            for w in range(0, len(reqs), self.max_batch):
                wave = reqs[w: w + self.max_batch]
                for row, r in enumerate(wave):
                    r.row = row
                self._run_wave(wave, sampling, max_new_tokens, eos, metrics, trace, on_tokens, bar,
                               max_verify_steps)
        else:
            for r in reqs:
                r.finished = "length"
        _sync(self.device)
        metrics.total_time_s = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        metrics.num_output_tokens = sum(len(r.output) for r in reqs)
        return GenerateResult([r.output for r in reqs], [r.finished or "length" for r in reqs], metrics, trace)

    # ------------------------------------------------------------------ one wave of requests
    def _run_wave(self, reqs: list[_Request], sampling: SamplingParams, max_new_tokens: int, eos: set[int],
                  metrics: SpecMetrics, trace: list[StepRecord] | None, on_tokens, bar,
                  max_verify_steps: int | None) -> None:
        if self.poison_stale:
            self._poison(reqs)
        step = 0
        while True:
            active = [r for r in reqs if r.finished is None]
            if not active:
                return
            drafted = None
            # the drafter runs after this step unless the vLLM rule skips it (module docstring)
            run_drafter = self.drafter is not None and self._drafter_fits(active)
            if self._static_ok(active, sampling):
                verdicts, drafted = self._static_step(active, metrics, run_drafter)
                ks, prefill, state = [self.K] * len(active), [False] * len(active), None
            else:
                state, verdicts, prefill = self._verify_step(active, sampling, metrics)
                ks = state.num_draft_tokens.tolist()
            metrics.steps += 1
            rec = StepRecord(step, [r.idx for r in active], ks, [v.accepted for v in verdicts], []) \
                if trace is not None else None
            for b, (r, v) in enumerate(zip(active, verdicts)):
                if not prefill[b]:
                    metrics.observe_draft(ks[b], v.accepted)
                n_before = len(r.tokens)
                self._commit(r, v, max_new_tokens, eos)
                r.num_computed = n_before + v.accepted
                if max_verify_steps is not None and r.finished is None and step >= max_verify_steps:
                    r.finished = "steps"
                new = r.tokens[n_before:]
                if rec is not None:
                    rec.emitted.append(new)
                if on_tokens is not None and new:
                    on_tokens(r.idx, new)
                if bar is not None:
                    bar.update(len(new))
            keep = [b for b, r in enumerate(active) if r.finished is None]
            if self.drafter is not None and keep and not run_drafter:
                self._skip_drafter([active[b] for b in keep], rec)
            elif self.drafter is not None and keep:
                if drafted is not None:                      # the static step drafted for every request
                    sel = torch.tensor(keep)
                    self._set_drafts([active[b] for b in keep],
                                     DraftOutput(drafted["drafts"][sel], drafted["margins"][sel]), rec)
                else:
                    self._draft_step([active[b] for b in keep], state.select(keep), metrics, rec)
            if self.poison_stale:
                self._poison(active)
            if trace is not None:
                trace.append(rec)
            step += 1

    def _commit(self, r: _Request, v: Verdict, max_new_tokens: int, eos: set[int]) -> None:
        for tok in v.tokens:
            r.tokens.append(tok)
            if tok in eos:
                r.finished = "stop"
            elif len(r.output) >= max_new_tokens or len(r.tokens) >= self.max_model_len:
                r.finished = "length"
            if r.finished:
                return

    # ------------------------------------------------------------------ target verify + acceptance
    def _verify_step(self, active: list[_Request], sampling: SamplingParams,
                     metrics: SpecMetrics) -> tuple[VerifyState, list[Verdict], list[bool]]:
        dev, V = self.device, self.target.vocab_size
        ids: list[int] = []
        pos: list[int] = []
        req_idx: list[int] = []
        logit_rows: list[int] = []
        ks: list[int] = []
        qsl = [0]
        prefill = []
        for b, r in enumerate(active):
            n, c = len(r.tokens), r.num_computed
            prefill.append(c == 0)
            k = self._num_verified_drafts(r)
            drafts = r.drafts[:k].clamp(0, V - 1).tolist() if k else []
            base = len(ids)
            ids += r.tokens[c:] + drafts
            pos += list(range(c, n + k))
            req_idx += [b] * (n - c + k)
            logit_rows += list(range(base + n - c - 1, base + n - c + k))
            ks.append(k)
            qsl.append(len(ids))
        t = lambda x: torch.tensor(x, dtype=torch.long, device=dev)  # noqa: E731
        cache_rows = t([r.row for r in active])
        _sync(dev)
        t0 = time.perf_counter()
        logits, aux = self.target.forward(t(ids), t(pos), t(req_idx), cache_rows, t(logit_rows))
        verdicts = []
        off = 0
        for r, k in zip(active, ks):
            lg = logits[off: off + k + 1]
            off += k + 1
            drafts = r.drafts[:k] if k else torch.zeros(0, dtype=torch.long, device=dev)
            valid = r.valid[:k] if k else torch.zeros(0, dtype=torch.bool, device=dev)
            if sampling.greedy:
                verdicts.append(verify_greedy(lg, drafts, valid))
            else:
                probs = r.draft_probs[:k] if (k and r.draft_probs is not None) else None
                verdicts.append(verify_sampling(lg, drafts, valid, sampling, r.generator, probs))
        _sync(dev)
        metrics.target_time_s += time.perf_counter() - t0
        state = VerifyState(t(ids), t(pos), t(qsl), t(ks), t([v.accepted for v in verdicts]),
                            t([v.tokens[-1] for v in verdicts]), aux, cache_rows)
        return state, verdicts, prefill

    def _num_verified_drafts(self, r: _Request) -> int:
        """How many of ``r``'s pending drafts the next step verifies: all, up to max_model_len - n - 1."""
        if r.drafts is None:
            return 0
        return max(0, min(int(r.drafts.shape[0]), self.max_model_len - len(r.tokens) - 1))

    def _drafter_fits(self, active: list[_Request]) -> bool:
        """Whether the drafter runs after the step about to verify ``active``: always with policy
        'truncate'; with 'vllm' only if the step's longest sequence (tokens so far + drafts it verifies)
        + K stays within max_model_len (vLLM's ``_input_fits_in_drafter``: max_seq_len + K <=
        max_model_len, max_seq_len counting the scheduled drafts; ``_drafter_limit``, see generate)."""
        if self.max_len_policy == "truncate" or not self._drafter_limit:
            return True
        longest = max(len(r.tokens) + self._num_verified_drafts(r) for r in active)
        return longest + self.K <= self._drafter_limit

    def _skip_drafter(self, reqs: list[_Request], rec: StepRecord | None) -> None:
        """vLLM's rule near max_model_len: no drafter run; K drafts of token id 0 for every request."""
        for r in reqs:
            r.drafts = torch.zeros(self.K, dtype=torch.long, device=self.device)
            r.valid = torch.ones(self.K, dtype=torch.bool, device=self.device)
            r.draft_probs = None                       # verified as deterministic (one-hot) drafts
        if rec is not None:
            rec.drafter_skipped = True

    # ------------------------------------------------------------------ drafter
    def drafter_cache(self, state: VerifyState):
        """The drafter's `DraftCache` for the requests of ``state`` (their rows of the static cache)."""
        assert self.draft_cache is not None
        return self.draft_cache.for_requests(state.cache_rows, self.max_model_len)

    def _draft_step(self, reqs: list[_Request], state: VerifyState, metrics: SpecMetrics,
                    rec: StepRecord | None) -> None:
        assert self.drafter is not None and self.draft_cache is not None
        step_input = make_step_input(state)
        cache = self.drafter_cache(state)
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            out = draft(self.drafter, step_input, self.K, cache, mode=self.mode,
                        temperature=self.draft_temperature, generator=self._draft_gen)
        except (RuntimeError, IndexError) as e:   # e.g. NaN draft probabilities, ids outside the embedding
            self._warn_once("draft-failed", f"the drafter failed ({type(e).__name__}: {e}); its drafts are "
                                            "rejected")
            B = len(reqs)
            out = DraftOutput(torch.full((B, self.K), -1, dtype=torch.long, device=self.device),
                              torch.full((B, self.K), float("nan"), device=self.device))
        _sync(self.device)
        metrics.draft_time_s += time.perf_counter() - t0
        self._set_drafts(reqs, out, rec)

    def _set_drafts(self, reqs: list[_Request], out: DraftOutput, rec: StepRecord | None) -> None:
        ids, valid, probs = self._check_drafts(out)
        for b, r in enumerate(reqs):
            r.drafts, r.valid = ids[b], valid[b]
            r.draft_probs = None if probs is None else probs[b]
        if rec is not None:
            rec.drafted_for = [r.idx for r in reqs]
            rec.drafts = out.token_ids.tolist()
            rec.margins = out.margins.float().tolist()

    # ------------------------------------------------------------------ static (graph) decode steps
    def _static_ok(self, active: list[_Request], sampling: SamplingParams) -> bool:
        """A greedy decode step in which every request verifies exactly K drafts (K = 0 in mode none)."""
        if not (self.static_decode and sampling.greedy and self.draft_temperature == 0 and not self.poison_stale):
            return False
        for r in active:
            n = len(r.tokens)
            if r.num_computed != n - 1 or n + self.K + 1 > self.max_model_len:
                return False
            if self.K and (r.drafts is None or r.drafts.shape[0] != self.K):
                return False
        return True

    def _static_step(self, active: list[_Request], metrics: SpecMetrics,
                     run_drafter: bool = True) -> tuple[list[Verdict], dict | None]:
        B, K, V = len(active), self.K, self.target.vocab_size
        runner = self._static_steps.get(B)
        if runner is None:
            runner = self._static_steps[B] = StaticDecodeStep(self, B, self.cuda_graphs)
        tokens = torch.tensor([[r.tokens[-1]] for r in active], dtype=torch.long)
        valid = torch.ones(B, K, dtype=torch.bool)
        if K:
            drafts = torch.stack([r.drafts for r in active]).cpu()
            valid = torch.stack([r.valid for r in active]).cpu()
            tokens = torch.cat([tokens, drafts.clamp(0, V - 1)], 1)
        start = torch.tensor([len(r.tokens) - 1 for r in active], dtype=torch.long)
        rows = torch.tensor([r.row for r in active], dtype=torch.long)
        out = runner(tokens, valid, start, rows, draft=run_drafter)
        metrics.target_time_s += out["target_s"]
        metrics.draft_time_s += out["draft_s"]
        pred, acc = out["pred"].tolist(), out["accepted"].tolist()
        verdicts = [Verdict(a, tokens[b, 1: a + 1].tolist() + [pred[b][a]]) for b, a in enumerate(acc)]
        return verdicts, (out if "drafts" in out else None)

    def _check_drafts(self, out: DraftOutput) -> tuple[Tensor, Tensor, Tensor | None]:
        """Flag drafts that can never be right (ids outside the target vocabulary, non-finite logits) and
        map sampled-draft probabilities onto the target vocabulary."""
        V = self.target.vocab_size
        ids = out.token_ids.long()
        valid = (ids >= 0) & (ids < V)
        if not bool(valid.all()):
            self._warn_once("draft-range", f"the drafter proposed token ids outside the target vocabulary [0, {V}); "
                                           "they are rejected (check the drafter's d2t / vocabulary)")
        finite = torch.isfinite(out.margins)
        if not bool(finite.all()):
            self._warn_once("draft-nan", "the drafter produced non-finite logits (NaN/inf); those drafts are "
                                         "rejected")
            valid &= finite
        probs = None
        if out.probs is not None:
            d = self.drafter
            assert d is not None
            tgt = torch.arange(out.probs.shape[-1], device=ids.device) + d.d2t.to(ids.device)   # [Vd]
            inside = (tgt >= 0) & (tgt < V)
            p = out.probs.to(torch.float64 if out.probs.dtype == torch.float64 else torch.float32)
            p = torch.nan_to_num(p, nan=0.0) * inside
            probs = p.new_zeros(*p.shape[:-1], V).index_add_(-1, tgt[inside], p[..., inside])
            broken = ~torch.isfinite(out.probs).all(-1)                                       # [B, K]
            valid &= ~broken
        return ids, valid, probs

    # ------------------------------------------------------------------ debugging
    def _poison(self, reqs: list[_Request]) -> None:
        """Fill every cache slot at or past each request's committed length with junk."""
        caches = [self.target.cache] + ([self.draft_cache] if self.draft_cache is not None else [])
        for c in caches:
            k = c.k.view(c.num_layers, c.max_batch, c.max_seq_len, *c.k.shape[2:])
            v = c.v.view_as(k)
            for r in reqs:
                k[:, r.row, r.num_computed:] = POISON
                v[:, r.row, r.num_computed:] = -POISON


# ------------------------------------------------------------------------------------------- checks
def check_drafter_fits(drafter: Drafter, target: TargetModel) -> None:
    """Raise `EngineError` naming the field when ``drafter`` cannot draft for ``target``."""
    c = drafter.config
    if c.vocab_size != target.vocab_size:
        raise EngineError(f"drafter vocab_size = {c.vocab_size} but the target vocabulary has {target.vocab_size} "
                          "tokens; a drafter must be trained for this target's tokenizer")
    if c.target_hidden_size != target.hidden_size:
        raise EngineError(f"drafter target_hidden_size = {c.target_hidden_size} but the target's hidden_size is "
                          f"{target.hidden_size}; this drafter was built for another target")
    n = len(target.aux_layer_ids)
    if c.n_aux != n:
        raise EngineError(f"drafter expects {c.n_aux} aux hidden states (fc input {c.fc_input_size}) but the target "
                          f"provides {n} (aux_layer_ids {list(target.aux_layer_ids)}); set the drafter's "
                          "aux_layer_ids")
    if c.aux_layer_ids is not None and tuple(sorted(set(c.aux_layer_ids))) != tuple(target.aux_layer_ids):
        raise EngineError(f"drafter aux_layer_ids {list(c.aux_layer_ids)} differ from the target wrapper's "
                          f"{list(target.aux_layer_ids)}")
