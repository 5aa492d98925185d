"""Step-by-step comparison of a backend's result with the expected (reference) one.

Vocabulary: step s = drafting step s (s = 0 right after the prefill, verified by verify step s+1);
request r = index into the case's prompts; position p = draft slot 0..K-1.

Drafts. Parallel mode (P-EAGLE): the K drafts of a step come from one forward and do not depend on one
another, so every position is compared. Autoregressive mode (EAGLE-3): draft p+1 is computed from draft
p, so after the first differing position of a step the rest of that step is not compared (counted as
``uncompared``). A differing draft is a **near-tie** when the reference's top-1 minus top-2 logit
margin there is below the case's tie margin, else a **failure**.

End to end (``compare_e2e``). While two runs have accepted the same number of drafts at every step
(and emitted the same tokens: greedy decoding is lossless, so the emitted tokens are the target's and
must agree), both engines are in the same state: the same verified rows, positions and aux hidden
states, and drafts that differ only at rejected positions leave no trace (rejected rows are dropped
from the drafter's input). So comparison goes on step by step. At the first step where a request's
acceptance (or its emitted tokens) differs, the two runs of that request are no longer comparable: the
rest of that request is *desynchronised*. If a differing draft explains the acceptance difference (it
sits at the first rejected position of either run) nothing more is reported; otherwise the acceptance
or token difference is itself a failure (the verify, not the drafter, disagrees). The runner then
re-synchronises (see `runner`): both the reference and the backend are re-run from the reference's
tokens so far (prompt + the reference's output up to that step), and the remaining steps are compared
on that fresh pair of runs (up to ``--max-resync`` rounds), so one near-tie does not cascade.

Step state (``compare_steps``): every step starts from the reference's recorded state, so only drafts
are compared, every step, every request.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Mismatch:
    kind: str                      # draft | accepted | output | shape | counter
    step: int | None
    request: int | None
    position: int | None
    expected: Any
    got: Any
    margin: float | None           # reference top-1 minus top-2 logit at (step, request, position)
    near_tie: bool
    round: int = 0                 # 0: the recorded trajectory; k > 0: k-th re-synchronised re-run
    note: str = ""

    def where(self) -> str:
        parts = []
        if self.step is not None:
            parts.append(f"step {self.step}" if self.step >= 0 else "prefill")
        if self.request is not None:
            parts.append(f"request {self.request}")
        if self.position is not None:
            parts.append(f"{'position' if self.kind == 'draft' else 'token'} {self.position}")
        return ", ".join(parts)

    def describe(self, tie: float | None = None) -> str:
        m = ""
        if self.margin is not None:
            m = f" (reference margin {self.margin:.3g}"
            if tie is not None:
                m += f" {'<' if self.near_tie else '>='} {tie:g}"
            m += ")"
        r = f" [resync round {self.round}]" if self.round else ""
        what = {"draft": "draft", "accepted": "accepted drafts", "output": "emitted token", "shape": "result shape",
                "counter": "accepted_per_position"}.get(self.kind, self.kind)
        note = f"; {self.note}" if self.note else ""
        return f"{what} differs at {self.where()}: expected {self.expected}, got {self.got}{m}{r}{note}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sort_key(self) -> tuple:
        n = lambda x: -2 if x is None else x  # noqa: E731
        return (self.round, n(self.step), n(self.request), n(self.position))


@dataclass
class Comparison:
    mismatches: list[Mismatch] = field(default_factory=list)
    drafts_compared: int = 0
    drafts_uncompared: int = 0
    steps_compared: int = 0                      # (step, request) pairs
    desync: dict[int, int] = field(default_factory=dict)   # request -> drafting step whose verify diverged

    def add(self, other: "Comparison") -> None:
        self.mismatches += other.mismatches
        self.drafts_compared += other.drafts_compared
        self.drafts_uncompared += other.drafts_uncompared
        self.steps_compared += other.steps_compared

    @property
    def failures(self) -> list[Mismatch]:
        return [m for m in self.mismatches if not m.near_tie]

    @property
    def near_ties(self) -> list[Mismatch]:
        return [m for m in self.mismatches if m.near_tie]


def _margin(margins: Any, s: int, r: int, p: int) -> float | None:
    try:
        m = margins[s][r][p]
    except (TypeError, IndexError, KeyError):
        return None
    return None if m is None else float(m)


def compare_step_drafts(exp_d: list[int], got_d: Any, exp_margins: Any, s: int, r: int, K: int, mode: str,
                        tie: float, out: Comparison, round_: int = 0, step_label: int | None = None,
                        request_label: int | None = None) -> int | None:
    """Compare the K drafts of one (step, request); returns the first differing position (None if equal)."""
    sl = s if step_label is None else step_label
    rl = r if request_label is None else request_label
    if not isinstance(got_d, (list, tuple)) or len(got_d) != K:
        out.mismatches.append(Mismatch("shape", sl, rl, None, f"{K} drafts", got_d, None, False, round_))
        out.drafts_uncompared += K
        return 0
    first = None
    for p in range(K):
        e, g = int(exp_d[p]), got_d[p]
        if g is not None and int(g) == e:
            out.drafts_compared += 1
            continue
        m = _margin(exp_margins, s, r, p)
        out.drafts_compared += 1
        out.mismatches.append(Mismatch("draft", sl, rl, p, e, g, m, m is not None and m < tie, round_))
        if first is None:
            first = p
        if mode == "autoregressive":
            out.drafts_uncompared += K - p - 1
            break
    return first


def compare_steps(expected: dict[str, Any], got: dict[str, Any], K: int, mode: str, tie: float) -> Comparison:
    """Step-state comparison: drafts of every step and request (see the module doc)."""
    out = Comparison()
    ed, gd = expected["drafts"], got.get("drafts")
    if not isinstance(gd, list) or len(gd) != len(ed):
        out.mismatches.append(Mismatch("shape", None, None, None, f"{len(ed)} steps",
                                       None if not isinstance(gd, list) else f"{len(gd)} steps", None, False))
        return out
    for s, (es, gs) in enumerate(zip(ed, gd)):
        for r, e in enumerate(es):
            g = gs[r] if isinstance(gs, list) and r < len(gs) else None
            if e is None:
                continue
            out.steps_compared += 1
            compare_step_drafts(e, g, expected.get("margins"), s, r, K, mode, tie, out)
    return out


def compare_e2e(expected: dict[str, Any], got: dict[str, Any], K: int, mode: str, tie: float,
                steps_per_request: list[int] | None = None, round_: int = 0,
                step_offsets: list[int] | None = None, request_ids: list[int] | None = None) -> Comparison:
    """End-to-end comparison with desynchronisation (see the module doc).

    steps_per_request: how many steps of each request to compare (default all); step_offsets /
    request_ids: labels of a re-synchronised run's steps and requests in the original case."""
    out = Comparison()
    ed, ea, eo = expected["drafts"], expected["accepted"], expected["output_ids"]
    gd, ga, go = got.get("drafts"), got.get("accepted"), got.get("output_ids")
    B = len(eo)
    S = len(ed)
    spr = steps_per_request or [S] * B
    offs = step_offsets or [0] * B
    rids = request_ids or list(range(B))
    shape_ok = (isinstance(gd, list) and isinstance(ga, list) and isinstance(go, list) and len(go) == B
                and len(gd) >= max(spr, default=0) and len(ga) >= max(spr, default=0))
    if not shape_ok:
        out.mismatches.append(Mismatch("shape", None, None, None, f"{S} steps x {B} requests",
                                       f"drafts {_shape(gd)}, accepted {_shape(ga)}, outputs {_shape(go)}", None,
                                       False, round_))
        out.drafts_uncompared += sum(spr) * K
        return out
    for r in range(B):
        rid, off = rids[r], offs[r]
        e_out, g_out = list(eo[r]), list(go[r])
        if not g_out or not e_out or int(g_out[0]) != int(e_out[0]):          # the prefill token
            out.mismatches.append(Mismatch("output", off - 1, rid, 0, e_out[:1], g_out[:1], None,
                                           False, round_, "the target's first token differs"))
            out.drafts_uncompared += spr[r] * K
            out.desync[r] = -1
            continue
        ne = ng = 1
        for s in range(spr[r]):
            e_d = ed[s][r]
            g_d = gd[s][r] if r < len(gd[s]) else None
            out.steps_compared += 1
            first = compare_step_drafts(e_d, g_d, expected.get("margins"), s, r, K, mode, tie, out, round_,
                                        s + off, rid)
            a_e, a_g = ea[s][r], (ga[s][r] if r < len(ga[s]) else None)
            tok_e = e_out[ne: ne + a_e + 1]
            tok_g = g_out[ng: ng + (a_g + 1 if isinstance(a_g, int) else 0)]
            n = min(len(tok_e), len(tok_g))
            tok_diff = next((i for i in range(n) if int(tok_e[i]) != int(tok_g[i])), None)
            if a_e == a_g and tok_diff is None and len(tok_e) == len(tok_g):
                ne += a_e + 1
                ng += a_g + 1
                continue
            # desynchronised from here on
            if tok_diff is not None:
                out.mismatches.append(Mismatch("output", s + off, rid, ne + tok_diff, int(tok_e[tok_diff]),
                                               int(tok_g[tok_diff]), None, False, round_,
                                               "the target's greedy token differs (verify disagrees)"))
            elif not (first is not None and isinstance(a_g, int) and first <= min(a_e, a_g)):
                out.mismatches.append(Mismatch("accepted", s + off, rid, None, a_e, a_g, None, False, round_,
                                               "same drafts, different acceptance (verify disagrees)"))
            out.desync[r] = s
            out.drafts_uncompared += (spr[r] - s - 1) * K
            break
    if not out.desync and steps_per_request is None:
        e_c, g_c = expected.get("accepted_per_position"), got.get("accepted_per_position")
        if e_c is not None and g_c is not None and list(e_c) != list(g_c):
            out.mismatches.append(Mismatch("counter", None, None, None, list(e_c), list(g_c), None, False, round_,
                                           "per-step acceptance agrees but the backend's counter does not"))
    return out


# ------------------------------------------------------------------------------ recording vs recording
EXACT_FIELDS = ("output_ids", "drafts", "accepted", "accepted_per_position", "max_model_len", "models")


@dataclass
class RecordingDiff:
    """A fresh recording of a case against its committed ``expected`` (see `case.MARGIN_RTOL`)."""

    differences: list[str] = field(default_factory=list)     # what is meant to be stable and is not
    max_margin_rel: float = 0.0                               # largest |fresh - committed| / |committed|
    versions: dict[str, tuple[Any, Any]] = field(default_factory=dict)   # recorded_with entries that changed

    @property
    def ok(self) -> bool:
        return not self.differences

    def describe(self) -> str:
        head = "matches" if self.ok else f"{len(self.differences)} difference(s)"
        ver = ", ".join(f"{k} {a} -> {b}" for k, a, b in ((k, *v) for k, v in sorted(self.versions.items())))
        m = (f"margins within {self.max_margin_rel:.2g} relative" if self.max_margin_rel else "margins identical")
        return (f"{head}; {m}"
                + (f"; recorded with other versions ({ver}; information only)" if ver else "")
                + "".join(f"\n    {d}" for d in self.differences))


def compare_recordings(committed: dict[str, Any], fresh: dict[str, Any], rtol: float | None = None,
                       atol: float | None = None) -> RecordingDiff:
    """Ids exactly, margins within ``rtol``/``atol`` (default `case.MARGIN_RTOL` / `MARGIN_ATOL`), versions
    reported only."""
    from .case import MARGIN_ATOL, MARGIN_RTOL

    rtol = MARGIN_RTOL if rtol is None else rtol
    atol = MARGIN_ATOL if atol is None else atol
    out = RecordingDiff()
    for k in EXACT_FIELDS:
        if committed.get(k) != fresh.get(k):
            out.differences.append(f"expected.{k} differs: committed {_brief(committed.get(k))}, "
                                   f"recorded now {_brief(fresh.get(k))}")

    def close(a: Any, b: Any, where: str) -> None:
        if a is None or b is None:
            if a is not b:
                out.differences.append(f"expected.{where}: committed {a}, recorded now {b}")
            return
        a, b = float(a), float(b)
        if a != b:
            out.max_margin_rel = max(out.max_margin_rel, abs(a - b) / max(abs(a), abs(b)))
        if abs(a - b) > rtol * abs(a) + atol:
            out.differences.append(f"expected.{where}: committed {a:.7g}, recorded now {b:.7g} "
                                   f"(|diff| {abs(a - b):.2g} > {rtol:g} x |committed| + {atol:g})")

    cm, fm = committed.get("margins"), fresh.get("margins")
    if _nested_shape(cm) != _nested_shape(fm):
        out.differences.append(f"expected.margins: shape {_nested_shape(cm)} committed, {_nested_shape(fm)} now")
    else:
        for s, (cs, fs) in enumerate(zip(cm, fm)):
            for r, (cr, fr) in enumerate(zip(cs, fs)):
                for p, (a, b) in enumerate(zip(cr, fr)):
                    close(a, b, f"margins[{s}][{r}][{p}]")
    close(committed.get("min_margin"), fresh.get("min_margin"), "min_margin")
    cw, fw = committed.get("recorded_with") or {}, fresh.get("recorded_with") or {}
    out.versions = {k: (cw.get(k), fw.get(k)) for k in sorted(set(cw) | set(fw)) if cw.get(k) != fw.get(k)}
    return out


def _nested_shape(x: Any) -> Any:
    return [_nested_shape(y) for y in x] if isinstance(x, list) else None


def _brief(x: Any, n: int = 80) -> str:
    t = repr(x)
    return t if len(t) <= n else t[: n - 3] + "..."


def _shape(x: Any) -> str:
    if not isinstance(x, list):
        return repr(type(x).__name__)
    inner = next((y for y in x if isinstance(y, list)), None)
    return f"[{len(x)}]" + (f"[{len(inner)}]" if inner is not None else "")


def resync_prompt(prompt: list[int], expected: dict[str, Any], r: int, s: int) -> tuple[list[int], int]:
    """The prompt that puts a fresh run where the reference stood when it drafted step s+1 for request r
    (prompt + the reference's output before the bonus token of that step; the prefill re-emits the bonus
    token), and the number of tokens taken from the output."""
    n = 1 + sum(int(expected["accepted"][j][r]) + 1 for j in range(s + 1))     # tokens emitted by verify s+1
    out = list(expected["output_ids"][r])
    return list(prompt) + [int(t) for t in out[: n - 1]], n - 1


__all__ = ["Mismatch", "Comparison", "RecordingDiff", "compare_recordings", "compare_e2e", "compare_steps", "compare_step_drafts", "resync_prompt"]
