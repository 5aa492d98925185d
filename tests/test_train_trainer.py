"""Trainer end to end on a toy target (CPU): loss goes down, resume == uninterrupted, train/inference alignment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pedagle_core.train.trainer import TrainConfig, train


pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64


def make_toy_target(path: Path, n_prompts: int = 24, seed: int = 0) -> Path:
    """A tiny random Llama with peaked next-token distributions + pre-tokenised prompts."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, initializer_range=0.4,
                      bos_token_id=0, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    g = torch.Generator().manual_seed(seed + 1)
    with (path / "prompts.jsonl").open("w") as f:
        for _ in range(n_prompts):
            n = int(torch.randint(3, 9, (1,), generator=g))
            f.write(json.dumps({"input_ids": torch.randint(2, VOCAB - 4, (n,), generator=g).tolist()}) + "\n")
    return path


def toy_config(target: Path, out: Path, **kw) -> TrainConfig:
    base = dict(target=str(target), data=str(target / "prompts.jsonl"), out=str(out), depth=4, layers=1,
                steps=6, lr=3e-3, seq_len=64, max_new_tokens=20, regen_batch=8, dtype="fp32", device="cpu",
                aux_layers=[1, 2, 3], draft_vocab=48, progress=False, seed=0, warmup_steps=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    target = make_toy_target(root / "target")
    cache = root / "cache"
    train(toy_config(target, root / "prep", cache_dir=str(cache), prepare_only=True))
    return target, cache


def _final_state(out: Path) -> dict:
    ck = sorted((out / "train" / "checkpoints").glob("step-*"))[-1]
    return torch.load(ck / "train_state.pt", weights_only=False)["model"]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]


def test_cache_and_sequences(toy):
    target, cache = toy
    man = json.loads((cache / "manifest.json").read_text())
    docs = [json.loads(x) for x in (cache / "sequences.jsonl").read_text().splitlines()]
    assert man["num_documents"] == len(docs) == 24 and man["aux_layer_ids"] == [1, 2, 3]
    assert all(len(d["input_ids"]) > d["prompt_len"] for d in docs)          # a response was generated


def test_smoke_training_lowers_loss(toy, tmp_path):
    target, cache = toy
    res = train(toy_config(target, tmp_path / "run", cache_dir=str(cache), steps=40, lr=5e-3, segments=2))
    m = [r for r in _metrics(tmp_path / "run") if "loss" in r]
    first = sum(r["loss"] for r in m[:4]) / 4
    last = sum(r["loss"] for r in m[-4:]) / 4
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in m)
    assert last < 0.8 * first, (first, last)
    assert res["acc"][0] is not None
    # the canonical checkpoint loads back through formats and carries the trained vocabulary / mask token
    from pedagle_core.formats import load_drafter
    dr = load_drafter(tmp_path / "run")
    assert dr.config.parallel_depth == 4 and dr.config.draft_vocab_size == 48
    assert dr.config.mask_token_id is not None and dr.config.aux_layer_ids == (1, 2, 3)


def test_resume_equals_uninterrupted(toy, tmp_path):
    target, cache = toy
    kw = dict(cache_dir=str(cache), steps=4, save_every=2, dtype="fp64", segments=2)
    train(toy_config(target, tmp_path / "full", **kw))
    train(toy_config(target, tmp_path / "cut", stop_after=2, **kw))
    assert [r["step"] for r in _metrics(tmp_path / "cut") if "loss" in r] == [1, 2]
    train(toy_config(target, tmp_path / "cut", resume=True, **kw))
    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "cut")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12, msg=k)
    la = [r["loss"] for r in _metrics(tmp_path / "full") if "loss" in r]
    lb = [r["loss"] for r in _metrics(tmp_path / "cut") if "loss" in r]
    assert la == pytest.approx(lb, rel=1e-12)


def test_online_autoregressive_run(toy, tmp_path):
    """EAGLE-3 with 2 test-time-training steps, online features (no cache), sampled regeneration."""
    target, _ = toy
    res = train(toy_config(target, tmp_path / "ar", mode="autoregressive", ttt_steps=2, steps=3, regen="sample",
                           max_prompts=8))
    assert len(res["acc"]) == 2 and res["count"][1] > 0
    from pedagle_core.formats import load_drafter
    dr = load_drafter(tmp_path / "ar")
    assert dr.config.num_hidden_layers == 1


def test_training_rows_match_inference_drafting():
    """The logits of the COD elements of one chain equal P-EAGLE drafting at inference (draft_parallel)."""
    from pedagle_core import Drafter, DrafterConfig
    from pedagle_core.attention import ContiguousKVCache
    from pedagle_core.draft import StepInput, draft_parallel
    from pedagle_core.train.cod import sample_cod
    from pedagle_core.train.mask import Meta, TrainAttention
    from pedagle_core.train.module import TrainableDrafter
    from pedagle_core.train.partition import PackedRows

    torch.manual_seed(0)
    Kd = 4
    cfg = DrafterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48, vocab_size=40, target_hidden_size=16, mask_token_id=39,
                        parallel_depth=Kd)
    dr = Drafter(cfg).double()
    with torch.no_grad():
        for n, p in dr.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in n else torch.randn_like(p) * 0.3)
    mod = TrainableDrafter(dr, parallel=True)
    n = 12
    x = torch.randint(0, 39, (n,))
    aux = torch.randn(n, 48, dtype=torch.float64)
    # training rows: row p = (token p+1, aux p); two documents packed so the second one is checked
    pre = 5
    rows = PackedRows(torch.cat([torch.randint(0, 39, (pre,)), x[1:]]), torch.cat([torch.arange(pre), torch.arange(n - 1)]),
                      torch.cat([torch.zeros(pre), torch.ones(n - 1)]).long(), torch.ones(pre + n - 1, dtype=torch.bool),
                      torch.cat([torch.randn(pre, 48, dtype=torch.float64), aux[:-1]]), torch.zeros(pre + n - 1, 16))
    el = sample_cod(rows.valid, rows.doc, Kd, 1.0, 1.0)
    a, d = el.anchor, el.depth
    E0 = int((d == 0).sum())
    ids = torch.where(d == 0, rows.input_ids[a], torch.full_like(a, 39))
    meta = Meta(a, d, rows.doc[a], rows.positions[a] + d)
    logits = mod(ids, rows.positions[a] + d, rows.aux[a[:E0]], TrainAttention(meta), torch.arange(len(el)))
    for anchor_pos in (0, 3, 6):
        row = pre + anchor_pos
        sel = [int(torch.nonzero((a == row) & (d == k)).view(-1)[0]) for k in range(Kd)]
        train_probs = torch.softmax(logits[sel], -1)
        # inference: prefill of x_0..x_anchor, bonus token x_{anchor+1}
        T = anchor_pos + 1
        step = StepInput(x[:T], torch.arange(T), torch.tensor([0, T]), None, x[T:T + 1], aux[:T])
        cache = ContiguousKVCache(cfg.num_hidden_layers, 1, 64, 2, 8, dtype=torch.float64).for_requests(torch.tensor([0]))
        out = draft_parallel(dr, step, Kd, cache, temperature=1.0, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.probs[0].double(), train_probs, rtol=1e-5, atol=1e-7)


def test_ttt_matches_autoregressive_inference():
    """Test-time training of the EAGLE-3 drafter: each step's KL equals the inference loop's (teacher-forced
    tokens, the drafter's own fed-back hidden, the reference KV cache)."""
    from pedagle_core import Drafter, DrafterConfig
    from pedagle_core.attention import ContiguousKVCache
    from pedagle_core.draft import StepInput, forward_expanded
    from pedagle_core.expand import compute_slot_mapping
    from pedagle_core.train.cod import sample_cod
    from pedagle_core.train.loss import kl_per_element
    from pedagle_core.train.module import TrainableDrafter
    from pedagle_core.train.partition import PackedRows
    from pedagle_core.train.ttt import run_pack_ttt

    torch.manual_seed(1)
    steps = 3
    cfg = DrafterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48, vocab_size=40, target_hidden_size=16)
    dr = Drafter(cfg).double()
    with torch.no_grad():
        for n, p in dr.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in n else torch.randn_like(p) * 0.3)
    mod = TrainableDrafter(dr, parallel=False)
    n = 10
    x = torch.randint(0, 40, (n,))
    aux = torch.randn(n, 48, dtype=torch.float64)
    fin = torch.randn(n, 16, dtype=torch.float64)
    W = torch.randn(40, 16, dtype=torch.float64)
    rows = PackedRows(x[1:], torch.arange(n - 1), torch.zeros(n - 1, dtype=torch.long),
                      torch.arange(n - 1) <= n - 3, aux[:-1], fin[1:])
    el = sample_cod(rows.valid, rows.doc, steps, 1.0, 1.0)
    st = run_pack_ttt(mod, rows, el, num_depths=steps, head_weight=W, backward=False)
    want = torch.zeros(steps, dtype=torch.float64)
    cnt = torch.zeros(steps)
    with torch.no_grad():
        for a in range(n - 1):
            T = a + 1
            step = StepInput(x[:T], torch.arange(T), torch.tensor([0, T]), None, x[T:T + 1], aux[:T])
            cache = ContiguousKVCache(2, 1, 64, 2, 8, dtype=torch.float64).for_requests(torch.tensor([0]))
            batch, out, fb = forward_expanded(dr, step, 1, cache, 0)
            r = batch.sample_rows
            pos, hid, o = batch.positions[r], fb[r], out[r]
            for j in range(steps):
                t = a + j                                  # target row of (a, j)
                if t > n - 3:
                    break
                if j > 0:
                    pos = pos + 1
                    req = torch.zeros(1, dtype=torch.long)
                    slots = compute_slot_mapping(cache.block_table, req, pos, cache.block_size, cache.max_model_len)
                    o, hid = dr(rows.input_ids[t:t + 1], pos, hid, cache.attention(pos, slots, req))
                want[j] += kl_per_element(dr.compute_logits(o), (rows.final_hidden[t:t + 1] @ W.t()))[0]
                cnt[j] += 1
    assert st.count.tolist() == cnt.tolist()
    torch.testing.assert_close(st.kl, want, rtol=1e-9, atol=1e-12)
