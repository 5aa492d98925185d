"""Printing a conformance `Report`: a table per case and backend, near-ties and failures listed
separately, and a short markdown report."""

from __future__ import annotations

from .runner import Outcome, Report

MAX_LISTED = 8           # mismatches listed per outcome and kind (the JSON has them all)


def _drafts(o: Outcome) -> str:
    c = o.comparison
    if c is None:
        return ""
    s = f"{c.drafts_compared}"
    if c.drafts_uncompared:
        s += f" (+{c.drafts_uncompared} uncompared)"
    return s


def _result(o: Outcome) -> str:
    c = o.comparison
    if o.status == "identical":
        return "identical"
    if o.status == "near-ties":
        return f"near-ties ({len(c.near_ties)})"
    if o.status == "failed":
        first = min(c.failures, key=lambda m: m.sort_key())
        return f"differs at {first.where()}" + (f" ({len(c.failures)} failures)" if len(c.failures) > 1 else "")
    if o.status == "error":
        return "ERROR"
    return "not run"


def _detail(o: Outcome, notes: dict[str, int] | None = None) -> str:
    if o.status in ("not run", "error"):
        why = o.reason.splitlines()[0] if o.reason else ""
        if notes is not None and o.status == "not run":
            return f"[{notes.setdefault(why, len(notes) + 1)}]"
        return why
    bits = []
    if o.resync_rounds:
        bits.append(f"re-synchronised x{o.resync_rounds}")
    return "; ".join(bits)


def _mismatch_lines(report: Report, near: bool) -> list[str]:
    lines = []
    for o in report.outcomes:
        if o.comparison is None:
            continue
        ms = sorted(o.comparison.near_ties if near else o.comparison.failures, key=lambda m: m.sort_key())
        for m in ms[:MAX_LISTED]:
            lines.append(f"  {o.case} | {o.backend} | {o.level}: {m.describe(o.tie)}")
        if len(ms) > MAX_LISTED:
            lines.append(f"  {o.case} | {o.backend} | {o.level}: ... {len(ms) - MAX_LISTED} more (see --json)")
    return lines


def summary_line(report: Report) -> str:
    verdict = "PASS" if report.passed else "FAIL"
    parts = [f"{report.count(s)} {s}" for s in ("identical", "near-ties", "failed", "error", "not run")
             if report.count(s)]
    extra = " (--require-all: 'not run' counts as failure)" if report.require_all and report.count("not run") else ""
    return f"{verdict}: " + ", ".join(parts or ["nothing ran"]) + extra


def format_text(report: Report) -> str:
    out = [f"pedagle conformance: {len(report.cases)} case(s) x backend(s) {', '.join(report.backends)}; "
           f"level {' + '.join(report.levels)}" + (f"; device {report.device}" if report.device else "")]
    out.append("backends:")
    for n, i in report.backends.items():
        state = "available" if i.get("available") else f"not available: {i.get('reason', '')}"
        out.append(f"  {n:<12} {i.get('version') or '-':<10} {state}")
    notes: dict[str, int] = {}
    rows = [("case", "backend", "level", "result", "drafts compared", "detail")]
    for o in report.outcomes:
        rows.append((o.case, o.backend, o.level, _result(o), _drafts(o), _detail(o, notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    out.append("")
    last = None
    for k, r in enumerate(rows):
        if k > 1 and r[0] != last:
            out.append("")
        last = r[0]
        out.append("  ".join(x.ljust(w) for x, w in zip(r[:5], widths)) + ("  " + r[5] if r[5] else ""))
    levels = sorted({(o.backend, o.level, o.detail) for o in report.outcomes if o.level == "step-state" and o.detail})
    if levels:
        out += ["", "step-state levels (what ran):"] + [f"  {b}: {d}" for b, _, d in levels]
    near = _mismatch_lines(report, near=True)
    if near:
        out += ["", "near-ties (reference top-1/top-2 margin below the tie margin; not failures):"] + near
    fail = _mismatch_lines(report, near=False)
    errors = [f"  {o.case} | {o.backend} | {o.level}: {o.reason}" for o in report.outcomes if o.status == "error"]
    if fail or errors:
        out += ["", "failures:"] + fail + errors
    if notes:
        out += ["", "not run (never counted as a pass):"]
        for why, k in notes.items():
            who = sorted({f"{o.backend} {o.level}" for o in report.outcomes if o.status == "not run"
                          and (o.reason.splitlines()[0] if o.reason else "") == why})
            out.append(f"  [{k}] {', '.join(who)}: {why}")
    out += ["", summary_line(report)]
    return "\n".join(out)


def format_markdown(report: Report) -> str:
    md = ["# pedagle conformance report", "",
          f"**{summary_line(report)}**", "",
          f"Levels: {', '.join(report.levels)}. Cases: {len(report.cases)}."
          + (f" Device: {report.device}." if report.device else ""), "",
          "| backend | version | available |", "| --- | --- | --- |"]
    for n, i in report.backends.items():
        avail = "yes" if i.get("available") else "no: " + _md(i.get("reason", ""))
        md.append(f"| {n} | {i.get('version') or '-'} | {avail} |")
    md += ["", "| case | backend | level | result | drafts compared | detail |",
           "| --- | --- | --- | --- | --- | --- |"]
    notes: dict[str, int] = {}
    for o in report.outcomes:
        md.append(f"| {o.case} | {o.backend} | {o.level} | {_md(_result(o))} | {_drafts(o)} | "
                  f"{_md(_detail(o, notes))} |")
    near = _mismatch_lines(report, near=True)
    if near:
        md += ["", "## Near-ties", "", "Drafts that differ where the reference's top-1/top-2 logit margin is below the "
               "case's tie margin (rounding can flip them); not failures.", ""] + [f"-{x[1:]}" for x in near]
    fail = _mismatch_lines(report, near=False)
    errors = [f"  {o.case} | {o.backend} | {o.level}: {o.reason.splitlines()[0] if o.reason else ''}"
              for o in report.outcomes if o.status == "error"]
    if fail or errors:
        md += ["", "## Failures", ""] + [f"-{x[1:]}" for x in fail + errors]
    if notes:
        md += ["", "## Not run (never counted as a pass)", ""]
        for why, k in notes.items():
            who = sorted({f"{o.backend} {o.level}" for o in report.outcomes if o.status == "not run"
                          and (o.reason.splitlines()[0] if o.reason else "") == why})
            md.append(f"- [{k}] {', '.join(who)}: {_md(why)}")
    md += ["", "How to read: *identical* = every compared draft, acceptance count and emitted token equal the "
           "recorded reference; *differs at step s, request r, position p* = drafting step s (0 = right after the "
           "prefill), prompt r of the case, draft slot p; *near-ties* are listed with the reference's margin.", ""]
    return "\n".join(md)


def _md(s: str) -> str:
    return (s or "").replace("|", "\\|").replace("\n", " ")


__all__ = ["format_text", "format_markdown", "summary_line"]
