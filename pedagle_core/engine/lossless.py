"""Is speculative greedy output the target's own? Find where two greedy outputs part and say why.

Greedy speculative decoding is lossless in exact arithmetic: every emitted token is the target's argmax.
In floating point the target's logits at a position depend a little on the *shape* of the forward that
computed them (how many rows it had, how many keys the attention kernel was given): a verify step runs
``[bonus, d_1 .. d_K]`` in one forward where target-only decoding runs one row, and the reduction
orders differ. In float32 that moves a logit by ~1e-6 and no greedy choice changes in practice; in
bfloat16 every matmul output is rounded to 8 bits of mantissa, and where the target's own top-2 logits
are nearly tied the argmax can flip. After the flip the two outputs are different (both valid) texts.

This module finds the first position where an output differs from the target-only reference and
classifies it by the target's **float32** logits on the common prefix (the closest we have to exact):

    gap = max(f32 logits) - min(f32[ref token], f32[got token])

i.e. how far the worse of the two choices lies below the float32 argmax. A divergence with
``gap < tie`` is a **near-tie** (either choice is the target's to within rounding); anything else is a
**failure** (a token the target would not have chosen: a real losslessness bug). When the two tokens
are the float32 top-2, ``gap`` is the float32 top-1 minus top-2 margin: the same rule and the same
thresholds the conformance suite applies to drafts (``pedagle_conformance.case.DEFAULT_TIE_MARGINS`` is
`TIE_MARGINS`).

`run_grid` runs the reference engine over prompts x modes x K and classifies every differing output;
``tests/test_lossless_bf16.py`` and ``bench/lossless_bf16.py`` use it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

# Top-1 minus top-2 logit margins under which a differing greedy choice (or draft) is a near-tie, not a
# failure, by compute dtype (also the conformance suite's defaults, `DEFAULT_TIE_MARGINS`). Two correct
# implementations round differently (other reduction orders, fused kernels, paged vs contiguous
# attention); the logit error that leaves is a few units in the last place of the compute dtype, times
# the depth of the computation, at the logits' magnitude (|logit| ~ 5..30 for these heads):
#   float32  eps 1.2e-7: 30 * 1.2e-7 * ~30 accumulated roundings ~ 1e-4
#   float16  eps 9.8e-4 (logits kept in fp16): ~1e-2
#   bfloat16 eps 7.8e-3: one rounding of a logit of 8..16 is up to 0.03..0.06; with the accumulated
#            error of a few layers, 0.1
#   float64  ~1e-9
TIE_MARGINS = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 0.1, "float64": 1e-9}
# ... but never less than this many units in the last place of the compute dtype at the logit's own
# magnitude: a bf16 logit of 16..32 is stored to 0.125, so two logits one ulp apart there are 0.125 apart
# and a fixed 0.1 would call a one-ulp flip a failure (the largest measured gap was 0.13).
TIE_ULPS = 2


def ulp(dtype: str, magnitude: float) -> float:
    """The spacing of ``dtype``'s representable numbers at ``magnitude`` (normal range)."""
    info = torch.finfo(getattr(torch, dtype))
    m = max(abs(float(magnitude)), info.tiny)
    return float(info.eps) * 2.0 ** math.floor(math.log2(m))


def near_tie_margin(tie: float, dtype: str | None, magnitude: float) -> float:
    """The margin below which a flip is a near-tie: ``tie``, raised to ``TIE_ULPS`` ulps of ``dtype`` at the
    logit magnitude when ``dtype`` is given."""
    return tie if dtype is None else max(tie, TIE_ULPS * ulp(dtype, magnitude))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token of two outputs; None when one is a prefix of the other
    (an output cut short by EOS or a limit is not a divergence)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if int(x) != int(y):
            return i
    return None


@dataclass
class Divergence:
    """The first differing token of one output against the target-only reference output."""

    prompt: int                 # index into the prompt list
    mode: str
    K: int
    position: int               # index into the output (0 = the first generated token)
    ref_token: int              # target-only (mode 'none') choice
    got_token: int              # speculative choice
    f32_top1: int               # the float32 target's argmax on the common prefix
    f32_margin: float           # float32 top-1 minus top-2 logit
    gap: float                  # f32 max - min(f32[ref_token], f32[got_token]) (module docstring)
    near_tie: bool
    tie: float

    def describe(self) -> str:
        kind = "near-tie" if self.near_tie else "FAILURE"
        return (f"{kind}: prompt {self.prompt}, mode {self.mode}, K={self.K}, output token {self.position}: "
                f"target-only {self.ref_token}, speculative {self.got_token}; float32 argmax {self.f32_top1}, "
                f"gap {self.gap:.4g} {'<' if self.near_tie else '>='} tie {self.tie:g} "
                f"(float32 top-2 margin {self.f32_margin:.4g})")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def f32_logits(model_f32: nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """The float32 target's next-token logits [V] after ``ids`` (one plain transformers forward)."""
    dev = next(model_f32.parameters()).device
    x = torch.tensor([list(map(int, ids))], dtype=torch.long, device=dev)
    return model_f32(input_ids=x, use_cache=False).logits[0, -1].double()


def classify(model_f32: nn.Module, prompt: Sequence[int], ref: Sequence[int], got: Sequence[int], tie: float,
             prompt_index: int = 0, mode: str = "", K: int = 0, dtype: str | None = None) -> Divergence | None:
    """Classify the first divergence of ``got`` from ``ref`` (both outputs of ``prompt``), or None if equal.
    ``dtype``: the compute dtype of the run, to raise ``tie`` to `TIE_ULPS` ulps at the logits' magnitude."""
    p = first_divergence(ref, got)
    if p is None:
        return None
    logits = f32_logits(model_f32, list(prompt) + list(ref[:p]))
    top = torch.topk(logits, 2)
    a, b = int(ref[p]), int(got[p])
    gap = float(top.values[0] - torch.minimum(logits[a], logits[b]))
    tie = near_tie_margin(tie, dtype, float(top.values[0]))
    return Divergence(prompt_index, mode, K, p, a, b, int(top.indices[0]), float(top.values[0] - top.values[1]),
                      gap, gap < tie, tie)


@dataclass
class GridResult:
    """Outputs compared with target-only decoding over prompts x (mode, K) at one dtype."""

    dtype: str
    tie: float
    batch_size: int
    batch_invariant: bool
    max_new_tokens: int
    num_prompts: int
    configs: list[tuple[str, int]]
    outputs_compared: int = 0
    divergences: list[Divergence] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)        # "mode K" -> generate wall time
    reference_seconds: float = 0.0
    reference_outputs: list[list[int]] = field(default_factory=list)       # mode 'none'

    @property
    def failures(self) -> list[Divergence]:
        return [d for d in self.divergences if not d.near_tie]

    def summary(self) -> dict:
        by = {}
        for mode, K in self.configs:
            ds = [d for d in self.divergences if d.mode == mode and d.K == K]
            by[f"{mode} K={K}"] = {"outputs": self.num_prompts, "diverged": len(ds),
                                   "failures": sum(not d.near_tie for d in ds),
                                   "seconds": round(self.seconds.get(f"{mode} {K}", 0.0), 3)}
        gaps = [d.gap for d in self.divergences]
        return {"dtype": self.dtype, "tie": self.tie, "batch_size": self.batch_size,
                "batch_invariant": self.batch_invariant, "max_new_tokens": self.max_new_tokens,
                "num_prompts": self.num_prompts, "outputs_compared": self.outputs_compared,
                "diverged": len(self.divergences), "near_ties": len(self.divergences) - len(self.failures),
                "failures": len(self.failures),
                "divergence_rate": len(self.divergences) / max(1, self.outputs_compared),
                "max_gap": max(gaps) if gaps else None, "reference_seconds": round(self.reference_seconds, 3),
                "by_config": by}


def run_grid(target_dir: str, drafters: dict[str, str], prompts: Sequence[Sequence[int]],
             configs: Iterable[tuple[str, int]], *, dtype: str = "bfloat16", max_new_tokens: int = 48,
             batch_size: int = 8, batch_invariant: bool = False, tie: float | None = None,
             device: str = "cpu", model_f32: nn.Module | None = None) -> GridResult:
    """Greedy outputs of the reference engine for every (mode, K) of ``configs`` (drafters: mode ->
    checkpoint dir) against mode 'none' at the same dtype, batch size and ``batch_invariant`` setting;
    every differing output is classified with the float32 target (`classify`). EOS is ignored so every
    output has ``max_new_tokens`` tokens."""
    from ..formats import load_drafter
    from .engine import SpecEngine
    from .target import TargetModel, load_hf_target, resolve_dtype
    from .verify import SamplingParams

    dt = resolve_dtype(dtype)
    hf = load_hf_target(target_dir, dtype=dt, device=device)
    name = dtype_name(next(hf.parameters()).dtype)
    tie = TIE_MARGINS[name] if tie is None else tie
    if model_f32 is None:
        model_f32 = load_hf_target(target_dir, dtype="float32", device=device)
    configs = list(configs)
    prompts = [list(map(int, p)) for p in prompts]
    res = GridResult(name, tie, batch_size, batch_invariant, max_new_tokens, len(prompts), configs)
    greedy = SamplingParams(temperature=0.0)

    def generate(mode: str, K: int, drafter) -> tuple[list[list[int]], float]:
        tm = TargetModel(hf, aux_layer_ids=drafter.config.aux_layer_ids if drafter is not None else None,
                         batch_invariant=batch_invariant)
        eng = SpecEngine(tm, drafter, mode=mode, K=max(K, 1), max_batch=batch_size)
        t0 = time.perf_counter()
        out = eng.generate(prompts, max_new_tokens=max_new_tokens, sampling=greedy, eos_token_ids=())
        return out.output_ids, time.perf_counter() - t0

    ref, res.reference_seconds = generate("none", 0, None)
    res.reference_outputs = ref
    loaded: dict[str, nn.Module] = {}
    for mode, K in configs:
        if mode not in loaded:
            loaded[mode] = load_drafter(drafters[mode], target=hf, device=device, mode=mode, dtype=dt)
        outs, res.seconds[f"{mode} {K}"] = generate(mode, K, loaded[mode])
        for i, (p, r, g) in enumerate(zip(prompts, ref, outs)):
            res.outputs_compared += 1
            d = classify(model_f32, p, r, g, tie, i, mode, K, dtype=name)
            if d is not None:
                res.divergences.append(d)
    return res


__all__ = ["TIE_MARGINS", "TIE_ULPS", "near_tie_margin", "ulp", "Divergence", "GridResult", "classify", "dtype_name", "f32_logits", "first_divergence",
           "run_grid"]
