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
