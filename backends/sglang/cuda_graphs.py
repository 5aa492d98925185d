"""CUDA graphs of PEAGLE's decode draft step inside SGLang (`DecodeDraftGraphs`).

Captured per batch size ``bs`` (SGLang's decode cuda-graph batch sizes, `capture_sizes`): the WHOLE decode
draft step, from the verify results to the next drafts, reading static buffers only (`_step`):

    verify results -> `layout.decode_step_input` -> `drafting.plan_step` (pedagle_core's expansion: 2K rows per
    request: the K+1 verified positions, the bonus row among them, and K-1 MASK rows)
    -> the drafter forward over SGLang's draft KV pool (RadixAttention, DRAFT_EXTEND_V2, 2K rows per request on
    top of the committed ``seq_lens``) -> greedy readout (``d2t``) -> drafts [bs, K]

Outside the graph, per call (`DecodeDraftGraphs.run`): the live batch (B requests) is copied into the first B
rows of the buffers; rows B..bs-1 are padding (request-pool row `PAD_REQ` = SGLang's reserved row 0, committed
length 0, accept length 1, token 0, zero hidden states) whose KV writes all go to SGLang's padding slot 0, never
to a live request's slots; the KV slot of every row (``out_cache_loc``) is gathered from ``req_to_token``; the
attention backend refreshes its graph metadata (``init_forward_metadata_out_graph``, as SGLang's own graph
runners do before a replay); the graph is replayed; the first B rows of the drafts are returned (a copy: the
next replay overwrites the buffer). Nothing inside the captured region reads a value back to the host. The
prefill draft step stays eager (as SGLang's own).

Attention backend: **Triton** (what SGLang uses on a GPU without FA3). Its DRAFT_EXTEND_V2 graph metadata
takes the rows per request (query layout, the extend kernel's grid) from the backend's ``num_draft_tokens``
(K+1: SGLang's verify window); PEAGLE's step has 2K rows per request, so the runner sets ``num_draft_tokens =
2K`` on the draft worker's OWN draft-extend backend instance (`prepare_triton_backend`; that instance's eager
extend metadata comes from the batch's extend lengths and never reads it; the target's backend is another
instance). Other backends (FlashInfer, FA3, ...) are not captured: the draft step runs eagerly and one start-up
line says why (`graph_mode`). A sliding-window drafter is captured only where the backend's draft-extend graph
metadata carries a window rail (SGLang 0.5.23's Triton backend does, 0.5.17's does not: detected at capture).

Modes: ``"graph"`` (CUDA: capture, replay) and ``"eager"``: the same buffers, padding and step function, run
without capture, with the backend's eager metadata (``init_forward_metadata``): what the CPU tests run, and
what ``PEDAGLE_SGLANG_DRAFT_GRAPHS=eager`` selects in an engine on any device. ``PEDAGLE_SGLANG_DRAFT_GRAPHS=0``
keeps the plain eager draft step (for A/B timings); SGLang's ``--disable-cuda-graph`` (decode graphs off) and
``SGLANG_DISABLE_DRAFT_EXTEND_CUDA_GRAPH`` switch the graphs off too. ``PEDAGLE_SGLANG_DRAFT_GRAPH_BS=1,2,4,8``
replaces SGLang's batch sizes (fewer graphs; the tests use it to force padding).

``python -m pedagle_backends.sglang.cuda_graphs --selfcheck`` runs the GPU check (`selfcheck`).
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from pedagle_core.engine.graphs import capture_graph

from . import layout
from .drafting import greedy_drafts, plan_step

logger = logging.getLogger("pedagle.sglang")

GRAPHS_ENV = "PEDAGLE_SGLANG_DRAFT_GRAPHS"
SIZES_ENV = "PEDAGLE_SGLANG_DRAFT_GRAPH_BS"
MODES = ("graph", "eager")
PAD_REQ = 0
"""Request-pool row of padding requests: SGLang reserves row 0 (never handed to a request). Padding rows read no
prefix (committed length 0) and write KV slot 0, SGLang's padding slot."""


class GraphUnsupported(RuntimeError):
    """This configuration's decode draft step cannot be captured (the message says why); it runs eagerly."""


# ---------------------------------------------------------------------------------------------- pure helpers
def env_mode(value: Optional[str]) -> str:
    """``$PEDAGLE_SGLANG_DRAFT_GRAPHS`` -> 'auto' (unset, '1', 'auto': graphs where they can run), 'off' ('0')
    or 'eager' (the static-buffer path without capture, any device)."""
    v = (value or "").strip().lower()
    if v in ("", "1", "auto", "on", "true"):
        return "auto"
    if v in ("0", "off", "false"):
        return "off"
    if v == "eager":
        return "eager"
    raise ValueError(f"${GRAPHS_ENV} = {value!r}; expected '1' (default: capture the decode draft step on CUDA), "
                     "'0' (eager draft step) or 'eager' (static buffers without capture)")


def env_sizes(value: Optional[str]) -> Optional[list[int]]:
    """``$PEDAGLE_SGLANG_DRAFT_GRAPH_BS`` (e.g. "1,2,4,8"): the batch sizes to prepare instead of SGLang's decode
    cuda-graph sizes; None when unset."""
    if value is None or not value.strip():
        return None
    try:
        sizes = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(f"${SIZES_ENV} = {value!r}; expected comma-separated positive batch sizes, e.g. '1,2,4,8'")
    return sizes


def capture_sizes(sizes: Sequence[int], max_requests: int) -> list[int]:
    """The batch sizes to capture: ``sizes`` (SGLang's decode cuda-graph sizes) capped at ``max_requests``
    (the request pool), sorted, without repeats; ``max_requests`` itself when every size exceeds it."""
    if max_requests < 1:
        raise ValueError(f"max_requests = {max_requests}; expected >= 1 (the request pool size)")
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad:
        raise ValueError(f"capture batch sizes {list(sizes)}: {bad} are not positive integers")
    out = sorted({int(s) for s in sizes if s <= max_requests})
    if not out or (sizes and max(sizes) > max_requests and out[-1] < max_requests):
        out.append(int(max_requests))       # as SGLang does: the largest batch the pool admits is captured too
    return out


def padded_size(sizes: Sequence[int], B: int) -> Optional[int]:
    """The smallest captured size >= B (``sizes`` sorted), or None when B exceeds them all."""
    i = bisect.bisect_left(sizes, B)
    return sizes[i] if i < len(sizes) and B >= 1 else None


# ---------------------------------------------------------------------------------------------- buffers
@dataclass
class StepBuffers:
    """Everything the captured step reads and writes, ``max_bs`` requests (row counts per request in brackets)."""

    bonus: Tensor              # [max_bs] int64: the verified window's first token (the previous bonus)
    verified: Tensor           # [max_bs, K] int64: the drafts that were verified (target ids)
    seq_lens: Tensor           # [max_bs] int64: committed length before the verify
    accept_lens: Tensor        # [max_bs] int64: accepted drafts + 1
    new_bonus: Tensor          # [max_bs] int64: the new bonus tokens
    aux: Tensor                # [max_bs*(K+1), n_aux*Ht] the target's aux hidden states (drafter fc dtype)
    req_pool_indices: Tensor   # [max_bs] int64
    out_cache_loc: Tensor      # [max_bs*2K] int64: KV slot of every row (padding: 0)
    post_seq_lens: Tensor      # [max_bs] int64: seq_lens + 2K (what the attention backend sees)
    prefix_lens: Tensor        # [max_bs] int32: seq_lens (the extend's prefix, for eager metadata)
    extend_lens: Tensor        # [max_bs] int32: 2K
    extend_start_loc: Tensor   # [max_bs] int32: b*2K
    drafts: Tensor             # [max_bs, K] int64: the step's output (target ids)

    @classmethod
    def allocate(cls, max_bs: int, K: int, aux_width: int, aux_dtype: torch.dtype,
                 device: torch.device | str) -> "StepBuffers":
        w = layout.decode_window(K)
        z = lambda *shape: torch.zeros(shape, dtype=torch.int64, device=device)  # noqa: E731
        return cls(bonus=z(max_bs), verified=z(max_bs, K), seq_lens=z(max_bs),
                   accept_lens=torch.ones(max_bs, dtype=torch.int64, device=device), new_bonus=z(max_bs),
                   aux=torch.zeros(max_bs * (K + 1), aux_width, dtype=aux_dtype, device=device),
                   req_pool_indices=torch.full((max_bs,), PAD_REQ, dtype=torch.int64, device=device),
                   out_cache_loc=z(max_bs * w),
                   post_seq_lens=torch.full((max_bs,), w, dtype=torch.int64, device=device),
                   prefix_lens=torch.zeros(max_bs, dtype=torch.int32, device=device),
                   extend_lens=torch.full((max_bs,), w, dtype=torch.int32, device=device),
                   extend_start_loc=(torch.arange(max_bs, device=device) * w).to(torch.int32), drafts=z(max_bs, K))


# ---------------------------------------------------------------------------------------------- the runner
class DecodeDraftGraphs:
    """The decode draft step over static buffers, per batch size: captured as CUDA graphs (``mode="graph"``) or
    run as is (``mode="eager"``). ``model`` is the `model.PedagleSglangDrafter`, ``attn_backend`` the draft
    worker's draft-extend attention backend, ``req_to_token`` the request pool's page table."""

    def __init__(self, model: Any, attn_backend: Any, req_to_token: Tensor, K: int, mask_token_id: int,
                 sizes: Sequence[int], *, mode: str, aux_width: int, aux_dtype: torch.dtype,
                 device: torch.device | str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode = {mode!r}; expected one of {MODES}")
        if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError(f"sizes = {list(sizes)}; expected increasing positive batch sizes")
        self.model, self.backend, self.req_to_token = model, attn_backend, req_to_token
        self.K, self.mask_token_id, self.mode = int(K), int(mask_token_id), mode
        self.width = layout.decode_window(self.K)
        self.sizes = [int(s) for s in sizes]
        self.max_bs = self.sizes[-1]
        self.device = torch.device(device)
        with torch.no_grad():
            self.buf = StepBuffers.allocate(self.max_bs, self.K, aux_width, aux_dtype, self.device)
        self._batches = {bs: self._forward_batch(bs) for bs in self.sizes}
        self.graphs: dict[int, Any] = {}
        self.capture_s: Optional[float] = None
        self.last_bs: Optional[int] = None        # the padded size of the last run (records, tests)

    # ------------------------------------------------------------------ the static forward batch of one size
    def _forward_batch(self, bs: int) -> Any:
        """SGLang's ``ForwardBatch`` over the buffers' first ``bs`` rows (DRAFT_EXTEND_V2, 2K rows per request;
        ``seq_lens`` = committed + 2K as SGLang's draft extend hands it to the backend, ``extend_seq_lens_tensor``
        on the spec info for the graph metadata's prefix lengths). No host mirrors (``seq_lens_cpu``,
        ``seq_lens_sum``): their values change per replay and the step's metadata paths do not read them."""
        from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch, ForwardMode
        from sglang.srt.speculative.eagle_info import EagleDraftExtendInput

        b, n = self.buf, bs * self.width
        spec = EagleDraftExtendInput(hidden_states=None, num_tokens_per_req=self.width,
                                     num_tokens_for_logprob_per_req=self.K)
        spec.extend_seq_lens_tensor = b.extend_lens[:bs]
        spec.pedagle_plan = None
        placeholder = torch.zeros(n, dtype=torch.int64, device=self.device)
        return ForwardBatch(forward_mode=ForwardMode.DRAFT_EXTEND_V2, batch_size=bs, input_ids=placeholder,
                            req_pool_indices=b.req_pool_indices[:bs], seq_lens=b.post_seq_lens[:bs],
                            out_cache_loc=b.out_cache_loc[:n], seq_lens_sum=None, positions=placeholder,
                            extend_seq_lens=b.extend_lens[:bs], extend_prefix_lens=b.prefix_lens[:bs],
                            extend_start_loc=b.extend_start_loc[:bs], extend_seq_lens_cpu=[self.width] * bs,
                            spec_info=spec, capture_hidden_mode=CaptureHiddenMode.NULL, return_logprob=False)

    # ------------------------------------------------------------------ outside the graph: inputs
    def _fill(self, bs: int, B: int, bonus: Tensor, verified: Tensor, seq_lens: Tensor, accept_lens: Tensor,
              new_bonus: Tensor, aux: Tensor, req_pool_indices: Tensor) -> None:
        """Copy the live batch (B requests) into rows [0, B) and padding into rows [B, bs); device ops only."""
        b, K, w = self.buf, self.K, self.width
        if B:                        # the small index tensors in one multi-tensor copy (one launch on CUDA)
            torch._foreach_copy_([b.bonus[:B], b.verified[:B], b.seq_lens[:B], b.accept_lens[:B], b.new_bonus[:B],
                                  b.req_pool_indices[:B]],
                                 [bonus, verified, seq_lens, accept_lens, new_bonus, req_pool_indices])
            b.aux[:B * (K + 1)].copy_(aux)
            b.out_cache_loc[:B * w].copy_(layout.draft_extend_cache_locs(self.req_to_token, b.req_pool_indices[:B],
                                                                         b.seq_lens[:B], w))
        if bs > B:
            torch._foreach_zero_([b.bonus[B:bs], b.verified[B:bs], b.seq_lens[B:bs], b.new_bonus[B:bs]])
            b.accept_lens[B:bs].fill_(1)
            b.aux[B * (K + 1):bs * (K + 1)].zero_()
            b.req_pool_indices[B:bs].fill_(PAD_REQ)
            b.out_cache_loc[B * w:bs * w].zero_()
        torch.add(b.seq_lens[:bs], w, out=b.post_seq_lens[:bs])
        b.prefix_lens[:bs].copy_(b.seq_lens[:bs])

    # ------------------------------------------------------------------ inside the graph: the step
    def _step(self, bs: int) -> None:
        """The decode draft step of the buffers' first ``bs`` requests -> ``buf.drafts[:bs]`` (what is captured)."""
        from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

        b, K = self.buf, self.K
        fb = self._batches[bs]
        step = layout.decode_step_input(b.bonus[:bs], b.verified[:bs], b.seq_lens[:bs], b.accept_lens[:bs],
                                        b.new_bonus[:bs], b.aux[:bs * (K + 1)])
        plan = plan_step(step, K, self.mask_token_id)
        fb.input_ids, fb.positions = plan.expanded.input_ids, plan.expanded.positions
        fb.spec_info.positions = plan.expanded.positions
        fb.spec_info.pedagle_plan = plan
        if self.mode == "graph":
            self.backend.init_forward_metadata_in_graph(fb)
        with forward_context(ForwardContext(attn_backend=self.backend)):
            logits = self.model.forward(fb.input_ids, fb.positions, fb).next_token_logits
        drafts, _ = greedy_drafts(self.model.drafter, logits, bs, K)
        b.drafts[:bs].copy_(drafts)

    # ------------------------------------------------------------------ capture / run
    def capture(self, capture_fn: Callable[[Callable[[], None], Any], Any] | None = None) -> None:
        """Capture one graph per size, largest first, all in one memory pool (mode 'graph', CUDA). ``capture_fn(fn,
        pool) -> graph`` (default `pedagle_core.engine.graphs.capture_graph`; tests pass a stand-in): the graph has
        ``replay()`` and ``pool()``."""
        capture_fn = capture_fn or capture_graph
        if self.mode != "graph":
            raise RuntimeError(f"capture() in mode {self.mode!r}; only mode 'graph' captures")
        t0 = time.perf_counter()
        pool = None
        windowed = any(w is not None for w in getattr(self.model.attn, "windows", []))
        with torch.no_grad():
            for bs in reversed(self.sizes):
                fb = self._batches[bs]
                self._fill(bs, 0, *([None] * 7))
                self.backend.init_forward_metadata_out_graph(fb, in_capture=True)
                meta = getattr(self.backend, "forward_metadata", None)
                if windowed and getattr(meta, "window_kv_indices", None) is None:
                    raise GraphUnsupported(
                        f"the drafter has sliding-window layers and {type(self.backend).__name__}'s draft-extend "
                        "graph metadata carries no window rail in this SGLang release")
                g = capture_fn(functools.partial(self._step, bs), pool)
                if pool is None:
                    pool = g.pool()
                self.graphs[bs] = g
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - t0

    def can_run(self, B: int) -> bool:
        return 1 <= B <= self.max_bs and (self.mode == "eager" or padded_size(self.sizes, B) in self.graphs)

    def run(self, bonus: Tensor, verified: Tensor, seq_lens: Tensor, accept_lens: Tensor, new_bonus: Tensor,
            aux: Tensor, req_pool_indices: Tensor) -> Tensor:
        """The next drafts [B, K] (target ids) of a decode step of B requests (shapes as
        `layout.decode_step_input`; ``req_pool_indices`` [B]). B must pass `can_run`."""
        B, K = int(verified.shape[0]), self.K
        if tuple(verified.shape) != (B, K):
            raise ValueError(f"verified drafts: shape {tuple(verified.shape)}; expected [B, K={K}]")
        if tuple(aux.shape) != (B * (K + 1), self.buf.aux.shape[1]):
            raise ValueError(f"aux hidden states: shape {tuple(aux.shape)}; expected [{B * (K + 1)} (B*(K+1)), "
                             f"{self.buf.aux.shape[1]} (n_aux * target hidden)]")
        bs = padded_size(self.sizes, B)
        if bs is None or not self.can_run(B):
            raise ValueError(f"batch of {B} requests: the decode draft step was prepared for 1..{self.max_bs}")
        fb = self._batches[bs]
        with torch.no_grad():
            self._fill(bs, B, bonus, verified, seq_lens, accept_lens, new_bonus, aux, req_pool_indices)
            if self.mode == "graph":
                self.backend.init_forward_metadata_out_graph(fb)
                self.graphs[bs].replay()
            else:
                self.backend.init_forward_metadata(fb)
                self._step(bs)
        self.last_bs = bs
        return self.buf.drafts[:B].clone()


# ---------------------------------------------------------------------------------------------- worker side
def prepare_triton_backend(backend: Any, K: int, max_bs: int) -> None:
    """Set up the draft worker's own Triton draft-extend backend for PEAGLE's graphs: 2K rows per request in its
    DRAFT_EXTEND_V2 graph metadata (``num_draft_tokens``, read there only), graph buffers for ``max_bs``
    requests; the kv-index buffer sized for ``max_bs`` prefixes (what a draft extend reads), not for every row."""
    w = layout.decode_window(K)
    backend.num_draft_tokens = w
    max_context = int(getattr(backend, "max_context_len", 0) or backend.req_to_token.shape[1])
    kv_indices = torch.zeros(max_bs * max_context, dtype=torch.int64, device=backend.device)
    backend.init_cuda_graph_state(max_bs, max_bs * w, kv_indices_buf=kv_indices)


def graph_mode(device: torch.device | str, backend: Any) -> tuple[Optional[str], str]:
    """(mode, reason): the mode this worker's decode draft step runs in ('graph', 'eager' or None for SGLang's
    plain eager draft step), with the reason in words, from the switches and the attention backend."""
    mode = env_mode(os.environ.get(GRAPHS_ENV))
    if mode == "off":
        return None, f"{GRAPHS_ENV}=0"
    if mode == "eager":
        return "eager", f"{GRAPHS_ENV}=eager: static buffers, no capture"
    if torch.device(device).type != "cuda":
        return None, f"device {device} (CUDA graphs need CUDA)"
    from sglang.srt.model_executor.cuda_graph_config import Backend, Phase, check_cuda_graph_backend

    if check_cuda_graph_backend(Phase.DECODE, Backend.DISABLED):
        return None, "SGLang's decode CUDA graphs are disabled (--disable-cuda-graph)"
    try:
        from sglang.srt.environ import envs

        if envs.SGLANG_DISABLE_DRAFT_EXTEND_CUDA_GRAPH.get():
            return None, "SGLANG_DISABLE_DRAFT_EXTEND_CUDA_GRAPH is set"
    except (ImportError, AttributeError):
        pass
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    if backend is None or not isinstance(backend, TritonAttnBackend):
        return None, (f"attention backend {type(backend).__name__}: PEAGLE's draft-step graph supports the triton "
                      "backend (--attention-backend triton)")
    return "graph", "triton attention backend"


def sglang_capture_sizes(draft_runner: Any) -> list[int]:
    """SGLang's decode cuda-graph batch sizes for this runner (``get_batch_sizes_to_capture``), capped by its
    request pool; powers of two up to the pool size where SGLang has none configured (CPU engine)."""
    max_requests = int(draft_runner.req_to_token_pool.size)
    try:
        from sglang.srt.model_executor.runner import get_batch_sizes_to_capture

        sizes = list(get_batch_sizes_to_capture(draft_runner)[0])
    except Exception as e:  # noqa: BLE001 - no cuda-graph config (CPU engine, graphs disabled)
        logger.info("pedagle: SGLang's decode cuda-graph batch sizes unavailable (%s: %s); capturing powers of two "
                    "up to the request pool (%d)", type(e).__name__, e, max_requests)
        sizes = []
    if not sizes:
        sizes = [1 << i for i in range(max_requests.bit_length())]
    return capture_sizes(sizes, max_requests)


def build_for_worker(worker: Any) -> Optional[DecodeDraftGraphs]:
    """The runner of a `worker.PEagleDraftWorker` (after its attention backend exists), captured on CUDA; None
    when the decode draft step runs SGLang's plain eager path. Logs one line either way."""
    backend = worker.draft_extend_attn_backend
    mode, why = graph_mode(worker.device, backend)
    if mode is None:
        logger.info("pedagle: PEAGLE decode draft step runs eagerly (%s)", why)
        return None
    drafter = worker.drafter
    override = env_sizes(os.environ.get(SIZES_ENV))
    sizes = (capture_sizes(override, int(worker.draft_runner.req_to_token_pool.size)) if override
             else sglang_capture_sizes(worker.draft_runner))
    runner = None
    old_num_draft_tokens = getattr(backend, "num_draft_tokens", None)
    try:
        if mode == "graph":
            prepare_triton_backend(backend, worker.K, sizes[-1])
        runner = DecodeDraftGraphs(worker.model, backend, worker.req_to_token, worker.K, worker.mask_token_id, sizes,
                                   mode=mode, aux_width=int(drafter.fc.weight.shape[1]),
                                   aux_dtype=drafter.fc.weight.dtype, device=worker.device)
        if mode == "graph":
            runner.capture()
    except Exception as e:  # noqa: BLE001 - the graphs are an optimisation: say why, run eagerly
        if mode == "graph":
            if torch.device(worker.device).type == "cuda":
                torch.cuda.synchronize()
            if old_num_draft_tokens is not None:
                backend.num_draft_tokens = old_num_draft_tokens
        logger.warning("pedagle: PEAGLE decode draft step NOT captured, runs eagerly (%s: %s)", type(e).__name__, e)
        return None
    if mode == "graph":
        logger.info("pedagle: PEAGLE decode draft step captured in CUDA graphs for batch sizes %s (K = %d, %d rows "
                    "per request) in %.1f s", sizes, worker.K, runner.width, runner.capture_s)
    else:
        logger.info("pedagle: PEAGLE decode draft step on static buffers without capture (%s), batch sizes %s",
                    why, sizes)
    return runner


__all__ = ["DecodeDraftGraphs", "StepBuffers", "GraphUnsupported", "GRAPHS_ENV", "SIZES_ENV", "PAD_REQ", "env_mode",
           "env_sizes", "capture_sizes", "padded_size", "prepare_triton_backend", "graph_mode",
           "sglang_capture_sizes", "build_for_worker"]


if __name__ == "__main__":
    import sys

    if "--selfcheck" not in sys.argv[1:]:
        sys.exit("usage: python -m pedagle_backends.sglang.cuda_graphs --selfcheck [graph_selfcheck options]")
    from .graph_selfcheck import main

    sys.exit(main(sys.argv[1:]))
