"""Teacher-forced reference drafts at the exact states an engine drafted from (used by vllm_gpu_e2e.py).

Two engines that serve the same greedy outputs may still visit different drafting states: a different
draft changes the acceptance count, and the next step starts from another position. Comparing with a
reference engine run on its own then lines up only where the paths happen to meet. Here the reference
is forced onto each recorded state instead: for request r and bonus position p (the recorder's
``bonus_positions``; the drafts propose the tokens at p+2 ...), the context is the served sequence
``seq = prompt + output``, the target's aux hidden states come from one target forward over ``seq``
(causal: row i sees seq[:i+1] only), and the drafter runs the prefill step of ``seq[:p+1]`` with
``seq[p+1]`` as the bonus token, on a fresh cache. For autoregressive (EAGLE-3) drafting, slot j > 0 is
fed the given ``prefix`` draft of slot j-1 (the engine's own draft), so every slot is drafted from the
same inputs as the engine's.

A differing draft is classified by the forced reference's logits the way `pedagle_core.engine.lossless`
classifies a differing output: gap = max logit - min(logit[a], logit[b]) over the two choices; a
near-tie when gap < `near_tie_margin(tie, dtype, max logit)` (the conformance tie margin, raised to two
ulps of the run's dtype at the logit magnitude).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from pedagle_core.attention import ContiguousKVCache
from pedagle_core.draft import StepInput, forward_expanded
from pedagle_core.engine.backend import load_drafter_for
from pedagle_core.engine.lossless import TIE_MARGINS, near_tie_margin
from pedagle_core.engine.target import TargetModel, load_hf_target, resolve_dtype
from pedagle_core.expand import compute_slot_mapping


@dataclass
class SlotLogits:
    """The forced reference's logits of one draft slot, reduced to what classification needs."""

    top1: int                # target-vocabulary id of the argmax
    top1_value: float
    margin: float            # top-1 minus top-2
    values: dict[int, float]  # logit of each asked-for target id (None if outside the draft vocabulary)


class ForcedReference:
    """pedagle's reference target + drafter (one dtype, one device) drafting at given states."""

    def __init__(self, target_dir: str, drafter_dir: str, parallel: bool, dtype: str, device: str) -> None:
        dt = resolve_dtype(dtype)
        self.dtype, self.parallel = dtype, parallel
        hf = load_hf_target(target_dir, dtype=dt, device=device)
        self.drafter = load_drafter_for(drafter_dir, hf, "parallel" if parallel else "autoregressive", dt, device)
        self.tm = TargetModel(hf, aux_layer_ids=self.drafter.config.aux_layer_ids)
        self.device = torch.device(device)
        # plain PyTorch everywhere: every state has its own row count, and the CUDA kernels' dispatch times
        # its variants for each new shape (on the H200, 2026-12-02: 180 s for 283 states of one config)
        import torch.nn.functional as F

        from pedagle_core.model import TORCH_OPS

        self.drafter.use_linear(F.linear)
        for m in self.drafter.modules():
            if hasattr(m, "ops"):
                m.ops = TORCH_OPS
        vd = int(self.drafter.config.draft_vocab_size)
        tgt = self.drafter.to_target_ids(torch.arange(vd, device=self.device)).tolist()
        self.t2d = {int(t): i for i, t in enumerate(tgt)}
        self._aux: dict[tuple[int, ...], torch.Tensor] = {}

    @torch.no_grad()
    def aux(self, seq: Sequence[int]) -> torch.Tensor:
        """The target's aux hidden states [T, n_aux*H] of every row of ``seq`` (one forward, cached)."""
        key = tuple(int(t) for t in seq)
        if key not in self._aux:
            T = len(key)
            self.tm.allocate(1, T + 8).impl = "torch"
            ids = torch.tensor(key, device=self.device)
            pos = torch.arange(T, device=self.device)
            zero = torch.zeros(T, dtype=torch.long, device=self.device)
            _, aux = self.tm.forward(ids, pos, zero, torch.zeros(1, dtype=torch.long, device=self.device),
                                     logits_rows=torch.tensor([T - 1], device=self.device))
            self._aux[key] = aux
        return self._aux[key]

    @torch.no_grad()
    def slot_logits(self, seq: Sequence[int], p: int, K: int, prefix: Sequence[int] | None = None) -> torch.Tensor:
        """[K, draft_vocab] float64 logits of the drafts the drafter proposes at bonus position ``p`` of ``seq``
        (``prefix``: the target ids fed to autoregressive slots 1..K-1; missing entries: the argmax)."""
        d, c = self.drafter, self.drafter.config
        aux = self.aux(seq)
        T = p + 1
        dev = self.device
        mml = len(seq) + K + 8
        cache = ContiguousKVCache(c.num_hidden_layers, 1, mml, c.num_key_value_heads, int(c.head_dim),
                                  dtype=d.fc.weight.dtype, device=dev, impl="torch").for_requests(
                                      torch.zeros(1, dtype=torch.long, device=dev), mml)
        step = StepInput(torch.tensor([int(t) for t in seq[:T]], device=dev), torch.arange(T, device=dev),
                         torch.tensor([0, T], device=dev), None, torch.tensor([int(seq[T])], device=dev), aux[:T])
        if self.parallel and K > 1:
            mask_id = c.mask_token_id if c.mask_token_id is not None else 0
            batch, out, _ = forward_expanded(d, step, K, cache, mask_id)
            return d.compute_logits(out[batch.sample_rows]).double().cpu()
        batch, out, feedback = forward_expanded(d, step, 1, cache, 0)
        rows = batch.sample_rows
        logits = [d.compute_logits(out[rows])]
        positions, hidden = batch.positions[rows], feedback[rows]
        req = torch.zeros(1, dtype=torch.long, device=dev)
        for j in range(1, K):
            prev = logits[-1]
            if prefix is not None and j - 1 < len(prefix):
                ids = torch.tensor([int(prefix[j - 1])], device=dev)
            else:
                ids = d.to_target_ids(prev.argmax(dim=-1))
            positions = positions + 1
            slots = compute_slot_mapping(cache.block_table, req, positions, cache.block_size, cache.max_model_len)
            out, hidden = d(ids, positions, hidden, cache.attention(positions, slots, req))
            logits.append(d.compute_logits(out))
        return torch.cat(logits, dim=0).double().cpu()

    def reduce(self, logits: torch.Tensor, ask: Sequence[Sequence[int]]) -> list[SlotLogits]:
        """Per slot: argmax (target id), its value, the top-2 margin and the logits of the ``ask`` ids."""
        out = []
        top = logits.topk(2, dim=-1)
        for j in range(logits.shape[0]):
            vals = {}
            for t in ask[j]:
                i = self.t2d.get(int(t))
                vals[int(t)] = None if i is None else float(logits[j, i])
            t1 = int(self.drafter.to_target_ids(top.indices[j, :1].to(self.device))[0])
            out.append(SlotLogits(t1, float(top.values[j, 0]), float(top.values[j, 0] - top.values[j, 1]), vals))
        return out


def classify(sl: SlotLogits, a: int, b: int, run_dtype: str) -> dict[str, Any]:
    """A differing draft (tokens ``a`` and ``b`` at one slot) against the forced reference's logits."""
    va = sl.top1_value if int(a) == sl.top1 else sl.values.get(int(a))
    vb = sl.top1_value if int(b) == sl.top1 else sl.values.get(int(b))
    if va is None or vb is None:
        return {"gap": None, "threshold": None, "near_tie": False, "why": "a token outside the draft vocabulary"}
    gap = sl.top1_value - min(va, vb)
    thr = near_tie_margin(TIE_MARGINS[run_dtype], run_dtype, sl.top1_value)
    return {"gap": gap, "threshold": thr, "near_tie": gap < thr, "ref_top1": sl.top1,
            "ref_top1_value": sl.top1_value, "ref_margin": sl.margin, "logit_a": va, "logit_b": vb}


def trace_states(refs: dict[str, ForcedReference], seqs: dict[int, list[int]], K: int, run_dtype: str,
                 a: dict[int, dict[int, list[int]]], b: dict[int, dict[int, list[int]]],
                 names: tuple[str, str] = ("native", "plugin")) -> dict[str, Any]:
    """Every state both recorders drafted from (request -> bonus position -> drafts), compared slot by slot.

    refs: {"float32": ForcedReference, ...} (the first classifies; the others report their argmax).
    Parallel drafting: every differing slot is classified (slots do not feed each other). Autoregressive:
    the first differing slot only (later slots are drafted from different inputs). Also each recorder
    against the classifying reference's argmax at every state it drafted from (its own drafts as prefix).
    """
    first = next(iter(refs))
    parallel = refs[first].parallel and K > 1
    out: dict[str, Any] = {"states_a": 0, "states_b": 0, "states_both": 0, "equal": 0, "differences": [],
                           f"{names[0]}_vs_reference": {"slots": 0, "equal": 0, "near_ties": 0, "unexplained": []},
                           f"{names[1]}_vs_reference": {"slots": 0, "equal": 0, "near_ties": 0, "unexplained": []}}
    for r in sorted(set(a) | set(b)):
        seq = seqs[r]
        for pos in sorted(set(a.get(r, {})) | set(b.get(r, {}))):
            x, y = a.get(r, {}).get(pos), b.get(r, {}).get(pos)
            if pos + 1 >= len(seq):
                continue
            out["states_a"] += x is not None
            out["states_b"] += y is not None
            per: dict[tuple[str, str], list[SlotLogits]] = {}
            for name, drafts in ((names[0], x), (names[1], y)):
                if drafts is None:
                    continue
                ask = [[drafts[j]] + ([x[j], y[j]] if x is not None and y is not None else []) for j in range(K)]
                for dname, ref in refs.items():
                    if parallel and (dname, "shared") in per:
                        continue
                    lg = ref.slot_logits(seq, pos, K, None if parallel else drafts)
                    per[(dname, "shared" if parallel else name)] = ref.reduce(lg, ask)
                main_sl = per[(first, "shared" if parallel else name)]
                st = out[f"{name}_vs_reference"]
                for j in range(K):
                    st["slots"] += 1
                    if drafts[j] == main_sl[j].top1:
                        st["equal"] += 1
                        continue
                    c = classify(main_sl[j], drafts[j], main_sl[j].top1, run_dtype)
                    if c["near_tie"]:
                        st["near_ties"] += 1
                    else:
                        st["unexplained"].append({"request": r, "bonus_position": pos, "slot": j, "draft": drafts[j],
                                                  **c})
                    if not parallel:
                        break                        # later slots: fed a draft the reference did not choose
            if x is None or y is None:
                continue
            out["states_both"] += 1
            if x == y:
                out["equal"] += 1
                continue
            slots = [j for j in range(K) if x[j] != y[j]]
            if not parallel:
                slots = slots[:1]
            for j in slots:
                sl = per[(first, "shared" if parallel else names[1])][j]
                d = {"request": r, "bonus_position": pos, "slot": j, names[0]: x[j], names[1]: y[j],
                     **classify(sl, x[j], y[j], run_dtype)}
                for dname in list(refs)[1:]:
                    o = per[(dname, "shared" if parallel else names[1])][j]
                    d[f"{dname}_ref_top1"] = o.top1
                    d[f"{dname}_ref_margin"] = o.margin
                    d[f"{dname}_gap"] = classify(o, x[j], y[j], run_dtype)["gap"]
                out["differences"].append(d)
    out["unexplained"] = sum(1 for d in out["differences"] if not d["near_tie"])
    return out


__all__ = ["ForcedReference", "SlotLogits", "classify", "trace_states"]
