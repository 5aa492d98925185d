"""Step states: the reference engine's `StepInput`s of one case, saved next to the case, and their replay.

Recording (`capture_steps`): while the reference backend runs a case, every call of the core's
``draft()`` by the engine (the general per-request path and the static decode path) is recorded with
its `StepInput` (cloned: the static path reuses its buffers), the cache's ``max_model_len`` and the
drafts it returned. A case of S drafting steps records S step inputs, in order: the prefill step
(``num_rejected`` None) then one per verify step.

File (safetensors, beside the case JSON): per step j the tensors ``{j}.token_ids``, ``{j}.positions``,
``{j}.query_start_loc``, ``{j}.num_rejected`` (absent on the prefill step), ``{j}.next_token_ids``,
``{j}.aux_hidden`` (the target's aux hidden states in the case's dtype, bit-exact); metadata
``{"schema", "case", "K", "mode", "num_steps", "max_model_len"}``.

Replay (`replay_reference`): the same step inputs, in order, through `pedagle_core.draft` on a fresh
reference drafter cache. Every step starts from the reference's state (its accepted tokens, its aux
hidden states), so a difference at one step cannot cascade into the next through the verify; only the
backend's own drafter KV history carries over, as it does inside an engine.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from pedagle_core.draft import StepInput

STEP_SCHEMA = "pedagle-conformance-steps/1"
FIELDS = ("token_ids", "positions", "query_start_loc", "num_rejected", "next_token_ids", "aux_hidden")


@dataclass
class CapturedStep:
    step: StepInput
    max_model_len: int
    drafts: list[list[int]]
    margins: list[list[float]]


def clone_step(s: StepInput) -> StepInput:
    c = lambda t: None if t is None else t.detach().to("cpu", copy=True)  # noqa: E731
    return StepInput(*(c(getattr(s, f)) for f in FIELDS))


@contextlib.contextmanager
def capture_steps() -> Iterator[list[CapturedStep]]:
    """Record every ``draft()`` call the reference engine makes inside the block."""
    from pedagle_core.engine import engine as engine_mod
    from pedagle_core.engine import graphs as graphs_mod

    captured: list[CapturedStep] = []
    originals = {m: m.draft for m in (engine_mod, graphs_mod)}

    def wrap(fn):
        def draft(drafter, step, K, cache, *args, **kwargs):
            out = fn(drafter, step, K, cache, *args, **kwargs)
            captured.append(CapturedStep(clone_step(step), int(cache.max_model_len), out.token_ids.tolist(),
                                         out.margins.float().tolist()))
            return out
        return draft

    for m, fn in originals.items():
        m.draft = wrap(fn)
    try:
        yield captured
    finally:
        for m, fn in originals.items():
            m.draft = fn


# ---------------------------------------------------------------------------------------------- files
def save_steps(path: Path, steps: list[StepInput], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for j, s in enumerate(steps):
        for f in FIELDS:
            t = getattr(s, f)
            if t is not None:
                tensors[f"{j}.{f}"] = t.contiguous()
    md = {"schema": STEP_SCHEMA, "num_steps": len(steps), **meta}
    save_file(tensors, str(path), metadata={"pedagle": json.dumps(md, sort_keys=True)})


def load_steps(path: Path, device: str | torch.device = "cpu") -> tuple[list[StepInput], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {}).get("pedagle", "{}"))
        if meta.get("schema") != STEP_SCHEMA:
            raise ValueError(f"{path}: not a pedagle step-state file (schema {meta.get('schema')!r}; expected "
                             f"{STEP_SCHEMA!r})")
        keys = set(f.keys())
        steps = []
        for j in range(int(meta["num_steps"])):
            vals = {fld: (f.get_tensor(f"{j}.{fld}").to(device) if f"{j}.{fld}" in keys else None) for fld in FIELDS}
            steps.append(StepInput(**vals))
    return steps, meta


# ---------------------------------------------------------------------------------------------- replay
def draft_vocab_margins(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.float().topk(min(2, logits.shape[-1]), dim=-1).values
    return top2[..., 0] - top2[..., -1]


def replay_reference(case: dict[str, Any], steps: list[StepInput], max_model_len: int,
                     drafter: Any = None, transform=None) -> dict[str, Any]:
    """Replay ``steps`` through `pedagle_core.draft` on a fresh `ContiguousKVCache`.

    ``drafter``: a loaded `Drafter` to use instead of loading ``case['drafter']``; ``transform(j, step)``
    may rewrite each step input first (the deliberately broken test backends use both)."""
    from pedagle_core.attention import ContiguousKVCache
    from pedagle_core.draft import draft
    from pedagle_core.engine.backend import load_drafter_for
    from pedagle_core.engine.target import resolve_dtype

    device = torch.device(case.get("device", "cpu"))
    dt = resolve_dtype(case.get("dtype", "float32"))
    if drafter is None:
        drafter = load_drafter_for(case["drafter"], case["target"], case["mode"], dt, device)
    c = drafter.config
    B = int(steps[0].next_token_ids.shape[0])
    cache = ContiguousKVCache(c.num_hidden_layers, B, max_model_len, c.num_key_value_heads, int(c.head_dim),
                              dtype=drafter.fc.weight.dtype, device=device)
    rows = torch.arange(B, device=device)
    drafts, margins = [], []
    for j, s in enumerate(steps):
        s = StepInput(*(None if getattr(s, f) is None else getattr(s, f).to(device) for f in FIELDS))
        if transform is not None:
            s = transform(j, s)
        out = draft(drafter, s, int(case["K"]), cache.for_requests(rows, max_model_len), mode=case["mode"])
        drafts.append(out.token_ids.tolist())
        margins.append(out.margins.float().tolist())
    return {"drafts": drafts, "margins": margins, "level": "pedagle_core.draft on the reference ContiguousKVCache"}


__all__ = ["STEP_SCHEMA", "CapturedStep", "capture_steps", "clone_step", "save_steps", "load_steps",
           "replay_reference", "draft_vocab_margins"]
