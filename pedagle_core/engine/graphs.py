"""Static-shape greedy decode steps, captured as CUDA graphs on CUDA.

A decode step in which every request verifies exactly K drafts (the common case: greedy, no request
within K + 1 tokens of max_model_len) has fixed shapes for a given batch size B: B*(K+1) target rows, B*K drafts. For
such steps `StaticDecodeStep` runs, with no host synchronisation and no per-request Python:

  verify (graph 1): target forward over [bonus, d_1..d_K] of every request, argmax, accepted count
      a = number of leading drafts equal to the target's argmax (and valid), new token = argmax[a],
      and the drafter's `StepInput` (num_rejected = K - a; all K+1 rows, rejected included);
  draft (graph 2): `pedagle_core.draft.draft` (parallel: one forward; autoregressive: K forwards);
      not run in a step after which the engine skips the drafter (vLLM's rule near max_model_len).

Inputs live in static buffers (tokens [B, K+1], valid [B, K], start position [B], cache rows [B]);
outputs (argmax [B, K+1], accepted [B], drafts [B, K], margins [B, K]) are read back once per step.
On CUDA each part is captured once per B (lazily, the first time a step of that size runs; two
eager warm-up runs compile Triton kernels first) and replayed; attention gets static bounds
(``max_query_len``, ``max_context = max_seq_len``) so nothing syncs. A capture that fails is retried
(on an H100, about one capture in 25 was invalidated by an error inside it and succeeded on retry);
if it keeps failing (seen with transformers' Qwen3-MoE and GPT-OSS experts, which copy a CPU tensor
to the GPU inside the forward), the engine's decode steps run eagerly from then on (one warning).
On CPU the same code runs eagerly: the tests check it against the general per-request path.
Mode 'none' uses K = 0 (one row per request, no drafter).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..draft import StepInput, draft


class StaticDecodeStep:
    def __init__(self, engine, B: int, use_graphs: bool) -> None:
        self.engine, self.B, self.K = engine, B, engine.K
        dev, K = engine.device, engine.K
        self.tokens = torch.zeros(B, K + 1, dtype=torch.long, device=dev)   # [bonus, d_1 .. d_K]
        self.valid = torch.ones(B, K, dtype=torch.bool, device=dev)
        self.start = torch.zeros(B, dtype=torch.long, device=dev)           # position of the bonus token
        self.rows = torch.zeros(B, dtype=torch.long, device=dev)
        self.offsets = torch.arange(K + 1, device=dev)
        self.request_index = torch.arange(B, device=dev).repeat_interleave(K + 1)
        self.query_start_loc = torch.arange(B + 1, device=dev) * (K + 1)
        self.use_graphs = use_graphs
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}

    # ------------------------------------------------------------------ the two parts
    def _verify(self) -> None:
        K, B = self.K, self.B
        eng = self.engine
        self.positions = (self.start[:, None] + self.offsets).reshape(-1)
        hint = K + 1 if self.use_graphs else None
        logits, self.aux = eng.target.forward(self.tokens.reshape(-1), self.positions, self.request_index,
                                              self.rows, max_query_len=hint)
        self.pred = logits.view(B, K + 1, -1).argmax(-1)                               # [B, K+1]
        match = (self.tokens[:, 1:] == self.pred[:, :K]) & self.valid
        self.accepted = match.long().cumprod(1).sum(1)                                  # [B]
        self.next_tokens = self.pred.gather(1, self.accepted[:, None]).squeeze(1)       # [B]

    def _draft(self) -> None:
        eng, K = self.engine, self.K
        step = StepInput(token_ids=self.tokens.reshape(-1), positions=self.positions,
                         query_start_loc=self.query_start_loc, num_rejected=K - self.accepted,
                         next_token_ids=self.next_tokens, aux_hidden=self.aux)
        hints = {}
        if self.use_graphs:
            hints = dict(max_query_len=max(2 * K, K + 1), max_context=eng.draft_cache.max_seq_len)
        cache = eng.draft_cache.for_requests(self.rows, eng.max_model_len, **hints)
        out = draft(eng.drafter, step, K, cache, mode=eng.mode)
        self.drafts, self.margins = out.token_ids, out.margins

    # ------------------------------------------------------------------ running
    def _run(self, name: str, fn: Callable[[], None]) -> None:
        if not self.use_graphs:
            fn()
            return
        g = self.graphs.get(name)
        if g is None:
            for _ in range(3):                 # captures are occasionally invalidated (seen: ~1 in 25): retry
                try:
                    g = capture_graph(fn, self.engine.graph_pool)
                    break
                except Exception as e:  # noqa: BLE001 - capture is an optimisation: fall back to eager
                    torch.cuda.synchronize()
                    self.engine.graph_pool = None      # a failed capture may leave its pool unusable
                    error = e
            if g is None:
                self.engine._warn_once("graph-capture", f"CUDA-graph capture failed ({type(error).__name__}: "
                                                        f"{error}); decode steps run eagerly")
                self.engine.cuda_graphs = False
                self.use_graphs = False
                fn()
                return
            if self.engine.graph_pool is None:               # later graphs share the first one's pool
                self.engine.graph_pool = g.pool()
            self.graphs[name] = g
        g.replay()

    def __call__(self, tokens: Tensor, valid: Tensor, start: Tensor, rows: Tensor,
                 draft: bool = True) -> dict[str, Tensor]:
        """tokens [B, K+1], valid [B, K], start/rows [B] (host or device) -> host tensors pred [B, K+1],
        accepted [B], and (modes with a drafter, unless ``draft`` is False: the engine skips the drafter
        near max_model_len) drafts / margins [B, K]; also target/draft seconds."""
        self.tokens.copy_(tokens)
        self.valid.copy_(valid)
        self.start.copy_(start)
        self.rows.copy_(rows)
        dev = self.engine.device
        timer = _Timer(dev)
        self._run("verify", self._verify)
        timer.mark()
        draft = draft and self.engine.drafter is not None
        if draft:
            self._run("draft", self._draft)
        timer.mark()
        out = {"pred": self.pred, "accepted": self.accepted}
        if draft:
            out.update(drafts=self.drafts, margins=self.margins)
        out = {k: v.to("cpu") for k, v in out.items()}
        out["target_s"], out["draft_s"] = timer.seconds()
        return out


def capture_graph(fn: Callable[[], None], pool=None) -> torch.cuda.CUDAGraph:
    """``fn`` captured as a CUDA graph (in memory ``pool``, None for a new one) after two eager warm-up runs on a
    side stream. Shared by the reference engine and the backends' draft-step graphs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):                    # compile Triton kernels, settle allocations
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    # thread_local: CUDA calls of other threads (allocator bookkeeping, compilers) cannot invalidate it
    with torch.cuda.graph(g, pool=pool, capture_error_mode="thread_local"):
        fn()
    return g


class _Timer:
    """Wall time between marks: CUDA events on CUDA (one sync at the end), perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        import time

        self.cuda = device.type == "cuda"
        self._now = time.perf_counter
        self.marks: list = [self._event() if self.cuda else self._now()]

    def _event(self):
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def mark(self) -> None:
        self.marks.append(self._event() if self.cuda else self._now())

    def seconds(self) -> tuple[float, ...]:
        if self.cuda:
            self.marks[-1].synchronize()
            return tuple(a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:]))
        return tuple(b - a for a, b in zip(self.marks, self.marks[1:]))
