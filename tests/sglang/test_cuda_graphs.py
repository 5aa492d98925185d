"""PEAGLE's decode draft-step graph runner (`cuda_graphs.DecodeDraftGraphs`) on the CPU, without capture.

Mode "eager" runs exactly the function that is captured on CUDA (`DecodeDraftGraphs._step`), over the same
static buffers with the same padding, with SGLang's torch-native attention backend and real pools. Its drafts
must equal those of the worker's eager path (layout + plan_step + a DRAFT_EXTEND_V2 ForwardBatch, as
test_drafting builds it) step by step, padded or not, and its KV writes must equal the eager path's on every
live slot (padding writes only SGLang's padding slot 0). Capture and replay themselves need CUDA: the GPU
self-check (``python -m pedagle_backends.sglang.cuda_graphs --selfcheck``) runs them.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pedagle_backends.sglang import cuda_graphs as cg
from pedagle_backends.sglang import layout
from tiny import MASK_ID, VOCAB, save_checkpoint, tiny_drafter

from test_drafting import MAXLEN, SglangSide, sglang_drafter

pytestmark = pytest.mark.sglang_versions          # ForwardBatch / spec-input / backend hooks differ by release


# ---------------------------------------------------------------------------------------------- helpers
def test_env_mode():
    assert [cg.env_mode(v) for v in (None, "", "1", "auto")] == ["auto"] * 4
    assert cg.env_mode("0") == "off" and cg.env_mode("eager") == "eager"
    with pytest.raises(ValueError, match="PEDAGLE_SGLANG_DRAFT_GRAPHS.*expected '1'"):
        cg.env_mode("yes please")


def test_env_sizes():
    assert cg.env_sizes(None) is None and cg.env_sizes(" ") is None
    assert cg.env_sizes("1, 2,4,8") == [1, 2, 4, 8]
    for bad in ("0,2", "two", ","):
        with pytest.raises(ValueError, match="PEDAGLE_SGLANG_DRAFT_GRAPH_BS.*positive batch sizes"):
            cg.env_sizes(bad)


def test_capture_sizes_and_padding():
    assert cg.capture_sizes([1, 2, 4, 8, 16, 24], 10) == [1, 2, 4, 8, 10]     # capped, the pool size added
    assert cg.capture_sizes([4, 1, 2, 2], 64) == [1, 2, 4]
    assert cg.capture_sizes([], 3) == [3]
    with pytest.raises(ValueError, match="not positive integers"):
        cg.capture_sizes([0, 2], 8)
    with pytest.raises(ValueError, match="max_requests"):
        cg.capture_sizes([1], 0)
    sizes = [1, 2, 4, 8]
    assert [cg.padded_size(sizes, b) for b in (1, 2, 3, 4, 5, 8, 9, 0)] == [1, 2, 4, 4, 8, 8, None, None]


def test_graph_mode_switches(monkeypatch):
    monkeypatch.setenv(cg.GRAPHS_ENV, "0")
    assert cg.graph_mode("cuda", object()) == (None, "PEDAGLE_SGLANG_DRAFT_GRAPHS=0")
    monkeypatch.setenv(cg.GRAPHS_ENV, "eager")
    assert cg.graph_mode("cpu", None)[0] == "eager"
    monkeypatch.delenv(cg.GRAPHS_ENV)
    mode, why = cg.graph_mode("cpu", None)
    assert mode is None and "device cpu" in why


# ---------------------------------------------------------------------------------------------- the runner
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tiny_drafter(seed=5, num_layers=2, window=4)            # a sliding-window layer and d2t
    return save_checkpoint(d, tmp_path_factory.mktemp("graphs") / "vllm", "vllm")


def make_runner(side: SglangSide, K: int, sizes):
    m = side.model
    return cg.DecodeDraftGraphs(m, side.backend, side.rtt, K, MASK_ID, sizes, mode="eager",
                                aux_width=int(m.drafter.fc.weight.shape[1]), aux_dtype=m.drafter.fc.weight.dtype,
                                device="cpu")


def eager_path(side: SglangSide, step, K: int, req: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """The worker's eager decode draft step for the requests ``req`` (pool rows): plan, layout, a
    DRAFT_EXTEND_V2 ForwardBatch, the backend's eager metadata, the drafter, greedy readout."""
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    from pedagle_backends.sglang.drafting import greedy_drafts, plan_step

    n = int(req.shape[0])
    plan = plan_step(step, K, MASK_ID)
    lay = layout.decode_extend_layout(side.rtt, req, seq_lens, K)
    fb = ForwardBatch(forward_mode=ForwardMode.DRAFT_EXTEND_V2, batch_size=n, input_ids=plan.expanded.input_ids,
                      req_pool_indices=req, seq_lens=lay.seq_lens, out_cache_loc=lay.out_cache_loc,
                      seq_lens_sum=int(lay.seq_lens.sum()), positions=plan.expanded.positions,
                      extend_prefix_lens=lay.prefix_lens, extend_seq_lens=lay.extend_lens,
                      spec_info=SimpleNamespace(pedagle_plan=plan))
    side.backend.init_forward_metadata(fb)
    with torch.no_grad(), forward_context(ForwardContext(attn_backend=side.backend)):
        logits = side.model.compute_sample_logits(fb)
    return greedy_drafts(side.model.drafter, logits, n, K)[0]


def kv_state(side: SglangSide) -> list[torch.Tensor]:
    kv = side.kv
    return [torch.cat([kv.get_key_buffer(i), kv.get_value_buffer(i)], dim=-1).clone()
            for i in range(side.model.pedagle_config.num_hidden_layers)]


@pytest.mark.parametrize("K", [1, 3])
def test_eager_replay_equals_eager_path_with_padding(ckpt, K):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    B = 3
    model = sglang_drafter(ckpt)
    eager, static = SglangSide(model, B), SglangSide(model, B)           # same page tables, separate KV pools
    runner = make_runner(static, K, [1, 2, 4])
    g = torch.Generator().manual_seed(40 + K)
    n_aux = model.pedagle_config.fc_input_size

    # prefill (eager on both sides: the prefill draft step is never captured)
    lens = torch.tensor([6, 11, 3])
    ids = torch.randint(2, VOCAB, (int(lens.sum()),), generator=g)
    tail = torch.randint(2, VOCAB, (B,), generator=g)
    aux = torch.randn(int(lens.sum()), n_aux, generator=g)
    step = layout.prefill_step_input(ids, lens, torch.zeros(B, dtype=torch.long), tail, aux)
    mask_locs = eager.rtt[eager.req[:, None], layout.prefill_mask_positions(lens, K)].long()
    prompt_locs = torch.cat([eager.rtt[eager.req[b], : int(lens[b])].long() for b in range(B)])
    lay = layout.prefill_extend_layout(prompt_locs, lens, torch.zeros(B, dtype=torch.long), mask_locs, K)
    d_e, _ = eager.run(step, K, lay, ForwardMode.EXTEND)
    d_s, _ = static.run(step, K, lay, ForwardMode.EXTEND)
    assert torch.equal(d_e, d_s)

    seq_lens, bonus, drafts = lens.clone(), tail.clone(), d_e
    live = torch.arange(B)                                      # which of the B requests are in this step's batch
    padded_steps = 0
    for s in range(6):
        if s == 4:
            live = torch.tensor([0, 2])                         # request 1 finished: a batch of 2 (exact size)
        n = len(live)
        acc = torch.randint(1, K + 2, (n,), generator=g)
        if s == 0:
            acc[0], acc[-1] = 1, K + 1                          # none / all accepted
        new_bonus = torch.randint(2, VOCAB, (n,), generator=g)
        aux = torch.randn(n * (K + 1), n_aux, generator=g)
        sl, bo, dr, req = seq_lens[live], bonus[live], drafts[live], eager.req[live]
        # the worker's eager path
        step = layout.decode_step_input(bo, dr, sl, acc, new_bonus, aux)
        want = eager_path(eager, step, K, req, sl)
        # the static-buffer step (padded to the next size: 3 -> 4)
        assert runner.can_run(n)
        got = runner.run(bo, dr, sl, acc, new_bonus, aux, req)
        padded_steps += runner.last_bs != n
        assert runner.last_bs == cg.padded_size([1, 2, 4], n)
        assert torch.equal(got, want), f"decode step {s}"
        assert got.data_ptr() != runner.buf.drafts.data_ptr()       # a copy: the next run overwrites the buffer
        seq_lens[live] += acc
        bonus[live], drafts[live] = new_bonus, got
        # every slot but SGLang's padding slot 0 holds what the eager path wrote (the same slots written; values
        # equal up to float rounding: a padded batch has more rows, so the projections may round differently)
        for a, b in zip(kv_state(eager), kv_state(static)):
            assert torch.equal(a[1:] != 0, b[1:] != 0), f"KV slots written differ after step {s}"
            torch.testing.assert_close(a[1:], b[1:], rtol=1e-5, atol=1e-5)
    assert padded_steps == 4                                     # B=3 steps ran padded to 4; B=2 steps did not
    assert int(seq_lens.max()) + layout.decode_window(K) <= MAXLEN
    assert not runner.can_run(5) and not runner.can_run(0)


def test_padding_rows_write_only_slot_0(ckpt):
    """A batch of 1 padded to 2: the padding request (pool row 0, committed length 0) writes KV slot 0 only."""
    K, B = 2, 2
    model = sglang_drafter(ckpt)
    side = SglangSide(model, B)
    runner = make_runner(side, K, [2])
    before = kv_state(side)
    n_aux = model.pedagle_config.fc_input_size
    g = torch.Generator().manual_seed(7)
    got = runner.run(torch.tensor([5]), torch.tensor([[7, 9]]), torch.tensor([4]), torch.tensor([2]),
                     torch.tensor([11]), torch.randn(K + 1, n_aux, generator=g), side.req[1:2])
    assert got.shape == (1, K) and runner.last_bs == 2
    assert torch.equal(runner.buf.req_pool_indices[1:2], torch.tensor([cg.PAD_REQ]))
    assert torch.equal(runner.buf.out_cache_loc[layout.decode_window(K):2 * layout.decode_window(K)],
                       torch.zeros(layout.decode_window(K), dtype=torch.int64))
    written = torch.zeros(before[0].shape[0], dtype=torch.bool)
    for a, b in zip(before, kv_state(side)):
        written |= (a != b).flatten(1).any(1)
    live = side.rtt[side.req[1], 4:4 + layout.decode_window(K)].long()
    assert set(written.nonzero().flatten().tolist()) <= set(live.tolist()) | {0}
    assert bool(written[live].all())                             # the live request's window was written
    assert not bool(written[side.rtt[side.req[0]].long()].any())  # the other request's slots untouched


def test_run_refuses_bad_shapes(ckpt):
    model = sglang_drafter(ckpt)
    side = SglangSide(model, 2)
    runner = make_runner(side, 2, [1, 2])
    n_aux = model.pedagle_config.fc_input_size
    args = dict(bonus=torch.tensor([5]), verified=torch.tensor([[7, 9]]), seq_lens=torch.tensor([4]),
                accept_lens=torch.tensor([2]), new_bonus=torch.tensor([11]), aux=torch.zeros(3, n_aux),
                req_pool_indices=side.req[:1])
    with pytest.raises(ValueError, match=r"aux hidden states: shape \(2, .*expected \[3 \(B\*\(K\+1\)\)"):
        runner.run(**{**args, "aux": torch.zeros(2, n_aux)})
    with pytest.raises(ValueError, match=r"verified drafts: shape \(1, 3\); expected \[B, K=2\]"):
        runner.run(**{**args, "verified": torch.tensor([[7, 9, 1]])})
    with pytest.raises(RuntimeError, match="only mode 'graph' captures"):
        runner.capture()
    with pytest.raises(ValueError, match="mode = 'cuda'"):
        cg.DecodeDraftGraphs(model, side.backend, side.rtt, 2, MASK_ID, [1], mode="cuda", aux_width=n_aux,
                             aux_dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="increasing positive batch sizes"):
        cg.DecodeDraftGraphs(model, side.backend, side.rtt, 2, MASK_ID, [2, 1], mode="eager", aux_width=n_aux,
                             aux_dtype=torch.float32, device="cpu")


# ---------------------------------------------------------------------------------------------- graph mode, no CUDA
class FakeGraph:
    """Stands in for a captured CUDA graph on the CPU: replay() re-runs the captured function."""

    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def replay(self):
        self.log.append("replay")
        self.fn()

    def pool(self):
        return "pool"


def spy_backend(backend, log):
    """Record the runner's metadata calls on ``backend`` (torch-native: its graph-metadata hooks do nothing, its
    forward reads the batch, so a replayed step is still computed right)."""
    out_graph, eager = backend.init_forward_metadata_out_graph, backend.init_forward_metadata
    backend.init_forward_metadata_out_graph = lambda fb, in_capture=False: (
        log.append(("out_graph", fb.batch_size, in_capture)), out_graph(fb, in_capture))
    backend.init_forward_metadata = lambda fb: (log.append(("eager_metadata", fb.batch_size)), eager(fb))
    return backend


@pytest.fixture(scope="module")
def full_ckpt(tmp_path_factory):
    d = tiny_drafter(seed=6, num_layers=2, window=None)
    return save_checkpoint(d, tmp_path_factory.mktemp("graphs_full") / "vllm", "vllm")


def test_graph_mode_capture_order_metadata_and_replay(full_ckpt):
    """Mode 'graph' with a stand-in capture: one graph per size, largest first, each after the backend's
    in-capture metadata; a run refreshes the metadata out of the graph, replays the padded size's graph, and gives
    the eager path's drafts."""
    K, B = 3, 3
    model = sglang_drafter(full_ckpt)
    side, eager = SglangSide(model, B), SglangSide(model, B)
    log: list = []
    spy_backend(side.backend, log)
    runner = cg.DecodeDraftGraphs(model, side.backend, side.rtt, K, MASK_ID, [1, 2, 4], mode="graph",
                                  aux_width=int(model.drafter.fc.weight.shape[1]),
                                  aux_dtype=model.drafter.fc.weight.dtype, device="cpu")
    captured = []

    def fake_capture(fn, pool):
        captured.append(pool)
        fn()                                   # warm-up, as _capture does
        return FakeGraph(fn, log)

    assert not runner.can_run(1)               # nothing captured yet
    runner.capture(capture_fn=fake_capture)
    assert [e for e in log if e[0] == "out_graph"] == [("out_graph", 4, True), ("out_graph", 2, True),
                                                       ("out_graph", 1, True)]
    assert captured == [None, "pool", "pool"] and sorted(runner.graphs) == [1, 2, 4]
    assert runner.capture_s is not None and runner.can_run(3) and not runner.can_run(5)
    g = torch.Generator().manual_seed(3)
    n_aux = model.pedagle_config.fc_input_size
    seq_lens = torch.tensor([4, 9, 6])
    bonus, drafts = torch.randint(2, VOCAB, (B,), generator=g), torch.randint(2, VOCAB, (B, K), generator=g)
    for s in range(3):
        acc = torch.randint(1, K + 2, (B,), generator=g)
        new_bonus = torch.randint(2, VOCAB, (B,), generator=g)
        aux = torch.randn(B * (K + 1), n_aux, generator=g)
        want = eager_path(eager, layout.decode_step_input(bonus, drafts, seq_lens, acc, new_bonus, aux), K,
                          eager.req, seq_lens)
        log.clear()
        got = runner.run(bonus, drafts, seq_lens, acc, new_bonus, aux, side.req)
        assert log == [("out_graph", 4, False), "replay"]            # no eager metadata, the graph of size 4
        assert torch.equal(got, want), f"step {s}"
        seq_lens, bonus, drafts = seq_lens + acc, new_bonus, got


def test_graph_mode_refuses_a_windowed_drafter_without_a_window_rail(ckpt):
    """A sliding-window drafter on a backend whose draft-extend graph metadata has no window rail (SGLang 0.5.17's
    Triton backend; torch-native here) is not captured: GraphUnsupported, and build_for_worker runs it eagerly."""
    model = sglang_drafter(ckpt)
    side = SglangSide(model, 2)
    runner = cg.DecodeDraftGraphs(model, side.backend, side.rtt, 2, MASK_ID, [1, 2], mode="graph",
                                  aux_width=int(model.drafter.fc.weight.shape[1]),
                                  aux_dtype=model.drafter.fc.weight.dtype, device="cpu")
    with pytest.raises(cg.GraphUnsupported, match="sliding-window layers.*no window rail"):
        runner.capture(capture_fn=lambda fn, pool: FakeGraph(fn, []))


def test_prepare_triton_backend_sizes_for_2k_rows():
    calls = []
    backend = SimpleNamespace(num_draft_tokens=4, max_context_len=50, device="cpu",
                              init_cuda_graph_state=lambda *a, **kw: calls.append((a, kw)))
    cg.prepare_triton_backend(backend, K=3, max_bs=8)
    assert backend.num_draft_tokens == 6                                  # 2K rows per request, not K+1
    (args, kw), = calls
    assert args == (8, 8 * 6) and kw["kv_indices_buf"].shape == (8 * 50,)


def fake_worker(side: SglangSide, K: int):
    m = side.model
    runner_ns = SimpleNamespace(req_to_token_pool=side.rtt_pool)
    return SimpleNamespace(draft_extend_attn_backend=side.backend, device="cpu", drafter=m.drafter, model=m,
                           draft_runner=runner_ns, req_to_token=side.rtt, K=K, mask_token_id=MASK_ID)


def test_build_for_worker_modes(full_ckpt, monkeypatch, caplog):
    model = sglang_drafter(full_ckpt)
    side = SglangSide(model, 2)
    worker = fake_worker(side, 2)
    monkeypatch.setenv(cg.GRAPHS_ENV, "0")
    with caplog.at_level("INFO", logger="pedagle.sglang"):
        assert cg.build_for_worker(worker) is None
    assert "runs eagerly (PEDAGLE_SGLANG_DRAFT_GRAPHS=0)" in caplog.text
    monkeypatch.setenv(cg.GRAPHS_ENV, "eager")
    monkeypatch.setenv(cg.SIZES_ENV, "1,2,4,8")
    caplog.clear()
    with caplog.at_level("INFO", logger="pedagle.sglang"):
        r = cg.build_for_worker(worker)
    assert r is not None and r.mode == "eager" and r.sizes == [1, 2]              # capped by the pool (2 requests)
    assert "static buffers without capture" in caplog.text and "[1, 2]" in caplog.text
    # graph mode whose capture fails: a warning, eager draft step, the backend's num_draft_tokens restored
    monkeypatch.setattr(cg, "graph_mode", lambda device, backend: ("graph", "test"))
    monkeypatch.setattr(cg, "prepare_triton_backend", lambda b, K, max_bs: setattr(b, "num_draft_tokens", 2 * K))

    def boom(self, capture_fn=None):
        raise RuntimeError("capture invalidated")

    monkeypatch.setattr(cg.DecodeDraftGraphs, "capture", boom)
    side.backend.num_draft_tokens = 3
    caplog.clear()
    with caplog.at_level("INFO", logger="pedagle.sglang"):
        assert cg.build_for_worker(worker) is None
    assert "NOT captured, runs eagerly (RuntimeError: capture invalidated)" in caplog.text
    assert side.backend.num_draft_tokens == 3
